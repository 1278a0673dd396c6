//! Waiting for the daemon's socket to (re)appear: inotify through `notify`, not a busy loop.

use notify::{RecursiveMode, Watcher};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// A safety net: if a file event is missed, try again after this long.
const RETRY: Duration = Duration::from_secs(30);

/// Returns when something is created next to the socket (or its directory appears), or after
/// [`RETRY`].
pub fn wait_for_socket(socket: &Path) {
    let Some(dir) = socket.ancestors().skip(1).find(|d| d.is_dir()) else {
        std::thread::sleep(RETRY);
        return;
    };
    let (tx, rx) = mpsc::channel();
    let mut watcher = match notify::recommended_watcher(tx) {
        Ok(w) => w,
        Err(e) => {
            log::debug!("cannot watch {}: {e}", dir.display());
            std::thread::sleep(RETRY);
            return;
        }
    };
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        log::debug!("cannot watch {}: {e}", dir.display());
        std::thread::sleep(RETRY);
        return;
    }
    // Re-check after the watch is in place: the socket may have appeared meanwhile.
    if socket.exists() {
        // Wait for a change anyway if the socket is stale; a fresh one answers at once.
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return;
        }
    }
    let deadline = std::time::Instant::now() + RETRY;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(event)) => {
                let ours = event
                    .paths
                    .iter()
                    .any(|p| socket.starts_with(p) || p == socket);
                if ours && event.kind.is_create() {
                    return;
                }
            }
            Ok(Err(_)) => {}
            Err(_) => return,
        }
    }
}
