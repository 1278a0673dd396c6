//! The filesystem inside a decrypted view: type, label and serial, read natively.
//!
//! Only the three filesystems Windows puts on sticks. Every offset comes from a stranger's
//! disk, so every read is bounded and checked.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub use crate::protocol::FsType;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub fs_type: FsType,
    pub label: Option<String>,
    /// As blkid prints it: NTFS 16 hex digits, FAT and exFAT `XXXX-XXXX`.
    pub uuid: Option<String>,
}

/// Reads the boot sector (and for NTFS and exFAT, the label's on-disk record).
pub fn identify(path: &Path) -> std::io::Result<Option<FsInfo>> {
    identify_in(&mut File::open(path)?)
}

/// [`identify`] on any readable volume: the bytes come from a stranger's disk, and every
/// offset in them is checked before it is followed (fuzzed: fuzz/fuzz_targets/filesystem.rs).
pub fn identify_in(file: &mut (impl Read + Seek)) -> std::io::Result<Option<FsInfo>> {
    let mut boot = [0u8; 512];
    file.read_exact(&mut boot)?;
    Ok(match fs_type(&boot) {
        Some(FsType::Ntfs) => Some(FsInfo {
            fs_type: FsType::Ntfs,
            label: ntfs_label(file, &boot),
            uuid: Some(format!("{:016X}", le64(&boot, 0x48))),
        }),
        Some(FsType::Exfat) => Some(FsInfo {
            fs_type: FsType::Exfat,
            label: exfat_label(file, &boot),
            uuid: Some(dashed_serial(le32(&boot, 100))),
        }),
        Some(FsType::Vfat) => {
            let fat32 = &boot[82..90] == b"FAT32   ";
            let (label_at, serial_at) = if fat32 { (71, 67) } else { (43, 39) };
            Some(FsInfo {
                fs_type: FsType::Vfat,
                label: fat_label(&boot[label_at..label_at + 11]),
                uuid: Some(dashed_serial(le32(&boot, serial_at))),
            })
        }
        None => None,
    })
}

pub fn fs_type(boot: &[u8; 512]) -> Option<FsType> {
    let oem = &boot[3..11];
    if oem == b"NTFS    " {
        return Some(FsType::Ntfs);
    }
    if oem == b"EXFAT   " {
        return Some(FsType::Exfat);
    }
    let signed = boot[510] == 0x55 && boot[511] == 0xAA;
    let fat = &boot[54..59] == b"FAT12" || &boot[54..59] == b"FAT16" || &boot[82..87] == b"FAT32";
    (signed && fat).then_some(FsType::Vfat)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn dashed_serial(serial: u32) -> String {
    format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff)
}

/// The longest labels the filesystems allow, in UTF-16 units; longer is crafted.
const NTFS_LABEL_UNITS: usize = 128;
const SHORT_LABEL_UNITS: usize = 11;

fn clean(label: String, max_units: usize) -> Option<String> {
    crate::text::from_disk(&label, max_units)
}

fn fat_label(raw: &[u8]) -> Option<String> {
    if raw == b"NO NAME    " {
        return None;
    }
    // FAT labels are in the OEM code page; anything outside ASCII is shown as '_'.
    clean(
        raw.iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '_'
                }
            })
            .collect(),
        SHORT_LABEL_UNITS,
    )
}

