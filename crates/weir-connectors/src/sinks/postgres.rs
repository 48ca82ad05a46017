//! The `postgres` sink: records as rows of a PostgreSQL table.
//!
//! Options follow the `sqlite` sink's: each record becomes one row whose
//! columns are the record's top-level fields of the same name (a missing
//! field is NULL); the table is created when missing (only then: a role
//! that may write to an existing table but not create one in its schema
//! writes; sinks creating it at the same moment all write to the one
//! created); with a `key`, writes
//! are upserts (`INSERT ... ON CONFLICT (key) DO UPDATE`), so running a
//! pipeline twice over the same input leaves the same rows; without one
//! they are appended: one `COPY ... FROM STDIN` per batch when the table
//! takes COPY as it would take inserts (a plain table without row-level
//! security or INSERT rules; see `copy_fits`), plain inserts otherwise.
//!
//! # How a batch is written
//! Each batch the engine hands over is one transaction: the rows go as one
//! array per column, `INSERT ... SELECT ... FROM unnest($1, $2, ...)`, a
//! statement prepared once per connection, its parameters in binary. A
//! batch holding one key twice is cut before the second occurrence into
//! statements of distinct keys, so the later record wins as it would row
//! by row (so is a batch over 16 MiB of values); such a batch is
//! wrapped in `BEGIN`/`COMMIT`, while a batch of one statement is its own
//! implicit transaction (one round trip). A write returns only after the
//! commit, so records are acknowledged (and `--resume` checkpoints move)
//! only once they are in the table.
//!
//! # What the server refuses, and what fails
//! - **A record that cannot be a row** is dead-lettered with the reason,
//!   the rest of its batch written: locally, a record that is not an
//!   object, a key that is missing or null, a value its column's type
//!   cannot take, text holding a NUL character (PostgreSQL's text cannot);
//!   on the server, any error that may be about one row: a data exception
//!   or constraint violation (SQLSTATE classes 22, 23 and 54), a trigger
//!   refusing it (P0001), anything but the classes of a lost server (08,
//!   53, 57, 58, 40, a lock timeout) or of a statement or table that
//!   cannot work (42, 28, 3D, 25, 0A, 26, 2D, 34, 55, F0): the
//!   transaction is rolled back and the batch
//!   written again, halving the rows under savepoints down to the first
//!   record the server refuses, which is dead-lettered with the server's
//!   SQLSTATE and message ([`weir::WriteError::bad_item`]; the engine
//!   writes the rest after it, so each refused record costs one more
//!   transaction).
//! - **A lost server** (the connection closes or stops answering for
//!   `timeout_secs`, a shutdown, too many connections, a serialization
//!   failure, a lock not granted within the role's `lock_timeout`, also
//!   while the sink first connects, once it has authenticated) is waited for: the sink reconnects with exponential backoff
//!   and jitter and writes the whole batch again, for up to
//!   `reconnect_for_secs`. A batch slower than `timeout_secs` (waiting on
//!   a lock) is not left running on the server to commit behind the
//!   sink's back: each connection sets `statement_timeout` a little below
//!   `timeout_secs`, and a batch still running when the sink gives up is
//!   cancelled before the connection is dropped. A commit whose answer was
//!   lost (or that a cancel came too late for) may have happened: with a
//!   `key` writing the batch again changes nothing; without one its rows
//!   can be there twice. A drain (the first Ctrl-C)
//!   waits for the server too; a second signal ends the process.
//! - Keys that PostgreSQL finds equal but that differ here (`-0.0` and
//!   `0.0`, JSON objects with keys in another order) are not cut apart:
//!   the statement fails (SQLSTATE 21000) and the halving writes them in
//!   separate statements, in order, so they are still written.
//! - **A refused sink** fails the run whatever the output's `on_error`
//!   ([`weir::WriteError::fatal`]; dead-lettering every record would not
//!   help): wrong credentials, a database that does not exist, a server
//!   unreachable when the sink first connects (within `connect_timeout_secs`),
//!   a table whose columns do not fit the options (checked on each new
//!   connection: a configured column missing, or of a type other than the
//!   one the sink creates or a wider one holding every value unchanged, so
//!   no value is ever converted by an assignment cast), a server gone for longer
//!   than `reconnect_for_secs`. The sink connects at its first batch (or at
//!   the end of a run that had none), so such errors come within seconds of
//!   the start, and `weir run` exits 1.
//!
//! Connection strings in messages show host, port and database, never the
//! password. `sslmode=require` connects through TLS, verifying the
//! server's certificate (see [`crate::pg`]); the default (`sslmode=prefer`)
//! connects without TLS.

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::Range;
use std::time::{Duration, Instant};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient, Statement};

use crate::error::ConfigError;
use crate::http_client;
use crate::pg::{Tls, db_text, quote, shown};
use crate::record::Record;
use crate::sources::BuildContext;
use crate::value::{self, Val as Value};

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PgType {
    /// 64-bit integer (`BIGINT`): JSON integers, and floats with no
    /// fractional part.
    Integer,
    /// Floating point (`DOUBLE PRECISION`): any JSON number.
    Real,
    /// Text (`TEXT`): strings as they are, other values as JSON text.
    Text,
    /// Any JSON value (`JSONB`).
    Json,
    /// `true` or `false` (`BOOLEAN`).
    Boolean,
}

