//! Fault injection, devices (issue 10, cases 1–5): a stick pulled out in the middle of a
//! write, its engine killed with files open, the daemon killed or stopped under a mounted
//! volume, the volume or the engine's view unmounted behind the daemon's back.
//!
//! Each case runs a daemon of its own on real loop devices, engines and mounts, and ends with
//! the same check ([`assert_clean`]): the daemon alive and answering, nothing of the volume
//! left (mounts, loop devices, mappings, processes, folders), and what was written intact
//! after the stick is plugged in again and unlocked.
//!
//! Needs root, the stick tools and the fixtures; skips without, except under CI=true.

mod common;

use common::*;
use guilocker::protocol::{DeviceState, Engine, EventKind};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// Everything of an unplugged volume is put away within this (the goal is 2 s; the deadline
/// is generous so that a slow machine does not fail, and the time is printed).
const CLEANUP_DEADLINE: Duration = Duration::from_secs(6);
/// A dead engine is noticed within this (the goal: at once, on SIGCHLD).
const NOTICED_DEADLINE: Duration = Duration::from_secs(2);
/// A volume whose view another program unmounted is put away within this.
const PUT_AWAY_DEADLINE: Duration = Duration::from_secs(15);

on_engines!(
    kernel_too: [
        surprise_removal_while_mounted,
        sigterm_puts_everything_away,
        unmounted_by_another_program,
    ],
    // An engine process to kill, a view to unmount.
    fuse_only: [
        dead_engine_is_noticed_and_cleaned_up,
        restart_after_a_crash_cleans_up,
        view_unmounted_by_another_program,
    ],
);

/// Unlocks `dev` for the test user and checks each file's SHA-256; then unmounts it and
/// checks that nothing is left.
fn unlock_and_verify(daemon: &TestDaemon, dev: &str, files: &[(&str, &str)]) {
    let (mountpoint, view) = unlock_for_user(daemon, dev);
    for (name, sum) in files {
        let path = mountpoint.join(name);
        assert!(path.exists(), "{} is not on the stick", path.display());
        assert_eq!(sha256_file(&path), *sum, "{} changed", path.display());
    }
    let (code, _, err) = daemon.cli(Some(TEST_USER), &["unmount", dev], "");
    assert_eq!(code, 0, "{err}");
    assert_clean(daemon, dev, &mountpoint, &view);
}

/// Plugs the stick in again, then [`unlock_and_verify`].
fn replug_and_verify(
    daemon: &TestDaemon,
    events: &mut guilocker::client::Events,
    stick: &mut Stick,
    files: &[(&str, &str)],
) {
    let dev = replug(daemon, events, stick);
    unlock_and_verify(daemon, &dev, files);
}

/// The deferred close of a dm-crypt mapping completes at its last close: wait for it.
fn wait_mapping_closed(engine: Engine) {
    if engine == Engine::DmCrypt {
        wait_for_block_change("the mapping to close", || {
            guilocker::daemon::dmcrypt::mappings().is_empty()
        });
    }
}

/// A process writing `mib` MiB to a file, 1 MiB at a time, each synced (`dd conv=fsync`);
/// it reports each MiB written on its stderr, and what went wrong, and stops at the first
/// failure.
struct Writer {
    child: Child,
    lines: Receiver<String>,
    written: u64,
    said: Vec<String>,
}

