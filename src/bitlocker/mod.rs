//! Native reader of the BitLocker on-disk format, its key derivation, its layout and sector ciphers.
//!
//! Everything here parses bytes from untrusted disks for a root daemon: every offset and size
//! is checked, reads are bounded, and secrets live in zeroizing buffers and never reach a
//! message, a `Debug` string or the JSON of [`VolumeInfo`].

mod bek;
mod crc32;
mod elephant;
mod entries;
mod error;
pub mod guid;
mod header;
mod info;
mod kdf;
mod keys;
pub mod layout;
mod metadata;
pub mod recovery;
mod sector;
#[cfg(test)]
mod testdata;
mod unlock;

pub use bek::{parse_startup_key, StartupKey};
pub use error::BitlockerError;
pub use guid::Guid;
pub use info::{Cipher, EncryptionState, KeyId, Protector, ProtectorKind, VolumeInfo};
pub use keys::Fvek;
pub use layout::{Extent, Layout, Source};
#[doc(hidden)]
pub use metadata::parse_metadata_block;
pub use metadata::{read_metadata, Metadata};
pub use sector::SectorCipher;
pub use unlock::{derive_fvek, unlock, Key};

/// True when the first sector (512 bytes suffice) is a BitLocker volume: `-FVE-FS-` at byte 3,
/// or a BitLocker To Go volume, whose FAT32 boot sector ("MSWIN4.1") carries the BitLocker
/// GUID at byte 424, followed by the three FVE metadata offsets.
pub fn is_bitlocker(first_sector: &[u8]) -> bool {
    !matches!(
        header::parse(first_sector),
        Err(BitlockerError::NotBitlocker)
    )
}
