//! The decrypted view of an unlocked volume, owning its start (derive the key, choose the
//! engine, start it, wait until the view is served) and its stop (unmount or close, reap,
//! remove the directory).
//!
//! Three engines, tried in this order by `engine = "auto"`: the kernel's dm-crypt where the
//! kernel has device-mapper and the volume's cipher (a block device, `/dev/mapper/guilocker-*`);
//! the native engine (`guilocker engine`, our own FUSE server) for every volume our reader can
//! lay out; dislocker for the rest. The config can force one.
//!
//! Never a second writer: a partition that is mounted, held or claimed by anyone else is
//! refused before any engine starts (host/inuse.rs), and stays claimed while served: dm-crypt
//! and the native engine claim it themselves (`O_EXCL`); for dislocker, which does not, the
//! view holds the claim.

use super::dmcrypt;
use super::error::DaemonError;
use super::host::inuse::{self, Claim};
use super::mount;
use super::unlock::{self, Outcome};
use crate::bitlocker::{Fvek, Layout, Metadata};
use crate::config::EngineChoice;
use crate::process::{Child, Command, Foreign};
use crate::protocol::{Engine, UnlockSecret};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Our own binary, whatever its path: still the running image after an upgrade replaced it.
const SELF_EXE: &str = "/proc/self/exe";
/// The native engine's mount as mountinfo shows it (a direct FUSE mount has no subtype).
const NATIVE_FUSE_TYPE: &str = "fuse";

/// A served decrypted view, and what to undo to stop it.
pub struct View {
    backend: Backend,
    /// The decrypted volume: a file inside the engine's FUSE mount, or the mapping's device.
    pub decrypted: PathBuf,
    pub engine: Engine,
}

enum Backend {
    /// A FUSE server we supervise (native engine or dislocker), mounted at `dir` under the
    /// runtime dir; `claim` keeps others off the partition when the server does not itself.
    Fuse {
        child: Child,
        dir: PathBuf,
        claim: Option<Claim>,
    },
    /// A dm-crypt mapping: the kernel serves it; no process of ours.
    Mapping { name: String },
    /// What an earlier daemon left: its engine (no child of ours: watched by pidfd; `None`
    /// once gone) and the directory its view is mounted at (none left for a mapping that
    /// is gone).
    Adopted {
        process: Option<Foreign>,
        dir: Option<PathBuf>,
        /// dislocker's claim on the partition, taken again (the earlier daemon's went with it).
        claim: Option<Claim>,
    },
}

/// What a view is asked to serve.
pub struct Request<'a> {
    pub device: &'a str,
    /// Kernel name (`sdb1`): names the dm-crypt mapping.
    pub name: &'a str,
    pub secret: &'a UnlockSecret,
    pub metadata: Option<&'a Metadata>,
    pub dir: &'a Path,
    pub read_only: bool,
    pub choice: EngineChoice,
    /// `/sys/class/block`, to find who else uses the partition.
    pub sys_block: &'a Path,
}

/// Which engine serves a volume, and why the faster ones do not.
fn choose(req: &Request, fvek: Option<&Fvek>) -> Result<Engine, DaemonError> {
    let cannot = |cause: String| DaemonError::CannotOpen {
        device: req.device.into(),
        cause,
    };
    let no_key =
        || "our reader cannot use this volume's metadata, so only dislocker can open it".to_owned();
    let kernel = match (fvek, req.metadata) {
        (Some(_), Some(meta)) => dmcrypt::usable(meta),
        _ => Err(no_key()),
    };
    let native = match (fvek, req.metadata) {
        (Some(_), Some(meta)) => native_layout(req.device, meta),
        _ => Err(no_key()),
    };
    match req.choice {
        EngineChoice::Dislocker => Ok(Engine::Dislocker),
        EngineChoice::DmCrypt => kernel.map(|()| Engine::DmCrypt).map_err(|c| {
            cannot(format!(
                "dm-crypt cannot serve it (engine = \"dm-crypt\"): {c}"
            ))
        }),
        EngineChoice::Native => native.map(|()| Engine::Native).map_err(|c| {
            cannot(format!(
                "the native engine cannot serve it (engine = \"native\"): {c}"
            ))
        }),
        EngineChoice::Auto => match (kernel, native) {
            (Ok(()), _) => Ok(Engine::DmCrypt),
            (Err(why), Ok(())) => {
                log::info!("{}: not through dm-crypt: {why}", req.device);
                Ok(Engine::Native)
            }
            (Err(_), Err(why)) => {
                log::warn!("{}: {why}; dislocker serves it instead", req.device);
                Ok(Engine::Dislocker)
            }
        },
    }
}

