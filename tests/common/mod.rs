//! Shared parts of the end-to-end tests: prerequisites, fixtures, a daemon, sticks, waits.
//!
//! Every wait is on a real condition (a line from the daemon, an event on the socket, a
//! process exit, the mount table) with a deadline; nothing sleeps to synchronise.

#![allow(dead_code)]

pub mod atspi;
pub mod logind;
pub mod ntfs;
pub mod sticks;
pub mod usb;
pub mod vm;

// Not every test binary uses them.
#[allow(unused_imports)]
pub use sticks::*;

use guilocker::client::{Client, Events};
use guilocker::protocol::{DeviceInfo, Engine, EventKind};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub const TEST_USER: &str = "guilocker-test";
pub const OTHER_USER: &str = "guilocker-other";
pub const WAIT: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_guilocker")
}

/// End-to-end tests share loop devices and /proc/partitions: one at a time per binary.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks what an end-to-end test needs. Missing something: skip with the reason, except
/// under CI=true, where it is a failure.
pub fn prerequisites(programs: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root".to_owned());
    }
    for p in programs {
        if which(p).is_none() {
            missing.push(format!("program {p}"));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".into());
    }
    if !fixture_tarball().exists() {
        missing.push(format!("fixtures at {}", fixture_tarball().display()));
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("end-to-end test needs {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why} (CI=true: not skipping)");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// The system's directories first (sudo may drop them from PATH), then PATH (cargo's bin
/// directory for cargo-deb).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(PathBuf::from)
    .chain(std::env::split_paths(&path))
    .map(|d| d.join(program))
    .find(|p| p.exists())
}

pub fn shared_dir() -> PathBuf {
    std::env::var_os("GUILOCKER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

fn fixture_tarball() -> PathBuf {
    shared_dir().join("fixtures/bitlocker/bitlk-images.tar.xz")
}

/// A scratch directory under target/ (or `$GUILOCKER_SCRATCH`: the kernel-path VM sees
/// target/ over 9p, where no socket can be made), readable by the test users.
pub fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("GUILOCKER_SCRATCH")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    open_up(&dir);
    dir
}

/// Lets the test users traverse `dir` and its parents (target/ may be under a 0700 home).
fn open_up(dir: &Path) {
    for d in dir.ancestors() {
        if let Ok(meta) = std::fs::metadata(d) {
            let mode = meta.permissions().mode();
            if mode & 0o005 != 0o005 {
                let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o005));
            }
        }
    }
}

/// Whether the fixture images are there (../shared/fixtures, or GUILOCKER_FIXTURES); if not,
/// says why and returns `false`, and fails under CI=true.
pub fn fixtures_present() -> bool {
    let present = std::env::var_os("GUILOCKER_FIXTURES").is_some() || fixture_tarball().exists();
    if !present {
        let reason = format!(
            "the fixture images are missing ({})",
            fixture_tarball().display()
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipping: {reason}");
    }
    present
}

/// The unpacked fixture images (done once, shared by all tests).
pub fn fixtures() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("GUILOCKER_FIXTURES") {
            return PathBuf::from(dir);
        }
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
        let dir = base.join("bitlk-images");
        if !dir.join("images.conf").exists() {
            std::fs::create_dir_all(&base).unwrap();
            run_ok(
                Command::new("tar")
                    .arg("xJSf")
                    .arg(fixture_tarball())
                    .arg("-C")
                    .arg(&base),
            );
        }
        dir
    })
    .clone()
}

/// One `[section]` of images.conf.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub keys: HashMap<String, String>,
}

impl Image {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.keys
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn path(&self) -> PathBuf {
        fixtures().join(format!("{}.img", self.name))
    }
}

pub fn images() -> Vec<Image> {
    let text = std::fs::read_to_string(fixtures().join("images.conf")).unwrap();
    let mut images = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            images.push(Image {
                name: name.into(),
                keys: HashMap::new(),
            });
        } else if let (Some((k, v)), Some(img)) = (line.split_once('='), images.last_mut()) {
            img.keys.insert(k.trim().into(), v.trim().into());
        }
    }
    images
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes sure a local user exists, optionally in `plugdev`; returns its uid.
pub fn ensure_user(name: &str, plugdev: bool) -> u32 {
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        if nix::unistd::Group::from_name("plugdev").unwrap().is_none() {
            run_ok(Command::new("groupadd").arg("--system").arg("plugdev"));
        }
        let mut cmd = Command::new("useradd");
        cmd.args(["--no-create-home", "--shell", "/bin/sh"]);
        if plugdev {
            cmd.args(["--groups", "plugdev"]);
        }
        run_ok(cmd.arg(name));
    }
    nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
}

