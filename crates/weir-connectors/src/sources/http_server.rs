//! The `http_server` source: records POSTed over HTTP/1.1, as one JSON
//! value, a JSON array (each element a record) or NDJSON (one per line).
//!
//! # Design
//!
//! * **All or nothing per request.** A body is parsed whole before any of
//!   it is taken: a body that is not valid JSON (an NDJSON body with one bad
//!   line) is refused with 400, naming the line and column, and nothing of
//!   it is ingested, so the client can fix it and send it again without
//!   creating duplicates. Records are handed on parsed (`Raw::Record`), so
//!   the decode stage does not parse them a second time.
//! * **Bounded intake.** The records of an accepted request wait in a queue
//!   of at most `queue` requests for the pipeline to take them; when it is
//!   full (the pipeline is backed up), a request is answered 503 with
//!   `Retry-After: 1` instead of being buffered. At most
//!   `max_concurrent_requests` bodies are read and parsed at once, each of
//!   at most `max_body_bytes`, and at most `max_connections` connections
//!   are open. Memory is thus bounded by `max_concurrent_requests` x
//!   (`max_body_bytes` + its records) + `queue` x (a body's records) + the
//!   pipeline's own buffers.
//! * **Acks.** Each record carries an engine [`Ack`]; a request's records
//!   share a tally. With `ack: commit` the answer waits until every record
//!   is settled: 200 with how many were committed and dead-lettered, or,
//!   when some were lost (the run aborted or stopped before taking them),
//!   503 so that the client sends the request again. With `ack: accept` the
//!   answer (202) goes out once the records are queued; records lost later
//!   are logged as a warning, not reported to the client.
//! * **Positions.** A record's position is the input's name, no file, and
//!   a sequence number over the whole run (`in#42`); the answer gives the
//!   first number of its request (`first_line`), so a client can match
//!   dead letters to what it sent.
//! * **Where it listens.** The socket is bound when the source is built
//!   (a bad or busy address is an error at `address`, before anything
//!   runs), and served from the run's start; at that point one line goes
//!   to standard error, whatever the log level, since with port 0 it is
//!   the only way to learn the port: `http_server 'NAME' listening on
//!   http://ADDR`.
//! * **Drain.** The engine stops a source by dropping its stream (see
//!   `weir::Source`). Then the queue is closed: requests still queued are
//!   dropped (their records' acks fail, so `ack: commit` answers them 503),
//!   new requests get 503 and new connections are refused, while requests
//!   whose records the pipeline took wait for their commits, which the run
//!   settles before it returns. The server runs on a thread of its own with
//!   its own small runtime, started through the run's blocking pool: a
//!   runtime waits for its blocking threads when it shuts down (it drops
//!   its async tasks), so the answers are written before the process exits.
//!   That thread ends when every connection is closed, or [`DRAIN_LIMIT`]
//!   after the stop.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_saphyr::Spanned;
use tokio::sync::{Notify, Semaphore, oneshot};
use weir::{Ack, AckOutcome, CancellationToken};

use crate::error::ConfigError;
use crate::record::{Position, Record};
use crate::sources::decode::Decoder;
use crate::sources::{BuildContext, Raw};
use crate::value::{self, Val};

/// Where the server listens when `address` is not given.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8080";
/// The health endpoint's path; it cannot be an ingest path.
pub const HEALTH_PATH: &str = "/health";
const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 32;
const DEFAULT_QUEUE: usize = 16;
const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers, then its body:
/// a client slower than that would hold a slot (408 for a body).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server waits for its connections to finish once every
/// request waiting for its commit has its answer (those are waited for
/// without a limit: they end with the run): only a client that neither
/// reads its answer nor closes is cut off.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Records one request may carry at most by default.
const DEFAULT_MAX_RECORDS: usize = 10_000;

