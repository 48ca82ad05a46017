//! The `sqlite` sink: the embedded default store.
//!
//! Each record becomes one row: the columns are the record's top-level
//! fields of the same name (a missing field is NULL). Each batch the engine
//! hands over is written in one immediate transaction, so a write that
//! returns is durable (WAL, `synchronous=NORMAL`) and a batch is all or
//! nothing. With a `key`, writes are upserts (`INSERT ... ON CONFLICT (key)
//! DO UPDATE`), so running a pipeline twice over the same input leaves the
//! same rows.
//!
//! # Values that do not fit
//! An `integer` column takes JSON integers (and floats with no fractional
//! part), a `real` column any JSON number; anything else in them is an
//! error. A `text` column takes strings as they are and other values as
//! JSON text; a `json` column stores any value as JSON text. JSON null is
//! SQL NULL everywhere.
//!
//! With a `key`, a record whose key column is missing or null does not fit
//! either. SQLite would store it as a new row on every write (a NULL never
//! equals another; in a single `integer` key it becomes the next free
//! rowid, which a later record's real key can then overwrite), so every
//! rerun or `--resume` would add it again.
//!
//! A record that does not fit is not written: the records before it are
//! committed, and the write fails with an error naming the record's
//! position and the column, giving back the rest of the batch with that
//! record first ([`weir::WriteError::bad_item`]; the sink contract only
//! allows a suffix). The engine dead-letters that record alone and writes
//! the rest, unless the output's policy is to fail (the default of outputs
//! in a pipeline file: `on_error: dead_letter` on the output keeps the run
//! going). To keep good records out of the dead letters, check types
//! upstream (a `validate` processor).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::value::{self, Val as Value};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

use crate::error::ConfigError;
use crate::record::Record;
use crate::sources::BuildContext;

/// The SQL type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SqlType {
    /// 64-bit integer (`INTEGER`).
    Integer,
    /// Floating point (`REAL`).
    Real,
    /// Text (`TEXT`); non-string values are stored as JSON text.
    Text,
    /// Any JSON value, stored as JSON text (`TEXT`).
    Json,
}

impl SqlType {
    fn sql(self) -> &'static str {
        match self {
            SqlType::Integer => "INTEGER",
            SqlType::Real => "REAL",
            SqlType::Text | SqlType::Json => "TEXT",
        }
    }
}

/// Columns in the order they were written in the pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Columns(pub Vec<(String, SqlType)>);

impl<'de> serde::Deserialize<'de> for Columns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Columns;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of column name to integer|real|text|json")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Columns, A::Error> {
                let mut cols: Vec<(String, SqlType)> = Vec::new();
                while let Some((name, ty)) = map.next_entry::<String, SqlType>()? {
                    if cols.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!("duplicate column '{name}'")));
                    }
                    cols.push((name, ty));
                }
                Ok(Columns(cols))
            }
        }
        d.deserialize_map(V)
    }
}

/// How long a write waits for another connection's lock when
/// `busy_timeout_ms` is not set: long enough to ride out another writer's
/// transaction or a WAL checkpoint, short enough that a database held by a
/// stuck process is reported while someone is still watching.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest `busy_timeout_ms`: a day. SQLite counts it in an `int` of
/// milliseconds (rusqlite panics beyond 2^31 - 1, about 24.8 days), and a
/// write that waits longer than a day for a lock is a hang, not a wait.
pub const MAX_BUSY_TIMEOUT_MS: u64 = 86_400_000;