impl PgType {
    fn sql(self) -> &'static str {
        match self {
            PgType::Integer => "BIGINT",
            PgType::Real => "DOUBLE PRECISION",
            PgType::Text => "TEXT",
            PgType::Json => "JSONB",
            PgType::Boolean => "BOOLEAN",
        }
    }

    /// Its name in `columns`.
    fn name(self) -> &'static str {
        match self {
            PgType::Integer => "integer",
            PgType::Real => "real",
            PgType::Text => "text",
            PgType::Json => "json",
            PgType::Boolean => "boolean",
        }
    }

    /// Whether a column of an existing table, its type as `format_type`
    /// shows it, takes every value of this type unchanged: the type the
    /// sink creates, or a wider one (`numeric` for integers, `varchar`
    /// without a length for text, `json` for JSON, stored as `jsonb`
    /// would store it).
    fn stored_exactly_in(self, column: &str) -> bool {
        match self {
            PgType::Integer => matches!(column, "bigint" | "numeric"),
            PgType::Real => column == "double precision",
            PgType::Text => matches!(column, "text" | "character varying"),
            PgType::Json => matches!(column, "jsonb" | "json"),
            PgType::Boolean => column == "boolean",
        }
    }

    /// The array type its values travel in (JSON as text, cast on the
    /// server).
    fn array(self) -> Type {
        match self {
            PgType::Integer => Type::INT8_ARRAY,
            PgType::Real => Type::FLOAT8_ARRAY,
            PgType::Text | PgType::Json => Type::TEXT_ARRAY,
            PgType::Boolean => Type::BOOL_ARRAY,
        }
    }
}

/// Columns in the order they were written in the pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgColumns(pub Vec<(String, PgType)>);

impl<'de> serde::Deserialize<'de> for PgColumns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PgColumns;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of column name to integer|real|text|json|boolean")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PgColumns, A::Error> {
                let mut cols: Vec<(String, PgType)> = Vec::new();
                while let Some((name, ty)) = map.next_entry::<String, PgType>()? {
                    if cols.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!("duplicate column '{name}'")));
                    }
                    cols.push((name, ty));
                }
                Ok(PgColumns(cols))
            }
        }
        d.deserialize_map(V)
    }
}

/// Writes records as rows of a PostgreSQL table, creating the table when
/// it does not exist.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSink {
    /// The connection string (`postgresql://user:password@host:port/db`
    /// or `host=... user=... dbname=...`). Prefer `url_env`, which keeps
    /// the password out of the pipeline file; exactly one of the two.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// The name of an environment variable holding the connection string.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub url_env: Option<Spanned<String>>,
    /// With `sslmode=require` in the connection string: a PEM file of
    /// certificates to trust besides the system's (a private CA), relative
    /// to the pipeline file. TLS verifies the server's certificate and
    /// name; `sslmode=prefer` (the default) and `disable` connect without
    /// TLS.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<Spanned<String>>,
    /// The table to write to (one name, in the connection's search path:
    /// `public` by default); created when missing.
    pub table: String,
    /// The columns, in order: `name: integer|real|text|json|boolean`. Each
    /// is filled from the record's top-level field of the same name
    /// (missing: NULL).
    #[schemars(with = "std::collections::BTreeMap<String, PgType>")]
    pub columns: PgColumns,
    /// Columns that identify a row (the table's primary key). With a key,
    /// a record whose key exists updates that row instead of adding one, so
    /// reruns and `--resume` are exact. Default: none (append-only inserts;
    /// an existing table then needs no unique index).
    #[serde(default)]
    pub key: Vec<String>,
    /// Seconds connecting and authenticating may take. At the start, a
    /// server that does not answer within it fails the run; later, a
    /// timed-out attempt is one more try within `reconnect_for_secs`.
    /// Default: 5.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: f64,
    /// Seconds one batch's transaction may take before the connection is
    /// taken as lost (and the batch written again on a new one). The
    /// server is told to give up a statement a little before (its
    /// `statement_timeout`), and a batch still running then is cancelled,
    /// so a batch written again was not committed by the first attempt
    /// (unless the answer to its commit was lost on the way).
    /// Default: 60.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Seconds the sink keeps reconnecting to a server it lost before the
    /// run fails (what was not committed is then not acknowledged, for
    /// `--resume` to write again). Default: 300.
    #[serde(default = "default_reconnect_for")]
    pub reconnect_for_secs: f64,
}

fn default_connect_timeout() -> f64 {
    5.0
}
fn default_timeout() -> f64 {
    60.0
}
fn default_reconnect_for() -> f64 {
    300.0
}

/// Payload bytes per statement at most: a batch of large records is cut
/// into several statements (one transaction still), keeping each protocol
/// message far below PostgreSQL's 1 GiB limit.
const STATEMENT_BYTES: usize = 16 << 20;

/// The largest text or JSON value PostgreSQL stores (1 GiB minus a
/// header); longer values are refused before they are sent.
const MAX_FIELD_BYTES: usize = (1 << 30) - 64;

impl PostgresSink {
    /// A minimal configuration.
    pub const EXAMPLE: &str = "url_env: DATABASE_URL\ntable: orders\ncolumns:\n  id: integer\n  user: text\n  amount: real\n  tags: json\nkey: [id]\n";

    /// The `COPY` statement of an append-only sink (text format: the
    /// server parses each value into the column's type, so a wider
    /// existing column takes it as an insert would).
    pub fn copy_sql(&self) -> String {
        let names: Vec<String> = self.columns.0.iter().map(|(n, _)| quote(n)).collect();
        format!(
            "COPY {} ({}) FROM STDIN",
            quote(&self.table),
            names.join(", ")
        )
    }

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

