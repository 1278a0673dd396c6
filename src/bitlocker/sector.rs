//! The sector ciphers of BitLocker: AES-XTS, AES-CBC with an encrypted-offset IV, and AES-CBC
//! with the Elephant diffuser (Windows 7), for 512- and 4096-byte sectors.
//!
//! Every sector is enciphered on its own, keyed by its byte offset on the *physical* volume:
//! XTS takes `offset / sector_size` as its tweak (dm-crypt's `plain64` with large-sector IVs),
//! CBC takes `AES(FVEK, offset)` as its IV (dm-crypt's `eboiv`). Blocks go through AES in
//! batches of a whole sector so AES-NI pipelines eight at a time. Key schedules are wiped on
//! drop (the `aes` crate's `zeroize` feature).

use super::elephant;
use super::error::BitlockerError;
use super::info::Cipher;
use super::keys::Fvek;
use aes::cipher::consts::U16;
use aes::cipher::inout::InOutBuf;
use aes::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes256, Block};
use std::fmt;

const BLOCK: usize = 16;
/// The largest sector: 4096 bytes, 256 AES blocks.
const MAX_BLOCKS: usize = 4096 / BLOCK;

/// One AES key schedule, 128 or 256 bits.
#[derive(Clone)]
pub(crate) enum AesKey {
    A128(Box<Aes128>),
    A256(Box<Aes256>),
}

impl AesKey {
    fn new(key: &[u8]) -> Option<Self> {
        match key.len() {
            16 => Some(Self::A128(Box::new(Aes128::new(GenericArray::from_slice(
                key,
            ))))),
            32 => Some(Self::A256(Box::new(Aes256::new(GenericArray::from_slice(
                key,
            ))))),
            _ => None,
        }
    }

    fn encrypt_blocks(&self, blocks: &mut [Block]) {
        match self {
            Self::A128(k) => k.encrypt_blocks(blocks),
            Self::A256(k) => k.encrypt_blocks(blocks),
        }
    }

    /// ECB over whole blocks of `buf`, in place, with no copy (the blocks are views of it).
    fn encrypt_in_place(&self, buf: &mut [u8]) {
        let (blocks, _) = InOutBuf::from(buf).into_chunks::<U16>();
        match self {
            Self::A128(k) => k.encrypt_blocks_inout(blocks),
            Self::A256(k) => k.encrypt_blocks_inout(blocks),
        }
    }

    fn decrypt_in_place(&self, buf: &mut [u8]) {
        let (blocks, _) = InOutBuf::from(buf).into_chunks::<U16>();
        match self {
            Self::A128(k) => k.decrypt_blocks_inout(blocks),
            Self::A256(k) => k.decrypt_blocks_inout(blocks),
        }
    }

    /// AES-ECB of a little-endian byte offset, zero-padded to a block (BitLocker's IVs).
    pub(crate) fn encrypt_offset(&self, offset: u64, last_byte: u8) -> [u8; BLOCK] {
        let mut block = Block::default();
        block[..8].copy_from_slice(&offset.to_le_bytes());
        block[15] = last_byte;
        self.encrypt_blocks(std::slice::from_mut(&mut block));
        block.into()
    }
}

enum Mode {
    Xts { data: AesKey, tweak: AesKey },
    Cbc { key: AesKey },
    Elephant { key: AesKey, tweak: AesKey },
}

/// Encrypts and decrypts whole sectors of one volume. `Debug` shows no key.
pub struct SectorCipher {
    mode: Mode,
    cipher: Cipher,
    sector_size: usize,
}

impl fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SectorCipher {{ {}, {}-byte sectors, key: *** }}",
            self.cipher, self.sector_size
        )
    }
}

