//! Decides what to do with a request, before anything is done: forward it, answer it with
//! an error, or run a local command. Checks run in Redis's own order (unknown command,
//! arity, authentication, permissions), so errors match what Redis would say.

use moat_protocol::Request;

use super::ClientState;
use crate::backend::BackendFacts;
use crate::command::{Local, Route, lowercase};
use crate::worker::WorkerCtx;

/// The decision for one request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Pipeline onto a shared backend connection.
    Forward,
    /// Answer with this error line.
    Error(String),
    /// Run an emulated command.
    Local(Local),
}

pub(super) fn classify(
    state: &ClientState,
    worker: &WorkerCtx,
    facts: &BackendFacts,
    request: &Request<'_>,
) -> Action {
    let name = request.arg(0).unwrap_or_default();
    let info = facts.table.get(name);
    let route = info.map_or(Route::Forward, |i| i.route);
    match info {
        None if facts.table.is_authoritative() && state.user.is_none() => {
            return Action::Error(unknown_command(request));
        }
        Some(i) if !i.arity_ok(request.argc()) => {
            return Action::Error(wrong_arity(name));
        }
        _ => {}
    }
    let Some(user) = &state.user else {
        return match route {
            Route::Local(l @ (Local::Auth | Local::Hello | Local::Quit | Local::Reset)) => {
                Action::Local(l)
            }
            _ => Action::Error("NOAUTH Authentication required.".into()),
        };
    };
    let mut buf = [0u8; 64];
    if let Some(lower) = lowercase(name, &mut buf) {
        let sub = request
            .arg(1)
            .filter(|_| info.is_some_and(|i| i.has_subcommands));
        if user.denies(lower, sub) {
            let shown = match sub {
                Some(sub) => format!(
                    "{}|{}",
                    String::from_utf8_lossy(lower),
                    String::from_utf8_lossy(sub).to_ascii_lowercase()
                ),
                None => String::from_utf8_lossy(lower).into_owned(),
            };
            return Action::Error(format!(
                "NOPERM this user has no permissions to run the '{shown}' command"
            ));
        }
    }
    let _ = worker;
    match route {
        Route::Forward => Action::Forward,
        Route::Local(l) => Action::Local(l),
        Route::Dedicated => Action::Error(needs_dedicated(&upper(name))),
        Route::Refused => Action::Error(refused(&upper(name))),
        Route::DedicatedIfBlock => {
            let blocks = request
                .args()
                .skip(1)
                .take_while(|a| !a.eq_ignore_ascii_case(b"STREAMS"))
                .any(|a| a.eq_ignore_ascii_case(b"BLOCK"));
            if blocks {
                Action::Error(needs_dedicated(&format!("{} BLOCK", upper(name))))
            } else {
                Action::Forward
            }
        }
    }
}

/// Upper-case display name of a command, as operators write it.
pub(super) fn upper(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_uppercase()
}

/// The error for a command that needs a backend connection of its own.
pub(super) fn needs_dedicated(what: &str) -> String {
    format!("ERR moat: {what} needs a dedicated connection, not supported yet")
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
/// the list stays under 128 bytes.
fn unknown_command(request: &Request<'_>) -> String {
    let name = request.arg(0).unwrap_or_default();
    let mut args = String::new();
    for arg in request.args().skip(1) {
        if args.len() >= 128 {
            break;
        }
        let room = 128 - args.len();
        let shown = &arg[..arg.len().min(room)];
        args.push('\'');
        args.push_str(&String::from_utf8_lossy(shown));
        args.push_str("' ");
    }
    let name = &name[..name.len().min(128)];
    format!(
        "ERR unknown command '{}', with args beginning with: {args}",
        String::from_utf8_lossy(name)
    )
}
