//! What the dialog shows and allows, computed without GTK so it can be unit-tested.

use crate::bitlocker::recovery::{self, RecoveryKeyError, GROUPS, GROUP_DIGITS};
use crate::protocol::{DeviceInfo, Protector, UnlockSecret};
use crate::secret::SecretString;
use crate::units::human_size;
use tr::tr;
use zeroize::Zeroizing;

/// A way to unlock that the dialog can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Password,
    RecoveryKey,
    StartupKey,
    /// Protection is suspended: no secret is needed.
    ClearKey,
}

impl Method {
    /// The name of this method's page in the template's `GtkStack`.
    pub fn page(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::RecoveryKey => "recovery",
            Self::StartupKey => "key-file",
            Self::ClearKey => "clear-key",
        }
    }

    /// Why the usual ways are missing, when this is the only one offered. Whole sentences,
    /// so that translators can put the method where their grammar wants it.
    fn only_note(self) -> String {
        match self {
            Self::Password => tr!("This drive can only be opened here with its password."),
            Self::RecoveryKey => tr!("This drive can only be opened here with its recovery key."),
            Self::StartupKey => {
                tr!("This drive can only be opened here with its startup key file.")
            }
            Self::ClearKey => tr!("This drive opens here without a key."),
        }
    }
}

/// The methods to offer, first one selected, and a note when the choice is narrower than
/// people might expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub methods: Vec<Method>,
    pub note: Option<String>,
}

/// Decides what to offer from the drive's key protectors. Unknown protectors are listed
/// as empty, and then every method that might work is offered.
pub fn offer(protectors: &[Protector]) -> Offer {
    if protectors.is_empty() {
        return Offer {
            methods: vec![Method::Password, Method::RecoveryKey, Method::StartupKey],
            note: None,
        };
    }
    let has = |kind: Protector| protectors.contains(&kind);
    // Suspended protection opens with no secret at all: asking for one would only confuse.
    if has(Protector::ClearKey) {
        return Offer {
            methods: vec![Method::ClearKey],
            note: None,
        };
    }
    let methods: Vec<Method> = [
        (Protector::Password, Method::Password),
        (Protector::RecoveryPassword, Method::RecoveryKey),
        (Protector::StartupKey, Method::StartupKey),
    ]
    .into_iter()
    .filter(|(kind, _)| has(*kind))
    .map(|(_, method)| method)
    .collect();
    let unusable = protectors.iter().any(|p| !p.usable_here());
    let note = match methods.as_slice() {
        [] => Some(no_method_note(
            has(Protector::Tpm) || has(Protector::TpmAndPin),
            has(Protector::SmartCard),
        )),
        // A drive that also has a TPM or smart card protector: say why the usual way is missing.
        [only] if unusable => Some(only.only_note()),
        _ => None,
    };
    Offer { methods, note }
}

fn no_method_note(tpm: bool, smart_card: bool) -> String {
    match (tpm, smart_card) {
        (true, true) => tr!(
            "This drive can only be opened with the TPM chip of its Windows computer or a smart card, so it cannot be unlocked here."
        ),
        (true, false) => tr!(
            "This drive can only be opened with the TPM chip of its Windows computer, so it cannot be unlocked here."
        ),
        (false, true) => {
            tr!("This drive can only be opened with a smart card, so it cannot be unlocked here.")
        }
        (false, false) => tr!(
            "This drive can only be opened with a key protector that guilocker does not support, so it cannot be unlocked here."
        ),
    }
}

/// Whether the drive opens with something the keyring can hold: a password or a recovery
/// key (a startup key is a file, and a suspended drive needs nothing).
pub fn can_remember(protectors: &[Protector]) -> bool {
    offer(protectors)
        .methods
        .iter()
        .any(|m| matches!(m, Method::Password | Method::RecoveryKey))
}

/// What a remembered secret is. The keyring holds text alone (GNOME stores a recovery key
/// there as it stores a password), so one that reads as a whole recovery key is sent as
/// one, unless the drive has no recovery key.
pub fn remembered_secret(text: SecretString, protectors: &[Protector]) -> UnlockSecret {
    let has_recovery = protectors.is_empty() || protectors.contains(&Protector::RecoveryPassword);
    match check_recovery_key(text.expose()) {
        KeyCheck::Valid(value) if has_recovery => UnlockSecret::RecoveryPassword { value },
        _ => UnlockSecret::Password { value: text },
    }
}

