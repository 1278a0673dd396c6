//! Telling the desktop (udisks: GNOME, KDE) which drives are ours.
//!
//! The udev rule guilocker installs (packaging/udev/75-guilocker.rules) marks our dm-crypt
//! mappings and our loop devices `UDISKS_IGNORE=1` always, and BitLocker drives only while
//! the flag file [`FLAG`] exists in the runtime directory: the daemon keeps it there while it
//! runs and the config does not leave BitLocker drives to the desktop. udev applies the rule
//! only when a device has an event, so whenever the flag changes the daemon asks udev to look
//! again at the BitLocker drives already there (an internal disk, seen by udev's coldplug
//! before the daemon started): the desktop stops, or starts again, offering them at once.
//!
//! A volume unlocked on dm-crypt is shown to the desktop while it is unlocked: a file named
//! after its partition in [`UNLOCKED`] (holding its owner's user name) lifts the partition's
//! `UDISKS_IGNORE`, so udisks links it to our mapping (`CRYPT-BITLK-…`) and file managers
//! show a volume by its label, under its drive, with an Eject button. The same file tells
//! the polkit rule (packaging/polkit) whose volume it is: `guilocker owns`.

use crate::process::Command;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the flag file in the runtime directory (`/run/guilocker/handles-bitlocker`).
pub const FLAG: &str = "handles-bitlocker";
/// The runtime directory the udev rule looks in: only a daemon using it speaks for the desktop.
const RULE_RUNTIME_DIR: &str = "/run/guilocker";
const UDEVADM: &str = "udevadm";

/// When udev is asked to look again: before the call returns (at start, before the loop
/// runs, and at exit, before the process ends), or on a thread of its own (a reload, on the
/// event loop, which must not wait on a child).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retrigger {
    Now,
    Aside,
}

/// Creates or removes the flag to match `handle`; when that changes it, has udev apply the
/// rule again to the BitLocker drives present.
pub fn announce(runtime_dir: &Path, handle: bool, how: Retrigger) {
    let flag = runtime_dir.join(FLAG);
    let changed = flag.exists() != handle;
    let result = if handle {
        std::fs::write(&flag, b"")
    } else {
        std::fs::remove_file(&flag).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })
    };
    if let Err(e) = result {
        log::warn!("cannot update {}: {e}", flag.display());
        return;
    }
    if changed && runtime_dir == Path::new(RULE_RUNTIME_DIR) {
        match how {
            Retrigger::Now => retrigger(),
            Retrigger::Aside => {
                let spawned = std::thread::Builder::new()
                    .name("guilocker-udev".into())
                    .spawn(retrigger);
                if let Err(e) = spawned {
                    log::warn!("cannot start a thread to tell udev: {e}");
                }
            }
        }
    }
}

/// The folder in the runtime directory naming the volumes unlocked on dm-crypt.
pub const UNLOCKED: &str = "unlocked";

/// The marks that show a volume unlocked on dm-crypt to the desktop, until dropped: one
/// named after the partition (`sdb1`, holding its owner's name: the polkit rule's), one
/// after our mapping (`guilocker-sdb1`). Dropped (closed, or a job that panicked), they go.
#[derive(Debug)]
pub struct Shown {
    marks: Vec<PathBuf>,
    /// The partition and the mapping, for udev to look at again.
    devices: Vec<PathBuf>,
}

impl Shown {
    /// Writes the marks (root's, readable by all: polkit's helper runs as polkitd) and has
    /// udev look at the partition `device` (kernel name `name`) and `mapping` again. Only a
    /// daemon using the rules' runtime directory speaks for the desktop; any other shows
    /// nothing. Best effort: the volume works unseen by the desktop all the same.
    pub fn show(
        runtime_dir: &Path,
        device: &str,
        name: &str,
        mapping: &str,
        owner: &str,
    ) -> Option<Self> {
        use std::os::unix::fs::DirBuilderExt;
        if runtime_dir != Path::new(RULE_RUNTIME_DIR) {
            return None;
        }
        let dir = runtime_dir.join(UNLOCKED);
        if let Err(e) = std::fs::DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create(&dir)
        {
            log::warn!("{device}: cannot create {}: {e}", dir.display());
            return None;
        }
        let mut shown = Self {
            marks: Vec::new(),
            devices: vec![device.into(), super::dmcrypt::mapper_path(mapping)],
        };
        for (mark, text) in [(name, owner), (mapping, owner)] {
            let mark = dir.join(mark);
            if let Err(e) = std::fs::write(&mark, text) {
                log::warn!("{device}: cannot write {}: {e}", mark.display());
                return None; // dropped: what was written goes
            }
            shown.marks.push(mark);
        }
        tell_udev(&shown.devices);
        Some(shown)
    }
}

impl Drop for Shown {
    /// Removes the marks; udev looks again, and the desktop leaves the drive alone.
    fn drop(&mut self) {
        for mark in &self.marks {
            if let Err(e) = std::fs::remove_file(mark) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cannot remove {}: {e}", mark.display());
                }
            }
        }
        if !self.marks.is_empty() {
            tell_udev(&self.devices);
        }
    }
}

/// `udevadm trigger --action=change` on each of `devices` that is still there.
fn tell_udev(devices: &[PathBuf]) {
    for device in devices.iter().filter(|d| d.exists()) {
        let trigger = Command::new(UDEVADM)
            .args(["trigger", "--action=change"])
            .arg(device);
        if let Err(e) = trigger.run(Duration::from_secs(10)) {
            log::warn!(
                "{}: cannot have udev look at it again: {e}",
                device.display()
            );
        }
    }
}

