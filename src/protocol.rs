//! The wire protocol: daemon control socket, and the agent↔dialog pipe.
//!
//! # Framing
//! Both channels carry newline-delimited JSON: one UTF-8 JSON object per line, terminated by
//! `\n`, at most [`MAX_FRAME`] bytes including the newline. A reader that sees a longer line
//! drops the connection with [`FrameError::TooLong`]; it never trusts a length from its peer.
//! Every object is tagged by `"type"` in snake_case. New optional fields are added with
//! `#[serde(default)]`, so older peers keep working; an incompatible change bumps [`VERSION`].
//!
//! # Control socket (`/run/guilocker/control.sock`)
//! A client connects and sends [`Request`]s; the daemon answers each with exactly one
//! [`Response`], in order. The first request should be `hello`:
//! ```json
//! {"type":"hello","version":1}
//! {"type":"hello","version":1,"server":"guilocker 0.1.0"}
//! ```
//! After `subscribe` is answered with `subscribed`, the connection becomes a one-way stream of
//! `event` responses until either side closes it.
//!
//! The daemon authorizes every request from the peer's `SO_PEERCRED`, never from anything the
//! client claims. A refused or failed request is answered with `error`, carrying an
//! [`ErrorKind`] for programs and a one-line message for people.
//!
//! # Dialog pipe
//! The agent runs `guilocker dialog` with pipes on its stdin and stdout. The agent writes
//! [`DialogInput`] lines to the dialog's stdin; the dialog writes [`DialogOutput`] lines to its
//! stdout. Secrets cross only this pipe, never argv or the environment. The dialog's exit status
//! is one of the `DIALOG_EXIT_*` codes.

use crate::secret::{SecretBytes, SecretString};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Write};
use thiserror::Error;
use tr::tr;
use zeroize::Zeroizing;

/// Protocol version spoken by this build.
pub const VERSION: u32 = 1;
/// The largest frame, newline included, that either side reads or writes.
pub const MAX_FRAME: usize = 64 * 1024;
/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/guilocker/control.sock";
/// Environment variable that overrides the socket path for clients.
pub const SOCKET_ENV: &str = "GUILOCKER_SOCKET";

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// `{"type":"hello","version":1}`
    Hello { version: u32 },
    /// `{"type":"status"}`
    Status,
    /// `{"type":"unlock","device":"/dev/sdb1","secret":{"kind":"password","value":"…"},"read_only":false,"mount":true,"owner":null}`
    Unlock {
        device: String,
        secret: UnlockSecret,
        #[serde(default)]
        read_only: bool,
        #[serde(default = "yes")]
        mount: bool,
        /// Mount for this user instead of the caller (root only).
        #[serde(default)]
        owner: Option<String>,
    },
    /// `{"type":"unmount","target":"/media/alice/STICK","force":false}`; `target` is a device
    /// or a mountpoint; `{"type":"unmount","all":true}` puts away everything the caller may.
    Unmount {
        #[serde(default)]
        target: Option<String>,
        #[serde(default)]
        all: bool,
        #[serde(default)]
        force: bool,
        /// Keep a USB stick powered after its last volume is put away (it is always
        /// flushed); by default it is powered off, as "safe to remove" on other desktops.
        #[serde(default)]
        no_power_off: bool,
    },
    /// `{"type":"inspect","device":"/dev/sdb1"}`: what the BitLocker metadata says.
    Inspect { device: String },
    /// `{"type":"subscribe"}`: turn this connection into an event stream.
    Subscribe,
}

fn yes() -> bool {
    true
}

/// How the caller proves it may open the volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UnlockSecret {
    /// `{"kind":"password","value":"anaconda"}`: the user password, as typed (any Unicode).
    Password { value: SecretString },
    /// `{"kind":"recovery_password","value":"111111-…"}`: the 48-digit recovery key.
    RecoveryPassword { value: SecretString },
    /// `{"kind":"startup_key","bek":"00ab…"}`: a .BEK file's bytes, hex. The client reads the
    /// file, so the root daemon never opens a path a user named.
    StartupKey { bek: SecretBytes },
    /// `{"kind":"clear_key"}`: protection is suspended; no secret is needed.
    ClearKey,
}

