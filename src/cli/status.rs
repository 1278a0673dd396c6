//! `guilocker status`: the daemon's devices, as a table or JSON.

use super::Failure;
use crate::client::Client;
use crate::protocol::{Connection, DeviceInfo, DeviceState};
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

/// One row per device with its state, how it is attached, and where it is mounted; what went
/// wrong with a device (or why it cannot be opened here, or why it was opened otherwise than
/// asked) follows the table, one line each, so a long cause neither hides the state nor
/// breaks the columns.
fn table(devices: &[DeviceInfo]) -> String {
    let header = [
        tr!("DEVICE"),
        tr!("STATE"),
        tr!("CONNECTION"),
        tr!("SIZE"),
        tr!("LABEL"),
        tr!("OWNER"),
        tr!("MOUNTPOINT"),
    ];
    let rows: Vec<[String; 7]> = devices
        .iter()
        .map(|d| {
            // Whatever a daemon sends, nothing reaches the terminal as a control sequence.
            [
                d.device.clone(),
                state_word(d.state),
                d.connection.map_or_else(|| "-".into(), connection_word),
                human_size(d.size_bytes),
                d.label.clone().unwrap_or_else(|| "-".into()),
                d.owner.clone().unwrap_or_else(|| "-".into()),
                d.mountpoint
                    .clone()
                    .or_else(|| d.decrypted.clone())
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
    for d in devices {
        for why in [&d.error, &d.cannot_open, &d.notice].into_iter().flatten() {
            let why = crate::i18n::localize(why);
            // The daemon's causes name the device already; one that does not gets it.
            let line = if why.starts_with(&format!("{}:", d.device)) {
                why
            } else {
                format!("{}: {why}", d.device)
            };
            out.push_str(&crate::text::escaped(&line));
            out.push('\n');
        }
    }
    out
}

/// How a drive is attached, in the reader's words.
fn connection_word(connection: Connection) -> String {
    match connection {
        Connection::Usb => tr!("Drive connection" => "USB"),
        Connection::Mmc => tr!("Drive connection" => "memory card"),
        Connection::Ieee1394 => tr!("Drive connection" => "FireWire"),
        Connection::Loop => tr!("Drive connection" => "image"),
        Connection::Internal => tr!("Drive connection" => "internal"),
        Connection::Unknown => tr!("Drive connection" => "unknown"),
    }
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

    #[test]
    fn every_device_shows_its_state_and_causes_follow_the_table() {
        let devices: Vec<DeviceInfo> = serde_json::from_value(serde_json::json!([
            {"device": "/dev/vda1", "bitlocker": true, "state": "locked", "mountpoint": null,
             "decrypted": null, "label": null, "size_bytes": 104857600, "owner": null,
             "removable": false, "connection": "internal",
             "cannot_open": "/dev/vda1: cannot be opened here: only TPM protects it"},
            {"device": "/dev/sdc", "bitlocker": false, "state": "unreadable", "mountpoint": null,
             "decrypted": null, "label": null, "size_bytes": 0, "owner": null,
             "removable": true, "connection": "usb",
             "error": "/dev/sdc: cannot read the first sector: Input/output error"},
            {"device": "/dev/sdb2", "bitlocker": false, "state": "plain", "mountpoint": null,
             "decrypted": null, "label": null, "size_bytes": 1024, "owner": null,
             "error": "a cause without its device"},
        ]))
        .unwrap();
        let out = table(&devices);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 7, "{out}");
        let cells = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(cells(1)[..3], ["/dev/vda1", "locked", "internal"], "{out}");
        assert_eq!(cells(2)[..3], ["/dev/sdc", "unreadable", "USB"], "{out}");
        assert_eq!(cells(3)[..3], ["/dev/sdb2", "plain", "-"], "{out}");
        // The mountpoint column holds no cause.
        assert!(lines[1..4].iter().all(|l| !l.contains("cannot")), "{out}");
        assert_eq!(
            lines[4],
            "/dev/vda1: cannot be opened here: only TPM protects it"
        );
        assert_eq!(
            lines[5],
            "/dev/sdc: cannot read the first sector: Input/output error"
        );
        assert_eq!(lines[6], "/dev/sdb2: a cause without its device");
    }
}
