//! A pidfile held with an exclusive lock: one daemon per pidfile, one agent per session.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PidfileError {
    #[error("already running (pid {pid}, pidfile {path})")]
    AlreadyRunning { pid: String, path: PathBuf },
    #[error("pidfile {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A pidfile held with an exclusive flock for the owner's whole life. The lock belongs to the
/// open file description, so it survives the daemon's forks.
pub struct Pidfile {
    file: Flock<File>,
    path: PathBuf,
}

impl Pidfile {
    pub fn lock(path: &Path) -> Result<Self, PidfileError> {
        let err = |source| PidfileError::Io {
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
                Err(PidfileError::AlreadyRunning {
                    pid: pid.trim().to_owned(),
                    path: path.into(),
                })
            }
            Err((_, errno)) => Err(err(errno.into())),
        }
    }

    /// Writes our (final) pid.
    pub fn write_pid(&mut self) -> Result<(), PidfileError> {
        let err = |source| PidfileError::Io {
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
