//! Drives the real dialog in a real window under Xvfb: types with xdotool, reads its frames,
//! checks what a screen reader sees (AT-SPI, via tests/atspi_dump.py) and takes screenshots.
//!
//! Needs Xvfb, xdotool, dbus-daemon and python3 with gi + Atspi (Debian: xvfb xdotool
//! dbus-daemon python3-gi gir1.2-atspi-2.0; imagemagick and x11-xserver-utils optional).
//! Without them the tests print why and pass, except with CI=true, where they fail.

mod common;

use common::atspi::Node;
use common::poll_for;
use guilocker::protocol::{
    read_frame, write_frame, DeviceInfo, DeviceState, DialogInput, DialogOutput, ErrorKind,
    UnlockSecret, DIALOG_EXIT_CANCELLED, DIALOG_EXIT_CLOSED, DIALOG_EXIT_NO_DISPLAY,
    DIALOG_EXIT_UNLOCKED,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// Through `guilocker dialog`, as the agent runs it (it execs the GTK binary).
const BIN: &str = env!("CARGO_BIN_EXE_guilocker");
const TITLE: &str = "Unlock BitLocker drive";
const TITLE_KO: &str = "BitLocker 드라이브 잠금 해제";
const GOOD_KEY: &str = "235818-357951-253979-013365-241120-245575-342914-591910";
/// Long enough for a cold start on a busy two-core machine.
const WAIT: Duration = Duration::from_secs(20);

fn python() -> &'static str {
    // Debian's python3 has gi; a pyenv one earlier in PATH usually does not.
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Straight to stderr: the test harness would swallow eprintln! of a passing test.
fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn has(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// `true` when the GUI tests can run; otherwise prints why, and fails on CI.
fn gui_tools_present() -> bool {
    let mut missing = Vec::new();
    for tool in ["Xvfb", "xdotool", "dbus-daemon"] {
        if !has(tool) {
            missing.push(tool.to_owned());
        }
    }
    let atspi = "import gi; gi.require_version('Atspi', '2.0'); from gi.repository import Atspi";
    if !works(python(), &["-c", atspi]) {
        missing.push("python3 Atspi (python3-gi, gir1.2-atspi-2.0)".to_owned());
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("GUI test needs {}", missing.join(", "));
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
    note(&format!("skipping: {reason}"));
    false
}

/// A private X server, session bus and runtime dir, torn down on drop.
struct Desktop {
    xvfb: Child,
    bus: Child,
    display: String,
    bus_address: String,
    /// XDG_RUNTIME_DIR: the accessibility bus puts its socket there, so parallel tests
    /// must not share one.
    runtime_dir: PathBuf,
}

impl Desktop {
    fn start() -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let runtime_dir = std::env::temp_dir().join(format!(
            "guilocker-gui-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&runtime_dir).expect("create XDG_RUNTIME_DIR");
        std::fs::set_permissions(&runtime_dir, std::fs::Permissions::from_mode(0o700))
            .expect("chmod XDG_RUNTIME_DIR");
        // -displayfd picks a free display and tells us once the server accepts clients.
        let mut xvfb = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1024x768x24"])
            .args(["-noreset", "-nolisten", "tcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb");
        let number = first_line(xvfb.stdout.take().expect("Xvfb stdout"));
        let display = format!(":{}", number.trim());
        // Services the bus starts (the accessibility bus) inherit its environment.
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .env("DISPLAY", &display)
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon");
        let bus_address = first_line(bus.stdout.take().expect("dbus stdout"))
            .trim()
            .to_owned();
        let desktop = Self {
            xvfb,
            bus,
            display,
            bus_address,
            runtime_dir,
        };
        desktop.map_umlauts();
        desktop
    }

    /// xdotool can only type characters the keymap has (it remaps a key on the fly, which
    /// races with the client); give ä and ö keys of their own before the dialog starts.
    fn map_umlauts(&self) {
        let Ok(out) = self.command("xmodmap").arg("-pke").output() else {
            note("note: no xmodmap; non-ASCII typing may be unreliable");
            return;
        };
        let free: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(" =")?.strip_prefix("keycode "))
            .map(|k| k.trim().to_owned())
            .collect();
        let codes: Vec<&str> = match free.as_slice() {
            [.., a, b] => vec![a, b],
            _ => vec!["254", "255"],
        };
        let status = self
            .command("xmodmap")
            .arg("-e")
            .arg(format!("keycode {} = adiaeresis Adiaeresis", codes[0]))
            .arg("-e")
            .arg(format!("keycode {} = odiaeresis Odiaeresis", codes[1]))
            .status()
            .expect("run xmodmap");
        assert!(status.success(), "xmodmap failed");
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DISPLAY", &self.display)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus_address)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            // GTK records chosen files in $XDG_DATA_HOME; keep that out of the real home.
            .env("XDG_DATA_HOME", &self.runtime_dir)
            .env("XDG_CONFIG_HOME", &self.runtime_dir)
            .env("XDG_CACHE_HOME", &self.runtime_dir)
            .env_remove("WAYLAND_DISPLAY")
            .env("GSK_RENDERER", "cairo")
            .env("GDK_DEBUG", "gl-disable")
            .env("GDK_BACKEND", "x11")
            // English unless a test asks otherwise, whatever the machine's locale.
            .env("LANG", "C.UTF-8")
            .env_remove("LC_ALL")
            .env_remove("LC_MESSAGES")
            .env_remove("LANGUAGE")
            .env(guilocker::i18n::LOCALEDIR_ENV, common::catalogs())
            .stdin(Stdio::null());
        cmd
    }

    fn xdotool(&self, args: &[&str]) {
        let out = self
            .command("xdotool")
            .args(args)
            .output()
            .expect("run xdotool");
        assert!(out.status.success(), "xdotool {args:?} failed");
    }

    /// Width and height of a window.
    fn window_size(&self, window: &str) -> (u32, u32) {
        let out = self
            .command("xdotool")
            .args(["getwindowgeometry", "--shell", window])
            .output()
            .expect("run xdotool getwindowgeometry");
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.trim().parse().ok())
                .expect("window geometry")
        };
        (field("WIDTH"), field("HEIGHT"))
    }

    /// Visible windows with exactly this title.
    fn windows(&self, title: &str) -> Vec<String> {
        let out = self
            .command("xdotool")
            .args(["search", "--onlyvisible", "--name"])
            .arg(format!("^{title}$"))
            .output()
            .expect("run xdotool search");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Polls until a window with this title is mapped; returns its id.
    fn wait_window(&self, title: &str) -> String {
        poll(&format!("window {title:?}"), || {
            self.windows(title).into_iter().next()
        })
    }

    /// What a screen reader sees of process `pid`.
    fn accessible_tree(&self, pid: u32) -> String {
        common::atspi::tree(self.command(python()), pid)
    }

    /// Polls the accessibility tree until a node matches.
    fn wait_node(&self, pid: u32, what: &str, matches: impl Fn(&Node) -> bool) -> Node {
        let poll = Duration::from_millis(25);
        common::atspi::wait_node(what, WAIT, poll, || self.accessible_tree(pid), matches)
    }

    fn screenshot(&self, window: &str, name: &str) {
        if !has("import") {
            note(&format!(
                "note: no ImageMagick import; screenshot {name} not taken"
            ));
            return;
        }
        common::screenshot(self.command("import"), window, name);
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        for child in [&mut self.bus, &mut self.xvfb] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

fn first_line(stream: impl Read) -> String {
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("read first line");
    line
}

fn poll<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    poll_for(what, WAIT, Duration::from_millis(25), probe)
}

/// The dialog process with its pipes.
struct Dialog {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: Receiver<DialogOutput>,
    started: Instant,
}

impl Dialog {
    fn spawn(desktop: &Desktop, device: &DeviceInfo) -> Self {
        Self::spawn_in(desktop, device, "C.UTF-8")
    }

    /// With LANG=`lang`, as an agent in a session of that locale starts it.
    fn spawn_in(desktop: &Desktop, device: &DeviceInfo, lang: &str) -> Self {
        let started = Instant::now();
        let mut child = desktop
            .command(BIN)
            .env("LANG", lang)
            .arg("dialog")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the dialog");
        let stdout = child.stdout.take().expect("dialog stdout");
        let (tx, frames) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            while let Ok(Some(frame)) = read_frame::<DialogOutput, _>(&mut reader) {
                if tx.send(frame).is_err() {
                    break;
                }
            }
        });
        let mut dialog = Self {
            stdin: child.stdin.take(),
            child,
            frames,
            started,
        };
        dialog.send(&DialogInput::Show {
            device: device.clone(),
        });
        dialog
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, input: &DialogInput) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        write_frame(stdin, input).expect("write to the dialog");
    }

    fn reply(&mut self, ok: bool, message: Option<&str>) {
        self.send(&if ok {
            DialogInput::Unlocked { label: None }
        } else {
            DialogInput::Failed {
                kind: ErrorKind::WrongSecret,
                message: message.map(str::to_owned),
            }
        });
    }

    fn next_frame(&self) -> DialogOutput {
        self.frames
            .recv_timeout(WAIT)
            .expect("a frame from the dialog")
    }

    /// While the dialog runs: nothing arrives for a while.
    fn assert_no_frame(&self, within: Duration) {
        match self.frames.recv_timeout(within) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(frame) => panic!("unexpected frame {frame:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the dialog closed its stdout"),
        }
    }

    /// After the dialog exited: it wrote nothing more.
    fn assert_wrote_nothing(&self) {
        if let Ok(frame) = self.frames.recv_timeout(Duration::from_secs(1)) {
            panic!("unexpected frame {frame:?}");
        }
    }

    fn wait_exit(&mut self) -> i32 {
        let status = poll("the dialog to exit", || {
            self.child.try_wait().ok().flatten()
        });
        status.code().expect("an exit code, not a signal")
    }
}