impl SectorCipher {
    /// Builds the cipher of the volume from its FVEK. `sector_size` is 512 or 4096.
    pub fn new(fvek: &Fvek, sector_size: usize) -> Result<Self, BitlockerError> {
        let cipher = Cipher::from_method(fvek.method);
        let unsupported = || BitlockerError::UnsupportedCipher {
            method: fvek.method,
        };
        if !matches!(sector_size, 512 | 4096) {
            return Err(BitlockerError::VolumeHeader {
                cause: format!("sector size {sector_size} is not supported (512 or 4096)"),
            });
        }
        let need = cipher.key_bytes().ok_or_else(unsupported)?;
        let key = fvek
            .key
            .expose()
            .get(..need)
            .ok_or(BitlockerError::DamagedKey {
                what: "full-volume encryption key",
                cause: format!(
                    "{} bytes of key data, {need} needed",
                    fvek.key.expose().len()
                ),
            })?;
        let aes = |k: &[u8]| AesKey::new(k).ok_or_else(unsupported);
        let mode = match cipher {
            Cipher::AesXts128 => Mode::Xts {
                data: aes(&key[..16])?,
                tweak: aes(&key[16..32])?,
            },
            Cipher::AesXts256 => Mode::Xts {
                data: aes(&key[..32])?,
                tweak: aes(&key[32..64])?,
            },
            Cipher::AesCbc128 => Mode::Cbc {
                key: aes(&key[..16])?,
            },
            Cipher::AesCbc256 => Mode::Cbc {
                key: aes(&key[..32])?,
            },
            // The stored key data: FVEK at 0, the diffuser's tweak key at 32.
            Cipher::AesCbc128Elephant => Mode::Elephant {
                key: aes(&key[..16])?,
                tweak: aes(&key[32..48])?,
            },
            Cipher::AesCbc256Elephant => Mode::Elephant {
                key: aes(&key[..32])?,
                tweak: aes(&key[32..64])?,
            },
            Cipher::Unknown(_) => return Err(unsupported()),
        };
        Ok(Self {
            mode,
            cipher,
            sector_size,
        })
    }

    pub fn sector_size(&self) -> usize {
        self.sector_size
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Decrypts `buf` (whole sectors) in place; `offset` is the physical byte offset of its
    /// first sector, a multiple of the sector size.
    pub fn decrypt(&self, offset: u64, buf: &mut [u8]) {
        self.each_sector(offset, buf, false);
    }

    /// Encrypts `buf` (whole sectors) in place, as [`SectorCipher::decrypt`] in reverse.
    pub fn encrypt(&self, offset: u64, buf: &mut [u8]) {
        self.each_sector(offset, buf, true);
    }

    fn each_sector(&self, offset: u64, buf: &mut [u8], enc: bool) {
        assert!(
            buf.len().is_multiple_of(self.sector_size)
                && offset.is_multiple_of(self.sector_size as u64),
            "sector cipher called with a partial sector"
        );
        let mut scratch = Scratch::new(self.sector_size / BLOCK);
        for (i, sector) in buf.chunks_exact_mut(self.sector_size).enumerate() {
            self.sector(
                offset + (i * self.sector_size) as u64,
                sector,
                &mut scratch,
                enc,
            );
        }
        scratch.wipe();
    }

    /// One sector at physical `offset`, enciphered (`enc`) or deciphered in place.
    fn sector(&self, offset: u64, sector: &mut [u8], s: &mut Scratch, enc: bool) {
        let iv = |key: &AesKey| key.encrypt_offset(offset, 0);
        match (&self.mode, enc) {
            (Mode::Xts { data, tweak }, _) => {
                let unit = offset / self.sector_size as u64;
                xts(data, tweak, unit, sector, s, enc)
            }
            (Mode::Cbc { key }, true) => cbc_encrypt(key, &iv(key), sector),
            (Mode::Cbc { key }, false) => cbc_decrypt(key, &iv(key), sector, s),
            (Mode::Elephant { key, tweak }, true) => {
                elephant::encrypt(tweak, offset, sector);
                cbc_encrypt(key, &iv(key), sector);
            }
            (Mode::Elephant { key, tweak }, false) => {
                cbc_decrypt(key, &iv(key), sector, s);
                elephant::decrypt(tweak, offset, sector);
            }
        }
    }
}

/// Per-call working space, wiped when done: the ciphertext copy CBC decryption needs, and
/// one sector's XTS tweaks.
struct Scratch {
    copy: Vec<u8>,
    tweaks: Vec<u128>,
}

impl Scratch {
    fn new(blocks: usize) -> Self {
        debug_assert!(blocks <= MAX_BLOCKS);
        Self {
            copy: vec![0; blocks * BLOCK],
            tweaks: vec![0; blocks],
        }
    }

