//! The daemon as a process: detaching, the pidfile, signals, config reload, the socket.

mod common;

use common::*;
use guilocker::protocol::{ErrorKind, Request, Response, MAX_FRAME};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

fn proc_stat_fields(pid: i32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command may contain spaces; fields after ") " are plain.
    let after = &stat[stat.rfind(") ").unwrap() + 2..];
    after.split(' ').map(str::to_owned).collect()
}

/// A detached daemon has no controlling tty, is not a session leader, runs in /, has umask
/// 022, fds 0-2 on /dev/null, and its pidfile names it. A second daemon refuses to start.
#[test]
fn detached_daemon_and_second_instance() {
    let _serial = serial();
    if !prerequisites(&[]) {
        return;
    }
    let foreground = TestDaemon::start("detach");
    // A second daemon on the same pidfile, in the foreground: refused, exit 1.
    let out = foreground.command().arg("--foreground").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("already running (pid {}", foreground.pid())),
        "{err}"
    );
    drop(foreground);

    let dir = scratch("detached");
    let pidfile = dir.join("d.pid");
    let socket = dir.join("d.sock");
    let config = dir.join("config.toml");
    std::fs::write(&config, "include_loop_devices = true\n").unwrap();
    let daemon_args = |cmd: &mut std::process::Command| {
        cmd.arg("daemon")
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--runtime-dir")
            .arg(dir.join("run"));
    };
    let mut cmd = std::process::Command::new(bin());
    daemon_args(&mut cmd);
    // Returns once the daemon listens: the socket answers right away.
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = guilocker::client::Client::connect(&socket)
        .unwrap()
        .status();
    assert!(status.is_ok());

    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "guilocker", "the pidfile names the daemon");
    // Secrets pass through it: it never writes a core file (RLIMIT_CORE 0, soft and hard).
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .split_whitespace()
        .skip(4)
        .take(2)
        .collect();
    assert_eq!(core, ["0", "0"], "core dumps of the daemon:\n{limits}");
    let fields = proc_stat_fields(pid);
    // Fields after the command: state(0) ppid(1) pgrp(2) session(3) tty_nr(4).
    assert_eq!(fields[4], "0", "daemon has a controlling tty");
    assert_ne!(
        fields[3],
        pid.to_string(),
        "daemon is a session leader and could get a tty"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        std::path::Path::new("/")
    );
    let status_file = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status_file.contains("Umask:\t0022"), "{status_file}");
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, std::path::Path::new("/dev/null"), "fd {fd}");
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        !maps.contains("libgtk"),
        "GTK is mapped into the root daemon"
    );
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "socket must be connectable by every user");
    let mode = std::fs::metadata(&pidfile).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);

    // A second detached daemon refuses and says who runs.
    let mut cmd = std::process::Command::new(bin());
    daemon_args(&mut cmd);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("already running (pid {pid}")));

    // SIGTERM: it exits, removing its socket and pidfile.
    let pidfd = guilocker::process::pidfd_open(nix::unistd::Pid::from_raw(pid)).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM).unwrap();
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::try_from(60_000).unwrap()).unwrap();
    assert_eq!(n, 1, "daemon did not exit on SIGTERM");
    assert!(!socket.exists());
    assert!(!pidfile.exists());
}

/// SIGHUP reloads the config; a bad file keeps the old one and the daemon keeps serving.
#[test]
fn sighup_reload() {
    let _serial = serial();
    if !prerequisites(&[]) {
        return;
    }
    let daemon = TestDaemon::start("reload");
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.pid()),
            nix::sys::signal::SIGHUP,
        )
        .unwrap()
    };
    std::fs::write(
        &daemon.config,
        "include_loop_devices = true\nbogus_key = 1\n",
    )
    .unwrap();
    hup();
    let line = daemon.wait_log("keeping the previous configuration");
    assert!(line.contains("bogus_key"), "{line}");
    assert!(line.contains(daemon.config.to_str().unwrap()), "{line}");
    assert!(daemon.client().status().is_ok());
    std::fs::write(
        &daemon.config,
        "include_loop_devices = true\npoll_interval_ms = 500\n",
    )
    .unwrap();
    hup();
    daemon.wait_log("configuration reloaded");
    // A bad config at start is a clear error, exit 1.
    std::fs::write(&daemon.config, "poll_interval_ms = 0\n").unwrap();
    let dir = scratch("badconf");
    let out = std::process::Command::new(bin())
        .args(["daemon", "--foreground", "--config"])
        .arg(&daemon.config)
        .arg("--pidfile")
        .arg(dir.join("p"))
        .arg("--socket")
        .arg(dir.join("s"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("poll_interval_ms = 0"), "{err}");
}

