//! Reads `DialogInput` frames from stdin asynchronously, so the GTK main loop never blocks.

use crate::protocol::{read_frame, DialogInput, FrameError, MAX_FRAME};
use gtk::gio;
use gtk::glib;
use gtk::prelude::*;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use zeroize::Zeroizing;

const CHUNK: usize = 4096;

/// Splits the agent's byte stream into frames. Bytes may hold a secret-free `show` or a
/// `failed`, but are wiped anyway, as everywhere on this pipe.
pub struct InputReader {
    stream: gio::InputStream,
    /// Bytes read but not yet parsed. Allocated once at full size: a `Vec` that grew would
    /// free its old buffer without wiping it.
    pending: Zeroizing<Vec<u8>>,
    eof: bool,
}

impl InputReader {
    /// Reads from a duplicate of fd 0, polled by the main loop (pipes are pollable).
    pub fn stdin() -> io::Result<Self> {
        Ok(Self::new(io::stdin().as_fd().try_clone_to_owned()?))
    }

    fn new(fd: OwnedFd) -> Self {
        Self {
            stream: gio_unix::InputStream::take_fd(fd).upcast(),
            pending: Zeroizing::new(Vec::with_capacity(MAX_FRAME + CHUNK)),
            eof: false,
        }
    }

    /// The next frame; `Ok(None)` once the agent has closed the pipe cleanly.
    pub async fn next(&mut self) -> Result<Option<DialogInput>, FrameError> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line = Zeroizing::new(self.pending.drain(..=end).collect::<Vec<u8>>());
                return read_frame(&mut line.as_slice());
            }
            if self.pending.len() > MAX_FRAME {
                return Err(FrameError::TooLong);
            }
            if self.eof {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                // A last line without its newline: read_frame reports it as cut short.
                let rest = Zeroizing::new(std::mem::take(&mut *self.pending));
                return read_frame(&mut rest.as_slice());
            }
            let buffer = Zeroizing::new(vec![0u8; CHUNK]);
            let (buffer, n) = self
                .stream
                .read_future(buffer, glib::Priority::DEFAULT)
                .await
                .map_err(|(_, e)| io::Error::other(e.to_string()))?;
            if n == 0 {
                self.eof = true;
            } else {
                self.pending.extend_from_slice(&buffer[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    /// Feeds `bytes` through a socket pair and collects frames until the first non-frame.
    fn frames(bytes: Vec<u8>) -> (Vec<DialogInput>, Result<(), FrameError>) {
        let (mut tx, rx) = UnixStream::pair().unwrap();
        // A writer thread: the payload may be larger than the socket buffer.
        let writer = std::thread::spawn(move || {
            let _ = tx.write_all(&bytes);
        });
        let mut reader = InputReader::new(rx.into());
        let result = glib::MainContext::new().block_on(async {
            let mut got = Vec::new();
            loop {
                match reader.next().await {
                    Ok(Some(frame)) => got.push(frame),
                    Ok(None) => return (got, Ok(())),
                    Err(e) => return (got, Err(e)),
                }
            }
        });
        drop(reader);
        writer.join().unwrap();
        result
    }

    #[test]
    fn frames_split_across_reads_and_eof() {
        let show = r#"{"type":"show","device":{"device":"/dev/sdb1","bitlocker":true,"state":"locked","mountpoint":null,"decrypted":null,"label":null,"size_bytes":1,"owner":null}}"#;
        let mut bytes = format!("{show}\n").repeat(3).into_bytes();
        bytes.extend_from_slice(b"{\"type\":\"close\"}\n");
        let (got, end) = frames(bytes);
        assert_eq!(got.len(), 4);
        assert!(matches!(got[3], DialogInput::Close { reason: None }));
        assert!(end.is_ok());
    }

    #[test]
    fn a_cut_frame_or_junk_is_an_error_not_a_panic() {
        let (got, end) = frames(b"{\"type\":\"close\"}\n{\"type\":".to_vec());
        assert_eq!(got.len(), 1);
        assert!(matches!(end, Err(FrameError::Io(_))));
        let (_, end) = frames(b"not json\n".to_vec());
        assert!(matches!(end, Err(FrameError::Json(_))));
    }

    #[test]
    fn an_endless_line_is_refused() {
        let (got, end) = frames(vec![b'x'; MAX_FRAME + 2 * CHUNK]);
        assert!(got.is_empty());
        assert!(matches!(end, Err(FrameError::TooLong)));
    }
}
