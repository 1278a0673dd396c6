//! Turns a secret into the FVEK: stretch or take the protector's key, unwrap the VMK, then the FVEK.
//!
//! Only protectors of the kind the secret is for are tried, so a wrong password costs one
//! 2^20-round stretch per password protector (and none for the others).

use super::bek::parse_startup_key;
use super::error::BitlockerError;
use super::info::{EncryptionState, ProtectorKind};
use super::kdf;
use super::keys::{Fvek, UnwrapError, WrappedKey};
use super::metadata::{Metadata, ProtectorKeys};
use super::recovery;
use crate::secret::{SecretBytes, SecretString};
use std::fmt;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The secret offered to unlock a volume.
pub enum Key<'a> {
    Password(&'a SecretString),
    RecoveryPassword(&'a SecretString),
    /// Contents of a .BEK file.
    StartupKey(&'a [u8]),
    /// No secret: the volume's protection is suspended.
    ClearKey,
}

impl fmt::Debug for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Password(_) => "Password(***)",
            Self::RecoveryPassword(_) => "RecoveryPassword(***)",
            Self::StartupKey(_) => "StartupKey(***)",
            Self::ClearKey => "ClearKey",
        })
    }
}

const VMK: &str = "volume master key";
const FVEK: &str = "full-volume encryption key";

impl Metadata {
    /// Errors when no secret would let this tool open the volume (exit code 4).
    pub fn check_openable(&self) -> Result<(), BitlockerError> {
        if self.info.state != EncryptionState::Complete {
            return Err(BitlockerError::Conversion {
                state: self.info.state,
            });
        }
        if self.info.cipher.key_bytes().is_none() {
            return Err(BitlockerError::UnsupportedCipher {
                method: self.info.encryption_method,
            });
        }
        if !self.protectors.iter().any(|p| p.kind.usable_here()) {
            return Err(self.no_usable_protector());
        }
        Ok(())
    }

    fn no_usable_protector(&self) -> BitlockerError {
        let mut kinds: Vec<String> = Vec::new();
        for p in &self.protectors {
            let name = p.kind.to_string();
            if !kinds.contains(&name) {
                kinds.push(name);
            }
        }
        BitlockerError::NoUsableProtector {
            available: if kinds.is_empty() {
                "none".into()
            } else {
                kinds.join(" / ")
            },
        }
    }

    /// The protectors of `kind`, or the error telling what to use instead.
    fn candidates(&self, kind: ProtectorKind) -> Result<Vec<&ProtectorKeys>, BitlockerError> {
        let found: Vec<_> = self.protectors.iter().filter(|p| p.kind == kind).collect();
        if !found.is_empty() {
            return Ok(found);
        }
        let has = |k| self.protectors.iter().any(|p| p.kind == k);
        if has(ProtectorKind::ClearKey) {
            return Err(BitlockerError::MissingProtector {
                wanted: kind,
                hint: "it opens without a secret (its protection is suspended)".into(),
            });
        }
        let others: Vec<&str> = [
            (ProtectorKind::Password, "password"),
            (ProtectorKind::RecoveryPassword, "recovery key"),
            (ProtectorKind::StartupKey, "startup key (.BEK file)"),
        ]
        .into_iter()
        .filter(|&(k, _)| k != kind && has(k))
        .map(|(_, name)| name)
        .collect();
        if others.is_empty() {
            return Err(self.no_usable_protector());
        }
        Err(BitlockerError::MissingProtector {
            wanted: kind,
            hint: format!("use the {}", others.join(" or the ")),
        })
    }
}

/// Checks that the volume can be opened here, then derives its FVEK from `key`.
pub fn unlock(meta: &Metadata, key: Key<'_>) -> Result<Fvek, BitlockerError> {
    meta.check_openable()?;
    derive_fvek(meta, key)
}

