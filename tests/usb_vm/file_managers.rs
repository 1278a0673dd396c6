//! What a file manager sees and does, in the USB VM: GIO's view through gvfs' udisks volume
//! monitor (GNOME Files, Thunar), on a session bus of the person's own, with udisks2 running.
//! Run in the same boots as `in_vm`.

use super::common::*;
use super::in_vm::{
    plug_and_see, poll, udisks_running, Installed, Mounted, RULE, RULE_PATH, RULE_RUNTIME_DIR,
};
use guilocker::protocol::{DeviceState, EventKind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// gvfs' udisks volume monitor (package gvfs-daemons), which GIO starts on the session bus.
const VOLUME_MONITOR: &str = "/usr/libexec/gvfs-udisks2-volume-monitor";
/// Longer than gvfs' own 10 s limit on the umount it runs, so gvfs is what gives up.
const GIO_LIMIT: &str = "120";

/// gio and gvfs present; `false` (and why) where they are not, a failure under CI=true,
/// where tests/run.sh installs them.
fn gvfs_present() -> bool {
    let missing = if which("gio").is_none() {
        "gio (libglib2.0-bin)"
    } else if !Path::new(VOLUME_MONITOR).exists() {
        VOLUME_MONITOR
    } else {
        return true;
    };
    let why = format!("{missing} is not installed: the file manager's view is not checked");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why} (CI=true)"
    );
    println!("SKIPPED: {why}");
    false
}

/// `gio ARGS` as `user`, in a session of their own as a file manager runs in: a session bus
/// (dbus-run-session, where GIO activates gvfs' volume monitor), a runtime directory, English.
/// The daemon's socket travels in the environment, down to the umount helper gvfs runs.
fn gio_as(user: &str, daemon: &TestDaemon, args: &[&str]) -> (i32, String, String, Duration) {
    let runtime = PathBuf::from(format!("/tmp/xdg-{user}"));
    if !runtime.exists() {
        std::fs::create_dir(&runtime).unwrap();
        run_ok(Command::new("chown").arg(user).arg(&runtime));
        run_ok(Command::new("chmod").arg("0700").arg(&runtime));
    }
    let started = Instant::now();
    let (code, out, err) = output_of(
        Command::new("timeout")
            .args([GIO_LIMIT, "runuser", "-u", user, "--", "env"])
            .arg(format!("XDG_RUNTIME_DIR={}", runtime.display()))
            .arg(format!("GUILOCKER_SOCKET={}", daemon.socket.display()))
            .args([
                "LANG=C.UTF-8",
                "LC_ALL=C.UTF-8",
                "dbus-run-session",
                "--",
                "gio",
            ])
            .args(args),
        "",
    );
    assert_ne!(
        code, 124,
        "gio {args:?} as {user} did not return within {GIO_LIMIT} s"
    );
    (code, out, err, started.elapsed())
}

