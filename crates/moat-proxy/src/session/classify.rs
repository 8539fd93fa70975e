//! Decides what to do with a request, before anything is done: forward it, answer it with
//! an error, or run a local command. Checks run in Redis's own order (unknown command,
//! arity, authentication, permissions), so errors match what Redis would say.

use moat_protocol::Request;

use super::ClientState;
use crate::backend::BackendFacts;
use crate::command::{Flags, Local, NO_COMMAND, Route, lowercase};

/// The decision for one request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Pipeline onto a shared backend connection.
    Forward,
    /// Answer with this error line (bytes: Redis echoes the client's own bytes in some).
    Error(Vec<u8>),
    /// Run an emulated command.
    Local(Local),
    /// Needs a dedicated backend connection (a lease from the pinned pool).
    Dedicated,
}

fn error(line: String) -> Action {
    Action::Error(line.into_bytes())
}

/// What the lookups found about the command, besides the decision: its flags (for
/// `CLIENT PAUSE WRITE`) and its id (the session's last command, shown by CLIENT LIST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    /// The command's (or subcommand's) flags; empty when unknown.
    pub(super) flags: Flags,
    /// Its [`crate::command::CommandInfo::id`], [`NO_COMMAND`] when unknown, as Redis
    /// records no last command for a request it could not look up.
    pub(super) id: u16,
}

impl Default for Seen {
    fn default() -> Self {
        Self {
            flags: Flags::default(),
            id: NO_COMMAND,
        }
    }
}

pub(super) fn classify(
    state: &ClientState,
    facts: &BackendFacts,
    request: &Request<'_>,
) -> (Action, Seen) {
    let mut seen = Seen::default();
    let action = decide(state, facts, request, &mut seen);
    // Redis turns any rejection of EXEC into EXECABORT, inside MULTI or not.
    match action {
        Action::Error(line)
            if request
                .arg(0)
                .is_some_and(|n| n.eq_ignore_ascii_case(b"EXEC")) =>
        {
            let reason = line.strip_prefix(b"ERR ").unwrap_or(&line);
            let mut out = b"EXECABORT Transaction discarded because of: ".to_vec();
            out.extend_from_slice(reason);
            (Action::Error(out), seen)
        }
        other => (other, seen),
    }
}

fn decide(
    state: &ClientState,
    facts: &BackendFacts,
    request: &Request<'_>,
    seen: &mut Seen,
) -> Action {
    let table = &facts.table;
    let name = request.arg(0).unwrap_or_default();
    let info = table.get(name);
    let argc = request.argc();
    // What Redis records as the client's command: the subcommand when the command has
    // them and one is given (none if it is unknown), else the command itself.
    let found = match info {
        Some(i) if i.has_subcommands && argc >= 2 => {
            table.get_sub(name, request.arg(1).unwrap_or_default())
        }
        other => other,
    };
    if let Some(f) = found {
        *seen = Seen {
            flags: f.flags,
            id: f.id,
        };
    }
    // The server's own checks, in its order: command, subcommand, arity, then
    // authentication, then permissions.
    let mut sub = None;
    match info {
        None if table.is_authoritative() && state.user.is_none() => {
            return Action::Error(unknown_command(request));
        }
        None => {}
        Some(i) if !i.arity_ok(argc) => return error(wrong_arity(name)),
        Some(i) if i.has_subcommands && argc >= 2 => {
            let given = request.arg(1).unwrap_or_default();
            match found {
                Some(s) if !s.arity_ok(argc) => {
                    let mut full = name.to_vec();
                    full.push(b'|');
                    full.extend_from_slice(given);
                    return error(wrong_arity(full));
                }
                Some(_) => sub = Some(given),
                None if table.is_authoritative() => {
                    return error(format!(
                        "ERR unknown subcommand '{}'. Try {} HELP.",
                        String::from_utf8_lossy(c_string(given, 128)),
                        upper(name)
                    ));
                }
                None => sub = Some(given),
            }
        }
        Some(_) => {}
    }
    let route = info.map_or(Route::Forward, |i| i.route);
    let Some(user) = &state.user else {
        return match route {
            Route::Local(
                l
                @ (Local::Auth | Local::Hello | Local::Quit | Local::Reset | Local::CrossProtocol),
            ) => Action::Local(l),
            _ => error("NOAUTH Authentication required.".into()),
        };
    };
    let mut buf = [0u8; 64];
    if let Some(lower) = lowercase(name, &mut buf)
        && user.denies(lower, sub)
    {
        let shown = match sub {
            Some(sub) => format!(
                "{}|{}",
                String::from_utf8_lossy(lower),
                String::from_utf8_lossy(sub).to_ascii_lowercase()
            ),
            None => String::from_utf8_lossy(lower).into_owned(),
        };
        return error(format!(
            "NOPERM this user has no permissions to run the '{shown}' command"
        ));
    }
    if interrupts_busy(name, request) {
        return Action::Dedicated;
    }
    match route {
        Route::Forward => Action::Forward,
        Route::Local(Local::Client) => client_route(request),
        Route::Local(l) => Action::Local(l),
        Route::Dedicated => Action::Dedicated,
        Route::Refused => error(refused(&upper(name))),
        Route::DedicatedIfBlock => {
            let blocks = request
                .args()
                .skip(1)
                .take_while(|a| !a.eq_ignore_ascii_case(b"STREAMS"))
                .any(|a| a.eq_ignore_ascii_case(b"BLOCK"));
            if blocks {
                Action::Dedicated
            } else {
                Action::Forward
            }
        }
    }
}

