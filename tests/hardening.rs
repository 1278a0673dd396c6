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
/// one user: another user of the same primary group cannot list or read it.
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
    for args in [&["cat", &file][..], &["ls", &mountpoint][..]] {
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
