//! Fuzzes the control socket's decoder as the daemon runs it on a stranger's bytes: frames
//! split at newlines, bounded at MAX_FRAME, each parsed as a request; and the agent's side,
//! responses and dialog frames.
#![no_main]

use guilocker::protocol::{read_frame, DialogInput, DialogOutput, Request, Response};
use libfuzzer_sys::fuzz_target;
use std::io::BufReader;

fuzz_target!(|data: &[u8]| {
    // The daemon's loop: frame after frame until the stream ends or cannot be trusted.
    let mut reader = BufReader::new(data);
    for _ in 0..64 {
        match read_frame::<Request, _>(&mut reader) {
            Ok(Some(request)) => {
                // What was decoded encodes again.
                let _ = serde_json::to_string(&request).expect("a request re-encodes");
            }
            Ok(None) => break,
            Err(_) => break,
        }
    }
    let _ = read_frame::<Response, _>(&mut BufReader::new(data));
    let _ = read_frame::<DialogInput, _>(&mut BufReader::new(data));
    let _ = read_frame::<DialogOutput, _>(&mut BufReader::new(data));
});