impl UnlockSecret {
    /// A word for logs and messages; never the secret.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Password { .. } => "password",
            Self::RecoveryPassword { .. } => "recovery key",
            Self::StartupKey { .. } => "startup key",
            Self::ClearKey => "clear key",
        }
    }

    /// A secret that is text (a password or a recovery key), which a keyring can hold.
    pub fn text(&self) -> Option<&SecretString> {
        match self {
            Self::Password { value } | Self::RecoveryPassword { value } => Some(value),
            Self::StartupKey { .. } | Self::ClearKey => None,
        }
    }
}

/// The daemon's answer to one request, or an event on a subscribed connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// `{"type":"hello","version":1,"server":"guilocker 0.1.0"}`
    Hello { version: u32, server: String },
    /// `{"type":"status","devices":[{…}]}`; `omitted` counts the devices left out so the
    /// reply fits in one frame (plain devices go first; absent when none was).
    Status {
        devices: Vec<DeviceInfo>,
        #[serde(default, skip_serializing_if = "is_zero")]
        omitted: usize,
    },
    /// `{"type":"unlocked","device":{…,"state":"mounted","mountpoint":"/media/alice/STICK"}}`
    Unlocked { device: DeviceInfo },
    /// `{"type":"unmounted","devices":["/dev/sdb1"],"power":[{"disk":"/dev/sdb","powered_off":true}]}`
    Unmounted {
        devices: Vec<String>,
        /// What "safe to remove" did to each disk left with nothing of guilocker's on it
        /// (see [`PowerOff`]); absent when none was.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        power: Vec<PowerOff>,
    },
    /// `{"type":"inspected","device":"/dev/sdb1","volume":{…}}`
    Inspected {
        device: String,
        volume: crate::bitlocker::VolumeInfo,
    },
    /// `{"type":"subscribed"}`: events follow.
    Subscribed,
    /// `{"type":"event","event":"added","device":{…},"seq":12}`
    Event {
        event: EventKind,
        device: DeviceInfo,
        /// Numbers events in the order the daemon emitted them, from 1 at its start.
        #[serde(default)]
        seq: u64,
    },
    /// `{"type":"error","kind":"wrong_secret","message":"/dev/sdb1: wrong password"}`
    Error { kind: ErrorKind, message: String },
}

/// "Safe to remove" for one disk whose last guilocker volume was put away: it is flushed,
/// and a USB stick is powered off unless something else on the same USB device is in use.
/// ```json
/// {"disk":"/dev/sdb","powered_off":true}
/// {"disk":"/dev/loop0","powered_off":false}
/// {"disk":"/dev/sdb","powered_off":false,"in_use":{"device":"/dev/sdb2","cause":"mounted","mountpoint":"/media/alice/DATA"}}
/// {"disk":"/dev/sdb","powered_off":false,"error":"cannot flush /dev/sdb: Input/output error"}
/// ```
/// Left powered with neither `in_use` nor `error`: not on USB, or `no_power_off` asked so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerOff {
    /// The whole disk, `/dev/sdb`.
    pub disk: String,
    /// Its USB device was powered off: it can be pulled out, and its light is out.
    pub powered_off: bool,
    /// Why it was left powered: the first thing found in use on the same USB device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_use: Option<InUse>,
    /// The flush or the power-off failed: why (English).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PowerOff {
    /// Why it was not powered off, for people: `not powered off: /dev/sdb2 is mounted at
    /// /media/alice/DATA`; `None` when nothing stands in the way of pulling it out.
    pub fn refusal(&self) -> Option<String> {
        let why = match (&self.in_use, &self.error) {
            (Some(in_use), _) => in_use.sentence(),
            (None, Some(error)) => error.clone(),
            (None, None) => return None,
        };
        Some(tr!("not powered off: {why}", why))
    }
}

/// A block device in use, and by what.
/// `{"device":"/dev/sdb2","cause":"open","program":"cp","pid":4242}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InUse {
    /// `/dev/sdb2`
    pub device: String,
    #[serde(flatten)]
    pub cause: UseCause,
}

