//! What moat knows about each Redis command: arity, flags and, from those, how a request is
//! routed (forwarded on a shared connection, answered by the session, or refused).
//!
//! The table is read from the backend's own `COMMAND` reply, so new Redis versions and modules
//! classify correctly; [`builtin`] holds the routes moat decides by name and the fallback used
//! while the backend cannot be asked.

mod builtin;
mod load;

use rustc_hash::FxHashMap;

pub(crate) use load::parse_command_reply;

/// Longest command name moat looks up; longer names are unknown to every Redis version.
const MAX_NAME: usize = 64;

/// How the session handles a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Pipelined onto a shared backend connection.
    Forward,
    /// Answered by the session from its own state (handshake and connection state).
    Local(Local),
    /// Needs a backend connection of its own (transactions, blocking, pub/sub, ...).
    Dedicated,
    /// Would disturb connections moat shares or the server itself; never forwarded.
    Refused,
    /// XREAD/XREADGROUP: dedicated with a `BLOCK` option, shared without.
    DedicatedIfBlock,
}

/// Commands the session emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Local {
    Ping,
    Echo,
    Quit,
    Select,
    Auth,
    Hello,
    Reset,
    Client,
    Acl,
    Exec,
    Discard,
    Unwatch,
    /// Redis Cluster's ASKING: a flag for the session's next command only.
    Asking,
    /// Redis Cluster's READONLY: reads may be served by a replica node.
    ReadOnly,
    /// Ends READONLY.
    ReadWrite,
    /// `POST` / `Host:`: an HTTP request sent to the RESP port (a cross-protocol attack);
    /// Redis closes such a connection without a word, and so does moat.
    CrossProtocol,
}

/// Flags from `COMMAND` that moat's routing uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags(u16);

impl Flags {
    pub(crate) const BLOCKING: Flags = Flags(1);
    pub(crate) const PUBSUB: Flags = Flags(1 << 1);
    pub(crate) const READONLY: Flags = Flags(1 << 2);
    pub(crate) const WRITE: Flags = Flags(1 << 3);
    pub(crate) const ADMIN: Flags = Flags(1 << 4);
    pub(crate) const NO_MULTI: Flags = Flags(1 << 5);
    /// The command may replicate something without being a write (PUBLISH, EVAL, PFCOUNT,
    /// SCRIPT LOAD...): `CLIENT PAUSE WRITE` holds it like a write, as Redis does.
    pub(crate) const MAY_REPLICATE: Flags = Flags(1 << 6);

    pub(crate) fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub(crate) fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    /// Maps a flag name from `COMMAND`'s reply; unknown names are ignored.
    pub(crate) fn from_name(name: &[u8]) -> Flags {
        match name {
            b"blocking" => Flags::BLOCKING,
            b"pubsub" => Flags::PUBSUB,
            b"readonly" => Flags::READONLY,
            b"write" => Flags::WRITE,
            b"admin" => Flags::ADMIN,
            b"no_multi" => Flags::NO_MULTI,
            b"may_replicate" => Flags::MAY_REPLICATE,
            _ => Flags::default(),
        }
    }
}

/// One command's facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommandInfo {
    /// Redis arity: `n` exactly n arguments (with the name), `-n` at least n.
    pub(crate) arity: i32,
    pub(crate) flags: Flags,
    /// The command has subcommands (`CONFIG GET`); errors then name `config|get`.
    pub(crate) has_subcommands: bool,
    pub(crate) route: Route,
    /// Index of the full name (`get`, `client|list`) in [`CommandTable::name`]: what a
    /// session records as its last command for CLIENT LIST's `cmd=` field, in two bytes
    /// instead of a copy of the name per request.
    pub(crate) id: u16,
}

/// Commands Redis flags `may_replicate` (CLIENT PAUSE WRITE holds them) although its
/// `COMMAND` reply does not say so: Redis 7.0 leaves the flag out of the reply. Servers
/// that do report it are read as they say.
const MAY_REPLICATE: &[&str] = &["eval", "evalsha", "fcall", "publish", "spublish", "pfcount"];