/// Receives records over HTTP: JSON, JSON arrays or NDJSON, POSTed.
///
/// A body is one JSON value (one record), a JSON array (one record per
/// element) or, with `Content-Type: application/x-ndjson`, one JSON value
/// per line; any other `Content-Type` is answered 415. A body that does
/// not parse is refused whole (400, naming the line and column), so it can
/// be fixed and sent again.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpServerSource {
    /// `host:port` to listen on. Port 0 takes any free port. When the run
    /// starts, standard error gets the line `http_server 'NAME' listening
    /// on http://ADDR`, with the port actually bound. The address is bound
    /// when the pipeline is built, so `weir check` fails while another
    /// process holds it. Default: `127.0.0.1:8080`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub address: Option<Spanned<String>>,
    /// The paths records are POSTed to; any other method is answered 405,
    /// any other path 404 (except `GET /health`, which answers 200 `ok`,
    /// or 503 once the run is stopping, without authentication). Default:
    /// `[/]`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub paths: Option<Vec<Spanned<String>>>,
    /// The name of an environment variable holding a bearer token: when
    /// set, a request must carry `Authorization: Bearer <token>` or is
    /// answered 401 (compared in constant time). The variable is read when
    /// the pipeline is built; unset or empty is an error. Default: no
    /// authentication.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub bearer_token_env: Option<Spanned<String>>,
    /// The largest body accepted, in bytes; a larger one is answered 413
    /// and nothing of it is ingested. Default: 10485760 (10 MiB).
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub max_body_bytes: Option<Spanned<u64>>,
    /// Requests whose bodies are read and parsed at the same time; one more
    /// is answered 503 with `Retry-After: 1`. A request waiting for its
    /// records' commit does not count (its records are in `queue` or in the
    /// pipeline, both bounded). With `max_body_bytes`, this bounds the
    /// memory bodies take. Default: 32.
    #[serde(default)]
    #[schemars(with = "Option<usize>")]
    pub max_concurrent_requests: Option<Spanned<usize>>,
    /// Requests whose records wait for the pipeline to take them. When the
    /// pipeline is backed up and this many wait, a request is answered 503
    /// with `Retry-After: 1` instead of being buffered. A few are enough to
    /// ride out short stalls; more only add memory and latency. Default: 16.
    #[serde(default)]
    #[schemars(with = "Option<usize>")]
    pub queue: Option<Spanned<usize>>,
    /// Records one request may carry; a request with more is answered 413
    /// and nothing of it is ingested. Each record waiting in the pipeline
    /// costs a few hundred bytes besides its data, so this bounds what one
    /// request can make the service hold. Default: 10000.
    #[serde(default)]
    #[schemars(with = "Option<usize>")]
    pub max_records_per_request: Option<Spanned<usize>>,
    /// Open connections at most; more wait in the operating system's
    /// backlog until one closes. A request waiting for its commit holds
    /// its connection, so at most half of them may wait: past that a new
    /// request is answered 503 with `Retry-After` at once, rather than new
    /// clients hanging in the backlog behind a stalled pipeline. Default:
    /// 256.
    #[serde(default)]
    #[schemars(with = "Option<usize>")]
    pub max_connections: Option<Spanned<usize>>,
    /// When a request is answered: `commit` once every record of it is
    /// settled: 200 with `{"accepted", "committed", "dead_lettered",
    /// "first_line"}` (committed: written by the outputs, or dropped on
    /// purpose by a filter without `drop_reason`; `first_line`: the
    /// position of its first record, `input#N`, the others following), or
    /// 503 with `Retry-After` when some were lost because the run stopped
    /// or failed: send it again (records of it that were committed then
    /// come twice, so give the output a `key`). `accept` answers 202 as
    /// soon as the records are queued; records lost later (the run stops
    /// before taking them) are only logged. Default: `commit`.
    #[serde(default)]
    pub ack: AckMode,
}

/// When `http_server` answers a request; see [`HttpServerSource::ack`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After every record is committed or dead-lettered (200), or lost (503).
    #[default]
    Commit,
    /// When the records are queued (202).
    Accept,
}

impl HttpServerSource {
    /// A minimal configuration.
    pub const EXAMPLE: &str = "address: 127.0.0.1:8080\npaths: [/ingest]\n";

