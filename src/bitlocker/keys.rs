//! AES-CCM wrapped keys (VMK, FVEK) and the decrypted FVEK, in the form dislocker's `-k` reads.

use super::entries::{u16_at, HEADER_LEN, VALUE_KEY};
use crate::secret::SecretBytes;
use aes::Aes256;
use ccm::aead::{generic_array::GenericArray, AeadInPlace, KeyInit};
use ccm::consts::{U12, U16};
use ccm::Ccm;
use std::fmt;
use zeroize::Zeroizing;

type Aes256Ccm = Ccm<Aes256, U16, U12>;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// A decrypted key is a key entry: 8-byte entry header, method u16, padding u16, key bytes.
const KEY_DATUM_HEADER: usize = HEADER_LEN + 4;
/// Nothing BitLocker wraps is bigger than a 512-bit key in its entry; cap what we decrypt.
const MAX_WRAPPED: usize = 1024;
/// dislocker's `-k` file: method (u16 LE) then exactly 64 bytes of key data, zero-padded.
const DISLOCKER_KEY_DATA: usize = 64;
/// Where an Elephant volume's stored key holds its tweak (diffuser) key.
const ELEPHANT_TWEAK_AT: usize = 32;

/// An AES-CCM encrypted key entry: nonce, tag, then the ciphertext of a key entry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct WrappedKey {
    nonce: [u8; NONCE_LEN],
    tag: [u8; TAG_LEN],
    ciphertext: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.ciphertext.len())
    }
}

/// Why a wrapped key did not yield a key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UnwrapError {
    /// The tag did not verify: wrong key (or damaged data).
    Tag,
    /// The tag verified but the content is not a key entry.
    Layout(String),
}

