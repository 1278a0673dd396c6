//! "Safe to remove": once the last volume of a stick is put away, its cache is flushed to
//! it and, for a USB stick, the USB device is powered off as udisks does (its light goes
//! out and the kernel forgets it). Other devices (loop devices, internal disks) are only
//! flushed.

use super::host::sysfs::Sysfs;
use std::path::Path;

/// Flushes `disk` (`/dev/<disk>`) and, when `power_off` and it is on USB, powers it off.
/// Returns what was done, for the log.
pub fn safe_to_remove(
    dev_dir: &Path,
    sys: Sysfs,
    disk: &str,
    power_off: bool,
) -> Result<String, String> {
    let node = dev_dir.join(disk);
    std::fs::File::open(&node)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot flush {}: {e}", node.display()))?;
    if !power_off {
        return Ok(format!("{} flushed", node.display()));
    }
    let Some(usb) = sys.usb_device(disk) else {
        return Ok(format!(
            "{} flushed (not on USB: left powered)",
            node.display()
        ));
    };
    std::fs::write(usb.join("remove"), "1")
        .map_err(|e| format!("cannot power off {}: {e}", usb.display()))?;
    Ok(format!(
        "{} flushed and powered off ({})",
        node.display(),
        usb.display()
    ))
}
