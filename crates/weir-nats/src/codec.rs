//! The wire format of a remote edge, version 1.
//!
//! One JetStream message carries a batch of records: a single record per
//! message caps an edge at a few thousand records per second, a batch of a
//! few hundred moves hundreds of thousands. The message has
//!
//! - header `Weir-Format: 1` (a receiver refuses any other version, so a
//!   mixed-version cluster fails loudly instead of misreading data);
//! - header `Nats-Msg-Id`: deterministic, see [`crate::publish`];
//! - a body of JSON Lines, one record per line:
//!   `{"in":"orders","file":"data/o.jsonl","line":12,"v":{...}}`:
//!   the record's value under `v` and its position (`in` the pipeline input,
//!   `file` when read from a file, `line`), so a record dead-lettered on
//!   another machine still says where it was read.
//!
//! JSON keeps the format readable with `nats stream view` and costs about
//! what the decode stage already pays; the header leaves room for a binary
//! version 2.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_record::value::{Json, Val};
use weir_record::{Position, Record};

/// The header naming the format version.
pub const FORMAT_HEADER: &str = "Weir-Format";
/// The version this build writes and reads.
pub const FORMAT_VERSION: &str = "1";

#[derive(Serialize)]
struct Out<'a> {
    #[serde(rename = "in")]
    input: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    line: u64,
    v: Json<'a>,
}

#[derive(Deserialize)]
struct In {
    #[serde(rename = "in")]
    input: String,
    #[serde(default)]
    file: Option<String>,
    line: u64,
    v: Val,
}

/// Appends the encoding of `records` to `buf`.
pub fn encode_into(records: &[Record], buf: &mut Vec<u8>) {
    for r in records {
        let out = Out {
            input: &r.pos.input,
            file: r.pos.file.as_deref(),
            line: r.pos.line,
            v: Json(&r.value),
        };
        serde_json::to_writer(&mut *buf, &out).expect("a JSON value always serializes");
        buf.push(b'\n');
    }
}

/// The encoding of `records`.
pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(records.len() * 128);
    encode_into(records, &mut buf);
    buf
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Checks the version header of a message.
///
/// # Errors
/// When the header is missing or names another version.
pub fn check_version(headers: Option<&async_nats::HeaderMap>) -> Result<(), DecodeError> {
    let v = headers
        .and_then(|h| h.get(FORMAT_HEADER))
        .map(|v| v.as_str());
    match v {
        Some(FORMAT_VERSION) => Ok(()),
        Some(other) => Err(DecodeError(format!(
            "message in weir wire format {other}; this weir reads format {FORMAT_VERSION} (upgrade every node to the same weir)"
        ))),
        None => Err(DecodeError(format!(
            "message without a `{FORMAT_HEADER}` header: not published by weir"
        ))),
    }
}

/// Decodes a message body into records.
///
/// # Errors
/// Names the line of the body that is not a record.
pub fn decode(body: &[u8]) -> Result<Vec<Record>, DecodeError> {
    let mut out = Vec::new();
    // Positions repeat the input name and file: share them.
    let mut last_input: Option<Arc<str>> = None;
    let mut last_file: Option<Arc<str>> = None;
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let r: In = serde_json::from_slice(line)
            .map_err(|e| DecodeError(format!("record {} of the message: {e}", i + 1)))?;
        let input = match &last_input {
            Some(a) if **a == *r.input => a.clone(),
            _ => {
                let a: Arc<str> = Arc::from(r.input);
                last_input = Some(a.clone());
                a
            }
        };
        let file = r.file.map(|f| match &last_file {
            Some(a) if **a == *f => a.clone(),
            _ => {
                let a: Arc<str> = Arc::from(f);
                last_file = Some(a.clone());
                a
            }
        });
        out.push(Record::new(
            r.v,
            Arc::new(Position {
                input,
                file,
                line: r.line,
            }),
        ));
    }
    Ok(out)
}

/// One entry of a job's dead-letter stream: the same fields as a line of
/// the dead-letter file, plus the position in parts so that
/// `weir dlq replay` can rebuild the record exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DlqEntry {
    /// The stage that gave up on the record.
    pub stage: String,
    /// Why, with the error chain.
    pub error: String,
    /// Attempts made (broker deliveries for remote stages).
    pub attempts: u32,
    /// `file:line` or `input#n`, for people.
    pub position: Option<String>,
    /// The pipeline input the record came from.
    pub input: Option<String>,
    /// The file it was read from.
    #[serde(default)]
    pub file: Option<String>,
    /// Its line.
    #[serde(default)]
    pub line: Option<u64>,
    /// The record, when it was one.
    pub record: Value,
    /// The raw text, when it never became a record (a line that did not
    /// decode).
    pub raw: Value,
    /// Set when the entry was too large for a message of the dead-letter
    /// stream: the record's (or raw text's) size in bytes, of which `raw`
    /// keeps the beginning. Such an entry cannot be replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<u64>,
}

