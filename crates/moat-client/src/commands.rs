//! The command table: which commands may run twice without harm. A retry after an error
//! that leaves it unknown whether a command ran is only safe for these; the caller can
//! override the table per call ([`Idempotency`]).
//!
//! Three classes, as StackExchange.Redis 3.1 groups them: reads, writes that leave the same
//! data when repeated, and everything else (INCR, LPUSH, APPEND, scripts...), which is never
//! repeated once it may have reached the server. A command missing from the table is in the
//! last class.

/// How a command behaves when run twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandClass {
    /// Reads nothing but data: always safe to repeat.
    ReadOnly,
    /// Writes the same data when repeated (SET, DEL, HSET, EXPIRE...); the reply may differ.
    IdempotentWrite,
    /// Accumulates or is unknown (INCR, LPUSH, APPEND, EVAL...): never repeated once sent.
    NonIdempotent,
}

/// The caller's say on one command, over the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Idempotency {
    /// Use the command table.
    #[default]
    FromTable,
    /// Safe to repeat, whatever the table says (e.g. an INCR the app deduplicates itself).
    Idempotent,
    /// Never repeat once it may have been sent, whatever the table says.
    NotIdempotent,
}

const READ_ONLY: &[&str] = &[
    "BITCOUNT",
    "BITPOS",
    "DBSIZE",
    "DUMP",
    "ECHO",
    "EXISTS",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEOSEARCH",
    "GET",
    "GETBIT",
    "GETRANGE",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HRANDFIELD",
    "HSCAN",
    "HSTRLEN",
    "HVALS",
    "INFO",
    "KEYS",
    "LINDEX",
    "LLEN",
    "LPOS",
    "LRANGE",
    "MGET",
    "PFCOUNT",
    "PING",
    "PTTL",
    "RANDOMKEY",
    "SCAN",
    "SCARD",
    "SDIFF",
    "SINTER",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SRANDMEMBER",
    "SSCAN",
    "STRLEN",
    "SUBSTR",
    "SUNION",
    "TIME",
    "TTL",
    "TYPE",
    "XLEN",
    "XRANGE",
    "XREVRANGE",
    "ZCARD",
    "ZCOUNT",
    "ZLEXCOUNT",
    "ZMSCORE",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANK",
    "ZREVRANGE",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
];

const IDEMPOTENT_WRITES: &[&str] = &[
    "DEL",
    "EXPIRE",
    "EXPIREAT",
    "HDEL",
    "HMSET",
    "HSET",
    "MSET",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PFADD",
    "PSETEX",
    "SADD",
    "SET",
    "SETEX",
    "SREM",
    "UNLINK",
    "ZREM",
];

/// SET options after which a repeat is no longer the same: GET returns what the first run
/// wrote, NX/XX answer differently and KEEPTTL/PX relative times move. NX and XX leave the
/// same data but the reply says whether it was written, which a caller acts on.
const SET_UNSAFE_OPTIONS: &[&str] = &["NX", "XX", "GET"];

/// ZADD options that turn it into an accumulator.
const ZADD_UNSAFE_OPTIONS: &[&str] = &["INCR"];

/// The class of a command from its arguments (name first, any case). `SET k v NX` and
/// `SET k v GET` are not idempotent; `ZADD ... INCR` accumulates.
pub fn classify(args: &[&[u8]]) -> CommandClass {
    let Some(name) = args.first() else {
        return CommandClass::NonIdempotent;
    };
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    let has_option = |unsafe_options: &[&str]| {
        args.iter().skip(2).any(|a| {
            let a = String::from_utf8_lossy(a);
            unsafe_options.iter().any(|o| a.eq_ignore_ascii_case(o))
        })
    };
    if READ_ONLY.binary_search(&name.as_str()).is_ok() {
        CommandClass::ReadOnly
    } else if name == "ZADD" {
        if has_option(ZADD_UNSAFE_OPTIONS) {
            CommandClass::NonIdempotent
        } else {
            CommandClass::IdempotentWrite
        }
    } else if IDEMPOTENT_WRITES.binary_search(&name.as_str()).is_ok() {
        if name == "SET" && has_option(SET_UNSAFE_OPTIONS) {
            CommandClass::NonIdempotent
        } else {
            CommandClass::IdempotentWrite
        }
    } else {
        CommandClass::NonIdempotent
    }
}

/// The arguments of a built `redis::Cmd`, for [`classify`].
pub(crate) fn cmd_args(cmd: &redis::Cmd) -> Vec<&[u8]> {
    cmd.args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            // A cursor placeholder (SCAN iteration) or a future kind: no name or option.
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(line: &str) -> CommandClass {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        classify(&args)
    }

    #[test]
    fn tables_are_sorted_for_binary_search() {
        assert!(READ_ONLY.windows(2).all(|w| w[0] < w[1]));
        assert!(IDEMPOTENT_WRITES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn reads_writes_and_accumulators() {
        assert_eq!(class("get k"), CommandClass::ReadOnly);
        assert_eq!(class("MGET a b"), CommandClass::ReadOnly);
        assert_eq!(class("SET k v"), CommandClass::IdempotentWrite);
        assert_eq!(class("SET k v EX 10"), CommandClass::IdempotentWrite);
        assert_eq!(class("SET k v nx"), CommandClass::NonIdempotent);
        assert_eq!(class("SET k v GET"), CommandClass::NonIdempotent);
        assert_eq!(class("ZADD z 1 m"), CommandClass::IdempotentWrite);
        assert_eq!(class("ZADD z INCR 1 m"), CommandClass::NonIdempotent);
        for c in [
            "INCR k",
            "INCRBY k 2",
            "LPUSH l x",
            "APPEND k x",
            "EVAL s 0",
            "FOO",
        ] {
            assert_eq!(class(c), CommandClass::NonIdempotent, "{c}");
        }
        assert_eq!(classify(&[]), CommandClass::NonIdempotent);
    }

    #[test]
    fn a_built_cmd_is_classified_by_its_arguments() {
        let mut cmd = redis::cmd("SET");
        cmd.arg("k").arg("v").arg("NX");
        assert_eq!(classify(&cmd_args(&cmd)), CommandClass::NonIdempotent);
    }
}