    /// Checks the options, reads the token and binds the address: a server
    /// not yet serving (it serves from the first poll of its source).
    ///
    /// # Errors
    /// At the option concerned: a path that does not start with `/` or is
    /// the health path, a limit of 0, an unset token variable, an address
    /// that cannot be bound.
    pub fn open(&self, ctx: &BuildContext) -> Result<HttpServer, ConfigError> {
        let input = ctx.input.clone();
        let paths = match &self.paths {
            None => vec!["/".to_string()],
            Some(paths) => {
                let mut out = Vec::with_capacity(paths.len());
                for p in paths {
                    if !p.value.starts_with('/') {
                        return Err(ConfigError::at(
                            format!("http_server: path '{}' must start with '/'", p.value),
                            p,
                        ));
                    }
                    if p.value == HEALTH_PATH {
                        return Err(ConfigError::at(
                            format!(
                                "http_server: {HEALTH_PATH} is the health endpoint, not an ingest path"
                            ),
                            p,
                        ));
                    }
                    out.push(p.value.clone());
                }
                if out.is_empty() {
                    return Err(ConfigError::new("http_server: paths must not be empty"));
                }
                out
            }
        };
        let token = match &self.bearer_token_env {
            None => None,
            Some(var) => match std::env::var(&var.value) {
                Ok(t) if !t.is_empty() => Some(t.into_bytes()),
                Ok(_) => {
                    return Err(ConfigError::at(
                        format!(
                            "http_server: environment variable {} (bearer_token_env) is empty",
                            var.value
                        ),
                        var,
                    ));
                }
                Err(e) => {
                    return Err(ConfigError::at(
                        format!(
                            "http_server: environment variable {} (bearer_token_env): {e}",
                            var.value
                        ),
                        var,
                    ));
                }
            },
        };
        let max_body = positive(
            &self.max_body_bytes,
            "max_body_bytes",
            DEFAULT_MAX_BODY_BYTES,
        )?;
        let requests = positive(
            &self.max_concurrent_requests,
            "max_concurrent_requests",
            DEFAULT_MAX_CONCURRENT_REQUESTS,
        )?;
        let queue = positive(&self.queue, "queue", DEFAULT_QUEUE)?;
        let max_records = positive(
            &self.max_records_per_request,
            "max_records_per_request",
            DEFAULT_MAX_RECORDS,
        )?;
        let connections = positive(
            &self.max_connections,
            "max_connections",
            DEFAULT_MAX_CONNECTIONS,
        )?;
        let address = self
            .address
            .as_ref()
            .map_or(DEFAULT_ADDRESS, |a| a.value.as_str());
        let at = |message: String| match &self.address {
            Some(a) => ConfigError::at(message, a),
            None => ConfigError::new(message),
        };
        let listener = std::net::TcpListener::bind(address)
            .map_err(|e| at(format!("http_server: cannot listen on {address}: {e}")))?;
        let local_addr = listener
            .local_addr()
            .and_then(|a| listener.set_nonblocking(true).map(|()| a))
            .map_err(|e| at(format!("http_server: cannot listen on {address}: {e}")))?;
        Ok(HttpServer {
            listener,
            local_addr,
            connections,
            shared: Arc::new(Shared {
                input: input.clone(),
                paths,
                token,
                max_body,
                ack: self.ack,
                requests: Arc::new(Semaphore::new(requests)),
                intake: Arc::new(Intake::new(input, queue)),
                max_records,
                waiting: Waiting::default(),
                max_waiting: (connections / 2).max(1),
            }),
        })
    }

    /// The source and the decoder for its items.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn build(&self, ctx: &BuildContext) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        Ok(self.open(ctx)?.into_source())
    }
}

/// A limit option: its value, or `default`; 0 is refused at its location.
fn positive<T>(opt: &Option<Spanned<T>>, name: &str, default: T) -> Result<T, ConfigError>
where
    T: Copy + PartialEq + From<u8>,
{
    match opt {
        None => Ok(default),
        Some(v) if v.value == T::from(0) => Err(ConfigError::at(
            format!("http_server: {name} must be at least 1"),
            v,
        )),
        Some(v) => Ok(v.value),
    }
}

/// A bound server, not serving yet.
#[derive(Debug)]
pub struct HttpServer {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    connections: usize,
    shared: Arc<Shared>,
}

