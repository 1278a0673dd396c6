//! Manual pages and shell completions, generated from the argument definitions and the
//! example configuration, so neither can drift from what the program accepts.
//!
//! `guilocker completions SHELL` prints a completion script; the packaging runs the hidden
//! `guilocker man-pages DIR`, which writes guilocker(1), a page per subcommand,
//! guilocker.conf(5) and umount.guilocker(8).

use super::{exit, Cli, Failure};
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The example configuration: every key with its default and a comment saying what it does.
pub const EXAMPLE_CONFIG: &str = include_str!("../../packaging/config/config.toml");

const MANUAL: &str = "guilocker manual";

fn source() -> String {
    format!("guilocker {}", env!("CARGO_PKG_VERSION"))
}

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: Shell) -> Result<(), Failure> {
    let mut out = Vec::new();
    write_completions(shell, &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(())
}

pub fn write_completions(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "guilocker", out);
}

/// Writes every manual page into `dir`; returns their paths.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let fail = |path: &Path, e: std::io::Error| {
        Failure::new(
            exit::FAILED,
            format!("cannot write {}: {e}", path.display()),
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    let mut written = Vec::new();
    let mut write = |name: String, page: Vec<u8>| {
        let path = dir.join(name);
        std::fs::write(&path, page).map_err(|e| fail(&path, e))?;
        written.push(path);
        Ok::<(), Failure>(())
    };
    write("guilocker.1".into(), main_page())?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // After build(), a subcommand's display name is `guilocker-NAME` (the page's title)
        // and its bin name `guilocker NAME` (its synopsis), as git's pages have them.
        let man = Man::new(sub.clone()).manual(MANUAL).source(source());
        let mut page = Vec::new();
        man.render(&mut page).expect("writing to a Vec");
        write(man.get_filename(), page)?;
    }
    write("guilocker.conf.5".into(), conf_page())?;
    write(
        format!("{}.8", super::umount_helper::NAME),
        umount_helper_page(),
    )?;
    Ok(written)
}

/// umount.guilocker(8): what umount(8) runs for a person unmounting a guilocker volume.
fn umount_helper_page() -> Vec<u8> {
    let name = super::umount_helper::NAME;
    let mut roff = Roff::new();
    roff.control("TH", [name, "8", "", &source(), MANUAL]);
    roff.control("SH", ["NAME"]);
    roff.text([roman(format!(
        "{name} - put a guilocker volume away when its owner unmounts it"
    ))]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([
        bold(name),
        roman(" "),
        italic("mountpoint"),
        roman(" [-l] [-f] [-n] [-r] [-v]"),
    ]);
    roff.control("SH", ["DESCRIPTION"]);
    roff.text([roman(
        "The guilocker daemon mounts a volume as root and records uhelper=guilocker for it in \
         libmount's table (/run/mount/utab). When someone other than root unmounts it, with \
         umount(8) or a file manager's unmount button (gvfs runs umount as the person), \
         umount(8) runs this helper as that person. It asks the daemon to put the volume \
         away, as guilocker unmount would: only the person who unlocked it, or root, may. The \
         daemon unmounts the filesystem, locks the volume and powers the stick off. It is \
         not meant to be run by hand.",
    )]);
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roman(
        "0 when the volume was put away; 1 when the caller may not unmount it; 32, as \
         umount(8), when it failed, with \"target is busy\" when a program still uses it \
         (-l or -f detach it all the same).",
    )]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman("guilocker(1), guilocker-unmount(1), umount(8)")]);
    let mut page = Vec::new();
    roff.to_writer(&mut page).expect("writing to a Vec");
    page
}

