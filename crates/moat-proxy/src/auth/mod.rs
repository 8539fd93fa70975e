//! Who a client is, and who decides: the one home of moat's authentication logic.
//!
//! - [`Authority`]: the process-wide authority, in one of two modes:
//!   - passthrough (the default): Redis holds the users. Moat checks `AUTH` against Redis
//!     (`backend/verify.rs` does the I/O) and remembers each verified credential, so the
//!     client is served by backend connections logged in as its own Redis user and Redis's
//!     ACLs apply to everything it runs.
//!   - table: moat holds the users (`[[users]]`, [`table`]) and reaches Redis with one
//!     credential of its own.
//! - [`Principal`]: what a session is signed in as, in either mode.
//!
//! Pure logic, no I/O: it is shared by every worker and never touched per request.

pub(crate) mod table;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustc_hash::FxHashMap;

use crate::config::{AuthMode, Config};
pub(crate) use table::{AuthOutcome, User, Users};

/// Distinct Redis users moat remembers credentials for. Only credentials Redis accepted are
/// remembered, so an attacker cannot fill it without valid passwords; past it, entries no
/// session uses are forgotten first, and a new user is served without being remembered.
const MAX_KNOWN_USERS: usize = 4096;

/// What a session is signed in as.
#[derive(Debug)]
pub(crate) enum Principal {
    /// A user of moat's own table.
    Table(User),
    /// A Redis user whose credential Redis accepted (or the connection's default user).
    Redis(Credential),
}

impl Principal {
    /// The user name, as `ACL WHOAMI` and `CLIENT LIST` show it.
    pub(crate) fn name(&self) -> &str {
        match self {
            Principal::Table(u) => &u.name,
            Principal::Redis(c) => &c.name,
        }
    }

    /// Whether moat itself refuses `name` (lower case) or its subcommand for this user.
    /// Only table users have deny lists; Redis enforces its own ACLs.
    pub(crate) fn denies(&self, name: &[u8], sub: Option<&[u8]>) -> bool {
        match self {
            Principal::Table(u) => u.denies(name, sub),
            Principal::Redis(_) => false,
        }
    }

    /// The table user, in table mode.
    pub(crate) fn table_user(&self) -> Option<&User> {
        match self {
            Principal::Table(u) => Some(u),
            Principal::Redis(_) => None,
        }
    }

    /// The Redis credential, in passthrough mode.
    pub(crate) fn credential(&self) -> Option<&Credential> {
        match self {
            Principal::Redis(c) => Some(c),
            Principal::Table(_) => None,
        }
    }
}

/// A Redis user and the last password Redis accepted for it, which moat's connections for
/// that user log in with.
#[derive(Debug)]
pub(crate) struct Credential {
    name: String,
    /// None: the connection's own default user (no AUTH sent).
    password: Mutex<Option<Vec<u8>>>,
    /// Cleared when Redis no longer knows the user (deleted, or its password refused on a
    /// new connection): sessions signed in as it are closed, as Redis closes its clients.
    valid: AtomicBool,
}

impl Credential {
    fn new(name: &str, password: Option<Vec<u8>>) -> Self {
        Self {
            name: name.to_owned(),
            password: Mutex::new(password),
            valid: AtomicBool::new(true),
        }
    }

    /// The user name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `AUTH user password` arguments for a new connection, or none for the default user of
    /// a fresh connection.
    pub(crate) fn auth_args(&self) -> Option<(String, Vec<u8>)> {
        let password = self.password.lock().ok()?.clone()?;
        Some((self.name.clone(), password))
    }

    /// Whether Redis still accepts this user, as far as moat knows.
    pub(crate) fn is_valid(&self) -> bool {
        self.valid.load(Ordering::Relaxed)
    }

    /// Redis no longer accepts this credential.
    pub(crate) fn invalidate(&self) {
        self.valid.store(false, Ordering::Relaxed);
    }
}

/// Passthrough mode's state: what moat learned from Redis about its users.
#[derive(Debug)]
pub(crate) struct RedisUsers {
    /// Redis's default user needs a password (`requirepass`, or `default` without `nopass`):
    /// a new client must AUTH before anything else. Learned from Redis: at each connection
    /// moat opens without credentials, and after every command that may change it.
    default_requires_auth: AtomicBool,
    /// Clients that never sent AUTH, served by connections that never sent it either.
    anonymous: Arc<Principal>,
    known: Mutex<FxHashMap<String, Arc<Principal>>>,
}