/// The [`CommandInfo::id`] of no command: what CLIENT LIST shows as `cmd=NULL` (a client
/// that has sent nothing yet, or an unknown command).
pub(crate) const NO_COMMAND: u16 = u16::MAX;

impl CommandInfo {
    /// Whether `argc` arguments (with the name) satisfy the arity.
    pub(crate) fn arity_ok(&self, argc: usize) -> bool {
        let argc = i64::try_from(argc).unwrap_or(i64::MAX);
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }
}

/// Command name (lower case) to facts.
#[derive(Debug, Clone)]
pub(crate) struct CommandTable {
    map: FxHashMap<Box<[u8]>, CommandInfo>,
    /// Full names by [`CommandInfo::id`].
    names: Vec<Box<str>>,
    /// True when read from the backend: a name missing from it is unknown to the server.
    authoritative: bool,
}

impl CommandTable {
    /// The fallback used before (or without) the backend's own table.
    pub(crate) fn builtin() -> Self {
        let mut table = Self {
            map: FxHashMap::default(),
            names: Vec::new(),
            authoritative: false,
        };
        table.add_builtin_routes();
        table
    }

    /// Builds the table from `(name, arity, flags, has_subcommands)` read from the backend.
    pub(crate) fn from_entries(
        entries: impl IntoIterator<Item = (Vec<u8>, i32, Flags, bool)>,
    ) -> Self {
        let mut table = Self {
            map: FxHashMap::default(),
            names: Vec::new(),
            authoritative: true,
        };
        for (mut name, arity, flags, has_subcommands) in entries {
            name.make_ascii_lowercase();
            let route = builtin::route_for(&name, flags);
            table.insert(
                name.into_boxed_slice(),
                arity,
                flags,
                has_subcommands,
                route,
            );
        }
        // Commands moat emulates stay routed locally even if the server lacks them
        // (CLIENT SETINFO on Redis < 7.2 is handled inside CLIENT).
        table.add_builtin_routes();
        table
    }

    /// Adds (or replaces) one entry, giving it an id when the name is new.
    fn insert(
        &mut self,
        name: Box<[u8]>,
        arity: i32,
        flags: Flags,
        has_subcommands: bool,
        route: Route,
    ) {
        let mut flags = flags;
        if MAY_REPLICATE.iter().any(|n| n.as_bytes() == &*name) {
            flags.insert(Flags::MAY_REPLICATE);
        }
        let id = match self.map.get(&name) {
            Some(old) => old.id,
            None => {
                let id = u16::try_from(self.names.len())
                    .ok()
                    .filter(|&id| id != NO_COMMAND)
                    .unwrap_or(NO_COMMAND);
                if id != NO_COMMAND {
                    self.names
                        .push(String::from_utf8_lossy(&name).into_owned().into());
                }
                id
            }
        };
        let info = CommandInfo {
            arity,
            flags,
            has_subcommands,
            route,
            id,
        };
        self.map.insert(name, info);
    }

    /// Adds moat's built-in routes for the names the table does not have yet.
    fn add_builtin_routes(&mut self) {
        for &(name, arity, route) in builtin::ROUTES {
            if self.map.contains_key(name.as_bytes()) {
                continue;
            }
            let subs = builtin::HAS_SUBCOMMANDS.contains(&name);
            self.insert(name.as_bytes().into(), arity, Flags::default(), subs, route);
        }
    }

    /// The full name of the command with this id (`None` for [`NO_COMMAND`]).
    pub(crate) fn name(&self, id: u16) -> Option<&str> {
        self.names.get(usize::from(id)).map(|n| &**n)
    }

    /// Whether a missing name means the server does not know the command.
    pub(crate) fn is_authoritative(&self) -> bool {
        self.authoritative
    }

    /// Looks up a command by its name as the client sent it (any case).
    pub(crate) fn get(&self, name: &[u8]) -> Option<&CommandInfo> {
        // Subcommand entries (`config|get`) are not commands a client can name.
        if name.contains(&b'|') {
            return None;
        }
        let mut buf = [0u8; MAX_NAME];
        let lower = lowercase(name, &mut buf)?;
        self.map.get(lower)
    }

