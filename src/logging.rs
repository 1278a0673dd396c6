//! A `log` backend: stderr in the foreground, syslog once detached. Never given secrets.

use log::{Level, LevelFilter, Metadata, Record};
use std::ffi::CString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static SYSLOG: AtomicBool = AtomicBool::new(false);
static LOGGER: Logger = Logger;

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // Our own lines at the chosen level; libraries' only when something is wrong.
        let ours = metadata.target().starts_with("guilocker");
        metadata.level() <= log::max_level() && (ours || metadata.level() <= Level::Warn)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if SYSLOG.load(Ordering::Relaxed) {
            let priority = match record.level() {
                Level::Error => libc::LOG_ERR,
                Level::Warn => libc::LOG_WARNING,
                Level::Info => libc::LOG_INFO,
                Level::Debug | Level::Trace => libc::LOG_DEBUG,
            };
            // Interior NULs cannot reach syslog(3); replace them rather than drop the line.
            let text = record.args().to_string().replace('\0', "\\0");
            if let Ok(msg) = CString::new(text) {
                // SAFETY: "%s" with one valid C string argument.
                unsafe { libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr()) };
            }
        } else {
            let _ = writeln!(
                std::io::stderr().lock(),
                "guilocker[{}]: {}: {}",
                std::process::id(),
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (stderr). Verbosity from `GUILOCKER_LOG` (error, warn, info, debug).
pub fn init() {
    let level = match std::env::var("GUILOCKER_LOG").as_deref() {
        Ok("error") => LevelFilter::Error,
        Ok("warn") => LevelFilter::Warn,
        Ok("debug") => LevelFilter::Debug,
        Ok("trace") => LevelFilter::Trace,
        _ => LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Sends further log lines to syslog (daemon facility), for a detached daemon.
pub fn use_syslog() {
    // SAFETY: the identity is a static C string, as openlog(3) keeps the pointer.
    unsafe { libc::openlog(c"guilocker".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    SYSLOG.store(true, Ordering::Relaxed);
}