/// A daemon of our own, in the foreground, with its own socket, pidfile, runtime dir and
/// mount root. Killed (SIGTERM, then waited for) on drop.
pub struct TestDaemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub pidfile: PathBuf,
    pub runtime: PathBuf,
    pub media: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    /// Every line the daemon writes to stderr, in order.
    pub log: Mutex<std::sync::mpsc::Receiver<String>>,
}

impl TestDaemon {
    pub fn start(name: &str) -> Self {
        Self::start_with(name, "")
    }

    pub fn start_with(name: &str, extra_config: &str) -> Self {
        Self::start_in(name, extra_config, None)
    }

    /// [`TestDaemon::start_with`], with `runtime` as its runtime directory instead of one in
    /// its scratch folder: `/run/guilocker`, the one the udev rule looks in, makes it speak
    /// for the desktop.
    pub fn start_in(name: &str, extra_config: &str, runtime: Option<&Path>) -> Self {
        let dir = scratch(name);
        // The tests' users unlock through runuser, outside any seat: where logind runs, only
        // the tests that set the key themselves ask it.
        let seat = if logind_present() && !extra_config.contains("require_active_session") {
            "require_active_session = false\n"
        } else {
            ""
        };
        // A folder of its own to mount under, unless the test names one (`/media`, where
        // file managers look).
        let named = extra_config.lines().find_map(|l| {
            let value = l
                .strip_prefix("mount_root")?
                .trim_start()
                .strip_prefix('=')?;
            Some(PathBuf::from(value.trim().trim_matches('"')))
        });
        let media = named.clone().unwrap_or_else(|| dir.join("media"));
        std::fs::create_dir_all(&media).unwrap();
        let own_root = match named {
            Some(_) => String::new(),
            None => format!("mount_root = \"{}\"\n", media.display()),
        };
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "include_loop_devices = true\nallowed_group = \"plugdev\"\n{own_root}\
                 {seat}{extra_config}"
            ),
        )
        .unwrap();
        let mut d = Self {
            socket: dir.join("control.sock"),
            pidfile: dir.join("guilocker.pid"),
            runtime: runtime.map_or_else(|| dir.join("run"), Path::to_path_buf),
            media,
            config,
            dir,
            child: None,
            log: Mutex::new(std::sync::mpsc::channel().1),
        };
        d.spawn();
        d
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--pidfile")
            .arg(&self.pidfile)
            .arg("--runtime-dir")
            .arg(&self.runtime);
        cmd
    }

    /// Starts the daemon; returns its log lines up to "listening on".
    fn spawn(&mut self) -> Vec<String> {
        let mut child = self
            .command()
            .arg("--foreground")
            .env("GUILOCKER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  daemon| {line}");
                let _ = tx.send(line);
            }
        });
        self.log = Mutex::new(rx);
        self.child = Some(child);
        self.log_until("listening on")
    }

    /// Waits for a daemon log line containing `text`; returns it.
    pub fn wait_log(&self, text: &str) -> String {
        self.log_until(text).pop().unwrap()
    }

    /// Every daemon log line up to and including the next one containing `text`.
    pub fn log_until(&self, text: &str) -> Vec<String> {
        let rx = self.log.lock().unwrap();
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(text);
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                Err(e) => panic!("no daemon log line with {text:?}: {e}"),
            }
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).unwrap()
    }

    /// A subscription with a read deadline, for `wait_event`.
    pub fn events(&self) -> Events {
        let events = self.client().subscribe().unwrap();
        events.stream().set_read_timeout(Some(WAIT)).unwrap();
        events
    }

    pub fn status(&self) -> Vec<DeviceInfo> {
        self.client().status().unwrap()
    }

    pub fn device(&self, dev: &str) -> Option<DeviceInfo> {
        self.status().into_iter().find(|d| d.device == dev)
    }

    /// Runs the CLI against this daemon, as root or as `user`, feeding `stdin`.
    pub fn cli(&self, user: Option<&str>, args: &[&str], stdin: &str) -> (i32, String, String) {
        let program = match user {
            Some(_) => user_bin(),
            None => PathBuf::from(bin()),
        };
        self.run_as(user, &program, args, stdin)
    }

    /// `umount PATH` as `user` (root when `None`), as a file manager runs it: umount(8) runs
    /// our helper for a user, which asks this daemon (its socket travels in the environment).
    pub fn umount_as(&self, user: Option<&str>, path: &Path) -> (i32, String, String) {
        let path = path.to_str().expect("a UTF-8 mountpoint");
        self.run_as(user, Path::new("umount"), &[path], "")
    }

    /// Runs `program` as root or as `user`, with this daemon's socket and English messages.
    pub fn run_as(
        &self,
        user: Option<&str>,
        program: &Path,
        args: &[&str],
        stdin: &str,
    ) -> (i32, String, String) {
        let mut cmd = match user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args).env("GUILOCKER_SOCKET", &self.socket);
        // The tests read English, whatever the machine's locale.
        for var in ["LC_ALL", "LC_MESSAGES", "LANGUAGE"] {
            cmd.env_remove(var);
        }
        cmd.env("LANG", "C.UTF-8");
        output_of(&mut cmd, stdin)
    }

    /// `guilocker unlock DEV --password-stdin`, as `user` (root when `None`).
    pub fn unlock_with_password(
        &self,
        user: Option<&str>,
        dev: &str,
        password: &str,
    ) -> (i32, String, String) {
        self.cli(
            user,
            &["unlock", dev, "--password-stdin"],
            &format!("{password}\n"),
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGKILL, as a crash would; the daemon cleans nothing up.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same socket, pidfile, runtime dir and config; returns
    /// its start-up log lines.
    pub fn respawn(&mut self) -> Vec<String> {
        assert!(self.child.is_none(), "still running");
        self.spawn()
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        let status = wait_child(&mut child, WAIT);
        status.code()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `cmd` to its end with `stdin` as its input; (exit code, stdout, stderr).
pub fn output_of(cmd: &mut Command, stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether this machine runs logind on a system bus (Debian's CI machine does not).
pub fn logind_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| guilocker::logind::Logind::connect().is_ok())
}

/// Waits for a std child with a deadline; kills it and fails if it has not exited by then.
pub fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    exit_within(child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("process {} did not exit within {timeout:?}", child.id())
    })
}

/// Waits up to `timeout` for a std child to exit (polling its pidfd); `None` if it has not.
pub fn exit_within(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let pidfd = guilocker::process::pidfd_open(nix::unistd::Pid::from_raw(child.id() as i32));
    if let Ok(fd) = &pidfd {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = nix::poll::PollTimeout::try_from(timeout.as_millis() as i32).unwrap();
        if nix::poll::poll(&mut fds, ms).unwrap_or(0) == 0 {
            return None;
        }
    }
    Some(child.wait().unwrap())
}

/// The CLI binary, copied where the test users can run it.
pub fn user_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = scratch("bin");
        let dest = dir.join("guilocker");
        std::fs::copy(bin(), &dest).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
        dest
    })
    .clone()
}

