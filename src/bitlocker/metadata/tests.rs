//! Parser tests on a real metadata block, and on thousands of damaged copies of it.

use super::*;
use crate::bitlocker::testdata::{self, bytes, Rng, SparseDevice};

fn xts128() -> (Vec<u8>, Vec<u8>) {
    (
        bytes(testdata::XTS128_SECTOR0),
        bytes(testdata::XTS128_BLOCK),
    )
}

fn block_error(buf: &[u8]) -> String {
    parse_metadata_block(buf).unwrap_err().to_string()
}

#[test]
fn reads_a_real_volume() {
    let (sector, block) = xts128();
    let meta = read_metadata(SparseDevice::image(&sector, &block)).unwrap();
    let info = &meta.info;
    assert_eq!(
        info.guid.to_string(),
        "8f595209-f5b9-49a0-85d4-cb8f80258c27"
    );
    assert_eq!(info.cipher, Cipher::AesXts128);
    assert_eq!(info.description, "DESKTOP-NPM7RCA H: 7/4/2019");
    assert_eq!(info.state, EncryptionState::Complete);
    assert_eq!(info.volume_size, 100 << 20);
    assert_eq!(info.metadata_block, 1);
    assert!(!info.to_go);
    assert!(info.creation_time.is_some_and(|t| t > 1_500_000_000));
    let kinds: Vec<_> = info
        .protectors
        .iter()
        .map(|p| (p.kind, p.guid.to_string()))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                ProtectorKind::Password,
                "3e55195c-8811-4d9b-97b4-2b9e5f8f5384".to_string()
            ),
            (
                ProtectorKind::RecoveryPassword,
                "64311dea-4587-4029-924a-ba299647998e".to_string()
            ),
        ]
    );
    assert!(meta.fvek.is_some());
    assert!(meta
        .protectors
        .iter()
        .all(|p| p.salt.is_some() && p.vmk.is_some()));
}

#[test]
fn json_has_no_key_material() {
    let (sector, block) = xts128();
    let meta = read_metadata(SparseDevice::image(&sector, &block)).unwrap();
    let json = serde_json::to_string(&meta.info).unwrap();
    assert!(json.contains(
        r#""protectors":[{"kind":"password","guid":"3e55195c-8811-4d9b-97b4-2b9e5f8f5384"},"#
    ));
    assert!(json.contains(r#""cipher":"aes_xts_128""#));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
    for k in &keys {
        assert!(!k.contains("key") && !k.contains("salt"), "{k}");
    }
    // No 8-byte run of the wrapped keys or salts shows up in the JSON as hex.
    for p in &meta.protectors {
        let salt: String = p.salt.unwrap()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!json.contains(&salt));
    }
    assert!(!format!("{meta:?}").contains("clear_key: Some([")); // Debug hides clear keys
}

#[test]
fn falls_back_to_the_next_copy() {
    let (sector, block) = xts128();
    let mut dev = SparseDevice::image(&sector, &block);
    dev.regions[1].1[200] ^= 0x55; // damage copy 1: its checksum fails
    let meta = read_metadata(&mut dev).unwrap();
    assert_eq!(meta.info.metadata_block, 2);
    dev.regions[2].1[200] ^= 0x55;
    dev.regions[3].1.truncate(4);
    let err = read_metadata(&mut dev).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, BitlockerError::NoValidMetadata(v) if v.len() == 3),
        "{msg}"
    );
    assert!(
        msg.contains("metadata block 1 at offset 0x2195000: checksum"),
        "{msg}"
    );
    assert!(
        msg.contains("metadata block 3 at offset 0x373a000: no -FVE-FS-"),
        "{msg}"
    );
}

#[test]
fn a_copy_in_the_wrong_place_is_refused() {
    let (sector, block) = xts128();
    let header = header::parse(&sector).unwrap();
    assert!(parse_block(&header, 2, 0x2c1d000, &block, true).is_ok());
    // Read as copy 1 from copy 2's place: the block says copy 1 belongs elsewhere.
    let msg = parse_block(&header, 1, 0x2c1d000, &block, true)
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "metadata block 1 at offset 0x2c1d000: the block says it belongs at 0x2195000"
    );
}