/// At start: the marks an earlier daemon left (it died with volumes unlocked) go, and udev
/// looks again at what they named; those of the volumes it adopts are written again.
pub fn forget_shown(runtime_dir: &Path) {
    let dir = runtime_dir.join(UNLOCKED);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        log::warn!("cannot remove {}: {e}", dir.display());
    }
    if runtime_dir == Path::new(RULE_RUNTIME_DIR) {
        let devices: Vec<PathBuf> = names
            .iter()
            .map(|n| match n.starts_with(super::dmcrypt::MAPPING_PREFIX) {
                true => super::dmcrypt::mapper_path(n),
                false => Path::new("/dev").join(n),
            })
            .collect();
        tell_udev(&devices);
    }
}

/// Is the filesystem at `mountpoint` mounted from `decrypted` itself (a kernel driver, or
/// ntfs-3g's fuseblk), so udisks sees it mounted? A plain FUSE mount (fusefat) has a device
/// number of its own: shown, the mapping would look unmounted, and the desktop could mount
/// it a second time.
pub fn mounted_from(decrypted: &Path, mountpoint: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(decrypted) else {
        return false;
    };
    let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    super::mounts::mount_at(mountpoint).is_some_and(|m| m.numbers == format!("{major}:{minor}"))
}

/// The user whose volume `device` is, as udisks names it to polkit: a partition
/// (`/dev/sdb1`) or our mapping over it (`/dev/mapper/guilocker-sdb1`, `/dev/dm-3`), with its
/// mark in `runtime_dir`, and our mapping over that partition now (a mark left behind
/// names nobody). `None` for anything else. Reads sysfs (`sys_block`: /sys/class/block),
/// never /dev: polkit runs its helpers with a private /dev (PrivateDevices).
pub fn owner_of(runtime_dir: &Path, sys_block: &Path, device: &str) -> Option<String> {
    use super::dmcrypt::MAPPING_PREFIX;
    let dm_name = |kname: &str| {
        std::fs::read_to_string(sys_block.join(kname).join("dm/name"))
            .ok()
            .map(|n| n.trim_end().to_owned())
    };
    let only_entry = |dir: PathBuf| {
        let mut entries = std::fs::read_dir(dir).ok()?.flatten();
        match (entries.next(), entries.next()) {
            (Some(one), None) => one.file_name().into_string().ok(),
            _ => None,
        }
    };
    let kname = match device.strip_prefix("/dev/mapper/") {
        Some(mapping) => std::fs::read_dir(sys_block)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .find(|k| k.starts_with("dm-") && dm_name(k).as_deref() == Some(mapping))?,
        None => device.strip_prefix("/dev/")?.to_owned(),
    };
    if kname.contains('/') || kname.starts_with('.') {
        return None;
    }
    let is_ours = |k: &str| dm_name(k).is_some_and(|n| n.starts_with(MAPPING_PREFIX));
    let partition = if is_ours(&kname) {
        only_entry(sys_block.join(&kname).join("slaves"))?
    } else {
        let holder = only_entry(sys_block.join(&kname).join("holders"))?;
        if !is_ours(&holder) {
            return None;
        }
        kname
    };
    std::fs::read_to_string(runtime_dir.join(UNLOCKED).join(partition)).ok()
}

/// `udevadm trigger --action=change` on the block devices udev knows as BitLocker. No
/// `--settle`: udev works through them on its own, and the daemon does not wait for it.
fn retrigger() {
    if crate::process::find_program(UDEVADM).is_none() {
        log::debug!("no {UDEVADM}: the desktop learns of the change at the next plug");
        return;
    }
    let trigger = Command::new(UDEVADM).args([
        "trigger",
        "--action=change",
        "--subsystem-match=block",
        "--property-match=ID_FS_TYPE=BitLocker",
    ]);
    match trigger.run(Duration::from_secs(10)) {
        Ok(_) => log::info!("udev told to look again at the BitLocker drives present"),
        Err(e) => log::warn!("cannot have udev look again at the BitLocker drives: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_partition_and_of_our_mapping_over_it() {
        let root = std::env::temp_dir().join(format!("guilocker-owns-{}", std::process::id()));
        let (run, sys) = (root.join("run"), root.join("sys"));
        for dir in [
            run.join(UNLOCKED),
            sys.join("sdb1/holders/dm-3"),
            sys.join("dm-3/dm"),
            sys.join("dm-3/slaves/sdb1"),
            sys.join("sdc1/holders/dm-4"),
            sys.join("dm-4/dm"),
            sys.join("dm-4/slaves/sdc1"),
            sys.join("sdd1"),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(sys.join("dm-3/dm/name"), "guilocker-sdb1\n").unwrap();
        std::fs::write(sys.join("dm-4/dm/name"), "luks-1234\n").unwrap();
        for name in ["sdb1", "sdc1", "sdd1"] {
            std::fs::write(run.join(UNLOCKED).join(name), "alice").unwrap();
        }

        // No /dev is read: these nodes need not exist (polkit's private /dev).
        let owner = |device: &str| owner_of(&run, &sys, device);
        assert_eq!(owner("/dev/sdb1").as_deref(), Some("alice"));
        assert_eq!(
            owner("/dev/mapper/guilocker-sdb1").as_deref(),
            Some("alice")
        );
        assert_eq!(owner("/dev/dm-3").as_deref(), Some("alice"));
        // Marked, but held by someone else's mapping, or by none (a mark left behind).
        assert_eq!(owner("/dev/sdc1"), None);
        assert_eq!(owner("/dev/mapper/luks-1234"), None);
        assert_eq!(owner("/dev/sdd1"), None);
        // Not a device name.
        assert_eq!(owner("/dev/../run/x"), None);
        assert_eq!(owner("sdb1"), None);
        assert_eq!(owner("/dev/sdz9"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