/// guilocker(1): clap's sections, then the exit status, files and related pages.
fn main_page() -> Vec<u8> {
    let cmd = Cli::command().disable_help_subcommand(true);
    let visible: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_owned())
        .collect();
    let man = Man::new(cmd).manual(MANUAL).source(source());
    let mut page = Vec::new();
    for render in [
        Man::render_title,
        Man::render_name_section,
        Man::render_synopsis_section,
        Man::render_description_section,
        Man::render_options_section,
        Man::render_subcommands_section,
    ] {
        render(&man, &mut page).expect("writing to a Vec");
    }
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        (exit::OK, "Done."),
        (
            exit::FAILED,
            "Failed; one line on standard error names the device and the cause.",
        ),
        (exit::USAGE, "Bad arguments or request."),
        (
            exit::WRONG_SECRET,
            "Wrong password or key: nothing changed, try again.",
        ),
        (
            exit::CANNOT_OPEN,
            "The volume cannot be opened here (for example, encryption is still in progress).",
        ),
        (
            exit::BUSY,
            "In use: another program, mount or mapping holds the drive or its filesystem; nothing changed.",
        ),
    ] {
        roff.control("TP", [] as [&str; 0]);
        roff.text([bold(code.to_string())]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["FILES"]);
    for (file, what) in [
        (
            crate::config::DEFAULT_CONFIG,
            "The daemon's configuration; see guilocker.conf(5).",
        ),
        (
            crate::protocol::DEFAULT_SOCKET,
            "The daemon's control socket.",
        ),
        (
            "/etc/xdg/autostart/guilocker-agent.desktop",
            "Starts the agent at every login.",
        ),
    ] {
        roff.control("TP", [] as [&str; 0]);
        roff.text([italic(file)]);
        roff.text([roman(what)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut see: Vec<String> = visible
        .iter()
        .map(|s| format!("guilocker-{s}(1)"))
        .collect();
    see.extend(
        [
            "guilocker.conf(5)",
            "umount.guilocker(8)",
            "dislocker(1)",
            "mount(8)",
        ]
        .map(String::from),
    );
    roff.text([roman(see.join(", "))]);
    roff.to_writer(&mut page).expect("writing to a Vec");
    page
}

/// One documented key of the example configuration.
#[derive(Debug, PartialEq)]
pub struct ConfKey {
    /// `key = value` as in the example (a table's line is `[name]`).
    pub line: String,
    pub key: String,
    pub about: String,
}

/// The example's header (its first comment block), then each key with the comment above it.
pub fn conf_keys(example: &str) -> (String, Vec<ConfKey>) {
    let mut header = String::new();
    let mut keys: Vec<ConfKey> = Vec::new();
    let mut comment: Vec<&str> = Vec::new();
    let mut in_header = true;
    for line in example.lines() {
        let line = line.trim();
        if line.is_empty() {
            if in_header {
                header = comment.join(" ");
                comment.clear();
                in_header = false;
            }
            continue;
        }
        if let Some(text) = line.strip_prefix('#') {
            match keys.last_mut() {
                // A commented example right under a table (`# ntfs = [...]`) belongs to it.
                Some(table) if comment.is_empty() && table.line.starts_with('[') => {
                    table.about.push_str(&format!(" Example: {}.", text.trim()));
                }
                _ => comment.push(text.trim()),
            }
            continue;
        }
        in_header = false;
        let key = line
            .split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        keys.push(ConfKey {
            line: line.to_owned(),
            key,
            about: comment.join(" "),
        });
        comment.clear();
    }
    (header, keys)
}

/// guilocker.conf(5), from the example configuration.
fn conf_page() -> Vec<u8> {
    let (header, keys) = conf_keys(EXAMPLE_CONFIG);
    let mut roff = Roff::new();
    roff.control("TH", ["guilocker.conf", "5", "", &source(), MANUAL]);
    roff.control("SH", ["NAME"]);
    roff.text([roman(
        "guilocker.conf - configuration of the guilocker daemon",
    )]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([italic("/etc/guilocker/config.toml")]);
    roff.control("SH", ["DESCRIPTION"]);
    roff.text([roman(format!(
        "{header} Every key is optional; the values below are the defaults."
    ))]);
    roff.control("SH", ["KEYS"]);
    for key in &keys {
        roff.control("TP", [] as [&str; 0]);
        roff.text([bold(key.line.as_str())]);
        roff.text([roman(key.about.as_str())]);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman("guilocker(1), guilocker-daemon(1)")]);
    let mut page = Vec::new();
    roff.to_writer(&mut page).expect("writing to a Vec");
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Every key the daemon reads, named by destructuring: a new field does not compile until
    /// it is listed here, and then this test wants it in the example (and so in the page).
    fn config_keys() -> Vec<&'static str> {
        let Config {
            include_loop_devices: _,
            allowed_group: _,
            mount_root: _,
            read_only: _,
            poll_interval_ms: _,
            mount_options: _,
            engine: _,
            leave_bitlocker_to_desktop: _,
            require_active_session: _,
            internal_drives: _,
            ntfs_driver: _,
        } = Config::default();
        vec![
            "include_loop_devices",
            "allowed_group",
            "mount_root",
            "read_only",
            "poll_interval_ms",
            "mount_options",
            "engine",
            "leave_bitlocker_to_desktop",
            "require_active_session",
            "internal_drives",
            "ntfs_driver",
        ]
    }

    #[test]
    fn every_config_key_is_documented_with_its_default() {
        let (header, keys) = conf_keys(EXAMPLE_CONFIG);
        assert!(header.contains("SIGHUP"), "{header}");
        let documented: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
        let mut wanted = config_keys();
        wanted.sort();
        let mut have = documented.clone();
        have.sort();
        assert_eq!(have, wanted);
        for key in &keys {
            assert!(!key.about.is_empty(), "{} has no comment", key.key);
        }
        let options = keys.iter().find(|k| k.key == "mount_options").unwrap();
        assert!(options.about.contains("windows_names"), "{options:?}");
        // (That the example says the defaults is config.rs's test.)
    }

    #[test]
    fn pages_for_the_command_every_subcommand_and_the_config() {
        let dir = std::env::temp_dir().join(format!("guilocker-man-{}", std::process::id()));
        let written = man_pages(&dir).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let main = std::fs::read_to_string(dir.join("guilocker.1")).unwrap();
        for sub in Cli::command().get_subcommands() {
            let page = format!("guilocker-{}.1", sub.get_name());
            if sub.is_hide_set() {
                assert!(!names.contains(&page), "hidden {page} has a page");
                continue;
            }
            assert!(names.contains(&page), "{page} missing: {names:?}");
            assert!(main.contains(&format!("guilocker\\-{}(1)", sub.get_name())));
        }
        assert!(main.contains("EXIT STATUS") && main.contains("guilocker.conf(5)"));
        let helper = std::fs::read_to_string(dir.join("umount.guilocker.8")).unwrap();
        assert!(helper.contains(".TH umount.guilocker 8"), "{helper}");
        let unlock = std::fs::read_to_string(dir.join("guilocker-unlock.1")).unwrap();
        assert!(unlock.contains(".TH guilocker-unlock 1"), "{unlock}");
        assert!(unlock.contains("password\\-stdin"), "{unlock}");
        let conf = std::fs::read_to_string(dir.join("guilocker.conf.5")).unwrap();
        for key in config_keys() {
            assert!(conf.contains(key), "{key} not in guilocker.conf(5)");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn completions_know_every_visible_subcommand() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            write_completions(shell, &mut out);
            let script = String::from_utf8(out).unwrap();
            for sub in Cli::command()
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
            {
                assert!(
                    script.contains(sub.get_name()),
                    "{shell}: {}",
                    sub.get_name()
                );
            }
        }
    }
}
