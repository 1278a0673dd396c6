//! What connection threads and jobs share with the event loop (nothing of the device table),
//! and the messages they send it: asks from connection threads, results from jobs.

use super::auth::{self, Caller};
use super::bus::Bus;
use super::error::DaemonError;
use super::host::sysfs::Sysfs;
use super::mailbox::Mailbox;
use super::mountpoint::Reservations;
use super::probe::{Probe, ProbeError};
use super::seat::Seat;
use super::session::Session;
use crate::bitlocker::VolumeInfo;
use crate::config::Config;
use crate::protocol::{DeviceInfo, EventKind, PowerOff, UnlockSecret};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::RwLock;

/// Under the runtime dir: one FUSE mountpoint per unlocked volume.
pub const VIEWS_DIR: &str = "views";

/// Where the daemon looks and writes; tests point these elsewhere.
#[derive(Debug, Clone)]
pub struct Paths {
    pub runtime_dir: PathBuf,
    pub proc_partitions: PathBuf,
    pub sys_block: PathBuf,
    pub dev: PathBuf,
}

impl Paths {
    pub fn new(runtime_dir: PathBuf) -> Self {
        Self {
            runtime_dir,
            proc_partitions: "/proc/partitions".into(),
            sys_block: "/sys/class/block".into(),
            dev: "/dev".into(),
        }
    }

    /// Where the engine of device `name` serves its decrypted view.
    pub fn view_dir(&self, name: &str) -> PathBuf {
        self.runtime_dir.join(VIEWS_DIR).join(name)
    }
}

/// The answer to an [`Ask`].
pub type Reply<T> = Sender<Result<T, DaemonError>>;

/// What a connection thread asks the loop.
pub enum Ask {
    Status(Reply<Vec<DeviceInfo>>),
    Inspect {
        target: String,
        reply: Reply<(String, VolumeInfo)>,
    },
    Unlock(Box<UnlockAsk>),
    Unmount {
        caller: Caller,
        /// The caller's name, for refusals.
        caller_name: String,
        target: Option<String>,
        all: bool,
        force: bool,
        power_off: bool,
        /// Whether the caller may flush and power off the stick of a volume that is locked
        /// already (whoever may unlock it may): checked on the connection's thread, and
        /// only for a target that names a device.
        may_eject_locked: Result<(), DaemonError>,
        reply: Reply<Unmounted>,
    },
}

/// An unmount's answer: the devices put away, and what "safe to remove" did to their disks.
#[derive(Debug, Clone, Default)]
pub struct Unmounted {
    pub devices: Vec<String>,
    pub power: Vec<PowerOff>,
}

pub struct UnlockAsk {
    /// Who asked, for the log.
    pub asked_by: String,
    /// Who it is unlocked for: authorized already, on the connection's thread.
    pub owner: super::mount::Owner,
    pub target: String,
    pub secret: UnlockSecret,
    pub read_only: bool,
    pub mount: bool,
    pub reply: Reply<DeviceInfo>,
}

/// What a job reports when it ends. (Each is moved once, through the mailbox: boxing the
/// large variants would buy nothing.)
#[allow(clippy::large_enum_variant)]
pub enum Done {
    Probed {
        name: String,
        generation: u64,
        result: Result<Probe, ProbeError>,
    },
    Unlocked {
        name: String,
        generation: u64,
        path: String,
        result: Result<Session, DaemonError>,
        reply: Reply<DeviceInfo>,
    },
    Closed {
        closes: Vec<Closing>,
        /// For an unmount request: who to answer, and whether to power the stick off.
        reply: Option<(Reply<Unmounted>, bool)>,
        /// Locked by the desktop after it unmounted the volume: its stick is made safe to
        /// remove, unless the desktop ejects it itself.
        desktop_locked: bool,
    },
    /// A job that changes no device: the close of a vanished device, an eject.
    Finished,
}

/// One session's close, as a close job reports it.
pub struct Closing {
    pub name: String,
    pub generation: u64,
    pub path: String,
    pub result: Result<(), Box<(DaemonError, Session)>>,
}

/// Which devices a job works for, so its end is accounted for even if it panics.
#[derive(Clone)]
pub enum For {
    /// A probe: it holds nothing, and is not waited for at shutdown (one may hang for as
    /// long as a dying stick makes it).
    Probe,
    /// The devices (name, generation) whose sessions the job holds or makes; none for a
    /// job that only answers a client (an eject).
    Devices(Vec<(String, u64)>),
}

#[allow(clippy::large_enum_variant)]
pub enum Msg {
    Ask(Ask),
    /// A job ended: what it reports, or `None` if it panicked.
    Done(For, Option<Done>),
}

