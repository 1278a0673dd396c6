//! Walks FVE metadata entry lists (size, type, value type, version, data) with every bound checked.
//!
//! Entries come from untrusted disks: a size must cover its own 8-byte header and stay inside
//! its list, so each step moves forward by at least 8 bytes and a list ends in bounded time.
//! Nested lists are only followed through the container value types we know, to a fixed depth.

/// Entry header: size, entry type, value type, version (all u16 little-endian).
pub(crate) const HEADER_LEN: usize = 8;
/// Deepest nesting followed (top level is 0; a stretch key inside a VMK is 2).
pub(crate) const MAX_DEPTH: u8 = 4;
/// More entries than this in one list is not something Windows writes.
const MAX_ENTRIES: usize = 512;

// Entry types (what the entry is for).
pub(crate) const TYPE_VMK: u16 = 0x0002;
pub(crate) const TYPE_FVEK: u16 = 0x0003;
pub(crate) const TYPE_STARTUP_KEY: u16 = 0x0006;
pub(crate) const TYPE_DESCRIPTION: u16 = 0x0007;
/// Where the backup of the volume's first sectors (the real boot sector) is kept.
pub(crate) const TYPE_VOLUME_HEADER: u16 = 0x000f;

// Value types (how the data is laid out).
pub(crate) const VALUE_KEY: u16 = 0x0001;
pub(crate) const VALUE_STRING: u16 = 0x0002;
pub(crate) const VALUE_STRETCH_KEY: u16 = 0x0003;
pub(crate) const VALUE_USE_KEY: u16 = 0x0004;
pub(crate) const VALUE_AES_CCM: u16 = 0x0005;
pub(crate) const VALUE_VMK: u16 = 0x0008;
pub(crate) const VALUE_EXTERNAL_KEY: u16 = 0x0009;
/// An offset and a size, both u64.
pub(crate) const VALUE_OFFSET_SIZE: u16 = 0x000f;
pub(crate) const VALUE_GUID: u16 = 0x0017;

/// One entry, borrowed from the buffer it was found in.
#[derive(Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub kind: u16,
    pub value: u16,
    /// The data after the 8-byte header.
    pub data: &'a [u8],
    /// Absolute offset of the entry (for messages).
    pub at: u64,
    /// Nesting depth of the list this entry is in.
    pub depth: u8,
}

impl<'a> Entry<'a> {
    /// Where the nested entry list of a container value type starts inside `data`.
    fn nested_start(value: u16) -> Option<usize> {
        match value {
            VALUE_STRETCH_KEY => Some(20),  // method u32, salt[16]
            VALUE_USE_KEY => Some(4),       // method u32
            VALUE_VMK => Some(28),          // guid, filetime, u16, protection u16
            VALUE_EXTERNAL_KEY => Some(24), // guid, filetime
            _ => None,
        }
    }

    /// The nested list of a container entry, or an error when its fixed part is cut short.
    pub fn children(&self) -> Result<Entries<'a>, String> {
        let Some(start) = Self::nested_start(self.value) else {
            return Ok(Entries::empty(self.at, self.depth + 1));
        };
        if self.depth >= MAX_DEPTH {
            return Err(format!(
                "entries at {:#x} are nested deeper than {MAX_DEPTH} levels",
                self.at
            ));
        }
        let rest = self.data.get(start..).ok_or_else(|| {
            format!(
                "entry of value type {:#06x} at {:#x} has {} bytes of data, fewer than its {start}-byte fixed part",
                self.value,
                self.at,
                self.data.len()
            )
        })?;
        Ok(Entries::new(
            rest,
            self.at.saturating_add((HEADER_LEN + start) as u64),
            self.depth + 1,
        ))
    }

    /// Checks this entry's nested lists all the way down.
    pub fn check_nested(&self) -> Result<(), String> {
        for child in self.children()? {
            child?.check_nested()?;
        }
        Ok(())
    }
}

/// Iterator over one entry list; yields `Err` once on malformed input, then stops.
pub(crate) struct Entries<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
    depth: u8,
    count: usize,
    done: bool,
}

impl<'a> Entries<'a> {
    /// `base` is the absolute offset of `buf[0]`, used only in messages.
    pub fn new(buf: &'a [u8], base: u64, depth: u8) -> Self {
        Self {
            buf,
            pos: 0,
            base,
            depth,
            count: 0,
            done: false,
        }
    }

