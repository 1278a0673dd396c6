//! Fault injection, devices (issue 10, cases 1–6; issue 21, case 7): a stick pulled out in
//! the middle of a write, its engine killed with files open, the daemon killed or stopped
//! under a mounted volume, the volume or the engine's view unmounted behind the daemon's
//! back, a stick whose reads fail or hang, and the daemon killed alone (its engine keeps
//! serving: the next daemon adopts the volume, or puts away what is half dead).
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

/// Everything of an unplugged volume is put away within this. The goal is 2 s (the time is
/// printed, and the note reports it); the deadline only catches a hang, as the same steps
/// take several times longer in the kernel-path VM, which emulates its CPU.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(30);
/// A dead engine is noticed within this (the goal: at once, on SIGCHLD; printed).
const NOTICED_DEADLINE: Duration = Duration::from_secs(10);
/// How long the daemon gives a device's first read before it calls it unreadable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// A volume whose view another program unmounted is put away within this.
const PUT_AWAY_DEADLINE: Duration = Duration::from_secs(15);
/// A client's `status` is answered within this, whatever a device does.
const STATUS_DEADLINE: Duration = Duration::from_secs(1);

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
        killed_alone_is_adopted,
        killed_alone_half_dead_is_put_away,
        adopted_engine_death_is_noticed,
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
    // The removal of the unlocked volume (mounted, or failed if its engine noticed first): a
    // plug can also show the locked partition go and come back as its table is read again,
    // which is not this.
    wait_event(&mut events, "the removal", |k, d| {
        k == EventKind::Removed && d.device == dev && d.state != DeviceState::Locked
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
        "put away only after {cleaned:?}"
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

/// The adoption record of `dev` in the daemon's runtime dir; checked private and free of the
/// password.
fn adoption_record(daemon: &TestDaemon, dev: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let name = dev.trim_start_matches("/dev/");
    let record = daemon.runtime.join("volumes").join(format!("{name}.json"));
    let meta = std::fs::metadata(&record)
        .unwrap_or_else(|e| panic!("no adoption record {}: {e}", record.display()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(!text.contains("anaconda"), "the password is in {text}");
    record
}

/// Case 7a (issue 21). The daemon killed alone (SIGKILL to its pid only, as without a service
/// manager's cgroup): its engine keeps serving. The next daemon reports the volume mounted for
/// the same owner at the same place, its files read back, and `guilocker unmount` puts it
/// away as usual (engine stopped, loop device detached, directories removed).
fn killed_alone_is_adopted(engine: Engine) {
    let _serial = serial();
    let Some(Plugged {
        mut daemon,
        events,
        mut stick,
        dev,
    }) = plugged(
        engine,
        "killed_alone_is_adopted",
        "bitlk-aes-xts-128",
        "ALONE",
        "mbr",
    )
    else {
        return;
    };
    let (mountpoint, view) = unlock_for_user(&daemon, &dev);
    let before = write_pseudo_random(&mountpoint.join("before.bin"), 4 << 20, 7);
    let hello = find_file(&mountpoint, "hello.txt").expect("hello.txt");
    let hello_sum = sha256_file(&hello);
    let was = daemon.device(&dev).unwrap();
    let record = adoption_record(&daemon, &dev);
    let engines = engines_for(&dev);
    assert_eq!(engines.len(), 1, "{engines:?}");
    drop(events);

    daemon.crash();
    assert!(
        process_state(engines[0]).is_some_and(|s| s != 'Z'),
        "only the daemon was killed: its engine (pid {}) must still serve",
        engines[0]
    );
    assert!(is_mounted(&mountpoint));

    let restarted = Instant::now();
    let startup = daemon.respawn();
    let listening = restarted.elapsed();
    let mut events = daemon.events();
    let mut now = daemon.device(&dev).unwrap();
    if now.state != DeviceState::Mounted {
        now = wait_event(&mut events, "the volume to be adopted", |k, d| {
            k == EventKind::Changed && d.device == dev && d.state == DeviceState::Mounted
        });
    }
    let adopted = restarted.elapsed();
    eprintln!(
        "case 7a ({}): the new daemon was listening after {listening:?}; the volume was \
         listed mounted after {adopted:?} from the new daemon's start",
        engine.as_str()
    );
    assert!(
        startup
            .iter()
            .any(|l| l.contains("adopted from an earlier guilocker")),
        "{startup:#?}"
    );
    assert!(
        !startup.iter().any(|l| l.contains("leaving it")),
        "{startup:#?}"
    );
    assert_eq!(now.state, DeviceState::Mounted);
    assert_eq!(now.owner, was.owner);
    assert_eq!(now.mountpoint, was.mountpoint);
    assert_eq!(now.engine, was.engine);
    assert_eq!(now.decrypted, was.decrypted);
    assert_eq!(now.label, was.label);
    assert_eq!(now.fs_type, was.fs_type);
    assert_eq!(sha256_file(&mountpoint.join("before.bin")), before);
    assert_eq!(sha256_file(&hello), hello_sum);
    assert!(record.exists(), "the adopted volume keeps its record");
    // Still never a second writer: the engine (native) or the new daemon's claim (dislocker,
    // whose earlier claim went with the killed daemon) keeps others off the partition.
    let claimed = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&dev)
    };
    assert_eq!(
        claimed.map(drop).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EBUSY)),
        "{dev} could be claimed while the adopted {} engine serves it",
        engine.as_str()
    );

    // Its owner puts it away, as any volume of theirs.
    let (code, _, err) = daemon.cli(Some(TEST_USER), &["unmount", &dev], "");
    assert_eq!(code, 0, "{err}");
    assert_clean(&daemon, &dev, &mountpoint, &view);
    assert_eq!(daemon.device(&dev).unwrap().state, DeviceState::Locked);
    assert!(!record.exists(), "the record outlived its session");
    assert!(
        process_state(engines[0]).is_none_or(|s| s == 'Z'),
        "the adopted engine still runs"
    );
    unlock_and_verify(&daemon, &dev, &[("before.bin", &before)]);
    replug_and_verify(&daemon, &mut events, &mut stick, &[("before.bin", &before)]);
}

