//! Reading a pass from PostgreSQL.
//!
//! The server turns each row into JSON (`row_to_json`), so every type it
//! has (numeric, timestamps, arrays, json) arrives as the JSON PostgreSQL
//! itself gives, with no conversion table here. Cursor values travel as the
//! server's own text forms and go back cast to the column's type, so a
//! `numeric` or a `timestamptz` cursor compares exactly; each connection
//! pins the settings those text forms depend on (`TimeZone` UTC,
//! `extra_float_digits` 3, `DateStyle` ISO, `IntervalStyle` postgres), so
//! a role's or database's own settings cannot round a saved cursor, and
//! makes its transactions read-only (a source never writes).
//!
//! Every statement is bounded by `timeout`: a server that stops answering
//! (a frozen host, a network that drops packets) counts as lost, like one
//! that closed the connection.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, IsolationLevel, Row as PgRow};

use super::{Emitter, Ended, Pass, Row};
use crate::pg::{db_text, quote, shown};
use crate::value;

/// What each new connection sets first.
const SESSION: &str = "SET TimeZone = 'UTC'; SET extra_float_digits = 3; \
    SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
    SET default_transaction_read_only = on";

/// How to reach the server and how long to wait for it.
pub(super) struct Limits {
    pub(super) connect_timeout: Duration,
    pub(super) timeout: Duration,
    pub(super) reconnect_for: Duration,
}

/// A connection to the server, and what is needed to make another.
pub(super) struct Reader {
    config: tokio_postgres::Config,
    tls: crate::pg::Tls,
    shown: String,
    limits: Limits,
    conn: Option<Conn>,
    /// Before the first connection, every failure is final (a wrong
    /// password, no server); after, a lost server is waited for.
    connected_once: bool,
    /// The cursor columns' types, as casts (`"pg_catalog"."int8"`), once
    /// known.
    casts: Option<Vec<String>>,
}

struct Conn {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a statement failed.
enum Failure {
    /// The connection: worth reconnecting.
    Lost(String),
    /// Anything else: the run fails.
    Fatal(String),
}

/// What a page held.
struct Page {
    rows: u64,
    last: Option<String>,
    stopped: bool,
}

/// Sorts a statement's error.
fn classify(shown: &str, e: &tokio_postgres::Error) -> Failure {
    let text = format!("{shown}: {}", db_text(e));
    match e.code() {
        None => Failure::Lost(text),
        Some(c)
            if c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW =>
        {
            Failure::Lost(text)
        }
        Some(_) => Failure::Fatal(text),
    }
}

/// Waits for `f` at most `limit`; a statement without an answer by then
/// counts as a lost connection.
async fn timed<T>(
    shown: &str,
    limit: Duration,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(shown, &e)),
        Err(_) => Err(Failure::Lost(format!(
            "{shown}: no answer within {} s (timeout_secs)",
            limit.as_secs_f64()
        ))),
    }
}

/// Backoff between reconnections, with the time the server has been gone.
struct Retry {
    since: Option<Instant>,
    delay: Duration,
}

impl Retry {
    fn new() -> Self {
        Retry {
            since: None,
            delay: Duration::from_millis(100),
        }
    }
}

impl Reader {
    pub(super) fn new(config: tokio_postgres::Config, tls: crate::pg::Tls, limits: Limits) -> Self {
        Reader {
            shown: shown(&config),
            config,
            tls,
            limits,
            conn: None,
            connected_once: false,
            casts: None,
        }
    }

