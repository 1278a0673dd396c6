//! Who is asking: the peer's credentials from SO_PEERCRED, and what they may do.

use super::error::DaemonError;
use super::mount::Owner;
use nix::unistd::{getgrouplist, Group, Uid, User};
use std::ffi::CString;
use std::os::unix::net::UnixStream;

/// The process on the other end of a connection, as the kernel reports it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

impl Caller {
    pub fn of(stream: &UnixStream) -> nix::Result<Self> {
        let cred =
            nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
        Ok(Self {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    pub fn user(&self) -> Option<User> {
        User::from_uid(Uid::from_raw(self.uid)).ok().flatten()
    }

    /// For messages: the user name, or the uid if it has none.
    pub fn describe(&self) -> String {
        self.user()
            .map(|u| u.name)
            .unwrap_or_else(|| format!("uid {}", self.uid))
    }
}

/// Is `user` a member of `group` (primary or supplementary, per the user database)?
fn in_group(user: &User, group: &str) -> bool {
    if group == "*" {
        return true;
    }
    let Ok(Some(group)) = Group::from_name(group) else {
        return false;
    };
    if user.gid == group.gid {
        return true;
    }
    let Ok(name) = CString::new(user.name.as_str()) else {
        return false;
    };
    getgrouplist(&name, user.gid)
        .map(|groups| groups.contains(&group.gid))
        .unwrap_or(false)
}

/// Is `caller` root or in `allowed_group`?
pub fn in_allowed_group(caller: &Caller, allowed_group: &str) -> bool {
    caller.is_root() || caller.user().is_some_and(|u| in_group(&u, allowed_group))
}

/// May `caller` unlock `device`, and for whom? Root may name any owner; others unlock for
/// themselves, and only when in `allowed_group`.
pub fn authorize_unlock(
    caller: &Caller,
    device: &str,
    allowed_group: &str,
    owner: Option<&str>,
) -> Result<Owner, DaemonError> {
    let denied = |why: String| DaemonError::NotAuthorized {
        device: device.into(),
        why,
    };
    let user = caller
        .user()
        .ok_or_else(|| denied(format!("uid {} has no user account", caller.uid)))?;
    if !caller.is_root() && !in_group(&user, allowed_group) {
        return Err(denied(format!(
            "{} is not in the group '{allowed_group}' (see allowed_group in the config)",
            user.name
        )));
    }
    let target = match owner {
        Some(name) if name != user.name => {
            if !caller.is_root() {
                return Err(denied(format!(
                    "only root may unlock for another user ({name})"
                )));
            }
            User::from_name(name).ok().flatten().ok_or_else(|| {
                DaemonError::BadRequest(format!("{device}: no such user '{name}'"))
            })?
        }
        _ => user,
    };
    Ok(Owner {
        name: target.name,
        uid: target.uid.as_raw(),
        gid: target.gid.as_raw(),
    })
}

/// What a caller may see of the daemon's devices (status, inspect, events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sees {
    /// Root and members of `allowed_group`: everything (the agent asks about every stick).
    All,
    /// Anyone else: only volumes unlocked for them (owners, mountpoints, labels, GUIDs and
    /// descriptions of other people's sticks are none of their business).
    OwnedBy(String),
}

impl Sees {
    pub fn of(caller: &Caller, allowed_group: &str) -> Self {
        if in_allowed_group(caller, allowed_group) {
            Self::All
        } else {
            Self::OwnedBy(caller.describe())
        }
    }

    pub fn sees(&self, device: &crate::protocol::DeviceInfo) -> bool {
        match self {
            Self::All => true,
            Self::OwnedBy(name) => device.owner.as_deref() == Some(name),
        }
    }
}

/// May `caller` put away a volume unlocked for `owner`? Root, or the owner.
pub fn may_unmount(caller: &Caller, owner: &Owner) -> bool {
    caller.is_root() || caller.uid == owner.uid
}

/// The gid of a group, for checking a config at load time.
pub fn group_exists(name: &str) -> bool {
    name == "*" || Group::from_name(name).ok().flatten().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Caller {
        Caller {
            uid: 0,
            gid: 0,
            pid: 1,
        }
    }

    #[test]
    fn root_may_do_anything() {
        let owner = authorize_unlock(&root(), "/dev/sdb1", "nonexistent-group", None).unwrap();
        assert_eq!(owner.uid, 0);
        assert!(may_unmount(
            &root(),
            &Owner {
                name: "x".into(),
                uid: 1234,
                gid: 1234
            }
        ));
    }

    #[test]
    fn root_may_name_an_owner_but_not_a_missing_one() {
        let err =
            authorize_unlock(&root(), "/dev/sdb1", "*", Some("no-such-user-xyz")).unwrap_err();
        assert!(err.to_string().contains("no-such-user-xyz"), "{err}");
    }

    #[test]
    fn others_may_not_unmount_what_they_do_not_own() {
        let alice = Caller {
            uid: 1000,
            gid: 1000,
            pid: 2,
        };
        assert!(!may_unmount(
            &alice,
            &Owner {
                name: "bob".into(),
                uid: 1001,
                gid: 1001
            }
        ));
        assert!(may_unmount(
            &alice,
            &Owner {
                name: "alice".into(),
                uid: 1000,
                gid: 1000
            }
        ));
    }

    #[test]
    fn wildcard_group() {
        let root_user = User::from_uid(Uid::from_raw(0)).unwrap().unwrap();
        assert!(in_group(&root_user, "*"));
        assert!(in_group(&root_user, "root"));
        assert!(!in_group(&root_user, "no-such-group-xyz"));
    }
}
