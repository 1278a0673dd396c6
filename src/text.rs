//! Text from a stranger's disk (volume labels, BitLocker descriptions) made safe to show, in
//! one place: no control or format characters (no terminal escapes, no bidirectional
//! overrides, no zero-width tricks), and bounded.

/// Unicode's format characters (category Cf): invisible, but they reorder or hide text.
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{AD}'
            | '\u{600}'..='\u{605}'
            | '\u{61C}'
            | '\u{6DD}'
            | '\u{70F}'
            | '\u{890}'..='\u{891}'
            | '\u{8E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// Is `c` one that must not reach a terminal or a window as is?
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || is_format(c)
}

/// `text` without control or format characters, trimmed, at most `max_units` UTF-16 code
/// units long (the unit on-disk labels are counted in: NTFS allows 128, exFAT and FAT 11).
/// `None` when nothing is left.
pub fn from_disk(text: &str, max_units: usize) -> Option<String> {
    let mut out = String::new();
    let mut units = 0;
    for c in text.chars().filter(|c| !is_unsafe(*c)) {
        units += c.len_utf16();
        if units > max_units {
            break;
        }
        out.push(c);
    }
    let out = out.trim();
    (!out.is_empty()).then(|| out.to_owned())
}

/// For a terminal: every control or format character written as `\u{…}`, so text that
/// passed through no [`from_disk`] still cannot move the cursor or retitle the window.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_unsafe(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// Columns `text` takes in a terminal: Hangul and other wide characters take two.
pub fn width(text: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(text)
}

/// `text` followed by spaces up to `columns` terminal columns (`{:<n}` counts characters,
/// which misaligns a Korean table).
pub fn pad(text: &str, columns: usize) -> String {
    let fill = columns.saturating_sub(width(text));
    format!("{text}{:fill$}", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn korean_pads_by_columns() {
        assert_eq!(width("장치"), 4);
        assert_eq!(pad("장치", 6), "장치  ");
        assert_eq!(pad("DEVICE", 8), "DEVICE  ");
        assert_eq!(pad("too long", 3), "too long");
    }

    #[test]
    fn escapes_and_overrides_are_dropped() {
        assert_eq!(
            from_disk("\u{1b}]0;pwned\u{7}\u{1b}[2JSTICK", 128).as_deref(),
            Some("]0;pwned[2JSTICK")
        );
        assert_eq!(
            from_disk("evil\u{202E}gpj.exe", 128).as_deref(),
            Some("evilgpj.exe")
        );
        assert_eq!(from_disk("two\nlines", 128).as_deref(), Some("twolines"));
        assert_eq!(
            from_disk("zero\u{200B}width", 128).as_deref(),
            Some("zerowidth")
        );
        assert_eq!(from_disk("  \0\0 ", 128), None);
        assert_eq!(from_disk("Ünïcödé 🔑", 128).as_deref(), Some("Ünïcödé 🔑"));
    }

    #[test]
    fn bounded_in_utf16_units() {
        let long = "é".repeat(32_000);
        assert_eq!(from_disk(&long, 128).unwrap().chars().count(), 128);
        assert_eq!(
            from_disk("ABCDEFGHIJKLMNOP", 11).as_deref(),
            Some("ABCDEFGHIJK")
        );
        // A key outside the BMP is two units: 5 of them fill 10, the 6th would pass 11.
        assert_eq!(from_disk(&"🔑".repeat(6), 11).unwrap().chars().count(), 5);
    }

    #[test]
    fn escaped_for_a_terminal() {
        assert_eq!(escaped("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escaped("x\u{202E}y"), "x\\u{202e}y");
        assert_eq!(escaped("/dev/sdb1 ü"), "/dev/sdb1 ü");
    }
}