impl Writer {
    fn start(path: &Path, mib: u64) -> Self {
        let script = format!(
            "i=0; while [ $i -lt {mib} ]; do \
               dd if=/dev/urandom bs=1M count=1 iflag=fullblock conv=fsync status=none || exit $?; \
               i=$((i+1)); echo $i >&2; \
             done"
        );
        let file = std::fs::File::create(path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            written: 0,
            said: Vec::new(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn take(&mut self, line: String) {
        match line.parse() {
            Ok(n) => self.written = n,
            Err(_) => self.said.push(line),
        }
    }

    /// Waits until `mib` MiB are written and synced.
    fn wait_written(&mut self, mib: u64) {
        let deadline = Instant::now() + WAIT;
        while self.written < mib {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("the writer stopped at {} MiB: {e}", self.written));
            self.take(line);
            assert!(self.said.is_empty(), "the writer failed: {:?}", self.said);
        }
    }

    /// Waits up to `timeout` for the writer to end; its exit status, if it did.
    fn finish(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = exit_within(&mut self.child, timeout);
        if status.is_some() {
            // Its stderr is closed now: every line is in.
            while let Ok(line) = self.lines.recv_timeout(WAIT) {
                self.take(line);
            }
        }
        status
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Case 1. Unplugged (`losetup -d`) in the middle of a 50 MB write: the person is told (a
/// `removed` event), the writer gets an error or its write ends, no process is stuck in D
/// state, and everything is put away within 2 s. Plugged in again, the stick unlocks and
/// what was synced before the write is intact.
fn surprise_removal_while_mounted(engine: Engine) {
    let _serial = serial();
    let Some(Plugged {
        daemon,
        mut events,
        mut stick,
        dev,
    }) = plugged(
        engine,
        "surprise_removal_while_mounted",
        "bitlk-aes-cbc-128",
        "YANKED",
        "mbr",
    )
    else {
        return;
    };
    let (mountpoint, view) = unlock_for_user(&daemon, &dev);
    let before = write_pseudo_random(&mountpoint.join("before.bin"), 1 << 20, 1);

    let mut writer = Writer::start(&mountpoint.join("big.bin"), 50);
    writer.wait_written(10);
    // The engine and the filesystem driver, to look at afterwards.
    let helpers = children_of(daemon.pid());
    let unplugged = Instant::now();
    stick.unplug();
    wait_event(&mut events, "the removal", |k, d| {
        k == EventKind::Removed && d.device == dev
    });
    let told = unplugged.elapsed();
    assert!(daemon.device(&dev).is_none(), "status still lists {dev}");

    let ended = writer.finish(WAIT);
    let writer_took = unplugged.elapsed();
    let writer_state = process_state(writer.pid());
    wait_mapping_closed(engine);
    wait_clean(&daemon, &dev, &mountpoint, &view, WAIT);
    let cleaned = unplugged.elapsed();
    eprintln!(
        "case 1 ({}): removed event after {told:?}; the writer {} after {writer_took:?} at \
         {} MiB of 50, saying {:?}; everything put away {cleaned:?} after the unplug",
        engine.as_str(),
        match ended {
            Some(status) => format!("ended ({status})"),
            None => format!("was still running (state {writer_state:?})"),
        },
        writer.written,
        writer.said,
    );
    assert!(
        ended.is_some(),
        "the writer did not end within {WAIT:?}: state {writer_state:?}"
    );
    let stuck: Vec<_> = helpers
        .iter()
        .filter(|(pid, _, _)| process_state(*pid) == Some('D'))
        .chain(children_of(daemon.pid()).iter().filter(|c| c.2 == 'D'))
        .cloned()
        .collect();
    assert!(stuck.is_empty(), "stuck in D state: {stuck:?}");
    assert_eq!(
        threads_in_d(daemon.pid()),
        Vec::new(),
        "daemon threads in D"
    );
    assert!(
        cleaned <= CLEANUP_DEADLINE,
        "put away only after {cleaned:?} (goal 2 s)"
    );
    assert_clean(&daemon, &dev, &mountpoint, &view);

    replug_and_verify(&daemon, &mut events, &mut stick, &[("before.bin", &before)]);
}

/// Case 2. The engine killed (SIGKILL) under a mounted volume with files open: the daemon
/// notices at once (SIGCHLD), detaches the filesystem, removes its directories and says why;
/// the drive unlocks again and what was synced before is intact.
fn dead_engine_is_noticed_and_cleaned_up(engine: Engine) {
    let _serial = serial();
    let Some(Plugged {
        daemon,
        mut events,
        mut stick,
        dev,
    }) = plugged(
        engine,
        "dead_engine_is_noticed_and_cleaned_up",
        "bitlk-aes-xts-128",
        "KILLED",
        "mbr",
    )
    else {
        return;
    };
    let (mountpoint, view) = unlock_for_user(&daemon, &dev);
    let before = write_pseudo_random(&mountpoint.join("before.bin"), 4 << 20, 2);
    // Files open: one being read, one written and not synced.
    let mut reading =
        std::fs::File::open(find_file(&mountpoint, "hello.txt").expect("hello.txt")).unwrap();
    let mut writing = std::fs::File::create(mountpoint.join("open.txt")).unwrap();
    writing.write_all(b"not synced\n").unwrap();

    let pids = engines_for(&dev);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    daemon.wait_log("unexpectedly; cleaning up");
    let noticed = killed.elapsed();
    let after = wait_event(&mut events, "the daemon to put it away", |k, d| {
        k == EventKind::Changed
            && d.device == dev
            && matches!(d.state, DeviceState::Failed | DeviceState::Locked)
    });
    let put_away = killed.elapsed();
    // What a program with files open sees now.
    let read = reading.read(&mut [0u8; 64]);
    let wrote = writing
        .write_all(b"after\n")
        .and_then(|()| writing.sync_all());
    eprintln!(
        "case 2 ({}): noticed after {noticed:?}, put away ({}: {:?}) after {put_away:?}; \
         the open files: read {read:?}, write {wrote:?}",
        engine.as_str(),
        after.state.as_str(),
        after.error,
    );
    assert!(
        noticed <= NOTICED_DEADLINE,
        "noticed only after {noticed:?}"
    );
    if after.state == DeviceState::Failed {
        let error = after.error.clone().unwrap_or_default();
        assert!(error.contains("went away"), "{error}");
    }
    drop((reading, writing));
    assert_clean(&daemon, &dev, &mountpoint, &view);

    unlock_and_verify(&daemon, &dev, &[("before.bin", &before)]);
    replug_and_verify(&daemon, &mut events, &mut stick, &[("before.bin", &before)]);
}

/// Case 3. After a crash under systemd (the daemon killed, then its engine and FUSE driver):
/// the next daemon detaches the dead mounts, removes their directories, the drive unlocks,
/// and what was synced before the crash is intact.
fn restart_after_a_crash_cleans_up(engine: Engine) {
    let _serial = serial();
    let Some(Plugged {
        mut daemon,
        events,
        mut stick,
        dev,
    }) = plugged(
        engine,
        "restart_after_a_crash_cleans_up",
        "bitlk-aes-xts-128",
        "CRASHED",
        "mbr",
    )
    else {
        return;
    };
    let (mountpoint, view) = unlock_for_user(&daemon, &dev);
    let before = write_pseudo_random(&mountpoint.join("before.bin"), 4 << 20, 3);
    let info = daemon.device(&dev).unwrap();
    let decrypted = info.decrypted.unwrap();
    let view_dir = view.clone().expect("a FUSE engine's view");
    drop(events);

    daemon.crash();
    // What systemd's KillMode does to the rest of the unit after a crash.
    let mut victims = engines_for(&dev);
    victims.extend(guilocker::daemon::mounts::openers(Path::new(&decrypted)));
    // The filesystem driver holds the loop device over the view.
    for (node, backing) in loop_devices() {
        if backing == decrypted {
            victims.extend(guilocker::daemon::mounts::openers(Path::new(&node)));
        }
    }
    assert!(victims.len() >= 2, "engine and ntfs-3g: {victims:?}");
    kill_and_wait(&victims);
    assert!(
        is_mounted(&mountpoint) && is_mounted(&view_dir),
        "dead mounts are still in the table"
    );

    let restarted = Instant::now();
    let startup = daemon.respawn();
    eprintln!(
        "case 3 ({}): the new daemon was listening after {:?}",
        engine.as_str(),
        restarted.elapsed()
    );
    assert!(
        startup.iter().any(|l| l.contains("cleaned up 1 volume")),
        "{startup:#?}"
    );
    assert_clean(&daemon, &dev, &mountpoint, &view);
    let mut events = daemon.events();
    assert_eq!(daemon.device(&dev).unwrap().state, DeviceState::Locked);
    unlock_and_verify(&daemon, &dev, &[("before.bin", &before)]);
    replug_and_verify(&daemon, &mut events, &mut stick, &[("before.bin", &before)]);
}

/// Case 4. SIGTERM while a program holds a file open that it wrote and did not close: the
/// daemon flushes what was written, puts everything away and exits 0; plugged in again, the
/// file is intact.
fn sigterm_puts_everything_away(engine: Engine) {
    let _serial = serial();
    let Some(Plugged {
        mut daemon,
        events,
        mut stick,
        dev,
    }) = plugged(
        engine,
        "sigterm_puts_everything_away",
        "bitlk-aes-xts-128",
        "TERM",
        "none",
    )
    else {
        return;
    };
    let (code, _, err) = daemon.cli(
        None,
        &["unlock", &dev, "--password-stdin", "--owner", TEST_USER],
        "anaconda\n",
    );
    assert_eq!(code, 0, "{err}");
    let info = daemon.device(&dev).unwrap();
    let mountpoint = PathBuf::from(info.mountpoint.clone().unwrap());
    let view = view_dir(&info);
    assert!(mountpoint.starts_with(daemon.media.join(TEST_USER)));

    // The program: writes 4 MiB into fd 3, says so, and keeps the file open.
    let source = daemon.dir.join("held.src");
    let sum = write_pseudo_random(&source, 4 << 20, 4);
    let mut holder = Command::new("sh")
        .args([
            "-c",
            r#"exec 3>"$1" && cat "$2" >&3 && echo written && exec sleep 600"#,
            "sh",
        ])
        .arg(mountpoint.join("held.bin"))
        .arg(&source)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert_eq!(said.trim(), "written");

    drop(events);
    let stopping = Instant::now();
    let code = daemon.stop();
    let stopped = stopping.elapsed();
    let holder_state = process_state(holder.id() as i32);
    eprintln!(
        "case 4 ({}): the daemon exited ({code:?}) after {stopped:?}; the holder is {holder_state:?}",
        engine.as_str()
    );
    assert_eq!(code, Some(0));
    assert!(!is_mounted(&mountpoint));
    assert!(!daemon.socket.exists(), "socket file left behind");
    assert!(!daemon.pidfile.exists(), "pidfile left behind");
    let _ = holder.kill();
    let _ = holder.wait();
    wait_mapping_closed(engine);
    assert_clean(&daemon, &dev, &mountpoint, &view);

    daemon.respawn();
    let mut events = daemon.events();
    replug_and_verify(&daemon, &mut events, &mut stick, &[("held.bin", &sum)]);
}

/// Case 5. The file manager (here: `umount`, then `umount -l`) unmounts the volume behind the
/// daemon's back: it notices, puts the rest away and says the drive is locked again.
fn unmounted_by_another_program(engine: Engine) {
    let _serial = serial();
    let name = "unmounted_by_another_program";
    let Some(mut p) = plugged(engine, name, "bitlk-aes-xts-128", "OTHERS", "mbr") else {
        return;
    };
    let (daemon, events, dev) = (&p.daemon, &mut p.events, p.dev.clone());
    for umount in [&["umount"][..], &["umount", "--lazy"][..]] {
        let (mountpoint, view) = unlock_for_user(daemon, &dev);
        run_ok(Command::new(umount[0]).args(&umount[1..]).arg(&mountpoint));
        let locked = wait_event(events, "the daemon to put it away", |k, d| {
            k == EventKind::Changed && d.device == dev && d.state == DeviceState::Locked
        });
        assert_eq!(locked.mountpoint, None, "{umount:?}");
        wait_mapping_closed(engine);
        let took = assert_clean(daemon, &dev, &mountpoint, &view);
        eprintln!(
            "case 5 ({}): {umount:?}: clean {took:?} after the event",
            engine.as_str()
        );
        assert_eq!(daemon.device(&dev).unwrap().state, DeviceState::Locked);
    }
}

/// Case 5, the view. Another program unmounts the engine's FUSE mount (the decrypted view in
/// the daemon's runtime dir): the daemon puts the volume away, locked, nothing left. A plain
/// `umount` is refused while the filesystem uses the view; `umount -l` detaches it.
fn view_unmounted_by_another_program(engine: Engine) {
    let _serial = serial();
    let name = "view_unmounted_by_another_program";
    let Some(mut p) = plugged(engine, name, "bitlk-aes-xts-128", "OTHERS", "mbr") else {
        return;
    };
    let (daemon, events, dev) = (&p.daemon, &mut p.events, p.dev.clone());
    let (mountpoint, view) = unlock_for_user(daemon, &dev);
    let view_dir = view.clone().expect("a FUSE engine's view");
    let plain = Command::new("umount").arg(&view_dir).output().unwrap();
    eprintln!(
        "case 5 ({}): umount of the view: {}{}",
        engine.as_str(),
        plain.status,
        String::from_utf8_lossy(&plain.stderr).trim()
    );
    if is_mounted(&view_dir) {
        run_ok(Command::new("umount").arg("--lazy").arg(&view_dir));
    }
    let unmounted = Instant::now();
    let locked = event_within(
        events,
        "the daemon to put it away",
        PUT_AWAY_DEADLINE,
        |k, d| k == EventKind::Changed && d.device == dev && d.state == DeviceState::Locked,
    );
    let state = daemon.device(&dev).map(|d| d.state.as_str());
    assert!(
        locked.is_some(),
        "not put away within {PUT_AWAY_DEADLINE:?} after its view was unmounted (state {state:?})"
    );
    eprintln!(
        "case 5 ({}): put away {:?} after the view was unmounted",
        engine.as_str(),
        unmounted.elapsed()
    );
    assert_clean(daemon, &dev, &mountpoint, &view);
}
