//! A real USB bus: a VM (Debian's kernels, 6.1 then 6.12, under QEMU, virtme-ng, systemd as
//! PID 1) with QEMU's xhci controller, into which the host plugs BitLocker stick images as
//! usb-storage devices over QMP when a test inside asks (tests/common/usb.rs), so a stick
//! arrives as `/dev/sdX` through the kernel's usb-storage and SCSI drivers as on a laptop; and a
//! disk inside the machine, present at boot (virtio, `/dev/vda`), holding a BitLocker partition
//! as a dual-boot laptop's Windows drive does.
//!
//! One boot per kernel runs the `#[ignore]`d tests in [`in_vm`], each with a guilocker daemon
//! of its own. Prerequisites as for tests/kernel_vm.rs; under CI=true a missing one fails.

mod common;

use common::vm;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const VM_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The images the VM's tests plug, and the internal disk: made on the host before boot.
const IMAGES_ENV: &str = "GUILOCKER_USB_IMAGES";
/// Each stick: its file name, label; all are NTFS in an MBR partition from the same fixture
/// (password `anaconda`, `hello.txt` inside).
const STICKS: [(&str, &str); 4] = [
    ("usb-mount.img", "USBSTICK"),
    ("usb-agent.img", "USBAGENT"),
    ("usb-yank.img", "USBYANK"),
    ("internal.img", "WINDOWS"),
];
const SOURCE: &str = "bitlk-aes-xts-128";

/// Where a boot's images are kept: a fixed path without spaces (vng hands `--disk` to a
/// shell).
fn images_dir(kernel: vm::Kernel) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("usb-vm-{}", kernel.version()))
}

fn script(kernel: vm::Kernel, status_file: &Path) -> String {
    let bin = vm::test_binary("usb_vm");
    format!(
        "set -u\n\
         # logind starts before virtme-ng-init makes /var/lib writable; start it again.\n\
         systemctl reset-failed systemd-logind.service; systemctl start systemd-logind.service\n\
         echo \"== VM: usb_vm in_vm on $(uname -r)\"\n\
         {KERNEL_VM_ENV}=1 CI=\"${{CI:-}}\" {IMAGES_ENV}='{images}' GUILOCKER_SCRATCH={scratch} GUILOCKER_SHARED='{shared}' '{bin}' in_vm --ignored --test-threads=1 --nocapture\n\
         status=$?\n\
         echo \"== VM: done, status $status\"\necho $status > '{status}'\nexit $status\n",
        images = images_dir(kernel).display(),
        scratch = vm::VM_SCRATCH,
        shared = shared_dir().display(),
        bin = bin.display(),
        status = status_file.display(),
    )
}

/// Every case once per kernel people run: Debian 12's 6.1 (NTFS through ntfs-3g) and 6.12
/// (ntfs3), one boot each, one after the other.
#[test]
fn usb_bus_in_a_vm() {
    if in_kernel_vm() {
        return;
    }
    if !prerequisites(STICK_TOOLS) {
        return;
    }
    // Made here, in the lower layer the VM sees: the users, the fixtures.
    ensure_user(TEST_USER, true);
    let _ = images();
    for kernel in [vm::Kernel::Debian6_1, vm::Kernel::Debian6_12] {
        if vm::can_boot("the USB VM", kernel) {
            boot(kernel);
        }
    }
}

/// One boot on `kernel`, with fresh images (the boot before wrote to its own).
fn boot(kernel: vm::Kernel) {
    let dir = images_dir(kernel);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, label) in STICKS {
        let made = make_stick(&dir, SOURCE, "ntfs", label, "mbr");
        std::fs::rename(made, dir.join(file)).unwrap();
    }

    let host = usb::UsbHost::start(&dir.join("bus")).unwrap_or_else(|e| panic!("{e}"));
    let root = vm::SystemdRoot::mount(&scratch("usb-vm-root")).unwrap_or_else(|e| panic!("{e}"));
    let boot = vm::Boot {
        systemd: Some(&root),
        qemu_opts: host.qemu_opts(),
        disks: vec![dir.join("internal.img")],
        ..vm::Boot::new(kernel)
    };
    vm::run_group_on(
        &format!("usb-vm-{}", kernel.version()),
        &boot,
        |status| script(kernel, status),
        1,
        VM_TIMEOUT,
    );
    drop(root);
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Inside the VM: the USB bus and the internal disk are real.
mod in_vm {
    use super::common::*;
    use guilocker::protocol::{DeviceState, EventKind};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    const WHY: &str = "USB bus: runs inside a VM with QEMU's xhci (tests/usb_vm.rs)";
    /// The internal disk's BitLocker partition (vng `--disk`: virtio-blk).
    const INTERNAL: &str = "/dev/vda1";
    const POLL: Duration = Duration::from_millis(50);

