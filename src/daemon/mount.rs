//! Mounting the decrypted view for its owner, and putting it away in the right order.

use super::error::DaemonError;
use super::filesystem::{FsInfo, FsType};
use super::host::kmsg::{self, KernelLog};
use super::mounts::{self, holders, openers};
use crate::config::{Config, NtfsDriver};
use crate::process::{pidfd_open, Command, ProcessError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const MOUNT: &str = "mount";
pub const UMOUNT: &str = "umount";
pub const LOSETUP: &str = "losetup";
pub const NTFS_3G: &str = "ntfs-3g";
pub const EXFAT_FUSE: &str = "mount.exfat-fuse";
pub const FUSEFAT: &str = "fusefat";
/// The kernel's NTFS driver (Linux 5.15 on), and the names `fs_driver` gives the others.
pub const NTFS3: &str = "ntfs3";
pub const EXFAT_FUSE_DRIVER: &str = "exfat-fuse";
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Recorded in libmount's utab for every mount we make: umount(8) run by a person (the file
/// manager's unmount button) then runs `umount.guilocker` as that person, which asks us to
/// put the volume away (`cli/umount_helper.rs`). Without it only root could unmount.
pub const UHELPER: &str = "uhelper=guilocker";

/// The person a volume is mounted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// A mounted filesystem and everything made for it, so it can be undone exactly.
#[derive(Debug, Clone)]
pub struct MountedFs {
    pub mountpoint: PathBuf,
    pub fs_type: FsType,
    /// A loop device over the decrypted file (kernel drivers and exfat-fuse need one).
    pub loop_device: Option<String>,
    /// Directories we created, innermost first, removed with rmdir on unmount.
    pub made_dirs: Vec<PathBuf>,
    /// The driver that mounted it: `ntfs3`, `ntfs-3g`, `exfat`, `exfat-fuse`, `vfat`,
    /// `fusefat`.
    pub driver: &'static str,
    /// Mounted read-only, asked for or not.
    pub read_only: bool,
    /// Why it was mounted otherwise than asked (read-only, or by another driver), for the
    /// person.
    pub notice: Option<String>,
}

/// The driver names [`MountedFs::driver`] holds, as one a record names is read back.
pub fn driver_named(name: &str) -> Option<&'static str> {
    [NTFS3, NTFS_3G, "exfat", EXFAT_FUSE_DRIVER, "vfat", FUSEFAT]
        .into_iter()
        .find(|d| *d == name)
}

/// Does the running kernel have a driver for this filesystem: registered already, or a
/// module `mount -t` will load (modules.dep or modules.builtin of the running kernel)?
fn kernel_driver(fs: FsType) -> Option<&'static str> {
    let name = match fs {
        FsType::Ntfs => NTFS3,
        FsType::Exfat => "exfat",
        FsType::Vfat => "vfat",
    };
    let registered = std::fs::read_to_string("/proc/filesystems").is_ok_and(|list| {
        list.lines()
            .any(|l| l.split_whitespace().last() == Some(name))
    });
    (registered || has_module(name)).then_some(name)
}

/// Does the running kernel have module `name` (its file name: `dm-mod`, `vfat`)?
pub(super) fn has_module(name: &str) -> bool {
    let Ok(uts) = nix::sys::utsname::uname() else {
        return false;
    };
    let dir = Path::new("/lib/modules").join(uts.release());
    ["modules.dep", "modules.builtin"].iter().any(|list| {
        std::fs::read_to_string(dir.join(list)).is_ok_and(|text| lists_module(&text, name))
    })
}

/// Does a modules.dep or modules.builtin text list `<name>.ko` (compressed or not)?
fn lists_module(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        let path = line.split(':').next().unwrap_or_default();
        let file = path.rsplit('/').next().unwrap_or_default();
        file.strip_prefix(name)
            .is_some_and(|rest| rest == ".ko" || rest.starts_with(".ko."))
    })
}

fn step_err<'a>(
    device: &'a str,
    context: &'static str,
) -> impl FnOnce(ProcessError) -> DaemonError + 'a {
    move |source| DaemonError::Process {
        device: device.to_owned(),
        context,
        source,
    }
}