impl DlqEntry {
    /// An entry for `record`, rejected by `stage`.
    pub fn for_record(stage: &str, error: String, attempts: u32, record: &Record) -> Self {
        DlqEntry {
            stage: stage.to_string(),
            error,
            attempts,
            position: Some(record.pos.to_string()),
            input: Some(record.pos.input.to_string()),
            file: record.pos.file.as_deref().map(str::to_string),
            line: Some(record.pos.line),
            record: record.json(),
            raw: Value::Null,
            truncated: None,
        }
    }

    /// An entry for a message that could not be read as records: its body
    /// is kept as text.
    pub fn unreadable(stage: &str, error: String, attempts: u32, body: &[u8]) -> Self {
        DlqEntry {
            stage: stage.to_string(),
            error,
            attempts,
            position: None,
            input: None,
            file: None,
            line: None,
            record: Value::Null,
            raw: Value::String(String::from_utf8_lossy(body).into_owned()),
            truncated: None,
        }
    }

    /// The entry as a message body of at most `max_body` bytes: as it is
    /// when it fits; else with its record (or raw text) replaced by the
    /// beginning of its JSON text, and `truncated` set to the full size, so
    /// that the dead letter still says what, where and why.
    pub fn encode_within(&self, max_body: usize) -> Vec<u8> {
        let full = serde_json::to_vec(self).expect("an entry always serializes");
        if full.len() <= max_body {
            return full;
        }
        let text = if self.record.is_null() {
            match &self.raw {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        } else {
            self.record.to_string()
        };
        let mut cut = DlqEntry {
            record: Value::Null,
            raw: Value::Null,
            truncated: Some(text.len() as u64),
            ..self.clone()
        };
        // What is left for the excerpt once the rest is written (escaping
        // can at most sextuple a character: keep well below).
        let rest = serde_json::to_vec(&cut).expect("serializes").len();
        let room = max_body.saturating_sub(rest + 64) / 6;
        let mut end = room.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        cut.raw = Value::String(text[..end].to_string());
        serde_json::to_vec(&cut).expect("serializes")
    }

    /// The record again, at its original position, for replay; `None` for
    /// an entry that never was a record.
    pub fn to_record(&self) -> Option<Record> {
        if self.record.is_null() {
            return None;
        }
        Some(Record::from_json(
            &self.record,
            Arc::new(Position {
                input: Arc::from(self.input.as_deref().unwrap_or("replay")),
                file: self.file.as_deref().map(Arc::from),
                line: self.line.unwrap_or(0),
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(input: &str, file: Option<&str>, line: u64, v: Value) -> Record {
        Record::from_json(
            &v,
            Arc::new(Position {
                input: Arc::from(input),
                file: file.map(Arc::from),
                line,
            }),
        )
    }

    #[test]
    fn documented_example_decodes() {
        let body = br#"{"in":"orders","file":"data/o.jsonl","line":12,"v":{"id":1}}"#;
        let got = decode(body).unwrap();
        assert_eq!(
            got,
            vec![rec(
                "orders",
                Some("data/o.jsonl"),
                12,
                serde_json::json!({"id":1})
            )]
        );
    }

    #[test]
    fn bad_line_is_named() {
        let body = b"{\"in\":\"a\",\"line\":1,\"v\":1}\nnot json\n";
        let e = decode(body).unwrap_err();
        assert!(e.0.starts_with("record 2 of the message"), "{e}");
    }

    #[test]
    fn version_is_checked() {
        let mut h = async_nats::HeaderMap::new();
        assert!(check_version(Some(&h)).is_err());
        h.insert(FORMAT_HEADER, "2");
        assert!(check_version(Some(&h)).unwrap_err().0.contains("format 2"));
        h.insert(FORMAT_HEADER, FORMAT_VERSION);
        assert!(check_version(Some(&h)).is_ok());
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z\\n\"\\\\ é]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip(items in prop::collection::vec(
            ("[a-z]{1,4}", prop::option::of("[a-z/.]{1,6}"), any::<u64>(), value()), 0..20)) {
            let records: Vec<Record> = items
                .into_iter()
                .map(|(i, f, l, v)| rec(&i, f.as_deref(), l, v))
                .collect();
            prop_assert_eq!(decode(&encode(&records)).unwrap(), records);
        }
    }
}
