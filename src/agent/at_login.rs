//! The drives a person chose to have opened at every login ("Remember forever and open at
//! every login" in the dialog): a disk inside the computer is otherwise never asked about.
//! One volume GUID per line in `$XDG_CONFIG_HOME/guilocker/open-at-login`; the secret itself
//! stays in the keyring, where the dialog finds it without showing a window.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const FILE: &str = "guilocker/open-at-login";

/// The list of this user (`None` when there is no config directory).
pub fn path() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join(FILE))
}

/// The GUIDs in the list at `path`; a missing or unreadable file is an empty list.
pub fn load(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(crate::bitlocker::guid::normalize)
        .collect()
}

/// `guilocker forget`: the drive is no longer opened at login either.
pub fn forget(guid: &str) {
    if let Some(path) = path() {
        if let Err(e) = set(&path, guid, false) {
            eprintln!("guilocker: cannot update {}: {e}", path.display());
        }
    }
}

/// The person chose to have `device` opened at every login: noted in their list.
pub fn chosen(path: &Path, device: &crate::protocol::DeviceInfo) {
    let Some(guid) = device.guid.as_deref() else {
        return;
    };
    match set(path, guid, true) {
        Ok(()) => log::info!("{}: will be opened at every login", device.device),
        Err(e) => log::warn!(
            "{}: cannot note it in {}: {e}",
            device.device,
            path.display()
        ),
    }
}

/// Adds (`open` true) or removes `guid`; written whole to a new file, then renamed over.
pub fn set(path: &Path, guid: &str, open: bool) -> std::io::Result<()> {
    let Some(guid) = crate::bitlocker::guid::normalize(guid) else {
        return Err(std::io::Error::other(format!("not a volume GUID: {guid}")));
    };
    let mut list = load(path);
    let changed = if open {
        list.insert(guid)
    } else {
        list.remove(&guid)
    };
    if !changed {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text: String = list.iter().map(|g| format!("{g}\n")).collect();
    let temp = path.with_extension("new");
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_once_removed_and_junk_ignored() {
        let dir = std::env::temp_dir().join(format!("guilocker-at-login-{}", std::process::id()));
        let path = dir.join("guilocker/open-at-login");
        let guid = "0F8C1E7E-2B3A-4C5D-8E9F-0A1B2C3D4E5F";
        let lower = guid.to_lowercase();
        assert!(load(&path).is_empty());
        set(&path, guid, true).unwrap();
        set(&path, &lower, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{lower}\n")
        );
        std::fs::write(&path, format!("junk\n{lower}\n\n")).unwrap();
        assert_eq!(load(&path).into_iter().collect::<Vec<_>>(), [lower]);
        set(&path, guid, false).unwrap();
        assert!(load(&path).is_empty());
        assert!(set(&path, "not a guid", true).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