/// The block `gio mount -li` prints for the mount at `mountpoint`: its `Mount(N): NAME ->
/// URI` line and the indented lines under it.
fn gio_mount_block(list: &str, mountpoint: &Path) -> Option<String> {
    let uri = format!("-> file://{}", mountpoint.display());
    let mut lines = list
        .lines()
        .skip_while(|l| !(l.contains("Mount(") && l.ends_with(&uri)));
    let head = lines.next()?;
    let indent = head.len() - head.trim_start().len();
    let body = lines.take_while(|l| l.len() - l.trim_start().len() > indent);
    Some(
        std::iter::once(head)
            .chain(body)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// GNOME Files' (and Thunar's) unmount button on a stick guilocker unlocked and mounted, on
/// the kernel's dm-crypt: gvfs lists the mount by its label, under /media/USER, with
/// `can_unmount=1`; its unmount (`gio mount -u`, gvfs then runs `umount PATH` as the person,
/// which runs our helper) puts the volume away and powers the stick off. Before that, with a
/// program inside the volume it fails as busy and nothing changes, and another user is
/// refused. Then `umount` by root (no helper: the daemon sees the filesystem go and locks the
/// volume, the stick stays powered) and `guilocker unmount` of the locked volume, which
/// powers the stick off.
#[test]
#[ignore = "USB bus: runs inside a VM with QEMU's xhci (tests/usb_vm.rs)"]
fn the_file_managers_unmount_button_puts_the_stick_away() {
    assert!(in_kernel_vm(), "{}", super::in_vm::WHY);
    if !gvfs_present() || !udisks_running() {
        return;
    }
    let case = Instant::now();
    ensure_user(OTHER_USER, false);
    let _helper = UmountHelper::install();
    // As installed: the udev rule, and a daemon speaking for the desktop, so udisks leaves
    // the BitLocker partition and our mapping alone and gvfs sees a mount of its own.
    let runtime = Path::new(RULE_RUNTIME_DIR);
    let made_runtime = !runtime.exists();
    std::fs::write(RULE_PATH, RULE).unwrap();
    let _installed = Installed { made_runtime };
    run_ok(Command::new("udevadm").args(["control", "--reload"]));
    // /media on a tmpfs of its own, as on a desktop: the guest's root is 9p under an overlay,
    // without the POSIX ACLs the per-user folders get.
    let _media = (!is_mounted(Path::new("/media"))).then(|| {
        run_ok(Command::new("mount").args(["-t", "tmpfs", "-o", "mode=0755", "media", "/media"]));
        Mounted("/media")
    });
    let daemon = TestDaemon::start_in("usb-files", "mount_root = \"/media\"\n", Some(runtime));
    let mut events = daemon.events();
    let (mut stick, dev) = plug_and_see(&mut events, "usbfiles", "usb-files.img");
    let unlock_for = |dev: &str| {
        let (code, out, err) = daemon.cli(
            None,
            &["unlock", dev, "--password-stdin", "--owner", TEST_USER],
            "anaconda\n",
        );
        assert_eq!(code, 0, "{out}{err}");
        let info = daemon.device(dev).unwrap();
        PathBuf::from(info.mountpoint.expect("a mountpoint"))
    };
    let mountpoint = unlock_for(&dev);
    assert_eq!(
        mountpoint,
        Path::new("/media").join(TEST_USER).join("USBFILES")
    );
    let driver = guilocker::daemon::mounts::mounted_at(&mountpoint).unwrap_or_default();
    println!("{dev}: mounted at {} by {driver}", mountpoint.display());

    let (code, list, err, took) = gio_as(TEST_USER, &daemon, &["mount", "-li"]);
    assert_eq!(code, 0, "{err}");
    let block = gio_mount_block(&list, &mountpoint).unwrap_or_else(|| {
        panic!(
            "gio mount -li does not list {}:\n{list}",
            mountpoint.display()
        )
    });
    println!(
        "gio mount -li as {TEST_USER} ({:.1} s):\n{block}",
        took.as_secs_f64()
    );
    assert!(
        block.contains("Mount(") && block.contains("USBFILES ->"),
        "{block}"
    );
    assert!(
        block.lines().any(|l| l.trim() == "can_unmount=1"),
        "{block}"
    );

    // Another user: umount and the file manager's button are refused, nothing changes.
    let (code, out, err) = daemon.umount_as(Some(OTHER_USER), &mountpoint);
    println!(
        "umount as {OTHER_USER}: exit {code}: {}",
        (out + &err).trim()
    );
    assert_ne!(code, 0);
    let mp = mountpoint.to_str().unwrap();
    let (code, out, err, _) = gio_as(OTHER_USER, &daemon, &["mount", "-u", mp]);
    println!(
        "gio mount -u as {OTHER_USER}: exit {code}: {}",
        (out + &err).trim()
    );
    assert_ne!(code, 0);
    assert!(is_mounted(&mountpoint));
    assert_eq!(daemon.device(&dev).unwrap().state, DeviceState::Mounted);

    // A program inside: busy, as umount(8) says it, and nothing changes.
    let mut holder = Command::new("sleep")
        .arg("600")
        .current_dir(&mountpoint)
        .spawn()
        .unwrap();
    let (code, out, err, took) = gio_as(TEST_USER, &daemon, &["mount", "-u", mp]);
    println!(
        "gio mount -u while busy ({:.1} s): exit {code}: {}",
        took.as_secs_f64(),
        (out + &err).trim()
    );
    assert_ne!(code, 0);
    assert!(err.to_lowercase().contains("busy"), "{err}");
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(is_mounted(&mountpoint));
    assert_eq!(daemon.device(&dev).unwrap().state, DeviceState::Mounted);

    // The owner's unmount button: put away and powered off.
    let usb_device = stick.usb_device().expect("the stick's USB device");
    let (code, out, err, took) = gio_as(TEST_USER, &daemon, &["mount", "-u", mp]);
    assert_eq!(code, 0, "gio mount -u as {TEST_USER}: {out}{err}");
    println!(
        "gio mount -u as {TEST_USER}: exit 0 in {:.1} s",
        took.as_secs_f64()
    );
    usb::wait_gone(&usb_device, WAIT);
    assert!(!is_mounted(&mountpoint));
    assert!(!in_utab(&mountpoint));
    assert!(engines_for(&dev).is_empty());
    assert_no_mapping();
    wait_event(&mut events, &format!("{dev} put away"), |k, d| {
        d.device == dev && (k == EventKind::Removed || d.state == DeviceState::Locked)
    });
    let said = daemon.wait_log("flushed and powered off");
    println!("daemon: {said}");
    let (_, list, _, _) = gio_as(TEST_USER, &daemon, &["mount", "-li"]);
    assert!(gio_mount_block(&list, &mountpoint).is_none(), "{list}");
    stick.unplug();

    // Root's umount takes no helper: the daemon locks the volume and leaves the stick
    // powered; `guilocker unmount` of the locked volume powers it off.
    let (mut stick, dev) = plug_and_see(&mut events, "usbfiles2", "usb-files.img");
    let mountpoint = unlock_for(&dev);
    let (code, out, err) = daemon.umount_as(None, &mountpoint);
    assert_eq!(code, 0, "{out}{err}");
    wait_event(&mut events, &format!("{dev} locked"), |k, d| {
        k == EventKind::Changed && d.device == dev && d.state == DeviceState::Locked
    });
    let usb_device = stick
        .usb_device()
        .expect("still powered after root's umount");
    let (code, out, err) = daemon.cli(Some(TEST_USER), &["unmount", &dev], "");
    assert_eq!(code, 0, "unmount of the locked {dev}: {out}{err}");
    usb::wait_gone(&usb_device, WAIT);
    println!("{dev}: locked after root's umount; guilocker unmount powered it off");
    stick.unplug();
    poll("the daemon to forget the stick", || {
        daemon.device(&dev).is_none().then_some(())
    });
    println!(
        "timing: file managers case {:.1} s",
        case.elapsed().as_secs_f64()
    );
}

#[test]
fn finds_a_mount_in_gios_list() {
    let list = "Drive(0): QEMU HARDDISK\n  Type: GProxyDrive\nMount(0): USBFILES -> file:///media/a/USBFILES\n  Type: GProxyMount (GProxyVolumeMonitorUDisks2)\n  can_unmount=1\n  can_eject=0\nMount(1): x -> file:///mnt\n";
    let block = gio_mount_block(list, Path::new("/media/a/USBFILES")).unwrap();
    assert!(block.starts_with("Mount(0): USBFILES"), "{block}");
    assert!(block.ends_with("can_eject=0"), "{block}");
    assert!(gio_mount_block(list, Path::new("/media/a/OTHER")).is_none());
}