    /// Looks up a subcommand (`config`, `GET` → `config|get`) by the names as sent.
    pub(crate) fn get_sub(&self, name: &[u8], sub: &[u8]) -> Option<&CommandInfo> {
        let mut buf = [0u8; 2 * MAX_NAME + 1];
        let len = name.len() + 1 + sub.len();
        let key = buf.get_mut(..len)?;
        let (head, tail) = key.split_at_mut(name.len());
        head.copy_from_slice(name);
        tail[0] = b'|';
        tail[1..].copy_from_slice(sub);
        key.make_ascii_lowercase();
        self.map.get(&*key)
    }

    /// Number of commands known.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Lower-cases `name` into `buf` without allocating; `None` when it is too long to be a command.
pub(crate) fn lowercase<'b>(name: &[u8], buf: &'b mut [u8; MAX_NAME]) -> Option<&'b [u8]> {
    let out = buf.get_mut(..name.len())?;
    for (o, b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arity_rules() {
        let exact = CommandInfo {
            arity: 2,
            flags: Flags::default(),
            has_subcommands: false,
            route: Route::Forward,
            id: 0,
        };
        assert!(exact.arity_ok(2));
        assert!(!exact.arity_ok(1) && !exact.arity_ok(3));
        let at_least = CommandInfo { arity: -3, ..exact };
        assert!(at_least.arity_ok(3) && at_least.arity_ok(9));
        assert!(!at_least.arity_ok(2));
    }

    #[test]
    fn lookup_ignores_case_and_rejects_long_names() {
        let t = CommandTable::builtin();
        assert_eq!(
            t.get(b"PiNg").map(|i| i.route),
            Some(Route::Local(Local::Ping))
        );
        assert!(t.get(&[b'a'; 65]).is_none());
        assert!(!t.is_authoritative());
    }

    #[test]
    fn backend_flags_decide_blocking_routes() {
        let t = CommandTable::from_entries([
            (b"BLPOP".to_vec(), -3, Flags::BLOCKING, false),
            (b"get".to_vec(), 2, Flags::READONLY, false),
            (b"xread".to_vec(), -4, Flags::BLOCKING, false),
            (b"mymodule.block".to_vec(), -1, Flags::BLOCKING, false),
        ]);
        assert_eq!(t.get(b"blpop").map(|i| i.route), Some(Route::Dedicated));
        assert_eq!(t.get(b"GET").map(|i| i.route), Some(Route::Forward));
        assert_eq!(
            t.get(b"xread").map(|i| i.route),
            Some(Route::DedicatedIfBlock)
        );
        assert_eq!(
            t.get(b"mymodule.block").map(|i| i.route),
            Some(Route::Dedicated)
        );
        // Emulated commands exist even when the server's table lacks them.
        assert_eq!(
            t.get(b"hello").map(|i| i.route),
            Some(Route::Local(Local::Hello))
        );
        assert!(t.is_authoritative());
    }

    #[test]
    fn every_command_has_a_name_by_id() {
        let t = CommandTable::from_entries([
            (b"PUBLISH".to_vec(), 3, Flags::MAY_REPLICATE, false),
            (b"client".to_vec(), -2, Flags::default(), true),
            (b"client|list".to_vec(), -2, Flags::default(), false),
        ]);
        let publish = t.get(b"publish").expect("publish");
        assert_eq!(t.name(publish.id), Some("publish"));
        assert!(publish.flags.contains(Flags::MAY_REPLICATE));
        let list = t.get_sub(b"CLIENT", b"LIST").expect("client|list");
        assert_eq!(t.name(list.id), Some("client|list"));
        // Built-in routes get ids too; ids stay put when an entry is replaced.
        let hello = t.get(b"hello").expect("hello");
        assert_eq!(t.name(hello.id), Some("hello"));
        assert_eq!(t.name(NO_COMMAND), None);
        assert_eq!(Flags::from_name(b"may_replicate"), Flags::MAY_REPLICATE);
        // Redis 7.0 does not report it for EVAL or PUBLISH: moat knows.
        let t = CommandTable::from_entries([(b"eval".to_vec(), -3, Flags::default(), false)]);
        assert!(
            t.get(b"EVAL")
                .is_some_and(|i| i.flags.contains(Flags::MAY_REPLICATE))
        );
    }
}