    fn empty(base: u64, depth: u8) -> Self {
        Self::new(&[], base, depth)
    }

    fn next_entry(&mut self) -> Result<Option<Entry<'a>>, String> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let at = self.base.saturating_add(self.pos as u64);
        let size = u16_at(rest, 0).map_or(0, usize::from);
        // Trailing zero bytes are padding, not an entry (scanned once, at the end).
        if size == 0 && rest.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if rest.len() < HEADER_LEN {
            return Err(format!(
                "entry header at {at:#x} is cut short ({} bytes left)",
                rest.len()
            ));
        }
        if size < HEADER_LEN {
            return Err(format!("entry size {size} at {at:#x} is invalid"));
        }
        if size > rest.len() {
            return Err(format!(
                "entry size {size} at {at:#x} runs past the end of its list ({} bytes left)",
                rest.len()
            ));
        }
        self.count += 1;
        if self.count > MAX_ENTRIES {
            return Err(format!(
                "more than {MAX_ENTRIES} entries in the list at {:#x}",
                self.base
            ));
        }
        self.pos += size;
        Ok(Some(Entry {
            kind: u16::from_le_bytes([rest[2], rest[3]]),
            value: u16::from_le_bytes([rest[4], rest[5]]),
            data: &rest[HEADER_LEN..size],
            at,
            depth: self.depth,
        }))
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_entry().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// Little-endian readers that return `None` instead of panicking past the end.
pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// UTF-16LE string data as stored by Windows (NUL-terminated); invalid units become U+FFFD.
pub(crate) fn utf16_string(data: &[u8]) -> String {
    let units = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0);
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: u16, kind: u16, value: u16, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&value.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    fn walk(buf: &[u8]) -> Result<usize, String> {
        let mut n = 0;
        for e in Entries::new(buf, 0x1000, 0) {
            e?.check_nested()?;
            n += 1;
        }
        Ok(n)
    }

    #[test]
    fn well_formed_and_padding() {
        let mut buf = entry(12, 7, 2, b"a\0\0\0");
        buf.extend(entry(8, 0, 0, b""));
        buf.extend([0u8; 5]);
        assert_eq!(walk(&buf), Ok(2));
    }

    #[test]
    fn rejects_bad_sizes() {
        let zero = [&entry(12, 7, 2, b"abcd")[..], &[0, 0, 7, 0, 2, 0, 1, 0]].concat();
        assert_eq!(
            walk(&zero).unwrap_err(),
            "entry size 0 at 0x100c is invalid"
        );
        let small = entry(4, 7, 2, b"");
        assert!(walk(&small).unwrap_err().contains("entry size 4"));
        let huge = entry(0xffff, 7, 2, b"abcd");
        assert!(walk(&huge).unwrap_err().contains("runs past the end"));
        assert!(walk(&[1, 2, 3]).unwrap_err().contains("cut short"));
    }

    #[test]
    fn nesting_is_bounded() {
        // Use-key entries nested inside each other, deeper than allowed.
        let mut inner = entry(8, 0, 0, b"");
        for _ in 0..10 {
            let mut data = 0x2002u32.to_le_bytes().to_vec();
            data.extend(&inner);
            inner = entry((8 + data.len()) as u16, 0, VALUE_USE_KEY, &data);
        }
        assert!(walk(&inner).unwrap_err().contains("nested deeper"));
        // A container too short for its fixed part.
        let short = entry(10, 2, VALUE_VMK, b"ab");
        assert!(walk(&short).unwrap_err().contains("fixed part"));
    }

    #[test]
    fn readers_never_panic() {
        assert_eq!(u16_at(&[1, 2], 0), Some(0x0201));
        assert_eq!(u16_at(&[1, 2], 1), None);
        assert_eq!(u32_at(&[1, 2, 3], 0), None);
        assert_eq!(u64_at(&[0; 8], usize::MAX), None);
        assert_eq!(utf16_string(b"H\0i\0\0\0x\0"), "Hi");
        assert_eq!(utf16_string(&[0x00, 0xd8, b'a', 0]), "\u{fffd}a");
    }
}