/// Case 7b (issue 21). The daemon killed alone, then its engine; or the daemon killed alone,
/// then the filesystem unmounted by hand while the engine serves on: the next daemon finds the
/// record half dead and puts everything away (filesystem detached, its driver gone, loop
/// device freed, engine stopped, directories removed, record removed); the drive is `locked`
/// and unlocks again with what was synced intact.
fn killed_alone_half_dead_is_put_away(engine: Engine) {
    let _serial = serial();
    let Some(Plugged {
        mut daemon,
        events,
        mut stick,
        dev,
    }) = plugged(
        engine,
        "killed_alone_half_dead_is_put_away",
        "bitlk-aes-xts-128",
        "HALF",
        "mbr",
    )
    else {
        return;
    };
    let (mountpoint, view) = unlock_for_user(&daemon, &dev);
    let before = write_pseudo_random(&mountpoint.join("before.bin"), 4 << 20, 8);
    let record = adoption_record(&daemon, &dev);
    drop(events);

    daemon.crash();
    kill_and_wait(&engines_for(&dev));
    let restarted = Instant::now();
    let startup = daemon.respawn();
    eprintln!(
        "case 7b ({}): the new daemon was listening after {:?}",
        engine.as_str(),
        restarted.elapsed()
    );
    assert!(
        startup
            .iter()
            .any(|l| l.contains("engine is gone; putting it away")),
        "{startup:#?}"
    );
    assert!(
        startup.iter().any(|l| l.contains("cleaned up 1 volume")),
        "{startup:#?}"
    );
    assert_clean(&daemon, &dev, &mountpoint, &view);
    assert!(!record.exists(), "the record of a volume put away is left");
    assert_eq!(daemon.device(&dev).unwrap().state, DeviceState::Locked);
    unlock_and_verify(&daemon, &dev, &[("before.bin", &before)]);

    // The other half: the engine serves on, its filesystem was unmounted meanwhile.
    let (mountpoint, view) = unlock_for_user(&daemon, &dev);
    let engines = engines_for(&dev);
    assert_eq!(engines.len(), 1, "{engines:?}");
    daemon.crash();
    run_ok(Command::new("umount").arg(&mountpoint));
    let restarted = Instant::now();
    let startup = daemon.respawn();
    let took = assert_clean(&daemon, &dev, &mountpoint, &view);
    eprintln!(
        "case 7b ({}, unmounted by hand): listening after {:?}, clean {took:?} later",
        engine.as_str(),
        restarted.elapsed()
    );
    assert!(
        startup
            .iter()
            .any(|l| l.contains("is not mounted any more; putting it away")),
        "{startup:#?}"
    );
    assert!(
        process_state(engines[0]).is_none_or(|s| s == 'Z'),
        "the engine of a volume put away still runs"
    );
    assert_eq!(daemon.device(&dev).unwrap().state, DeviceState::Locked);
    let mut events = daemon.events();
    replug_and_verify(&daemon, &mut events, &mut stick, &[("before.bin", &before)]);
}