/// `/sbin/umount.guilocker`, which umount(8) runs when a user unmounts what guilocker
/// mounted: a link to the binary under test while this lives. What was there (an installed
/// guilocker's link) is put back after.
pub struct UmountHelper {
    saved: Option<PathBuf>,
}

impl UmountHelper {
    pub const PATH: &'static str = "/sbin/umount.guilocker";

    pub fn install() -> Self {
        let link = Path::new(Self::PATH);
        let saved = std::fs::read_link(link).ok();
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(user_bin(), link)
            .unwrap_or_else(|e| panic!("cannot link {}: {e}", link.display()));
        Self { saved }
    }
}

impl Drop for UmountHelper {
    fn drop(&mut self) {
        let link = Path::new(Self::PATH);
        let _ = std::fs::remove_file(link);
        if let Some(saved) = &self.saved {
            let _ = std::os::unix::fs::symlink(saved, link);
        }
    }
}

/// Does libmount's utab still name `mountpoint` (an entry left behind would make the next
/// mount there look like ours)?
pub fn in_utab(mountpoint: &Path) -> bool {
    let utab = std::fs::read_to_string("/run/mount/utab").unwrap_or_default();
    let target = format!(
        "TARGET={}",
        mountpoint.display().to_string().replace(' ', "\\040")
    );
    utab.lines()
        .any(|l| l.split(' ').any(|field| field == target))
}

/// Looks with `probe` every `every` until it gives something, for at most `within`: for
/// state nothing announces (logind's sessions, sysfs, a window appearing).
pub fn poll_for<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

