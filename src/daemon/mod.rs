//! `guilocker daemon`: the root service that watches, probes, unlocks and mounts.
//!
//! One thread runs the event loop and owns every device ([`core::Core`]): signals arrive on
//! a signalfd (they are blocked in every thread), kernel uevents on a netlink socket,
//! clients on the control socket, changes of the mount table on /proc/self/mountinfo, asks
//! and job results on the core's mailbox, and a timer re-reads /proc/partitions as a
//! safety net. Each client connection gets a thread that asks the loop and waits for its
//! answer; everything slow runs as a job on a worker thread. So a slow unlock, a hung
//! stick or a client that never reads stalls neither detection nor other clients.

pub mod adopt;
pub mod auth;
pub mod bus;
pub mod core;
pub mod daemonize;
pub mod desktop;
pub mod device;
pub mod dmcrypt;
pub mod error;
pub mod filesystem;
pub mod host;
pub mod jobs;
pub mod mailbox;
pub mod mount;
pub mod mountpoint;
pub mod mounts;
pub mod probe;
pub mod record;
pub mod recover;
pub mod seat;
pub mod server;
pub mod session;
pub mod shared;
pub mod table;
pub mod unlock;
pub mod userdir;
pub mod view;
pub mod watch;

use crate::config::{Config, DEFAULT_CONFIG};
use crate::process::reaper;
use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{signal, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DEFAULT_PIDFILE: &str = "/run/guilocker/guilocker.pid";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/guilocker";

#[derive(Debug, Clone)]
pub struct Options {
    pub foreground: bool,
    pub config: Option<PathBuf>,
    pub socket: PathBuf,
    pub pidfile: PathBuf,
    pub runtime_dir: PathBuf,
}

fn load_config(opts: &Options) -> Result<Config, crate::config::ConfigError> {
    match &opts.config {
        Some(path) => Config::load(path, true),
        None => Config::load(DEFAULT_CONFIG.as_ref(), false),
    }
}

/// Each client connection holds a socket (and its thread): lift the soft limit on open files
/// to the hard one, as systemd advises for services that use poll, not select (its default
/// soft limit is 1024).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("cannot read the open-file limit: {e}"),
    }
}

/// The socket, the views and the pidfile's neighbours are made by path in the runtime dir:
/// it must be ours and writable by nobody else, or another user could swap them.
fn check_runtime_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("runtime dir {}", dir.display()))?;
    let euid = nix::unistd::Uid::effective().as_raw();
    if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
        anyhow::bail!(
            "runtime dir {}: must be a directory owned by uid {euid} that no one else can write \
             (it is {}, uid {}, mode {:o})",
            dir.display(),
            if meta.is_symlink() {
                "a symbolic link"
            } else if meta.is_dir() {
                "a directory"
            } else {
                "not a directory"
            },
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

pub fn run(opts: Options) -> Result<()> {
    crate::logging::init();
    crate::secret::protect_process();
    // A panic in a job is caught and reported on the device; its cause goes to the log
    // (stderr is /dev/null once detached).
    std::panic::set_hook(Box::new(|info| log::error!("internal error: {info}")));
    raise_fd_limit();
    let config = load_config(&opts)?;
    if !auth::group_exists(&config.allowed_group) {
        log::warn!(
            "allowed_group '{}' does not exist: only root can unlock",
            config.allowed_group
        );
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&opts.runtime_dir)
            .with_context(|| format!("cannot create {}", opts.runtime_dir.display()))?;
    }
    check_runtime_dir(&opts.runtime_dir)?;
    let mut pidfile = crate::pidfile::Pidfile::lock(&opts.pidfile)?;
    let readiness = if opts.foreground {
        None
    } else {
        let r = daemonize::detach()?;
        crate::logging::use_syslog();
        Some(r)
    };
    match start(&opts, config, &mut pidfile) {
        Ok((mut core, listener, signals, uevents)) => {
            if let Some(r) = readiness {
                r.ready();
            }
            log::info!("listening on {}", opts.socket.display());
            event_loop(&opts, &mut core, &listener, &signals, uevents.as_ref());
            log::info!("shutting down: putting every volume away");
            core.shutdown();
            desktop::announce(&opts.runtime_dir, false, desktop::Retrigger::Now);
            drop(listener);
            drop(pidfile);
            log::info!("stopped");
            Ok(())
        }
        Err(e) => {
            if let Some(r) = readiness {
                r.fail(&format!("{e:#}"));
            }
            Err(e)
        }
    }
}

type Started = (
    core::Core,
    server::Listener,
    SignalFd,
    Option<watch::UeventSocket>,
);

