//! End to end with real sticks: plug, unlock as a user, use the files, unmount, unplug.

mod common;

use common::*;
use guilocker::protocol::{DeviceState, Engine, EventKind};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Plug → locked → unlock as a plugdev user → files are theirs and writable → unmount →
/// nothing left → plug again → unlock → the written file is there.
fn round_trip(engine: Engine, name: &str, source: &str, fs: &str, label: &str, table: &str) {
    let _serial = serial();
    let tools: Vec<&str> = STICK_TOOLS
        .iter()
        .copied()
        .chain(match fs {
            "exfat" => vec!["mkfs.exfat", "mount.exfat-fuse"],
            "vfat" => vec!["mkfs.vfat", "mcopy", "fusefat"],
            _ => vec![],
        })
        .collect();
    if !prerequisites(&tools) {
        return;
    }
    let uid = ensure_user(TEST_USER, true);
    let _helper = UmountHelper::install();
    let daemon = TestDaemon::start_with(
        &format!("{name}-{}", engine.as_str()),
        &engine_config(engine),
    );
    let image = make_stick(&daemon.dir, source, fs, label, table);
    let mut events = daemon.events();
    let mut stick = Stick::plug(&image, table != "none");
    let dev = stick.volume();

    let added = wait_added(
        &daemon,
        &mut events,
        "the BitLocker volume to appear",
        |d| d.device == dev,
    );
    assert!(
        added.bitlocker,
        "{dev} not recognised as BitLocker: {added:?}"
    );
    let info = daemon.device(&dev).unwrap();
    assert_eq!(info.state, DeviceState::Locked);
    assert_eq!(info.mountpoint, None);
    if table != "none" {
        let disk = daemon
            .device(&stick.loop_dev)
            .expect("the whole disk is listed too");
        assert!(!disk.bitlocker);
    }

    let (code, out, err) = daemon.unlock_with_password(Some(TEST_USER), &dev, "anaconda");
    assert_eq!(code, 0, "unlock failed: {out}{err}");
    let info = daemon.device(&dev).unwrap();
    assert_eq!(info.state, DeviceState::Mounted);
    assert_eq!(info.engine, Some(engine));
    assert_eq!(info.owner.as_deref(), Some(TEST_USER));
    assert_eq!(info.label.as_deref(), Some(label));
    assert_eq!(info.fs_type.map(|f| f.as_str()), Some(fs));
    let mountpoint = PathBuf::from(info.mountpoint.clone().unwrap());
    assert_eq!(mountpoint, daemon.media.join(TEST_USER).join(label));
    assert!(is_mounted(&mountpoint));
    let decrypted_dir = view_dir(&info);
    if engine == Engine::DmCrypt {
        // Mounted straight from the mapping, no loop device in between: with the kernel's
        // driver (Debian's kernel has exfat and vfat but no ntfs3), else ntfs-3g (fuseblk).
        let mount = guilocker::daemon::mounts::mounts()
            .into_iter()
            .rfind(|m| m.mountpoint == mountpoint)
            .unwrap();
        let drivers: &[&str] = match fs {
            "ntfs" => &["ntfs3", "fuseblk"],
            "exfat" => &["exfat"],
            _ => &["vfat"],
        };
        assert!(drivers.contains(&mount.fs_type.as_str()), "{mount:?}");
        let decrypted = info.decrypted.clone().unwrap();
        assert!(
            decrypted.starts_with("/dev/mapper/guilocker-"),
            "{decrypted}"
        );
        let node = std::fs::canonicalize(&decrypted).unwrap();
        assert!(
            mount.source == decrypted || Path::new(&mount.source) == node,
            "{mount:?} is not from {decrypted}"
        );
    }

    let hello = find_file(&mountpoint, "hello.txt").expect("hello.txt on the stick");
    assert_eq!(
        std::fs::read_to_string(&hello).unwrap(),
        "hello from windows\n"
    );
    assert_eq!(
        std::fs::metadata(&hello).unwrap().uid(),
        uid,
        "files belong to the user"
    );
    assert_eq!(std::fs::metadata(&mountpoint).unwrap().uid(), uid);
    let written = mountpoint.join("written.txt");
    run_ok(
        std::process::Command::new("runuser")
            .args(["-u", TEST_USER, "--", "sh", "-c"])
            .arg(format!("echo 'written on linux' > '{}'", written.display())),
    );

    let (big, big_sum) = fill_most_free_space(&mountpoint);

    // Put away as a file manager's unmount button does it: `umount` run by its owner, which
    // umount(8) hands to our helper, whatever the driver.
    let (code, out, err) = daemon.umount_as(Some(TEST_USER), &mountpoint);
    assert_eq!(code, 0, "umount by its owner failed: {out}{err}");
    assert_clean(&daemon, &dev, &mountpoint, &decrypted_dir);
    assert_eq!(daemon.device(&dev).unwrap().state, DeviceState::Locked);
    assert!(
        !in_utab(&mountpoint),
        "utab still names {}",
        mountpoint.display()
    );

    // Unplug and plug again: the file written through Linux is there.
    stick.unplug();
    wait_event(&mut events, "the stick to go", |k, d| {
        k == EventKind::Removed && d.device == dev
    });
    let mut stick = Stick::plug(&image, table != "none");
    let dev = stick.volume();
    // A new plug is a new appearance: a new disk sequence number. (Under udev, the first
    // plug's partition may be removed and added again by a rescan: those events carry the
    // old number and are not this.)
    assert!(added.diskseq.is_some(), "no disk sequence number");
    wait_added(&daemon, &mut events, "the stick to come back", |d| {
        d.device == dev && d.bitlocker && d.diskseq != added.diskseq
    });
    let (code, out, err) = daemon.unlock_with_password(Some(TEST_USER), &dev, "anaconda");
    assert_eq!(code, 0, "second unlock failed: {out}{err}");
    let info = daemon.device(&dev).unwrap();
    let mountpoint = PathBuf::from(info.mountpoint.unwrap());
    let back = find_file(&mountpoint, "written.txt").expect("written.txt survived");
    assert_eq!(
        std::fs::read_to_string(&back).unwrap(),
        "written on linux\n"
    );
    let big = mountpoint.join(big.file_name().unwrap());
    assert_eq!(
        sha256_file(&big),
        big_sum,
        "the large file came back changed"
    );
    let (code, _, err) = daemon.cli(None, &["unmount", "--all"], "");
    assert_eq!(code, 0, "{err}");
    assert_clean(&daemon, &dev, &mountpoint, &decrypted_dir);
    stick.unplug();
}

