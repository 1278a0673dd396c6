//! The whole desktop, end to end: an X server (Xvfb), a session bus, a notification server
//! (notification-daemon) and the login agent, all as the ordinary user `guilocker-test`;
//! the root daemon; a BitLocker stick on a loop device. xdotool types into the dialog the
//! agent shows, AT-SPI reads what it says, dbus-monitor sees the notifications.
//!
//! Needs root, Xvfb, xdotool, dbus-daemon, dbus-monitor, notification-daemon, ImageMagick,
//! python3 with gi + Atspi, dislocker, ntfs-3g and the fixtures (Debian: xvfb xdotool dbus-bin
//! dbus-daemon notification-daemon imagemagick python3-gi gir1.2-atspi-2.0 at-spi2-core
//! dislocker ntfs-3g). Without them the tests print why and pass, except with CI=true.
//! Screenshots go to target/screenshots/e2e-*.png.

mod common;

use common::atspi::Node;
use common::*;
use guilocker::client::Events;
use guilocker::protocol::{DeviceState, EventKind};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

const TITLE: &str = "Unlock BitLocker drive";
/// The same window in Korean (po/ko.po).
const TITLE_KO: &str = "BitLocker 드라이브 잠금 해제";
const SOURCE: &str = "bitlk-aes-xts-128";
const PASSWORD: &str = "anaconda";
/// The test user's login password, which unlocks their login keyring.
const KEYRING_PASSWORD: &str = "login-pässword";
const LABEL: &str = "DESKTOP";
const CLEAR_LABEL: &str = "CLEAR";
const NOTIFICATION_DAEMON: &str = "/usr/lib/notification-daemon/notification-daemon";
/// Python with gi (Debian's; a pyenv one earlier in PATH usually has none).
const PYTHON: &str = "/usr/bin/python3";
/// For anything on screen: a cold GTK start on a busy two-core machine.
const GUI_WAIT: Duration = Duration::from_secs(30);
/// Between two looks at something that sends no event (the X window list, AT-SPI).
const POLL: Duration = Duration::from_millis(20);
const PROGRAMS: &[&str] = &[
    "Xvfb",
    "xdotool",
    "dbus-daemon",
    "dbus-monitor",
    "import",
    "runuser",
    "dislocker",
    "ntfs-3g",
    "mkntfs",
    "losetup",
    "partx",
    "sfdisk",
    "msgfmt",
];

/// Straight to stderr: the harness would swallow eprintln! of a passing test.
fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// What these tests need beyond `common::prerequisites`, then that.
fn desktop_prerequisites() -> bool {
    let mut missing = Vec::new();
    if !Path::new(NOTIFICATION_DAEMON).exists() {
        missing.push(NOTIFICATION_DAEMON.to_owned());
    }
    let atspi = "import gi; gi.require_version('Atspi', '2.0'); from gi.repository import Atspi";
    let has_atspi = Command::new(PYTHON)
        .args(["-c", atspi])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_atspi {
        missing.push("python3 Atspi (python3-gi, gir1.2-atspi-2.0)".to_owned());
    }
    if !missing.is_empty() {
        let why = format!("desktop test needs {}", missing.join(", "));
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why} (CI=true: not skipping)"
        );
        note(&format!("SKIPPED: {why}"));
        return false;
    }
    prerequisites(PROGRAMS)
}

/// Scratch directories of this file's earlier runs (`desktop-*-<pid>` under target/tmp,
/// two copies of the binaries and a stick image each): removed once their process is gone,
/// unless something is still mounted in them.
fn remove_stale_scratch() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let Ok(entries) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("desktop-")
                .and_then(|rest| rest.rsplit_once('-'))
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let in_use = Path::new(&format!("/proc/{pid}")).exists()
                || mounts.contains(&*path.to_string_lossy());
            if !in_use {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    });
}

/// `guilocker` and `guilocker-dialog` side by side where the test user may run them: the
/// agent starts the dialog from next to its own executable.
fn user_bins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("desktop-bin");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, from) in [
            ("guilocker", env!("CARGO_BIN_EXE_guilocker")),
            ("guilocker-dialog", env!("CARGO_BIN_EXE_guilocker-dialog")),
        ] {
            let to = dir.join(name);
            std::fs::copy(from, &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // Where an installed guilocker finds its catalogs: share/locale beside its prefix.
        common::compile_catalogs(&dir.join("share/locale"));
        dir
    })
}

/// One NTFS stick image (MBR) for all tests. Made before any daemon of ours runs: the tool
/// attaches the bare BitLocker volume for a moment, and an agent would ask about it.
fn stick_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| make_stick(&scratch("desktop-sticks"), SOURCE, "ntfs", LABEL, "mbr"))
}

/// A stick whose BitLocker protection is suspended (a clear key), with an NTFS filesystem
/// labelled CLEAR, made the way make-bitlocker-stick makes its sticks (which needs a
/// password): dislocker with the clear key, mkntfs through it, lock again.
fn clear_key_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = scratch("desktop-clear-key");
        let image = dir.join("clear.img");
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(fixtures().join("bitlk-aes-xts-128-clearkey-only.img"))
                .arg(&image),
        );
        let view = dir.join("view");
        std::fs::create_dir_all(&view).unwrap();
        let stick = Stick::plug(&image, false);
        // Without FUSE's -f, dislocker returns once its view is mounted.
        run_ok(
            Command::new("dislocker")
                .args(["-V", &stick.volume(), "-c", "--"])
                .arg(&view),
        );
        run_ok(
            Command::new("mkntfs")
                .args(["-q", "-F", "-f", "-L", CLEAR_LABEL])
                .arg(view.join("dislocker-file")),
        );
        run_ok(Command::new("umount").arg(&view));
        drop(stick);
        image
    })
}

fn recovery_key() -> String {
    images()
        .into_iter()
        .find(|i| i.name == SOURCE)
        .and_then(|i| i.get("RP").map(str::to_owned))
        .expect("the fixture's recovery key in images.conf")
}

