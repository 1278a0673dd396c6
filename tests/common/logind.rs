//! Logins as logind sees them, in the systemd VMs: a person's session on a VT of seat0
//! (local; active once in the foreground), what polkit asks of whoever udisks serves and
//! what the agent follows.

use super::*;

/// A user's sessions (ids), as `loginctl list-sessions` lists them.
pub fn sessions_of(user: &str) -> Vec<String> {
    let out = run_ok(Command::new("loginctl").args(["list-sessions", "--no-legend"]));
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let id = f.next()?;
            let _uid = f.next()?;
            (f.next()? == user).then(|| id.to_owned())
        })
        .collect()
}

/// `loginctl show-session SESSION -p NAME --value`.
pub fn property(session: &str, name: &str) -> String {
    run_ok(Command::new("loginctl").args(["show-session", session, "-p", name, "--value"]))
        .trim()
        .to_owned()
}

/// Looks every 50 ms, for what only loginctl tells.
fn poll<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    poll_for(what, WAIT, Duration::from_millis(50), probe)
}

/// A long-lived session of a user on VT `tty` of seat0 (a getty-like login); stopped on
/// drop.
pub struct VtSession {
    pub unit: String,
    pub id: String,
}

impl VtSession {
    pub fn start(user: &str, tty: u32) -> Self {
        let unit = format!("guilocker-vt{tty}");
        let before = sessions_of(user);
        run_ok(Command::new("systemd-run").args([
            "--quiet",
            &format!("--unit={unit}"),
            "--uid",
            user,
            "-p",
            "PAMName=login",
            "-p",
            &format!("TTYPath=/dev/tty{tty}"),
            "-p",
            "StandardInput=tty",
            "-p",
            "StandardOutput=tty",
            "sleep",
            "infinity",
        ]));
        let id = poll(&format!("a session on tty{tty}"), || {
            sessions_of(user)
                .into_iter()
                .find(|s| !before.contains(s) && property(s, "TTY") == format!("tty{tty}"))
        });
        Self { unit, id }
    }

    /// Brings it to the foreground of seat0 (its VT), as a person switching to it.
    pub fn activate(&self) {
        run_ok(Command::new("loginctl").args(["activate", &self.id]));
        poll(&format!("session {} in the foreground", self.id), || {
            (property(&self.id, "Active") == "yes").then_some(())
        });
    }

    /// Its cgroup's `cgroup.procs`: a process written there belongs to the session, and so
    /// do its children (a program started "in" the session, as from its desktop).
    pub fn procs(&self) -> PathBuf {
        let scope = property(&self.id, "Scope");
        let group = run_ok(Command::new("systemctl").args([
            "show",
            &scope,
            "-p",
            "ControlGroup",
            "--value",
        ]));
        Path::new("/sys/fs/cgroup")
            .join(group.trim().trim_start_matches('/'))
            .join("cgroup.procs")
    }
}

impl Drop for VtSession {
    fn drop(&mut self) {
        let _ = Command::new("systemctl")
            .args(["stop", &self.unit])
            .output();
    }
}
