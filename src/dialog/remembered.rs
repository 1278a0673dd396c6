//! The first thing the dialog does: a secret remembered in the keyring is sent to the agent
//! before any window exists. If it opens the drive, the person sees only the notification.

use super::input::InputReader;
use super::{keyring, model};
use crate::protocol::{write_frame, DeviceInfo, DialogInput, DialogOutput, ErrorKind};
use tr::tr;

pub enum Outcome {
    /// The remembered secret opened the drive.
    Unlocked,
    /// The agent closed the dialog meanwhile (the drive went away).
    Closed,
    /// Show the window. `keyring`: the Secret Service answered, so "Remember" can be
    /// offered; `failure`: why a remembered secret did not open the drive.
    Ask {
        keyring: bool,
        failure: Option<(ErrorKind, String)>,
    },
}

pub async fn try_unlock(input: &mut InputReader, device: &DeviceInfo) -> Outcome {
    let ask = |keyring, failure| Outcome::Ask { keyring, failure };
    let Some(guid) = device.guid.as_deref() else {
        return ask(false, None);
    };
    if !model::can_remember(&device.protectors) {
        return ask(true, None);
    }
    let text = match keyring::lookup(guid) {
        Ok(Some(text)) => text,
        Ok(None) => return ask(true, None),
        Err(e) => {
            // No keyring in this session: the dialog works as without one.
            eprintln!("guilocker dialog: {}: {e}", device.device);
            return ask(false, None);
        }
    };
    let frame = DialogOutput::Unlock {
        secret: model::remembered_secret(text, &device.protectors),
        read_only: false,
        remembered: true,
        open_at_login: false,
    };
    if let Err(e) = write_frame(&mut std::io::stdout().lock(), &frame) {
        eprintln!(
            "guilocker dialog: {}: cannot write to the agent: {e}",
            device.device
        );
        return Outcome::Closed;
    }
    drop(frame);
    match input.next().await {
        Ok(Some(DialogInput::Unlocked { .. })) => Outcome::Unlocked,
        Ok(Some(DialogInput::Failed {
            kind: ErrorKind::WrongSecret,
            ..
        })) => {
            // As GNOME does: a remembered secret that no longer works is forgotten.
            if let Err(e) = keyring::forget(guid) {
                eprintln!("guilocker dialog: {}: {e}", device.device);
            }
            let forgotten = tr!(
                "The remembered password did not open the drive and was removed from the keyring."
            );
            ask(true, Some((ErrorKind::WrongSecret, forgotten)))
        }
        Ok(Some(DialogInput::Failed { kind, message })) => {
            let message = message.unwrap_or_else(|| tr!("The drive could not be unlocked."));
            ask(true, Some((kind, message)))
        }
        Ok(Some(DialogInput::Show { .. })) => {
            eprintln!(
                "guilocker dialog: {}: ignoring a second show frame",
                device.device
            );
            ask(true, None)
        }
        Ok(Some(DialogInput::Close { .. })) | Ok(None) => Outcome::Closed,
        Err(e) => {
            eprintln!("guilocker dialog: {}: {e}", device.device);
            Outcome::Closed
        }
    }
}
