//! Issue 12, security hardening: what another local user can do to a volume unlocked for
//! someone else, tried for real on a stick.
//!
//! Needs root, the stick tools and the fixtures; skips without, except under CI=true.

mod common;

use common::*;
use guilocker::protocol::EventKind;
use std::process::Command;

/// Shares the owner's primary group, as members of a shared `users` group do.
const PEER: &str = "guilocker-peer";

/// Item 3: a FAT stick (served by fusefat, which checks no permissions itself) unlocked for
/// one user: another user of the same primary group cannot read it, nor list the owner's
/// folder of mounts.
#[test]
fn a_user_of_the_same_group_cannot_read_a_fat_stick() {
    let _serial = serial();
    if !prerequisites(&[
        "dislocker",
        "losetup",
        "runuser",
        "mkfs.vfat",
        "mcopy",
        "fusefat",
    ]) {
        return;
    }
    ensure_user(TEST_USER, true);
    let group = nix::unistd::User::from_name(TEST_USER)
        .unwrap()
        .unwrap()
        .gid;
    if nix::unistd::User::from_name(PEER).unwrap().is_none() {
        run_ok(
            Command::new("useradd")
                .args(["--no-create-home", "--shell", "/bin/sh", "--gid"])
                .arg(group.as_raw().to_string())
                .arg(PEER),
        );
    }
    let daemon = TestDaemon::start("hardening-fat");
    let image = make_stick(&daemon.dir, "bitlk-aes-xts-128", "vfat", "SHARED", "none");
    let mut events = daemon.events();
    let stick = Stick::plug(&image, false);
    let dev = stick.volume();
    wait_added(&daemon, &mut events, "the stick", |d| d.device == dev);
    let (code, _, err) = daemon.unlock_with_password(Some(TEST_USER), &dev, "anaconda");
    assert_eq!(code, 0, "{err}");
    let info = daemon.device(&dev).unwrap();
    let mountpoint = info.mountpoint.clone().unwrap();
    let file = format!("{mountpoint}/hello.txt");
    let as_user = |user: &str, args: &[&str]| {
        output_of(
            Command::new("runuser").args(["-u", user, "--"]).args(args),
            "",
        )
    };
    let (code, out, err) = as_user(TEST_USER, &["cat", &file]);
    assert_eq!((code, out.as_str()), (0, "hello from windows\n"), "{err}");
    // The folder of the owner's mounts lists the labels of its sticks: the owner's alone.
    let folder = std::path::Path::new(&mountpoint)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let (code, _, err) = as_user(TEST_USER, &["ls", &folder]);
    assert_eq!(code, 0, "the owner cannot list {folder}: {err}");
    for args in [
        &["cat", &file][..],
        &["ls", &mountpoint][..],
        &["ls", &folder][..],
    ] {
        let (code, out, err) = as_user(PEER, args);
        println!("{PEER}: {args:?}: exit {code}: {}", err.trim());
        assert_ne!(code, 0, "{PEER} could run {args:?}: {out}");
        assert!(err.contains("Permission denied"), "{err}");
    }
    let (code, _, err) = daemon.cli(None, &["unmount", &dev], "");
    assert_eq!(code, 0, "{err}");
    drop(stick);
    wait_event(&mut events, "the stick to go", |k, d| {
        k == EventKind::Removed && d.device == dev
    });
}

/// Item 8: after a crash, a user's own FUSE mount named after the dead view's file (any user
/// may choose a FUSE mount's source) survives the next daemon's clean-up untouched, while
/// the real leftovers go.
#[test]
fn a_mount_that_lies_about_its_source_survives_a_restart() {
    let _serial = serial();
    if !prerequisites(&["fusefat", "mkfs.vfat"]) {
        return;
    }
    let Some(Plugged {
        mut daemon,
        events,
        stick: _stick,
        dev,
    }) = plugged(
        guilocker::protocol::Engine::Native,
        "lying_source",
        "bitlk-aes-xts-128",
        "LIAR",
        "none",
    )
    else {
        return;
    };
    let (mountpoint, view) = unlock_for_user(&daemon, &dev);
    let decrypted = daemon.device(&dev).unwrap().decrypted.unwrap();
    drop(events);
    daemon.crash();
    let mut victims = engines_for(&dev);
    for (node, backing) in loop_devices() {
        if backing == decrypted {
            victims.extend(guilocker::daemon::mounts::openers(std::path::Path::new(
                &node,
            )));
        }
    }
    kill_and_wait(&victims);

    // nobody's own FAT image, mounted by nobody with fusefat, under a source that names the
    // dead view's file.
    let home = scratch("liar-home");
    let image = home.join("own.img");
    let mnt = home.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run_ok(Command::new("chown").args(["-R", "nobody"]).arg(&home));
    let as_nobody = |args: &[&str]| {
        output_of(
            Command::new("runuser")
                .args(["-u", "nobody", "--"])
                .args(args),
            "",
        )
    };
    let (code, _, err) = as_nobody(&["mkfs.vfat", "-C", image.to_str().unwrap(), "1024"]);
    assert_eq!(code, 0, "{err}");
    let fsname = format!("ro,fsname={decrypted}");
    let (code, _, err) = as_nobody(&[
        "fusefat",
        "-o",
        &fsname,
        image.to_str().unwrap(),
        mnt.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(is_mounted(&mnt), "nobody's mount");
    let source = guilocker::daemon::mounts::mounts()
        .into_iter()
        .find(|m| m.mountpoint == mnt)
        .unwrap()
        .source;
    assert_eq!(source, decrypted, "the lie is in place");

    let startup = daemon.respawn();
    // (Root may not look inside: a user's FUSE mount without allow_other.)
    let survived = is_mounted(&mnt)
        && std::fs::read_dir(&home)
            .unwrap()
            .flatten()
            .any(|e| e.file_name() == "mnt");
    let _ = as_nobody(&["fusermount", "-u", mnt.to_str().unwrap()]);
    assert!(survived, "nobody's mount was taken for ours: {startup:#?}");
    assert!(
        startup.iter().any(|l| l.contains("cleaned up 1 volume")),
        "{startup:#?}"
    );
    assert_clean(&daemon, &dev, &mountpoint, &view);
}
