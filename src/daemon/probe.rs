//! Probing a new block device: read its first sector (never run a program) and sysfs facts.

use crate::bitlocker::{BitlockerError, Metadata};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("{device}: device node is not there yet")]
    NoNode { device: PathBuf },
    #[error("{device}: cannot read the first sector: {source}")]
    Read {
        device: PathBuf,
        source: std::io::Error,
    },
}

/// What the first sector says; for BitLocker, also what its metadata says (or why it could
/// not be read).
#[derive(Debug)]
pub enum Probe {
    BitLocker(Box<Result<Metadata, BitlockerError>>),
    Other,
}

/// Reads the first 512 bytes of `device` and checks for a BitLocker signature; for a
/// BitLocker volume, reads its metadata too (bounded reads, done once per appearance).
pub fn probe(device: &Path) -> Result<Probe, ProbeError> {
    let mut file = File::options()
        .read(true)
        // O_NONBLOCK: an empty card reader must not hang us.
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(device)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ProbeError::NoNode {
                device: device.into(),
            },
            _ => ProbeError::Read {
                device: device.into(),
                source,
            },
        })?;
    let mut sector = [0u8; 512];
    file.read_exact(&mut sector)
        .map_err(|source| ProbeError::Read {
            device: device.into(),
            source,
        })?;
    if !crate::bitlocker::is_bitlocker(&sector) {
        return Ok(Probe::Other);
    }
    Ok(Probe::BitLocker(Box::new(crate::bitlocker::read_metadata(
        &file,
    ))))
}

/// Vendor and model from sysfs, when the device (or its disk) has them.
pub fn vendor_model(sys_block: &Path, name: &str) -> (Option<String>, Option<String>) {
    let dir = sys_block.join(name);
    let device_dir = if dir.join("partition").exists() {
        std::fs::canonicalize(&dir)
            .ok()
            .and_then(|p| p.parent().map(|p| p.join("device")))
    } else {
        Some(dir.join("device"))
    };
    let read = |file: &str| {
        let text = std::fs::read_to_string(device_dir.as_ref()?.join(file)).ok()?;
        let text: String = text
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        (!text.is_empty()).then_some(text)
    };
    (read("vendor"), read("model"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn probes_files() {
        let dir = std::env::temp_dir().join(format!("guilocker-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bl = dir.join("bl");
        let mut sector = vec![0u8; 512];
        sector[3..11].copy_from_slice(b"-FVE-FS-");
        File::create(&bl).unwrap().write_all(&sector).unwrap();
        match probe(&bl).unwrap() {
            Probe::BitLocker(meta) => assert!(meta.is_err(), "no metadata in a bare signature"),
            Probe::Other => panic!("signature not seen"),
        }
        let other = dir.join("other");
        File::create(&other)
            .unwrap()
            .write_all(&[0u8; 512])
            .unwrap();
        assert!(matches!(probe(&other).unwrap(), Probe::Other));
        let short = dir.join("short");
        File::create(&short).unwrap().write_all(b"abc").unwrap();
        let err = probe(&short).unwrap_err().to_string();
        assert!(err.starts_with(&short.display().to_string()), "{err}");
        assert!(matches!(
            probe(&dir.join("nope")),
            Err(ProbeError::NoNode { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
