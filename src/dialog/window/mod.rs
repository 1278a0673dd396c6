//! The unlock window: a composite template that reports what the person asked for.

mod imp;

use crate::dialog::keyring::Remember;
use crate::protocol::{DeviceInfo, ErrorKind, UnlockSecret};
use gtk::glib;
use gtk::subclass::prelude::*;
use tr::tr;

/// What the person asked the dialog to do.
#[derive(Debug)]
pub enum DialogRequest {
    /// Try this secret. The dialog is busy until [`UnlockDialog::show_failure`] or
    /// [`UnlockDialog::finish`].
    Unlock {
        secret: UnlockSecret,
        read_only: bool,
        /// Whether, and how long, to keep the secret in the keyring once it works.
        remember: Remember,
        /// Open this drive (one inside the computer) at every login, with that secret.
        open_at_login: bool,
    },
    /// Cancel, Escape or the window's close button.
    Cancel,
}

glib::wrapper! {
    pub struct UnlockDialog(ObjectSubclass<imp::UnlockDialog>)
        @extends gtk::Window, gtk::Widget,
        @implements gtk::Buildable, gtk::ConstraintTarget, gtk::Native, gtk::Root,
            gtk::ShortcutManager;
}

impl UnlockDialog {
    /// A dialog for `device`; `on_request` is called for every [`DialogRequest`]. With
    /// `remember`, the person may choose to keep a password or key in the keyring.
    pub fn new(
        app: &gtk::Application,
        device: &DeviceInfo,
        remember: bool,
        on_request: impl Fn(DialogRequest) + 'static,
    ) -> Self {
        let dialog: Self = glib::Object::builder().property("application", app).build();
        dialog.imp().setup(device, remember, Box::new(on_request));
        dialog
    }

    /// The unlock failed: shows why, clears the input and lets the person try again.
    pub fn show_failure(&self, kind: Option<ErrorKind>, message: Option<&str>) {
        let imp = self.imp();
        // The plain "wrong password" is said for the method in use; anything more specific
        // (a remembered password that was forgotten, dislocker and non-ASCII, a drive
        // without that protector) in the daemon's or our words, in the person's language.
        let message = match (message.map(str::trim), kind) {
            (
                None | Some("" | "wrong password" | "wrong recovery key"),
                Some(ErrorKind::WrongSecret),
            ) => imp.wrong_secret_message(),
            (Some(text), _) if !text.is_empty() => sentence(&crate::i18n::localize(text)),
            _ => tr!("The drive could not be unlocked."),
        };
        imp.show_failure(&message);
    }

    /// Closes the dialog without reporting a cancel (the agent already knows why).
    pub fn finish(&self) {
        self.imp().finish();
    }
}

/// The agent's messages may start in lower case ("wrong password"); show them as sentences.
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_messages_become_sentences() {
        assert_eq!(super::sentence("wrong password"), "Wrong password.");
        assert_eq!(super::sentence("Wrong password."), "Wrong password.");
    }
}
