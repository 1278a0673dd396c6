//! `guilocker dialog`: hands over to the GTK binary, which lives apart so that nothing else
//! ever maps GTK.

use super::{exit, Failure};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use tr::tr;

const DIALOG_BIN: &str = "guilocker-dialog";
/// Where `packaging/install.sh` puts it.
const LIBEXEC: [&str; 2] = ["/usr/local/libexec/guilocker", "/usr/libexec/guilocker"];

/// Next to this executable (a build tree), else the libexec directories.
pub fn find() -> Result<PathBuf, Failure> {
    let here = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(DIALOG_BIN)));
    here.into_iter()
        .chain(LIBEXEC.iter().map(|d| PathBuf::from(d).join(DIALOG_BIN)))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Failure::new(
                exit::FAILED,
                tr!(
                    "{program} is not installed (looked next to guilocker and in {dirs})",
                    program = DIALOG_BIN,
                    dirs = LIBEXEC.join(", ")
                ),
            )
        })
}

pub fn run() -> Result<(), Failure> {
    let path = find()?;
    // exec keeps stdin and stdout: they are the agent's pipes.
    let err = std::process::Command::new(&path).exec();
    Err(Failure::new(
        exit::FAILED,
        tr!(
            "cannot run {program}: {cause}",
            program = path.display(),
            cause = err
        ),
    ))
}
