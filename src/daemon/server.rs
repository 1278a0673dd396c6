//! The control socket: accept, read bounded frames, authorize by SO_PEERCRED, answer.

use super::auth::{Caller, Sees};
use super::core::Shared as Daemon;
use super::error::DaemonError;
use crate::protocol::{read_frame, write_frame, ErrorKind, FrameError, Request, Response, VERSION};
use std::collections::HashMap;
use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Connections one non-root user may hold open at once (a local user must not be able to
/// exhaust the daemon's threads).
const MAX_CONNECTIONS_PER_USER: usize = 16;

/// The listening socket. Created connectable by everyone (0666: authorization is per
/// request); the file is removed on drop.
pub struct Listener {
    pub listener: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Called before any thread exists: the umask it sets for the bind is the process's.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        use nix::sys::stat::{umask, Mode};
        // Bound under a temporary name, then renamed into place: whoever sees the socket can
        // connect to it (and a file left by a daemon that died is replaced; the pidfile lock
        // says none is running). The mode comes from the umask at bind, so there is no
        // moment, and no second lookup of the path, between creating the file and opening it
        // up (fchmod on a socket does not reach its file).
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let old = umask(Mode::from_bits_truncate(0o111));
        let bound = UnixListener::bind(&tmp);
        umask(old);
        let listener = bound?;
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Open connections per uid.
#[derive(Default)]
pub struct Connections(Mutex<HashMap<u32, usize>>);

impl Connections {
    fn enter(&self, uid: u32) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(uid).or_default();
        if uid != 0 && *n >= MAX_CONNECTIONS_PER_USER {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, uid: u32) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&uid) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Accepts every pending connection, each served on its own thread.
pub fn accept_all(listener: &UnixListener, daemon: &Arc<Daemon>, conns: &Arc<Connections>) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("accept: {e}");
                return;
            }
        };
        let caller = match Caller::of(&stream) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("cannot read peer credentials: {e}");
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        if !conns.enter(caller.uid) {
            let mut s = stream;
            let _ = write_frame(
                &mut s,
                &Response::Error {
                    kind: ErrorKind::NotAuthorized,
                    message: format!("too many connections from {}", caller.describe()),
                },
            );
            continue;
        }
        let daemon = Arc::clone(daemon);
        let conns2 = Arc::clone(conns);
        let spawned = std::thread::Builder::new()
            .name("guilocker-conn".into())
            .spawn(move || {
                serve(&daemon, stream, caller);
                conns2.leave(caller.uid);
            });
        if let Err(e) = spawned {
            log::error!("cannot start a connection thread: {e}");
            conns.leave(caller.uid);
        }
    }
}

fn serve(daemon: &Daemon, stream: UnixStream, caller: Caller) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream);
    loop {
        let request: Request = match read_frame(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(FrameError::Io(_)) => return,
            Err(e) => {
                let _ = write_frame(
                    &mut writer,
                    &Response::Error {
                        kind: ErrorKind::BadRequest,
                        message: e.to_string(),
                    },
                );
                // After a framing error the stream cannot be trusted to be in step.
                if matches!(e, FrameError::TooLong | FrameError::NotUtf8) {
                    return;
                }
                continue;
            }
        };
        if let Request::Subscribe = request {
            // From here the connection only carries events; the bus serves it to the end.
            drop(writer);
            let sees = Sees::of(&caller, &daemon.config().allowed_group);
            daemon.bus.serve(reader.into_inner(), sees);
            return;
        }
        let response = handle(daemon, &caller, request);
        if write_frame(&mut writer, &response).is_err() {
            return;
        }
    }
}

fn wrap(result: Result<Response, DaemonError>) -> Response {
    result.unwrap_or_else(|e| Response::Error {
        kind: e.kind(),
        message: e.to_string(),
    })
}

fn handle(daemon: &Daemon, caller: &Caller, request: Request) -> Response {
    wrap(match request {
        Request::Hello { version } if version == VERSION => Ok(Response::Hello {
            version: VERSION,
            server: format!("guilocker {}", env!("CARGO_PKG_VERSION")),
        }),
        Request::Hello { version } => {
            return Response::Error {
                kind: ErrorKind::VersionMismatch,
                message: format!("client speaks protocol {version}, this daemon speaks {VERSION}"),
            }
        }
        Request::Status => {
            let sees = Sees::of(caller, &daemon.config().allowed_group);
            daemon.status().map(|mut devices| {
                devices.retain(|d| sees.sees(d));
                Response::status(devices)
            })
        }
        Request::Unlock {
            device,
            secret,
            read_only,
            mount,
            owner,
        } => daemon
            .unlock(caller, &device, secret, read_only, mount, owner)
            .map(|device| Response::Unlocked { device }),
        Request::Unmount {
            target,
            all,
            force,
            no_power_off,
        } => daemon
            .unmount(caller, target.as_deref(), all, force, !no_power_off)
            .map(|done| Response::Unmounted {
                devices: done.devices,
                power: done.power,
            }),
        Request::Inspect { device } => {
            let config = daemon.config();
            match Sees::of(caller, &config.allowed_group) {
                Sees::All => daemon.inspect(&device),
                // A volume's GUID, description (PC name, drive letter) and key IDs are for
                // those who may unlock it.
                Sees::OwnedBy(name) => Err(DaemonError::NotAuthorized {
                    device,
                    why: format!(
                        "{name} is not in the group '{}' (see allowed_group in the config)",
                        config.allowed_group
                    ),
                }),
            }
            .map(|(device, volume)| Response::Inspected { device, volume })
        }
        Request::Subscribe => unreachable!("handled by serve"),
    })
}
