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
/// target/debug/guilocker finds target/share/locale if someone compiled `po/` there (the
/// tests name their own catalogs with [`LOCALEDIR_ENV`] instead).
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

/// `text` in the reader's language, if the catalog has it: for texts that are not literals
/// in our sources (clap's help, the sentences below).
pub fn lookup(text: &str) -> String {
    gettextrs::dgettext(DOMAIN, text)
}

/// Marks a text for translation where `tr!` cannot go (a constant): xtr extracts it
/// (`-k n_`), and it is looked up when used.
pub const fn n_(text: &'static str) -> &'static str {
    text
}

/// The daemon's (and the BitLocker reader's and keyring's) sentences people meet, as their
/// format strings write them (`{…}` a value): wrong secrets, refusals, states, drives that
/// cannot be opened here. Those speak English (logs, bug reports); [`localize`] shows these
/// in the reader's language and any other as sent. A unit test holds each one to the
/// sources, word for word.
const SENTENCES: &[&str] = &[
    n_("no such device"),
    n_("not a BitLocker volume"),
    n_("not a BitLocker volume (no -FVE-FS- or BitLocker To Go signature in the first sector)"),
    n_("wrong password"),
    n_("wrong recovery key"),
    n_("the password is empty"),
    n_("a password cannot contain line breaks"),
    n_("still being examined; try again in a moment"),
    n_("another unlock or unmount is under way"),
    n_("is not unlocked"),
    n_("is still being cleaned up after it was unplugged; try again in a moment"),
    n_("already unlocked ({where})"),
    n_("mounted at {mountpoint}"),
    n_("its decrypted view is {path}"),
    n_("is still unlocked by an earlier guilocker ({path} is mounted); unmount it first"),
    n_("is still unlocked by an earlier guilocker ({name} is in use); unmount it first"),
    n_("in use by {holders}; close them, or use --force"),
    // Someone else holds the partition (a mapping, a mount, a program).
    n_("already in use by {holder}"),
    // How NTFS was mounted on a kernel with ntfs3, and what the kernel refused.
    n_("{driver} cannot mount the filesystem: {reason}"),
    n_("Windows was hibernated (Fast Startup) with this drive in use, so it was opened read-only: writing to it now could lose what Windows still holds in memory; shut Windows down fully (Shift+Shut down) to write to it"),
    n_("Windows did not close this drive (removed without Eject), which the kernel's ntfs3 refuses, so ntfs-3g opened it; Windows checks it the next time it sees it"),
    n_("not allowed: {why}"),
    n_("uid {uid} has no user account"),
    n_("{user} is not in the group '{group}' (see allowed_group in the config)"),
    n_("only root may unlock for another user ({user})"),
    n_("it was unlocked by {owner}, not by {caller}"),
    n_("you are not in the active local session ({why})"),
    n_("cannot tell whether you are at this computer: {cause}"),
    n_("cannot be opened here: {cause}"),
    n_("protection is not suspended: a password or key is needed"),
    n_("our reader cannot use this volume's metadata, so only dislocker can open it"),
    n_("no NTFS, exFAT or FAT filesystem inside; use --no-mount to get the decrypted view"),
    n_("this volume was encrypted by Windows Vista, whose BitLocker format is not supported"),
    n_("no protector of that kind can be used here (only {available})"),
    n_("{state}; let Windows finish it, then try again"),
    n_("encryption is still in progress"),
    n_("decryption is still in progress"),
    n_("encryption or decryption is paused"),
    n_("unsupported encryption method {method}"),
    n_("the volume has {total} protectors of this kind, far more than Windows makes (crafted or damaged metadata?); {tried} were tried in the time allowed and none opened it"),
    n_("the volume is decrypted"),
    n_("the encryption state is unknown"),
    n_("cannot be read: {why}"),
    n_("this drive has no {wanted} protector; {hint}"),
    n_("use the {protector}"),
    n_("it opens without a secret (its protection is suspended)"),
    n_("password"),
    n_("recovery key"),
    n_("startup key"),
    n_("clear key"),
    n_("smart card"),
    n_("TPM + PIN"),
    // dislocker's last words, as the daemon puts them.
    n_("wrong password (note: dislocker cannot check passwords with non-ASCII characters)"),
    n_("this startup key (.BEK) does not open this drive, or dislocker cannot read its format"),
    n_("the BitLocker metadata cannot be read; encryption may still be in progress (let Windows finish it)"),
    n_("encryption is still in progress; let Windows finish it first"),
    n_("FUSE is not available (is the fuse module loaded?)"),
    n_("the device cannot be opened (was it removed?)"),
    n_("dislocker could not unlock the drive"),
    // A recovery key typed on the command line.
    n_("recovery key: {cause}"),
    n_("a recovery key has 8 groups of 6 digits; this has {digits} digits"),
    n_("a recovery key has only digits and dashes"),
    n_("group {group} of the recovery key {cause}"),
    n_("must be 6 digits"),
    n_("is not divisible by 11 (a typo?)"),
    n_("is 720896 or more (a typo?)"),
    // The keyring, for `guilocker remembered` and `forget`.
    n_("cannot look up the remembered secret for {guid} in the keyring: {cause}"),
    n_("cannot store the secret for {guid} in the keyring: {cause}"),
    n_("cannot remove the remembered secret for {guid} from the keyring: {cause}"),
    n_("cannot list the keyring's remembered BitLocker secrets: {cause}"),
];

/// A daemon's "DEVICE: cause" (or a bare cause) in the reader's language, as far as
/// [`SENTENCES`] reach; the rest as sent. Values are kept, and translated in turn where they
/// are themselves one of the sentences ("already unlocked (mounted at …)"). The prefix is a
/// path, spaces and all: the cause is looked for after a path first, then in the whole
/// text, then after any ": ".
pub fn localize(message: &str) -> String {
    recognized(message).unwrap_or_else(|| message.to_owned())
}

/// [`localize`], or `None` where no sentence is recognized.
fn recognized(message: &str) -> Option<String> {
    let splits = || message.match_indices(": ").map(|(at, _)| at);
    let after =
        |at: usize| known(&message[at + 2..], 0).map(|c| format!("{}: {c}", &message[..at]));
    splits()
        .filter(|&at| message[..at].contains('/'))
        .find_map(after)
        .or_else(|| known(message, 0))
        .or_else(|| splits().find_map(after))
}

/// Nested sentences go this deep at most.
const MAX_DEPTH: usize = 3;

fn translate_cause(text: &str, depth: usize) -> String {
    known(text, depth).unwrap_or_else(|| text.to_owned())
}

/// `text` translated if it is one of [`SENTENCES`].
fn known(text: &str, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    // Sentences that start with words before those that start with a value, which would
    // take any text in front of their words.
    let (words_first, value_first): (Vec<&&str>, Vec<&&str>) =
        SENTENCES.iter().partition(|t| !t.starts_with('{'));
    words_first
        .into_iter()
        .chain(value_first)
        .find_map(|template| {
            let values = fill(template, text)?;
            let translated = lookup(template);
            let values: Vec<(&str, String)> = values
                .into_iter()
                .map(|(name, value)| (name, translate_cause(value, depth + 1)))
                .collect();
            let args: Vec<(&str, &dyn std::fmt::Display)> = values
                .iter()
                .map(|(name, value)| (*name, value as &dyn std::fmt::Display))
                .collect();
            Some(tr::runtime_format::display_string(&translated, &args))
        })
}

/// A template's literal text and `{name}` holes, in order.
enum Piece<'a> {
    Text(&'a str),
    Hole(&'a str),
}

fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        out.push(Piece::Hole(&rest[open + 1..open + close]));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// The values of `template`'s holes if `text` is that sentence. A hole takes text up to the
/// first occurrence of the literal after it, or up to the final literal when that ends the
/// sentence (a value may hold brackets of its own).
fn fill<'t>(template: &'t str, text: &'t str) -> Option<Vec<(&'t str, &'t str)>> {
    let pieces = pieces(template);
    let mut values = Vec::new();
    let mut at = 0;
    for (i, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Text(literal) => {
                at += text[at..].starts_with(literal).then_some(literal.len())?;
            }
            Piece::Hole(name) => {
                let end = match pieces.get(i + 1) {
                    None => text.len(),
                    Some(Piece::Text(last)) if i + 2 == pieces.len() => text
                        .len()
                        .checked_sub(last.len())
                        .filter(|&e| e >= at && text.ends_with(last))?,
                    Some(Piece::Text(next)) => at + text[at..].find(next)?,
                    // Two holes in a row cannot be told apart.
                    Some(Piece::Hole(_)) => return None,
                };
                if end == at {
                    return None;
                }
                values.push((*name, &text[at..end]));
                at = end;
            }
        }
    }
    (at == text.len()).then_some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Format holes of any kind (`{}`, `{name}`, `{offset:#x}`) as `{}`; braces of code
    /// (which hold spaces or lines) are left as they are.
    fn holes_as_braces(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find(|c: char| c == '}' || c == '{' || c.is_whitespace()) {
                Some(end) if after[end..].starts_with('}') => {
                    out.push_str("{}");
                    rest = &after[end + 1..];
                }
                _ => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Each template is what the daemon or the BitLocker reader writes, word for word (with
    /// its values anywhere): a sentence reworded there would silently stop being translated.
    #[test]
    fn every_sentence_is_written_so_in_the_sources() {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut sources = String::new();
        for dir in ["daemon", "bitlocker", "dialog"] {
            for entry in std::fs::read_dir(format!("{src}/{dir}")).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "rs") {
                    sources.push_str(&std::fs::read_to_string(path).unwrap());
                }
            }
        }
        // Long literals are broken over lines there: `\` at a line's end also skips the
        // next line's indentation.
        let mut joined = String::with_capacity(sources.len());
        let mut rest = sources.as_str();
        while let Some(at) = rest.find("\\\n") {
            joined.push_str(&rest[..at]);
            rest = rest[at + 2..].trim_start_matches([' ', '\t', '\n']);
        }
        joined.push_str(rest);
        let sources = holes_as_braces(&joined);
        for template in SENTENCES {
            assert!(
                sources.contains(&holes_as_braces(template)),
                "{template:?} is not in src/daemon, src/bitlocker or src/dialog"
            );
        }
    }

    #[test]
    fn sentences_are_recognized_and_put_back() {
        // No catalog is bound in unit tests: gettext hands the English back, so a
        // recognized sentence must come back exactly as sent.
        for message in [
            "/dev/sdb1: wrong password",
            "/dev/sdb1: already unlocked (mounted at /media/alice/STICK (2))",
            "/dev/sdb1: not allowed: bob is not in the group 'plugdev' (see allowed_group in the config)",
            "not allowed: bob is not in the group 'plugdev' (see allowed_group in the config)",
            "/media/alice/STICK: in use by bash (pid 7), vim (pid 9); close them, or use --force",
            "/media/alice/USB DISK: in use by bash (pid 7); close them, or use --force",
            "/dev/sdb1: cannot be opened here: encryption is still in progress; let Windows finish it, then try again",
            "/dev/sdb1: recovery key: group 3 of the recovery key is not divisible by 11 (a typo?)",
            "my images/x.img: not a BitLocker volume",
            "x.img: not a BitLocker volume",
        ] {
            assert_eq!(recognized(message).as_deref(), Some(message));
        }
        for message in ["/dev/sdb1: something nobody listed: 42", "no colon at all"] {
            assert_eq!(recognized(message), None, "{message}");
            assert_eq!(localize(message), message);
        }
    }

    #[test]
    fn values_are_found() {
        assert_eq!(
            fill(
                "already unlocked ({where})",
                "already unlocked (mounted at /m (2))"
            ),
            Some(vec![("where", "mounted at /m (2)")])
        );
        assert_eq!(
            fill(
                "{user} is not in the group '{group}' (see allowed_group in the config)",
                "bob is not in the group 'plugdev' (see allowed_group in the config)"
            ),
            Some(vec![("user", "bob"), ("group", "plugdev")])
        );
        assert_eq!(fill("wrong password", "wrong password, and more"), None);
        assert_eq!(fill("mounted at {mountpoint}", "mounted at "), None);
    }

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
