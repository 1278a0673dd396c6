//! GUIDs as Windows stores them (first three fields little-endian), printed as 8-4-4-4-12.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A GUID in its on-disk byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The GUID at `bytes[at..at + 16]`, if the slice is long enough.
    pub(crate) fn read(bytes: &[u8], at: usize) -> Option<Self> {
        let raw = bytes.get(at..at.checked_add(16)?)?;
        let mut out = [0u8; 16];
        out.copy_from_slice(raw);
        Some(Self(out))
    }
}

/// A GUID typed or stored as text (`{2E1D2D5F-…}`, braces and case as they come), in the
/// form `inspect` prints and GNOME's keyring entries use: lower case, no braces.
pub fn normalize(text: &str) -> Option<String> {
    let guid = text
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .to_ascii_lowercase();
    let groups: Vec<&str> = guid.split('-').collect();
    let shaped = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    shaped.then_some(guid)
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        // Data1..Data3 are little-endian integers on disk; Data4 is a plain byte array.
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        b[10..].iter().try_for_each(|x| write!(f, "{x:02x}"))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Guid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Guid {
    /// The GUID a text form (see [`normalize`]) names, in on-disk byte order.
    pub fn parse(text: &str) -> Option<Self> {
        let hex: Vec<u8> = normalize(text)?.bytes().filter(|b| *b != b'-').collect();
        let mut shown = [0u8; 16];
        for (byte, pair) in shown.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        let s = shown;
        // The first three fields are little-endian on disk (see Display).
        let mut out = [
            s[3], s[2], s[1], s[0], s[5], s[4], s[7], s[6], 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        out[8..].copy_from_slice(&s[8..]);
        Some(Self(out))
    }
}

impl<'de> Deserialize<'de> for Guid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("not a GUID: {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_to_disk_order() {
        let guid = Guid([
            0x5f, 0x2d, 0x1d, 0x2e, 0x8b, 0x3d, 0x6a, 0x4e, 0x9c, 0x1e, 0x0a, 0x1b, 0x2c, 0x3d,
            0x4e, 0x5f,
        ]);
        let text = guid.to_string();
        assert_eq!(text, "2e1d2d5f-3d8b-4e6a-9c1e-0a1b2c3d4e5f");
        assert_eq!(Guid::parse(&text), Some(guid));
        assert_eq!(
            Guid::parse("{2E1D2D5F-3D8B-4E6A-9C1E-0A1B2C3D4E5F}"),
            Some(guid)
        );
        assert_eq!(Guid::parse("nope"), None);
    }

    #[test]
    fn text_guids_are_normalized() {
        let guid = "{2E1D2D5F-3D8B-4E6A-9C1E-0A1B2C3D4E5F}";
        assert_eq!(
            normalize(guid).as_deref(),
            Some("2e1d2d5f-3d8b-4e6a-9c1e-0a1b2c3d4e5f")
        );
        assert_eq!(normalize("/dev/sdb1"), None);
        assert_eq!(normalize("2e1d2d5f-3d8b-4e6a-9c1e-0a1b2c3d4e5"), None);
        assert_eq!(normalize("2e1d2d5f-3d8b-4e6a-9c1e-0a1b2c3d4e5g"), None);
    }

    #[test]
    fn formats_mixed_endian() {
        // The BitLocker signature GUID as stored in a volume header.
        let raw = [
            0x3b, 0xd6, 0x67, 0x49, 0x29, 0x2e, 0xd8, 0x4a, 0x83, 0x99, 0xf6, 0xa3, 0x39, 0xe3,
            0xd0, 0x01,
        ];
        let g = Guid(raw);
        assert_eq!(g.to_string(), "4967d63b-2e29-4ad8-8399-f6a339e3d001");
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            "\"4967d63b-2e29-4ad8-8399-f6a339e3d001\""
        );
        assert_eq!(Guid::read(&raw, 1), None);
        assert_eq!(Guid::read(&raw, usize::MAX), None);
    }
}
