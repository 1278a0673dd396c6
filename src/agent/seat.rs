//! Follows the agent's own login session: dialogs are for the person at the seat. When the
//! session goes to the background (fast user switching, a locked VT), open dialogs are
//! withdrawn and none is started; when it comes back, the agent asks about what is still
//! locked.

use super::Agent;
use crate::logind::{Logind, LogindError};
use std::sync::Arc;

/// Starts the watch on a thread of its own. Without logind, or outside any session, the
/// agent asks as if always in the foreground, and says so once.
pub fn watch(agent: Arc<Agent>) {
    let spawned = std::thread::Builder::new()
        .name("guilocker-seat".into())
        .spawn(move || follow(&agent));
    if let Err(e) = spawned {
        log::warn!("cannot follow the login session: {e}; asking in any case");
    }
}

fn follow(agent: &Arc<Agent>) {
    let logind = match Logind::connect() {
        Ok(logind) => logind,
        Err(LogindError::Unavailable(cause)) => {
            log::info!("logind is not available ({cause}); asking whatever the session does");
            return;
        }
        Err(e) => {
            log::warn!("{e}; asking whatever the session does");
            return;
        }
    };
    let uid = nix::unistd::getuid().as_raw();
    let followed = logind.follow(std::process::id(), uid, |session| {
        agent.set_active(session.active, &session.id);
        true
    });
    match followed {
        Ok(true) => log::info!("logind stopped telling about this session"),
        Ok(false) => log::info!("this agent is in no login session; asking in any case"),
        Err(e) => log::warn!("{e}; asking in any case"),
    }
    // Never leave the agent mute because the watch ended.
    agent.set_active(true, "(no longer followed)");
}