/// mount(8) and the FUSE drivers follow symlinks in the target path. If anyone but root could
/// write to a directory above the mountpoint, they could swap the fresh mountpoint for a
/// symlink and have root mount over /etc. So every directory we mount under must be a real
/// directory, owned by root, writable by nobody else.
fn check_safe_dir(device: &str, dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| DaemonError::io(device, "cannot examine", dir, e))?;
    if !meta.file_type().is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(DaemonError::failed(
            device,
            format!(
                "refusing to mount under {}: it must be a directory owned by root and writable only by root",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Creates `/media/<owner>` (see [`super::userdir`]) and the mountpoint (0700) if missing.
fn make_dirs(
    device: &str,
    parent: &Path,
    mountpoint: &Path,
    owner: &Owner,
) -> Result<Vec<PathBuf>, DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    let mut made = Vec::new();
    if let Some(root) = parent.parent() {
        std::fs::create_dir_all(root)
            .map_err(|e| DaemonError::io(device, "cannot create", root, e))?;
        // Before anything is changed in it: the owner's folder is then ours to set up.
        check_safe_dir(device, root)?;
    }
    match super::userdir::ensure(parent, owner.uid, owner.gid) {
        Ok(true) => made.push(parent.to_owned()),
        Ok(false) => {}
        Err(e) => return Err(DaemonError::io(device, "cannot prepare", parent, e)),
    }
    if let Err(e) = check_safe_dir(device, parent) {
        remove_dirs(&made);
        return Err(e);
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(mountpoint)
        .map_err(|e| DaemonError::io(device, "cannot create mountpoint", mountpoint, e))?;
    made.insert(0, mountpoint.to_owned());
    Ok(made)
}

/// Removes the directories we made (never recursively: a non-empty one stays).
pub fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        if let Err(e) = std::fs::remove_dir(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", dir.display());
            }
        }
    }
}

fn attach_loop(device: &str, file: &Path, read_only: bool) -> Result<String, DaemonError> {
    // Direct I/O: the loop device's requests go straight to the engine, not through a second
    // page cache of the view file (exFAT through the native engine: 277 -> 323 MB/s write,
    // 470 -> 600 read in one run).
    let mut cmd = Command::new(LOSETUP).args(["--find", "--show", "--direct-io=on"]);
    if read_only {
        cmd = cmd.arg("--read-only");
    }
    let out = cmd.arg(file).run(STEP_TIMEOUT).map_err(step_err(
        device,
        "cannot attach a loop device to the decrypted view",
    ))?;
    let dev = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("/dev/loop"));
    let dev = dev.map(str::to_owned).ok_or_else(|| {
        DaemonError::failed(device, format!("losetup printed no device: {}", out.trim()))
    })?;
    // With direct I/O nothing reads ahead for the driver but the loop device itself: let it
    // ask the engine for 1 MiB at a time, as the engine's FUSE readahead would.
    let name = dev.trim_start_matches("/dev/");
    let knob = Path::new("/sys/block")
        .join(name)
        .join("queue/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, "1024") {
        log::warn!("{device}: cannot set {}: {e}", knob.display());
    }
    Ok(dev)
}

fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

pub fn detach_loop(loop_device: &str) {
    if let Err(e) = Command::new(LOSETUP)
        .args(["--detach", loop_device])
        .run(STEP_TIMEOUT)
    {
        log::warn!("{loop_device}: {e}");
    }
}