    async fn client(&mut self) -> Result<&mut Client, Failure> {
        if self.conn.is_none() {
            let connecting = crate::pg::connect(&self.config, &self.tls);
            let limit = self.limits.connect_timeout;
            let (client, task) = match tokio::time::timeout(limit, connecting).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    let why = format!("cannot connect to {}: {}", self.shown, db_text(&e));
                    let final_ = matches!(e.code().map(|c| &c.code()[..2]), Some("28" | "3D"));
                    return Err(if self.connected_once && !final_ {
                        Failure::Lost(why)
                    } else {
                        Failure::Fatal(why)
                    });
                }
                Err(_) => {
                    let why = format!(
                        "cannot connect to {}: no answer within {} s (connect_timeout_secs)",
                        self.shown,
                        limit.as_secs_f64()
                    );
                    return Err(if self.connected_once {
                        Failure::Lost(why)
                    } else {
                        Failure::Fatal(why)
                    });
                }
            };
            let conn = Conn { client, task };
            timed(
                &self.shown,
                self.limits.timeout,
                conn.client.batch_execute(SESSION),
            )
            .await?;
            self.connected_once = true;
            self.conn = Some(conn);
        }
        Ok(&mut self.conn.as_mut().expect("connected").client)
    }

    /// After a lost connection: waits before the next try, or says why
    /// not to try again (`Err`), or that nobody reads any more (`Ok(true)`).
    async fn lost(&mut self, why: String, retry: &mut Retry, e: &Emitter) -> Result<bool, String> {
        self.conn = None;
        let since = *retry.since.get_or_insert_with(|| {
            tracing::warn!("sql input '{}': {why}; reconnecting", e.input);
            Instant::now()
        });
        if since.elapsed() >= self.limits.reconnect_for {
            return Err(format!(
                "{why} (gave up after {} s, reconnect_for_secs)",
                self.limits.reconnect_for.as_secs_f64()
            ));
        }
        // Equal jitter: reconnecting readers do not retry in lockstep.
        let wait = retry.delay / 2 + (retry.delay / 2).mul_f64(crate::http_client::jitter());
        retry.delay = (retry.delay * 2).min(Duration::from_secs(5));
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(false),
            () = e.tx.closed() => Ok(true),
        }
    }

    /// Reads one pass, sending its rows.
    ///
    /// # Errors
    /// What stops the run: a server that cannot be reached at the start
    /// or refuses the login, a query it refuses, a cursor column the query
    /// lacks, a server gone for longer than `reconnect_for_secs`, or lost
    /// in the middle of a snapshot (its rows would come twice).
    pub(super) async fn pass(
        &mut self,
        p: Pass<'_>,
        first: bool,
        e: &mut Emitter,
    ) -> Result<Ended, String> {
        let mut retry = Retry::new();
        if p.cursor.is_empty() {
            loop {
                let before = e.row;
                match self.snapshot(&p, e).await {
                    Ok(ended) => return Ok(ended),
                    // Nothing of this pass was sent: it can start over.
                    Err(Failure::Lost(why)) if e.row == before => {
                        if self.lost(why, &mut retry, e).await? {
                            return Ok(Ended::Stopped);
                        }
                    }
                    Err(Failure::Lost(why)) => {
                        self.conn = None;
                        return Err(format!(
                            "{why}: the connection was lost in the middle of a snapshot, which is \
                             not read twice"
                        ));
                    }
                    Err(Failure::Fatal(why)) => {
                        self.conn = None;
                        return Err(why);
                    }
                }
            }
        }
        let mut after = p.after.clone();
        let mut last = None;
        let mut warn_nulls = first;
        loop {
            match self.page(&p, after.as_deref(), warn_nulls, e).await {
                Ok(page) => {
                    retry = Retry::new();
                    warn_nulls = false;
                    if page.stopped {
                        return Ok(Ended::Stopped);
                    }
                    if page.last.is_some() {
                        after.clone_from(&page.last);
                        last = page.last;
                    }
                    if page.rows < p.page_size {
                        return Ok(Ended::Done(last));
                    }
                }
                Err(Failure::Fatal(why)) => return Err(why),
                Err(Failure::Lost(why)) => {
                    if self.lost(why, &mut retry, e).await? {
                        return Ok(Ended::Stopped);
                    }
                }
            }
        }
    }

    /// The cast of each cursor column's type, from the query's columns.
    async fn casts(&mut self, p: &Pass<'_>) -> Result<Vec<String>, Failure> {
        if let Some(c) = &self.casts {
            return Ok(c.clone());
        }
        let sql = format!("SELECT * FROM ({}) AS weir_q LIMIT 0", p.query);
        let (shown, limit) = (self.shown.clone(), self.limits.timeout);
        let client = self.client().await?;
        let stmt = timed(&shown, limit, client.prepare(&sql)).await?;
        let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
        let mut casts = Vec::new();
        for c in p.cursor {
            let Some(col) = stmt.columns().iter().find(|col| col.name() == c) else {
                return Err(Failure::Fatal(format!(
                    "cursor column '{c}' is not a column of the query (it has: {})",
                    names.join(", ")
                )));
            };
            let ty = col.type_();
            casts.push(format!("{}.{}", quote(ty.schema()), quote(ty.name())));
        }
        self.casts = Some(casts.clone());
        Ok(casts)
    }

    async fn page(
        &mut self,
        p: &Pass<'_>,
        after: Option<&str>,
        warn_nulls: bool,
        e: &mut Emitter,
    ) -> Result<Page, Failure> {
        let casts = self.casts(p).await?;
        let (shown, limit) = (self.shown.clone(), self.limits.timeout);
        let cols: Vec<String> = p
            .cursor
            .iter()
            .map(|c| format!("weir_q.{}", quote(c)))
            .collect();
        let list = cols.join(", ");
        if warn_nulls {
            let nulls: Vec<String> = cols.iter().map(|c| format!("{c} IS NULL")).collect();
            let sql = format!(
                "SELECT count(*) FROM ({}) AS weir_q WHERE {}",
                p.query,
                nulls.join(" OR ")
            );
            let client = self.client().await?;
            let n: i64 = timed(&shown, limit, client.query_one(&sql, &[]))
                .await?
                .get(0);
            if n > 0 {
                tracing::warn!(
                    "sql input '{}': {n} rows have a NULL cursor column ({}) and are not read",
                    e.input,
                    p.cursor.join(", ")
                );
            }
        }
        let texts: Vec<String> = cols.iter().map(|c| format!(", {c}::text")).collect();
        let not_null: Vec<String> = cols.iter().map(|c| format!("{c} IS NOT NULL")).collect();
        let mut sql = format!(
            "SELECT row_to_json(weir_q)::text{} FROM ({}) AS weir_q WHERE {}",
            texts.concat(),
            p.query,
            not_null.join(" AND ")
        );
        let values: Vec<Option<String>> = match after {
            None => Vec::new(),
            Some(text) => serde_json::from_str::<Vec<Option<String>>>(text)
                .ok()
                .filter(|v| v.len() == p.cursor.len())
                .ok_or_else(|| {
                    Failure::Fatal(format!(
                        "the saved cursor {text} does not fit {} cursor column(s)",
                        p.cursor.len()
                    ))
                })?,
        };
        if !values.is_empty() {
            let params: Vec<String> = casts
                .iter()
                .enumerate()
                .map(|(i, ty)| format!("CAST(${}::text AS {ty})", i + 1))
                .collect();
            sql.push_str(&format!(" AND ({list}) > ({})", params.join(", ")));
        }
        sql.push_str(&format!(" ORDER BY {list} LIMIT {}", p.page_size));
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let client = self.client().await?;
        let rows = timed(&shown, limit, client.query(&sql, &params)).await?;
        let n = rows.len() as u64;
        let mut last = None;
        for row in rows {
            let cursor: Vec<Option<String>> = (1..=p.cursor.len()).map(|i| row.get(i)).collect();
            let cursor = serde_json::to_string(&cursor).expect("strings serialize");
            let sent = e
                .send(Row {
                    value: record(&row),
                    cursor: Some(cursor.clone()),
                })
                .await;
            if !sent {
                return Ok(Page {
                    rows: n,
                    last,
                    stopped: true,
                });
            }
            last = Some(cursor);
        }
        Ok(Page {
            rows: n,
            last,
            stopped: false,
        })
    }

    /// The whole query, in pages of one portal, in one read-only
    /// repeatable-read transaction.
    async fn snapshot(&mut self, p: &Pass<'_>, e: &mut Emitter) -> Result<Ended, Failure> {
        let (shown, limit) = (self.shown.clone(), self.limits.timeout);
        let page = i32::try_from(p.page_size).unwrap_or(i32::MAX);
        let sql = format!(
            "SELECT row_to_json(weir_q)::text FROM ({}) AS weir_q",
            p.query
        );
        let client = self.client().await?;
        let start = client
            .build_transaction()
            .read_only(true)
            .isolation_level(IsolationLevel::RepeatableRead)
            .start();
        let tx = timed(&shown, limit, start).await?;
        let stmt = timed(&shown, limit, tx.prepare(&sql)).await?;
        let portal = timed(&shown, limit, tx.bind(&stmt, &[])).await?;
        loop {
            let rows = timed(&shown, limit, tx.query_portal(&portal, page)).await?;
            let n = rows.len();
            for row in rows {
                let sent = e
                    .send(Row {
                        value: record(&row),
                        cursor: None,
                    })
                    .await;
                if !sent {
                    return Ok(Ended::Stopped);
                }
            }
            if n < page as usize {
                break;
            }
        }
        timed(&shown, limit, tx.commit()).await?;
        Ok(Ended::Done(None))
    }
}

/// A row's record, from the JSON the server made of it.
fn record(row: &PgRow) -> Result<value::Val, (&'static str, String, String)> {
    let text: Option<&str> = row.get(0);
    let text = text.unwrap_or("null");
    value::parse(text.as_bytes()).map_err(|err| {
        (
            "sql_value",
            format!("the row's JSON does not parse: {err}"),
            text.to_string(),
        )
    })
}
