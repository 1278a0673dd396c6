//! Who else uses a block device: a filesystem mounted from it, a device sitting on it (a
//! dm-crypt mapping made by udisks or cryptsetup, a RAID), or a program that opened it
//! exclusively. Asked before any engine starts, so a volume never gets a second writer.

use super::sysfs::Sysfs;
use crate::daemon::error::DaemonError;
use crate::daemon::mounts::{self, Mount};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// One user of a block device, as a refusal names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// A filesystem mounted from the device itself.
    Mounted(PathBuf),
    /// A block device on top of it (`holders/`), e.g. `dm-3`.
    Holder {
        name: String,
        /// Its device-mapper name (`bitlk-64769`), when it is a mapping.
        mapping: Option<String>,
        /// Who made it, as far as its name and uuid tell.
        made_by: Option<&'static str>,
        /// Where the holder's own filesystem is mounted.
        mounted: Option<PathBuf>,
    },
    /// The programs that have the device open, when something claims it exclusively and
    /// neither sysfs nor the mount table say what (empty: none could be found).
    Programs(Vec<(i32, String)>),
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mounted(path) => write!(f, "the filesystem mounted at {}", path.display()),
            Self::Holder {
                name,
                mapping,
                made_by,
                mounted,
            } => {
                write!(f, "/dev/{name}")?;
                let details: Vec<String> = [
                    mapping.clone(),
                    made_by.map(|who| format!("opened by {who}")),
                    mounted
                        .as_ref()
                        .map(|p| format!("mounted at {}", p.display())),
                ]
                .into_iter()
                .flatten()
                .collect();
                if !details.is_empty() {
                    write!(f, " ({})", details.join(", "))?;
                }
                Ok(())
            }
            Self::Programs(list) if list.is_empty() => {
                f.write_str("another program (it holds the device exclusively)")
            }
            Self::Programs(list) => f.write_str(&mounts::describe_holders(list)),
        }
    }
}

/// Who made a device-mapper device, from its name and uuid. udisks names its BitLocker
/// mappings `bitlk-<device number>` and its LUKS ones `luks-<uuid>`; cryptsetup gives every
/// mapping it makes a uuid starting `CRYPT-`, whatever name its user chose.
fn made_by(mapping: &str, uuid: &str) -> Option<&'static str> {
    let udisks = mapping
        .strip_prefix("bitlk-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        || mapping.starts_with("luks-");
    if mapping.starts_with(crate::daemon::dmcrypt::MAPPING_PREFIX) {
        Some("an earlier guilocker")
    } else if udisks && uuid.starts_with("CRYPT-") {
        Some("udisks")
    } else if uuid.starts_with("CRYPT-") {
        Some("cryptsetup")
    } else if uuid.starts_with("LVM-") {
        Some("LVM")
    } else {
        None
    }
}

/// What sysfs and the mount table say uses block device `name`: a filesystem mounted from
/// it, and every device directly on it.
pub fn users(sys: &Sysfs, mounts: &[Mount], name: &str) -> Vec<User> {
    let mounted_from = |dev: &str| {
        let (major, minor) = sys.dev_numbers(dev)?;
        let numbers = format!("{major}:{minor}");
        mounts
            .iter()
            .find(|m| m.numbers == numbers)
            .map(|m| m.mountpoint.clone())
    };
    let mut found: Vec<User> = mounted_from(name).map(User::Mounted).into_iter().collect();
    found.extend(sys.direct_holders(name).into_iter().map(|holder| {
        let dm = sys.dm_name(&holder);
        User::Holder {
            made_by: dm.as_ref().and_then(|(n, uuid)| made_by(n, uuid)),
            mapping: dm.map(|(n, _)| n),
            mounted: mounted_from(&holder),
            name: holder,
        }
    }));
    found
}

