//! Sticks in use: plugged into a daemon of their own, unlocked, written, and the check that
//! nothing of a put-away volume is left (mounts, loop devices, mappings, processes, folders).

use super::*;
use guilocker::protocol::{Engine, EventKind, Request};
use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;

/// What the stick tests run: dislocker (and make-bitlocker-stick's tools), NTFS, loop devices.
pub const STICK_TOOLS: &[&str] = &[
    "dislocker",
    "losetup",
    "partx",
    "sfdisk",
    "runuser",
    "ntfs-3g",
    "mkntfs",
];

/// Each stick test once on our engine and once on dislocker, forced by the config; those in
/// `kernel_too` also on dm-crypt, which needs device-mapper: inside the VM
/// (tests/kernel_vm.rs), `#[ignore]`d here.
#[allow(unused_macros)]
macro_rules! on_engines {
    (kernel_too: [$($both:ident),* $(,)?], fuse_only: [$($fuse:ident),* $(,)?] $(,)?) => {
        mod native {
            $(#[test] fn $both() { super::$both(guilocker::protocol::Engine::Native) })*
            $(#[test] fn $fuse() { super::$fuse(guilocker::protocol::Engine::Native) })*
        }
        mod dislocker {
            $(#[test] fn $both() { super::$both(guilocker::protocol::Engine::Dislocker) })*
            $(#[test] fn $fuse() { super::$fuse(guilocker::protocol::Engine::Dislocker) })*
        }
        mod dm_crypt {
            $(#[test] #[ignore = "kernel path: runs inside a VM with Debian's kernel (tests/kernel_vm.rs)"]
              fn $both() { super::$both(guilocker::protocol::Engine::DmCrypt) })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_engines;

/// A daemon of its own with one NTFS stick made from `source`, plugged in and seen.
/// Fields drop in order: the daemon (it puts the volume away), then the stick.
pub struct Plugged {
    pub daemon: TestDaemon,
    pub events: Events,
    pub stick: Stick,
    pub dev: String,
}

impl Plugged {
    /// Puts it all away (the daemon, then the stick) and removes the test's folder: the
    /// VM's scratch space is a small tmpfs shared by the whole group.
    pub fn discard(self) {
        let dir = self.daemon.dir.clone();
        drop(self);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `None` when a prerequisite is missing (and not under CI, where that fails).
pub fn plugged(
    engine: Engine,
    name: &str,
    source: &str,
    label: &str,
    table: &str,
) -> Option<Plugged> {
    if !prerequisites(STICK_TOOLS) {
        return None;
    }
    ensure_user(TEST_USER, true);
    let daemon = TestDaemon::start_with(
        &format!("{name}-{}", engine.as_str()),
        &engine_config(engine),
    );
    let image = make_stick(&daemon.dir, source, "ntfs", label, table);
    let mut events = daemon.events();
    let stick = Stick::plug(&image, table != "none");
    let dev = stick.volume();
    wait_added(&daemon, &mut events, "the volume", |d| d.device == dev);
    Some(Plugged {
        daemon,
        events,
        stick,
        dev,
    })
}

/// Unlocks and mounts `dev` for the test user; returns the mountpoint and the engine's view
/// directory (none under dm-crypt).
pub fn unlock_for_user(daemon: &TestDaemon, dev: &str) -> (PathBuf, Option<PathBuf>) {
    let (code, _, err) = daemon.unlock_with_password(Some(TEST_USER), dev, "anaconda");
    assert_eq!(code, 0, "{err}");
    let info = daemon.device(dev).unwrap();
    (
        PathBuf::from(info.mountpoint.clone().unwrap()),
        view_dir(&info),
    )
}

/// Nothing of the view is left: no FUSE mount and directory, no mapping.
pub fn assert_view_gone(view: &Option<PathBuf>) {
    if let Some(view) = view {
        assert!(!is_mounted(view));
        assert!(!view.exists());
    }
    assert_no_mapping();
}

/// Unplugs `stick` (if plugged) and plugs its image in again: a new appearance, seen when
/// the daemon reports a BitLocker volume with a new disk sequence number. Returns the volume.
pub fn replug(daemon: &TestDaemon, events: &mut Events, stick: &mut Stick) -> String {
    let before = daemon.device(&stick.volume()).and_then(|d| d.diskseq);
    if !stick.loop_dev.is_empty() {
        let dev = stick.volume();
        let listed = daemon.device(&dev).is_some();
        stick.unplug();
        if listed {
            wait_event(events, "the stick to go", |k, d| {
                k == EventKind::Removed && d.device == dev
            });
        }
    }
    *stick = Stick::plug(&stick.image.clone(), stick.partitioned);
    let dev = stick.volume();
    wait_added(daemon, events, "the stick to come back", |d| {
        d.device == dev && d.bitlocker && d.diskseq != before
    });
    dev
}

/// Writes `size` bytes of pseudo-random data (a new sequence for each `seed`) to `path`,
/// syncs it; returns its SHA-256.
pub fn write_pseudo_random(path: &Path, size: u64, seed: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut file =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut hash = Sha256::new();
    let mut state = 0x243f_6a88_85a3_08d3u64 ^ seed;
    let mib = 1u64 << 20;
    let mut chunk = vec![0u8; mib as usize];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(mib) as usize;
        file.write_all(&chunk[..n]).unwrap();
        hash.update(&chunk[..n]);
        left -= n as u64;
    }
    file.sync_all().unwrap();
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A file in `dir` whose name matches `name` without regard to case (FAT and NTFS keep the
/// case they were given; Windows-made files may differ).
pub fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(name))
        .map(|e| e.path())
}

/// One field of `/proc/PID/stat` after the command name: 0 is the state, 1 the parent pid.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n).map(str::to_owned)
}

/// The process state letter (`R`, `S`, `D`, `Z`...), or `None` once it has gone.
pub fn process_state(pid: i32) -> Option<char> {
    stat_field(pid, 0)?.chars().next()
}

/// The children of `parent`: (pid, command name, state). A daemon that is a child
/// subreaper also gets the FUSE drivers that daemonized.
pub fn children_of(parent: i32) -> Vec<(i32, String, char)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let ppid: i32 = stat_field(pid, 1)?.parse().ok()?;
            (ppid == parent).then(|| {
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                let state = process_state(pid).unwrap_or('?');
                (pid, comm.trim().to_owned(), state)
            })
        })
        .collect()
}

/// Threads of `pid` in uninterruptible sleep (`D`): (tid, command name).
pub fn threads_in_d(pid: i32) -> Vec<(i32, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let tid: i32 = t.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            (rest.split_whitespace().next() == Some("D")).then(|| {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                (tid, comm.trim().to_owned())
            })
        })
        .collect()
}

/// Loop devices attached now: (`/dev/loopN`, backing file).
pub fn loop_devices() -> Vec<(String, String)> {
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            Some((
                format!("/dev/{}", e.file_name().to_string_lossy()),
                backing.trim_end().to_owned(),
            ))
        })
        .collect()
}

