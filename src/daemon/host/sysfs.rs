//! What sysfs says of a block device: the disk it belongs to, how that disk is attached (a USB
//! stick, a memory card, an image file, or a disk inside the machine), who holds it, and what
//! else hangs off the same USB device.
//!
//! Removable is decided as udisks decides it (`udiskslinuxblock.c`, `update_hints`): a disk
//! with removable media, or one on USB, FireWire or a memory-card bus, is something a person
//! plugged in; anything else is part of the machine. A loop device counts as plugged in: the
//! daemon watches loop devices only when `include_loop_devices` asks it to, and then an
//! attached image is a stick by intent.

use crate::protocol::Connection;
use std::path::{Path, PathBuf};

/// A view of `/sys/class/block` (tests point it at a tree of their own).
#[derive(Debug, Clone, Copy)]
pub struct Sysfs<'a> {
    class_block: &'a Path,
}

impl<'a> Sysfs<'a> {
    pub fn new(class_block: &'a Path) -> Self {
        Self { class_block }
    }

    /// Whether sysfs has a block device of this name (a plain name, no `/`).
    pub fn knows(&self, name: &str) -> bool {
        !name.is_empty() && !name.contains('/') && self.class_block.join(name).exists()
    }

    /// The device's directory under /sys/devices (the link behind `/sys/class/block/NAME`).
    fn real_dir(&self, name: &str) -> Option<PathBuf> {
        std::fs::canonicalize(self.class_block.join(name)).ok()
    }

    /// The whole disk a block device belongs to (`sdb1` → `sdb`; a disk is its own).
    pub fn disk_of(&self, name: &str) -> String {
        if !self.class_block.join(name).join("partition").exists() {
            return name.to_owned();
        }
        self.real_dir(name)
            .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
            .unwrap_or_else(|| name.to_owned())
    }

    /// How the disk of `name` is attached, and whether a person can take it away.
    pub fn attachment(&self, name: &str) -> Attachment {
        let disk = self.disk_of(name);
        let media_removable =
            std::fs::read_to_string(self.class_block.join(&disk).join("removable"))
                .is_ok_and(|s| s.trim() == "1");
        let connection = if crate::daemon::watch::is_loop(&disk) {
            Connection::Loop
        } else {
            self.real_dir(&disk)
                .and_then(|dir| bus_of(&dir))
                .unwrap_or(Connection::Internal)
        };
        Attachment {
            connection,
            removable: media_removable || connection != Connection::Internal,
        }
    }

    /// The sysfs directory of the USB device `name` sits on: the nearest ancestor of its disk
    /// that is a whole USB device (has `idVendor`) and can be removed.
    pub fn usb_device(&self, name: &str) -> Option<PathBuf> {
        let dir = self.real_dir(&self.disk_of(name))?;
        dir.ancestors()
            .skip(1)
            .take_while(|p| p.starts_with(sys_devices_of(&dir)))
            .find(|p| p.join("idVendor").exists() && p.join("remove").exists())
            .map(Path::to_owned)
    }