/// The keyring item's label, which keyring managers (Seahorse) show.
pub fn keyring_label(device: &DeviceInfo, secret: &UnlockSecret) -> String {
    let drive = title(device);
    match secret {
        UnlockSecret::RecoveryPassword { .. } => tr!("BitLocker recovery key for ‘{drive}’", drive),
        _ => tr!("BitLocker password for ‘{drive}’", drive),
    }
}

/// The heading: the volume label, or a generic name.
pub fn title(device: &DeviceInfo) -> String {
    match device.label.as_deref().map(str::trim) {
        Some(label) if !label.is_empty() => label.to_owned(),
        _ => tr!("BitLocker drive"),
    }
}

/// "15.5 GB · SanDisk Cruzer Blade": size, then vendor and model when known.
pub fn details(device: &DeviceInfo) -> String {
    let mut parts = vec![human_size(device.size_bytes)];
    let maker: Vec<&str> = [device.vendor.as_deref(), device.model.as_deref()]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if !maker.is_empty() {
        parts.push(maker.join(" "));
    }
    parts.join(" · ")
}

/// The BitLocker description (Windows writes PC name, drive letter and date), if any.
pub fn description(device: &DeviceInfo) -> Option<String> {
    let text = device.description.as_deref()?.trim();
    (!text.is_empty()).then(|| tr!("Described as “{text}”", text))
}

/// "Key ID: F99F18E8" (or both IDs of a drive with two recovery keys), so people can find
/// the right key among those Windows or their Microsoft account lists.
pub fn key_ids(device: &DeviceInfo) -> Option<String> {
    match device.recovery_key_ids.as_slice() {
        [] => None,
        [one] => Some(tr!("Key ID: {id}", id = one)),
        many => Some(tr!("Key IDs: {ids}", ids = many.join(", "))),
    }
}

/// Where a recovery key being typed stands.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyCheck {
    Empty,
    /// So far so good; `digits` typed of 48.
    Incomplete {
        digits: usize,
    },
    /// Something is wrong; the message names the group but never shows digits.
    Invalid(String),
    /// All 48 digits check out: the canonical `111111-…` form (`Debug` prints `***`).
    Valid(SecretString),
}

impl KeyCheck {
    /// The line under the entry.
    pub fn message(&self) -> String {
        match self {
            Self::Empty => digits_typed(0),
            Self::Incomplete { digits } => digits_typed(*digits),
            Self::Invalid(message) => message.clone(),
            Self::Valid(_) => tr!("All 8 groups are valid."),
        }
    }
}

fn digits_typed(digits: usize) -> String {
    tr!(
        "{digits} of {total} digits",
        digits,
        total = GROUPS * GROUP_DIGITS
    )
}

fn is_separator(c: char) -> bool {
    matches!(c, '-' | ' ' | '\t' | '\n' | '\r')
}

/// The reader's sentence for a recovery key's fault, as the CLI says it, as a sentence.
fn invalid(e: &RecoveryKeyError) -> KeyCheck {
    let text = crate::i18n::localize(&e.to_string());
    let mut chars = text.chars();
    KeyCheck::Invalid(match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    })
}

fn bad_group(group: usize, cause: recovery::GroupError) -> KeyCheck {
    invalid(&RecoveryKeyError::BadGroup { group, cause })
}

fn bad_character() -> KeyCheck {
    invalid(&RecoveryKeyError::BadCharacter)
}

