//! `guilocker unlock`: read the secret here (never from argv), send it to the daemon.

use super::{exit, Failure, SocketArg};
use crate::bitlocker::recovery;
use crate::client::{Client, ClientError};
use crate::protocol::{ErrorKind, Protector, Request, Response, UnlockSecret};
use crate::secret::{SecretBytes, SecretString};
use clap::Args;
use std::io::Read;
use tr::tr;
use zeroize::Zeroizing;

/// Larger inputs are not passwords or .BEK files.
const MAX_SECRET: u64 = 64 * 1024;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("secret").args(["password_stdin", "recovery_key_stdin", "bek"]))]
pub struct UnlockArgs {
    /// The BitLocker device, e.g. /dev/sdb1
    pub device: String,
    /// Read the password from standard input (one line)
    #[arg(long)]
    pub password_stdin: bool,
    /// Read the 48-digit recovery key from standard input
    #[arg(long)]
    pub recovery_key_stdin: bool,
    /// Use a startup key file (.BEK)
    #[arg(long, value_name = "FILE")]
    pub bek: Option<std::path::PathBuf>,
    /// Mount read-only
    #[arg(long)]
    pub read_only: bool,
    /// Only unlock; `status` shows the decrypted view
    #[arg(long)]
    pub no_mount: bool,
    /// Mount for this user (root only)
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
    #[command(flatten)]
    pub socket: SocketArg,
}

fn read_limited(
    device: &str,
    reader: impl Read,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let mut buf = Zeroizing::new(Vec::new());
    reader
        .take(MAX_SECRET + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            Failure::new(
                exit::FAILED,
                format!(
                    "{device}: {}",
                    tr!("cannot read {what}: {cause}", what, cause = e)
                ),
            )
        })?;
    if buf.len() as u64 > MAX_SECRET {
        return Err(Failure::new(
            exit::FAILED,
            format!("{device}: {}", tr!("{what} is larger than 64 KiB", what)),
        ));
    }
    Ok(buf)
}

/// One line from stdin, without its line ending. `recovery`: it should be a recovery key.
fn stdin_line(device: &str, recovery: bool) -> Result<SecretString, Failure> {
    let mut raw = read_limited(device, std::io::stdin().lock(), &tr!("standard input"))?;
    while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        raw.pop();
    }
    let text = std::str::from_utf8(&raw).map_err(|_| {
        Failure::new(
            exit::FAILED,
            format!(
                "{device}: {}",
                if recovery {
                    tr!("the recovery key on standard input is not UTF-8")
                } else {
                    tr!("the password on standard input is not UTF-8")
                }
            ),
        )
    })?;
    Ok(SecretString::from(text))
}

fn recovery_secret(device: &str, value: SecretString) -> Result<UnlockSecret, Failure> {
    let key = recovery::normalize(value.expose()).map_err(|e| {
        Failure::new(
            exit::WRONG_SECRET,
            crate::i18n::localize(&format!("{device}: {e}")),
        )
    })?;
    Ok(UnlockSecret::RecoveryPassword {
        value: SecretString::from(key.as_str()),
    })
}

fn prompt(device: &str) -> Result<UnlockSecret, Failure> {
    let typed = rpassword::prompt_password(tr!("Password or recovery key for {device}: ", device))
        .map_err(|e| {
            Failure::new(
                exit::FAILED,
                format!(
                    "{device}: {}",
                    tr!("cannot ask for the password ({cause}); use --password-stdin, --recovery-key-stdin or --bek", cause = e)
                ),
            )
        })?;
    let typed = SecretString::new(typed);
    if recovery::looks_like_recovery_key(typed.expose()) {
        recovery_secret(device, typed)
    } else {
        Ok(UnlockSecret::Password { value: typed })
    }
}

fn send(
    client: &mut Client,
    args: &UnlockArgs,
    secret: UnlockSecret,
) -> Result<Response, ClientError> {
    client.request(&Request::Unlock {
        device: args.device.clone(),
        secret,
        read_only: args.read_only,
        mount: !args.no_mount,
        owner: args.owner.clone(),
    })
}

pub fn run(args: UnlockArgs) -> Result<(), Failure> {
    let device = args.device.as_str();
    let given = if args.password_stdin {
        Some(UnlockSecret::Password {
            value: stdin_line(device, false)?,
        })
    } else if args.recovery_key_stdin {
        Some(recovery_secret(device, stdin_line(device, true)?)?)
    } else if let Some(path) = &args.bek {
        let file = std::fs::File::open(path).map_err(|e| {
            Failure::new(
                exit::FAILED,
                format!(
                    "{device}: {}",
                    tr!(
                        "cannot open {path}: {cause}",
                        path = path.display(),
                        cause = e
                    )
                ),
            )
        })?;
        let bytes = read_limited(device, file, &path.display().to_string())?;
        Some(UnlockSecret::StartupKey {
            bek: SecretBytes::new(bytes.to_vec()),
        })
    } else {
        None
    };
    let mut client = Client::connect(&args.socket.socket)?;
    let response = match given {
        Some(secret) => send(&mut client, &args, secret)?,
        None => {
            // A volume whose protection is suspended opens without a secret; the daemon
            // says which volumes have a clear key when it knows, else we just try.
            let protectors = client
                .status()?
                .into_iter()
                .find(|d| d.device == device || d.device.strip_prefix("/dev/") == Some(device))
                .map(|d| d.protectors)
                .unwrap_or_default();
            let try_clear = protectors.is_empty() || protectors.contains(&Protector::ClearKey);
            let first = if try_clear {
                Some(send(&mut client, &args, UnlockSecret::ClearKey))
            } else {
                None
            };
            match first {
                Some(Ok(r)) => r,
                // Without the metadata we only guessed; with it, "cannot open" is the answer.
                Some(Err(ClientError::Daemon {
                    kind: ErrorKind::CannotOpen,
                    ..
                })) if protectors.is_empty() => send(&mut client, &args, prompt(device)?)?,
                None => send(&mut client, &args, prompt(device)?)?,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    };
    match response {
        Response::Unlocked { device: info } => {
            match (&info.mountpoint, &info.decrypted) {
                (Some(m), _) => println!(
                    "{}: {}",
                    info.device,
                    tr!("unlocked and mounted at {mountpoint}", mountpoint = m)
                ),
                (None, Some(d)) => println!(
                    "{}: {}",
                    info.device,
                    tr!("unlocked; decrypted view at {view}", view = d)
                ),
                _ => println!("{}: {}", info.device, tr!("unlocked")),
            }
            // Mounted otherwise than asked (read-only: Windows hibernated): say why.
            if let Some(notice) = &info.notice {
                println!(
                    "{}: {}",
                    info.device,
                    crate::text::escaped(&crate::i18n::localize(notice))
                );
            }
            Ok(())
        }
        other => Err(super::unexpected(&args.device, &other)),
    }
}