    /// The block devices that hold `name` (`holders/`: a device-mapper table, a RAID, a loop
    /// device over it), and theirs in turn, nearest first.
    pub fn holders(&self, name: &str) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        let mut next = vec![name.to_owned()];
        while let Some(current) = next.pop() {
            for holder in self.direct_holders(&current) {
                // A cycle cannot happen in a real kernel; a crafted tree must not loop us.
                if holder != name && !found.contains(&holder) && found.len() < 64 {
                    found.push(holder.clone());
                    next.push(holder);
                }
            }
        }
        found
    }

    /// The block devices sitting directly on `name` (its `holders/`), sorted.
    pub fn direct_holders(&self, name: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.class_block.join(name).join("holders")) else {
            return Vec::new();
        };
        let mut found: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        found
    }

    /// A device-mapper device's name and uuid (`dm/name`, `dm/uuid`; the uuid may be empty).
    pub fn dm_name(&self, name: &str) -> Option<(String, String)> {
        let dm = self.class_block.join(name).join("dm");
        let read = |f: &str| std::fs::read_to_string(dm.join(f)).map(|s| s.trim_end().to_owned());
        Some((read("name").ok()?, read("uuid").unwrap_or_default()))
    }

    /// Every block device whose device lives under `dir` (a USB device: its disks and their
    /// partitions), with their holders, sorted and without repeats.
    pub fn block_devices_under(&self, dir: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.class_block) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| self.real_dir(n).is_some_and(|p| p.starts_with(dir)))
            .collect();
        let held: Vec<String> = names.iter().flat_map(|n| self.holders(n)).collect();
        names.extend(held);
        names.sort();
        names.dedup();
        names
    }

    /// `major:minor` of a block device, as mountinfo names the device a filesystem is on.
    pub fn dev_numbers(&self, name: &str) -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(self.class_block.join(name).join("dev")).ok()?;
        let (major, minor) = text.trim().split_once(':')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    }
}

/// Where a disk sits and whether a person can unplug it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    pub connection: Connection,
    /// Plugged in by a person: removable media, or on USB, FireWire, a memory-card bus, or an
    /// attached image. An internal disk is never asked about unprompted.
    pub removable: bool,
}

/// `/sys/devices` above `dir` (or `dir`'s own root in a test tree).
fn sys_devices_of(dir: &Path) -> &Path {
    dir.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "devices"))
        .unwrap_or(Path::new("/"))
}