/// What connection threads and jobs share with the loop: nothing of the device table.
pub struct Shared {
    pub config: RwLock<Config>,
    pub bus: Bus,
    pub paths: Paths,
    pub reservations: Reservations,
    /// Whether a caller is the person at the seat (logind).
    seat: Seat,
    mailbox: Mailbox<Msg>,
}

impl Shared {
    pub fn new(config: Config, paths: Paths, mailbox: Mailbox<Msg>) -> Self {
        Self {
            config: RwLock::new(config),
            bus: Bus::default(),
            paths,
            reservations: Reservations::default(),
            seat: Seat::default(),
            mailbox,
        }
    }

    /// Posts a message to the loop (a job's result).
    pub fn post(&self, msg: Msg) {
        self.mailbox.post(msg);
    }

    pub fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends an ask to the loop and waits for its answer.
    fn ask<T>(&self, about: &str, make: impl FnOnce(Reply<T>) -> Ask) -> Result<T, DaemonError> {
        let (reply, answer) = channel();
        let stopping = || DaemonError::failed(about, "the daemon stopped before it could answer");
        if !self.mailbox.post(Msg::Ask(make(reply))) {
            return Err(stopping());
        }
        answer.recv().unwrap_or_else(|_| Err(stopping()))
    }

    pub fn status(&self) -> Result<Vec<DeviceInfo>, DaemonError> {
        self.ask("status", Ask::Status)
    }

    /// What the BitLocker metadata of a device says (no secrets in it), and its device path.
    pub fn inspect(&self, target: &str) -> Result<(String, VolumeInfo), DaemonError> {
        self.ask(target, |reply| Ask::Inspect {
            target: target.into(),
            reply,
        })
    }

    /// Unlocks (and by default mounts) a BitLocker device for the caller.
    pub fn unlock(
        &self,
        caller: &Caller,
        target: &str,
        secret: UnlockSecret,
        read_only: bool,
        mount: bool,
        owner: Option<String>,
    ) -> Result<DeviceInfo, DaemonError> {
        let owner = self.authorize_unlock(caller, target, owner.as_deref())?;
        self.ask(target, |reply| {
            Ask::Unlock(Box::new(UnlockAsk {
                asked_by: caller.describe(),
                owner,
                target: target.into(),
                secret,
                read_only,
                mount,
                reply,
            }))
        })
    }

    /// May `caller` unlock `target` (for `owner`, or themselves)? Here, on the connection's
    /// thread, not on the loop: the user database and logind may be slow to answer.
    fn authorize_unlock(
        &self,
        caller: &Caller,
        target: &str,
        owner: Option<&str>,
    ) -> Result<super::mount::Owner, DaemonError> {
        let config = self.config();
        let owner = auth::authorize_unlock(caller, target, &config.allowed_group, owner)?;
        // A disk inside the machine asks at least what udisks asks for system devices: the
        // active local session, whatever the config says of sticks.
        let sys = Sysfs::new(&self.paths.sys_block);
        let name = super::table::device_name(target);
        let internal = sys.knows(name) && !sys.attachment(name).removable;
        if config.require_active_session || internal {
            self.seat.authorize(caller, target, internal)?;
        }
        Ok(owner)
    }

    /// Puts away what the caller may: one target, or everything of theirs with `all`.
    pub fn unmount(
        &self,
        caller: &Caller,
        target: Option<&str>,
        all: bool,
        force: bool,
        power_off: bool,
    ) -> Result<Unmounted, DaemonError> {
        // A device (`/dev/sdb1`, or `sdb1`), not a mountpoint: only a device can be locked.
        let may_eject_locked = match target {
            Some(device) if !all && (device.starts_with("/dev/") || !device.starts_with('/')) => {
                self.authorize_unlock(caller, device, None).map(drop)
            }
            _ => Err(DaemonError::InvalidState {
                device: target.unwrap_or_default().to_owned(),
                what: "is not unlocked".into(),
            }),
        };
        self.ask(target.unwrap_or("unmount"), |reply| Ask::Unmount {
            caller: *caller,
            caller_name: caller.describe(),
            target: target.map(str::to_owned),
            all,
            force,
            power_off,
            may_eject_locked,
            reply,
        })
    }

    /// Numbers an event and queues it for the subscribers. Called by the loop only, so
    /// events are numbered in the order devices changed.
    pub fn emit(&self, kind: EventKind, info: DeviceInfo) {
        log::debug!("{} {} {}", kind.as_str(), info.device, info.state.as_str());
        self.bus.emit(kind, info);
    }
}
