//! The daemon's operations on devices: appear, probe, unlock, mount, unmount, vanish.
//!
//! The table lock is never held while a child runs: an operation marks its device busy,
//! takes what it needs, works unlocked, then re-locks and checks the device is still the
//! same appearance (its generation) before recording the result.

use super::auth::{self, Caller};
use super::bus::Bus;
use super::error::DaemonError;
use super::filesystem;
use super::mount::{self, Owner};
use super::mountpoint;
use super::probe::{self, Probe, ProbeError};
use super::seat::Seat;
use super::state::{Device, Session, Table, VolumeFacts};
use super::view::{self, View};
use super::watch::{self, Appearance};
use crate::config::Config;
use crate::process::ExitStatus;
use crate::protocol::{DeviceInfo, DeviceState, EventKind, UnlockSecret};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// Under the runtime dir: one FUSE mountpoint per unlocked volume.
pub const VIEWS_DIR: &str = "views";

/// Attempts to open a device node that is not there yet, before giving up on it.
const MAX_PROBE_ATTEMPTS: u8 = 5;

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
    fn view_dir(&self, name: &str) -> PathBuf {
        self.runtime_dir.join(VIEWS_DIR).join(name)
    }
}

pub struct Daemon {
    pub config: RwLock<Config>,
    table: Mutex<Table>,
    /// Signalled whenever an operation finishes (for shutdown to wait on).
    settled: Condvar,
    pub bus: Bus,
    pub paths: Paths,
    /// Whether a caller is the person at the seat (logind).
    seat: Seat,
}

/// What an unlock needs, taken from the table under the lock.
struct UnlockJob<'a> {
    name: String,
    path: String,
    generation: u64,
    secret: &'a UnlockSecret,
    metadata: Option<Arc<crate::bitlocker::Metadata>>,
    read_only: bool,
    mount: bool,
    owner: Owner,
}

impl Daemon {
    pub fn new(config: Config, paths: Paths) -> Self {
        Self {
            config: RwLock::new(config),
            table: Mutex::new(Table::default()),
            settled: Condvar::new(),
            bus: Bus::default(),
            paths,
            seat: Seat::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn emit(&self, kind: EventKind, info: DeviceInfo) {
        log::debug!("{} {} {}", kind.as_str(), info.device, info.state.as_str());
        self.bus.emit(kind, info);
    }

    pub fn status(&self) -> Vec<DeviceInfo> {
        self.lock().devices.values().map(Device::info).collect()
    }

    /// Re-reads /proc/partitions and acts on the difference.
    pub fn rescan(&self) {
        let config = self.config();
        let snap = match watch::snapshot(
            &self.paths.proc_partitions,
            &self.paths.sys_block,
            config.include_loop_devices,
        ) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot read {}: {e}", self.paths.proc_partitions.display());
                return;
            }
        };
        let mut to_probe = Vec::new();
        let mut removed = Vec::new();
        {
            let mut table = self.lock();
            let diff = watch::diff(&table.snapshot, &snap);
            table.snapshot = snap;
            for name in diff.removed {
                if let Some(mut dev) = table.devices.remove(&name) {
                    let session = dev.session.take();
                    let info = dev.info();
                    self.emit(EventKind::Removed, info.clone());
                    removed.push((info, session));
                }
            }
            for appearance in diff.added {
                let generation = table.next_generation;
                table.next_generation += 1;
                let name = appearance.partition.name.clone();
                table
                    .devices
                    .insert(name.clone(), self.new_device(appearance, generation));
                to_probe.push(name);
            }
            // Devices whose node was not there last time.
            to_probe.extend(
                table
                    .devices
                    .values()
                    .filter(|d| d.bitlocker.is_none() && d.probe_attempts > 0)
                    .map(|d| d.name.clone()),
            );
        }
        for (info, session) in removed {
            if let Some(session) = session {
                log::warn!("{}: removed while unlocked; cleaning up", info.device);
                self.teardown(&info.device, session, true);
            }
        }
        to_probe.dedup();
        for name in to_probe {
            self.probe(&name);
        }
    }