/// Table mode's users, replaceable by a reload: sessions signed in keep the user they
/// signed in as; new AUTHs meet the new table.
#[derive(Debug)]
pub(crate) struct TableUsers {
    /// Read at AUTH and at connect, never per request.
    current: RwLock<Arc<Users>>,
    /// The current table's `auth_required`, read per session deadline without a lock.
    required: AtomicBool,
}

impl TableUsers {
    fn new(users: Users) -> Self {
        Self {
            required: AtomicBool::new(users.auth_required()),
            current: RwLock::new(Arc::new(users)),
        }
    }

    /// The table in force.
    pub(crate) fn current(&self) -> Arc<Users> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the table (a reload).
    pub(crate) fn replace(&self, users: Users) {
        let required = users.auth_required();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(users);
        self.required.store(required, Ordering::Relaxed);
    }

    fn auth_required(&self) -> bool {
        self.required.load(Ordering::Relaxed)
    }
}

/// Who checks credentials, shared by all workers.
#[derive(Debug)]
pub(crate) enum Authority {
    /// Moat's own user table.
    Table(TableUsers),
    /// Redis itself.
    Redis(RedisUsers),
}

impl Authority {
    /// The authority the config asks for.
    pub(crate) fn from_config(config: &Config) -> Self {
        match config.auth_mode() {
            AuthMode::Table => Authority::Table(TableUsers::new(Users::from_config(&config.users))),
            AuthMode::Passthrough => Authority::Redis(RedisUsers {
                default_requires_auth: AtomicBool::new(false),
                anonymous: Arc::new(Principal::Redis(Credential::new("default", None))),
                known: Mutex::new(FxHashMap::default()),
            }),
        }
    }

    /// Replaces table mode's users with `config`'s; false (nothing changed) in
    /// passthrough mode, where Redis holds the users.
    pub(crate) fn replace_users(&self, config: &Config) -> bool {
        match self {
            Authority::Table(users) => {
                users.replace(Users::from_config(&config.users));
                true
            }
            Authority::Redis(_) => false,
        }
    }

    /// Passthrough mode's state, if in that mode.
    pub(crate) fn redis(&self) -> Option<&RedisUsers> {
        match self {
            Authority::Redis(r) => Some(r),
            Authority::Table(_) => None,
        }
    }

    /// Whether a new client must authenticate before running commands.
    pub(crate) fn auth_required(&self) -> bool {
        match self {
            Authority::Table(users) => users.auth_required(),
            Authority::Redis(r) => r.default_requires_auth.load(Ordering::Relaxed),
        }
    }

    /// Whom connections log in as before any client signs in: clients that never send AUTH
    /// in passthrough mode, moat's own credential (none) in table mode.
    pub(crate) fn initial_login(&self) -> Option<Arc<Principal>> {
        self.redis().map(|r| r.anonymous.clone())
    }

    /// What a client is signed in as when it connects, or after RESET: the default user
    /// when that needs no password, nobody otherwise.
    pub(crate) fn initial_principal(&self) -> Option<Arc<Principal>> {
        match self {
            Authority::Table(users) if users.auth_required() => None,
            Authority::Table(users) => users.current().default_user(),
            Authority::Redis(r) if r.default_requires_auth.load(Ordering::Relaxed) => None,
            Authority::Redis(r) => Some(r.anonymous.clone()),
        }
    }
}

impl RedisUsers {
    /// Records what Redis said about its default user.
    pub(crate) fn set_default_requires_auth(&self, required: bool) {
        let before = self.default_requires_auth.swap(required, Ordering::Relaxed);
        if before != required {
            tracing::info!(
                required,
                "Redis's default user now {} a password",
                if required { "needs" } else { "needs no" }
            );
        }
    }

    /// Whether `p` is the principal of clients that never sent AUTH.
    #[cfg(test)]
    pub(crate) fn is_anonymous(&self, p: &Arc<Principal>) -> bool {
        Arc::ptr_eq(p, &self.anonymous)
    }

