//! What a screen reader sees of a dialog: `tests/atspi_dump.py`, parsed, and a wait on it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One line of `atspi_dump.py`: tab-separated depth, role, name, description, states.
#[derive(Debug)]
pub struct Node {
    pub role: String,
    pub name: String,
    pub states: String,
}

impl Node {
    pub fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split('\t');
        let _depth = fields.next()?;
        let role = fields.next()?.to_owned();
        let name = fields.next()?.to_owned();
        let _description = fields.next()?;
        let states = fields.next().unwrap_or_default().to_owned();
        Some(Self { role, name, states })
    }

    pub fn is(&self, state: &str) -> bool {
        self.states.split(',').any(|s| s == state)
    }
}

/// Runs the dump for process `pid` with `python` (a command already set up for the right
/// user and session bus); on failure, says why in place of the tree.
pub fn tree(mut python: Command, pid: u32) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/atspi_dump.py");
    let out = python
        .arg(script)
        .arg(pid.to_string())
        .output()
        .expect("run atspi_dump.py");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        format!(
            "(atspi_dump.py: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

/// Polls `dump` until a node matches (the accessibility tree sends us no event); shows the
/// last tree if none does before `timeout`.
pub fn wait_node(
    what: &str,
    timeout: Duration,
    poll: Duration,
    dump: impl Fn() -> String,
    matches: impl Fn(&Node) -> bool,
) -> Node {
    let deadline = Instant::now() + timeout;
    loop {
        let tree = dump();
        if let Some(node) = tree.lines().filter_map(Node::parse).find(|n| matches(n)) {
            return node;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the dialog's accessible tree:\n{tree}"
        );
        std::thread::sleep(poll);
    }
}
