//! `guilocker status`: the daemon's devices, as a table or JSON.

use super::Failure;
use crate::client::Client;
use crate::protocol::{DeviceInfo, DeviceState};
use crate::units::human_size;
use std::io::Write;
use std::path::Path;
use tr::tr;

pub fn run(socket: &Path, json: bool) -> Result<(), Failure> {
    let (devices, omitted) = Client::connect(socket)?.status_counted()?;
    if omitted > 0 {
        eprintln!(
            "guilocker: {}",
            tr!("{n} more device not listed: too many for one reply"
                | "{n} more devices not listed: too many for one reply" % omitted)
        );
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
    let header = [
        tr!("DEVICE"),
        tr!("STATE"),
        tr!("SIZE"),
        tr!("LABEL"),
        tr!("OWNER"),
        tr!("MOUNTPOINT"),
    ];
    let rows: Vec<[String; 6]> = devices
        .iter()
        .map(|d| {
            let state = if d.bitlocker || d.state == DeviceState::Failed {
                state_word(d.state)
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
                    .or_else(|| d.error.as_deref().map(crate::i18n::localize))
                    .unwrap_or_else(|| "-".into()),
            ]
            .map(|cell| crate::text::escaped(&cell))
        })
        .collect();
    let mut widths = header.each_ref().map(|h| crate::text::width(h));
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(crate::text::width(cell));
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&crate::text::pad(cell, widths[i]));
                out.push_str("  ");
            }
        }
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(row);
    }
    out
}

/// A state as the table shows it to people (`--json` keeps the wire names).
fn state_word(state: DeviceState) -> String {
    match state {
        DeviceState::Locked => tr!("Device state" => "locked"),
        DeviceState::Unlocking => tr!("Device state" => "unlocking"),
        DeviceState::Unlocked => tr!("Device state" => "unlocked"),
        DeviceState::Mounted => tr!("Device state" => "mounted"),
        DeviceState::Locking => tr!("Device state" => "locking"),
        DeviceState::Probing => tr!("Device state" => "probing"),
        DeviceState::Unreadable => tr!("Device state" => "unreadable"),
        DeviceState::Unknown => tr!("Device state" => "unknown"),
        DeviceState::Failed => tr!("Device state" => "failed"),
        DeviceState::Plain => tr!("Device state" => "plain"),
    }
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