/// Writes records as rows of a SQLite table, creating the database file and
/// the table when they do not exist.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqliteSink {
    /// The database file, relative to the pipeline file's directory. It and
    /// its parent directories are created when missing.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    /// The table to write to; created when missing.
    pub table: String,
    /// The columns, in order: `name: integer|real|text|json`. Each is filled
    /// from the record's top-level field of the same name (missing: NULL).
    #[schemars(with = "std::collections::BTreeMap<String, SqlType>")]
    pub columns: Columns,
    /// Columns that identify a row (the table's primary key). With a key,
    /// a record whose key exists updates that row instead of adding one, so
    /// reruns are idempotent. Default: none (plain inserts).
    #[serde(default)]
    pub key: Vec<String>,
    /// How long a write waits for another connection's lock (another
    /// process writing to the same database) before it fails, in
    /// milliseconds, from 0 (fail at once) to 86400000 (a day). Raise it
    /// when other writers hold long transactions; the write then fails with
    /// "database ... is locked by another connection" and the output's
    /// `on_error` decides what follows. Default: 5000.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub busy_timeout_ms: Option<Spanned<u64>>,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl SqliteSink {
    /// A minimal configuration.
    pub const EXAMPLE: &str = "path: out/orders.db\ntable: orders\ncolumns:\n  id: integer\n  user: text\n  amount: real\n  tags: json\nkey: [id]\n";

    /// The `CREATE TABLE IF NOT EXISTS` statement.
    pub fn create_sql(&self) -> String {
        let mut cols: Vec<String> = self
            .columns
            .0
            .iter()
            .map(|(n, t)| format!("{} {}", quote(n), t.sql()))
            .collect();
        if !self.key.is_empty() {
            let key: Vec<String> = self.key.iter().map(|k| quote(k)).collect();
            cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
        }
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            quote(&self.table),
            cols.join(", ")
        )
    }

    /// The insert (or upsert, with a key) statement.
    pub fn insert_sql(&self) -> String {
        let names: Vec<String> = self.columns.0.iter().map(|(n, _)| quote(n)).collect();
        let params: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote(&self.table),
            names.join(", "),
            params.join(", ")
        );
        if !self.key.is_empty() {
            let key: Vec<String> = self.key.iter().map(|k| quote(k)).collect();
            let sets: Vec<String> = self
                .columns
                .0
                .iter()
                .filter(|(n, _)| !self.key.contains(n))
                .map(|(n, _)| format!("{0} = excluded.{0}", quote(n)))
                .collect();
            if sets.is_empty() {
                sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", key.join(", ")));
            } else {
                sql.push_str(&format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    key.join(", "),
                    sets.join(", ")
                ));
            }
        }
        sql
    }

    /// How long a write waits for a lock.
    ///
    /// # Errors
    /// A [`ConfigError`] at `busy_timeout_ms` when it exceeds
    /// [`MAX_BUSY_TIMEOUT_MS`].
    pub fn busy_timeout(&self) -> Result<Duration, ConfigError> {
        match &self.busy_timeout_ms {
            None => Ok(DEFAULT_BUSY_TIMEOUT),
            Some(ms) if ms.value > MAX_BUSY_TIMEOUT_MS => Err(ConfigError::at(
                format!(
                    "sqlite sink: busy_timeout_ms must be at most {MAX_BUSY_TIMEOUT_MS} (a day), not {}",
                    ms.value
                ),
                ms,
            )),
            Some(ms) => Ok(Duration::from_millis(ms.value)),
        }
    }

    /// Checks the options without opening the database (`weir check`).
    ///
    /// # Errors
    /// An empty table name, a key that is not a column, a busy timeout out
    /// of range, and the like.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.busy_timeout()?;
        if self.table.is_empty() {
            return Err(ConfigError::new("sqlite sink: 'table' is empty"));
        }
        if self.columns.0.is_empty() {
            return Err(ConfigError::new("sqlite sink: 'columns' is empty"));
        }
        for (i, k) in self.key.iter().enumerate() {
            if !self.columns.0.iter().any(|(n, _)| n == k) {
                return Err(ConfigError::new(format!(
                    "sqlite sink: key column '{k}' is not in 'columns'"
                )));
            }
            if self.key[..i].contains(k) {
                return Err(ConfigError::new(format!(
                    "sqlite sink: key column '{k}' is listed twice"
                )));
            }
        }
        Ok(())
    }

    /// Opens (creating) the database and the table; returns the sink.
    ///
    /// # Errors
    /// A [`ConfigError`] when the options are inconsistent (a key column not
    /// in `columns`), or the database cannot be created, opened or written
    /// (read-only, locked, not a database), or the table exists with columns
    /// or keys that do not match.
    pub fn build(&self, ctx: &BuildContext) -> Result<SqliteWriter, ConfigError> {
        self.check()?;
        let given = self.path.value.as_str();
        if given.is_empty() {
            return Err(ConfigError::at("sqlite sink: path is empty", &self.path));
        }
        let full = ctx.base_dir.join(given);
        self.open_at(&full, given)
            .map_err(|msg| ConfigError::at(msg, &self.path))
    }

    /// Opens the database at `full` (named `shown` in messages).
    fn open_at(&self, full: &Path, shown: &str) -> Result<SqliteWriter, String> {
        if let Some(dir) = full.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                format!(
                    "sqlite sink: cannot create directory {}: {e}",
                    dir.display()
                )
            })?;
        }
        if let Ok(meta) = std::fs::metadata(full)
            && meta.permissions().readonly()
        {
            return Err(format!("sqlite sink: database file {shown} is read-only"));
        }
        let fail = |e: rusqlite::Error| format!("sqlite sink: {}", describe(&e, shown));
        let conn = Connection::open(full).map_err(fail)?;
        let busy = self.busy_timeout().map_err(|e| e.message)?;
        conn.busy_timeout(busy).map_err(fail)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .map_err(fail)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(fail)?;
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(format!("sqlite sink: database file {shown} is read-only"));
        }
        conn.execute_batch(&self.create_sql()).map_err(fail)?;
        let insert = self.insert_sql();
        conn.prepare_cached(&insert).map_err(|e| {
            format!(
                "sqlite sink: table {} in {shown} does not fit the configuration: {e}",
                self.table
            )
        })?;
        Ok(SqliteWriter {
            conn,
            shown: shown.to_string(),
            path: full.to_path_buf(),
            insert,
            columns: self.columns.0.clone(),
            key: self.key.clone(),
            rows: 0,
        })
    }
}

