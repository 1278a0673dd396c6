//! Reads the FVE metadata from a device: the first of the three copies that validates wins.
//!
//! At most the first sector and three 64 KiB areas are read, whatever the disk claims.

use super::crc32::crc32;
use super::entries::{
    u16_at, u32_at, u64_at, utf16_string, Entries, Entry, TYPE_DESCRIPTION, TYPE_FVEK, TYPE_VMK,
    TYPE_VOLUME_HEADER, VALUE_AES_CCM, VALUE_KEY, VALUE_OFFSET_SIZE, VALUE_STRETCH_KEY,
    VALUE_STRING, VALUE_VMK,
};
use super::error::BitlockerError;
use super::guid::Guid;
use super::header::{self, VolumeHeader, FVE_SIGNATURE, SECTOR_LEN};
use super::info::{
    filetime_to_unix, Cipher, EncryptionState, Protector, ProtectorKind, VolumeInfo,
};
use super::keys::WrappedKey;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use zeroize::Zeroizing;

/// Size of each FVE metadata area; a block never claims more.
const METADATA_AREA: usize = 64 * 1024;
/// Read a little past the area so a validation record right after a full block is seen.
const READ_LEN: usize = METADATA_AREA + 256;
const BLOCK_HEADER_LEN: usize = 64;
const METADATA_HEADER_LEN: usize = 48;
const ENTRIES_START: usize = BLOCK_HEADER_LEN + METADATA_HEADER_LEN;
/// Validation record after the block: size u16, version u16, CRC-32 of the block.
const VALIDATION_MIN: usize = 8;

/// Everything needed to unlock: the public `info` and the wrapped keys (not serialisable).
pub struct Metadata {
    pub info: VolumeInfo,
    /// Same order as `info.protectors`.
    pub(crate) protectors: Vec<ProtectorKeys>,
    pub(crate) fvek: Option<WrappedKey>,
    /// Where the reserved areas are, for the decrypted view's layout.
    pub(crate) areas: Areas,
}

/// The places BitLocker reserves inside the volume, as the metadata states them (unchecked:
/// [`super::layout::Layout`] checks them against the device).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Areas {
    /// The three FVE metadata blocks (64 KiB each), from the block header.
    pub metadata_offsets: [u64; 3],
    /// Offset and size of the backup of the volume's first sectors (the volume header entry).
    pub volume_header: Option<(u64, u64)>,
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metadata")
            .field("info", &self.info)
            .field("protectors", &self.protectors)
            .field("fvek", &self.fvek)
            .field("areas", &self.areas)
            .finish()
    }
}

/// The secret-bearing part of one key protector.
pub(crate) struct ProtectorKeys {
    pub kind: ProtectorKind,
    pub guid: Guid,
    /// Salt of the stretch key (password, recovery password).
    pub salt: Option<[u8; 16]>,
    /// The VMK, wrapped by this protector's key.
    pub vmk: Option<WrappedKey>,
    /// Clear-key protectors (protection suspended) store their key unprotected.
    pub clear_key: Option<Zeroizing<[u8; 32]>>,
}

