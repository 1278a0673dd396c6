//! NTFS sticks as Windows leaves them (shut down, pulled out without Eject, hibernated), on
//! both NTFS drivers: the kernel's ntfs3 in a VM booted once on Debian 12's 6.12 kernel, and
//! ntfs-3g on this machine (whose kernel has no ntfs3, as Debian's 6.1).
//!
//! The sticks are made here before the boot (`make-bitlocker-stick`, then the dirty flag set
//! through dislocker's view); the VM runs the tests of [`in_vm`] on dm-crypt, with no
//! systemd. Prerequisites missing skip, except under CI=true, where they fail.

mod common;

use common::ntfs::{self, LeftBy};
use common::vm;
use common::*;
use guilocker::daemon::mount::{DIRTY_BY_NTFS_3G, HIBERNATED, NTFS3, NTFS_3G};
use guilocker::protocol::Engine;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One boot (~75-120 s under TCG), then four unlocks.
const VM_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const TABLE: &str = "mbr";
/// The sticks, one per test (each test copies its own).
const STICKS: [(&str, LeftBy); 3] = [
    ("WINCLEAN", LeftBy::ShutDown),
    ("WINPULLED", LeftBy::Pulled),
    ("WINHIBER", LeftBy::Hibernated),
];

fn script(status_file: &Path) -> String {
    let bin = vm::test_binary("ntfs3_vm");
    format!(
        "set -u\nmodprobe loop 2>/dev/null\nmodprobe ntfs3\nstatus=0\n\
         echo '== VM: ntfs3_vm in_vm::'\n\
         {KERNEL_VM_ENV}=1 CI=\"${{CI:-}}\" GUILOCKER_SCRATCH={scratch} GUILOCKER_SHARED='{shared}' \
         '{bin}' in_vm:: --ignored --test-threads=1 --nocapture || status=$?\n\
         echo \"== VM: done, status $status\"\necho $status > '{status}'\nexit $status\n",
        scratch = vm::VM_SCRATCH,
        shared = shared_dir().display(),
        bin = bin.display(),
        status = status_file.display(),
    )
}

#[test]
fn ntfs3_in_a_vm() {
    if in_kernel_vm() {
        return;
    }
    if !vm::can_boot("the ntfs3 VM", vm::Kernel::Debian6_12) {
        return;
    }
    if !prerequisites(STICK_TOOLS) {
        return;
    }
    let _ = images();
    let dir = scratch("ntfs3-vm-sticks");
    for (label, left) in STICKS {
        ntfs::windows_stick(&dir, label, TABLE, left);
    }
    let _ = std::fs::remove_dir_all(&dir);
    vm::run_group(
        "ntfs3-vm",
        vm::Kernel::Debian6_12,
        script,
        1,
        VM_TIMEOUT,
        None,
    );
}

/// Does the running kernel have ntfs3 (loaded: the VM's script loads it)?
fn kernel_has_ntfs3() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|l| {
        l.lines()
            .any(|l| l.split_whitespace().last() == Some(NTFS3))
    })
}

/// The driver a clean stick gets here.
fn native_driver() -> &'static str {
    if kernel_has_ntfs3() {
        NTFS3
    } else {
        NTFS_3G
    }
}

/// A daemon of its own with one stick as Windows left it, plugged and seen.
struct Plugged {
    daemon: TestDaemon,
    _events: guilocker::client::Events,
    _stick: Stick,
    dev: String,
}

fn plug(engine: Engine, label: &str, left: LeftBy, extra_config: &str) -> Option<Plugged> {
    if !prerequisites(STICK_TOOLS) {
        return None;
    }
    ensure_user(TEST_USER, true);
    let daemon = TestDaemon::start_with(
        &format!("ntfs-{}-{}", label.to_lowercase(), engine.as_str()),
        &format!("{}{extra_config}", engine_config(engine)),
    );
    let image = ntfs::windows_stick(&daemon.dir, label, TABLE, left);
    let mut events = daemon.events();
    let stick = Stick::plug(&image, true);
    let dev = stick.volume();
    wait_added(&daemon, &mut events, "the stick", |d| d.device == dev);
    Some(Plugged {
        daemon,
        _events: events,
        _stick: stick,
        dev,
    })
}

fn unlock(p: &Plugged) -> (String, guilocker::protocol::DeviceInfo) {
    let (code, out, err) = p
        .daemon
        .unlock_with_password(Some(TEST_USER), &p.dev, "anaconda");
    assert_eq!(code, 0, "{out}{err}");
    (out, p.daemon.device(&p.dev).unwrap())
}

