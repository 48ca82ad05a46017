//! Reading a pass from SQLite, on a blocking thread.

use std::path::Path;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OpenFlags};

use super::{Emitter, Ended, Pass, Row};
use crate::pg::quote;
use crate::value::{self, Val};

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
    let idx = {
        let probe = conn
            .prepare(&format!("SELECT * FROM ({}) AS weir_q LIMIT 0", p.query))
            .map_err(at)?;
        cursor_columns(p.cursor, &names(&probe))?
    };
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
    let mut after: Option<Vec<SqlValue>> = match &p.after {
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
        let mut stmt = conn.prepare(&sql).map_err(at)?;
        let names = names(&stmt);
        let params = after.clone().unwrap_or_default();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(at)?;
        let mut n = 0u64;
        let mut page_last = None;
        while let Some(row) = rows.next().map_err(at)? {
            n += 1;
            let mut values = Vec::with_capacity(idx.len());
            let mut json = Vec::with_capacity(idx.len());
            for &i in &idx {
                let v: SqlValue = row.get(i).map_err(at)?;
                json.push(match &v {
                    SqlValue::Integer(i) => serde_json::Value::from(*i),
                    SqlValue::Real(f) => serde_json::Value::from(*f),
                    SqlValue::Text(s) => serde_json::Value::from(s.as_str()),
                    SqlValue::Null => serde_json::Value::Null,
                    SqlValue::Blob(_) => {
                        return Err(format!(
                            "cursor column '{}' holds a BLOB, which cannot order rows here",
                            names[i]
                        ));
                    }
                });
                values.push(v);
            }
            let cursor = serde_json::Value::Array(json).to_string();
            let value = object(row, &names);
            if !e.send_blocking(Row {
                value,
                cursor: Some(cursor.clone()),
            }) {
                return Ok(Ended::Stopped);
            }
            page_last = Some((values, cursor));
        }
        if let Some((values, cursor)) = page_last {
            after = Some(values);
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
fn parse_cursor(text: &str, columns: usize) -> Result<Vec<SqlValue>, String> {
    let bad = || format!("the saved cursor {text} does not fit {columns} cursor column(s)");
    let v: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
    let serde_json::Value::Array(items) = v else {
        return Err(bad());
    };
    if items.len() != columns {
        return Err(bad());
    }
    items
        .into_iter()
        .map(|v| match v {
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(SqlValue::Integer(i)),
                None => n.as_f64().map(SqlValue::Real).ok_or_else(bad),
            },
            serde_json::Value::String(s) => Ok(SqlValue::Text(s)),
            _ => Err(bad()),
        })
        .collect()
}

fn names(stmt: &rusqlite::Statement<'_>) -> Vec<String> {
    stmt.column_names().map(str::to_owned).collect()
}

/// A row as an object, or why it cannot be one.
fn object(row: &rusqlite::Row<'_>, names: &[String]) -> Result<Val, (&'static str, String)> {
    let mut pairs = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let v = row
            .get_ref(i)
            .map_err(|e| ("sql_value", format!("column '{name}': {e}")))?;
        let v = match v {
            ValueRef::Null => Val::Null,
            ValueRef::Integer(i) => value::int(i),
            ValueRef::Real(f) if f.is_finite() => value::float(f),
            ValueRef::Real(f) => {
                return Err((
                    "sql_value",
                    format!("column '{name}': {f} has no JSON form"),
                ));
            }
            ValueRef::Text(t) => match std::str::from_utf8(t) {
                Ok(s) => value::string(s),
                Err(err) => {
                    return Err((
                        "sql_value",
                        format!(
                            "column '{name}': text that is not UTF-8 (at byte {})",
                            err.valid_up_to()
                        ),
                    ));
                }
            },
            ValueRef::Blob(_) => {
                return Err((
                    "sql_value",
                    format!(
                        "column '{name}' is a BLOB: select hex({name}) or CAST({name} AS TEXT)"
                    ),
                ));
            }
        };
        pairs.push((name.clone(), v));
    }
    Ok(value::object(pairs))
}
