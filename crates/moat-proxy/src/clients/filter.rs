//! Arguments of CLIENT LIST, CLIENT KILL and CLIENT UNBLOCK, checked in Redis 7.0's order
//! with its exact error lines, and the matching of a session against a kill filter.
//!
//! Pure: no I/O, no clock (ages are passed in), so every rule is unit-tested.

use moat_protocol::parse_i64;

/// Client types as CLIENT LIST TYPE and CLIENT KILL TYPE name them. Moat's sessions are
/// only ever `Normal` or `Pubsub`: replicas and masters talk to Redis directly, never
/// through moat, so filtering on them lists (or kills) nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientType {
    /// Any client not subscribed to anything.
    Normal,
    /// `replica` or `slave`.
    Replica,
    /// A client subscribed to a channel, pattern or shard channel.
    Pubsub,
    /// A master's replication link.
    Master,
}

impl ClientType {
    /// Redis's `getClientTypeByName`: case-insensitive, `slave` and `replica` alike.
    pub(crate) fn from_name(name: &[u8]) -> Option<Self> {
        let is = |word: &str| name.eq_ignore_ascii_case(word.as_bytes());
        if is("normal") {
            Some(Self::Normal)
        } else if is("slave") || is("replica") {
            Some(Self::Replica)
        } else if is("pubsub") {
            Some(Self::Pubsub)
        } else if is("master") {
            Some(Self::Master)
        } else {
            None
        }
    }
}

/// A CLIENT subcommand's arguments that Redis would refuse, with Redis's own error line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ArgError {
    /// An option Redis does not know, one without its value, or too few arguments.
    #[error("ERR syntax error")]
    Syntax,
    /// The bytes are the name as sent, up to its first NUL (Redis prints it with `%s`).
    #[error("ERR Unknown client type '{}'", String::from_utf8_lossy(.0))]
    UnknownType(Vec<u8>),
    /// CLIENT LIST ID with an id that is not an integer.
    #[error("ERR Invalid client ID")]
    InvalidId,
    /// CLIENT KILL ID with an id that is not a positive integer.
    #[error("ERR client-id should be greater than 0")]
    IdNotPositive,
    /// CLIENT KILL MAXAGE with a value that is not an integer.
    #[error("ERR maxage is not an integer or out of range")]
    MaxAgeNotInteger,
    /// CLIENT KILL MAXAGE 0 or below.
    #[error("ERR maxage should be greater than 0")]
    MaxAgeNotPositive,
    /// CLIENT UNBLOCK with an id that is not an integer.
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    /// CLIENT UNBLOCK with a reason other than TIMEOUT or ERROR.
    #[error("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR")]
    UnblockReason,
    /// CLIENT NO-EVICT / NO-TOUCH with a value other than `on` or `off`.
    #[error("ERR syntax error")]
    OnOff,
    /// Too many arguments for a subcommand whose arity in the command table is open
    /// (`CLIENT PAUSE 1 WRITE x`): the subcommand as sent, up to 128 bytes.
    #[error(
        "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
        String::from_utf8_lossy(.0)
    )]
    SubcommandSyntax(Vec<u8>),
}

impl ArgError {
    /// The error line, byte for byte as Redis writes it (the client's own bytes included,
    /// where the display form would have replaced invalid UTF-8).
    pub(crate) fn line(&self) -> Vec<u8> {
        let quoted = |head: &str, arg: &[u8], tail: &str| {
            let mut line = head.as_bytes().to_vec();
            line.extend_from_slice(arg);
            line.extend_from_slice(tail.as_bytes());
            line
        };
        match self {
            ArgError::UnknownType(name) => quoted("ERR Unknown client type '", name, "'"),
            ArgError::SubcommandSyntax(sub) => quoted(
                "ERR unknown subcommand or wrong number of arguments for '",
                sub,
                "'. Try CLIENT HELP.",
            ),
            other => other.to_string().into_bytes(),
        }
    }

    /// The error for extra arguments after `sub` (as the client sent it).
    pub(crate) fn subcommand_syntax(sub: &[u8]) -> Self {
        ArgError::SubcommandSyntax(c_string(sub, 128).to_vec())
    }
}

