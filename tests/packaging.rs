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

/// Runs `script` in `shell` and returns its stdout; panics with stderr on failure.
fn shell_output(shell: &str, script: &str) -> String {
    let out = Command::new(shell)
        .args(["-c", script])
        .output()
        .unwrap_or_else(|e| panic!("{shell}: {e}"));
    assert!(
        out.status.success(),
        "{shell} -c {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What packaging/lib.sh's generate_docs makes, as install.sh and the .deb install it.
fn generated_docs(name: &str) -> PathBuf {
    let dir = root().join("target/test-docs").join(name);
    shell_output(
        "bash",
        &format!(
            "source {}/packaging/lib.sh && generate_docs {} {}",
            root().display(),
            env!("CARGO_BIN_EXE_guilocker"),
            dir.display()
        ),
    );
    dir
}

/// The manual pages render without a warning from man (groff), as lintian checks them.
#[test]
fn manual_pages_render_cleanly() {
    if !require("man") {
        return;
    }
    let dir = generated_docs("man").join("man");
    let mut pages = 0;
    for page in std::fs::read_dir(&dir).unwrap().flatten() {
        let out = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(page.path())
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.is_empty(),
            "{page:?}: {warnings}"
        );
        pages += 1;
    }
    let main = shell_output(
        "bash",
        &format!("MANWIDTH=80 man -l {}/guilocker.1", dir.display()),
    );
    assert!(
        main.contains("EXIT STATUS") && main.contains("guilocker-unlock(1)"),
        "{main}"
    );
    println!("{pages} pages render cleanly");
}

/// Tab after `guilocker un` offers unlock and unmount, in bash for real (the generated
/// function, called as bash-completion calls it); zsh and fish accept their scripts.
#[test]
fn completions_complete() {
    if !require("bash") {
        return;
    }
    let dir = generated_docs("completions").join("completions");
    let offered = shell_output(
        "bash",
        &format!(
            "source {}/guilocker.bash; COMP_WORDS=(guilocker un); COMP_CWORD=1; \
             _guilocker guilocker un guilocker; echo \"${{COMPREPLY[@]}}\"",
            dir.display()
        ),
    );
    let mut words: Vec<&str> = offered.split_whitespace().collect();
    words.sort();
    assert_eq!(words, ["unlock", "unmount"], "{offered}");
    for (shell, file) in [("zsh", "guilocker.zsh"), ("fish", "guilocker.fish")] {
        if require(shell) {
            let out = Command::new(shell)
                .arg("-n")
                .arg(dir.join(file))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{shell}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