/// An open SQLite sink: implements [`weir::Sink<Record>`]; its output is
/// the number of records written (inserted or updated).
pub struct SqliteWriter {
    conn: Connection,
    shown: String,
    path: PathBuf,
    insert: String,
    columns: Vec<(String, SqlType)>,
    /// The key columns: a record needs a value in each.
    key: Vec<String>,
    rows: u64,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// A rusqlite error in words, naming the file.
fn describe(e: &rusqlite::Error, shown: &str) -> String {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            format!("database {shown} is locked by another connection")
        }
        Some(ErrorCode::ReadOnly) => format!("database {shown} is read-only"),
        Some(ErrorCode::NotADatabase) => format!("{shown} is not a SQLite database"),
        Some(ErrorCode::CannotOpen) => format!("cannot open database {shown}: {e}"),
        _ => format!("database {shown}: {e}"),
    }
}

/// A short rendering of a value for an error message.
fn short(v: &Value) -> String {
    let s = value::to_text(v);
    if s.len() <= 40 {
        s
    } else {
        let mut end = 40;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

fn to_sql(v: &Value, ty: SqlType) -> Result<SqlValue, &'static str> {
    Ok(match (v, ty) {
        (Value::Null, _) => SqlValue::Null,
        (Value::Num(_), SqlType::Integer) => match value::as_i64(v) {
            Some(i) => SqlValue::Integer(i),
            None => match value::as_f64(v) {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => SqlValue::Integer(f as i64),
                _ => return Err("an integer"),
            },
        },
        (_, SqlType::Integer) => return Err("an integer"),
        (Value::Num(_), SqlType::Real) => match value::as_f64(v) {
            Some(f) => SqlValue::Real(f),
            None => return Err("a number"),
        },
        (_, SqlType::Real) => return Err("a number"),
        (Value::TStr(_) | Value::BStr(_), SqlType::Text) => match value::as_str(v) {
            Some(s) => SqlValue::Text(s.to_owned()),
            None => SqlValue::Text(value::to_text(v)),
        },
        (other, SqlType::Text | SqlType::Json) => SqlValue::Text(value::to_text(other)),
    })
}

impl SqliteWriter {
    /// The row for one record.
    fn row(&self, r: &Record) -> Result<Vec<SqlValue>, String> {
        let Value::Obj(_) = &r.value else {
            return Err(format!(
                "record at {} is not an object, cannot write it to table columns",
                r.pos
            ));
        };
        // A NULL key is a new row on every write (see "Values that do not
        // fit"): refuse it, so that reruns and resumes stay idempotent.
        for k in &self.key {
            let what = match value::get(&r.value, k) {
                None => "missing",
                Some(Value::Null) => "null",
                Some(_) => continue,
            };
            return Err(format!("record at {}: key column {k} is {what}", r.pos));
        }
        self.columns
            .iter()
            .map(|(name, ty)| match value::get(&r.value, name) {
                None => Ok(SqlValue::Null),
                Some(v) => to_sql(v, *ty).map_err(|want| {
                    format!(
                        "record at {}: column {name}: expected {want}, got {}",
                        r.pos,
                        short(v)
                    )
                }),
            })
            .collect()
    }

    /// Writes rows in one transaction.
    fn insert(&mut self, rows: &[Vec<SqlValue>]) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(&self.insert)?;
            for row in rows {
                stmt.execute(rusqlite::params_from_iter(row.iter()))?;
            }
        }
        tx.commit()
    }

    /// Records written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes a batch synchronously; see [`weir::Sink::write`].
    ///
    /// # Errors
    /// The items not written: all of them when the transaction failed
    /// (locked, read-only, disk full), or the suffix from the first record
    /// whose values do not fit its columns.
    pub fn write_batch(&mut self, items: Vec<Record>) -> Result<(), weir::WriteError<Record>> {
        let mut rows = Vec::with_capacity(items.len());
        let mut bad = None;
        for (i, r) in items.iter().enumerate() {
            match self.row(r) {
                Ok(row) => rows.push(row),
                Err(e) => {
                    bad = Some((i, e));
                    break;
                }
            }
        }
        if !rows.is_empty() {
            if let Err(e) = self.insert(&rows) {
                let msg = format!("writing to {}", describe(&e, &self.shown));
                return Err(weir::WriteError::all(items, msg));
            }
            self.rows += rows.len() as u64;
        }
        match bad {
            None => Ok(()),
            Some((i, msg)) => {
                let mut items = items;
                let unwritten = items.split_off(i);
                // The bad record alone is dead-lettered; the rest is retried.
                Err(weir::WriteError::bad_item(unwritten, msg))
            }
        }
    }
}

