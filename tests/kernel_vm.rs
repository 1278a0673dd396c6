//! The kernel path's end-to-end group, on Debian's real kernel in a VM.
//!
//! This machine's kernel has no device-mapper; Debian's does. One test here boots
//! `/boot/vmlinuz-*` (package linux-image-amd64) once under QEMU with virtme-ng, over this
//! machine's root filesystem, and runs the tests left to the VM (`#[ignore]`d with
//! [`common::IN_THE_VM`]) inside it: every fixture and protector through dm-crypt, and the
//! stick tests on dm-crypt. The sticks are made here first, so the VM only uses them.
//!
//! Prerequisites (root, vng, qemu-system-x86_64, a Debian kernel in /boot): missing ones
//! skip, except under CI=true, where they fail. `tests/run.sh` installs them.

mod common;

use common::vm;

use common::*;
use std::path::Path;
use std::time::Duration;

/// The whole group in one boot: TCG boots in ~75 s, then every test inside.
const VM_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// The test binaries (cargo's names) and the filter of what each runs in the VM.
const GROUPS: [(&str, &str); 4] = [
    ("kernel_vm", "in_vm"),
    ("e2e_fixtures", "every_fixture_and_protector_on_dm_crypt"),
    ("e2e_sticks", "dm_crypt::"),
    ("fault_devices", "dm_crypt::"),
];

/// The sticks the VM's tests use (tests/e2e_sticks.rs, tests/fault_devices.rs): source,
/// filesystem, label, table.
const VM_STICKS: [(&str, &str, &str, &str); 7] = [
    ("bitlk-aes-xts-128", "ntfs", "My Stick", "mbr"),
    ("bitlk-aes-xts-256", "exfat", "EXSTICK", "gpt"),
    ("bitlk-togo-aes-xts-128", "vfat", "TOGO", "none"),
    ("bitlk-aes-cbc-128", "ntfs", "YANKED", "mbr"),
    ("bitlk-aes-xts-128", "ntfs", "TERM", "none"),
    ("bitlk-aes-xts-128", "ntfs", "OTHERS", "mbr"),
    ("bitlk-aes-xts-128", "ntfs", "HELD", "mbr"),
];

/// The groups to run: all, or while working on one, those of the binaries named in
/// `GUILOCKER_VM_ONLY` (`kernel_vm,e2e_sticks`).
fn groups() -> Vec<(&'static str, &'static str)> {
    let only = std::env::var("GUILOCKER_VM_ONLY").ok();
    GROUPS
        .into_iter()
        .filter(|(binary, _)| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|b| b == *binary))
        })
        .collect()
}

/// The script the VM runs: each group's binary with its filter, `--ignored`, one test at a
/// time; it exits with the first failure's code. Scratch space is the VM's tmpfs: target/
/// comes over 9p, which cannot hold a socket.
fn script(status_file: &Path) -> String {
    let mut s = String::from("set -u\nstatus=0\nmodprobe loop 2>/dev/null\n");
    for (binary, filter) in groups() {
        let bin = vm::test_binary(binary);
        s.push_str(&format!(
            "echo '== VM: {binary} {filter}'\n\
             {KERNEL_VM_ENV}=1 CI=\"${{CI:-}}\" GUILOCKER_SCRATCH={scratch} GUILOCKER_SHARED='{shared}' '{bin}' '{filter}' --ignored --test-threads=1 --nocapture || status=$?\n",
            shared = shared_dir().display(),
            scratch = vm::VM_SCRATCH,
            bin = bin.display(),
        ));
    }
    s.push_str(&format!(
        "echo \"== VM: done, status $status\"\necho $status > '{}'\nexit $status\n",
        status_file.display()
    ));
    s
}

#[test]
fn kernel_path_in_a_vm() {
    if in_kernel_vm() {
        return;
    }
    if !vm::can_boot("the kernel-path VM", vm::Kernel::Debian6_1) {
        return;
    }
    if !prerequisites(&[
        "losetup",
        "partx",
        "sfdisk",
        "runuser",
        "mkntfs",
        "mkfs.exfat",
    ]) {
        return;
    }
    // Everything the VM needs from the fixtures is made here, at full speed: the images
    // unpacked, and the sticks (make-bitlocker-stick runs dislocker and mkfs).
    let _ = images();
    let dir = scratch("kernel-vm-sticks");
    for (source, fs, label, table) in VM_STICKS {
        make_stick(&dir, source, fs, label, table);
    }
    let _ = std::fs::remove_dir_all(&dir);

    vm::run_group(
        "kernel-vm",
        vm::Kernel::Debian6_1,
        script,
        groups().len(),
        VM_TIMEOUT,
        None,
    );
}

/// Tests that need the VM for more than dm-crypt: its udev.
mod in_vm {
    use super::common::*;
    use std::path::Path;
    use std::process::Command;