#[test]
fn malformed_entries_name_value_and_place() {
    let (_, block) = xts128();
    let first = ENTRIES_START; // offset of the first entry in the block
    let mut zero = block.clone();
    zero[first..first + 2].copy_from_slice(&[0, 0]);
    assert_eq!(
        block_error(&zero),
        "metadata block 1 at offset 0x0: entry size 0 at 0x70 is invalid"
    );
    let mut huge = block.clone();
    huge[first..first + 2].copy_from_slice(&[0xff, 0xff]);
    assert!(block_error(&huge).contains("entry size 65535 at 0x70 runs past the end"));
    let mut tiny = block.clone();
    tiny[first..first + 2].copy_from_slice(&[3, 0]);
    assert!(block_error(&tiny).contains("entry size 3 at 0x70 is invalid"));
    let mut meta_size = block.clone();
    meta_size[64..68].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(block_error(&meta_size).contains("metadata size 4294967295 does not fit"));
    let mut block_size = block.clone();
    block_size[8..10].copy_from_slice(&0u16.to_le_bytes());
    assert!(block_error(&block_size).contains("block size 0 is invalid"));
    let mut version = block.clone();
    version[10] = 1;
    assert!(block_error(&version).contains("version 1 is not supported"));
}

#[test]
fn every_truncation_is_an_error_or_a_parse() {
    let (sector, block) = xts128();
    // The block is 880 bytes, then comes the 8-byte head of the validation record.
    let needed = 880 + 8;
    for len in 0..block.len() {
        let _ = parse_metadata_block(&block[..len]);
        let dev = SparseDevice::image(&sector, &block[..len]);
        assert_eq!(read_metadata(dev).is_ok(), len >= needed, "len {len}");
    }
    for len in 0..sector.len() {
        let _ = read_metadata(SparseDevice::new(len as u64, vec![(0, sector.clone())]));
    }
}

#[test]
fn bogus_offsets_in_the_volume_header() {
    let (mut sector, block) = xts128();
    for (i, off) in [u64::MAX, u64::MAX - 10, 1 << 62].into_iter().enumerate() {
        sector[176 + 8 * i..184 + 8 * i].copy_from_slice(&off.to_le_bytes());
    }
    let dev = SparseDevice::new(u64::MAX, vec![(0, sector), (0x2195000, block)]);
    assert!(matches!(
        read_metadata(dev),
        Err(BitlockerError::NoValidMetadata(_))
    ));
}

/// Thousands of deterministic random mutations: each must end in `Ok` or `Err`, never a panic.
#[test]
fn random_mutations_never_panic() {
    let (sector, block) = xts128();
    let startup = bytes(testdata::WIN11_SK_BLOCK);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut err) = (0, 0);
    for case in 0..4000 {
        let mut buf = if case % 2 == 0 {
            block.clone()
        } else {
            startup.clone()
        };
        for _ in 0..1 + rng.below(6) {
            let at = rng.below(buf.len());
            match rng.below(5) {
                // A size, type or value field of some entry-aligned place.
                0 => {
                    let at = at & !1;
                    let v: u16 = [0, 1, 7, 8, 9, 0x7fff, 0xffff][rng.below(7)];
                    if at + 2 <= buf.len() {
                        buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
                    }
                }
                1 => buf[at] ^= 1 << rng.below(8),
                2 => buf[at] = rng.next() as u8,
                3 => buf.truncate(at),
                _ => {
                    let n = rng.below(64).min(buf.len() - at);
                    buf[at..at + n].fill(0);
                }
            }
            if buf.is_empty() {
                break;
            }
        }
        match parse_metadata_block(&buf) {
            Ok(m) => {
                ok += 1;
                // Whatever parsed must serialise and list as many protectors as it holds.
                assert_eq!(m.info.protectors.len(), m.protectors.len());
                serde_json::to_string(&m.info).unwrap();
            }
            Err(e) => {
                err += 1;
                assert!(!e.to_string().is_empty());
            }
        }
        let _ = read_metadata(SparseDevice::image(&sector, &buf));
    }
    assert!(ok > 100 && err > 100, "ok {ok}, err {err}");
}
