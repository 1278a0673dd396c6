//! The BitLocker on-disk format: signature, recovery keys (metadata and key derivation follow).

pub mod recovery;

/// Volume header signature of BitLocker volumes, at byte 3.
const SIGNATURE: &[u8; 8] = b"-FVE-FS-";
/// BitLocker To Go volumes keep a FAT header for old Windows; this GUID at byte 424
/// (4967d63b-2e29-4ad8-8399-f6a339e3d001, as stored on disk) marks them.
const TO_GO_GUID: [u8; 16] = [
    0x3b, 0xd6, 0x67, 0x49, 0x29, 0x2e, 0xd8, 0x4a, 0x83, 0x99, 0xf6, 0xa3, 0x39, 0xe3, 0xd0, 0x01,
];
const TO_GO_GUID_OFFSET: usize = 424;

/// True when the first sector belongs to a BitLocker (or BitLocker To Go) volume.
pub fn is_bitlocker(first_sector: &[u8]) -> bool {
    first_sector.get(3..11) == Some(SIGNATURE)
        || first_sector.get(TO_GO_GUID_OFFSET..TO_GO_GUID_OFFSET + 16) == Some(&TO_GO_GUID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let mut s = [0u8; 512];
        assert!(!is_bitlocker(&s));
        s[3..11].copy_from_slice(SIGNATURE);
        assert!(is_bitlocker(&s));
        let mut togo = [0u8; 512];
        togo[3..11].copy_from_slice(b"MSWIN4.1");
        togo[424..440].copy_from_slice(&TO_GO_GUID);
        assert!(is_bitlocker(&togo));
        assert!(!is_bitlocker(&s[..10]));
    }
}
