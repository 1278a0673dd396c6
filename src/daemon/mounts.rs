//! Reading the mount table and finding the processes that hold a mount busy.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One mount: where, and its filesystem type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mountpoint: PathBuf,
    pub fs_type: String,
    /// What is mounted: a device, a file (ntfs-3g), or a name.
    pub source: String,
    /// The device numbers, `major:minor` (FUSE mounts get an anonymous one).
    pub numbers: String,
}

/// Undoes the octal escapes (`\040` for space …) the kernel uses in mountinfo.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let numbers = left.split(' ').nth(2)?;
            let mountpoint = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fs_type = right.next()?;
            let source = right.next().unwrap_or_default();
            Some(Mount {
                mountpoint: PathBuf::from(unescape(mountpoint)),
                fs_type: fs_type.to_owned(),
                source: unescape(source),
                numbers: numbers.to_owned(),
            })
        })
        .collect()
}

pub fn try_mounts() -> std::io::Result<Vec<Mount>> {
    std::fs::read_to_string(MOUNTINFO).map(|t| parse_mountinfo(&t))
}

/// The mount table, or nothing if it cannot be read (for questions about one path).
pub fn mounts() -> Vec<Mount> {
    try_mounts().unwrap_or_default()
}

/// The filesystem type mounted at `path`, if any.
pub fn mounted_at(path: &Path) -> Option<String> {
    mount_at(path).map(|m| m.fs_type)
}

/// The topmost mount at `path`, if any.
pub fn mount_at(path: &Path) -> Option<Mount> {
    mounts().into_iter().rev().find(|m| m.mountpoint == path)
}

/// Whether what is mounted at `path` is read-only (its per-mount options, mountinfo's
/// sixth field, start with `ro`).
pub fn read_only_at(path: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(MOUNTINFO).ok()?;
    read_only_in(&text, path)
}

fn read_only_in(mountinfo: &str, path: &Path) -> Option<bool> {
    mountinfo.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let mountpoint = fields.nth(4)?;
        let options = fields.next()?;
        (Path::new(&unescape(mountpoint)) == path).then(|| options.split(',').any(|o| o == "ro"))
    })
}

/// Is the block device with these numbers (`major:minor`) mounted anywhere?
pub fn mounted_from(numbers: &str) -> bool {
    !numbers.is_empty() && mounts().iter().any(|m| m.numbers == numbers)
}

/// True when the FUSE server behind a mount is gone ("Transport endpoint is not connected").
/// Asked with statfs, which always reaches the server: a stat can be answered from the
/// attributes the kernel cached (our engine lets it keep them for an hour).
pub fn is_dead(mountpoint: &Path) -> bool {
    nix::sys::statfs::statfs(mountpoint).is_err_and(|e| e == nix::errno::Errno::ENOTCONN)
}

/// An open mountinfo whose `poll` reports POLLPRI whenever the mount table changes.
pub struct MountWatch(File);

impl MountWatch {
    pub fn open() -> std::io::Result<Self> {
        File::open(MOUNTINFO).map(Self)
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Every process with a link (open file, or also cwd/root/exe when `whole` is set) for
/// which `hit` holds: its pid and command name.
fn processes_with(whole: bool, hit: impl Fn(&Path) -> bool) -> Vec<(i32, String)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let base = entry.path();
            let mut links: Vec<PathBuf> = if whole {
                ["cwd", "root", "exe"]
                    .iter()
                    .map(|l| base.join(l))
                    .collect()
            } else {
                Vec::new()
            };
            if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
                links.extend(fds.flatten().map(|f| f.path()));
            }
            links
                .iter()
                .any(|l| std::fs::read_link(l).is_ok_and(|t| hit(&t)))
                .then(|| {
                    let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
                    (pid, comm.trim().to_owned())
                })
        })
        .collect()
}

/// Every open file under `dir`, as the /proc/PID/fd/N link that reopens it.
pub fn open_files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|p| std::fs::read_dir(p.path().join("fd")).ok())
        .flat_map(|fds| fds.flatten().map(|f| f.path()))
        .filter(|link| std::fs::read_link(link).is_ok_and(|t| t.starts_with(dir)))
        .collect()
}

/// Processes with a file, cwd, root or executable under `dir`, as `pid (comm)`.
pub fn holders(dir: &Path) -> Vec<(i32, String)> {
    processes_with(true, |target| target.starts_with(dir))
}

/// Processes that have `file` itself open (a FUSE driver serving a mount from it).
pub fn openers(file: &Path) -> Vec<i32> {
    openers_named(file)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

/// Processes that have `file` itself open, with their command names.
pub fn openers_named(file: &Path) -> Vec<(i32, String)> {
    // /proc/PID/fd links name the real node (/dev/dm-0), not a symlink to it
    // (/dev/mapper/guilocker-sdb1).
    let real = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    processes_with(false, |target| target == file || target == real)
}

pub fn describe_holders(holders: &[(i32, String)]) -> String {
    let list: Vec<String> = holders
        .iter()
        .take(10)
        .map(|(pid, comm)| format!("{comm} (pid {pid})"))
        .collect();
    let more = holders.len().saturating_sub(10);
    if more > 0 {
        format!("{} and {more} more", list.join(", "))
    } else if list.is_empty() {
        "an unknown process".to_owned()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_from_mount_options() {
        let text = "36 25 0:45 / /media/a/My\\040Stick ro,nosuid,nodev,relatime shared:1 - fuseblk /dev/loop0 ro,user_id=0\n\
                    37 25 7:1 / /media/a/B rw,relatime - ntfs3 /dev/loop1 rw,uid=1000\n";
        assert_eq!(
            read_only_in(text, Path::new("/media/a/My Stick")),
            Some(true)
        );
        assert_eq!(read_only_in(text, Path::new("/media/a/B")), Some(false));
        assert_eq!(read_only_in(text, Path::new("/media/a/C")), None);
    }

    #[test]
    fn parses_escaped_mountpoints() {
        let text = "36 35 98:0 /mnt1 /media/alice/My\\040Stick rw,noatime master:1 - fuse /dev/loop1 rw\n\
                    42 27 0:39 / /run/guilocker/dislocker/loop0p1 rw - fuse.dislocker dislocker rw\n\
                    garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, Path::new("/media/alice/My Stick"));
        assert_eq!(m[1].fs_type, "fuse.dislocker");
        assert_eq!(m[0].source, "/dev/loop1");
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn finds_our_own_cwd_as_holder() {
        let dir = std::env::current_dir().unwrap();
        let h = holders(&dir);
        assert!(h.iter().any(|(pid, _)| *pid == std::process::id() as i32));
        assert_eq!(describe_holders(&[(1, "bash".into())]), "bash (pid 1)");
    }
}
