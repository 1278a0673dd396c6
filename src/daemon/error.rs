//! The daemon's error type, and its one mapping onto the wire's error kinds.

use crate::process::ProcessError;
use crate::protocol::ErrorKind;
use thiserror::Error;

/// Everything a request can fail with. Messages start with the device (or mountpoint) and
/// say the cause in words a person understands; none contains a secret.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{device}: no such device")]
    NoSuchDevice { device: String },
    #[error("{device}: not a BitLocker volume")]
    NotBitLocker { device: String },
    #[error("{device}: {what}")]
    InvalidState { device: String, what: String },
    #[error("{device}: not allowed: {why}")]
    NotAuthorized { device: String, why: String },
    #[error("{device}: {cause}")]
    WrongSecret { device: String, cause: String },
    #[error("{device}: cannot be opened here: {cause}")]
    CannotOpen { device: String, cause: String },
    #[error("{target}: in use by {holders}; close them, or use --force")]
    Busy { target: String, holders: String },
    /// Someone else uses the partition (a mount, a mapping, a program): never a second writer.
    #[error("{device}: already in use by {holder}")]
    InUse { device: String, holder: String },
    #[error("{device}: {context}: {source}")]
    Process {
        device: String,
        context: &'static str,
        source: ProcessError,
    },
    #[error("{device}: {context} {path}: {source}")]
    Io {
        device: String,
        context: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// A filesystem driver refused to mount: `reason` is what the kernel logged about the
    /// device during the attempt (or, without that, what the mount helper printed).
    #[error("{device}: {driver} cannot mount the filesystem: {reason}")]
    MountRefused {
        device: String,
        driver: &'static str,
        reason: String,
    },
    #[error("{device}: {message}")]
    Failed { device: String, message: String },
}

impl DaemonError {
    /// The wire kind for this error (greetd's `wrap_result`, in one place).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadRequest(_) => ErrorKind::BadRequest,
            Self::NoSuchDevice { .. } | Self::NotBitLocker { .. } => ErrorKind::NoSuchDevice,
            Self::InvalidState { .. } => ErrorKind::InvalidState,
            Self::NotAuthorized { .. } => ErrorKind::NotAuthorized,
            Self::WrongSecret { .. } => ErrorKind::WrongSecret,
            Self::CannotOpen { .. } => ErrorKind::CannotOpen,
            Self::Busy { .. } | Self::InUse { .. } => ErrorKind::Busy,
            Self::Process { .. }
            | Self::Io { .. }
            | Self::MountRefused { .. }
            | Self::Failed { .. } => ErrorKind::Failed,
        }
    }

    /// A child process ran and said no (as opposed to one that hung or could not start).
    pub fn process_refused(&self) -> bool {
        matches!(
            self,
            Self::Process {
                source: ProcessError::Failed { .. },
                ..
            }
        )
    }

    pub fn failed(device: &str, message: impl Into<String>) -> Self {
        Self::Failed {
            device: device.to_owned(),
            message: message.into(),
        }
    }

    pub fn io(
        device: &str,
        context: &'static str,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            device: device.to_owned(),
            context,
            path: path.display().to_string(),
            source,
        }
    }
}
