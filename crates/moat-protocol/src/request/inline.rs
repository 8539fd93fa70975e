//! Splitting an inline command line into arguments, like `sdssplitargs`.

use std::ops::Range;

use super::ParseError;

const UNBALANCED: ParseError = ParseError::Protocol("unbalanced quotes in request");

/// `isspace` in the C locale, which `sdssplitargs` uses between tokens.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_value(b: Option<&u8>) -> Option<u8> {
    let b = *b?;
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Plain,
    Double,
    Single,
}

/// Splits `line` into `args` (ranges into `out`), unescaping quoted parts.
///
/// Follows `sdssplitargs` except that NUL is ordinary data: Redis's version
/// stops at NUL only because it works on C strings.
pub(crate) fn split_args(
    line: &[u8],
    out: &mut Vec<u8>,
    args: &mut Vec<Range<usize>>,
    max_args: usize,
) -> Result<(), ParseError> {
    let mut i = 0;
    loop {
        while line.get(i).copied().is_some_and(is_space) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(());
        }
        if args.len() >= max_args {
            return Err(ParseError::TooManyArgs { limit: max_args });
        }
        let start = out.len();
        let mut mode = Mode::Plain;
        loop {
            let c = line.get(i).copied();
            match mode {
                Mode::Plain => match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => mode = Mode::Double,
                    Some(b'\'') => mode = Mode::Single,
                    Some(b) => out.push(b),
                },
                Mode::Double => match c {
                    None => return Err(UNBALANCED),
                    Some(b'\\') if line.get(i + 1) == Some(&b'x') => {
                        match (hex_value(line.get(i + 2)), hex_value(line.get(i + 3))) {
                            (Some(hi), Some(lo)) => {
                                out.push(hi * 16 + lo);
                                i += 3;
                            }
                            _ => {
                                out.push(b'x');
                                i += 1;
                            }
                        }
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        out.push(match line.get(i).copied().unwrap_or_default() {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        close_quote(line, i)?;
                        i += 1;
                        break;
                    }
                    Some(b) => out.push(b),
                },
                Mode::Single => match c {
                    None => return Err(UNBALANCED),
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        out.push(b'\'');
                        i += 1;
                    }
                    Some(b'\'') => {
                        close_quote(line, i)?;
                        i += 1;
                        break;
                    }
                    Some(b) => out.push(b),
                },
            }
            i += 1;
        }
        args.push(start..out.len());
    }
}

/// A closing quote glued to more text (`"a"b`) is ambiguous, so Redis
/// rejects it rather than guess.
fn close_quote(line: &[u8], quote_at: usize) -> Result<(), ParseError> {
    match line.get(quote_at + 1) {
        Some(&next) if !is_space(next) => Err(UNBALANCED),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn split(line: &[u8]) -> Result<Vec<Vec<u8>>, ParseError> {
        let mut out = Vec::new();
        let mut args = Vec::new();
        split_args(line, &mut out, &mut args, usize::MAX)?;
        Ok(args.into_iter().map(|r| out[r].to_vec()).collect())
    }

    fn ok(line: &[u8], want: &[&[u8]]) {
        assert_eq!(split(line), Ok(want.iter().map(|a| a.to_vec()).collect()));
    }

    #[test]
    fn plain_words() {
        ok(b"", &[]);
        ok(b"  \t ", &[]);
        ok(b"SET k v", &[b"SET", b"k", b"v"]);
        ok(b"  a \t b  ", &[b"a", b"b"]);
        ok(b"a\x0bb", &[b"a\x0bb"]);
        ok(b"a\0b c", &[b"a\0b", b"c"]);
        ok(b"caf\xc3\xa9 \xff", &[b"caf\xc3\xa9", b"\xff"]);
    }

    #[test]
    fn double_quotes() {
        ok(br#""hello world""#, &[b"hello world"]);
        ok(br#""a\nb\rc\td\be\af""#, &[b"a\nb\rc\td\x08e\x07f"]);
        ok(br#""\\ \" \q""#, &[b"\\ \" q"]);
        ok(br#""\x41\x4a\xff\x00""#, &[b"AJ\xff\0"]);
        ok(br#""\xZZ" "\x4""#, &[b"xZZ", b"x4"]);
        ok(br#""" x"#, &[b"", b"x"]);
        ok(br#"a"b c"  d"#, &[b"ab c", b"d"]);
        ok(b"\"a\"\x0b", &[b"a"]);
    }

    #[test]
    fn single_quotes() {
        ok(br"'a b' 'it\'s' '\n'", &[b"a b", b"it's", b"\\n"]);
        ok(b"''", &[b""]);
    }

    #[test]
    fn unbalanced_quotes() {
        for bad in [
            &br#""abc"#[..],
            br#"'abc"#,
            br#""a"b"#,
            br#"'a'b"#,
            br#""abc\"#,
            br#"x "y"#,
        ] {
            assert_eq!(
                split(bad),
                Err(UNBALANCED),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn arg_limit() {
        let mut out = Vec::new();
        let mut args = Vec::new();
        assert_eq!(
            split_args(b"a b c", &mut out, &mut args, 2),
            Err(ParseError::TooManyArgs { limit: 2 })
        );
        args.clear();
        assert_eq!(split_args(b"a b", &mut out, &mut args, 2), Ok(()));
    }
}