impl HttpServer {
    /// The address it listens on (the port actually bound, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The source of its records, with their decoder. The server starts
    /// serving at the source's first poll and stops taking requests when
    /// the source is dropped (the run stops reading it).
    pub fn into_source(self) -> (weir::Source<Raw>, Decoder) {
        (weir::from_acked_stream(records(self)), Decoder::jsonl())
    }
}

/// The records of accepted requests, in the order they were queued.
fn records(server: HttpServer) -> impl futures::Stream<Item = (Raw, Ack)> + Send + 'static {
    use futures::StreamExt;
    enum State {
        NotStarted(HttpServer),
        Serving(Taking),
    }
    let requests = futures::stream::unfold(State::NotStarted(server), |state| async move {
        let taking = match state {
            State::Serving(t) => t,
            State::NotStarted(server) => {
                let intake = server.shared.intake.clone();
                // Closes the intake when the stream is dropped, even while
                // waiting for the server to start.
                let taking = Taking(intake);
                let input = server.shared.input.clone();
                let addr = server.local_addr;
                if let Err(e) = start(server).await {
                    // Nothing can be served, and a stream of acked items has
                    // no error value: fail the run the way a broken stage
                    // does, with the message.
                    panic!("http_server '{input}': cannot serve on {addr}: {e}");
                }
                // Standard error, not a log event: with port 0 this line is
                // the only way to learn where to send records, so it must
                // show at any log level.
                eprintln!("http_server '{input}' listening on http://{addr}");
                taking
            }
        };
        let batch = taking.0.take().await?;
        Some((batch, State::Serving(taking)))
    });
    requests.flat_map(futures::stream::iter)
}

/// The pipeline's end of the intake: dropping it (the run stopped reading
/// the source) closes the intake.
struct Taking(Arc<Intake>);

impl Drop for Taking {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Starts the server on a thread of its own (see the module's "Drain");
/// returns once it serves, or why it cannot.
async fn start(server: HttpServer) -> Result<(), String> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let serve = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build();
        let rt = match rt {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(format!("cannot start its runtime: {e}")));
                return;
            }
        };
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(server.listener) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            serve(listener, server.connections, server.shared).await;
        });
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(serve)),
        Err(_) => {
            std::thread::Builder::new()
                .name("weir-http-server".into())
                .spawn(serve)
                .map_err(|e| format!("cannot start its thread: {e}"))?;
        }
    }
    ready_rx
        .await
        .unwrap_or_else(|_| Err("its thread ended before serving".into()))
}

/// Accepts connections until the intake closes, then lets the open ones
/// finish (at most [`DRAIN_LIMIT`]).
async fn serve(listener: tokio::net::TcpListener, connections: usize, shared: Arc<Shared>) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT);
    let slots = Arc::new(Semaphore::new(connections));
    let closed = shared.intake.closed.clone();
    loop {
        let slot = tokio::select! {
            _ = closed.cancelled() => break,
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = closed.cancelled() => break,
            a = listener.accept() => match a {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!("http_server '{}': cannot accept a connection: {e}", shared.input);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let service = hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(&shared, req).await) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A connection that breaks is the client's business; its
            // request, if any, was answered or its records are counted.
            let _ = conn.await;
            drop(slot);
        });
    }
    // New connections are refused from here on; open ones finish the
    // request they are in (answered 503 if not yet queued) and close.
    drop(listener);
    // A request waiting for its records' commit gets its answer when the
    // run settles them, however long that takes.
    shared.waiting.zero().await;
    let _ = tokio::time::timeout(DRAIN_LIMIT, graceful.shutdown()).await;
}

/// What every request handler needs.
#[derive(Debug)]
struct Shared {
    input: Arc<str>,
    paths: Vec<String>,
    token: Option<Vec<u8>>,
    max_body: u64,
    ack: AckMode,
    /// Bodies being read and parsed.
    requests: Arc<Semaphore>,
    intake: Arc<Intake>,
    /// Records one request may carry.
    max_records: usize,
    /// Requests waiting for their commit.
    waiting: Waiting,
    /// Requests that may wait for their commit at once (half the
    /// connections: the other half stay free to be answered).
    max_waiting: usize,
}

/// A count of requests waiting for their commit, and a wake-up when it
/// falls to zero.
#[derive(Debug, Default)]
struct Waiting {
    count: Mutex<usize>,
    zero: Notify,
}