/// Reads events until one matches, or fails at the deadline.
pub fn wait_event(
    events: &mut Events,
    what: &str,
    pred: impl FnMut(EventKind, &DeviceInfo) -> bool,
) -> DeviceInfo {
    event_within(events, what, WAIT, pred).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Waits for an `added` event that `pred` accepts, then until the daemon has read that
/// device: a partition table read again right after the plug (udev, `losetup --partscan`
/// on some kernels) removes and adds the partition once more, and the new one is probed
/// anew. Returns the device as the daemon then lists it.
pub fn wait_added(
    daemon: &TestDaemon,
    events: &mut Events,
    what: &str,
    mut pred: impl FnMut(&DeviceInfo) -> bool,
) -> DeviceInfo {
    loop {
        let added = wait_event(events, what, |k, d| k == EventKind::Added && pred(d));
        match daemon.device(&added.device) {
            Some(info) if info.state != guilocker::protocol::DeviceState::Probing => return info,
            _ => {}
        }
    }
}

/// Reads events until one matches; `None` when none did within `timeout`.
pub fn event_within(
    events: &mut Events,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(EventKind, &DeviceInfo) -> bool,
) -> Option<DeviceInfo> {
    let deadline = Instant::now() + timeout;
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break None;
        }
        events.stream().set_read_timeout(Some(left)).unwrap();
        match events.next() {
            Some(Ok((kind, info))) => {
                if pred(kind, &info) {
                    break Some(info);
                }
            }
            // The read deadline passed: go round, and out.
            Some(Err(guilocker::client::ClientError::Frame(
                guilocker::protocol::FrameError::Io(e),
            ))) if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
            Some(Err(e)) => panic!("waiting for {what}: {e}"),
            None => panic!("daemon closed the event stream while waiting for {what}"),
        }
    };
    events.stream().set_read_timeout(Some(WAIT)).unwrap();
    found
}

/// A disk image attached as a loop device: our USB stick. Detached on drop.
pub struct Stick {
    pub image: PathBuf,
    pub loop_dev: String,
    pub partitioned: bool,
}

impl Stick {
    /// `losetup -P` then `partx -a`: the disk appears first, its partition a moment later,
    /// as on real hardware.
    pub fn plug(image: &Path, partitioned: bool) -> Self {
        let out = run_ok(
            Command::new("losetup")
                .args(["--find", "--show", "--partscan"])
                .arg(image),
        );
        let loop_dev = out.trim().to_owned();
        if partitioned {
            // partx fails harmlessly when the kernel already added the partitions.
            let _ = Command::new("partx").args(["-a", &loop_dev]).output();
        }
        Self {
            image: image.into(),
            loop_dev,
            partitioned,
        }
    }

    /// The device that carries BitLocker: the first partition, or the whole disk.
    pub fn volume(&self) -> String {
        if self.partitioned {
            format!("{}p1", self.loop_dev)
        } else {
            self.loop_dev.clone()
        }
    }

    pub fn unplug(&mut self) {
        if !self.loop_dev.is_empty() {
            let _ = Command::new("losetup")
                .args(["-d", &self.loop_dev])
                .output();
            self.loop_dev.clear();
        }
    }
}

impl Drop for Stick {
    fn drop(&mut self) {
        self.unplug();
    }
}

/// Builds a stick with `make-bitlocker-stick` from a fixture, with a file inside, and returns
/// a fresh copy of it in `dir`. Each kind of stick is built once into [`stick_cache`]; the
/// kernel-path VM gets its sticks from there, made on the host beforehand.
pub fn make_stick(dir: &Path, source: &str, fs: &str, label: &str, table: &str) -> PathBuf {
    // Labels may hold anything (tests/fault_labels.rs): the file name keeps what is safe,
    // and a hash of the rest tells them apart.
    let safe: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    let hash = label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let cached = stick_cache().join(format!("{source}-{fs}-{table}-{safe}-{hash:016x}.img"));
    if !cached.exists() {
        build_stick(&cached, source, fs, label, table);
    }
    let out = dir.join(format!("stick-{fs}-{table}.img"));
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&cached)
            .arg(&out),
    );
    out
}

/// Where built sticks are kept (under target/, shared with the VM).
pub fn stick_cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sticks");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn build_stick(out: &Path, source: &str, fs: &str, label: &str, table: &str) {
    build_stick_with(out, source, fs, label, table, &[]);
}

