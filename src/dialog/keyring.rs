//! Remembered secrets in the Secret Service (GNOME Keyring, KWallet), stored the way GNOME's
//! own volume monitor stores encryption passphrases, so the two tools share entries.
//!
//! Only the dialog process talks to the keyring: the agent and the daemon stay free of GLib.

use crate::bitlocker::guid;
use crate::secret::SecretString;
use gtk::prelude::*;
use gtk::{gio, glib};
use libsecret::prelude::*;
use std::collections::HashMap;
use thiserror::Error;
use tr::tr;
use zeroize::Zeroizing;

/// gvfs's schema for LUKS (and, through udisks, BitLocker) passphrases.
const SCHEMA: &str = "org.gnome.GVfs.Luks.Password";
/// The volume's UUID: for BitLocker, its GUID in lower case, as `inspect` prints it.
const UUID: &str = "gvfs-luks-uuid";

/// How long a secret is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remember {
    Never,
    /// In the session collection, which the keyring forgets at logout.
    UntilLogout,
    /// In the default (login) collection.
    Forever,
}

/// One remembered secret, as listed (never with the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub guid: String,
    pub label: String,
    pub until_logout: bool,
}

#[derive(Debug, Error)]
pub enum KeyringError {
    #[error("cannot look up the remembered secret for {guid} in the keyring: {cause}")]
    Lookup { guid: String, cause: glib::Error },
    #[error("cannot store the secret for {guid} in the keyring: {cause}")]
    Store { guid: String, cause: glib::Error },
    #[error("cannot remove the remembered secret for {guid} from the keyring: {cause}")]
    Clear { guid: String, cause: glib::Error },
    #[error("cannot list the keyring's remembered BitLocker secrets: {0}")]
    List(glib::Error),
}

fn schema() -> libsecret::Schema {
    // DONT_MATCH_NAME: entries stored by other tools under the same attribute match too.
    libsecret::Schema::new(
        SCHEMA,
        libsecret::SchemaFlags::DONT_MATCH_NAME,
        HashMap::from([(UUID, libsecret::SchemaAttributeType::String)]),
    )
}

/// The form GNOME stores: lower case, no braces.
fn normalize_guid(guid: &str) -> String {
    guid::normalize(guid).unwrap_or_else(|| guid.trim().to_ascii_lowercase())
}

/// The remembered secret for volume `guid`, if any.
pub fn lookup(guid: &str) -> Result<Option<SecretString>, KeyringError> {
    let guid = normalize_guid(guid);
    let found = libsecret::password_lookup_binary_sync(
        Some(&schema()),
        HashMap::from([(UUID, guid.as_str())]),
        gio::Cancellable::NONE,
    )
    .map_err(|cause| KeyringError::Lookup {
        guid: guid.clone(),
        cause,
    })?;
    // SecretValue wipes its own memory when unreffed; the copy is ours to wipe.
    Ok(found.and_then(|value| {
        let bytes = Zeroizing::new(value.get());
        std::str::from_utf8(&bytes).ok().map(SecretString::from)
    }))
}

/// Stores `secret` for volume `guid`, replacing what was there.
pub fn store(
    guid: &str,
    label: &str,
    secret: &SecretString,
    remember: Remember,
) -> Result<(), KeyringError> {
    let collection = match remember {
        Remember::Never => return Ok(()),
        Remember::UntilLogout => Some(libsecret::COLLECTION_SESSION.as_str()),
        Remember::Forever => None,
    };
    let guid = normalize_guid(guid);
    libsecret::password_store_binary_sync(
        Some(&schema()),
        HashMap::from([(UUID, guid.as_str())]),
        collection,
        label,
        &secret_value(secret),
        gio::Cancellable::NONE,
    )
    .map_err(|cause| KeyringError::Store { guid, cause })
}

/// The secret as libsecret holds it: copied once, straight into its own memory, which it
/// wipes when freeing. (`password_store_sync` would first copy it into an unwiped C string.)
fn secret_value(secret: &SecretString) -> libsecret::Value {
    let text = secret.expose();
    let length = isize::try_from(text.len()).expect("a secret shorter than isize::MAX");
    // SAFETY: `text` is valid for `length` bytes for the call, which copies them (the length
    // is given, so no NUL is needed); the content type is a NUL-terminated constant; the new
    // SecretValue is returned with a reference we own.
    unsafe {
        glib::translate::from_glib_full(libsecret::ffi::secret_value_new(
            text.as_ptr().cast(),
            length,
            c"text/plain".as_ptr(),
        ))
    }
}

