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
    // The volume's root itself is the owner's alone, whatever the folder above it allows
    // (where the filesystem has no ACLs that folder is 0711).
    {
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::metadata(&mountpoint).unwrap();
        let owner = nix::unistd::User::from_name(TEST_USER)
            .unwrap()
            .unwrap()
            .uid;
        assert_eq!((root.uid(), root.mode() & 0o777), (owner.as_raw(), 0o700));
    }
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

/// Where `needle` occurs in the readable memory of process `pid` (root reads even a
/// non-dumpable process through /proc/PID/mem): the start address of each mapping holding it.
fn memory_holding(pid: i32, needle: &[u8]) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(perms)) = (fields.first(), fields.get(1)) else {
            continue;
        };
        if !perms.starts_with('r') || line.contains("[vvar") || line.contains("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut region = vec![0; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue;
        }
        if region.windows(needle.len()).any(|w| w == needle) {
            found.push(line.to_owned());
        }
    }
    found
}

/// Item 6: a password that JSON must escape (serde_json unescapes it into a scratch buffer,
/// and serde copies it once more for an internally tagged enum) leaves no copy in the
/// daemon's memory once the unlock is answered: not as received, not unescaped, not as the
/// UTF-16 that BitLocker hashes.
#[test]
fn a_password_leaves_no_copy_in_the_daemon() {
    let _serial = serial();
    let Some(Plugged {
        daemon,
        events: _events,
        stick: _stick,
        dev,
    }) = plugged(
        guilocker::protocol::Engine::Native,
        "no_copy",
        "bitlk-aes-xts-128",
        "NOCOPY",
        "none",
    )
    else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    // Wrong on purpose: the attempt goes through the whole key derivation and fails.
    let password = format!("w\"r\\ong é {nanos}");
    let (code, _, err) = daemon.unlock_with_password(Some(TEST_USER), &dev, &password);
    // Refused as a wrong password: the whole derivation ran (not an earlier refusal).
    assert_eq!(code, 3, "{err}");
    println!("refused as expected: {}", err.trim());
    // The scan sees the daemon's heap: what it must hold, it finds.
    let socket = daemon.socket.to_str().unwrap().as_bytes().to_vec();
    assert!(
        !memory_holding(daemon.pid(), &socket).is_empty(),
        "the scan does not see the daemon's memory"
    );
    let escaped = serde_json::to_string(&password).unwrap();
    let utf16: Vec<u8> = password.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let needles = [
        ("as sent", escaped.trim_matches('"').as_bytes().to_vec()),
        ("unescaped", password.as_bytes().to_vec()),
        ("UTF-16", utf16),
    ];
    // The connection's thread may still be winding down after the reply: wait for the
    // condition itself, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let left = loop {
        let left: Vec<String> = needles
            .iter()
            .flat_map(|(what, needle)| {
                memory_holding(daemon.pid(), needle)
                    .into_iter()
                    .map(move |m| format!("{what}: {m}"))
            })
            .collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        left.is_empty(),
        "the password is still in the daemon: {left:#?}"
    );
}
