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

/// The folder in the runtime directory naming the partitions unlocked on dm-crypt.
pub const UNLOCKED: &str = "unlocked";

/// The mark that shows a partition unlocked on dm-crypt to the desktop, until [`Shown::hide`].
#[derive(Debug)]
pub struct Shown {
    mark: PathBuf,
    device: String,
}

impl Shown {
    /// Writes `RUNTIME/unlocked/NAME` (root's, readable by all: polkit's helper runs as
    /// polkitd) with `owner` in it, and has udev look at `device` again. Only a daemon
    /// using the rules' runtime directory speaks for the desktop; any other shows nothing.
    /// Best effort: the volume works unseen by the desktop all the same.
    pub fn show(runtime_dir: &Path, device: &str, name: &str, owner: &str) -> Option<Self> {
        use std::os::unix::fs::DirBuilderExt;
        if runtime_dir != Path::new(RULE_RUNTIME_DIR) {
            return None;
        }
        let dir = runtime_dir.join(UNLOCKED);
        let made = std::fs::DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create(&dir);
        let mark = dir.join(name);
        if let Err(e) = made.and_then(|()| std::fs::write(&mark, owner)) {
            log::warn!("{device}: cannot write {}: {e}", mark.display());
            return None;
        }
        let shown = Self {
            mark,
            device: device.to_owned(),
        };
        shown.tell_udev();
        Some(shown)
    }

    /// Removes the mark; udev looks again, and the desktop leaves the locked partition alone.
    pub fn hide(self) {
        if let Err(e) = std::fs::remove_file(&self.mark) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!(
                    "{}: cannot remove {}: {e}",
                    self.device,
                    self.mark.display()
                );
            }
        }
        self.tell_udev();
    }

    fn tell_udev(&self) {
        if !Path::new(&self.device).exists() {
            return;
        }
        let trigger = Command::new(UDEVADM).args(["trigger", "--action=change", &self.device]);
        if let Err(e) = trigger.run(Duration::from_secs(10)) {
            log::warn!("{}: cannot have udev look at it again: {e}", self.device);
        }
    }
}

/// At start: the marks an earlier daemon left (it died with volumes unlocked) go; those
/// of the volumes it adopts are written again.
pub fn forget_shown(runtime_dir: &Path) {
    let dir = runtime_dir.join(UNLOCKED);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {e}", dir.display());
        }
    }
}

/// The user a partition, or our dm-crypt mapping over it, is unlocked for, as its mark in
/// `runtime_dir` says: `None` for anything else.
pub fn owner_of(runtime_dir: &Path, sys_block: &Path, device: &Path) -> Option<String> {
    let node = std::fs::canonicalize(device).ok()?;
    let name = node.file_name()?.to_str()?.to_owned();
    let dir = runtime_dir.join(UNLOCKED);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    if let Some(owner) = read(&name) {
        return Some(owner);
    }
    // A mapping of ours: the partition under it (its one slave).
    let sys = sys_block.join(&name);
    let mapping = std::fs::read_to_string(sys.join("dm/name")).ok()?;
    if !mapping
        .trim_end()
        .starts_with(super::dmcrypt::MAPPING_PREFIX)
    {
        return None;
    }
    let mut slaves = std::fs::read_dir(sys.join("slaves")).ok()?.flatten();
    let (Some(slave), None) = (slaves.next(), slaves.next()) else {
        return None;
    };
    read(slave.file_name().to_str()?)
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
        let (run, sys, dev) = (root.join("run"), root.join("sys"), root.join("dev"));
        for dir in [
            &dev,
            &run.join(UNLOCKED),
            &sys.join("dm-3/dm"),
            &sys.join("dm-3/slaves/sdb1"),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::create_dir_all(sys.join("dm-4/dm")).unwrap();
        std::fs::create_dir_all(sys.join("dm-4/slaves/sdb1")).unwrap();
        for node in ["sdb1", "sdc1", "dm-3", "dm-4"] {
            std::fs::write(dev.join(node), "").unwrap();
        }
        std::os::unix::fs::symlink(dev.join("dm-3"), dev.join("guilocker-sdb1")).unwrap();
        std::fs::write(run.join(UNLOCKED).join("sdb1"), "alice").unwrap();
        std::fs::write(sys.join("dm-3/dm/name"), "guilocker-sdb1\n").unwrap();
        std::fs::write(sys.join("dm-4/dm/name"), "luks-1234\n").unwrap();

        let owner = |node: &str| owner_of(&run, &sys, &dev.join(node));
        assert_eq!(owner("sdb1").as_deref(), Some("alice"));
        // Through /dev/mapper's link, as udisks names it.
        assert_eq!(owner("guilocker-sdb1").as_deref(), Some("alice"));
        // Someone else's mapping over the same partition, another partition, nothing.
        assert_eq!(owner("dm-4"), None);
        assert_eq!(owner("sdc1"), None);
        assert_eq!(owner("sdz9"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