    /// The insert (or upsert, with a key) statement: one array parameter
    /// per column.
    pub fn insert_sql(&self) -> String {
        let cols = &self.columns.0;
        let names: Vec<String> = cols.iter().map(|(n, _)| quote(n)).collect();
        let arrays: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, (_, t))| {
                let ty = match t.array() {
                    Type::INT8_ARRAY => "int8[]",
                    Type::FLOAT8_ARRAY => "float8[]",
                    Type::BOOL_ARRAY => "bool[]",
                    _ => "text[]",
                };
                format!("${}::{ty}", i + 1)
            })
            .collect();
        let select: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, (_, t))| match t {
                PgType::Json => format!("u.c{i}::jsonb"),
                _ => format!("u.c{i}"),
            })
            .collect();
        let aliases: Vec<String> = (0..cols.len()).map(|i| format!("c{i}")).collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS u({})",
            quote(&self.table),
            names.join(", "),
            select.join(", "),
            arrays.join(", "),
            aliases.join(", ")
        );
        if !self.key.is_empty() {
            let key: Vec<String> = self.key.iter().map(|k| quote(k)).collect();
            let sets: Vec<String> = cols
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

    /// The parsed connection settings.
    fn config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        crate::pg::config(self.url.as_ref(), self.url_env.as_ref(), "postgres sink")
    }

    /// Checks the options without connecting (`weir check`).
    ///
    /// # Errors
    /// No or two connection strings, an unset variable, a string that does
    /// not parse, a `ca_file` without `sslmode=require`, an empty table name or column list, a key
    /// that is not a column, timeouts out of range.
    pub fn check(&self) -> Result<(), ConfigError> {
        let config = self.config()?;
        if let Some(ca) = &self.ca_file
            && config.get_ssl_mode() != tokio_postgres::config::SslMode::Require
        {
            return Err(ConfigError::at(
                "postgres sink: ca_file needs sslmode=require in the connection string",
                ca,
            ));
        }
        if self.table.is_empty() {
            return Err(ConfigError::new("postgres sink: 'table' is empty"));
        }
        if self.columns.0.is_empty() {
            return Err(ConfigError::new("postgres sink: 'columns' is empty"));
        }
        for (i, k) in self.key.iter().enumerate() {
            if !self.columns.0.iter().any(|(n, _)| n == k) {
                return Err(ConfigError::new(format!(
                    "postgres sink: key column '{k}' is not in 'columns'"
                )));
            }
            if self.key[..i].contains(k) {
                return Err(ConfigError::new(format!(
                    "postgres sink: key column '{k}' is listed twice"
                )));
            }
        }
        for (name, secs) in [
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("timeout_secs", self.timeout_secs),
            ("reconnect_for_secs", self.reconnect_for_secs),
        ] {
            if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
                return Err(ConfigError::new(format!(
                    "postgres sink: {name} must be a number of seconds above 0 (at most a day)"
                )));
            }
        }
        Ok(())
    }

    /// The sink, not yet connected: it connects at its first write.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn build(&self, ctx: &BuildContext) -> Result<PostgresWriter, ConfigError> {
        self.check()?;
        let mut config = self.config()?;
        let tls = crate::pg::tls(
            &config,
            self.ca_file.as_ref(),
            &ctx.base_dir,
            "postgres sink",
        )?;
        let connect_timeout = Duration::from_secs_f64(self.connect_timeout_secs);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("weir");
        }
        Ok(PostgresWriter {
            shown: shown(&config),
            config,
            tls,
            create: self.create_sql(),
            insert: self.insert_sql(),
            copy: self.key.is_empty().then(|| self.copy_sql()),
            table: self.table.clone(),
            columns: self.columns.0.clone(),
            key: self
                .key
                .iter()
                .map(|k| self.columns.0.iter().position(|(n, _)| n == k))
                .collect::<Option<Vec<usize>>>()
                .expect("checked: keys are columns"),
            connect_timeout,
            timeout: Duration::from_secs_f64(self.timeout_secs),
            statement_timeout_ms: statement_timeout_ms(Duration::from_secs_f64(self.timeout_secs)),
            reconnect_for: Duration::from_secs_f64(self.reconnect_for_secs),
            conn: None,
            connected_once: false,
            rows: 0,
            reconnects: 0,
        })
    }
}

/// The server's `statement_timeout` for a client that waits `timeout`: a
/// tenth less, at most a second less, so the server aborts a statement
/// (a batch waiting on a lock) before the client gives up on it and
/// writes the batch again. A shorter one set for the role or database is
/// kept.
fn statement_timeout_ms(timeout: Duration) -> u64 {
    let margin = (timeout / 10).min(Duration::from_secs(1));
    u64::try_from((timeout - margin).as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, i32::MAX as u64)
}

/// An open connection and its prepared statement.
struct Conn {
    /// Always there until [`Conn::close`] takes it.
    client: Option<Client>,
    insert: Statement,
    /// Whether this append-only sink's table takes COPY like an insert
    /// (see `copy_fits`).
    copy: bool,
    /// The task driving the connection's socket: aborted when the
    /// connection is dropped (lost, timed out), so nothing lingers.
    task: tokio::task::JoinHandle<()>,
    tls: Tls,
}

impl Conn {
    fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("open until closed")
    }

    /// Asks the server to cancel what this connection is running (a
    /// separate connection, waited for at most `within`). Best effort: a
    /// statement that already finished is not undone.
    async fn cancel(&mut self, within: Duration) {
        let token = self.client().cancel_token();
        let _ = tokio::time::timeout(within, crate::pg::cancel(token, &self.tls)).await;
    }

    /// Says goodbye to the server (a Terminate message, sent when the
    /// client is dropped) and waits a moment for the socket to close.
    async fn close(mut self) {
        drop(self.client.take());
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.task).await;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An open postgres sink: implements [`weir::Sink<Record>`]; its output
/// is the number of records written (inserted or updated).
pub struct PostgresWriter {
    config: tokio_postgres::Config,
    tls: Tls,
    /// The server, for messages.
    shown: String,
    create: String,
    insert: String,
    /// Without a key: the `COPY ... FROM STDIN` each batch tries first.
    copy: Option<String>,
    table: String,
    columns: Vec<(String, PgType)>,
    /// Indexes of the key columns in `columns`.
    key: Vec<usize>,
    connect_timeout: Duration,
    timeout: Duration,
    /// Milliseconds, set on each connection (see [`statement_timeout_ms`]).
    statement_timeout_ms: u64,
    reconnect_for: Duration,
    conn: Option<Conn>,
    /// Whether a connection ever succeeded: before, every failure to
    /// connect is final (a wrong password, no server); after, it is a
    /// server that went away and is waited for.
    connected_once: bool,
    rows: u64,
    reconnects: u64,
}

