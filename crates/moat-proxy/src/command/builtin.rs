//! Routes moat decides by command name, whatever the server's flags say.

use super::{Flags, Local, Route};

/// `(name, arity, route)` for every command moat routes by name. Arity is Redis's, so the
/// session can answer `wrong number of arguments` exactly as Redis would.
pub(super) const ROUTES: &[(&str, i32, Route)] = &[
    // Connection state, emulated per session so shared connections stay clean.
    ("ping", -1, Route::Local(Local::Ping)),
    ("echo", 2, Route::Local(Local::Echo)),
    ("quit", -1, Route::Local(Local::Quit)),
    ("select", 2, Route::Local(Local::Select)),
    ("auth", -2, Route::Local(Local::Auth)),
    ("hello", -1, Route::Local(Local::Hello)),
    ("reset", 1, Route::Local(Local::Reset)),
    ("client", -2, Route::Local(Local::Client)),
    ("acl", -2, Route::Local(Local::Acl)),
    // HTTP sent to the RESP port: closed at moat, never forwarded (Redis would close the
    // shared connection it came on, failing other clients' requests).
    ("post", -1, Route::Local(Local::CrossProtocol)),
    ("host:", -1, Route::Local(Local::CrossProtocol)),
    // Emulated for every server version (Redis < 7.2 lacks it).
    ("client|setinfo", 4, Route::Local(Local::Client)),
    // Redis 7.2's CLIENT NO-TOUCH, accepted as a per-session flag whatever the version.
    ("client|no-touch", 3, Route::Local(Local::Client)),
    // A session outside MULTI/WATCH answers these without the server, exactly as Redis does.
    ("exec", 1, Route::Local(Local::Exec)),
    ("discard", 1, Route::Local(Local::Discard)),
    ("unwatch", 1, Route::Local(Local::Unwatch)),
    // State that lives on the backend connection: needs a connection of its own.
    ("multi", 1, Route::Dedicated),
    ("watch", -2, Route::Dedicated),
    ("subscribe", -2, Route::Dedicated),
    ("psubscribe", -2, Route::Dedicated),
    ("ssubscribe", -2, Route::Dedicated),
    ("unsubscribe", -1, Route::Dedicated),
    ("punsubscribe", -1, Route::Dedicated),
    ("sunsubscribe", -1, Route::Dedicated),
    ("monitor", 1, Route::Dedicated),
    ("wait", 3, Route::Dedicated),
    ("waitaof", 4, Route::Dedicated),
    ("blpop", -3, Route::Dedicated),
    ("brpop", -3, Route::Dedicated),
    ("brpoplpush", 4, Route::Dedicated),
    ("blmove", 6, Route::Dedicated),
    ("blmpop", -5, Route::Dedicated),
    ("bzpopmin", -3, Route::Dedicated),
    ("bzpopmax", -3, Route::Dedicated),
    ("bzmpop", -5, Route::Dedicated),
    ("xread", -4, Route::DedicatedIfBlock),
    ("xreadgroup", -7, Route::DedicatedIfBlock),
    // Replication streams would hijack a shared connection.
    ("sync", 1, Route::Refused),
    ("psync", -3, Route::Refused),
    ("replconf", -1, Route::Refused),
    // Redis Cluster's connection modes, emulated per session: moat sends them on the
    // backend connection right before the requests they apply to (see `session::cluster`).
    ("readonly", 1, Route::Local(Local::ReadOnly)),
    ("readwrite", 1, Route::Local(Local::ReadWrite)),
    ("asking", 1, Route::Local(Local::Asking)),
];

/// Commands in [`ROUTES`] that have subcommands.
pub(super) const HAS_SUBCOMMANDS: &[&str] = &["client", "acl"];

/// The route of a command the backend described: by name first, then by its flags, so a
/// module's blocking command gets a dedicated connection too.
pub(super) fn route_for(name: &[u8], flags: Flags) -> Route {
    if let Some(&(_, _, route)) = ROUTES.iter().find(|(n, _, _)| n.as_bytes() == name) {
        return route;
    }
    if flags.contains(Flags::BLOCKING) {
        Route::Dedicated
    } else {
        Route::Forward
    }
}
