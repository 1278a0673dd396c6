//! "Safe to remove": once the last volume of a stick is put away, its cache is flushed to
//! it and, for a USB stick, the USB device is powered off as udisks does (its light goes
//! out and the kernel forgets it), but only when nothing else on that USB device is in use
//! (another partition mounted, a slot of the same card reader, a holder, a process with it
//! open): cutting power under those loses what they write. Other devices (loop devices,
//! internal disks) are only flushed.

use super::busy;
use super::sysfs::Sysfs;
use crate::daemon::mounts::parse_mountinfo;
use crate::protocol::{PowerOff, UseCause};
use std::path::Path;

/// Where the machine is read: the real one in the daemon, a fake tree in tests.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    /// `/dev`: device nodes, and how devices are named in replies.
    pub dev: &'a Path,
    pub sys: Sysfs<'a>,
    /// `/proc/self/mountinfo`
    pub mountinfo: &'a Path,
    /// `/proc`, walked for processes with a device open.
    pub proc: &'a Path,
    /// The daemon's pid: its own open devices and its children's do not count.
    pub me: i32,
}

/// Flushes `disk` (`sdb`) and, when `power_off` and it is on USB and nothing under that USB
/// device is in use (`ours`: guilocker's own volumes still unlocked or busy, by name), powers
/// it off.
pub fn safe_to_remove(
    host: &Host,
    disk: &str,
    power_off: bool,
    ours: &[(String, UseCause)],
) -> PowerOff {
    let node = host.dev.join(disk);
    let mut done = PowerOff {
        disk: node.display().to_string(),
        powered_off: false,
        in_use: None,
        error: None,
    };
    if let Err(e) = std::fs::File::open(&node).and_then(|f| f.sync_all()) {
        done.error = Some(format!("cannot flush {}: {e}", node.display()));
        return done;
    }
    if !power_off {
        return done;
    }
    let Some(usb) = host.sys.usb_device(disk) else {
        return done;
    };
    let mounts = match std::fs::read_to_string(host.mountinfo) {
        Ok(text) => parse_mountinfo(&text),
        Err(e) => {
            done.error = Some(format!(
                "cannot tell what is mounted ({}: {e})",
                host.mountinfo.display()
            ));
            return done;
        }
    };
    // No /proc/swaps: a kernel without swap.
    let swaps = std::fs::read_to_string(host.proc.join("swaps")).unwrap_or_default();
    let users = busy::Users {
        mounts: &mounts,
        swaps: &busy::parse_swaps(&swaps),
        openers: &busy::block_openers(host.proc, host.me),
    };
    let names = host.sys.block_devices_under(&usb);
    done.in_use = busy::first_use(host.sys, host.dev, &names, ours, &users);
    if done.in_use.is_some() {
        return done;
    }
    match std::fs::write(usb.join("remove"), "1") {
        Ok(()) => done.powered_off = true,
        Err(e) => done.error = Some(format!("cannot power off {}: {e}", usb.display())),
    }
    done
}

