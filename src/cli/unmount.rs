//! `guilocker unmount`: put a drive away safely.

use super::{Failure, SocketArg};
use crate::client::Client;
use crate::protocol::{Request, Response};
use clap::Args;
use tr::tr;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["target", "all"]))]
pub struct UnmountArgs {
    /// Device (/dev/sdb1) or mountpoint
    pub target: Option<String>,
    /// Everything you have unlocked (root: everything)
    #[arg(long)]
    pub all: bool,
    /// Detach even if files are open (lazy unmount)
    #[arg(long)]
    pub force: bool,
    /// Keep a USB stick powered afterwards (it is flushed either way)
    #[arg(long)]
    pub no_power_off: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn run(args: UnmountArgs) -> Result<(), Failure> {
    let target = args.target.as_deref().map(|t| {
        // A relative mountpoint means the one under the current directory.
        if !t.starts_with('/') && std::path::Path::new(t).is_dir() {
            std::fs::canonicalize(t)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| t.to_owned())
        } else {
            t.to_owned()
        }
    });
    let mut client = Client::connect(&args.socket.socket)?;
    match client.request(&Request::Unmount {
        target,
        all: args.all,
        force: args.force,
        no_power_off: args.no_power_off,
    })? {
        Response::Unmounted { devices, power } => {
            if devices.is_empty() && args.all {
                eprintln!("guilocker: {}", tr!("nothing to unmount"));
            }
            // Put away all the same: only the stick stays powered, and the person must
            // know why before pulling it out.
            for disk in &power {
                if let Some(refusal) = disk.refusal() {
                    eprintln!("guilocker: {}: {refusal}", disk.disk);
                }
            }
            Ok(())
        }
        other => Err(super::unexpected(
            args.target.as_deref().unwrap_or("--all"),
            &other,
        )),
    }
}
