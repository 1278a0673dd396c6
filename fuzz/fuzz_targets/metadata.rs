//! Fuzzes everything that parses untrusted bytes: metadata blocks, whole devices, .BEK files.
#![no_main]

use guilocker::bitlocker::{
    derive_fvek, parse_metadata_block, parse_startup_key, read_metadata, Key,
};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    // A metadata block as read from a metadata area (checksum not required).
    if let Ok(meta) = parse_metadata_block(data) {
        let _ = serde_json::to_string(&meta.info);
        // Unwrap paths that need no stretching: clear key and a startup key.
        let _ = derive_fvek(&meta, Key::ClearKey);
        let _ = derive_fvek(&meta, Key::StartupKey(data));
    }
    // The input as a whole device: volume header, offsets, checksums, fallback.
    let _ = read_metadata(Cursor::new(data));
    let _ = parse_startup_key(data);
});
