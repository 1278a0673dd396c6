//! Deriving the volume key, and dislocker, the fallback engine: a supervised FUSE child.
//!
//! We derive the volume key ourselves from the metadata (any Unicode password, both .BEK
//! layouts, every protector of the right kind); a wrong secret is answered without starting
//! any child. dislocker then gets the finished key in a memfd (`-k`). When our reader cannot
//! handle the volume at all, dislocker's own methods are the fallback. Then the
//! secret still never reaches argv or the environment: the password goes to its stdin, the
//! recovery password through a pty that is its controlling terminal (it reads that only from
//! /dev/tty), a startup key as a memfd passed as fd 3. dislocker is never run with `-v`: its
//! debug log prints the password.

use super::error::DaemonError;
use super::mounts::{mounted_at, MountWatch};
use crate::bitlocker::{recovery, BitlockerError, Fvek, Key, Metadata};
use crate::process::{drain_into, set_nonblocking, Child, Command, Stdio};
use crate::protocol::UnlockSecret;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

pub const DISLOCKER: &str = "dislocker";
/// Name of the decrypted view inside dislocker's mount.
pub const DECRYPTED_FILE: &str = "dislocker-file";
const FUSE_TYPE: &str = "fuse.dislocker";
/// Key derivation is ~0.5 s on a desktop; allow for slow machines and slow sticks.
const UNLOCK_TIMEOUT: Duration = Duration::from_secs(90);

/// Derives the volume key natively. `Ok(None)`: our reader cannot handle this volume, let
/// dislocker try. A wrong secret or a volume that cannot be opened is a final answer.
pub(super) fn native_key(
    device: &str,
    meta: &Metadata,
    secret: &UnlockSecret,
) -> Result<Option<Fvek>, DaemonError> {
    let key = match secret {
        UnlockSecret::Password { value } => Key::Password(value),
        UnlockSecret::RecoveryPassword { value } => Key::RecoveryPassword(value),
        UnlockSecret::StartupKey { bek } => Key::StartupKey(bek.expose()),
        UnlockSecret::ClearKey => Key::ClearKey,
    };
    match crate::bitlocker::unlock(meta, key) {
        Ok(fvek) => Ok(Some(fvek)),
        // Asked to open without a secret, but protection is not suspended: not a typo.
        Err(BitlockerError::MissingProtector { .. })
            if matches!(secret, UnlockSecret::ClearKey) =>
        {
            Err(DaemonError::CannotOpen {
                device: device.into(),
                cause: "protection is not suspended: a password or key is needed".into(),
            })
        }
        Err(e) if e.is_wrong_secret() => Err(DaemonError::WrongSecret {
            device: device.into(),
            cause: e.to_string(),
        }),
        Err(e) if e.cannot_open_here() => Err(DaemonError::CannotOpen {
            device: device.into(),
            cause: e.to_string(),
        }),
        Err(e) => {
            log::warn!("{device}: {e}; letting dislocker derive the key");
            Ok(None)
        }
    }
}

/// A password dislocker can be given on one line.
fn password_line(device: &str, password: &str) -> Result<Zeroizing<Vec<u8>>, DaemonError> {
    if password.is_empty() {
        return Err(DaemonError::WrongSecret {
            device: device.into(),
            cause: "the password is empty".into(),
        });
    }
    if password.contains(['\n', '\r', '\0']) {
        return Err(DaemonError::WrongSecret {
            device: device.into(),
            cause: "a password cannot contain line breaks".into(),
        });
    }
    let mut line = Zeroizing::new(Vec::with_capacity(password.len() + 1));
    line.extend_from_slice(password.as_bytes());
    line.push(b'\n');
    Ok(line)
}