/// What uses a block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum UseCause {
    /// `"cause":"mounted","mountpoint":"/media/alice/DATA"`
    Mounted { mountpoint: String },
    /// `"cause":"swap"`: swapped on.
    Swap,
    /// `"cause":"held","holder":"/dev/dm-3"`: a device-mapper table, a RAID, a loop device.
    Held { holder: String },
    /// `"cause":"open","program":"cp","pid":4242`
    Open { program: String, pid: i32 },
    /// `"cause":"unlocked"`: a guilocker volume still unlocked.
    Unlocked,
    /// `"cause":"busy"`: guilocker is unlocking it or putting it away.
    Busy,
    /// A cause this build does not know (a newer daemon's).
    #[serde(other)]
    Unknown,
}

impl InUse {
    /// `/dev/sdb2 is mounted at /media/alice/DATA`, in the reader's language.
    pub fn sentence(&self) -> String {
        let device = &self.device;
        match &self.cause {
            UseCause::Mounted { mountpoint } => {
                tr!("{device} is mounted at {mountpoint}", device, mountpoint)
            }
            UseCause::Swap => tr!("{device} is used as swap", device),
            UseCause::Held { holder } => tr!("{device} is held by {holder}", device, holder),
            UseCause::Open { program, pid } => {
                tr!(
                    "{device} is open by {program} (pid {pid})",
                    device,
                    program,
                    pid
                )
            }
            UseCause::Unlocked => tr!("{device} is still unlocked", device),
            UseCause::Busy => tr!("{device} is being unlocked or put away", device),
            UseCause::Unknown => tr!("{device} is in use", device),
        }
    }
}

/// What happened to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Added,
    Removed,
    Changed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Removed => "removed",
            Self::Changed => "changed",
        }
    }
}

/// The kind of a failed request, for programs; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed or unknown request.
    BadRequest,
    /// Client and daemon speak different protocol versions.
    VersionMismatch,
    /// The caller may not do this.
    NotAuthorized,
    /// No such device, or not one the daemon handles.
    NoSuchDevice,
    /// The device is not in a state that allows this (already unlocked, busy, …).
    InvalidState,
    /// Wrong password, recovery key or startup key. Nothing changed; try again.
    WrongSecret,
    /// This volume cannot be opened here (encryption in progress, only TPM/smart card, …).
    CannotOpen,
    /// The filesystem is in use.
    Busy,
    /// Anything else; the message says what.
    Failed,
}

/// What serves an unlocked volume's decrypted view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// The kernel's dm-crypt, set up by cryptsetup with our key: the desktop's fast path.
    #[serde(rename = "dm-crypt")]
    DmCrypt,
    /// `guilocker engine`: our own, multithreaded.
    Native,
    /// dislocker: for volumes our reader cannot lay out, or when the config asks for it.
    Dislocker,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DmCrypt => "dm-crypt",
            Self::Native => "native",
            Self::Dislocker => "dislocker",
        }
    }
}

/// Where a device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// BitLocker, not unlocked.
    Locked,
    /// An unlock is under way.
    Unlocking,
    /// Unlocked; the decrypted view is available but not mounted.
    Unlocked,
    /// Unlocked and its filesystem mounted.
    Mounted,
    /// Being put away: unmounting, then locking again.
    Locking,
    /// The last probe or unlock failed in a way that needs attention; `error` says why.
    Failed,
    /// Not a BitLocker volume; listed so people can see the daemon saw it.
    Plain,
    /// Seen, not yet read: its first sector is being looked at, or its device node is
    /// not there yet.
    Probing,
    /// Its first sector could not be read (an I/O error, or no answer in time); `error`
    /// says why.
    Unreadable,
    /// A state this build does not know (a newer daemon's): clients carry on.
    #[serde(other)]
    Unknown,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Locked => "locked",
            Self::Unlocking => "unlocking",
            Self::Unlocked => "unlocked",
            Self::Mounted => "mounted",
            Self::Locking => "locking",
            Self::Probing => "probing",
            Self::Unreadable => "unreadable",
            Self::Unknown => "unknown",
            Self::Failed => "failed",
            Self::Plain => "plain",
        }
    }
}