    const RULE: &str = "packaging/udev/75-guilocker.rules";
    const FLAG: &str = "/run/guilocker/handles-bitlocker";

    fn properties(dev: &str) -> String {
        run_ok(Command::new("udevadm").args(["settle", "--timeout=60"]));
        run_ok(Command::new("udevadm").args(["info", "--query=property", "--name", dev]))
    }

    /// The rule parses, and udev marks what it should: a BitLocker drive `UDISKS_IGNORE=1`
    /// while the daemon handles BitLocker drives (its flag file), never without it, but
    /// shown (`UDISKS_AUTO=0` only) while the daemon has it unlocked on dm-crypt (a file
    /// named after it); our dm-crypt mappings never automounted, and hidden but while a file
    /// named after them says the daemon shows them. Installed into the VM's /etc (an
    /// overlay: the host's /etc is untouched).
    #[test]
    #[ignore = "kernel path: runs inside a VM with Debian's kernel (tests/kernel_vm.rs)"]
    fn udev_rule_marks_our_devices() {
        assert!(in_kernel_vm(), "{IN_THE_VM}");
        let rule = Path::new(env!("CARGO_MANIFEST_DIR")).join(RULE);
        std::fs::create_dir_all("/etc/udev/rules.d").unwrap();
        std::fs::copy(&rule, "/etc/udev/rules.d/75-guilocker.rules").unwrap();
        run_ok(Command::new("udevadm").args(["control", "--reload"]));
        std::fs::create_dir_all("/run/guilocker").unwrap();
        let _ = std::fs::remove_file(FLAG);

        let image = images()
            .into_iter()
            .find(|i| i.name == "bitlk-aes-xts-128")
            .unwrap();
        let copy = scratch("udev").join("stick.img");
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(image.path())
                .arg(&copy),
        );

        // Without the flag: the desktop may handle it.
        let stick = Stick::plug(&copy, false);
        let props = properties(&stick.loop_dev);
        assert!(props.contains("ID_FS_TYPE=BitLocker"), "{props}");
        assert!(!props.contains("UDISKS_IGNORE=1"), "{props}");
        // Where `udevadm verify` exists (systemd ≥ 253) it checks the syntax too; `udevadm
        // test` reports every rule file it could not parse.
        let verify = Command::new("udevadm")
            .arg("verify")
            .arg("/etc/udev/rules.d/75-guilocker.rules")
            .output()
            .unwrap();
        if !String::from_utf8_lossy(&verify.stderr).contains("Unknown command") {
            assert!(verify.status.success(), "{verify:?}");
        }
        let sys = format!(
            "/sys/class/block/{}",
            stick.loop_dev.trim_start_matches("/dev/")
        );
        let test = Command::new("udevadm")
            .args(["test", &sys])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&test.stderr).into_owned()
            + &String::from_utf8_lossy(&test.stdout);
        assert!(
            log.contains("75-guilocker.rules"),
            "rule file not read:\n{log}"
        );
        assert!(
            !log.lines()
                .any(|l| l.contains("75-guilocker.rules") && l.to_lowercase().contains("invalid")),
            "{log}"
        );
        drop(stick);

        // With the flag (the daemon handles BitLocker drives): marked.
        std::fs::write(FLAG, b"").unwrap();
        let stick = Stick::plug(&copy, false);
        let props = properties(&stick.loop_dev);
        assert!(props.contains("UDISKS_IGNORE=1"), "{props}");
        assert!(props.contains("UDISKS_AUTO=0"), "{props}");
        // Unlocked by the daemon on dm-crypt: shown, never automounted.
        let kname = stick.loop_dev.trim_start_matches("/dev/");
        let mark = Path::new("/run/guilocker/unlocked").join(kname);
        std::fs::create_dir_all(mark.parent().unwrap()).unwrap();
        std::fs::write(&mark, "guilocker-test").unwrap();
        run_ok(Command::new("udevadm").args(["trigger", "--action=change", &stick.loop_dev]));
        let props = properties(&stick.loop_dev);
        std::fs::remove_file(&mark).unwrap();
        assert!(!props.contains("UDISKS_IGNORE=1"), "{props}");
        assert!(props.contains("UDISKS_AUTO=0"), "{props}");

        // Our mapping on it: never automounted, shown only with its mark, whatever the flag.
        std::fs::remove_file(FLAG).unwrap();
        let meta =
            guilocker::bitlocker::read_metadata(std::fs::File::open(&copy).unwrap()).unwrap();
        let pw = guilocker::secret::SecretString::from(image.get("PW").unwrap());
        let fvek =
            guilocker::bitlocker::unlock(&meta, guilocker::bitlocker::Key::Password(&pw)).unwrap();
        // The key on cryptsetup's stdin, never in a file.
        let mut open = Command::new("cryptsetup")
            .args(["open", "--type", "bitlk", "--readonly", "--volume-key-file"])
            .arg("/dev/stdin")
            .arg(&stick.loop_dev)
            .arg("guilocker-udevtest")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            &mut open.stdin.take().unwrap(),
            &fvek.dm_crypt_key().unwrap(),
        )
        .unwrap();
        assert!(open.wait().unwrap().success(), "cryptsetup open failed");
        let mapper = "/dev/mapper/guilocker-udevtest";
        let hidden = properties(mapper);
        let mark = Path::new("/run/guilocker/unlocked/guilocker-udevtest");
        std::fs::write(mark, "guilocker-test").unwrap();
        run_ok(Command::new("udevadm").args(["trigger", "--action=change", mapper]));
        let shown = properties(mapper);
        std::fs::remove_file(mark).unwrap();
        run_ok(Command::new("cryptsetup").args(["close", "guilocker-udevtest"]));
        assert!(hidden.contains("DM_NAME=guilocker-udevtest"), "{hidden}");
        assert!(hidden.contains("UDISKS_IGNORE=1"), "{hidden}");
        assert!(hidden.contains("UDISKS_AUTO=0"), "{hidden}");
        assert!(!shown.contains("UDISKS_IGNORE=1"), "{shown}");
        assert!(shown.contains("UDISKS_AUTO=0"), "{shown}");
    }
}