/// Writes one file of pseudo-random bytes over most of the free space (BitLocker's reserved
/// areas must be kept out of the filesystem for this to work); returns it and its SHA-256.
fn fill_most_free_space(mountpoint: &Path) -> (PathBuf, String) {
    let st = nix::sys::statvfs::statvfs(mountpoint).unwrap();
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let mib = 1u64 << 20;
    let size = (free * 9 / 10 / mib).min(256) * mib;
    assert!(size >= 16 * mib, "only {free} bytes free on the stick");
    let path = mountpoint.join("large.bin");
    let sum = write_pseudo_random(&path, size, 0);
    eprintln!("wrote {} MiB of {} MiB free", size / mib, free / mib);
    (path, sum)
}

on_engines!(
    kernel_too: [
        ntfs_stick_with_mbr,
        exfat_stick_with_gpt,
        fat_to_go_stick_without_partition_table,
        refused_while_another_holds_it,
        unmounted_with_umount,
    ],
    // A flush counted on the loop device.
    fuse_only: [
        unmount_flushes_the_stick,
    ],
);

fn ntfs_stick_with_mbr(engine: Engine) {
    round_trip(
        engine,
        "ntfs-mbr",
        "bitlk-aes-xts-128",
        "ntfs",
        "My Stick",
        "mbr",
    );
}

fn exfat_stick_with_gpt(engine: Engine) {
    round_trip(
        engine,
        "exfat-gpt",
        "bitlk-aes-xts-256",
        "exfat",
        "EXSTICK",
        "gpt",
    );
}

fn fat_to_go_stick_without_partition_table(engine: Engine) {
    round_trip(
        engine,
        "vfat-togo",
        "bitlk-togo-aes-xts-128",
        "vfat",
        "TOGO",
        "none",
    );
}