impl WrappedKey {
    /// Parses the data of an AES-CCM entry (value type 5).
    pub(crate) fn parse(data: &[u8], at: u64) -> Result<Self, String> {
        let too_short = || {
            format!(
                "AES-CCM entry at {at:#x} has {} bytes of data, too few for nonce, tag and a key",
                data.len()
            )
        };
        let ciphertext = data
            .get(NONCE_LEN + TAG_LEN..)
            .filter(|c| c.len() >= KEY_DATUM_HEADER)
            .ok_or_else(too_short)?;
        if ciphertext.len() > MAX_WRAPPED {
            return Err(format!(
                "AES-CCM entry at {at:#x} holds {} bytes, more than any BitLocker key",
                ciphertext.len()
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&data[..NONCE_LEN]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&data[NONCE_LEN..NONCE_LEN + TAG_LEN]);
        Ok(Self {
            nonce,
            tag,
            ciphertext: ciphertext.to_vec(),
        })
    }

    /// Decrypts with a 256-bit key and returns the key entry's method and key bytes.
    pub(crate) fn unwrap(&self, key: &[u8; 32]) -> Result<(u16, Zeroizing<Vec<u8>>), UnwrapError> {
        let cipher = Aes256Ccm::new(GenericArray::from_slice(key));
        let mut plain = Zeroizing::new(self.ciphertext.clone());
        cipher
            .decrypt_in_place_detached(
                GenericArray::from_slice(&self.nonce),
                b"",
                plain.as_mut_slice(),
                GenericArray::from_slice(&self.tag),
            )
            .map_err(|_| UnwrapError::Tag)?;
        let size = u16_at(&plain, 0).map_or(0, usize::from);
        let value = u16_at(&plain, 4);
        if value != Some(VALUE_KEY) || size < KEY_DATUM_HEADER || size > plain.len() {
            return Err(UnwrapError::Layout(format!(
                "decrypted data is not a key entry (size {size}, value type {:#06x})",
                value.unwrap_or(0)
            )));
        }
        let method = u16_at(&plain, HEADER_LEN).unwrap_or(0);
        Ok((
            method,
            Zeroizing::new(plain[KEY_DATUM_HEADER..size].to_vec()),
        ))
    }
}

/// The full-volume encryption key. `Debug` never shows the key; it is wiped on drop.
pub struct Fvek {
    /// The volume's encryption method (0x8000..=0x8005).
    pub method: u16,
    /// Key data as BitLocker stores it (Elephant: FVEK at 0, tweak key at 32).
    pub key: SecretBytes,
}

impl fmt::Debug for Fvek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fvek {{ method: {:#06x}, key: *** }}", self.method)
    }
}

impl Fvek {
    /// The 66-byte key file that `dislocker -k FVEK_FILE` and `guilocker engine` read: the
    /// encryption method as a little-endian u16, then the key data zero-padded to 64 bytes.
    pub fn key_file(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(vec![0u8; 2 + DISLOCKER_KEY_DATA]);
        out[..2].copy_from_slice(&self.method.to_le_bytes());
        let key = self.key.expose();
        let n = key.len().min(DISLOCKER_KEY_DATA);
        out[2..2 + n].copy_from_slice(&key[..n]);
        out
    }

    /// The volume key as dm-crypt (and `cryptsetup open --volume-key-file`) takes it: the
    /// FVEK's key bytes, and for the Elephant ciphers the tweak key right after them (dm-crypt's
    /// elephant IV takes its key from the second half). `None` for an unknown method or a key
    /// too short for its method.
    pub fn dm_crypt_key(&self) -> Option<Zeroizing<Vec<u8>>> {
        use super::info::Cipher;
        let (len, tweak) = match Cipher::from_method(self.method) {
            Cipher::AesCbc128Elephant => (16, true),
            Cipher::AesCbc256Elephant => (32, true),
            Cipher::AesCbc128 => (16, false),
            Cipher::AesCbc256 | Cipher::AesXts128 => (32, false),
            Cipher::AesXts256 => (64, false),
            Cipher::Unknown(_) => return None,
        };
        // Sized once: a Vec that grows leaves its old copy of the key behind, unwiped.
        let mut out = Zeroizing::new(Vec::with_capacity(if tweak { 2 * len } else { len }));
        let key = self.key.expose();
        out.extend_from_slice(key.get(..len)?);
        if tweak {
            out.extend_from_slice(key.get(ELEPHANT_TWEAK_AT..ELEPHANT_TWEAK_AT + len)?);
        }
        Some(out)
    }

    /// Parses what [`Fvek::key_file`] wrote.
    pub fn from_key_file(file: &[u8]) -> Result<Self, String> {
        if file.len() != 2 + DISLOCKER_KEY_DATA {
            return Err(format!(
                "{} bytes, expected {}",
                file.len(),
                2 + DISLOCKER_KEY_DATA
            ));
        }
        let method = u16::from_le_bytes([file[0], file[1]]);
        if !(0x8000..=0x8005).contains(&method) {
            return Err(format!("unknown encryption method {method:#06x}"));
        }
        Ok(Self {
            method,
            key: SecretBytes::new(file[2..].to_vec()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(key: &[u8; 32], nonce: [u8; 12], plain: &[u8]) -> WrappedKey {
        let cipher = Aes256Ccm::new(GenericArray::from_slice(key));
        let mut buf = plain.to_vec();
        let tag = cipher
            .encrypt_in_place_detached(GenericArray::from_slice(&nonce), b"", &mut buf)
            .unwrap();
        let mut data = nonce.to_vec();
        data.extend_from_slice(&tag);
        data.extend_from_slice(&buf);
        WrappedKey::parse(&data, 0).unwrap()
    }

    fn key_entry(method: u16, key: &[u8]) -> Vec<u8> {
        let mut v = ((12 + key.len()) as u16).to_le_bytes().to_vec();
        v.extend_from_slice(&[0, 0, 1, 0, 1, 0]);
        v.extend_from_slice(&method.to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(key);
        v
    }

    #[test]
    fn round_trip_and_wrong_key() {
        let k = [9u8; 32];
        let w = wrap(&k, [1; 12], &key_entry(0x8004, &[0xaa; 32]));
        let (method, key) = w.unwrap(&k).unwrap();
        assert_eq!((method, key.as_slice()), (0x8004, &[0xaa; 32][..]));
        assert_eq!(w.unwrap(&[8u8; 32]), Err(UnwrapError::Tag));
        let not_a_key = wrap(&k, [1; 12], &[0u8; 44]);
        assert!(matches!(not_a_key.unwrap(&k), Err(UnwrapError::Layout(_))));
        assert!(WrappedKey::parse(&[0; 39], 0x10).is_err());
        assert!(WrappedKey::parse(&[0; 2000], 0x10).is_err());
    }

    #[test]
    fn dislocker_file_layout() {
        let f = Fvek {
            method: 0x8004,
            key: SecretBytes::new((1..=32).collect()),
        };
        let file = f.key_file();
        assert_eq!(file.len(), 66);
        assert_eq!(&file[..2], &[0x04, 0x80]);
        assert_eq!(&file[2..34], f.key.expose());
        assert!(file[34..].iter().all(|&b| b == 0));
        let back = Fvek::from_key_file(&file).unwrap();
        assert_eq!(
            (back.method, &back.key.expose()[..32]),
            (0x8004, f.key.expose())
        );
        assert!(Fvek::from_key_file(&file[..65]).is_err());
        assert!(Fvek::from_key_file(&[0u8; 66]).is_err());
        assert_eq!(format!("{f:?}"), "Fvek { method: 0x8004, key: *** }");
    }
}
