//! Classic daemonization and the pidfile that keeps a second daemon out.

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::unistd::{chdir, dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2, setsid, ForkResult};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DaemonizeError {
    #[error("already running (pid {pid}, pidfile {path})")]
    AlreadyRunning { pid: String, path: PathBuf },
    #[error("pidfile {path}: {source}")]
    Pidfile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot detach: {0}")]
    Detach(nix::Error),
}

/// A pidfile held with an exclusive flock for the daemon's whole life. The lock belongs to the
/// open file description, so it survives the forks of [`detach`].
pub struct Pidfile {
    file: Flock<File>,
    path: PathBuf,
}

impl Pidfile {
    pub fn lock(path: &Path) -> Result<Self, DaemonizeError> {
        let err = |source| DaemonizeError::Pidfile {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(err)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(Self {
                file,
                path: path.into(),
            }),
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Err(DaemonizeError::AlreadyRunning {
                    pid: pid.trim().to_owned(),
                    path: path.into(),
                })
            }
            Err((_, errno)) => Err(err(errno.into())),
        }
    }

    /// Writes our (final) pid.
    pub fn write_pid(&mut self) -> Result<(), DaemonizeError> {
        let err = |source| DaemonizeError::Pidfile {
            path: self.path.clone(),
            source,
        };
        self.file.set_len(0).map_err(err)?;
        self.file.rewind().map_err(err)?;
        writeln!(&mut *self.file, "{}", std::process::id()).map_err(err)?;
        Ok(())
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
