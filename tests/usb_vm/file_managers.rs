//! What a file manager sees and does, in the USB VM: GIO's view through gvfs' udisks volume
//! monitor (GNOME Files, Thunar), as the person at the computer (a logind session of their
//! own, its own session bus), with udisks2, polkit and guilocker installed as the packages
//! install them (udev rule, polkit rule, /sbin/umount.guilocker, a daemon on /run/guilocker).
//! Run in the same boots as `in_vm`.

use super::common::logind::VtSession;
use super::common::*;
use super::in_vm::{
    plug_and_see, poll, udisks_running, Installed, Mounted, RULE, RULE_PATH, RULE_RUNTIME_DIR,
};
use guilocker::protocol::{DeviceState, Engine, EventKind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// gvfs' udisks volume monitor (package gvfs-daemons), which GIO starts on the session bus.
const VOLUME_MONITOR: &str = "/usr/libexec/gvfs-udisks2-volume-monitor";
/// Longer than gvfs' own 10 s limit on the umount it runs, so gvfs is what gives up.
const GIO_LIMIT: &str = "120";
/// The package's polkit rule, and where it goes in the guest (its /etc is the overlay's).
const POLKIT_RULE: &str = include_str!("../../packaging/polkit/50-guilocker.rules");
const POLKIT_RULE_PATH: &str = "/etc/polkit-1/rules.d/50-guilocker.rules";

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

/// `gio ARGS` as a file manager runs it: as `user`, in `session` (the person at the
/// computer: logind's active local session, which polkit asks of whoever udisks serves; the
/// process joins the session's cgroup, then becomes the user with setpriv, which opens no
/// PAM session of its own), on a session bus of its own (dbus-run-session, where GIO starts
/// gvfs' volume monitor), in English. The daemon's socket travels in the environment, down
/// to the umount helper gvfs may run.
fn gio_as(
    user: &str,
    session: &VtSession,
    daemon: &TestDaemon,
    args: &[&str],
) -> (i32, String, String, Duration) {
    // vng leaves /tmp 0755, where a user's session bus cannot make its socket.
    run_ok(Command::new("chmod").args(["1777", "/tmp"]));
    let home = PathBuf::from(format!("/tmp/home-{user}"));
    if !home.exists() {
        std::fs::create_dir(&home).unwrap();
        run_ok(Command::new("chown").arg(user).arg(&home));
        run_ok(Command::new("chmod").arg("0700").arg(&home));
    }
    let started = Instant::now();
    let (code, out, err) = output_of(
        Command::new("timeout")
            .args([GIO_LIMIT, "sh", "-c"])
            .arg(
                "echo $$ > \"$0\" || exit 125; u=$1 h=$2 s=$3; shift 3; \
                 exec setpriv --reuid=\"$u\" --regid=\"$u\" --init-groups env HOME=\"$h\" \
                 XDG_RUNTIME_DIR=\"$h\" GUILOCKER_SOCKET=\"$s\" LANG=C.UTF-8 LC_ALL=C.UTF-8 \
                 dbus-run-session -- gio \"$@\"",
            )
            .arg(session.procs())
            .arg(user)
            .arg(&home)
            .arg(&daemon.socket)
            .args(args),
        "",
    );
    assert_ne!(
        code, 124,
        "gio {args:?} as {user} did not return within {GIO_LIMIT} s"
    );
    (code, out, err, started.elapsed())
}

/// The block `gio mount -li` prints under the first line `head` accepts: that line and the
/// lines indented deeper below it.
fn gio_block(list: &str, head: impl Fn(&str) -> bool) -> Option<String> {
    let mut lines = list.lines().skip_while(|l| !head(l.trim()));
    let first = lines.next()?;
    let indent = first.len() - first.trim_start().len();
    let body = lines.take_while(|l| l.len() - l.trim_start().len() > indent);
    Some(
        std::iter::once(first)
            .chain(body)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The `Mount(N): NAME -> file://MOUNTPOINT` block.
fn mount_block(list: &str, mountpoint: &Path) -> Option<String> {
    let uri = format!("-> file://{}", mountpoint.display());
    gio_block(list, |l| l.starts_with("Mount(") && l.ends_with(&uri))
}

/// As installed: the udev and polkit rules, /sbin/umount.guilocker, /media on a tmpfs, and
/// a daemon speaking for the desktop (/run/guilocker) mounting under /media. Dropped in
/// order: the daemon first (it puts its volumes away), then what was installed.
struct Desktop {
    daemon: TestDaemon,
    events: guilocker::client::Events,
    _media: Option<Mounted>,
    _polkit: Removed,
    _installed: Installed,
    _helper: UmountHelper,
    /// The test user at the computer (seat0's active session), and another user logged in
    /// on another VT.
    owner: VtSession,
    other: VtSession,
}

/// A file removed on drop.
struct Removed(&'static str);
impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

fn desktop(name: &str, extra_config: &str) -> Option<Desktop> {
    if !gvfs_present() || !udisks_running() {
        return None;
    }
    ensure_user(OTHER_USER, false);
    let helper = UmountHelper::install();
    let runtime = Path::new(RULE_RUNTIME_DIR);
    let made_runtime = !runtime.exists();
    std::fs::write(RULE_PATH, RULE).unwrap();
    let installed = Installed { made_runtime };
    run_ok(Command::new("udevadm").args(["control", "--reload"]));
    // The rule runs the binary under test (as polkitd, who can read it there).
    let rule = POLKIT_RULE.replace("/usr/bin/guilocker", user_bin().to_str().unwrap());
    std::fs::write(POLKIT_RULE_PATH, rule).unwrap();
    let polkit = Removed(POLKIT_RULE_PATH);
    // polkitd reads new rules when it notices them; restarted, it has them on return.
    run_ok(Command::new("systemctl").args(["try-restart", "polkit.service"]));
    // /media on a tmpfs of its own, as on a desktop: the guest's root is 9p under an overlay,
    // without the POSIX ACLs the per-user folders get.
    let media = (!is_mounted(Path::new("/media"))).then(|| {
        run_ok(Command::new("mount").args(["-t", "tmpfs", "-o", "mode=0755", "media", "/media"]));
        Mounted("/media")
    });
    let daemon = TestDaemon::start_in(
        name,
        &format!("mount_root = \"/media\"\n{extra_config}"),
        Some(runtime),
    );
    let events = daemon.events();
    let other = VtSession::start(OTHER_USER, 3);
    let owner = VtSession::start(TEST_USER, 2);
    owner.activate();
    Some(Desktop {
        daemon,
        events,
        _media: media,
        _polkit: polkit,
        _installed: installed,
        _helper: helper,
        owner,
        other,
    })
}

impl Desktop {
    /// `gio ARGS` as `user` (the test user or the other), in their session.
    fn gio(&self, user: &str, args: &[&str]) -> (i32, String, String, Duration) {
        let session = if user == TEST_USER {
            &self.owner
        } else {
            &self.other
        };
        gio_as(user, session, &self.daemon, args)
    }

    /// Unlocks `dev` for the test user (as root, `--owner`): its mountpoint.
    fn unlock_for_user(&self, dev: &str) -> PathBuf {
        let (code, out, err) = self.daemon.cli(
            None,
            &["unlock", dev, "--password-stdin", "--owner", TEST_USER],
            "anaconda\n",
        );
        assert_eq!(code, 0, "{out}{err}");
        let info = self.daemon.device(dev).unwrap();
        let mountpoint = PathBuf::from(info.mountpoint.expect("a mountpoint"));
        assert_eq!(
            mountpoint,
            Path::new("/media").join(TEST_USER).join("USBFILES")
        );
        let driver = guilocker::daemon::mounts::mounted_at(&mountpoint).unwrap_or_default();
        println!(
            "{dev}: unlocked by {}, mounted at {} by {driver}",
            info.engine.map_or("?", |e| e.as_str()),
            mountpoint.display()
        );
        mountpoint
    }

    /// Another user's `umount` and unmount button are refused; a program inside makes the
    /// owner's unmount button fail as busy. Nothing changes.
    fn refusals(&self, dev: &str, mountpoint: &Path) {
        let mp = mountpoint.to_str().unwrap();
        let (code, out, err) = self.daemon.umount_as(Some(OTHER_USER), mountpoint);
        println!(
            "umount as {OTHER_USER}: exit {code}: {}",
            (out + &err).trim()
        );
        assert_ne!(code, 0);
        let (code, out, err, _) = self.gio(OTHER_USER, &["mount", "-u", mp]);
        println!(
            "gio mount -u as {OTHER_USER}: exit {code}: {}",
            (out + &err).trim()
        );
        assert_ne!(code, 0);
        assert!(is_mounted(mountpoint));
        assert_eq!(self.daemon.device(dev).unwrap().state, DeviceState::Mounted);

        let mut holder = Command::new("sleep")
            .arg("600")
            .current_dir(mountpoint)
            .spawn()
            .unwrap();
        let (code, out, err, took) = self.gio(TEST_USER, &["mount", "-u", mp]);
        println!(
            "gio mount -u while busy ({:.1} s): exit {code}: {}",
            took.as_secs_f64(),
            (out + &err).trim()
        );
        let _ = holder.kill();
        let _ = holder.wait();
        assert_ne!(code, 0);
        // gvfs' words for G_IO_ERROR_BUSY (after umount's "target is busy", or udisks'
        // DeviceBusy), or the error itself.
        assert!(
            err.contains("preventing the unmount") || err.to_lowercase().contains("busy"),
            "{err}"
        );
        assert!(is_mounted(mountpoint));
        assert_eq!(self.daemon.device(dev).unwrap().state, DeviceState::Mounted);
    }

    /// The owner's unmount button (`gio mount -u`) on `dev`, mounted at `mountpoint`: exit
    /// 0, the stick powered off, the daemon saying `said`, nothing left; then pulled out.
    fn unmount_button(
        &mut self,
        stick: &mut usb::UsbStick,
        dev: &str,
        mountpoint: &Path,
        said: &str,
    ) {
        let usb_device = stick.usb_device().expect("the stick's USB device");
        let mp = mountpoint.to_str().unwrap();
        let (code, out, err, took) = self.gio(TEST_USER, &["mount", "-u", mp]);
        assert_eq!(code, 0, "gio mount -u as {TEST_USER}: {out}{err}");
        println!(
            "gio mount -u as {TEST_USER}: exit 0 in {:.1} s",
            took.as_secs_f64()
        );
        let gone = usb::wait_gone(&usb_device, WAIT);
        println!(
            "timing: gio mount -u -> USB device gone {:.1} s",
            gone.as_secs_f64()
        );
        println!("daemon: {}", self.daemon.wait_log(said));
        self.put_away(dev, mountpoint);
        stick.unplug();
    }

    /// After the file manager put `dev` away: nothing of it is left, the daemon said so,
    /// and gio lists no mount at `mountpoint`.
    fn put_away(&mut self, dev: &str, mountpoint: &Path) {
        assert!(!is_mounted(mountpoint));
        assert!(!in_utab(mountpoint));
        assert!(engines_for(dev).is_empty());
        wait_event(&mut self.events, &format!("{dev} put away"), |k, d| {
            d.device == dev && (k == EventKind::Removed || d.state == DeviceState::Locked)
        });
        wait_for_block_change("our mapping to go", || {
            guilocker::daemon::dmcrypt::mappings().is_empty()
        });
        let (_, list, _, _) = self.gio(TEST_USER, &["mount", "-li"]);
        assert!(mount_block(&list, mountpoint).is_none(), "{list}");
    }
}

/// On dm-crypt the desktop sees what guilocker unlocked as its own: `gio mount -li` lists a
/// Volume named by the label under its Drive, with `can_eject=1`, mounted at
/// /media/USER/LABEL. The unmount button (`gio mount -u`: udisks' Unmount, then Lock, which
/// the polkit rule grants the owner) puts it away and guilocker powers the stick off; Eject
/// (`gio mount -e`: Unmount, Lock, then the drive's Eject) as well, with no error. Another
/// user is refused and a busy volume fails as busy, changing nothing. Root's `umount` (no
/// desktop, no helper) locks it and leaves the stick powered; `guilocker unmount` of the
/// locked volume then powers it off.
#[test]
#[ignore = "USB bus: runs inside a VM with QEMU's xhci (tests/usb_vm.rs)"]
fn on_dm_crypt_the_file_manager_shows_a_volume_and_ejects_it() {
    assert!(in_kernel_vm(), "{}", super::in_vm::WHY);
    let case = Instant::now();
    let Some(mut desk) = desktop("usb-files-dm", &engine_config(Engine::DmCrypt)) else {
        return;
    };
    let (mut stick, dev) = plug_and_see(&mut desk.events, "usbfiles", "usb-files.img");
    let mountpoint = desk.unlock_for_user(&dev);

    let (code, list, err, took) = desk.gio(TEST_USER, &["mount", "-li"]);
    assert_eq!(code, 0, "{err}");
    let volume = gio_block(&list, |l| {
        l.starts_with("Volume(") && l.ends_with(": USBFILES")
    })
    .unwrap_or_else(|| panic!("gio mount -li lists no volume USBFILES:\n{list}"));
    println!(
        "gio mount -li as {TEST_USER} ({:.1} s):\n{list}",
        took.as_secs_f64()
    );
    // Under its drive (indented), ejectable, mounted where guilocker mounted it.
    assert!(volume.starts_with(' '), "not under a drive:\n{list}");
    assert!(
        volume.lines().any(|l| l.trim() == "can_eject=1"),
        "{volume}"
    );
    assert!(mount_block(&volume, &mountpoint).is_some(), "{volume}");

    desk.refusals(&dev, &mountpoint);

    // Locked by the desktop (udisks), then powered off by the daemon.
    desk.unmount_button(&mut stick, &dev, &mountpoint, "flushed and powered off");

    // Eject: the file manager's own eject of the drive, after its unmount and lock.
    let (mut stick, dev) = plug_and_see(&mut desk.events, "usbfiles2", "usb-files.img");
    let mountpoint = desk.unlock_for_user(&dev);
    let disk = stick.disk().expect("the stick's disk");
    let (code, out, err, took) =
        desk.gio(TEST_USER, &["mount", "-e", mountpoint.to_str().unwrap()]);
    assert_eq!(code, 0, "gio mount -e as {TEST_USER}: {out}{err}");
    println!(
        "gio mount -e as {TEST_USER}: exit 0 in {:.1} s",
        took.as_secs_f64()
    );
    desk.put_away(&dev, &mountpoint);
    // The daemon's word on the drive: ejected by the desktop, or powered off by us.
    println!(
        "daemon: {}",
        desk.daemon.wait_log(&format!("{dev}: /dev/{disk} "))
    );
    println!("after Eject: USB device {:?}", stick.usb_device());
    stick.unplug();

    // Root's umount takes no helper and no desktop: the daemon locks the volume and leaves
    // the stick powered; `guilocker unmount` of the locked volume powers it off.
    let (mut stick, dev) = plug_and_see(&mut desk.events, "usbfiles3", "usb-files.img");
    let mountpoint = desk.unlock_for_user(&dev);
    let (code, out, err) = desk.daemon.umount_as(None, &mountpoint);
    assert_eq!(code, 0, "{out}{err}");
    wait_event(&mut desk.events, &format!("{dev} locked"), |k, d| {
        k == EventKind::Changed && d.device == dev && d.state == DeviceState::Locked
    });
    let usb_device = stick
        .usb_device()
        .expect("still powered after root's umount");
    let (code, out, err) = desk.daemon.cli(Some(TEST_USER), &["unmount", &dev], "");
    assert_eq!(code, 0, "unmount of the locked {dev}: {out}{err}");
    usb::wait_gone(&usb_device, WAIT);
    println!("{dev}: locked after root's umount; guilocker unmount powered it off");
    stick.unplug();
    poll("the daemon to forget the stick", || {
        desk.daemon.device(&dev).is_none().then_some(())
    });
    println!(
        "timing: dm-crypt file manager case {:.1} s",
        case.elapsed().as_secs_f64()
    );
}

/// On our FUSE engine the desktop sees a mount of its own (udisks cannot see through a FUSE
/// view): `gio mount -li` lists it by its label with `can_unmount=1`; the unmount button
/// (gvfs runs `umount PATH` as the person, which runs /sbin/umount.guilocker) puts it away
/// and powers the stick off. Another user is refused, and busy fails as busy.
#[test]
#[ignore = "USB bus: runs inside a VM with QEMU's xhci (tests/usb_vm.rs)"]
fn on_fuse_the_file_managers_unmount_runs_our_helper() {
    assert!(in_kernel_vm(), "{}", super::in_vm::WHY);
    let case = Instant::now();
    let Some(mut desk) = desktop("usb-files-fuse", &engine_config(Engine::Native)) else {
        return;
    };
    let (mut stick, dev) = plug_and_see(&mut desk.events, "usbfuse", "usb-files.img");
    let mountpoint = desk.unlock_for_user(&dev);

    let (code, list, err, took) = desk.gio(TEST_USER, &["mount", "-li"]);
    assert_eq!(code, 0, "{err}");
    let block = mount_block(&list, &mountpoint).unwrap_or_else(|| {
        panic!(
            "gio mount -li does not list {}:\n{list}",
            mountpoint.display()
        )
    });
    println!(
        "gio mount -li as {TEST_USER} ({:.1} s):\n{block}",
        took.as_secs_f64()
    );
    assert!(block.contains("USBFILES ->"), "{block}");
    assert!(
        block.lines().any(|l| l.trim() == "can_unmount=1"),
        "{block}"
    );

    desk.refusals(&dev, &mountpoint);

    desk.unmount_button(&mut stick, &dev, &mountpoint, "flushed and powered off");
    println!(
        "timing: FUSE file manager case {:.1} s",
        case.elapsed().as_secs_f64()
    );
}

#[test]
fn finds_blocks_in_gios_list() {
    let list = "Drive(0): QEMU HARDDISK\n  Type: GProxyDrive\n  can_eject=1\n  Volume(0): USBFILES\n    can_eject=1\n    Mount(0): USBFILES -> file:///media/a/USBFILES\n      can_unmount=1\nMount(1): x -> file:///mnt\n";
    let volume = gio_block(list, |l| {
        l.starts_with("Volume(") && l.ends_with(": USBFILES")
    })
    .unwrap();
    assert!(volume.starts_with("  Volume(0)"), "{volume}");
    assert!(volume.ends_with("can_unmount=1"), "{volume}");
    let mount = mount_block(&volume, Path::new("/media/a/USBFILES")).unwrap();
    assert!(
        mount.trim_start().starts_with("Mount(0): USBFILES"),
        "{mount}"
    );
    assert!(mount_block(list, Path::new("/media/a/OTHER")).is_none());
}