    fn new_device(&self, appearance: Appearance, generation: u64) -> Device {
        let name = appearance.partition.name.clone();
        let (vendor, model) = probe::vendor_model(&self.paths.sys_block, &name);
        Device {
            path: self.paths.dev.join(&name).display().to_string(),
            name,
            appearance,
            generation,
            bitlocker: None,
            state: DeviceState::Probing,
            error: None,
            vendor,
            model,
            volume: VolumeFacts::default(),
            metadata: None,
            session: None,
            busy: false,
            probe_attempts: 0,
            left_to_desktop: self.config().leave_bitlocker_to_desktop,
        }
    }

    /// Reads a new device's first sector, once per appearance.
    fn probe(&self, name: &str) {
        let Some((path, generation)) = self
            .lock()
            .devices
            .get(name)
            .map(|d| (d.path.clone(), d.generation))
        else {
            return;
        };
        let result = probe::probe(Path::new(&path));
        let mut table = self.lock();
        let Some(dev) = table
            .devices
            .get_mut(name)
            .filter(|d| d.generation == generation)
        else {
            return;
        };
        let first = dev.probe_attempts == 0;
        match result {
            Ok(Probe::Other) => {
                dev.bitlocker = Some(false);
                dev.state = DeviceState::Plain;
            }
            Ok(Probe::BitLocker(meta)) => {
                dev.bitlocker = Some(true);
                dev.state = DeviceState::Locked;
                match *meta {
                    Ok(meta) => {
                        dev.volume = VolumeFacts::from_metadata(&meta);
                        dev.metadata = Some(Arc::new(meta));
                    }
                    // dislocker may still manage; the unlock falls back to it.
                    Err(e) => log::warn!("{path}: cannot read the BitLocker metadata: {e}"),
                }
            }
            Err(ProbeError::NoNode { .. }) if dev.probe_attempts < MAX_PROBE_ATTEMPTS => {
                dev.probe_attempts += 1;
                if first {
                    log::debug!("{path}: no device node yet; will look again");
                }
                return;
            }
            Err(e) => {
                log::warn!("{e}");
                dev.bitlocker = Some(false);
                dev.state = DeviceState::Failed;
                dev.error = Some(e.to_string());
            }
        }
        let info = dev.info();
        // Under the table's lock, so events go out in the order the states changed.
        self.emit(EventKind::Added, info.clone());
        drop(table);
        if info.bitlocker {
            log::info!(
                "{}: BitLocker volume ({} bytes)",
                info.device,
                info.size_bytes
            );
        }
    }

    /// What the BitLocker metadata of a device says (no secrets in it), and its device path.
    pub fn inspect(
        &self,
        target: &str,
    ) -> Result<(String, crate::bitlocker::VolumeInfo), DaemonError> {
        let table = self.lock();
        let dev = table
            .find(target)
            .ok_or_else(|| DaemonError::NoSuchDevice {
                device: target.into(),
            })?;
        match (dev.bitlocker, &dev.metadata) {
            (Some(false), _) => Err(DaemonError::NotBitLocker {
                device: dev.path.clone(),
            }),
            (_, Some(meta)) => Ok((dev.path.clone(), meta.info.clone())),
            (_, None) => Err(DaemonError::failed(
                &dev.path,
                "the BitLocker metadata could not be read",
            )),
        }
    }

