//! One block device and its state machine.
//!
//! A device is in exactly one [`Phase`]. The transitions are methods that do no I/O: they check
//! the phase, move to the next one, and hand back what the caller must run (a session to
//! close) or the refusal to send. The event loop owns every `Device`; jobs on workers do the
//! slow parts and their results come back through these methods.
//!
//! ```text
//!  Probing ──probed──▶ Plain | Unreadable(why) | Locked
//!  Probing ──no node yet──▶ Probing (probed again at the next scan; 5 probes in all,
//!                                    then Unreadable)
//!  Probing ──no answer within PROBE_TIMEOUT──▶ Unreadable (final until re-plugged: a late
//!                                              answer is ignored)
//!  Locked | Failed ──begin_unlock──▶ Unlocking ──unlocked──▶ Unlocked(session)
//!                                  ──refused (wrong key, cannot open)──▶ Locked(why)
//!                                  ──failed otherwise──▶ Failed(why)
//!  Unlocked ──begin_close──▶ Locking ──closed──▶ Locked | Failed(why)   (the engine died)
//!                                    ──refused (a polite close failed)──▶ Unlocked(session)
//!  Locked ──adopt (a session an earlier daemon left alive)──▶ Unlocked(session)
//!  Unlocking | Locking ──its job panicked──▶ Failed(why)
//!  any ──unplugged──▶ removed from the table. An Unlocked session is closed as vanished; a
//!        job under way finishes, and what it hands back for the gone device is closed so.
//! ```
//! A result for a phase that does not expect it (`unlocked` when not Unlocking, `closed`
//! when not Locking) changes nothing and hands its session back to be closed.

use super::error::DaemonError;
use super::host::sysfs::Attachment;
use super::probe::{Probe, ProbeError};
use super::session::Session;
use super::watch::Appearance;
use crate::bitlocker::Metadata;
use crate::protocol::{Connection, DeviceInfo, DeviceState, Protector};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Probes that found no device node yet, before the device is called unreadable.
pub const MAX_PROBE_ATTEMPTS: u8 = 5;
/// A first sector that takes longer than this to read (a dying stick in SCSI retries) makes
/// the device unreadable; the probe's worker is left to finish on its own.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the daemon knows of a device, and what it holds for it.
pub enum Phase {
    /// Seen; its first sector not read yet. `running` is when the current probe started.
    Probing {
        attempts: u8,
        running: Option<Instant>,
    },
    /// Not BitLocker.
    Plain,
    /// Its first sector could not be read.
    Unreadable(String),
    /// BitLocker, not unlocked; `error` says why the last unlock failed, if it did.
    Locked {
        error: Option<String>,
    },
    /// A job is unlocking it.
    Unlocking,
    Unlocked(Box<Session>),
    /// A job is closing its session; `then` is where it goes once closed.
    Locking {
        then: AfterClose,
    },
    /// BitLocker, not unlocked: the last unlock failed, or the volume went away while in
    /// use, in a way that needs attention.
    Failed(String),
}

/// Where a device goes once its session is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterClose {
    /// Put away on request, or after its filesystem was unmounted by someone else.
    Locked,
    /// Closed because it broke (its engine died): says why.
    Failed(String),
}

/// What a finished probe means for the device.
#[derive(Debug, PartialEq, Eq)]
pub enum Probed {
    /// The device has its phase: tell the clients it is here.
    Settled,
    /// No device node yet: probe again at the next scan.
    Again,
    /// The result came too late (the probe had timed out); ignored.
    Stale,
}

/// What the BitLocker metadata says of a volume, for status and the dialog.
#[derive(Debug, Clone, Default)]
pub struct VolumeFacts {
    /// Why no secret opens it here, if none does.
    pub cannot_open: Option<String>,
    pub guid: Option<String>,
    pub description: Option<String>,
    pub protectors: Vec<Protector>,
    pub recovery_key_ids: Vec<String>,
}

