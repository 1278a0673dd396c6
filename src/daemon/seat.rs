//! Is the caller the person at the seat? logind says, per request; without logind the group
//! alone decides, and the log says so once.

use super::auth::Caller;
use super::error::DaemonError;
use crate::logind::{Logind, LogindError, Session};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The daemon's link to logind: made on first need, made again after it fails (logind
/// restarted, the bus came up after the daemon).
#[derive(Default)]
pub struct Seat {
    /// Held only to take or replace the connection, never across a call to logind.
    logind: Mutex<Option<Logind>>,
    /// logind has answered once: from then on, not reaching it refuses (fails closed).
    seen: AtomicBool,
    absent_said: AtomicBool,
}

impl Seat {
    /// Refuses an unlock by a caller not in the active local session. Root may always.
    /// Runs on the caller's connection thread, never the event loop: it waits on logind.
    /// Without logind the group alone decides, unless `fail_closed` (a disk inside the
    /// computer): then only root may.
    pub fn authorize(
        &self,
        caller: &Caller,
        device: &str,
        fail_closed: bool,
    ) -> Result<(), DaemonError> {
        if caller.is_root() {
            return Ok(());
        }
        let denied = |why: String| DaemonError::NotAuthorized {
            device: device.into(),
            why: format!("you are not in the active local session ({why})"),
        };
        let Ok(pid) = u32::try_from(caller.pid) else {
            return Err(denied(
                "the kernel did not say which process is asking".into(),
            ));
        };
        if pid == 0 {
            return Err(denied(
                "the kernel did not say which process is asking".into(),
            ));
        }
        let session = match self.session_of(pid, caller.uid) {
            Ok(session) => session,
            Err(LogindError::Unavailable(cause))
                if !self.seen.load(Ordering::Relaxed) && fail_closed =>
            {
                return Err(denied(format!(
                    "logind is not available ({cause}), and a disk inside the computer opens \
                     only for the person at it"
                )));
            }
            Err(LogindError::Unavailable(cause)) if !self.seen.load(Ordering::Relaxed) => {
                if !self.absent_said.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "logind is not available ({cause}): any member of allowed_group may \
                         unlock, wherever they are logged in"
                    );
                }
                return Ok(());
            }
            Err(e) => {
                return Err(DaemonError::NotAuthorized {
                    device: device.into(),
                    why: format!("cannot tell whether you are at this computer: {e}"),
                })
            }
        };
        judge(session.as_ref(), pid).map_err(denied)
    }

    fn session_of(&self, pid: u32, uid: u32) -> Result<Option<Session>, LogindError> {
        let logind = {
            let mut held = self.logind.lock().unwrap_or_else(|e| e.into_inner());
            match held.as_ref() {
                Some(logind) => logind.clone(),
                None => {
                    let logind = Logind::connect()?;
                    *held = Some(logind.clone());
                    logind
                }
            }
        };
        let answer = logind.session_of(pid, uid);
        match &answer {
            Ok(_) => self.seen.store(true, Ordering::Relaxed),
            // A fresh connection next time.
            Err(_) => *self.logind.lock().unwrap_or_else(|e| e.into_inner()) = None,
        }
        answer
    }
}

/// The verdict on the session logind named for process `pid`: why not, if not.
fn judge(session: Option<&Session>, pid: u32) -> Result<(), String> {
    match session {
        Some(s) if s.is_active_local() => Ok(()),
        Some(s) if s.remote => Err(format!("session {} is remote", s.id)),
        Some(s) => Err(format!("session {} is in the background", s.id)),
        None => Err(format!("process {pid} is in no login session")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(active: bool, remote: bool) -> Session {
        Session {
            id: "4".into(),
            uid: 1000,
            active,
            remote,
        }
    }

    #[test]
    fn only_the_active_local_session_may() {
        assert_eq!(judge(Some(&session(true, false)), 7), Ok(()));
        assert_eq!(
            judge(Some(&session(true, true)), 7),
            Err("session 4 is remote".into())
        );
        // Remote wins over background: it is the reason that will not change.
        assert_eq!(
            judge(Some(&session(false, true)), 7),
            Err("session 4 is remote".into())
        );
        assert_eq!(
            judge(Some(&session(false, false)), 7),
            Err("session 4 is in the background".into())
        );
        assert_eq!(
            judge(None, 7),
            Err("process 7 is in no login session".into())
        );
    }

    #[test]
    fn root_needs_no_session_and_pid_0_is_refused() {
        let seat = Seat::default();
        let root = Caller {
            uid: 0,
            gid: 0,
            pid: 0,
        };
        assert!(seat.authorize(&root, "/dev/sdb1", false).is_ok());
        let user = Caller {
            uid: 1000,
            gid: 1000,
            pid: 0,
        };
        let refused = seat
            .authorize(&user, "/dev/sdb1", false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            refused,
            "/dev/sdb1: not allowed: you are not in the active local session (the kernel did \
             not say which process is asking)"
        );
    }

    /// Without logind (this machine's tests run with no system bus): a stick goes by the group
    /// alone, a disk inside the computer only to root.
    #[test]
    fn without_logind_an_internal_disk_is_refused() {
        if Logind::connect().is_ok() {
            eprintln!("skipped: logind answers here");
            return;
        }
        let seat = Seat::default();
        let user = Caller {
            uid: 1000,
            gid: 1000,
            pid: i32::try_from(std::process::id()).unwrap(),
        };
        assert!(seat.authorize(&user, "/dev/sdb1", false).is_ok());
        let refused = seat
            .authorize(&user, "/dev/nvme0n1p3", true)
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with("/dev/nvme0n1p3: not allowed: you are not in the active local session (logind is not available"),
            "{refused}"
        );
        let root = Caller {
            uid: 0,
            gid: 0,
            pid: 1,
        };
        assert!(seat.authorize(&root, "/dev/nvme0n1p3", true).is_ok());
    }
}