/// Case 7c (issue 21). An adopted engine is no child of the new daemon (no SIGCHLD): killed,
/// it is still noticed at once (its pidfd), the volume put away with the reason, and the
/// drive unlocks again with what was synced intact.
fn adopted_engine_death_is_noticed(engine: Engine) {
    let _serial = serial();
    let Some(Plugged {
        mut daemon,
        events,
        stick: _stick,
        dev,
    }) = plugged(
        engine,
        "adopted_engine_death",
        "bitlk-aes-xts-128",
        "ORPHAN",
        "mbr",
    )
    else {
        return;
    };
    let (mountpoint, view) = unlock_for_user(&daemon, &dev);
    let before = write_pseudo_random(&mountpoint.join("before.bin"), 4 << 20, 9);
    let record = adoption_record(&daemon, &dev);
    drop(events);
    daemon.crash();
    daemon.respawn();
    let mut events = daemon.events();
    assert_eq!(daemon.device(&dev).unwrap().state, DeviceState::Mounted);

    let pids = engines_for(&dev);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    daemon.wait_log("exited unexpectedly; cleaning up");
    let noticed = killed.elapsed();
    let after = wait_event(&mut events, "the daemon to put it away", |k, d| {
        k == EventKind::Changed
            && d.device == dev
            && matches!(d.state, DeviceState::Failed | DeviceState::Locked)
    });
    eprintln!(
        "case 7c ({}): the adopted engine's death noticed after {noticed:?}, put away ({}: {:?}) \
         after {:?}",
        engine.as_str(),
        after.state.as_str(),
        after.error,
        killed.elapsed()
    );
    assert!(
        noticed <= NOTICED_DEADLINE,
        "noticed only after {noticed:?}"
    );
    assert_clean(&daemon, &dev, &mountpoint, &view);
    assert!(!record.exists(), "the record outlived its session");
    unlock_and_verify(&daemon, &dev, &[("before.bin", &before)]);
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

/// Case 6: sticks that cannot be read, served by a FUSE filesystem of the test's own.
mod faulty {
    use super::common::*;
    use fuser::{
        Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
        LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyEntry, ReplyOpen, Request,
    };
    use std::ffi::OsStr;
    use std::ops::Range;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::{Duration, Instant, SystemTime};

    /// What a read of the bad range gets.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Fault {
        /// EIO, as a failing flash chip gives.
        Eio,
        /// No answer until the gate is released, as a stick whose controller hangs.
        Hang,
    }

    /// Holds hung reads until released; counts them.
    #[derive(Default)]
    pub struct Gate {
        state: Mutex<(bool, usize)>,
        changed: Condvar,
    }

    impl Gate {
        fn hold(&self) {
            let mut state = self.state.lock().unwrap();
            state.1 += 1;
            self.changed.notify_all();
            while !state.0 {
                state = self.changed.wait(state).unwrap();
            }
        }

        pub fn release(&self) {
            self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
            self.changed.notify_all();
        }

        /// Waits until a read is held; false at the deadline.
        pub fn wait_held(&self, timeout: Duration) -> bool {
            let deadline = Instant::now() + timeout;
            let mut state = self.state.lock().unwrap();
            while state.1 == 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                state = self.changed.wait_timeout(state, left).unwrap().0;
            }
            true
        }

        /// Reads held and not yet released.
        pub fn holding(&self) -> bool {
            let state = self.state.lock().unwrap();
            state.1 > 0 && !state.0
        }
    }

    const FILE_INO: INodeNo = INodeNo(2);
    pub const FILE_NAME: &str = "stick.img";
    const TTL: Duration = Duration::from_secs(1);

    /// One read-only file, a copy of `image`, whose reads overlapping `bad` fail or hang.
    struct FaultyFs {
        image: Arc<std::fs::File>,
        size: u64,
        bad: Range<u64>,
        fault: Fault,
        gate: Arc<Gate>,
    }

    impl FaultyFs {
        fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
            let (kind, perm, size, nlink) = match ino {
                INodeNo::ROOT => (FileType::Directory, 0o500, 0, 2),
                FILE_INO => (FileType::RegularFile, 0o400, self.size, 1),
                _ => return None,
            };
            let now = SystemTime::now();
            Some(FileAttr {
                ino,
                size,
                blocks: size.div_ceil(512),
                atime: now,
                mtime: now,
                ctime: now,
                crtime: now,
                kind,
                perm,
                nlink,
                uid: 0,
                gid: 0,
                rdev: 0,
                flags: 0,
                blksize: 4096,
            })
        }
    }

    fn read_reply(image: &std::fs::File, offset: u64, size: u32, reply: ReplyData) {
        let mut buf = vec![0u8; size as usize];
        match image.read_at(&mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    impl Filesystem for FaultyFs {
        fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
            match self.attr(FILE_INO) {
                Some(attr) if parent == INodeNo::ROOT && name == FILE_NAME => {
                    reply.entry(&TTL, &attr, Generation(0))
                }
                _ => reply.error(Errno::ENOENT),
            }
        }

        fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
            match self.attr(ino) {
                Some(attr) => reply.attr(&TTL, &attr),
                None => reply.error(Errno::ENOENT),
            }
        }

        fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
            if ino != FILE_INO {
                return reply.error(Errno::EISDIR);
            }
            // No page cache: every read of the loop device comes here.
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }

        fn read(
            &self,
            _req: &Request,
            _ino: INodeNo,
            _fh: FileHandle,
            offset: u64,
            size: u32,
            _flags: OpenFlags,
            _lock_owner: Option<LockOwner>,
            reply: ReplyData,
        ) {
            let hits = offset < self.bad.end && offset + u64::from(size) > self.bad.start;
            match (hits, self.fault) {
                (false, _) => read_reply(&self.image, offset, size, reply),
                (true, Fault::Eio) => reply.error(Errno::EIO),
                // Answered from a thread of its own once released: the session goes on
                // serving everything else (and the unmount).
                (true, Fault::Hang) => {
                    let (gate, image) = (self.gate.clone(), self.image.clone());
                    std::thread::spawn(move || {
                        gate.hold();
                        read_reply(&image, offset, size, reply);
                    });
                }
            }
        }
    }

    /// The faulty stick: the FUSE filesystem, and a loop device over its file. Dropped (also
    /// when a test fails), it releases every held read first, so a hung read can never wedge
    /// the machine, then detaches the loop device and unmounts.
    pub struct FaultyStick {
        pub loop_dev: String,
        pub gate: Arc<Gate>,
        pub dir: PathBuf,
        session: Option<fuser::BackgroundSession>,
    }

    impl FaultyStick {
        /// Serves a copy of `image` in `dir` whose bytes in `bad` fail as `fault` says, and
        /// attaches it (read-only) as a loop device.
        pub fn plug(dir: &Path, image: &Path, fault: Fault, bad: Range<u64>) -> Self {
            let file = std::fs::File::open(image).unwrap();
            let size = file.metadata().unwrap().len();
            let gate = Arc::new(Gate::default());
            let fs = FaultyFs {
                image: Arc::new(file),
                size,
                bad,
                fault,
                gate: gate.clone(),
            };
            let dir = dir.join("faulty");
            std::fs::create_dir_all(&dir).unwrap();
            let mut config = fuser::Config::default();
            config.mount_options = vec![
                fuser::MountOption::FSName("guilocker-test-faulty".into()),
                fuser::MountOption::RO,
            ];
            let session = fuser::Session::new(fs, &dir, &config)
                .and_then(fuser::Session::spawn)
                .unwrap_or_else(|e| panic!("cannot serve the faulty stick: {e}"));
            let mut stick = Self {
                loop_dev: String::new(),
                gate,
                dir,
                session: Some(session),
            };
            let out = run_ok(
                Command::new("losetup")
                    .args(["--find", "--show", "--read-only"])
                    .arg(stick.file()),
            );
            stick.loop_dev = out.trim().to_owned();
            stick
        }

        pub fn file(&self) -> PathBuf {
            self.dir.join(FILE_NAME)
        }

        /// Releases every held read, detaches the loop device, unmounts the filesystem and
        /// waits until its session has ended (the kernel let go of the file).
        pub fn remove(mut self) {
            self.gate.release();
            run_ok(Command::new("losetup").args(["-d", &self.loop_dev]));
            let file = self.file().display().to_string();
            wait_for_block_change("the faulty stick's loop device to go", || {
                loop_devices().iter().all(|(_, backing)| *backing != file)
            });
            self.loop_dev.clear();
            // The loop device drops its hold on the file a moment after it is gone: detach
            // now, and the session ends at that last close.
            run_ok(Command::new("umount").arg("--lazy").arg(&self.dir));
            let session = self.session.take().expect("served until removed");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(session.join());
            });
            rx.recv_timeout(WAIT)
                .expect("the faulty stick's session did not end")
                .expect("the faulty stick's session");
            assert!(!is_mounted(&self.dir), "the faulty stick is still mounted");
        }
    }

    impl Drop for FaultyStick {
        fn drop(&mut self) {
            self.gate.release();
            if !self.loop_dev.is_empty() {
                let _ = Command::new("losetup")
                    .args(["-d", &self.loop_dev])
                    .output();
            }
            if self.session.take().is_some() && is_mounted(&self.dir) {
                // Whoever still has the file open keeps the connection; nothing waits on it.
                let _ = Command::new("umount").arg("--lazy").arg(&self.dir).output();
            }
        }
    }
}

