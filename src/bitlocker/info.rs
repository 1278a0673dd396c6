//! What `inspect` shows about a volume: public facts only, never key material.

use super::guid::Guid;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Public description of a BitLocker volume, printed by `guilocker inspect --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Volume GUID from the FVE metadata header.
    pub guid: Guid,
    /// BitLocker To Go layout (FAT discovery volume in front of the encrypted one).
    pub to_go: bool,
    /// Windows writes "PC-NAME D: date" here; empty when absent.
    pub description: String,
    /// Creation time in Unix seconds; `None` when the FILETIME is zero or out of range.
    pub creation_time: Option<i64>,
    pub cipher: Cipher,
    /// The raw encryption method, so unknown ciphers can still be reported.
    pub encryption_method: u16,
    /// Volume size in bytes, from the FVE metadata block header.
    pub volume_size: u64,
    pub sector_size: u16,
    pub state: EncryptionState,
    /// Which of the three metadata copies was used (1 to 3).
    pub metadata_block: u8,
    pub protectors: Vec<Protector>,
}

/// One key protector: how the volume master key is wrapped, and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protector {
    pub kind: ProtectorKind,
    pub guid: Guid,
    /// A recovery key's Key ID, as Windows shows it beside the key (and the Microsoft
    /// account lists it): the first eight hex digits of the protector's GUID, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
}

/// Windows' "Key ID" of a recovery key, e.g. `F99F18E8`: upper-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId([u8; 4]);

impl KeyId {
    /// The GUID's first field, as its text form starts.
    pub fn of(guid: &Guid) -> Self {
        let mut first = [0u8; 4];
        first.copy_from_slice(&guid.0[..4]);
        // Stored little-endian, printed big-endian (see `Guid`'s Display).
        first.reverse();
        Self(first)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let value = (text.len() == 8)
            .then(|| u32::from_str_radix(&text, 16).ok())
            .flatten()
            .ok_or_else(|| serde::de::Error::custom(format!("not a Key ID: {text:?}")))?;
        Ok(Self(value.to_be_bytes()))
    }
}

/// Reads back a name that `id()` wrote: the variant of `known` with that name, else
/// `unknown` (a newer build's, or a raw value the name did not carry).
fn by_id<'de, D: Deserializer<'de>, T: Copy>(
    d: D,
    known: &[T],
    id: fn(T) -> &'static str,
    unknown: T,
) -> Result<T, D::Error> {
    let name = String::deserialize(d)?;
    Ok(known
        .iter()
        .copied()
        .find(|v| id(*v) == name)
        .unwrap_or(unknown))
}

impl Protector {
    pub fn new(kind: ProtectorKind, guid: Guid) -> Self {
        let key_id = (kind == ProtectorKind::RecoveryPassword).then(|| KeyId::of(&guid));
        Self { kind, guid, key_id }
    }
}

/// Sector encryption of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    AesCbc128Elephant,
    AesCbc256Elephant,
    AesCbc128,
    AesCbc256,
    AesXts128,
    AesXts256,
    Unknown(u16),
}

impl Cipher {
    pub fn from_method(method: u16) -> Self {
        match method {
            0x8000 => Self::AesCbc128Elephant,
            0x8001 => Self::AesCbc256Elephant,
            0x8002 => Self::AesCbc128,
            0x8003 => Self::AesCbc256,
            0x8004 => Self::AesXts128,
            0x8005 => Self::AesXts256,
            other => Self::Unknown(other),
        }
    }

    pub fn method(self) -> u16 {
        match self {
            Self::AesCbc128Elephant => 0x8000,
            Self::AesCbc256Elephant => 0x8001,
            Self::AesCbc128 => 0x8002,
            Self::AesCbc256 => 0x8003,
            Self::AesXts128 => 0x8004,
            Self::AesXts256 => 0x8005,
            Self::Unknown(m) => m,
        }
    }

    /// Bytes of decrypted FVEK key data this cipher needs (Elephant adds a tweak key at byte 32).
    pub(crate) fn key_bytes(self) -> Option<usize> {
        match self {
            Self::AesCbc128 => Some(16),
            Self::AesCbc256 | Self::AesXts128 => Some(32),
            Self::AesXts256 => Some(64),
            Self::AesCbc128Elephant => Some(48),
            Self::AesCbc256Elephant => Some(64),
            Self::Unknown(_) => None,
        }
    }

    /// The snake_case name used in JSON (`password`, `recovery_password`, …).
    pub fn id(self) -> &'static str {
        match self {
            Self::AesCbc128Elephant => "aes_cbc_128_elephant",
            Self::AesCbc256Elephant => "aes_cbc_256_elephant",
            Self::AesCbc128 => "aes_cbc_128",
            Self::AesCbc256 => "aes_cbc_256",
            Self::AesXts128 => "aes_xts_128",
            Self::AesXts256 => "aes_xts_256",
            Self::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AesCbc128Elephant => f.write_str("AES-CBC 128-bit with Elephant diffuser"),
            Self::AesCbc256Elephant => f.write_str("AES-CBC 256-bit with Elephant diffuser"),
            Self::AesCbc128 => f.write_str("AES-CBC 128-bit"),
            Self::AesCbc256 => f.write_str("AES-CBC 256-bit"),
            Self::AesXts128 => f.write_str("AES-XTS 128-bit"),
            Self::AesXts256 => f.write_str("AES-XTS 256-bit"),
            Self::Unknown(m) => write!(f, "unknown encryption method {m:#06x}"),
        }
    }
}

impl Serialize for Cipher {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

impl<'de> Deserialize<'de> for Cipher {
    /// An unknown cipher reads back without its method: `VolumeInfo::encryption_method`
    /// keeps it.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let known = (0x8000..=0x8005)
            .map(Cipher::from_method)
            .collect::<Vec<_>>();
        by_id(d, &known, Cipher::id, Cipher::Unknown(0))
    }
}

/// How a key protector wraps the volume master key (the VMK entry's protection type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectorKind {
    ClearKey,
    Tpm,
    StartupKey,
    TpmAndPin,
    RecoveryPassword,
    SmartCard,
    Password,
    Unknown(u16),
}

impl ProtectorKind {
    pub fn from_protection(value: u16) -> Self {
        match value {
            0x0000 => Self::ClearKey,
            0x0100 => Self::Tpm,
            0x0200 => Self::StartupKey,
            0x0500 => Self::TpmAndPin,
            0x0800 => Self::RecoveryPassword,
            0x1000 => Self::SmartCard,
            0x2000 => Self::Password,
            other => Self::Unknown(other),
        }
    }

    /// Kinds this tool can use without special hardware.
    pub fn usable_here(self) -> bool {
        matches!(
            self,
            Self::ClearKey | Self::StartupKey | Self::RecoveryPassword | Self::Password
        )
    }

    /// The snake_case name used in JSON (`password`, `recovery_password`, …).
    pub fn id(self) -> &'static str {
        match self {
            Self::ClearKey => "clear_key",
            Self::Tpm => "tpm",
            Self::StartupKey => "startup_key",
            Self::TpmAndPin => "tpm_and_pin",
            Self::RecoveryPassword => "recovery_password",
            Self::SmartCard => "smart_card",
            Self::Password => "password",
            Self::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for ProtectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClearKey => f.write_str("clear key"),
            Self::Tpm => f.write_str("TPM"),
            Self::StartupKey => f.write_str("startup key"),
            Self::TpmAndPin => f.write_str("TPM + PIN"),
            Self::RecoveryPassword => f.write_str("recovery key"),
            Self::SmartCard => f.write_str("smart card"),
            Self::Password => f.write_str("password"),
            Self::Unknown(v) => write!(f, "unknown protector {v:#06x}"),
        }
    }
}

impl Serialize for ProtectorKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

impl<'de> Deserialize<'de> for ProtectorKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let known = [0x0000, 0x0100, 0x0200, 0x0500, 0x0800, 0x1000, 0x2000]
            .map(ProtectorKind::from_protection);
        by_id(d, &known, ProtectorKind::id, ProtectorKind::Unknown(0))
    }
}

/// Whether the whole volume is encrypted, from the volume header GUID and the block's state fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncryptionState {
    Complete,
    InProgress,
    Decrypting,
    Paused,
    Decrypted,
    #[serde(other)]
    Unknown,
}

impl EncryptionState {
    /// `encrypt_on_write`: the volume header carries the "encrypt on write" GUID that Windows
    /// uses while a conversion runs; `current`/`next` are the block header's state fields
    /// (1 decrypted, 2 switching, 3 encrypt-on-write, 4 encrypted, 5 paused).
    pub(crate) fn from_fields(encrypt_on_write: bool, current: u16, next: u16) -> Self {
        match (current, next) {
            _ if encrypt_on_write => Self::InProgress,
            (4, 4) => Self::Complete,
            (1, 1) => Self::Decrypted,
            (5, _) | (_, 5) => Self::Paused,
            (2 | 4, 1) => Self::Decrypting,
            (2 | 3, _) | (1, 4) => Self::InProgress,
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for EncryptionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Complete => "encryption is complete",
            Self::InProgress => "encryption is still in progress",
            Self::Decrypting => "decryption is still in progress",
            Self::Paused => "encryption or decryption is paused",
            Self::Decrypted => "the volume is decrypted",
            Self::Unknown => "the encryption state is unknown",
        })
    }
}

/// FILETIME (100 ns since 1601) to Unix seconds; `None` for 0 or absurd values.
pub(crate) fn filetime_to_unix(filetime: u64) -> Option<i64> {
    const EPOCH_AS_FILETIME: i64 = 116_444_736_000_000_000;
    if filetime == 0 {
        return None;
    }
    let ticks = i64::try_from(filetime).ok()?;
    Some((ticks - EPOCH_AS_FILETIME).div_euclid(10_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_the_guids_first_eight_hex_digits() {
        // On disk the first three fields are little-endian: this is {F99F18E8-0348-…}.
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&0xf99f_18e8u32.to_le_bytes());
        let guid = Guid(raw);
        assert!(guid.to_string().starts_with("f99f18e8-"), "{guid}");
        let p = Protector::new(ProtectorKind::RecoveryPassword, guid);
        assert_eq!(p.key_id.unwrap().to_string(), "F99F18E8");
        assert_eq!(
            serde_json::to_value(p).unwrap()["key_id"],
            serde_json::json!("F99F18E8")
        );
        let p = Protector::new(ProtectorKind::Password, guid);
        assert_eq!(p.key_id, None);
        assert!(serde_json::to_value(p).unwrap().get("key_id").is_none());
    }

    #[test]
    fn json_names() {
        assert_eq!(
            serde_json::to_string(&Cipher::AesXts128).unwrap(),
            "\"aes_xts_128\""
        );
        assert_eq!(
            serde_json::to_string(&ProtectorKind::RecoveryPassword).unwrap(),
            "\"recovery_password\""
        );
        assert_eq!(
            serde_json::to_string(&EncryptionState::InProgress).unwrap(),
            "\"in_progress\""
        );
        assert_eq!(Cipher::from_method(0x8004).method(), 0x8004);
        assert_eq!(Cipher::from_method(0x1234), Cipher::Unknown(0x1234));
    }

    /// What `inspect` sends reads back as it was (the client prints from the typed value).
    #[test]
    fn volume_info_round_trips_through_json() {
        let guid = |n: u8| Guid([n; 16]);
        let info = VolumeInfo {
            guid: guid(1),
            to_go: true,
            description: "PC D: 1/2/2024".into(),
            creation_time: Some(1_700_000_000),
            cipher: Cipher::AesCbc128Elephant,
            encryption_method: 0x8000,
            volume_size: 1 << 30,
            sector_size: 512,
            state: EncryptionState::Paused,
            metadata_block: 2,
            protectors: vec![
                Protector::new(ProtectorKind::Password, guid(2)),
                Protector::new(ProtectorKind::RecoveryPassword, guid(3)),
                Protector::new(ProtectorKind::TpmAndPin, guid(4)),
            ],
        };
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<VolumeInfo>(&json).unwrap(), info);
        // A newer daemon's names read as unknown, not as an error.
        let newer = json
            .replace("aes_cbc_128_elephant", "aes_gcm_512")
            .replace("tpm_and_pin", "passkey")
            .replace("\"paused\"", "\"rewinding\"");
        let read: VolumeInfo = serde_json::from_str(&newer).unwrap();
        assert_eq!(read.cipher, Cipher::Unknown(0));
        assert_eq!(read.protectors[2].kind, ProtectorKind::Unknown(0));
        assert_eq!(read.state, EncryptionState::Unknown);
    }

    #[test]
    fn filetime() {
        assert_eq!(filetime_to_unix(0), None);
        assert_eq!(filetime_to_unix(116_444_736_000_000_000), Some(0));
        assert_eq!(filetime_to_unix(u64::MAX), None);
        assert_eq!(filetime_to_unix(1), Some(-11_644_473_600));
    }

    #[test]
    fn states() {
        assert_eq!(
            EncryptionState::from_fields(false, 4, 4),
            EncryptionState::Complete
        );
        assert_eq!(
            EncryptionState::from_fields(true, 4, 4),
            EncryptionState::InProgress
        );
        assert_eq!(
            EncryptionState::from_fields(false, 2, 4),
            EncryptionState::InProgress
        );
        assert_eq!(
            EncryptionState::from_fields(false, 2, 1),
            EncryptionState::Decrypting
        );
        assert_eq!(
            EncryptionState::from_fields(false, 5, 4),
            EncryptionState::Paused
        );
        assert_eq!(
            EncryptionState::from_fields(false, 9, 9),
            EncryptionState::Unknown
        );
    }
}