/// Wrong password: exit 3, still locked, daemon alive. Then another user cannot unmount it,
/// a user outside plugdev cannot unlock, and a busy mount names who holds it.
#[test]
fn wrong_password_and_other_users() {
    let _serial = serial();
    let Some(Plugged {
        daemon,
        events: _events,
        stick: _stick,
        dev,
    }) = plugged(
        Engine::Native,
        "wrong_password_and_other_users",
        "bitlk-aes-xts-128",
        "PRIVATE",
        "mbr",
    )
    else {
        return;
    };
    ensure_user(OTHER_USER, false);

    let (code, _, err) = daemon.unlock_with_password(Some(TEST_USER), &dev, "not-the-password");
    assert_eq!(code, 3, "{err}");
    assert_eq!(err.trim(), format!("guilocker: {dev}: wrong password"));
    let info = daemon.device(&dev).unwrap();
    assert_eq!(info.state, DeviceState::Locked);
    assert!(engines_for(&dev).is_empty());

    let (code, _, err) = daemon.cli(
        Some(TEST_USER),
        &["unlock", &dev, "--recovery-key-stdin"],
        "111111-222222\n",
    );
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = daemon.cli(
        Some(TEST_USER),
        &["unlock", &dev, "--recovery-key-stdin"],
        "235818-357951-253978-013365-241120-245575-342914-591910\n",
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("group 3"), "{err}");

    let (code, _, err) = daemon.unlock_with_password(Some(OTHER_USER), &dev, "anaconda");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not in the group 'plugdev'"), "{err}");

    let (code, _, err) = daemon.unlock_with_password(Some(TEST_USER), &dev, "anaconda");
    assert_eq!(code, 0, "{err}");
    let mountpoint = PathBuf::from(daemon.device(&dev).unwrap().mountpoint.unwrap());
    // Who sits at the machine: without logind (as here and in CI) the group decided all
    // along, and the log said so once. With logind, tests/kernel_vm.rs asks the real one.
    let lines = daemon.log_until(&format!("{dev}: unlocked"));
    if !logind_present() {
        let said = lines
            .iter()
            .filter(|l| l.contains("logind is not available"))
            .count();
        assert_eq!(said, 1, "{lines:#?}");
    }

    let (code, _, err) = daemon.cli(Some(OTHER_USER), &["unmount", &dev], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unlocked by guilocker-test"), "{err}");
    assert!(is_mounted(&mountpoint));
    let (code, _, err) = daemon.unlock_with_password(Some(TEST_USER), &dev, "anaconda");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already unlocked"), "{err}");

    // A process with its cwd inside keeps the filesystem busy.
    let mut holder = std::process::Command::new("sleep")
        .arg("600")
        .current_dir(&mountpoint)
        .spawn()
        .unwrap();
    let (code, _, err) = daemon.cli(
        Some(TEST_USER),
        &["unmount", mountpoint.to_str().unwrap()],
        "",
    );
    assert_eq!(code, 5, "busy: {err}");
    assert!(
        err.contains(&format!("sleep (pid {})", holder.id())),
        "{err}"
    );
    assert!(is_mounted(&mountpoint));
    let (code, _, err) = daemon.cli(
        Some(TEST_USER),
        &["unmount", "--force", mountpoint.to_str().unwrap()],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(!is_mounted(&mountpoint));
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(daemon.device(&dev).unwrap().state, DeviceState::Locked);
    assert!(engines_for(&dev).is_empty());
}

/// Flush requests the kernel has completed on a whole disk (`/sys/block/DISK/stat`, field 16).
fn flushes(disk: &str) -> u64 {
    let name = disk.trim_start_matches("/dev/");
    let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
    stat.split_whitespace()
        .nth(15)
        .expect("a kernel that counts flushes (5.5+)")
        .parse()
        .unwrap()
}

/// "Safe to remove": `unmount` flushes the stick itself once its last volume is put away
/// (a loop device is not on USB, so it stays powered; `--no-power-off` changes nothing there).
/// dislocker never flushes the stick, so on that engine only our flush can move the count.
fn unmount_flush_the_stick_with(engine: Engine, extra: &[&str]) {
    let _serial = serial();
    let name = "unmount_flushes_the_stick";
    let Some(p) = plugged(engine, name, "bitlk-aes-xts-128", "FLUSH", "mbr") else {
        return;
    };
    let (daemon, stick, dev) = (&p.daemon, &p.stick, &p.dev);
    let (mountpoint, _) = unlock_for_user(daemon, dev);
    let before = flushes(&stick.loop_dev);
    let mut args = vec!["unmount", dev.as_str()];
    args.extend_from_slice(extra);
    let (code, _, err) = daemon.cli(Some(TEST_USER), &args, "");
    assert_eq!(code, 0, "{err}");
    // Nothing else on it is in use: no reason to give for leaving it powered.
    assert!(!err.contains("not powered off"), "{err}");
    assert!(!mountpoint.exists());
    let line = daemon.wait_log("it can be removed");
    assert!(
        line.contains(&format!("{} flushed", stick.loop_dev)),
        "{line}"
    );
    if extra.is_empty() {
        assert!(line.contains("not on USB: left powered"), "{line}");
    }
    assert!(
        flushes(&stick.loop_dev) > before,
        "no flush reached {}",
        stick.loop_dev
    );
}

fn unmount_flushes_the_stick(engine: Engine) {
    // --no-power-off on one engine: the flush happens all the same.
    let extra: &[&str] = match engine {
        Engine::Native => &["--no-power-off"],
        _ => &[],
    };
    unmount_flush_the_stick_with(engine, extra);
}

/// `cryptsetup open --type bitlk DEV MAPPING` with the fixture's password, as udisks or a
/// person would open the volume beside guilocker.
fn cryptsetup_open(dev: &str, mapping: &str) {
    // The password on stdin, to its end (--key-file=-): no newline.
    let (code, out, err) = output_of(
        std::process::Command::new("cryptsetup").args([
            "open",
            "--type",
            "bitlk",
            "--key-file=-",
            dev,
            mapping,
        ]),
        "anaconda",
    );
    assert_eq!(code, 0, "cryptsetup open: {out}{err}");
}

/// Never a second writer. Someone else holds the partition: on dm-crypt a mapping made with
/// `cryptsetup open` (as udisks makes one), on the FUSE engines a program with an `O_EXCL`
/// open. The unlock is refused with exit 5 naming the holder, nothing is started or mounted.
/// Once the holder lets go, the filesystem is clean and the unlock works, and while our
/// engine serves it, nobody else can claim the partition.
fn refused_while_another_holds_it(engine: Engine) {
    let _serial = serial();
    let tools: &[&str] = match engine {
        Engine::DmCrypt => &["cryptsetup", "ntfsfix"],
        _ => &["python3"],
    };
    if !prerequisites(tools) {
        return;
    }
    let name = "refused_while_another_holds_it";
    let Some(p) = plugged(engine, name, "bitlk-aes-xts-128", "HELD", "mbr") else {
        return;
    };
    let (daemon, dev) = (&p.daemon, &p.dev);
    let mapping = format!("held-{}", dev.trim_start_matches("/dev/"));
    let mut holder = None;
    let expected = match engine {
        Engine::DmCrypt => {
            cryptsetup_open(dev, &mapping);
            let node = std::fs::canonicalize(format!("/dev/mapper/{mapping}")).unwrap();
            format!(
                "{dev}: already in use by {} ({mapping}, opened by cryptsetup)",
                node.display()
            )
        }
        _ => {
            let mut child = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import os, sys\n\
                     fd = os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL)\n\
                     print('held', flush=True)\n\
                     sys.stdin.read()\n",
                    dev,
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // It says so once its claim is made.
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
                &mut line,
            )
            .unwrap();
            assert_eq!(line, "held\n", "the holder could not claim {dev}");
            let pid = child.id();
            holder = Some(child);
            format!("{dev}: already in use by python3 (pid {pid})")
        }
    };

    let (code, out, err) = daemon.unlock_with_password(Some(TEST_USER), dev, "anaconda");
    assert_eq!(code, 5, "busy: {out}{err}");
    assert_eq!(err.trim(), format!("guilocker: {expected}"));
    let info = daemon.device(dev).unwrap();
    assert_eq!(info.state, DeviceState::Locked, "{info:?}");
    assert_eq!(info.error.as_deref(), Some(expected.as_str()));
    assert_eq!(info.mountpoint, None);
    assert!(engines_for(dev).is_empty(), "an engine was started");
    assert_no_mapping();
    let user_media = daemon.media.join(TEST_USER);
    assert!(
        guilocker::daemon::mounts::mounts()
            .iter()
            .all(|m| !m.mountpoint.starts_with(&user_media)),
        "something was mounted"
    );

    // The holder lets go.
    match holder.take() {
        Some(mut child) => {
            drop(child.stdin.take());
            assert!(wait_child(&mut child, WAIT).success());
        }
        None => {
            // Unmounted, the NTFS inside the holder's mapping checks clean: the refused
            // unlock wrote nothing.
            let (code, out, err) = output_of(
                std::process::Command::new("ntfsfix")
                    .arg("-n")
                    .arg(format!("/dev/mapper/{mapping}")),
                "",
            );
            assert_eq!(code, 0, "ntfsfix -n: {out}{err}");
            let (code, out, err) = output_of(
                std::process::Command::new("cryptsetup").args(["close", &mapping]),
                "",
            );
            assert_eq!(code, 0, "cryptsetup close: {out}{err}");
        }
    }

    let (mountpoint, _) = unlock_for_user(daemon, dev);
    let info = daemon.device(dev).unwrap();
    assert_eq!(info.engine, Some(engine));
    let hello = find_file(&mountpoint, "hello.txt").expect("hello.txt on the stick");
    assert_eq!(
        std::fs::read_to_string(hello).unwrap(),
        "hello from windows\n"
    );
    // Served: the partition is claimed, a second claimant is kept out.
    let second = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(dev)
    };
    assert_eq!(
        second.map(drop).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EBUSY)),
        "{dev} can be claimed while {} serves it",
        engine.as_str()
    );
    let (code, _, err) = daemon.cli(Some(TEST_USER), &["unmount", dev], "");
    assert_eq!(code, 0, "{err}");
    // Put away, the filesystem checks clean and the partition is free again.
    if engine == Engine::DmCrypt {
        cryptsetup_open(dev, &mapping);
        let (code, out, err) = output_of(
            std::process::Command::new("ntfsfix")
                .arg("-n")
                .arg(format!("/dev/mapper/{mapping}")),
            "",
        );
        let _ = std::process::Command::new("cryptsetup")
            .args(["close", &mapping])
            .status();
        assert_eq!(code, 0, "ntfsfix -n after the unlock: {out}{err}");
    }
    p.discard();
}