use faulty::{Fault, FaultyStick};

/// Expectations checked one after another, each reported, failed together at the end: a run
/// against a daemon that lacks one still shows how it does on the others.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn expect(&mut self, ok: bool, what: String) {
        eprintln!("{} {what}", if ok { "ok:" } else { "FAILED:" });
        if !ok {
            self.0.push(what);
        }
    }

    fn assert_all(self) {
        assert!(self.0.is_empty(), "failed expectations: {:#?}", self.0);
    }
}

/// How long case 6 waits for an answer it expects within [`STATUS_DEADLINE`].
const STATUS_PATIENCE: Duration = Duration::from_secs(2);

/// The device as `status` lists it, in the daemon's own words: (state, error); `None` (and a
/// failed expectation) when `status` is not answered in time.
fn listed(daemon: &TestDaemon, dev: &str, findings: &mut Findings) -> Option<(String, String)> {
    let devices = match try_status_json(daemon, STATUS_PATIENCE) {
        Ok((_, devices)) => devices,
        Err(e) => {
            findings.expect(false, format!("status lists {dev}: {e}"));
            return None;
        }
    };
    let device = devices
        .iter()
        .find(|d| d["device"] == dev)
        .unwrap_or_else(|| panic!("status does not list {dev}: {devices:#?}"));
    let field = |name: &str| device[name].as_str().unwrap_or_default().to_owned();
    Some((field("state"), field("error")))
}

