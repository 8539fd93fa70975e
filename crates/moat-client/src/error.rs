//! The client's errors. Each one says whether the command may have been applied by Redis
//! ([`ClientError::applied`]), because that decides what the caller may safely do next: an
//! INCR that failed with [`Applied::No`] can be sent again, one with [`Applied::Maybe`] cannot
//! without risking a double count.

use std::time::Duration;

/// Whether Redis may have run the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Proven not run: it was never sent, or Redis refused it before running it
    /// (`max number of clients reached`, LOADING, BUSY...).
    No,
    /// Unknown: it was sent and the answer was lost (timeout, dropped connection).
    Maybe,
    /// It ran: Redis answered, but the answer was not what the caller asked for.
    Yes,
}

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid moat-client configuration: {0}")]
pub struct ConfigError(pub String);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The circuit breaker is open: Redis failed repeatedly, so the client fails fast
    /// instead of queueing. Not applied.
    #[error("circuit breaker open (Redis failing), retry in {retry_in:?}; not applied")]
    CircuitOpen {
        /// When the breaker lets probes through.
        retry_in: Duration,
    },
    /// Too many commands already wait for a connection. Not applied.
    #[error("backlog full ({capacity} commands already waiting for a connection); not applied")]
    BacklogFull {
        /// The backlog's bound.
        capacity: usize,
    },
    /// Every connection stayed busy for the whole pool wait. Not applied.
    #[error("pool exhausted: all {max_size} connections busy for {waited:?}; not applied")]
    PoolTimeout {
        /// The pool's size.
        max_size: usize,
        /// How long the command waited.
        waited: Duration,
    },
    /// No connection could be opened before the command's deadline: connection opening is
    /// backing off after failures or capped per second. Not applied.
    #[error("no connection: opening one is backing off for {retry_in:?} ({reason}); not applied")]
    ConnectBackoff {
        /// Time until the next connect attempt may start.
        retry_in: Duration,
        /// The last connect failure, or the rate cap.
        reason: String,
    },
    /// Opening a connection failed (refused, timed out, or Redis answered its first `PING`
    /// with an error such as `max number of clients reached`). Not applied.
    #[error("connecting to Redis failed: {source}; not applied")]
    Connect {
        /// The redis crate's error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis refused the command before running it (LOADING, BUSY, MASTERDOWN, TRYAGAIN,
    /// max clients). Not applied.
    #[error("Redis refused the command before running it: {source}; not applied")]
    Refused {
        /// The redis crate's error.
        #[source]
        source: redis::RedisError,
    },
    /// No answer within the command timeout. May have been applied.
    #[error("command timed out after {after:?}; it may have been applied")]
    Timeout {
        /// Time spent on the command.
        after: Duration,
        /// Whether it was sent before the time ran out.
        applied: Applied,
    },
    /// The connection broke while the command was in flight. May have been applied.
    #[error("connection lost during the command: {source}; it may have been applied")]
    Connection {
        /// The redis crate's error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis answered with an error reply (WRONGTYPE, syntax...).
    #[error("Redis error reply: {source}")]
    Server {
        /// The redis crate's error.
        #[source]
        source: redis::RedisError,
        /// Not applied for a single command (Redis rejects it whole); maybe for scripts and
        /// transactions, which can fail half way.
        applied: Applied,
    },
    /// Redis answered, but the reply did not convert to the requested type. Applied.
    #[error("unexpected reply type: {source}; the command was applied")]
    Reply {
        /// The redis crate's error.
        #[source]
        source: redis::RedisError,
    },
}

impl ClientError {
    /// Whether Redis may have run the command.
    pub fn applied(&self) -> Applied {
        match self {
            Self::CircuitOpen { .. }
            | Self::BacklogFull { .. }
            | Self::PoolTimeout { .. }
            | Self::ConnectBackoff { .. }
            | Self::Connect { .. }
            | Self::Refused { .. } => Applied::No,
            Self::Timeout { applied, .. } | Self::Server { applied, .. } => *applied,
            Self::Connection { .. } => Applied::Maybe,
            Self::Reply { .. } => Applied::Yes,
        }
    }

    /// A short name for metrics labels.
    pub fn kind_label(&self) -> &'static str {
        match self {
            Self::CircuitOpen { .. } => "circuit_open",
            Self::BacklogFull { .. } => "backlog_full",
            Self::PoolTimeout { .. } => "pool_timeout",
            Self::ConnectBackoff { .. } => "connect_backoff",
            Self::Connect { .. } => "connect",
            Self::Refused { .. } => "refused",
            Self::Timeout { .. } => "timeout",
            Self::Connection { .. } => "connection",
            Self::Server { .. } => "server",
            Self::Reply { .. } => "reply",
        }
    }

    /// Whether the client refused the command itself, without Redis having a say (breaker
    /// open, backlog full, pool exhausted, connect backoff).
    pub fn is_local_refusal(&self) -> bool {
        matches!(
            self,
            Self::CircuitOpen { .. }
                | Self::BacklogFull { .. }
                | Self::PoolTimeout { .. }
                | Self::ConnectBackoff { .. }
        )
    }

    /// Whether this says Redis is unreachable or unhealthy (so a stale value may be served
    /// and the breaker counts it), as opposed to an answer about the command itself.
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, Self::Server { .. } | Self::Reply { .. })
    }
}