pub(super) fn memfd_with(
    device: &str,
    name: &std::ffi::CStr,
    bytes: &[u8],
) -> Result<OwnedFd, DaemonError> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fail =
        |e: nix::Error| DaemonError::failed(device, format!("cannot create a key buffer: {e}"));
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC).map_err(fail)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)
        .map_err(|e| DaemonError::failed(device, format!("cannot fill the key buffer: {e}")))?;
    Ok(file.into())
}

/// Starts dislocker on `device`, serving the decrypted view under `dir`: with the key we
/// derived when there is one (`-k`), else with its own methods for `secret`. Waits until
/// its FUSE mount is there or it has failed.
pub fn start_dislocker(
    device: &str,
    secret: &UnlockSecret,
    fvek: Option<&Fvek>,
    dir: &Path,
    read_only: bool,
) -> Result<Child, DaemonError> {
    let mut cmd = Command::new(DISLOCKER).args(["-V", device]);
    if read_only {
        cmd = cmd.arg("-r");
    }
    let mut stdin_line = None;
    let mut tty_line = None;
    cmd = if let Some(fvek) = fvek {
        let fd = memfd_with(device, c"guilocker-fvek", &fvek.key_file())?;
        cmd.args(["-k", "/proc/self/fd/3"]).fd3(fd)
    } else {
        match secret {
            UnlockSecret::Password { value } => {
                stdin_line = Some(password_line(device, value.expose())?);
                cmd.arg("-u").stdin(Stdio::Pipe)
            }
            UnlockSecret::RecoveryPassword { value } => {
                let key =
                    recovery::normalize(value.expose()).map_err(|e| DaemonError::WrongSecret {
                        device: device.into(),
                        cause: e.to_string(),
                    })?;
                let mut line = Zeroizing::new(key.as_bytes().to_vec());
                line.push(b'\n');
                tty_line = Some(line);
                cmd.arg("-p").controlling_tty()
            }
            UnlockSecret::StartupKey { bek } => {
                let fd = memfd_with(device, c"guilocker-bek", bek.expose())?;
                cmd.args(["-f", "/proc/self/fd/3"]).fd3(fd)
            }
            UnlockSecret::ClearKey => cmd.arg("-c"),
        }
    };
    // After "--" the arguments are FUSE's: stay in the foreground so we supervise it.
    let cmd = cmd.arg("--").arg("-f").arg(dir);

    let mut child = cmd.spawn().map_err(|source| DaemonError::Process {
        device: device.into(),
        context: "cannot start the unlock",
        source,
    })?;
    if let (Some(line), Some(stdin)) = (&stdin_line, child.stdin.as_mut()) {
        // A failed write means dislocker already exited; its output will say why.
        let _ = stdin.write_all(line);
    }
    child.stdin = None;
    drop(stdin_line);

    match wait_for_mount(&mut child, dir, FUSE_TYPE, tty_line) {
        Ok(streams) => {
            keep_draining(device, streams, false);
            Ok(child)
        }
        Err(Outcome::Exited(output)) => Err(classify(device, secret, &output)),
        Err(Outcome::TimedOut) => Err(timed_out(device, &mut child, dir, "dislocker")),
    }
}

/// Stops a child that did not finish unlocking in time, and its half-made mount.
pub(super) fn timed_out(device: &str, child: &mut Child, dir: &Path, what: &str) -> DaemonError {
    child.terminate(Duration::from_secs(5));
    let _ = super::mount::unmount_path(dir, true);
    DaemonError::failed(
        device,
        format!(
            "{what} did not finish unlocking within {} s",
            UNLOCK_TIMEOUT.as_secs()
        ),
    )
}