    fn wipe(&mut self) {
        use zeroize::Zeroize;
        self.copy.zeroize();
        self.tweaks.zeroize();
    }
}

fn block_at(buf: &[u8], i: usize) -> u128 {
    let mut b = [0u8; BLOCK];
    b.copy_from_slice(&buf[i * BLOCK..(i + 1) * BLOCK]);
    u128::from_le_bytes(b)
}

fn xor_block(buf: &mut [u8], i: usize, with: u128) {
    let v = block_at(buf, i) ^ with;
    buf[i * BLOCK..(i + 1) * BLOCK].copy_from_slice(&v.to_le_bytes());
}

/// Multiplies an XTS tweak by x in GF(2^128), little-endian as IEEE 1619 defines it.
fn mul_x(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

/// AES-XTS of one data unit (a sector; no ciphertext stealing, sectors are whole blocks),
/// in place: XOR the tweaks in, one AES batch over the sector, XOR them out.
fn xts(data: &AesKey, tweak: &AesKey, unit: u64, sector: &mut [u8], s: &mut Scratch, enc: bool) {
    let mut t = u128::from_le_bytes(tweak.encrypt_offset(unit, 0));
    for (i, slot) in s.tweaks.iter_mut().enumerate() {
        *slot = t;
        xor_block(sector, i, t);
        t = mul_x(t);
    }
    if enc {
        data.encrypt_in_place(sector);
    } else {
        data.decrypt_in_place(sector);
    }
    for (i, &t) in s.tweaks.iter().enumerate() {
        xor_block(sector, i, t);
    }
}

/// CBC decryption parallelises: decrypt every block at once, then XOR each with the
/// ciphertext block before it (kept in a copy).
fn cbc_decrypt(key: &AesKey, iv: &[u8; BLOCK], sector: &mut [u8], s: &mut Scratch) {
    s.copy.copy_from_slice(sector);
    key.decrypt_in_place(sector);
    xor_block(sector, 0, u128::from_le_bytes(*iv));
    for i in 1..sector.len() / BLOCK {
        xor_block(sector, i, block_at(&s.copy, i - 1));
    }
}

/// CBC encryption is a chain: one block at a time.
fn cbc_encrypt(key: &AesKey, iv: &[u8; BLOCK], sector: &mut [u8]) {
    let mut prev = u128::from_le_bytes(*iv);
    for chunk in sector.chunks_exact_mut(BLOCK) {
        xor_block(chunk, 0, prev);
        key.encrypt_in_place(chunk);
        prev = block_at(chunk, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn fvek(method: u16, key: &[u8]) -> Fvek {
        let mut data = key.to_vec();
        data.resize(64, 0);
        Fvek {
            method,
            key: crate::secret::SecretBytes::new(data),
        }
    }

    /// IEEE 1619-2007 annex B vectors, as data units of 32 bytes (XTS never chains across
    /// units, so the 32-byte vectors check tweak handling and the batched blocks).
    fn xts_vector(key1: &str, key2: &str, unit: u64, plain: &[u8], expect: &str) {
        let key = [hex(key1), hex(key2)].concat();
        let (data, tweak) = key.split_at(key.len() / 2);
        let data = AesKey::new(data).unwrap();
        let tweak = AesKey::new(tweak).unwrap();
        let mut buf = plain.to_vec();
        let mut s = Scratch::new(buf.len() / BLOCK);
        xts(&data, &tweak, unit, &mut buf, &mut s, true);
        assert_eq!(buf, hex(expect), "XTS vector, unit {unit:#x}");
        xts(&data, &tweak, unit, &mut buf, &mut s, false);
        assert_eq!(buf, plain);
    }

    #[test]
    fn ieee_1619_vectors() {
        let zero = "00000000000000000000000000000000";
        xts_vector(
            zero,
            zero,
            0,
            &[0; 32],
            "917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e",
        );
        xts_vector(
            "11111111111111111111111111111111",
            "22222222222222222222222222222222",
            0x33_3333_3333,
            &[0x44; 32],
            "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0",
        );
        xts_vector(
            "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0",
            "22222222222222222222222222222222",
            0x33_3333_3333,
            &[0x44; 32],
            "af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89",
        );
    }

    #[test]
    fn ieee_1619_vector_4_first_blocks() {
        // Vector 4: a 512-byte unit of bytes 0..=255 twice; the first 32 bytes of the
        // ciphertext are checked after enciphering the whole unit (tweaks j = 0, 1).
        let plain: Vec<u8> = (0..512).map(|i| i as u8).collect();
        let key = [
            hex("27182818284590452353602874713526"),
            hex("31415926535897932384626433832795"),
        ]
        .concat();
        let data = AesKey::new(&key[..16]).unwrap();
        let tweak = AesKey::new(&key[16..]).unwrap();
        let mut buf = plain.clone();
        xts(&data, &tweak, 0, &mut buf, &mut Scratch::new(32), true);
        assert_eq!(
            buf[..32],
            hex("27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c")[..]
        );
        xts(&data, &tweak, 0, &mut buf, &mut Scratch::new(32), false);
        assert_eq!(buf, plain);
    }

    #[test]
    fn every_cipher_round_trips_and_depends_on_the_offset() {
        let key: Vec<u8> = (1..=64).collect();
        for method in 0x8000..=0x8005u16 {
            for sector in [512usize, 4096] {
                let c = SectorCipher::new(&fvek(method, &key), sector).unwrap();
                // The same plaintext in every sector.
                let plain: Vec<u8> = (0..sector * 3)
                    .map(|i| (i % sector * 7 % 251) as u8)
                    .collect();
                let mut buf = plain.clone();
                c.encrypt(sector as u64 * 10, &mut buf);
                assert_ne!(buf, plain, "{method:#x}");
                // Each sector differs from the same plaintext at another offset.
                let mut other = plain.clone();
                c.encrypt(sector as u64 * 11, &mut other);
                assert_ne!(buf[..sector], other[..sector], "{method:#x}");
                assert_eq!(buf[sector..2 * sector], other[..sector], "{method:#x}");
                c.decrypt(sector as u64 * 10, &mut buf);
                assert_eq!(buf, plain, "{method:#x} {sector}");
            }
        }
    }

    #[test]
    fn cbc_matches_nist_sp800_38a() {
        // F.2.1/F.2.2, CBC-AES128: the batched decryption and the chained encryption.
        let key = AesKey::new(&hex("2b7e151628aed2a6abf7158809cf4f3c")).unwrap();
        let iv: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let plain = hex(concat!(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
        ));
        let cipher = hex(concat!(
            "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2",
            "73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7"
        ));
        let mut buf = plain.clone();
        cbc_encrypt(&key, &iv, &mut buf);
        assert_eq!(buf, cipher);
        cbc_decrypt(&key, &iv, &mut buf, &mut Scratch::new(4));
        assert_eq!(buf, plain);
    }

    #[test]
    fn rejects_bad_parameters() {
        let key = [1u8; 64];
        assert!(SectorCipher::new(&fvek(0x8004, &key), 1024).is_err());
        assert!(SectorCipher::new(&fvek(0x9999, &key), 512).is_err());
        let short = Fvek {
            method: 0x8005,
            key: crate::secret::SecretBytes::new(vec![0; 32]),
        };
        assert!(SectorCipher::new(&short, 512).is_err());
        let c = SectorCipher::new(&fvek(0x8004, &key), 512).unwrap();
        assert_eq!(
            format!("{c:?}"),
            "SectorCipher { AES-XTS 128-bit, 512-byte sectors, key: *** }"
        );
    }
}