impl Waiting {
    fn count(&self) -> usize {
        *self.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one in until the guard drops.
    fn enter(&self) -> WaitingGuard<'_> {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        WaitingGuard(self)
    }

    async fn zero(&self) {
        loop {
            // Registered before the count is read, so a wake-up between
            // the two is not missed.
            let notified = self.zero.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if *self.count.lock().unwrap_or_else(|p| p.into_inner()) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct WaitingGuard<'a>(&'a Waiting);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        let mut n = self.0.count.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            self.0.zero.notify_waiters();
        }
    }
}

type Batch = Vec<(Raw, Ack)>;

/// Requests' records waiting for the pipeline: at most `capacity`
/// requests, refused when full or closed. A mutex rather than a channel:
/// a request refused because the run stopped must know it before it is
/// answered, and a channel's sender can win a race against the receiver's
/// drop and leave its items unsettled until the channel itself goes.
#[derive(Debug)]
struct Intake {
    input: Arc<str>,
    state: Mutex<IntakeState>,
    capacity: usize,
    /// One waiter (the source's stream); a notification sent while it is
    /// not waiting is kept for its next wait.
    ready: Notify,
    closed: CancellationToken,
}

#[derive(Debug)]
struct IntakeState {
    queue: VecDeque<Batch>,
    closed: bool,
    /// The position of the next record.
    next_line: u64,
}

/// Why a request's records were not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// The pipeline is backed up.
    Full,
    /// The run stopped reading.
    Closed,
}

