//! One CLIENT LIST / CLIENT INFO line in Redis's format.
//!
//! The fields and their order are Redis 7.0.15's, as it prints them, followed by Redis 7.2's
//! `lib-name` and `lib-ver` (moat emulates CLIENT SETINFO for every server version, and
//! clients parse the line as `key=value` pairs, so the extra fields at the end are safe).
//! Counters of Redis's own buffers (`qbuf`, `argv-mem`, `rbs`...) have no meaning for a moat
//! session and are 0; `omem` and `tot-mem` are the session's unsent reply bytes.
//!
//! Pure: the session's state is passed in.

use std::io::Write as _;
use std::net::SocketAddr;

/// What a session's connection-state flags (`flags=`) are made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FlagState {
    /// In MONITOR mode (`O`).
    pub(crate) monitor: bool,
    /// Subscribed to anything (`P`).
    pub(crate) pubsub: bool,
    /// Inside MULTI (`x`).
    pub(crate) multi: bool,
    /// Waiting in a blocking call (`b`).
    pub(crate) blocked: bool,
    /// CLIENT TRACKING on (`t`).
    pub(crate) tracking: bool,
    /// CLIENT NO-EVICT on (`e`).
    pub(crate) no_evict: bool,
    /// CLIENT NO-TOUCH on (`T`).
    pub(crate) no_touch: bool,
}

impl FlagState {
    /// The letters in Redis's order, `N` when there is none.
    pub(crate) fn letters(&self) -> String {
        let mut out = String::new();
        for (on, letter) in [
            (self.monitor, 'O'),
            (self.pubsub, 'P'),
            (self.multi, 'x'),
            (self.blocked, 'b'),
            (self.tracking, 't'),
            (self.no_evict, 'e'),
            (self.no_touch, 'T'),
        ] {
            if on {
                out.push(letter);
            }
        }
        if out.is_empty() {
            out.push('N');
        }
        out
    }
}

/// Everything one line shows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineFields<'a> {
    /// Moat's client id.
    pub(crate) id: u64,
    /// The client's address.
    pub(crate) addr: SocketAddr,
    /// Moat's address the client connected to.
    pub(crate) laddr: SocketAddr,
    /// The client socket in moat's process.
    pub(crate) fd: i32,
    /// CLIENT SETNAME.
    pub(crate) name: &'a [u8],
    /// Seconds since the connection was accepted.
    pub(crate) age: u64,
    /// Seconds since the client last sent something.
    pub(crate) idle: u64,
    /// What the `flags=` letters say.
    pub(crate) flags: FlagState,
    /// The session's database.
    pub(crate) db: u32,
    /// Channels, patterns and shard channels subscribed to.
    pub(crate) sub: u32,
    pub(crate) psub: u32,
    pub(crate) ssub: u32,
    /// Commands queued in MULTI, `None` outside a transaction (`multi=-1`).
    pub(crate) multi: Option<u32>,
    /// Reply bytes not yet written to the client.
    pub(crate) omem: usize,
    /// The last command's full name (`NULL` when none).
    pub(crate) cmd: &'a str,
    /// The user the session acts as.
    pub(crate) user: &'a str,
    /// Where tracking redirects to: the moat id, 0 to the session itself, -1 when off.
    pub(crate) redir: i64,
    /// The session speaks RESP3 (`resp=3`).
    pub(crate) resp3: bool,
    /// CLIENT SETINFO's values.
    pub(crate) lib_name: &'a [u8],
    pub(crate) lib_ver: &'a [u8],
}

/// Appends the line for `f`, without the final newline.
pub(crate) fn write_line(out: &mut Vec<u8>, f: &LineFields<'_>) {
    let multi = f.multi.map_or(-1, i64::from);
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "id={} addr={} laddr={} fd={} name=",
        f.id, f.addr, f.laddr, f.fd
    );
    out.extend_from_slice(f.name);
    let _ = write!(
        out,
        " age={} idle={} flags={} db={} sub={} psub={} ssub={} multi={multi} qbuf=0 \
         qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={} tot-mem={} \
         events=r cmd={} user={} redir={} resp={} lib-name=",
        f.age,
        f.idle,
        f.flags.letters(),
        f.db,
        f.sub,
        f.psub,
        f.ssub,
        f.omem,
        f.omem,
        f.cmd,
        f.user,
        f.redir,
        if f.resp3 { 3 } else { 2 },
    );
    out.extend_from_slice(f.lib_name);
    out.extend_from_slice(b" lib-ver=");
    out.extend_from_slice(f.lib_ver);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> LineFields<'static> {
        LineFields {
            id: 7,
            addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
            laddr: SocketAddr::from(([127, 0, 0, 1], 6380)),
            fd: 12,
            name: b"worker",
            age: 3,
            idle: 1,
            flags: FlagState::default(),
            db: 2,
            sub: 0,
            psub: 0,
            ssub: 0,
            multi: None,
            omem: 0,
            cmd: "client|list",
            user: "default",
            redir: -1,
            resp3: false,
            lib_name: b"",
            lib_ver: b"",
        }
    }

    #[test]
    fn fields_in_redis_order() {
        let mut out = Vec::new();
        write_line(&mut out, &fields());
        assert_eq!(
            String::from_utf8(out).unwrap_or_default(),
            "id=7 addr=127.0.0.1:40000 laddr=127.0.0.1:6380 fd=12 name=worker age=3 idle=1 \
             flags=N db=2 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 \
             multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|list \
             user=default redir=-1 resp=2 lib-name= lib-ver="
        );
    }

    #[test]
    fn subscribed_in_multi_and_so_on() {
        let mut f = fields();
        f.flags = FlagState {
            pubsub: true,
            multi: true,
            no_evict: true,
            no_touch: true,
            ..FlagState::default()
        };
        f.sub = 2;
        f.psub = 1;
        f.multi = Some(3);
        f.resp3 = true;
        f.lib_name = b"redis-py";
        f.lib_ver = b"5.0";
        let mut out = Vec::new();
        write_line(&mut out, &f);
        let text = String::from_utf8(out).unwrap_or_default();
        for part in [
            " flags=PxeT ",
            " sub=2 psub=1 ssub=0 multi=3 ",
            " resp=3 lib-name=redis-py lib-ver=5.0",
        ] {
            assert!(text.contains(part), "{part:?} in {text}");
        }
        let blocked = FlagState {
            blocked: true,
            monitor: true,
            tracking: true,
            ..FlagState::default()
        };
        assert_eq!(blocked.letters(), "Obt");
    }
}