impl View {
    /// Refuses a partition someone else uses, derives the key, picks the engine and starts
    /// it; returns once the view is served. Under `auto`, a volume dm-crypt cannot parse or
    /// decrypt goes to the native engine; one it finds in use is refused.
    pub fn start(req: &Request) -> Result<Self, DaemonError> {
        close_leftover_mapping(req)?;
        let claim = inuse::claim(req.sys_block, req.device, req.name)?;
        let fvek = match req.metadata {
            Some(meta) => unlock::native_key(req.device, meta, req.secret)?,
            None => None,
        };
        match (choose(req, fvek.as_ref())?, fvek) {
            (Engine::DmCrypt, Some(fvek)) => {
                // The mapping claims the partition itself: ours would make the kernel refuse it.
                drop(claim);
                match start_mapping(req, &fvek) {
                    // cryptsetup refused the volume (one it cannot parse, a cipher module
                    // missing): our own engine can still serve it. A busy device was turned
                    // into a refusal already; a hang is no verdict on the volume.
                    Err(e @ DaemonError::Process { .. })
                        if req.choice == EngineChoice::Auto && e.process_refused() =>
                    {
                        log::warn!("{e}; the native engine serves it instead");
                        start_native(req, &fvek)
                    }
                    started => started,
                }
            }
            (Engine::Native, Some(fvek)) => {
                // The engine opens the partition O_EXCL itself.
                drop(claim);
                start_native(req, &fvek)
            }
            (_, fvek) => {
                let child = unlock::start_dislocker(
                    req.device,
                    req.secret,
                    fvek.as_ref(),
                    req.dir,
                    req.read_only,
                )?;
                Ok(Self {
                    backend: Backend::Fuse {
                        child,
                        dir: req.dir.to_owned(),
                        claim: Some(claim),
                    },
                    decrypted: req.dir.join(unlock::DECRYPTED_FILE),
                    engine: Engine::Dislocker,
                })
            }
        }
    }

    /// A view with nothing behind it, for the state machine's tests.
    #[cfg(test)]
    pub fn unserved(decrypted: &str) -> Self {
        Self {
            backend: Backend::Mapping {
                name: String::new(),
            },
            decrypted: decrypted.into(),
            engine: Engine::DmCrypt,
        }
    }

    /// A FUSE view an earlier daemon's engine serves at `dir` (`process` is `None` once
    /// that engine is gone: then only its mount and directory are left to undo).
    pub fn adopted_fuse(
        engine: Engine,
        process: Option<Foreign>,
        dir: Option<PathBuf>,
        decrypted: PathBuf,
        claim: Option<Claim>,
    ) -> Self {
        Self {
            backend: Backend::Adopted {
                process,
                dir,
                claim,
            },
            decrypted,
            engine,
        }
    }

    /// A dm-crypt mapping an earlier daemon opened; `None` when it is gone already.
    pub fn adopted_mapping(name: Option<String>, decrypted: PathBuf) -> Self {
        let backend = match name {
            Some(name) => Backend::Mapping { name },
            None => Backend::Adopted {
                process: None,
                dir: None,
                claim: None,
            },
        };
        Self {
            backend,
            decrypted,
            engine: Engine::DmCrypt,
        }
    }

