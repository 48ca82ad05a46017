//! Fuzzing with proptest: configuration parsing and decoding never panic,
//! whatever the input.
//!
//! * every component's configuration type, deserialized with
//!   `serde_saphyr::from_str` from arbitrary text and from mutations of its
//!   own example, returns `Ok` or `Err`;
//! * `Decoder::decode` on arbitrary lines (jsonl, lines) and arbitrary CSV
//!   rows (typed columns) returns `Ok` or `Err`; a valid JSON object line
//!   decodes to the value it was written from; typed CSV fields decode to
//!   their values.
//!
//! Cases are modest (256 per property) so the file runs in seconds in a
//! debug build.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Map, Value};
use weir_connectors::registry::COMPONENTS;
use weir_connectors::sinks::dead_letter::DeadLetterConfig;
use weir_connectors::sources::Raw;
use weir_connectors::sources::decode::{ColumnType, Decoder, Format};
use weir_connectors::{Position, Record};

const CASES: u32 = 256;

/// Parses `text` as every configuration type; panics (with the type and
/// the text) if any of them panics.
fn parse_all(text: &str) {
    fn one<T: serde::de::DeserializeOwned>(name: &str, text: &str) {
        let r = catch_unwind(AssertUnwindSafe(|| {
            let _ = serde_saphyr::from_str::<T>(text);
        }));
        assert!(
            r.is_ok(),
            "serde_saphyr::from_str::<{name}> panicked on {text:?}"
        );
    }
    for c in COMPONENTS {
        let r = catch_unwind(AssertUnwindSafe(|| (c.parse_yaml)(text)));
        assert!(
            r.is_ok(),
            "parsing the options of {} {} panicked on {text:?}",
            c.kind.as_str(),
            c.name
        );
    }
    one::<DeadLetterConfig>("DeadLetterConfig", text);
    one::<Value>("serde_json::Value", text);
}

/// Every component's example, the dead-letter file's, and a whole
/// pipeline.
fn examples() -> Vec<&'static str> {
    let mut all: Vec<&str> = COMPONENTS.iter().map(|c| c.example).collect();
    all.push(DeadLetterConfig::EXAMPLE);
    all.push(include_str!("../../../examples/pipelines/orders.yaml"));
    all
}

/// Pieces of YAML worth splicing in: structure, anchors and aliases, tags,
/// odd scalars.
const SPLICES: &[&str] = &[
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    "\n  ",
    "\t",
    "#",
    "&a ",
    "*a",
    "!!str ",
    "!!int ",
    "!!binary ",
    "<<: *a",
    "|",
    ">-",
    "'",
    "\"",
    "\\",
    "~",
    "null",
    "-1",
    "1e999",
    ".nan",
    "0x1F",
    "99999999999999999999999",
    "---\n",
    "...\n",
    "? ",
    "%YAML 1.2\n",
    "\u{feff}",
    "é",
    "{{seq}}",
    "{{int:9..1}}",
    "{sum: .a}",
    "count",
    "{count: 0}",
    "{seconds: -1}",
];

/// An edit of a text: insert a splice, delete a range, or duplicate a range,
/// at positions given as fractions of the length.
#[derive(Debug, Clone)]
enum Edit {
    Insert(f64, usize),
    Delete(f64, f64),
    Duplicate(f64, f64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0.0..=1.0f64, 0..SPLICES.len()).prop_map(|(at, i)| Edit::Insert(at, i)),
        (0.0..=1.0f64, 0.0..0.2f64).prop_map(|(at, len)| Edit::Delete(at, len)),
        (0.0..=1.0f64, 0.0..0.2f64).prop_map(|(at, len)| Edit::Duplicate(at, len)),
    ]
}

