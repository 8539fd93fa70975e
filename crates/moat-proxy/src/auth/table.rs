//! Table mode: users who authenticate at moat itself, and their command deny lists.

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use sha2::{Digest, Sha256};

use super::Principal;
use crate::config::{UserConfig, decode_sha256_hex};

/// One user: a password digest (none: `nopass`) and the commands it may not run.
#[derive(Debug)]
pub(crate) struct User {
    pub(crate) name: String,
    digest: Option<[u8; 32]>,
    /// A user that exists but cannot log in (the implicit `default` when others need passwords).
    disabled: bool,
    /// Lower-case `cmd` or `cmd|sub` entries.
    denied: FxHashSet<Vec<u8>>,
}

impl User {
    /// Whether this user may not run `name` (lower-case), or its subcommand `sub`.
    pub(crate) fn denies(&self, name: &[u8], sub: Option<&[u8]>) -> bool {
        if self.denied.is_empty() {
            return false;
        }
        if self.denied.contains(name) {
            return true;
        }
        let Some(sub) = sub else { return false };
        let mut full = Vec::with_capacity(name.len() + 1 + sub.len());
        full.extend_from_slice(name);
        full.push(b'|');
        full.extend(sub.iter().map(u8::to_ascii_lowercase));
        self.denied.contains(&full)
    }
}

/// The users table, built once from the config.
#[derive(Debug, Default)]
pub(crate) struct Users {
    by_name: FxHashMap<String, Arc<Principal>>,
    /// True when any user has a password: clients must authenticate before anything else.
    required: bool,
}

/// Outcome of an authentication attempt, mapped to Redis's exact replies by the session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthOutcome {
    /// Credentials accepted.
    Ok,
    /// Unknown user or wrong password (`-WRONGPASS`).
    WrongPass,
    /// `AUTH password` while no password is configured (Redis's own error for that case).
    NoPasswordConfigured,
}

impl Users {
    pub(crate) fn from_config(users: &[UserConfig]) -> Self {
        let mut by_name = FxHashMap::default();
        let mut required = false;
        for u in users {
            let digest = match (&u.password, &u.password_sha256) {
                (Some(p), _) => Some(sha256(p.as_bytes())),
                (None, Some(hex)) => decode_sha256_hex(hex),
                (None, None) => None,
            };
            required |= digest.is_some();
            let denied = u
                .deny_commands
                .iter()
                .map(|c| c.to_ascii_lowercase().into_bytes())
                .collect();
            by_name.insert(
                u.name.clone(),
                Arc::new(Principal::Table(User {
                    name: u.name.clone(),
                    digest,
                    disabled: false,
                    denied,
                })),
            );
        }
        if !by_name.contains_key("default") {
            // Redis's default user always exists; without a configured one it is `nopass`
            // when nobody needs a password, and disabled otherwise.
            by_name.insert(
                "default".into(),
                Arc::new(Principal::Table(User {
                    name: "default".into(),
                    digest: None,
                    disabled: required,
                    denied: FxHashSet::default(),
                })),
            );
        }
        // As in Redis: a `default` user without a password (nopass) signs every client in
        // as `default` from the start, whatever other users exist.
        if by_name
            .get("default")
            .and_then(|p| p.table_user())
            .is_some_and(|u| u.digest.is_none() && !u.disabled)
        {
            required = false;
        }
        Self { by_name, required }
    }

    /// Whether clients must authenticate before running commands.
    pub(crate) fn auth_required(&self) -> bool {
        self.required
    }

    /// The user a client acts as before (or without) authenticating.
    pub(crate) fn default_user(&self) -> Option<Arc<Principal>> {
        self.by_name
            .get("default")
            .filter(|p| p.table_user().is_some_and(|u| !u.disabled))
            .cloned()
    }