    fn image(file: &str) -> PathBuf {
        let dir = std::env::var_os(super::IMAGES_ENV).expect("the images' folder");
        Path::new(&dir).join(file)
    }

    fn uname_r() -> String {
        run_ok(Command::new("uname").arg("-r")).trim().to_owned()
    }

    /// `guilocker status --json`, as a person would run it: the entry for `dev`.
    fn status_entry(daemon: &TestDaemon, dev: &str) -> serde_json::Value {
        let (code, out, err) = daemon.cli(None, &["status", "--json"], "");
        assert_eq!(code, 0, "{err}");
        let devices: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        devices
            .into_iter()
            .find(|d| d["device"] == dev)
            .unwrap_or_else(|| panic!("status --json does not list {dev}: {out}"))
    }

    fn poll<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = probe() {
                return found;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(POLL);
        }
    }

    /// Plugs `file` on the USB bus; the stick's volume (`/dev/sdX1`) once the daemon (whose
    /// `events` these are) has probed it, with how long the node and the daemon's event took after the host's ack.
    fn plug_and_see(
        events: &mut guilocker::client::Events,
        id: &str,
        file: &str,
    ) -> (usb::UsbStick, String) {
        let stick = usb::plug(id, &image(file), true);
        let dev = stick.volume();
        let node = stick.plugged_at.elapsed();
        wait_event(events, &format!("{dev} to be probed"), |k, d| {
            k != EventKind::Removed && d.device == dev && d.state == DeviceState::Locked
        });
        let event = stick.plugged_at.elapsed();
        println!(
            "timing: {id}: plug -> {dev} {:.1} s, plug -> daemon's event (locked) {:.1} s",
            node.as_secs_f64(),
            event.as_secs_f64()
        );
        (stick, dev)
    }

    /// Cases 1 and 2: a stick hot-plugged on the USB bus is `/dev/sdX`, listed removable on
    /// USB, unlocks with its password, mounts, and its file reads back; `guilocker unmount`
    /// then powers it off: its USB device leaves the guest's /sys/bus/usb/devices.
    #[test]
    #[ignore = "USB bus: runs inside a VM with QEMU's xhci (tests/usb_vm.rs)"]
    fn a_usb_stick_unlocks_mounts_and_is_powered_off() {
        assert!(in_kernel_vm(), "{WHY}");
        let daemon = TestDaemon::start("usb-mount");
        let mut events = daemon.events();
        let (mut stick, dev) = plug_and_see(&mut events, "usbmount", "usb-mount.img");
        assert!(dev.starts_with("/dev/sd"), "{dev}");

        let entry = status_entry(&daemon, &dev);
        println!("status --json: {entry}");
        assert_eq!(entry["removable"], true, "{entry}");
        assert_eq!(entry["connection"], "usb", "{entry}");
        assert_eq!(entry["state"], "locked", "{entry}");

        let (code, out, err) = daemon.unlock_with_password(None, &dev, "anaconda");
        assert_eq!(code, 0, "{out}{err}");
        println!("unlock: {}", (out + &err).trim());
        let info = daemon.device(&dev).unwrap();
        assert_eq!(info.state, DeviceState::Mounted);
        let mountpoint = PathBuf::from(info.mountpoint.clone().expect("a mountpoint"));
        let driver = guilocker::daemon::mounts::mounted_at(&mountpoint).unwrap_or_default();
        println!("mounted as {driver} on {}", uname_r());
        let hello = find_file(&mountpoint, "hello.txt").expect("hello.txt on the stick");
        assert_eq!(
            std::fs::read_to_string(hello).unwrap(),
            "hello from windows\n"
        );

        let usb_device = stick.usb_device().expect("the stick's USB device");
        let disk = stick.disk().expect("the stick's disk");
        let started = Instant::now();
        let (code, out, err) = daemon.cli(None, &["unmount", &dev], "");
        assert_eq!(code, 0, "{out}{err}");
        usb::wait_gone(&usb_device, WAIT);
        let gone = started.elapsed();
        let said = daemon.wait_log(&format!("{dev}: /dev/{disk} flushed"));
        println!("daemon: {said}");
        assert!(said.contains("flushed and powered off"), "{said}");
        println!(
            "timing: unmount -> USB device {} gone {:.1} s",
            usb_device.display(),
            gone.as_secs_f64()
        );
        assert!(!is_mounted(&mountpoint));
        assert!(!Path::new(&dev).exists(), "{dev} still there");
        assert!(stick.usb_device().is_none());
        // QEMU still holds it, as a port holds a stick whose light went out: pull it.
        stick.unplug();
    }

    /// Case 3: the internal disk present at boot is listed as internal, not removable; the
    /// agent, in a session of the test user, does not ask about it, while it asks about a
    /// stick plugged next; the internal disk opens on demand and is left powered.
    #[test]
    #[ignore = "USB bus: runs inside a VM with QEMU's xhci (tests/usb_vm.rs)"]
    fn the_internal_disk_is_listed_never_asked_about_and_opens_on_demand() {
        assert!(in_kernel_vm(), "{WHY}");
        let daemon = TestDaemon::start("usb-internal");
        poll("the internal disk probed", || {
            daemon
                .device(INTERNAL)
                .filter(|d| d.state == DeviceState::Locked)
        });
        let entry = status_entry(&daemon, INTERNAL);
        println!("status --json: {entry}");
        assert_eq!(entry["removable"], false, "{entry}");
        assert_eq!(entry["connection"], "internal", "{entry}");
        assert_eq!(entry["bitlocker"], true, "{entry}");

        // The agent as the test user, in a login session with no seat (active: in front of
        // nothing), as logind_vm's tests make one.
        let log = daemon.dir.join("agent.log");
        let unit = "guilocker-usb-agent";
        run_ok(
            Command::new("systemd-run")
                .args(["--quiet", &format!("--unit={unit}"), "--uid", TEST_USER])
                .args(["-p", "PAMName=login"])
                .arg(format!("-pStandardError=file:{}", log.display()))
                .arg("--setenv=GUILOCKER_LOG=debug")
                .arg("--")
                .arg(user_bin())
                .args(["agent", "--socket"])
                .arg(&daemon.socket),
        );
        struct Stop(&'static str);
        impl Drop for Stop {
            fn drop(&mut self) {
                let _ = Command::new("systemctl").args(["stop", self.0]).output();
            }
        }
        let _agent = Stop(unit);
        let agent_said = |text: &str| {
            poll(&format!("the agent to say {text:?}"), || {
                let lines = std::fs::read_to_string(&log).unwrap_or_default();
                lines.contains(text).then_some(lines)
            })
        };
        agent_said("connected to the daemon");
        agent_said(&format!(
            "{INTERNAL}: not asking (a disk inside the machine"
        ));

        // A stick plugged now is asked about (here the dialog finds no display).
        let mut events = daemon.events();
        let (mut stick, dev) = plug_and_see(&mut events, "usbagent", "usb-agent.img");
        let said = agent_said(&format!("{dev}: asking for the password"));
        for line in said
            .lines()
            .filter(|l| l.contains(INTERNAL) || l.contains(&dev))
        {
            println!("agent: {line}");
        }
        assert!(
            !said.contains(&format!("{INTERNAL}: asking")),
            "the agent asked about the internal disk:\n{said}"
        );
        stick.unplug();

        // On demand: `guilocker unlock` opens it; put away, it is flushed, never powered off.
        let (code, out, err) = daemon.unlock_with_password(None, INTERNAL, "anaconda");
        assert_eq!(code, 0, "{out}{err}");
        let info = daemon.device(INTERNAL).unwrap();
        assert_eq!(info.state, DeviceState::Mounted);
        let mountpoint = PathBuf::from(info.mountpoint.clone().unwrap());
        assert!(find_file(&mountpoint, "hello.txt").is_some());
        let (code, out, err) = daemon.cli(None, &["unmount", INTERNAL], "");
        assert_eq!(code, 0, "{out}{err}");
        let flushed = daemon.wait_log(&format!("{INTERNAL}: /dev/vda flushed"));
        println!("daemon: {flushed}");
        assert!(flushed.contains("(not on USB: left powered)"), "{flushed}");
        assert!(Path::new(INTERNAL).exists());
    }

    /// Case 4: a locked stick pulled out: the daemon says `removed`, and nothing of it is
    /// left (no device, no node, no USB device, no engine, no mapping).
    #[test]
    #[ignore = "USB bus: runs inside a VM with QEMU's xhci (tests/usb_vm.rs)"]
    fn a_locked_stick_pulled_out_is_removed() {
        assert!(in_kernel_vm(), "{WHY}");
        let daemon = TestDaemon::start("usb-yank");
        let mut events = daemon.events();
        let (mut stick, dev) = plug_and_see(&mut events, "usbyank", "usb-yank.img");
        let usb_device = stick.usb_device().expect("the stick's USB device");
        let disk = stick.disk().expect("the stick's disk");

        let started = Instant::now();
        stick.unplug();
        wait_event(&mut events, &format!("{dev} removed"), |k, d| {
            k == EventKind::Removed && d.device == dev
        });
        println!(
            "timing: unplug -> daemon's removed event {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert!(daemon.device(&dev).is_none(), "{dev} still listed");
        assert!(daemon.device(&format!("/dev/{disk}")).is_none());
        usb::wait_gone(&usb_device, WAIT);
        for node in [dev.clone(), format!("/dev/{disk}")] {
            assert!(!Path::new(&node).exists(), "{node} left");
        }
        assert!(engines_for(&dev).is_empty());
        assert_no_mapping();
    }
}