/// Mounts the decrypted view at `mountpoint` (chosen by the caller, inside the owner's folder)
/// for `owner`: the owner's uid/gid, private modes, nosuid, nodev.
pub fn mount(
    device: &str,
    decrypted: &Path,
    fs: &FsInfo,
    mountpoint: &Path,
    owner: &Owner,
    read_only: bool,
    config: &Config,
) -> Result<MountedFs, DaemonError> {
    let parent = mountpoint
        .parent()
        .ok_or_else(|| DaemonError::failed(device, "mountpoint has no parent"))?;
    let made_dirs = make_dirs(device, parent, mountpoint, owner)?;
    let mut options = vec![
        format!("uid={}", owner.uid),
        format!("gid={}", owner.gid),
        "umask=077".to_owned(),
        "nosuid".to_owned(),
        "nodev".to_owned(),
    ];
    options.push(if read_only { "ro" } else { "rw" }.to_owned());
    options.extend(config.extra_options(fs.fs_type.as_str()).iter().cloned());

    // A FUSE engine's view is a file: every driver sits on a loop device over it. The
    // kernel's drivers need one; ntfs-3g's small writes reach the engine merged through it
    // (55 MB/s instead of 24 on the file itself, native engine); fusefat's writes straight
    // onto dislocker's file corrupt the root directory (fusefat 0.1a). A dm-crypt mapping is
    // a block device already: the driver mounts it directly.
    let mut loop_device = None;
    let result = (|| {
        let dev = if is_block_device(decrypted) {
            decrypted.display().to_string()
        } else {
            let dev = attach_loop(device, decrypted, read_only)?;
            loop_device = Some(dev.clone());
            dev
        };
        let kernel = kernel_driver(fs.fs_type)
            .filter(|_| fs.fs_type != FsType::Ntfs || config.ntfs_driver == NtfsDriver::Auto);
        let how = match kernel {
            Some(NTFS3) => mount_ntfs3(device, &dev, mountpoint, &options, read_only)?,
            Some(driver) => {
                mount_kernel(driver, &dev, mountpoint, &options)
                    .map_err(|r| r.into_error(device))?;
                Mounted::by(driver)
            }
            None => mount_fuse(device, fs.fs_type, &dev, mountpoint, options.clone())?,
        };
        if mounts::mounted_at(mountpoint).is_none() {
            return Err(DaemonError::failed(
                device,
                format!(
                    "the mount helper succeeded but nothing is mounted at {}",
                    mountpoint.display()
                ),
            ));
        }
        Ok(how)
    })();
    match result {
        Ok(how) => {
            log::info!(
                "{device}: {} mounted by {}{}",
                fs.fs_type.as_str(),
                how.driver,
                if how.read_only { ", read-only" } else { "" }
            );
            if let Some(notice) = &how.notice {
                log::warn!("{device}: {notice}");
            }
            Ok(MountedFs {
                mountpoint: mountpoint.to_owned(),
                fs_type: fs.fs_type,
                loop_device,
                made_dirs,
                driver: how.driver,
                read_only: read_only || how.read_only,
                notice: how.notice,
            })
        }
        Err(e) => {
            if let Some(dev) = &loop_device {
                detach_loop(dev);
            }
            remove_dirs(&made_dirs);
            Err(e)
        }
    }
}

/// How a filesystem ended up mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mounted {
    driver: &'static str,
    read_only: bool,
    notice: Option<String>,
}

impl Mounted {
    fn by(driver: &'static str) -> Self {
        Self {
            driver,
            read_only: false,
            notice: None,
        }
    }
}

/// Said when a volume Windows hibernated is opened read-only.
pub const HIBERNATED: &str = "Windows was hibernated (Fast Startup) with this drive in use, so it \
     was opened read-only: writing to it now could lose what Windows still holds in memory; \
     shut Windows down fully (Shift+Shut down) to write to it";
/// Said when a volume Windows did not close is opened by ntfs-3g instead of ntfs3.
pub const DIRTY_BY_NTFS_3G: &str = "Windows did not close this drive (removed without \
     Eject), which the kernel's ntfs3 refuses, so ntfs-3g opened it; Windows checks it the \
     next time it sees it";

/// A kernel driver's refusal: what mount(8) said, and what the driver logged.
#[derive(Debug)]
struct Refusal {
    driver: &'static str,
    process: ProcessError,
    kernel: Vec<String>,
}

impl Refusal {
    fn is_dirty_volume(&self) -> bool {
        self.kernel.iter().any(|l| l.contains("volume is dirty"))
    }

    /// The typed error, with the kernel's reason in place of mount(8)'s "status 32".
    fn into_error(self, device: &str) -> DaemonError {
        if self.kernel.is_empty() {
            return step_err(device, "cannot mount the filesystem")(self.process);
        }
        DaemonError::MountRefused {
            device: device.to_owned(),
            driver: self.driver,
            reason: refusal_reason(&self.kernel),
        }
    }
}

/// The kernel's lines in one sentence: the last ones, which say why (ntfs3 first advises
/// chkdsk, then refuses), at most three.
fn refusal_reason(lines: &[String]) -> String {
    let from = lines.len().saturating_sub(3);
    lines[from..].join("; ")
}

