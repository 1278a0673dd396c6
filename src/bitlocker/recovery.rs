//! The 48-digit recovery password: shape and per-group checks, done before any crypto.
//!
//! Windows prints it as 8 groups of 6 digits. Each group is a 16-bit value times 11, so a
//! group must be divisible by 11 and below 65536 × 11 = 720896. That lets us name the group
//! a person mistyped, without revealing the digits in any message.

use thiserror::Error;
use zeroize::Zeroizing;

pub const GROUPS: usize = 8;
pub const GROUP_DIGITS: usize = 6;
const GROUP_LIMIT: u32 = 65536 * 11;

/// Why one 6-digit group is not valid. Messages never include the digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum GroupError {
    #[error("must be 6 digits")]
    NotSixDigits,
    #[error("is not divisible by 11 (a typo?)")]
    NotDivisibleBy11,
    #[error("is 720896 or more (a typo?)")]
    TooLarge,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecoveryKeyError {
    #[error("a recovery key has 8 groups of 6 digits; this has {digits} digits")]
    WrongLength { digits: usize },
    #[error("a recovery key has only digits and dashes")]
    BadCharacter,
    #[error("group {group} of the recovery key {cause}")]
    BadGroup { group: usize, cause: GroupError },
}

/// Checks one group as typed; returns its 16-bit value.
pub fn check_group(group: &str) -> Result<u16, GroupError> {
    if group.len() != GROUP_DIGITS || !group.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GroupError::NotSixDigits);
    }
    let value: u32 = group.parse().map_err(|_| GroupError::NotSixDigits)?;
    if !value.is_multiple_of(11) {
        return Err(GroupError::NotDivisibleBy11);
    }
    if value >= GROUP_LIMIT {
        return Err(GroupError::TooLarge);
    }
    u16::try_from(value / 11).map_err(|_| GroupError::TooLarge)
}

/// The digits of `input` with dashes and white space removed, if nothing else is there.
fn digits_only(input: &str) -> Result<Zeroizing<String>, RecoveryKeyError> {
    let mut digits = Zeroizing::new(String::with_capacity(GROUPS * GROUP_DIGITS));
    for c in input.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '-' | ' ' | '\t' | '\n' | '\r' => {}
            _ => return Err(RecoveryKeyError::BadCharacter),
        }
    }
    Ok(digits)
}

/// Parses a recovery key as pasted (with or without dashes) into the 16-byte key BitLocker
/// derives from it: each group's value, little-endian.
pub fn parse(input: &str) -> Result<Zeroizing<[u8; 16]>, RecoveryKeyError> {
    let digits = digits_only(input)?;
    if digits.len() != GROUPS * GROUP_DIGITS {
        return Err(RecoveryKeyError::WrongLength {
            digits: digits.len(),
        });
    }
    let mut key = Zeroizing::new([0u8; 16]);
    for group in 0..GROUPS {
        let text = &digits[group * GROUP_DIGITS..(group + 1) * GROUP_DIGITS];
        let value = check_group(text).map_err(|cause| RecoveryKeyError::BadGroup {
            group: group + 1,
            cause,
        })?;
        key[group * 2..group * 2 + 2].copy_from_slice(&value.to_le_bytes());
    }
    Ok(key)
}

/// Normalizes a pasted key to the canonical `111111-222222-...` form.
pub fn normalize(input: &str) -> Result<Zeroizing<String>, RecoveryKeyError> {
    parse(input)?;
    let digits = digits_only(input)?;
    let mut out = Zeroizing::new(String::with_capacity(GROUPS * (GROUP_DIGITS + 1)));
    for (i, chunk) in digits.as_bytes().chunks(GROUP_DIGITS).enumerate() {
        if i > 0 {
            out.push('-');
        }
        out.extend(chunk.iter().map(|&b| b as char));
    }
    Ok(out)
}

/// True when what a person typed has the 8×6-digit shape of a recovery key (valid or not),
/// so a single prompt can take either a password or a recovery key.
pub fn looks_like_recovery_key(input: &str) -> bool {
    let groups: Vec<&str> = input.trim().split('-').collect();
    let dashed = groups.len() == GROUPS
        && groups
            .iter()
            .all(|g| g.len() == GROUP_DIGITS && g.bytes().all(|b| b.is_ascii_digit()));
    let plain = input.trim().len() == GROUPS * GROUP_DIGITS
        && input.trim().bytes().all(|b| b.is_ascii_digit());
    dashed || plain
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "235818-357951-253979-013365-241120-245575-342914-591910";

    #[test]
    fn accepts_with_and_without_dashes() {
        let a = parse(GOOD).unwrap();
        let b = parse(&GOOD.replace('-', "")).unwrap();
        assert_eq!(*a, *b);
        assert_eq!(u16::from_le_bytes([a[0], a[1]]), (235818 / 11) as u16);
        assert_eq!(normalize(&GOOD.replace('-', " ")).unwrap().as_str(), GOOD);
    }

    #[test]
    fn names_the_wrong_group() {
        let typo = GOOD.replacen("253979", "253978", 1);
        assert_eq!(
            parse(&typo),
            Err(RecoveryKeyError::BadGroup {
                group: 3,
                cause: GroupError::NotDivisibleBy11
            })
        );
        let msg = parse(&typo).unwrap_err().to_string();
        assert!(!msg.contains("253978"), "message leaks digits: {msg}");
    }

    #[test]
    fn group_limits() {
        assert_eq!(check_group("720896"), Err(GroupError::TooLarge));
        assert_eq!(check_group("720885"), Ok(65535));
        assert_eq!(check_group("000000"), Ok(0));
        assert_eq!(check_group("12345"), Err(GroupError::NotSixDigits));
        assert_eq!(check_group("1234a6"), Err(GroupError::NotSixDigits));
    }

    #[test]
    fn shape_detection() {
        assert!(looks_like_recovery_key(GOOD));
        assert!(looks_like_recovery_key(&GOOD.replace('-', "")));
        assert!(looks_like_recovery_key(
            "111111-111111-111111-111111-111111-111111-111111-111112"
        ));
        assert!(!looks_like_recovery_key("anaconda"));
        assert!(!looks_like_recovery_key("123456"));
        assert_eq!(parse("12-x"), Err(RecoveryKeyError::BadCharacter));
        assert_eq!(
            parse("123456"),
            Err(RecoveryKeyError::WrongLength { digits: 6 })
        );
    }
}