/// One block device as the daemon knows it (the objects of `status --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `/dev/sdb1`
    pub device: String,
    pub bitlocker: bool,
    pub state: DeviceState,
    pub mountpoint: Option<String>,
    /// The decrypted view (the engine's file) while unlocked.
    pub decrypted: Option<String>,
    /// Which engine serves it, while unlocked.
    #[serde(default)]
    pub engine: Option<Engine>,
    pub label: Option<String>,
    pub size_bytes: u64,
    /// User the volume is unlocked for.
    pub owner: Option<String>,
    /// Filesystem inside, once unlocked: `ntfs`, `exfat` or `vfat`.
    #[serde(default)]
    pub fs_type: Option<FsType>,
    #[serde(default)]
    pub read_only: bool,
    /// Why the device is `failed`, or why the last unlock did not succeed.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    /// BitLocker volume GUID, from the metadata.
    #[serde(default)]
    pub guid: Option<String>,
    /// BitLocker description (Windows writes PC name, drive letter and date there).
    #[serde(default)]
    pub description: Option<String>,
    /// Key protector kinds on the volume (`password`, `recovery_password`, `startup_key`,
    /// `tpm`, `smart_card`, `clear_key`); empty when unknown.
    #[serde(default)]
    pub protectors: Vec<Protector>,
    /// The Key ID of each recovery key (`F99F18E8`), as Windows shows it: people find the
    /// right key in their Microsoft account by it.
    #[serde(default)]
    pub recovery_key_ids: Vec<String>,
    /// The kernel's disk sequence number: new on every plug, the same across daemon
    /// restarts. Tells a stick plugged in again under the same name from the one before.
    #[serde(default)]
    pub diskseq: Option<u64>,
    /// The config leaves BitLocker drives to the desktop's own dialog
    /// (`leave_bitlocker_to_desktop`): the login agent does not ask for this one.
    #[serde(default)]
    pub left_to_desktop: bool,
    /// Plugged in by a person (a USB stick, a memory card, an attached image), as udisks
    /// tells them from the disks inside the machine. The login agent asks only about these.
    #[serde(default)]
    pub removable: bool,
    /// How its disk is attached.
    #[serde(default)]
    pub connection: Option<Connection>,
    /// Why no secret opens this BitLocker volume here (only a TPM or a smart card protects
    /// it, encryption is under way, an unknown cipher): such a drive is never asked about.
    #[serde(default)]
    pub cannot_open: Option<String>,
    /// The driver that mounted the filesystem, while mounted: `ntfs3` or `ntfs-3g` (NTFS),
    /// `exfat` or `exfat-fuse`, `vfat` or `fusefat`.
    #[serde(default)]
    pub fs_driver: Option<String>,
    /// Why the filesystem was mounted otherwise than asked, in a sentence for the person:
    /// read-only because Windows was hibernated, or by ntfs-3g because the kernel's ntfs3
    /// refused a volume Windows did not close.
    #[serde(default)]
    pub notice: Option<String>,
}

/// How a drive is attached: `"usb"`, `"mmc"` (a memory card), `"ieee1394"`, `"loop"` (an
/// attached image) or `"internal"` (a disk inside the machine: SATA, NVMe, virtio).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    Usb,
    Mmc,
    Ieee1394,
    Loop,
    Internal,
    /// A kind this build does not know (a newer daemon's).
    #[serde(other)]
    Unknown,
}

impl Connection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Usb => "usb",
            Self::Mmc => "mmc",
            Self::Ieee1394 => "ieee1394",
            Self::Loop => "loop",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }
}

/// A filesystem the daemon mounts: `"ntfs"`, `"exfat"`, `"vfat"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ntfs,
    Exfat,
    Vfat,
}

impl FsType {
    /// The name used on the wire, in config keys and in kernel filesystem lists.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ntfs => "ntfs",
            Self::Exfat => "exfat",
            Self::Vfat => "vfat",
        }
    }
}

/// A key protector of a BitLocker volume, by the name `inspect` gives it too
/// (`"password"`, `"recovery_password"`, …); one this build does not know reads as unknown.
pub use crate::bitlocker::ProtectorKind as Protector;

