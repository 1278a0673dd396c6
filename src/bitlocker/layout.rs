//! The decrypted view of a volume: which bytes of the device each byte of the view comes from.
//!
//! As Windows (and cryptsetup's BITLK) lay it out: the first `header_len` bytes of the view are
//! the backup of the real boot sector, stored encrypted at `header_offset`; the three FVE
//! metadata blocks and that backup area read as zeros and take no writes; everything else maps
//! 1:1, encrypted up to the encrypted size and plain after it. Every number comes from a
//! stranger's disk, so each is checked against the device before it is used.

use super::error::BitlockerError;
use super::metadata::Metadata;
use std::ops::Range;

/// Size of each FVE metadata area.
pub const METADATA_AREA: u64 = 64 * 1024;

/// Where one stretch of the view comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Ciphertext at this physical offset (the cipher is keyed by it).
    Encrypted { physical: u64 },
    /// Plaintext at this physical offset (beyond the encrypted size).
    Plain { physical: u64 },
    /// A reserved area: reads as zeros, refuses writes.
    Reserved,
}

/// A stretch of the view with one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub view: u64,
    pub len: u64,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    size: u64,
    sector: u64,
    /// Physical range of the boot-sector backup; view bytes `0..header.len()` come from it.
    header: Range<u64>,
    /// Physical bytes at or past this are plaintext.
    encrypted_end: u64,
    /// Sorted, disjoint, physical (= view) ranges that read as zeros.
    reserved: Vec<Range<u64>>,
}

impl Layout {
    /// The layout of `meta`'s volume on a device of `device_size` bytes.
    pub fn new(meta: &Metadata, device_size: u64) -> Result<Self, BitlockerError> {
        let sector = u64::from(meta.info.sector_size);
        let bad = |cause: String| BitlockerError::Layout { cause };
        if !matches!(sector, 512 | 4096) {
            return Err(bad(format!("sector size {sector} is not supported")));
        }
        let size = device_size - device_size % sector;
        let area = |what: &str, offset: u64, len: u64| -> Result<Range<u64>, BitlockerError> {
            let end = offset.checked_add(len).filter(|&e| e <= size);
            match end {
                Some(end) if offset.is_multiple_of(sector) && len.is_multiple_of(sector) && len > 0 => {
                    Ok(offset..end)
                }
                _ => Err(bad(format!(
                    "{what} at {offset:#x} ({len} bytes) does not fit the {size}-byte device in whole {sector}-byte sectors"
                ))),
            }
        };
        let (header_offset, header_len) = meta.areas.volume_header.ok_or_else(|| {
            bad("the metadata does not say where the volume header backup is".into())
        })?;
        let header = area("the volume header backup", header_offset, header_len)?;
        let mut reserved = vec![header.clone()];
        for (i, &offset) in meta.areas.metadata_offsets.iter().enumerate() {
            let what = format!("FVE metadata block {}", i + 1);
            reserved.push(area(&what, offset, METADATA_AREA)?);
        }
        reserved.sort_by_key(|r| r.start);
        // Merge overlaps; the view's first bytes (served from the backup) must stay clear.
        let mut merged: Vec<Range<u64>> = Vec::new();
        for r in reserved {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        if let Some(r) = merged.iter().find(|r| r.start < header.end - header.start) {
            return Err(bad(format!(
                "a reserved area at {:#x} overlaps the first {} bytes of the volume",
                r.start,
                header.end - header.start
            )));
        }
        let stated = meta.info.volume_size;
        let encrypted_end = if stated == 0 { size } else { stated.min(size) };
        Ok(Self {
            size,
            sector,
            header,
            encrypted_end: encrypted_end - encrypted_end % sector,
            reserved: merged,
        })
    }

    /// Bytes in the view (the device size, in whole sectors).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn sector_size(&self) -> u64 {
        self.sector
    }

    /// The reserved areas (view offsets), for messages.
    pub fn reserved(&self) -> &[Range<u64>] {
        &self.reserved
    }