/// What C's `%.*s` prints of an argument: up to its first NUL, at most `max` bytes.
fn c_string(arg: &[u8], max: usize) -> &[u8] {
    let end = arg
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(arg.len())
        .min(max);
    &arg[..end]
}

/// Which sessions CLIENT LIST shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListRequest {
    /// Every session, or those of one type.
    All(Option<ClientType>),
    /// These ids, in this order (repeats listed again, unknown ones skipped), as Redis.
    Ids(Vec<i64>),
}

/// Parses the arguments after `CLIENT LIST`: nothing, `TYPE type`, or `ID id [id ...]`.
pub(crate) fn parse_list(args: &[&[u8]]) -> Result<ListRequest, ArgError> {
    match args {
        [] => Ok(ListRequest::All(None)),
        [opt, kind] if opt.eq_ignore_ascii_case(b"TYPE") => ClientType::from_name(kind)
            .map(|t| ListRequest::All(Some(t)))
            .ok_or_else(|| ArgError::UnknownType(c_string(kind, usize::MAX).to_vec())),
        [opt, ids @ ..] if opt.eq_ignore_ascii_case(b"ID") && !ids.is_empty() => ids
            .iter()
            .map(|id| parse_i64(id).ok_or(ArgError::InvalidId))
            .collect::<Result<_, _>>()
            .map(ListRequest::Ids),
        _ => Err(ArgError::Syntax),
    }
}

/// The conditions of a CLIENT KILL, all of which a session must meet (ANDed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KillFilter {
    /// `CLIENT KILL addr:port`: answered `+OK` / `-ERR No such client` instead of a count,
    /// and the caller may kill itself.
    pub(crate) old_form: bool,
    /// ADDR (or the old form's address): the client's `ip:port`, exactly.
    pub(crate) addr: Option<Vec<u8>>,
    /// LADDR: moat's `ip:port` the client connected to, exactly.
    pub(crate) laddr: Option<Vec<u8>>,
    /// ID: moat's client id.
    pub(crate) id: Option<u64>,
    /// TYPE.
    pub(crate) kind: Option<ClientType>,
    /// USER: the name of the user the session acts as.
    pub(crate) user: Option<Vec<u8>>,
    /// Redis 7.4's MAXAGE: only sessions at least this many seconds old.
    pub(crate) max_age: Option<u64>,
    /// Spare the caller (the default of the filter form).
    pub(crate) skipme: bool,
}

/// What a kill filter looks at in one session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    /// Moat's client id.
    pub(crate) id: u64,
    /// The client's `ip:port`.
    pub(crate) addr: &'a [u8],
    /// Moat's `ip:port` it connected to.
    pub(crate) laddr: &'a [u8],
    /// Its type (pubsub when subscribed).
    pub(crate) kind: ClientType,
    /// The user it acts as.
    pub(crate) user: &'a [u8],
    /// Seconds since the session started.
    pub(crate) age: u64,
}

/// Parses the arguments after `CLIENT KILL`: one address (the old form) or option/value
/// pairs, refused as Redis refuses them.
pub(crate) fn parse_kill(args: &[&[u8]]) -> Result<KillFilter, ArgError> {
    if let [addr] = args {
        return Ok(KillFilter {
            old_form: true,
            addr: Some(addr.to_vec()),
            ..KillFilter::default()
        });
    }
    if args.is_empty() {
        return Err(ArgError::Syntax);
    }
    let mut filter = KillFilter {
        skipme: true,
        ..KillFilter::default()
    };
    let mut pairs = args.chunks(2);
    for pair in pairs.by_ref() {
        let [opt, value] = pair else {
            return Err(ArgError::Syntax);
        };
        let is = |word: &str| opt.eq_ignore_ascii_case(word.as_bytes());
        if is("id") {
            // Redis reads it as a long in 1..=LONG_MAX, with one message for any failure.
            let id = parse_i64(value)
                .filter(|&id| id >= 1)
                .ok_or(ArgError::IdNotPositive)?;
            filter.id = u64::try_from(id).ok();
        } else if is("type") {
            filter.kind = Some(
                ClientType::from_name(value)
                    .ok_or_else(|| ArgError::UnknownType(c_string(value, usize::MAX).to_vec()))?,
            );
        } else if is("addr") {
            filter.addr = Some(value.to_vec());
        } else if is("laddr") {
            filter.laddr = Some(value.to_vec());
        } else if is("user") {
            filter.user = Some(value.to_vec());
        } else if is("skipme") {
            filter.skipme = if value.eq_ignore_ascii_case(b"yes") {
                true
            } else if value.eq_ignore_ascii_case(b"no") {
                false
            } else {
                return Err(ArgError::Syntax);
            };
        } else if is("maxage") {
            let age = parse_i64(value).ok_or(ArgError::MaxAgeNotInteger)?;
            filter.max_age = Some(
                u64::try_from(age)
                    .ok()
                    .filter(|&a| a > 0)
                    .ok_or(ArgError::MaxAgeNotPositive)?,
            );
        } else {
            return Err(ArgError::Syntax);
        }
    }
    Ok(filter)
}