/// Agent → dialog, on the dialog's stdin.
// `Show` is sent once per dialog; boxing it would only complicate the dialog's code.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DialogInput {
    /// First line: the drive to ask about. `{"type":"show","device":{…}}`
    Show { device: DeviceInfo },
    /// The `unlock` worked: `{"type":"unlocked","label":"STICK"}`. The dialog closes with
    /// [`DIALOG_EXIT_UNLOCKED`]. `label`, known only once the volume is open, names the
    /// keyring entry.
    Unlocked {
        #[serde(default)]
        label: Option<String>,
    },
    /// The `unlock` failed: `{"type":"failed","kind":"wrong_secret","message":"wrong password"}`.
    /// The dialog shows why and stays open.
    Failed {
        kind: ErrorKind,
        #[serde(default)]
        message: Option<String>,
    },
    /// The device went away: `{"type":"close","reason":"the drive was removed"}`; the dialog
    /// exits with [`DIALOG_EXIT_CLOSED`].
    Close {
        #[serde(default)]
        reason: Option<String>,
    },
}

/// Dialog → agent, on the dialog's stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DialogOutput {
    /// `{"type":"unlock","secret":{"kind":"password","value":"…"},"read_only":false,"remembered":false,"open_at_login":false}`
    Unlock {
        secret: UnlockSecret,
        #[serde(default)]
        read_only: bool,
        /// The secret came from the keyring, before any window was shown; a `failed`
        /// answer makes the dialog forget it (if it was wrong) and ask.
        #[serde(default)]
        remembered: bool,
        /// The person asked to have this drive (one inside the computer) opened at every
        /// login, with the secret the dialog keeps in the keyring once it works.
        #[serde(default)]
        open_at_login: bool,
    },
    /// `{"type":"cancel"}`: the person closed the dialog. Not an error.
    Cancel,
}

/// The dialog unlocked the drive.
pub const DIALOG_EXIT_UNLOCKED: i32 = 0;
/// The person cancelled.
pub const DIALOG_EXIT_CANCELLED: i32 = 10;
/// No display could be opened.
pub const DIALOG_EXIT_NO_DISPLAY: i32 = 11;
/// The agent closed the dialog (the device was removed, or the pipe closed).
pub const DIALOG_EXIT_CLOSED: i32 = 12;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("peer sent a frame over {MAX_FRAME} bytes")]
    TooLong,
    #[error("peer sent invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("peer sent a frame that is not UTF-8")]
    NotUtf8,
    #[error("connection: {0}")]
    Io(#[from] io::Error),
}

/// Reads one frame. `Ok(None)` at a clean end of stream. The line buffer is wiped after
/// parsing because it may hold a secret.
pub fn read_frame<T, R>(reader: &mut R) -> Result<Option<T>, FrameError>
where
    T: for<'de> Deserialize<'de>,
    R: BufRead,
{
    let mut line = Zeroizing::new(Vec::with_capacity(256));
    loop {
        let available = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if available.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "frame cut short").into());
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        if line.len() + chunk.len() > MAX_FRAME {
            return Err(FrameError::TooLong);
        }
        line.extend_from_slice(chunk);
        let used = chunk.len();
        reader.consume(used);
        if done {
            break;
        }
    }
    let text = std::str::from_utf8(&line).map_err(|_| FrameError::NotUtf8)?;
    Ok(Some(serde_json::from_str(text.trim_end())?))
}

