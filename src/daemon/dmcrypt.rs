//! The kernel path: a dm-crypt mapping, set up by cryptsetup with the volume key we derived.
//!
//! On a desktop kernel (device-mapper, dm-crypt, the eboiv and elephant IVs) this is the fast
//! path: the kernel decrypts, and the kernel's own filesystem drivers mount the mapping. The
//! key reaches cryptsetup through a memfd (`--volume-key-file /proc/self/fd/3`); cryptsetup
//! never sees the password, so non-ASCII passwords, Windows 11 .BEK files and our
//! recovery-key checks work as on the other paths.

use super::error::DaemonError;
use crate::bitlocker::{Cipher, Fvek, Metadata, ProtectorKind};
use crate::process::{Command, ExitStatus, ProcessError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const CRYPTSETUP: &str = "cryptsetup";
/// Every mapping we make is named `guilocker-<kernel name>`; a crashed daemon's are found by it.
pub const MAPPING_PREFIX: &str = "guilocker-";
const MAPPER_CONTROL: &str = "/dev/mapper/control";
const MAPPER_DIR: &str = "/dev/mapper";
const SYS_BLOCK: &str = "/sys/block";
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The mapping's name for kernel device `name` (`sdb1`).
pub fn mapping_name(name: &str) -> String {
    format!("{MAPPING_PREFIX}{name}")
}

pub fn mapper_path(mapping: &str) -> PathBuf {
    Path::new(MAPPER_DIR).join(mapping)
}

/// Linux release as (major, minor), from uname.
fn kernel_version() -> Option<(u32, u32)> {
    let release = nix::sys::utsname::uname().ok()?;
    parse_release(&release.release().to_string_lossy())
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The oldest kernel whose dm-crypt has the IV this cipher needs: BitLocker's CBC IV (eboiv)
/// came in Linux 5.3, the Elephant diffuser in 5.6.
fn needs_kernel(cipher: Cipher) -> Option<(u32, u32)> {
    match cipher {
        Cipher::AesXts128 | Cipher::AesXts256 => Some((4, 12)),
        Cipher::AesCbc128 | Cipher::AesCbc256 => Some((5, 3)),
        Cipher::AesCbc128Elephant | Cipher::AesCbc256Elephant => Some((5, 6)),
        Cipher::Unknown(_) => None,
    }
}

/// Is device-mapper there: its control node, or a module that provides it (then loaded now;
/// udev's static nodes usually load it on first use, but not everywhere)?
fn device_mapper() -> bool {
    if Path::new(MAPPER_CONTROL).exists() {
        return true;
    }
    if !super::mount::has_module("dm-mod") {
        return false;
    }
    if let Err(e) = Command::new("modprobe").arg("dm_mod").run(STEP_TIMEOUT) {
        log::warn!("cannot load device-mapper: {e}");
    }
    Path::new(MAPPER_CONTROL).exists()
}

/// Can this machine open this volume through dm-crypt? `Err` says why not, in words.
pub fn usable(meta: &Metadata) -> Result<(), String> {
    if !device_mapper() {
        return Err(format!(
            "the kernel has no device-mapper ({MAPPER_CONTROL})"
        ));
    }
    if crate::process::find_program(CRYPTSETUP).is_none() {
        return Err(format!("{CRYPTSETUP} is not installed"));
    }
    // cryptsetup 2.6 takes a clear key (protection suspended) for a decryption under way and
    // refuses it ("Activation of partially decrypted BITLK device is not supported").
    if meta
        .info
        .protectors
        .iter()
        .any(|p| p.kind == ProtectorKind::ClearKey)
    {
        return Err(format!(
            "{CRYPTSETUP} does not activate a volume whose protection is suspended (clear key)"
        ));
    }
    let cipher = Cipher::from_method(meta.info.encryption_method);
    let needed = needs_kernel(cipher).ok_or_else(|| format!("dm-crypt has no {cipher}"))?;
    match kernel_version() {
        Some(have) if have >= needed => Ok(()),
        have => Err(format!(
            "{cipher} needs Linux {}.{} or later for dm-crypt (this is {})",
            needed.0,
            needed.1,
            have.map_or("unknown".into(), |(a, b)| format!("{a}.{b}"))
        )),
    }
}

/// `cryptsetup open --type bitlk` with our key; returns `/dev/mapper/<mapping>` once it exists.
pub fn open(
    device: &str,
    mapping: &str,
    fvek: &Fvek,
    read_only: bool,
) -> Result<PathBuf, DaemonError> {
    let key = fvek.dm_crypt_key().ok_or_else(|| {
        DaemonError::failed(
            device,
            format!(
                "no dm-crypt key layout for encryption method {:#06x}",
                fvek.method
            ),
        )
    })?;
    let fd = super::unlock::memfd_with(device, c"guilocker-dm-key", &key)?;
    drop(key);
    let mut cmd = Command::new(CRYPTSETUP)
        .args([
            "open",
            "--type",
            "bitlk",
            "--volume-key-file",
            "/proc/self/fd/3",
        ])
        .fd3(fd);
    if read_only {
        cmd = cmd.arg("--readonly");
    }
    cmd.arg(device)
        .arg(mapping)
        .run(STEP_TIMEOUT)
        .map_err(|source| DaemonError::Process {
            device: device.into(),
            context: "dm-crypt cannot open the volume",
            source,
        })?;
    let path = mapper_path(mapping);
    // Without udev, libdevmapper makes the node itself before cryptsetup returns; with udev
    // it may come a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() > deadline {
            close(device, mapping, false);
            return Err(DaemonError::failed(
                device,
                format!(
                    "cryptsetup opened {mapping} but {} never appeared",
                    path.display()
                ),
            ));
        }
        wait_for_node(&path);
    }
    Ok(path)
}

