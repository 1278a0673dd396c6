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
            // Never through a symlink someone planted where the pidfile goes.
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => err(std::io::Error::other("is a symbolic link; refusing it")),
                _ => err(e),
            })?;
        // Ours and a plain file, or somebody else's to truncate.
        let meta = file.metadata().map_err(err)?;
        let euid = nix::unistd::Uid::effective().as_raw();
        if !meta.file_type().is_file() || std::os::unix::fs::MetadataExt::uid(&meta) != euid {
            return Err(err(std::io::Error::other(format!(
                "not a regular file owned by uid {euid}; refusing it"
            ))));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("guilocker-pidfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn locks_writes_and_refuses_a_second() {
        let dir = scratch("second");
        let path = dir.join("d.pid");
        let mut first = Pidfile::lock(&path).unwrap();
        first.write_pid().unwrap();
        let err = Pidfile::lock(&path).err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("already running (pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(!path.exists());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_refused_and_its_target_untouched() {
        let dir = scratch("symlink");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = dir.join("d.pid");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = Pidfile::lock(&path).err().unwrap().to_string();
        assert_eq!(
            err,
            format!(
                "pidfile {}: is a symbolic link; refusing it",
                path.display()
            )
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_users_file_is_refused() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let dir = scratch("owner");
        let path = dir.join("d.pid");
        std::fs::write(&path, "1\n").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let err = Pidfile::lock(&path).err().unwrap().to_string();
        assert!(
            err.ends_with("not a regular file owned by uid 0; refusing it"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