/// `VmHWM`, the peak resident set, of `pid`, in kB.
pub fn peak_rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// `status` over a raw connection with a read deadline, as JSON: the device objects exactly
/// as the daemon wrote them (a state this build does not know stays readable), and how long
/// the answer took.
pub fn status_json(daemon: &TestDaemon, timeout: Duration) -> (Duration, Vec<serde_json::Value>) {
    try_status_json(daemon, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`status_json`], or why there was no answer within `timeout`.
pub fn try_status_json(
    daemon: &TestDaemon,
    timeout: Duration,
) -> Result<(Duration, Vec<serde_json::Value>), String> {
    let started = Instant::now();
    let stream = UnixStream::connect(&daemon.socket).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    let mut line = serde_json::to_vec(&Request::Status).unwrap();
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| format!("send status: {e}"))?;
    let mut reply = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| format!("no answer to status within {timeout:?}: {e}"))?;
    let elapsed = started.elapsed();
    let mut value: serde_json::Value =
        serde_json::from_str(&reply).map_err(|e| format!("{e}: {reply:?}"))?;
    match value.get_mut("devices").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(devices)) => Ok((elapsed, devices)),
        _ => Err(format!("status answered {reply:?}")),
    }
}

/// What is left of a put-away volume: `dev` was mounted at `mountpoint`, its engine served
/// `view` (none under dm-crypt). Everything is looked for in this daemon's own places, so
/// another test's daemon on the machine counts for nothing. Empty when clean.
pub fn leftovers(
    daemon: &TestDaemon,
    dev: &str,
    mountpoint: &Path,
    view: &Option<PathBuf>,
) -> Vec<String> {
    let mut left = Vec::new();
    for m in guilocker::daemon::mounts::mounts() {
        let ours = m.mountpoint == mountpoint
            || view.as_deref() == Some(&*m.mountpoint)
            || m.mountpoint.starts_with(&daemon.runtime)
            || m.mountpoint.starts_with(&daemon.media);
        if ours {
            left.push(format!("mount {} ({})", m.mountpoint.display(), m.fs_type));
        }
    }
    for (loop_dev, backing) in loop_devices() {
        if Path::new(&backing).starts_with(&daemon.runtime) {
            left.push(format!("{loop_dev} over {backing}"));
        }
    }
    for (name, kname) in guilocker::daemon::dmcrypt::mappings() {
        left.push(format!("mapping {name} ({kname})"));
    }
    for pid in engines_for(dev) {
        left.push(format!("engine pid {pid} for {dev}"));
    }
    if daemon.child.is_some() {
        for (pid, comm, state) in children_of(daemon.pid()) {
            left.push(format!(
                "child of the daemon: {comm} (pid {pid}, state {state})"
            ));
        }
    }
    let views = daemon.runtime.join(guilocker::daemon::core::VIEWS_DIR);
    let dirs = [
        Some(mountpoint.to_owned()),
        view.clone(),
        Some(daemon.media.join(TEST_USER)),
    ];
    for dir in dirs.into_iter().flatten() {
        if dir.exists() {
            left.push(format!("directory {}", dir.display()));
        }
    }
    if let Ok(entries) = std::fs::read_dir(&views) {
        for e in entries.flatten() {
            left.push(format!("directory {}", e.path().display()));
        }
    }
    // The adoption record of a volume put away (issue 21).
    let record = daemon
        .runtime
        .join("volumes")
        .join(format!("{}.json", dev.trim_start_matches("/dev/")));
    if record.exists() {
        left.push(format!("record {}", record.display()));
    }
    left
}