/// `mount -t DRIVER`, reading what the kernel logs about `source` meanwhile.
fn mount_kernel(
    driver: &'static str,
    source: &str,
    mountpoint: &Path,
    options: &[String],
) -> Result<(), Refusal> {
    let log = KernelLog::open_at_end();
    if let Err(e) = &log {
        log::debug!("cannot read {}: {e}", kmsg::KMSG);
    }
    let result = Command::new(MOUNT)
        .args(["-t", driver, "-o", &options.join(","), "-o", UHELPER])
        .arg(source)
        .arg(mountpoint)
        .run(STEP_TIMEOUT);
    match result {
        Ok(_) => Ok(()),
        Err(process) => {
            let name = kmsg::kernel_name(Path::new(source));
            let kernel = log
                .map(|mut l| kmsg::about(&l.read_new(), driver, &name))
                .unwrap_or_default();
            Err(Refusal {
                driver,
                process,
                kernel,
            })
        }
    }
}

/// NTFS through ntfs3. It is mounted read-only first, to look for Windows' hibernation
/// before anything is written: ntfs3 would mount a hibernated volume read-write (Linux 6.12
/// does not look at hiberfil.sys). Then read-write; a volume ntfs3 refuses as dirty (taken
/// out of Windows without Eject) goes to ntfs-3g, which mounts it.
fn mount_ntfs3(
    device: &str,
    source: &str,
    mountpoint: &Path,
    options: &[String],
    read_only: bool,
) -> Result<Mounted, DaemonError> {
    let ro: Vec<String> = options
        .iter()
        .map(|o| if o == "rw" { "ro".into() } else { o.clone() })
        .collect();
    mount_kernel(NTFS3, source, mountpoint, &ro).map_err(|r| r.into_error(device))?;
    if read_only {
        return Ok(Mounted {
            read_only: true,
            ..Mounted::by(NTFS3)
        });
    }
    if is_hibernated(mountpoint) {
        return Ok(Mounted {
            driver: NTFS3,
            read_only: true,
            notice: Some(HIBERNATED.into()),
        });
    }
    if let Err(e) = unmount_path(mountpoint, false) {
        // Nothing of ours uses it yet; whatever holds it, it must not stay mounted.
        let _ = unmount_path(mountpoint, true);
        return Err(step_err(device, "cannot unmount the read-only look")(e));
    }
    match mount_kernel(NTFS3, source, mountpoint, options) {
        Ok(()) => Ok(Mounted::by(NTFS3)),
        Err(refusal) if refusal.is_dirty_volume() => {
            log::info!(
                "{device}: ntfs3 refuses it ({}); trying ntfs-3g",
                refusal_reason(&refusal.kernel)
            );
            let mut how = mount_fuse(device, FsType::Ntfs, source, mountpoint, options.to_vec())?;
            how.notice.get_or_insert_with(|| DIRTY_BY_NTFS_3G.into());
            Ok(how)
        }
        Err(refusal) => Err(refusal.into_error(device)),
    }
}

/// The FUSE drivers, where the kernel has none (or ntfs3 refused a dirty volume).
fn mount_fuse(
    device: &str,
    fs: FsType,
    source: &str,
    mountpoint: &Path,
    mut options: Vec<String>,
) -> Result<Mounted, DaemonError> {
    let asked_rw = options.iter().any(|o| o == "rw");
    let (cmd, driver) = match fs {
        // ntfs-3g adds allow_other itself when run by root.
        FsType::Ntfs => (Command::new(NTFS_3G), NTFS_3G),
        // allow_other lets the owner in; default_permissions makes the kernel check
        // the modes (uid, umask=077) for everyone, as these drivers check nothing.
        FsType::Exfat => {
            options.extend(["allow_other".into(), "default_permissions".into()]);
            (Command::new(EXFAT_FUSE), EXFAT_FUSE_DRIVER)
        }
        FsType::Vfat => {
            // fusefat mounts read-only unless told "rw+".
            if let Some(o) = options.iter_mut().find(|o| *o == "rw") {
                *o = "rw+".into();
            }
            options.extend(["allow_other".into(), "default_permissions".into()]);
            (Command::new(FUSEFAT), FUSEFAT)
        }
    };
    let output = cmd
        .args(["-o", &options.join(",")])
        .arg(source)
        .arg(mountpoint)
        .run(STEP_TIMEOUT)
        .map_err(step_err(device, "cannot mount the filesystem"))?;
    record_uhelper(device, mountpoint);
    let mut how = Mounted::by(driver);
    // ntfs-3g mounts a hibernated volume read-only by itself, exit status 0 ("Windows is
    // hibernated, refused to mount … trying read-only").
    if asked_rw && mounts::read_only_at(mountpoint) == Some(true) {
        how.read_only = true;
        how.notice = Some(if fs == FsType::Ntfs && is_hibernated(mountpoint) {
            HIBERNATED.into()
        } else {
            format!(
                "{driver} mounted it read-only: {}",
                crate::process::one_line(&output)
            )
        });
    }
    Ok(how)
}

