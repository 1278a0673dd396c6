//! `guilocker agent`: the per-user login agent. It follows the daemon's events, starts the
//! GTK dialog (a child process; the agent never loads GTK) for each BitLocker drive that is
//! plugged in, sends the unlock, and tells the person what happened with notifications.

mod dialogs;
mod notifications;
mod reconnect;

use crate::client::{Client, ClientError};
use crate::protocol::{DeviceInfo, DeviceState, EventKind};
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

pub use dialogs::DialogHandle;

pub struct Options {
    pub socket: PathBuf,
}

/// What the agent remembers between events.
#[derive(Default)]
struct Memory {
    /// Open dialogs, by device.
    dialogs: HashMap<String, DialogHandle>,
    /// Devices that get no new dialog until they are plugged in again: cancelled, or
    /// already unlocked.
    settled: HashSet<String>,
    /// Devices this agent unlocked, with their label, to tell the person if they vanish.
    mine: HashMap<String, String>,
}

pub struct Agent {
    socket: PathBuf,
    memory: Mutex<Memory>,
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
    let agent = Arc::new(Agent {
        socket: opts.socket,
        memory: Mutex::default(),
    });
    let mut waiting = false;
    loop {
        match agent.session() {
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
        reconnect::wait_for_socket(&agent.socket);
    }
}

impl Agent {
    fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One connection's life: subscribe first (so nothing is missed), then look at what is
    /// already plugged in, then follow events until the daemon goes away.
    fn session(self: &Arc<Self>) -> Result<(), ClientError> {
        let events = Client::connect(&self.socket)?.subscribe()?;
        let devices = Client::connect(&self.socket)?.status()?;
        log::info!("connected to the daemon at {}", self.socket.display());
        for device in devices {
            self.offer(device);
        }
        for event in events {
            let (kind, device) = event?;
            self.on_event(kind, device);
        }
        Ok(())
    }

    fn on_event(self: &Arc<Self>, kind: EventKind, device: DeviceInfo) {
        match kind {
            EventKind::Added => self.offer(device),
            EventKind::Removed => {
                let mut memory = self.memory();
                memory.settled.remove(&device.device);
                if let Some(dialog) = memory.dialogs.remove(&device.device) {
                    dialog.close("The drive was removed.");
                }
                if let Some(label) = memory.mine.remove(&device.device) {
                    drop(memory);
                    notifications::problem(
                        &format!("‘{label}’ was removed"),
                        "It was unplugged while still in use. Use Unmount before unplugging, or files may be lost.",
                    );
                }
            }
            EventKind::Changed => match device.state {
                DeviceState::Unlocked | DeviceState::Mounted => {
                    let mut memory = self.memory();
                    memory.settled.insert(device.device.clone());
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
                        notifications::problem(&format!("‘{label}’ stopped working"), error);
                    }
                }
                DeviceState::Unlocking | DeviceState::Plain => {}
            },
        }
    }

    /// Starts a dialog for a locked BitLocker drive, unless one is open or it is settled.
    fn offer(self: &Arc<Self>, device: DeviceInfo) {
        if !device.bitlocker || device.state != DeviceState::Locked {
            return;
        }
        let mut memory = self.memory();
        if memory.dialogs.contains_key(&device.device) || memory.settled.contains(&device.device) {
            return;
        }
        match dialogs::start(Arc::clone(self), device.clone()) {
            Ok(handle) => {
                memory.dialogs.insert(device.device.clone(), handle);
            }
            Err(e) => {
                log::error!("{}: cannot show the unlock dialog: {e}", device.device);
                memory.settled.insert(device.device);
            }
        }
    }

    /// Called by a dialog's thread when its dialog has ended.
    fn dialog_ended(&self, device: &str, settle: bool) {
        let mut memory = self.memory();
        memory.dialogs.remove(device);
        if settle {
            memory.settled.insert(device.to_owned());
        }
    }

    fn unlocked(&self, device: &DeviceInfo) {
        let label = device
            .label
            .clone()
            .unwrap_or_else(|| "BitLocker drive".into());
        self.memory().mine.insert(device.device.clone(), label);
        notifications::unlocked(self.socket.clone(), device.clone());
    }
}
