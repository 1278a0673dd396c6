//! One GTK dialog per locked drive: a child process that speaks the dialog pipe protocol.
//!
//! The dialog sends the secret on its stdout; the agent forwards it to the daemon over the
//! control socket and writes the answer back to the dialog's stdin. The secret never touches
//! argv or the environment.

use super::Agent;
use crate::client::{Client, ClientError};
use crate::protocol::{
    read_frame, write_frame, DeviceInfo, DialogInput, DialogOutput, ErrorKind, Request, Response,
    DIALOG_EXIT_CANCELLED, DIALOG_EXIT_NO_DISPLAY, DIALOG_EXIT_UNLOCKED,
};
use std::io::BufReader;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tr::tr;

/// The agent's side of an open dialog.
pub struct DialogHandle {
    /// Tells this dialog from a later one for the same device name (a stick unplugged and
    /// plugged in again while the first dialog was still exiting).
    id: u64,
    /// The appearance of the drive it asks about.
    diskseq: Option<u64>,
    stdin: Arc<Mutex<ChildStdin>>,
    unlocking: Arc<AtomicBool>,
}

impl DialogHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn diskseq(&self) -> Option<u64> {
        self.diskseq
    }

    /// Asks the dialog to close (the drive went away, or was unlocked elsewhere).
    pub fn close(&self, reason: &str) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let _ = write_frame(
            &mut *stdin,
            &DialogInput::Close {
                reason: Some(reason.into()),
            },
        );
    }

    /// An unlock from this dialog is under way.
    pub fn is_unlocking(&self) -> bool {
        self.unlocking.load(Ordering::Relaxed)
    }

    /// A handle whose "dialog" is `cat`, for tests of the agent's bookkeeping.
    #[cfg(test)]
    pub(super) fn for_test(id: u64) -> Self {
        let mut child = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("run cat");
        let stdin = child.stdin.take().expect("piped");
        // cat ends when the handle, and with it the pipe, is dropped.
        std::thread::spawn(move || child.wait());
        Self {
            id,
            diskseq: None,
            stdin: Arc::new(Mutex::new(stdin)),
            unlocking: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Starts `guilocker dialog` for `device` and a thread that serves it. The thread reports the
/// end to [`Agent::dialog_ended`] with `id`.
pub fn start(agent: Arc<Agent>, device: DeviceInfo, id: u64) -> std::io::Result<DialogHandle> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("dialog")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    write_frame(
        &mut stdin,
        &DialogInput::Show {
            device: device.clone(),
        },
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let stdin = Arc::new(Mutex::new(stdin));
    let unlocking = Arc::new(AtomicBool::new(false));
    let handle = DialogHandle {
        id,
        diskseq: device.diskseq,
        stdin: Arc::clone(&stdin),
        unlocking: Arc::clone(&unlocking),
    };
    log::info!(
        "{}: asking for the password (dialog pid {})",
        device.device,
        child.id()
    );
    std::thread::Builder::new()
        .name("guilocker-dialog".into())
        .spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut settle = false;
            loop {
                match read_frame::<DialogOutput, _>(&mut reader) {
                    Ok(Some(DialogOutput::Unlock {
                        secret,
                        read_only,
                        remembered,
                        open_at_login,
                    })) => {
                        if remembered {
                            log::info!(
                                "{}: trying the secret remembered in the keyring",
                                device.device
                            );
                        }
                        unlocking.store(true, Ordering::Relaxed);
                        let request = Request::Unlock {
                            device: device.device.clone(),
                            secret,
                            read_only,
                            mount: true,
                            owner: None,
                        };
                        let answer =
                            Client::connect(&agent.socket).and_then(|mut c| c.request(&request));
                        drop(request);
                        let reply = reply_for(&device.device, &answer);
                        let mut pipe = stdin.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = write_frame(&mut *pipe, &reply);
                        // Only now: the "mounted" event may already be here, and a close
                        // for "unlocked elsewhere" must come after this answer, or the
                        // dialog would end without storing what the person asked to keep.
                        unlocking.store(false, Ordering::Relaxed);
                        drop(pipe);
                        if let Ok(Response::Unlocked { device: info }) = answer {
                            settle = true;
                            if let (true, Some(list)) = (open_at_login, &agent.at_login) {
                                super::at_login::chosen(list, &info);
                            }
                            agent.unlocked(&info, remembered);
                        }
                    }
                    Ok(Some(DialogOutput::Cancel)) => {
                        log::info!("{}: the person cancelled", device.device);
                        settle = true;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        log::warn!("{}: the dialog said something odd: {e}", device.device);
                        break;
                    }
                }
            }
            let status = child.wait();
            match status.as_ref().map(|s| s.code()) {
                Ok(Some(DIALOG_EXIT_UNLOCKED | DIALOG_EXIT_CANCELLED)) => settle = true,
                Ok(Some(DIALOG_EXIT_NO_DISPLAY)) => {
                    log::warn!("{}: the dialog could not open a display", device.device);
                    settle = true;
                }
                _ => {}
            }
            match status {
                Ok(status) => log::debug!("{}: the dialog ended ({status})", device.device),
                Err(e) => log::warn!("{}: cannot wait for the dialog: {e}", device.device),
            }
            agent.dialog_ended(&device.device, id, settle);
        })?;
    Ok(handle)
}

/// What the dialog shows for the daemon's answer: the cause without the device prefix.
fn reply_for(device: &str, answer: &Result<Response, ClientError>) -> DialogInput {
    let failed = |kind, message: String| DialogInput::Failed {
        kind,
        message: Some(message),
    };
    match answer {
        Ok(Response::Unlocked { device: info }) => DialogInput::Unlocked {
            label: info.label.clone(),
        },
        Ok(other) => failed(
            ErrorKind::Failed,
            tr!(
                "unexpected reply from the daemon: {reply}",
                reply = format!("{other:?}")
            ),
        ),
        Err(ClientError::Daemon { kind, message }) => {
            failed(*kind, super::cause(device, message).to_owned())
        }
        Err(e) => failed(ErrorKind::Failed, e.localized()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_the_device_prefix() {
        let answer = Err(ClientError::Daemon {
            kind: ErrorKind::WrongSecret,
            message: "/dev/sdb1: wrong password".into(),
        });
        match reply_for("/dev/sdb1", &answer) {
            DialogInput::Failed { kind, message } => {
                assert_eq!(kind, ErrorKind::WrongSecret);
                assert_eq!(message.as_deref(), Some("wrong password"));
            }
            other => panic!("{other:?}"),
        }
    }
}