/// The daemon is running (not a zombie) and answers `status` within 5 s.
pub fn assert_daemon_answers(daemon: &TestDaemon) {
    let pid = daemon.pid();
    assert!(
        matches!(process_state(pid), Some(s) if s != 'Z'),
        "the daemon (pid {pid}) is gone"
    );
    let (took, _) = status_json(daemon, Duration::from_secs(5));
    assert!(took < Duration::from_secs(5), "status took {took:?}");
}

/// Waits until nothing of the volume is left ([`leftovers`]); returns how long that took, or
/// fails at `timeout` naming what is left. Re-checked on every uevent, mount-table change and
/// exit of a daemon's child, and at least every 100 ms for what announces nothing (an rmdir,
/// a zombie reaped).
pub fn wait_clean(
    daemon: &TestDaemon,
    dev: &str,
    mountpoint: &Path,
    view: &Option<PathBuf>,
    timeout: Duration,
) -> Duration {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let started = Instant::now();
    // Listening before the first look: a change between the two is not missed.
    let uevents = guilocker::daemon::watch::UeventSocket::open().expect("a uevent socket");
    let mounts = guilocker::daemon::mounts::MountWatch::open().expect("mountinfo");
    loop {
        let left = leftovers(daemon, dev, mountpoint, view);
        if left.is_empty() {
            return started.elapsed();
        }
        let remaining = timeout.saturating_sub(started.elapsed());
        assert!(
            !remaining.is_zero(),
            "still left after {timeout:?}: {left:#?}"
        );
        let pidfds: Vec<_> = if daemon.child.is_some() {
            children_of(daemon.pid())
                .into_iter()
                .filter(|c| c.2 != 'Z')
                .filter_map(|c| {
                    guilocker::process::pidfd_open(nix::unistd::Pid::from_raw(c.0)).ok()
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut fds = vec![
            PollFd::new(uevents.fd().as_fd(), PollFlags::POLLIN),
            PollFd::new(mounts.fd(), PollFlags::POLLPRI),
        ];
        fds.extend(
            pidfds
                .iter()
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
        );
        let ms = remaining.min(Duration::from_millis(100)).as_millis() as u16;
        let _ = poll(&mut fds, PollTimeout::from(ms));
        uevents.drain();
    }
}

/// Every check that a volume was put away cleanly: the daemon (when running) alive and
/// answering, and [`leftovers`] empty within [`WAIT`]. Returns how long the wait took.
pub fn assert_clean(
    daemon: &TestDaemon,
    dev: &str,
    mountpoint: &Path,
    view: &Option<PathBuf>,
) -> Duration {
    let took = wait_clean(daemon, dev, mountpoint, view, WAIT);
    if daemon.child.is_some() {
        assert_daemon_answers(daemon);
        eprintln!(
            "clean after {took:?}; daemon peak RSS {} kB",
            peak_rss_kb(daemon.pid())
        );
    }
    took
}