fn utf16(raw: &[u8]) -> String {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

fn read_at(file: &mut (impl Read + Seek), offset: u64, buf: &mut [u8]) -> Option<()> {
    file.seek(SeekFrom::Start(offset)).ok()?;
    file.read_exact(buf).ok()
}

/// The volume label of an NTFS volume: the $VOLUME_NAME attribute of MFT record 3.
fn ntfs_label(file: &mut (impl Read + Seek), boot: &[u8; 512]) -> Option<String> {
    let sector = u64::from(le16(boot, 11));
    let cluster = sector * u64::from(boot[13]);
    if !(256..=4096).contains(&sector) || cluster == 0 || cluster > 2 << 20 {
        return None;
    }
    // Record size: clusters if positive, else 2^-n bytes.
    let per = boot[0x40] as i8;
    let record = if per > 0 {
        cluster * per as u64
    } else {
        1u64 << (-(per as i32)).clamp(9, 16)
    };
    if !(512..=65536).contains(&record) {
        return None;
    }
    let mft = le64(boot, 0x30).checked_mul(cluster)?;
    let mut rec = vec![0u8; record as usize];
    read_at(file, mft.checked_add(3 * record)?, &mut rec)?;
    if &rec[0..4] != b"FILE" {
        return None;
    }
    apply_fixups(&mut rec, sector as usize)?;
    let mut at = le16(&rec, 20) as usize;
    while at + 24 <= rec.len() {
        let kind = le32(&rec, at);
        let len = le32(&rec, at + 4) as usize;
        if kind == 0xFFFF_FFFF || len < 24 || at + len > rec.len() {
            break;
        }
        if kind == 0x60 && rec[at + 8] == 0 {
            let size = le32(&rec, at + 16) as usize;
            let start = at + le16(&rec, at + 20) as usize;
            let bytes = rec.get(start..start.checked_add(size)?)?;
            return clean(utf16(bytes), NTFS_LABEL_UNITS);
        }
        at += len;
    }
    None
}

/// NTFS multi-sector records keep a check value at the end of each sector; put the real
/// bytes back.
fn apply_fixups(rec: &mut [u8], sector: usize) -> Option<()> {
    let usa = le16(rec, 4) as usize;
    let count = le16(rec, 6) as usize;
    if count == 0 || usa + count * 2 > rec.len() {
        return None;
    }
    for i in 1..count {
        let end = i * sector;
        if end > rec.len() {
            break;
        }
        let fix = [rec[usa + 2 * i], rec[usa + 2 * i + 1]];
        rec[end - 2..end].copy_from_slice(&fix);
    }
    Some(())
}

/// The volume label of an exFAT volume: the 0x83 entry of the root directory.
fn exfat_label(file: &mut (impl Read + Seek), boot: &[u8; 512]) -> Option<String> {
    let sector_shift = u32::from(boot[108]);
    let cluster_shift = u32::from(boot[109]);
    if !(9..=12).contains(&sector_shift) || sector_shift + cluster_shift > 25 {
        return None;
    }
    let heap = u64::from(le32(boot, 88)) << sector_shift;
    let root = u64::from(le32(boot, 96));
    if root < 2 {
        return None;
    }
    let cluster = 1u64 << (sector_shift + cluster_shift);
    let mut dir = vec![0u8; cluster.min(64 * 1024) as usize];
    read_at(
        file,
        heap.checked_add((root - 2).checked_mul(cluster)?)?,
        &mut dir,
    )?;
    for entry in dir.chunks_exact(32) {
        match entry[0] {
            0x00 => break,
            0x83 => {
                let chars = usize::from(entry[1].min(11));
                return clean(utf16(&entry[2..2 + chars * 2]), SHORT_LABEL_UNITS);
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot_with(oem: &[u8]) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[3..11].copy_from_slice(oem);
        b
    }

    #[test]
    fn detects_types() {
        assert_eq!(fs_type(&boot_with(b"NTFS    ")), Some(FsType::Ntfs));
        assert_eq!(fs_type(&boot_with(b"EXFAT   ")), Some(FsType::Exfat));
        let mut fat = boot_with(b"mkfs.fat");
        fat[54..59].copy_from_slice(b"FAT16");
        assert_eq!(fs_type(&fat), None, "no boot signature");
        fat[510] = 0x55;
        fat[511] = 0xAA;
        assert_eq!(fs_type(&fat), Some(FsType::Vfat));
        assert_eq!(fs_type(&[0u8; 512]), None);
    }

    #[test]
    fn fat_labels() {
        assert_eq!(fat_label(b"NO NAME    "), None);
        assert_eq!(fat_label(b"TOGO       ").as_deref(), Some("TOGO"));
        assert_eq!(fat_label(b"A\x01B        ").as_deref(), Some("A_B"));
        assert_eq!(dashed_serial(0x162DC4FE), "162D-C4FE");
    }

    #[test]
    fn hostile_ntfs_boot_sector_does_not_panic() {
        let dir = std::env::temp_dir().join(format!("guilocker-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ntfs");
        for seed in 0u32..64 {
            let mut b = boot_with(b"NTFS    ");
            let mut x = seed.wrapping_mul(2654435761) | 1;
            for byte in b.iter_mut().skip(11).take(64) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *byte = x as u8;
            }
            std::fs::write(&path, b).unwrap();
            let info = identify(&path).unwrap().unwrap();
            assert_eq!(info.fs_type, FsType::Ntfs);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
