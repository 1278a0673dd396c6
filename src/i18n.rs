//! Translations: gettext's catalogs through the `tr!` macro (the `tr` crate over gettext-rs,
//! linked against glibc's own libintl, so the agent and the CLI stay free of GLib).
//!
//! Messages live in the `guilocker` text domain (`tr!` takes the crate's name). The dialog's
//! GtkBuilder template names the same domain, so GTK looks its strings up in the same
//! catalog. The root daemon never calls [`init`]: its logs and replies stay in English, the
//! language of bug reports.

use std::path::{Path, PathBuf};

/// The gettext text domain: `po/` holds its catalogs, installed as
/// `share/locale/LANG/LC_MESSAGES/guilocker.mo`.
pub const DOMAIN: &str = "guilocker";

/// Overrides where the compiled catalogs are looked for (an uninstalled build, tests).
pub const LOCALEDIR_ENV: &str = "GUILOCKER_LOCALEDIR";

/// Where the system's catalogs live when nothing nearer is found.
const SYSTEM_LOCALEDIR: &str = "/usr/share/locale";

/// Follows the person's locale (LANG, LC_ALL, LC_MESSAGES, LANGUAGE) from here on.
pub fn init() {
    let dir = locale_dir();
    // `tr_init!` sets the locale from the environment and binds our domain to `dir`.
    tr::tr_init!(dir.to_string_lossy().into_owned());
    // GTK and our own output expect UTF-8 whatever the locale's charset.
    let _ = gettextrs::bind_textdomain_codeset(DOMAIN, "UTF-8");
}

/// The catalogs beside this executable's prefix: /usr/bin/guilocker and
/// /usr/libexec/guilocker/guilocker-dialog both find /usr/share/locale, a build tree's
/// target/debug/guilocker finds target/share/locale (where the tests compile `po/`).
pub fn locale_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(LOCALEDIR_ENV).filter(|d| !d.is_empty()) {
        return dir.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| nearest_locale_dir(&exe))
        .unwrap_or_else(|| PathBuf::from(SYSTEM_LOCALEDIR))
}

fn nearest_locale_dir(exe: &Path) -> Option<PathBuf> {
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|prefix| prefix.join("share/locale"))
        .find(|dir| dir.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogs_are_found_from_the_prefix() {
        let root = std::env::temp_dir().join(format!("guilocker-i18n-{}", std::process::id()));
        let usr = root.join("usr");
        std::fs::create_dir_all(usr.join("share/locale")).unwrap();
        std::fs::create_dir_all(usr.join("libexec/guilocker")).unwrap();
        std::fs::create_dir_all(usr.join("bin")).unwrap();
        let want = Some(usr.join("share/locale"));
        assert_eq!(nearest_locale_dir(&usr.join("bin/guilocker")), want);
        assert_eq!(
            nearest_locale_dir(&usr.join("libexec/guilocker/guilocker-dialog")),
            want
        );
        assert_eq!(nearest_locale_dir(&root.join("elsewhere/x/y/z/bin")), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