    /// Unlocks (and by default mounts) a BitLocker device for the caller.
    pub fn unlock(
        &self,
        caller: &Caller,
        target: &str,
        secret: &UnlockSecret,
        read_only: bool,
        mount: bool,
        owner: Option<&str>,
    ) -> Result<DeviceInfo, DaemonError> {
        let config = self.config();
        // Before the table's lock: this may wait on logind. Callers outside the group are
        // refused for that, below.
        if config.require_active_session && auth::in_allowed_group(caller, &config.allowed_group) {
            self.seat.authorize(caller, target)?;
        }
        let mut table = self.lock();
        if table.shutting_down {
            return Err(DaemonError::failed(target, "the daemon is shutting down"));
        }
        let name = table
            .find_name(target)
            .ok_or_else(|| DaemonError::NoSuchDevice {
                device: target.into(),
            })?;
        let dev = table
            .devices
            .get_mut(&name)
            .ok_or_else(|| DaemonError::NoSuchDevice {
                device: target.into(),
            })?;
        let path = dev.path.clone();
        let owner = auth::authorize_unlock(caller, &path, &config.allowed_group, owner)?;
        let state_err = |what: &str| DaemonError::InvalidState {
            device: path.clone(),
            what: what.into(),
        };
        match dev.bitlocker {
            None => return Err(state_err("still being examined; try again in a moment")),
            Some(false) => return Err(DaemonError::NotBitLocker { device: path }),
            Some(true) => {}
        }
        if dev.busy {
            return Err(state_err("another unlock or unmount is under way"));
        }
        if let Some(s) = &dev.session {
            let at = s.mounted.as_ref().map_or_else(
                || format!("its decrypted view is {}", s.view.decrypted.display()),
                |m| format!("mounted at {}", m.mountpoint.display()),
            );
            return Err(state_err(&format!("already unlocked ({at})")));
        }
        dev.busy = true;
        dev.state = DeviceState::Unlocking;
        dev.error = None;
        let job = UnlockJob {
            name: name.clone(),
            path: path.clone(),
            generation: dev.generation,
            secret,
            metadata: dev.metadata.clone(),
            read_only: read_only || config.read_only,
            mount,
            owner,
        };
        let info = dev.info();
        self.emit(EventKind::Changed, info);
        drop(table);
        log::info!(
            "{path}: unlocking with {} for {} (asked by {})",
            secret.method(),
            job.owner.name,
            caller.describe()
        );

        let result = self.run_unlock(&job, &config);

        let mut table = self.lock();
        let still_here = table
            .devices
            .get(&name)
            .is_some_and(|d| d.generation == job.generation);
        if !still_here {
            drop(table);
            if let Ok(session) = result {
                self.teardown(&path, session, true);
            }
            self.settled.notify_all();
            return Err(DaemonError::failed(
                &path,
                "the drive was removed while unlocking",
            ));
        }
        let reserved: Vec<PathBuf> = match &result {
            Ok(s) => s.mounted.iter().map(|m| m.mountpoint.clone()).collect(),
            Err(_) => Vec::new(),
        };
        for p in reserved {
            table.reserved.remove(&p);
        }
        let dev = table.devices.get_mut(&name).expect("checked above");
        dev.busy = false;
        let outcome = match result {
            Ok(session) => {
                dev.state = if session.mounted.is_some() {
                    DeviceState::Mounted
                } else {
                    DeviceState::Unlocked
                };
                dev.session = Some(session);
                Ok(dev.info())
            }
            Err(e) => {
                dev.state = match e {
                    DaemonError::WrongSecret { .. } | DaemonError::CannotOpen { .. } => {
                        DeviceState::Locked
                    }
                    _ => DeviceState::Failed,
                };
                dev.error = Some(e.to_string());
                Err(e)
            }
        };
        let info = dev.info();
        self.emit(EventKind::Changed, info.clone());
        drop(table);
        self.settled.notify_all();
        match &outcome {
            Ok(i) => log::info!(
                "{}: unlocked{}",
                i.device,
                i.mountpoint
                    .as_ref()
                    .map(|m| format!(", mounted at {m}"))
                    .unwrap_or_default()
            ),
            Err(e) => log::warn!("{e}"),
        }
        outcome
    }

