//! Fuzzes the filesystem reader the daemon runs on a freshly decrypted volume (its boot
//! sector, NTFS's MFT record of $Volume, exFAT's root directory): a crafted stick must give a
//! label or none, never a panic; the label holds no control or format character and at most
//! 128 UTF-16 units (NTFS's limit, the largest), and makes a mountpoint inside its parent.
#![no_main]

use guilocker::daemon::filesystem::identify_in;
use guilocker::daemon::mountpoint::choose;
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(info)) = identify_in(&mut Cursor::new(data)) {
        if let Some(label) = &info.label {
            assert!(!label.chars().any(guilocker::text::is_unsafe), "{label:?}");
            assert!(label.encode_utf16().count() <= 128, "{label:?}");
        }
        let parent = Path::new("/media/alice");
        let at = choose(parent, info.label.as_deref(), info.uuid.as_deref(), |_| false);
        assert_eq!(at.parent(), Some(parent), "{info:?}");
    }
});
