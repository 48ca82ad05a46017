//! Reading a pass from SQLite, on a blocking thread.
//!
//! An incremental page is read whole before its rows are sent, so the read
//! transaction (and the lock that keeps the application owning the file
//! from writing, in rollback-journal mode) lasts one page, not as long as
//! a slow pipeline takes. A snapshot steps one statement and so holds its
//! read transaction until its last row is sent: that is what makes it one
//! consistent snapshot.
//!
//! Cursor values are kept with their SQLite type, so a row is found again
//! whatever it holds: integers and finite reals as JSON numbers (a real
//! keeps its fraction, `3.0`), text as strings, and what JSON cannot hold
//! as tagged objects: `{"real": "inf"}`, `{"text_hex": ...}` for text that
//! is not UTF-8, `{"blob_hex": ...}`. Such a row is dead-lettered, and the
//! cursor passes it.

use std::path::Path;

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};

use super::{Emitter, Ended, Pass, Row};
use crate::pg::quote;
use crate::value::{self, Val};

/// A cursor value, as SQLite compares it.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Int(i64),
    Real(f64),
    /// Text, as its bytes (not always UTF-8).
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl ToSql for Key {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Key::Int(i) => ValueRef::Integer(*i),
            Key::Real(f) => ValueRef::Real(*f),
            Key::Text(t) => ValueRef::Text(t),
            Key::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl Key {
    fn of(v: ValueRef<'_>) -> Option<Key> {
        match v {
            ValueRef::Null => None,
            ValueRef::Integer(i) => Some(Key::Int(i)),
            ValueRef::Real(f) => Some(Key::Real(f)),
            ValueRef::Text(t) => Some(Key::Text(t.to_vec())),
            ValueRef::Blob(b) => Some(Key::Blob(b.to_vec())),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        use serde_json::{Value, json};
        match self {
            Key::Int(i) => Value::from(*i),
            Key::Real(f) if f.is_finite() => Value::from(*f),
            Key::Real(f) => json!({"real": if *f > 0.0 { "inf" } else { "-inf" }}),
            Key::Text(t) => match std::str::from_utf8(t) {
                Ok(s) => Value::from(s),
                Err(_) => json!({"text_hex": hex(t)}),
            },
            Key::Blob(b) => json!({"blob_hex": hex(b)}),
        }
    }

    fn from_json(v: &serde_json::Value) -> Option<Key> {
        use serde_json::Value;
        match v {
            Value::Number(n) if n.is_i64() => n.as_i64().map(Key::Int),
            Value::Number(n) => n.as_f64().map(Key::Real),
            Value::String(s) => Some(Key::Text(s.as_bytes().to_vec())),
            Value::Object(o) if o.len() == 1 => {
                let (k, v) = o.iter().next()?;
                let v = v.as_str()?;
                match k.as_str() {
                    "real" if v == "inf" => Some(Key::Real(f64::INFINITY)),
                    "real" if v == "-inf" => Some(Key::Real(f64::NEG_INFINITY)),
                    "text_hex" => unhex(v).map(Key::Text),
                    "blob_hex" => unhex(v).map(Key::Blob),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Reads one pass, sending its rows.
///
/// # Errors
/// A database that cannot be opened, a query SQLite refuses, a cursor
/// column the query does not have, a saved cursor that does not parse.
pub(super) fn pass(
    path: &Path,
    p: Pass<'_>,
    first: bool,
    e: &mut Emitter,
) -> Result<Ended, String> {
    if !path.exists() {
        return Err(format!("SQLite database {} does not exist", path.display()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|err| format!("cannot open SQLite database {}: {err}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|err| err.to_string())?;
    let at = |err: rusqlite::Error| format!("SQLite {}: {err}", path.display());
    if p.cursor.is_empty() {
        let mut stmt = conn.prepare(p.query).map_err(at)?;
        let names = names(&stmt);
        let mut rows = stmt.query([]).map_err(at)?;
        while let Some(row) = rows.next().map_err(at)? {
            let value = object(row, &names);
            if !e.send_blocking(Row {
                value,
                cursor: None,
            }) {
                return Ok(Ended::Stopped);
            }
        }
        return Ok(Ended::Done(None));
    }
    let idx = {
        let probe = conn
            .prepare(&format!("SELECT * FROM ({}) AS weir_q LIMIT 0", p.query))
            .map_err(at)?;
        cursor_columns(p.cursor, &names(&probe))?
    };
    let cols: Vec<String> = p
        .cursor
        .iter()
        .map(|c| format!("weir_q.{}", quote(c)))
        .collect();
    let list = cols.join(", ");
    let not_null: Vec<String> = cols.iter().map(|c| format!("{c} IS NOT NULL")).collect();
    let base = format!(
        "SELECT * FROM ({}) AS weir_q WHERE {}",
        p.query,
        not_null.join(" AND ")
    );
    if first {
        let nulls: Vec<String> = cols.iter().map(|c| format!("{c} IS NULL")).collect();
        let sql = format!(
            "SELECT count(*) FROM ({}) AS weir_q WHERE {}",
            p.query,
            nulls.join(" OR ")
        );
        let n: i64 = conn.query_row(&sql, [], |r| r.get(0)).map_err(at)?;
        if n > 0 {
            tracing::warn!(
                "sql input '{}': {n} rows have a NULL cursor column ({}) and are not read",
                e.input,
                p.cursor.join(", ")
            );
        }
    }
    let mut after: Option<Vec<Key>> = match &p.after {
        Some(text) => Some(parse_cursor(text, p.cursor.len())?),
        None => None,
    };
    let mut last = None;
    loop {
        let sql = match &after {
            None => format!("{base} ORDER BY {list} LIMIT {}", p.page_size),
            Some(v) => {
                let params: Vec<String> = (1..=v.len()).map(|i| format!("?{i}")).collect();
                format!(
                    "{base} AND ({list}) > ({}) ORDER BY {list} LIMIT {}",
                    params.join(", "),
                    p.page_size
                )
            }
        };
        // The page, read whole: the statement (and its read lock) ends
        // before the first row waits on the pipeline.
        let page = {
            let mut stmt = conn.prepare(&sql).map_err(at)?;
            let names = names(&stmt);
            let params = after.clone().unwrap_or_default();
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params.iter()))
                .map_err(at)?;
            let mut page = Vec::new();
            while let Some(row) = rows.next().map_err(at)? {
                let mut keys = Vec::with_capacity(idx.len());
                for &i in &idx {
                    let v = row.get_ref(i).map_err(at)?;
                    keys.push(Key::of(v).ok_or_else(|| {
                        format!("cursor column '{}' is NULL where it cannot be", names[i])
                    })?);
                }
                page.push((object(row, &names), keys));
            }
            page
        };
        let n = page.len() as u64;
        for (value, keys) in page {
            let cursor =
                serde_json::Value::Array(keys.iter().map(Key::to_json).collect()).to_string();
            if !e.send_blocking(Row {
                value,
                cursor: Some(cursor.clone()),
            }) {
                return Ok(Ended::Stopped);
            }
            after = Some(keys);
            last = Some(cursor);
        }
        if n < p.page_size {
            return Ok(Ended::Done(last));
        }
    }
}

/// The indexes of the cursor columns among the query's.
fn cursor_columns(cursor: &[String], names: &[String]) -> Result<Vec<usize>, String> {
    cursor
        .iter()
        .map(|c| {
            names.iter().position(|n| n == c).ok_or_else(|| {
                format!(
                    "cursor column '{c}' is not a column of the query (it has: {})",
                    names.join(", ")
                )
            })
        })
        .collect()
}

/// A saved cursor's values.
fn parse_cursor(text: &str, columns: usize) -> Result<Vec<Key>, String> {
    let bad = || format!("the saved cursor {text} does not fit {columns} cursor column(s)");
    let v: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
    let serde_json::Value::Array(items) = v else {
        return Err(bad());
    };
    if items.len() != columns {
        return Err(bad());
    }
    items
        .iter()
        .map(|v| Key::from_json(v).ok_or_else(bad))
        .collect()
}

fn names(stmt: &rusqlite::Statement<'_>) -> Vec<String> {
    stmt.column_names().map(str::to_owned).collect()
}

/// A row as an object, or why it cannot be one: (reason, detail, the row
/// as JSON text with a description in place of each value that has no
/// JSON form).
fn object(
    row: &rusqlite::Row<'_>,
    names: &[String],
) -> Result<Val, (&'static str, String, String)> {
    let mut pairs = Vec::with_capacity(names.len());
    let mut bad: Option<String> = None;
    for (i, name) in names.iter().enumerate() {
        let v = match row.get_ref(i) {
            Ok(v) => v,
            Err(e) => {
                bad.get_or_insert(format!("column '{name}': {e}"));
                pairs.push((name.clone(), value::string("<unreadable>")));
                continue;
            }
        };
        let (v, why) = match v {
            ValueRef::Null => (Val::Null, None),
            ValueRef::Integer(i) => (value::int(i), None),
            ValueRef::Real(f) if f.is_finite() => (value::float(f), None),
            ValueRef::Real(f) => (
                value::string(format!("<real {f}>")),
                Some(format!("column '{name}': {f} has no JSON form")),
            ),
            ValueRef::Text(t) => match std::str::from_utf8(t) {
                Ok(s) => (value::string(s), None),
                Err(err) => (
                    value::string(String::from_utf8_lossy(t)),
                    Some(format!(
                        "column '{name}': text that is not UTF-8 (at byte {})",
                        err.valid_up_to()
                    )),
                ),
            },
            ValueRef::Blob(b) => (
                value::string(format!("<BLOB of {} bytes>", b.len())),
                Some(format!(
                    "column '{name}' is a BLOB: select hex({name}) or CAST({name} AS TEXT)"
                )),
            ),
        };
        if let Some(why) = why {
            bad.get_or_insert(why);
        }
        pairs.push((name.clone(), v));
    }
    let obj = value::object(pairs);
    match bad {
        None => Ok(obj),
        Some(detail) => Err(("sql_value", detail, value::to_text(&obj))),
    }
}
