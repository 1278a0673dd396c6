//! The one error type of the BitLocker reader; messages name the value and the cause, never a secret.

use super::guid::Guid;
use super::info::{EncryptionState, ProtectorKind};
use super::recovery::RecoveryKeyError;
use std::fmt;
use std::io;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BitlockerError {
    #[error("cannot read {what} at offset {offset:#x}: {source}")]
    Io {
        what: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },

    #[error(
        "not a BitLocker volume (no -FVE-FS- or BitLocker To Go signature in the first sector)"
    )]
    NotBitlocker,

    #[error("this volume was encrypted by Windows Vista, whose BitLocker format is not supported")]
    Vista,

    #[error("BitLocker volume header: {cause}")]
    VolumeHeader { cause: String },

    #[error("metadata block {block} at offset {offset:#x}: {cause}")]
    Metadata {
        block: u8,
        offset: u64,
        cause: String,
    },

    #[error("no valid FVE metadata block ({})", Joined(.0))]
    NoValidMetadata(Vec<BitlockerError>),

    #[error("wrong password")]
    WrongPassword,

    #[error("wrong recovery key")]
    WrongRecoveryKey,

    #[error("recovery key: {0}")]
    RecoveryKey(#[from] RecoveryKeyError),

    #[error("not a BitLocker startup key (.BEK) file: {cause}")]
    StartupKeyFile { cause: String },

    #[error("this startup key belongs to volume {key_volume}, not to {volume}")]
    StartupKeyOtherVolume { key_volume: Guid, volume: Guid },

    #[error("this startup key belongs to key protector {protector}, which volume {volume} does not have")]
    StartupKeyNoProtector { protector: Guid, volume: Guid },

    #[error("the startup key for protector {protector} does not decrypt the volume master key (damaged .BEK file?)")]
    StartupKeyRejected { protector: Guid },

    #[error("this drive has no {wanted} protector; {hint}")]
    MissingProtector { wanted: ProtectorKind, hint: String },

    #[error("no protector of that kind can be used here (only {available})")]
    NoUsableProtector { available: String },

    #[error("{state}; let Windows finish it, then try again")]
    Conversion { state: EncryptionState },

    #[error("unsupported encryption method {method:#06x}")]
    UnsupportedCipher { method: u16 },

    #[error("the layout of the volume cannot be used: {cause}")]
    Layout { cause: String },

    #[error("cannot decrypt the {what}: {cause}")]
    DamagedKey { what: &'static str, cause: String },

    #[error("the volume has {total} protectors of this kind, far more than Windows makes (crafted or damaged metadata?); {tried} were tried in the time allowed and none opened it")]
    TooManyProtectors { tried: usize, total: usize },
}

impl BitlockerError {
    /// The secret was wrong or of the wrong kind: asking again may help (exit code 3).
    pub fn is_wrong_secret(&self) -> bool {
        matches!(
            self,
            Self::WrongPassword
                | Self::WrongRecoveryKey
                | Self::RecoveryKey(_)
                | Self::StartupKeyFile { .. }
                | Self::StartupKeyOtherVolume { .. }
                | Self::StartupKeyNoProtector { .. }
                | Self::StartupKeyRejected { .. }
                | Self::MissingProtector { .. }
        )
    }

    /// No secret can open this volume with this tool (exit code 4).
    pub fn cannot_open_here(&self) -> bool {
        matches!(
            self,
            Self::Vista
                | Self::NoUsableProtector { .. }
                | Self::Conversion { .. }
                | Self::UnsupportedCipher { .. }
                | Self::TooManyProtectors { .. }
        )
    }
}

/// Joins the per-block errors with "; " inside `NoValidMetadata`.
struct Joined<'a>(&'a [BitlockerError]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitlocker::recovery::GroupError;

    #[test]
    fn messages() {
        let e = BitlockerError::Metadata {
            block: 2,
            offset: 0x2c1d000,
            cause: "entry size 0 at 0x2c1d070 is invalid".into(),
        };
        assert_eq!(
            e.to_string(),
            "metadata block 2 at offset 0x2c1d000: entry size 0 at 0x2c1d070 is invalid"
        );
        let all = BitlockerError::NoValidMetadata(vec![BitlockerError::NotBitlocker, e]);
        assert!(all
            .to_string()
            .starts_with("no valid FVE metadata block (not a BitLocker volume"));
        assert!(all.to_string().ends_with(
            "; metadata block 2 at offset 0x2c1d000: entry size 0 at 0x2c1d070 is invalid)"
        ));
        let rk = BitlockerError::from(RecoveryKeyError::BadGroup {
            group: 3,
            cause: GroupError::NotDivisibleBy11,
        });
        assert!(rk.to_string().starts_with("recovery key: group 3"));
        assert!(rk.is_wrong_secret() && !rk.cannot_open_here());
        let m = BitlockerError::MissingProtector {
            wanted: ProtectorKind::Password,
            hint: "use the recovery key".into(),
        };
        assert_eq!(
            m.to_string(),
            "this drive has no password protector; use the recovery key"
        );
        let c = BitlockerError::Conversion {
            state: EncryptionState::InProgress,
        };
        assert!(c.to_string().starts_with("encryption is still in progress"));
        assert!(c.cannot_open_here() && !c.is_wrong_secret());
    }
}
