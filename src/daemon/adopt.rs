//! At start, after a daemon died alone (a panic, the OOM killer, no service manager to kill
//! its engines): each volume it recorded ([`super::record`]) that is still fully alive (the
//! device the same appearance, its engine or mapping serving, the filesystem mounted where it
//! was, from the same view) is taken over as it is; whatever is half dead is put away, as
//! [`super::recover`] does for dead views.

use super::desktop::Shown;
use super::dmcrypt;
use super::mount::MountedFs;
use super::mounts;
use super::record::{self, Record};
use super::session::{CloseMode, Session};
use super::view::View;
use crate::daemon::host::inuse;
use crate::process::Foreign;
use crate::protocol::Engine;
use nix::unistd::Pid;
use std::path::{Path, PathBuf};

/// A volume an earlier daemon left fully alive, to be taken into the table.
pub struct Adopted {
    pub name: String,
    pub diskseq: Option<u64>,
    pub session: Session,
}

/// What [`recover`] found.
#[derive(Default)]
pub struct Recovered {
    pub adopted: Vec<Adopted>,
    /// Half-dead volumes put away.
    pub cleaned: usize,
}

/// Reads every record; returns the volumes to adopt, having put away the rest.
pub fn recover(runtime_dir: &Path, mount_root: &Path, sys_block: &Path) -> Recovered {
    // What the earlier daemon showed the desktop: shown again below for what is adopted.
    super::desktop::forget_shown(runtime_dir);
    let boot = record::boot_id();
    let mut found = Recovered::default();
    for (path, read) in record::read_all(runtime_dir) {
        let rec = match read {
            Ok(rec) => rec,
            Err(e) => {
                log::warn!("{}: unreadable ({e}); removing it", path.display());
                record::remove(&path);
                continue;
            }
        };
        if boot.is_empty() || rec.boot_id != boot {
            log::info!(
                "{}: left by a guilocker of an earlier boot; removing it",
                path.display()
            );
            record::remove(&path);
            continue;
        }
        let (session, dead) = examine(&rec, runtime_dir, mount_root, sys_block);
        let mut session = session;
        session.record = Some(path);
        let shown = session
            .mounted
            .as_ref()
            .is_some_and(|m| super::desktop::mounted_from(&session.view.decrypted, &m.mountpoint));
        if let (None, Some(mapping), true) = (&dead, session.view.mapping(), shown) {
            session.shown = Shown::show(
                runtime_dir,
                &rec.device,
                &rec.name,
                mapping,
                &session.owner.name,
            );
        }
        match dead {
            None => found.adopted.push(Adopted {
                name: rec.name,
                diskseq: rec.diskseq,
                session,
            }),
            Some(why) => {
                log::warn!(
                    "{}: left by an earlier guilocker, but {why}; putting it away",
                    rec.device
                );
                let _ = session.close(&rec.device, CloseMode::Vanished);
                found.cleaned += 1;
            }
        }
    }
    found
}

/// The loop device `dev` if it is still attached to `file`.
fn loop_over(dev: &str, file: &Path) -> bool {
    let name = dev.trim_start_matches("/dev/");
    std::fs::read_to_string(Path::new("/sys/block").join(name).join("loop/backing_file"))
        .is_ok_and(|b| Path::new(b.trim_end()) == file)
}