/// Checks a recovery key as it is typed or pasted: each finished 6-digit group is checked as
/// soon as it is complete, so the person learns which group has a typo.
pub fn check_recovery_key(text: &str) -> KeyCheck {
    if text.trim().is_empty() {
        return KeyCheck::Empty;
    }
    if text
        .chars()
        .any(|c| !c.is_ascii_digit() && !is_separator(c))
    {
        return bad_character();
    }
    let segments: Vec<&str> = text.split(is_separator).filter(|s| !s.is_empty()).collect();
    let digits: usize = segments.iter().map(|s| s.len()).sum();
    let total = GROUPS * GROUP_DIGITS;
    // Typed with dashes: each segment is one group, so a short group is named as such.
    let dashed = text.trim_start().contains(is_separator);
    if dashed && segments.iter().all(|s| s.len() <= GROUP_DIGITS) {
        let still_typing_last = !text.ends_with(is_separator);
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            if segment.len() == GROUP_DIGITS {
                if let Err(cause) = recovery::check_group(segment) {
                    return bad_group(i + 1, cause);
                }
            } else if !(last && still_typing_last) {
                return bad_group(i + 1, recovery::GroupError::NotSixDigits);
            }
        }
        if segments.len() > GROUPS {
            return KeyCheck::Invalid(too_many(digits));
        }
    } else {
        // Pasted or typed without dashes: cut the digits into groups of six.
        let joined: Zeroizing<String> = Zeroizing::new(segments.concat());
        for (i, group) in joined.as_bytes().chunks(GROUP_DIGITS).enumerate() {
            if group.len() == GROUP_DIGITS {
                let group = std::str::from_utf8(group).unwrap_or_default();
                if let Err(cause) = recovery::check_group(group) {
                    return bad_group(i + 1, cause);
                }
            }
        }
    }
    if digits > total {
        return KeyCheck::Invalid(too_many(digits));
    }
    if digits < total {
        return KeyCheck::Incomplete { digits };
    }
    match recovery::normalize(text) {
        Ok(key) => KeyCheck::Valid(SecretString::from(key.as_str())),
        Err(e) => invalid(&e),
    }
}