    fn run_unlock(&self, job: &UnlockJob, config: &Config) -> Result<Session, DaemonError> {
        let dir = self.paths.view_dir(&job.name);
        prepare_dir(&job.path, &dir)?;
        let started = View::start(&view::Request {
            device: &job.path,
            name: &job.name,
            secret: job.secret,
            metadata: job.metadata.as_deref(),
            dir: &dir,
            read_only: job.read_only,
            choice: config.engine,
        });
        let view = match started {
            Ok(v) => v,
            Err(e) => {
                mount::remove_dirs(&[dir]);
                return Err(e);
            }
        };
        log::info!(
            "{}: decrypted by the {} engine",
            job.path,
            view.engine.as_str()
        );
        let mut session = Session {
            view,
            owner: job.owner.clone(),
            fs: None,
            mounted: None,
            read_only: job.read_only,
        };
        let fs = match filesystem::identify(&session.view.decrypted) {
            Ok(fs) => fs,
            Err(e) => {
                log::warn!("{}: cannot read the decrypted view: {e}", job.path);
                None
            }
        };
        session.fs = fs.clone();
        if !job.mount {
            return Ok(session);
        }
        let Some(fs) = fs else {
            session.view.stop(&job.path, false);
            return Err(DaemonError::CannotOpen {
                device: job.path.clone(),
                cause: "no NTFS, exFAT or FAT filesystem inside; use --no-mount to get the decrypted view".into(),
            });
        };
        let parent = config.mount_root.join(&job.owner.name);
        let mountpoint = {
            let mut table = self.lock();
            let chosen =
                mountpoint::choose(&parent, fs.label.as_deref(), fs.uuid.as_deref(), |p| {
                    p.exists() || table.reserved.contains(p)
                });
            table.reserved.insert(chosen.clone());
            chosen
        };
        let result = mount::mount(
            &job.path,
            &session.view.decrypted,
            &fs,
            &mountpoint,
            &job.owner,
            job.read_only,
            config,
        );
        match result {
            Ok(m) => {
                session.mounted = Some(m);
                Ok(session)
            }
            Err(e) => {
                self.lock().reserved.remove(&mountpoint);
                session.view.stop(&job.path, false);
                Err(e)
            }
        }
    }

