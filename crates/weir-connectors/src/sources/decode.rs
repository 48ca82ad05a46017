//! Decoding: from what a source read ([`Raw`]) to a [`Record`].
//!
//! A [`Decoder`] is cheap to clone and `Send + Sync`: the pipeline runs it as
//! a stage of its own, on several workers. A line that does not decode is
//! rejected with reason `parse_error` (or `invalid_utf8`) and a detail that
//! says what is wrong and where in the line; the record's position says
//! which file and line.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::value::{self, Val as Value};

use crate::error::ProcessError;
use crate::record::Record;
use crate::sources::Raw;

/// How the text a source reads is turned into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON value per line (JSON Lines, ndjson). Blank lines are skipped.
    Jsonl,
    /// Comma-separated values with a header row; each row becomes an object
    /// keyed by the header.
    Csv,
    /// Plain text: each line becomes `{"line": "<text>"}`.
    Lines,
}

impl Format {
    /// The format a file name implies: `.jsonl`/`.ndjson` -> jsonl, `.csv` ->
    /// csv, anything else -> lines. A trailing `.gz` is ignored.
    pub fn from_file_name(name: &str) -> Format {
        let name = name.strip_suffix(".gz").unwrap_or(name);
        let ext = match name.rsplit_once('.') {
            Some((_, ext)) => ext.to_ascii_lowercase(),
            None => String::new(),
        };
        match ext.as_str() {
            "jsonl" | "ndjson" => Format::Jsonl,
            "csv" => Format::Csv,
            _ => Format::Lines,
        }
    }

    /// The name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Lines => "lines",
        }
    }
}

/// The type of a CSV column. Unlisted columns are strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// A 64-bit signed integer, such as `-12`.
    Int,
    /// A finite floating-point number, such as `3.25` or `1e3`.
    Float,
    /// `true` or `false` (any letter case).
    Bool,
    /// Text, as read.
    String,
}

impl ColumnType {
    fn name(self) -> &'static str {
        match self {
            ColumnType::Int => "an int",
            ColumnType::Float => "a float",
            ColumnType::Bool => "a bool",
            ColumnType::String => "a string",
        }
    }
}

/// Turns [`Raw`] items into [`Record`]s.
///
/// * `Raw::Line` in `jsonl`: the line is parsed as one JSON value (any value
///   is accepted; objects are expected downstream).
/// * `Raw::Line` in `lines`: `{"line": "<text>"}`.
/// * `Raw::Row` (csv): an object keyed by the header, in header order. An
///   empty field is `null`; fields of typed columns are parsed, and a field
///   that does not parse is rejected naming the column and the value. A row
///   whose field count differs from the header's is rejected.
/// * `Raw::Record`: passed through.
#[derive(Debug, Clone)]
pub struct Decoder {
    format: Format,
    columns: Arc<HashMap<String, ColumnType>>,
}

impl Decoder {
    /// A decoder for `format`; `columns` types CSV columns (ignored by the
    /// other formats).
    pub fn new(format: Format, columns: BTreeMap<String, ColumnType>) -> Self {
        Decoder {
            format,
            columns: Arc::new(columns.into_iter().collect()),
        }
    }

    /// A JSON Lines decoder.
    pub fn jsonl() -> Self {
        Decoder::new(Format::Jsonl, BTreeMap::new())
    }

    /// A plain-text decoder.
    pub fn lines() -> Self {
        Decoder::new(Format::Lines, BTreeMap::new())
    }

    /// The format it decodes.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Decodes one item.
    ///
    /// # Errors
    /// A [`ProcessError`] with reason `parse_error`: invalid JSON (with the
    /// column in the line), a CSV field that does not fit its column type, a
    /// CSV row with the wrong number of fields; with reason `invalid_utf8`:
    /// a line that is not UTF-8 (`Raw::NotUtf8`); with its own reason: an
    /// item the source refused (`Raw::Refused`).
    pub fn decode(&self, raw: &Raw) -> Result<Record, ProcessError> {
        match raw {
            Raw::Line { pos, text } => {
                let value = match self.format {
                    Format::Lines => value::object([("line", value::string(text.as_str()))]),
                    Format::Jsonl | Format::Csv => parse_json(text)?,
                };
                Ok(Record::new(value, pos.clone()))
            }
            Raw::Row {
                pos,
                headers,
                fields,
            } => Ok(Record::new(self.decode_row(headers, fields)?, pos.clone())),
            Raw::NotUtf8 { detail, .. } => Err(ProcessError::new("invalid_utf8", detail.clone())),
            Raw::Refused { reason, detail, .. } => Err(ProcessError::new(*reason, detail.clone())),
            Raw::Record(r) => Ok(r.clone()),
        }
    }