/// Removes every remembered secret for volume `guid`; returns how many there were.
pub fn forget(guid: &str) -> Result<usize, KeyringError> {
    let guid = normalize_guid(guid);
    let found = search(Some(&guid)).map_err(|cause| KeyringError::Clear {
        guid: guid.clone(),
        cause,
    })?;
    if found.is_empty() {
        return Ok(0);
    }
    libsecret::password_clear_sync(
        Some(&schema()),
        HashMap::from([(UUID, guid.as_str())]),
        gio::Cancellable::NONE,
    )
    .map_err(|cause| KeyringError::Clear { guid, cause })?;
    Ok(found.len())
}

/// Every remembered BitLocker (and LUKS: the schema is shared) secret, sorted by GUID.
pub fn list() -> Result<Vec<Entry>, KeyringError> {
    let mut entries = search(None).map_err(KeyringError::List)?;
    entries.sort_by(|a, b| a.guid.cmp(&b.guid));
    Ok(entries)
}

fn search(guid: Option<&str>) -> Result<Vec<Entry>, glib::Error> {
    // A search needs an attribute: for all entries, the schema's name, which libsecret
    // stores with every item (GNOME's and ours alike).
    let (schema, attributes) = match guid {
        Some(g) => (Some(schema()), HashMap::from([(UUID, g)])),
        None => (None, HashMap::from([("xdg:schema", SCHEMA)])),
    };
    let found = libsecret::password_search_sync(
        schema.as_ref(),
        attributes,
        libsecret::SearchFlags::ALL,
        gio::Cancellable::NONE,
    )?;
    Ok(found
        .iter()
        .filter_map(|item| {
            let guid = item.attributes().remove(UUID)?;
            // Items of the session collection live under its path, whatever its alias.
            let until_logout = item
                .downcast_ref::<libsecret::Item>()
                .is_some_and(|i| i.object_path().contains("/collection/session/"));
            Some(Entry {
                guid,
                label: item.label().into(),
                until_logout,
            })
        })
        .collect())
}

/// The keyring commands of the dialog binary, for `guilocker remembered` and `guilocker
/// forget GUID`; `None` for any other arguments. Returns the exit status.
pub fn command(args: &[String]) -> Option<i32> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Some(match args.as_slice() {
        ["--remembered"] => print_list(),
        ["--forget", guid] => forget_one(guid),
        _ => return None,
    })
}

fn print_list() -> i32 {
    let entries = match list() {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("guilocker: {}", crate::i18n::localize(&e.to_string()));
            return 1;
        }
    };
    if entries.is_empty() {
        println!(
            "{}",
            tr!("No BitLocker password or recovery key is remembered in your keyring.")
        );
    }
    for entry in entries {
        let kept = if entry.until_logout {
            tr!("until logout")
        } else {
            tr!("forever")
        };
        println!(
            "{}  {}  {}",
            entry.guid,
            crate::text::pad(&kept, 12),
            entry.label
        );
    }
    0
}

fn forget_one(guid: &str) -> i32 {
    if guid::normalize(guid).is_none() {
        eprintln!(
            "guilocker: {}",
            tr!(
                "{guid} is not a volume GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
                guid = format!("{guid:?}")
            )
        );
        return 2;
    }
    match forget(guid) {
        Ok(0) => {
            eprintln!(
                "guilocker: {}: {}",
                normalize_guid(guid),
                tr!("nothing is remembered for this volume")
            );
            1
        }
        Ok(n) => {
            let volume = normalize_guid(guid);
            println!(
                "{}",
                tr!(
                    "Forgot {n} remembered secret for {volume}."
                        | "Forgot {n} remembered secrets for {volume}." % n,
                    volume
                )
            );
            0
        }
        Err(e) => {
            eprintln!("guilocker: {}", crate::i18n::localize(&e.to_string()));
            1
        }
    }
}
