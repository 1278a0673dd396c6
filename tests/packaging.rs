//! The packaging files: desktop entries validate, the unit stops the daemon first, the
//! install script parses, and only the dialog binary links GTK.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn require(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and {program} is missing"
        );
        eprintln!("SKIPPED: needs {program}");
    }
    found
}

fn desktop_files() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root().join("packaging")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "desktop") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn desktop_files_validate() {
    if !require("desktop-file-validate") {
        return;
    }
    let files = desktop_files();
    assert!(
        files.len() >= 2,
        "expected the autostart entry and the dialog's entry: {files:?}"
    );
    for file in files {
        let out = Command::new("desktop-file-validate")
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.trim().is_empty(),
            "{}: {text}",
            file.display()
        );
    }
}

#[test]
fn autostart_entry_starts_the_agent_quietly() {
    let text = std::fs::read_to_string(root().join("packaging/autostart/guilocker-agent.desktop"))
        .unwrap();
    assert!(text.lines().any(|l| l == "Exec=guilocker agent"));
    assert!(text.lines().any(|l| l == "NoDisplay=true"));
}

#[test]
fn unit_lets_the_daemon_unmount_before_anything_is_killed() {
    let text = std::fs::read_to_string(root().join("packaging/systemd/guilocker.service")).unwrap();
    let has = |line: &str| text.lines().any(|l| l.trim() == line);
    assert!(
        has("KillMode=mixed"),
        "SIGTERM must reach the daemon alone first"
    );
    assert!(has(
        "ExecStart=/usr/local/bin/guilocker daemon --foreground"
    ));
    assert!(has("ExecReload=/bin/kill -HUP $MAINPID"));
    // A private mount namespace would hide the user's mounts from the user.
    for key in [
        "PrivateTmp=",
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateMounts=",
    ] {
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with(key)),
            "{key} in the unit"
        );
    }
}

#[test]
fn install_script_parses() {
    for script in ["packaging/install.sh", "tests/run.sh", ".ci/run"] {
        let out = Command::new("bash")
            .arg("-n")
            .arg(root().join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn only_the_dialog_links_gtk() {
    if !require("ldd") {
        return;
    }
    let libs = |bin: &str| {
        let out = Command::new("ldd").arg(bin).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let main = libs(env!("CARGO_BIN_EXE_guilocker"));
    for lib in ["libgtk", "libglib", "libgobject", "libadwaita"] {
        assert!(
            !main.contains(lib),
            "guilocker (daemon, agent, CLI) links {lib}:\n{main}"
        );
    }
    assert!(libs(env!("CARGO_BIN_EXE_guilocker-dialog")).contains("libgtk-4"));
}
