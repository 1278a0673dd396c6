//! The volume's first sector: BitLocker or BitLocker To Go, and where the FVE metadata is.

use super::entries::{u16_at, u64_at};
use super::error::BitlockerError;

pub(crate) const SECTOR_LEN: usize = 512;
pub(crate) const FVE_SIGNATURE: &[u8; 8] = b"-FVE-FS-";
/// Windows Vista's boot code; its metadata layout differs and is not supported.
const VISTA_BOOT_CODE: &[u8; 3] = b"\xeb\x52\x90";
/// Windows 7+ volumes: BitLocker GUID at 160, then three u64 metadata offsets.
const GUID_OFFSET: usize = 160;
/// To Go volumes look like FAT32 ("MSWIN4.1"); the GUID and offsets sit at 424.
const TOGO_GUID_OFFSET: usize = 424;
/// BitLocker identifier 4967d63b-2e29-4ad8-8399-f6a339e3d001, as stored.
const BITLOCKER_GUID: [u8; 16] = [
    0x3b, 0xd6, 0x67, 0x49, 0x29, 0x2e, 0xd8, 0x4a, 0x83, 0x99, 0xf6, 0xa3, 0x39, 0xe3, 0xd0, 0x01,
];
/// 92a84d3b-dd80-4d0e-9e4e-b1e3284eaed8: written while "encrypt on write" conversion runs.
const EOW_GUID: [u8; 16] = [
    0x3b, 0x4d, 0xa8, 0x92, 0x80, 0xdd, 0x0e, 0x4d, 0x9e, 0x4e, 0xb1, 0xe3, 0x28, 0x4e, 0xae, 0xd8,
];

/// What the first sector tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VolumeHeader {
    pub to_go: bool,
    pub vista: bool,
    pub encrypt_on_write: bool,
    pub sector_size: u16,
    pub metadata_offsets: [u64; 3],
}

fn known_guid(sector: &[u8], at: usize) -> Option<bool> {
    match sector.get(at..at + 16)? {
        g if g == BITLOCKER_GUID => Some(false),
        g if g == EOW_GUID => Some(true),
        _ => None,
    }
}

/// Parses the first sector; `NotBitlocker` when neither signature is there.
pub(crate) fn parse(sector: &[u8]) -> Result<VolumeHeader, BitlockerError> {
    let standard = sector.get(3..11) == Some(FVE_SIGNATURE);
    // To Go: the header is a FAT32 boot sector, recognised by the BitLocker GUID at 424
    // (its OEM name, "MSWIN4.1", is shared with every FAT volume).
    let (to_go, guid_at) = if standard {
        (false, GUID_OFFSET)
    } else if known_guid(sector, TOGO_GUID_OFFSET).is_some() {
        (true, TOGO_GUID_OFFSET)
    } else {
        return Err(BitlockerError::NotBitlocker);
    };
    let vista = standard && sector.get(..3) == Some(VISTA_BOOT_CODE);
    let sector_size = match u16_at(sector, 11) {
        Some(0) | None => 512,
        Some(n) if n.is_power_of_two() && (512..=4096).contains(&n) => n,
        Some(n) => {
            return Err(BitlockerError::VolumeHeader {
                cause: format!("bytes per sector {n} is invalid"),
            })
        }
    };
    let mut metadata_offsets = [0u64; 3];
    for (i, slot) in metadata_offsets.iter_mut().enumerate() {
        *slot = u64_at(sector, guid_at + 16 + 8 * i).unwrap_or(0);
    }
    Ok(VolumeHeader {
        to_go,
        vista,
        encrypt_on_write: known_guid(sector, guid_at) == Some(true),
        sector_size,
        metadata_offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standard_sector() -> Vec<u8> {
        let mut s = vec![0u8; SECTOR_LEN];
        s[..3].copy_from_slice(b"\xeb\x58\x90");
        s[3..11].copy_from_slice(FVE_SIGNATURE);
        s[11..13].copy_from_slice(&512u16.to_le_bytes());
        s[GUID_OFFSET..GUID_OFFSET + 16].copy_from_slice(&BITLOCKER_GUID);
        s[176..184].copy_from_slice(&0x2195000u64.to_le_bytes());
        s
    }

    #[test]
    fn standard_and_to_go() {
        let h = parse(&standard_sector()).unwrap();
        assert!(!h.to_go && !h.vista && !h.encrypt_on_write);
        assert_eq!(h.metadata_offsets, [0x2195000, 0, 0]);

        let mut togo = vec![0u8; SECTOR_LEN];
        togo[3..11].copy_from_slice(b"MSWIN4.1");
        togo[TOGO_GUID_OFFSET..TOGO_GUID_OFFSET + 16].copy_from_slice(&BITLOCKER_GUID);
        togo[440..448].copy_from_slice(&0x2100000u64.to_le_bytes());
        let h = parse(&togo).unwrap();
        assert!(h.to_go);
        assert_eq!(h.metadata_offsets[0], 0x2100000);

        // A plain FAT volume is not BitLocker, nor is a short read.
        togo[TOGO_GUID_OFFSET] ^= 1;
        assert!(matches!(parse(&togo), Err(BitlockerError::NotBitlocker)));
        assert!(matches!(parse(&[0; 10]), Err(BitlockerError::NotBitlocker)));
    }

    #[test]
    fn eow_vista_and_bad_sector_size() {
        let mut s = standard_sector();
        s[GUID_OFFSET..GUID_OFFSET + 16].copy_from_slice(&EOW_GUID);
        assert!(parse(&s).unwrap().encrypt_on_write);
        s[..3].copy_from_slice(VISTA_BOOT_CODE);
        assert!(parse(&s).unwrap().vista);
        s[11..13].copy_from_slice(&520u16.to_le_bytes());
        assert!(parse(&s).is_err());
        // Signature only, nothing else: still recognised, offsets read as zero.
        let h = parse(&s[..11]).unwrap();
        assert_eq!(h.metadata_offsets, [0; 3]);
    }
}
