//! `guilocker agent`: the per-user login agent. It follows the daemon's events, starts the
//! GTK dialog (a child process; the agent never loads GTK) for each BitLocker drive that is
//! plugged in, sends the unlock, and tells the person what happened with notifications.

pub mod at_login;
mod dialogs;
mod notifications;
mod open;
mod reconnect;
mod seat;

use crate::client::{Client, ClientError};
use crate::protocol::{DeviceInfo, DeviceState, EventKind, Protector};
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tr::tr;

pub use dialogs::DialogHandle;
pub use open::{run as open, OpenError};

pub struct Options {
    pub socket: PathBuf,
}

/// The daemon's message without its leading "/dev/sdb1: ", for a dialog or notification
/// that already says which drive it is about.
fn cause<'a>(device: &str, message: &'a str) -> &'a str {
    message
        .strip_prefix(device)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(message)
}

/// One plug of one drive: its device name and the kernel's disk sequence number.
type Appearance = (String, Option<u64>);

fn appearance(device: &DeviceInfo) -> Appearance {
    (device.device.clone(), device.diskseq)
}

/// What the agent remembers between events.
#[derive(Default)]
struct Memory {
    /// Open dialogs, by device.
    dialogs: HashMap<String, DialogHandle>,
    /// Devices that get no new dialog until they are plugged in again: cancelled, or
    /// already unlocked.
    settled: HashSet<Appearance>,
    /// Devices this agent unlocked, with their label, to tell the person if they vanish.
    mine: HashMap<String, String>,
    /// The id of the last dialog started.
    last_dialog: u64,
}

/// A connection that ends sooner than this (the daemon answers but refuses us, or is
/// shutting down) is retried after a pause, not in a tight loop.
const SHORT_SESSION: Duration = Duration::from_secs(5);
/// The first and the longest pause between such retries.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct Agent {
    socket: PathBuf,
    memory: Mutex<Memory>,
    /// Told when a dialog ends (`guilocker open` waits for its dialogs on it).
    ended: Condvar,
    /// The agent's login session is in the foreground (logind); dialogs only then.
    active: AtomicBool,
    /// Started by a person to open drives now (`guilocker open`), not at login: a disk
    /// inside the machine is asked about too, and an opened drive is shown in the file
    /// manager at once.
    on_demand: bool,
    /// The person's list of drives to open at every login (a disk inside the computer is
    /// asked about only if it is in it).
    at_login: Option<PathBuf>,
}

/// The agent's pidfile: one agent per user session.
fn instance_lock() -> Result<crate::pidfile::Pidfile> {
    let dir = dirs::runtime_dir()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/guilocker-{}", nix::unistd::getuid())));
    let path = dir.join("guilocker-agent.pid");
    let mut lock = crate::pidfile::Pidfile::lock(&path).map_err(|e| match e {
        crate::pidfile::PidfileError::AlreadyRunning { pid, .. } => {
            anyhow::anyhow!("an agent is already running in this session (pid {pid})")
        }
        other => other.into(),
    })?;
    lock.write_pid()?;
    Ok(lock)
}

pub fn run(opts: Options) -> Result<()> {
    crate::logging::init();
    if nix::unistd::getuid().is_root() {
        anyhow::bail!("the agent runs as the logged-in user, not as root");
    }
    let _lock = instance_lock().context("cannot start the agent")?;
    let agent = Arc::new(Agent::new(opts.socket));
    seat::watch(Arc::clone(&agent));
    let mut waiting = false;
    let mut backoff: Option<Duration> = None;
    loop {
        let started = Instant::now();
        let result = agent.session();
        match &result {
            Ok(()) => {
                log::info!("the daemon went away; waiting for it to come back");
                waiting = true;
            }
            Err(e) => {
                // Said once per outage, not on every retry.
                if !waiting {
                    log::info!("{e}; waiting for the daemon");
                    waiting = true;
                }
            }
        }
        // No socket to connect to: the watch below wakes up when there is one. But a daemon
        // that answers and then ends the session at once would be reconnected to at once,
        // over and over. One quick end may be a restart: straight back to waiting. Quick
        // ends in a row: pause, longer each time.
        let answered = !matches!(result, Err(ClientError::Connect { .. }));
        if answered && started.elapsed() < SHORT_SESSION {
            if let Some(pause) = backoff {
                std::thread::sleep(pause);
            }
            backoff = Some(backoff.map_or(MIN_BACKOFF, |b| (b * 2).min(MAX_BACKOFF)));
        } else {
            backoff = None;
        }
        reconnect::wait_for_socket(&agent.socket);
    }
}

