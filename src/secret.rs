//! Secrets (passwords, recovery keys, startup keys): in pages kept out of dumps and swap,
//! wiped on drop, never printed.

use nix::sys::mman;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ffi::c_void;
use std::fmt;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use zeroize::{Zeroize, Zeroizing};

/// Keeps secrets that pass through this process out of core dumps and away from other
/// processes of the same user: no core file (RLIMIT_CORE 0, which children inherit) and not
/// dumpable (no ptrace, no /proc/PID/mem by the same user). For the daemon, the engine and
/// the dialog; exec makes a process dumpable again, so each calls it itself.
pub fn protect_process() {
    use nix::sys::resource::{setrlimit, Resource};
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        log::warn!("cannot turn core dumps off: {e}");
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        log::warn!(
            "cannot make this process non-dumpable: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Whole pages of their own for one secret: left out of core dumps (MADV_DONTDUMP, which
/// holds even where `suid_dumpable` dumps non-dumpable processes), kept out of swap (mlock,
/// where RLIMIT_MEMLOCK allows; a user's dialog may get less), wiped and unmapped on drop.
struct Locked {
    /// `None` for an empty secret: no pages.
    pages: Option<(NonNull<c_void>, NonZeroUsize)>,
    len: usize,
}

// SAFETY: the mapping is owned alone, like a Box's memory.
unsafe impl Send for Locked {}
// SAFETY: shared access only reads.
unsafe impl Sync for Locked {}

impl Locked {
    fn new(bytes: &[u8]) -> Self {
        let Some(len) = NonZeroUsize::new(bytes.len()) else {
            return Self {
                pages: None,
                len: 0,
            };
        };
        // SAFETY: a fresh private anonymous mapping, no address hint.
        let map = unsafe {
            mman::mmap_anonymous(
                None,
                len,
                mman::ProtFlags::PROT_READ | mman::ProtFlags::PROT_WRITE,
                mman::MapFlags::MAP_PRIVATE,
            )
        };
        let ptr = match map {
            Ok(ptr) => ptr,
            // As a Vec would when memory runs out.
            Err(e) => panic!("cannot map {} bytes for a secret: {e}", bytes.len()),
        };
        // SAFETY: the range is our mapping; advice and locking change no contents.
        unsafe {
            let _ = mman::madvise(ptr, len.get(), mman::MmapAdvise::MADV_DONTDUMP);
            let _ = mman::mlock(ptr, len.get());
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr().cast(), bytes.len());
        }
        Self {
            pages: Some((ptr, len)),
            len: bytes.len(),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self.pages {
            // SAFETY: `len` bytes were written at `ptr`, which lives as long as `self`.
            Some((ptr, _)) => unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast(), self.len) },
            None => &[],
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        if let Some((ptr, len)) = self.pages.take() {
            // SAFETY: our own mapping of `len` bytes, not used after this.
            unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr().cast::<u8>(), len.get()).zeroize();
                let _ = mman::munlock(ptr, len.get());
                let _ = mman::munmap(ptr, len.get());
            }
        }
    }
}

impl Clone for Locked {
    fn clone(&self) -> Self {
        Self::new(self.as_bytes())
    }
}

/// A secret string in [`Locked`] pages. `Debug` and `Display` print `***`.
#[derive(Clone)]
pub struct SecretString(Locked);

impl SecretString {
    /// Moves `value` into locked pages; the `String`'s own memory is wiped.
    pub fn new(value: String) -> Self {
        let value = Zeroizing::new(value);
        Self::from(value.as_str())
    }

    pub fn expose(&self) -> &str {
        // SAFETY: only ever filled from a `&str`.
        unsafe { std::str::from_utf8_unchecked(self.0.as_bytes()) }
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
}

impl Default for SecretString {
    fn default() -> Self {
        Self::from("")
    }
}

impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes() == other.0.as_bytes()
    }
}

