use std::ffi::CString;

use nix::unistd::{getegid, geteuid, getgid, getuid, Gid, Group, Uid, User};

use crate::error::StartError;

/// The user and group workers (and, unless `master-as-root`, the master) run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    /// Present when the uid names a passwd entry: used for its supplementary groups.
    pub user_name: Option<CString>,
}

pub fn current_is_root() -> bool {
    geteuid().is_root()
}

impl Identity {
    /// Resolve `uid`/`gid` settings (names or numbers). `uid` without `gid` takes that
    /// user's primary group.
    pub fn resolve(uid: Option<&str>, gid: Option<&str>) -> Result<Option<Identity>, StartError> {
        if uid.is_none() && gid.is_none() {
            return Ok(None);
        }
        let user = match uid {
            Some(spec) => Some(lookup_user(spec)?),
            None => None,
        };
        let gid = match (gid, &user) {
            (Some(spec), _) => lookup_group(spec)?,
            (None, Some((_, Some(u)))) => u.gid,
            (None, Some((uid, None))) => {
                return Err(StartError::Privileges(format!(
                    "uid {uid} has no passwd entry: set gid as well"
                )))
            }
            (None, None) => getegid(),
        };
        let (uid, user_name) = match user {
            Some((uid, entry)) => (uid, entry.and_then(|u| CString::new(u.name).ok())),
            // gid alone: keep the current user.
            None => (geteuid(), None),
        };
        Ok(Some(Identity {
            uid,
            gid,
            user_name,
        }))
    }

    fn is_current(&self) -> bool {
        getuid() == self.uid
            && geteuid() == self.uid
            && getgid() == self.gid
            && getegid() == self.gid
    }

    /// Drop to this identity for good: supplementary groups, gid, uid, in that order; then
    /// no-new-privs; then prove that root cannot be regained.
    pub fn drop_privileges(&self) -> Result<(), StartError> {
        let fail = |what: &str, e: nix::Error| {
            StartError::Privileges(format!("{what} (uid {} gid {}): {e}", self.uid, self.gid))
        };
        if !geteuid().is_root() {
            if self.is_current() {
                return Ok(());
            }
            return Err(StartError::Privileges(format!(
                "asked to switch to uid {} gid {} but not running as root (euid {})",
                self.uid,
                self.gid,
                geteuid()
            )));
        }
        match &self.user_name {
            Some(name) => {
                nix::unistd::initgroups(name, self.gid).map_err(|e| fail("initgroups", e))?
            }
            None => nix::unistd::setgroups(&[self.gid]).map_err(|e| fail("setgroups", e))?,
        }
        nix::unistd::setgid(self.gid).map_err(|e| fail("setgid", e))?;
        nix::unistd::setuid(self.uid).map_err(|e| fail("setuid", e))?;
        set_no_new_privs().map_err(|e| fail("PR_SET_NO_NEW_PRIVS", e))?;
        if !self.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(StartError::Privileges(
                "setuid(0) still succeeds after the drop".to_string(),
            ));
        }
        Ok(())
    }
}

fn set_no_new_privs() -> nix::Result<()> {
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    nix::errno::Errno::result(rc).map(drop)
}

fn lookup_user(spec: &str) -> Result<(Uid, Option<User>), StartError> {
    if let Ok(n) = spec.parse::<u32>() {
        let uid = Uid::from_raw(n);
        let entry = User::from_uid(uid).ok().flatten();
        return Ok((uid, entry));
    }
    match User::from_name(spec) {
        Ok(Some(u)) => Ok((u.uid, Some(u))),
        Ok(None) => Err(StartError::Privileges(format!("unknown user {spec:?}"))),
        Err(e) => Err(StartError::Privileges(format!(
            "looking up user {spec:?}: {e}"
        ))),
    }
}

fn lookup_group(spec: &str) -> Result<Gid, StartError> {
    if let Ok(n) = spec.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    match Group::from_name(spec) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(StartError::Privileges(format!("unknown group {spec:?}"))),
        Err(e) => Err(StartError::Privileges(format!(
            "looking up group {spec:?}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve() {
        let root = Identity::resolve(Some("root"), None)
            .expect("root")
            .expect("some");
        assert!(root.uid.is_root());
        assert_eq!(root.gid, Gid::from_raw(0));
        let numeric = Identity::resolve(Some("0"), Some("0"))
            .expect("0")
            .expect("some");
        assert!(numeric.uid.is_root());
    }

    #[test]
    fn unknown_names_are_errors_that_name_them() {
        let err = Identity::resolve(Some("no-such-user-xyz"), None).expect_err("unknown");
        assert!(err.to_string().contains("no-such-user-xyz"));
        let err = Identity::resolve(None, Some("no-such-group-xyz")).expect_err("unknown");
        assert!(err.to_string().contains("no-such-group-xyz"));
    }
}
