//! `sql`: rows of a query, from PostgreSQL or SQLite, as records.
//!
//! Two ways to read:
//! - **Incremental** (`cursor: [id]`): rows in the order of the cursor
//!   columns, a page at a time (`WHERE (cursor) > (last) ORDER BY cursor
//!   LIMIT page_size`, each page its own statement, so no transaction is
//!   held open), and the cursor of the last row handled is kept between
//!   runs ([`cursor`]): every run, and every pass of a run with `every`,
//!   reads only rows after it.
//! - **Snapshot** (no cursor): the whole query, read in pages from one
//!   statement (PostgreSQL: a portal in a read-only repeatable-read
//!   transaction; SQLite: one statement stepped), so the rows are one
//!   consistent snapshot however many there are.
//!
//! With `every` the query runs again at each multiple of the interval (a
//! snapshot per interval, or polling for new rows) until the run is
//! stopped or did `runs` passes. The reading happens in a task of its own
//! ([`Reader`]) that sends rows with their acks through a bounded channel,
//! so a slow pipeline holds the reader back (backpressure) and a stopped
//! pipeline stops it.

mod cursor;
mod lite;
mod pg;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;
use tokio::sync::mpsc;
use weir::{Ack, BoxError};

use crate::error::ConfigError;
use crate::record::{Position, Record};
use crate::sources::decode::Decoder;
use crate::sources::{BuildContext, Raw};
use crate::value::{self, Val};

pub use cursor::Progress;

const DEFAULT_PAGE_SIZE: u64 = 1000;
const MAX_PAGE_SIZE: u64 = 1_000_000;

/// Read rows of a PostgreSQL or SQLite query as records, once, at each
/// interval, or incrementally by a cursor kept between runs.
///
/// Each row becomes a JSON object, column name to value. PostgreSQL values
/// are converted by the server (`row_to_json`): numbers, text, booleans,
/// `json`/`jsonb` as JSON, arrays as arrays, times as ISO 8601 text (in
/// UTC). SQLite values: integers, reals, text and NULL as they are; a BLOB
/// (select `hex(col)` instead), a non-finite real or text that is not
/// UTF-8 dead-letters the row (reason `sql_value`, naming the column).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlSource {
    /// A PostgreSQL connection string
    /// (`postgresql://user:pass@host:5432/db`); best in an environment
    /// variable instead (`url_env`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// The environment variable holding the PostgreSQL connection string.
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
    /// A SQLite database file (relative paths from the pipeline file's
    /// directory), opened read-only.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub sqlite: Option<Spanned<String>>,
    /// A table or view to read whole (`SELECT * FROM table`; `schema.table`
    /// in a schema). Give this or `query`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub table: Option<Spanned<String>>,
    /// A `SELECT` query (a trailing `;` is dropped). It is read as a
    /// subquery (`SELECT * FROM (query) AS weir_q ...`; SQLite snapshots
    /// run it as it is), so with `cursor` its own `ORDER BY` gives way to
    /// the cursor's, and a `LIMIT` in it caps what is ever read: leave it
    /// out (`page_size` pages the reads).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub query: Option<Spanned<String>>,
    /// Columns of the query that order its rows (a column or a list, for
    /// example `[updated_at, id]`): rows are read in their order, and the
    /// last handled row's values are kept, so the next run (and the next
    /// pass with `every`) reads only rows after them. Together they must
    /// identify a row (a unique key): rows that tie with the last one read
    /// are not read again. Rows with a NULL cursor column are not read (a
    /// warning counts them). A row that becomes visible after rows with a
    /// later cursor were read (a sequence value taken by a transaction that
    /// commits late) is not read either: use a cursor set at commit, or
    /// leave recent rows out of the query (`WHERE created_at < now() -
    /// interval '1 minute'`). Default: no cursor, every pass reads the
    /// whole query.
    #[serde(default, deserialize_with = "one_or_many")]
    #[schemars(with = "Option<Vec<String>>")]
    pub cursor: Option<Spanned<Vec<String>>>,
    /// Rows per page. Default: 1000.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub page_size: Option<Spanned<u64>>,
    /// Run the query again at each multiple of this interval (`250ms`,
    /// `10s`, `5m`, `1h`): a snapshot per interval, or, with `cursor`,
    /// polling for new rows. The first pass runs at the start; a pass that
    /// takes longer than the interval skips the ticks it overran. Default:
    /// one pass, then the input ends.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub every: Option<Spanned<String>>,
    /// With `every`: end the input after this many passes. Default: run
    /// until stopped.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub runs: Option<Spanned<u64>>,
    /// A field name: each record gets it as `{"at", "pass"}`, the time the
    /// pass started (RFC 3339 in UTC with milliseconds; with `every`, its
    /// tick) and its number in the run, from 1. Default: none.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub meta: Option<Spanned<String>>,
    /// PostgreSQL: seconds to wait for a connection. Default: 5.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub connect_timeout_secs: Option<Spanned<f64>>,
    /// PostgreSQL: seconds a statement (a page) may take before the
    /// connection counts as lost (a server that stopped answering).
    /// Default: 60.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub timeout_secs: Option<Spanned<f64>>,
    /// PostgreSQL: how long to wait for a server that went away mid-run,
    /// reconnecting with backoff, before the run fails. A snapshot that
    /// already sent rows fails at once instead (they would come twice).
    /// Default: 300.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub reconnect_for_secs: Option<Spanned<f64>>,
}

