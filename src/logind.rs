//! logind's view of a process's login session (`org.freedesktop.login1` on the system bus):
//! whether the person is at the seat now, as udisks' `allow_active` asks. Used by the daemon
//! to authorize an unlock and by the agent to follow its own session.
//!
//! zbus is asynchronous; these calls block the calling thread (never the daemon's event loop)
//! on `zbus::block_on`, each bounded by [`TIMEOUT`].

use futures_lite::StreamExt;
use std::time::Duration;
use thiserror::Error;
use zbus::OwnedObjectPath;

const DESTINATION: &str = "org.freedesktop.login1";
const MANAGER_PATH: &str = "/org/freedesktop/login1";
const MANAGER: &str = "org.freedesktop.login1.Manager";
const SESSION: &str = "org.freedesktop.login1.Session";
/// A call to logind that takes longer than this is a failure, not a wait.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// A login session as logind reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    /// In the foreground of its seat (a session without a seat counts as active).
    pub active: bool,
    /// Logged in over the network (SSH).
    pub remote: bool,
}

impl Session {
    /// The person is at this machine, in this session, now.
    pub fn is_active_local(&self) -> bool {
        self.active && !self.remote
    }
}

#[derive(Debug, Error)]
pub enum LogindError {
    /// No system bus, or no logind on it: the machine has no session tracking to ask.
    #[error("logind is not available: {0}")]
    Unavailable(zbus::Error),
    #[error("cannot ask logind about process {pid}: {cause}")]
    Query { pid: u32, cause: zbus::Error },
}

/// A connection to logind.
pub struct Logind {
    connection: zbus::Connection,
}

impl Logind {
    pub fn connect() -> Result<Self, LogindError> {
        zbus::block_on(async {
            let connection = zbus::connection::Builder::system()
                .method_timeout(TIMEOUT)
                .build()
                .await
                .map_err(LogindError::Unavailable)?;
            // The bus may be there without logind (a container, a minimal system).
            let dbus = zbus::fdo::DBusProxy::new(&connection)
                .await
                .map_err(LogindError::Unavailable)?;
            let name = zbus::names::BusName::try_from(DESTINATION).expect("a valid bus name");
            let present = dbus.name_has_owner(name.clone()).await.unwrap_or(false)
                || dbus
                    .list_activatable_names()
                    .await
                    .is_ok_and(|names| names.iter().any(|n| n.as_str() == DESTINATION));
            if !present {
                return Err(LogindError::Unavailable(zbus::Error::Failure(format!(
                    "{DESTINATION} is not on the system bus"
                ))));
            }
            Ok(Self { connection })
        })
    }

    /// The session of process `pid`; `None` when it is in no session (a system service, a
    /// process started by cron or `systemd-run`).
    pub fn session_of(&self, pid: u32) -> Result<Option<Session>, LogindError> {
        let query = |cause| LogindError::Query { pid, cause };
        zbus::block_on(async {
            match self.session_path(pid).await.map_err(query)? {
                Some(path) => self.session_at(&path).await.map(Some).map_err(query),
                None => Ok(None),
            }
        })
    }

    /// Calls `changed` with the session of process `pid` now and after every change of its
    /// `Active` property, until `changed` returns false or the connection ends. Returns
    /// `Ok(false)` at once if the process is in no session.
    pub fn follow(
        &self,
        pid: u32,
        mut changed: impl FnMut(&Session) -> bool,
    ) -> Result<bool, LogindError> {
        let query = |cause| LogindError::Query { pid, cause };
        zbus::block_on(async {
            let Some(path) = self.session_path(pid).await.map_err(query)? else {
                return Ok(false);
            };
            let properties = zbus::fdo::PropertiesProxy::builder(&self.connection)
                .destination(DESTINATION)
                .path(path.clone())
                .build()
                .await
                .map_err(query)?;
            // Subscribed before the first read, so no change falls in between.
            let mut changes = properties
                .receive_properties_changed()
                .await
                .map_err(query)?;
            let session = self.session_at(&path).await.map_err(query)?;
            if !changed(&session) {
                return Ok(true);
            }
            while let Some(signal) = changes.next().await {
                let Ok(args) = signal.args() else { continue };
                let touched = args.changed_properties().contains_key("Active")
                    || args.invalidated_properties().contains(&"Active");
                if !touched {
                    continue;
                }
                let session = self.session_at(&path).await.map_err(query)?;
                if !changed(&session) {
                    break;
                }
            }
            Ok(true)
        })
    }

    async fn session_path(&self, pid: u32) -> zbus::Result<Option<OwnedObjectPath>> {
        let manager = self.proxy(MANAGER_PATH, MANAGER).await?;
        match manager.call("GetSessionByPID", &(pid,)).await {
            Ok(path) => Ok(Some(path)),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.login1.NoSessionForPID" =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn session_at(&self, path: &OwnedObjectPath) -> zbus::Result<Session> {
        let session = self.proxy(path.as_str(), SESSION).await?;
        Ok(Session {
            id: session.get_property("Id").await?,
            active: session.get_property("Active").await?,
            remote: session.get_property("Remote").await?,
        })
    }

    async fn proxy<'a>(&self, path: &'a str, interface: &'a str) -> zbus::Result<zbus::Proxy<'a>> {
        zbus::proxy::Builder::new(&self.connection)
            .destination(DESTINATION)
            .path(path)
            .interface(interface)
            // Properties change (Active); read them fresh each time.
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
    }
}