impl Eq for SecretString {}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self(Locked::new(value.as_bytes()))
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Straight from the deserializer's text into locked pages: no String in between.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SecretString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretString, E> {
                Ok(SecretString::from(v))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Secret bytes (a .BEK file's contents) in [`Locked`] pages. Travels as lowercase hex on
/// the wire.
#[derive(Clone)]
pub struct SecretBytes(Locked);

impl SecretBytes {
    /// Moves `value` into locked pages; the `Vec`'s own memory is wiped.
    pub fn new(value: Vec<u8>) -> Self {
        let value = Zeroizing::new(value);
        Self(Locked::new(&value))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Default for SecretBytes {
    fn default() -> Self {
        Self(Locked::new(&[]))
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "*** ({} bytes)", self.0.len)
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = Zeroizing::new(String::with_capacity(self.0.len * 2));
        for byte in self.expose() {
            text.push(HEX[usize::from(byte >> 4)] as char);
            text.push(HEX[usize::from(byte & 15)] as char);
        }
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SecretBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hex string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<SecretBytes, E> {
                if !text.len().is_multiple_of(2) {
                    return Err(E::custom("hex secret has an odd length"));
                }
                let nibble = |c: u8| match c {
                    b'0'..=b'9' => Ok(c - b'0'),
                    b'a'..=b'f' => Ok(c - b'a' + 10),
                    b'A'..=b'F' => Ok(c - b'A' + 10),
                    _ => Err(E::custom("hex secret has a non-hex character")),
                };
                let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 2));
                for pair in text.as_bytes().chunks_exact(2) {
                    out.push(nibble(pair[0])? << 4 | nibble(pair[1])?);
                }
                Ok(SecretBytes(Locked::new(&out)))
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protected_process_dumps_nothing() {
        protect_process();
        // SAFETY: prctl with integer arguments only.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap();
        assert_eq!(
            core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
            ["0", "0"],
            "{core}"
        );
    }

    /// The VmFlags of the mapping that holds `addr`, from /proc/self/smaps.
    fn vm_flags(addr: usize) -> Option<Vec<String>> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or_default();
            if let Some((start, end)) = first.split_once('-') {
                if let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                ) {
                    inside = (start..end).contains(&addr);
                    continue;
                }
            }
            if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| inside) {
                return Some(flags.split_whitespace().map(str::to_owned).collect());
            }
        }
        None
    }

    #[test]
    fn secrets_live_in_pages_left_out_of_dumps() {
        let password = SecretString::from("correct horse");
        let addr = password.expose().as_ptr() as usize;
        let flags = vm_flags(addr).expect("the secret's mapping");
        assert!(
            flags.iter().any(|f| f == "dd"),
            "not MADV_DONTDUMP: {flags:?}"
        );
        if nix::unistd::geteuid().is_root() {
            assert!(flags.iter().any(|f| f == "lo"), "not locked: {flags:?}");
        }
        let copy = password.clone();
        assert_ne!(copy.expose().as_ptr() as usize, addr);
        assert_eq!(copy, password);
        drop(password);
        assert!(
            vm_flags(addr).is_none_or(|f| !f.iter().any(|f| f == "dd")),
            "still mapped"
        );
        let key = SecretBytes::new(vec![7; 5000]);
        let flags = vm_flags(key.expose().as_ptr() as usize + 4999).unwrap();
        assert!(flags.iter().any(|f| f == "dd"), "{flags:?}");
        assert!(SecretString::default().is_empty());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = SecretString::from("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        let b = SecretBytes::new(vec![1, 2, 3]);
        assert_eq!(format!("{b:?}"), "*** (3 bytes)");
    }

    #[test]
    fn bytes_round_trip_as_hex() {
        let b = SecretBytes::new(vec![0x00, 0xab, 0xff]);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, "\"00abff\"");
        let back: SecretBytes = serde_json::from_str(&json).unwrap();
        assert_eq!(back, b);
        assert!(serde_json::from_str::<SecretBytes>("\"0g\"").is_err());
    }
}