/// SCRIPT KILL, FUNCTION KILL and SHUTDOWN: the commands Redis runs while a script (or a
/// function) keeps it busy, meant to end it. On a shared connection they could be queued
/// behind that very script and never run; they get a dedicated connection for the one
/// request instead, like a blocking call. Whether the user may run them is Redis's call.
pub(super) fn interrupts_busy(name: &[u8], request: &Request<'_>) -> bool {
    if name.eq_ignore_ascii_case(b"SHUTDOWN") {
        return true;
    }
    (name.eq_ignore_ascii_case(b"SCRIPT") || name.eq_ignore_ascii_case(b"FUNCTION"))
        && request
            .arg(1)
            .is_some_and(|sub| sub.eq_ignore_ascii_case(b"KILL"))
}

/// CLIENT subcommands that change how replies flow need more than the local emulation.
fn client_route(request: &Request<'_>) -> Action {
    let sub = request.arg(1).unwrap_or_default();
    let arg2 = request.arg(2).unwrap_or_default();
    if sub.eq_ignore_ascii_case(b"TRACKING") && arg2.eq_ignore_ascii_case(b"ON") {
        return Action::Dedicated;
    }
    if sub.eq_ignore_ascii_case(b"REPLY")
        && (arg2.eq_ignore_ascii_case(b"OFF") || arg2.eq_ignore_ascii_case(b"SKIP"))
    {
        // Moat matches every reply to its request; a request without a reply breaks that.
        return error(
            "ERR moat: CLIENT REPLY OFF/SKIP is not supported (moat pairs every request with its reply)"
                .into(),
        );
    }
    Action::Local(Local::Client)
}

/// What C's `%.*s` prints of an argument: up to the first NUL, at most `max` bytes.
fn c_string(arg: &[u8], max: usize) -> &[u8] {
    let end = arg
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(arg.len())
        .min(max);
    &arg[..end]
}

/// Upper-case display name of a command, as operators write it.
pub(super) fn upper(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_uppercase()
}

/// The error for a command that would disturb connections moat shares.
pub(super) fn refused(what: &str) -> String {
    format!(
        "ERR moat: {what} is not allowed through moat (it would act on backend connections \
         shared with other clients)"
    )
}

/// Redis's `wrong number of arguments` error, naming the command in lower case.
pub(super) fn wrong_arity(name: impl AsRef<[u8]>) -> String {
    format!(
        "ERR wrong number of arguments for '{}' command",
        String::from_utf8_lossy(name.as_ref()).to_ascii_lowercase()
    )
}

/// Redis's `unknown command` error: the name as sent and the first arguments, each cut so
/// the list stays under 128 bytes, byte for byte as Redis prints them (C strings).
fn unknown_command(request: &Request<'_>) -> Vec<u8> {
    let name = request.arg(0).unwrap_or_default();
    let mut args = Vec::new();
    for arg in request.args().skip(1) {
        if args.len() >= 128 {
            break;
        }
        let shown = c_string(arg, 128 - args.len());
        args.push(b'\'');
        args.extend_from_slice(shown);
        args.extend_from_slice(b"' ");
    }
    let mut line = b"ERR unknown command '".to_vec();
    line.extend_from_slice(c_string(name, 128));
    line.extend_from_slice(b"', with args beginning with: ");
    line.extend_from_slice(&args);
    line
}