impl VolumeFacts {
    pub fn from_metadata(meta: &Metadata) -> Self {
        let info = &meta.info;
        let mut protectors: Vec<Protector> = info.protectors.iter().map(|p| p.kind).collect();
        protectors.dedup();
        Self {
            cannot_open: meta.check_openable().err().map(|e| e.to_string()),
            guid: Some(info.guid.to_string()),
            // Text from a stranger's disk.
            description: crate::text::from_disk(&info.description, 256),
            protectors,
            // Bounded like the rest of a device's frame (crafted metadata holds hundreds).
            recovery_key_ids: info
                .protectors
                .iter()
                .filter_map(|p| p.key_id.map(|id| id.to_string()))
                .take(16)
                .collect(),
        }
    }
}

pub struct Device {
    /// Kernel name, e.g. `sdb1`.
    pub name: String,
    /// `/dev/sdb1`
    pub path: String,
    pub appearance: Appearance,
    /// Changes on every appearance, so a finishing job can tell the device it started on
    /// from a re-plugged one with the same name.
    pub generation: u64,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub volume: VolumeFacts,
    /// The parsed BitLocker metadata, when it could be read (unlock derives keys from it).
    pub metadata: Option<Arc<Metadata>>,
    /// The config, when this device appeared, left BitLocker drives to the desktop.
    pub left_to_desktop: bool,
    /// How its disk is attached (read from sysfs when it appeared).
    pub attachment: Attachment,
    pub phase: Phase,
}

impl Device {
    pub fn new(appearance: Appearance, generation: u64, path: String) -> Self {
        Self {
            name: appearance.partition.name.clone(),
            path,
            appearance,
            generation,
            vendor: None,
            model: None,
            volume: VolumeFacts::default(),
            metadata: None,
            left_to_desktop: false,
            attachment: Attachment {
                connection: Connection::Internal,
                removable: false,
            },
            phase: Phase::Probing {
                attempts: 0,
                running: None,
            },
        }
    }

    /// Is a probe due (none running, none settled)? If so, marks it started at `now`.
    pub fn start_probe(&mut self, now: Instant) -> bool {
        match &mut self.phase {
            Phase::Probing { running, .. } if running.is_none() => {
                *running = Some(now);
                true
            }
            _ => false,
        }
    }

