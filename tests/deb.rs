//! Issue 11: the Debian package, for real. Built with cargo-deb (packaging/deb.sh), checked by
//! lintian, installed with `apt-get install ./….deb`, its daemon running (systemd's where
//! systemd runs; elsewhere the test says so and starts it as the postinst advises),
//! `guilocker status` answered, `man` and bash completion working from the installed files,
//! then `apt-get purge`: no process and none of its files left.
//!
//! Needs root, apt-get, lintian and cargo-deb; skips without, except under CI=true.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`; panics with its output unless it succeeds; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let (code, out, err) = output_of(cmd, "");
    assert_eq!(code, 0, "{cmd:?}: {out}{err}");
    out
}

fn sh(script: &str) -> String {
    ok(Command::new("bash").args(["-c", script]))
}

fn daemon_pids() -> Vec<String> {
    let (_, out, _) = output_of(Command::new("pgrep").args(["-x", "guilocker"]), "");
    out.split_whitespace().map(str::to_owned).collect()
}

/// lintian's findings: errors fail; each warning must be listed, with a reason, in
/// packaging/debian/lintian-accepted.
fn lint(deb: &str) {
    let accepted =
        std::fs::read_to_string(root().join("packaging/debian/lintian-accepted")).unwrap();
    let accepted: Vec<&str> = accepted
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (tag, why) = l.split_once(':').unwrap_or((l, ""));
            assert!(
                !why.trim().is_empty(),
                "lintian-accepted: {tag} has no reason"
            );
            tag.trim()
        })
        .collect();
    let (code, out, err) = output_of(
        Command::new("lintian").args(["--tag-display-limit", "0", deb]),
        "",
    );
    println!("lintian:\n{out}{err}");
    // 0: nothing above the fail level; 1: errors, listed below. Anything else: it did not run.
    assert!(code == 0 || code == 1, "lintian exited {code}: {err}");
    let mut unexpected = Vec::new();
    for line in out.lines() {
        let mut fields = line.split_whitespace();
        let (Some(level), Some(_package), Some(tag)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        match level {
            "E:" => unexpected.push(line.to_owned()),
            "W:" if !accepted.contains(&tag) => unexpected.push(line.to_owned()),
            _ => {}
        }
    }
    assert!(unexpected.is_empty(), "lintian: {unexpected:#?}");
}

