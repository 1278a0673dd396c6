//! Who may unlock, against the real logind: a VM (Debian's kernel under QEMU, virtme-ng) with
//! systemd as PID 1, the system bus and logind, over an overlay of this machine's root
//! filesystem. This machine has no logind, so here only the fallback is tested
//! (tests/e2e_sticks.rs); in the VM, sessions of every kind are made the ways people get
//! them: a PAM login with no seat (active, local), `login -h HOST` (remote), a service with no
//! session, and sessions on the VTs of seat0, switched with `loginctl activate`.
//!
//! One boot runs the `#[ignore]`d tests in [`in_vm`]. Prerequisites as for
//! tests/kernel_vm.rs; under CI=true a missing one fails.

mod common;

use common::vm;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const VM_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The stick the VM's tests plug: source, filesystem, label, table.
const STICK: (&str, &str, &str, &str) = ("bitlk-aes-xts-128", "ntfs", "SEAT", "none");

fn script(status_file: &Path) -> String {
    let bin = vm::test_binary("logind_vm");
    format!(
        "set -u\n\
         # logind starts before virtme-ng-init makes /var/lib writable; start it again.\n\
         systemctl reset-failed systemd-logind.service; systemctl start systemd-logind.service\n\
         modprobe loop 2>/dev/null\n\
         echo '== VM: logind_vm in_vm'\n\
         {KERNEL_VM_ENV}=1 CI=\"${{CI:-}}\" GUILOCKER_SCRATCH={scratch} GUILOCKER_SHARED='{shared}' '{bin}' in_vm --ignored --test-threads=1 --nocapture\n\
         status=$?\n\
         echo \"== VM: done, status $status\"\necho $status > '{status}'\nexit $status\n",
        scratch = vm::VM_SCRATCH,
        shared = shared_dir().display(),
        bin = bin.display(),
        status = status_file.display(),
    )
}

#[test]
fn logind_in_a_vm() {
    if in_kernel_vm() {
        return;
    }
    if !vm::can_boot("the logind VM", vm::Kernel::Debian6_1) {
        return;
    }
    if !prerequisites(&["losetup", "mkntfs", "runuser", "mount"]) {
        return;
    }
    // Made here, in the lower layer the VM sees: the users, the fixtures, the stick.
    ensure_user(TEST_USER, true);
    ensure_user(OTHER_USER, false);
    let _ = images();
    let (source, fs, label, table) = STICK;
    let dir = scratch("logind-vm-sticks");
    make_stick(&dir, source, fs, label, table);
    let _ = std::fs::remove_dir_all(&dir);

    // The Debian package, for in_vm::package_under_systemd_installs_upgrades_and_removes_cleanly.
    if which("cargo-deb").is_some() {
        let deb = run_ok(
            Command::new("bash")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/deb.sh")),
        );
        println!("for the VM: {}", deb.trim());
    }

    let root = vm::SystemdRoot::mount(&scratch("logind-vm-root")).unwrap_or_else(|e| panic!("{e}"));
    vm::run_group(
        "logind-vm",
        vm::Kernel::Debian6_1,
        script,
        1,
        VM_TIMEOUT,
        Some(&root),
    );
}

/// Where packaging/deb.sh leaves the package.
fn debian_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian")
}

/// Inside the VM: logind is real.
mod in_vm {
    use super::common::logind::{property, sessions_of, VtSession};
    use super::common::*;
    use super::STICK;
    use guilocker::logind::{Logind, Session};
    use guilocker::protocol::{DeviceState, EventKind};
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    const WHY: &str = "logind: runs inside a VM with systemd (tests/logind_vm.rs)";
    const CONFIG: &str = "require_active_session = true\n";
    /// Between two looks at logind's session list, which sends us no event.
    const POLL: Duration = Duration::from_millis(50);