impl KillFilter {
    /// Whether `c` meets every condition; `caller` is the id of the session asking.
    pub(crate) fn matches(&self, c: &Candidate<'_>, caller: u64) -> bool {
        let same = |want: &Option<Vec<u8>>, have: &[u8]| want.as_deref().is_none_or(|w| w == have);
        same(&self.addr, c.addr)
            && same(&self.laddr, c.laddr)
            && self.kind.is_none_or(|k| k == c.kind)
            && self.id.is_none_or(|id| id == c.id)
            && same(&self.user, c.user)
            && !(self.skipme && c.id == caller)
            && self.max_age.is_none_or(|max| c.age >= max)
    }
}

/// How CLIENT UNBLOCK ends the call: as if it timed out, or with an `-UNBLOCKED` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnblockMode {
    /// No mode given: Redis's default, a timeout.
    Default,
    /// As if the call's timeout had passed (a nil reply).
    Timeout,
    /// With Redis's `-UNBLOCKED` error.
    Error,
}

impl UnblockMode {
    /// The argument to pass on to Redis (none for the default).
    pub(crate) fn arg(self) -> Option<&'static [u8]> {
        match self {
            UnblockMode::Default => None,
            UnblockMode::Timeout => Some(b"TIMEOUT"),
            UnblockMode::Error => Some(b"ERROR"),
        }
    }
}

/// Parses the arguments after `CLIENT UNBLOCK`: `id [TIMEOUT|ERROR]`, the reason checked
/// before the id, as Redis does. Ids below 1 name no client (`:0`), so they pass.
pub(crate) fn parse_unblock(args: &[&[u8]]) -> Result<(i64, UnblockMode), ArgError> {
    let mode = match args.get(1) {
        None => UnblockMode::Default,
        Some(m) if m.eq_ignore_ascii_case(b"TIMEOUT") => UnblockMode::Timeout,
        Some(m) if m.eq_ignore_ascii_case(b"ERROR") => UnblockMode::Error,
        Some(_) => return Err(ArgError::UnblockReason),
    };
    let id = args
        .first()
        .and_then(|id| parse_i64(id))
        .ok_or(ArgError::NotInteger)?;
    Ok((id, mode))
}

/// Where the client id of the first `REDIRECT` option stands in the options of `CLIENT
/// TRACKING on|off <options>` (`options`: the arguments after on|off), read the way Redis
/// reads them: `REDIRECT` and `PREFIX` take a value, `BCAST`, `OPTIN`, `OPTOUT` and
/// `NOLOOP` none. `None` when there is no REDIRECT before an option Redis would reject.
pub(crate) fn tracking_redirect(options: &[&[u8]]) -> Option<usize> {
    let mut at = 0;
    while at < options.len() {
        let option = options[at];
        let more = at + 1 < options.len();
        if option.eq_ignore_ascii_case(b"REDIRECT") && more {
            return Some(at + 1);
        } else if option.eq_ignore_ascii_case(b"PREFIX") && more {
            at += 2;
        } else if [&b"BCAST"[..], b"OPTIN", b"OPTOUT", b"NOLOOP"]
            .iter()
            .any(|flag| option.eq_ignore_ascii_case(flag))
        {
            at += 1;
        } else {
            return None;
        }
    }
    None
}