/// Unmounted from outside guilocker, as file managers do it (`umount PATH`, run by the person):
/// umount(8) runs our helper as that user, and the daemon decides as for `guilocker unmount`.
/// Another user is refused and nothing changes; a busy volume fails with umount's own "target
/// is busy" (the words gvfs shows its busy dialog for) and stays as it was. Root's `umount`
/// takes no helper: the daemon sees the filesystem go and locks the volume; `guilocker
/// unmount` of the locked volume then still makes its stick safe to remove.
fn unmounted_with_umount(engine: Engine) {
    let _serial = serial();
    let Some(p) = plugged(
        engine,
        "unmounted_with_umount",
        "bitlk-aes-xts-128",
        "UMOUNT",
        "mbr",
    ) else {
        return;
    };
    let (daemon, dev) = (&p.daemon, &p.dev);
    ensure_user(OTHER_USER, false);
    let _helper = UmountHelper::install();
    let (mountpoint, view) = unlock_for_user(daemon, dev);
    assert!(
        in_utab(&mountpoint),
        "utab does not name {}",
        mountpoint.display()
    );

    // Another user cannot even reach the path (the owner's folder is theirs alone), and
    // the helper, run by hand, is refused by the daemon.
    let (code, out, err) = daemon.umount_as(Some(OTHER_USER), &mountpoint);
    assert_ne!(code, 0, "another user's umount: {out}{err}");
    let (code, out, err) = daemon.run_as(
        Some(OTHER_USER),
        Path::new(UmountHelper::PATH),
        &[mountpoint.to_str().unwrap()],
        "",
    );
    assert_eq!(code, 1, "another user's umount.guilocker: {out}{err}");
    assert!(err.contains("unlocked by guilocker-test"), "{err}");
    assert!(is_mounted(&mountpoint));

    let mut holder = std::process::Command::new("sleep")
        .arg("600")
        .current_dir(&mountpoint)
        .spawn()
        .unwrap();
    let (code, out, err) = daemon.umount_as(Some(TEST_USER), &mountpoint);
    assert_eq!(code, 32, "umount while busy: {out}{err}");
    assert!(
        err.starts_with(&format!(
            "umount: {}: target is busy.",
            mountpoint.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("sleep (pid {})", holder.id())),
        "{err}"
    );
    assert!(is_mounted(&mountpoint));
    assert_eq!(daemon.device(dev).unwrap().state, DeviceState::Mounted);
    let _ = holder.kill();
    let _ = holder.wait();

    // Root's umount: no helper, the daemon notices and locks it, left powered.
    let mut events = daemon.events();
    let (code, out, err) = daemon.umount_as(None, &mountpoint);
    assert_eq!(code, 0, "root's umount: {out}{err}");
    wait_event(
        &mut events,
        "the volume locked after root's umount",
        |k, d| k == EventKind::Changed && d.device == *dev && d.state == DeviceState::Locked,
    );
    assert_clean(daemon, dev, &mountpoint, &view);
    let (code, out, err) = daemon.cli(Some(TEST_USER), &["unmount", dev], "");
    assert_eq!(code, 0, "unmount of the locked volume: {out}{err}");
    let line = daemon.wait_log("it can be removed");
    assert!(
        line.contains(&format!("{} flushed", p.stick.loop_dev)),
        "{line}"
    );
    // Someone who may not unlock it may not power its stick off either.
    let (code, out, err) = daemon.cli(Some(OTHER_USER), &["unmount", dev], "");
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("not in the group"), "{err}");
    drop(events);
    p.discard();
}