    fn decode_row(&self, headers: &[String], fields: &[String]) -> Result<Value, ProcessError> {
        if headers.len() != fields.len() {
            return Err(ProcessError::new(
                "parse_error",
                format!(
                    "csv row has {} fields, the header has {}",
                    fields.len(),
                    headers.len()
                ),
            ));
        }
        let mut m = value::Map::with_capacity_and_hasher(headers.len(), Default::default());
        for (name, field) in headers.iter().zip(fields) {
            let ty = self
                .columns
                .get(name)
                .copied()
                .unwrap_or(ColumnType::String);
            m.insert(value::string(name.as_str()), parse_field(name, field, ty)?);
        }
        Ok(Value::obj(m))
    }
}

/// Parses one JSON value, with an error that says where in the line.
fn parse_json(text: &str) -> Result<Value, ProcessError> {
    value::parse(text.as_bytes()).map_err(|e| {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let what = full.strip_suffix(&suffix).unwrap_or(&full);
        ProcessError::new(
            "parse_error",
            format!("invalid JSON at column {}: {what}", e.column()),
        )
    })
}

/// Parses a CSV field as `ty`; an empty field is `null`.
fn parse_field(name: &str, field: &str, ty: ColumnType) -> Result<Value, ProcessError> {
    if field.is_empty() {
        return Ok(Value::Null);
    }
    let bad = || {
        ProcessError::new(
            "parse_error",
            format!("column {name}: '{field}' is not {}", ty.name()),
        )
    };
    let t = field.trim();
    Ok(match ty {
        ColumnType::String => value::string(field),
        ColumnType::Int => value::int(t.parse::<i64>().map_err(|_| bad())?),
        ColumnType::Float => {
            let f = t.parse::<f64>().map_err(|_| bad())?;
            if !f.is_finite() {
                return Err(bad());
            }
            value::float(f)
        }
        ColumnType::Bool => {
            if t.eq_ignore_ascii_case("true") {
                Value::Bool(true)
            } else if t.eq_ignore_ascii_case("false") {
                Value::Bool(false)
            } else {
                return Err(bad());
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Position;

    fn pos() -> Arc<Position> {
        Arc::new(Position {
            input: "in".into(),
            file: Some("a.jsonl".into()),
            line: 3,
        })
    }

    #[test]
    fn jsonl_errors_name_the_column() {
        let d = Decoder::jsonl();
        let raw = Raw::Line {
            pos: pos(),
            text: r#"{"a":1 "b":2}"#.into(),
        };
        let e = d.decode(&raw).unwrap_err();
        assert_eq!(e.reason, "parse_error");
        assert!(e.detail.starts_with("invalid JSON at column 8: "), "{e}");
        let ok = Raw::Line {
            pos: pos(),
            text: r#"{"a":1}"#.into(),
        };
        assert_eq!(d.decode(&ok).unwrap().json(), serde_json::json!({"a": 1}));
    }

    #[test]
    fn csv_types() {
        let cols = BTreeMap::from([
            ("n".to_string(), ColumnType::Int),
            ("x".to_string(), ColumnType::Float),
            ("b".to_string(), ColumnType::Bool),
        ]);
        let d = Decoder::new(Format::Csv, cols);
        let headers: Arc<[String]> = vec!["n".into(), "x".into(), "b".into(), "s".into()].into();
        let row = |f: [&str; 4]| Raw::Row {
            pos: pos(),
            headers: headers.clone(),
            fields: f.iter().map(|s| s.to_string()).collect(),
        };
        let r = d.decode(&row(["1", "2.5", "TRUE", ""])).unwrap();
        assert_eq!(
            r.json(),
            serde_json::json!({"n": 1, "x": 2.5, "b": true, "s": null})
        );
        let e = d.decode(&row(["1", "abc", "true", "s"])).unwrap_err();
        assert_eq!(e.detail, "column x: 'abc' is not a float");
        let e = d.decode(&row(["1", "NaN", "true", "s"])).unwrap_err();
        assert_eq!(e.detail, "column x: 'NaN' is not a float");
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(Format::from_file_name("a/b.jsonl.gz"), Format::Jsonl);
        assert_eq!(Format::from_file_name("b.NDJSON"), Format::Jsonl);
        assert_eq!(Format::from_file_name("b.csv"), Format::Csv);
        assert_eq!(Format::from_file_name("b.log.gz"), Format::Lines);
        assert_eq!(Format::from_file_name("README"), Format::Lines);
    }
}
