//! Detection: /proc/partitions is the source of truth; kernel uevents only say "look now".

use nix::sys::socket::{
    bind, recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// One line of /proc/partitions, plus the disk sequence number that tells a re-plugged
/// device from the one before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub major: u32,
    pub minor: u32,
    pub blocks: u64,
    pub name: String,
}

impl Partition {
    pub fn size_bytes(&self) -> u64 {
        self.blocks.saturating_mul(1024)
    }
}

/// Parses /proc/partitions. Lines that do not have the expected four fields are skipped:
/// the file is the kernel's, but we still never panic on it.
pub fn parse_partitions(text: &str) -> Vec<Partition> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (major, minor, blocks, name) = (f.next()?, f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || name.contains('/') || name.starts_with('.') {
                return None;
            }
            Some(Partition {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                blocks: blocks.parse().ok()?,
                name: name.to_owned(),
            })
        })
        .collect()
}

/// Device names the daemon never considers: RAM disks, device-mapper, RAID, optical, floppy.
fn ignored_by_name(name: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "ram", "zram", "dm-", "md", "sr", "fd", "nbd", "mtdblock", "ubi",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

pub fn is_loop(name: &str) -> bool {
    name.starts_with("loop")
}

/// Which partitions to watch, given the config.
pub fn wanted(p: &Partition, include_loop: bool) -> bool {
    !ignored_by_name(&p.name) && (include_loop || !is_loop(&p.name)) && p.blocks > 0
}

/// The identity of a device appearance: its numbers, its size and its disk's sequence number.
/// Any change means the old device went away and a new one came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appearance {
    pub partition: Partition,
    pub diskseq: Option<u64>,
}

pub type Snapshot = BTreeMap<String, Appearance>;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<Appearance>,
    pub removed: Vec<String>,
}

/// What changed between two snapshots. A device whose identity changed is both removed and
/// added (removal first).
pub fn diff(old: &Snapshot, new: &Snapshot) -> Diff {
    let mut d = Diff::default();
    for (name, before) in old {
        match new.get(name) {
            Some(now) if now == before => {}
            _ => d.removed.push(name.clone()),
        }
    }
    for (name, now) in new {
        if old.get(name) != Some(now) {
            d.added.push(now.clone());
        }
    }
    d
}

/// Reads /proc/partitions (or `path`) into a snapshot of the devices we want.
pub fn snapshot(path: &Path, sys_block: &Path, include_loop: bool) -> std::io::Result<Snapshot> {
    let text = std::fs::read_to_string(path)?;
    Ok(parse_partitions(&text)
        .into_iter()
        .filter(|p| wanted(p, include_loop))
        .filter(|p| !is_decrypted_view(sys_block, &p.name) && !is_detaching(sys_block, &p.name))
        .map(|p| {
            let diskseq = diskseq(sys_block, &p.name);
            (
                p.name.clone(),
                Appearance {
                    partition: p,
                    diskseq,
                },
            )
        })
        .collect())
}

/// The loop device (or its disk) a partition name belongs to: `loop0p1` → `loop0`.
fn loop_disk(name: &str) -> &str {
    match name.rsplit_once('p') {
        Some((disk, part)) if disk.ends_with(|c: char| c.is_ascii_digit()) && !part.is_empty() => {
            disk
        }
        _ => name,
    }
}

/// `losetup -d` on a loop device that is still open only sets autoclear; the kernel removes
/// it at the last close and announces nothing. For us that is the unplug (a real stick
/// vanishes at once), so such a device no longer counts as present.
fn is_detaching(sys_block: &Path, name: &str) -> bool {
    is_loop(name)
        && std::fs::read_to_string(sys_block.join(loop_disk(name)).join("loop/autoclear"))
            .is_ok_and(|f| f.trim() == "1")
}

/// A loop device over some engine's decrypted file (our own exFAT plumbing, or another
/// daemon's) is a view of a stick, never a stick.
fn is_decrypted_view(sys_block: &Path, name: &str) -> bool {
    if !is_loop(name) {
        return false;
    }
    std::fs::read_to_string(sys_block.join(loop_disk(name)).join("loop/backing_file"))
        .is_ok_and(|f| super::view::is_view_file(Path::new(f.trim_end())))
}

/// The disk's sequence number; a partition reports its disk's.
pub(super) fn diskseq(sys_block: &Path, name: &str) -> Option<u64> {
    let dir = sys_block.join(name);
    let own = std::fs::read_to_string(dir.join("diskseq")).ok();
    let text = own.or_else(|| {
        let parent = std::fs::canonicalize(&dir).ok()?.parent()?.join("diskseq");
        std::fs::read_to_string(parent).ok()
    })?;
    text.trim().parse().ok()
}

