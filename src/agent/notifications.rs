//! Desktop notifications (freedesktop, through notify-rust): "unlocked", with Open and
//! Unmount, and problems that need attention.

use crate::client::Client;
use crate::protocol::{DeviceInfo, PowerOff, Request, Response};
use notify_rust::{Hint, Notification, Timeout, Urgency};
use std::path::PathBuf;
use tr::tr;

const APP: &str = "guilocker";
const ICON: &str = "guilocker";
/// Our installed desktop entry (packaging/org.guilocker.Dialog.desktop): desktop settings
/// list the notifications under it.
pub const DESKTOP_ENTRY: &str = "org.guilocker.Dialog";

/// "‘LABEL’ unlocked — mounted at …" with Open and Unmount; `remembered` adds that the
/// keyring's secret opened it (no dialog was shown). Waits for the action on a thread of its
/// own.
pub fn unlocked(socket: PathBuf, device: DeviceInfo, remembered: bool) {
    let spawned = std::thread::Builder::new()
        .name("guilocker-notify".into())
        .spawn(move || {
            let label = label(&device);
            let mut body = match &device.mountpoint {
                Some(mountpoint) => tr!("Mounted at {mountpoint}", mountpoint),
                None => tr!("Unlocked; not mounted."),
            };
            if let Some(notice) = &device.notice {
                body.push('\n');
                body.push_str(&crate::i18n::localize(notice));
            }
            if remembered {
                body.push('\n');
                body.push_str(&tr!("Opened with the password remembered in your keyring."));
            }
            let mut n = Notification::new();
            n.appname(APP)
                .hint(Hint::DesktopEntry(DESKTOP_ENTRY.into()))
                .icon(ICON)
                .summary(&tr!("‘{label}’ unlocked", label))
                .body(&body)
                .timeout(Timeout::Milliseconds(10_000));
            if device.mountpoint.is_some() {
                n.action("open", &tr!("Open"))
                    .action("unmount", &tr!("Unmount"));
            }
            let handle = match n.show() {
                Ok(h) => h,
                Err(e) => {
                    log::warn!("{}: cannot show a notification: {e}", device.device);
                    return;
                }
            };
            handle.wait_for_action(|action| match action {
                "open" => open(&device),
                "unmount" => unmount(&socket, &device, &label),
                _ => {}
            });
        });
    if let Err(e) = spawned {
        log::warn!("cannot start a notification thread: {e}");
    }
}

/// Something that needs the person's attention. Sent from a thread of its own: the agent's
/// event loop must not wait on a slow or stuck notification server.
pub fn problem(summary: &str, body: &str) {
    let (summary, body) = (summary.to_owned(), body.to_owned());
    let spawned = std::thread::Builder::new()
        .name("guilocker-notify".into())
        .spawn(move || show_problem(&summary, &body));
    if let Err(e) = spawned {
        log::warn!("cannot start a notification thread: {e}");
    }
}

pub(super) fn show_problem(summary: &str, body: &str) {
    let shown = Notification::new()
        .appname(APP)
        .hint(Hint::DesktopEntry(DESKTOP_ENTRY.into()))
        .icon(ICON)
        .summary(summary)
        .body(body)
        .urgency(Urgency::Critical)
        .show();
    if let Err(e) = shown {
        log::warn!("cannot show a notification ({summary}): {e}");
    }
}

/// Opens the mountpoint with the desktop's default handler (the file manager).
pub fn open(device: &DeviceInfo) {
    let Some(mountpoint) = &device.mountpoint else {
        return;
    };
    for opener in [&["xdg-open"][..], &["gio", "open"][..]] {
        let started = std::process::Command::new(opener[0])
            .args(&opener[1..])
            .arg(mountpoint)
            .spawn();
        if let Ok(mut child) = started {
            let _ = child.wait();
            return;
        }
    }
    show_problem(
        &tr!("Cannot open the drive"),
        &tr!("No file manager could open {mountpoint}.", mountpoint),
    );
}

fn unmount(socket: &std::path::Path, device: &DeviceInfo, label: &str) {
    let result = Client::connect(socket).and_then(|mut c| {
        c.request(&Request::Unmount {
            target: Some(device.device.clone()),
            all: false,
            force: false,
            no_power_off: false,
        })
    });
    match result {
        Ok(reply) => {
            let power = match reply {
                Response::Unmounted { power, .. } => power,
                _ => Vec::new(),
            };
            let (summary, body) = put_away(label, &power);
            let _ = Notification::new()
                .appname(APP)
                .hint(Hint::DesktopEntry(DESKTOP_ENTRY.into()))
                .icon(ICON)
                .summary(&summary)
                .body(&body)
                .show();
        }
        Err(e) => show_problem(
            &tr!("‘{label}’ could not be unmounted", label),
            &e.localized(),
        ),
    }
}

/// What to say once a drive is put away: that it can be removed, or, when its stick was
/// left powered because something else on it is in use, why.
fn put_away(label: &str, power: &[PowerOff]) -> (String, String) {
    match power.iter().find_map(PowerOff::refusal) {
        None => (
            tr!("‘{label}’ can be removed", label),
            tr!("It was unmounted and locked."),
        ),
        Some(refusal) => {
            // "not powered off: …" as a sentence.
            let mut chars = refusal.chars();
            let mut body: String = chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect())
                .unwrap_or_default();
            body.push('.');
            (tr!("‘{label}’ was unmounted and locked", label), body)
        }
    }
}

/// How notifications name a drive: its label, or a generic name.
pub fn label(device: &DeviceInfo) -> String {
    device
        .label
        .clone()
        .unwrap_or_else(|| tr!("BitLocker drive"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{InUse, UseCause};

    #[test]
    fn a_stick_left_powered_says_why_instead_of_can_be_removed() {
        let powered_off = PowerOff {
            disk: "/dev/sdb".into(),
            powered_off: true,
            in_use: None,
            error: None,
        };
        assert_eq!(
            put_away("STICK", std::slice::from_ref(&powered_off)),
            (
                "‘STICK’ can be removed".to_owned(),
                "It was unmounted and locked.".to_owned()
            )
        );
        let kept = PowerOff {
            powered_off: false,
            in_use: Some(InUse {
                device: "/dev/sdb2".into(),
                cause: UseCause::Mounted {
                    mountpoint: "/media/alice/DATA".into(),
                },
            }),
            ..powered_off
        };
        assert_eq!(
            put_away("STICK", &[kept]),
            (
                "‘STICK’ was unmounted and locked".to_owned(),
                "Not powered off: /dev/sdb2 is mounted at /media/alice/DATA.".to_owned()
            )
        );
    }
}
