//! Who uses a block device: guilocker's own volumes, a mounted filesystem, a holder
//! (`holders/`), or a process that has it open. [`first_use`] decides over a [`Sysfs`], a
//! mount table and a list of [`Opener`]s, so it is tested over a fake tree; [`block_openers`]
//! is the /proc walk that feeds it.

use super::sysfs::Sysfs;
use crate::daemon::mounts::Mount;
use crate::protocol::{InUse, UseCause};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// A process with a block device open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opener {
    pub pid: i32,
    /// Its command name (`/proc/PID/comm`).
    pub program: String,
    /// The device's `major:minor`.
    pub device: (u32, u32),
}

/// udev's workers open a device for a moment after each change (our own close among them),
/// and udisksd's poller for media every few seconds, read-only, to probe it: not a use
/// (what udisks runs on a device, mkfs or fsck, is a program of its own and counts).
const PROBERS: &[&str] = &["systemd-udevd", "(udev-worker)", "udevd", "udisksd"];

/// Every block device open in a process under `proc_dir` (`/proc`), but for the daemon's
/// (`me`) and its children's: those are a flush or a probe of the moment, and what
/// guilocker itself serves (its engines) is judged from its own table.
pub fn block_openers(proc_dir: &Path, me: i32) -> Vec<Opener> {
    let Ok(procs) = std::fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let base = entry.path();
        if pid == me || parent_of(&base) == Some(me) {
            continue;
        }
        let program = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
        let program = program.trim();
        // By name, and only root's: anyone can call a process udisksd.
        if PROBERS.contains(&program) && owner_of(&base) == Some(0) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(base.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // Only what names a device node is looked at: a stat of any other open file
            // could hang on a dead FUSE or NFS server (a pulled stick's own view among them).
            if !std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with("/dev/")) {
                continue;
            }
            // stat follows the link to the node itself: its numbers, whatever name (or mount
            // namespace's /dev) it was opened through.
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if meta.file_type().is_block_device() {
                let rdev = meta.rdev();
                let number = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
                found.push(Opener {
                    pid,
                    program: program.to_owned(),
                    device: (
                        number(nix::sys::stat::major(rdev)),
                        number(nix::sys::stat::minor(rdev)),
                    ),
                });
            }
        }
    }
    found
}

/// The real uid of the process whose /proc directory is `base`.
fn owner_of(base: &Path) -> Option<u32> {
    let status = std::fs::read_to_string(base.join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next()?.parse().ok())
}

/// The parent of the process whose /proc directory is `base`.
fn parent_of(base: &Path) -> Option<i32> {
    let status = std::fs::read_to_string(base.join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
}

/// The devices swapped on, from `/proc/swaps` (a header line, then one area a line; a
/// swap file is no device and matches none).
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// What the machine says of its devices' users, besides sysfs.
#[derive(Debug, Default)]
pub struct Users<'a> {
    /// The mount table (`/proc/self/mountinfo`).
    pub mounts: &'a [Mount],
    /// Devices swapped on ([`parse_swaps`]).
    pub swaps: &'a [String],
    /// Processes with a block device open ([`block_openers`]).
    pub openers: &'a [Opener],
}