    /// A BEK file of another volume: a secret the CLI reads from a file (none in argv), which
    /// the daemon only judges after it has judged the caller.
    fn foreign_bek() -> PathBuf {
        let dir = fixtures();
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "BEK"))
            .expect("a .BEK file among the fixtures")
    }

    fn plugged(daemon: &TestDaemon) -> (Stick, String) {
        let (source, fs, label, table) = STICK;
        let image = make_stick(&scratch("logind-stick"), source, fs, label, table);
        let mut events = daemon.events();
        let stick = Stick::plug(&image, table != "none");
        let dev = stick.volume();
        wait_event(&mut events, "the stick to be probed", |k, d| {
            k != EventKind::Removed && d.device == dev && d.state == DeviceState::Locked
        });
        (stick, dev)
    }

    /// `systemd-run` as the test user, waiting for the end; `(exit code, stderr)`. The
    /// program's stderr goes to a file, as a terminal may be its stdout.
    fn unit(
        daemon: &TestDaemon,
        properties: &[&str],
        args: &[&str],
        stdin: Option<&str>,
    ) -> (i32, String) {
        let err = daemon.dir.join(format!("unit-{}.err", std::process::id()));
        let _ = std::fs::remove_file(&err);
        let mut cmd = Command::new("systemd-run");
        cmd.args(["--quiet", "--wait", "--collect", "--uid", TEST_USER])
            .arg(format!(
                "--setenv=GUILOCKER_SOCKET={}",
                daemon.socket.display()
            ))
            .args(properties.iter().flat_map(|p| ["-p", p]))
            .arg(format!("-pStandardError=file:{}", err.display()));
        if stdin.is_some() {
            cmd.arg("--pipe");
        }
        cmd.arg("--").arg(user_bin()).args(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("systemd-run");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let status = child.wait().unwrap();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        (status.code().unwrap_or(-1), stderr)
    }

    fn refused(code: i32, stderr: &str, dev: &str, why: &str) {
        println!("refused: {}", stderr.trim());
        assert_eq!(code, 1, "{stderr}");
        assert_eq!(
            stderr.trim(),
            format!(
                "guilocker: {dev}: not allowed: you are not in the active local session ({why})"
            )
        );
    }

    fn poll<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
        poll_for(what, WAIT, POLL, probe)
    }

    /// `systemctl show guilocker -p PROP --value`.
    fn unit_property(name: &str) -> String {
        run_ok(Command::new("systemctl").args(["show", "guilocker", "-p", name, "--value"]))
            .trim()
            .to_owned()
    }

    fn apt(args: &[&str]) {
        let (code, out, err) = output_of(
            Command::new("apt-get")
                .args(["-y", "-q", "--no-install-recommends"])
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "",
        );
        assert_eq!(code, 0, "apt-get {args:?}: {out}{err}");
    }

    /// Issue 11: the .deb (built on the host by logind_in_a_vm) under a real systemd. Installed:
    /// the unit is enabled and running. Reloaded: same process. Installed again (an upgrade):
    /// a new process. With a volume mounted, purged: the unit stops, the daemon puts the
    /// volume away first, and nothing is left.
    #[test]
    #[ignore = "logind: runs inside a VM with systemd (tests/logind_vm.rs)"]
    fn package_under_systemd_installs_upgrades_and_removes_cleanly() {
        assert!(in_kernel_vm(), "{WHY}");
        let debs: Vec<PathBuf> = std::fs::read_dir(super::debian_dir())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let Some(deb) = debs
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
        else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "no .deb in {}",
                super::debian_dir().display()
            );
            eprintln!("SKIPPED: no .deb was built (cargo-deb missing on the host)");
            return;
        };
        let deb = deb.to_str().unwrap();
        // The man-db trigger rebuilds the whole index, minutes under emulation; this root is
        // the VM's overlay.
        let _ = std::fs::remove_file("/var/lib/man-db/auto-update");
        apt(&["install", deb]);
        let active =
            || (unit_property("ActiveState") == "active").then(|| unit_property("MainPID"));
        let deadline = Instant::now() + WAIT;
        while active().is_none() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        if active().is_none() {
            let (_, status, _) = output_of(
                Command::new("systemctl").args(["status", "guilocker", "--no-pager", "-l"]),
                "",
            );
            let (_, journal, _) = output_of(
                Command::new("journalctl").args(["-u", "guilocker", "-n", "40", "--no-pager"]),
                "",
            );
            panic!("guilocker.service is not running:\n{status}\n{journal}");
        }
        let first = poll("guilocker.service to run", active);
        assert_eq!(unit_property("UnitFileState"), "enabled");
        println!("installed: guilocker.service active, pid {first}");
        run_ok(Command::new("guilocker").arg("status"));
        run_ok(Command::new("systemctl").args(["reload", "guilocker"]));
        assert_eq!(
            poll("the unit after a reload", active),
            first,
            "reload restarted it"
        );
        apt(&["install", "--reinstall", deb]);
        let second = poll("a new daemon after the upgrade", || {
            active().filter(|pid| *pid != first)
        });
        println!("reinstalled: restarted, pid {first} -> {second}");

        // A stick the packaged daemon handles (loop devices allowed), unlocked and mounted.
        // (The VM's /media is read-only: volumes go under its scratch space.)
        let media = scratch("package-media");
        std::fs::write(
            "/etc/guilocker/config.toml",
            format!(
                "include_loop_devices = true\nrequire_active_session = false\n\
                 mount_root = \"{}\"\n",
                media.display()
            ),
        )
        .unwrap();
        run_ok(Command::new("systemctl").args(["reload", "guilocker"]));
        let (source, fs, label, table) = STICK;
        let image = make_stick(&scratch("package-stick"), source, fs, label, table);
        let stick = Stick::plug(&image, table != "none");
        let dev = stick.volume();
        poll("the packaged daemon to see the stick locked", || {
            let mut client = guilocker::client::Client::connect(std::path::Path::new(
                guilocker::protocol::DEFAULT_SOCKET,
            ))
            .ok()?;
            let devices = client.status().ok()?;
            devices
                .iter()
                .any(|d| d.device == dev && d.state == DeviceState::Locked)
                .then_some(())
        });
        let (code, out, err) = output_of(
            Command::new("guilocker").args(["unlock", &dev, "--password-stdin"]),
            "anaconda\n",
        );
        assert_eq!(code, 0, "{out}{err}");
        let unlocked = out + &err;
        println!("{}", unlocked.trim());
        let mountpoint = media.join("root").join(label);
        assert!(is_mounted(&mountpoint), "{unlocked}");
        // The reload took the new config (loop devices, mount root) in the same process.
        assert_eq!(
            unit_property("MainPID"),
            second,
            "the reload restarted the daemon"
        );

        apt(&[
            "purge",
            deb.rsplit('/').next().unwrap().split('_').next().unwrap(),
        ]);
        assert!(
            !is_mounted(&mountpoint),
            "purge left {} mounted",
            mountpoint.display()
        );
        assert_ne!(unit_property("ActiveState"), "active");
        let (_, left, _) = output_of(Command::new("pgrep").args(["-x", "guilocker"]), "");
        assert!(left.trim().is_empty(), "processes left: {left}");
        for gone in [
            "/usr/lib/systemd/system/guilocker.service",
            "/etc/guilocker",
            "/usr/bin/guilocker",
        ] {
            assert!(
                !std::path::Path::new(gone).exists(),
                "{gone} left after purge"
            );
        }
        let loops = run_ok(Command::new("losetup").arg("-a"));
        assert!(!loops.contains("/run/guilocker/"), "{loops}");
        println!(
            "purged: the unit stopped, {} unmounted first, nothing left",
            mountpoint.display()
        );
    }

    /// Each kind of caller, and its one-line answer: only the active local session unlocks.
    #[test]
    #[ignore = "logind: runs inside a VM with systemd (tests/logind_vm.rs)"]
    fn unlock_needs_the_active_local_session() {
        assert!(in_kernel_vm(), "{WHY}");
        Logind::connect().expect("logind in the VM");
        let daemon = TestDaemon::start_with("logind-unlock", CONFIG);
        let (_stick, dev) = plugged(&daemon);
        let bek = foreign_bek();
        let bek = bek.to_str().unwrap();

        // A service: no session at all, and the user has none either (the previous test's
        // end only now).
        poll("no session of the test user", || {
            sessions_of(TEST_USER).is_empty().then_some(())
        });
        let (code, err) = unit(&daemon, &[], &["unlock", &dev, "--bek", bek], None);
        println!("refused: {}", err.trim());
        assert_eq!(code, 1, "{err}");
        assert!(
            err.trim().starts_with(&format!(
                "guilocker: {dev}: not allowed: you are not in the active local session (process "
            )) && err.trim().ends_with(" is in no login session)"),
            "{err}"
        );

        // Over the network: login -h HOST, on a pty, as sshd does.
        let dir = daemon.dir.join("remote");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let before = sessions_of(TEST_USER);
        let mut login = Command::new("script")
            .args([
                "-qfc",
                &format!("login -h 192.0.2.7 -f {TEST_USER}"),
                "/dev/null",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("script");
        let remote = poll("the remote session", || {
            sessions_of(TEST_USER)
                .into_iter()
                .find(|s| !before.contains(s) && property(s, "Remote") == "yes")
        });
        let out = dir.join("err");
        let code = dir.join("code");
        let mut shell = login.stdin.take().unwrap();
        writeln!(
            shell,
            "GUILOCKER_SOCKET={} {} unlock {dev} --bek {bek} 2>{}; echo $? >{}; exit",
            daemon.socket.display(),
            user_bin().display(),
            out.display(),
            code.display()
        )
        .unwrap();
        drop(shell);
        let status = wait_child(&mut login, WAIT);
        assert!(status.success(), "login: {status}");
        let err = std::fs::read_to_string(&out).unwrap();
        let code: i32 = std::fs::read_to_string(&code)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        refused(code, &err, &dev, &format!("session {remote} is remote"));

        // At the seat, on a VT that is not in front (VT 1 is).
        let (code, err) = unit(
            &daemon,
            &[
                "PAMName=login",
                "TTYPath=/dev/tty4",
                "StandardInput=tty",
                "StandardOutput=tty",
            ],
            &["unlock", &dev, "--bek", bek],
            None,
        );
        println!("refused: {}", err.trim());
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("you are not in the active local session (session ")
                && err.trim().ends_with(" is in the background)"),
            "{err}"
        );

        // A local login with no seat is in front of nothing, so active: the unlock passes
        // the check, and the password opens the drive.
        let (code, err) = unit(
            &daemon,
            &["PAMName=login"],
            &["unlock", &dev, "--password-stdin"],
            Some("anaconda\n"),
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(daemon.device(&dev).unwrap().state, DeviceState::Mounted);
        let (code, _, err) = daemon.cli(None, &["unmount", &dev], "");
        assert_eq!(code, 0, "{err}");
        let log = daemon.log_until(&format!("{dev}: put away"));
        assert!(
            !log.iter().any(|l| l.contains("logind is not available")),
            "{log:#?}"
        );

        // A program systemd starts outside the session (GNOME and Plasma start autostart
        // programs and terminals so) stands for the user's display session, as in polkit:
        // with an active local one, the check passes, and only the key is wrong.
        let display = "guilocker-display";
        run_ok(Command::new("systemd-run").args([
            "--quiet",
            &format!("--unit={display}"),
            "--uid",
            TEST_USER,
            "-p",
            "PAMName=login",
            "--setenv=XDG_SESSION_CLASS=user",
            "--setenv=XDG_SESSION_TYPE=tty",
            "sleep",
            "infinity",
        ]));
        poll("the user's display session", || {
            let user = run_ok(Command::new("loginctl").args([
                "show-user",
                TEST_USER,
                "-p",
                "Display",
                "--value",
            ]));
            (!user.trim().is_empty()).then_some(())
        });
        let (code, err) = unit(&daemon, &[], &["unlock", &dev, "--bek", bek], None);
        let _ = Command::new("systemctl").args(["stop", display]).output();
        println!(
            "outside the session, display session active: {}",
            err.trim()
        );
        assert_eq!(code, 3, "{err}");
        assert!(!err.contains("not allowed"), "{err}");
    }

    /// The agent follows its own session on seat0: in the background it asks nothing; back
    /// in front it asks about the drive plugged meanwhile.
    #[test]
    #[ignore = "logind: runs inside a VM with systemd (tests/logind_vm.rs)"]
    fn the_agent_asks_only_while_its_session_is_in_front() {
        assert!(in_kernel_vm(), "{WHY}");
        let daemon = TestDaemon::start_with("logind-agent", CONFIG);
        // Another person's session on VT 3. The agent's own is on VT 2: its unit is the
        // login there (a second one would wait for the terminal).
        let theirs = VtSession::start(OTHER_USER, 3);

        let log = daemon.dir.join("agent.log");
        let _ = std::fs::remove_file(&log);
        let agent_unit = "guilocker-agent";
        run_ok(
            Command::new("systemd-run")
                .args([
                    "--quiet",
                    &format!("--unit={agent_unit}"),
                    "--uid",
                    TEST_USER,
                ])
                .args(["-p", "PAMName=login", "-p", "TTYPath=/dev/tty2"])
                .args(["-p", "StandardInput=tty", "-p", "StandardOutput=tty"])
                .arg(format!("-pStandardError=file:{}", log.display()))
                .arg("--setenv=GUILOCKER_LOG=debug")
                .arg("--")
                .arg(user_bin())
                .args(["agent", "--socket"])
                .arg(&daemon.socket),
        );
        struct Stop(&'static str);
        impl Drop for Stop {
            fn drop(&mut self) {
                let _ = Command::new("systemctl").args(["stop", self.0]).output();
            }
        }
        let _agent = Stop(agent_unit);
        let agent_log = |text: &str, count: usize| {
            let deadline = Instant::now() + WAIT;
            loop {
                let lines = std::fs::read_to_string(&log).unwrap_or_default();
                if lines.matches(text).count() >= count {
                    return lines;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {count} × {text:?} from the agent; it said:\n{lines}"
                );
                std::thread::sleep(POLL);
            }
        };
        agent_log("connected to the daemon", 1);
        // The agent's session is the VT 2 one it was started in.
        let session: Session = {
            let pid = run_ok(
                Command::new("systemctl").args(["show", agent_unit, "-p", "MainPID", "--value"]),
            );
            let pid: u32 = pid.trim().parse().unwrap();
            let uid = nix::unistd::User::from_name(TEST_USER)
                .unwrap()
                .unwrap()
                .uid
                .as_raw();
            Logind::connect()
                .unwrap()
                .session_of(pid, uid)
                .unwrap()
                .expect("the agent in a session")
        };
        assert_eq!(property(&session.id, "TTY"), "tty2");
        // The agent starts out asking; it says so only when that changes.
        let (mut background, mut foreground) = (0, 0);
        if !session.active {
            background += 1;
            agent_log("is in the background: withdrawing dialogs", background);
            // VT 1 is in front: bring the agent's session there.
            run_ok(Command::new("loginctl").args(["activate", &session.id]));
            foreground += 1;
            agent_log("is in the foreground again", foreground);
        }

        theirs.activate();
        background += 1;
        let text = agent_log("is in the background: withdrawing dialogs", background);
        assert!(text.contains(&format!("session {}", session.id)), "{text}");
        let (_stick, dev) = plugged(&daemon);
        agent_log(
            &format!("{dev}: not asking while the session is in the background"),
            1,
        );
        assert!(
            !std::fs::read_to_string(&log)
                .unwrap()
                .contains(&format!("{dev}: asking for the password")),
            "asked from the background"
        );

        run_ok(Command::new("loginctl").args(["activate", &session.id]));
        foreground += 1;
        agent_log("is in the foreground again", foreground);
        // Back in front, it asks about the drive (here the dialog finds no display).
        let said = agent_log(&format!("{dev}: asking for the password"), 1);
        for line in said
            .lines()
            .filter(|l| l.contains("session") || l.contains(&dev))
        {
            println!("agent: {line}");
        }
    }
}