#[test]
fn the_package_builds_lints_installs_and_removes_cleanly() {
    let _serial = serial();
    if !prerequisites(&["apt-get", "dpkg-deb", "lintian", "cargo-deb", "man"]) {
        return;
    }
    assert!(
        daemon_pids().is_empty(),
        "a guilocker daemon already runs here ({:?}): stop it first",
        daemon_pids()
    );
    let built = Instant::now();
    let deb = sh(&format!("{}/packaging/deb.sh", root().display()));
    let deb = deb.trim().to_owned();
    let deb = root().join(deb).to_str().unwrap().to_owned();
    println!("built {deb} in {:?}", built.elapsed());
    let contents = ok(Command::new("dpkg-deb").args(["--contents", &deb]));
    for file in [
        "./usr/bin/guilocker",
        "./usr/libexec/guilocker/guilocker-dialog",
        "./etc/guilocker/config.toml",
        "./usr/lib/systemd/system/guilocker.service",
        "./usr/share/man/man1/guilocker.1.gz",
        "./usr/share/man/man5/guilocker.conf.5.gz",
        "./usr/share/bash-completion/completions/guilocker",
        "./usr/share/locale/ko/LC_MESSAGES/guilocker.mo",
        "./usr/share/polkit-1/rules.d/50-guilocker.rules",
        "./usr/share/man/man8/umount.guilocker.8.gz",
    ] {
        assert!(
            contents.contains(file),
            "{file} not in the package:\n{contents}"
        );
    }
    // umount(8) finds its helper by this name; a link, so it is the binary just installed.
    assert!(
        contents.contains("./usr/sbin/umount.guilocker -> ../bin/guilocker"),
        "no umount.guilocker link in the package:\n{contents}"
    );
    lint(&deb);

    // A guilocker installed by packaging/install.sh keeps its configuration in /etc/guilocker,
    // which the package would take over and its purge remove: set it aside for the test and
    // put it back after the purge, whatever happens (dropped after `Purge`).
    struct KeepConfig(Option<PathBuf>);
    impl Drop for KeepConfig {
        fn drop(&mut self) {
            if let Some(saved) = &self.0 {
                let _ = std::fs::remove_dir_all("/etc/guilocker");
                if let Err(e) = std::fs::rename(saved, "/etc/guilocker") {
                    eprintln!("cannot put {} back: {e}", saved.display());
                }
            }
        }
    }
    let saved = PathBuf::from("/etc/guilocker.before-tests");
    let _keep = KeepConfig(Path::new("/etc/guilocker").exists().then(|| {
        let _ = std::fs::remove_dir_all(&saved);
        std::fs::rename("/etc/guilocker", &saved).expect("set /etc/guilocker aside");
        saved.clone()
    }));
    // Whatever happens from here, the host does not keep the package.
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("apt-get")
                .args(["purge", "-y", "-q", "guilocker"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output();
        }
    }
    let _purge = Purge;
    let installed = Instant::now();
    ok(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", &deb])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    println!("installed in {:?}", installed.elapsed());
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "guilocker"]));
    assert!(
        conffiles.contains("/etc/guilocker/config.toml"),
        "{conffiles}"
    );
    ok(Command::new("getent").args(["group", "plugdev"]));
    assert_eq!(
        std::fs::canonicalize("/sbin/umount.guilocker").unwrap(),
        Path::new("/usr/bin/guilocker")
    );
    let page = sh("MANWIDTH=80 man 5 guilocker.conf");
    assert!(page.contains("mount_root"), "{page}");
    let page = sh("MANWIDTH=80 man guilocker-unlock");
    assert!(page.contains("--password-stdin"), "{page}");
    let completion = sh("source /usr/share/bash-completion/bash_completion; \
         _completion_loader guilocker; complete -p guilocker");
    assert!(completion.contains("_guilocker"), "{completion}");

    if Path::new("/run/systemd/system").exists() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while sh("systemctl is-active guilocker || true").trim() != "active" {
            assert!(Instant::now() < deadline, "the unit did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("systemd started guilocker.service");
    } else {
        println!(
            "systemd is not running on this machine: the package cannot start its unit here; \
             starting the daemon by hand, as the postinst says"
        );
        // Returns once the detached daemon is ready (its readiness pipe).
        ok(Command::new("/usr/bin/guilocker").arg("daemon"));
    }
    let status = ok(Command::new("/usr/bin/guilocker").arg("status"));
    println!("guilocker status:\n{status}");
    // The installed catalog, found from /usr/bin (tests/translations.rs checks every text).
    if common::korean_locale_present() {
        let korean = ok(Command::new("/usr/bin/guilocker")
            .arg("status")
            .env("LANG", "ko_KR.UTF-8")
            .env_remove("LC_ALL")
            .env_remove("LC_MESSAGES")
            .env_remove("LANGUAGE"));
        assert!(korean.starts_with("장치"), "{korean}");
    }
    assert!(!daemon_pids().is_empty(), "no daemon after start");

    let removed = Instant::now();
    ok(Command::new("apt-get")
        .args(["purge", "-y", "-q", "guilocker"])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    println!("purged in {:?}", removed.elapsed());
    assert!(
        daemon_pids().is_empty(),
        "a daemon is left: {:?}",
        daemon_pids()
    );
    for gone in [
        "/usr/bin/guilocker",
        "/usr/libexec/guilocker",
        "/usr/sbin/umount.guilocker",
        "/etc/guilocker",
        "/lib/udev/rules.d/75-guilocker.rules",
        "/run/guilocker/control.sock",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("guilocker"), "{mounts}");
}