/// The first use of any of the block devices `names`, the most telling kind first:
/// guilocker's own volumes (`ours`: name and why), then mounts, swap, holders, openers.
/// Devices are named under `dev_dir` (`/dev/sdb2`).
pub fn first_use(
    sys: Sysfs,
    dev_dir: &Path,
    names: &[String],
    ours: &[(String, UseCause)],
    users: &Users,
) -> Option<InUse> {
    let Users {
        mounts,
        swaps,
        openers,
    } = users;
    let node = |name: &str| dev_dir.join(name).display().to_string();
    let numbers = |name: &str| sys.dev_numbers(name);
    let found = |name: &str, cause| {
        Some(InUse {
            device: node(name),
            cause,
        })
    };
    let guilocker = names.iter().find_map(|name| {
        let (_, cause) = ours.iter().find(|(n, _)| n == name)?;
        found(name, cause.clone())
    });
    let mounted = || {
        names.iter().find_map(|name| {
            let want = numbers(name).map(|(a, b)| format!("{a}:{b}"));
            // A filesystem over several devices (btrfs) shows an anonymous number: its
            // source still names the device.
            let m = mounts
                .iter()
                .find(|m| want.as_deref() == Some(m.numbers.as_str()) || m.source == node(name))?;
            found(
                name,
                UseCause::Mounted {
                    mountpoint: m.mountpoint.display().to_string(),
                },
            )
        })
    };
    let swap = || {
        let name = names.iter().find(|name| swaps.contains(&node(name)))?;
        found(name, UseCause::Swap)
    };
    let held = || {
        names.iter().find_map(|name| {
            let holder = sys.holders(name).into_iter().next()?;
            found(
                name,
                UseCause::Held {
                    holder: node(&holder),
                },
            )
        })
    };
    let open = || {
        names.iter().find_map(|name| {
            let want = numbers(name)?;
            let o = openers.iter().find(|o| o.device == want)?;
            found(
                name,
                UseCause::Open {
                    program: o.program.clone(),
                    pid: o.pid,
                },
            )
        })
    };
    guilocker
        .or_else(mounted)
        .or_else(swap)
        .or_else(held)
        .or_else(open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::host::sysfs::tests::Tree;
    use crate::daemon::mounts::parse_mountinfo;
    use std::os::unix::fs::symlink;

    const USB: &str = "devices/pci0000:00/0000:00:14.0/usb2/2-1";

    /// The fake tree's stick with nothing holding `sda1` (the tree has `dm-0` over it).
    fn stick(tag: &str) -> Tree {
        let tree = Tree::new(tag);
        std::fs::remove_file(tree.root.join("class/block/sda1/holders/dm-0")).unwrap();
        tree
    }

    fn stick_devices(tree: &Tree) -> Vec<String> {
        let (class, root) = tree.sysfs();
        Sysfs::new(&class).block_devices_under(&root.join(USB))
    }

    fn use_of(tree: &Tree, mountinfo: &str, openers: &[Opener]) -> Option<String> {
        let (class, _) = tree.sysfs();
        let users = Users {
            mounts: &parse_mountinfo(mountinfo),
            swaps: &[],
            openers,
        };
        first_use(
            Sysfs::new(&class),
            Path::new("/dev"),
            &stick_devices(tree),
            &[],
            &users,
        )
        .map(|u| u.sentence())
    }

    const ROOT_ONLY: &str = "22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n";

    #[test]
    fn nothing_in_use_on_a_stick_whose_other_partition_is_idle() {
        let tree = stick("busy-idle");
        assert_eq!(stick_devices(&tree), ["sda", "sda1", "sda2"]);
        assert_eq!(use_of(&tree, ROOT_ONLY, &[]), None);
        // A process with a device of another disk open is no use of the stick.
        let other = Opener {
            pid: 9,
            program: "fsck".into(),
            device: (259, 3),
        };
        assert_eq!(use_of(&tree, ROOT_ONLY, &[other]), None);
    }

    #[test]
    fn a_second_partition_mounted_elsewhere_is_named_with_its_mountpoint() {
        let tree = stick("busy-mounted");
        let mountinfo =
            format!("{ROOT_ONLY}90 22 8:2 / /media/alice/DATA rw,nosuid - vfat /dev/sda2 rw\n");
        assert_eq!(
            use_of(&tree, &mountinfo, &[]).as_deref(),
            Some("/dev/sda2 is mounted at /media/alice/DATA")
        );
        // Named by its source when the numbers are anonymous (btrfs), spaces unescaped.
        let mountinfo = "91 22 0:52 / /mnt/my\\040data rw - btrfs /dev/sda2 rw\n";
        assert_eq!(
            use_of(&tree, mountinfo, &[]).as_deref(),
            Some("/dev/sda2 is mounted at /mnt/my data")
        );
    }

    #[test]
    fn a_holder_and_an_opener_are_uses() {
        let tree = Tree::new("busy-held");
        assert_eq!(
            use_of(&tree, ROOT_ONLY, &[]).as_deref(),
            Some("/dev/sda1 is held by /dev/dm-0")
        );
        // A mount says more than a holder: it goes first.
        let mountinfo = "93 22 254:0 / /mnt/x rw - ext4 /dev/mapper/x rw\n";
        assert_eq!(
            use_of(&tree, mountinfo, &[]).as_deref(),
            Some("/dev/dm-0 is mounted at /mnt/x")
        );
        let tree = stick("busy-open");
        let dd = Opener {
            pid: 4242,
            program: "dd".into(),
            device: (8, 0),
        };
        assert_eq!(
            use_of(&tree, ROOT_ONLY, &[dd]).as_deref(),
            Some("/dev/sda is open by dd (pid 4242)")
        );
    }

    #[test]
    fn a_partition_swapped_on_is_a_use() {
        let tree = stick("busy-swap");
        let (class, _) = tree.sysfs();
        let swaps = parse_swaps(
            "Filename\tType\tSize\tUsed\tPriority\n\
             /swapfile   file\t1048572\t0\t-2\n\
             /dev/sda2   partition\t1048572\t0\t-3\n",
        );
        assert_eq!(swaps, ["/swapfile", "/dev/sda2"]);
        let users = Users {
            swaps: &swaps,
            ..Users::default()
        };
        let found = first_use(
            Sysfs::new(&class),
            Path::new("/dev"),
            &stick_devices(&tree),
            &[],
            &users,
        );
        assert_eq!(
            found.map(|u| u.sentence()).as_deref(),
            Some("/dev/sda2 is used as swap")
        );
    }

    #[test]
    fn guilockers_own_volumes_come_first() {
        let tree = stick("busy-ours");
        let (class, _) = tree.sysfs();
        let mountinfo = "90 22 8:2 / /media/alice/DATA rw - vfat /dev/sda2 rw\n";
        let ours = [("sda1".to_owned(), UseCause::Unlocked)];
        let mounts = parse_mountinfo(mountinfo);
        let users = Users {
            mounts: &mounts,
            ..Users::default()
        };
        let found = first_use(
            Sysfs::new(&class),
            Path::new("/dev"),
            &stick_devices(&tree),
            &ours,
            &users,
        );
        assert_eq!(
            found,
            Some(InUse {
                device: "/dev/sda1".into(),
                cause: UseCause::Unlocked
            })
        );
        // One of ours elsewhere (another disk) is not a use of this stick.
        let ours = [("nvme0n1p3".to_owned(), UseCause::Busy)];
        let found = first_use(
            Sysfs::new(&class),
            Path::new("/dev"),
            &stick_devices(&tree),
            &ours,
            &Users::default(),
        );
        assert_eq!(found, None);
    }

    /// The real /proc: this test process, with a block device of the machine open, is found
    /// with that device's numbers (a disk other than a loop device, which other tests' sticks
    /// use; skipped where none can be opened, e.g. not as root).
    #[test]
    fn the_real_proc_walk_finds_this_process_with_a_device_open() {
        let sys_block = Path::new("/sys/class/block");
        let opened = std::fs::read_dir(sys_block)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("loop"))
            .find_map(|n| {
                let file = std::fs::File::open(Path::new("/dev").join(&n)).ok()?;
                Some((n, file))
            });
        let Some((name, _file)) = opened else {
            eprintln!("skipped: no block device can be opened here");
            return;
        };
        let numbers = Sysfs::new(sys_block).dev_numbers(&name).unwrap();
        let me = std::process::id() as i32;
        let found = block_openers(Path::new("/proc"), 0);
        assert!(
            found.iter().any(|o| o.pid == me && o.device == numbers),
            "{name} {numbers:?} not found open by {me}: {found:?}"
        );
        // The daemon's own opens do not count.
        assert!(!block_openers(Path::new("/proc"), me)
            .iter()
            .any(|o| o.pid == me));
    }

    /// A fake /proc whose processes hold a real block device node of this machine: stat
    /// follows the fd link to it as it would follow a real open file (no open, no root).
    #[test]
    fn the_proc_walk_finds_block_devices_but_not_ours_nor_udevs() {
        let Some((name, node)) = std::fs::read_dir("/sys/class/block")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .map(|n| (n.clone(), Path::new("/dev").join(n)))
            .find(|(_, node)| {
                std::fs::metadata(node).is_ok_and(|m| m.file_type().is_block_device())
            })
        else {
            eprintln!("skipped: no block device node in /dev");
            return;
        };
        let root = std::env::temp_dir().join(format!("guilocker-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let process_of = |uid: u32, pid: i32, ppid: i32, comm: &str, target: &Path| {
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(dir.join("fd")).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(
                dir.join("status"),
                format!("Name:\t{comm}\nPPid:\t{ppid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
            )
            .unwrap();
            symlink(target, dir.join("fd/3")).unwrap();
        };
        let process =
            |pid: i32, ppid: i32, comm: &str, target: &Path| process_of(0, pid, ppid, comm, target);
        let me = 500;
        process(10, 1, "cp", &node);
        process(11, 1, "bash", Path::new("/etc/hostname"));
        process(me, 1, "guilocker", &node);
        process(12, me, "guilocker", &node);
        process(13, 1, "(udev-worker)", &node);
        process(14, 1, "udisksd", &node);
        // Named like a prober, but not root's: anyone can name a process so.
        process_of(1000, 15, 1, "udisksd", &node);
        std::fs::create_dir_all(root.join("self")).unwrap();
        let found = block_openers(&root, me);
        let sys_block = Path::new("/sys/class/block");
        let numbers = Sysfs::new(sys_block).dev_numbers(&name).unwrap();
        let mut found = found;
        found.sort_by_key(|o| o.pid);
        assert_eq!(
            found,
            [
                Opener {
                    pid: 10,
                    program: "cp".into(),
                    device: numbers
                },
                Opener {
                    pid: 15,
                    program: "udisksd".into(),
                    device: numbers
                }
            ]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