/// `x` or `[x, y]` as a list.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<Vec<String>>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let v: Option<Spanned<OneOrMany>> = Option::deserialize(d)?;
    Ok(v.map(|s| Spanned {
        value: match s.value {
            OneOrMany::One(c) => vec![c],
            OneOrMany::Many(v) => v,
        },
        referenced: s.referenced,
        defined: s.defined,
    }))
}

impl SqlSource {
    /// A minimal configuration.
    pub const EXAMPLE: &str = "url_env: DATABASE_URL\nquery: SELECT id, name, amount FROM orders\ncursor: [id]\nevery: 10s\n";

    /// Checks the options (connects to nothing).
    ///
    /// # Errors
    /// At the option concerned.
    pub fn settings(&self, ctx: &BuildContext) -> Result<Settings, ConfigError> {
        let db = match (&self.sqlite, self.url.is_some() || self.url_env.is_some()) {
            (Some(path), false) => {
                if path.value.trim().is_empty() {
                    return Err(ConfigError::at("sql source: sqlite is empty", path));
                }
                Db::Sqlite(ctx.base_dir.join(&path.value))
            }
            (Some(path), true) => {
                return Err(ConfigError::at(
                    "sql source: give a PostgreSQL url (url or url_env) or a sqlite file, not both",
                    path,
                ));
            }
            (None, _) if self.url.is_none() && self.url_env.is_none() => {
                return Err(ConfigError::new(
                    "sql source: give the database: url or url_env (PostgreSQL), or sqlite (a file)",
                ));
            }
            (None, _) => {
                let mut config =
                    crate::pg::config(self.url.as_ref(), self.url_env.as_ref(), "sql source")?;
                let connect = seconds(
                    self.connect_timeout_secs.as_ref(),
                    5.0,
                    "connect_timeout_secs",
                )?;
                if config.get_connect_timeout().is_none() {
                    config.connect_timeout(connect);
                }
                if config.get_application_name().is_none() {
                    config.application_name("weir");
                }
                let tls =
                    crate::pg::tls(&config, self.ca_file.as_ref(), &ctx.base_dir, "sql source")?;
                Db::Postgres {
                    tls,
                    config: Box::new(config),
                    connect_timeout: connect,
                    timeout: seconds(self.timeout_secs.as_ref(), 60.0, "timeout_secs")?,
                    reconnect_for: seconds(
                        self.reconnect_for_secs.as_ref(),
                        300.0,
                        "reconnect_for_secs",
                    )?,
                }
            }
        };
        let query = match (&self.table, &self.query) {
            (Some(t), None) if t.value.trim().is_empty() => {
                return Err(ConfigError::at("sql source: table is empty", t));
            }
            (Some(t), None) => {
                // `schema.table` names a table in a schema.
                let parts: Vec<String> = t.value.split('.').map(crate::pg::quote).collect();
                format!("SELECT * FROM {}", parts.join("."))
            }
            (None, Some(q)) => {
                let q = q.value.trim().trim_end_matches(';').trim_end();
                if q.is_empty() {
                    return Err(ConfigError::at(
                        "sql source: query is empty",
                        self.query.as_ref().expect("some"),
                    ));
                }
                // On a line of its own in the statements that wrap it, so a
                // trailing `-- comment` does not swallow their clauses.
                format!("{q}\n")
            }
            (Some(t), Some(_)) => {
                return Err(ConfigError::at(
                    "sql source: give table or query, not both",
                    t,
                ));
            }
            (None, None) => {
                return Err(ConfigError::new("sql source: give table or query"));
            }
        };
        let cursor = match &self.cursor {
            Some(c) if c.value.is_empty() => {
                return Err(ConfigError::at("sql source: cursor names no column", c));
            }
            Some(c) => {
                for (i, col) in c.value.iter().enumerate() {
                    if col.is_empty() {
                        return Err(ConfigError::at("sql source: a cursor column is empty", c));
                    }
                    if c.value[..i].contains(col) {
                        return Err(ConfigError::at(
                            format!("sql source: cursor column '{col}' is listed twice"),
                            c,
                        ));
                    }
                }
                c.value.clone()
            }
            None => Vec::new(),
        };
        let page_size = match &self.page_size {
            Some(p) if p.value == 0 || p.value > MAX_PAGE_SIZE => {
                return Err(ConfigError::at(
                    format!("sql source: page_size must be from 1 to {MAX_PAGE_SIZE}"),
                    p,
                ));
            }
            Some(p) => p.value,
            None => DEFAULT_PAGE_SIZE,
        };
        let every = match &self.every {
            Some(e) => Some(
                super::schedule::parse_interval(&e.value)
                    .map_err(|m| ConfigError::at(format!("sql source: every: {m}"), e))?,
            ),
            None => None,
        };
        let runs = match (&self.runs, every) {
            (Some(r), None) => {
                return Err(ConfigError::at(
                    "sql source: runs needs every (without it, the query runs once)",
                    r,
                ));
            }
            (Some(r), Some(_)) if r.value == 0 => {
                return Err(ConfigError::at("sql source: runs must be at least 1", r));
            }
            (r, _) => r.as_ref().map(|r| r.value),
        };
        let meta = match &self.meta {
            Some(m) if m.value.is_empty() => {
                return Err(ConfigError::at("sql source: meta must not be empty", m));
            }
            m => m.as_ref().map(|m| m.value.clone()),
        };
        Ok(Settings {
            input: ctx.input.clone(),
            db,
            query,
            cursor,
            page_size,
            every,
            runs,
            meta,
        })
    }