/// Did cryptsetup refuse because something else uses the device ("Cannot use device /dev/sdb1
/// which is in use (already mapped or mounted)", exit status 5: busy)? That is a refusal, not
/// a volume dm-crypt cannot serve.
pub fn found_busy(error: &ProcessError) -> bool {
    match error {
        ProcessError::Failed { status, output, .. } => {
            *status == ExitStatus::Code(5)
                || output.contains("in use")
                || output.contains("Device or resource busy")
        }
        _ => false,
    }
}

/// Waits (up to 100 ms) for something to happen in /dev/mapper, by inotify.
fn wait_for_node(path: &Path) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let Ok(ino) = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) else {
        return;
    };
    let dir = path.parent().unwrap_or(Path::new(MAPPER_DIR));
    if ino
        .add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
        .is_err()
        || path.exists()
    {
        return;
    }
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&ino),
        nix::poll::PollFlags::POLLIN,
    )];
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u8));
}

/// `cryptsetup close`; `deferred` when the device vanished or something still holds the
/// mapping (the kernel removes it at its last close).
pub fn close(device: &str, mapping: &str, deferred: bool) {
    if !exists(mapping) {
        // Closed by someone else already: the file manager, through udisks.
        log::info!("{device}: {mapping} is closed already");
        return;
    }
    let mut cmd = Command::new(CRYPTSETUP).arg("close");
    if deferred {
        cmd = cmd.arg("--deferred");
    }
    if let Err(e) = cmd.arg(mapping).run(STEP_TIMEOUT) {
        if !deferred {
            log::warn!("{device}: cannot close {mapping}: {e}; closing it deferred");
            return close(device, mapping, true);
        }
        log::warn!("{device}: cannot close {mapping}: {e}");
    }
}

/// Does our mapping `mapping` exist now?
pub fn exists(mapping: &str) -> bool {
    mappings().iter().any(|(name, _)| name == mapping)
}

/// Our mappings that exist now: (mapping name, kernel name `dm-N`).
pub fn mappings() -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir(SYS_BLOCK) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let kname = e.file_name().to_string_lossy().into_owned();
            let name = std::fs::read_to_string(e.path().join("dm/name")).ok()?;
            let name = name.trim_end();
            name.starts_with(MAPPING_PREFIX)
                .then(|| (name.to_owned(), kname))
        })
        .collect()
}

/// Does anything use mapping `dm-N`: a mount, a holder (a loop or dm device on top), or an
/// open file descriptor?
pub fn in_use(kname: &str) -> bool {
    let sys = Path::new(SYS_BLOCK).join(kname);
    let holders = std::fs::read_dir(sys.join("holders"))
        .map(|d| d.count() > 0)
        .unwrap_or(false);
    let node = Path::new("/dev").join(kname);
    let numbers = std::fs::read_to_string(sys.join("dev")).unwrap_or_default();
    holders
        || super::mounts::mounted_from(numbers.trim())
        || !super::mounts::openers(&node).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.1.0-28-amd64"), Some((6, 1)));
        assert_eq!(parse_release("5.10.0"), Some((5, 10)));
        assert_eq!(parse_release("6.18.44-fc-v1147"), Some((6, 18)));
        assert_eq!(parse_release("x"), None);
    }

    #[test]
    fn ciphers_need_their_ivs() {
        assert!(needs_kernel(Cipher::AesCbc128Elephant) > needs_kernel(Cipher::AesCbc128));
        assert_eq!(needs_kernel(Cipher::AesXts256), Some((4, 12)));
        assert_eq!(needs_kernel(Cipher::Unknown(7)), None);
    }

    #[test]
    fn busy_is_told_from_a_volume_dm_crypt_cannot_serve() {
        let failed = |code, output: &str| ProcessError::Failed {
            program: CRYPTSETUP.into(),
            status: ExitStatus::Code(code),
            output: output.into(),
        };
        assert!(found_busy(&failed(
            5,
            "Cannot use device /dev/vda1 which is in use (already mapped or mounted)."
        )));
        assert!(found_busy(&failed(
            1,
            "device-mapper: reload ioctl on held failed: Device or resource busy"
        )));
        assert!(!found_busy(&failed(1, "Cannot parse BITLK header.")));
        assert!(!found_busy(&failed(
            1,
            "Check that kernel supports aes-cbc-elephant cipher"
        )));
        assert!(!found_busy(&ProcessError::Timeout {
            program: CRYPTSETUP.into(),
            seconds: 30
        }));
    }

    #[test]
    fn names() {
        assert_eq!(mapping_name("sdb1"), "guilocker-sdb1");
        assert_eq!(
            mapper_path("guilocker-sdb1"),
            Path::new("/dev/mapper/guilocker-sdb1")
        );
    }
}