fn status_json(p: &Plugged) -> String {
    let (code, out, err) = p.daemon.cli(None, &["status", "--json"], "");
    assert_eq!(code, 0, "{err}");
    out
}

fn unmount(p: &Plugged) {
    let (code, out, err) = p.daemon.cli(None, &["unmount", &p.dev], "");
    assert_eq!(code, 0, "{out}{err}");
}

fn read_hello(mountpoint: &Path) {
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("hello.txt")).unwrap(),
        "hello from windows\n"
    );
}

/// Shut down cleanly: mounted read-write by the driver of choice (ntfs3 where the kernel has
/// it), files read back and written.
fn shut_down(engine: Engine) {
    let _serial = serial();
    let Some(p) = plug(engine, "WINCLEAN", LeftBy::ShutDown, "") else {
        return;
    };
    let (out, info) = unlock(&p);
    assert_eq!(info.fs_driver.as_deref(), Some(native_driver()), "{info:?}");
    assert!(!info.read_only && info.notice.is_none(), "{info:?}\n{out}");
    let mountpoint = PathBuf::from(info.mountpoint.unwrap());
    read_hello(&mountpoint);
    let sum = write_pseudo_random(&mountpoint.join("written.bin"), 1 << 20, 1);
    assert_eq!(sha256_file(&mountpoint.join("written.bin")), sum);
    assert!(
        status_json(&p).contains(&format!("\"fs_driver\": \"{}\"", native_driver())),
        "status --json names the driver"
    );
    unmount(&p);
}

/// Pulled out of Windows without Eject (VOLUME_IS_DIRTY): ntfs3 refuses it read-write, so
/// ntfs-3g mounts it, and says so; the files read back, a file written survives, and the
/// filesystem checks consistent afterwards. The flag itself stays: neither driver clears
/// it (ntfs-3g 2022.10.3 leaves it for Windows' chkdsk), which is the honest outcome.
fn pulled(engine: Engine) {
    let _serial = serial();
    let Some(p) = plug(engine, "WINPULLED", LeftBy::Pulled, "") else {
        return;
    };
    let (out, info) = unlock(&p);
    assert_eq!(info.fs_driver.as_deref(), Some(NTFS_3G), "{info:?}");
    assert!(!info.read_only, "{info:?}");
    if kernel_has_ntfs3() {
        // ntfs3 refused it first: the person is told why another driver opened it.
        assert_eq!(info.notice.as_deref(), Some(DIRTY_BY_NTFS_3G), "{info:?}");
        assert!(out.contains("Windows did not close this drive"), "{out}");
    }
    println!("pulled: {}", out.trim());
    let mountpoint = PathBuf::from(info.mountpoint.clone().unwrap());
    read_hello(&mountpoint);
    let sum = write_pseudo_random(&mountpoint.join("written.bin"), 1 << 20, 2);
    assert!(
        status_json(&p).contains("\"fs_driver\": \"ntfs-3g\""),
        "status --json names ntfs-3g"
    );
    unmount(&p);

    // Put away: the decrypted volume checks consistent.
    let (code, out, err) = p.daemon.cli(
        Some(TEST_USER),
        &["unlock", &p.dev, "--no-mount", "--password-stdin"],
        "anaconda\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    let view = p.daemon.device(&p.dev).unwrap().decrypted.unwrap();
    let check = Command::new("ntfsfix")
        .args(["-n", &view])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "ntfsfix -n {view}: {said}");
    println!(
        "after ntfs-3g: volume flags {:#06x}; ntfsfix -n: {}",
        ntfs::volume_flags(Path::new(&view)),
        said.lines().last().unwrap_or_default()
    );
    unmount(&p);

    // What was written is there the next time.
    let (_, info) = unlock(&p);
    let mountpoint = PathBuf::from(info.mountpoint.unwrap());
    assert_eq!(sha256_file(&mountpoint.join("written.bin")), sum);
    unmount(&p);
}

