//! Is the caller the person at the seat? logind says, per request; without logind the group
//! alone decides, and the log says so once.

use super::auth::Caller;
use super::error::DaemonError;
use crate::logind::{Logind, LogindError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The daemon's link to logind: made on first need, made again after it fails (logind
/// restarted, the bus came up after the daemon).
#[derive(Default)]
pub struct Seat {
    logind: Mutex<Option<Logind>>,
    absent_said: AtomicBool,
}

impl Seat {
    /// Refuses an unlock by a caller not in the active local session. Root may always.
    /// Runs on the caller's connection thread, never the event loop: it waits on logind.
    pub fn authorize(&self, caller: &Caller, device: &str) -> Result<(), DaemonError> {
        if caller.is_root() {
            return Ok(());
        }
        let denied = |why: String| DaemonError::NotAuthorized {
            device: device.into(),
            why: format!("you are not in the active local session ({why})"),
        };
        let session = match self.session_of(caller) {
            Ok(session) => session,
            Err(LogindError::Unavailable(cause)) => {
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
        match session {
            Some(s) if s.is_active_local() => Ok(()),
            Some(s) if s.remote => Err(denied(format!("session {} is remote", s.id))),
            Some(s) => Err(denied(format!("session {} is in the background", s.id))),
            None => Err(denied(format!(
                "process {} is in no login session",
                caller.pid
            ))),
        }
    }

    fn session_of(&self, caller: &Caller) -> Result<Option<crate::logind::Session>, LogindError> {
        let mut logind = self.logind.lock().unwrap_or_else(|e| e.into_inner());
        if logind.is_none() {
            *logind = Some(Logind::connect()?);
        }
        let pid = u32::try_from(caller.pid).unwrap_or(0);
        let answer = logind
            .as_ref()
            .map(|l| l.session_of(pid))
            .expect("connected above");
        if answer.is_err() {
            // A fresh connection next time.
            *logind = None;
        }
        answer
    }
}
