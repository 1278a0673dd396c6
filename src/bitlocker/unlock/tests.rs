//! Unlock paths on real metadata: password, recovery key, .BEK (Windows 10 and 11), clear key.

use super::*;
use crate::bitlocker::guid::Guid;
use crate::bitlocker::metadata::read_metadata;
use crate::bitlocker::testdata::{self, bytes, SparseDevice};
use crate::bitlocker::Cipher;

fn load(sector: &str, block: &str) -> Metadata {
    read_metadata(SparseDevice::image(&bytes(sector), &bytes(block))).unwrap()
}

fn xts128() -> Metadata {
    load(testdata::XTS128_SECTOR0, testdata::XTS128_BLOCK)
}

fn win11() -> Metadata {
    load(testdata::WIN11_SK_SECTOR0, testdata::WIN11_SK_BLOCK)
}

fn clearkey() -> Metadata {
    load(testdata::CLEARKEY_SECTOR0, testdata::CLEARKEY_BLOCK)
}

/// The stretch vector from the fixture: "anaconda" must unwrap the VMK (CCM tag verifies),
/// and the recovery key must reach the very same FVEK.
#[test]
fn password_and_recovery_key_reach_the_same_fvek() {
    let meta = xts128();
    let pw = SecretString::from("anaconda");
    let a = unlock(&meta, Key::Password(&pw)).unwrap();
    assert_eq!(a.method, 0x8004);
    assert_eq!(a.key.expose().len(), 32);
    let rp = SecretString::from(testdata::RP_XTS128);
    let b = unlock(&meta, Key::RecoveryPassword(&rp)).unwrap();
    assert_eq!(a.key, b.key);
    assert_eq!(key_file_sha256(&a), PIN_XTS128);
}

#[test]
fn wrong_secrets() {
    let meta = xts128();
    // One stretch each (the UTF-16 of such passwords is checked in kdf.rs).
    for pw in ["비밀번호", "Grüße"] {
        let e = unlock(&meta, Key::Password(&SecretString::from(pw))).unwrap_err();
        assert!(matches!(e, BitlockerError::WrongPassword), "{e}");
        assert!(e.is_wrong_secret());
    }
    // A typo is caught by the digit checks, before any stretching.
    let typo = testdata::RP_XTS128.replacen("253979", "253978", 1);
    let e = unlock(
        &meta,
        Key::RecoveryPassword(&SecretString::from(typo.as_str())),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("recovery key: group 3"), "{e}");
    assert!(!e.to_string().contains("253978"));
    let valid_but_wrong = "000000-000000-000000-000000-000000-000000-000000-000000";
    let e = unlock(
        &meta,
        Key::RecoveryPassword(&SecretString::from(valid_but_wrong)),
    )
    .unwrap_err();
    assert!(matches!(e, BitlockerError::WrongRecoveryKey));
}

#[test]
fn startup_keys_of_both_windows_versions() {
    let meta = win11();
    let fvek = unlock(&meta, Key::StartupKey(&bytes(testdata::WIN11_BEK))).unwrap();
    assert_eq!(fvek.key.expose().len(), 32);
    // The Windows 10 key belongs to another volume's protector: named in the message.
    let e = unlock(&meta, Key::StartupKey(&bytes(testdata::WIN10_BEK))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "this startup key belongs to key protector 4381f759-c4f8-4de0-bb61-fc33a831bda5, \
         which volume e8ea9756-9cc1-4ca2-b99d-fae884f56150 does not have"
    );
    // The Windows 11 key names its volume.
    let e = unlock(&xts128(), Key::StartupKey(&bytes(testdata::WIN11_BEK))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "this startup key belongs to volume e8ea9756-9cc1-4ca2-b99d-fae884f56150, \
         not to 8f595209-f5b9-49a0-85d4-cb8f80258c27"
    );
    assert!(e.is_wrong_secret());
    // Right protector id, wrong key bytes.
    let mut forged = bytes(testdata::WIN11_BEK);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let e = unlock(&meta, Key::StartupKey(&forged)).unwrap_err();
    assert!(
        matches!(e, BitlockerError::StartupKeyRejected { .. }),
        "{e}"
    );
    let e = unlock(&meta, Key::StartupKey(b"not a key")).unwrap_err();
    assert!(e
        .to_string()
        .starts_with("not a BitLocker startup key (.BEK) file"));
}

