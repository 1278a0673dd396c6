//! `guilocker open`: a drive opened on demand, from the applications menu or a terminal. The
//! login agent asks only about drives a person plugs in; a disk inside the machine (on a
//! dual-boot laptop, Windows' own C: drive) or a stick whose dialog was cancelled is opened
//! here, with the same dialog, one drive after the other.

use super::{notifications, Agent};
use crate::client::Client;
use crate::protocol::{DeviceInfo, DeviceState};
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;
use tr::tr;

#[derive(Debug, Error)]
pub enum OpenError {
    #[error("the agent's dialogs run as the logged-in user, not as root")]
    Root,
    #[error("{0}")]
    Daemon(#[from] crate::client::ClientError),
    #[error("{device}: not a locked BitLocker drive the daemon knows")]
    NotLocked { device: String },
    #[error("{device}: cannot be opened here: {cause}")]
    CannotOpen { device: String, cause: String },
    #[error("no locked BitLocker drive to open")]
    NothingToOpen,
}

/// Asks for the secret of each drive named in `devices` (every locked BitLocker drive that
/// some secret opens, when none is named), one dialog at a time, and shows each opened drive
/// in the file manager. Returns once the last dialog has closed.
pub fn run(socket: PathBuf, devices: &[String]) -> Result<(), OpenError> {
    crate::logging::init();
    if nix::unistd::getuid().is_root() {
        return Err(OpenError::Root);
    }
    let known = Client::connect(&socket)?.status()?;
    let chosen = match choose(known, devices) {
        Ok(chosen) => chosen,
        Err(e) => {
            // Started from the menu there is no terminal to read the error on. Shown before
            // returning: the process ends right after.
            if matches!(e, OpenError::NothingToOpen) {
                notifications::show_problem(
                    &tr!("No BitLocker drive to open"),
                    &tr!("Every BitLocker drive connected is open already, or none is connected."),
                );
            }
            return Err(e);
        }
    };
    let agent = Arc::new(Agent {
        on_demand: true,
        ..Agent::new(socket)
    });
    for device in chosen {
        let name = device.device.clone();
        agent.offer(device);
        let memory = agent.memory();
        let _ended = agent
            .ended
            .wait_while(memory, |m| m.dialogs.contains_key(&name))
            .unwrap_or_else(|e| e.into_inner());
    }
    Ok(())
}

/// The drives to ask about: those named (each must be a locked BitLocker drive that a secret
/// opens), or every such drive.
fn choose(known: Vec<DeviceInfo>, named: &[String]) -> Result<Vec<DeviceInfo>, OpenError> {
    let locked = |d: &DeviceInfo| d.bitlocker && d.state == DeviceState::Locked;
    if named.is_empty() {
        let chosen: Vec<DeviceInfo> = known
            .into_iter()
            .filter(|d| locked(d) && d.cannot_open.is_none())
            .collect();
        return if chosen.is_empty() {
            Err(OpenError::NothingToOpen)
        } else {
            Ok(chosen)
        };
    }
    named
        .iter()
        .map(|name| {
            let device = known
                .iter()
                .find(|d| d.device == *name && locked(d))
                .ok_or_else(|| OpenError::NotLocked {
                    device: name.clone(),
                })?;
            match &device.cannot_open {
                Some(why) => Err(OpenError::CannotOpen {
                    device: name.clone(),
                    cause: super::cause(name, why)
                        .trim_start_matches("cannot be opened here: ")
                        .to_owned(),
                }),
                None => Ok(device.clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, state: &str, removable: bool, cannot_open: Option<&str>) -> DeviceInfo {
        serde_json::from_value(serde_json::json!({
            "device": name, "bitlocker": state != "plain", "state": state, "mountpoint": null,
            "decrypted": null, "label": null, "size_bytes": 1, "owner": null,
            "removable": removable, "cannot_open": cannot_open,
        }))
        .unwrap()
    }

    fn known() -> Vec<DeviceInfo> {
        vec![
            device("/dev/nvme0n1p3", "locked", false, None),
            device("/dev/sdb1", "mounted", true, None),
            device("/dev/sdb2", "plain", true, None),
            device(
                "/dev/nvme0n1p4",
                "locked",
                false,
                Some("/dev/nvme0n1p4: cannot be opened here: only a TPM protects it"),
            ),
            device("/dev/sdc1", "locked", true, None),
        ]
    }

    #[test]
    fn every_locked_drive_a_secret_opens_internal_ones_too() {
        let names: Vec<String> = choose(known(), &[])
            .unwrap()
            .into_iter()
            .map(|d| d.device)
            .collect();
        assert_eq!(names, ["/dev/nvme0n1p3", "/dev/sdc1"]);
        assert!(matches!(
            choose(vec![device("/dev/sdb1", "mounted", true, None)], &[]),
            Err(OpenError::NothingToOpen)
        ));
    }

    #[test]
    fn a_named_drive_must_be_locked_and_openable() {
        let chosen = choose(known(), &["/dev/nvme0n1p3".into()]).unwrap();
        assert_eq!(chosen[0].device, "/dev/nvme0n1p3");
        let err = choose(known(), &["/dev/sdb1".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/sdb1: not a locked BitLocker drive the daemon knows"
        );
        let err = choose(known(), &["/dev/nvme0n1p4".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/nvme0n1p4: cannot be opened here: only a TPM protects it"
        );
    }
}
