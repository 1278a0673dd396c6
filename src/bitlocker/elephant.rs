//! The Elephant diffuser of Windows Vista/7 BitLocker (Niels Ferguson, "AES-CBC + Elephant
//! diffuser", 2006), applied around AES-CBC.
//!
//! Encryption: XOR the sector with a sector key, run diffuser A, then diffuser B, then CBC.
//! Decryption undoes it in reverse. The sector key is 32 bytes: AES(tweak key, e(offset)) and
//! AES(tweak key, e'(offset)), where e' has 0x80 in its last byte. The diffusers mix the
//! sector as little-endian 32-bit words, each word with two others and a rotation.

use super::sector::AesKey;
use zeroize::Zeroize;

/// Rotations of diffuser A (by word index mod 4) and its number of cycles.
const RA: [u32; 4] = [9, 0, 13, 0];
const CYCLES_A: usize = 5;
/// Rotations of diffuser B and its cycles.
const RB: [u32; 4] = [0, 10, 0, 25];
const CYCLES_B: usize = 3;

fn sector_key(tweak: &AesKey, offset: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(&tweak.encrypt_offset(offset, 0));
    key[16..].copy_from_slice(&tweak.encrypt_offset(offset, 0x80));
    key
}

fn words(sector: &[u8]) -> Vec<u32> {
    sector
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

fn store(words: &[u32], sector: &mut [u8]) {
    for (w, out) in words.iter().zip(sector.chunks_exact_mut(4)) {
        out.copy_from_slice(&w.to_le_bytes());
    }
}

fn xor_key(sector: &mut [u8], key: &[u8; 32]) {
    for chunk in sector.chunks_mut(32) {
        for (b, k) in chunk.iter_mut().zip(key) {
            *b ^= k;
        }
    }
}

/// `i - k` modulo `n`, for `k < n` (no division in the inner loops).
fn back(i: usize, k: usize, n: usize) -> usize {
    if i >= k {
        i - k
    } else {
        i + n - k
    }
}

/// `i + k` modulo `n`, for `i < n` and `k < n`.
fn ahead(i: usize, k: usize, n: usize) -> usize {
    if i + k < n {
        i + k
    } else {
        i + k - n
    }
}

/// Diffuser A, decrypt direction: d[i] += d[i-2] ^ rot(d[i-5], RA[i % 4]), i ascending.
fn a_decrypt(d: &mut [u32]) {
    let n = d.len();
    for _ in 0..CYCLES_A {
        for i in 0..n {
            let x = d[back(i, 2, n)] ^ d[back(i, 5, n)].rotate_left(RA[i & 3]);
            d[i] = d[i].wrapping_add(x);
        }
    }
}

fn a_encrypt(d: &mut [u32]) {
    let n = d.len();
    for _ in 0..CYCLES_A {
        for i in (0..n).rev() {
            let x = d[back(i, 2, n)] ^ d[back(i, 5, n)].rotate_left(RA[i & 3]);
            d[i] = d[i].wrapping_sub(x);
        }
    }
}

/// Diffuser B, decrypt direction: d[i] += d[i+2] ^ rot(d[i+5], RB[i % 4]), i ascending.
fn b_decrypt(d: &mut [u32]) {
    let n = d.len();
    for _ in 0..CYCLES_B {
        for i in 0..n {
            let x = d[ahead(i, 2, n)] ^ d[ahead(i, 5, n)].rotate_left(RB[i & 3]);
            d[i] = d[i].wrapping_add(x);
        }
    }
}

fn b_encrypt(d: &mut [u32]) {
    let n = d.len();
    for _ in 0..CYCLES_B {
        for i in (0..n).rev() {
            let x = d[ahead(i, 2, n)] ^ d[ahead(i, 5, n)].rotate_left(RB[i & 3]);
            d[i] = d[i].wrapping_sub(x);
        }
    }
}

/// After CBC decryption of the sector at physical `offset`: undo both diffusers and the key.
pub(crate) fn decrypt(tweak: &AesKey, offset: u64, sector: &mut [u8]) {
    let mut d = words(sector);
    b_decrypt(&mut d);
    a_decrypt(&mut d);
    store(&d, sector);
    d.zeroize();
    let mut key = sector_key(tweak, offset);
    xor_key(sector, &key);
    key.zeroize();
}

/// Before CBC encryption: key, diffuser A, diffuser B.
pub(crate) fn encrypt(tweak: &AesKey, offset: u64, sector: &mut [u8]) {
    let mut key = sector_key(tweak, offset);
    xor_key(sector, &key);
    key.zeroize();
    let mut d = words(sector);
    a_encrypt(&mut d);
    b_encrypt(&mut d);
    store(&d, sector);
    d.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_invert() {
        let orig: Vec<u32> = (0..128u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
        let mut d = orig.clone();
        a_encrypt(&mut d);
        assert_ne!(d, orig);
        a_decrypt(&mut d);
        assert_eq!(d, orig);
        b_encrypt(&mut d);
        assert_ne!(d, orig);
        b_decrypt(&mut d);
        assert_eq!(d, orig);
    }

    #[test]
    fn one_bit_spreads_over_the_sector() {
        // The point of the diffuser: a bit flipped in the ciphertext's CBC output changes
        // most of the sector, not just one block.
        let mut flipped = vec![0u32; 128];
        flipped[64] = 1;
        b_decrypt(&mut flipped);
        a_decrypt(&mut flipped);
        let mut zero = vec![0u32; 128];
        b_decrypt(&mut zero);
        a_decrypt(&mut zero);
        let changed = flipped.iter().zip(&zero).filter(|(a, b)| a != b).count();
        assert!(changed > 100, "only {changed} of 128 words changed");
    }
}