    /// When the running probe times out.
    pub fn probe_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Probing {
                running: Some(started),
                ..
            } => Some(started + PROBE_TIMEOUT),
            _ => None,
        }
    }

    /// A probe finished.
    pub fn probed(&mut self, result: Result<Probe, ProbeError>) -> Probed {
        let Phase::Probing { attempts, .. } = self.phase else {
            return Probed::Stale;
        };
        self.phase = match result {
            Ok(Probe::Other) => Phase::Plain,
            Ok(Probe::BitLocker(meta)) => {
                match *meta {
                    Ok(meta) => {
                        self.volume = VolumeFacts::from_metadata(&meta);
                        self.metadata = Some(Arc::new(meta));
                    }
                    // dislocker may still manage; the unlock falls back to it.
                    Err(e) => {
                        log::warn!("{}: cannot read the BitLocker metadata: {e}", self.path)
                    }
                }
                Phase::Locked { error: None }
            }
            Err(ProbeError::NoNode { .. }) if attempts + 1 < MAX_PROBE_ATTEMPTS => {
                self.phase = Phase::Probing {
                    attempts: attempts + 1,
                    running: None,
                };
                return Probed::Again;
            }
            Err(e) => Phase::Unreadable(e.to_string()),
        };
        Probed::Settled
    }

    /// The running probe has had its time: the device is unreadable. True if it just became so.
    pub fn probe_overdue(&mut self, now: Instant) -> bool {
        if self.probe_deadline().is_none_or(|d| now < d) {
            return false;
        }
        self.phase = Phase::Unreadable(format!(
            "{}: did not answer within {} s when its first sector was read",
            self.path,
            PROBE_TIMEOUT.as_secs()
        ));
        true
    }

    /// An unlock may start: Locked or Failed become Unlocking.
    pub fn begin_unlock(&mut self) -> Result<(), DaemonError> {
        let refuse = |what: String| DaemonError::InvalidState {
            device: self.path.clone(),
            what,
        };
        match &self.phase {
            Phase::Locked { .. } | Phase::Failed(_) => {
                self.phase = Phase::Unlocking;
                Ok(())
            }
            Phase::Probing { .. } => {
                Err(refuse("still being examined; try again in a moment".into()))
            }
            Phase::Plain => Err(DaemonError::NotBitLocker {
                device: self.path.clone(),
            }),
            Phase::Unreadable(why) => Err(DaemonError::failed(
                &self.path,
                format!("cannot be read: {}", without_device(&self.path, why)),
            )),
            Phase::Unlocking | Phase::Locking { .. } => {
                Err(refuse("another unlock or unmount is under way".into()))
            }
            Phase::Unlocked(s) => {
                let at = s.mounted.as_ref().map_or_else(
                    || format!("its decrypted view is {}", s.view.decrypted.display()),
                    |m| format!("mounted at {}", m.mountpoint.display()),
                );
                Err(refuse(format!("already unlocked ({at})")))
            }
        }
    }

    /// The unlock job finished. Hands back a session this device cannot take (it was not
    /// unlocking), for the caller to close.
    pub fn unlocked(&mut self, result: Result<Session, &DaemonError>) -> Option<Session> {
        if !matches!(self.phase, Phase::Unlocking) {
            return result.ok();
        }
        self.phase = match result {
            Ok(session) => Phase::Unlocked(Box::new(session)),
            // Said to the person, who can try again: still simply locked.
            Err(
                e @ (DaemonError::WrongSecret { .. }
                | DaemonError::CannotOpen { .. }
                | DaemonError::InUse { .. }),
            ) => Phase::Locked {
                error: Some(e.to_string()),
            },
            Err(e) => Phase::Failed(e.to_string()),
        };
        None
    }

    /// At start: a session an earlier daemon left fully alive on this very appearance is
    /// taken over. Only a device simply Locked takes it (probed, nothing under way); any
    /// other hands it back, to be put away.
    pub fn adopt(&mut self, session: Box<Session>) -> Result<(), Box<Session>> {
        match self.phase {
            Phase::Locked { .. } => {
                self.phase = Phase::Unlocked(session);
                Ok(())
            }
            _ => Err(session),
        }
    }

    /// BitLocker, and not unlocked: nothing of ours on it, nothing under way.
    pub fn is_locked(&self) -> bool {
        matches!(self.phase, Phase::Locked { .. } | Phase::Failed(_))
    }

    /// The session a close would take, or why there is none to close.
    pub fn closable(&self) -> Result<&Session, DaemonError> {
        let refuse = |what: &str| DaemonError::InvalidState {
            device: self.path.clone(),
            what: what.into(),
        };
        match &self.phase {
            Phase::Unlocked(session) => Ok(session),
            Phase::Unlocking | Phase::Locking { .. } => {
                Err(refuse("another unlock or unmount is under way"))
            }
            _ => Err(refuse("is not unlocked")),
        }
    }

    /// Unlocked becomes Locking; the session goes to the job that closes it.
    pub fn begin_close(&mut self, then: AfterClose) -> Result<Session, DaemonError> {
        self.closable()?;
        match std::mem::replace(&mut self.phase, Phase::Locking { then }) {
            Phase::Unlocked(session) => Ok(*session),
            _ => unreachable!("matched above"),
        }
    }

    /// The close job finished: closed, or refused with the session handed back (its
    /// filesystem is busy). Hands back a session this device cannot take.
    pub fn closed(
        &mut self,
        result: Result<(), Box<(DaemonError, Session)>>,
    ) -> Result<(), Box<(DaemonError, Option<Session>)>> {
        let Phase::Locking { then } = &self.phase else {
            return result.map_err(|failed| {
                let (e, session) = *failed;
                Box::new((e, Some(session)))
            });
        };
        match result {
            Ok(()) => {
                self.phase = match then {
                    AfterClose::Locked => Phase::Locked { error: None },
                    AfterClose::Failed(why) => Phase::Failed(why.clone()),
                };
                Ok(())
            }
            Err(failed) => {
                let (e, session) = *failed;
                self.phase = Phase::Unlocked(Box::new(session));
                Err(Box::new((e, None)))
            }
        }
    }

    /// The job working on this device ended without a result (it panicked): Unlocking or
    /// Locking become Failed. True if the device changed.
    pub fn job_lost(&mut self, why: String) -> bool {
        if !self.is_busy() {
            return false;
        }
        self.phase = Phase::Failed(why);
        true
    }

    pub fn session(&self) -> Option<&Session> {
        match &self.phase {
            Phase::Unlocked(s) => Some(s),
            _ => None,
        }
    }

    /// A job holds this device's session (or is making one).
    pub fn is_busy(&self) -> bool {
        matches!(self.phase, Phase::Unlocking | Phase::Locking { .. })
    }

    /// Is it BitLocker, as far as the daemon knows?
    pub fn is_bitlocker(&self) -> bool {
        !matches!(
            self.phase,
            Phase::Probing { .. } | Phase::Plain | Phase::Unreadable(_)
        )
    }

    /// The state clients see: the one mapping from phases to the wire.
    pub fn wire_state(&self) -> DeviceState {
        match &self.phase {
            Phase::Probing { .. } => DeviceState::Probing,
            Phase::Plain => DeviceState::Plain,
            Phase::Unreadable(_) => DeviceState::Unreadable,
            Phase::Locked { .. } => DeviceState::Locked,
            Phase::Unlocking => DeviceState::Unlocking,
            Phase::Unlocked(s) if s.mounted.is_some() => DeviceState::Mounted,
            Phase::Unlocked(_) => DeviceState::Unlocked,
            Phase::Locking { .. } => DeviceState::Locking,
            Phase::Failed(_) => DeviceState::Failed,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match &self.phase {
            Phase::Unreadable(why) | Phase::Failed(why) => Some(why),
            Phase::Locked { error } => error.as_deref(),
            _ => None,
        }
    }

    pub fn info(&self) -> DeviceInfo {
        let s = self.session();
        let mounted = s.and_then(|s| s.mounted.as_ref());
        DeviceInfo {
            device: self.path.clone(),
            bitlocker: self.is_bitlocker(),
            state: self.wire_state(),
            mountpoint: s
                .and_then(|s| s.mounted.as_ref())
                .map(|m| m.mountpoint.display().to_string()),
            decrypted: s.map(|s| s.view.decrypted.display().to_string()),
            engine: s.map(|s| s.view.engine),
            label: s.and_then(|s| s.fs.as_ref()).and_then(|f| f.label.clone()),
            size_bytes: self.appearance.partition.size_bytes(),
            owner: s.map(|s| s.owner.name.clone()),
            fs_type: s.and_then(|s| s.fs.as_ref()).map(|f| f.fs_type),
            read_only: s
                .is_some_and(|s| s.read_only || s.mounted.as_ref().is_some_and(|m| m.read_only)),
            error: self.error().map(str::to_owned),
            vendor: self.vendor.clone(),
            model: self.model.clone(),
            guid: self.volume.guid.clone(),
            description: self.volume.description.clone(),
            protectors: self.volume.protectors.clone(),
            recovery_key_ids: self.volume.recovery_key_ids.clone(),
            diskseq: self.appearance.diskseq,
            left_to_desktop: self.left_to_desktop,
            removable: self.attachment.removable,
            connection: Some(self.attachment.connection),
            cannot_open: self.volume.cannot_open.as_ref().map(|why| {
                DaemonError::CannotOpen {
                    device: self.path.clone(),
                    cause: why.clone(),
                }
                .to_string()
            }),
            fs_driver: mounted.map(|m| m.driver.to_owned()),
            notice: mounted.and_then(|m| m.notice.clone()),
        }
    }
}