/// Parses `on` / `off` (CLIENT NO-EVICT, CLIENT NO-TOUCH).
pub(crate) fn parse_on_off(arg: &[u8]) -> Result<bool, ArgError> {
    if arg.eq_ignore_ascii_case(b"on") {
        Ok(true)
    } else if arg.eq_ignore_ascii_case(b"off") {
        Ok(false)
    } else {
        Err(ArgError::OnOff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_id_is_found_where_redis_reads_it() {
        let at = |args: &[&str]| {
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            tracking_redirect(&args)
        };
        assert_eq!(at(&["REDIRECT", "7"]), Some(1));
        assert_eq!(
            at(&["bcast", "prefix", "redirect", "redirect", "9"]),
            Some(4)
        );
        assert_eq!(at(&["OPTIN", "noloop", "Redirect", "x"]), Some(3));
        // A prefix named REDIRECT is a prefix; a REDIRECT without a value is Redis's error.
        assert_eq!(at(&["PREFIX", "REDIRECT"]), None);
        assert_eq!(at(&["REDIRECT"]), None);
        // Redis stops at an option it does not know.
        assert_eq!(at(&["BOGUS", "REDIRECT", "7"]), None);
        assert_eq!(at(&[]), None);
    }

    fn kill(args: &[&str]) -> Result<KillFilter, ArgError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        parse_kill(&args)
    }

    fn list(args: &[&str]) -> Result<ListRequest, ArgError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        parse_list(&args)
    }

    fn line(e: &ArgError) -> String {
        String::from_utf8(e.line()).unwrap_or_default()
    }

    #[test]
    fn list_arguments_as_redis_reads_them() {
        assert_eq!(list(&[]), Ok(ListRequest::All(None)));
        assert_eq!(
            list(&["TYPE", "Normal"]),
            Ok(ListRequest::All(Some(ClientType::Normal)))
        );
        assert_eq!(
            list(&["type", "slave"]),
            Ok(ListRequest::All(Some(ClientType::Replica)))
        );
        assert_eq!(
            list(&["ID", "3", "-1", "3"]),
            Ok(ListRequest::Ids(vec![3, -1, 3]))
        );
        assert_eq!(list(&["id"]), Err(ArgError::Syntax));
        assert_eq!(list(&["type"]), Err(ArgError::Syntax));
        assert_eq!(list(&["foo"]), Err(ArgError::Syntax));
        assert_eq!(list(&["type", "normal", "id", "5"]), Err(ArgError::Syntax));
        assert_eq!(
            list(&["id", "1", "type", "normal"]),
            Err(ArgError::InvalidId)
        );
        assert_eq!(list(&["id", "1.5"]), Err(ArgError::InvalidId));
        assert_eq!(
            list(&["id", "99999999999999999999"]),
            Err(ArgError::InvalidId)
        );
        let e = list(&["type", "foo"]).unwrap_err();
        assert_eq!(line(&e), "ERR Unknown client type 'foo'");
    }

    #[test]
    fn unknown_type_names_stop_at_nul_and_keep_raw_bytes() {
        let e = parse_list(&[b"TYPE", b"a\0b"]).unwrap_err();
        assert_eq!(e.line(), b"ERR Unknown client type 'a'");
        let e = parse_kill(&[b"TYPE", b"\xff"]).unwrap_err();
        assert_eq!(e.line(), b"ERR Unknown client type '\xff'");
    }

    #[test]
    fn kill_arguments_as_redis_reads_them() {
        let old = kill(&["127.0.0.1:5"]).unwrap();
        assert!(old.old_form && !old.skipme);
        assert_eq!(old.addr.as_deref(), Some(&b"127.0.0.1:5"[..]));
        // Two arguments are not the old form: an option without its value.
        assert_eq!(kill(&["id", "1", "type"]), Err(ArgError::Syntax));
        assert_eq!(kill(&["foo", "bar"]), Err(ArgError::Syntax));
        assert_eq!(kill(&["id", "0"]), Err(ArgError::IdNotPositive));
        assert_eq!(kill(&["id", "-1"]), Err(ArgError::IdNotPositive));
        assert_eq!(kill(&["id", "x"]), Err(ArgError::IdNotPositive));
        assert_eq!(
            kill(&["id", "99999999999999999999"]),
            Err(ArgError::IdNotPositive)
        );
        assert_eq!(
            kill(&["type", "normal", "skipme", "maybe"]),
            Err(ArgError::Syntax)
        );
        assert_eq!(kill(&["maxage", "x"]), Err(ArgError::MaxAgeNotInteger));
        assert_eq!(kill(&["maxage", "0"]), Err(ArgError::MaxAgeNotPositive));
        let f = kill(&["ID", "7", "TYPE", "pubsub", "SKIPME", "no", "maxage", "10"]).unwrap();
        assert_eq!(f.id, Some(7));
        assert_eq!(f.kind, Some(ClientType::Pubsub));
        assert!(!f.skipme && !f.old_form);
        assert_eq!(f.max_age, Some(10));
        assert!(kill(&["skipme", "yes"]).unwrap().skipme);
    }

    #[test]
    fn filters_are_anded() {
        let c = Candidate {
            id: 5,
            addr: b"127.0.0.1:4000",
            laddr: b"127.0.0.1:6380",
            kind: ClientType::Normal,
            user: b"default",
            age: 30,
        };
        assert!(kill(&["id", "5"]).unwrap().matches(&c, 1));
        assert!(
            !kill(&["id", "5"]).unwrap().matches(&c, 5),
            "skipme by default"
        );
        assert!(kill(&["id", "5", "skipme", "no"]).unwrap().matches(&c, 5));
        assert!(
            kill(&["127.0.0.1:4000"]).unwrap().matches(&c, 5),
            "old form"
        );
        assert!(!kill(&["127.0.0.1:4001"]).unwrap().matches(&c, 1));
        assert!(!kill(&["id", "5", "type", "pubsub"]).unwrap().matches(&c, 1));
        assert!(
            kill(&["laddr", "127.0.0.1:6380", "user", "default"])
                .unwrap()
                .matches(&c, 1)
        );
        assert!(!kill(&["user", "other"]).unwrap().matches(&c, 1));
        assert!(kill(&["maxage", "30"]).unwrap().matches(&c, 1));
        assert!(!kill(&["maxage", "31"]).unwrap().matches(&c, 1));
        assert!(!kill(&["type", "master"]).unwrap().matches(&c, 1));
    }

    #[test]
    fn unblock_checks_the_reason_first() {
        assert_eq!(parse_unblock(&[b"12"]), Ok((12, UnblockMode::Default)));
        assert_eq!(
            parse_unblock(&[b"12", b"error"]),
            Ok((12, UnblockMode::Error))
        );
        assert_eq!(parse_unblock(&[b"x", b"foo"]), Err(ArgError::UnblockReason));
        assert_eq!(parse_unblock(&[b"x"]), Err(ArgError::NotInteger));
        assert_eq!(parse_unblock(&[b"-5"]), Ok((-5, UnblockMode::Default)));
        assert_eq!(UnblockMode::Timeout.arg(), Some(&b"TIMEOUT"[..]));
    }

    #[test]
    fn on_off_and_subcommand_syntax() {
        assert_eq!(parse_on_off(b"ON"), Ok(true));
        assert_eq!(parse_on_off(b"off"), Ok(false));
        assert_eq!(parse_on_off(b"maybe"), Err(ArgError::OnOff));
        assert_eq!(
            line(&ArgError::subcommand_syntax(b"PaUsE")),
            "ERR unknown subcommand or wrong number of arguments for 'PaUsE'. Try CLIENT HELP."
        );
        let long = vec![b'a'; 300];
        let shown = line(&ArgError::subcommand_syntax(&long));
        assert!(shown.contains(&"a".repeat(128)) && !shown.contains(&"a".repeat(129)));
    }
}
