//! `guilocker status`: the daemon's devices, as a table or JSON.

use super::Failure;
use crate::client::Client;
use crate::protocol::DeviceInfo;
use crate::units::human_size;
use std::io::Write;
use std::path::Path;

pub fn run(socket: &Path, json: bool) -> Result<(), Failure> {
    let (devices, omitted) = Client::connect(socket)?.status_counted()?;
    if omitted > 0 {
        eprintln!("guilocker: {omitted} more device(s) not listed: too many for one reply");
    }
    let mut out = std::io::stdout().lock();
    if json {
        let text =
            serde_json::to_string_pretty(&devices).map_err(|e| Failure::new(1, e.to_string()))?;
        writeln!(out, "{text}")?;
    } else {
        write!(out, "{}", table(&devices))?;
    }
    Ok(())
}

fn table(devices: &[DeviceInfo]) -> String {
    let header = ["DEVICE", "STATE", "SIZE", "LABEL", "OWNER", "MOUNTPOINT"];
    let rows: Vec<[String; 6]> = devices
        .iter()
        .map(|d| {
            let state = if d.bitlocker || d.state.as_str() == "failed" {
                d.state.as_str().to_owned()
            } else {
                "-".to_owned()
            };
            // Whatever a daemon sends, nothing reaches the terminal as a control sequence.
            [
                d.device.clone(),
                state,
                human_size(d.size_bytes),
                d.label.clone().unwrap_or_else(|| "-".into()),
                d.owner.clone().unwrap_or_else(|| "-".into()),
                d.mountpoint
                    .clone()
                    .or_else(|| d.decrypted.clone())
                    .or_else(|| d.error.clone())
                    .unwrap_or_else(|| "-".into()),
            ]
            .map(|cell| crate::text::escaped(&cell))
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in &rows {
        line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_cannot_drive_the_terminal() {
        // As a daemon that did not clean it would send it (an older or a hostile one).
        let device: DeviceInfo = serde_json::from_value(serde_json::json!({
            "device": "/dev/sdb1", "bitlocker": true, "state": "mounted",
            "mountpoint": "/media/alice/x", "decrypted": null,
            "label": "\u{1b}]0;pwned\u{7}\u{1b}[2J", "size_bytes": 1024, "owner": "alice",
        }))
        .unwrap();
        let out = table(&[device]);
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
        assert!(out.contains("\\u{1b}]0;pwned\\u{7}\\u{1b}[2J"), "{out}");
    }
}
