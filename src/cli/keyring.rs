//! `guilocker remembered` and `guilocker forget`: the secrets the dialog keeps in the
//! keyring. The keyring is reached through the dialog binary, the one program of ours that
//! loads GLib; this binary only finds the volume's GUID.

use super::{dialog, exit, Failure, SocketArg};
use crate::bitlocker::guid;
use crate::client::Client;
use crate::protocol::{Request, Response};
use clap::Args;
use std::process::Command;
use tr::tr;

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// A BitLocker device (/dev/sdb1, asked of the daemon) or a volume GUID
    pub target: String,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn remembered() -> Result<(), Failure> {
    keyring_command(&["--remembered"])
}

pub fn forget(args: ForgetArgs) -> Result<(), Failure> {
    let guid = match guid::normalize(&args.target) {
        Some(guid) => guid,
        None => guid_of(&args)?,
    };
    // Without its secret a drive cannot be opened at login: out of that list too.
    crate::agent::at_login::forget(&guid);
    keyring_command(&["--forget", &guid])
}

/// The GUID of the volume on a device, from its metadata (no secret needed).
fn guid_of(args: &ForgetArgs) -> Result<String, Failure> {
    let request = Request::Inspect {
        device: args.target.clone(),
    };
    match Client::connect(&args.socket.socket)?.request(&request)? {
        Response::Inspected { volume, .. } => Ok(volume.guid.to_string()),
        other => Err(super::unexpected(&args.target, &other)),
    }
}

/// Runs the dialog binary's keyring command; its output and exit status are ours.
fn keyring_command(args: &[&str]) -> Result<(), Failure> {
    let path = dialog::find()?;
    let status = Command::new(&path).args(args).status().map_err(|e| {
        Failure::new(
            exit::FAILED,
            tr!(
                "cannot run {program}: {cause}",
                program = path.display(),
                cause = e
            ),
        )
    })?;
    match status.code() {
        Some(0) => Ok(()),
        // It has said why on stderr.
        Some(code) => std::process::exit(code),
        None => Err(Failure::new(
            exit::FAILED,
            tr!(
                "{program} ended by a signal ({status})",
                program = path.display(),
                status
            ),
        )),
    }
}
