//! `guilocker status`: the daemon's devices, as a table or JSON.

use super::Failure;
use crate::client::Client;
use crate::protocol::DeviceInfo;
use std::io::Write;
use std::path::Path;

pub fn run(socket: &Path, json: bool) -> Result<(), Failure> {
    let devices = Client::connect(socket)?.status()?;
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

/// Human size with one decimal, decimal units as file managers show them.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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
    fn sizes() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(104_857_600), "104.9 MB");
        assert_eq!(human_size(15_500_000_000), "15.5 GB");
    }
}