impl Intake {
    fn new(input: Arc<str>, capacity: usize) -> Self {
        Intake {
            input,
            state: Mutex::new(IntakeState {
                queue: VecDeque::new(),
                closed: false,
                next_line: 1,
            }),
            capacity,
            ready: Notify::new(),
            closed: CancellationToken::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IntakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `values` as records numbered from the next position on (the
    /// first number is returned), each with the ack `ack` makes for it.
    /// Nothing is built when the request is refused, so line numbers have
    /// no gaps.
    fn offer(&self, values: Vec<Val>, ack: impl Fn() -> Ack) -> Result<u64, Refused> {
        let mut st = self.lock();
        if st.closed {
            return Err(Refused::Closed);
        }
        if st.queue.len() >= self.capacity {
            return Err(Refused::Full);
        }
        let first = st.next_line;
        st.next_line += values.len() as u64;
        let batch = values
            .into_iter()
            .zip(first..)
            .map(|(v, line)| {
                let pos = Arc::new(Position {
                    input: self.input.clone(),
                    file: None,
                    line,
                });
                (Raw::Record(Record::new(v, pos)), ack())
            })
            .collect();
        st.queue.push_back(batch);
        drop(st);
        self.ready.notify_one();
        Ok(first)
    }

    /// The next request's records; `None` once closed.
    async fn take(&self) -> Option<Batch> {
        loop {
            {
                let mut st = self.lock();
                if st.closed {
                    return None;
                }
                if let Some(b) = st.queue.pop_front() {
                    return Some(b);
                }
            }
            self.ready.notified().await;
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Refuses requests from now on; what waits is dropped, which fails
    /// its records' acks (their requests are answered 503).
    fn close(&self) {
        let dropped = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.queue)
        };
        self.closed.cancel();
        // Outside the lock: dropping settles acks, whose callbacks answer.
        drop(dropped);
    }
}

/// What became of a request's records, counted as their acks settle.
struct Tally {
    state: Mutex<TallyState>,
}

struct TallyState {
    left: usize,
    totals: Totals,
    done: Option<oneshot::Sender<Totals>>,
}

#[derive(Debug, Clone, Default)]
struct Totals {
    committed: usize,
    dead_lettered: usize,
    failed: usize,
    /// Why the first lost record was lost.
    failure: Option<String>,
}

impl Tally {
    fn new(records: usize, done: oneshot::Sender<Totals>) -> Arc<Self> {
        Arc::new(Tally {
            state: Mutex::new(TallyState {
                left: records,
                totals: Totals::default(),
                done: Some(done),
            }),
        })
    }

    fn settle(&self, outcome: AckOutcome) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            AckOutcome::Delivered => st.totals.committed += 1,
            AckOutcome::DeadLettered { .. } => st.totals.dead_lettered += 1,
            AckOutcome::Failed { reason } => {
                st.totals.failed += 1;
                st.totals.failure.get_or_insert(reason);
            }
        }
        st.left -= 1;
        if st.left == 0
            && let Some(done) = st.done.take()
        {
            // The request may be gone (client disconnected): nothing to tell.
            let _ = done.send(st.totals.clone());
        }
    }
}

/// Answers one request.
async fn handle(s: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == HEALTH_PATH {
        return match *req.method() {
            Method::GET | Method::HEAD if s.intake.is_closed() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            Method::GET | Method::HEAD => text(StatusCode::OK, "ok\n"),
            _ => with(
                error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{HEALTH_PATH} answers GET"),
                ),
                header::ALLOW,
                "GET, HEAD",
            ),
        };
    }
    if !s.paths.iter().any(|p| p == path) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no such path: {path}; records go to {}", s.paths.join(", ")),
        );
    }
    if req.method() != Method::POST {
        return with(
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} {path}: records are sent with POST", req.method()),
            ),
            header::ALLOW,
            "POST",
        );
    }
    if let Some(token) = &s.token
        && !authorized(req.headers(), token)
    {
        return with(
            error(
                StatusCode::UNAUTHORIZED,
                "a valid 'Authorization: Bearer <token>' header is required".into(),
            ),
            header::WWW_AUTHENTICATE,
            "Bearer",
        );
    }
    if s.intake.is_closed() {
        return retry_later(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline is stopping".into(),
        ));
    }
    if s.ack == AckMode::Commit && s.waiting.count() >= s.max_waiting {
        return retry_later(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests are waiting for their records' commit; nothing was ingested, try again".into(),
        ));
    }
    let Ok(_reading) = s.requests.clone().try_acquire_owned() else {
        return retry_later(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests are being read; try again".into(),
        ));
    };
    let format = match body_format(req.headers()) {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is larger than max_body_bytes ({} bytes); nothing was ingested",
                s.max_body
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_body) {
        return too_large();
    }
    let limit = usize::try_from(s.max_body).unwrap_or(usize::MAX);
    let read = Limited::new(req.into_body(), limit).collect();
    let body = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s; nothing was ingested",
                    READ_TIMEOUT.as_secs()
                ),
            );
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            );
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let values = match format.parse(&body) {
        Ok(v) => v,
        Err(why) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{why}; nothing was ingested"),
            );
        }
    };
    drop(body);
    drop(_reading);
    if values.len() > s.max_records {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} records in one request, more than max_records_per_request ({}); nothing was ingested, send fewer per request",
                values.len(),
                s.max_records
            ),
        );
    }
    ingest(s, values).await
}

/// Queues a request's records and answers as `ack` says.
async fn ingest(s: &Shared, values: Vec<Val>) -> Response<Full<Bytes>> {
    let accepted = values.len();
    if accepted == 0 {
        let status = match s.ack {
            AckMode::Commit => StatusCode::OK,
            AckMode::Accept => StatusCode::ACCEPTED,
        };
        return json(
            status,
            &serde_json::json!({"accepted": 0, "committed": 0, "dead_lettered": 0}),
        );
    }
    let (done_tx, done_rx) = oneshot::channel();
    let tally = Tally::new(accepted, done_tx);
    let queued = s.intake.offer(values, || {
        let t = tally.clone();
        Ack::new(move |outcome| t.settle(outcome))
    });
    let first_line = match queued {
        Ok(first) => first,
        Err(Refused::Full) => {
            return retry_later(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the pipeline is backed up; nothing was ingested, try again".into(),
            ));
        }
        Err(Refused::Closed) => {
            return retry_later(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the pipeline is stopping; nothing was ingested".into(),
            ));
        }
    };
    drop(tally);
    if s.ack == AckMode::Accept {
        let input = s.input.clone();
        // Nobody waits for the outcome but the log.
        tokio::spawn(async move {
            if let Ok(t) = done_rx.await
                && t.failed > 0
            {
                tracing::warn!(
                    "http_server '{input}': {} of {accepted} records from #{first_line} were accepted (202) but not committed: {}",
                    t.failed,
                    t.failure.as_deref().unwrap_or("unknown")
                );
            }
        });
        return json(
            StatusCode::ACCEPTED,
            &serde_json::json!({"accepted": accepted, "first_line": first_line}),
        );
    }
    let waiting = s.waiting.enter();
    let outcome = done_rx.await;
    drop(waiting);
    let Ok(t) = outcome else {
        // Every ack settles, so the tally always answers.
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the records' outcome was lost".into(),
        );
    };
    let mut body = serde_json::json!({
        "accepted": accepted,
        "committed": t.committed,
        "dead_lettered": t.dead_lettered,
        "first_line": first_line,
    });
    if t.failed == 0 {
        return json(StatusCode::OK, &body);
    }
    body["failed"] = t.failed.into();
    // Why, in the log only: it can name internal services and files.
    tracing::warn!(
        "http_server '{}': {} of {accepted} records from #{first_line} were not committed: {}",
        s.input,
        t.failed,
        t.failure.as_deref().unwrap_or("unknown")
    );
    body["error"] = format!(
        "{} of {accepted} records were not committed (the pipeline stopped or failed); send the request again",
        t.failed
    )
    .into();
    retry_later(json(StatusCode::SERVICE_UNAVAILABLE, &body))
}

