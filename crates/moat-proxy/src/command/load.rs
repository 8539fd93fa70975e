//! Reads the backend's `COMMAND` reply into a [`CommandTable`].

use moat_protocol::Value;

use super::{CommandTable, Flags};

/// Builds a table from a decoded `COMMAND` reply; `None` when the reply has no usable entry
/// (an error, or a server that renamed or denied `COMMAND`).
pub(crate) fn parse_command_reply(reply: &Value) -> Option<CommandTable> {
    let entries = reply.as_array()?;
    let mut parsed = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some(fields) = entry.as_array() else {
            continue;
        };
        let (Some(name), Some(arity)) = (
            fields.first().and_then(Value::as_bytes),
            fields.get(1).and_then(Value::as_int),
        ) else {
            continue;
        };
        let flags = flags_of(fields);
        // Redis 7 lists subcommands in the 10th field.
        let has_subcommands = fields
            .get(9)
            .and_then(Value::as_array)
            .is_some_and(|subs| !subs.is_empty());
        let arity = i32::try_from(arity).unwrap_or(-1);
        parsed.push((name.to_vec(), arity, flags, has_subcommands));
        // Subcommands are entries of the same shape, named `container|sub`.
        for sub in fields.get(9).and_then(Value::as_array).unwrap_or(&[]) {
            let Some(sub) = sub.as_array() else { continue };
            if let (Some(name), Some(arity)) = (
                sub.first().and_then(Value::as_bytes),
                sub.get(1).and_then(Value::as_int),
            ) {
                let arity = i32::try_from(arity).unwrap_or(-1);
                // A subcommand's own flags: CLIENT PAUSE WRITE holds `script|load`
                // (may_replicate) but not `script|exists`.
                parsed.push((name.to_vec(), arity, flags_of(sub), false));
            }
        }
    }
    if parsed.is_empty() {
        return None;
    }
    Some(CommandTable::from_entries(parsed))
}

/// The flags in the third field of a `COMMAND` entry (unknown names ignored).
fn flags_of(fields: &[Value]) -> Flags {
    let mut flags = Flags::default();
    for flag in fields.get(2).and_then(Value::as_array).unwrap_or(&[]) {
        if let Some(f) = flag.as_bytes() {
            flags.insert(Flags::from_name(f));
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Route;
    use bytes::Bytes;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn reads_names_arity_flags_and_subcommands() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("blpop"),
                Value::Integer(-3),
                Value::Array(vec![
                    Value::Simple("write".into()),
                    Value::Simple("blocking".into()),
                ]),
            ]),
            Value::Array(vec![
                bulk("config"),
                Value::Integer(-2),
                Value::Array(vec![]),
                Value::Integer(0),
                Value::Integer(0),
                Value::Integer(0),
                Value::Array(vec![]),
                Value::Array(vec![]),
                Value::Array(vec![]),
                Value::Array(vec![Value::Array(vec![
                    bulk("config|get"),
                    Value::Integer(-3),
                    Value::Array(vec![Value::Simple("may_replicate".into())]),
                ])]),
            ]),
            Value::Integer(7),
        ]);
        let table = parse_command_reply(&reply).expect("entries");
        let blpop = table.get(b"BLPOP").expect("blpop");
        assert_eq!(blpop.arity, -3);
        assert!(blpop.flags.contains(Flags::BLOCKING));
        assert_eq!(blpop.route, Route::Dedicated);
        assert!(table.get(b"config").expect("config").has_subcommands);
        let get = table.get_sub(b"CONFIG", b"get").expect("config|get");
        assert_eq!(get.arity, -3);
        assert!(get.flags.contains(Flags::MAY_REPLICATE));
        assert_eq!(table.name(get.id), Some("config|get"));
        assert!(table.is_authoritative());
    }

    #[test]
    fn errors_give_no_table() {
        assert!(parse_command_reply(&Value::Error("ERR unknown command".into())).is_none());
        assert!(parse_command_reply(&Value::Array(vec![])).is_none());
    }
}
