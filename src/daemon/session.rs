//! An unlocked volume and everything made for it, closed in one place.
//!
//! A session owns two resources, each with its start and its stop: the decrypted view (the
//! engine child or the dm-crypt mapping: [`View::start`], [`View::stop`]) and the mounted
//! filesystem with its loop device and directories ([`super::mount::mount`],
//! [`MountedFs::unmount`]). [`Session::close`] stops them in the right order, in one of
//! three modes; nothing else tears a session down.

use super::desktop::Shown;
use super::error::DaemonError;
use super::filesystem::FsInfo;
use super::mount::{MountedFs, Owner};
use super::view::View;
use std::path::PathBuf;

/// An unlocked volume: the engine serving its view and, when mounted, the filesystem.
pub struct Session {
    pub view: View,
    pub owner: Owner,
    pub fs: Option<FsInfo>,
    pub mounted: Option<MountedFs>,
    pub read_only: bool,
    /// What a later daemon needs to adopt it ([`super::record`]), removed once closed.
    pub record: Option<PathBuf>,
    /// Shown to the desktop as unlocked (dm-crypt), hidden once closed.
    pub shown: Option<Shown>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("decrypted", &self.view.decrypted)
            .field("engine", &self.view.engine)
            .field("owner", &self.owner.name)
            .field("mounted", &self.mounted)
            .finish_non_exhaustive()
    }
}

/// How a session is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// On request: unmount and wait for the driver to write everything; if the filesystem
    /// is in use, refuse and hand the session back untouched.
    Polite,
    /// `--force`: what cannot be unmounted now is detached lazily and goes once its last
    /// user lets go; only if even that fails is the session handed back.
    Forced,
    /// The device or its engine is gone: nothing can be written any more; detach
    /// everything, whatever fails.
    Vanished,
}

impl Session {
    /// Unmounts the filesystem (driver waited for, loop device freed, directories removed),
    /// then stops the engine. A refused close has undone nothing.
    pub fn close(mut self, device: &str, mode: CloseMode) -> Result<(), Box<(DaemonError, Self)>> {
        let lazy = mode != CloseMode::Polite;
        if mode == CloseMode::Vanished {
            self.view.release_gone_device();
        }
        if let Some(m) = self.mounted.take() {
            if let Err(e) = m.unmount(device, &self.view.decrypted, lazy) {
                if mode != CloseMode::Vanished {
                    self.mounted = Some(m);
                    return Err(Box::new((e, self)));
                }
                log::warn!("{e}");
            }
        }
        self.view.stop(device, lazy);
        // Locked: the desktop leaves the drive alone again.
        drop(self.shown.take());
        if let Some(record) = &self.record {
            super::record::remove(record);
        }
        Ok(())
    }

    /// A polite close; if refused, one that leaves nothing behind (for shutdown).
    pub fn close_or_force(self, device: &str) {
        if let Err(failed) = self.close(device, CloseMode::Polite) {
            let (e, session) = *failed;
            log::warn!("{e}; detaching lazily");
            let _ = session.close(device, CloseMode::Vanished);
        }
    }
}
