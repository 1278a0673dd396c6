//! Child processes: fork/exec without allocating in the child, one reaper, typed errors.
//!
//! Every child is registered with the process-wide [`Reaper`] while the registry lock is held
//! across `fork`, so a `SIGCHLD` handler calling [`Reaper::reap_all`] can never reap a child
//! nobody knows about. Waiting uses a pidfd, which becomes readable when the child exits no
//! matter who reaps it; that lets callers wait for "child exited" together with other fds
//! (a FUSE mount appearing, output arriving) in one `poll`.

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};
use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use zeroize::Zeroizing;

/// The environment every child gets: no inherited variables, so nothing of ours leaks and
/// messages are in a language we can match.
const CHILD_ENV: [&str; 2] = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"];
/// Output kept from a child, to report why it failed.
const OUTPUT_LIMIT: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("cannot run {program}: {errno}")]
    Spawn { program: String, errno: Errno },
    #[error("{program} {status}: {output}")]
    Failed {
        program: String,
        status: ExitStatus,
        output: String,
    },
    #[error("{program} did not finish within {seconds} s")]
    Timeout { program: String, seconds: u64 },
    #[error("waiting for {program}: {errno}")]
    Wait { program: String, errno: Errno },
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// A process that is not our child (an engine adopted from an earlier daemon) ended:
    /// only its parent learns how.
    Unknown,
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(c) => write!(f, "exited with status {c}"),
            Self::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "was killed by {sig}"),
                Err(_) => write!(f, "was killed by signal {s}"),
            },
            Self::Unknown => write!(f, "exited"),
        }
    }
}

/// What a child's standard stream is connected to.
pub enum Stdio {
    Null,
    /// A pipe; the parent's end is returned in [`Child`].
    Pipe,
}

/// A program to run. Build it, then [`Command::spawn`].
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    stdin: Stdio,
    stdout: Stdio,
    /// stderr goes wherever stdout goes (one stream is easier to report).
    controlling_tty: bool,
    /// Passed to the child as fd 3.
    fd3: Option<OwnedFd>,
}

impl Command {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            stdin: Stdio::Null,
            stdout: Stdio::Pipe,
            controlling_tty: false,
            fd3: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn stdin(mut self, stdin: Stdio) -> Self {
        self.stdin = stdin;
        self
    }

    pub fn stdout(mut self, stdout: Stdio) -> Self {
        self.stdout = stdout;
        self
    }

    /// Runs the child in a new session whose controlling terminal is a fresh pty; the
    /// master end is returned in [`Child::pty`]. For programs that read secrets from /dev/tty.
    pub fn controlling_tty(mut self) -> Self {
        self.controlling_tty = true;
        self
    }

    /// Hands `fd` to the child as its fd 3 (e.g. a memfd with a key, read as /proc/self/fd/3).
    pub fn fd3(mut self, fd: OwnedFd) -> Self {
        self.fd3 = Some(fd);
        self
    }

    pub fn program_name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    /// Forks and execs. Returns once exec has succeeded or failed (an exec error arrives
    /// through a close-on-exec pipe, so a missing program is a typed error, not exit 127).
    pub fn spawn(self) -> Result<Child, ProcessError> {
        // argv never carries a secret (they go through pipes, a pty or a memfd).
        log::debug!(
            "running {} {}",
            self.program_name(),
            self.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        reaper().spawn(self)
    }

    /// Runs to completion, capturing stdout+stderr; fails on a non-zero exit.
    pub fn run(self, timeout: Duration) -> Result<String, ProcessError> {
        let program = self.program_name();
        let mut child = self.spawn()?;
        let (status, output) = child.wait_with_output(timeout)?;
        if status.success() {
            Ok(output)
        } else {
            Err(ProcessError::Failed {
                program,
                status,
                output: one_line(&output),
            })
        }
    }
}

/// The last non-empty line of a program's output, trimmed, for one-line error messages.
pub fn one_line(output: &str) -> String {
    output
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("(no output)")
        .to_owned()
}

/// A running child.
pub struct Child {
    pub pid: Pid,
    pub program: String,
    pub pidfd: OwnedFd,
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub pty: Option<File>,
    /// Our copy of the pty's slave side. While it is open the master never reads EIO, so a
    /// reader cannot mistake "the child has not opened /dev/tty yet" for a hang-up.
    _pty_slave: Option<OwnedFd>,
}

impl Child {
    /// The exit status if the child has exited, without blocking.
    pub fn try_status(&self) -> Option<ExitStatus> {
        reaper().status(self.pid)
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>, ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Ok(Some(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, poll_timeout(left)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(errno) => {
                    return Err(ProcessError::Wait {
                        program: self.program.clone(),
                        errno,
                    })
                }
            }
        }
    }