/// Hibernated Windows (Fast Startup): read-only whichever driver, with the sentence that
/// says why and how to fix it, in the unlock reply and in status.
fn hibernated(engine: Engine) {
    let _serial = serial();
    let Some(p) = plug(engine, "WINHIBER", LeftBy::Hibernated, "") else {
        return;
    };
    let (out, info) = unlock(&p);
    assert!(info.read_only, "{info:?}");
    assert_eq!(info.notice.as_deref(), Some(HIBERNATED), "{info:?}");
    assert_eq!(info.fs_driver.as_deref(), Some(native_driver()), "{info:?}");
    assert!(
        out.contains("Windows was hibernated (Fast Startup)") && out.contains("Shift+Shut down"),
        "{out}"
    );
    println!("hibernated: {}", out.trim());
    let mountpoint = PathBuf::from(info.mountpoint.unwrap());
    read_hello(&mountpoint);
    let write = std::fs::write(mountpoint.join("new.txt"), "x");
    assert_eq!(
        write.as_ref().map_err(|e| e.raw_os_error()),
        Err(Some(libc::EROFS)),
        "{write:?}"
    );
    assert!(
        status_json(&p).contains("Windows was hibernated"),
        "status --json carries the notice"
    );
    unmount(&p);
}

/// A refusal carries the kernel's reason, not mount(8)'s "status 32": an option ntfs3 does
/// not know, from the config.
fn refusal_says_why(engine: Engine) {
    let _serial = serial();
    let config = "[mount_options]\nntfs = [\"guilocker_bogus\"]\n";
    let Some(p) = plug(engine, "WINCLEAN", LeftBy::ShutDown, config) else {
        return;
    };
    let (code, out, err) = p
        .daemon
        .unlock_with_password(Some(TEST_USER), &p.dev, "anaconda");
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("ntfs3 cannot mount the filesystem")
            && err.contains("Unknown parameter 'guilocker_bogus'"),
        "{err}"
    );
    assert!(!err.contains("status 32"), "{err}");
    println!("refused: {}", err.trim());
}

/// Run inside the VM, on 6.12's ntfs3, through dm-crypt.
mod in_vm {
    use super::*;

    fn in_the_vm() -> Engine {
        assert!(in_kernel_vm(), "{IN_THE_VM}");
        assert!(kernel_has_ntfs3(), "the VM's kernel has no ntfs3");
        Engine::DmCrypt
    }

    #[test]
    #[ignore = "ntfs3: runs inside a VM with Debian's 6.12 kernel (tests/ntfs3_vm.rs)"]
    fn shut_down_stick_mounts_with_ntfs3() {
        shut_down(in_the_vm());
    }

    #[test]
    #[ignore = "ntfs3: runs inside a VM with Debian's 6.12 kernel (tests/ntfs3_vm.rs)"]
    fn pulled_stick_mounts_with_ntfs_3g() {
        pulled(in_the_vm());
    }

    #[test]
    #[ignore = "ntfs3: runs inside a VM with Debian's 6.12 kernel (tests/ntfs3_vm.rs)"]
    fn hibernated_stick_opens_read_only() {
        hibernated(in_the_vm());
    }

    #[test]
    #[ignore = "ntfs3: runs inside a VM with Debian's 6.12 kernel (tests/ntfs3_vm.rs)"]
    fn refusal_carries_the_kernels_reason() {
        refusal_says_why(in_the_vm());
    }
}

/// The same sticks on this machine's kernel (no ntfs3: ntfs-3g, as on Debian's 6.1), through
/// the native engine.
mod here {
    use super::*;

    #[test]
    fn shut_down_stick() {
        if !in_kernel_vm() {
            shut_down(Engine::Native);
        }
    }

    #[test]
    fn pulled_stick() {
        if !in_kernel_vm() {
            pulled(Engine::Native);
        }
    }

    #[test]
    fn hibernated_stick() {
        if !in_kernel_vm() {
            hibernated(Engine::Native);
        }
    }

    /// The dirty flag as ntfs-3g's tools read it, set and cleared on a plain NTFS image.
    #[test]
    fn dirty_flag_is_where_ntfs_3g_looks() {
        if in_kernel_vm() || !prerequisites(&["mkntfs", "ntfsinfo"]) {
            return;
        }
        let dir = scratch("ntfs-dirty-flag");
        let image = dir.join("plain.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        run_ok(Command::new("mkntfs").args(["-q", "-F", "-f"]).arg(&image));
        let flags = |image: &Path| {
            run_ok(Command::new("ntfsinfo").args(["-f", "-m"]).arg(image))
                .lines()
                .find(|l| l.contains("Volume Flags"))
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(ntfs::volume_flags(&image) & 1, 0);
        ntfs::set_dirty(&image, true);
        assert_eq!(ntfs::volume_flags(&image) & 1, 1);
        assert!(flags(&image).contains("DIRTY"), "{}", flags(&image));
        ntfs::set_dirty(&image, false);
        assert!(!flags(&image).contains("DIRTY"), "{}", flags(&image));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
