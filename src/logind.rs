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
use zbus_systemd::login1::{ManagerProxy, SessionProxy};

const DESTINATION: &str = "org.freedesktop.login1";
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
            let Some(session) = self.session_proxy(pid, false).await.map_err(query)? else {
                return Ok(None);
            };
            read(&session).await.map(Some).map_err(query)
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
            let Some(session) = self.session_proxy(pid, true).await.map_err(query)? else {
                return Ok(false);
            };
            let now = read(&session).await.map_err(query)?;
            // The stream yields the value at once, then each change.
            let mut changes = session.receive_active_changed().await;
            while let Some(change) = changes.next().await {
                let active = change.get().await.map_err(query)?;
                if !changed(&Session {
                    active,
                    ..now.clone()
                }) {
                    break;
                }
            }
            Ok(true)
        })
    }

    /// The proxy of `pid`'s session; `follow`: kept up to date by logind's signals, which
    /// `receive_active_changed` needs.
    async fn session_proxy(
        &self,
        pid: u32,
        follow: bool,
    ) -> zbus::Result<Option<SessionProxy<'static>>> {
        let manager = ManagerProxy::new(&self.connection).await?;
        let path: OwnedObjectPath = match manager.get_session_by_pid(pid).await {
            Ok(path) => path,
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.login1.NoSessionForPID" =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        SessionProxy::builder(&self.connection)
            .path(path)
            .cache_properties(if follow {
                zbus::proxy::CacheProperties::Yes
            } else {
                zbus::proxy::CacheProperties::No
            })
            .build()
            .await
            .map(Some)
    }
}

async fn read(session: &SessionProxy<'_>) -> zbus::Result<Session> {
    Ok(Session {
        id: session.id().await?,
        active: session.active().await?,
        remote: session.remote().await?,
    })
}
