//! BitLocker startup key files (.BEK): a metadata header, then one external-key entry.
//!
//! Windows 10 writes the external key with a name string and the key. Windows 11 adds a
//! third property (entry type 0x19, value type 0x17) holding the GUID of the volume the key
//! belongs to, which older readers reject as unknown; here it is used to name that volume.

use super::entries::{
    u32_at, Entries, TYPE_STARTUP_KEY, VALUE_EXTERNAL_KEY, VALUE_GUID, VALUE_KEY,
};
use super::error::BitlockerError;
use super::guid::Guid;
use std::fmt;
use zeroize::Zeroizing;

const HEADER_LEN: usize = 48;
/// A .BEK file is a few hundred bytes; refuse to parse anything much larger.
const MAX_FILE_LEN: usize = 64 * 1024;

/// A parsed startup key. `Debug` never shows the key; it is wiped on drop.
pub struct StartupKey {
    /// The key protector this file unlocks (also its file name).
    pub protector: Guid,
    /// The volume it belongs to, when the file says so (Windows 11).
    pub volume: Option<Guid>,
    pub(crate) key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for StartupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartupKey")
            .field("protector", &self.protector)
            .field("volume", &self.volume)
            .field("key", &"***")
            .finish()
    }
}

/// Parses the contents of a .BEK file.
pub fn parse_startup_key(file: &[u8]) -> Result<StartupKey, BitlockerError> {
    parse(file).map_err(|cause| BitlockerError::StartupKeyFile { cause })
}

fn parse(file: &[u8]) -> Result<StartupKey, String> {
    if file.len() < HEADER_LEN || file.len() > MAX_FILE_LEN {
        return Err(format!(
            "the file is {} bytes; a .BEK file has a 48-byte header and is a few hundred bytes",
            file.len()
        ));
    }
    let size = u32_at(file, 0).unwrap_or(0) as usize;
    let version = u32_at(file, 4).unwrap_or(0);
    let header_len = u32_at(file, 8).unwrap_or(0) as usize;
    if version != 1 || header_len != HEADER_LEN {
        return Err(format!(
            "header version {version} of size {header_len} is not supported"
        ));
    }
    if size <= HEADER_LEN || size > file.len() {
        return Err(format!(
            "metadata size {size} does not fit the file of {} bytes",
            file.len()
        ));
    }
    let protector = Guid::read(file, 16).unwrap_or_default();
    let mut found = None;
    for entry in Entries::new(&file[HEADER_LEN..size], HEADER_LEN as u64, 0) {
        let entry = entry?;
        entry.check_nested()?;
        if entry.kind != TYPE_STARTUP_KEY || entry.value != VALUE_EXTERNAL_KEY {
            continue;
        }
        let id = Guid::read(entry.data, 0).ok_or("external key entry is too short")?;
        let mut key = None;
        let mut volume = None;
        for child in entry.children()? {
            let child = child?;
            match child.value {
                VALUE_KEY if key.is_none() => {
                    let bytes = child.data.get(4..).unwrap_or_default();
                    let bytes: &[u8; 32] = bytes.try_into().map_err(|_| {
                        format!(
                            "the key at {:#x} is {} bytes, expected 32",
                            child.at,
                            bytes.len()
                        )
                    })?;
                    key = Some(Zeroizing::new(*bytes));
                }
                VALUE_GUID if volume.is_none() => volume = Guid::read(child.data, 0),
                _ => {}
            }
        }
        found = Some((id, key, volume));
        break;
    }
    let (id, key, volume) = found.ok_or("it holds no external key entry")?;
    if id != protector {
        return Err(format!(
            "its key entry is for protector {id}, its header for {protector}"
        ));
    }
    let key = key.ok_or("the external key entry holds no key")?;
    Ok(StartupKey {
        protector,
        volume,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitlocker::testdata::{bytes, WIN10_BEK, WIN11_BEK};

    #[test]
    fn windows_10_and_11_layouts() {
        let k10 = parse_startup_key(&bytes(WIN10_BEK)).unwrap();
        assert_eq!(
            k10.protector.to_string(),
            "4381f759-c4f8-4de0-bb61-fc33a831bda5"
        );
        assert_eq!(k10.volume, None);
        let k11 = parse_startup_key(&bytes(WIN11_BEK)).unwrap();
        assert_eq!(
            k11.protector.to_string(),
            "aa80a52b-9b66-47ae-b097-33f536ffbb07"
        );
        assert_eq!(
            k11.volume.map(|g| g.to_string()).as_deref(),
            Some("e8ea9756-9cc1-4ca2-b99d-fae884f56150")
        );
        assert!(!format!("{k11:?}").contains(&format!("{:?}", &k11.key[..4])));
    }

    #[test]
    fn rejects_damaged_files() {
        let good = bytes(WIN11_BEK);
        for len in 0..good.len() {
            assert!(parse_startup_key(&good[..len]).is_err(), "prefix {len}");
        }
        let mut other = good.clone();
        other[0x38] ^= 1; // the external key's own GUID
        assert!(parse_startup_key(&other)
            .unwrap_err()
            .to_string()
            .contains("protector"));
        assert!(parse_startup_key(&vec![0u8; MAX_FILE_LEN + 1]).is_err());
    }
}