/// True when the headers carry `Bearer <token>`. Compared in constant time,
/// so the time taken does not tell how much of a guess was right (only
/// its length).
fn authorized(headers: &HeaderMap, token: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let scheme = b"bearer ";
    if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return false;
    }
    value[scheme.len()..].ct_eq(token).into()
}

/// How a body carries its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    /// One JSON value; an array is one record per element.
    Json,
    /// One JSON value per line; blank lines are skipped.
    Ndjson,
}

/// The body's format, from `Content-Type` (JSON when absent); 415 for
/// anything else.
#[allow(clippy::result_large_err)]
fn body_format(headers: &HeaderMap) -> Result<BodyFormat, Response<Full<Bytes>>> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyFormat::Json);
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => Ok(BodyFormat::Ndjson),
        _ => Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type '{text}' is not accepted; send application/json or application/x-ndjson"
            ),
        )),
    }
}

impl BodyFormat {
    /// Every record of `body`, or what is wrong and where.
    fn parse(self, body: &[u8]) -> Result<Vec<Val>, String> {
        match self {
            BodyFormat::Json => match value::parse(body) {
                Ok(Val::Arr(items)) => {
                    Ok(jaq_json::Rc::try_unwrap(items).unwrap_or_else(|a| (*a).clone()))
                }
                Ok(v) => Ok(vec![v]),
                Err(e) => Err(format!(
                    "invalid JSON at line {} column {}: {}",
                    e.line(),
                    e.column(),
                    what(&e)
                )),
            },
            BodyFormat::Ndjson => {
                let mut out = Vec::new();
                for (i, line) in body.split(|&b| b == b'\n').enumerate() {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match value::parse(line) {
                        Ok(v) => out.push(v),
                        Err(e) => {
                            return Err(format!(
                                "line {}: invalid JSON at column {}: {}",
                                i + 1,
                                e.column(),
                                what(&e)
                            ));
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// serde_json's message without its own " at line L column C".
fn what(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    full.strip_suffix(&suffix).unwrap_or(&full).to_string()
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut text = body.to_string();
    text.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An error answer: `{"error": "..."}`.
fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

fn with(
    mut r: Response<Full<Bytes>>,
    name: header::HeaderName,
    value: &'static str,
) -> Response<Full<Bytes>> {
    r.headers_mut()
        .insert(name, HeaderValue::from_static(value));
    r
}

/// A 503 the client should retry in a second.
fn retry_later(r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    with(r, header::RETRY_AFTER, "1")
}

impl crate::registry::Documented for HttpServerSource {
    const EXAMPLE: &'static str = HttpServerSource::EXAMPLE;
}

impl crate::registry::SourceComponent for HttpServerSource {
    fn build(
        &self,
        ctx: &BuildContext,
        _checkpoint: Option<Arc<crate::checkpoint::Checkpoint>>,
    ) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        HttpServerSource::build(self, ctx)
    }

    /// Records in the order they were queued.
    fn default_decode_workers(&self) -> usize {
        1
    }

    /// Clients are told their records were taken (`ack: accept`) or how
    /// many were committed and dead-lettered (`ack: commit`).
    fn promises_outcomes(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> BuildContext {
        BuildContext {
            input: "in".into(),
            base_dir: ".".into(),
            state: None,
        }
    }

    #[test]
    fn example_parses_and_port_zero_binds() {
        let cfg: HttpServerSource = serde_saphyr::from_str(HttpServerSource::EXAMPLE).unwrap();
        assert_eq!(cfg.paths.as_ref().unwrap()[0].value, "/ingest");
        let cfg: HttpServerSource = serde_saphyr::from_str("address: 127.0.0.1:0\n").unwrap();
        let server = cfg.open(&ctx()).unwrap();
        assert_ne!(server.local_addr().port(), 0);
    }

    #[test]
    fn bad_options_are_refused_at_their_line() {
        let err = |yaml: &str| {
            let cfg: HttpServerSource = serde_saphyr::from_str(yaml).unwrap();
            cfg.open(&ctx()).unwrap_err().to_string()
        };
        assert!(err("address: 127.0.0.1:0\npaths: [ingest]\n").contains("must start with '/'"));
        assert!(err("address: 127.0.0.1:0\npaths: [/health]\n").contains("health endpoint"));
        assert!(err("address: 127.0.0.1:0\nqueue: 0\n").contains("queue must be at least 1"));
        assert!(
            err("address: 127.0.0.1:0\nbearer_token_env: WEIR_SURELY_UNSET_VARIABLE\n")
                .contains("WEIR_SURELY_UNSET_VARIABLE")
        );
        assert!(err("address: 'nonsense'\n").contains("cannot listen on nonsense"));
    }

    #[test]
    fn bodies_parse_whole_or_say_where_not() {
        let json = |b: &str| BodyFormat::Json.parse(b.as_bytes());
        let nd = |b: &str| BodyFormat::Ndjson.parse(b.as_bytes());
        assert_eq!(json(r#"{"a":1}"#).unwrap().len(), 1);
        assert_eq!(json(r#"[{"a":1},{"a":2},3]"#).unwrap().len(), 3);
        assert_eq!(json("[]").unwrap().len(), 0);
        assert_eq!(
            json("{\"a\":1,\n\"b\" 2}").unwrap_err(),
            "invalid JSON at line 2 column 5: expected `:`"
        );
        assert_eq!(nd("{\"a\":1}\r\n\n  \n{\"a\":2}").unwrap().len(), 2);
        assert_eq!(
            nd("{\"a\":1}\n{\"a\":}\n").unwrap_err(),
            "line 2: invalid JSON at column 6: expected value"
        );
    }

    #[test]
    fn tokens_need_the_bearer_scheme_and_every_byte() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(authorized(&h("Bearer s3cret"), b"s3cret"));
        assert!(authorized(&h("bearer s3cret"), b"s3cret"));
        assert!(!authorized(&h("Bearer s3cre"), b"s3cret"));
        assert!(!authorized(&h("Bearer s3cret!"), b"s3cret"));
        assert!(!authorized(&h("Basic s3cret"), b"s3cret"));
        assert!(!authorized(&HeaderMap::new(), b"s3cret"));
    }

    /// Queued requests are dropped when the intake closes, failing their
    /// acks; later offers are refused; a full queue refuses too.
    #[test]
    fn intake_is_bounded_and_closing_fails_what_waits() {
        let intake = Intake::new("in".into(), 1);
        let (tx, mut rx) = oneshot::channel();
        let tally = Tally::new(2, tx);
        let ack = || {
            let t = tally.clone();
            Ack::new(move |o| t.settle(o))
        };
        assert_eq!(intake.offer(vec![Val::Null, Val::Null], ack), Ok(1));
        assert_eq!(intake.offer(vec![Val::Null], ack), Err(Refused::Full));
        intake.close();
        let totals = rx.try_recv().expect("settled at close");
        assert_eq!(totals.failed, 2);
        assert_eq!(intake.offer(vec![Val::Null], ack), Err(Refused::Closed));
    }
}