    /// The engine's process, when it is our child (dm-crypt has none; an adopted engine is
    /// not ours: SIGCHLD never names it).
    pub fn pid(&self) -> Option<Pid> {
        match &self.backend {
            Backend::Fuse { child, .. } => Some(child.pid),
            Backend::Mapping { .. } | Backend::Adopted { .. } => None,
        }
    }

    /// The engine's process and when it started, for the record that lets a later daemon
    /// adopt it.
    pub fn process(&self) -> Option<(Pid, Option<u64>)> {
        let pid = match &self.backend {
            Backend::Fuse { child, .. } => child.pid,
            Backend::Adopted {
                process: Some(p), ..
            } => p.pid,
            _ => return None,
        };
        Some((pid, crate::process::start_time(pid)))
    }

    /// The dm-crypt mapping's name, for a view served by one.
    pub fn mapping(&self) -> Option<&str> {
        match &self.backend {
            Backend::Mapping { name } => Some(name),
            _ => None,
        }
    }

    /// The pidfd of an adopted engine still running: the loop polls it, as SIGCHLD will not
    /// come for a process that is not our child.
    pub fn adopted_pidfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match &self.backend {
            Backend::Adopted {
                process: Some(p), ..
            } => Some(p.pidfd.as_fd()),
            _ => None,
        }
    }

    /// Where the engine's FUSE view is mounted (dm-crypt has no mount).
    pub fn mount_dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Fuse { dir, .. } => Some(dir),
            Backend::Adopted { dir, .. } => dir.as_deref(),
            Backend::Mapping { .. } => None,
        }
    }

    /// How the engine's process ended, if it has (dm-crypt has none).
    pub fn exited(&self) -> Option<crate::process::ExitStatus> {
        use crate::process::ExitStatus;
        match &self.backend {
            Backend::Fuse { child, .. } => child.try_status(),
            Backend::Mapping { .. } => None,
            Backend::Adopted {
                process: Some(p), ..
            } => p.has_exited().then_some(ExitStatus::Unknown),
            Backend::Adopted { dir: Some(_), .. } => Some(ExitStatus::Unknown),
            Backend::Adopted { dir: None, .. } => None,
        }
    }

    /// Is `path` this view: its decrypted file or device, or the engine's mountpoint?
    pub fn is_at(&self, path: &str) -> bool {
        self.decrypted.as_os_str() == path || self.mount_dir().is_some_and(|d| d == path)
    }

    /// Is the decrypted view a block device (filesystems mount it without a loop device)?
    pub fn is_block_device(&self) -> bool {
        matches!(self.backend, Backend::Mapping { .. })
    }

    /// Lets go of our claim on a device that is gone (dislocker's view): nothing can reach it
    /// any more, and the engine's own last close then tears down what is left of it (a
    /// detached loop device waits for that), not one of our threads.
    pub fn release_gone_device(&mut self) {
        if let Backend::Fuse { claim, .. } | Backend::Adopted { claim, .. } = &mut self.backend {
            claim.take();
        }
    }

    /// Stops the engine. A FUSE view: unmount it (the engine then exits by itself and
    /// flushes), reap it, rmdir. A mapping: `cryptsetup close`. `lazy` (the device vanished,
    /// or something still holds the view) detaches the view, or defers the close.
    pub fn stop(self, device: &str, lazy: bool) {
        // The claim (dislocker's) is let go last, once its engine is gone.
        let (child, dir, _claim) = match self.backend {
            Backend::Mapping { name } => return dmcrypt::close(device, &name, lazy),
            Backend::Fuse { child, dir, claim } => (child, dir, claim),
            Backend::Adopted {
                process,
                dir,
                claim,
            } => {
                stop_adopted(device, self.engine, process, dir, lazy);
                drop(claim);
                return;
            }
        };
        if let Err(e) = mount::unmount_path(&dir, lazy) {
            if super::mounts::mounted_at(&dir).is_some() {
                log::warn!("{device}: {e}; detaching lazily");
                let _ = mount::unmount_path(&dir, true);
            }
        }
        let name = self.engine.as_str();
        match child.wait_timeout(Duration::from_secs(10)) {
            Ok(Some(status)) if !status.success() && self.engine == Engine::Native => {
                log::warn!("{device}: the {name} engine {status}");
            }
            Ok(Some(_)) => {}
            _ => {
                log::warn!(
                    "{device}: the {name} engine did not exit after unmount; terminating it"
                );
                child.terminate(Duration::from_secs(5));
            }
        }
        mount::remove_dirs(&[dir]);
    }
}

