//! Fault injection, authorization (issue 10, case 9): root, a member of `allowed_group` and a
//! user outside it, each trying to unlock, to unmount their own volume and another's, and
//! to unlock for someone else (`--owner`), and what each may see (`status`, `inspect`; issue
//! 12, item 7). Every refusal is one line that names the device
//! and why; nothing is unlocked or put away by a refused request.
//!
//! Needs root, dislocker's tools for the stick, and the fixtures; skips without, except
//! under CI=true.

mod common;

use common::*;
use guilocker::protocol::{DeviceState, EventKind};

const PASSWORD: &str = "anaconda";

struct Matrix {
    daemon: TestDaemon,
    dev: String,
}

impl Matrix {
    /// `guilocker ARGS` as `user` (root when `None`), the password on stdin where it unlocks.
    fn run(&self, user: Option<&str>, args: &[&str]) -> (i32, String) {
        let stdin = if args[0] == "unlock" {
            format!("{PASSWORD}\n")
        } else {
            String::new()
        };
        let (code, _, err) = self.daemon.cli(user, args, &stdin);
        (code, err.trim().to_owned())
    }

    fn refused(&self, user: Option<&str>, args: &[&str], why: &str) {
        let before = self.daemon.device(&self.dev).unwrap();
        let (code, err) = self.run(user, args);
        println!(
            "{:<16} {:<40} -> {err}",
            user.unwrap_or("root"),
            args.join(" ")
        );
        assert_eq!(code, 1, "{err}");
        assert_eq!(err, format!("guilocker: {}: not allowed: {why}", self.dev));
        assert_eq!(err.lines().count(), 1);
        let after = self.daemon.device(&self.dev).unwrap();
        assert_eq!(
            (after.state, &after.owner),
            (before.state, &before.owner),
            "a refused request changed the volume"
        );
    }

    fn allowed(&self, user: Option<&str>, args: &[&str]) {
        let (code, err) = self.run(user, args);
        println!(
            "{:<16} {:<40} -> ok",
            user.unwrap_or("root"),
            args.join(" ")
        );
        assert_eq!(code, 0, "{} {args:?}: {err}", user.unwrap_or("root"));
    }

    fn owner(&self) -> Option<String> {
        let info = self.daemon.device(&self.dev).unwrap();
        assert_eq!(info.state, DeviceState::Mounted);
        info.owner
    }
}

#[test]
fn every_caller_and_action_gets_its_answer() {
    let _serial = serial();
    if !prerequisites(&["dislocker", "losetup", "mkntfs", "runuser"]) {
        return;
    }
    ensure_user(TEST_USER, true);
    ensure_user(OTHER_USER, false);
    let daemon = TestDaemon::start("fault-auth");
    let image = make_stick(&daemon.dir, "bitlk-aes-xts-128", "ntfs", "AUTH", "none");
    let mut events = daemon.events();
    let _stick = Stick::plug(&image, false);
    let dev = _stick.volume();
    wait_event(&mut events, "the volume", |k, d| {
        k == EventKind::Added && d.device == dev
    });
    let m = Matrix { daemon, dev };
    let dev = m.dev.as_str();
    let (member, outsider) = (Some(TEST_USER), Some(OTHER_USER));
    let outside =
        format!("{OTHER_USER} is not in the group 'plugdev' (see allowed_group in the config)");
    let unlock = ["unlock", dev, "--password-stdin"];
    let for_member = ["unlock", dev, "--password-stdin", "--owner", TEST_USER];
    let for_outsider = ["unlock", dev, "--password-stdin", "--owner", OTHER_USER];
    let unmount = ["unmount", dev];

    // Locked: who may open it, and for whom.
    m.refused(outsider, &unlock, &outside);
    m.refused(outsider, &for_member, &outside);
    m.refused(
        member,
        &for_outsider,
        &format!("only root may unlock for another user ({OTHER_USER})"),
    );

    // The member's own volume: others may not put it away; the member may.
    m.allowed(member, &unlock);
    assert_eq!(m.owner().as_deref(), Some(TEST_USER));
    // Issue 12, item 7: the outsider sees nothing of it (no owner, mountpoint, label, GUID)
    // and may not inspect it; the member and root see it.
    let listed = |user: Option<&str>| -> Vec<String> {
        let (code, out, err) = m.daemon.cli(user, &["status", "--json"], "");
        assert_eq!(code, 0, "{err}");
        let devices: Vec<guilocker::protocol::DeviceInfo> = serde_json::from_str(&out).unwrap();
        devices.into_iter().map(|d| d.device).collect()
    };
    assert!(!listed(outsider).contains(&m.dev), "{OTHER_USER} sees it");
    assert!(listed(member).contains(&m.dev));
    assert!(listed(None).contains(&m.dev));
    m.refused(outsider, &["inspect", dev], &outside);
    m.allowed(member, &["inspect", dev]);
    m.refused(
        outsider,
        &unmount,
        &format!("it was unlocked by {TEST_USER}, not by {OTHER_USER}"),
    );
    m.allowed(member, &unmount);
    // Put away in two steps that clients see: locking (unmounting), then locked.
    for (state, what) in [
        (DeviceState::Locking, "locking"),
        (DeviceState::Locked, "locked"),
    ] {
        let info = wait_event(&mut events, what, |k, d| {
            k == EventKind::Changed && d.device == dev && d.state == state
        });
        assert_eq!(info.mountpoint, None, "{info:?}");
    }

    // Root, for the member: it is the member's. Root, for itself: root's, and a member may
    // not put it away.
    for (args, owner, other, who) in [
        (&for_member[..], TEST_USER, outsider, OTHER_USER),
        (&unlock[..], "root", member, TEST_USER),
    ] {
        m.allowed(None, args);
        assert_eq!(m.owner().as_deref(), Some(owner));
        m.refused(
            other,
            &unmount,
            &format!("it was unlocked by {owner}, not by {who}"),
        );
        m.allowed(if owner == "root" { None } else { member }, &unmount);
    }

    // Root may also put away what a member unlocked.
    m.allowed(member, &unlock);
    m.allowed(None, &unmount);
    assert_eq!(m.daemon.device(dev).unwrap().state, DeviceState::Locked);
}