impl std::fmt::Debug for PostgresWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresWriter")
            .field("server", &self.shown)
            .field("table", &self.table)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// What went wrong with a statement, by who is to blame.
#[derive(Debug)]
enum Failure {
    /// Maybe one row: a data exception, a constraint violation, a trigger
    /// refusing it.
    Data(String),
    /// The connection: worth reconnecting and trying again.
    Lost(String),
    /// The destination: trying again will not help.
    Refused(String),
}

/// Sorts an error of a statement on an open connection.
fn classify(e: &tokio_postgres::Error) -> Failure {
    let text = db_text(e);
    let Some(code) = e.code() else {
        // No server error: the socket closed or failed.
        return Failure::Lost(text);
    };
    let c = code.code();
    // A lock not granted within the role's `lock_timeout` (someone holds
    // the table): transient, like a serialization failure.
    if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
    {
        return Failure::Lost(text);
    }
    match &c[..2] {
        // Connection exception, insufficient resources, operator
        // intervention (shutdown, cancel), system error, transaction
        // rollback (serialization, deadlock).
        "08" | "53" | "57" | "58" | "40" => Failure::Lost(text),
        // What cannot be about one row: the statement or the table
        // (syntax, a missing column, no privilege), credentials, the
        // database, a read-only transaction (a standby), a feature not
        // supported, a prepared statement gone, an object in use.
        "42" | "28" | "3D" | "25" | "0A" | "26" | "2D" | "34" | "55" | "F0" => {
            Failure::Refused(text)
        }
        // Anything else may be one row's doing: a data exception, a
        // constraint (22, 23), a value too large for an index row (54),
        // one key twice in a statement (21, when equal keys differ as
        // JSON text), a trigger or rule refusing it (P0001 from RAISE
        // EXCEPTION, any SQLSTATE a function raises). The batch is halved
        // down to the first row the server refuses; when every row is
        // refused, each is dead-lettered with the server's message.
        _ => Failure::Data(text),
    }
}

/// A batch's rows, one array per column, borrowing the records' text.
struct Encoded<'a> {
    cols: Vec<Col<'a>>,
    /// Where statements are cut: before a key seen earlier in the same
    /// statement, and after [`STATEMENT_BYTES`]. Ascending, without 0.
    cuts: Vec<usize>,
    len: usize,
}

enum Col<'a> {
    Int(Vec<Option<i64>>),
    Real(Vec<Option<f64>>),
    Text(Vec<Option<Cow<'a, str>>>),
    Bool(Vec<Option<bool>>),
}

/// One value, before it joins its column.
enum Cell<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
    Bool(bool),
}

impl Cell<'_> {
    fn size(&self) -> usize {
        match self {
            Cell::Text(s) => s.len() + 4,
            _ => 8,
        }
    }

    fn hash_into(&self, h: &mut impl Hasher) {
        match self {
            Cell::Null => 0u8.hash(h),
            Cell::Int(i) => (1u8, i).hash(h),
            Cell::Real(f) => (2u8, f.to_bits()).hash(h),
            Cell::Text(s) => (3u8, s.as_ref()).hash(h),
            Cell::Bool(b) => (4u8, b).hash(h),
        }
    }
}

/// Whether a string anywhere in `v` (keys included) holds a NUL.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::TStr(s) | Value::BStr(s) => s.contains(&0),
        Value::Arr(a) => a.iter().any(has_nul),
        Value::Obj(o) => o.iter().any(|(k, x)| has_nul(k) || has_nul(x)),
        _ => false,
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

fn cell<'a>(v: &'a Value, ty: PgType) -> Result<Cell<'a>, String> {
    let text = |s: Cow<'a, str>| -> Result<Cell<'a>, String> {
        if s.len() > MAX_FIELD_BYTES {
            return Err(format!(
                "a value of {} bytes, over PostgreSQL's 1 GiB field limit",
                s.len()
            ));
        }
        Ok(Cell::Text(s))
    };
    let want = |what: &str| format!("expected {what}, got {}", short(v));
    match (v, ty) {
        (Value::Null, _) => Ok(Cell::Null),
        (_, PgType::Text | PgType::Json) if has_nul(v) => Err(
            "text holds a NUL character (\\0), which PostgreSQL text and jsonb cannot store".into(),
        ),
        (Value::Num(_), PgType::Integer) => match value::as_i64(v) {
            Some(i) => Ok(Cell::Int(i)),
            None => match value::as_f64(v) {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Cell::Int(f as i64)),
                _ => Err(want("a 64-bit integer")),
            },
        },
        (_, PgType::Integer) => Err(want("an integer")),
        (Value::Num(_), PgType::Real) => match value::as_f64(v) {
            Some(f) => Ok(Cell::Real(f)),
            None => Err(want("a number")),
        },
        (_, PgType::Real) => Err(want("a number")),
        (Value::Bool(b), PgType::Boolean) => Ok(Cell::Bool(*b)),
        (_, PgType::Boolean) => Err(want("true or false")),
        (Value::TStr(s) | Value::BStr(s), PgType::Text) => text(value::text(s)),
        (other, PgType::Text | PgType::Json) => text(Cow::Owned(value::to_text(other))),
    }
}

