//! Password and recovery-key stretching: SHA-256 chained 2^20 times over an 88-byte record.
//!
//! The record is `last_sha256[32] | initial_sha256[32] | salt[16] | count: u64 LE`, and each
//! round replaces `last_sha256` by the SHA-256 of the record, then increments `count`. Its
//! 88 bytes always pad to the same two 64-byte blocks, so the loop feeds those blocks straight
//! to the compression function (SHA-NI when the CPU has it): no allocation, no buffering.

use sha2::compress256;
use sha2::digest::generic_array::{typenum::U64, GenericArray};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

pub(crate) const STRETCH_ROUNDS: u64 = 1 << 20;
const RECORD_LEN: u64 = 88;
/// SHA-256 initial hash value (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// The password as Windows hashes it: UTF-16LE, no terminator, no normalisation.
pub(crate) fn utf16le(password: &str) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(password.len() * 2));
    for unit in password.encode_utf16() {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

/// Initial value for a user password: SHA-256(SHA-256(UTF-16LE(password))).
pub(crate) fn password_initial(password: &str) -> Zeroizing<[u8; 32]> {
    let once = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(&*utf16le(password))));
    Zeroizing::new(Sha256::digest(*once).into())
}

/// Initial value for a recovery password: SHA-256 of its 16-byte key.
pub(crate) fn recovery_initial(key: &[u8; 16]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(Sha256::digest(key).into())
}

/// The two padded SHA-256 blocks of the record, plus the chaining state; wiped on drop.
struct Record {
    blocks: [GenericArray<u8, U64>; 2],
    state: [u32; 8],
}

impl Drop for Record {
    fn drop(&mut self) {
        for block in &mut self.blocks {
            block.as_mut_slice().zeroize();
        }
        self.state.zeroize();
    }
}

/// The 256-bit key that unwraps a password or recovery-password protected VMK.
pub(crate) fn stretch(initial: &[u8; 32], salt: &[u8; 16]) -> Zeroizing<[u8; 32]> {
    stretch_rounds(initial, salt, STRETCH_ROUNDS)
}

fn stretch_rounds(initial: &[u8; 32], salt: &[u8; 16], rounds: u64) -> Zeroizing<[u8; 32]> {
    let mut r = Record {
        blocks: [GenericArray::default(), GenericArray::default()],
        state: SHA256_IV,
    };
    // Block 0: last_sha256 (starts at zero) | initial_sha256.
    r.blocks[0][32..].copy_from_slice(initial);
    // Block 1: salt | count | 0x80 | zeros | message length in bits (big-endian).
    r.blocks[1][..16].copy_from_slice(salt);
    r.blocks[1][24] = 0x80;
    r.blocks[1][56..].copy_from_slice(&(RECORD_LEN * 8).to_be_bytes());
    for count in 0..rounds {
        r.blocks[1][16..24].copy_from_slice(&count.to_le_bytes());
        r.state = SHA256_IV;
        compress256(&mut r.state, &r.blocks);
        for (out, word) in r.blocks[0][..32].chunks_exact_mut(4).zip(r.state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&r.blocks[0][..32]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, written plainly: hash the 88-byte record, `rounds` times.
    fn reference(initial: &[u8; 32], salt: &[u8; 16], rounds: u64) -> [u8; 32] {
        let mut last = [0u8; 32];
        for count in 0..rounds {
            let mut h = Sha256::new();
            h.update(last);
            h.update(initial);
            h.update(salt);
            h.update(count.to_le_bytes());
            last = h.finalize().into();
        }
        last
    }

    #[test]
    fn fast_loop_matches_the_definition() {
        let initial = [7u8; 32];
        let salt: [u8; 16] = core::array::from_fn(|i| i as u8);
        for rounds in [0, 1, 2, 3, 1000] {
            assert_eq!(
                *stretch_rounds(&initial, &salt, rounds),
                reference(&initial, &salt, rounds),
                "rounds = {rounds}"
            );
        }
    }

    #[test]
    fn utf16_of_non_ascii_passwords() {
        assert_eq!(*utf16le("ab"), [b'a', 0, b'b', 0]);
        // German: ß is U+00DF, ü is U+00FC.
        assert_eq!(
            *utf16le("Grüße"),
            [0x47, 0, 0x72, 0, 0xfc, 0, 0xdf, 0, 0x65, 0]
        );
        // Korean: 비밀 is U+BE44 U+BC00.
        assert_eq!(*utf16le("비밀"), [0x44, 0xbe, 0x00, 0xbc]);
        // Outside the BMP: a surrogate pair, as Windows stores it.
        assert_eq!(*utf16le("😀"), [0x3d, 0xd8, 0x00, 0xde]);
        assert!(utf16le("").is_empty());
    }

    #[test]
    fn password_initial_is_double_sha256_of_utf16() {
        let once: [u8; 32] = Sha256::digest([b'p', 0, b'w', 0]).into();
        let twice: [u8; 32] = Sha256::digest(once).into();
        assert_eq!(*password_initial("pw"), twice);
        assert_ne!(*password_initial("Grüße"), *password_initial("Grusse"));
    }
}