/// Derives the FVEK whatever the volume's state (e.g. to verify a secret, or for tests).
pub fn derive_fvek(meta: &Metadata, key: Key<'_>) -> Result<Fvek, BitlockerError> {
    let vmk = match key {
        Key::Password(password) => {
            let protectors = meta.candidates(ProtectorKind::Password)?;
            let initial = kdf::password_initial(password.expose());
            by_stretch(&protectors, &initial, BitlockerError::WrongPassword)?
        }
        Key::RecoveryPassword(text) => {
            let protectors = meta.candidates(ProtectorKind::RecoveryPassword)?;
            let initial = kdf::recovery_initial(&*recovery::parse(text.expose())?);
            by_stretch(&protectors, &initial, BitlockerError::WrongRecoveryKey)?
        }
        Key::StartupKey(file) => by_startup_key(meta, file)?,
        Key::ClearKey => by_clear_key(&meta.candidates(ProtectorKind::ClearKey)?)?,
    };
    fvek_from_vmk(meta, &vmk)
}

/// Protectors of one kind whose salts are stretched per attempt, at most. Windows makes one
/// password protector and a few recovery keys; 64 KiB of crafted metadata holds about 500,
/// each costing a 2^20-round stretch (seconds together) on every attempt.
pub const MAX_STRETCHES: usize = 16;

/// Time after which no further salt is stretched in one attempt (the one under way finishes).
/// A stretch takes 0.1-0.5 s on a PC and about 2 s on a small ARM board, and a volume from
/// Windows needs one or two: the budget only ever cuts crafted metadata short.
pub const STRETCH_BUDGET: Duration = Duration::from_secs(4);

/// The 2^20-round stretch of an initial key with a salt (swapped for a counter in tests).
type Stretch<'a> = dyn FnMut(&[u8; 32], &[u8; 16]) -> Zeroizing<[u8; 32]> + 'a;

/// Time spent so far in this attempt (a fake clock in tests).
type Elapsed<'a> = dyn FnMut() -> Duration + 'a;

/// Tries each protector's salt; each salt is stretched once, at most [`MAX_STRETCHES`] of
/// them, and none started after [`STRETCH_BUDGET`].
fn by_stretch(
    protectors: &[&ProtectorKeys],
    initial: &[u8; 32],
    wrong: BitlockerError,
) -> Result<Zeroizing<[u8; 32]>, BitlockerError> {
    let started = Instant::now();
    by_stretch_with(protectors, initial, wrong, &mut kdf::stretch, &mut || {
        started.elapsed()
    })
}

fn by_stretch_with(
    protectors: &[&ProtectorKeys],
    initial: &[u8; 32],
    wrong: BitlockerError,
    stretch: &mut Stretch<'_>,
    elapsed: &mut Elapsed<'_>,
) -> Result<Zeroizing<[u8; 32]>, BitlockerError> {
    let mut damaged = None;
    let mut cut_short = false;
    let mut stretched: Vec<([u8; 16], Zeroizing<[u8; 32]>)> = Vec::new();
    for p in protectors {
        let (Some(salt), Some(vmk)) = (p.salt, &p.vmk) else {
            damaged = Some(format!(
                "key protector {} lacks its stretch key or wrapped key",
                p.guid
            ));
            continue;
        };
        let key = match stretched.iter().find(|(s, _)| *s == salt) {
            Some((_, k)) => k.clone(),
            None if stretched.len() == MAX_STRETCHES => {
                log::warn!(
                    "{} protectors of one kind; tried the first {MAX_STRETCHES} salts",
                    protectors.len()
                );
                cut_short = true;
                break;
            }
            None if elapsed() >= STRETCH_BUDGET => {
                log::warn!(
                    "{} protectors of one kind; tried {} salts in {:?}, the time allowed",
                    protectors.len(),
                    stretched.len(),
                    STRETCH_BUDGET
                );
                cut_short = true;
                break;
            }
            None => {
                let key = stretch(initial, &salt);
                stretched.push((salt, key.clone()));
                key
            }
        };
        match unwrap_vmk(vmk, &key) {
            Ok(v) => return Ok(v),
            Err(UnwrapError::Tag) => {}
            Err(UnwrapError::Layout(cause)) => damaged = Some(cause),
        }
    }
    // Not "wrong": salts were left untried, so the secret may be right.
    let wrong = if cut_short {
        BitlockerError::TooManyProtectors {
            tried: stretched.len(),
            total: protectors.len(),
        }
    } else {
        wrong
    };
    Err(damaged.map_or(wrong, |cause| BitlockerError::DamagedKey {
        what: VMK,
        cause,
    }))
}