#[test]
fn clear_key_and_missing_protectors() {
    let meta = clearkey();
    assert_eq!(unlock(&meta, Key::ClearKey).unwrap().key.expose().len(), 32);
    let e = unlock(&meta, Key::Password(&SecretString::from("x"))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "this drive has no password protector; it opens without a secret (its protection is suspended)"
    );
    let e = unlock(&xts128(), Key::ClearKey).unwrap_err();
    assert_eq!(
        e.to_string(),
        "this drive has no clear key protector; use the password or the recovery key"
    );
    assert!(e.is_wrong_secret() && !e.cannot_open_here());
    let e = unlock(&win11(), Key::ClearKey).unwrap_err();
    assert!(e
        .to_string()
        .ends_with("use the password or the recovery key or the startup key (.BEK file)"));
}

fn synthetic(kinds: &[ProtectorKind], state: EncryptionState, method: u16) -> Metadata {
    let protectors: Vec<ProtectorKeys> = kinds
        .iter()
        .map(|&kind| ProtectorKeys {
            kind,
            guid: Guid([kind_byte(kind); 16]),
            salt: None,
            vmk: None,
            clear_key: None,
        })
        .collect();
    let mut meta = crate::bitlocker::metadata::tests_support::empty();
    meta.info.cipher = Cipher::from_method(method);
    meta.info.encryption_method = method;
    meta.info.state = state;
    meta.protectors = protectors;
    meta
}

fn kind_byte(kind: ProtectorKind) -> u8 {
    match kind {
        ProtectorKind::Tpm => 1,
        ProtectorKind::SmartCard => 2,
        _ => 3,
    }
}

#[test]
fn cannot_open_here() {
    let only_hw = synthetic(
        &[ProtectorKind::Tpm, ProtectorKind::SmartCard],
        EncryptionState::Complete,
        0x8004,
    );
    let e = unlock(&only_hw, Key::Password(&SecretString::from("x"))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no protector of that kind can be used here (only TPM / smart card)"
    );
    assert!(e.cannot_open_here() && !e.is_wrong_secret());
    let e = derive_fvek(&only_hw, Key::ClearKey).unwrap_err();
    assert!(e.cannot_open_here());

    let busy = synthetic(
        &[ProtectorKind::Password],
        EncryptionState::InProgress,
        0x8002,
    );
    let e = unlock(&busy, Key::Password(&SecretString::from("x"))).unwrap_err();
    assert!(
        e.to_string().starts_with("encryption is still in progress"),
        "{e}"
    );
    assert!(e.cannot_open_here());

    let odd = synthetic(
        &[ProtectorKind::Password],
        EncryptionState::Complete,
        0x8010,
    );
    let e = unlock(&odd, Key::Password(&SecretString::from("x"))).unwrap_err();
    assert_eq!(e.to_string(), "unsupported encryption method 0x8010");

    // A protector without its stretch key is reported as damaged, not as a wrong password.
    let broken = synthetic(
        &[ProtectorKind::Password],
        EncryptionState::Complete,
        0x8004,
    );
    let e = unlock(&broken, Key::Password(&SecretString::from("x"))).unwrap_err();
    assert!(e.to_string().contains("lacks its stretch key"), "{e}");
}

#[test]
fn debug_output_hides_secrets() {
    let bek = bytes(testdata::WIN11_BEK);
    assert_eq!(format!("{:?}", Key::StartupKey(&bek)), "StartupKey(***)");
    let pw = SecretString::from("anaconda");
    assert!(!format!("{:?}", Key::Password(&pw)).contains("anaconda"));
    let fvek = unlock(&clearkey(), Key::ClearKey).unwrap();
    assert_eq!(format!("{fvek:?}"), "Fvek { method: 0x8004, key: *** }");
    assert!(format!("{:?}", clearkey()).contains("clear_key: Some(\"***\")"));
}