    /// Collects stdout+stderr until the child exits, then whatever is left in the pipe; kills
    /// the child after `timeout`. Does not wait for EOF: a helper that daemonizes may leave a
    /// grandchild holding the pipe.
    pub fn wait_with_output(
        &mut self,
        timeout: Duration,
    ) -> Result<(ExitStatus, String), ProcessError> {
        let deadline = Instant::now() + timeout;
        let mut output = Zeroizing::new(Vec::new());
        let mut out = self.stdout.take();
        if let Some(f) = &out {
            set_nonblocking(f);
        }
        loop {
            if let Some(status) = self.try_status() {
                if let Some(f) = out.as_mut() {
                    while drain_into(f, &mut output) && !would_block(f) {}
                }
                return Ok((status, String::from_utf8_lossy(&output).into_owned()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.kill();
                return Err(self.timeout_error(timeout));
            }
            let mut fds = vec![PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            if let Some(f) = &out {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, poll_timeout(left)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(errno) => {
                    return Err(ProcessError::Wait {
                        program: self.program.clone(),
                        errno,
                    })
                }
            }
            let readable = fds
                .get(1)
                .and_then(|f| f.revents())
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP));
            drop(fds);
            if readable {
                if let Some(f) = out.as_mut() {
                    if !drain_into(f, &mut output) {
                        out = None;
                    }
                }
            }
        }
    }

    fn timeout_error(&self, timeout: Duration) -> ProcessError {
        ProcessError::Timeout {
            program: self.program.clone(),
            seconds: timeout.as_secs().max(1),
        }
    }

    /// SIGKILL, then reap. For children that overran their time.
    pub fn kill(&self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = self.wait_timeout(Duration::from_secs(5));
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    pub fn terminate(&self, grace: Duration) -> Option<ExitStatus> {
        let _ = kill(self.pid, Signal::SIGTERM);
        match self.wait_timeout(grace) {
            Ok(Some(status)) => Some(status),
            _ => {
                self.kill();
                self.try_status()
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // A dropped child that already ended is forgotten; one still running stays registered
        // and is reaped by the SIGCHLD handler when it ends.
        if self.try_status().is_some() {
            reaper().forget(self.pid);
        }
    }
}

fn poll_timeout(d: Duration) -> PollTimeout {
    PollTimeout::try_from(d.as_millis().min(60_000) as i32 + 1).unwrap_or(PollTimeout::MAX)
}

/// Opens a pidfd for `pid` (Linux ≥ 5.3).
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// When process `pid` started (field 22 of /proc/PID/stat, in clock ticks since boot): with
/// the pid, names one process of this boot, never a later one that reuses the pid.
pub fn start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A process that is not our child (an engine an earlier daemon started), held by a pidfd:
/// its exit makes the pidfd readable, and a signal through it cannot reach a later process
/// that reuses the pid.
#[derive(Debug)]
pub struct Foreign {
    pub pid: Pid,
    pub pidfd: OwnedFd,
}

impl Foreign {
    /// The process `pid` if it still runs (a zombie does not) and started at `started`
    /// ([`start_time`]).
    pub fn open(pid: Pid, started: u64) -> Option<Self> {
        let pidfd = pidfd_open(pid).ok()?;
        // Checked after the pidfd is open: the fd then holds the process checked.
        let process = (start_time(pid) == Some(started)).then_some(Self { pid, pidfd })?;
        (!process.has_exited()).then_some(process)
    }

    /// Has it exited?
    pub fn has_exited(&self) -> bool {
        self.wait_timeout(Duration::ZERO)
    }

    /// Waits up to `timeout` for it to exit; true if it has.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            let ms = if left.is_zero() {
                PollTimeout::ZERO
            } else {
                poll_timeout(left)
            };
            match poll(&mut fds, ms) {
                Ok(n) if n > 0 => return true,
                Ok(_) if left.is_zero() => return false,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
    }

    /// Sends `signal` through the pidfd.
    pub fn signal(&self, signal: Signal) -> Result<(), Errno> {
        // SAFETY: plain syscall on an fd we own; no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`; true once it has exited.
    pub fn terminate(&self, grace: Duration) -> bool {
        let _ = self.signal(Signal::SIGTERM);
        if self.wait_timeout(grace) {
            return true;
        }
        let _ = self.signal(Signal::SIGKILL);
        self.wait_timeout(Duration::from_secs(5))
    }
}

/// Records exit statuses of our children, so whoever reaps one (the SIGCHLD handler or the
/// waiting thread) leaves the status for the other.
pub struct Reaper {
    children: Mutex<HashMap<i32, Option<ExitStatus>>>,
}

pub fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    REAPER.get_or_init(|| Reaper {
        children: Mutex::new(HashMap::new()),
    })
}

fn convert(status: WaitStatus) -> Option<(Pid, ExitStatus)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, ExitStatus::Code(code))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid, ExitStatus::Signal(sig as i32))),
        _ => None,
    }
}

