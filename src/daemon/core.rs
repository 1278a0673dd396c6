//! The daemon's core: one owner of the device table.
//!
//! [`Core`] lives on the event loop's thread and is the only code that reads or changes a
//! device. Connection threads hold a [`Shared`] and send it [`Ask`]s with a reply channel;
//! everything slow (probing a first sector, starting an engine, mounting, unmounting, tearing
//! down after an unplug, ejecting) runs as a job on a worker thread, which posts a [`Done`]
//! back. So the loop never waits on a device or a child, a device changes state in one
//! thread in one order, and events are numbered in that order.

use super::adopt::Adopted;
use super::auth::{self, Caller};
use super::device::{AfterClose, Device, Phase, Probed};
use super::error::DaemonError;
use super::host::power::{self, Host};
use super::host::sysfs::Sysfs;
use super::jobs::UnlockJob;
use super::mailbox::Inbox;
use super::mounts::MOUNTINFO;
use super::probe;
use super::session::{CloseMode, Session};
pub use super::shared::{
    Ask, Closing, Done, For, Msg, Paths, Reply, Shared, UnlockAsk, Unmounted, VIEWS_DIR,
};
use super::table::Table;
use super::{jobs, watch};
use crate::bitlocker::VolumeInfo;
use crate::config::{Config, InternalDrives};
use crate::process::ExitStatus;
use crate::protocol::{DeviceInfo, EventKind, InUse, PowerOff, UseCause};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the desktop has to eject or power off a drive itself after locking its volume.
const DESKTOP_EJECT_GRACE: Duration = Duration::from_secs(5);

/// What an unmount request comes to.
enum Plan {
    /// Close these sessions (name, generation, path, session), then eject their drives.
    Close(Vec<(String, u64, String, Session)>),
    /// A volume locked already (name, path): only its drive is flushed and powered off.
    Eject(String, String),
}

/// Runs a job; `None` if it panicked (the panic is logged by the panic hook).
fn run_job<F: FnOnce(&Shared) -> Done>(job: F, shared: &Shared) -> Option<Done> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(shared))).ok()
}

/// The loop's side: the device table and the jobs running for it.
pub struct Core {
    pub shared: Arc<Shared>,
    table: Table,
    inbox: Inbox<Msg>,
    /// Jobs running, except probes: shutdown waits for them.
    jobs: usize,
    /// Jobs running per device name, including those for a device since unplugged: a
    /// re-plugged stick is not unlocked while its predecessor's view is still being closed
    /// (they share the view directory and the mapping name).
    held: HashMap<String, usize>,
    /// Volumes an earlier daemon left alive, waiting for their device's probe to settle.
    adopting: Vec<Adopted>,
    shutting_down: bool,
}

impl Core {
    pub fn new(config: Config, paths: Paths) -> nix::Result<Self> {
        let (mailbox, inbox) = super::mailbox::mailbox()?;
        Ok(Self {
            shared: Arc::new(Shared::new(config, paths, mailbox)),
            table: Table::default(),
            inbox,
            jobs: 0,
            held: HashMap::new(),
            adopting: Vec::new(),
            shutting_down: false,
        })
    }

