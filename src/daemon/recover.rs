//! After a crash: what an earlier daemon left mounted in our runtime directory.
//!
//! Under systemd a crashed daemon's engines and FUSE drivers are killed with it, leaving
//! dead mounts ("Transport endpoint is not connected"): the user's filesystem over a loop
//! device or a file inside an engine's view, and the view itself. Those are detached and
//! their directories removed. Views still served by a live engine are left alone.
//!
//! Volumes an earlier daemon recorded are handled before, by [`super::adopt`]: what it
//! adopted is left alone here.
//!
//! dm-crypt mappings (`guilocker-*`) outlive any daemon: the kernel serves them. A dead FUSE
//! driver's mount on one is detached; a mapping nothing uses any more is closed; one still
//! mounted is left to its user.
//!
//! A mount's source is whatever its maker wrote (any user may name a FUSE mount after our
//! files): a user's filesystem is taken for ours only where we mount them, under the mount
//! root, whose directories only root can write.

use super::dmcrypt;
use super::mount;
use super::mounts::{self, Mount};
use super::view::view_files;
use std::path::{Path, PathBuf};

/// The loop devices whose backing file is `file`.
fn loops_over(file: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            (Path::new(backing.trim_end()) == file).then(|| format!("/dev/{name}"))
        })
        .collect()
}

/// Detaches a dead mount left behind and removes its directories if empty.
fn detach_dead(mountpoint: &Path, mount_root: &Path) {
    log::warn!(
        "{}: left behind by an earlier guilocker; detaching it",
        mountpoint.display()
    );
    if let Err(e) = mount::unmount_path(mountpoint, true) {
        log::warn!("{e}");
    }
    // Only what is empty goes: rmdir, never rm -r.
    let parent = mountpoint.parent().map(Path::to_owned);
    mount::remove_dirs(&[mountpoint.to_owned()]);
    if let Some(parent) = parent.filter(|p| p.starts_with(mount_root) && p != mount_root) {
        let _ = std::fs::remove_dir(parent);
    }
}

/// Closes the `guilocker-*` mappings nothing uses; returns how many.
fn clean_mappings(mount_root: &Path, adopted: &[PathBuf]) -> usize {
    let mut cleaned = 0;
    for (name, kname) in dmcrypt::mappings() {
        if adopted.contains(&dmcrypt::mapper_path(&name)) {
            continue;
        }
        let numbers = std::fs::read_to_string(Path::new("/sys/block").join(&kname).join("dev"))
            .unwrap_or_default();
        let mapper = dmcrypt::mapper_path(&name);
        let dead: Vec<PathBuf> = mounts::mounts()
            .into_iter()
            .filter(|m| {
                (m.numbers == numbers.trim() || Path::new(&m.source) == mapper)
                    && m.mountpoint.starts_with(mount_root)
                    && mounts::is_dead(&m.mountpoint)
            })
            .map(|m| m.mountpoint)
            .collect();
        for mountpoint in &dead {
            detach_dead(mountpoint, mount_root);
        }
        if dmcrypt::in_use(&kname) {
            log::warn!("{name}: still in use, left open by an earlier guilocker; leaving it");
            continue;
        }
        log::warn!("{name}: left open by an earlier guilocker; closing it");
        dmcrypt::close(&mapper.display().to_string(), &name, false);
        cleaned += 1;
    }
    cleaned
}

/// Cleans up dead leftovers under `runtime_dir` (views) and `mount_root` (the users'
/// filesystems on them), and unused mappings; returns how many volumes were cleaned. The
/// views in `adopted` are taken over ([`super::adopt`]): left alone.
pub fn clean_stale(runtime_dir: &Path, mount_root: &Path, adopted: &[PathBuf]) -> usize {
    let views_dir = runtime_dir.join(super::core::VIEWS_DIR);
    let all = mounts::mounts();
    let views: Vec<&Mount> = all
        .iter()
        .filter(|m| m.mountpoint.starts_with(&views_dir) && m.mountpoint != views_dir)
        .filter(|m| !adopted.contains(&m.mountpoint))
        .collect();
    let mut cleaned = 0;
    for view in views {
        let files = view_files(&view.mountpoint);
        if !mounts::is_dead(&view.mountpoint) {
            log::warn!(
                "{} is still served by an engine of an earlier guilocker; leaving it",
                view.mountpoint.display()
            );
            continue;
        }
        let loops: Vec<String> = files.iter().flat_map(|f| loops_over(f)).collect();
        // The user's filesystem: mounted from the decrypted file or a loop device over it.
        let users: Vec<PathBuf> = all
            .iter()
            .filter(|m| {
                (files.iter().any(|f| Path::new(&m.source) == f) || loops.contains(&m.source))
                    && m.mountpoint.starts_with(mount_root)
            })
            .map(|m| m.mountpoint.clone())
            .collect();
        for mountpoint in &users {
            detach_dead(mountpoint, mount_root);
        }
        for dev in &loops {
            mount::detach_loop(dev);
        }
        log::warn!(
            "{}: dead view of an earlier guilocker; detaching it",
            view.mountpoint.display()
        );
        if let Err(e) = mount::unmount_path(&view.mountpoint, true) {
            log::warn!("{e}");
        }
        mount::remove_dirs(std::slice::from_ref(&view.mountpoint));
        cleaned += 1;
    }
    cleaned + clean_mappings(mount_root, adopted)
}