/// The char boundary nearest below `frac` of `s`'s length.
fn boundary(s: &str, frac: f64) -> usize {
    let mut i = ((s.len() as f64) * frac.clamp(0.0, 1.0)) as usize;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i.min(s.len())
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut s = text.to_string();
    for e in edits {
        match *e {
            Edit::Insert(at, i) => {
                let at = boundary(&s, at);
                s.insert_str(at, SPLICES[i]);
            }
            Edit::Delete(at, len) => {
                let a = boundary(&s, at);
                let b = boundary(&s, (at + len).min(1.0)).max(a);
                s.replace_range(a..b, "");
            }
            Edit::Duplicate(at, len) => {
                let a = boundary(&s, at);
                let b = boundary(&s, (at + len).min(1.0)).max(a);
                let piece = s[a..b].to_string();
                s.insert_str(b, &piece);
            }
        }
    }
    s
}

fn pos() -> Arc<Position> {
    Arc::new(Position {
        input: "fuzz".into(),
        file: Some("fuzz.jsonl".into()),
        line: 1,
    })
}

fn line(text: String) -> Raw {
    Raw::Line { pos: pos(), text }
}

/// A JSON value that survives a text round trip exactly: integers, floats
/// with short decimal forms, strings with escapes and non-ASCII, nesting.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1_000_000i64..1_000_000, 0u32..4).prop_map(|(m, e)| {
            let f = m as f64 / 10f64.powi(e as i32);
            serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
        }),
        "[a-zé\"\\\\/ \t\n\u{0}\u{1F600}]{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\"é]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn column_type() -> impl Strategy<Value = ColumnType> {
    prop_oneof![
        Just(ColumnType::Int),
        Just(ColumnType::Float),
        Just(ColumnType::Bool),
        Just(ColumnType::String),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn config_types_never_panic_on_arbitrary_text(text in "\\PC{0,200}") {
        parse_all(&text);
    }

    #[test]
    fn config_types_never_panic_on_yaml_like_text(
        text in "([a-z_]{1,8}: ?|- |  |\\{|\\}|\\[|\\]|, |&a |\\*a|'|\"|\\n|[0-9.e-]{1,6}|\\.[a-z]{1,4}){0,40}"
    ) {
        parse_all(&text);
    }

    #[test]
    fn config_types_never_panic_on_mutated_examples(
        which in 0..examples().len(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        parse_all(&apply(examples()[which], &edits));
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_lines(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        // Sources hand over lossily decoded text (invalid UTF-8 as U+FFFD).
        let text = String::from_utf8_lossy(&bytes).into_owned();
        for d in [Decoder::jsonl(), Decoder::lines(), Decoder::new(Format::Csv, BTreeMap::new())] {
            let _ = d.decode(&line(text.clone()));
        }
        let lines = Decoder::lines().decode(&line(text.clone())).expect("lines take any text");
        prop_assert_eq!(lines.json(), serde_json::json!({ "line": text }));
    }

    #[test]
    fn decoders_never_panic_on_json_like_lines(text in "[\\[\\]{}:,\"\\\\0-9eE.+-]{0,60}|[ -~]{0,60}") {
        let d = Decoder::jsonl();
        match d.decode(&line(text.clone())) {
            Ok(r) => prop_assert_eq!(Some(r.json()), serde_json::from_str::<Value>(&text).ok()),
            Err(e) => {
                prop_assert_eq!(e.reason.as_str(), "parse_error");
                prop_assert!(e.detail.starts_with("invalid JSON at column "), "{}", e.detail);
            }
        }
    }

    #[test]
    fn a_valid_json_object_line_decodes_to_its_value(
        fields in prop::collection::btree_map("[a-z\"é\\\\]{0,6}", json_value(), 0..6),
        pretty_spaces in any::<bool>(),
    ) {
        let value = Value::Object(fields.into_iter().collect::<Map<_, _>>());
        let mut text = serde_json::to_string(&value).unwrap();
        if pretty_spaces {
            text = format!("  {text}\t ");
        }
        let d = Decoder::jsonl();
        let r = d.decode(&line(text.clone())).unwrap();
        prop_assert_eq!(&r.json(), &value);
        prop_assert_eq!(&r.pos, &pos());
        // Decoding is a function: the same line, the same value.
        prop_assert_eq!(d.decode(&line(text)).unwrap().json(), value);
    }

    #[test]
    fn csv_rows_never_panic(
        headers in prop::collection::vec("[a-c]{1,2}", 0..5),
        fields in prop::collection::vec("\\PC{0,8}|-?[0-9]{1,20}(\\.[0-9]{0,3})?|(?i:true|false)| ", 0..6),
        types in prop::collection::btree_map("[a-c]{1,2}", column_type(), 0..4),
    ) {
        let d = Decoder::new(Format::Csv, types.clone());
        let raw = Raw::Row {
            pos: pos(),
            headers: headers.clone().into(),
            fields: fields.clone(),
        };
        match d.decode(&raw) {
            Ok(r) => {
                prop_assert_eq!(headers.len(), fields.len());
                let json = r.json();
                let m = json.as_object().expect("a row is an object");
                // Duplicate headers: the last field wins.
                let distinct: std::collections::BTreeSet<&String> = headers.iter().collect();
                prop_assert_eq!(m.len(), distinct.len());
                for (h, f) in headers.iter().zip(&fields) {
                    if headers.iter().filter(|x| *x == h).count() > 1 {
                        continue;
                    }
                    let v = &m[h.as_str()];
                    if f.is_empty() {
                        prop_assert_eq!(v, &Value::Null);
                        continue;
                    }
                    match types.get(h).copied().unwrap_or(ColumnType::String) {
                        ColumnType::String => prop_assert_eq!(v, &Value::String(f.clone())),
                        ColumnType::Int => prop_assert_eq!(v.as_i64(), f.trim().parse::<i64>().ok()),
                        ColumnType::Float => prop_assert_eq!(v.as_f64(), f.trim().parse::<f64>().ok()),
                        ColumnType::Bool => prop_assert_eq!(
                            v.as_bool(),
                            Some(f.trim().eq_ignore_ascii_case("true"))
                        ),
                    }
                }
            }
            Err(e) => prop_assert_eq!(e.reason.as_str(), "parse_error"),
        }
    }

    #[test]
    fn typed_csv_fields_decode_to_their_values(
        i in any::<i64>(),
        x in -1e12f64..1e12,
        b in any::<bool>(),
        s in "\\PC{1,10}",
        upper in any::<bool>(),
    ) {
        let types = BTreeMap::from([
            ("i".to_string(), ColumnType::Int),
            ("x".to_string(), ColumnType::Float),
            ("b".to_string(), ColumnType::Bool),
        ]);
        let d = Decoder::new(Format::Csv, types);
        let bool_text = if upper { b.to_string().to_uppercase() } else { b.to_string() };
        let raw = Raw::Row {
            pos: pos(),
            headers: vec!["i".to_string(), "x".into(), "b".into(), "s".into()].into(),
            fields: vec![i.to_string(), x.to_string(), bool_text, s.clone()],
        };
        let r = d.decode(&raw).unwrap();
        let r = r.json();
        prop_assert_eq!(r["i"].as_i64(), Some(i));
        prop_assert_eq!(r["x"].as_f64(), Some(x));
        prop_assert_eq!(r["b"].as_bool(), Some(b));
        prop_assert_eq!(r["s"].as_str(), Some(s.as_str()));
    }

    #[test]
    fn a_ready_record_passes_through(v in json_value()) {
        let rec = Record::from_json(&v.clone(), pos());
        for d in [Decoder::jsonl(), Decoder::lines(), Decoder::new(Format::Csv, BTreeMap::new())] {
            prop_assert_eq!(d.decode(&Raw::Record(rec.clone())).unwrap(), rec.clone());
        }
    }
}