/// Writes one frame and flushes it.
pub fn write_frame<T: Serialize, W: Write>(writer: &mut W, value: &T) -> Result<(), FrameError> {
    let mut line = Zeroizing::new(serde_json::to_vec(value)?);
    line.push(b'\n');
    if line.len() > MAX_FRAME {
        return Err(FrameError::TooLong);
    }
    writer.write_all(&line)?;
    writer.flush()?;
    Ok(())
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Response {
    /// A `status` reply that fits in one frame, whatever the number of devices: those that
    /// do not fit are left out and counted, plain devices before BitLocker ones, the last
    /// listed first.
    pub fn status(mut devices: Vec<DeviceInfo>) -> Self {
        // The frame's own overhead, with room for the count.
        let budget = MAX_FRAME - 64;
        let size = |d: &DeviceInfo| serde_json::to_vec(d).map_or(MAX_FRAME, |v| v.len() + 1);
        let mut total: usize = devices.iter().map(size).sum();
        let mut omitted = 0;
        for bitlocker in [false, true] {
            while total > budget {
                let Some(i) = devices.iter().rposition(|d| d.bitlocker == bitlocker) else {
                    break;
                };
                total -= size(&devices.remove(i));
                omitted += 1;
            }
        }
        Self::Status { devices, omitted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn a_status_of_many_devices_fits_one_frame() {
        let device = |n: usize, bitlocker: bool| DeviceInfo {
            device: format!("/dev/sd{n}"),
            bitlocker,
            state: if bitlocker {
                DeviceState::Locked
            } else {
                DeviceState::Plain
            },
            mountpoint: None,
            decrypted: None,
            engine: None,
            label: Some("é".repeat(128)),
            size_bytes: 1 << 30,
            owner: None,
            fs_type: None,
            read_only: false,
            error: None,
            vendor: Some("Vendor".into()),
            model: Some("Model".into()),
            guid: None,
            description: Some("d".repeat(256)),
            protectors: Vec::new(),
            recovery_key_ids: Vec::new(),
            diskseq: Some(n as u64),
            left_to_desktop: false,
            removable: true,
            connection: None,
            cannot_open: None,
            fs_driver: None,
            notice: None,
        };
        let few: Vec<_> = (0..3).map(|n| device(n, n == 1)).collect();
        let reply = Response::status(few.clone());
        let line = serde_json::to_string(&reply).unwrap();
        assert!(!line.contains("omitted"), "{line}");
        assert!(matches!(reply, Response::Status { devices, omitted: 0 } if devices == few));

        let many: Vec<_> = (0..1000).map(|n| device(n, n % 100 == 7)).collect();
        let reply = Response::status(many);
        let mut frame = Vec::new();
        write_frame(&mut frame, &reply).unwrap();
        assert!(frame.len() <= MAX_FRAME);
        let Response::Status { devices, omitted } = reply else {
            unreachable!()
        };
        assert_eq!(devices.len() + omitted, 1000);
        assert!(omitted > 0);
        assert_eq!(devices.iter().filter(|d| d.bitlocker).count(), 10, "kept");
    }

    #[test]
    fn states_a_newer_daemon_adds_are_unknown_here() {
        let state: DeviceState = serde_json::from_str(r#""hibernating""#).unwrap();
        assert_eq!(state, DeviceState::Unknown);
        assert_eq!(
            serde_json::to_string(&DeviceState::Locking).unwrap(),
            r#""locking""#
        );
    }

    #[test]
    fn protectors_by_name_and_unknown_ones_kept() {
        let kinds: Vec<Protector> =
            serde_json::from_str(r#"["password","recovery_password","fido_key"]"#).unwrap();
        assert_eq!(
            kinds,
            [
                Protector::Password,
                Protector::RecoveryPassword,
                Protector::Unknown(0)
            ]
        );
        assert_eq!(
            serde_json::to_string(&Protector::StartupKey).unwrap(),
            r#""startup_key""#
        );
    }

    #[test]
    fn request_round_trip_and_tags() {
        let req = Request::Unlock {
            device: "/dev/sdb1".into(),
            secret: UnlockSecret::Password {
                value: "pässwörd".into(),
            },
            read_only: false,
            mount: true,
            owner: None,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(text
            .starts_with(r#"{"type":"unlock","device":"/dev/sdb1","secret":{"kind":"password""#));
        assert!(text.ends_with('\n'));
        let back: Request = read_frame(&mut Cursor::new(buf)).unwrap().unwrap();
        match back {
            Request::Unlock {
                secret: UnlockSecret::Password { value },
                ..
            } => {
                assert_eq!(value.expose(), "pässwörd")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_for_missing_fields() {
        let req: Request = serde_json::from_str(
            r#"{"type":"unlock","device":"/dev/sdb1","secret":{"kind":"clear_key"}}"#,
        )
        .unwrap();
        assert!(matches!(
            req,
            Request::Unlock {
                mount: true,
                read_only: false,
                owner: None,
                ..
            }
        ));
    }

    /// The `unmounted` reply's `power` as documented, from an older daemon (none), and with
    /// a cause this build does not know.
    #[test]
    fn unmounted_says_what_safe_to_remove_did() {
        let kept = r#"{"type":"unmounted","devices":["/dev/sdb1"],"power":[{"disk":"/dev/sdb","powered_off":false,"in_use":{"device":"/dev/sdb2","cause":"mounted","mountpoint":"/media/alice/DATA"}}]}"#;
        let reply: Response = serde_json::from_str(kept).unwrap();
        assert_eq!(serde_json::to_string(&reply).unwrap(), kept);
        let Response::Unmounted { power, .. } = reply else {
            panic!("{reply:?}");
        };
        assert_eq!(
            power[0].refusal().as_deref(),
            Some("not powered off: /dev/sdb2 is mounted at /media/alice/DATA")
        );
        let off = r#"{"type":"unmounted","devices":["/dev/sdb1"],"power":[{"disk":"/dev/sdb","powered_off":true}]}"#;
        let reply: Response = serde_json::from_str(off).unwrap();
        assert_eq!(serde_json::to_string(&reply).unwrap(), off);
        let old = r#"{"type":"unmounted","devices":["/dev/sdb1"]}"#;
        let reply: Response = serde_json::from_str(old).unwrap();
        assert!(matches!(&reply, Response::Unmounted { power, .. } if power.is_empty()));
        assert_eq!(serde_json::to_string(&reply).unwrap(), old);
        let open = r#"{"device":"/dev/sdb","cause":"open","program":"cp","pid":4242}"#;
        let open: InUse = serde_json::from_str(open).unwrap();
        assert_eq!(open.sentence(), "/dev/sdb is open by cp (pid 4242)");
        let newer = r#"{"device":"/dev/sdb2","cause":"swapped_on","priority":5}"#;
        let newer: InUse = serde_json::from_str(newer).unwrap();
        assert_eq!(newer.cause, UseCause::Unknown);
        assert_eq!(newer.sentence(), "/dev/sdb2 is in use");
    }

    #[test]
    fn debug_of_a_request_hides_the_secret() {
        let req = Request::Unlock {
            device: "/dev/sdb1".into(),
            secret: UnlockSecret::RecoveryPassword {
                value: "111111-111111".into(),
            },
            read_only: false,
            mount: true,
            owner: None,
        };
        assert!(!format!("{req:?}").contains("111111"));
    }

    #[test]
    fn oversized_frame_is_refused_without_reading_it_all() {
        let mut big = vec![b'x'; MAX_FRAME + 10];
        big.push(b'\n');
        let err = read_frame::<Request, _>(&mut Cursor::new(big)).unwrap_err();
        assert!(matches!(err, FrameError::TooLong));
    }

    #[test]
    fn frame_of_exactly_max_is_accepted() {
        let mut line = br#"{"type":"status","pad":""#.to_vec();
        let tail = br#""}"#;
        line.resize(MAX_FRAME - tail.len() - 1, b'a');
        line.extend_from_slice(tail);
        line.push(b'\n');
        assert_eq!(line.len(), MAX_FRAME);
        let req = read_frame::<Request, _>(&mut Cursor::new(line)).unwrap();
        assert!(matches!(req, Some(Request::Status)));
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let err = read_frame::<Request, _>(&mut Cursor::new(b"{nope}\n".to_vec())).unwrap_err();
        assert!(matches!(err, FrameError::Json(_)));
        let err = read_frame::<Request, _>(&mut Cursor::new(b"\xff\xfe\n".to_vec())).unwrap_err();
        assert!(matches!(err, FrameError::NotUtf8));
        let err = read_frame::<Request, _>(&mut Cursor::new(b"{\"type\":".to_vec())).unwrap_err();
        assert!(matches!(err, FrameError::Io(_)));
        assert!(read_frame::<Request, _>(&mut Cursor::new(Vec::new()))
            .unwrap()
            .is_none());
    }

    #[test]
    fn two_frames_in_one_buffer() {
        let data = b"{\"type\":\"status\"}\n{\"type\":\"subscribe\"}\n".to_vec();
        let mut cur = Cursor::new(data);
        assert!(matches!(
            read_frame::<Request, _>(&mut cur).unwrap(),
            Some(Request::Status)
        ));
        assert!(matches!(
            read_frame::<Request, _>(&mut cur).unwrap(),
            Some(Request::Subscribe)
        ));
        assert!(read_frame::<Request, _>(&mut cur).unwrap().is_none());
    }
}
