//! The slow parts, run on worker threads: starting a volume's view and mounting it, closing
//! sessions. They see no device table; what they make goes back to the loop in a
//! [`super::core::Done`].

use super::core::{Closing, Shared};
use super::desktop::{self, Shown};
use super::dmcrypt;
use super::error::DaemonError;
use super::filesystem;
use super::mount;
use super::record;
use super::session::{CloseMode, Session};
use super::view::{self, View};
use super::watch;
use crate::bitlocker::Metadata;
use crate::config::Config;
use crate::protocol::UnlockSecret;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What an unlock job needs, taken from the table.
pub struct UnlockJob {
    pub name: String,
    pub path: String,
    /// The appearance it is unlocked on, for the adoption record.
    pub diskseq: Option<u64>,
    pub secret: UnlockSecret,
    pub metadata: Option<Arc<Metadata>>,
    pub read_only: bool,
    pub mount: bool,
    pub owner: super::mount::Owner,
    pub config: Config,
}

/// Starts the view (the engine, or the dm-crypt mapping), then, when asked, mounts the
/// filesystem inside for its owner. On failure, what was started is stopped again.
pub fn unlock(shared: &Shared, job: &UnlockJob) -> Result<Session, DaemonError> {
    let dir = shared.paths.view_dir(&job.name);
    prepare_dir(&job.path, &dir)?;
    let started = View::start(&view::Request {
        device: &job.path,
        name: &job.name,
        secret: &job.secret,
        metadata: job.metadata.as_deref(),
        dir: &dir,
        read_only: job.read_only,
        choice: job.config.engine,
        sys_block: &shared.paths.sys_block,
    });
    let view = match started {
        Ok(v) => v,
        Err(e) => {
            mount::remove_dirs(&[dir]);
            return Err(e);
        }
    };
    if view.mount_dir().is_none() {
        // A dm-crypt mapping needs no directory.
        mount::remove_dirs(&[dir]);
    }
    log::info!(
        "{}: decrypted by the {} engine",
        job.path,
        view.engine.as_str()
    );
    let fs = match filesystem::identify(&view.decrypted) {
        Ok(fs) => fs,
        Err(e) => {
            log::warn!("{}: cannot read the decrypted view: {e}", job.path);
            None
        }
    };
    let mut session = Session {
        view,
        owner: job.owner.clone(),
        fs: fs.clone(),
        mounted: None,
        read_only: job.read_only,
        record: None,
        shown: None,
    };
    if !job.mount {
        return Ok(remember(shared, job, session));
    }
    let Some(fs) = fs else {
        let _ = session.close(&job.path, CloseMode::Polite);
        return Err(DaemonError::CannotOpen {
            device: job.path.clone(),
            cause:
                "no NTFS, exFAT or FAT filesystem inside; use --no-mount to get the decrypted view"
                    .into(),
        });
    };
    let parent = job.config.mount_root.join(&job.owner.name);
    // Held until the mount made the directory, so no other unlock picks it meanwhile.
    let reserved = shared
        .reservations
        .choose(&parent, fs.label.as_deref(), fs.uuid.as_deref());
    let mounted = mount::mount(
        &job.path,
        &session.view.decrypted,
        &fs,
        &reserved.path,
        &job.owner,
        job.read_only,
        &job.config,
    );
    drop(reserved);
    match mounted {
        Ok(m) => {
            // Mounted from the mapping, the desktop may see it: a volume under its drive,
            // with Eject.
            let shown = desktop::mounted_from(&session.view.decrypted, &m.mountpoint);
            session.mounted = Some(m);
            if let Some(mapping) = session.view.mapping().filter(|_| shown) {
                {
                    session.shown = Shown::show(
                        &shared.paths.runtime_dir,
                        &job.path,
                        &job.name,
                        mapping,
                        &job.owner.name,
                    );
                }
            }
            Ok(remember(shared, job, session))
        }
        Err(e) => {
            let _ = session.close(&job.path, CloseMode::Polite);
            Err(e)
        }
    }
}

/// Records what a later daemon needs to adopt the session, before the unlock is answered.
/// Without it the volume works as well; only a daemon that dies alone leaves it stuck.
fn remember(shared: &Shared, job: &UnlockJob, mut session: Session) -> Session {
    let rec = record::Record::of(&job.name, &job.path, job.diskseq, &session);
    match record::write(&shared.paths.runtime_dir, &rec) {
        Ok(path) => session.record = Some(path),
        Err(e) => log::warn!(
            "{}: cannot record it for a restarted daemon in {}: {e}",
            job.path,
            record::dir(&shared.paths.runtime_dir).display()
        ),
    }
    session
}

/// How long the file manager has to lock a volume it unmounted through udisks.
const DESKTOP_LOCK_GRACE: Duration = Duration::from_secs(10);

/// Closes a volume whose filesystem someone else unmounted. One the desktop sees (dm-crypt)
/// was most likely unmounted by the file manager through udisks, which locks it next
/// (Encrypted.Lock) and may eject its drive: closing the mapping first would fail that lock,
/// an error dialog. It gets [`DESKTOP_LOCK_GRACE`] to do so; what is left is closed then.
/// Also says whether the desktop locked it: the person then put the drive away, and its
/// stick is to be made safe to remove.
pub fn put_away_unmounted(closing: (String, u64, String, Session)) -> (Vec<Closing>, bool) {
    let session = &closing.3;
    let locked_by_desktop = match session.view.mapping() {
        Some(mapping) if session.shown.is_some() => {
            let mapping = mapping.to_owned();
            let locked =
                watch::until_block_change(DESKTOP_LOCK_GRACE, || !dmcrypt::exists(&mapping));
            if locked {
                log::info!("{}: locked by the desktop (udisks)", closing.2);
            }
            locked
        }
        _ => false,
    };
    (
        close_all(vec![closing], CloseMode::Polite),
        locked_by_desktop,
    )
}

/// Closes sessions one after the other, each reporting its own result.
pub fn close_all(sessions: Vec<(String, u64, String, Session)>, mode: CloseMode) -> Vec<Closing> {
    sessions
        .into_iter()
        .map(|(name, generation, path, session)| Closing {
            result: session.close(&path, mode),
            name,
            generation,
            path,
        })
        .collect()
}

fn prepare_dir(device: &str, dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(parent)
            .map_err(|e| DaemonError::io(device, "cannot create", parent, e))?;
    }
    if super::mounts::mounted_at(dir).is_some() {
        if !super::mounts::is_dead(dir) {
            // An engine we do not know (a previous daemon's) still serves it; detaching
            // it could pull the disk from under a mounted filesystem.
            return Err(DaemonError::InvalidState {
                device: device.into(),
                what: format!(
                    "is still unlocked by an earlier guilocker ({} is mounted); unmount it first",
                    dir.display()
                ),
            });
        }
        log::warn!("{device}: dead mount at {}; detaching it", dir.display());
        let _ = mount::unmount_path(dir, true);
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(DaemonError::io(device, "cannot create", dir, e)),
    }
}