impl fmt::Debug for ProtectorKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectorKeys")
            .field("kind", &self.kind)
            .field("guid", &self.guid)
            .field("salt", &self.salt.is_some())
            .field("vmk", &self.vmk)
            .field("clear_key", &self.clear_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Reads the volume header and the FVE metadata from a block device or image.
pub fn read_metadata<R: Read + Seek>(mut device: R) -> Result<Metadata, BitlockerError> {
    let sector = read_at(&mut device, 0, SECTOR_LEN, "the volume header")?;
    let header = header::parse(&sector)?;
    if header.vista {
        return Err(BitlockerError::Vista);
    }
    let mut errors = Vec::new();
    for (i, &offset) in header.metadata_offsets.iter().enumerate() {
        let block = i as u8 + 1;
        let parsed = if offset == 0 {
            Err(BitlockerError::Metadata {
                block,
                offset,
                cause: "the volume header gives no offset".into(),
            })
        } else {
            read_at(&mut device, offset, READ_LEN, "FVE metadata")
                .and_then(|buf| parse_block(&header, block, offset, &buf, true))
        };
        match parsed {
            Ok(meta) => return Ok(meta),
            Err(e) => errors.push(e),
        }
    }
    Err(BitlockerError::NoValidMetadata(errors))
}

/// Parses one metadata block without checksum or location checks; for fuzzing.
#[doc(hidden)]
pub fn parse_metadata_block(block: &[u8]) -> Result<Metadata, BitlockerError> {
    let header = VolumeHeader {
        to_go: false,
        vista: false,
        encrypt_on_write: false,
        sector_size: 512,
        metadata_offsets: [0; 3],
    };
    parse_block(&header, 1, 0, block, false)
}

/// Up to `len` bytes at `offset` (fewer at the end of the device).
fn read_at<R: Read + Seek>(
    device: &mut R,
    offset: u64,
    len: usize,
    what: &'static str,
) -> Result<Vec<u8>, BitlockerError> {
    let io = |source| BitlockerError::Io {
        what,
        offset,
        source,
    };
    device.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf = Vec::with_capacity(len);
    device.take(len as u64).read_to_end(&mut buf).map_err(io)?;
    Ok(buf)
}

/// Validates and parses block number `block` (1-3), read from `offset`.
pub(crate) fn parse_block(
    header: &VolumeHeader,
    block: u8,
    offset: u64,
    buf: &[u8],
    verify: bool,
) -> Result<Metadata, BitlockerError> {
    let fail = |cause: String| BitlockerError::Metadata {
        block,
        offset,
        cause,
    };
    if buf.len() < ENTRIES_START {
        return Err(fail(format!(
            "only {} bytes could be read, fewer than the {ENTRIES_START}-byte headers",
            buf.len()
        )));
    }
    if &buf[..8] != FVE_SIGNATURE {
        return Err(fail("no -FVE-FS- signature".into()));
    }
    let version = u16_at(buf, 10).unwrap_or(0);
    if version != 2 {
        return Err(fail(format!(
            "block header version {version} is not supported (expected 2)"
        )));
    }
    let block_len = usize::from(u16_at(buf, 8).unwrap_or(0)) * 16;
    if !(ENTRIES_START..=METADATA_AREA).contains(&block_len) || block_len > buf.len() {
        return Err(fail(format!(
            "block size {block_len} is invalid ({} bytes could be read)",
            buf.len()
        )));
    }
    if verify {
        verify_block(buf, block_len, block, offset).map_err(fail)?;
    }
    let block_bytes = &buf[..block_len];
    let meta = &block_bytes[BLOCK_HEADER_LEN..];
    let meta_version = u32_at(meta, 4).unwrap_or(0);
    let meta_header_len = u32_at(meta, 8).unwrap_or(0);
    if meta_version != 1 || meta_header_len as usize != METADATA_HEADER_LEN {
        return Err(fail(format!(
            "metadata header version {meta_version} of size {meta_header_len} is not supported"
        )));
    }
    let meta_len = u32_at(meta, 0).unwrap_or(0) as usize;
    if meta_len < METADATA_HEADER_LEN || meta_len > meta.len() {
        return Err(fail(format!(
            "metadata size {meta_len} does not fit in the block of {block_len} bytes"
        )));
    }
    let method = u16_at(meta, 36).unwrap_or(0);
    let mut info = VolumeInfo {
        guid: Guid::read(meta, 16).unwrap_or_default(),
        to_go: header.to_go,
        description: String::new(),
        creation_time: u64_at(meta, 40).and_then(filetime_to_unix),
        cipher: Cipher::from_method(method),
        encryption_method: method,
        volume_size: u64_at(block_bytes, 16).unwrap_or(0),
        sector_size: header.sector_size,
        state: EncryptionState::from_fields(
            header.encrypt_on_write,
            u16_at(block_bytes, 12).unwrap_or(0),
            u16_at(block_bytes, 14).unwrap_or(0),
        ),
        metadata_block: block,
        protectors: Vec::new(),
    };
    let mut protectors = Vec::new();
    let mut fvek = None;
    let mut areas = Areas {
        metadata_offsets: [32, 40, 48].map(|at| u64_at(block_bytes, at).unwrap_or(0)),
        volume_header: None,
    };
    let list = &meta[METADATA_HEADER_LEN..meta_len];
    for entry in Entries::new(list, offset.saturating_add(ENTRIES_START as u64), 0) {
        let entry = entry.map_err(fail)?;
        entry.check_nested().map_err(fail)?;
        match (entry.kind, entry.value) {
            (TYPE_VMK, VALUE_VMK) => protectors.push(parse_vmk(&entry).map_err(fail)?),
            (TYPE_FVEK, VALUE_AES_CCM) if fvek.is_none() => {
                fvek = Some(WrappedKey::parse(entry.data, entry.at).map_err(fail)?);
            }
            (TYPE_DESCRIPTION, VALUE_STRING) if info.description.is_empty() => {
                info.description = utf16_string(entry.data);
            }
            (TYPE_VOLUME_HEADER, VALUE_OFFSET_SIZE) if areas.volume_header.is_none() => {
                areas.volume_header = u64_at(entry.data, 0).zip(u64_at(entry.data, 8));
            }
            _ => {}
        }
    }
    info.protectors = protectors
        .iter()
        .map(|p: &ProtectorKeys| Protector::new(p.kind, p.guid))
        .collect();
    Ok(Metadata {
        info,
        protectors,
        fvek,
        areas,
    })
}

/// The CRC-32 in the validation record, and that the block sits where it says it does.
fn verify_block(buf: &[u8], block_len: usize, block: u8, offset: u64) -> Result<(), String> {
    let record = buf
        .get(block_len..block_len + VALIDATION_MIN)
        .ok_or("no validation record after the block")?;
    let size = u16_at(record, 0).unwrap_or(0);
    let version = u16_at(record, 2).unwrap_or(0);
    if usize::from(size) < VALIDATION_MIN || version > 2 {
        return Err(format!(
            "validation record (size {size}, version {version}) is invalid"
        ));
    }
    let stored = u32_at(record, 4).unwrap_or(0);
    let computed = crc32(&buf[..block_len]);
    if stored != computed {
        return Err(format!(
            "checksum {computed:#010x} does not match the stored {stored:#010x}"
        ));
    }
    let recorded = u64_at(buf, 32 + 8 * usize::from(block.saturating_sub(1))).unwrap_or(0);
    if recorded != offset {
        return Err(format!("the block says it belongs at {recorded:#x}"));
    }
    Ok(())
}

/// One VMK entry: protector GUID and kind, stretch-key salt, wrapped VMK, clear key.
fn parse_vmk(entry: &Entry<'_>) -> Result<ProtectorKeys, String> {
    let data = entry.data;
    let short = || format!("VMK entry at {:#x} is too short", entry.at);
    let mut keys = ProtectorKeys {
        kind: ProtectorKind::from_protection(u16_at(data, 26).ok_or_else(short)?),
        guid: Guid::read(data, 0).ok_or_else(short)?,
        salt: None,
        vmk: None,
        clear_key: None,
    };
    for child in entry.children()? {
        let child = child?;
        match child.value {
            VALUE_STRETCH_KEY if keys.salt.is_none() => {
                let salt = child.data.get(4..20).ok_or_else(short)?;
                keys.salt = Some(salt.try_into().map_err(|_| short())?);
            }
            VALUE_AES_CCM if keys.vmk.is_none() => {
                keys.vmk = Some(WrappedKey::parse(child.data, child.at)?);
            }
            VALUE_KEY if keys.clear_key.is_none() && keys.kind == ProtectorKind::ClearKey => {
                let key = child.data.get(4..).unwrap_or_default();
                let key: [u8; 32] = key.try_into().map_err(|_| {
                    format!(
                        "clear key at {:#x} is {} bytes, expected 32",
                        child.at,
                        key.len()
                    )
                })?;
                keys.clear_key = Some(Zeroizing::new(key));
            }
            _ => {}
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A metadata record with nothing in it, for tests to fill in.
    pub(crate) fn empty() -> Metadata {
        Metadata {
            info: VolumeInfo {
                guid: Guid::default(),
                to_go: false,
                description: String::new(),
                creation_time: None,
                cipher: Cipher::AesXts128,
                encryption_method: 0x8004,
                volume_size: 0,
                sector_size: 512,
                state: EncryptionState::Complete,
                metadata_block: 1,
                protectors: Vec::new(),
            },
            protectors: Vec::new(),
            fvek: None,
            areas: Areas::default(),
        }
    }
}