    /// The source. Nothing is contacted before the run starts (`weir
    /// check` connects to nothing); a database that cannot be opened, a
    /// query the server refuses or a cursor column the query lacks then
    /// fails the run, within seconds.
    ///
    /// # Errors
    /// As [`settings`](Self::settings), and a state database that cannot
    /// be opened.
    pub fn build(&self, ctx: &BuildContext) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        let settings = self.settings(ctx)?;
        let progress = if settings.cursor.is_empty() {
            Progress::open(None, &ctx.input, "")?
        } else {
            Progress::open(ctx.state.as_ref(), &ctx.input, &settings.source_id())?
        };
        Ok((settings.into_source(progress), Decoder::jsonl()))
    }
}

/// `name` in seconds, above 0 and at most a day; `default` when absent.
fn seconds(v: Option<&Spanned<f64>>, default: f64, name: &str) -> Result<Duration, ConfigError> {
    match v {
        Some(s) if !(s.value.is_finite() && s.value > 0.0 && s.value <= 86_400.0) => {
            Err(ConfigError::at(
                format!("sql source: {name} must be a number of seconds above 0 (at most a day)"),
                s,
            ))
        }
        Some(s) => Ok(Duration::from_secs_f64(s.value)),
        None => Ok(Duration::from_secs_f64(default)),
    }
}

/// The database read.
#[derive(Debug, Clone)]
enum Db {
    Postgres {
        config: Box<tokio_postgres::Config>,
        tls: crate::pg::Tls,
        connect_timeout: Duration,
        timeout: Duration,
        reconnect_for: Duration,
    },
    Sqlite(PathBuf),
}

/// The options, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    input: Arc<str>,
    db: Db,
    /// The query, without a trailing `;`.
    query: String,
    /// The cursor columns; empty: snapshots.
    cursor: Vec<String>,
    page_size: u64,
    /// Milliseconds between passes.
    every: Option<i64>,
    runs: Option<u64>,
    meta: Option<String>,
}