fn raw(daemon: &TestDaemon) -> (BufReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(&daemon.socket).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

fn reply(reader: &mut BufReader<UnixStream>) -> Option<Response> {
    let mut line = String::new();
    let n = reader.read_line(&mut line).unwrap_or(0);
    (n > 0).then(|| serde_json::from_str(&line).unwrap())
}

/// Malformed, oversized and mismatched frames get typed errors; the daemon stays up.
#[test]
fn socket_protocol_errors() {
    let _serial = serial();
    if !prerequisites(&[]) {
        return;
    }
    let daemon = TestDaemon::start("protocol");
    let (mut r, mut w) = raw(&daemon);
    w.write_all(b"{not json}\n").unwrap();
    assert!(matches!(
        reply(&mut r),
        Some(Response::Error {
            kind: ErrorKind::BadRequest,
            ..
        })
    ));
    w.write_all(b"{\"type\":\"launch_missiles\"}\n").unwrap();
    assert!(matches!(
        reply(&mut r),
        Some(Response::Error {
            kind: ErrorKind::BadRequest,
            ..
        })
    ));
    let hello = serde_json::to_string(&Request::Hello { version: 999 }).unwrap();
    w.write_all(format!("{hello}\n").as_bytes()).unwrap();
    assert!(matches!(
        reply(&mut r),
        Some(Response::Error {
            kind: ErrorKind::VersionMismatch,
            ..
        })
    ));
    // Still in step after errors.
    w.write_all(b"{\"type\":\"status\"}\n").unwrap();
    assert!(matches!(reply(&mut r), Some(Response::Status { .. })));

    // An oversized frame: an error, then the connection is closed, without the daemon
    // reading megabytes first.
    let (mut r, mut w) = raw(&daemon);
    let big = vec![b'x'; MAX_FRAME + 1];
    let _ = w.write_all(&big);
    assert!(matches!(
        reply(&mut r),
        Some(Response::Error {
            kind: ErrorKind::BadRequest,
            ..
        })
    ));
    assert!(reply(&mut r).is_none(), "connection should be closed");

    // Clear CLI errors for devices that are not there or not BitLocker.
    let (code, _, err) = daemon.cli(
        None,
        &["unlock", "/dev/nonexistent9", "--password-stdin"],
        "x\n",
    );
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "guilocker: /dev/nonexistent9: no such device");
    let (code, _, err) = daemon.cli(None, &["unmount"], "");
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = daemon.cli(None, &["unmount", "/dev/nonexistent9"], "");
    assert_eq!(code, 1, "{err}");
    // The daemon is still there.
    assert!(daemon.client().status().is_ok());
}

/// Without a daemon, clients say so in one line.
#[test]
fn no_daemon_is_a_clear_error() {
    let dir = scratch("nodaemon");
    let out = std::process::Command::new(bin())
        .args(["status", "--socket"])
        .arg(dir.join("missing.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("guilocker: cannot reach the guilocker daemon at"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Issue 12, item 10: a runtime dir another user can write (where the socket and the views
/// are made by path) is refused, in one line, before anything is made in it.
#[test]
fn a_runtime_dir_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    if !prerequisites(&[]) {
        return;
    }
    let dir = scratch("open-runtime");
    let runtime = dir.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = std::process::Command::new(bin())
        .args(["daemon", "--foreground", "--socket"])
        .arg(dir.join("d.sock"))
        .arg("--pidfile")
        .arg(dir.join("d.pid"))
        .arg("--runtime-dir")
        .arg(&runtime)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("runtime dir"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.ends_with(&format!(
            "runtime dir {}: must be a directory owned by uid 0 that no one else can write (it is a directory, uid 0, mode 777)",
            runtime.display()
        )),
        "{line}"
    );
    assert!(!dir.join("d.sock").exists());
    assert_eq!(std::fs::read_dir(&runtime).unwrap().count(), 0);
}