/// The device opened with `O_EXCL`: while this is held, the kernel refuses every other
/// exclusive claim (a mount, a device-mapper table, cryptsetup, another `O_EXCL` open).
/// Plain opens (dislocker's) still work.
#[derive(Debug)]
pub struct Claim(#[allow(dead_code)] File);

/// Opens a block device for reading with `O_EXCL` (Linux: an exclusive claim, not a create).
pub fn open_exclusive(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(path)
}

/// Claims a partition whose view is already served (an adopted dislocker's): nothing to
/// look into first, it is ours.
pub fn claim_exclusive(path: &Path) -> std::io::Result<Claim> {
    open_exclusive(path).map(Claim)
}

/// Claims `device` (kernel name `name`) for an unlock, or refuses it, naming who uses it.
pub fn claim(sys_block: &Path, device: &str, name: &str) -> Result<Claim, DaemonError> {
    let sys = Sysfs::new(sys_block);
    let mut found = users(&sys, &mounts::mounts(), name);
    if found.is_empty() {
        match open_exclusive(Path::new(device)) {
            Ok(file) => return Ok(Claim(file)),
            Err(e) if e.raw_os_error() != Some(libc::EBUSY) => {
                return Err(DaemonError::io(device, "cannot open", Path::new(device), e));
            }
            Err(_) => {
                // Mounted or mapped since we looked, or claimed by a program.
                found = users(&sys, &mounts::mounts(), name);
                if found.is_empty() {
                    let me = std::process::id() as i32;
                    let mut programs = mounts::openers_named(Path::new(device));
                    programs.retain(|(pid, _)| *pid != me);
                    found.push(User::Programs(programs));
                }
            }
        }
    }
    let holder: Vec<String> = found.iter().map(User::to_string).collect();
    Err(DaemonError::InUse {
        device: device.to_owned(),
        holder: holder.join("; "),
    })
}

/// After an engine or cryptsetup found `device` busy: the refusal naming who uses it, if
/// someone still does.
pub fn refusal(sys_block: &Path, device: &str, name: &str) -> Option<DaemonError> {
    match claim(sys_block, device, name) {
        Err(e @ DaemonError::InUse { .. }) => Some(e),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::sysfs::tests::Tree;
    use super::*;

    const MOUNTINFO: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n\
40 22 8:2 / /mnt/x rw,relatime shared:7 - vfat /dev/sda2 rw\n\
41 22 8:2 / /mnt/again rw,relatime shared:7 - vfat /dev/sda2 rw\n\
45 22 254:0 / /media/alice/DATA rw,nosuid - ntfs3 /dev/mapper/bitlk-2049 rw\n";

    #[test]
    fn mounts_holders_and_who_made_them_are_named() {
        let tree = Tree::new("inuse");
        let (class, _) = tree.sysfs();
        let sys = Sysfs::new(&class);
        let mounts = mounts::parse_mountinfo(MOUNTINFO);
        // Nothing on sda1's twin partition but a mount (the first of a bind is named).
        assert_eq!(
            users(&sys, &mounts, "sda2"),
            [User::Mounted("/mnt/x".into())]
        );
        assert_eq!(
            users(&sys, &mounts, "sda2")[0].to_string(),
            "the filesystem mounted at /mnt/x"
        );
        // sda1 is held by dm-0, udisks' BitLocker mapping, itself mounted.
        tree.file("devices/virtual/block/dm-0/dm/name", "bitlk-2049\n");
        tree.file(
            "devices/virtual/block/dm-0/dm/uuid",
            "CRYPT-BITLK-6f1e4f2a-1b8c-4f0e-9a8e-0c2b3d4e5f60-bitlk-2049\n",
        );
        let found = users(&sys, &mounts, "sda1");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].to_string(),
            "/dev/dm-0 (bitlk-2049, opened by udisks, mounted at /media/alice/DATA)"
        );
        // The same mapping made by hand with cryptsetup, not mounted.
        tree.file("devices/virtual/block/dm-0/dm/name", "mine\n");
        tree.file(
            "devices/virtual/block/dm-0/dm/uuid",
            "CRYPT-BITLK-6f1e4f2a-mine\n",
        );
        let mounts_without: Vec<Mount> = mounts
            .iter()
            .filter(|m| m.numbers != "254:0")
            .cloned()
            .collect();
        assert_eq!(
            users(&sys, &mounts_without, "sda1")[0].to_string(),
            "/dev/dm-0 (mine, opened by cryptsetup)"
        );
        // A holder that is no mapping (a RAID, a loop device) is named alone.
        tree.disk("devices/virtual/block/md127", "md127", "0", "9:127");
        tree.holder("nvme0n1p3", "md127");
        assert_eq!(
            users(&sys, &mounts, "nvme0n1p3")[0].to_string(),
            "/dev/md127"
        );
        // Free: nothing at all.
        assert!(users(&sys, &mounts, "mmcblk0").is_empty());
        assert!(users(&sys, &mounts, "no-such-device").is_empty());
    }

    #[test]
    fn makers_from_names_and_uuids() {
        assert_eq!(made_by("bitlk-64769", "CRYPT-BITLK-x"), Some("udisks"));
        assert_eq!(made_by("bitlk-64769x", "CRYPT-BITLK-x"), Some("cryptsetup"));
        assert_eq!(made_by("bitlk-", "CRYPT-BITLK-x"), Some("cryptsetup"));
        assert_eq!(made_by("luks-0b1c", "CRYPT-LUKS2-x"), Some("udisks"));
        assert_eq!(made_by("held", "CRYPT-BITLK-x"), Some("cryptsetup"));
        assert_eq!(
            made_by("guilocker-sdb1", "CRYPT-BITLK-x"),
            Some("an earlier guilocker")
        );
        assert_eq!(made_by("vg-root", "LVM-abc"), Some("LVM"));
        assert_eq!(made_by("plain", ""), None);
    }

    #[test]
    fn programs_are_named_or_said_to_be_unknown() {
        assert_eq!(
            User::Programs(vec![(42, "python3".into())]).to_string(),
            "python3 (pid 42)"
        );
        assert_eq!(
            User::Programs(Vec::new()).to_string(),
            "another program (it holds the device exclusively)"
        );
    }

    #[test]
    fn a_device_that_is_gone_is_an_error_not_a_refusal() {
        let sys = std::env::temp_dir();
        let e = claim(
            &sys,
            "/dev/guilocker-no-such-device",
            "guilocker-no-such-device",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/dev/guilocker-no-such-device: cannot open"),
            "{e}"
        );
    }
}