/// `status` answers within [`STATUS_DEADLINE`].
fn status_is_quick(daemon: &TestDaemon, findings: &mut Findings, when: &str) {
    match try_status_json(daemon, STATUS_PATIENCE) {
        Ok((took, _)) => findings.expect(
            took < STATUS_DEADLINE,
            format!("status answered in {took:?} {when}"),
        ),
        Err(e) => findings.expect(false, format!("status answered {when}: {e}")),
    }
}

fn fixture(name: &str) -> PathBuf {
    images()
        .into_iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
        .path()
}

/// Detaches the faulty stick and checks that the daemon forgot it and nothing is left.
fn remove_faulty(daemon: &TestDaemon, events: &mut guilocker::client::Events, stick: FaultyStick) {
    let dev = stick.loop_dev.clone();
    stick.remove();
    wait_event(events, "the faulty stick to go", |k, d| {
        k == EventKind::Removed && d.device == dev
    });
    // No volume was mounted: the user's media folder stands for the mountpoint.
    assert_clean(daemon, &dev, &daemon.media.join(TEST_USER), &None);
}

/// Case 6, mode A. A stick whose first sector reads fail with EIO: listed `unreadable`, with
/// an error that names the device and the cause.
#[test]
fn stick_whose_reads_fail() {
    let _serial = serial();
    if !prerequisites(&["losetup"]) {
        return;
    }
    let daemon = TestDaemon::start("stick_whose_reads_fail");
    let mut events = daemon.events();
    let plugged = Instant::now();
    let stick = FaultyStick::plug(
        &daemon.dir,
        &fixture("bitlk-aes-xts-128"),
        Fault::Eio,
        0..4096,
    );
    let dev = stick.loop_dev.clone();
    wait_event(&mut events, "the probe's verdict", |k, d| {
        k == EventKind::Added && d.device == dev
    });
    let mut findings = Findings::default();
    let (state, error) = listed(&daemon, &dev, &mut findings).unwrap_or_default();
    eprintln!(
        "case 6 (EIO): {dev} listed after {:?}: {state}, {error:?}",
        plugged.elapsed()
    );
    findings.expect(
        state == "unreadable",
        format!("{dev} is listed {state:?}, expected \"unreadable\""),
    );
    findings.expect(
        error.contains(&dev) && error.contains("Input/output error"),
        format!("the error {error:?} names {dev} and \"Input/output error\""),
    );
    status_is_quick(&daemon, &mut findings, "with the unreadable stick listed");
    remove_faulty(&daemon, &mut events, stick);
    findings.assert_all();
}