    /// Splits `offset..offset + len` of the view (clipped to its size) by source. Sector-
    /// aligned ranges give sector-aligned extents: every boundary is a sector boundary.
    pub fn extents(&self, offset: u64, len: u64) -> Vec<Extent> {
        let end = offset.saturating_add(len).min(self.size);
        let header_len = self.header.end - self.header.start;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let (source, next) = if pos < header_len {
                let physical = self.header.start + pos;
                (Source::Encrypted { physical }, header_len)
            } else if let Some(r) = self.reserved.iter().find(|r| r.contains(&pos)) {
                (Source::Reserved, r.end)
            } else {
                let next_reserved = self
                    .reserved
                    .iter()
                    .map(|r| r.start)
                    .find(|&s| s > pos)
                    .unwrap_or(self.size);
                if pos < self.encrypted_end {
                    let next = next_reserved.min(self.encrypted_end);
                    (Source::Encrypted { physical: pos }, next)
                } else {
                    (Source::Plain { physical: pos }, next_reserved)
                }
            };
            let stop = next.min(end);
            out.push(Extent {
                view: pos,
                len: stop - pos,
                source,
            });
            pos = stop;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitlocker::metadata::Areas;

    fn layout(areas: Areas, volume_size: u64, device: u64) -> Result<Layout, BitlockerError> {
        let mut meta = crate::bitlocker::metadata::tests_support::empty();
        meta.areas = areas;
        meta.info.volume_size = volume_size;
        Layout::new(&meta, device)
    }

    const MIB: u64 = 1 << 20;

    fn ntfs_like() -> Areas {
        Areas {
            metadata_offsets: [2 * MIB, 4 * MIB, 6 * MIB],
            volume_header: Some((2 * MIB + METADATA_AREA, 8192)),
        }
    }

    #[test]
    fn maps_header_reserved_and_rest() {
        let l = layout(ntfs_like(), 10 * MIB, 10 * MIB).unwrap();
        let hdr = 2 * MIB + METADATA_AREA;
        assert_eq!(
            l.extents(0, 16384),
            vec![
                Extent {
                    view: 0,
                    len: 8192,
                    source: Source::Encrypted { physical: hdr }
                },
                Extent {
                    view: 8192,
                    len: 8192,
                    source: Source::Encrypted { physical: 8192 }
                },
            ]
        );
        // Block 1 and the header backup right after it merge into one reserved area.
        assert_eq!(l.reserved()[0], 2 * MIB..hdr + 8192);
        let around = l.extents(2 * MIB - 512, METADATA_AREA + 8192 + 1024);
        assert_eq!(
            around.iter().map(|e| e.source).collect::<Vec<_>>(),
            vec![
                Source::Encrypted {
                    physical: 2 * MIB - 512
                },
                Source::Reserved,
                Source::Encrypted {
                    physical: hdr + 8192
                },
            ]
        );
        assert_eq!(around[1].len, METADATA_AREA + 8192);
        // Clipped at the end of the device.
        let tail = l.extents(10 * MIB - 512, 4096);
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].len, 512);
        assert!(l.extents(10 * MIB, 512).is_empty());
    }

    #[test]
    fn plaintext_after_the_encrypted_size() {
        let l = layout(ntfs_like(), 8 * MIB, 10 * MIB).unwrap();
        let e = l.extents(8 * MIB - 512, 1024);
        assert_eq!(
            e.iter().map(|e| e.source).collect::<Vec<_>>(),
            vec![
                Source::Encrypted {
                    physical: 8 * MIB - 512
                },
                Source::Plain { physical: 8 * MIB }
            ]
        );
    }

    #[test]
    fn rejects_areas_off_the_device_or_misaligned() {
        let mut a = ntfs_like();
        a.metadata_offsets[2] = 10 * MIB - 4096;
        assert!(layout(a, 0, 10 * MIB).is_err(), "block past the end");
        let mut a = ntfs_like();
        a.volume_header = None;
        assert!(layout(a, 0, 10 * MIB).is_err(), "no header entry");
        let mut a = ntfs_like();
        a.volume_header = Some((3 * MIB, 100));
        assert!(layout(a, 0, 10 * MIB).is_err(), "partial sector");
        let mut a = ntfs_like();
        a.volume_header = Some((u64::MAX - 511, 8192));
        let err = layout(a, 0, 10 * MIB).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        let mut a = ntfs_like();
        a.metadata_offsets[0] = 4096;
        assert!(layout(a, 0, 10 * MIB).is_err(), "overlaps the header copy");
    }
}