impl Reaper {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Option<ExitStatus>>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaps every child that has exited. Returns those reaped now, for supervision.
    pub fn reap_all(&self) -> Vec<(Pid, ExitStatus)> {
        let mut children = self.lock();
        let mut reaped = Vec::new();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if let Some((pid, exit)) = convert(status) {
                        if let Some(slot) = children.get_mut(&pid.as_raw()) {
                            *slot = Some(exit);
                        }
                        reaped.push((pid, exit));
                    }
                }
            }
        }
        reaped
    }

    fn status(&self, pid: Pid) -> Option<ExitStatus> {
        let mut children = self.lock();
        if let Some(Some(status)) = children.get(&pid.as_raw()) {
            return Some(*status);
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => {
                let (_, exit) = convert(status)?;
                children.insert(pid.as_raw(), Some(exit));
                Some(exit)
            }
            // Reaped by someone else without a record: treat as gone.
            Err(Errno::ECHILD) => Some(
                *children
                    .entry(pid.as_raw())
                    .or_insert(Some(ExitStatus::Code(-1)))
                    .as_ref()
                    .unwrap_or(&ExitStatus::Code(-1)),
            ),
            Err(_) => None,
        }
    }

    fn forget(&self, pid: Pid) {
        self.lock().remove(&pid.as_raw());
    }

    fn spawn(&self, cmd: Command) -> Result<Child, ProcessError> {
        let program = cmd.program_name();
        let spawn_err = |errno| ProcessError::Spawn {
            program: program.clone(),
            errno,
        };
        // Everything the child needs is allocated before fork: after fork in a threaded
        // process only async-signal-safe calls are allowed.
        let resolved = resolve(&cmd.program).ok_or(spawn_err(Errno::ENOENT))?;
        let path = CString::new(resolved.as_bytes()).map_err(|_| spawn_err(Errno::EINVAL))?;
        let mut argv_c =
            vec![CString::new(cmd.program.as_bytes()).map_err(|_| spawn_err(Errno::EINVAL))?];
        for a in &cmd.args {
            argv_c.push(CString::new(a.as_bytes()).map_err(|_| spawn_err(Errno::EINVAL))?);
        }
        let env_c: Vec<CString> = CHILD_ENV
            .iter()
            .map(|e| CString::new(*e).expect("static env has no NUL"))
            .collect();
        let argv: Vec<*const libc::c_char> = argv_c
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp: Vec<*const libc::c_char> = env_c
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();

        let devnull = nix::fcntl::open(
            c"/dev/null",
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(spawn_err)?;
        let stdin_pipe = match cmd.stdin {
            Stdio::Pipe => Some(pipe2(OFlag::O_CLOEXEC).map_err(spawn_err)?),
            Stdio::Null => None,
        };
        let stdout_pipe = match cmd.stdout {
            Stdio::Pipe => Some(pipe2(OFlag::O_CLOEXEC).map_err(spawn_err)?),
            Stdio::Null => None,
        };
        let pty = if cmd.controlling_tty {
            Some(open_pty().map_err(spawn_err)?)
        } else {
            None
        };
        let (err_read, err_write) = pipe2(OFlag::O_CLOEXEC).map_err(spawn_err)?;

        let child_stdin = stdin_pipe
            .as_ref()
            .map_or(devnull.as_raw_fd(), |p| p.0.as_raw_fd());
        let child_stdout = stdout_pipe
            .as_ref()
            .map_or(devnull.as_raw_fd(), |p| p.1.as_raw_fd());
        let slave = pty.as_ref().map_or(-1, |p| p.slave.as_raw_fd());
        let fd3 = cmd.fd3.as_ref().map_or(-1, |f| f.as_raw_fd());
        let err_fd = err_write.as_raw_fd();

        let mut children = self.lock();
        // SAFETY: the child branch calls only async-signal-safe functions (see child_exec).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(spawn_err(Errno::last()));
        }
        if pid == 0 {
            // SAFETY: we are the child of fork; every pointer was prepared before fork.
            unsafe {
                child_exec(
                    &path,
                    &argv,
                    &envp,
                    [child_stdin, child_stdout, child_stdout],
                    slave,
                    fd3,
                    err_fd,
                )
            }
        }
        let pid = Pid::from_raw(pid);
        children.insert(pid.as_raw(), None);
        let pidfd = pidfd_open(pid);
        drop(children);
        drop(err_write);

        // Exec succeeded when the error pipe closes with nothing in it.
        let mut errbuf = [0u8; 4];
        let mut err_file = File::from(err_read);
        let n = loop {
            match err_file.read(&mut errbuf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.unwrap_or(0),
            }
        };
        if n == 4 {
            let errno = Errno::from_raw(i32::from_ne_bytes(errbuf));
            let _ = self.status_blocking(pid);
            self.forget(pid);
            return Err(spawn_err(errno));
        }
        let pidfd = pidfd.map_err(spawn_err)?;
        let (pty_master, pty_slave) = match pty {
            Some(p) => (Some(File::from(p.master)), Some(p.slave)),
            None => (None, None),
        };
        Ok(Child {
            pid,
            program,
            pidfd,
            stdin: stdin_pipe.map(|(_, w)| File::from(w)),
            stdout: stdout_pipe.map(|(r, _)| File::from(r)),
            pty: pty_master,
            _pty_slave: pty_slave,
        })
    }

    fn status_blocking(&self, pid: Pid) -> Option<ExitStatus> {
        let status = waitpid(pid, None).ok().and_then(convert).map(|(_, s)| s);
        status.or_else(|| self.status(pid))
    }
}