/// SHA-256 of the `dislocker -k` file of each excerpt's FVEK, as verified against the real
/// dislocker by tests/bitlocker_fixtures.rs: catches any change in derivation or layout.
const PIN_XTS128: &str = "073aff8773cc36374a2925f793d92b29e886ca05b1c00e3755e2073d8c88d4b0";
const PIN_WIN11: &str = "a98c40dcc0dcd3558626dca0b9e47f391214618e04b3676f22c0b155916321d2";
const PIN_CLEARKEY: &str = "29dda20f3f701c009174a693c2d5dceedf116ef770f1ef8b090dd8d8310be622";

fn key_file_sha256(f: &Fvek) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(&*f.key_file())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn pinned_key_files() {
    let bek = bytes(testdata::WIN11_BEK);
    let win11 = unlock(&win11(), Key::StartupKey(&bek)).unwrap();
    assert_eq!(key_file_sha256(&win11), PIN_WIN11);
    let clear = unlock(&clearkey(), Key::ClearKey).unwrap();
    assert_eq!(key_file_sha256(&clear), PIN_CLEARKEY);
}

/// Issue 12, item 9: crafted metadata with 500 password protectors costs at most
/// MAX_STRETCHES stretches per attempt, none started after STRETCH_BUDGET, and a salt shared
/// by many is stretched once.
#[test]
fn many_protectors_cost_a_bounded_number_of_stretches() {
    let meta = xts128();
    let real = meta
        .protectors
        .iter()
        .find(|p| p.kind == ProtectorKind::Password)
        .unwrap();
    let crafted = |salt: [u8; 16]| ProtectorKeys {
        kind: ProtectorKind::Password,
        guid: real.guid,
        salt: Some(salt),
        vmk: real.vmk.clone(),
        clear_key: None,
    };
    let initial = kdf::password_initial("wrong");
    // Stretches counted on a fake clock: each takes `each` of it. An attempt cut short says
    // so (the secret may be right), never "wrong password".
    let count_timed = |protectors: &[ProtectorKeys], each: Duration| {
        let refs: Vec<&ProtectorKeys> = protectors.iter().collect();
        let calls = std::cell::Cell::new(0u32);
        let result = by_stretch_with(
            &refs,
            &initial,
            BitlockerError::WrongPassword,
            &mut |_, _| {
                calls.set(calls.get() + 1);
                Zeroizing::new([0u8; 32])
            },
            &mut || each * calls.get(),
        );
        let calls = calls.get() as usize;
        match result {
            Err(BitlockerError::TooManyProtectors { tried, total }) => {
                assert_eq!((tried, total), (calls, protectors.len()));
                assert!(calls < protectors.len());
            }
            Err(BitlockerError::WrongPassword) => {}
            other => panic!("{other:?}"),
        }
        calls
    };
    let count = |protectors: &[ProtectorKeys]| count_timed(protectors, Duration::ZERO);
    let distinct: Vec<_> = (0..500u16)
        .map(|i| {
            let mut salt = [0u8; 16];
            salt[..2].copy_from_slice(&i.to_le_bytes());
            crafted(salt)
        })
        .collect();
    assert_eq!(count(&distinct), MAX_STRETCHES);
    let shared: Vec<_> = (0..500u16).map(|i| crafted([(i % 3) as u8; 16])).collect();
    assert_eq!(count(&shared), 3);
    // On a machine where a stretch takes a second, the budget stops the attempt first; one
    // slower than the budget still tries the first salt.
    assert_eq!(
        count_timed(&distinct, Duration::from_secs(1)),
        STRETCH_BUDGET.as_secs() as usize
    );
    assert_eq!(count_timed(&distinct, Duration::from_secs(60)), 1);
}