/// [`build_stick`] with `extra` files (name, contents) in the root beside `hello.txt`.
fn build_stick_with(
    out: &Path,
    source: &str,
    fs: &str,
    label: &str,
    table: &str,
    extra: &[(&str, Vec<u8>)],
) {
    let work = scratch(&format!("build-{fs}-{table}"));
    let payload = work.join("payload");
    let _ = std::fs::remove_dir_all(&payload);
    std::fs::create_dir_all(&payload).unwrap();
    std::fs::write(payload.join("hello.txt"), "hello from windows\n").unwrap();
    for (name, contents) in extra {
        std::fs::write(payload.join(name), contents).unwrap();
    }
    let partial = out.with_extension("part");
    let mut cmd = std::process::Command::new(shared_dir().join("tools/make-bitlocker-stick"));
    cmd.arg("-s")
        .arg(fixtures().join(format!("{source}.img")))
        .args(["-p", "anaconda", "-t", fs, "-L", label, "-P", table, "-f"])
        .arg(&payload)
        .arg("-o")
        .arg(&partial);
    let result = cmd.output().unwrap();
    let printed = String::from_utf8_lossy(&result.stdout);
    // The tool prints the image's path when it has written it. For exFAT with -f it then
    // fails in its own cleanup (it detaches its inner loop device twice) and exits 1.
    let written = printed.lines().last() == Some(partial.to_str().unwrap()) && partial.exists();
    assert!(
        result.status.success() || written,
        "{cmd:?} failed: {printed}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::rename(&partial, out).unwrap();
    let _ = std::fs::remove_dir_all(&work);
}

pub fn is_mounted(path: &Path) -> bool {
    guilocker::daemon::mounts::mounted_at(path).is_some()
}

/// Pids of the engines serving `device`: dislocker, or `guilocker engine`.
pub fn engines_for(device: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let is_dislocker = args.first().is_some_and(|a| a.ends_with(b"dislocker"));
            let is_native = args.get(1) == Some(&&b"engine"[..]);
            ((is_dislocker || is_native) && args.contains(&device.as_bytes())).then_some(pid)
        })
        .collect()
}

/// The config line that picks an engine, for [`TestDaemon::start_with`].
pub fn engine_config(engine: Engine) -> String {
    format!("engine = \"{}\"\n", engine.as_str())
}

/// The engines the stick and fixture tests run on: ours, and dislocker when forced.
pub const ENGINES: [Engine; 2] = [Engine::Native, Engine::Dislocker];

pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).unwrap();
    format!("{:x}", hasher.finalize())
}

/// Saves a screenshot of X window `window` as `<target>/screenshots/<name>.png`, with
/// `import` (ImageMagick) run as `import_cmd` (already pointed at the right display).
pub fn screenshot(mut import_cmd: Command, window: &str, name: &str) -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp, so this is <target>/screenshots.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("screenshots");
    std::fs::create_dir_all(&dir).expect("create the screenshot dir");
    let path = dir.join(format!("{name}.png"));
    // What was waited for is in the widget tree; give GTK its next frame to paint it.
    // Cosmetic only: nothing is decided on the picture.
    std::thread::sleep(Duration::from_millis(150));
    let status = import_cmd
        .args(["-window", window])
        .arg(&path)
        .status()
        .expect("run import");
    assert!(status.success(), "screenshot {name} failed");
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "screenshot: {}", path.display());
    path
}