fn start(opts: &Options, config: Config, pidfile: &mut crate::pidfile::Pidfile) -> Result<Started> {
    pidfile.write_pid()?;
    // Signals are handled only through the signalfd: block them before any thread exists so
    // every thread inherits the mask. SIGPIPE is ignored: a client that hangs up must not
    // kill the daemon.
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(sig);
    }
    mask.thread_block().context("cannot block signals")?;
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }.context("cannot ignore SIGPIPE")?;
    // FUSE drivers (ntfs-3g, exfat-fuse, fusefat) daemonize; as a subreaper we inherit and
    // reap them, instead of leaving zombies to an init that may not.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        log::warn!(
            "cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("cannot create a signalfd")?;
    let listener = server::Listener::bind(&opts.socket)
        .with_context(|| format!("cannot listen on {}", opts.socket.display()))?;
    let uevents = match watch::UeventSocket::open() {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("no kernel uevents ({e}); detecting devices by polling only");
            None
        }
    };
    desktop::announce(
        &opts.runtime_dir,
        !config.leave_bitlocker_to_desktop,
        desktop::Retrigger::Now,
    );
    let paths = core::Paths::new(opts.runtime_dir.clone());
    // What an earlier daemon recorded first: its live volumes are taken over, its half-dead
    // ones put away; then what it left without a record.
    let recovered = adopt::recover(&opts.runtime_dir, &config.mount_root, &paths.sys_block);
    let adopted: Vec<std::path::PathBuf> = recovered
        .adopted
        .iter()
        .filter_map(|a| {
            let view = &a.session.view;
            view.mount_dir()
                .map(std::path::Path::to_owned)
                .or_else(|| view.mapping().map(dmcrypt::mapper_path))
        })
        .collect();
    let cleaned =
        recovered.cleaned + recover::clean_stale(&opts.runtime_dir, &config.mount_root, &adopted);
    if cleaned > 0 {
        log::warn!("cleaned up {cleaned} volume(s) an earlier guilocker left behind");
    }
    let mut core =
        core::Core::new(config, paths).context("cannot create the event loop's mailbox")?;
    core.rescan();
    core.take_over(recovered.adopted);
    core.settle(Duration::from_secs(2));
    Ok((core, listener, signals, uevents))
}

fn event_loop(
    opts: &Options,
    core: &mut core::Core,
    listener: &server::Listener,
    signals: &SignalFd,
    uevents: Option<&watch::UeventSocket>,
) {
    let conns = Arc::new(server::Connections::default());
    // The mount table: a volume someone else unmounts is put away.
    let mount_watch = match mounts::MountWatch::open() {
        Ok(w) => Some(w),
        Err(e) => {
            log::warn!(
                "cannot watch the mount table ({e}); unmounts by other programs go unnoticed"
            );
            None
        }
    };
    let mut last_scan = Instant::now();
    loop {
        let interval = core.shared.config().poll_interval();
        let mut wait = interval.saturating_sub(last_scan.elapsed());
        if let Some(deadline) = core.next_deadline() {
            wait = wait.min(deadline.saturating_duration_since(Instant::now()));
        }
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(core.inbox_fd(), PollFlags::POLLIN),
        ];
        let uevent_at = uevents.map(|u| {
            fds.push(PollFd::new(u.fd().as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let mounts_at = mount_watch.as_ref().map(|w| {
            fds.push(PollFd::new(w.fd(), PollFlags::POLLPRI));
            fds.len() - 1
        });
        // Adopted engines are not our children: their pidfds say when they exit.
        let adopted_from = fds.len();
        fds.extend(
            core.adopted_engines()
                .into_iter()
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
        );
        let timeout = PollTimeout::try_from(wait.as_millis().min(60_000) as i32 + 1)
            .unwrap_or(PollTimeout::MAX);
        if let Err(e) = poll(&mut fds, timeout) {
            if e != nix::errno::Errno::EINTR {
                log::error!("poll: {e}");
            }
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let is_ready = |at: Option<usize>| at.is_some_and(|i| ready[i]);

        let adopted_died = ready[adopted_from..].iter().any(|r| *r);
        if ready[2] {
            core.deliver();
        }
        if adopted_died {
            core.engines_exited();
        }
        if is_ready(uevent_at) && uevents.is_some_and(|u| u.drain()) {
            core.rescan();
            last_scan = Instant::now();
        }
        if last_scan.elapsed() >= interval {
            core.rescan();
            last_scan = Instant::now();
        }
        core.check_probes(Instant::now());
        if is_ready(mounts_at) {
            core.mounts_changed();
        }
        if ready[1] {
            server::accept_all(&listener.listener, &core.shared, &conns);
        }
        if ready[0] {
            while let Ok(Some(info)) = signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => supervise(core),
                    Ok(Signal::SIGHUP) => reload(opts, core),
                    Ok(Signal::SIGTERM | Signal::SIGINT) => return,
                    _ => {}
                }
            }
        }
    }
}

/// Reaps every exited child; an engine that died on its own is cleaned up by a job.
fn supervise(core: &mut core::Core) {
    for (pid, status) in reaper().reap_all() {
        core.child_exited(pid, status);
    }
}

/// SIGHUP: load the config again; a bad file keeps the old config.
fn reload(opts: &Options, core: &mut core::Core) {
    match load_config(opts) {
        Ok(new) => {
            desktop::announce(
                &opts.runtime_dir,
                !new.leave_bitlocker_to_desktop,
                desktop::Retrigger::Aside,
            );
            *core
                .shared
                .config
                .write()
                .unwrap_or_else(|e| e.into_inner()) = new;
            log::info!("configuration reloaded");
            core.rescan();
        }
        Err(e) => log::error!("{e}; keeping the previous configuration"),
    }
}