    /// The principal for a credential Redis has just accepted. One per user name, so all the
    /// clients of a user share its backend connections; the newest accepted password is the
    /// one new connections log in with.
    pub(crate) fn verified(&self, name: &[u8], password: &[u8]) -> Arc<Principal> {
        let name = String::from_utf8_lossy(name);
        let fresh = || {
            Arc::new(Principal::Redis(Credential::new(
                &name,
                Some(password.to_vec()),
            )))
        };
        let Ok(mut known) = self.known.lock() else {
            return fresh();
        };
        if let Some(p) = known.get(name.as_ref())
            && let Some(c) = p.credential()
            && c.is_valid()
        {
            if let Ok(mut held) = c.password.lock()
                && held.as_deref() != Some(password)
            {
                *held = Some(password.to_vec());
            }
            return p.clone();
        }
        if known.len() >= MAX_KNOWN_USERS {
            known.retain(|_, p| Arc::strong_count(p) > 1);
        }
        let p = fresh();
        if known.len() < MAX_KNOWN_USERS {
            known.insert(name.into_owned(), p.clone());
        }
        p
    }

    /// The principal remembered for a user name.
    pub(crate) fn lookup(&self, name: &[u8]) -> Option<Arc<Principal>> {
        let name = String::from_utf8_lossy(name);
        self.known.lock().ok()?.get(name.as_ref()).cloned()
    }

    /// A connection logging in as `c` was refused: Redis no longer accepts that credential.
    pub(crate) fn refused(&self, c: &Credential) {
        c.invalidate();
        if let Ok(mut known) = self.known.lock() {
            known.retain(|_, p| p.credential().is_none_or(Credential::is_valid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passthrough() -> Authority {
        Authority::from_config(&Config::default())
    }

    #[test]
    fn the_mode_follows_the_config() {
        assert!(passthrough().redis().is_some());
        let mut c = Config::default();
        c.backend.password = Some("x".into());
        assert!(Authority::from_config(&c).redis().is_none());
    }

    #[test]
    fn new_clients_are_default_until_redis_needs_a_password() {
        let a = passthrough();
        let r = a.redis().expect("passthrough");
        let p = a.initial_principal().expect("signed in as default");
        assert!(r.is_anonymous(&p));
        assert_eq!(p.name(), "default");
        assert!(p.credential().and_then(Credential::auth_args).is_none());
        r.set_default_requires_auth(true);
        assert!(a.auth_required());
        assert!(a.initial_principal().is_none());
    }

    #[test]
    fn one_principal_per_user_with_the_newest_password() {
        let a = passthrough();
        let r = a.redis().expect("passthrough");
        let p1 = r.verified(b"app", b"one");
        let p2 = r.verified(b"app", b"two");
        assert!(Arc::ptr_eq(&p1, &p2));
        let args = p1.credential().and_then(Credential::auth_args);
        assert_eq!(args, Some(("app".into(), b"two".to_vec())));
        let other = r.verified(b"ops", b"x");
        assert!(!Arc::ptr_eq(&p1, &other));
    }

    #[test]
    fn refused_users_are_invalid_and_start_over() {
        let a = passthrough();
        let r = a.redis().expect("passthrough");
        let old = r.verified(b"app", b"one");
        r.refused(old.credential().expect("redis"));
        assert!(!old.credential().expect("redis").is_valid());
        let new = r.verified(b"app", b"one");
        assert!(!Arc::ptr_eq(&old, &new));
        assert!(new.credential().expect("redis").is_valid());
        r.refused(new.credential().expect("redis"));
        assert!(!new.credential().expect("redis").is_valid());
    }

    #[test]
    fn the_memory_of_users_is_bounded() {
        let a = passthrough();
        let r = a.redis().expect("passthrough");
        let held: Vec<_> = (0..MAX_KNOWN_USERS + 10)
            .map(|i| r.verified(format!("u{i}").as_bytes(), b"p"))
            .collect();
        assert!(r.known.lock().expect("lock").len() <= MAX_KNOWN_USERS);
        // Users beyond the bound still get a principal of their own.
        let last = held.last().expect("some");
        assert_eq!(last.name(), format!("u{}", MAX_KNOWN_USERS + 9));
        drop(held);
        let _ = r.verified(b"late", b"p");
        assert!(r.known.lock().expect("lock").len() <= 2);
    }
}