/// Where `program` is on the PATH our children get, if it is installed.
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    resolve(OsStr::new(program)).map(Into::into)
}

/// Finds `program` on the fixed PATH the children get (resolved before fork: execvpe may
/// allocate).
fn resolve(program: &OsStr) -> Option<OsString> {
    if program.as_bytes().contains(&b'/') {
        return Some(program.to_owned());
    }
    CHILD_ENV[0]
        .trim_start_matches("PATH=")
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .map(|p| p.into_os_string())
}

/// The child side of fork: wire up fds, leave our signal setup behind, exec, or report errno
/// through `err_fd` and `_exit` (never return into the parent's code, never run destructors).
unsafe fn child_exec(
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    stdio: [RawFd; 3],
    tty_slave: RawFd,
    fd3: RawFd,
    err_fd: RawFd,
) -> ! {
    let fail = |err_fd: RawFd| -> ! {
        let errno = Errno::last_raw().to_ne_bytes();
        // SAFETY: write and _exit are async-signal-safe.
        unsafe {
            libc::write(err_fd, errno.as_ptr().cast(), errno.len());
            libc::_exit(127)
        }
    };
    // SAFETY (whole block): only async-signal-safe libc calls on fds and memory prepared
    // before fork.
    unsafe {
        // The daemon blocks signals for signalfd and ignores SIGPIPE; blocked masks and
        // ignored dispositions survive exec, so restore the defaults.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for sig in [
            libc::SIGPIPE,
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGINT,
        ] {
            libc::signal(sig, libc::SIG_DFL);
        }
        if tty_slave >= 0 {
            // A new session with the pty as controlling terminal: /dev/tty then means it.
            if libc::setsid() < 0 || libc::ioctl(tty_slave, libc::TIOCSCTTY, 0) < 0 {
                fail(err_fd);
            }
        }
        if fd3 >= 0 && libc::dup2(fd3, 3) < 0 {
            fail(err_fd);
        }
        for (target, fd) in stdio.iter().enumerate() {
            // dup2 clears close-on-exec on the copy, which is what we want.
            if libc::dup2(*fd, target as RawFd) < 0 {
                fail(err_fd);
            }
        }
        // Nothing else crosses exec: not a descriptor some library opened without
        // O_CLOEXEC, nor one another thread made between its open and its fcntl (another
        // spawn's recovery-key pty). Marked, not closed, so the error pipe still works.
        let first_closed: libc::c_uint = if fd3 >= 0 { 4 } else { 3 };
        libc::syscall(
            libc::SYS_close_range,
            first_closed,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(err_fd)
    }
}