/// [`View::stop`] for an earlier daemon's engine: unmount its view, wait on its pidfd
/// (nobody here can reap it: its parent is init), signal it through the pidfd if it stays.
fn stop_adopted(
    device: &str,
    engine: Engine,
    process: Option<Foreign>,
    dir: Option<PathBuf>,
    lazy: bool,
) {
    let Some(dir) = dir else { return };
    if super::mounts::mounted_at(&dir).is_some() {
        if let Err(e) = mount::unmount_path(&dir, lazy) {
            log::warn!("{device}: {e}; detaching lazily");
            let _ = mount::unmount_path(&dir, true);
        }
    }
    if let Some(process) = process {
        if !process.wait_timeout(Duration::from_secs(10)) {
            let name = engine.as_str();
            log::warn!("{device}: the {name} engine did not exit after unmount; terminating it");
            process.terminate(Duration::from_secs(5));
        }
    }
    mount::remove_dirs(&[dir]);
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

/// A leftover mapping of ours for this partition (a crashed daemon's) is closed when nothing
/// uses it, refused when something does; whichever engine serves the volume next.
fn close_leftover_mapping(req: &Request) -> Result<(), DaemonError> {
    let name = dmcrypt::mapping_name(req.name);
    if let Some((_, kname)) = dmcrypt::mappings().into_iter().find(|(n, _)| *n == name) {
        if dmcrypt::in_use(&kname) {
            return Err(DaemonError::InvalidState {
                device: req.device.into(),
                what: format!(
                    "is still unlocked by an earlier guilocker ({name} is in use); unmount it first"
                ),
            });
        }
        log::warn!("{}: closing the leftover mapping {name}", req.device);
        dmcrypt::close(req.device, &name, false);
    }
    Ok(())
}

/// dm-crypt: `cryptsetup open` with our key. cryptsetup finding the partition in use (claimed
/// since we looked) is a refusal naming who, never a reason to try another engine.
fn start_mapping(req: &Request, fvek: &Fvek) -> Result<View, DaemonError> {
    let name = dmcrypt::mapping_name(req.name);
    let decrypted = dmcrypt::open(req.device, &name, fvek, req.read_only).map_err(|e| match e {
        DaemonError::Process { ref source, .. } if dmcrypt::found_busy(source) => {
            inuse::refusal(req.sys_block, req.device, req.name).unwrap_or_else(|| {
                DaemonError::InUse {
                    device: req.device.into(),
                    holder: "another program (cryptsetup found the device in use)".into(),
                }
            })
        }
        e => e,
    })?;
    Ok(View {
        backend: Backend::Mapping { name },
        decrypted,
        engine: Engine::DmCrypt,
    })
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
                backend: Backend::Fuse {
                    child,
                    dir: req.dir.to_owned(),
                    claim: None,
                },
                decrypted: req.dir.join(crate::engine::VIEW_FILE),
                engine: Engine::Native,
            })
        }
        // The engine's output holds no secret: its last line says why ("guilocker: DEV:
        // cause"), and names the device itself.
        Err(Outcome::Exited(output)) => {
            // Someone claimed the partition between our look and the engine's O_EXCL open.
            if let Some(e) = inuse::refusal(req.sys_block, device, req.name) {
                return Err(e);
            }
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
