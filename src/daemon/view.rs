//! The decrypted view of an unlocked volume: the engine child that serves it, owning its
//! start (choose the engine, spawn it, wait for its FUSE mount) and its stop (unmount,
//! reap, remove the directory).
//!
//! The native engine (`guilocker engine`, our own) serves every volume our reader can lay
//! out; dislocker serves the rest, or all of them when the config says `engine = "dislocker"`.

use super::error::DaemonError;
use super::mount;
use super::unlock::{self, Outcome};
use crate::bitlocker::{Fvek, Layout, Metadata};
use crate::config::EngineChoice;
use crate::process::{Child, Command};
use crate::protocol::{Engine, UnlockSecret};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Our own binary, whatever its path: still the running image after an upgrade replaced it.
const SELF_EXE: &str = "/proc/self/exe";
/// The native engine's mount as mountinfo shows it (a direct FUSE mount has no subtype).
const NATIVE_FUSE_TYPE: &str = "fuse";

/// A running engine and where its decrypted view is.
pub struct View {
    pub child: Child,
    /// The engine's FUSE mountpoint under the runtime dir.
    pub dir: PathBuf,
    /// The decrypted volume, a file inside `dir`.
    pub decrypted: PathBuf,
    pub engine: Engine,
}

/// What a view is asked to serve.
pub struct Request<'a> {
    pub device: &'a str,
    pub secret: &'a UnlockSecret,
    pub metadata: Option<&'a Metadata>,
    pub dir: &'a Path,
    pub read_only: bool,
    pub choice: EngineChoice,
}

impl View {
    /// Derives the key, picks the engine and starts it; returns once the view is served.
    pub fn start(req: &Request) -> Result<Self, DaemonError> {
        let fvek = match req.metadata {
            Some(meta) => unlock::native_key(req.device, meta, req.secret)?,
            None => None,
        };
        let native = match (&fvek, req.metadata, req.choice) {
            (_, _, EngineChoice::Dislocker) => false,
            (Some(_), Some(meta), _) => match native_layout(req.device, meta) {
                Ok(()) => true,
                Err(cause) if req.choice == EngineChoice::Native => {
                    return Err(DaemonError::CannotOpen {
                        device: req.device.into(),
                        cause: format!("the native engine cannot serve it: {cause}"),
                    })
                }
                Err(cause) => {
                    log::warn!("{}: {cause}; dislocker serves it instead", req.device);
                    false
                }
            },
            (_, _, EngineChoice::Native) => {
                return Err(DaemonError::CannotOpen {
                    device: req.device.into(),
                    cause: "the native engine cannot use this volume's metadata (engine = \"native\" in the config)".into(),
                })
            }
            _ => false,
        };
        match (native, fvek) {
            (true, Some(fvek)) => start_native(req, &fvek),
            (_, fvek) => {
                let child = unlock::start_dislocker(
                    req.device,
                    req.secret,
                    fvek.as_ref(),
                    req.dir,
                    req.read_only,
                )?;
                Ok(Self {
                    child,
                    dir: req.dir.to_owned(),
                    decrypted: req.dir.join(unlock::DECRYPTED_FILE),
                    engine: Engine::Dislocker,
                })
            }
        }
    }

    pub fn pid(&self) -> Pid {
        self.child.pid
    }

    /// Stops the engine: unmount its view (it then exits by itself and flushes), reap it,
    /// rmdir. `lazy` detaches a view something still holds.
    pub fn stop(self, device: &str, lazy: bool) {
        if let Err(e) = mount::unmount_path(&self.dir, lazy) {
            if super::mounts::mounted_at(&self.dir).is_some() {
                log::warn!("{device}: {e}; detaching lazily");
                let _ = mount::unmount_path(&self.dir, true);
            }
        }
        let name = self.engine.as_str();
        match self.child.wait_timeout(Duration::from_secs(10)) {
            Ok(Some(status)) if !status.success() && self.engine == Engine::Native => {
                log::warn!("{device}: the {name} engine {status}");
            }
            Ok(Some(_)) => {}
            _ => {
                log::warn!(
                    "{device}: the {name} engine did not exit after unmount; terminating it"
                );
                self.child.terminate(Duration::from_secs(5));
            }
        }
        mount::remove_dirs(&[self.dir]);
    }
}

/// Is `path` the decrypted file of some engine's view (ours, or an earlier daemon's)?
pub fn is_view_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str());
    let in_views = path
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .is_some_and(|d| d == super::core::VIEWS_DIR);
    name == Some(unlock::DECRYPTED_FILE) || (in_views && name == Some(crate::engine::VIEW_FILE))
}

/// The decrypted files an engine may serve in view directory `dir`.
pub fn view_files(dir: &Path) -> [PathBuf; 2] {
    [
        dir.join(crate::engine::VIEW_FILE),
        dir.join(unlock::DECRYPTED_FILE),
    ]
}

/// Can the native engine lay this volume out on this device? Asked before it is started, so
/// a volume it cannot serve goes to dislocker instead (the engine checks again for itself).
fn native_layout(device: &str, meta: &Metadata) -> Result<(), String> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(device).map_err(|e| format!("cannot open it: {e}"))?;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("cannot get its size: {e}"))?;
    Layout::new(meta, size).map(drop).map_err(|e| e.to_string())
}

fn start_native(req: &Request, fvek: &Fvek) -> Result<View, DaemonError> {
    let device = req.device;
    let fd = unlock::memfd_with(device, c"guilocker-fvek", &fvek.key_file())?;
    let mut cmd = Command::new(SELF_EXE)
        .arg("engine")
        .arg(device)
        .arg(req.dir)
        .fd3(fd);
    if req.read_only {
        cmd = cmd.arg("--read-only");
    }
    let mut child = cmd.spawn().map_err(|source| DaemonError::Process {
        device: device.into(),
        context: "cannot start the engine",
        source,
    })?;
    match unlock::wait_for_mount(&mut child, req.dir, NATIVE_FUSE_TYPE, None) {
        Ok(streams) => {
            unlock::keep_draining(device, streams, true);
            Ok(View {
                child,
                dir: req.dir.to_owned(),
                decrypted: req.dir.join(crate::engine::VIEW_FILE),
                engine: Engine::Native,
            })
        }
        // The engine's output holds no secret: its last line says why ("guilocker: DEV:
        // cause"), and names the device itself.
        Err(Outcome::Exited(output)) => {
            let last = crate::process::one_line(&String::from_utf8_lossy(&output));
            let cause = last.strip_prefix("guilocker: ").unwrap_or(&last);
            let cause = cause
                .strip_prefix(device)
                .and_then(|c| c.strip_prefix(": "))
                .unwrap_or(cause);
            Err(DaemonError::failed(
                device,
                format!("the engine could not serve the volume: {cause}"),
            ))
        }
        Err(Outcome::TimedOut) => Err(unlock::timed_out(device, &mut child, req.dir, "the engine")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_files_are_recognised() {
        assert!(is_view_file(Path::new("/run/guilocker/views/sdb1/volume")));
        assert!(is_view_file(Path::new(
            "/run/x/views/loop0p1/dislocker-file"
        )));
        assert!(!is_view_file(Path::new("/home/alice/volume")));
        assert!(!is_view_file(Path::new("/media/alice/stick.img")));
    }
}