/// `why` without a leading "DEVICE: ", for messages that name the device themselves.
fn without_device<'a>(device: &str, why: &'a str) -> &'a str {
    why.strip_prefix(device)
        .and_then(|w| w.strip_prefix(": "))
        .unwrap_or(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::mount::{MountedFs, Owner};
    use crate::daemon::watch::Partition;
    use std::path::PathBuf;

    fn device() -> Device {
        let appearance = Appearance {
            partition: Partition {
                major: 7,
                minor: 1,
                blocks: 1024,
                name: "loop0p1".into(),
            },
            diskseq: Some(9),
        };
        Device::new(appearance, 1, "/dev/loop0p1".into())
    }

    fn session(mounted: bool) -> Session {
        Session {
            view: crate::daemon::view::View::unserved("/dev/mapper/guilocker-loop0p1"),
            owner: Owner {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
            },
            fs: None,
            mounted: mounted.then(|| MountedFs {
                mountpoint: PathBuf::from("/media/alice/STICK"),
                fs_type: crate::protocol::FsType::Ntfs,
                loop_device: None,
                made_dirs: Vec::new(),
                driver: crate::daemon::mount::NTFS3,
                read_only: false,
                notice: None,
            }),
            read_only: false,
            record: None,
            shown: None,
        }
    }

    fn locked() -> Device {
        let mut d = device();
        d.phase = Phase::Locked { error: None };
        d
    }

    fn unlocked(mounted: bool) -> Device {
        let mut d = device();
        d.phase = Phase::Unlocked(Box::new(session(mounted)));
        d
    }

    fn wrong(device: &str) -> DaemonError {
        DaemonError::WrongSecret {
            device: device.into(),
            cause: "wrong password".into(),
        }
    }

    #[test]
    fn a_new_device_is_probing_and_not_bitlocker_yet() {
        let d = device();
        assert_eq!(d.wire_state(), DeviceState::Probing);
        assert!(!d.info().bitlocker);
        assert_eq!(d.info().error, None);
    }

    #[test]
    fn one_probe_at_a_time() {
        let mut d = device();
        let now = Instant::now();
        assert!(d.start_probe(now));
        assert!(!d.start_probe(now), "a second probe while one runs");
        assert_eq!(d.probe_deadline(), Some(now + PROBE_TIMEOUT));
    }

    #[test]
    fn probe_results() {
        let mut d = device();
        d.start_probe(Instant::now());
        assert_eq!(d.probed(Ok(Probe::Other)), Probed::Settled);
        assert_eq!(d.wire_state(), DeviceState::Plain);
        assert!(!d.info().bitlocker);

        let mut d = device();
        d.start_probe(Instant::now());
        let bad = Err(crate::bitlocker::BitlockerError::NotBitlocker);
        assert_eq!(
            d.probed(Ok(Probe::BitLocker(Box::new(bad)))),
            Probed::Settled
        );
        assert_eq!(d.wire_state(), DeviceState::Locked);
        assert!(d.info().bitlocker);
        assert!(d.metadata.is_none());

        let mut d = device();
        d.start_probe(Instant::now());
        let eio = ProbeError::Read {
            device: "/dev/loop0p1".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        assert_eq!(d.probed(Err(eio)), Probed::Settled);
        assert_eq!(d.wire_state(), DeviceState::Unreadable);
        let error = d.info().error.unwrap();
        assert!(
            error.starts_with("/dev/loop0p1: cannot read the first sector: Input/output error"),
            "{error}"
        );
        let refusal = d.begin_unlock().unwrap_err().to_string();
        assert_eq!(
            refusal,
            "/dev/loop0p1: cannot be read: cannot read the first sector: Input/output error (os error 5)"
        );
    }

    #[test]
    fn a_missing_node_is_probed_again_then_given_up() {
        let mut d = device();
        let no_node = || ProbeError::NoNode {
            device: "/dev/loop0p1".into(),
        };
        for _ in 1..MAX_PROBE_ATTEMPTS {
            assert!(d.start_probe(Instant::now()));
            assert_eq!(d.probed(Err(no_node())), Probed::Again);
            assert_eq!(d.wire_state(), DeviceState::Probing);
        }
        assert!(d.start_probe(Instant::now()));
        assert_eq!(d.probed(Err(no_node())), Probed::Settled);
        assert_eq!(d.wire_state(), DeviceState::Unreadable);
    }

    #[test]
    fn a_probe_that_hangs_times_out_and_its_late_answer_is_ignored() {
        let mut d = device();
        let start = Instant::now();
        d.start_probe(start);
        assert!(!d.probe_overdue(start + PROBE_TIMEOUT / 2));
        assert!(d.probe_overdue(start + PROBE_TIMEOUT));
        assert_eq!(d.wire_state(), DeviceState::Unreadable);
        assert_eq!(
            d.info().error.unwrap(),
            "/dev/loop0p1: did not answer within 10 s when its first sector was read"
        );
        assert!(!d.probe_overdue(start + PROBE_TIMEOUT * 2), "said once");
        assert_eq!(d.probed(Ok(Probe::Other)), Probed::Stale);
        assert_eq!(d.wire_state(), DeviceState::Unreadable);
    }

    #[test]
    fn unlock_is_refused_outside_locked_and_failed() {
        let mut d = device();
        let e = d.begin_unlock().unwrap_err().to_string();
        assert_eq!(
            e,
            "/dev/loop0p1: still being examined; try again in a moment"
        );
        d.phase = Phase::Plain;
        assert!(matches!(
            d.begin_unlock(),
            Err(DaemonError::NotBitLocker { .. })
        ));
        let mut d = unlocked(true);
        assert_eq!(
            d.begin_unlock().unwrap_err().to_string(),
            "/dev/loop0p1: already unlocked (mounted at /media/alice/STICK)"
        );
        d.phase = Phase::Unlocking;
        assert_eq!(
            d.begin_unlock().unwrap_err().to_string(),
            "/dev/loop0p1: another unlock or unmount is under way"
        );
        d.phase = Phase::Failed("x".into());
        assert!(
            d.begin_unlock().is_ok(),
            "a failed volume may be tried again"
        );
        assert_eq!(d.wire_state(), DeviceState::Unlocking);
    }

    #[test]
    fn unlock_outcomes() {
        let mut d = locked();
        d.begin_unlock().unwrap();
        assert!(d.unlocked(Ok(session(true))).is_none());
        assert_eq!(d.wire_state(), DeviceState::Mounted);
        assert_eq!(d.info().mountpoint.as_deref(), Some("/media/alice/STICK"));
        assert_eq!(d.info().owner.as_deref(), Some("alice"));

        let mut d = locked();
        d.begin_unlock().unwrap();
        assert!(d.unlocked(Ok(session(false))).is_none());
        assert_eq!(d.wire_state(), DeviceState::Unlocked);

        // A wrong password leaves it locked, saying why; anything else needs attention.
        let mut d = locked();
        d.begin_unlock().unwrap();
        d.unlocked(Err(&wrong("/dev/loop0p1")));
        assert_eq!(d.wire_state(), DeviceState::Locked);
        assert_eq!(
            d.info().error.as_deref(),
            Some("/dev/loop0p1: wrong password")
        );
        // In use by someone else: refused, still locked, the holder named.
        d.begin_unlock().unwrap();
        d.unlocked(Err(&DaemonError::InUse {
            device: "/dev/loop0p1".into(),
            holder: "/dev/dm-3 (bitlk-1793, opened by udisks)".into(),
        }));
        assert_eq!(d.wire_state(), DeviceState::Locked);
        assert_eq!(
            d.info().error.as_deref(),
            Some("/dev/loop0p1: already in use by /dev/dm-3 (bitlk-1793, opened by udisks)")
        );
        d.begin_unlock().unwrap();
        assert_eq!(d.info().error, None, "a new attempt clears the old reason");
        d.unlocked(Err(&DaemonError::failed("/dev/loop0p1", "mount failed")));
        assert_eq!(d.wire_state(), DeviceState::Failed);
    }

    #[test]
    fn a_locked_device_adopts_a_live_session_and_puts_it_away_as_usual() {
        let mut d = locked();
        d.adopt(Box::new(session(true))).unwrap();
        assert_eq!(d.wire_state(), DeviceState::Mounted);
        assert_eq!(d.info().owner.as_deref(), Some("alice"));
        assert_eq!(d.info().mountpoint.as_deref(), Some("/media/alice/STICK"));
        d.begin_close(AfterClose::Locked).unwrap();
        d.closed(Ok(())).unwrap();
        assert_eq!(d.wire_state(), DeviceState::Locked);
        // Anything but Locked hands it back: still probing, unlocked already, busy, plain.
        for phase in [
            Phase::Probing {
                attempts: 0,
                running: None,
            },
            Phase::Unlocked(Box::new(session(false))),
            Phase::Unlocking,
            Phase::Plain,
            Phase::Failed("x".into()),
        ] {
            let mut d = device();
            d.phase = phase;
            let before = d.wire_state();
            assert!(d.adopt(Box::new(session(true))).is_err(), "{before:?}");
            assert_eq!(d.wire_state(), before);
        }
    }

    #[test]
    fn a_session_the_device_cannot_take_is_handed_back() {
        let mut d = locked();
        assert!(d.unlocked(Ok(session(true))).is_some());
        assert_eq!(d.wire_state(), DeviceState::Locked);
    }

    #[test]
    fn close_and_its_outcomes() {
        let mut d = unlocked(true);
        let s = d.begin_close(AfterClose::Locked).unwrap();
        assert_eq!(d.wire_state(), DeviceState::Locking);
        assert!(d.is_busy());
        assert_eq!(
            d.begin_close(AfterClose::Locked).unwrap_err().to_string(),
            "/dev/loop0p1: another unlock or unmount is under way"
        );
        // Busy: the session comes back, still mounted.
        let busy = DaemonError::Busy {
            target: "/media/alice/STICK".into(),
            holders: "bash (pid 7)".into(),
        };
        let (e, orphan) = *d.closed(Err(Box::new((busy, s)))).unwrap_err();
        assert!(matches!(e, DaemonError::Busy { .. }));
        assert!(orphan.is_none());
        assert_eq!(d.wire_state(), DeviceState::Mounted);
        // Then closed for real.
        d.begin_close(AfterClose::Locked).unwrap();
        d.closed(Ok(())).unwrap();
        assert_eq!(d.wire_state(), DeviceState::Locked);
        assert_eq!(d.info().mountpoint, None);
        assert_eq!(
            d.begin_close(AfterClose::Locked).unwrap_err().to_string(),
            "/dev/loop0p1: is not unlocked"
        );
    }

    #[test]
    fn a_dead_engine_ends_failed_with_its_reason() {
        let mut d = unlocked(true);
        let why = "/dev/loop0p1: the unlocked volume went away (the native engine was killed by signal 9)";
        d.begin_close(AfterClose::Failed(why.into())).unwrap();
        d.closed(Ok(())).unwrap();
        assert_eq!(d.wire_state(), DeviceState::Failed);
        assert_eq!(d.info().error.as_deref(), Some(why));
        assert!(d.info().bitlocker);
    }

    #[test]
    fn a_close_result_for_a_device_not_locking_is_handed_back() {
        let mut d = locked();
        let failed = Box::new((wrong("/dev/loop0p1"), session(false)));
        let (_, orphan) = *d.closed(Err(failed)).unwrap_err();
        assert!(orphan.is_some());
        assert_eq!(d.wire_state(), DeviceState::Locked);
    }

    #[test]
    fn a_lost_job_fails_a_busy_device_only() {
        let mut d = locked();
        assert!(!d.job_lost("x".into()));
        assert_eq!(d.wire_state(), DeviceState::Locked);
        d.begin_unlock().unwrap();
        assert!(d.job_lost("/dev/loop0p1: an internal error".into()));
        assert_eq!(d.wire_state(), DeviceState::Failed);
        assert!(d.begin_unlock().is_ok(), "and it may be tried again");
    }

    #[test]
    fn every_phase_maps_to_one_wire_state() {
        let cases = [
            (
                Phase::Probing {
                    attempts: 0,
                    running: None,
                },
                "probing",
            ),
            (Phase::Plain, "plain"),
            (Phase::Unreadable("x".into()), "unreadable"),
            (Phase::Locked { error: None }, "locked"),
            (Phase::Unlocking, "unlocking"),
            (Phase::Unlocked(Box::new(session(false))), "unlocked"),
            (Phase::Unlocked(Box::new(session(true))), "mounted"),
            (
                Phase::Locking {
                    then: AfterClose::Locked,
                },
                "locking",
            ),
            (Phase::Failed("x".into()), "failed"),
        ];
        for (phase, wire) in cases {
            let mut d = device();
            d.phase = phase;
            assert_eq!(d.wire_state().as_str(), wire);
        }
    }
}
