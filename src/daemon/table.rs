//! The device table: every block device the daemon knows, by kernel name. Owned by the
//! event loop's [`super::core::Core`]; nothing else touches it.

use super::device::Device;
use super::watch::Snapshot;
use std::collections::BTreeMap;

#[derive(Default)]
pub struct Table {
    pub devices: BTreeMap<String, Device>,
    /// /proc/partitions as last read.
    pub snapshot: Snapshot,
    pub next_generation: u64,
}

impl Table {
    /// Finds a device by `/dev/NAME`, `NAME`, its mountpoint or its decrypted view.
    pub fn find(&self, target: &str) -> Option<&Device> {
        let trimmed = target.trim_end_matches('/');
        if let Some(d) = self.devices.get(device_name(target)) {
            return Some(d);
        }
        self.devices.values().find(|d| {
            d.session().is_some_and(|s| {
                s.mounted
                    .as_ref()
                    .is_some_and(|m| m.mountpoint.as_os_str() == trimmed)
                    || s.view.is_at(trimmed)
            })
        })
    }

    pub fn find_mut(&mut self, target: &str) -> Option<&mut Device> {
        let name = self.find(target)?.name.clone();
        self.devices.get_mut(&name)
    }

    /// The device a job started on, if it is still that appearance (not unplugged, not
    /// re-plugged under the same name): the one place results are matched to devices.
    pub fn current(&mut self, name: &str, generation: u64) -> Option<&mut Device> {
        self.devices
            .get_mut(name)
            .filter(|d| d.generation == generation)
    }
}

/// The kernel name a request's target names (`/dev/sdb1` → `sdb1`), when it names a device.
pub fn device_name(target: &str) -> &str {
    let trimmed = target.trim_end_matches('/');
    trimmed.strip_prefix("/dev/").unwrap_or(trimmed)
}