/// Both ends of a fresh pty, each close-on-exec from its open: another thread's spawn in
/// between can never inherit them (openpty(3) sets no O_CLOEXEC).
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

fn open_pty() -> nix::Result<Pty> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave = nix::fcntl::open(
        ptsname_r(&master)?.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok(Pty {
        master: master.into(),
        slave,
    })
}

/// Puts an fd we own into non-blocking mode (best effort).
pub fn set_nonblocking(file: &File) {
    use nix::fcntl::{fcntl, FcntlArg};
    if let Ok(flags) = fcntl(file, FcntlArg::F_GETFL) {
        let _ = fcntl(
            file,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        );
    }
}

/// Puts an fd back into blocking mode (best effort).
pub fn set_blocking(file: &File) {
    use nix::fcntl::{fcntl, FcntlArg};
    if let Ok(flags) = fcntl(file, FcntlArg::F_GETFL) {
        let _ = fcntl(
            file,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK),
        );
    }
}

/// True when a non-blocking read would block now.
fn would_block(file: &File) -> bool {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
    !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Reads everything currently available from a non-blocking or ready fd into `sink`, up to
/// [`OUTPUT_LIMIT`]; returns false at end of file.
pub fn drain_into(file: &mut File, sink: &mut Zeroizing<Vec<u8>>) -> bool {
    let mut buf = Zeroizing::new([0u8; 4096]);
    match file.read(&mut buf[..]) {
        Ok(0) => false,
        Ok(n) => {
            if sink.len() < OUTPUT_LIMIT {
                sink.extend_from_slice(&buf[..n]);
            }
            true
        }
        // EIO is what a pty master reads once the child side is closed: the end.
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 180 0 0 0 0 0 0 0 20 0 1 0 987654 0";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        let me = Pid::this();
        let started = start_time(me).expect("our own start time");
        assert!(Foreign::open(me, started).is_some());
        assert!(
            Foreign::open(me, started + 1).is_none(),
            "another start time"
        );
    }

    #[test]
    fn a_foreign_process_is_seen_to_exit() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let foreign = Foreign::open(child.pid, start_time(child.pid).unwrap()).unwrap();
        assert!(!foreign.has_exited());
        assert!(foreign.terminate(Duration::from_secs(5)));
        assert!(foreign.has_exited());
        assert!(
            Foreign::open(child.pid, start_time(child.pid).unwrap()).is_none(),
            "a zombie is not taken for a running process"
        );
        assert_eq!(
            child.wait_timeout(Duration::from_secs(5)).unwrap(),
            Some(ExitStatus::Signal(15))
        );
    }

    #[test]
    fn runs_and_captures_output() {
        let out = Command::new("sh")
            .args(["-c", "echo out; echo err >&2"])
            .run(Duration::from_secs(10))
            .unwrap();
        assert_eq!(out, "out\nerr\n");
    }

    #[test]
    fn a_child_gets_only_its_own_descriptors() {
        // A descriptor without close-on-exec, as a careless library leaves one.
        // SAFETY: a copy of our own stderr, at 100 or above; closed below.
        let leaked = unsafe { libc::fcntl(2, libc::F_DUPFD, 100) };
        assert!(leaked >= 100);
        let keep = nix::fcntl::open(
            c"/dev/null",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let listed = Command::new("ls")
            .arg("/proc/self/fd")
            .fd3(keep)
            .run(Duration::from_secs(10))
            .unwrap();
        // SAFETY: ours, from the dup above.
        unsafe { libc::close(leaked) };
        let fds: Vec<i32> = listed
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        // stdin, stdout, stderr, fd 3, and the directory ls reads.
        assert!(!fds.contains(&leaked), "fd {leaked} leaked: {fds:?}");
        assert!(fds.contains(&3), "{fds:?}");
        assert!(fds.len() <= 5, "{fds:?}");
    }

    #[test]
    fn missing_program_is_a_typed_error() {
        let err = Command::new("/nonexistent/prog").spawn().err().unwrap();
        assert!(
            matches!(
                err,
                ProcessError::Spawn {
                    errno: Errno::ENOENT,
                    ..
                }
            ),
            "{err}"
        );
        let err = Command::new("no-such-program-here").spawn().err().unwrap();
        assert!(err.to_string().contains("no-such-program-here"), "{err}");
    }

    #[test]
    fn failure_carries_status_and_last_line() {
        let err = Command::new("sh")
            .args(["-c", "echo first; echo 'the cause' >&2; exit 3"])
            .run(Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(err.to_string(), "sh exited with status 3: the cause");
    }

    #[test]
    fn timeout_kills_the_child() {
        let err = Command::new("sleep")
            .arg("30")
            .run(Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");
    }

    #[test]
    fn environment_is_not_inherited() {
        std::env::set_var("GUILOCKER_TEST_SECRET", "leak");
        let out = Command::new("env").run(Duration::from_secs(10)).unwrap();
        assert!(!out.contains("leak"));
        assert!(out.contains("LC_ALL=C"));
    }

    #[test]
    fn both_ends_of_a_pty_are_close_on_exec_from_the_start() {
        let pty = open_pty().unwrap();
        for fd in [&pty.master, &pty.slave] {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
    }

    #[test]
    fn pty_is_the_controlling_terminal() {
        let mut child = Command::new("sh")
            .args(["-c", "read x </dev/tty; echo got:$x"])
            .controlling_tty()
            .spawn()
            .unwrap();
        use std::io::Write;
        child.pty.as_mut().unwrap().write_all(b"abc\n").unwrap();
        let (status, out) = child.wait_with_output(Duration::from_secs(10)).unwrap();
        assert!(status.success());
        assert_eq!(out.trim(), "got:abc");
    }

    #[test]
    fn no_zombies_after_run() {
        let child = Command::new("true").spawn().unwrap();
        let pid = child.pid;
        assert_eq!(
            child.wait_timeout(Duration::from_secs(10)).unwrap(),
            Some(ExitStatus::Code(0))
        );
        drop(child);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