/// Case 6, mode B. A stick whose first sector reads never answer: clients are answered all
/// along, a stick plugged meanwhile is seen and unlocks, and after the probe timeout the
/// hanging one is listed `unreadable` with an error that says it did not answer.
#[test]
fn stick_whose_reads_hang() {
    let _serial = serial();
    if !prerequisites(STICK_TOOLS) {
        return;
    }
    ensure_user(TEST_USER, true);
    let daemon = TestDaemon::start("stick_whose_reads_hang");
    // Built before the hang starts: the time it takes is not the hang's.
    let image = make_stick(&daemon.dir, "bitlk-aes-xts-128", "ntfs", "MEANWHILE", "mbr");
    let mut events = daemon.events();
    let mut findings = Findings::default();

    // Declared after the daemon, so dropped before it: held reads are released first.
    let plugged = Instant::now();
    let faulty = FaultyStick::plug(
        &daemon.dir,
        &fixture("bitlk-aes-xts-128"),
        Fault::Hang,
        0..4096,
    );
    let dev = faulty.loop_dev.clone();
    assert!(
        faulty.gate.wait_held(WAIT),
        "nobody read the first sector of {dev}"
    );
    eprintln!(
        "case 6 (hang): {dev}'s first read held after {:?}",
        plugged.elapsed()
    );
    status_is_quick(&daemon, &mut findings, "while a probe hangs");

    // Another stick, plugged while the first hangs, well before its probe times out.
    let mut other = Stick::plug(&image, true);
    let other_dev = other.volume();
    let seen = event_within(&mut events, "the other stick", PROBE_TIMEOUT / 2, |k, d| {
        k == EventKind::Added && d.device == other_dev
    });
    findings.expect(
        seen.is_some(),
        format!(
            "{other_dev}, plugged while {dev} hangs, is seen within {:?}",
            PROBE_TIMEOUT / 2
        ),
    );
    if seen.is_some() {
        let (code, _, err) = daemon.unlock_with_password(Some(TEST_USER), &other_dev, "anaconda");
        findings.expect(
            code == 0,
            format!("{other_dev} unlocks while {dev} hangs: {err}"),
        );
        findings.expect(
            faulty.gate.holding(),
            format!("{dev} was still hanging meanwhile"),
        );
        if code == 0 {
            let (code, _, err) = daemon.cli(Some(TEST_USER), &["unmount", &other_dev], "");
            assert_eq!(code, 0, "{err}");
        }
    }

    // The hung probe gives up at its timeout.
    let left = (PROBE_TIMEOUT * 2).saturating_sub(plugged.elapsed());
    let verdict = event_within(&mut events, "the hung probe's verdict", left, |k, d| {
        k != EventKind::Removed && d.device == dev && d.state != DeviceState::Probing
    });
    let (state, error) = listed(&daemon, &dev, &mut findings).unwrap_or_default();
    eprintln!(
        "case 6 (hang): {dev} after {:?}: {} ({state}, {error:?})",
        plugged.elapsed(),
        if verdict.is_some() {
            "a verdict"
        } else {
            "no verdict"
        }
    );
    findings.expect(
        state == "unreadable",
        format!("{dev} is listed {state:?} after {PROBE_TIMEOUT:?}, expected \"unreadable\""),
    );
    findings.expect(
        error.contains(&dev) && error.contains("did not answer within"),
        format!("the error {error:?} names {dev} and says it \"did not answer within\""),
    );
    status_is_quick(&daemon, &mut findings, "after the probe gave up");

    remove_faulty(&daemon, &mut events, faulty);
    if daemon.device(&other_dev).is_some() {
        other.unplug();
        wait_event(&mut events, "the other stick to go", |k, d| {
            k == EventKind::Removed && d.device == other_dev
        });
    }
    drop(other);
    assert_clean(&daemon, &dev, &daemon.media.join(TEST_USER), &None);
    findings.assert_all();
}