fn too_many(digits: usize) -> String {
    tr!("A recovery key has 48 digits; this has {digits}.", digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DeviceState;

    const GOOD: &str = "235818-357951-253979-013365-241120-245575-342914-591910";

    /// Protectors by their wire names, as the daemon sends them.
    fn kinds(list: &[&str]) -> Vec<Protector> {
        serde_json::from_value(serde_json::json!(list)).unwrap()
    }

    #[test]
    fn unknown_protectors_offer_everything() {
        let o = offer(&[]);
        assert_eq!(
            o.methods,
            [Method::Password, Method::RecoveryKey, Method::StartupKey]
        );
        assert_eq!(o.note, None);
    }

    #[test]
    fn offers_only_what_the_drive_has() {
        let o = offer(&kinds(&["recovery_password", "password"]));
        assert_eq!(o.methods, [Method::Password, Method::RecoveryKey]);
        assert_eq!(o.note, None);
        let o = offer(&kinds(&["tpm", "recovery_password"]));
        assert_eq!(o.methods, [Method::RecoveryKey]);
        assert_eq!(
            o.note.as_deref(),
            Some("This drive can only be opened here with its recovery key.")
        );
        let o = offer(&kinds(&["password", "clear_key", "tpm"]));
        assert_eq!(o.methods, [Method::ClearKey]);
        assert_eq!(o.note, None);
    }

    #[test]
    fn says_plainly_when_nothing_works_here() {
        let o = offer(&kinds(&["tpm", "smart_card"]));
        assert!(o.methods.is_empty());
        assert!(o.note.unwrap().contains("TPM chip"));
        let o = offer(&kinds(&["smart_card"]));
        assert!(o.note.unwrap().contains("smart card"));
    }

    #[test]
    fn key_ids_as_windows_shows_them() {
        let mut d: DeviceInfo = serde_json::from_value(serde_json::json!({
            "device": "/dev/sdb1", "bitlocker": true, "state": "locked", "mountpoint": null,
            "decrypted": null, "label": null, "size_bytes": 1, "owner": null,
        }))
        .unwrap();
        assert_eq!(key_ids(&d), None);
        d.recovery_key_ids = vec!["F99F18E8".into()];
        assert_eq!(key_ids(&d).unwrap(), "Key ID: F99F18E8");
        d.recovery_key_ids.push("0A1B2C3D".into());
        assert_eq!(key_ids(&d).unwrap(), "Key IDs: F99F18E8, 0A1B2C3D");
    }

    #[test]
    fn drive_texts() {
        let mut d = DeviceInfo {
            device: "/dev/sdb1".into(),
            bitlocker: true,
            state: DeviceState::Locked,
            mountpoint: None,
            decrypted: None,
            engine: None,
            label: None,
            size_bytes: 15_500_000_000,
            owner: None,
            fs_type: None,
            read_only: false,
            error: None,
            vendor: Some("SanDisk".into()),
            model: Some("Cruzer Blade ".into()),
            guid: None,
            description: Some(" ".into()),
            protectors: vec![],
            diskseq: None,
            recovery_key_ids: vec![],
            left_to_desktop: false,
            removable: true,
            connection: None,
            cannot_open: None,
            fs_driver: None,
            notice: None,
        };
        assert_eq!(title(&d), "BitLocker drive");
        assert_eq!(details(&d), "15.5 GB · SanDisk Cruzer Blade");
        assert_eq!(description(&d), None);
        d.label = Some("WORK".into());
        d.vendor = None;
        d.description = Some("DESKTOP-7QH2 E: 14/03/2024".into());
        assert_eq!(title(&d), "WORK");
        assert_eq!(details(&d), "15.5 GB · Cruzer Blade");
        assert_eq!(
            description(&d).as_deref(),
            Some("Described as “DESKTOP-7QH2 E: 14/03/2024”")
        );
    }

    #[test]
    fn recovery_key_while_typing() {
        assert_eq!(check_recovery_key(""), KeyCheck::Empty);
        assert_eq!(
            check_recovery_key("23581"),
            KeyCheck::Incomplete { digits: 5 }
        );
        assert_eq!(
            check_recovery_key("235818-35"),
            KeyCheck::Incomplete { digits: 8 }
        );
        assert_eq!(
            check_recovery_key("235818-"),
            KeyCheck::Incomplete { digits: 6 }
        );
        assert_eq!(
            check_recovery_key("23581-"),
            KeyCheck::Invalid("Group 1 of the recovery key must be 6 digits".into())
        );
        assert_eq!(
            check_recovery_key("235818-357950-2"),
            KeyCheck::Invalid(
                "Group 2 of the recovery key is not divisible by 11 (a typo?)".into()
            )
        );
        // Without dashes the groups are found by counting.
        assert_eq!(
            check_recovery_key("235818357950"),
            KeyCheck::Invalid(
                "Group 2 of the recovery key is not divisible by 11 (a typo?)".into()
            )
        );
        assert!(matches!(check_recovery_key("2358x8"), KeyCheck::Invalid(_)));
    }

    #[test]
    fn recovery_key_complete_in_any_shape() {
        for text in [
            GOOD.to_owned(),
            GOOD.replace('-', ""),
            GOOD.replace('-', " "),
            format!("  {GOOD}\n"),
        ] {
            match check_recovery_key(&text) {
                KeyCheck::Valid(key) => assert_eq!(key.expose(), GOOD),
                other => panic!("{other:?}"),
            }
        }
        let long = format!("{GOOD}-000000");
        assert!(matches!(check_recovery_key(&long), KeyCheck::Invalid(_)));
        assert!(matches!(
            check_recovery_key(&format!("{}0", GOOD.replace('-', ""))),
            KeyCheck::Invalid(_)
        ));
    }

    #[test]
    fn messages_never_show_digits() {
        let typo = GOOD.replacen("253979", "253978", 1);
        let message = check_recovery_key(&typo).message();
        assert_eq!(
            message,
            "Group 3 of the recovery key is not divisible by 11 (a typo?)"
        );
        assert!(!message.contains("253978"));
    }

    #[test]
    fn remembered_text_is_a_recovery_key_only_where_one_can_be() {
        let both = kinds(&["password", "recovery_password"]);
        match remembered_secret(SecretString::from(GOOD.replace('-', "").as_str()), &both) {
            UnlockSecret::RecoveryPassword { value } => assert_eq!(value.expose(), GOOD),
            other => panic!("{other:?}"),
        }
        let password_only = kinds(&["password"]);
        match remembered_secret(SecretString::from(GOOD), &password_only) {
            UnlockSecret::Password { value } => assert_eq!(value.expose(), GOOD),
            other => panic!("{other:?}"),
        }
        match remembered_secret(SecretString::from("anaconda"), &both) {
            UnlockSecret::Password { value } => assert_eq!(value.expose(), "anaconda"),
            other => panic!("{other:?}"),
        }
        assert!(can_remember(&both));
        assert!(!can_remember(&kinds(&["startup_key"])));
        assert!(!can_remember(&kinds(&["clear_key", "password"])));
    }
}