impl Settings {
    /// What is read, as a short hash: the key the cursor is kept under.
    /// SHA-256 of length-prefixed fields, so it is the same on every
    /// platform and build.
    fn source_id(&self) -> String {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        match &self.db {
            Db::Postgres { config, .. } => field(crate::pg::shown(config).as_bytes()),
            Db::Sqlite(path) => field(
                std::fs::canonicalize(path)
                    .unwrap_or_else(|_| path.clone())
                    .as_os_str()
                    .as_encoded_bytes(),
            ),
        }
        field(self.query.as_bytes());
        for c in &self.cursor {
            field(c.as_bytes());
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The engine source: the reader starts at its first poll.
    pub fn into_source(self, progress: Progress) -> weir::Source<Raw> {
        let depth = usize::try_from(self.page_size)
            .unwrap_or(usize::MAX)
            .clamp(16, 1024);
        let start = Some((self, progress));
        let stream = futures::stream::unfold(
            (start, None::<mpsc::Receiver<Item>>),
            move |(mut start, mut rx)| async move {
                if let Some((settings, progress)) = start.take() {
                    let (tx, r) = mpsc::channel(depth);
                    tokio::spawn(read(settings, Arc::new(progress), tx));
                    rx = Some(r);
                }
                let item = rx.as_mut()?.recv().await?;
                Some((item, (None, rx)))
            },
        );
        weir::from_try_acked_stream(stream)
    }
}

/// What the reader sends: a row with its ack, or why reading stopped.
type Item = Result<(Raw, Ack), BoxError>;

/// A row as a backend read it.
pub(super) struct Row {
    /// The record's value (an object), or why the row cannot be one:
    /// (reason, detail, what could be read of it as text).
    value: Result<Val, (&'static str, String, String)>,
    /// The cursor columns' values, as a JSON array (incremental reads).
    cursor: Option<cursor::Cursor>,
}

/// How a pass ended.
pub(super) enum Ended {
    /// Every row was read; with a cursor, the last row's.
    Done(Option<cursor::Cursor>),
    /// Nobody reads the rows any more (the run stopped).
    Stopped,
}

/// Hands rows to the pipeline: numbers them, adds the meta field, gives
/// each its ack.
pub(super) struct Emitter {
    tx: mpsc::Sender<Item>,
    input: Arc<str>,
    meta: Option<(Val, Val)>,
    progress: Arc<Progress>,
    row: u64,
}

impl Emitter {
    fn item(&mut self, row: Row) -> Item {
        self.row += 1;
        let n = self.row;
        let pos = Arc::new(Position {
            input: self.input.clone(),
            file: None,
            line: n,
        });
        let cursor = row.cursor.clone();
        if let Some(c) = row.cursor {
            self.progress.read(n, c);
        }
        let progress = self.progress.clone();
        let ack = Ack::new(move |outcome| progress.settled(n, outcome.is_handled()));
        let raw = match row.value {
            Ok(Val::Obj(mut obj)) => {
                if let Some((k, v)) = &self.meta {
                    std::sync::Arc::make_mut(&mut obj).insert(k.clone(), v.clone());
                }
                Raw::Record(Record::new(Val::Obj(obj), pos))
            }
            Ok(other) => Raw::Refused {
                pos,
                text: other.to_string(),
                reason: "sql_value",
                detail: "the row is not an object".into(),
            },
            Err((reason, detail, text)) => Raw::Refused {
                pos,
                text,
                reason,
                detail: match cursor {
                    Some(c) => format!("{detail} (row with cursor {c})"),
                    None => detail,
                },
            },
        };
        Ok((raw, ack))
    }

    /// Sends a row; false when nobody reads any more.
    pub(super) async fn send(&mut self, row: Row) -> bool {
        let item = self.item(row);
        self.tx.send(item).await.is_ok()
    }

    /// Sends a row from a blocking thread; false when nobody reads.
    pub(super) fn send_blocking(&mut self, row: Row) -> bool {
        let item = self.item(row);
        self.tx.blocking_send(item).is_ok()
    }
}

/// What one pass reads.
pub(super) struct Pass<'a> {
    pub(super) query: &'a str,
    pub(super) cursor: &'a [String],
    pub(super) page_size: u64,
    /// Read rows after this cursor (incremental reads).
    pub(super) after: Option<cursor::Cursor>,
}

/// The reader task: passes over the query until the end, sending rows.
async fn read(settings: Settings, progress: Arc<Progress>, tx: mpsc::Sender<Item>) {
    let input = settings.input.clone();
    if let Err(e) = passes(settings, progress, tx.clone()).await {
        let _ = tx
            .send(Err(format!("sql input '{input}': {e}").into()))
            .await;
    }
}

async fn passes(
    settings: Settings,
    progress: Arc<Progress>,
    tx: mpsc::Sender<Item>,
) -> Result<(), String> {
    let mut after = if settings.cursor.is_empty() {
        None
    } else {
        progress.load().map_err(|e| {
            format!("the saved cursor cannot be read: {e} (delete sql.db in the state directory, or run with --fresh in distributed mode)")
        })?
    };
    let mut backend = match &settings.db {
        Db::Postgres {
            config,
            tls,
            connect_timeout,
            timeout,
            reconnect_for,
        } => Backend::Pg(Box::new(pg::Reader::new(
            (**config).clone(),
            tls.clone(),
            pg::Limits {
                connect_timeout: *connect_timeout,
                timeout: *timeout,
                reconnect_for: *reconnect_for,
            },
        ))),
        Db::Sqlite(path) => Backend::Lite(path.clone()),
    };
    let mut emitter = Emitter {
        tx: tx.clone(),
        input: settings.input.clone(),
        meta: None,
        progress: progress.clone(),
        row: 0,
    };
    let mut pass = 0u64;
    let mut at = Timestamp::now();
    loop {
        pass += 1;
        emitter.meta = settings.meta.as_ref().map(|k| {
            (
                value::string(k.as_str()),
                value::object([
                    ("at", value::string(format!("{at:.3}"))),
                    ("pass", value::int(i64::try_from(pass).unwrap_or(i64::MAX))),
                ]),
            )
        });
        let p = Pass {
            query: &settings.query,
            cursor: &settings.cursor,
            page_size: settings.page_size,
            after: after.clone(),
        };
        let ended = match &mut backend {
            Backend::Pg(reader) => reader.pass(p, pass == 1, &mut emitter).await?,
            Backend::Lite(path) => {
                let (path, query, cursor) = (path.clone(), p.query.to_string(), p.cursor.to_vec());
                let (page_size, after, first) = (p.page_size, p.after.clone(), pass == 1);
                let mut e = emitter;
                let (e, ended) = tokio::task::spawn_blocking(move || {
                    let p = Pass {
                        query: &query,
                        cursor: &cursor,
                        page_size,
                        after,
                    };
                    let ended = lite::pass(&path, p, first, &mut e);
                    (e, ended)
                })
                .await
                .map_err(|e| format!("the SQLite reader failed: {e}"))?;
                emitter = e;
                ended?
            }
        };
        match ended {
            Ended::Stopped => return Ok(()),
            Ended::Done(last) => {
                if last.is_some() {
                    after = last;
                }
            }
        }
        let Some(every) = settings.every else {
            return Ok(());
        };
        if settings.runs.is_some_and(|r| pass >= r) {
            return Ok(());
        }
        // The next multiple of the interval since the epoch after this
        // pass's time: a pass shorter than the interval that ended after
        // it (the first, which starts between ticks) runs it at once; a
        // pass that took longer skips the ticks it overran.
        let now = Timestamp::now().as_millisecond();
        let started = at.as_millisecond();
        let next = if now - started < every {
            (started.div_euclid(every) + 1) * every
        } else {
            (now.div_euclid(every) + 1) * every
        };
        at = Timestamp::from_millisecond(next).map_err(|e| e.to_string())?;
        loop {
            let left = next - Timestamp::now().as_millisecond();
            if left <= 0 {
                break;
            }
            // Rows handled since the last save are saved while waiting.
            progress.flush();
            let nap = Duration::from_millis(left.unsigned_abs()).min(cursor::SAVE_EVERY);
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                () = tx.closed() => return Ok(()),
            }
        }
    }
}

enum Backend {
    Pg(Box<pg::Reader>),
    Lite(PathBuf),
}

impl crate::registry::Documented for SqlSource {
    const EXAMPLE: &'static str = SqlSource::EXAMPLE;
}

impl crate::registry::SourceComponent for SqlSource {
    fn build(
        &self,
        ctx: &BuildContext,
        _checkpoint: Option<Arc<crate::checkpoint::Checkpoint>>,
    ) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        SqlSource::build(self, ctx)
    }

    fn default_decode_workers(&self) -> usize {
        // Rows arrive as records: nothing to parse.
        1
    }

    fn resumes_itself(&self) -> bool {
        self.cursor.is_some()
    }
}

#[cfg(test)]
mod tests;