impl Agent {
    fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            memory: Mutex::default(),
            ended: Condvar::new(),
            active: AtomicBool::new(true),
            on_demand: false,
            at_login: at_login::path(),
        }
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One connection's life: subscribe first (so nothing is missed), then look at what is
    /// already plugged in, then follow events until the daemon goes away.
    fn session(self: &Arc<Self>) -> Result<(), ClientError> {
        let events = Client::connect(&self.socket)?.subscribe()?;
        let devices = Client::connect(&self.socket)?.status()?;
        log::info!("connected to the daemon at {}", self.socket.display());
        self.forget_missing(&devices);
        for device in devices {
            self.offer(device);
        }
        for event in events {
            let (kind, device) = event?;
            self.on_event(kind, device);
        }
        Ok(())
    }

    /// After a reconnect: what went away while the daemon was down gets no Removed event.
    /// Close its dialog and forget it, so a stick plugged in again (even under the same
    /// name: it has a new disk sequence number) is asked about again.
    fn forget_missing(&self, devices: &[DeviceInfo]) {
        let present: HashSet<Appearance> = devices.iter().map(appearance).collect();
        let mut memory = self.memory();
        memory.settled.retain(|a| present.contains(a));
        memory
            .mine
            .retain(|d, _| present.iter().any(|(name, _)| name == d));
        memory.dialogs.retain(|d, dialog| {
            let keep = present.contains(&(d.clone(), dialog.diskseq()));
            if !keep {
                dialog.close("The drive was removed.");
            }
            keep
        });
    }

    fn on_event(self: &Arc<Self>, kind: EventKind, device: DeviceInfo) {
        match kind {
            EventKind::Added => self.offer(device),
            EventKind::Removed => {
                let mut memory = self.memory();
                memory.settled.retain(|(name, _)| *name != device.device);
                if let Some(dialog) = memory.dialogs.remove(&device.device) {
                    dialog.close("The drive was removed.");
                }
                if let Some(label) = memory.mine.remove(&device.device) {
                    drop(memory);
                    notifications::problem(
                        &tr!("‘{label}’ was removed", label),
                        &tr!("It was unplugged while still in use. Use Unmount before unplugging, or files may be lost."),
                    );
                }
            }
            EventKind::Changed => match device.state {
                DeviceState::Unlocked | DeviceState::Mounted => {
                    let mut memory = self.memory();
                    memory.settled.insert(appearance(&device));
                    // Unlocked elsewhere (the CLI, another session): this dialog is moot.
                    if memory
                        .dialogs
                        .get(&device.device)
                        .is_some_and(|d| !d.is_unlocking())
                    {
                        if let Some(dialog) = memory.dialogs.remove(&device.device) {
                            dialog.close("The drive was unlocked elsewhere.");
                        }
                    }
                }
                DeviceState::Locked => {
                    self.memory().mine.remove(&device.device);
                }
                DeviceState::Failed => {
                    let label = self.memory().mine.remove(&device.device);
                    if let (Some(label), Some(error)) = (label, &device.error) {
                        notifications::problem(
                            &tr!("‘{label}’ stopped working", label),
                            &crate::i18n::localize(error),
                        );
                    }
                }
                DeviceState::Unlocking
                | DeviceState::Locking
                | DeviceState::Plain
                | DeviceState::Probing
                | DeviceState::Unreadable
                | DeviceState::Unknown => {}
            },
        }
    }

    /// The login session went to the background (`false`) or came back. Dialogs are
    /// withdrawn, not cancelled: back in the foreground, the agent asks again about every
    /// drive still locked.
    fn set_active(self: &Arc<Self>, active: bool, session: &str) {
        // Under the memory lock, as `offer` reads it: no dialog starts after the withdrawal.
        let mut memory = self.memory();
        if self.active.swap(active, Ordering::SeqCst) == active {
            return;
        }
        if !active {
            log::info!("session {session} is in the background: withdrawing dialogs");
            // One whose unlock is under way finishes: its answer is on its way.
            memory.dialogs.retain(|_, dialog| {
                let finishing = dialog.is_unlocking();
                if !finishing {
                    dialog.close("The session went to the background.");
                }
                finishing
            });
            return;
        }
        drop(memory);
        log::info!("session {session} is in the foreground again");
        match Client::connect(&self.socket).and_then(|mut c| c.status()) {
            Ok(devices) => devices.into_iter().for_each(|d| self.offer(d)),
            // Not connected now: the next connection offers what is plugged in.
            Err(e) => log::debug!("cannot list drives after the session came back: {e}"),
        }
    }

    /// Starts a dialog for a locked BitLocker drive, unless one is open or it is settled, or
    /// the session is in the background.
    fn offer(self: &Arc<Self>, device: DeviceInfo) {
        if !device.bitlocker
            || device.state != DeviceState::Locked
            || (device.left_to_desktop && !self.on_demand)
        {
            return;
        }
        // A disk inside the machine (on a dual-boot laptop, Windows' own C: drive) is opened
        // on demand, never asked about at login or boot, as GNOME leaves system disks alone;
        // nor is a drive no secret opens here.
        let chosen_for_login = || {
            let (Some(list), Some(guid)) = (&self.at_login, &device.guid) else {
                return false;
            };
            at_login::load(list).contains(&guid.to_ascii_lowercase())
        };
        if (!device.removable && !self.on_demand && !chosen_for_login())
            || device.cannot_open.is_some()
        {
            log::debug!(
                "{}: not asking ({})",
                device.device,
                device
                    .cannot_open
                    .as_deref()
                    .unwrap_or("a disk inside the machine: open it with guilocker unlock")
            );
            return;
        }
        let mut memory = self.memory();
        if !self.active.load(Ordering::SeqCst) {
            log::debug!(
                "{}: not asking while the session is in the background",
                device.device
            );
            return;
        }
        if memory.dialogs.contains_key(&device.device)
            || memory.settled.contains(&appearance(&device))
        {
            return;
        }
        if device.protectors.contains(&Protector::ClearKey) {
            // Protection is suspended: it opens without a secret, so nothing to ask.
            memory.settled.insert(appearance(&device));
            drop(memory);
            if self.on_demand {
                // `guilocker open` returns once this drive is open.
                self.open_without_secret(device);
                return;
            }
            let agent = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("guilocker-clear-key".into())
                .spawn(move || agent.open_without_secret(device));
            if let Err(e) = spawned {
                log::error!("cannot start a thread to open a drive: {e}");
            }
            return;
        }
        memory.last_dialog += 1;
        let id = memory.last_dialog;
        match dialogs::start(Arc::clone(self), device.clone(), id) {
            Ok(handle) => {
                memory.dialogs.insert(device.device.clone(), handle);
            }
            Err(e) => {
                log::error!("{}: cannot show the unlock dialog: {e}", device.device);
                memory.settled.insert(appearance(&device));
            }
        }
    }

    /// Unlocks and mounts a drive whose protection is suspended; says what happened.
    fn open_without_secret(&self, device: DeviceInfo) {
        log::info!(
            "{}: protection is suspended; opening it without a password",
            device.device
        );
        let request = crate::protocol::Request::Unlock {
            device: device.device.clone(),
            secret: crate::protocol::UnlockSecret::ClearKey,
            read_only: false,
            mount: true,
            owner: None,
        };
        match Client::connect(&self.socket).and_then(|mut c| c.request(&request)) {
            Ok(crate::protocol::Response::Unlocked { device: info }) => self.unlocked(&info, false),
            Ok(other) => log::warn!("{}: unexpected reply {other:?}", device.device),
            Err(e) => {
                let text = e.localized();
                let title = tr!("{device} cannot be opened", device = device.device);
                notifications::problem(&title, cause(&device.device, &text));
            }
        }
    }

    /// Called by a dialog's thread when its dialog `id` has ended. Only the dialog still on
    /// record counts: after an unplug its device was forgotten, and a replug may already have
    /// a newer dialog, which must be neither dropped nor settled by the old one's end.
    fn dialog_ended(&self, device: &str, id: u64, settle: bool) {
        let mut memory = self.memory();
        if memory.dialogs.get(device).is_some_and(|d| d.id() == id) {
            let ended = memory.dialogs.remove(device);
            if let (true, Some(dialog)) = (settle, ended) {
                memory.settled.insert((device.to_owned(), dialog.diskseq()));
            }
        }
        self.ended.notify_all();
    }

    /// `remembered`: opened with a secret from the keyring, which the notification says.
    fn unlocked(&self, device: &DeviceInfo, remembered: bool) {
        let label = notifications::label(device);
        self.memory().mine.insert(device.device.clone(), label);
        if self.on_demand {
            // The person asked for this drive from the applications menu: show it.
            notifications::open(device);
        } else {
            notifications::unlocked(self.socket.clone(), device.clone(), remembered);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        Agent::new(PathBuf::from("/nonexistent/control.sock"))
    }

    /// Settled for one plug; the same name plugged in again (new diskseq) is asked about.
    #[test]
    fn a_replug_under_the_same_name_is_a_new_appearance() {
        let agent = agent();
        let mut first = device("/dev/sdb1");
        first.diskseq = Some(7);
        agent.memory().settled.insert(appearance(&first));
        let mut again = first.clone();
        again.diskseq = Some(8);
        agent.forget_missing(&[again.clone()]);
        let memory = agent.memory();
        assert!(!memory.settled.contains(&appearance(&first)));
        assert!(!memory.settled.contains(&appearance(&again)));
    }

    fn device(name: &str) -> DeviceInfo {
        serde_json::from_value(serde_json::json!({
            "device": name, "bitlocker": true, "state": "locked", "mountpoint": null,
            "decrypted": null, "label": null, "size_bytes": 1, "owner": null,
            "removable": true, "connection": "usb",
        }))
        .unwrap()
    }

    /// A disk inside the machine, or a drive only a TPM opens: never asked about. A
    /// removable one of the same kind is (its dialog fails to start here, with no display,
    /// but the attempt is counted).
    #[test]
    fn internal_disks_and_drives_no_secret_opens_get_no_dialog() {
        let agent = Arc::new(agent());
        let mut internal = device("/dev/nvme0n1p3");
        internal.removable = false;
        internal.connection = Some(crate::protocol::Connection::Internal);
        agent.offer(internal);
        let mut tpm_only = device("/dev/sdc1");
        tpm_only.cannot_open = Some("/dev/sdc1: cannot be opened here: TPM only".into());
        agent.offer(tpm_only);
        let memory = agent.memory();
        assert!(memory.dialogs.is_empty());
        assert!(memory.settled.is_empty());
        assert_eq!(memory.last_dialog, 0, "no dialog was even tried");
        drop(memory);
        agent.offer(device("/dev/sdb1"));
        assert_eq!(agent.memory().last_dialog, 1);
    }

    /// `leave_bitlocker_to_desktop`: the desktop's own dialog asks; ours never starts.
    #[test]
    fn a_drive_left_to_the_desktop_gets_no_dialog() {
        let agent = Arc::new(agent());
        let mut left = device("/dev/sdb1");
        left.left_to_desktop = true;
        agent.offer(left);
        let memory = agent.memory();
        assert!(memory.dialogs.is_empty());
        assert!(memory.settled.is_empty());
    }

    /// A disk inside the computer is asked about at login only when the person chose to have
    /// it opened then (the dialog's "Remember forever and open at every login").
    #[test]
    fn an_internal_disk_chosen_for_login_is_asked_about() {
        let dir =
            std::env::temp_dir().join(format!("guilocker-agent-login-{}", std::process::id()));
        let list = dir.join("open-at-login");
        let agent = Arc::new(Agent {
            at_login: Some(list.clone()),
            ..agent()
        });
        let mut internal = device("/dev/nvme0n1p3");
        internal.removable = false;
        internal.guid = Some("0F8C1E7E-2B3A-4C5D-8E9F-0A1B2C3D4E5F".into());
        agent.offer(internal.clone());
        assert_eq!(agent.memory().last_dialog, 0, "asked before it was chosen");
        at_login::set(&list, "0f8c1e7e-2b3a-4c5d-8e9f-0a1b2c3d4e5f", true).unwrap();
        agent.offer(internal);
        assert_eq!(agent.memory().last_dialog, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// In the background: open dialogs are withdrawn, and none starts, but nothing is
    /// settled, so the person is asked once the session is back.
    #[test]
    fn a_background_session_withdraws_dialogs_and_asks_nothing() {
        let agent = Arc::new(agent());
        agent
            .memory()
            .dialogs
            .insert("/dev/sdb1".into(), DialogHandle::for_test(1));
        agent.set_active(false, "2");
        agent.offer(device("/dev/sdc1"));
        let memory = agent.memory();
        assert!(memory.dialogs.is_empty());
        assert!(memory.settled.is_empty());
    }

    #[test]
    fn a_cancelled_dialog_settles_its_device() {
        let agent = agent();
        agent
            .memory()
            .dialogs
            .insert("/dev/sdb1".into(), DialogHandle::for_test(1));
        agent.dialog_ended("/dev/sdb1", 1, true);
        let memory = agent.memory();
        assert!(memory.dialogs.is_empty());
        assert!(memory.settled.contains(&("/dev/sdb1".into(), None)));
    }

    /// Unplugged, plugged in again under the same name, and only then does the first
    /// dialog's end come in: the new dialog stays, and the device is not settled.
    #[test]
    fn an_old_dialog_ending_late_leaves_the_new_one_alone() {
        let agent = agent();
        agent
            .memory()
            .dialogs
            .insert("/dev/sdb1".into(), DialogHandle::for_test(2));
        agent.dialog_ended("/dev/sdb1", 1, true);
        let memory = agent.memory();
        assert_eq!(
            memory.dialogs.get("/dev/sdb1").map(DialogHandle::id),
            Some(2)
        );
        assert!(!memory.settled.iter().any(|(d, _)| d == "/dev/sdb1"));
    }

    #[test]
    fn a_reconnect_forgets_what_went_away_meanwhile() {
        let agent = agent();
        {
            let mut memory = agent.memory();
            memory.settled.insert(("/dev/sdb1".into(), None));
            memory.settled.insert(("/dev/sdc1".into(), None));
            memory.mine.insert("/dev/sdb1".into(), "A".into());
            memory
                .dialogs
                .insert("/dev/sdd1".into(), DialogHandle::for_test(1));
        }
        agent.forget_missing(&[device("/dev/sdc1")]);
        let memory = agent.memory();
        assert_eq!(
            memory.settled.iter().collect::<Vec<_>>(),
            [&("/dev/sdc1".to_owned(), None)]
        );
        assert!(memory.mine.is_empty());
        assert!(memory.dialogs.is_empty());
    }
}