/// An engine's stdout and pty must stay open as long as it runs: closing the pty master
/// hangs up its controlling terminal (SIGHUP), closing the pipe makes its next log line a
/// SIGPIPE. A small thread owns them and ends when the engine does. dislocker's output is
/// discarded (its pty echoes the recovery key); ours (`relay`) goes to the log, line by line:
/// it never holds a secret.
pub(super) fn keep_draining(device: &str, streams: [Option<std::fs::File>; 2], relay: bool) {
    let [stdout, pty] = streams;
    let name = device.to_owned();
    let spawned = std::thread::Builder::new()
        .name(format!("engine-out {device}"))
        .spawn(move || {
            let _pty = pty;
            if let Some(mut out) = stdout {
                crate::process::set_blocking(&out);
                let mut sink = Zeroizing::new(Vec::new());
                while crate::process::drain_into(&mut out, &mut sink) {
                    if !relay {
                        sink.clear();
                        continue;
                    }
                    while let Some(end) = sink.iter().position(|&b| b == b'\n') {
                        relay_line(&name, &String::from_utf8_lossy(&sink[..end]));
                        sink.drain(..=end);
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("{device}: cannot start the output reader for dislocker: {e}");
    }
}

/// One line of the native engine's log (`guilocker[PID]: LEVEL: text`) into ours, at its level.
fn relay_line(device: &str, line: &str) {
    let text = line
        .split_once("]: ")
        .map_or(line, |(_, rest)| rest)
        .trim_end();
    match text.split_once(": ") {
        Some(("warn" | "error", msg)) => log::warn!("{device}: engine: {msg}"),
        Some((_, msg)) => log::info!("{device}: engine: {msg}"),
        None => log::info!("{device}: engine: {text}"),
    }
}

pub(super) enum Outcome {
    /// The engine exited; what it printed (dislocker's may echo a recovery key: never log
    /// it whole).
    Exited(Zeroizing<Vec<u8>>),
    TimedOut,
}

/// What dislocker prints on the terminal before it reads the recovery password. It flushes
/// pending terminal input when it sets the terminal up, so the key is written only after this.
const RECOVERY_PROMPT: &[u8] = b"Enter the recovery password";

/// Waits for the FUSE mount of type `fs_type` at `dir` (mountinfo signals POLLPRI on every
/// change) or the child's exit (its pidfd becomes readable), draining its output meanwhile, and answering
/// the recovery-password prompt with `tty_line`.
pub(super) fn wait_for_mount(
    child: &mut Child,
    dir: &Path,
    fs_type: &str,
    mut tty_line: Option<Zeroizing<Vec<u8>>>,
) -> Result<[Option<std::fs::File>; 2], Outcome> {
    let deadline = Instant::now() + UNLOCK_TIMEOUT;
    let watch = MountWatch::open().ok();
    let mut output = Zeroizing::new(Vec::new());
    let mut stdout = child.stdout.take();
    let mut pty = child.pty.take();
    for f in stdout.iter().chain(pty.iter()) {
        set_nonblocking(f);
    }
    loop {
        if mounted_at(dir).as_deref() == Some(fs_type) {
            return Ok([stdout, pty]);
        }
        if child.try_status().is_some() {
            for f in stdout.iter_mut().chain(pty.iter_mut()) {
                while drain_into(f, &mut output) {
                    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
                    if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
                        break;
                    }
                }
            }
            return Err(Outcome::Exited(output));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Outcome::TimedOut);
        }
        let mut fds = vec![PollFd::new(child.pidfd.as_fd(), PollFlags::POLLIN)];
        if let Some(w) = &watch {
            fds.push(PollFd::new(w.fd(), PollFlags::POLLPRI));
        }
        let first_stream = fds.len();
        for f in stdout.iter().chain(pty.iter()) {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
        }
        // Without a mountinfo watch, re-check every 50 ms.
        let cap = if watch.is_some() { 60_000 } else { 50 };
        let ms = left.as_millis().min(cap) as i32 + 1;
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        );
        let ready: Vec<bool> = fds[first_stream..]
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut streams: Vec<&mut Option<std::fs::File>> = vec![&mut stdout, &mut pty];
        streams.retain(|s| s.is_some());
        for (slot, ready) in streams.into_iter().zip(ready) {
            if ready {
                if let Some(f) = slot.as_mut() {
                    if !drain_into(f, &mut output) {
                        // EOF or EIO (pty closed): stop polling it.
                        *slot = None;
                    }
                }
            }
        }
        if tty_line.is_some() && contains(&output, RECOVERY_PROMPT) {
            if let (Some(line), Some(tty)) = (tty_line.take(), pty.as_mut()) {
                // The tty is non-blocking now; 57 bytes always fit in its buffer.
                let _ = tty.write_all(&line);
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Turns dislocker's last words into a message a person understands. Only fixed phrases are
/// matched; its output is never passed on (the pty echo contains the recovery key).
fn classify(device: &str, secret: &UnlockSecret, output: &[u8]) -> DaemonError {
    // A lossy copy of the pty echo may hold the recovery key: wipe it too.
    let text = Zeroizing::new(String::from_utf8_lossy(output).into_owned());
    let wrong = |cause: &str| DaemonError::WrongSecret {
        device: device.into(),
        cause: cause.into(),
    };
    let cannot = |cause: &str| DaemonError::CannotOpen {
        device: device.into(),
        cause: cause.into(),
    };
    if text.contains("None of the provided decryption mean is decrypting the keys") {
        return match secret {
            UnlockSecret::Password { value } if !value.expose().is_ascii() => wrong(
                "wrong password (note: dislocker cannot check passwords with non-ASCII characters)",
            ),
            UnlockSecret::Password { .. } => wrong("wrong password"),
            UnlockSecret::RecoveryPassword { .. } => wrong("wrong recovery key"),
            UnlockSecret::StartupKey { .. } => {
                wrong("this startup key (.BEK) does not open this drive, or dislocker cannot read its format")
            }
            UnlockSecret::ClearKey => cannot("protection is not suspended: a password or key is needed"),
        };
    }
    if text.contains("Cannot parse volume header") || text.contains("Unable to read metadata") {
        return cannot(
            "the BitLocker metadata cannot be read; encryption may still be in progress (let Windows finish it)",
        );
    }
    if text.contains("The state of the volume is not OK") || text.contains("is not fully encrypted")
    {
        return cannot("encryption is still in progress; let Windows finish it first");
    }
    if text.contains("fuse: device not found") || text.contains("/dev/fuse") {
        return DaemonError::failed(device, "FUSE is not available (is the fuse module loaded?)");
    }
    if text.contains("Can't open volume") || text.contains("No such file") {
        return DaemonError::failed(device, "the device cannot be opened (was it removed?)");
    }
    DaemonError::failed(device, "dislocker could not unlock the drive")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_lines() {
        assert_eq!(
            &password_line("/dev/x", "pässwörd").unwrap()[..],
            "pässwörd\n".as_bytes()
        );
        assert!(matches!(
            password_line("/dev/x", ""),
            Err(DaemonError::WrongSecret { .. })
        ));
        assert!(matches!(
            password_line("/dev/x", "a\nb"),
            Err(DaemonError::WrongSecret { .. })
        ));
    }

    #[test]
    fn classification_never_repeats_output() {
        let secret = UnlockSecret::RecoveryPassword {
            value: "111111-111111".into(),
        };
        let out = b"Enter the recovery password: 111111-111111\nNone of the provided decryption mean is decrypting the keys. Abort.";
        let err = classify("/dev/sdb1", &secret, out);
        assert!(matches!(err, DaemonError::WrongSecret { .. }));
        assert_eq!(err.to_string(), "/dev/sdb1: wrong recovery key");
        let err = classify("/dev/sdb1", &secret, b"111111 something odd");
        assert!(!err.to_string().contains("111111"));
        let pw = UnlockSecret::Password { value: "x".into() };
        let err = classify(
            "/dev/sdb1",
            &pw,
            b"[CRITICAL] Cannot parse volume header. Abort.",
        );
        assert!(matches!(err, DaemonError::CannotOpen { .. }));
    }
}