    /// Puts away what the caller may: one target, or everything of theirs with `all`.
    pub fn unmount(
        &self,
        caller: &Caller,
        target: Option<&str>,
        all: bool,
        force: bool,
        power_off: bool,
    ) -> Result<Vec<String>, DaemonError> {
        let mut jobs = Vec::new();
        {
            let mut table = self.lock();
            let names: Vec<String> = if all {
                table
                    .devices
                    .values()
                    .filter(|d| {
                        !d.busy
                            && d.session
                                .as_ref()
                                .is_some_and(|s| auth::may_unmount(caller, &s.owner))
                    })
                    .map(|d| d.name.clone())
                    .collect()
            } else {
                let target = target.ok_or_else(|| {
                    DaemonError::BadRequest("unmount needs a device, a mountpoint or --all".into())
                })?;
                let name = table
                    .find_name(target)
                    .ok_or_else(|| DaemonError::NoSuchDevice {
                        device: target.into(),
                    })?;
                vec![name]
            };
            for name in &names {
                let dev = table
                    .devices
                    .get_mut(name)
                    .expect("names come from the table");
                let state_err = |what: &str| DaemonError::InvalidState {
                    device: dev.path.clone(),
                    what: what.into(),
                };
                if dev.busy {
                    return Err(state_err("another unlock or unmount is under way"));
                }
                let Some(session) = &dev.session else {
                    return Err(state_err("is not unlocked"));
                };
                if !auth::may_unmount(caller, &session.owner) {
                    return Err(DaemonError::NotAuthorized {
                        device: dev.path.clone(),
                        why: format!(
                            "it was unlocked by {}, not by {}",
                            session.owner.name,
                            caller.describe()
                        ),
                    });
                }
            }
            for name in names {
                let dev = table.devices.get_mut(&name).expect("checked above");
                dev.busy = true;
                let was = dev.state;
                dev.state = DeviceState::Locking;
                let session = dev.session.take().expect("checked above");
                jobs.push((name, dev.generation, dev.path.clone(), session, was));
                // Said before the slow part: unmounting may wait for the driver to write.
                self.emit(EventKind::Changed, dev.info());
            }
        }
        let mut done = Vec::new();
        let mut first_error = None;
        for (name, generation, path, session, was) in jobs {
            let result = self.put_away(&path, session, force);
            let mut table = self.lock();
            let dev = table
                .devices
                .get_mut(&name)
                .filter(|d| d.generation == generation);
            match (result, dev) {
                (Ok(()), Some(dev)) => {
                    dev.busy = false;
                    dev.state = DeviceState::Locked;
                    dev.error = None;
                    let info = dev.info();
                    let disk = super::eject::disk_of(&name);
                    // Safe to remove once nothing else on the stick is unlocked.
                    let last = !table.devices.values().any(|d| {
                        (d.busy || d.session.is_some()) && super::eject::disk_of(&d.name) == disk
                    });
                    self.emit(EventKind::Changed, info);
                    drop(table);
                    log::info!("{path}: put away");
                    if last {
                        match super::eject::safe_to_remove(&self.paths.dev, &disk, power_off) {
                            Ok(done) => log::info!("{path}: {done}; it can be removed"),
                            Err(e) => log::warn!("{path}: {e}"),
                        }
                    }
                    done.push(path);
                }
                (Ok(()), None) => done.push(path),
                (Err(failed), Some(dev)) => {
                    let (e, session) = *failed;
                    dev.busy = false;
                    dev.session = Some(session);
                    dev.state = was;
                    let info = dev.info();
                    self.emit(EventKind::Changed, info);
                    drop(table);
                    log::warn!("{e}");
                    first_error.get_or_insert(e);
                }
                (Err(failed), None) => {
                    let (e, session) = *failed;
                    drop(table);
                    self.teardown(&path, session, true);
                    first_error.get_or_insert(e);
                }
            }
            self.settled.notify_all();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Unmounts the filesystem then stops the engine. On failure hands the session back.
    fn put_away(
        &self,
        device: &str,
        mut session: Session,
        force: bool,
    ) -> Result<(), Box<(DaemonError, Session)>> {
        if let Some(m) = session.mounted.take() {
            if let Err(e) = mount::unmount(device, &session.view.decrypted, &m, force) {
                session.mounted = Some(m);
                return Err(Box::new((e, session)));
            }
        }
        session.view.stop(device, force);
        Ok(())
    }

    /// Cleans up after a device that vanished or whose engine died: lazy unmounts, stop
    /// the engine, free loop devices, remove directories.
    fn teardown(&self, device: &str, session: Session, lazy: bool) {
        if let Some(m) = &session.mounted {
            if let Err(e) = mount::unmount(device, &session.view.decrypted, m, lazy) {
                log::warn!("{e}");
            }
            self.lock().reserved.remove(&m.mountpoint);
        }
        session.view.stop(device, lazy);
    }

    /// A child exited (SIGCHLD). If it was an engine we supervise and nobody asked it to
    /// stop, its volume is gone: clean up and say so.
    pub fn child_exited(&self, pid: Pid, status: ExitStatus) {
        let mut table = self.lock();
        let Some(dev) = table.devices.values_mut().find(|d| {
            !d.busy
                && d.session
                    .as_ref()
                    .is_some_and(|s| s.view.pid() == Some(pid))
        }) else {
            return;
        };
        let session = dev.session.take().expect("matched above");
        let engine = session.view.engine.as_str();
        let path = dev.path.clone();
        dev.busy = true;
        drop(table);
        log::warn!("{path}: the {engine} engine {status} unexpectedly; cleaning up");
        self.teardown(&path, session, true);
        let mut table = self.lock();
        if let Some(dev) = table.devices.values_mut().find(|d| d.path == path) {
            dev.busy = false;
            dev.state = DeviceState::Failed;
            dev.error = Some(format!(
                "{path}: the unlocked volume went away (the {engine} engine {status})"
            ));
            let info = dev.info();
            self.emit(EventKind::Changed, info);
            drop(table);
        }
        self.settled.notify_all();
    }

    /// The mount table changed. A volume whose filesystem someone else unmounted (the file
    /// manager, `umount`, `umount -l`) is put away on a worker, as if we had unmounted it:
    /// its FUSE driver waited for, loop device detached, engine stopped, directories removed;
    /// then it is locked again and says so.
    pub fn mounts_changed(self: &Arc<Self>) {
        let mounted: std::collections::HashSet<PathBuf> = super::mounts::mounts()
            .into_iter()
            .map(|m| m.mountpoint)
            .collect();
        let mut table = self.lock();
        let gone: Vec<String> = table
            .devices
            .values()
            .filter(|d| !d.busy)
            .filter(|d| {
                d.session
                    .as_ref()
                    .and_then(|s| s.mounted.as_ref())
                    .is_some_and(|m| !mounted.contains(&m.mountpoint))
            })
            .map(|d| d.name.clone())
            .collect();
        for name in gone {
            let dev = table.devices.get_mut(&name).expect("listed above");
            let (path, generation) = (dev.path.clone(), dev.generation);
            // The session goes to the worker only once it runs: if no thread can be had,
            // it stays here, mounted as far as we know, for the next change to retry.
            let (tx, rx) = std::sync::mpsc::channel::<Session>();
            let daemon = Arc::clone(self);
            let worker_path = path.clone();
            let spawned = std::thread::Builder::new()
                .name("guilocker-put-away".into())
                .spawn(move || {
                    if let Ok(session) = rx.recv() {
                        daemon.put_away_unmounted(&name, generation, &worker_path, session);
                    }
                });
            match spawned {
                Ok(_) => {
                    log::info!("{path}: unmounted by another program; putting it away");
                    dev.busy = true;
                    let session = dev.session.take().expect("filtered above");
                    let _ = tx.send(session);
                }
                Err(e) => log::error!("{path}: cannot start a thread to put it away: {e}"),
            }
        }
    }

    fn put_away_unmounted(&self, name: &str, generation: u64, path: &str, session: Session) {
        self.teardown(path, session, false);
        let mut table = self.lock();
        if let Some(dev) = table
            .devices
            .get_mut(name)
            .filter(|d| d.generation == generation)
        {
            dev.busy = false;
            dev.state = DeviceState::Locked;
            dev.error = None;
            let info = dev.info();
            self.emit(EventKind::Changed, info);
            drop(table);
            log::info!("{path}: put away");
        }
        self.settled.notify_all();
    }

    /// On SIGTERM: refuse new work, let running operations finish, put everything away.
    pub fn shutdown(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut table = self.lock();
        table.shutting_down = true;
        while table.devices.values().any(|d| d.busy) && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            table = self
                .settled
                .wait_timeout(table, left.min(Duration::from_secs(1)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let sessions: Vec<(String, Session)> = table
            .devices
            .values_mut()
            .filter_map(|d| d.session.take().map(|s| (d.path.clone(), s)))
            .collect();
        drop(table);
        for (path, session) in sessions {
            match self.put_away(&path, session, false) {
                Ok(()) => log::info!("{path}: put away"),
                Err(failed) => {
                    let (e, session) = *failed;
                    log::warn!("{e}; detaching lazily");
                    self.teardown(&path, session, true);
                }
            }
        }
    }
}

/// Makes the engine's mountpoint (0700, root). A stale FUSE mount left by a crashed daemon is
/// detached first.
fn prepare_dir(device: &str, dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(parent)
            .map_err(|e| DaemonError::io(device, "cannot create", parent, e))?;
    }
    if super::mounts::mounted_at(dir).is_some() {
        if !super::mounts::is_dead(dir) {
            // An engine we do not know (a previous daemon's) still serves it; detaching
            // it could pull the disk from under a mounted filesystem.
            return Err(DaemonError::InvalidState {
                device: device.into(),
                what: format!(
                    "is still unlocked by an earlier guilocker ({} is mounted); unmount it first",
                    dir.display()
                ),
            });
        }
        log::warn!("{device}: dead mount at {}; detaching it", dir.display());
        let _ = mount::unmount_path(dir, true);
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(DaemonError::io(device, "cannot create", dir, e)),
    }
}
