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
use zbus_systemd::login1::{ManagerProxy, SessionProxy, UserProxy};

const DESTINATION: &str = "org.freedesktop.login1";
/// A call to logind that takes longer than this is a failure, not a wait.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// A login session as logind reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    /// Whose session it is.
    pub uid: u32,
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

/// A connection to logind (cheap to clone: the connection is shared).
#[derive(Clone)]
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

    /// The login session of process `pid`, which runs as `uid`. A process that systemd
    /// started outside the session (on GNOME and Plasma: XDG autostart programs, terminals)
    /// stands, as polkit has it, for the user's display session. `None`: in no session of
    /// `uid` (a system service, a cron job, a process of someone else).
    pub fn session_of(&self, pid: u32, uid: u32) -> Result<Option<Session>, LogindError> {
        let query = |cause| LogindError::Query { pid, cause };
        zbus::block_on(async {
            let Some(session) = self.session_proxy(pid, uid, false).await.map_err(query)? else {
                return Ok(None);
            };
            let session = read(&session).await.map_err(query)?;
            // A pid can be reused: the session must be the caller's own.
            Ok((session.uid == uid).then_some(session))
        })
    }

    /// Calls `changed` with the session of process `pid` (see [`Logind::session_of`]) now and
    /// after every change of its `Active` property, until `changed` returns false or the
    /// connection ends. Returns `Ok(false)` at once if there is no such session.
    pub fn follow(
        &self,
        pid: u32,
        uid: u32,
        mut changed: impl FnMut(&Session) -> bool,
    ) -> Result<bool, LogindError> {
        let query = |cause| LogindError::Query { pid, cause };
        zbus::block_on(async {
            let Some(session) = self.session_proxy(pid, uid, true).await.map_err(query)? else {
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

    /// The proxy of `pid`'s session, else of `uid`'s display session; `follow`: kept up to
    /// date by logind's signals, which `receive_active_changed` needs.
    async fn session_proxy(
        &self,
        pid: u32,
        uid: u32,
        follow: bool,
    ) -> zbus::Result<Option<SessionProxy<'static>>> {
        let manager = ManagerProxy::new(&self.connection).await?;
        let path = match absent(manager.get_session_by_pid(pid).await, "NoSessionForPID")? {
            Some(path) => path,
            None => match self.display_session(&manager, uid).await? {
                Some(path) => path,
                None => return Ok(None),
            },
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

    /// The session logind names the user's display (graphical, else the first), if any.
    async fn display_session(
        &self,
        manager: &ManagerProxy<'_>,
        uid: u32,
    ) -> zbus::Result<Option<OwnedObjectPath>> {
        let Some(user) = absent(manager.get_user(uid).await, "NoSuchUser")? else {
            return Ok(None);
        };
        let user = UserProxy::builder(&self.connection)
            .path(user)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let (id, path) = user.display().await?;
        Ok((!id.is_empty()).then_some(path))
    }
}

/// `Ok(None)` for logind's "no such …" error `name`.
fn absent<T>(result: zbus::Result<T>, name: &str) -> zbus::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(zbus::Error::MethodError(error, _, _))
            if error.as_str().strip_prefix("org.freedesktop.login1.") == Some(name) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn read(session: &SessionProxy<'_>) -> zbus::Result<Session> {
    Ok(Session {
        id: session.id().await?,
        uid: session.user().await?.0,
        active: session.active().await?,
        remote: session.remote().await?,
    })
}
