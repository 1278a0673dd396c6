//! Telling the desktop (udisks: GNOME, KDE) which drives are ours.
//!
//! The udev rule guilocker installs (packaging/udev/75-guilocker.rules) marks our dm-crypt
//! mappings and our loop devices `UDISKS_IGNORE=1` always, and BitLocker drives only while
//! the flag file [`FLAG`] exists in the runtime directory: the daemon keeps it there while it
//! runs and the config does not leave BitLocker drives to the desktop. udev applies the rule
//! only when a device has an event, so whenever the flag changes the daemon asks udev to look
//! again at the BitLocker drives already there (an internal disk, seen by udev's coldplug
//! before the daemon started): the desktop stops, or starts again, offering them at once.

use crate::process::Command;
use std::path::Path;
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