/// The bus a device hangs from: the first ancestor whose `subsystem` names one people plug
/// things into.
fn bus_of(dir: &Path) -> Option<Connection> {
    dir.ancestors()
        .take_while(|p| p.starts_with(sys_devices_of(dir)))
        .find_map(|p| {
            let subsystem = std::fs::read_link(p.join("subsystem")).ok()?;
            match subsystem.file_name()?.to_str()? {
                "usb" => Some(Connection::Usb),
                "mmc" | "memstick" => Some(Connection::Mmc),
                "firewire" | "ieee1394" => Some(Connection::Ieee1394),
                _ => None,
            }
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A small sysfs: a USB stick `sda` (two partitions, `sda1` held by `dm-0`), an internal
    /// NVMe disk with a partition, an SD card, and a loop device. Other host tests use it too.
    pub(crate) struct Tree {
        pub(crate) root: PathBuf,
    }

    impl Tree {
        pub(crate) fn new(tag: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("guilocker-sysfs-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let t = Self { root };
            let usb = "devices/pci0000:00/0000:00:14.0/usb2/2-1";
            t.subsystem("devices/bus/usb", usb);
            t.subsystem("devices/bus/usb", &format!("{usb}/2-1:1.0"));
            t.file(&format!("{usb}/idVendor"), "0781");
            t.file(&format!("{usb}/remove"), "");
            let sda = format!("{usb}/2-1:1.0/host0/target0:0:0/0:0:0:0/block/sda");
            t.disk(&sda, "sda", "0", "8:0");
            t.partition(&sda, "sda1", "8:1");
            t.partition(&sda, "sda2", "8:2");
            t.disk("devices/virtual/block/dm-0", "dm-0", "0", "254:0");
            t.holder("sda1", "dm-0");
            let nvme = "devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1";
            t.subsystem("devices/bus/pci", "devices/pci0000:00/0000:00:1d.0");
            t.disk(nvme, "nvme0n1", "0", "259:0");
            t.partition(nvme, "nvme0n1p3", "259:3");
            let sd = "devices/pci0000:00/0000:00:1e.0/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0";
            t.subsystem(
                "devices/bus/mmc",
                "devices/pci0000:00/0000:00:1e.0/mmc_host/mmc0/mmc0:aaaa",
            );
            t.disk(sd, "mmcblk0", "0", "179:0");
            t.disk("devices/virtual/block/loop3", "loop3", "0", "7:3");
            t
        }

        pub(crate) fn file(&self, path: &str, text: &str) {
            let path = self.root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }

        fn subsystem(&self, bus: &str, dev: &str) {
            std::fs::create_dir_all(self.root.join(bus)).unwrap();
            std::fs::create_dir_all(self.root.join(dev)).unwrap();
            symlink(self.root.join(bus), self.root.join(dev).join("subsystem")).unwrap();
        }

        pub(crate) fn disk(&self, dir: &str, name: &str, removable: &str, dev: &str) {
            self.file(&format!("{dir}/removable"), removable);
            self.file(&format!("{dir}/dev"), dev);
            std::fs::create_dir_all(self.root.join(dir).join("holders")).unwrap();
            std::fs::create_dir_all(self.root.join("class/block")).unwrap();
            symlink(
                self.root.join(dir),
                self.root.join("class/block").join(name),
            )
            .unwrap();
        }

        pub(crate) fn partition(&self, disk: &str, name: &str, dev: &str) {
            let dir = format!("{disk}/{name}");
            self.file(&format!("{dir}/partition"), "1");
            self.file(&format!("{dir}/dev"), dev);
            std::fs::create_dir_all(self.root.join(&dir).join("holders")).unwrap();
            symlink(
                self.root.join(&dir),
                self.root.join("class/block").join(name),
            )
            .unwrap();
        }

        pub(crate) fn holder(&self, of: &str, holder: &str) {
            let link = self
                .root
                .join("class/block")
                .join(of)
                .join("holders")
                .join(holder);
            symlink(self.root.join("class/block").join(holder), link).unwrap();
        }

        pub(crate) fn sysfs(&self) -> (PathBuf, PathBuf) {
            (self.root.join("class/block"), self.root.clone())
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn usb_sticks_cards_and_images_are_removable_internal_disks_are_not() {
        let tree = Tree::new("attach");
        let (class, _) = tree.sysfs();
        let sys = Sysfs::new(&class);
        let usb = Attachment {
            connection: Connection::Usb,
            removable: true,
        };
        assert_eq!(sys.attachment("sda1"), usb);
        assert_eq!(sys.attachment("sda"), usb);
        assert_eq!(
            sys.attachment("nvme0n1p3"),
            Attachment {
                connection: Connection::Internal,
                removable: false
            }
        );
        assert_eq!(sys.attachment("mmcblk0").connection, Connection::Mmc);
        assert!(sys.attachment("mmcblk0").removable);
        assert_eq!(sys.attachment("loop3").connection, Connection::Loop);
        assert!(sys.attachment("loop3").removable);
        // An internal disk with removable media (a built-in card reader on SATA).
        tree.file(
            "devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1/removable",
            "1\n",
        );
        assert!(sys.attachment("nvme0n1p3").removable);
        // A name sysfs does not know is internal, never asked about.
        assert!(!sys.attachment("sdz9").removable);
    }

    #[test]
    fn disks_holders_and_what_hangs_off_a_usb_device() {
        let tree = Tree::new("tree");
        let (class, root) = tree.sysfs();
        let sys = Sysfs::new(&class);
        assert_eq!(sys.disk_of("sda2"), "sda");
        assert_eq!(sys.disk_of("sda"), "sda");
        assert_eq!(sys.holders("sda1"), ["dm-0"]);
        assert!(sys.holders("sda2").is_empty());
        assert_eq!(sys.dev_numbers("sda2"), Some((8, 2)));
        let usb = sys.usb_device("sda1").unwrap();
        assert_eq!(usb, root.join("devices/pci0000:00/0000:00:14.0/usb2/2-1"));
        assert_eq!(
            sys.block_devices_under(&usb),
            ["dm-0", "sda", "sda1", "sda2"]
        );
        assert_eq!(sys.usb_device("nvme0n1p3"), None);
        assert_eq!(sys.usb_device("loop3"), None);
    }
}
