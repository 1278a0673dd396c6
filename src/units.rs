//! Sizes as people read them, shared by the CLI and the dialog.

/// Decimal units, as GNOME's file manager shows them: "15.5 GB".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    // 999.95 kB would print as "1000.0 kB": move up a unit first.
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_gnome() {
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(104_857_600), "104.9 MB");
        assert_eq!(human_size(15_500_000_000), "15.5 GB");
        assert_eq!(human_size(15_518_924_800), "15.5 GB");
        assert_eq!(human_size(1_000_000), "1.0 MB");
        assert_eq!(human_size(999_999), "1.0 MB");
        assert_eq!(human_size(2_000_000_000_000), "2.0 TB");
    }
}
