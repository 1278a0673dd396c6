//! Classic daemonization: double fork, setsid, chdir, umask, /dev/null, readiness pipe.

use nix::fcntl::OFlag;
use nix::unistd::{chdir, dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2, setsid, ForkResult};
use std::fs::File;
use std::io::{Read, Write};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DaemonizeError {
    #[error("cannot detach: {0}")]
    Detach(nix::Error),
}

/// The detached daemon's way to tell the waiting parent it is ready, or why it is not.
pub struct Readiness(File);

impl Readiness {
    pub fn ready(mut self) {
        let _ = self.0.write_all(b"R");
    }

    pub fn fail(mut self, message: &str) {
        let _ = write!(self.0, "E{message}");
    }
}

/// Double fork + setsid: the daemon is no session leader, so it can never acquire a
/// controlling terminal; chdir("/") so it never pins a mounted filesystem; umask 022 so
/// nothing it creates is world-writable; fds 0-2 on /dev/null. The original process waits
/// for [`Readiness`] and exits 0 when the daemon is listening, 1 (with its message) if not.
/// Must be called before any thread is started.
pub fn detach() -> Result<Readiness, DaemonizeError> {
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).map_err(DaemonizeError::Detach)?;
    // SAFETY: single-threaded at this point (documented precondition).
    match unsafe { fork() }.map_err(DaemonizeError::Detach)? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            let mut answer = String::new();
            let _ = File::from(read_end).read_to_string(&mut answer);
            match answer.strip_prefix('R') {
                Some(_) => std::process::exit(0),
                None => {
                    let why = answer
                        .strip_prefix('E')
                        .unwrap_or("the daemon exited during start-up");
                    eprintln!("guilocker: {why}");
                    std::process::exit(1)
                }
            }
        }
        ForkResult::Child => {}
    }
    drop(read_end);
    setsid().map_err(DaemonizeError::Detach)?;
    // SAFETY: still single-threaded.
    match unsafe { fork() }.map_err(DaemonizeError::Detach)? {
        // SAFETY: _exit skips destructors and atexit handlers that belong to the daemon.
        ForkResult::Parent { .. } => unsafe { libc::_exit(0) },
        ForkResult::Child => {}
    }
    chdir("/").map_err(DaemonizeError::Detach)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| DaemonizeError::Detach(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
    dup2_stdin(&null).map_err(DaemonizeError::Detach)?;
    dup2_stdout(&null).map_err(DaemonizeError::Detach)?;
    dup2_stderr(&null).map_err(DaemonizeError::Detach)?;
    Ok(Readiness(File::from(write_end)))
}
