//! Waiting for the daemon's socket to (re)appear: inotify through `notify`, not a busy loop.

use notify::{RecursiveMode, Watcher};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A safety net: if a file event is missed, try again after this long.
const RETRY: Duration = Duration::from_secs(30);

/// Returns once the socket accepts a connection, or after [`RETRY`].
///
/// Watches the nearest existing directory on the socket's path and looks again after every
/// change to the socket or to a directory on its path. So it follows the socket's directory
/// being removed and made again (systemd's `RuntimeDirectory=` does that on every restart),
/// and a socket that is not connectable yet when it appears: the daemon binds it, then
/// makes it connectable for everyone with a chmod.
pub fn wait_for_socket(socket: &Path) {
    wait(socket, RETRY, &|_, _| {});
}

/// Where [`wait_once`] is, for the tests' hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// This directory was chosen to be watched; the watch is not in place yet.
    Chosen,
    /// The watch on this directory is in place.
    Watching,
}

/// [`wait_for_socket`] with a hook the tests use to change things at awkward moments.
fn wait(socket: &Path, limit: Duration, hook: &dyn Fn(Stage, &Path)) {
    let deadline = Instant::now() + limit;
    while let Wait::Changed = wait_once(socket, deadline, hook) {}
}

enum Wait {
    /// The socket accepts connections, or the deadline passed.
    Done,
    /// Something changed on the socket's path: look again.
    Changed,
}

/// The directory to watch: the nearest existing one on the socket's path.
fn nearest_dir(socket: &Path) -> Option<&Path> {
    socket.ancestors().skip(1).find(|d| d.is_dir())
}

fn wait_once(socket: &Path, deadline: Instant, hook: &dyn Fn(Stage, &Path)) -> Wait {
    let Some(dir) = nearest_dir(socket) else {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        return Wait::Done;
    };
    hook(Stage::Chosen, dir);
    let (tx, rx) = mpsc::channel();
    let watched = notify::recommended_watcher(tx)
        .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w));
    let _watcher = match watched {
        Ok(w) => w,
        // Removed since it was chosen (and maybe made again already).
        Err(e) if gone(&e) || !dir.is_dir() => return Wait::Changed,
        Err(e) => {
            log::debug!("cannot watch {}: {e}", dir.display());
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            return Wait::Done;
        }
    };
    log::debug!(
        "waiting for {} (watching {})",
        socket.display(),
        dir.display()
    );
    hook(Stage::Watching, dir);
    // Looked at again now that the watch is in place, so nothing that happened before it
    // is missed: the socket may answer already, or a directory nearer to it been made.
    if UnixStream::connect(socket).is_ok() {
        return Wait::Done;
    }
    if nearest_dir(socket) != Some(dir) {
        return Wait::Changed;
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            // The socket itself, or the watched directory or one on the way to the socket
            // (made, removed, moved, changed; merely opened changes nothing).
            Ok(Ok(event))
                if !event.kind.is_access() && event.paths.iter().any(|p| socket.starts_with(p)) =>
            {
                log::debug!("{:?} {:?}: looking again", event.kind, event.paths);
                return Wait::Changed;
            }
            Ok(_) => {}
            Err(_) => return Wait::Done,
        }
    }
}

/// The watch failed because the path is not there.
fn gone(e: &notify::Error) -> bool {
    match &e.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::sync::Mutex;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("guilocker-reconnect-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs [`wait`] on a thread with `hook`; returns how long it took.
    fn waiter(
        socket: &Path,
        hook: impl Fn(Stage, &Path) + Send + 'static,
    ) -> std::thread::JoinHandle<Duration> {
        let socket = socket.to_owned();
        std::thread::spawn(move || {
            let start = Instant::now();
            wait(&socket, RETRY, &hook);
            start.elapsed()
        })
    }

    /// Found at once, not after the 30 s safety net.
    fn assert_prompt(waited: Duration) {
        assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    }

    /// The socket's directory is removed under the watch and made again, then the socket
    /// appears.
    #[test]
    fn follows_the_directory_being_made_again() {
        let base = scratch("remade");
        let dir = base.join("run");
        std::fs::create_dir(&dir).unwrap();
        let socket = dir.join("control.sock");
        let (tx, watching) = mpsc::channel();
        let tx = Mutex::new(tx);
        let waiter = waiter(&socket, move |stage, _| {
            if stage == Stage::Watching {
                let _ = tx.lock().unwrap().send(());
            }
        });
        watching.recv().unwrap();
        std::fs::remove_dir(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        let _listener = UnixListener::bind(&socket).unwrap();
        assert_prompt(waiter.join().unwrap());
        let _ = std::fs::remove_dir_all(&base);
    }

    /// The directory is made after its parent was chosen to be watched but before that
    /// watch is in place, so its creation is never seen; the socket appears in it later.
    #[test]
    fn sees_a_directory_made_before_the_watch_took() {
        let base = scratch("early");
        let dir = base.join("run");
        let socket = dir.join("control.sock");
        let (tx, chosen_dir) = mpsc::channel();
        let made = dir.clone();
        let tx = Mutex::new(tx);
        let waiter = waiter(&socket, move |stage, chosen| {
            if stage == Stage::Chosen {
                if chosen != made {
                    std::fs::create_dir(&made).unwrap();
                }
                let _ = tx.lock().unwrap().send(chosen.to_owned());
            }
        });
        // Once it chooses the new directory, the socket appears.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(chosen) =
            chosen_dir.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if chosen == dir {
                break;
            }
        }
        let _listener = UnixListener::bind(&socket).unwrap();
        assert_prompt(waiter.join().unwrap());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn returns_at_once_when_the_socket_answers() {
        let dir = scratch("ready");
        let socket = dir.join("control.sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        let start = Instant::now();
        wait_for_socket(&socket);
        assert_prompt(start.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