/// `major:minor` of block device `kname` (`dm-3`, `loop7`).
fn numbers_of(kname: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/sys/block").join(kname).join("dev"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The session the record describes, made of what is verifiably still there, and why it
/// cannot be adopted (`None`: fully alive).
fn examine(
    rec: &Record,
    runtime_dir: &Path,
    mount_root: &Path,
    sys_block: &Path,
) -> (Session, Option<String>) {
    // Every reason it cannot be adopted; the first is told.
    let mut why: Vec<String> = Vec::new();

    // The device: the same appearance (a re-plugged stick has a new diskseq).
    let present = sys_block.join(&rec.name).exists();
    if !present {
        why.push("the drive is gone".into());
    } else if super::watch::diskseq(sys_block, &rec.name) != rec.diskseq {
        why.push("the drive was plugged in again since".into());
    }

    // The view: the engine still running (same start time), its FUSE mount answering; or
    // the mapping still open, on this device.
    let mut block: Option<String> = None;
    let view = match (&rec.view_dir, &rec.mapping) {
        (Some(dir), _) => {
            let process = rec
                .engine_pid
                .zip(rec.engine_start_time)
                .and_then(|(pid, started)| Foreign::open(Pid::from_raw(pid), started));
            // Only a directory of ours is unmounted and removed.
            let dir = dir
                .starts_with(runtime_dir.join(super::core::VIEWS_DIR))
                .then(|| dir.clone());
            match &dir {
                None => why.push("its view is outside the runtime directory".into()),
                Some(_) if process.is_none() => {
                    why.push(format!("its {} engine is gone", rec.engine.as_str()))
                }
                Some(d) if mounts::mounted_at(d).is_none() || mounts::is_dead(d) => {
                    why.push(format!("its view {} is not served", d.display()))
                }
                Some(_) => {}
            }
            // dislocker does not claim the partition itself: the view does, as at unlock.
            let claim = (rec.engine == Engine::Dislocker && why.is_empty())
                .then(|| inuse::claim_exclusive(Path::new(&rec.device)))
                .and_then(|claimed| {
                    claimed
                        .map_err(|e| log::warn!("{}: cannot claim it again: {e}", rec.device))
                        .ok()
                });
            View::adopted_fuse(rec.engine, process, dir, rec.decrypted.clone(), claim)
        }
        (None, Some(name)) => {
            let kname = dmcrypt::mappings()
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, k)| k);
            let on_device = kname.as_ref().is_some_and(|k| {
                Path::new("/sys/block")
                    .join(k)
                    .join("slaves")
                    .join(&rec.name)
                    .exists()
            });
            if !on_device {
                why.push(format!("its mapping {name} is gone"));
            }
            block = kname.as_deref().and_then(numbers_of);
            View::adopted_mapping(kname.map(|_| name.clone()), rec.decrypted.clone())
        }
        (None, None) => {
            why.push("the record names no engine".into());
            View::adopted_mapping(None, rec.decrypted.clone())
        }
    };

    // The loop device, only if it is still over this view: a number freed since may be
    // someone else's now.
    let loop_device = rec
        .loop_device
        .clone()
        .filter(|d| loop_over(d, &rec.decrypted));
    if rec.loop_device.is_some() && loop_device.is_none() {
        why.push("its loop device is gone".into());
    }
    if let Some(dev) = &loop_device {
        block = numbers_of(dev.trim_start_matches("/dev/"));
    }

    // The filesystem: mounted at the recorded place, under the mount root (nothing outside
    // it is ours to touch), from this view.
    let mounted = match &rec.mountpoint {
        Some(mp) if mp.starts_with(mount_root) && mp != mount_root => {
            let here = mounts::mounts()
                .into_iter()
                .rev()
                .find(|m| m.mountpoint == *mp);
            let ours = here.as_ref().is_some_and(|m| {
                loop_device.as_deref() == Some(m.source.as_str())
                    || Path::new(&m.source) == rec.decrypted
                    || block.as_deref() == Some(m.numbers.as_str())
            });
            match &here {
                None => why.push(format!("{} is not mounted any more", mp.display())),
                Some(_) if !ours => why.push(format!("{} holds another filesystem", mp.display())),
                // Asked only of a mount whose view is served: a dead one may not answer.
                Some(_) if why.is_empty() && mounts::is_dead(mp) => {
                    why.push(format!("{} is dead", mp.display()))
                }
                Some(_) => {}
            }
            Some(MountedFs {
                mountpoint: mp.clone(),
                fs_type: rec
                    .mount_fs_type
                    .or(rec.fs_type)
                    .unwrap_or(crate::protocol::FsType::Ntfs),
                loop_device,
                made_dirs: rec
                    .made_dirs
                    .iter()
                    .filter(|d| d.starts_with(mount_root) && *d != mount_root)
                    .cloned()
                    .collect::<Vec<PathBuf>>(),
                // As mountinfo has it now, if the record does not say.
                driver: rec
                    .fs_driver
                    .as_deref()
                    .and_then(crate::daemon::mount::driver_named)
                    .unwrap_or("unknown"),
                read_only: rec.mount_read_only || mounts::read_only_at(mp).unwrap_or(rec.read_only),
                notice: rec.notice.clone(),
            })
            // A mount that is not ours stays; only what is ours is undone.
            .filter(|_| here.is_none() || ours)
        }
        Some(mp) => {
            why.push(format!("{} is outside the mount root", mp.display()));
            None
        }
        None => None,
    };
    let session = Session {
        view,
        owner: rec.owner(),
        fs: rec.fs(),
        mounted,
        read_only: rec.read_only,
        record: None,
        shown: None,
    };
    (session, why.into_iter().next())
}
