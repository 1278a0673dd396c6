//! `guilocker inspect`: what a volume's BitLocker metadata says. No secret is needed or shown.

use super::{exit, Failure, SocketArg};
use crate::bitlocker::{Cipher, EncryptionState, VolumeInfo};
use crate::client::Client;
use crate::protocol::{Request, Response};
use crate::units::human_size;
use clap::Args;
use std::io::Write;
use tr::tr;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A BitLocker device (/dev/sdb1, through the daemon) or an image file (read directly)
    pub device: String,
    /// JSON, for programs
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn run(args: InspectArgs) -> Result<(), Failure> {
    let path = std::path::Path::new(&args.device);
    let (device, volume) = if path.is_file() {
        let file = std::fs::File::open(path)
            .map_err(|e| Failure::new(exit::FAILED, format!("{}: {e}", args.device)))?;
        let meta = crate::bitlocker::read_metadata(&file).map_err(|e| {
            let message = format!("{}: {e}", args.device);
            Failure::new(exit::FAILED, crate::i18n::localize(&message))
        })?;
        (args.device.clone(), meta.info)
    } else {
        match Client::connect(&args.socket.socket)?.request(&Request::Inspect {
            device: args.device.clone(),
        })? {
            Response::Inspected { device, volume } => (device, volume),
            other => return Err(super::unexpected(&args.device, &other)),
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::to_string_pretty(&volume)
            .map_err(|e| Failure::new(exit::FAILED, format!("{device}: {e}")))?;
        writeln!(out, "{json}")?;
    } else {
        write!(out, "{}", describe(&device, &volume))?;
    }
    Ok(())
}

/// Days since 1970-01-01 to a civil date (proleptic Gregorian), for the creation time.
fn date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

fn state(state: EncryptionState) -> String {
    match state {
        EncryptionState::Complete => tr!("Encryption" => "complete"),
        EncryptionState::InProgress => tr!("Encryption" => "in progress"),
        EncryptionState::Decrypting => tr!("Encryption" => "decrypting"),
        EncryptionState::Paused => tr!("Encryption" => "paused"),
        EncryptionState::Decrypted => tr!("Encryption" => "decrypted"),
        EncryptionState::Unknown => tr!("Encryption" => "unknown"),
    }
}

fn describe(device: &str, v: &VolumeInfo) -> String {
    let kind = if v.to_go {
        tr!("BitLocker To Go volume")
    } else {
        tr!("BitLocker volume")
    };
    let mut rows: Vec<(String, String)> = vec![(tr!("GUID"), v.guid.to_string())];
    if !v.description.is_empty() {
        rows.push((tr!("Description"), crate::text::escaped(&v.description)));
    }
    if let Some(t) = v.creation_time {
        rows.push((tr!("Created"), date(t)));
    }
    // From the raw method: it names even a cipher this build does not know.
    let cipher = Cipher::from_method(v.encryption_method);
    rows.push((tr!("Cipher"), cipher.id().replace('_', "-")));
    rows.push((tr!("Encryption"), state(v.state)));
    rows.push((tr!("Size"), human_size(v.volume_size)));
    for (i, p) in v.protectors.iter().enumerate() {
        let label = if i == 0 {
            tr!("Protectors")
        } else {
            String::new()
        };
        let key_id = p
            .key_id
            .map(|id| format!("  {}", tr!("Key ID {id}", id)))
            .unwrap_or_default();
        rows.push((label, format!("{:<18} {}{key_id}", p.kind.id(), p.guid)));
    }
    let width = rows
        .iter()
        .map(|(k, _)| crate::text::width(k))
        .max()
        .unwrap_or(0)
        .max(12);
    let mut s = format!("{device}: {kind}\n");
    for (k, val) in rows {
        s.push_str(&format!("  {} {val}\n", crate::text::pad(&k, width)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00 UTC");
    }
}
