//! Fault injection, crafted labels (issue 10, case 8; issue 12, item 2): a stick whose NTFS
//! label tries to climb out of the media directory, holds a slash, a newline or a terminal
//! escape, or is as long as NTFS allows in multi-byte characters. Each is mounted inside /media/USER (here the test's media root), in a
//! directory of one sane name, and its files are readable. (Crafted boot sectors are fuzzed:
//! fuzz/fuzz_targets/filesystem.rs.)
//!
//! Needs root, the stick tools and the fixtures; skips without, except under CI=true.

mod common;

use common::*;
use guilocker::protocol::{DeviceState, EventKind};
use std::path::{Component, Path};

#[test]
fn crafted_labels_stay_inside_the_media_directory() {
    let _serial = serial();
    if !prerequisites(&["dislocker", "losetup", "mkntfs", "runuser"]) {
        return;
    }
    ensure_user(TEST_USER, true);
    let longest = "é".repeat(128);
    // (label on the disk, label shown, directory)
    let labels = [
        ("../../etc", "../../etc", "etc"),
        ("a/b", "a/b", "ab"),
        ("two\nlines", "twolines", "twolines"),
        // Issue 12, item 2: a label that would retitle root's terminal and clear it.
        ("\u{1b}]0;pwned\u{7}\u{1b}[2J", "]0;pwned[2J", "]0;pwned[2J"),
        // Nothing left of it: the volume's serial number names the directory.
        (".", ".", ""),
        (longest.as_str(), longest.as_str(), &longest[..64]),
    ];
    let daemon = TestDaemon::start("fault-labels");
    let own = daemon.media.join(TEST_USER);
    let mut events = daemon.events();
    for (label, shown, expected) in labels {
        let image = make_stick(&daemon.dir, "bitlk-aes-xts-128", "ntfs", label, "none");
        let stick = Stick::plug(&image, false);
        let dev = stick.volume();
        wait_event(&mut events, "the stick", |k, d| {
            k == EventKind::Added && d.device == dev
        });
        let (code, _, err) = daemon.unlock_with_password(Some(TEST_USER), &dev, "anaconda");
        assert_eq!(code, 0, "{label:?}: {err}");
        let info = daemon.device(&dev).unwrap();
        assert_eq!(info.state, DeviceState::Mounted);
        // The label as the disk has it, less what could drive a terminal; the directory,
        // sane; and `status` prints no escape.
        assert_eq!(info.label.as_deref(), Some(shown));
        let (code, table, err) = daemon.cli(None, &["status"], "");
        assert_eq!(code, 0, "{err}");
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table:?}"
        );
        let mountpoint = Path::new(info.mountpoint.as_deref().unwrap()).to_owned();
        println!("{label:?} -> {}", mountpoint.display());
        assert_eq!(mountpoint.parent(), Some(own.as_path()), "{label:?}");
        assert!(
            mountpoint
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
            "{mountpoint:?}"
        );
        let name = mountpoint.file_name().unwrap().to_str().unwrap();
        if expected.is_empty() {
            assert!(
                name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit()),
                "{label:?} -> {name:?}"
            );
        } else {
            assert_eq!(name, expected, "{label:?}");
        }
        assert_eq!(
            std::fs::read_to_string(mountpoint.join("hello.txt")).unwrap(),
            "hello from windows\n"
        );
        let (code, _, err) = daemon.cli(None, &["unmount", &dev], "");
        assert_eq!(code, 0, "{err}");
        assert!(!mountpoint.exists(), "{mountpoint:?} left behind");
        drop(stick);
        wait_event(&mut events, "the stick to go", |k, d| {
            k == EventKind::Removed && d.device == dev
        });
    }
}
