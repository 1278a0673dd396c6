//! The engine's one error type: every message names the device and the cause.

use crate::bitlocker::BitlockerError;
use std::io;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", path.display())]
    Bitlocker {
        path: PathBuf,
        #[source]
        source: BitlockerError,
    },
    #[error("{}: the key is for encryption method {key:#06x}, the volume uses {volume:#06x}", path.display())]
    KeyMismatch {
        path: PathBuf,
        volume: u16,
        key: u16,
    },
    #[error("{}: opened read-only", path.display())]
    ReadOnly { path: PathBuf },
    #[error("{}: write at {offset:#x} is past the end of the {size}-byte volume", path.display())]
    PastEnd {
        path: PathBuf,
        offset: u64,
        size: u64,
    },
    #[error("{}: write at {offset:#x} falls in an area BitLocker reserves", path.display())]
    Reserved { path: PathBuf, offset: u64 },
    #[error("the volume key on fd 3: {cause}")]
    Key { cause: String },
    #[error("{}: cannot serve the decrypted view: {source}", mountpoint.display())]
    Fuse {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl EngineError {
    /// The errno a FUSE reply carries for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Self::ReadOnly { .. } => libc::EROFS,
            Self::PastEnd { .. } => libc::ENOSPC,
            Self::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }
}
