//! "Safe to remove": once the last volume of a stick is put away, its cache is flushed to
//! it and, for a USB stick, the USB device is powered off as udisks does (its light goes
//! out and the kernel forgets it). Other devices (loop devices, internal disks) are only
//! flushed.

use std::path::{Path, PathBuf};

const SYS_CLASS_BLOCK: &str = "/sys/class/block";

/// The whole disk a block device belongs to (`sdb1` → `sdb`; a disk is its own).
pub fn disk_of(name: &str) -> String {
    let dir = Path::new(SYS_CLASS_BLOCK).join(name);
    if !dir.join("partition").exists() {
        return name.to_owned();
    }
    std::fs::canonicalize(&dir)
        .ok()
        .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| name.to_owned())
}

/// The sysfs directory of the USB device under `disk`, if it sits on USB: the nearest
/// ancestor of its device that is a USB device (has `idVendor`) and can be removed.
fn usb_device(disk: &str) -> Option<PathBuf> {
    let device =
        std::fs::canonicalize(Path::new(SYS_CLASS_BLOCK).join(disk).join("device")).ok()?;
    device
        .ancestors()
        .take_while(|p| p.starts_with("/sys/devices"))
        .find(|p| p.join("idVendor").exists() && p.join("remove").exists())
        .map(Path::to_owned)
}

/// Flushes `disk` (`/dev/<disk>`) and, when `power_off` and it is on USB, powers it off.
/// Returns what was done, for the log.
pub fn safe_to_remove(dev_dir: &Path, disk: &str, power_off: bool) -> Result<String, String> {
    let node = dev_dir.join(disk);
    std::fs::File::open(&node)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot flush {}: {e}", node.display()))?;
    if !power_off {
        return Ok(format!("{} flushed", node.display()));
    }
    let Some(usb) = usb_device(disk) else {
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
