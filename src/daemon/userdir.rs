//! `/media/<owner>`: owned by root, mode 0750, group root, and readable by its owner through
//! a POSIX ACL, as udisks makes it. Nobody else, not even the owner's primary group (a
//! shared `users` group), may list the labels of the owner's sticks.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The access ACL for `uid`, in the kernel's xattr layout (linux/posix_acl_xattr.h: a
/// little-endian version 2 header, then `{tag: u16, perm: u16, id: u32}` entries sorted by
/// tag): owner rwx, user `uid` r-x, owning group nothing, mask r-x, others nothing. The mode
/// then reads 0750.
fn owner_acl(uid: u32) -> Vec<u8> {
    const VERSION: u32 = 2;
    const UNDEFINED: u32 = u32::MAX;
    let entries: [(u16, u16, u32); 5] = [
        (0x01, 7, UNDEFINED), // ACL_USER_OBJ
        (0x02, 5, uid),       // ACL_USER
        (0x04, 0, UNDEFINED), // ACL_GROUP_OBJ
        (0x10, 5, UNDEFINED), // ACL_MASK
        (0x20, 0, UNDEFINED), // ACL_OTHER
    ];
    let mut acl = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    acl
}

/// Sets the owner's ACL on the open directory; without ACL support on that filesystem the
/// directory becomes 0711 instead: the owner still reaches its mounts (whose roots are 0700,
/// and every FUSE driver enforces that), only listing is refused to everyone.
fn grant(dir: &File, uid: u32) -> io::Result<()> {
    nix::unistd::fchown(dir, Some(0.into()), Some(0.into()))?;
    let acl = owner_acl(uid);
    // SAFETY: a valid fd, a NUL-terminated name and a buffer of the given length.
    let set = unsafe {
        libc::fsetxattr(
            dir.as_raw_fd(),
            c"system.posix_acl_access".as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    if set == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    log::warn!("no ACLs on the filesystem of the mount root: the owner's folder is 0711");
    nix::sys::stat::fchmod(dir, nix::sys::stat::Mode::from_bits_truncate(0o711))?;
    Ok(())
}

/// Opens a directory without following a symlink in its last component.
fn open_dir(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

/// Creates `dir` for the owner `uid` (primary group `gid`) if it is missing; true if it was
/// made here. A folder an earlier guilocker made (root, the owner's primary group, 0750) is
/// brought to the new layout; any other existing folder is left as its admin made it.
pub fn ensure(dir: &Path, uid: u32, gid: u32) -> io::Result<bool> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // A folder left half made (root's, 0700, no ACL) would lock its owner out for
            // good: it is removed again.
            if let Err(e) = open_dir(dir).and_then(|d| grant(&d, uid)) {
                let _ = std::fs::remove_dir(dir);
                return Err(e);
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let open = open_dir(dir)?;
            let meta = open.metadata()?;
            if gid != 0 && meta.uid() == 0 && meta.gid() == gid && meta.mode() & 0o7777 == 0o750 {
                grant(&open, uid)?;
            }
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the access ACL back as (tag, perm, id) triples.
    fn acl_of(path: &Path) -> Vec<(u16, u16, u32)> {
        let dir = open_dir(path).unwrap();
        let mut buf = [0u8; 256];
        // SAFETY: a valid fd, a NUL-terminated name and a buffer of the given length.
        let n = unsafe {
            libc::fgetxattr(
                dir.as_raw_fd(),
                c"system.posix_acl_access".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n <= 0 {
            // No ACL: a filesystem without them (the folder is then 0711).
            return Vec::new();
        }
        buf[4..n as usize]
            .chunks_exact(8)
            .map(|e| {
                (
                    u16::from_le_bytes([e[0], e[1]]),
                    u16::from_le_bytes([e[2], e[3]]),
                    u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                )
            })
            .collect()
    }

    #[test]
    fn the_owner_and_only_the_owner_may_list() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to give a folder to root");
            return;
        }
        let base = std::env::temp_dir().join(format!("guilocker-userdir-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("alice");
        assert!(ensure(&dir, 4242, 4242).unwrap());
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0));
        let acl = acl_of(&dir);
        if acl.len() == 5 {
            assert_eq!(meta.mode() & 0o777, 0o750);
            assert!(acl.contains(&(0x02, 5, 4242)), "{acl:?}");
        } else {
            assert_eq!(meta.mode() & 0o777, 0o711);
        }
        // An earlier layout is brought up to date; a folder of another shape is left alone.
        let old = base.join("bob");
        std::fs::create_dir(&old).unwrap();
        nix::unistd::chown(&old, Some(0.into()), Some(4343.into())).unwrap();
        std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o750))
            .unwrap();
        assert!(!ensure(&old, 4343, 4343).unwrap());
        assert_eq!(std::fs::metadata(&old).unwrap().gid(), 0);
        let admin = base.join("carol");
        std::fs::create_dir(&admin).unwrap();
        std::fs::set_permissions(&admin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert!(!ensure(&admin, 4444, 4444).unwrap());
        assert_eq!(std::fs::metadata(&admin).unwrap().mode() & 0o777, 0o755);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let base = std::env::temp_dir().join(format!("guilocker-userdir-l{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        assert!(ensure(&link, 4242, 4242).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
