//! `guilocker engine`: our own decrypting engine, a child the daemon supervises.
//!
//! It gets the device and its FUSE mountpoint in argv and the volume key on fd 3 (a memfd,
//! in the 66-byte layout of [`crate::bitlocker::Fvek::key_file`]), never in argv or the
//! environment. It makes itself non-dumpable, reads the metadata itself, and serves the
//! decrypted view as one file until its mountpoint is unmounted (or SIGTERM), then flushes
//! the device and exits 0.

mod error;
mod fuse;
mod volume;

pub use error::EngineError;
pub use fuse::{FS_NAME, VIEW_FILE};
pub use volume::Volume;

use crate::bitlocker::Fvek;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Threads answering FUSE requests: crypto on one while another waits for the disk.
const THREADS: usize = 4;

#[derive(Debug, Clone)]
pub struct Options {
    pub device: PathBuf,
    pub mountpoint: PathBuf,
    pub read_only: bool,
}

/// Takes the key from fd 3 and closes it.
fn read_key() -> Result<Fvek, EngineError> {
    let key_err = |cause: String| EngineError::Key { cause };
    // SAFETY: F_GETFD only asks whether fd 3 is open.
    if unsafe { libc::fcntl(3, libc::F_GETFD) } < 0 {
        return Err(key_err("fd 3 is not open".into()));
    }
    // SAFETY: fd 3 is open (checked above) and handed to us by our parent for this purpose;
    // nothing else in this process uses it.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(3) });
    // The parent wrote the memfd and handed it over at its end.
    file.seek(SeekFrom::Start(0))
        .map_err(|e| key_err(e.to_string()))?;
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(128));
    (&mut file)
        .take(1024)
        .read_to_end(&mut buf)
        .map_err(|e| key_err(e.to_string()))?;
    Fvek::from_key_file(&buf).map_err(key_err)
}

/// Blocks the stop signals in every thread; a watcher thread unmounts on the first one.
fn stop_on_signal(mut unmounter: ::fuser::SessionUnmounter, device: &Path) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        log::warn!("cannot block signals: {e}");
        return;
    }
    let device = device.display().to_string();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(sig) => {
                    log::info!("{device}: {sig}: unmounting the decrypted view");
                    match unmounter.unmount() {
                        Ok(()) => return,
                        // Something (a loop device, a filesystem) still uses the view:
                        // keep serving it rather than lose their writes.
                        Err(e) => log::warn!("{device}: cannot unmount the view: {e}"),
                    }
                }
                Err(e) => {
                    log::warn!("{device}: waiting for signals: {e}");
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the signal thread: {e}");
    }
}

pub fn run(opts: &Options) -> Result<(), EngineError> {
    // It holds the volume's key for as long as it serves.
    crate::secret::protect_process();
    // SAFETY: setting a signal to ignored installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let fvek = read_key()?;
    let volume = Arc::new(Volume::open(&opts.device, &fvek, opts.read_only)?);
    drop(fvek);
    let mut options = vec![
        ::fuser::MountOption::FSName(FS_NAME.into()),
        ::fuser::MountOption::Subtype("guilocker".into()),
        ::fuser::MountOption::NoDev,
        ::fuser::MountOption::NoSuid,
        ::fuser::MountOption::NoExec,
        ::fuser::MountOption::DefaultPermissions,
    ];
    if opts.read_only {
        options.push(::fuser::MountOption::RO);
    }
    let mut config = ::fuser::Config::default();
    config.mount_options = options;
    config.n_threads = Some(THREADS);
    config.clone_fd = true;
    let fuse_err = |source| EngineError::Fuse {
        mountpoint: opts.mountpoint.clone(),
        source,
    };
    let mut session =
        ::fuser::Session::new(fuse::ViewFs::new(volume.clone()), &opts.mountpoint, &config)
            .map_err(fuse_err)?;
    stop_on_signal(session.unmount_callable(), &opts.device);
    log::info!(
        "{}: serving {} bytes at {}",
        opts.device.display(),
        volume.size(),
        opts.mountpoint.join(VIEW_FILE).display()
    );
    let served = session.run().map_err(fuse_err);
    // Whatever ended the session, what was written reaches the disk before we exit.
    let synced = volume.sync();
    served.and(synced)
}