/// A NETLINK_KOBJECT_UEVENT socket: readable whenever the kernel announces a device change.
pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    pub fn open() -> nix::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        // Group 1: the kernel's own broadcasts (udev rebroadcasts on group 2).
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1))?;
        // A burst of events (a hub with many sticks) must not overflow the queue.
        let _ = setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
        Ok(Self { fd })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Reads every pending event; true if any concerned block devices (or the queue
    /// overflowed, so we cannot know).
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut relevant = false;
        loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => relevant |= is_block_event(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ENOBUFS) => relevant = true,
                Err(_) => return relevant,
            }
        }
    }
}

/// Waits until `done()` holds, looking again at each block-device uevent, for at most
/// `within`; whether it came to hold. For a worker thread waiting on what another program
/// does to a device (the desktop locking or ejecting a drive), never on the event loop.
pub fn until_block_change(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    // Listening before the first look: a change between the two is not missed.
    let uevents = UeventSocket::open();
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        // Without a uevent socket, a look every 100 ms.
        let step = if uevents.is_ok() {
            left
        } else {
            left.min(Duration::from_millis(100))
        };
        let ms = PollTimeout::try_from(step.as_millis().min(60_000) as i32 + 1)
            .unwrap_or(PollTimeout::MAX);
        match &uevents {
            Ok(socket) => {
                let mut fds = [PollFd::new(socket.fd().as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, ms);
                socket.drain();
            }
            Err(_) => {
                let _ = poll(&mut [], ms);
            }
        }
    }
}

/// A uevent is `ACTION@DEVPATH\0KEY=VALUE\0…`; we want SUBSYSTEM=block.
pub fn is_block_event(msg: &[u8]) -> bool {
    msg.split(|&b| b == 0)
        .any(|field| field == b"SUBSYSTEM=block")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "major minor  #blocks  name\n\n 254 0 268435456 vda\n   7 0 104448 loop0\n \
                          259 0 102400 loop0p1\n  11 0 1048575 sr0\n 1 0 4096 ram0\n";

    fn snap(names: &[(&str, u64, Option<u64>)]) -> Snapshot {
        names
            .iter()
            .map(|(n, blocks, seq)| {
                let p = Partition {
                    major: 8,
                    minor: 0,
                    blocks: *blocks,
                    name: n.to_string(),
                };
                (
                    n.to_string(),
                    Appearance {
                        partition: p,
                        diskseq: *seq,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn parses_and_filters() {
        let parts = parse_partitions(SAMPLE);
        assert_eq!(parts.len(), 5);
        assert_eq!(parts[2].name, "loop0p1");
        assert_eq!(parts[2].size_bytes(), 102400 * 1024);
        let names: Vec<_> = parts
            .iter()
            .filter(|p| wanted(p, false))
            .map(|p| &p.name)
            .collect();
        assert_eq!(names, ["vda"]);
        let names: Vec<_> = parts
            .iter()
            .filter(|p| wanted(p, true))
            .map(|p| &p.name)
            .collect();
        assert_eq!(names, ["vda", "loop0", "loop0p1"]);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let text =
            "major minor\nx y z w\n1 2\n8 0 -5 sda\n8 1 10 sda1 extra\n8 2 10 ../etc\n8 3 10 sdb\n";
        let parts = parse_partitions(text);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].name, "sdb");
        assert!(parse_partitions("").is_empty());
        assert!(parse_partitions("\u{0}\u{1}binary\u{ff}").is_empty());
    }

    #[test]
    fn diff_sees_added_removed_and_replugged() {
        let a = snap(&[("vda", 10, Some(1)), ("sdb", 5, Some(7))]);
        let b = snap(&[
            ("vda", 10, Some(1)),
            ("sdb", 5, Some(8)),
            ("sdb1", 4, Some(8)),
        ]);
        let d = diff(&a, &b);
        assert_eq!(d.removed, ["sdb"]);
        let added: Vec<_> = d.added.iter().map(|x| x.partition.name.as_str()).collect();
        assert_eq!(added, ["sdb", "sdb1"]);
        let d = diff(&b, &snap(&[("vda", 10, Some(1))]));
        assert_eq!(d.removed, ["sdb", "sdb1"]);
        assert!(d.added.is_empty());
        assert_eq!(diff(&a, &a), Diff::default());
    }

    #[test]
    fn loop_partitions_map_to_their_disk() {
        assert_eq!(loop_disk("loop0p1"), "loop0");
        assert_eq!(loop_disk("loop12p3"), "loop12");
        assert_eq!(loop_disk("loop0"), "loop0");
    }

    #[test]
    fn uevent_filter() {
        assert!(is_block_event(
            b"add@/devices/virtual/block/loop0\0ACTION=add\0SUBSYSTEM=block\0"
        ));
        assert!(!is_block_event(
            b"add@/devices/x\0ACTION=add\0SUBSYSTEM=usb\0"
        ));
        assert!(!is_block_event(b""));
    }
}
