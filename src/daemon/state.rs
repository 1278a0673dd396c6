//! The device table: what the daemon knows of each block device and what it made for it.

use super::filesystem::FsInfo;
use super::mount::{MountedFs, Owner};
use super::view::View;
use super::watch::{Appearance, Snapshot};
use crate::bitlocker::Metadata;
use crate::protocol::{DeviceInfo, DeviceState, Protector};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// What the BitLocker metadata says of a volume, for status and the dialog.
#[derive(Debug, Clone, Default)]
pub struct VolumeFacts {
    pub guid: Option<String>,
    pub description: Option<String>,
    pub protectors: Vec<Protector>,
    pub recovery_key_ids: Vec<String>,
}

impl VolumeFacts {
    pub fn from_metadata(meta: &Metadata) -> Self {
        let info = &meta.info;
        let mut protectors: Vec<Protector> = info.protectors.iter().map(|p| p.kind).collect();
        protectors.dedup();
        Self {
            guid: Some(info.guid.to_string()),
            // Text from a stranger's disk: no control characters, bounded.
            description: Some(
                info.description
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(256)
                    .collect::<String>(),
            )
            .filter(|d| !d.trim().is_empty()),
            protectors,
            recovery_key_ids: info
                .protectors
                .iter()
                .filter_map(|p| p.key_id.map(|id| id.to_string()))
                .collect(),
        }
    }
}

/// An unlocked volume: the engine serving its view and, when mounted, the filesystem.
pub struct Session {
    pub view: View,
    pub owner: Owner,
    pub fs: Option<FsInfo>,
    pub mounted: Option<MountedFs>,
    pub read_only: bool,
}

pub struct Device {
    /// Kernel name, e.g. `sdb1`.
    pub name: String,
    /// `/dev/sdb1`
    pub path: String,
    pub appearance: Appearance,
    /// Changes on every appearance, so a finishing operation can tell the device it started
    /// on from a re-plugged one with the same name.
    pub generation: u64,
    /// `None` until probed.
    pub bitlocker: Option<bool>,
    pub state: DeviceState,
    pub error: Option<String>,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub volume: VolumeFacts,
    /// The parsed BitLocker metadata, when it could be read (unlock derives keys from it).
    pub metadata: Option<Arc<Metadata>>,
    pub session: Option<Session>,
    /// An unlock or unmount is under way (its thread holds the session).
    pub busy: bool,
    /// Probes that found no device node yet.
    pub probe_attempts: u8,
    /// The config, when this device appeared, left BitLocker drives to the desktop.
    pub left_to_desktop: bool,
}

impl Device {
    pub fn info(&self) -> DeviceInfo {
        let s = self.session.as_ref();
        DeviceInfo {
            device: self.path.clone(),
            bitlocker: self.bitlocker.unwrap_or(false),
            state: self.state,
            mountpoint: s
                .and_then(|s| s.mounted.as_ref())
                .map(|m| m.mountpoint.display().to_string()),
            decrypted: s.map(|s| s.view.decrypted.display().to_string()),
            engine: s.map(|s| s.view.engine),
            label: s.and_then(|s| s.fs.as_ref()).and_then(|f| f.label.clone()),
            size_bytes: self.appearance.partition.size_bytes(),
            owner: s.map(|s| s.owner.name.clone()),
            fs_type: s.and_then(|s| s.fs.as_ref()).map(|f| f.fs_type),
            read_only: s.is_some_and(|s| s.read_only),
            error: self.error.clone(),
            vendor: self.vendor.clone(),
            model: self.model.clone(),
            guid: self.volume.guid.clone(),
            description: self.volume.description.clone(),
            protectors: self.volume.protectors.clone(),
            recovery_key_ids: self.volume.recovery_key_ids.clone(),
            diskseq: self.appearance.diskseq,
            left_to_desktop: self.left_to_desktop,
        }
    }
}

#[derive(Default)]
pub struct Table {
    pub devices: BTreeMap<String, Device>,
    pub snapshot: Snapshot,
    pub next_generation: u64,
    /// Mountpoints chosen by unlocks still in progress.
    pub reserved: HashSet<PathBuf>,
    pub shutting_down: bool,
}

impl Table {
    /// Finds a device by `/dev/NAME`, `NAME`, its mountpoint or its decrypted view.
    pub fn find(&self, target: &str) -> Option<&Device> {
        let trimmed = target.trim_end_matches('/');
        let name = trimmed.strip_prefix("/dev/").unwrap_or(trimmed);
        if let Some(d) = self.devices.get(name) {
            return Some(d);
        }
        self.devices.values().find(|d| {
            d.session.as_ref().is_some_and(|s| {
                s.mounted
                    .as_ref()
                    .is_some_and(|m| m.mountpoint.as_os_str() == trimmed)
                    || s.view.is_at(trimmed)
            })
        })
    }

    pub fn find_name(&self, target: &str) -> Option<String> {
        self.find(target).map(|d| d.name.clone())
    }
}
