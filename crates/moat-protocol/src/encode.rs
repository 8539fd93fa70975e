//! Writing replies and commands into a `BytesMut` without temporaries.

use bytes::{BufMut, BytesMut};

const CRLF: &[u8] = b"\r\n";

/// Writes `text` with every CR and LF replaced by a space, so untrusted or
/// multi-line text cannot end the line early and inject a reply.
fn put_one_line(out: &mut BytesMut, text: &[u8]) {
    for (i, part) in text.split(|&b| b == b'\r' || b == b'\n').enumerate() {
        if i > 0 {
            out.put_u8(b' ');
        }
        out.put_slice(part);
    }
}

fn put_header(out: &mut BytesMut, prefix: u8, n: impl itoa::Integer) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    out.reserve(digits.len() + 3);
    out.put_u8(prefix);
    out.put_slice(digits.as_bytes());
    out.put_slice(CRLF);
}

/// Writes a simple string `+s`; CR and LF become spaces.
pub fn simple(out: &mut BytesMut, s: &str) {
    out.reserve(s.len() + 3);
    out.put_u8(b'+');
    put_one_line(out, s.as_bytes());
    out.put_slice(CRLF);
}

/// Writes an error `-line`; CR and LF become spaces so the frame can't be broken.
/// Takes bytes as well as text: Redis echoes a client's raw bytes in some errors.
pub fn error(out: &mut BytesMut, line: impl AsRef<[u8]>) {
    let line = line.as_ref();
    out.reserve(line.len() + 3);
    out.put_u8(b'-');
    put_one_line(out, line);
    out.put_slice(CRLF);
}

/// Writes an integer `:n`.
pub fn integer(out: &mut BytesMut, n: i64) {
    put_header(out, b':', n);
}

/// Writes a bulk string.
pub fn bulk(out: &mut BytesMut, data: &[u8]) {
    put_header(out, b'$', data.len());
    out.reserve(data.len() + 2);
    out.put_slice(data);
    out.put_slice(CRLF);
}

/// Writes a RESP3 map header `%n` (n key-value pairs follow).
pub fn map_header(out: &mut BytesMut, pairs: usize) {
    put_header(out, b'%', pairs);
}

/// Writes the RESP3 null `_`.
pub fn null(out: &mut BytesMut) {
    out.put_slice(b"_\r\n");
}

/// Writes a RESP3 verbatim string: `format` is three bytes such as `txt`.
pub fn verbatim(out: &mut BytesMut, format: &[u8; 3], data: &[u8]) {
    put_header(out, b'=', data.len() + 4);
    out.reserve(data.len() + 6);
    out.put_slice(format);
    out.put_u8(b':');
    out.put_slice(data);
    out.put_slice(CRLF);
}

/// Writes the RESP2 null bulk string `$-1`.
pub fn null_bulk(out: &mut BytesMut) {
    out.put_slice(b"$-1\r\n");
}

/// Writes an array header `*len`; the caller writes the elements.
pub fn array_header(out: &mut BytesMut, len: usize) {
    put_header(out, b'*', len);
}

/// Writes a command: a multibulk of bulk strings.
pub fn command<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    array_header(out, args.len());
    for arg in args {
        bulk(out, arg.as_ref());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn written(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut out = BytesMut::new();
        f(&mut out);
        out.to_vec()
    }

    #[test]
    fn writes_each_type() {
        assert_eq!(written(|o| simple(o, "OK")), b"+OK\r\n");
        assert_eq!(written(|o| error(o, "ERR bad")), b"-ERR bad\r\n");
        assert_eq!(written(|o| integer(o, -42)), b":-42\r\n");
        assert_eq!(
            written(|o| integer(o, i64::MIN)),
            b":-9223372036854775808\r\n"
        );
        assert_eq!(written(|o| bulk(o, b"a\r\nb")), b"$4\r\na\r\nb\r\n");
        assert_eq!(written(|o| bulk(o, b"")), b"$0\r\n\r\n");
        assert_eq!(written(null_bulk), b"$-1\r\n");
        assert_eq!(written(|o| array_header(o, 3)), b"*3\r\n");
        assert_eq!(
            written(|o| command(o, &["GET", "k"])),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
        assert_eq!(written(|o| command::<&[u8]>(o, &[])), b"*0\r\n");
    }

    #[test]
    fn lines_cannot_be_broken() {
        assert_eq!(
            written(|o| error(o, "ERR a\r\n+OK\r\nb")),
            b"-ERR a  +OK  b\r\n"
        );
        assert_eq!(written(|o| simple(o, "x\ny")), b"+x y\r\n");
    }
}
