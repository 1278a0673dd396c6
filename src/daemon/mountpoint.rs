//! Choosing `/media/<owner>/<label>`: the label comes from a stranger's disk.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Longest label we keep, in bytes (NAME_MAX is 255; leave room for a suffix).
const MAX_LABEL: usize = 64;

/// Makes a disk label safe as one path component: no `/`, no control characters, no leading
/// dots (so never `.` or `..`), trimmed, at most [`MAX_LABEL`] bytes. `None` if nothing is left.
pub fn sanitize(label: &str) -> Option<String> {
    let cleaned: String = label
        .chars()
        .filter(|c| *c != '/' && *c != '\\' && !c.is_control())
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    let mut out = String::new();
    for c in cleaned.chars() {
        if out.len() + c.len_utf8() > MAX_LABEL {
            break;
        }
        out.push(c);
    }
    let out = out.trim_end().to_owned();
    (!out.is_empty()).then_some(out)
}

/// Picks a free directory name under `parent` for a volume: the sanitized label, else the
/// UUID, else "BitLocker"; `NAME (2)`, `NAME (3)` … if taken. `taken` says whether a path is
/// in use (exists, or is reserved by another unlock in progress).
pub fn choose(
    parent: &Path,
    label: Option<&str>,
    uuid: Option<&str>,
    taken: impl Fn(&Path) -> bool,
) -> PathBuf {
    let base = label
        .and_then(sanitize)
        .or_else(|| uuid.and_then(sanitize))
        .unwrap_or_else(|| "BitLocker".to_owned());
    let mut candidate = parent.join(&base);
    let mut n = 2;
    while taken(&candidate) {
        candidate = parent.join(format!("{base} ({n})"));
        n += 1;
    }
    debug_assert_eq!(candidate.parent(), Some(parent));
    candidate
}

/// Mountpoints chosen by unlocks whose mount has not happened yet, shared by the workers so
/// two unlocks of sticks with the same label never pick the same directory.
#[derive(Default, Clone)]
pub struct Reservations(Arc<Mutex<HashSet<PathBuf>>>);

/// A chosen mountpoint, held until the mount made its directory (or failed); released on drop.
pub struct Reserved {
    pub path: PathBuf,
    set: Reservations,
}

impl Reservations {
    fn set(&self) -> MutexGuard<'_, HashSet<PathBuf>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`choose`], skipping directories that exist or are reserved, and reserves the result.
    pub fn choose(&self, parent: &Path, label: Option<&str>, uuid: Option<&str>) -> Reserved {
        let mut set = self.set();
        let path = choose(parent, label, uuid, |p| p.exists() || set.contains(p));
        set.insert(path.clone());
        Reserved {
            path,
            set: self.clone(),
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.set.set().remove(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_mountpoint_is_not_chosen_twice_until_released() {
        let parent = Path::new("/nonexistent/guilocker/alice");
        let r = Reservations::default();
        let first = r.choose(parent, Some("STICK"), None);
        let second = r.choose(parent, Some("STICK"), None);
        assert_eq!(first.path, parent.join("STICK"));
        assert_eq!(second.path, parent.join("STICK (2)"));
        drop(first);
        assert_eq!(
            r.choose(parent, Some("STICK"), None).path,
            parent.join("STICK")
        );
    }

    #[test]
    fn strips_what_could_escape() {
        assert_eq!(sanitize("My Stick").as_deref(), Some("My Stick"));
        assert_eq!(sanitize("../../etc").as_deref(), Some("etc"));
        assert_eq!(sanitize("a/b").as_deref(), Some("ab"));
        assert_eq!(sanitize("..").as_deref(), None);
        assert_eq!(sanitize(".hidden").as_deref(), Some("hidden"));
        assert_eq!(sanitize("tab\there\n").as_deref(), Some("tabhere"));
        assert_eq!(sanitize("   ").as_deref(), None);
        assert_eq!(sanitize("\u{7f}\u{1b}[31m").as_deref(), Some("[31m"));
        assert_eq!(sanitize("Fotos 2024 ☀").as_deref(), Some("Fotos 2024 ☀"));
    }

    #[test]
    fn caps_length_on_a_char_boundary() {
        let long = "é".repeat(100);
        let s = sanitize(&long).unwrap();
        assert!(s.len() <= MAX_LABEL);
        assert_eq!(s.chars().count(), 32);
    }

    #[test]
    fn always_lands_inside_the_parent() {
        let parent = Path::new("/media/alice");
        for label in ["..", "../x", "/", "a/../../b", ".", "\0", "x\u{0}y"] {
            let p = choose(parent, Some(label), None, |_| false);
            assert_eq!(p.parent(), Some(parent), "{label:?} -> {p:?}");
            assert!(!p.components().any(|c| c.as_os_str() == ".."));
        }
    }

    #[test]
    fn falls_back_and_suffixes() {
        let parent = Path::new("/media/alice");
        assert_eq!(
            choose(parent, None, Some("162D-C4FE"), |_| false),
            parent.join("162D-C4FE")
        );
        assert_eq!(
            choose(parent, Some(".."), None, |_| false),
            parent.join("BitLocker")
        );
        let taken = [parent.join("STICK"), parent.join("STICK (2)")];
        assert_eq!(
            choose(parent, Some("STICK"), None, |p| taken
                .iter()
                .any(|t| t == p)),
            parent.join("STICK (3)")
        );
    }
}