/// Types `text` into X window `window` as a person would, one key after another, with
/// xdotool (`xdotool`, already pointed at the display). The text goes on xdotool's stdin,
/// never in its argv, where any process could read it.
pub fn type_text(mut xdotool: Command, window: &str, text: &str) {
    use std::io::Write;
    let mut child = xdotool
        .args(["type", "--window", window, "--delay", "30", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run xdotool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "xdotool type failed");
}

/// The engine's FUSE mountpoint that holds the decrypted view; `None` under dm-crypt, whose
/// view is a block device in /dev/mapper.
pub fn view_dir(info: &DeviceInfo) -> Option<PathBuf> {
    if info.engine == Some(Engine::DmCrypt) {
        return None;
    }
    let decrypted = info.decrypted.as_deref().expect("a decrypted view");
    Some(Path::new(decrypted).parent().unwrap().to_owned())
}

/// No `guilocker-*` dm-crypt mapping is left.
pub fn assert_no_mapping() {
    let left = guilocker::daemon::dmcrypt::mappings();
    assert!(left.is_empty(), "mappings left behind: {left:?}");
}

/// Is this the VM the kernel-path tests run in (tests/kernel_vm.rs sets it)?
pub fn in_kernel_vm() -> bool {
    std::env::var_os(KERNEL_VM_ENV).is_some()
}

pub const KERNEL_VM_ENV: &str = "GUILOCKER_KERNEL_VM";

/// Why a test is left to the VM run.
pub const IN_THE_VM: &str =
    "kernel path: runs inside a VM with Debian's kernel (tests/kernel_vm.rs)";

/// Waits until `done()` holds, re-checking it whenever the kernel announces a block-device
/// change (a uevent), or fails at the deadline. For state the kernel changes without telling
/// the daemon's clients: a deferred dm-crypt close completes at the mapping's last close.
pub fn wait_for_block_change(what: &str, done: impl FnMut() -> bool) {
    assert!(
        guilocker::daemon::watch::until_block_change(WAIT, done),
        "timed out waiting for {what}"
    );
}

/// SIGKILL to every process in `pids`, then waits (on their pidfds) until all have exited:
/// what systemd does to a crashed unit's processes before it starts the unit again.
pub fn kill_and_wait(pids: &[i32]) {
    let fds: Vec<_> = pids
        .iter()
        .filter_map(|&pid| {
            let pid = nix::unistd::Pid::from_raw(pid);
            let fd = guilocker::process::pidfd_open(pid).ok()?;
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
            Some(fd)
        })
        .collect();
    wait_pidfds(&fds);
}

/// Waits on their pidfds until every process in `pids` has exited (one already gone counts).
pub fn wait_exit(pids: &[i32]) {
    let fds: Vec<_> = pids
        .iter()
        .filter_map(|&pid| guilocker::process::pidfd_open(nix::unistd::Pid::from_raw(pid)).ok())
        .collect();
    wait_pidfds(&fds);
}

fn wait_pidfds(fds: &[std::os::fd::OwnedFd]) {
    use std::os::fd::AsFd;
    let deadline = Instant::now() + WAIT;
    for fd in fds {
        let mut set = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = nix::poll::PollTimeout::try_from(left.as_millis() as i32).unwrap();
        assert_eq!(
            nix::poll::poll(&mut set, ms).unwrap_or(0),
            1,
            "a process did not exit within {WAIT:?}"
        );
    }
}

/// The Korean locale, for the translation tests. Where it is missing (Debian: `localedef -i
/// ko_KR -f UTF-8 ko_KR.UTF-8`, which tests/run.sh does), says why and returns `false`;
/// fails under CI=true.
pub fn korean_locale_present() -> bool {
    let listed = Command::new("locale")
        .arg("-a")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let present = listed
        .lines()
        .any(|l| l.eq_ignore_ascii_case("ko_KR.utf8") || l.eq_ignore_ascii_case("ko_KR.UTF-8"));
    if !present {
        let reason =
            "the ko_KR.UTF-8 locale is not generated (localedef -i ko_KR -f UTF-8 ko_KR.UTF-8)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipping: {reason}");
    }
    present
}

/// Compiles every po/LANG.po into `dest`/LANG/LC_MESSAGES/guilocker.mo with msgfmt, as
/// packaging/lib.sh's compile_translations does for an install; `dest` becomes readable
/// by everyone (the desktop tests run the agent as another user).
pub fn compile_catalogs(dest: &Path) {
    let po_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("po");
    for entry in std::fs::read_dir(&po_dir).expect("read po/") {
        let po = entry.expect("po/ entry").path();
        if po.extension().and_then(|e| e.to_str()) != Some("po") {
            continue;
        }
        let lang = po.file_stem().unwrap().to_string_lossy().into_owned();
        let dir = dest.join(&lang).join("LC_MESSAGES");
        std::fs::create_dir_all(&dir).expect("create the catalog dir");
        run_ok(
            Command::new("msgfmt")
                .arg("--check")
                .arg("-o")
                .arg(dir.join("guilocker.mo"))
                .arg(&po),
        );
    }
    run_ok(Command::new("chmod").arg("-R").arg("a+rX").arg(dest));
}

/// The translations compiled once for this test process (tests run in parallel: a catalog
/// rewritten under a running program would read as none).
pub fn catalogs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("locale-{}", std::process::id()));
        compile_catalogs(&dir);
        dir
    })
}