/// Row `i` of a column in COPY's text format: `\N` for NULL, text with
/// backslash, tab, newline and carriage return escaped.
fn copy_text(c: &Col<'_>, i: usize, out: &mut String) {
    use std::fmt::Write as _;
    match c {
        Col::Int(v) => match v[i] {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("\\N"),
        },
        // Debug: the shortest text that reads back as the same double.
        Col::Real(v) => match v[i] {
            Some(f) => {
                let _ = write!(out, "{f:?}");
            }
            None => out.push_str("\\N"),
        },
        Col::Bool(v) => match v[i] {
            Some(b) => out.push(if b { 't' } else { 'f' }),
            None => out.push_str("\\N"),
        },
        Col::Text(v) => match &v[i] {
            Some(t) => {
                for ch in t.chars() {
                    match ch {
                        '\\' => out.push_str("\\\\"),
                        '\t' => out.push_str("\\t"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        c => out.push(c),
                    }
                }
            }
            None => out.push_str("\\N"),
        },
    }
}

/// How a transaction ended.
enum Written {
    /// Every row is committed.
    All,
    /// The rows before this one are committed; the server refused this
    /// one (why); the rest were not written.
    RefusedAt(usize, String),
}

impl PostgresWriter {
    /// The batch as column arrays, up to the first record that cannot be a
    /// row (its index and why).
    fn encode<'a>(&self, items: &'a [Record]) -> (Encoded<'a>, Option<(usize, String)>) {
        let mut cols: Vec<Col<'a>> = self
            .columns
            .iter()
            .map(|(_, t)| match t {
                PgType::Integer => Col::Int(Vec::with_capacity(items.len())),
                PgType::Real => Col::Real(Vec::with_capacity(items.len())),
                PgType::Text | PgType::Json => Col::Text(Vec::with_capacity(items.len())),
                PgType::Boolean => Col::Bool(Vec::with_capacity(items.len())),
            })
            .collect();
        let hasher = std::hash::RandomState::new();
        let mut keys: HashSet<u64> = HashSet::new();
        let mut cuts = Vec::new();
        let mut bytes = 0;
        let mut row: Vec<Cell<'a>> = Vec::with_capacity(cols.len());
        let mut bad = None;
        for (i, r) in items.iter().enumerate() {
            row.clear();
            if let Err(why) = self.row(r, &mut row) {
                bad = Some((i, why));
                break;
            }
            let size: usize = row.iter().map(Cell::size).sum();
            if size > MAX_FIELD_BYTES {
                bad = Some((
                    i,
                    format!(
                        "record at {}: a row of {size} bytes, over PostgreSQL's 1 GiB message limit",
                        r.pos
                    ),
                ));
                break;
            }
            let mut cut = i > 0 && bytes + size > STATEMENT_BYTES;
            if !self.key.is_empty() {
                let mut h = hasher.build_hasher();
                for &k in &self.key {
                    row[k].hash_into(&mut h);
                }
                let k = h.finish();
                if cut {
                    keys.clear();
                }
                // A hash seen before may be another key that collides: a
                // cut too many, never one too few.
                if !keys.insert(k) {
                    cut = true;
                    keys.clear();
                    keys.insert(k);
                }
            }
            if cut {
                cuts.push(i);
                bytes = 0;
            }
            bytes += size;
            for (col, c) in cols.iter_mut().zip(row.drain(..)) {
                match (col, c) {
                    (Col::Int(v), Cell::Int(x)) => v.push(Some(x)),
                    (Col::Int(v), _) => v.push(None),
                    (Col::Real(v), Cell::Real(x)) => v.push(Some(x)),
                    (Col::Real(v), _) => v.push(None),
                    (Col::Text(v), Cell::Text(x)) => v.push(Some(x)),
                    (Col::Text(v), _) => v.push(None),
                    (Col::Bool(v), Cell::Bool(x)) => v.push(Some(x)),
                    (Col::Bool(v), _) => v.push(None),
                }
            }
        }
        let len = bad.as_ref().map_or(items.len(), |(i, _)| *i);
        (Encoded { cols, cuts, len }, bad)
    }

    /// One record's cells, in column order.
    fn row<'a>(&self, r: &'a Record, row: &mut Vec<Cell<'a>>) -> Result<(), String> {
        let Value::Obj(_) = &r.value else {
            return Err(format!(
                "record at {} is not an object, cannot write it to table columns",
                r.pos
            ));
        };
        // A NULL key never conflicts, so every rerun would add the row
        // again: refuse it, as the sqlite sink does.
        for &k in &self.key {
            let name = &self.columns[k].0;
            let what = match value::get(&r.value, name) {
                None => "missing",
                Some(Value::Null) => "null",
                Some(_) => continue,
            };
            return Err(format!("record at {}: key column {name} is {what}", r.pos));
        }
        for (name, ty) in &self.columns {
            row.push(match value::get(&r.value, name) {
                None => Cell::Null,
                Some(v) => cell(v, *ty)
                    .map_err(|why| format!("record at {}: column {name}: {why}", r.pos))?,
            });
        }
        Ok(())
    }

    /// Records written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Times the sink tried to connect again after losing the server.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Connects, creates the table and prepares the statement.
    async fn connect(&self) -> Result<Conn, Failure> {
        // The connect timeout bounds connecting and authenticating;
        // `timeout` bounds what follows (creating the table, preparing).
        let connecting = crate::pg::connect(&self.config, &self.tls);
        let (client, task) = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(self.not_connected(e.code(), db_text(&e))),
            Err(_) => {
                let why = format!(
                    "no answer within {} s (connect_timeout_secs)",
                    self.connect_timeout.as_secs_f64()
                );
                return Err(self.not_connected(None, why));
            }
        };
        match tokio::time::timeout(self.timeout, self.prepare(&client)).await {
            Ok(Ok((insert, copy))) => Ok(Conn {
                client: Some(client),
                insert,
                copy,
                task,
                tls: self.tls.clone(),
            }),
            Ok(Err(f)) => {
                task.abort();
                Err(f)
            }
            Err(_) => {
                let token = client.cancel_token();
                let _ =
                    tokio::time::timeout(self.connect_timeout, crate::pg::cancel(token, &self.tls))
                        .await;
                task.abort();
                // Authenticated, then silent (a lock held, a busy server):
                // waited for like a lost server.
                Err(Failure::Lost(format!(
                    "{}: no answer within {} s preparing table {} (timeout_secs)",
                    self.shown,
                    self.timeout.as_secs_f64(),
                    self.table
                )))
            }
        }
    }

    /// Why connecting (before any statement) failed, and whether it is
    /// worth waiting for.
    fn not_connected(&self, code: Option<&SqlState>, why: String) -> Failure {
        let class = code.map(|c| &c.code()[..2]);
        let starting = code == Some(&SqlState::CANNOT_CONNECT_NOW)
            || code == Some(&SqlState::TOO_MANY_CONNECTIONS);
        let why = format!("cannot connect to {}: {why}", self.shown);
        match class {
            // Credentials, a missing database: never worth waiting for.
            Some("28" | "3D") => Failure::Refused(why),
            _ if self.connected_once || starting => Failure::Lost(why),
            _ => Failure::Refused(why),
        }
    }

    /// On a new connection: creates the table if missing, checks that its
    /// columns fit, prepares the insert.
    async fn prepare(&self, client: &Client) -> Result<(Statement, bool), Failure> {
        let fail = |e: tokio_postgres::Error| match classify(&e) {
            Failure::Lost(why) => Failure::Lost(why),
            // The table does not fit (no unique index on the key, no
            // privilege).
            Failure::Data(why) | Failure::Refused(why) => Failure::Refused(format!(
                "table {} in {} does not fit the configuration: {why}",
                self.table, self.shown
            )),
        };
        // Ours, or a shorter one the role or database sets (0: none).
        client
            .batch_execute(&format!(
                "SELECT pg_catalog.set_config('statement_timeout', \
                 (SELECT CASE WHEN s.setting::bigint = 0 THEN {ms} \
                 ELSE LEAST(s.setting::bigint, {ms}) END \
                 FROM pg_catalog.pg_settings s WHERE s.name = 'statement_timeout')::text, false)",
                ms = self.statement_timeout_ms
            ))
            .await
            .map_err(fail)?;
        let mut found = self.table_columns(client).await.map_err(fail)?;
        let mut raced = None;
        // Only a missing table is created: `CREATE TABLE IF NOT EXISTS`
        // needs the CREATE privilege on the schema even when the table is
        // there, which a role that may only write to it lacks.
        if found.is_none() {
            if let Err(e) = client.batch_execute(&self.create).await {
                // Two sessions creating the same table at once (outputs,
                // workers, runs): `IF NOT EXISTS` does not cover the race,
                // the later one fails on the catalog's unique indexes once
                // the first commits. Its table is there then: write to it.
                let code = e.code();
                if code == Some(&SqlState::UNIQUE_VIOLATION)
                    || code == Some(&SqlState::DUPLICATE_TABLE)
                    || code == Some(&SqlState::DUPLICATE_OBJECT)
                {
                    raced = Some(db_text(&e));
                } else {
                    return Err(fail(e));
                }
            }
            found = self.table_columns(client).await.map_err(fail)?;
        }
        let Some(found) = found else {
            return Err(Failure::Refused(format!(
                "table {} in {}: not found after creating it{}",
                self.table,
                self.shown,
                raced.map(|why| format!(" ({why})")).unwrap_or_default()
            )));
        };
        self.check_columns(&found).map_err(|why| {
            Failure::Refused(format!(
                "table {} in {} does not fit the configuration: {why}",
                self.table, self.shown
            ))
        })?;
        let types: Vec<Type> = self.columns.iter().map(|(_, t)| t.array()).collect();
        let insert = client
            .prepare_typed(&self.insert, &types)
            .await
            .map_err(fail)?;
        let copy = self.copy.is_some() && self.copy_fits(client, &found).await.map_err(fail)?;
        Ok((insert, copy))
    }

    /// Whether COPY writes what an INSERT would: a plain or partitioned
    /// table (not a view), without row-level security (COPY FROM refuses
    /// it) or INSERT rules (COPY ignores them), and no configured `json`
    /// column stored as `json` (an insert goes through jsonb and
    /// normalises the text; COPY would keep it as sent).
    async fn copy_fits(
        &self,
        client: &Client,
        found: &[(String, String)],
    ) -> Result<bool, tokio_postgres::Error> {
        let json_as_sent = self.columns.iter().any(|(name, ty)| {
            *ty == PgType::Json && found.iter().any(|(n, t)| n == name && t == "json")
        });
        if json_as_sent {
            return Ok(false);
        }
        let row = client
            .query_one(
                "SELECT c.relkind IN ('r', 'p') AND NOT c.relrowsecurity                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w                                  WHERE w.ev_class = c.oid AND w.ev_type = '3')                  FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1::text)::oid",
                &[&quote(&self.table)],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The table's columns and their types (`format_type`), or `None`
    /// when there is no such table in the search path.
    async fn table_columns(
        &self,
        client: &Client,
    ) -> Result<Option<Vec<(String, String)>>, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT r.oid IS NOT NULL, a.attname::text, \
                 pg_catalog.format_type(a.atttypid, a.atttypmod) \
                 FROM (SELECT pg_catalog.to_regclass($1::text)::oid AS oid) r \
                 LEFT JOIN pg_catalog.pg_attribute a \
                 ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped",
                &[&quote(&self.table)],
            )
            .await?;
        if !rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
            return Ok(None);
        }
        Ok(Some(
            rows.iter()
                .filter_map(|r| Some((r.get::<_, Option<String>>(1)?, r.get(2))))
                .collect(),
        ))
    }

    /// Refuses a table lacking a configured column or holding it with a
    /// type its values would be converted to (an assignment cast: a real
    /// rounded into an integer column).
    fn check_columns(&self, found: &[(String, String)]) -> Result<(), String> {
        for (name, ty) in &self.columns {
            let Some((_, has)) = found.iter().find(|(n, _)| n == name) else {
                return Err(format!("column {name}: no such column in the table"));
            };
            if !ty.stored_exactly_in(has) {
                return Err(format!(
                    "column {name} is {has} in the table, but {} ({}) in `columns`; \
                     its values would be converted: change the column or `columns`",
                    ty.name(),
                    ty.sql().to_lowercase()
                ));
            }
        }
        Ok(())
    }

    /// Inserts `range` of the rows, a statement per piece between cuts.
    async fn insert(
        tx: &impl GenericClient,
        stmt: &Statement,
        rows: &Encoded<'_>,
        range: Range<usize>,
    ) -> Result<(), tokio_postgres::Error> {
        if range.is_empty() {
            return Ok(());
        }
        let mut start = range.start;
        let ends = rows
            .cuts
            .iter()
            .copied()
            .filter(|&c| c > range.start && c < range.end)
            .chain(std::iter::once(range.end));
        for end in ends {
            let r = start..end;
            let params: Vec<Box<dyn ToSql + Sync + Send + '_>> = rows
                .cols
                .iter()
                .map(|c| -> Box<dyn ToSql + Sync + Send + '_> {
                    match c {
                        Col::Int(v) => Box::new(&v[r.clone()]),
                        Col::Real(v) => Box::new(&v[r.clone()]),
                        Col::Text(v) => Box::new(&v[r.clone()]),
                        Col::Bool(v) => Box::new(&v[r.clone()]),
                    }
                })
                .collect();
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|b| -> &(dyn ToSql + Sync) { b.as_ref() })
                .collect();
            tx.execute(stmt, &refs).await?;
            start = end;
        }
        Ok(())
    }

    /// The rows through `COPY ... FROM STDIN` in text format, sent in
    /// chunks of about 64 KiB.
    async fn copy(
        client: &Client,
        sql: &str,
        rows: &Encoded<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        use futures::SinkExt as _;
        const CHUNK: usize = 64 * 1024;
        let sink = client.copy_in::<_, bytes::Bytes>(sql).await?;
        futures::pin_mut!(sink);
        let mut buf = String::with_capacity(CHUNK + 1024);
        for i in 0..rows.len {
            for (j, c) in rows.cols.iter().enumerate() {
                if j > 0 {
                    buf.push('\t');
                }
                copy_text(c, i, &mut buf);
                if buf.len() >= CHUNK {
                    // Messages of at most CHUNK bytes, cut anywhere (a row
                    // may span several): a huge value never makes one
                    // message over the server's limit; its row is then
                    // refused as a row, not as a broken connection.
                    let mut data = bytes::Bytes::from(std::mem::replace(
                        &mut buf,
                        String::with_capacity(CHUNK + 1024),
                    ));
                    while !data.is_empty() {
                        let part = data.split_to(data.len().min(CHUNK));
                        sink.send(part).await?;
                    }
                }
            }
            buf.push('\n');
        }
        if !buf.is_empty() {
            sink.send(bytes::Bytes::from(buf)).await?;
        }
        sink.finish().await.map(|_| ())
    }

    /// One transaction for the rows; on a data error, a second one that
    /// finds (halving under savepoints) the first row the server refuses
    /// and commits the rows before it.
    async fn transaction(
        conn: &mut Conn,
        rows: &Encoded<'_>,
        copy: Option<&str>,
    ) -> Result<Written, Failure> {
        let stmt = conn.insert.clone();
        let first = if let Some(copy) = copy {
            // Append-only: one COPY, its own transaction (multi-row heap
            // inserts, no statement size limit); a refused row fails it
            // whole, and the search below finds it with inserts.
            Self::copy(conn.client(), copy, rows).await
        } else if !rows.cuts.iter().any(|&c| c < rows.len) {
            // One statement: its own implicit transaction, committed when
            // it succeeds (one round trip instead of three).
            Self::insert(conn.client(), &stmt, rows, 0..rows.len).await
        } else {
            let tx = conn
                .client()
                .transaction()
                .await
                .map_err(|e| classify(&e))?;
            match Self::insert(&tx, &stmt, rows, 0..rows.len).await {
                Ok(()) => tx.commit().await,
                Err(e) => {
                    // A lost connection shows again at the next call.
                    let _ = tx.rollback().await;
                    Err(e)
                }
            }
        };
        match first {
            Ok(()) => return Ok(Written::All),
            Err(e) => match classify(&e) {
                Failure::Data(_) => {}
                other => return Err(other),
            },
        }
        // Ranges still to try, the next on top; a refused range is
        // replaced by its halves, so ranges are tried in row order and
        // everything before a range is written when it is tried.
        let mut tx = conn
            .client()
            .transaction()
            .await
            .map_err(|e| classify(&e))?;
        let mut todo: Vec<Range<usize>> = Vec::new();
        todo.push(0..rows.len);
        let mut refused = None;
        while let Some(r) = todo.pop() {
            let sp = tx.transaction().await.map_err(|e| classify(&e))?;
            match Self::insert(&sp, &stmt, rows, r.clone()).await {
                Ok(()) => sp.commit().await.map_err(|e| classify(&e))?,
                Err(e) => {
                    let why = match classify(&e) {
                        Failure::Data(why) => why,
                        other => return Err(other),
                    };
                    sp.rollback().await.map_err(|e| classify(&e))?;
                    if r.len() == 1 {
                        refused = Some((r.start, why));
                        break;
                    }
                    let mid = r.start + r.len() / 2;
                    todo.push(mid..r.end);
                    todo.push(r.start..mid);
                }
            }
        }
        match tx.commit().await {
            Ok(()) => {}
            // A deferred constraint, checked at commit: no row of its own
            // to blame.
            Err(e) => {
                return Err(match classify(&e) {
                    Failure::Data(why) => {
                        Failure::Refused(format!("the server refused the commit of a batch: {why}"))
                    }
                    other => other,
                });
            }
        }
        Ok(match refused {
            None => Written::All,
            Some((i, why)) => Written::RefusedAt(i, why),
        })
    }

    /// Writes the rows, reconnecting while the server is away (up to
    /// `reconnect_for`).
    async fn write_rows(&mut self, rows: &Encoded<'_>) -> Result<Written, String> {
        let mut lost_since: Option<Instant> = None;
        let mut delay = Duration::from_millis(100);
        loop {
            let attempt = async {
                if self.conn.is_none() {
                    self.conn = Some(self.connect().await?);
                    self.connected_once = true;
                }
                let conn = self.conn.as_mut().expect("connected");
                let r = tokio::time::timeout(
                    self.timeout,
                    Self::transaction(conn, rows, self.copy.as_deref().filter(|_| conn.copy)),
                )
                .await;
                match r {
                    Ok(Err(Failure::Refused(why))) => Err(Failure::Refused(format!(
                        "writing to table {} in {}: {why}",
                        self.table, self.shown
                    ))),
                    Ok(r) => r,
                    Err(_) => {
                        // The server may still be running the batch (its
                        // statement timeout covers one statement, and an
                        // answer can be lost): cancel it before dropping
                        // the connection, or it could commit after the
                        // batch is written again, twice without a key.
                        conn.cancel(self.connect_timeout).await;
                        Err(Failure::Lost(format!(
                            "no answer within {} s",
                            self.timeout.as_secs_f64()
                        )))
                    }
                }
            };
            let why = match attempt.await {
                Ok(w) => {
                    if lost_since.is_some() {
                        tracing::warn!(server = %self.shown, "postgres sink: reconnected; writing on");
                    }
                    return Ok(w);
                }
                Err(Failure::Refused(why)) => {
                    self.conn = None;
                    return Err(why);
                }
                // Not expected here (data errors are found row by row):
                // a failure of the destination.
                Err(Failure::Data(why)) => {
                    self.conn = None;
                    return Err(why);
                }
                Err(Failure::Lost(why)) => why,
            };
            self.conn = None;
            let since = *lost_since.get_or_insert_with(|| {
                tracing::warn!(server = %self.shown, error = %why, "postgres sink: lost the server; reconnecting");
                Instant::now()
            });
            if since.elapsed() >= self.reconnect_for {
                return Err(format!(
                    "{} unreachable for {} s (reconnect_for_secs): {why}",
                    self.shown,
                    self.reconnect_for.as_secs_f64()
                ));
            }
            tokio::time::sleep(http_client::pause(delay, None)).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            self.reconnects += 1;
        }
    }

    /// Writes a batch; see [`weir::Sink::write`].
    ///
    /// # Errors
    /// From the first record that cannot be a row or that the server
    /// refuses ([`weir::WriteError::bad_item`], the records before it
    /// committed); every record when the destination refuses the sink or
    /// stayed away too long ([`weir::WriteError::fatal`]).
    pub async fn write_batch(
        &mut self,
        mut items: Vec<Record>,
    ) -> Result<(), weir::WriteError<Record>> {
        let (rows, local_bad) = self.encode(&items);
        let n = rows.len;
        let written = if n > 0 {
            self.write_rows(&rows).await
        } else {
            Ok(Written::All)
        };
        drop(rows);
        match written {
            Err(why) => Err(weir::WriteError::fatal(items, why)),
            Ok(Written::RefusedAt(i, why)) => {
                self.rows += i as u64;
                let rest = items.split_off(i);
                let why = format!("record at {}: refused by the server: {why}", rest[0].pos);
                Err(weir::WriteError::bad_item(rest, why))
            }
            Ok(Written::All) => {
                self.rows += n as u64;
                match local_bad {
                    None => Ok(()),
                    Some((i, why)) => Err(weir::WriteError::bad_item(items.split_off(i), why)),
                }
            }
        }
    }

    /// Connects if no batch did (creating the table), then closes.
    ///
    /// # Errors
    /// The server refuses the sink or cannot be reached.
    pub async fn close(mut self) -> Result<u64, String> {
        if self.conn.is_none() && !self.connected_once {
            let empty = Encoded {
                cols: Vec::new(),
                cuts: Vec::new(),
                len: 0,
            };
            // Connects and commits an empty transaction.
            self.write_rows(&empty).await?;
        }
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
        Ok(self.rows)
    }
}

impl weir::Sink<Record> for PostgresWriter {
    type Output = u64;

    async fn write(&mut self, items: Vec<Record>) -> Result<(), weir::WriteError<Record>> {
        self.write_batch(items).await
    }

    async fn finish(self) -> Result<u64, weir::BoxError> {
        Ok(self.close().await?)
    }
}

impl crate::registry::Documented for PostgresSink {
    const EXAMPLE: &'static str = PostgresSink::EXAMPLE;
}

impl crate::registry::SinkComponent for PostgresSink {
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigError> {
        PostgresSink::check(self)?;
        // The certificate file too, read where the run would read it.
        crate::pg::tls(
            &self.config()?,
            self.ca_file.as_ref(),
            &ctx.base_dir,
            "postgres sink",
        )
        .map(|_| ())
    }

    fn attach(
        &self,
        ctx: &BuildContext,
        name: &str,
        input: weir::Flow<Record>,
        policy: weir::ErrorPolicy,
    ) -> Result<(), ConfigError> {
        input
            .sink(name, PostgresSink::build(self, ctx)?)
            .on_error(policy);
        Ok(())
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
mod tests;