/// Lines from a child's output, kept, so a test can wait for one with a deadline and look
/// back at all of them.
struct Lines {
    what: &'static str,
    rx: Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn spawn(what: &'static str, stream: impl Read + Send + 'static, echo: bool) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if echo {
                    note(&format!("  {what}| {line}"));
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            what,
            rx,
            seen: Vec::new(),
        }
    }

    /// Everything so far, without waiting.
    fn now(&mut self) -> &[String] {
        self.seen.extend(self.rx.try_iter());
        &self.seen
    }

    /// Waits until `probe` finds something in the lines so far.
    fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&[String]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            self.seen.extend(self.rx.try_iter());
            if let Some(found) = probe(&self.seen) {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "timed out waiting for {what} from {}; it said:\n{}",
                    self.what,
                    self.seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{} ended while waiting for {what}; it said:\n{}",
                    self.what,
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// Pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid …: comm may hold spaces and parentheses.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

/// Waits for a child with a deadline, without panicking (for drops).
fn wait_quietly(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            _ => return None,
        }
    }
}

/// A program run as the test user through `runuser`. Stopped (SIGTERM to the program
/// itself, so runuser just reports its exit) on drop.
struct UserProcess {
    name: &'static str,
    runuser: Child,
}

impl UserProcess {
    fn spawn(name: &'static str, mut cmd: Command) -> Self {
        let runuser = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self { name, runuser }
    }

    /// The program's own pid (runuser forks it, then waits).
    fn pid(&self) -> u32 {
        let deadline = Instant::now() + GUI_WAIT;
        loop {
            if let Some(&pid) = children_of(self.runuser.id()).first() {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start under runuser",
                self.name
            );
            thread::sleep(POLL);
        }
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        wait_quietly(&mut self.runuser, timeout)
            .unwrap_or_else(|| panic!("{} did not exit within {timeout:?}", self.name))
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.runuser.try_wait() {
            return;
        }
        // Signalling runuser instead would make it wait 2 s and then SIGKILL the program.
        let targets = children_of(self.runuser.id());
        for pid in &targets {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
        }
        if targets.is_empty() {
            let _ = kill(Pid::from_raw(self.runuser.id() as i32), Signal::SIGTERM);
        }
        if wait_quietly(&mut self.runuser, Duration::from_secs(10)).is_none() {
            note(&format!("{} ignored SIGTERM; killing it", self.name));
            for pid in children_of(self.runuser.id()) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let _ = self.runuser.kill();
            let _ = self.runuser.wait();
        }
    }
}

impl Drop for UserProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The test user's desktop session: X server, session bus, notification server, a
/// dbus-monitor on that bus and, if asked for, GNOME Keyring. Everything is stopped on drop,
/// in reverse order.
struct Desktop {
    uid: u32,
    /// The dialog's title in the session's language.
    title: &'static str,
    runtime: PathBuf,
    display: String,
    /// The session's environment, for everything run in it.
    env: Vec<(String, String)>,
    monitor_out: Lines,
    keyring: Option<UserProcess>,
    notifications: Option<UserProcess>,
    monitor: Option<UserProcess>,
    bus: Option<UserProcess>,
    xvfb: Option<Child>,
}

