//! Telling the desktop (udisks: GNOME, KDE) which drives are ours.
//!
//! The udev rule guilocker installs (packaging/udev/75-guilocker.rules) marks our dm-crypt
//! mappings and our loop devices `UDISKS_IGNORE=1` always, and BitLocker drives only while
//! the flag file [`FLAG`] exists in the runtime directory: the daemon keeps it there while it
//! runs and the config does not leave BitLocker drives to the desktop. So with guilocker
//! stopped, or told to step aside, the desktop's own dialog is back for drives plugged in
//! from then on.

use std::path::Path;

/// Name of the flag file in the runtime directory (`/run/guilocker/handles-bitlocker`).
pub const FLAG: &str = "handles-bitlocker";

/// Creates or removes the flag to match `handle`.
pub fn announce(runtime_dir: &Path, handle: bool) {
    let flag = runtime_dir.join(FLAG);
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
    }
}
