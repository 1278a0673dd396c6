//! Command line: argument definitions and dispatch. Client commands talk to the daemon.

mod dialog;
pub mod docs;
pub mod help;
mod inspect;
mod keyring;
mod monitor;
mod status;
pub mod umount_helper;
mod unlock;
mod unmount;

use crate::client::ClientError;
use crate::protocol::{ErrorKind, DEFAULT_SOCKET, SOCKET_ENV};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tr::tr;

/// Exit codes other tools and scripts rely on.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const WRONG_SECRET: u8 = 3;
    pub const CANNOT_OPEN: u8 = 4;
    pub const BUSY: u8 = 5;
}

#[derive(Debug, Parser)]
#[command(
    name = "guilocker",
    version,
    about = "Unlock and mount BitLocker USB sticks",
    long_about = "Unlock and mount BitLocker USB sticks.\n\n\
        A root daemon (guilocker daemon) notices a BitLocker drive when it is plugged in; the \
        login agent (guilocker agent) asks for its password in a window, and the drive is \
        mounted for you under /media/<you>/<label>. guilocker unmount puts it away safely. \
        The other commands talk to the daemon: members of the plugdev group may unlock, \
        and only a volume's owner (or root) may unmount it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct SocketArg {
    /// Control socket of the daemon
    #[arg(long, value_name = "PATH", env = SOCKET_ENV, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the root service that detects, unlocks and mounts drives
    Daemon {
        /// Stay in the foreground (for systemd); log to stderr
        #[arg(long)]
        foreground: bool,
        /// Configuration file (default /etc/guilocker/config.toml; see guilocker.conf(5))
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Control socket to listen on
        #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Pidfile, locked while the daemon runs (a second daemon refuses to start)
        #[arg(long, value_name = "PATH", default_value = crate::daemon::DEFAULT_PIDFILE)]
        pidfile: PathBuf,
        /// Runtime directory for engine views and state (root's, writable by no one else)
        #[arg(long, value_name = "DIR", default_value = crate::daemon::DEFAULT_RUNTIME_DIR)]
        runtime_dir: PathBuf,
    },
    /// Show the drives the daemon knows
    Status {
        /// One JSON array, for programs
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Unlock (and mount) a BitLocker drive
    Unlock(unlock::UnlockArgs),
    /// Unmount and lock a drive again
    Unmount(unmount::UnmountArgs),
    /// The per-user login agent: asks for passwords when drives are plugged in
    Agent {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Ask for a locked drive's password in a window and open it (a disk inside the
    /// computer too, which is never asked about at login); every locked drive when none is named
    Open {
        /// The drives to open (e.g. /dev/nvme0n1p3)
        #[arg(value_name = "DEVICE")]
        devices: Vec<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The unlock dialog, for the agent (secrets travel on stdin/stdout, never argv)
    #[command(hide = true)]
    Dialog,
    /// Show what a drive's BitLocker metadata says (no secret needed)
    Inspect(inspect::InspectArgs),
    /// The decrypting engine, run by the daemon (the volume key arrives on fd 3)
    #[command(hide = true)]
    Engine {
        /// The encrypted device or image
        device: PathBuf,
        /// Where to serve the decrypted view (an empty directory)
        mountpoint: PathBuf,
        #[arg(long)]
        read_only: bool,
    },
    /// List the passwords and recovery keys remembered in your keyring
    Remembered,
    /// Remove a drive's remembered password or recovery key from your keyring
    Forget(keyring::ForgetArgs),
    /// Print a completion script for bash, zsh, fish, elvish or PowerShell
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages into DIR (for packaging)
    #[command(hide = true)]
    ManPages { dir: PathBuf },
    /// Print the help texts as a translation template (for po/guilocker.pot)
    #[command(hide = true)]
    Messages,
    /// For the polkit rule (packaging/polkit): exits 0 when DEVICE (a partition, or
    /// guilocker's mapping over it) is unlocked by guilocker for USER, 1 otherwise
    #[command(hide = true)]
    Owns { device: String, user: String },
    /// Print daemon events as they happen
    Monitor {
        /// One JSON object per line
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

/// `guilocker owns DEVICE USER`: polkit runs it (as polkitd) to learn whether udisks may
/// unmount and lock DEVICE for USER without an administrator's password. It reads the
/// daemon's marks in /run/guilocker (root's), never asks the daemon.
fn owns(device: &str, user: &str) -> Result<(), Failure> {
    let owner = crate::daemon::desktop::owner_of(
        std::path::Path::new(crate::daemon::DEFAULT_RUNTIME_DIR),
        std::path::Path::new("/sys/class/block"),
        device,
    );
    match owner {
        Some(owner) if owner == user => Ok(()),
        _ => Err(Failure::new(
            exit::FAILED,
            format!("{device}: not unlocked by guilocker for {user}"),
        )),
    }
}

/// A failure a client command reports: one line on stderr and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A reply that does not answer the request: a daemon of another version, or a bug.
pub fn unexpected(target: &str, reply: &impl std::fmt::Debug) -> Failure {
    Failure::new(
        exit::FAILED,
        format!(
            "{target}: {}",
            tr!(
                "unexpected reply from the daemon: {reply}",
                reply = format!("{reply:?}")
            )
        ),
    )
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Daemon {
                kind: ErrorKind::WrongSecret,
                ..
            } => exit::WRONG_SECRET,
            ClientError::Daemon {
                kind: ErrorKind::CannotOpen,
                ..
            } => exit::CANNOT_OPEN,
            ClientError::Daemon {
                kind: ErrorKind::BadRequest,
                ..
            } => exit::USAGE,
            ClientError::Daemon {
                kind: ErrorKind::Busy,
                ..
            } => exit::BUSY,
            _ => exit::FAILED,
        };
        Self::new(code, e.localized())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::new(exit::FAILED, e.to_string())
    }
}

/// The `guilocker` binary: what people read follows their locale, `--help` included; the
/// daemon, the engine and the generated documentation stay in English.
pub fn main() -> ExitCode {
    let english = ["daemon", "engine", "man-pages", "messages"];
    // args_os: an argument that is not UTF-8 (a file name) is clap's to judge, not a panic.
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    let args: Vec<std::ffi::OsString> = argv.collect();
    // umount(8) runs us through the link /sbin/umount.guilocker.
    if umount_helper::invoked_as(&argv0) {
        return umount_helper::main(&args);
    }
    let asks_help = args.iter().any(|a| a == "-h" || a == "--help");
    let first = args.first().and_then(|a| a.to_str());
    if asks_help || !first.is_some_and(|first| english.contains(&first)) {
        crate::i18n::init();
    }
    let matches = help::localized_command().get_matches();
    match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => run(cli),
        Err(e) => e.exit(),
    }
}

pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Daemon {
            foreground,
            config,
            socket,
            pidfile,
            runtime_dir,
        } => crate::daemon::run(crate::daemon::Options {
            foreground,
            config,
            socket,
            pidfile,
            runtime_dir,
        })
        .map_err(|e| Failure::new(exit::FAILED, format!("{e:#}"))),
        Command::Status { json, socket } => status::run(&socket.socket, json),
        Command::Unlock(args) => unlock::run(args),
        Command::Unmount(args) => unmount::run(args),
        Command::Monitor { json, socket } => monitor::run(&socket.socket, json),
        Command::Dialog => dialog::run(),
        Command::Engine {
            device,
            mountpoint,
            read_only,
        } => {
            crate::logging::init();
            crate::engine::run(&crate::engine::Options {
                device,
                mountpoint,
                read_only,
            })
            .map_err(|e| Failure::new(exit::FAILED, e.to_string()))
        }
        Command::Inspect(args) => inspect::run(args),
        Command::Completions { shell } => docs::completions(shell),
        Command::ManPages { dir } => docs::man_pages(&dir).map(|_| ()),
        Command::Messages => help::messages(),
        Command::Owns { device, user } => owns(&device, &user),
        Command::Remembered => keyring::remembered(),
        Command::Forget(args) => keyring::forget(args),
        Command::Open { devices, socket } => {
            crate::agent::open(socket.socket, &devices).map_err(|e| {
                let code = match e {
                    crate::agent::OpenError::CannotOpen { .. } => exit::CANNOT_OPEN,
                    _ => exit::FAILED,
                };
                Failure::new(code, crate::i18n::localize(&e.to_string()))
            })
        }
        Command::Agent { socket } => crate::agent::run(crate::agent::Options {
            socket: socket.socket,
        })
        .map_err(|e| Failure::new(exit::FAILED, format!("{e:#}"))),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) => {
            eprintln!("guilocker: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