impl Drop for Dialog {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn device(protectors: &[&str]) -> DeviceInfo {
    DeviceInfo {
        device: "/dev/sdb1".into(),
        bitlocker: true,
        state: DeviceState::Locked,
        mountpoint: None,
        decrypted: None,
        engine: None,
        label: Some("WORK".into()),
        size_bytes: 15_518_924_800,
        owner: None,
        fs_type: None,
        read_only: false,
        error: None,
        vendor: Some("SanDisk".into()),
        model: Some("Cruzer Blade".into()),
        guid: None,
        description: Some("DESKTOP-7QH2 E: 14/03/2024".into()),
        protectors: serde_json::from_value(serde_json::json!(protectors)).unwrap(),
        recovery_key_ids: if protectors.contains(&"recovery_password") {
            vec!["F99F18E8".into()]
        } else {
            vec![]
        },
        diskseq: None,
        left_to_desktop: false,
        removable: true,
        connection: None,
        cannot_open: None,
        fs_driver: None,
        notice: None,
    }
}

fn expect_password(frame: DialogOutput, want: &str, want_read_only: bool) {
    match frame {
        DialogOutput::Unlock {
            secret: UnlockSecret::Password { value },
            read_only,
            remembered: false,
            open_at_login: false,
        } => {
            assert!(
                value.expose() == want,
                "the typed password did not arrive intact"
            );
            assert_eq!(read_only, want_read_only);
        }
        other => panic!("expected a password unlock, got {other:?}"),
    }
}

/// Type into a window, as a person would, one key after another.
fn type_text(desktop: &Desktop, window: &str, text: &str) {
    common::type_text(desktop.command("xdotool"), window, text);
}

fn key(desktop: &Desktop, window: &str, key: &str) {
    desktop.xdotool(&["key", "--window", window, key]);
}

/// A key that closes the window: xdotool then fails to send its release, which is fine.
fn closing_key(desktop: &Desktop, window: &str, key: &str) {
    let _ = desktop
        .command("xdotool")
        .args(["key", "--window", window, key])
        .output();
}

fn focused_node(desktop: &Desktop, pid: u32, role: &str, name: &str) {
    desktop.wait_node(pid, &format!("{role} {name:?} focused"), |n| {
        n.role == role && n.name == name && n.is("focused") && n.is("sensitive")
    });
}

#[test]
fn password_wrong_then_right() {
    if !gui_tools_present() {
        return;
    }
    let desktop = Desktop::start();
    let mut dialog = Dialog::spawn(&desktop, &device(&[]));
    let window = desktop.wait_window(TITLE);
    note(&format!(
        "process start to window shown: {} ms",
        dialog.started.elapsed().as_millis()
    ));
    let pid = dialog.pid();
    focused_node(&desktop, pid, "password text", "BitLocker password");
    desktop.wait_node(pid, "Unlock disabled", |n| {
        n.role == "push button" && n.name == "Unlock" && !n.is("sensitive")
    });
    desktop.screenshot(&window, "initial");

    type_text(&desktop, &window, "hunter2");
    key(&desktop, &window, "Return");
    expect_password(dialog.next_frame(), "hunter2", false);
    desktop.wait_node(pid, "the spinner's label", |n| {
        n.role == "label" && n.name == "Unlocking…"
    });
    desktop.screenshot(&window, "unlocking-spinner");

    dialog.reply(false, Some("Wrong password"));
    desktop.wait_node(pid, "the error message", |n| {
        n.role == "label" && n.name == "Wrong password."
    });
    focused_node(&desktop, pid, "password text", "BitLocker password");
    assert_eq!(
        desktop.windows(TITLE),
        std::slice::from_ref(&window),
        "the dialog stays open"
    );
    desktop.screenshot(&window, "wrong-password");

    // The entry was cleared, so only the new text arrives. Then, keyboard only: read-only
    // and Unlock by their mnemonics.
    type_text(&desktop, &window, "correct horse");
    key(&desktop, &window, "alt+r");
    desktop.wait_node(pid, "read-only checked", |n| {
        n.role == "check box" && n.name == "Open read-only" && n.is("checked")
    });
    key(&desktop, &window, "alt+u");
    expect_password(dialog.next_frame(), "correct horse", true);
    dialog.reply(true, None);
    assert_eq!(dialog.wait_exit(), DIALOG_EXIT_UNLOCKED);
}

#[test]
fn non_ascii_password_arrives_exactly() {
    if !gui_tools_present() {
        return;
    }
    let desktop = Desktop::start();
    // Also a drive with no label and long names, to see that they wrap.
    let mut drive = device(&["password"]);
    drive.label = None;
    drive.vendor = Some("Kingston".into());
    drive.model = Some("DataTraveler Exodia Onyx USB 3.2 Gen 1 Flash Drive".into());
    drive.description = Some("LAPTOP-K3J9Q2VD Kingston (E:) 2024-03-14 and some more words".into());
    drive.device = "/dev/disk/by-id/usb-Kingston_DataTraveler_Exodia_Onyx-0:0-part1".into();
    let mut dialog = Dialog::spawn(&desktop, &drive);
    let window = desktop.wait_window(TITLE);
    let pid = dialog.pid();
    focused_node(&desktop, pid, "password text", "BitLocker password");
    desktop.wait_node(pid, "the generic title", |n| {
        n.role == "label" && n.name == "BitLocker drive"
    });
    desktop.screenshot(&window, "long-names");
    type_text(&desktop, &window, "pässwörd");
    key(&desktop, &window, "Return");
    expect_password(dialog.next_frame(), "pässwörd", false);
    dialog.reply(true, None);
    assert_eq!(dialog.wait_exit(), DIALOG_EXIT_UNLOCKED);
}

#[test]
fn recovery_key_is_checked_group_by_group() {
    if !gui_tools_present() {
        return;
    }
    let desktop = Desktop::start();
    let mut dialog = Dialog::spawn(&desktop, &device(&["password", "recovery_password"]));
    let window = desktop.wait_window(TITLE);
    let pid = dialog.pid();
    focused_node(&desktop, pid, "password text", "BitLocker password");

    // Keyboard only: the toggle's mnemonic switches and focuses the key entry.
    key(&desktop, &window, "alt+k");
    focused_node(&desktop, pid, "text", "BitLocker recovery key");
    desktop.wait_node(pid, "the Key ID shown", |n| {
        n.role == "label" && n.name == "Key ID: F99F18E8"
    });
    let typo = GOOD_KEY.replacen("253979", "253978", 1);
    type_text(&desktop, &window, &typo);
    desktop.wait_node(pid, "group 3 named", |n| {
        n.role == "label"
            && n.name == "Group 3 of the recovery key is not divisible by 11 (a typo?)"
    });
    desktop.wait_node(pid, "Unlock disabled", |n| {
        n.role == "push button" && n.name == "Unlock" && !n.is("sensitive")
    });
    desktop.screenshot(&window, "recovery-key-invalid");
    key(&desktop, &window, "Return");
    dialog.assert_no_frame(Duration::from_millis(700));

    // Fixed, and typed without dashes this time.
    key(&desktop, &window, "ctrl+a");
    type_text(&desktop, &window, &GOOD_KEY.replace('-', ""));
    desktop.wait_node(pid, "the key accepted", |n| {
        n.role == "label" && n.name == "All 8 groups are valid."
    });
    desktop.wait_node(pid, "Unlock enabled", |n| {
        n.role == "push button" && n.name == "Unlock" && n.is("sensitive")
    });
    desktop.screenshot(&window, "recovery-key-valid");
    key(&desktop, &window, "Return");
    match dialog.next_frame() {
        DialogOutput::Unlock {
            secret: UnlockSecret::RecoveryPassword { value },
            read_only: false,
            remembered: false,
            open_at_login: false,
        } => assert!(value.expose() == GOOD_KEY, "key not normalized"),
        other => panic!("expected a recovery key unlock, got {other:?}"),
    }
    dialog.reply(true, None);
    assert_eq!(dialog.wait_exit(), DIALOG_EXIT_UNLOCKED);
}

#[test]
fn startup_key_file_is_read_and_sent() {
    if !gui_tools_present() {
        return;
    }
    let bek: Vec<u8> = (0..=255u8).cycle().take(124).collect();
    let path = std::env::temp_dir().join(format!("guilocker-test-{}.BEK", std::process::id()));
    std::fs::write(&path, &bek).expect("write the .BEK file");

    let desktop = Desktop::start();
    let mut dialog = Dialog::spawn(&desktop, &device(&["startup_key", "tpm"]));
    let window = desktop.wait_window(TITLE);
    let pid = dialog.pid();
    desktop.wait_node(pid, "the only-startup-key note", |n| {
        n.role == "label"
            && n.name == "This drive can only be opened here with its startup key file."
    });
    focused_node(&desktop, pid, "push button", "Choose file…");
    key(&desktop, &window, "Return");
    // No portal here, so GTK falls back to its own file chooser; type the path into it.
    let chooser = desktop.wait_window("Choose a startup key file");
    key(&desktop, &chooser, "ctrl+l");
    type_text(&desktop, &chooser, &path.to_string_lossy());
    key(&desktop, &chooser, "Return");
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    desktop.wait_node(pid, "the chosen file's name", |n| {
        n.role == "label" && Some(&n.name) == name.as_ref()
    });
    focused_node(&desktop, pid, "push button", "Unlock");
    desktop.screenshot(&window, "startup-key-chosen");
    // With no window manager, X's input focus went nowhere when the chooser closed.
    desktop.xdotool(&["windowfocus", "--sync", &window]);
    key(&desktop, &window, "Return");
    match dialog.next_frame() {
        DialogOutput::Unlock {
            secret: UnlockSecret::StartupKey { bek: sent },
            ..
        } => assert!(sent.expose() == bek.as_slice(), "the file's bytes differ"),
        other => panic!("expected a startup key unlock, got {other:?}"),
    }
    dialog.reply(true, None);
    assert_eq!(dialog.wait_exit(), DIALOG_EXIT_UNLOCKED);
    let _ = std::fs::remove_file(path);
}

#[test]
fn escape_and_cancel_button_cancel() {
    if !gui_tools_present() {
        return;
    }
    for how in ["Escape", "alt+c", "the title bar's close button"] {
        // A fresh X server each time: a key whose release never arrived stays held.
        let desktop = Desktop::start();
        let mut dialog = Dialog::spawn(&desktop, &device(&[]));
        let window = desktop.wait_window(TITLE);
        focused_node(
            &desktop,
            dialog.pid(),
            "password text",
            "BitLocker password",
        );
        type_text(&desktop, &window, "half typed");
        if how.starts_with("the title bar") {
            // Top right corner, where GTK draws the close button of its own title bar.
            let geometry = desktop.window_size(&window);
            let x = (geometry.0 - 24).to_string();
            desktop.xdotool(&["mousemove", "--window", &window, &x, "24", "click", "1"]);
        } else {
            closing_key(&desktop, &window, how);
        }
        assert!(
            matches!(dialog.next_frame(), DialogOutput::Cancel),
            "{how} sends cancel"
        );
        assert_eq!(dialog.wait_exit(), DIALOG_EXIT_CANCELLED, "{how}");
        poll("the window to go", || {
            desktop.windows(TITLE).is_empty().then_some(())
        });
    }
}

#[test]
fn agent_close_eof_and_junk_close() {
    if !gui_tools_present() {
        return;
    }
    let desktop = Desktop::start();

    let mut dialog = Dialog::spawn(&desktop, &device(&[]));
    desktop.wait_window(TITLE);
    dialog.send(&DialogInput::Close {
        reason: Some("the drive was removed".into()),
    });
    assert_eq!(dialog.wait_exit(), DIALOG_EXIT_CLOSED);
    dialog.assert_wrote_nothing();

    let mut dialog = Dialog::spawn(&desktop, &device(&[]));
    desktop.wait_window(TITLE);
    drop(dialog.stdin.take());
    assert_eq!(dialog.wait_exit(), DIALOG_EXIT_CLOSED);
    // Closing for the agent is not a cancel: nothing is written.
    dialog.assert_wrote_nothing();

    // A broken agent: junk on the pipe ends the dialog like a closed pipe, without a panic.
    let mut dialog = Dialog::spawn(&desktop, &device(&[]));
    desktop.wait_window(TITLE);
    let stdin = dialog.stdin.as_mut().expect("stdin");
    stdin.write_all(b"{not json}\n").expect("write junk");
    assert_eq!(dialog.wait_exit(), DIALOG_EXIT_CLOSED);
    dialog.assert_wrote_nothing();
}

#[test]
fn tpm_only_drive_says_so() {
    if !gui_tools_present() {
        return;
    }
    let desktop = Desktop::start();
    let mut dialog = Dialog::spawn(&desktop, &device(&["tpm"]));
    let window = desktop.wait_window(TITLE);
    let pid = dialog.pid();
    desktop.wait_node(pid, "the TPM note", |n| {
        n.role == "label"
            && n.name
                .starts_with("This drive can only be opened with the TPM chip")
    });
    focused_node(&desktop, pid, "push button", "Close");
    let tree = desktop.accessible_tree(pid);
    assert!(
        !tree
            .lines()
            .filter_map(Node::parse)
            .any(|n| n.name == "Unlock"),
        "no Unlock button for a drive that cannot be unlocked here"
    );
    desktop.screenshot(&window, "tpm-only");
    closing_key(&desktop, &window, "Return");
    assert!(matches!(dialog.next_frame(), DialogOutput::Cancel));
    assert_eq!(dialog.wait_exit(), DIALOG_EXIT_CANCELLED);
}

/// The display is opened after the `show` frame (a remembered secret needs none); with no
/// display and nothing remembered, the dialog says so in one line.
#[test]
fn no_display_exits_11() {
    let mut shown = device(&["password"]);
    shown.guid = None;
    let mut frame = Vec::new();
    write_frame(&mut frame, &DialogInput::Show { device: shown }).unwrap();
    let mut child = Command::new(BIN)
        .arg("dialog")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the dialog");
    child.stdin.take().unwrap().write_all(&frame).unwrap();
    let out = child.wait_with_output().expect("wait for the dialog");
    assert_eq!(out.status.code(), Some(DIALOG_EXIT_NO_DISPLAY));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    assert!(out.stdout.is_empty());
}

/// English texts of the dialog that Korean shows otherwise (po/ko.po), with and without
/// their mnemonic underscores: none may be on screen in a Korean session.
fn english_texts_translated_in_korean() -> Vec<String> {
    let po = rspolib::pofile(concat!(env!("CARGO_MANIFEST_DIR"), "/po/ko.po")).expect("po/ko.po");
    po.entries
        .iter()
        .filter(|e| {
            e.msgstr
                .as_deref()
                .is_some_and(|t| !t.is_empty() && t != e.msgid)
        })
        .flat_map(|e| [e.msgid.clone(), e.msgid.replace('_', "")])
        .collect()
}

/// LANG=ko_KR.UTF-8: the window, its labels, what a screen reader hears and the error after
/// a wrong password are Korean; no English text of ours is left on screen.
#[test]
fn korean_dialog() {
    if !gui_tools_present() || !common::korean_locale_present() {
        return;
    }
    let desktop = Desktop::start();
    let mut dialog = Dialog::spawn_in(
        &desktop,
        &device(&["password", "recovery_password"]),
        "ko_KR.UTF-8",
    );
    let window = desktop.wait_window(TITLE_KO);
    let pid = dialog.pid();
    desktop.wait_node(pid, "the Korean title", |n| {
        n.role != "label" && n.name == TITLE_KO
    });
    focused_node(&desktop, pid, "password text", "BitLocker 비밀번호");
    desktop.wait_node(pid, "the Korean key ID", |n| {
        n.role == "label" && n.name == "키 ID: F99F18E8"
    });
    desktop.wait_node(pid, "the Korean read-only box", |n| {
        n.role == "check box" && n.name == "읽기 전용으로 열기"
    });
    let english = english_texts_translated_in_korean();
    let tree = desktop.accessible_tree(pid);
    let left: Vec<String> = tree
        .lines()
        .filter_map(Node::parse)
        .filter(|n| english.contains(&n.name))
        .map(|n| format!("{} {:?}", n.role, n.name))
        .collect();
    assert!(left.is_empty(), "English left in a Korean dialog: {left:?}");
    desktop.screenshot(&window, "korean");

    type_text(&desktop, &window, "not-the-password");
    key(&desktop, &window, "Return");
    assert!(matches!(dialog.next_frame(), DialogOutput::Unlock { .. }));
    // The daemon's English cause, without the device, as the agent relays it.
    dialog.reply(false, Some("wrong password"));
    desktop.wait_node(pid, "the Korean error", |n| {
        n.role == "label" && n.name == "비밀번호가 틀렸습니다."
    });
    desktop.screenshot(&window, "korean-wrong-password");
    closing_key(&desktop, &window, "Escape");
    assert!(matches!(dialog.next_frame(), DialogOutput::Cancel));
    assert_eq!(dialog.wait_exit(), DIALOG_EXIT_CANCELLED);
}
