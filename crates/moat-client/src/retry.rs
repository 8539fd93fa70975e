//! Which failures may be retried. Two questions decide it: does the error prove the command
//! was not run ([`classify_error`] turns the redis crate's error into a [`ClientError`] that
//! knows), and if not, may the command run twice ([`crate::commands`])?
//!
//! - Proven not run, retried whatever the command: a connection that could not be opened
//!   (refused, timed out, or its first `PING` answered `max number of clients reached`), and
//!   replies by which Redis refuses a command before running it: `LOADING`, `BUSY`,
//!   `MASTERDOWN`, `TRYAGAIN`, `max number of clients reached`.
//! - Sent and unanswered (timeout, dropped connection): retried only when the command is
//!   idempotent by the table or the caller's [`Idempotency`]. An INCR is never sent twice.
//! - An error reply about the command itself (WRONGTYPE, syntax): never retried, since the
//!   same command gets the same answer.
//! - The client's own refusals (breaker open, backlog full, pool exhausted, connect backoff
//!   longer than the time left): not retried, since waiting is what they already did.
//!
//! The delay between attempts is moat-resilience's [`moat_resilience::Backoff`]
//! (exponential, full jitter), the same code the proxy reconnects with; every retry also
//! needs the [`crate::budget::RetryBudget`]'s consent.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::commands::{CommandClass, Idempotency};
use crate::error::{Applied, ClientError};

/// Whether a server error reply means Redis refused the command before running it.
fn refused_before_running(err: &RedisError) -> bool {
    match err.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading | ServerErrorKind::TryAgain | ServerErrorKind::MasterDown,
        ) => true,
        ErrorKind::Server(ServerErrorKind::ResponseError) => err
            .detail()
            .is_some_and(|d| d.starts_with("max number of clients reached")),
        _ => err.code() == Some("BUSY"),
    }
}

/// Commands that can fail half way, so an error reply does not prove nothing ran.
fn partial_on_error(class_name: &str) -> bool {
    ["EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "EXEC"]
        .iter()
        .any(|c| c.eq_ignore_ascii_case(class_name))
}

/// Turns an error from running `name` (the command's name) on an open connection into a
/// [`ClientError`] that says whether it may have run. `elapsed` is the time spent so far.
pub fn classify_error(err: RedisError, name: &str, elapsed: Duration) -> ClientError {
    if refused_before_running(&err) {
        return ClientError::Refused { source: err };
    }
    if matches!(err.kind(), ErrorKind::Server(_)) || err.code().is_some() {
        let applied = if partial_on_error(name) {
            Applied::Maybe
        } else {
            Applied::No
        };
        return ClientError::Server {
            source: err,
            applied,
        };
    }
    if err.is_timeout() {
        return ClientError::Timeout {
            after: elapsed,
            applied: Applied::Maybe,
        };
    }
    ClientError::Connection { source: err }
}

/// The error of a connection attempt: whatever it says, the command was never sent.
pub fn connect_error(err: RedisError) -> ClientError {
    ClientError::Connect { source: err }
}

/// Whether the command behind `err` may be tried again (the budget and the deadline are
/// checked by the caller).
pub fn may_retry(
    err: &ClientError,
    class: CommandClass,
    idempotency: Idempotency,
    retry_idempotent_writes: bool,
) -> bool {
    match err {
        ClientError::Connect { .. } | ClientError::Refused { .. } => true,
        ClientError::Timeout { .. } | ClientError::Connection { .. } => match idempotency {
            Idempotency::Idempotent => true,
            Idempotency::NotIdempotent => false,
            Idempotency::FromTable => match class {
                CommandClass::ReadOnly => true,
                CommandClass::IdempotentWrite => retry_idempotent_writes,
                CommandClass::NonIdempotent => false,
            },
        },
        ClientError::CircuitOpen { .. }
        | ClientError::BacklogFull { .. }
        | ClientError::PoolTimeout { .. }
        | ClientError::ConnectBackoff { .. }
        | ClientError::Server { .. }
        | ClientError::Reply { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, detail: &str) -> RedisError {
        // Parsed from the wire, as a connection would.
        let line = format!("-{code} {detail}\r\n");
        let reply = redis::parse_redis_value(line.as_bytes()).expect("a RESP error line");
        match reply.extract_error() {
            Err(e) => e,
            Ok(v) => panic!("not an error: {v:?}"),
        }
    }

    fn io(kind: std::io::ErrorKind) -> RedisError {
        RedisError::from(std::io::Error::new(kind, "test"))
    }

    #[test]
    fn replies_that_prove_the_command_did_not_run() {
        let ms = Duration::from_millis(1);
        for (code, detail) in [
            ("ERR", "max number of clients reached"),
            ("LOADING", "Redis is loading the dataset in memory"),
            ("BUSY", "Redis is busy running a script."),
            ("MASTERDOWN", "Link with MASTER is down"),
            ("TRYAGAIN", "Multiple keys request during rehashing of slot"),
        ] {
            let e = classify_error(server(code, detail), "INCR", ms);
            assert!(matches!(e, ClientError::Refused { .. }), "{code}: {e:?}");
            assert_eq!(e.applied(), Applied::No);
            assert!(may_retry(
                &e,
                CommandClass::NonIdempotent,
                Idempotency::FromTable,
                true
            ));
        }
    }

    #[test]
    fn a_lost_answer_is_retried_only_for_idempotent_commands() {
        let ms = Duration::from_millis(1);
        let dropped = classify_error(io(std::io::ErrorKind::ConnectionReset), "INCR", ms);
        assert_eq!(dropped.applied(), Applied::Maybe);
        let timeout = classify_error(io(std::io::ErrorKind::TimedOut), "INCR", ms);
        assert!(
            matches!(timeout, ClientError::Timeout { .. }),
            "{timeout:?}"
        );
        for e in [&dropped, &timeout] {
            assert!(!may_retry(
                e,
                CommandClass::NonIdempotent,
                Idempotency::FromTable,
                true
            ));
            assert!(may_retry(
                e,
                CommandClass::NonIdempotent,
                Idempotency::Idempotent,
                true
            ));
            assert!(may_retry(
                e,
                CommandClass::ReadOnly,
                Idempotency::FromTable,
                false
            ));
            assert!(!may_retry(
                e,
                CommandClass::ReadOnly,
                Idempotency::NotIdempotent,
                true
            ));
            assert!(!may_retry(
                e,
                CommandClass::IdempotentWrite,
                Idempotency::FromTable,
                false
            ));
        }
    }

    #[test]
    fn error_replies_about_the_command_are_final() {
        let e = classify_error(
            server(
                "WRONGTYPE",
                "Operation against a key holding the wrong kind of value",
            ),
            "INCR",
            Duration::ZERO,
        );
        assert!(matches!(e, ClientError::Server { .. }), "{e:?}");
        assert_eq!(e.applied(), Applied::No);
        assert!(!may_retry(
            &e,
            CommandClass::ReadOnly,
            Idempotency::Idempotent,
            true
        ));
        let script = classify_error(server("ERR", "oops"), "evalsha", Duration::ZERO);
        assert_eq!(script.applied(), Applied::Maybe);
        let connect = connect_error(io(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(connect.applied(), Applied::No);
        assert!(may_retry(
            &connect,
            CommandClass::NonIdempotent,
            Idempotency::NotIdempotent,
            true
        ));
    }
}
