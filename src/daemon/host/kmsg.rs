//! The kernel log (`/dev/kmsg`) around one step: what a driver said about a device while
//! mount(8) tried it. mount(8) only says "status 32 … dmesg(1) may have more information";
//! the reason (`ntfs3(dm-0): volume is dirty and "force" flag is not set!`) is only here.
//!
//! A record as /dev/kmsg hands it out, one per read(2): `PRIO,SEQ,USEC,FLAGS;TEXT`, then
//! continuation lines that start with a space (`SUBSYSTEM=block`, `DEVICE=b7:0`).

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

pub const KMSG: &str = "/dev/kmsg";

/// What is kept of the log at most: a mount that fails says a line or three.
const MAX_RECORDS: usize = 256;
/// A record is at most this long (the kernel's own limit is lower: 1024 bytes of text).
const RECORD_BUF: usize = 8192;

/// One kernel log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Syslog level, 0 (emergency) to 7 (debug).
    pub level: u8,
    pub text: String,
}

/// Parses one record as read from /dev/kmsg; `None` for anything else.
pub fn parse_record(raw: &str) -> Option<Record> {
    let (head, rest) = raw.split_once(';')?;
    let prio: u32 = head.split(',').next()?.trim().parse().ok()?;
    let text = rest.lines().next().unwrap_or_default();
    Some(Record {
        level: (prio & 7) as u8,
        // Bytes the kernel escaped come back (a label's é), but nothing that could drive the
        // terminal or the window the reason is shown in: text from a stranger's disk.
        text: crate::text::escaped(&unescape(text)),
    })
}

/// /dev/kmsg escapes control characters and non-ASCII bytes as `\xNN`.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            if let Some(v) = text
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What `driver` said about `device` (its kernel name: `dm-0`, `loop5`, `sdb1`), with the
/// driver's prefix taken off: lines that name the device (`ntfs3(dm-0): …`, `exFAT-fs
/// (loop5): …`, `FAT-fs (sdb1): …`), and lines of the driver that name no device (`ntfs3:
/// Unknown parameter 'x'`), which, logged during our attempt, are about it.
pub fn about(records: &[Record], driver: &str, device: &str) -> Vec<String> {
    let named = format!("({device}):");
    let driver_line = format!("{driver}: ");
    records
        .iter()
        .filter_map(|r| {
            let text = r.text.trim();
            if let Some(at) = text.find(&named) {
                Some(text[at + named.len()..].trim().to_owned())
            } else {
                text.strip_prefix(&driver_line).map(|t| t.trim().to_owned())
            }
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// The kernel log from the moment it was opened on.
pub struct KernelLog(File);

impl KernelLog {
    /// Opens /dev/kmsg past its last record: only what is logged from now on is read.
    pub fn open_at_end() -> std::io::Result<Self> {
        let mut file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(KMSG)?;
        file.seek(SeekFrom::End(0))?;
        Ok(Self(file))
    }

    /// The last records logged since it was opened (or last read), without waiting: the
    /// driver's refusal comes last, whatever else a busy kernel logged meanwhile.
    pub fn read_new(&mut self) -> Vec<Record> {
        let mut records = std::collections::VecDeque::with_capacity(MAX_RECORDS);
        let mut buf = vec![0u8; RECORD_BUF];
        // Bounded, so a kernel that logs as fast as we read cannot keep us here.
        for _ in 0..MAX_RECORDS * 16 {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(record) = parse_record(&String::from_utf8_lossy(&buf[..n])) {
                        if records.len() == MAX_RECORDS {
                            records.pop_front();
                        }
                        records.push_back(record);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Records we had not read yet were overwritten: go on with the next one.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                // EAGAIN: nothing more for now.
                Err(_) => break,
            }
        }
        records.into()
    }
}

/// The kernel name of a block device path (`/dev/mapper/guilocker-x` → `dm-0`).
pub fn kernel_name(path: &std::path::Path) -> String {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    real.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(raw: &[&str]) -> Vec<Record> {
        raw.iter().filter_map(|r| parse_record(r)).collect()
    }

    #[test]
    fn parses_records() {
        let r = parse_record(
            "4,1234,31045161,-;ntfs3(dm-0): volume is dirty and \"force\" flag is not set!\n",
        )
        .unwrap();
        assert_eq!(r.level, 4);
        assert_eq!(
            r.text,
            "ntfs3(dm-0): volume is dirty and \"force\" flag is not set!"
        );
        // Facility bits above the level; continuation lines are not text.
        let r = parse_record(
            "30,7,1,c;loop0: detected capacity change\n SUBSYSTEM=block\n DEVICE=b7:0\n",
        )
        .unwrap();
        assert_eq!(
            (r.level, r.text.as_str()),
            (6, "loop0: detected capacity change")
        );
        assert_eq!(
            parse_record("6,8,1,-;label \\x1b[2J\\xc3\\xa9\n")
                .unwrap()
                .text,
            "label \\u{1b}[2J\u{e9}"
        );
        assert_eq!(parse_record("no header"), None);
        assert_eq!(parse_record("x,1,2,-;text"), None);
    }

    #[test]
    fn keeps_what_the_driver_said_about_the_device() {
        let log = records(&[
            "6,1,1,-;loop0: detected capacity change from 0 to 131072\n",
            "4,2,2,-;ntfs3(loop0): It is recommened to use chkdsk.\n",
            "3,3,3,-;ntfs3(loop1): volume is dirty and \"force\" flag is not set!\n",
            "3,4,4,-;ntfs3(dm-0): volume is dirty and \"force\" flag is not set!\n",
            "3,5,5,-;usb 2-1: new SuperSpeed USB device\n",
        ]);
        assert_eq!(
            about(&log, "ntfs3", "dm-0"),
            ["volume is dirty and \"force\" flag is not set!"]
        );
        assert_eq!(
            about(&log, "ntfs3", "loop0"),
            ["It is recommened to use chkdsk."]
        );
        assert!(about(&log, "ntfs3", "sdb1").is_empty());
    }

    #[test]
    fn a_driver_line_without_a_device_counts() {
        let log = records(&[
            "3,9,1,-;ntfs3: Unknown parameter 'bogus'\n",
            "3,10,1,-;exFAT-fs (loop5): invalid boot record signature\n",
            "3,11,1,-;FAT-fs (sdb1): bogus number of reserved sectors\n",
            "3,12,1,-;ntfs3_other: not ours\n",
        ]);
        assert_eq!(about(&log, "ntfs3", "dm-3"), ["Unknown parameter 'bogus'"]);
        assert_eq!(
            about(&log, "exfat", "loop5"),
            ["invalid boot record signature"]
        );
        assert_eq!(
            about(&log, "vfat", "sdb1"),
            ["bogus number of reserved sectors"]
        );
    }

    #[test]
    fn kernel_names() {
        assert_eq!(
            kernel_name(std::path::Path::new("/dev/nonexistent7")),
            "nonexistent7"
        );
    }
}