/// The FUSE drivers are not run through mount(8), so nothing wrote utab: `mount --fake`
/// records the helper for the mount as it stands (its source as mountinfo names it, which
/// is what libmount matches: fusefat's is "fusefat"). Without it the volume still works;
/// only its owner's `umount` is refused, so a failure is logged, not returned.
fn record_uhelper(device: &str, mountpoint: &Path) {
    let Some(mount) = mounts::mount_at(mountpoint) else {
        return;
    };
    let recorded = Command::new(MOUNT)
        .args([
            "--fake",
            "--internal-only",
            "--no-canonicalize",
            "-t",
            "none",
        ])
        .args(["-o", UHELPER])
        .arg(&mount.source)
        .arg(mountpoint)
        .run(STEP_TIMEOUT);
    if let Err(e) = recorded {
        log::warn!(
            "{device}: cannot record {UHELPER} for {} (only root can unmount it): {e}",
            mountpoint.display()
        );
    }
}

/// Did Windows hibernate with this volume in use? Its `hiberfil.sys` then starts with
/// `hibr` (either case), as ntfs-3g checks it; after a resume it says `wake`, and a
/// shut-down Windows leaves it zeroed or removes it. Read through the mounted filesystem,
/// as root; a symlink or anything but a plain file is not a hibernation file.
pub fn is_hibernated(mountpoint: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut file) = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(mountpoint.join("hiberfil.sys"))
    else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut file, &mut magic).is_ok() && is_hibernation_magic(&magic)
}

fn is_hibernation_magic(magic: &[u8; 4]) -> bool {
    magic.eq_ignore_ascii_case(b"hibr")
}

/// `umount` (lazily when `lazy`), by libmount alone: no `umount.<type>` helper, whatever a
/// mount's type or utab entry names (root never gets our uhelper, but a FUSE type's
/// helper would be run).
pub fn unmount_path(path: &Path, lazy: bool) -> Result<(), ProcessError> {
    let mut cmd = Command::new(UMOUNT).arg("--internal-only");
    if lazy {
        cmd = cmd.arg("--lazy");
    }
    cmd.arg(path).run(STEP_TIMEOUT).map(drop)
}

/// Waits until every process in `pids` has exited, up to `timeout`.
fn wait_exit(pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    for &pid in pids {
        let Ok(fd) = pidfd_open(Pid::from_raw(pid)) else {
            continue;
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(n) if n > 0 => break,
                _ => {}
            }
        }
    }
    true
}

impl MountedFs {
    /// Before a busy filesystem is detached lazily (its engine then stops under it): has
    /// the driver write out what its holders wrote so far. An fsync through each file they
    /// hold open (a FUSE driver such as ntfs-3g writes a file's size and its directory entry
    /// then), syncfs of the filesystem, then an fsync of the block device under it (a loop
    /// device's page cache). Best effort: what is written after this may be lost.
    fn flush(&self, device: &str, block: &Path) {
        use std::os::unix::fs::OpenOptionsExt;
        let open = |path: &Path| {
            std::fs::File::options()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(path)
        };
        let files = mounts::open_files_under(&self.mountpoint);
        let mut synced = 0;
        for link in &files {
            if open(link).and_then(|f| f.sync_all()).is_ok() {
                synced += 1;
            }
        }
        if let Err(e) = open(&self.mountpoint)
            .and_then(|d| nix::unistd::syncfs(&d).map_err(std::io::Error::from))
        {
            log::warn!("{device}: cannot sync {}: {e}", self.mountpoint.display());
        }
        if let Err(e) = open(block).and_then(|b| b.sync_all()) {
            log::warn!("{device}: cannot flush {}: {e}", block.display());
        }
        log::info!(
            "{device}: flushed {synced} of {} open file(s) before detaching",
            files.len()
        );
    }