fn by_startup_key(meta: &Metadata, file: &[u8]) -> Result<Zeroizing<[u8; 32]>, BitlockerError> {
    let startup = parse_startup_key(file)?;
    let volume = meta.info.guid;
    if let Some(key_volume) = startup.volume.filter(|&v| v != volume) {
        return Err(BitlockerError::StartupKeyOtherVolume { key_volume, volume });
    }
    let protector = meta
        .protectors
        .iter()
        .find(|p| p.kind == ProtectorKind::StartupKey && p.guid == startup.protector)
        .ok_or(BitlockerError::StartupKeyNoProtector {
            protector: startup.protector,
            volume,
        })?;
    let vmk = protector
        .vmk
        .as_ref()
        .ok_or_else(|| BitlockerError::DamagedKey {
            what: VMK,
            cause: format!("key protector {} has no wrapped key", protector.guid),
        })?;
    unwrap_vmk(vmk, &startup.key).map_err(|e| match e {
        UnwrapError::Tag => BitlockerError::StartupKeyRejected {
            protector: protector.guid,
        },
        UnwrapError::Layout(cause) => BitlockerError::DamagedKey { what: VMK, cause },
    })
}

fn by_clear_key(protectors: &[&ProtectorKeys]) -> Result<Zeroizing<[u8; 32]>, BitlockerError> {
    let mut cause = String::from("the clear key protector holds no key");
    for p in protectors {
        let (Some(clear), Some(vmk)) = (&p.clear_key, &p.vmk) else {
            continue;
        };
        match unwrap_vmk(vmk, clear) {
            Ok(v) => return Ok(v),
            Err(UnwrapError::Tag) => {
                cause = format!("the clear key of protector {} does not decrypt it", p.guid);
            }
            Err(UnwrapError::Layout(c)) => cause = c,
        }
    }
    Err(BitlockerError::DamagedKey { what: VMK, cause })
}

/// The VMK is a 256-bit AES key.
fn unwrap_vmk(wrapped: &WrappedKey, key: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, UnwrapError> {
    let (_, bytes) = wrapped.unwrap(key)?;
    let vmk: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        UnwrapError::Layout(format!(
            "the decrypted VMK is {} bytes, expected 32",
            bytes.len()
        ))
    })?;
    Ok(Zeroizing::new(*vmk))
}

fn fvek_from_vmk(meta: &Metadata, vmk: &[u8; 32]) -> Result<Fvek, BitlockerError> {
    let damaged = |cause: String| BitlockerError::DamagedKey { what: FVEK, cause };
    let wrapped = meta
        .fvek
        .as_ref()
        .ok_or_else(|| damaged("the metadata has no FVEK entry".into()))?;
    let (_, mut key) = wrapped.unwrap(vmk).map_err(|e| match e {
        UnwrapError::Tag => {
            damaged("the volume master key does not authenticate it (damaged metadata?)".into())
        }
        UnwrapError::Layout(cause) => damaged(cause),
    })?;
    let need = meta.info.cipher.key_bytes().unwrap_or(0);
    if key.len() < need || key.len() > 64 {
        return Err(damaged(format!(
            "its key data is {} bytes; {} needs {need} to 64",
            key.len(),
            meta.info.cipher
        )));
    }
    Ok(Fvek {
        method: meta.info.encryption_method,
        key: SecretBytes::new(std::mem::take(&mut *key)),
    })
}

#[cfg(test)]
mod tests;