impl weir::Sink<Record> for SqliteWriter {
    type Output = u64;

    async fn write(&mut self, items: Vec<Record>) -> Result<(), weir::WriteError<Record>> {
        self.write_batch(items)
    }

    async fn finish(self) -> Result<u64, weir::BoxError> {
        let rows = self.rows;
        let shown = self.shown;
        self.conn
            .close()
            .map_err(|(_, e)| format!("closing {}", describe(&e, &shown)))?;
        Ok(rows)
    }

    fn blocking(&self) -> bool {
        true
    }
}

impl crate::registry::Documented for SqliteSink {
    const EXAMPLE: &'static str = SqliteSink::EXAMPLE;
}

impl crate::registry::SinkComponent for SqliteSink {
    fn check(&self, _ctx: &BuildContext) -> Result<(), ConfigError> {
        SqliteSink::check(self)
    }

    fn attach(
        &self,
        ctx: &BuildContext,
        name: &str,
        input: weir::Flow<Record>,
        policy: weir::ErrorPolicy,
    ) -> Result<(), ConfigError> {
        input
            .sink(name, SqliteSink::build(self, ctx)?)
            .on_error(policy);
        Ok(())
    }

    fn writes(&self) -> Option<crate::registry::Written<'_>> {
        Some(crate::registry::Written {
            path: &self.path,
            shared: Some("sqlite"),
        })
    }

    fn resume(&self) -> crate::registry::Resume {
        if self.key.is_empty() {
            crate::registry::Resume::MayDuplicate(
                "has no `key`; rows written after the last checkpoint may be written twice",
            )
        } else {
            crate::registry::Resume::Exact
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_builds() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: SqliteSink = serde_saphyr::from_str(SqliteSink::EXAMPLE).unwrap();
        assert_eq!(cfg.columns.0[0], ("id".to_string(), SqlType::Integer));
        assert_eq!(cfg.columns.0[3], ("tags".to_string(), SqlType::Json));
        let ctx = BuildContext {
            input: "db".into(),
            base_dir: dir.path().to_path_buf(),
            state: None,
        };
        let w = cfg.build(&ctx).unwrap();
        assert_eq!(w.rows(), 0);
        assert!(dir.path().join("out/orders.db").is_file());
    }

    #[test]
    fn sql_text() {
        let cfg: SqliteSink = serde_saphyr::from_str(SqliteSink::EXAMPLE).unwrap();
        assert_eq!(
            cfg.insert_sql(),
            "INSERT INTO \"orders\" (\"id\", \"user\", \"amount\", \"tags\") VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (\"id\") DO UPDATE SET \"user\" = excluded.\"user\", \
             \"amount\" = excluded.\"amount\", \"tags\" = excluded.\"tags\""
        );
    }

    #[test]
    fn values() {
        assert_eq!(
            to_sql(
                &crate::value::from_json(&serde_json::json!(3.0)),
                SqlType::Integer
            ),
            Ok(SqlValue::Integer(3))
        );
        assert!(
            to_sql(
                &crate::value::from_json(&serde_json::json!(3.5)),
                SqlType::Integer
            )
            .is_err()
        );
        assert!(
            to_sql(
                &crate::value::from_json(&serde_json::json!("3")),
                SqlType::Real
            )
            .is_err()
        );
        assert_eq!(
            to_sql(
                &crate::value::from_json(&serde_json::json!([1])),
                SqlType::Json
            ),
            Ok(SqlValue::Text("[1]".into()))
        );
        assert_eq!(
            to_sql(
                &crate::value::from_json(&serde_json::json!(null)),
                SqlType::Json
            ),
            Ok(SqlValue::Null)
        );
    }
}