    /// Checks credentials; `user` is `None` for the one-argument `AUTH password` form.
    pub(crate) fn authenticate(
        &self,
        user: Option<&[u8]>,
        password: &[u8],
    ) -> (AuthOutcome, Option<Arc<Principal>>) {
        let name = user.unwrap_or(b"default");
        let found = std::str::from_utf8(name)
            .ok()
            .and_then(|n| self.by_name.get(n))
            .and_then(|p| Some((p, p.table_user()?)));
        match found {
            Some((_, u)) if u.disabled => (AuthOutcome::WrongPass, None),
            Some((p, u)) => match u.digest {
                None if user.is_none() => (AuthOutcome::NoPasswordConfigured, None),
                // A nopass user accepts any password, as in Redis.
                None => (AuthOutcome::Ok, Some(p.clone())),
                Some(d) if ct_eq(&d, &sha256(password)) => (AuthOutcome::Ok, Some(p.clone())),
                Some(_) => (AuthOutcome::WrongPass, None),
            },
            None => (AuthOutcome::WrongPass, None),
        }
    }

    /// Looks a user up by name (used to restore a session's user after RESET).
    #[cfg(test)]
    pub(crate) fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name).and_then(|p| p.table_user())
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Compares digests without an early exit, so response time does not reveal how many leading
/// bytes matched. Hand-written: 32 fixed bytes do not justify a dependency.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: Option<&str>, deny: &[&str]) -> UserConfig {
        UserConfig {
            name: name.into(),
            password: password.map(Into::into),
            password_sha256: None,
            deny_commands: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn no_users_means_no_auth() {
        let users = Users::from_config(&[]);
        assert!(!users.auth_required());
        assert_eq!(
            users.authenticate(None, b"x").0,
            AuthOutcome::NoPasswordConfigured
        );
        assert_eq!(
            users.authenticate(Some(b"default"), b"x").0,
            AuthOutcome::Ok
        );
        assert_eq!(
            users.authenticate(Some(b"bob"), b"x").0,
            AuthOutcome::WrongPass
        );
    }

    #[test]
    fn passwords_are_checked() {
        let users = Users::from_config(&[
            user("default", Some("pw"), &[]),
            user("bob", Some("b"), &[]),
        ]);
        assert!(users.auth_required());
        assert_eq!(users.authenticate(None, b"pw").0, AuthOutcome::Ok);
        assert_eq!(users.authenticate(None, b"px").0, AuthOutcome::WrongPass);
        assert_eq!(users.authenticate(Some(b"bob"), b"b").0, AuthOutcome::Ok);
        assert_eq!(
            users.authenticate(Some(b"bob"), b"pw").0,
            AuthOutcome::WrongPass
        );
    }

    #[test]
    fn implicit_default_is_disabled_when_others_need_passwords() {
        let users = Users::from_config(&[user("bob", Some("b"), &[])]);
        assert_eq!(
            users.authenticate(Some(b"default"), b"x").0,
            AuthOutcome::WrongPass
        );
        assert_eq!(users.authenticate(None, b"").0, AuthOutcome::WrongPass);
    }

    #[test]
    fn a_nopass_default_user_signs_everyone_in_even_beside_users_with_passwords() {
        let users = Users::from_config(&[
            user("default", None, &["FLUSHALL"]),
            user("bob", Some("b"), &[]),
        ]);
        assert!(!users.auth_required());
        assert!(users.default_user().is_some());
        assert_eq!(users.authenticate(Some(b"bob"), b"b").0, AuthOutcome::Ok);
        assert_eq!(
            users.authenticate(Some(b"bob"), b"x").0,
            AuthOutcome::WrongPass
        );
    }

    #[test]
    fn sha256_passwords() {
        let hex = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"; // "password"
        let users = Users::from_config(&[UserConfig {
            name: "default".into(),
            password: None,
            password_sha256: Some(hex.into()),
            deny_commands: vec![],
        }]);
        assert_eq!(users.authenticate(None, b"password").0, AuthOutcome::Ok);
        assert_eq!(
            users.authenticate(None, b"Password").0,
            AuthOutcome::WrongPass
        );
    }

    #[test]
    fn deny_lists_match_commands_and_subcommands() {
        let users = Users::from_config(&[user("default", None, &["FLUSHALL", "config|set"])]);
        let u = users.get("default").expect("exists");
        assert!(u.denies(b"flushall", None));
        assert!(u.denies(b"config", Some(b"SET")));
        assert!(!u.denies(b"config", Some(b"get")));
        assert!(!u.denies(b"get", Some(b"k")));
    }
}