/// What was done, for the log (in English: the daemon never translates).
pub fn describe(done: &PowerOff, power_off: bool) -> String {
    let disk = &done.disk;
    if let Some(refusal) = done.refusal() {
        if done.in_use.is_some() {
            return format!("{disk} flushed; {refusal}");
        }
        return refusal;
    }
    if done.powered_off {
        format!("{disk} flushed and powered off; it can be removed")
    } else if power_off {
        format!("{disk} flushed (not on USB: left powered); it can be removed")
    } else {
        format!("{disk} flushed (left powered, as asked); it can be removed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::host::sysfs::tests::Tree;
    use crate::protocol::InUse;
    use std::path::PathBuf;

    const USB: &str = "devices/pci0000:00/0000:00:14.0/usb2/2-1";

    /// The fake tree's stick `sda` (`sda1` BitLocker, just put away; `sda2` plain), with a
    /// `dev/` of plain files to flush, a mountinfo and an empty /proc of its own.
    struct Machine {
        tree: Tree,
        dev: PathBuf,
        mountinfo: PathBuf,
        proc: PathBuf,
    }

    impl Machine {
        fn new(tag: &str, mountinfo: &str) -> Self {
            let tree = Tree::new(tag);
            // dm-0 held sda1 while it was unlocked; put away, it is gone.
            std::fs::remove_file(tree.root.join("class/block/sda1/holders/dm-0")).unwrap();
            let dev = tree.root.join("dev");
            std::fs::create_dir_all(&dev).unwrap();
            for name in ["sda", "sda1", "sda2", "nvme0n1", "loop3"] {
                std::fs::write(dev.join(name), "").unwrap();
            }
            let mountinfo_path = tree.root.join("mountinfo");
            std::fs::write(&mountinfo_path, mountinfo).unwrap();
            let proc = tree.root.join("proc");
            std::fs::create_dir_all(&proc).unwrap();
            Self {
                tree,
                dev,
                mountinfo: mountinfo_path,
                proc,
            }
        }

        fn eject(&self, disk: &str, power_off: bool, ours: &[(String, UseCause)]) -> PowerOff {
            let (class, _) = self.tree.sysfs();
            let host = Host {
                dev: &self.dev,
                sys: Sysfs::new(&class),
                mountinfo: &self.mountinfo,
                proc: &self.proc,
                me: 1,
            };
            safe_to_remove(&host, disk, power_off, ours)
        }

        /// What was written to the USB device's `remove` attribute.
        fn removed(&self) -> String {
            std::fs::read_to_string(self.tree.root.join(USB).join("remove")).unwrap()
        }
    }

    const ROOT_ONLY: &str = "22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n";

    #[test]
    fn a_stick_with_nothing_else_in_use_is_powered_off() {
        let m = Machine::new("power-idle", ROOT_ONLY);
        let done = m.eject("sda", true, &[]);
        assert_eq!(m.removed(), "1");
        assert!(done.powered_off, "{done:?}");
        assert_eq!(done.refusal(), None);
        let disk = m.dev.join("sda").display().to_string();
        assert_eq!(
            describe(&done, true),
            format!("{disk} flushed and powered off; it can be removed")
        );
    }

    #[test]
    fn a_second_partition_mounted_elsewhere_keeps_the_stick_powered() {
        let mountinfo =
            format!("{ROOT_ONLY}90 22 8:2 / /media/alice/DATA rw,nosuid - vfat /dev/sda2 rw\n");
        let m = Machine::new("power-mounted", &mountinfo);
        let done = m.eject("sda", true, &[]);
        assert_eq!(m.removed(), "", "powered off under a mounted partition");
        assert!(!done.powered_off);
        let sda2 = m.dev.join("sda2").display().to_string();
        assert_eq!(
            done.in_use,
            Some(InUse {
                device: sda2.clone(),
                cause: UseCause::Mounted {
                    mountpoint: "/media/alice/DATA".into()
                }
            })
        );
        assert_eq!(
            done.refusal().unwrap(),
            format!("not powered off: {sda2} is mounted at /media/alice/DATA")
        );
        assert!(describe(&done, true).contains(" flushed; not powered off: "));
    }

    #[test]
    fn a_holder_an_opener_or_one_of_ours_keeps_the_stick_powered() {
        let m = Machine::new("power-held", ROOT_ONLY);
        m.tree.holder("sda2", "dm-0");
        let done = m.eject("sda", true, &[]);
        assert_eq!(m.removed(), "");
        let dm = m.dev.join("dm-0").display().to_string();
        assert!(
            done.refusal()
                .unwrap()
                .ends_with(&format!("is held by {dm}")),
            "{done:?}"
        );

        let m = Machine::new("power-ours", ROOT_ONLY);
        let done = m.eject("sda", true, &[("sda2".into(), UseCause::Unlocked)]);
        assert_eq!(m.removed(), "");
        assert!(done.refusal().unwrap().ends_with("sda2 is still unlocked"));

        // A process of this machine with a block device open, seen through the fake /proc:
        // the fake stick's sda takes that device's numbers.
        let Some((numbers, node)) = a_block_device() else {
            eprintln!("skipped the opener case: no block device node in /dev");
            return;
        };
        let m = Machine::new("power-open", "");
        m.tree.file(
            &format!("{USB}/2-1:1.0/host0/target0:0:0/0:0:0:0/block/sda/dev"),
            &numbers,
        );
        let fd = m.proc.join("4242/fd");
        std::fs::create_dir_all(&fd).unwrap();
        std::fs::write(m.proc.join("4242/comm"), "cp\n").unwrap();
        std::os::unix::fs::symlink(&node, fd.join("5")).unwrap();
        let done = m.eject("sda", true, &[]);
        assert_eq!(m.removed(), "");
        assert!(
            done.refusal()
                .unwrap()
                .ends_with("sda is open by cp (pid 4242)"),
            "{done:?}"
        );
    }

    /// A block device node of this machine and its `major:minor`.
    fn a_block_device() -> Option<(String, PathBuf)> {
        std::fs::read_dir("/sys/class/block")
            .ok()?
            .flatten()
            .find_map(|e| {
                let numbers = std::fs::read_to_string(e.path().join("dev")).ok()?;
                let node = Path::new("/dev").join(e.file_name());
                use std::os::unix::fs::FileTypeExt;
                std::fs::metadata(&node)
                    .ok()?
                    .file_type()
                    .is_block_device()
                    .then(|| (numbers.trim().to_owned(), node))
            })
    }

    #[test]
    fn other_disks_and_no_power_off_are_only_flushed() {
        let mountinfo =
            format!("{ROOT_ONLY}90 22 8:2 / /media/alice/DATA rw - vfat /dev/sda2 rw\n");
        let m = Machine::new("power-other", &mountinfo);
        for (disk, power_off) in [("loop3", true), ("nvme0n1", true), ("sda", false)] {
            let done = m.eject(disk, power_off, &[]);
            assert!(!done.powered_off);
            assert_eq!(done.refusal(), None, "{disk}: {done:?}");
            assert!(describe(&done, power_off).ends_with("; it can be removed"));
        }
        assert_eq!(m.removed(), "");
        let done = m.eject("sdz", true, &[]);
        assert!(done
            .refusal()
            .unwrap()
            .starts_with("not powered off: cannot flush "));
    }
}