    /// Unmounts the filesystem, waits for its FUSE driver to finish writing, frees the loop
    /// device and removes the directories made for it. `Busy` lists who holds it.
    pub fn unmount(&self, device: &str, decrypted: &Path, force: bool) -> Result<(), DaemonError> {
        let m = self;
        // The FUSE driver holds the decrypted file (or the loop device) open; it must have exited,
        // everything flushed, before dislocker may go.
        let driver_source = m
            .loop_device
            .as_deref()
            .map_or(decrypted.to_owned(), PathBuf::from);
        let drivers = openers(&driver_source);
        if mounts::mounted_at(&m.mountpoint).is_some() {
            if let Err(e) = unmount_path(&m.mountpoint, false) {
                let busy = holders(&m.mountpoint);
                if !force {
                    if !busy.is_empty() || e.to_string().contains("busy") {
                        return Err(DaemonError::Busy {
                            target: m.mountpoint.display().to_string(),
                            holders: mounts::describe_holders(&busy),
                        });
                    }
                    return Err(step_err(device, "cannot unmount the filesystem")(e));
                }
                log::warn!("{device}: {e}; detaching lazily");
                m.flush(device, &driver_source);
                unmount_path(&m.mountpoint, true)
                    .map_err(step_err(device, "cannot detach the filesystem"))?;
            }
        }
        let grace = if force {
            Duration::from_secs(5)
        } else {
            STEP_TIMEOUT
        };
        if !wait_exit(&drivers, grace) {
            log::warn!("{device}: the filesystem driver is still running after unmount");
        }
        if let Some(dev) = &m.loop_device {
            detach_loop(dev);
        }
        remove_dirs(&m.made_dirs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn hibernation_magic() {
        assert!(is_hibernation_magic(b"HIBR"));
        assert!(is_hibernation_magic(b"hibr"));
        assert!(!is_hibernation_magic(b"wake"));
        assert!(!is_hibernation_magic(b"\0\0\0\0"));
    }

    #[test]
    fn a_refusal_carries_the_kernels_reason() {
        let refusal = |kernel: &[&str]| Refusal {
            driver: NTFS3,
            process: ProcessError::Failed {
                program: MOUNT.into(),
                status: crate::process::ExitStatus::Code(32),
                output: "dmesg(1) may have more information".into(),
            },
            kernel: kernel.iter().map(|l| l.to_string()).collect(),
        };
        let dirty = refusal(&[
            "It is recommened to use chkdsk.",
            "volume is dirty and \"force\" flag is not set!",
        ]);
        assert!(dirty.is_dirty_volume());
        assert_eq!(
            dirty.into_error("/dev/sdb1").to_string(),
            "/dev/sdb1: ntfs3 cannot mount the filesystem: It is recommened to use chkdsk.; \
             volume is dirty and \"force\" flag is not set!"
        );
        let silent = refusal(&[]);
        assert!(!silent.is_dirty_volume());
        let text = silent.into_error("/dev/sdb1").to_string();
        assert!(text.contains("dmesg(1)"), "{text}");
    }

    #[test]
    fn modules_lists() {
        let dep = "kernel/fs/fat/vfat.ko.xz: kernel/fs/fat/fat.ko.xz\nkernel/fs/exfat/exfat.ko:\n";
        assert!(lists_module(dep, "vfat"));
        assert!(lists_module(dep, "exfat"));
        assert!(!lists_module(dep, "fat.ko"));
        assert!(!lists_module(dep, "ntfs3"));
        assert!(lists_module("kernel/fs/ntfs3/ntfs3.ko\n", "ntfs3"));
    }

    #[test]
    fn only_root_owned_unwritable_directories_are_safe() {
        let dir = std::env::temp_dir().join(format!("guilocker-safe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root_owned = nix::unistd::Uid::effective().is_root();
        assert_eq!(check_safe_dir("/dev/x", &dir).is_ok(), root_owned);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_safe_dir("/dev/x", &dir).unwrap_err().to_string();
        assert!(err.starts_with("/dev/x: refusing to mount under"), "{err}");
        let link = dir.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/", &link).unwrap();
        assert!(
            check_safe_dir("/dev/x", &link).is_err(),
            "a symlink is never safe"
        );
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }
}