impl Desktop {
    /// With `keyring`, gnome-keyring-daemon serves the Secret Service, its login keyring
    /// made and unlocked with [`KEYRING_PASSWORD`] as a login would.
    ///
    /// `lang` is the session's LANG; the agent passes it on to the dialogs it starts.
    fn start(uid: u32, keyring: bool, lang: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let runtime = std::env::temp_dir().join(format!(
            "guilocker-e2e-desktop-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&runtime);
        std::fs::create_dir(&runtime).unwrap();
        let gid = nix::unistd::User::from_uid(uid.into())
            .unwrap()
            .unwrap()
            .gid;
        nix::unistd::chown(&runtime, Some(uid.into()), Some(gid)).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();

        // -displayfd: a display number of its own, said once the server takes clients.
        // -ac: the test user's programs may connect.
        let mut xvfb = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1024x768x24"])
            .args(["-noreset", "-ac", "-nolisten", "tcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb");
        let number = first_line(xvfb.stdout.take().unwrap());
        let display = format!(":{}", number.trim());
        let rt = runtime.display().to_string();
        let mut desktop = Self {
            uid,
            title: if lang.starts_with("ko") {
                TITLE_KO
            } else {
                TITLE
            },
            env: vec![
                ("LANG".into(), lang.into()),
                ("DISPLAY".into(), display.clone()),
                ("XDG_RUNTIME_DIR".into(), rt.clone()),
                // The user has no home; keep GTK's and GLib's files in the runtime dir.
                ("XDG_DATA_HOME".into(), rt.clone()),
                ("XDG_CONFIG_HOME".into(), rt.clone()),
                ("XDG_CACHE_HOME".into(), rt.clone()),
                ("GDK_BACKEND".into(), "x11".into()),
                ("GSK_RENDERER".into(), "cairo".into()),
                ("GDK_DEBUG".into(), "gl-disable".into()),
                ("GUILOCKER_LOG".into(), "debug".into()),
            ],
            runtime,
            display,
            monitor_out: Lines::spawn("dbus-monitor", std::io::empty(), false),
            keyring: None,
            notifications: None,
            monitor: None,
            bus: None,
            xvfb: Some(xvfb),
        };

        let mut bus = desktop.as_user(&[]);
        bus.arg(which("dbus-daemon").unwrap())
            .args(["--session", "--nofork", "--print-address=1"])
            .arg(format!("--address=unix:path={rt}/bus"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut bus = UserProcess::spawn("dbus-daemon", bus);
        let address = first_line(bus.runuser.stdout.take().unwrap());
        assert!(address.starts_with("unix:"), "dbus-daemon said {address:?}");
        desktop.bus = Some(bus);
        desktop
            .env
            .push(("DBUS_SESSION_BUS_ADDRESS".into(), address.trim().to_owned()));

        // The monitor first, so it sees the notification server take its name.
        let mut monitor = desktop.as_user(&[]);
        monitor
            .arg(which("dbus-monitor").unwrap())
            .arg("interface='org.freedesktop.Notifications'")
            .arg("type='signal',member='NameOwnerChanged',arg0='org.freedesktop.Notifications'")
            .arg("type='signal',member='NameOwnerChanged',arg0='org.freedesktop.secrets'")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut monitor = UserProcess::spawn("dbus-monitor", monitor);
        desktop.monitor_out = Lines::spawn(
            "dbus-monitor",
            monitor.runuser.stdout.take().unwrap(),
            false,
        );
        desktop.monitor = Some(monitor);
        // It drops its own name when it becomes a monitor.
        desktop
            .monitor_out
            .wait("the monitor to be ready", GUI_WAIT, |lines| {
                lines
                    .iter()
                    .any(|l| l.contains("member=NameLost"))
                    .then_some(())
            });

        let mut server = desktop.as_user(&[("NO_AT_BRIDGE", "1")]);
        server
            .arg(NOTIFICATION_DAEMON)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        desktop.notifications = Some(UserProcess::spawn("notification-daemon", server));
        desktop
            .monitor_out
            .wait("the notification server on the bus", GUI_WAIT, |lines| {
                lines
                    .iter()
                    .any(|l| l.trim() == "string \"org.freedesktop.Notifications\"")
                    .then_some(())
            });
        if keyring {
            desktop.start_keyring();
        }
        desktop
    }

    /// gnome-keyring-daemon as a login starts it: the password on stdin unlocks the login
    /// keyring, or makes it.
    fn start_keyring(&mut self) {
        let mut keyring = self.as_user(&[]);
        keyring
            .arg(which("gnome-keyring-daemon").unwrap())
            .args(["--foreground", "--unlock", "--components=secrets"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut keyring = UserProcess::spawn("gnome-keyring-daemon", keyring);
        let mut stdin = keyring.runuser.stdin.take().unwrap();
        stdin.write_all(KEYRING_PASSWORD.as_bytes()).unwrap();
        drop(stdin);
        self.keyring = Some(keyring);
        self.monitor_out
            .wait("the keyring on the bus", GUI_WAIT, |lines| {
                lines
                    .iter()
                    .any(|l| l.trim() == "string \"org.freedesktop.secrets\"")
                    .then_some(())
            });
    }

    /// A program run as the test user in this session; (exit code, stdout, stderr).
    fn run_as_user(&self, program: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
        output_of(self.as_user(&[]).arg(program).args(args), stdin)
    }

    /// `secret-tool lookup gvfs-luks-uuid GUID`: where GNOME looks for a drive's
    /// passphrase. `None` when nothing is there.
    fn keyring_lookup(&self, guid: &str) -> Option<String> {
        let tool = which("secret-tool").unwrap();
        let (code, out, _) = self.run_as_user(&tool, &["lookup", "gvfs-luks-uuid", guid], "");
        (code == 0).then_some(out)
    }

    /// `guilocker ARGS` as the test user in this session.
    fn guilocker(&self, args: &[&str]) -> (i32, String, String) {
        self.run_as_user(&user_bins().join("guilocker"), args, "")
    }

    /// `runuser -u guilocker-test -- env <session> [extra]`; the program follows.
    fn as_user(&self, extra: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", TEST_USER, "--", "env", "-u", "WAYLAND_DISPLAY"])
            .args(self.env.iter().map(|(k, v)| format!("{k}={v}")))
            .args(extra.iter().map(|(k, v)| format!("{k}={v}")))
            .stdin(Stdio::null());
        cmd
    }

    /// A command on this X display, as root.
    fn x(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DISPLAY", &self.display).stdin(Stdio::null());
        cmd
    }

    fn xdotool(&self, args: &[&str]) -> String {
        let out = self.x("xdotool").args(args).output().expect("run xdotool");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The dialog windows of process `pid` that are on screen.
    fn windows_of(&self, pid: u32) -> Vec<String> {
        let pid = pid.to_string();
        let title = format!("^{}$", self.title);
        self.xdotool(&[
            "search",
            "--all",
            "--onlyvisible",
            "--pid",
            &pid,
            "--name",
            &title,
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
    }

    /// The process that shows a window.
    fn window_pid(&self, window: &str) -> Option<u32> {
        self.xdotool(&["getwindowpid", window]).trim().parse().ok()
    }

    /// Every unlock dialog on screen.
    fn all_dialogs(&self) -> Vec<String> {
        let title = format!("^{}$", self.title);
        self.xdotool(&["search", "--onlyvisible", "--name", &title])
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Polls until process `pid` shows its dialog; returns the window id.
    fn wait_window(&self, pid: u32) -> String {
        poll(&format!("the dialog window of pid {pid}"), || {
            self.windows_of(pid).into_iter().next()
        })
    }

    fn wait_window_gone(&self, window: &str) {
        poll(&format!("window {window} to go"), || {
            (!self.all_dialogs().iter().any(|w| w == window)).then_some(())
        });
    }

    /// Types into a window as a person would, one key after another.
    fn type_text(&self, window: &str, text: &str) {
        common::type_text(self.x("xdotool"), window, text);
    }

    fn key(&self, window: &str, key: &str) {
        let out = self
            .x("xdotool")
            .args(["key", "--window", window, key])
            .output()
            .expect("run xdotool");
        assert!(out.status.success(), "xdotool key {key} failed");
    }

    /// A key that closes the window. xdotool then fails before it releases the key, and a
    /// key left down repeats into the next window that gets the focus: release it.
    fn closing_key(&self, window: &str, key: &str) {
        let _ = self
            .x("xdotool")
            .args(["key", "--window", window, key])
            .output();
        let out = self
            .x("xdotool")
            .args(["keyup", key])
            .output()
            .expect("run xdotool");
        assert!(out.status.success(), "xdotool keyup {key} failed");
    }

    /// What a screen reader sees of process `pid`. Run as the user: it is their session bus.
    fn accessible_tree(&self, pid: u32) -> String {
        let mut python = self.as_user(&[]);
        python.arg(PYTHON);
        common::atspi::tree(python, pid)
    }

    /// Polls the dialog's accessible tree until a node matches.
    fn wait_node(&self, pid: u32, what: &str, matches: impl Fn(&Node) -> bool) {
        common::atspi::wait_node(what, GUI_WAIT, POLL, || self.accessible_tree(pid), matches);
    }

    fn wait_focused(&self, pid: u32, role: &str, name: &str) {
        self.wait_node(pid, &format!("{role} {name:?} focused"), |n| {
            n.role == role && n.name == name && n.is("focused")
        });
    }

    fn screenshot(&self, window: &str, name: &str) -> PathBuf {
        common::screenshot(self.x("import"), window, name)
    }

    /// Notify calls seen so far: (summary, actions).
    fn notifications(&mut self) -> Vec<(String, Vec<String>)> {
        parse_notify_calls(self.monitor_out.now())
    }

    fn wait_notification(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
        self.monitor_out
            .wait(&format!("a notification {what}"), WAIT, |lines| {
                parse_notify_calls(lines)
                    .into_iter()
                    .find(|(summary, _)| pred(summary))
                    .map(|(_, actions)| actions)
            })
    }

    /// Processes of this session that outlived it (services the bus started, such as the
    /// accessibility bus): the test user's, with this session's runtime dir in their
    /// environment.
    fn leftovers(&self) -> Vec<u32> {
        let marker = format!("XDG_RUNTIME_DIR={}", self.runtime.display());
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                use std::os::unix::fs::MetadataExt;
                if std::fs::metadata(e.path()).ok()?.uid() != self.uid || !alive(pid) {
                    return None;
                }
                let environ = std::fs::read(e.path().join("environ")).ok()?;
                environ
                    .split(|b| *b == 0)
                    .any(|v| v == marker.as_bytes())
                    .then_some(pid)
            })
            .collect()
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        drop(self.keyring.take());
        drop(self.notifications.take());
        drop(self.monitor.take());
        drop(self.bus.take());
        if let Some(mut xvfb) = self.xvfb.take() {
            // SIGTERM lets it remove its lock file and socket.
            let _ = kill(Pid::from_raw(xvfb.id() as i32), Signal::SIGTERM);
            if wait_quietly(&mut xvfb, Duration::from_secs(5)).is_none() {
                let _ = xvfb.kill();
                let _ = xvfb.wait();
            }
        }
        // The accessibility bus follows the session bus out, but not at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left = self.leftovers();
        while !left.is_empty() && Instant::now() < deadline {
            thread::sleep(POLL);
            left = self.leftovers();
        }
        for pid in left {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.runtime);
    }
}

/// `(summary, actions)` of each `Notify` method call in dbus-monitor's output. The call's
/// arguments are: app_name, replaces_id, app_icon, summary, body, actions, hints, timeout.
fn parse_notify_calls(lines: &[String]) -> Vec<(String, Vec<String>)> {
    let mut calls = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if !(lines[i].starts_with("method call") && lines[i].contains("member=Notify")) {
            i += 1;
            continue;
        }
        i += 1;
        let mut strings = Vec::new();
        let mut actions = Vec::new();
        let mut depth = 0;
        let mut arg = 0;
        while i < lines.len() && lines[i].starts_with(' ') {
            let line = lines[i].trim();
            if line.starts_with("array [") {
                depth += 1;
            } else if line == "]" {
                depth -= 1;
                if depth == 0 {
                    arg += 1;
                }
            } else if let Some(s) = line.strip_prefix("string \"") {
                let s = s.strip_suffix('"').unwrap_or(s).to_owned();
                if depth == 0 {
                    strings.push(s);
                    arg += 1;
                } else if arg == 5 {
                    actions.push(s);
                }
            } else if depth == 0 {
                arg += 1;
            }
            i += 1;
        }
        if let Some(summary) = strings.get(2) {
            calls.push((summary.clone(), actions));
        }
    }
    calls
}

fn first_line(stream: impl Read) -> String {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

fn poll<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    poll_for(what, GUI_WAIT, POLL, probe)
}

/// `guilocker agent`, as the test user, in the desktop session.
struct Agent {
    process: UserProcess,
    log: Lines,
}

impl Agent {
    fn start(desktop: &Desktop, socket: &Path) -> Self {
        let mut cmd = desktop.as_user(&[]);
        cmd.arg(user_bins().join("guilocker"))
            .arg("agent")
            .arg("--socket")
            .arg(socket)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = UserProcess::spawn("the agent", cmd);
        let log = Lines::spawn("agent", process.runuser.stderr.take().unwrap(), true);
        Self { process, log }
    }

    /// Waits until `count` log lines contain `text`.
    fn wait_lines(&mut self, text: &str, count: usize) {
        self.log
            .wait(&format!("{count} × {text:?}"), WAIT, |lines| {
                (lines.iter().filter(|l| l.contains(text)).count() >= count).then_some(())
            });
    }

    /// Pids of the dialogs the agent started for `dev`, in order.
    fn dialogs_for(lines: &[String], dev: &str) -> Vec<u32> {
        Self::all_dialogs(lines)
            .into_iter()
            .filter(|(d, _)| d == dev)
            .map(|(_, pid)| pid)
            .collect()
    }

    /// Every dialog the agent started: (device, pid). Other tests on this machine may plug
    /// BitLocker sticks too, and this agent asks about them as well.
    fn all_dialogs(lines: &[String]) -> Vec<(String, u32)> {
        let marker = ": asking for the password (dialog pid ";
        lines
            .iter()
            .filter_map(|l| {
                let at = l.find(marker)?;
                let dev = l[..at].rsplit(' ').next()?.to_owned();
                let pid = l[at + marker.len()..].trim_end_matches(')').parse().ok()?;
                Some((dev, pid))
            })
            .collect()
    }

    /// The pid of the `n`th dialog (from 1) the agent started for `dev`.
    fn dialog(&mut self, dev: &str, n: usize) -> u32 {
        self.log
            .wait(&format!("dialog #{n} for {dev}"), GUI_WAIT, |lines| {
                Self::dialogs_for(lines, dev).get(n - 1).copied()
            })
    }

    fn dialog_count(&mut self, dev: &str) -> usize {
        Self::dialogs_for(self.log.now(), dev).len()
    }

    /// Resident memory of the agent process, kB.
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .expect("the agent's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

/// A test's world: desktop session, daemon, agent and the sticks plugged in. Put away in
/// an order that leaves nothing behind: agent, daemon (it unmounts), sticks, desktop.
struct Scene {
    name: &'static str,
    agent: Option<Agent>,
    daemon: TestDaemon,
    events: Events,
    sticks: Vec<Stick>,
    desktop: Desktop,
}

impl Scene {
    fn start(name: &'static str) -> Self {
        Self::start_with(name, false)
    }

    /// With `keyring`: a session with GNOME Keyring (see [`Desktop::start`]).
    fn start_with(name: &'static str, keyring: bool) -> Self {
        Self::start_in(name, keyring, "C.UTF-8")
    }

    /// A session in the locale `lang`.
    fn start_in(name: &'static str, keyring: bool, lang: &str) -> Self {
        remove_stale_scratch();
        let uid = ensure_user(TEST_USER, true);
        stick_image();
        user_bins();
        let desktop = Desktop::start(uid, keyring, lang);
        let daemon = TestDaemon::start(name);
        let events = daemon.events();
        let mut agent = Agent::start(&desktop, &daemon.socket);
        agent.wait_lines("connected to the daemon", 1);
        Self {
            name,
            agent: Some(agent),
            daemon,
            events,
            sticks: Vec::new(),
            desktop,
        }
    }

    fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().unwrap()
    }

    /// Attaches the stick image; returns its BitLocker volume's device and when it was
    /// attached.
    fn plug(&mut self) -> (String, Instant) {
        let attached = Instant::now();
        let stick = Stick::plug(stick_image(), true);
        let dev = stick.volume();
        self.sticks.push(stick);
        (dev, attached)
    }

    /// Attaches another image (no partition table); returns its device.
    fn plug_image(&mut self, image: &Path) -> String {
        let stick = Stick::plug(image, false);
        let dev = stick.volume();
        self.sticks.push(stick);
        dev
    }

    fn unplug(&mut self, dev: &str) {
        let i = self
            .sticks
            .iter()
            .position(|s| s.volume() == dev)
            .expect("a stick of ours");
        self.sticks.remove(i).unplug();
    }

    /// The agent's dialog number `n` for `dev`: its pid and window, once on screen.
    fn dialog(&mut self, dev: &str, n: usize) -> (u32, String) {
        let pid = self.agent().dialog(dev, n);
        let window = self.desktop.wait_window(pid);
        (pid, window)
    }

    /// The first dialog for `dev`, cancelled with Escape as a person would: returns its pid
    /// once the agent has heard it and the window is gone.
    fn cancel_first_dialog(&mut self, dev: &str) -> u32 {
        let (pid, window) = self.dialog(dev, 1);
        self.desktop
            .wait_focused(pid, "password text", "BitLocker password");
        self.desktop.closing_key(&window, "Escape");
        self.agent()
            .wait_lines(&format!("{dev}: the person cancelled"), 1);
        self.desktop.wait_window_gone(&window);
        pid
    }

    /// Waits for `dev` to be mounted for the test user; returns the mountpoint.
    fn wait_mounted(&mut self, dev: &str) -> PathBuf {
        let info = wait_event(&mut self.events, "the volume to be mounted", |k, d| {
            k == EventKind::Changed && d.device == dev && d.state == DeviceState::Mounted
        });
        assert_eq!(info.owner.as_deref(), Some(TEST_USER), "{info:?}");
        let info = self.daemon.device(dev).expect("still listed");
        assert_eq!(info.state, DeviceState::Mounted);
        assert_eq!(info.owner.as_deref(), Some(TEST_USER));
        assert_eq!(info.label.as_deref(), Some(LABEL));
        let mountpoint = PathBuf::from(info.mountpoint.expect("a mountpoint"));
        assert!(
            is_mounted(&mountpoint),
            "{} not mounted",
            mountpoint.display()
        );
        mountpoint
    }

    /// The "unlocked" notification, with its Open and Unmount actions.
    fn expect_unlocked_notification(&mut self) {
        let actions = self
            .desktop
            .wait_notification("saying unlocked", |s| s.contains("unlocked"));
        let (summary, _) = self
            .desktop
            .notifications()
            .into_iter()
            .find(|(s, _)| s.contains("unlocked"))
            .unwrap();
        assert!(summary.contains(LABEL), "summary {summary:?}");
        assert_eq!(actions, ["open", "Open", "unmount", "Unmount"]);
        // The desktop-entry hint, so desktop settings list our notifications.
        let lines = self.desktop.monitor_out.now();
        let hint = lines
            .iter()
            .position(|l| l.trim() == "string \"desktop-entry\"")
            .and_then(|i| lines.get(i + 1))
            .map(|l| l.trim().to_owned());
        assert_eq!(
            hint.as_deref()
                .map(|l| l.ends_with("string \"org.guilocker.Dialog\"")),
            Some(true),
            "{hint:?}"
        );
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        drop(self.agent.take());
        self.daemon.stop();
        self.sticks.clear();
    }
}

#[test]
fn password_unlocks_mounts_and_notifies() {
    let _serial = serial();
    if !desktop_prerequisites() {
        return;
    }
    let mut scene = Scene::start("desktop-password");
    note(&format!(
        "agent idle VmRSS (connected, no drive): {} kB",
        scene.agent().rss_kb()
    ));

    let (dev, attached) = scene.plug();
    let (pid, window) = scene.dialog(&dev, 1);
    note(&format!(
        "attach (losetup) to dialog window mapped: {} ms",
        attached.elapsed().as_millis()
    ));
    scene
        .desktop
        .wait_focused(pid, "password text", "BitLocker password");
    scene.desktop.screenshot(&window, "e2e-initial");

    scene.desktop.type_text(&window, PASSWORD);
    scene.desktop.key(&window, "Return");
    let mountpoint = scene.wait_mounted(&dev);
    scene.desktop.wait_window_gone(&window);
    scene.expect_unlocked_notification();
    note(&format!(
        "{dev} mounted at {}; agent VmRSS after the dialog and notification: {} kB",
        mountpoint.display(),
        scene.agent().rss_kb()
    ));
}

/// Protection suspended (a clear key): the agent opens it without asking, and says so.
#[test]
fn suspended_protection_opens_without_asking() {
    let _serial = serial();
    if !desktop_prerequisites() {
        return;
    }
    let image = clear_key_image();
    let mut scene = Scene::start("desktop-clear");
    let dev = scene.plug_image(image);
    let info = wait_event(&mut scene.events, "the volume to be mounted", |k, d| {
        k == EventKind::Changed && d.device == dev && d.state == DeviceState::Mounted
    });
    assert_eq!(info.owner.as_deref(), Some(TEST_USER));
    assert_eq!(info.label.as_deref(), Some(CLEAR_LABEL));
    scene.agent().wait_lines("protection is suspended", 1);
    assert_eq!(
        scene.agent().dialog_count(&dev),
        0,
        "a dialog was shown for {dev}"
    );
    scene.desktop.wait_notification("saying unlocked", |s| {
        s.contains(CLEAR_LABEL) && s.contains("unlocked")
    });
}

#[test]
fn wrong_password_keeps_the_window_and_says_why() {
    let _serial = serial();
    if !desktop_prerequisites() {
        return;
    }
    let mut scene = Scene::start("desktop-wrong");
    let (dev, _) = scene.plug();
    let (pid, window) = scene.dialog(&dev, 1);
    scene
        .desktop
        .wait_focused(pid, "password text", "BitLocker password");

    scene.desktop.type_text(&window, "not-the-password");
    scene.desktop.key(&window, "Return");
    scene.desktop.wait_node(pid, "the error message", |n| {
        n.role == "label" && n.name == "Wrong password."
    });
    // Ready for the next try, in the same window.
    scene
        .desktop
        .wait_focused(pid, "password text", "BitLocker password");
    assert_eq!(scene.desktop.windows_of(pid), std::slice::from_ref(&window));
    assert_eq!(
        scene.daemon.device(&dev).unwrap().state,
        DeviceState::Locked
    );
    assert!(scene
        .desktop
        .notifications()
        .iter()
        .all(|(s, _)| !s.contains("unlocked")));
    scene.desktop.screenshot(&window, "e2e-wrong-password");

    scene.desktop.type_text(&window, PASSWORD);
    scene.desktop.key(&window, "Return");
    scene.wait_mounted(&dev);
    scene.desktop.wait_window_gone(&window);
    scene.expect_unlocked_notification();
    assert_eq!(scene.agent().dialog_count(&dev), 1, "one dialog throughout");
}

/// A Korean session: the agent passes its locale to the dialog, which asks in Korean, says a
/// wrong password is wrong in Korean, and the notification is Korean too.
#[test]
fn a_korean_session_is_asked_and_told_in_korean() {
    let _serial = serial();
    if !desktop_prerequisites() || !korean_locale_present() {
        return;
    }
    let mut scene = Scene::start_in("desktop-korean", false, "ko_KR.UTF-8");
    let (dev, _) = scene.plug();
    // Found by its Korean title: the dialog had the agent's LANG.
    let (pid, window) = scene.dialog(&dev, 1);
    scene
        .desktop
        .wait_focused(pid, "password text", "BitLocker 비밀번호");
    scene.desktop.type_text(&window, "not-the-password");
    scene.desktop.key(&window, "Return");
    scene
        .desktop
        .wait_node(pid, "the Korean error message", |n| {
            n.role == "label" && n.name == "비밀번호가 틀렸습니다."
        });
    scene
        .desktop
        .screenshot(&window, "e2e-korean-wrong-password");

    scene.desktop.type_text(&window, PASSWORD);
    scene.desktop.key(&window, "Return");
    scene.wait_mounted(&dev);
    scene.desktop.wait_window_gone(&window);
    let actions = scene
        .desktop
        .wait_notification("saying unlocked, in Korean", |s| {
            s.contains(LABEL) && s.contains("잠금 해제됨")
        });
    assert_eq!(actions, ["open", "열기", "unmount", "마운트 해제"]);
}

#[test]
fn recovery_key_chosen_by_keyboard_unlocks() {
    let _serial = serial();
    if !desktop_prerequisites() {
        return;
    }
    let key = recovery_key();
    let mut scene = Scene::start("desktop-recovery");
    let (dev, _) = scene.plug();
    let (pid, window) = scene.dialog(&dev, 1);
    scene
        .desktop
        .wait_focused(pid, "password text", "BitLocker password");

    // "Recovery _key": its mnemonic switches the method and focuses the key entry.
    scene.desktop.key(&window, "alt+k");
    scene
        .desktop
        .wait_focused(pid, "text", "BitLocker recovery key");
    scene.desktop.type_text(&window, &key);
    scene.desktop.wait_node(pid, "the key accepted", |n| {
        n.role == "label" && n.name == "All 8 groups are valid."
    });
    scene.desktop.screenshot(&window, "e2e-recovery");
    scene.desktop.key(&window, "Return");
    scene.wait_mounted(&dev);
    scene.desktop.wait_window_gone(&window);
    scene.expect_unlocked_notification();
}

/// `guilocker open` (the applications menu's "BitLocker Drives"): a drive the agent will not
/// ask about again (here: its dialog was cancelled; in the USB VM, a disk inside the machine)
/// is asked about on demand, in the same dialog, and opened; the command returns once done.
#[test]
fn open_from_the_menu_asks_again_and_unlocks() {
    let _serial = serial();
    if !desktop_prerequisites() {
        return;
    }
    let mut scene = Scene::start("desktop-open");
    let (dev, _) = scene.plug();
    scene.cancel_first_dialog(&dev);

    // Nothing named and nothing else locked: this stick is the one asked about.
    let mut cmd = scene.desktop.as_user(&[]);
    cmd.arg(user_bins().join("guilocker"))
        .args(["open", "--socket"])
        .arg(&scene.daemon.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut open = UserProcess::spawn("guilocker open", cmd);
    let mut log = Lines::spawn("open", open.runuser.stderr.take().unwrap(), true);
    let marker = format!("{dev}: asking for the password (dialog pid ");
    let dialog: u32 = log.wait("the open command's dialog", GUI_WAIT, |lines| {
        lines.iter().find_map(|l| {
            let at = l.find(&marker)?;
            l[at + marker.len()..].trim_end_matches(')').parse().ok()
        })
    });
    let window = scene.desktop.wait_window(dialog);
    scene
        .desktop
        .wait_focused(dialog, "password text", "BitLocker password");
    scene.desktop.type_text(&window, PASSWORD);
    scene.desktop.key(&window, "Return");
    let mountpoint = scene.wait_mounted(&dev);
    scene.desktop.wait_window_gone(&window);
    let status = open.wait(WAIT);
    assert!(status.success(), "guilocker open: {status}");
    assert_eq!(
        scene.agent().dialog_count(&dev),
        1,
        "the login agent asked again"
    );
    note(&format!(
        "{dev} opened on demand at {}",
        mountpoint.display()
    ));

    // Now nothing is locked: said in one line, and as a notification for the menu's sake.
    let (code, _, err) =
        scene
            .desktop
            .guilocker(&["open", "--socket", scene.daemon.socket.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim(), "guilocker: no locked BitLocker drive to open");
    scene
        .desktop
        .wait_notification("saying nothing to open", |s| {
            s.contains("No BitLocker drive")
        });
}

/// Escape cancels, and the agent does not ask again about that stick while it stays
/// plugged in; unplugging a stick closes its open dialog; plugging it in again asks again.
#[test]
fn cancel_holds_until_replug_and_unplug_closes_the_dialog() {
    let _serial = serial();
    if !desktop_prerequisites() {
        return;
    }
    let mut scene = Scene::start("desktop-cancel");
    let (first, _) = scene.plug();
    let pid = scene.cancel_first_dialog(&first);
    poll("the cancelled dialog's process to end", || {
        (!alive(pid)).then_some(())
    });

    // A second stick. The agent handles the daemon's events one at a time, in order: once
    // it shows this stick's dialog, it has handled everything that came before, and had it
    // meant to ask about the first stick again, it would have. Then a second more, for
    // anything slower (a dialog's end reported late), before concluding it will not.
    let (second, _) = scene.plug();
    let (second_pid, second_window) = scene.dialog(&second, 1);
    // On screen too: every dialog shown belongs to a dialog process the agent started for
    // another device.
    let quiet_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet_until {
        assert_eq!(scene.agent().dialog_count(&first), 1, "asked again");
        let others: Vec<u32> = Agent::all_dialogs(scene.agent().log.now())
            .into_iter()
            .filter(|(dev, _)| *dev != first)
            .map(|(_, pid)| pid)
            .collect();
        for window in scene.desktop.all_dialogs() {
            let shown_by = scene.desktop.window_pid(&window);
            assert!(
                shown_by.is_some_and(|p| others.contains(&p)),
                "dialog window {window} of pid {shown_by:?} is not for another stick"
            );
        }
        thread::sleep(POLL);
    }
    assert_eq!(
        scene.desktop.windows_of(second_pid),
        std::slice::from_ref(&second_window)
    );

    // Unplugged while its dialog is open: the dialog goes away by itself.
    scene.unplug(&second);
    scene.desktop.wait_window_gone(&second_window);
    poll("the second dialog's process to end", || {
        (!alive(second_pid)).then_some(())
    });

    // Out and in again: a new appearance, a new dialog (under whichever name it gets).
    scene.unplug(&first);
    wait_event(&mut scene.events, "the first stick to go", |k, d| {
        k == EventKind::Removed && d.device == first
    });
    let (again, _) = scene.plug();
    let n = scene.agent().dialog_count(&again) + 1;
    let (again_pid, again_window) = scene.dialog(&again, n);
    assert_ne!(again_pid, pid);
    scene.unplug(&again);
    scene.desktop.wait_window_gone(&again_window);
}

#[test]
fn one_agent_per_session_and_it_outlives_a_daemon_restart() {
    let _serial = serial();
    if !desktop_prerequisites() {
        return;
    }
    let mut scene = Scene::start("desktop-restart");

    let mut second = scene.desktop.as_user(&[]);
    second
        .arg(user_bins().join("guilocker"))
        .arg("agent")
        .arg("--socket")
        .arg(&scene.daemon.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut second = UserProcess::spawn("a second agent", second);
    let mut stderr = String::new();
    second
        .runuser
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = second.wait(WAIT);
    assert_eq!(status.code(), Some(1), "second agent: {stderr}");
    assert!(stderr.contains("already running"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    // Same socket path; the daemon's directory is even removed and made again in between,
    // as systemd's RuntimeDirectory= does.
    assert_eq!(scene.daemon.stop(), Some(0));
    scene.agent().wait_lines("the daemon went away", 1);
    let restarted = Instant::now();
    scene.daemon = TestDaemon::start(scene.name);
    let listening = restarted.elapsed();
    scene.agent().wait_lines("connected to the daemon", 2);
    let reconnected = restarted.elapsed();
    note(&format!(
        "daemon restart: listening after {} ms, agent reconnected after {} ms",
        listening.as_millis(),
        reconnected.as_millis()
    ));
    // Far below the agent's 30 s safety net: it was woken by the socket appearing.
    assert!(
        reconnected - listening < Duration::from_secs(10),
        "{reconnected:?}"
    );
    scene.events = scene.daemon.events();

    let (dev, _) = scene.plug();
    let (pid, _window) = scene.dialog(&dev, 1);
    scene
        .desktop
        .wait_focused(pid, "password text", "BitLocker password");
}

/// What the keyring tests need beyond the desktop's.
fn keyring_prerequisites() -> bool {
    desktop_prerequisites() && prerequisites(&["gnome-keyring-daemon", "secret-tool"])
}

/// The volume GUID of the stick (the fixture's: making a stick keeps its BitLocker volume).
fn stick_guid(scene: &Scene) -> String {
    let image = fixtures().join(format!("{SOURCE}.img"));
    let (code, out, err) =
        scene
            .daemon
            .cli(None, &["inspect", "--json", image.to_str().unwrap()], "");
    assert_eq!(code, 0, "inspect: {err}");
    let volume: serde_json::Value = serde_json::from_str(&out).unwrap();
    volume["guid"].as_str().expect("a GUID").to_owned()
}

/// After "Remember": the dialog stores once the agent says the drive opened, then ends; the
/// password is where GNOME looks, and `guilocker remembered` lists it as `kept`.
fn assert_remembered(scene: &Scene, pid: u32, guid: &str, kept: &str) {
    poll("the dialog to end", || (!alive(pid)).then_some(()));
    assert_eq!(
        scene.desktop.keyring_lookup(guid).as_deref(),
        Some(PASSWORD)
    );
    let (code, listed, err) = scene.desktop.guilocker(&["remembered"]);
    assert_eq!(code, 0, "remembered: {err}");
    let line = format!("{guid}  {kept:<12}  BitLocker password for ‘{LABEL}’");
    assert!(listed.contains(&line), "{listed}");
}

/// Waits for the dialog process `pid` to end, and checks it never showed a window.
fn assert_ends_without_a_window(desktop: &Desktop, pid: u32) {
    poll(&format!("dialog {pid} to end"), || {
        assert!(
            desktop.windows_of(pid).is_empty(),
            "dialog {pid} showed a window"
        );
        (!alive(pid)).then_some(())
    });
}

/// "Remember forever" keeps the password where GNOME keeps one; with it, the stick opens on
/// the next plug with no window, and the notification says how; `forget` by device name
/// removes it.
#[test]
fn remembered_password_opens_the_next_plug_without_asking() {
    let _serial = serial();
    if !keyring_prerequisites() {
        return;
    }
    let mut scene = Scene::start_with("desktop-keyring", true);
    let guid = stick_guid(&scene);
    let (dev, _) = scene.plug();
    let (pid, window) = scene.dialog(&dev, 1);
    scene
        .desktop
        .wait_focused(pid, "password text", "BitLocker password");
    scene.desktop.type_text(&window, PASSWORD);
    scene.desktop.key(&window, "alt+e");
    scene
        .desktop
        .wait_node(pid, "“Remember forever” chosen", |n| {
            n.role == "check box" && n.name == "Remember forever" && n.is("checked")
        });
    scene.desktop.screenshot(&window, "e2e-remember-forever");
    scene.desktop.key(&window, "alt+u");
    scene.wait_mounted(&dev);
    scene.desktop.wait_window_gone(&window);
    assert_remembered(&scene, pid, &guid, "forever");

    // Put away, out and in again: the remembered password opens it.
    let (code, _, err) = scene.daemon.cli(None, &["unmount", &dev], "");
    assert_eq!(code, 0, "unmount: {err}");
    scene.unplug(&dev);
    wait_event(&mut scene.events, "the stick to go", |k, d| {
        k == EventKind::Removed && d.device == dev
    });
    let (again, _) = scene.plug();
    let n = scene.agent().dialog_count(&again) + 1;
    let pid = scene.agent().dialog(&again, n);
    scene.wait_mounted(&again);
    assert_ends_without_a_window(&scene.desktop, pid);
    scene
        .agent()
        .wait_lines("trying the secret remembered in the keyring", 1);
    scene
        .desktop
        .wait_notification("saying unlocked", |s| s.contains("unlocked"));
    scene
        .desktop
        .monitor_out
        .wait("the notification to say how", WAIT, |lines| {
            lines
                .iter()
                .any(|l| l.contains("Opened with the password remembered in your keyring."))
                .then_some(())
        });

    let socket = scene.daemon.socket.to_str().unwrap().to_owned();
    let (code, out, err) = scene
        .desktop
        .guilocker(&["forget", &again, "--socket", &socket]);
    assert_eq!(code, 0, "forget {again}: {err}");
    assert_eq!(
        out.trim(),
        format!("Forgot 1 remembered secret for {guid}.")
    );
    assert_eq!(scene.desktop.keyring_lookup(&guid), None);
    let (code, _, err) = scene.desktop.guilocker(&["forget", &guid]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        format!("guilocker: {guid}: nothing is remembered for this volume")
    );
}

/// A password GNOME would have stored for this volume, but wrong: tried, removed from the
/// keyring, and the dialog asks, saying why. The right one, kept until logout, goes to the
/// session collection.
#[test]
fn a_remembered_password_that_fails_is_forgotten_and_the_dialog_asks() {
    let _serial = serial();
    if !keyring_prerequisites() {
        return;
    }
    let mut scene = Scene::start_with("desktop-keyring-wrong", true);
    let guid = stick_guid(&scene);
    let tool = which("secret-tool").unwrap();
    let (code, _, err) = scene.desktop.run_as_user(
        &tool,
        &[
            "store",
            "--label=Encryption passphrase for DESKTOP",
            "xdg:schema",
            "org.gnome.GVfs.Luks.Password",
            "gvfs-luks-uuid",
            &guid,
        ],
        "not-the-password",
    );
    assert_eq!(code, 0, "secret-tool store: {err}");

    let (dev, _) = scene.plug();
    let (pid, window) = scene.dialog(&dev, 1);
    scene.desktop.wait_node(pid, "why it asks", |n| {
        n.role == "label"
            && n.name
                == "The remembered password did not open the drive and was removed from the keyring."
    });
    assert_eq!(scene.desktop.keyring_lookup(&guid), None);
    scene
        .desktop
        .wait_focused(pid, "password text", "BitLocker password");
    scene.desktop.screenshot(&window, "e2e-remembered-failed");

    scene.desktop.type_text(&window, PASSWORD);
    scene.desktop.key(&window, "alt+l");
    scene
        .desktop
        .wait_node(pid, "“until I log out” chosen", |n| {
            n.role == "check box" && n.name == "Remember until I log out" && n.is("checked")
        });
    scene.desktop.key(&window, "alt+u");
    scene.wait_mounted(&dev);
    assert_remembered(&scene, pid, &guid, "until logout");
}

/// The parser against dbus-monitor's real layout.
#[test]
fn notify_calls_are_parsed() {
    let text = r#"method call time=1.2 sender=:1.5 -> destination=org.freedesktop.Notifications serial=7 path=/org/freedesktop/Notifications; interface=org.freedesktop.Notifications; member=Notify
   string "guilocker"
   uint32 0
   string "guilocker"
   string "‘STICK’ unlocked"
   string "Mounted at /media/u/STICK"
   array [
      string "open"
      string "Open"
      string "unmount"
      string "Unmount"
   ]
   array [
      dict entry(
         string "urgency"
         variant             byte 1
      )
   ]
   int32 10000
method return time=1.3 sender=:1.3 -> destination=:1.5 serial=9 reply_serial=7
   uint32 1"#;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let calls = parse_notify_calls(&lines);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "‘STICK’ unlocked");
    assert_eq!(calls[0].1, ["open", "Open", "unmount", "Unmount"]);
}
