//! `umount.guilocker`: what umount(8) runs when a person unmounts a volume guilocker mounted.
//!
//! The daemon mounts as root and records `uhelper=guilocker` in libmount's utab. A user may
//! not unmount a root mount, except through such a helper: util-linux then runs
//! `/sbin/umount.guilocker MOUNTPOINT [-l] [-f] …` as that user (privileges dropped). That is
//! the path of a file manager's unmount button (gvfs runs `umount MOUNTPOINT` for a mount
//! udisks does not know) and of a plain `umount` in a terminal. We ask the daemon to put the
//! volume away, which authorizes the caller by SO_PEERCRED exactly as `guilocker unmount`:
//! its owner or root. Nothing is unmounted here: the daemon unmounts, locks and powers off.
//!
//! Failures are said as umount(8) says them, `umount: TARGET: …` with its exit codes, and a
//! busy volume as "target is busy", the words gvfs looks for to show who holds it.

use crate::client::{Client, ClientError};
use crate::protocol::{ErrorKind, Request, Response, DEFAULT_SOCKET, SOCKET_ENV};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::ExitCode;

/// The name umount(8) looks for: `umount.<uhelper>`.
pub const NAME: &str = "umount.guilocker";

/// mount(8)'s exit codes (util-linux libmount.h, `MNT_EX_*`).
mod exit {
    pub const USAGE: u8 = 1;
    pub const FAIL: u8 = 32;
}

/// Is this process `umount.guilocker` (argv[0], a link to the guilocker binary)?
pub fn invoked_as(argv0: &OsStr) -> bool {
    std::path::Path::new(argv0).file_name() == Some(OsStr::new(NAME))
}

/// What umount(8) hands a helper: the mountpoint, then its flags.
#[derive(Debug, PartialEq, Eq)]
struct Invocation {
    target: PathBuf,
    /// `-l` or `-f`: the person asked for it to go even if busy.
    force: bool,
}

fn parse(args: &[OsString]) -> Option<Invocation> {
    let mut target = None;
    let mut force = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-l" | "-f" | "--lazy" | "--force") => force = true,
            // `-t TYPE` (a subtype) and `-N NAMESPACE` carry a value; the other flags (-n,
            // -r, -v) do not change what we do.
            Some("-t" | "-N") => {
                args.next();
            }
            Some(flag) if flag.starts_with('-') => {}
            _ if target.is_none() => target = Some(PathBuf::from(arg)),
            _ => return None,
        }
    }
    Some(Invocation {
        target: target?,
        force,
    })
}

/// `umount.guilocker MOUNTPOINT [FLAGS]`; `args` without argv[0].
pub fn main(args: &[OsString]) -> ExitCode {
    crate::i18n::init();
    let Some(call) = parse(args) else {
        eprintln!("umount: usage: {NAME} MOUNTPOINT [-l] [-f] [-n] [-r] [-v] [-t TYPE] [-N NS]");
        return ExitCode::from(exit::USAGE);
    };
    let target = call.target.display().to_string();
    match put_away(&call) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (code, said) = umount_words(&e);
            eprintln!("umount: {target}: {said}");
            if let ClientError::Daemon { message, .. } = &e {
                eprintln!("guilocker: {}", crate::i18n::localize(message));
            }
            ExitCode::from(code)
        }
    }
}

fn put_away(call: &Invocation) -> Result<(), ClientError> {
    let socket = std::env::var_os(SOCKET_ENV).map_or(PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    let mut client = Client::connect(&socket)?;
    match client.request(&Request::Unmount {
        target: Some(call.target.display().to_string()),
        all: false,
        force: call.force,
        no_power_off: false,
    })? {
        Response::Unmounted { .. } => Ok(()),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// umount(8)'s exit code and first words for a refusal. "target is busy" stays English:
/// gvfs matches it to show the "Volume is busy" dialog with the processes.
fn umount_words(e: &ClientError) -> (u8, String) {
    match e {
        ClientError::Daemon {
            kind: ErrorKind::Busy,
            ..
        } => (exit::FAIL, "target is busy.".into()),
        ClientError::Daemon {
            kind: ErrorKind::NotAuthorized,
            ..
        } => (
            exit::USAGE,
            tr::tr!("only the person who unlocked it, or root, may unmount it."),
        ),
        other => (exit::FAIL, other.localized()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn takes_the_mountpoint_and_umounts_flags() {
        let plain = parse(&args(&["/media/alice/STICK"])).unwrap();
        assert_eq!(plain.target, PathBuf::from("/media/alice/STICK"));
        assert!(!plain.force);
        let lazy = parse(&args(&[
            "/media/alice/MY STICK",
            "-n",
            "-l",
            "-t",
            "fuse.x",
        ]))
        .unwrap();
        assert_eq!(lazy.target, PathBuf::from("/media/alice/MY STICK"));
        assert!(lazy.force);
        assert!(parse(&args(&["-v"])).is_none());
        assert!(parse(&args(&["/a", "/b"])).is_none());
    }

    #[test]
    fn named_by_its_link() {
        assert!(invoked_as(OsStr::new("/sbin/umount.guilocker")));
        assert!(invoked_as(OsStr::new("umount.guilocker")));
        assert!(!invoked_as(OsStr::new("/usr/bin/guilocker")));
    }

    #[test]
    fn busy_is_said_in_umounts_words() {
        let busy = ClientError::Daemon {
            kind: ErrorKind::Busy,
            message: "/media/a/S: in use by bash (pid 1); close them, or use --force".into(),
        };
        assert_eq!(umount_words(&busy), (32, "target is busy.".to_owned()));
    }
}
