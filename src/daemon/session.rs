//! An unlocked volume and everything made for it, closed in one place.
//!
//! A session owns two resources, each with its start and its stop: the decrypted view (the
//! engine child or the dm-crypt mapping: [`View::start`], [`View::stop`]) and the mounted
//! filesystem with its loop device and directories ([`super::mount::mount`],
//! [`MountedFs::unmount`]). [`Session::close`] stops them in the right order, in one of
//! three modes; nothing else tears a session down.

use super::error::DaemonError;
use super::filesystem::FsInfo;
use super::mount::{MountedFs, Owner};
use super::view::View;

/// An unlocked volume: the engine serving its view and, when mounted, the filesystem.
pub struct Session {
    pub view: View,
    pub owner: Owner,
    pub fs: Option<FsInfo>,
    pub mounted: Option<MountedFs>,
    pub read_only: bool,
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
    /// `--force`, a dead engine, or shutdown after a polite close was refused: what cannot
    /// be unmounted now is detached lazily and goes once its last user lets go.
    Forced,
    /// The device is gone: nothing can be written any more; detach everything.
    Vanished,
}

impl CloseMode {
    fn lazy(self) -> bool {
        self != Self::Polite
    }
}

impl Session {
    /// Unmounts the filesystem (driver waited for, loop device freed, directories removed),
    /// then stops the engine. Only a polite close can fail, and then nothing was undone.
    pub fn close(mut self, device: &str, mode: CloseMode) -> Result<(), Box<(DaemonError, Self)>> {
        if let Some(m) = self.mounted.take() {
            if let Err(e) = m.unmount(device, &self.view.decrypted, mode.lazy()) {
                if !mode.lazy() {
                    self.mounted = Some(m);
                    return Err(Box::new((e, self)));
                }
                log::warn!("{e}");
            }
        }
        self.view.stop(device, mode.lazy());
        Ok(())
    }

    /// A polite close; if refused, a forced one (for shutdown: nothing may be left behind).
    pub fn close_or_force(self, device: &str) {
        if let Err(failed) = self.close(device, CloseMode::Polite) {
            let (e, session) = *failed;
            log::warn!("{e}; detaching lazily");
            let _ = session.close(device, CloseMode::Forced);
        }
    }
}