    /// Readable when asks or job results are waiting.
    pub fn inbox_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inbox.fd()
    }

    /// Handles every message waiting.
    pub fn deliver(&mut self) {
        for msg in self.inbox.take() {
            self.handle(msg);
        }
    }

    fn handle(&mut self, msg: Msg) {
        let Msg::Done(of, done) = msg else {
            if let Msg::Ask(ask) = msg {
                self.answer(ask);
            }
            return;
        };
        let For::Devices(devices) = of else {
            if let Some(done) = done {
                self.finish(done);
            }
            return;
        };
        self.jobs -= 1;
        for (name, _) in &devices {
            if let Some(n) = self.held.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(name);
                }
            }
        }
        match done {
            Some(done) => self.finish(done),
            None => self.job_panicked(&devices),
        }
        // A session may have come back (a refused close) or been made (an unlock) while
        // its engine died or its filesystem was unmounted: neither is reported twice.
        self.recheck();
        if self.shutting_down {
            self.put_away_all();
        }
    }

    /// Runs `job` on a worker; what it returns comes back to [`Self::finish`].
    fn spawn<F>(&mut self, what: &str, of: For, job: F)
    where
        F: FnOnce(&Shared) -> Done + Send + 'static,
    {
        if let For::Devices(devices) = &of {
            self.jobs += 1;
            for (name, _) in devices {
                *self.held.entry(name.clone()).or_default() += 1;
            }
        }
        let shared = Arc::clone(&self.shared);
        // The job moves to the thread only once the thread exists: if none can be had, it
        // runs here rather than being lost with whatever it holds (a probe is not run here:
        // it could hang the loop; it times out instead).
        let (hand, take) = channel::<F>();
        let of_thread = of.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("guilocker-{what}"))
            .spawn(move || {
                if let Ok(job) = take.recv() {
                    let done = run_job(job, &shared);
                    shared.post(Msg::Done(of_thread, done));
                }
            });
        match spawned {
            Ok(_) => {
                let _ = hand.send(job);
            }
            Err(e) if matches!(of, For::Probe) => {
                log::error!("cannot start a thread to {what}: {e}");
            }
            Err(e) => {
                log::error!("cannot start a thread to {what}: {e}; doing it on the main thread");
                let done = run_job(job, &self.shared);
                self.handle(Msg::Done(of, done));
            }
        }
    }

    /// A job panicked (a bug): its devices cannot be trusted to be in any state, and what it
    /// held is lost. Say so rather than leave them busy for ever.
    fn job_panicked(&mut self, devices: &[(String, u64)]) {
        for (name, generation) in devices {
            if let Some(dev) = self.table.current(name, *generation) {
                let why = format!(
                    "{}: an internal error stopped the operation; unplug the drive and plug it in again",
                    dev.path
                );
                log::error!("{why}");
                if dev.job_lost(why) {
                    self.shared.emit(EventKind::Changed, dev.info());
                }
            }
        }
    }

    pub fn status(&self) -> Vec<DeviceInfo> {
        self.table.devices.values().map(Device::info).collect()
    }

    /// Re-reads /proc/partitions and acts on the difference.
    pub fn rescan(&mut self) {
        let config = self.shared.config();
        let shared = Arc::clone(&self.shared);
        let paths = &shared.paths;
        let snap = match watch::snapshot(
            &paths.proc_partitions,
            &paths.sys_block,
            config.include_loop_devices,
        ) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot read {}: {e}", paths.proc_partitions.display());
                return;
            }
        };
        let mut diff = watch::diff(&self.table.snapshot, &snap);
        self.table.snapshot = snap;
        // The loop devices under our own mounts: a view detached by someone else no longer
        // looks like one from its backing file, but is still not a stick.
        let ours: std::collections::HashSet<String> = self
            .table
            .devices
            .values()
            .filter_map(|d| d.session()?.mounted.as_ref()?.loop_device.clone())
            .collect();
        diff.added
            .retain(|a| !ours.contains(&format!("/dev/{}", a.partition.name)));
        for name in diff.removed {
            let Some(dev) = self.table.devices.remove(&name) else {
                continue;
            };
            self.shared.emit(EventKind::Removed, dev.info());
            if let Phase::Unlocked(session) = dev.phase {
                log::warn!("{}: removed while unlocked; cleaning up", dev.path);
                self.close_orphan(&dev.name, dev.generation, dev.path, *session);
            }
        }
        for appearance in diff.added {
            let generation = self.table.next_generation;
            self.table.next_generation += 1;
            let name = appearance.partition.name.clone();
            let path = paths.dev.join(&name).display().to_string();
            let attachment = Sysfs::new(&paths.sys_block).attachment(&name);
            if !attachment.removable && config.internal_drives == InternalDrives::Ignore {
                log::debug!("{path}: inside the machine; left alone (internal_drives = ignore)");
                continue;
            }
            let mut dev = Device::new(appearance, generation, path);
            (dev.vendor, dev.model) = probe::vendor_model(&paths.sys_block, &name);
            dev.attachment = attachment;
            dev.left_to_desktop = config.leave_bitlocker_to_desktop;
            self.table.devices.insert(name, dev);
        }
        self.adopt_pending();
        // New devices, and those whose node was not there last time.
        let now = Instant::now();
        let due: Vec<(String, u64, String)> = self
            .table
            .devices
            .values_mut()
            .filter_map(|d| {
                d.start_probe(now)
                    .then(|| (d.name.clone(), d.generation, d.path.clone()))
            })
            .collect();
        for (name, generation, path) in due {
            self.spawn("probe", For::Probe, move |_| Done::Probed {
                result: probe::probe(path.as_ref()),
                name,
                generation,
            });
        }
    }

    /// When the next probe times out, for the loop's poll.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.table
            .devices
            .values()
            .filter_map(Device::probe_deadline)
            .min()
    }

    /// Devices whose probe has hung past its time become unreadable.
    pub fn check_probes(&mut self, now: Instant) {
        for dev in self.table.devices.values_mut() {
            if dev.probe_overdue(now) {
                log::warn!("{}", dev.error().unwrap_or_default());
                self.shared.emit(EventKind::Added, dev.info());
            }
        }
        self.adopt_pending();
    }

    fn answer(&mut self, ask: Ask) {
        match ask {
            Ask::Status(reply) => {
                let _ = reply.send(Ok(self.status()));
            }
            Ask::Inspect { target, reply } => {
                let _ = reply.send(self.inspect(&target));
            }
            Ask::Unlock(ask) => self.unlock(*ask),
            Ask::Unmount {
                caller,
                caller_name,
                target,
                all,
                force,
                power_off,
                may_eject_locked,
                reply,
            } => match self.begin_unmount(&caller, &caller_name, target.as_deref(), all) {
                Ok(Plan::Eject(name, path)) => match may_eject_locked {
                    // Locked already (its filesystem unmounted by someone else, say): what
                    // is left to do is to make its stick safe to remove.
                    Ok(()) => {
                        log::info!("{path}: locked already; making its drive safe to remove");
                        self.eject(
                            vec![(name, path.clone())],
                            vec![path],
                            None,
                            Some(reply),
                            power_off,
                            false,
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Ok(Plan::Close(closes)) => {
                    let mode = if force {
                        CloseMode::Forced
                    } else {
                        CloseMode::Polite
                    };
                    let of = For::Devices(closes.iter().map(|c| (c.0.clone(), c.1)).collect());
                    self.spawn("unmount", of, move |_| Done::Closed {
                        closes: jobs::close_all(closes, mode),
                        reply: Some((reply, power_off)),
                        desktop_locked: false,
                    });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
        }
    }

    fn inspect(&self, target: &str) -> Result<(String, VolumeInfo), DaemonError> {
        let dev = self
            .table
            .find(target)
            .ok_or_else(|| DaemonError::NoSuchDevice {
                device: target.into(),
            })?;
        match (&dev.phase, &dev.metadata) {
            (Phase::Probing { .. }, _) => Err(DaemonError::InvalidState {
                device: dev.path.clone(),
                what: "still being examined; try again in a moment".into(),
            }),
            _ if !dev.is_bitlocker() => Err(DaemonError::NotBitLocker {
                device: dev.path.clone(),
            }),
            (_, Some(meta)) => Ok((dev.path.clone(), meta.info.clone())),
            (_, None) => Err(DaemonError::failed(
                &dev.path,
                "the BitLocker metadata could not be read",
            )),
        }
    }

    fn unlock(&mut self, ask: UnlockAsk) {
        let UnlockAsk {
            asked_by,
            owner,
            target,
            secret,
            read_only,
            mount,
            reply,
        } = ask;
        let name = match self.begin_unlock(&target) {
            Ok(name) => name,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let config = self.shared.config();
        let dev = &self.table.devices[&name];
        log::info!(
            "{}: unlocking with {} for {} (asked by {asked_by})",
            dev.path,
            secret.method(),
            owner.name,
        );
        self.shared.emit(EventKind::Changed, dev.info());
        let job = UnlockJob {
            name: dev.name.clone(),
            path: dev.path.clone(),
            diskseq: dev.appearance.diskseq,
            secret,
            metadata: dev.metadata.clone(),
            read_only: read_only || config.read_only,
            mount,
            owner,
            config,
        };
        let generation = dev.generation;
        let of = For::Devices(vec![(name, generation)]);
        self.spawn("unlock", of, move |shared| Done::Unlocked {
            result: jobs::unlock(shared, &job),
            name: job.name,
            path: job.path,
            generation,
            reply,
        });
    }

    /// Moves the device `target` names to Unlocking; returns its name.
    fn begin_unlock(&mut self, target: &str) -> Result<String, DaemonError> {
        if self.shutting_down {
            return Err(DaemonError::failed(target, "the daemon is shutting down"));
        }
        let dev = self
            .table
            .find(target)
            .ok_or_else(|| DaemonError::NoSuchDevice {
                device: target.into(),
            })?;
        let name = dev.name.clone();
        if self.held.contains_key(&name) && !dev.is_busy() {
            return Err(DaemonError::InvalidState {
                device: dev.path.clone(),
                what: "is still being cleaned up after it was unplugged; try again in a moment"
                    .into(),
            });
        }
        let dev = self.table.devices.get_mut(&name).expect("found above");
        dev.begin_unlock()?;
        Ok(name)
    }

    /// Checks an unmount request and moves every device it names to Locking; returns the
    /// sessions to close. All or nothing: one refusal refuses the request. One BitLocker
    /// volume that is locked already is left for its drive to be made safe to remove.
    fn begin_unmount(
        &mut self,
        caller: &Caller,
        caller_name: &str,
        target: Option<&str>,
        all: bool,
    ) -> Result<Plan, DaemonError> {
        if self.shutting_down {
            return Err(DaemonError::failed(
                target.unwrap_or("unmount"),
                "the daemon is shutting down and puts every volume away itself",
            ));
        }
        let names: Vec<String> = if all {
            self.table
                .devices
                .values()
                .filter(|d| {
                    d.session()
                        .is_some_and(|s| auth::may_unmount(caller, &s.owner))
                })
                .map(|d| d.name.clone())
                .collect()
        } else {
            let target = target.ok_or_else(|| {
                DaemonError::BadRequest("unmount needs a device, a mountpoint or --all".into())
            })?;
            let dev = self
                .table
                .find(target)
                .ok_or_else(|| DaemonError::NoSuchDevice {
                    device: target.into(),
                })?;
            if dev.is_locked() {
                return Ok(Plan::Eject(dev.name.clone(), dev.path.clone()));
            }
            vec![dev.name.clone()]
        };
        for name in &names {
            let dev = &self.table.devices[name];
            let owner = &dev.closable()?.owner;
            if !auth::may_unmount(caller, owner) {
                return Err(DaemonError::NotAuthorized {
                    device: dev.path.clone(),
                    why: format!("it was unlocked by {}, not by {caller_name}", owner.name),
                });
            }
        }
        let mut closes = Vec::new();
        for name in names {
            let dev = self.table.devices.get_mut(&name).expect("checked above");
            let session = dev.begin_close(AfterClose::Locked)?;
            // Said before the slow part: unmounting may wait for the driver to write.
            self.shared.emit(EventKind::Changed, dev.info());
            closes.push((name, dev.generation, dev.path.clone(), session));
        }
        Ok(Plan::Close(closes))
    }

    /// Closes the session of a device no longer in the table (or no longer that device).
    fn close_orphan(&mut self, name: &str, generation: u64, path: String, session: Session) {
        let of = For::Devices(vec![(name.to_owned(), generation)]);
        self.spawn("clean-up", of, move |_| {
            let _ = session.close(&path, CloseMode::Vanished);
            log::info!("{path}: cleaned up after its removal");
            Done::Finished
        });
    }

    /// A job ended: record its result on its device, if that device is still the one it
    /// started on; otherwise undo what it made.
    fn finish(&mut self, done: Done) {
        match done {
            Done::Probed {
                name,
                generation,
                result,
            } => {
                let Some(dev) = self.table.current(&name, generation) else {
                    return;
                };
                if dev.probed(result) == Probed::Settled {
                    if dev.is_bitlocker() {
                        log::info!(
                            "{}: BitLocker volume ({} bytes)",
                            dev.path,
                            dev.appearance.partition.size_bytes()
                        );
                    } else if let Some(why) = dev.error() {
                        log::warn!("{why}");
                    }
                    self.shared.emit(EventKind::Added, dev.info());
                    self.adopt_pending();
                }
            }
            Done::Unlocked {
                name,
                generation,
                path,
                result,
                reply,
            } => {
                let answer = self.unlocked(&name, generation, &path, result);
                match &answer {
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
                let _ = reply.send(answer);
            }
            Done::Closed {
                closes,
                reply,
                desktop_locked,
            } => self.closed(closes, reply, desktop_locked),
            Done::Finished => {}
        }
    }

    fn unlocked(
        &mut self,
        name: &str,
        generation: u64,
        path: &str,
        result: Result<Session, DaemonError>,
    ) -> Result<DeviceInfo, DaemonError> {
        let gone = || DaemonError::failed(path, "the drive was removed while unlocking");
        let Some(dev) = self.table.current(name, generation) else {
            if let Ok(session) = result {
                self.close_orphan(name, generation, path.to_owned(), session);
            }
            return Err(gone());
        };
        let (orphan, answer) = match result {
            Ok(session) => {
                let orphan = dev.unlocked(Ok(session));
                (orphan, Ok(dev.info()))
            }
            Err(e) => (dev.unlocked(Err(&e)), Err(e)),
        };
        self.shared.emit(EventKind::Changed, dev.info());
        match orphan {
            Some(session) => {
                self.close_orphan(name, generation, path.to_owned(), session);
                Err(gone())
            }
            None => answer,
        }
    }

    fn closed(
        &mut self,
        closes: Vec<Closing>,
        reply: Option<(Reply<Unmounted>, bool)>,
        desktop_locked: bool,
    ) {
        let mut done = Vec::new();
        // Devices put away that are still the ones unmounted: only their sticks are ejected.
        let mut present = Vec::new();
        let mut first_error = None;
        for Closing {
            name,
            generation,
            path,
            result,
        } in closes
        {
            let outcome = match self.table.current(&name, generation) {
                Some(dev) => {
                    let outcome = dev.closed(result);
                    self.shared.emit(EventKind::Changed, dev.info());
                    if outcome.is_ok() {
                        present.push((name.clone(), path.clone()));
                    }
                    outcome
                }
                None => result.map_err(|failed| {
                    let (e, session) = *failed;
                    Box::new((e, Some(session)))
                }),
            };
            match outcome {
                Ok(()) => {
                    log::info!("{path}: put away");
                    done.push(path);
                }
                Err(failed) => {
                    let (e, orphan) = *failed;
                    log::warn!("{e}");
                    if let Some(session) = orphan {
                        self.close_orphan(&name, generation, path, session);
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        match reply {
            Some((reply, power_off)) => {
                self.eject(present, done, first_error, Some(reply), power_off, false);
            }
            // The file manager locked it: it meant the drive put away, as its Eject would.
            None if desktop_locked => self.eject(present, done, None, None, true, true),
            None => {}
        }
    }

    /// After an unmount: flushes each disk of the devices `present` (name, path) and powers
    /// it off (`power_off`) once nothing on it is unlocked, then answers (`reply`) with the
    /// devices put away (`done`) or the first error. `after_desktop`: the desktop may be
    /// ejecting the drive itself (udisks' Eject or PowerOff, right after its lock); a drive
    /// it takes away within [`DESKTOP_EJECT_GRACE`] is left to it, so neither fails the
    /// other.
    fn eject(
        &mut self,
        present: Vec<(String, String)>,
        done: Vec<String>,
        first_error: Option<DaemonError>,
        reply: Option<Reply<Unmounted>>,
        power_off: bool,
        after_desktop: bool,
    ) {
        // Guilocker's volumes still unlocked, or being worked on: a disk with one of them is
        // left alone, and the eject job looks for them on the rest of each USB device.
        let ours: Vec<(String, UseCause)> = self
            .table
            .devices
            .values()
            .filter_map(|d| match (d.session(), d.is_busy()) {
                (Some(_), _) => Some((d.name.clone(), UseCause::Unlocked)),
                (None, true) => Some((d.name.clone(), UseCause::Busy)),
                (None, false) => None,
            })
            .collect();
        let paths = &self.shared.paths;
        let sys = Sysfs::new(&paths.sys_block);
        let mut disks: Vec<(String, String)> = present
            .iter()
            .map(|(name, path)| (sys.disk_of(name), path.clone()))
            .collect();
        disks.sort();
        disks.dedup_by(|a, b| a.0 == b.0);
        let mut power = Vec::new();
        // A stick is safe to remove once nothing on it is unlocked.
        disks.retain(|(disk, path)| {
            let Some((name, cause)) = ours.iter().find(|(n, _)| sys.disk_of(n) == *disk) else {
                return true;
            };
            if power_off {
                let kept = PowerOff {
                    disk: paths.dev.join(disk).display().to_string(),
                    powered_off: false,
                    in_use: Some(InUse {
                        device: paths.dev.join(name).display().to_string(),
                        cause: cause.clone(),
                    }),
                    error: None,
                };
                log::info!("{path}: {}", kept.refusal().unwrap_or_default());
                power.push(kept);
            }
            false
        });
        let answer = |power| match first_error {
            Some(e) => Err(e),
            None => Ok(Unmounted {
                devices: done,
                power,
            }),
        };
        if disks.is_empty() {
            if let Some(reply) = reply {
                let _ = reply.send(answer(power));
            }
            return;
        }
        self.spawn("eject", For::Devices(Vec::new()), move |shared| {
            let paths = &shared.paths;
            let host = Host {
                dev: &paths.dev,
                sys: Sysfs::new(&paths.sys_block),
                mountinfo: Path::new(MOUNTINFO),
                proc: Path::new("/proc"),
                me: std::process::id() as i32,
            };
            for (disk, path) in disks {
                // Gone (powered off), or no medium left in it (ejected).
                let taken = || {
                    std::fs::read_to_string(paths.sys_block.join(&disk).join("size"))
                        .map_or(true, |size| size.trim() == "0")
                };
                if after_desktop && watch::until_block_change(DESKTOP_EJECT_GRACE, taken) {
                    log::info!("{path}: /dev/{disk} ejected by the desktop");
                    continue;
                }
                let done = power::safe_to_remove(&host, &disk, power_off, &ours);
                let said = power::describe(&done, power_off);
                if done.error.is_some() {
                    log::warn!("{path}: {said}");
                } else {
                    log::info!("{path}: {said}");
                }
                power.push(done);
            }
            if let Some(reply) = reply {
                let _ = reply.send(answer(power));
            }
            Done::Finished
        });
    }

    /// A child exited (SIGCHLD). If it was an engine serving a volume and nobody asked it
    /// to stop, the volume is gone: close what is left and say so.
    pub fn child_exited(&mut self, pid: Pid, status: ExitStatus) {
        let name = self
            .table
            .devices
            .values()
            .find(|d| d.session().is_some_and(|s| s.view.pid() == Some(pid)))
            .map(|d| d.name.clone());
        if let Some(name) = name {
            self.engine_died(&name, status);
        }
    }

    fn engine_died(&mut self, name: &str, status: ExitStatus) {
        let Some(dev) = self.table.devices.get_mut(name) else {
            return;
        };
        let engine = dev.session().map_or("", |s| s.view.engine.as_str());
        let why = format!(
            "{}: the unlocked volume went away (the {engine} engine {status})",
            dev.path
        );
        log::warn!(
            "{}: the {engine} engine {status} unexpectedly; cleaning up",
            dev.path
        );
        let Ok(session) = dev.begin_close(AfterClose::Failed(why)) else {
            return;
        };
        self.shared.emit(EventKind::Changed, dev.info());
        let closing = (dev.name.clone(), dev.generation, dev.path.clone(), session);
        let of = For::Devices(vec![(closing.0.clone(), closing.1)]);
        // Nothing is left to write to: the volume's engine is gone.
        self.spawn("clean-up", of, move |_| Done::Closed {
            closes: jobs::close_all(vec![closing], CloseMode::Vanished),
            reply: None,
            desktop_locked: false,
        });
    }

    /// Looks again at every unlocked volume: one whose engine exited, or whose filesystem
    /// was unmounted, while a job held it was not noticed then.
    fn recheck(&mut self) {
        self.engines_exited();
        self.mounts_changed();
    }

    /// Takes over the volumes an earlier daemon left alive ([`super::adopt`]), each once its
    /// device has been probed.
    pub fn take_over(&mut self, adopted: Vec<Adopted>) {
        self.adopting.extend(adopted);
        self.adopt_pending();
    }

    /// Each volume waiting for adoption whose device has settled: a Locked device of the
    /// recorded appearance takes it; anything else (gone, re-plugged, unreadable) has it put
    /// away.
    fn adopt_pending(&mut self) {
        if self.adopting.is_empty() {
            return;
        }
        for a in std::mem::take(&mut self.adopting) {
            let Some(dev) = self
                .table
                .devices
                .get_mut(&a.name)
                .filter(|d| d.appearance.diskseq == a.diskseq)
            else {
                let path = self.shared.paths.dev.join(&a.name).display().to_string();
                log::warn!("{path}: left by an earlier guilocker, but gone since; putting it away");
                self.close_orphan(&a.name, u64::MAX, path, a.session);
                continue;
            };
            if matches!(dev.phase, Phase::Probing { .. }) {
                self.adopting.push(a);
                continue;
            }
            match dev.adopt(Box::new(a.session)) {
                Ok(()) => {
                    let info = dev.info();
                    log::info!(
                        "{}: adopted from an earlier guilocker: {} for {} ({} engine)",
                        dev.path,
                        info.mountpoint
                            .as_deref()
                            .map_or_else(|| "unlocked".to_owned(), |m| format!("mounted at {m}")),
                        info.owner.as_deref().unwrap_or_default(),
                        info.engine.map_or("", |e| e.as_str()),
                    );
                    self.shared.emit(EventKind::Changed, info);
                }
                Err(session) => {
                    log::warn!(
                        "{}: left unlocked by an earlier guilocker, but it is {} now; putting it away",
                        dev.path,
                        dev.wire_state().as_str()
                    );
                    let (generation, path) = (dev.generation, dev.path.clone());
                    self.close_orphan(&a.name, generation, path, *session);
                }
            }
        }
    }

    /// The pidfds of adopted engines still serving: not our children, so the loop polls
    /// these where SIGCHLD tells it of its own.
    pub fn adopted_engines(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.table
            .devices
            .values()
            .filter_map(|d| d.session()?.view.adopted_pidfd())
            .collect()
    }

    /// Every unlocked volume whose engine has exited is cleaned up.
    pub fn engines_exited(&mut self) {
        let dead: Vec<(String, ExitStatus)> = self
            .table
            .devices
            .values()
            .filter_map(|d| {
                let status = d.session()?.view.exited()?;
                Some((d.name.clone(), status))
            })
            .collect();
        for (name, status) in dead {
            self.engine_died(&name, status);
        }
    }

    /// The mount table changed. A volume whose filesystem someone else unmounted (the file
    /// manager, `umount`, `umount -l`), or whose engine's view was detached (`umount -l` of
    /// the view: the filesystem still works through its loop device, until that goes), is
    /// put away as if we had unmounted it: its FUSE driver waited for, loop device
    /// detached, engine stopped, directories removed.
    pub fn mounts_changed(&mut self) {
        let mounted: std::collections::HashSet<PathBuf> = match super::mounts::try_mounts() {
            Ok(mounts) => mounts.into_iter().map(|m| m.mountpoint).collect(),
            // Not "nothing is mounted": that would put every volume away.
            Err(e) => {
                log::warn!("cannot read the mount table: {e}");
                return;
            }
        };
        let gone: Vec<String> = self
            .table
            .devices
            .values()
            .filter(|d| {
                d.session().is_some_and(|s| {
                    let fs_gone = s
                        .mounted
                        .as_ref()
                        .is_some_and(|m| !mounted.contains(&m.mountpoint));
                    let view_gone = s.view.mount_dir().is_some_and(|v| !mounted.contains(v));
                    fs_gone || view_gone
                })
            })
            .map(|d| d.name.clone())
            .collect();
        for name in gone {
            let dev = self.table.devices.get_mut(&name).expect("listed above");
            let Ok(session) = dev.begin_close(AfterClose::Locked) else {
                continue;
            };
            log::info!(
                "{}: unmounted by another program; putting it away",
                dev.path
            );
            self.shared.emit(EventKind::Changed, dev.info());
            let closing = (name, dev.generation, dev.path.clone(), session);
            let of = For::Devices(vec![(closing.0.clone(), closing.1)]);
            self.spawn("put-away", of, move |_| {
                let (closes, desktop_locked) = jobs::put_away_unmounted(closing);
                Done::Closed {
                    closes,
                    reply: None,
                    desktop_locked,
                }
            });
        }
    }

    /// Starts closing every unlocked volume (politely, then whatever it takes).
    fn put_away_all(&mut self) {
        let names: Vec<String> = self
            .table
            .devices
            .values()
            .filter(|d| d.session().is_some())
            .map(|d| d.name.clone())
            .collect();
        for name in names {
            let dev = self.table.devices.get_mut(&name).expect("listed above");
            let Ok(session) = dev.begin_close(AfterClose::Locked) else {
                continue;
            };
            self.shared.emit(EventKind::Changed, dev.info());
            let (generation, path) = (dev.generation, dev.path.clone());
            let of = For::Devices(vec![(name.clone(), generation)]);
            self.spawn("put-away", of, move |_| {
                session.close_or_force(&path);
                Done::Closed {
                    closes: vec![Closing {
                        name,
                        generation,
                        path,
                        result: Ok(()),
                    }],
                    reply: None,
                    desktop_locked: false,
                }
            });
        }
    }

    /// At startup: handles messages until the first probes have answered, for at most
    /// `limit`, so the first clients see every stick that was already plugged in as what
    /// it is (a stick that hangs is left probing; the loop times it out).
    pub fn settle(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self
            .table
            .devices
            .values()
            .any(|d| d.probe_deadline().is_some())
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(left) {
                Some(msg) => self.handle(msg),
                None => return,
            }
        }
    }

    /// On SIGTERM: refuse new work, put every volume away, including those a running job
    /// hands back, and wait until every job has ended. Each step of a job has its own
    /// timeout; the service manager's stop timeout bounds the whole.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        self.put_away_all();
        while self.jobs > 0 {
            match self.inbox.recv_timeout(Duration::from_secs(10)) {
                Some(msg) => self.handle(msg),
                None => log::info!("waiting for {} operation(s) to finish", self.jobs),
            }
        }
    }
}