/// A daemon killed with a volume unlocked (--no-mount) through dm-crypt leaves its mapping:
/// the kernel keeps serving it. The next daemon adopts it from its record (issue 21, item 5):
/// listed unlocked, put away by `unmount`. A mapping of ours with no record (a daemon from
/// before records, or a record lost) is closed at start, since nothing uses it, and the drive
/// unlocks again.
mod in_vm_crash {
    use super::common::*;
    use guilocker::protocol::{DeviceState, Engine, EventKind};

    #[test]
    #[ignore = "kernel path: runs inside a VM with Debian's kernel (tests/kernel_vm.rs)"]
    fn leftover_mapping_closed_after_a_crash() {
        assert!(in_kernel_vm(), "{IN_THE_VM}");
        let _serial = serial();
        let mut daemon = TestDaemon::start_with("dm-crash", &engine_config(Engine::DmCrypt));
        let image = images()
            .into_iter()
            .find(|i| i.name == "bitlk-aes-xts-128")
            .unwrap();
        let copy = daemon.dir.join("volume.img");
        run_ok(
            std::process::Command::new("cp")
                .arg("--sparse=always")
                .arg(image.path())
                .arg(&copy),
        );
        let mut events = daemon.events();
        let stick = Stick::plug(&copy, false);
        let dev = stick.volume();
        wait_event(&mut events, "the volume", |k, d| {
            k == EventKind::Added && d.device == dev
        });
        let pw = format!("{}\n", image.get("PW").unwrap());
        let unlock = ["unlock", dev.as_str(), "--no-mount", "--password-stdin"];
        let (code, _, err) = daemon.cli(None, &unlock, &pw);
        assert_eq!(code, 0, "{err}");
        drop(events);
        daemon.crash();
        assert_eq!(guilocker::daemon::dmcrypt::mappings().len(), 1);

        // Adopted: the mapping serves on, the drive is listed unlocked, `unmount` closes it.
        let startup = daemon.respawn();
        assert!(
            startup
                .iter()
                .any(|l| l.contains("adopted from an earlier guilocker: unlocked")),
            "{startup:#?}"
        );
        assert_eq!(daemon.device(&dev).unwrap().state, DeviceState::Unlocked);
        let (code, _, err) = daemon.cli(None, &["unmount", &dev], "");
        assert_eq!(code, 0, "unmount of the adopted mapping: {err}");
        assert_no_mapping();

        // No record: a leftover, closed at start.
        let (code, _, err) = daemon.cli(None, &unlock, &pw);
        assert_eq!(code, 0, "{err}");
        daemon.crash();
        let record = daemon
            .runtime
            .join("volumes")
            .join(format!("{}.json", dev.trim_start_matches("/dev/")));
        std::fs::remove_file(&record)
            .unwrap_or_else(|e| panic!("no record {}: {e}", record.display()));
        let startup = daemon.respawn();
        assert!(
            startup.iter().any(|l| l.contains("cleaned up 1 volume")),
            "{startup:#?}"
        );
        assert_no_mapping();
        let (code, _, err) = daemon.cli(None, &unlock, &pw);
        assert_eq!(code, 0, "unlock after the restart: {err}");
        let (code, _, err) = daemon.cli(None, &["unmount", &dev], "");
        assert_eq!(code, 0, "{err}");
        assert_no_mapping();
    }
}
