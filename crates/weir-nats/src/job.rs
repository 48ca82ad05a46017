//! A job on the broker: its streams, consumers and state.
//!
//! Every component whose input crosses the broker has an **inbox**: one
//! stream (`WEIR_<job>_<inbox>`, subject `weir.<job>.<inbox>`) that all its
//! producers publish into (that is fan-in across machines), read through one
//! durable pull consumer (named after the inbox) shared by all its workers
//! (that is a worker pool across machines).
//!
//! - Inbox streams use work-queue retention: an acknowledged message is
//!   deleted, so "the stream is empty" means "every message was committed",
//!   which is what makes completion exact.
//! - They are bounded (`edge_capacity` messages, `edge_capacity_bytes`)
//!   with `discard: new`: a full
//!   inbox refuses new messages and its producers retry with backoff, so a
//!   slow stage slows its producers instead of losing the oldest work.
//! - Pool consumers: explicit ack, `ack_wait`, `max_deliver`,
//!   `max_ack_pending` (work in flight for the whole pool).
//! - Coordinator consumers (inboxes of stages that must see every record:
//!   aggregates, dedupe, sinks) have one reader, unlimited deliveries and no
//!   pending limit, because a whole-input aggregate holds its inputs
//!   unacknowledged until it is written; they are recreated when a
//!   coordinator restarts, which redelivers what the old one held.
//!
//! Job state (status, whether the sources finished) and per-worker
//! statistics live in the key-value bucket `weir_jobs`, so `weir status`
//! can show any job and a restarted `weir run` resumes instead of starting
//! over.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{consumer, kv, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::broker::{Broker, BrokerError};

/// The key-value bucket holding job state and worker statistics.
pub const STATE_BUCKET: &str = "weir_jobs";

/// How a job's edges behave on the broker. Defaults are in one place:
/// [`EdgeSettings::default`].
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeSettings {
    /// Records per message. Batching is what makes a remote edge fast; 1
    /// turns it off.
    pub records_per_message: usize,
    /// Messages an inbox holds before producers are slowed down.
    pub edge_capacity: i64,
    /// Bytes an inbox holds before producers are slowed down (the other
    /// bound, for large messages).
    pub edge_capacity_bytes: i64,
    /// Time a worker has to acknowledge a message before it is redelivered
    /// to another worker. Workers send in-progress acks for long tasks.
    pub ack_wait: Duration,
    /// Deliveries of one message before its records are dead-lettered.
    pub max_deliver: i64,
    /// Messages in flight (delivered, unacknowledged) per pool stage.
    pub max_ack_pending: i64,
    /// How long the broker remembers message ids to drop duplicates.
    pub duplicate_window: Duration,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            records_per_message: 256,
            edge_capacity: 10_000,
            edge_capacity_bytes: 256 << 20,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 256,
            duplicate_window: Duration::from_secs(3600),
        }
    }
}

/// One inbox of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxSpec {
    /// The component reading it (stage or output name).
    pub name: String,
    /// Read by a worker pool (`true`) or by the coordinator alone.
    pub pool: bool,
    /// Its reader holds messages unacknowledged until a window closes (a
    /// coordinator aggregate or batch, or stages feeding one): the stream
    /// is then not bounded by `edge_capacity`, since a bound would stop
    /// the producers before the window can close, and the job would never
    /// end. Its backlog waits on the broker's disk, not in memory.
    #[serde(default)]
    pub holds: bool,
}

/// Names on the broker for a job.
#[derive(Debug, Clone)]
pub struct Names {
    job: String,
}

/// Keeps `[A-Za-z0-9_-]`, replaces the rest: stream and subject tokens
/// must not contain `.`, `*`, `>` or spaces.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `name` as a key token, one-to-one: `[A-Za-z0-9-]` is kept, every other
/// byte (of its UTF-8) becomes `_` and two hex digits (`ticks.eu` is
/// `ticks_2eeu`, `ticks_eu` is `ticks_5feu`), so that distinct names never
/// share a key, and the token is valid in a key-value key.
pub fn escape_key(name: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "_{b:02x}");
        }
    }
    out
}

impl Names {
    /// Names for job `job`.
    pub fn new(job: &str) -> Self {
        Names { job: sanitize(job) }
    }
    /// The job's id as used on the broker.
    pub fn job(&self) -> &str {
        &self.job
    }
    /// The stream of an inbox.
    pub fn stream(&self, inbox: &str) -> String {
        format!("WEIR_{}_{}", self.job, sanitize(inbox))
    }
    /// The subject of an inbox.
    pub fn subject(&self, inbox: &str) -> String {
        format!("weir.{}.{}", self.job, sanitize(inbox))
    }
    /// The durable consumer of an inbox.
    pub fn consumer(&self, inbox: &str) -> String {
        sanitize(inbox)
    }
    /// The dead-letter stream.
    pub fn dlq_stream(&self) -> String {
        format!("WEIR_{}__DLQ", self.job)
    }
    /// The dead-letter subject.
    pub fn dlq_subject(&self) -> String {
        format!("weir.{}._dlq", self.job)
    }
    /// The state key of the job.
    pub fn state_key(&self) -> String {
        format!("{}.state", self.job)
    }
    /// The statistics key of one worker.
    pub fn worker_key(&self, worker: &str) -> String {
        format!("{}.w.{}", self.job, sanitize(worker))
    }
    /// The key of a number a source keeps between runs (a schedule's last
    /// handled tick), named `key` by the source (escaped one-to-one, see
    /// [`escape_key`]).
    pub fn source_state_key(&self, key: &str) -> String {
        format!("{}.s.{}", self.job, escape_key(key))
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Started and not finished.
    Running,
    /// Every record committed or dead-lettered.
    Done,
    /// The coordinator stopped with an error.
    Failed,
}

/// A job's state in the key-value bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// The pipeline file it runs.
    pub pipeline: String,
    /// Running, done or failed.
    pub status: Status,
    /// The sources have published everything; a restarted coordinator does
    /// not read them again.
    pub sources_done: bool,
    /// The inboxes, in pipeline order.
    pub inboxes: Vec<InboxSpec>,
    /// Milliseconds since the epoch.
    pub started_ms: u64,
    /// Milliseconds since the epoch.
    pub updated_ms: u64,
    /// What the job ended with, when done.
    #[serde(default)]
    pub summary: Option<String>,
    /// Records per message on the job's edges.
    #[serde(default)]
    pub records_per_message: usize,
    /// What the job's workers must run (see [`Fingerprint`]); `None` for
    /// jobs started by an older weir.
    #[serde(default)]
    pub fingerprint: Option<Fingerprint>,
    /// How many times `weir dlq replay` put records back: the epoch of the
    /// coordinator's dead-letter ids (see [`crate::publish::DlqSink`]).
    #[serde(default)]
    pub replays: u64,
}

/// What the workers of a job run, so that a worker started on another
/// version of the pipeline file refuses to join instead of mixing its
/// results into the job: per remote stage, a hash of its configuration
/// (canonical: key order and formatting do not count, nor do settings that
/// cannot change results, such as `workers`) and of every file it reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// By stage name.
    pub stages: BTreeMap<String, StagePrint>,
    /// The coordinator's part (empty in a worker's): a hash of the whole
    /// pipeline file as data. A resumed job reads its inputs again and
    /// relies on the broker dropping what it published before; with other
    /// coordinator-side stages or outputs the two runs' results would mix.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pipeline: String,
    /// The coordinator's part (empty in a worker's): what else the job
    /// reads, by what it is ("input file x.jsonl", "file s.json (read by
    /// stage 'v')", "environment variable NAME"): a file's size and a hash
    /// of its first and last 4 KiB (an input) or its content (a file a
    /// stage reads), a hash of a variable's value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
}

/// One remote stage's part of a [`Fingerprint`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagePrint {
    /// Hash of the stage's canonical configuration and of where its
    /// outputs go.
    pub config: String,
    /// Hash of each file the stage reads, by path as written.
    pub files: BTreeMap<String, String>,
}

impl Fingerprint {
    /// How `mine` (a worker's, for the stages it hosts) differs from what
    /// the job runs; empty when it may join.
    pub fn differences(&self, mine: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        for (stage, m) in &mine.stages {
            let Some(j) = self.stages.get(stage) else {
                out.push(format!("stage '{stage}' is not a remote stage of the job"));
                continue;
            };
            if j.config != m.config {
                out.push(format!(
                    "stage '{stage}': its configuration (or where its outputs go) differs"
                ));
            }
            for (path, hash) in &m.files {
                match j.files.get(path) {
                    Some(h) if h == hash => {}
                    Some(_) => out.push(format!("stage '{stage}': file {path} differs")),
                    None => out.push(format!("stage '{stage}': reads {path}, the job's does not")),
                }
            }
            for path in j.files.keys() {
                if !m.files.contains_key(path) {
                    out.push(format!(
                        "stage '{stage}': the job's reads {path}, this one does not"
                    ));
                }
            }
        }
        out
    }

    /// How `now` (a coordinator's, resuming this job) differs from what the
    /// job was started with, beyond [`differences`](Self::differences):
    /// the pipeline file and what else it reads (input files only while
    /// they are still to be read: `inputs_done` says they are not). Empty
    /// when it may resume. A
    /// job recorded by an older weir (no coordinator part) is not compared.
    pub fn resume_differences(&self, now: &Fingerprint, inputs_done: bool) -> Vec<String> {
        let mut out = self.differences(now);
        out.extend(
            self.stages
                .keys()
                .filter(|k| !now.stages.contains_key(*k))
                .map(|k| format!("stage '{k}' is no longer remote")),
        );
        if self.pipeline.is_empty() {
            return out;
        }
        if self.pipeline != now.pipeline {
            out.push("the pipeline file differs".to_string());
        }
        // A job whose inputs were read to the end does not read them
        // again: only what else it reads counts.
        let counts = |what: &str| !(inputs_done && what.starts_with("input file "));
        for (what, was) in self.inputs.iter().filter(|(w, _)| counts(w)) {
            match now.inputs.get(what) {
                Some(is) if is == was => {}
                Some(is) => out.push(format!("{what} changed ({was} -> {is})")),
                None => out.push(format!("{what} is no longer read")),
            }
        }
        for what in now.inputs.keys().filter(|w| counts(w)) {
            if !self.inputs.contains_key(what) {
                out.push(format!("{what} is new"));
            }
        }
        out
    }
}

/// Per-stage counters one worker reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    /// Messages received (including redeliveries).
    pub messages: u64,
    /// Records received.
    pub records_in: u64,
    /// Records published downstream.
    pub records_out: u64,
    /// Records dead-lettered.
    pub dead: u64,
    /// Messages received that had been delivered before.
    pub redelivered: u64,
    /// Messages given back for a retry (nak with delay).
    pub retried: u64,
    /// Messages in flight on this worker now.
    pub in_flight: u64,
    /// Records per second over the last report interval.
    pub rate: f64,
    /// The last error that sent a message back for a retry.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// One worker's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// The worker's id (host and pid).
    pub worker: String,
    /// Workers (concurrent messages) per stage.
    pub concurrency: usize,
    /// By stage.
    pub stages: BTreeMap<String, StageStats>,
    /// Milliseconds since the epoch.
    pub updated_ms: u64,
    /// The worker is draining or gone.
    pub stopped: bool,
    /// The run of the job these counters belong to (its `started_ms`).
    #[serde(default)]
    pub run: u64,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A job's handles on the broker.
#[derive(Clone)]
pub struct Job {
    /// The connection.
    pub broker: Broker,
    /// Names.
    pub names: Names,
    /// Edge behaviour.
    pub settings: EdgeSettings,
    /// The state bucket.
    pub kv: kv::Store,
}

/// What [`Job::start`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// No running job of this name: everything was created afresh.
    Fresh,
    /// A running job of this name: its streams were kept.
    Resumed {
        /// The sources had already published everything.
        sources_done: bool,
    },
}

impl Job {
    /// Opens the state bucket (creating it) for job `job`.
    ///
    /// # Errors
    /// When the bucket cannot be created.
    pub async fn open(
        broker: Broker,
        job: &str,
        settings: EdgeSettings,
    ) -> Result<Job, BrokerError> {
        let kv = match broker.js.get_key_value(STATE_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => broker
                .js
                .create_key_value(kv::Config {
                    bucket: STATE_BUCKET.to_string(),
                    history: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| BrokerError::request("create the job state bucket", e))?,
        };
        Ok(Job {
            broker,
            names: Names::new(job),
            settings,
            kv,
        })
    }

    /// The job's state, if it exists.
    ///
    /// # Errors
    /// When the bucket cannot be read or the entry is not a job state.
    pub async fn state(&self) -> Result<Option<JobState>, BrokerError> {
        let got = self
            .kv
            .get(self.names.state_key())
            .await
            .map_err(|e| BrokerError::request("read job state", e))?;
        got.map(|b| {
            serde_json::from_slice(&b).map_err(|e| BrokerError::request("decode job state", e))
        })
        .transpose()
    }

    /// Writes the job's state.
    ///
    /// # Errors
    /// When the bucket cannot be written.
    pub async fn put_state(&self, state: &JobState) -> Result<(), BrokerError> {
        let body = serde_json::to_vec(state).expect("state serializes");
        self.kv
            .put(self.names.state_key(), body.into())
            .await
            .map_err(|e| BrokerError::request("write job state", e))?;
        Ok(())
    }

    /// Starts or resumes the job: an unfinished job of the same name
    /// (running, or failed) is resumed, its streams and backlog kept;
    /// otherwise, or when `fresh`, its old streams are deleted and created
    /// afresh. Hold the job's [`crate::lease::Lease`] while calling this.
    ///
    /// # Errors
    /// When a stream or consumer cannot be created, or an unfinished job
    /// was started with another pipeline (other inboxes or another
    /// [`Fingerprint`]): finishing it with this file would mix versions.
    pub async fn start(
        &self,
        pipeline: &str,
        inboxes: &[InboxSpec],
        fingerprint: &Fingerprint,
        fresh: bool,
    ) -> Result<Start, BrokerError> {
        let prior = self.state().await?;
        let start = match &prior {
            Some(s) if matches!(s.status, Status::Running | Status::Failed) && !fresh => {
                if let Some(theirs) = &s.fingerprint {
                    let why = theirs.resume_differences(fingerprint, s.sources_done);
                    if !why.is_empty() {
                        return Err(BrokerError::Mismatch(format!(
                            "job '{}' was started with another version of the pipeline ({}); finish it with the same file, or start over with --fresh",
                            self.names.job(),
                            why.join("; ")
                        )));
                    }
                }
                if s.inboxes != inboxes {
                    return Err(BrokerError::Mismatch(format!(
                        "job '{}' is unfinished with other stages ({}); finish it with the same file, start over with --fresh, or use another --job",
                        self.names.job(),
                        s.inboxes
                            .iter()
                            .map(|i| i.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                Start::Resumed {
                    sources_done: s.sources_done,
                }
            }
            _ => Start::Fresh,
        };
        if start == Start::Fresh {
            for i in inboxes {
                let _ = self
                    .broker
                    .js
                    .delete_stream(self.names.stream(&i.name))
                    .await;
            }
            let _ = self.broker.js.delete_stream(self.names.dlq_stream()).await;
            // Stale worker statistics of an earlier run.
            if let Ok(mut keys) = self.kv.keys().await {
                let prefix = format!("{}.w.", self.names.job());
                let mut stale = Vec::new();
                while let Some(Ok(k)) = keys.next().await {
                    if k.starts_with(&prefix) {
                        stale.push(k);
                    }
                }
                for k in stale {
                    let _ = self.kv.purge(k).await;
                }
            }
        }
        // The state first: a worker that opens a consumer of this run must
        // already read this run's `started_ms` (it counts per run).
        let now = now_ms();
        let state = JobState {
            pipeline: pipeline.to_string(),
            status: Status::Running,
            sources_done: matches!(start, Start::Resumed { sources_done: true }),
            inboxes: inboxes.to_vec(),
            started_ms: prior
                .as_ref()
                .filter(|_| start != Start::Fresh)
                .map_or(now, |p| p.started_ms),
            updated_ms: now,
            summary: None,
            records_per_message: self.settings.records_per_message,
            replays: prior
                .as_ref()
                .filter(|_| start != Start::Fresh)
                .map_or(0, |p| p.replays),
            fingerprint: Some(fingerprint.clone()),
        };
        self.put_state(&state).await?;
        for i in inboxes {
            let s = self.create_inbox(i).await?;
            if !i.pool {
                // A restarted coordinator: drop the old reader so that what
                // it held is delivered again now, not after its ack wait.
                let _ = s.delete_consumer(&self.names.consumer(&i.name)).await;
            }
            self.create_consumer(&s, i).await?;
        }
        self.broker
            .js
            .get_or_create_stream(stream::Config {
                name: self.names.dlq_stream(),
                subjects: vec![self.names.dlq_subject()],
                storage: stream::StorageType::File,
                duplicate_window: self.settings.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| BrokerError::request("create the dead-letter stream", e))?;
        Ok(start)
    }

    async fn create_inbox(&self, spec: &InboxSpec) -> Result<stream::Stream, BrokerError> {
        let inbox = spec.name.as_str();
        let (max_messages, max_bytes) = if spec.holds {
            (-1, -1)
        } else {
            (
                self.settings.edge_capacity,
                self.settings.edge_capacity_bytes,
            )
        };
        self.broker
            .js
            .get_or_create_stream(stream::Config {
                name: self.names.stream(inbox),
                subjects: vec![self.names.subject(inbox)],
                retention: stream::RetentionPolicy::WorkQueue,
                discard: stream::DiscardPolicy::New,
                max_messages,
                max_bytes,
                storage: stream::StorageType::File,
                duplicate_window: self.settings.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| BrokerError::request(format!("create the inbox stream of '{inbox}'"), e))
    }

    async fn create_consumer(&self, s: &stream::Stream, i: &InboxSpec) -> Result<(), BrokerError> {
        let name = self.names.consumer(&i.name);
        let config = if i.pool {
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: self.settings.ack_wait,
                max_deliver: self.settings.max_deliver,
                max_ack_pending: self.settings.max_ack_pending,
                ..Default::default()
            }
        } else {
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                // One reader that holds messages until the end of the job
                // (a whole-input aggregate): it is recreated on restart, so
                // a long wait costs nothing.
                ack_wait: Duration::from_secs(24 * 3600),
                max_deliver: -1,
                max_ack_pending: -1,
                ..Default::default()
            }
        };
        s.get_or_create_consumer(&name, config)
            .await
            .map_err(|e| BrokerError::request(format!("create the consumer of '{}'", i.name), e))?;
        Ok(())
    }

    /// Deletes and recreates the consumer of a coordinator inbox, so that
    /// every message it delivered and nobody acknowledged is delivered
    /// again now (rather than after its day-long `ack_wait`): what a
    /// broker restart lost in transit comes back.
    ///
    /// # Errors
    /// When the stream or consumer cannot be reached or created.
    pub async fn reset_coordinator_consumer(&self, inbox: &str) -> Result<(), BrokerError> {
        let s = self.inbox(inbox).await?;
        let _ = s.delete_consumer(&self.names.consumer(inbox)).await;
        let spec = InboxSpec {
            name: inbox.to_string(),
            pool: false,
            holds: false,
        };
        self.create_consumer(&s, &spec).await
    }

    /// Acknowledges a delivered message by its reply subject (kept instead
    /// of the whole message while its records are processed).
    pub fn acker(
        &self,
        reply: Option<async_nats::Subject>,
    ) -> async_nats::jetstream::message::Acker {
        async_nats::jetstream::message::Acker::new(self.broker.js.clone(), reply)
    }

    /// The stream of an inbox.
    ///
    /// # Errors
    /// When it does not exist (the job was not started) or the broker
    /// cannot be asked.
    pub async fn inbox(&self, inbox: &str) -> Result<stream::Stream, BrokerError> {
        self.broker
            .js
            .get_stream(self.names.stream(inbox))
            .await
            .map_err(|e| BrokerError::request(format!("open the inbox of '{inbox}'"), e))
    }

    /// The pull consumer of an inbox.
    ///
    /// # Errors
    /// As [`Job::inbox`].
    pub async fn consumer(&self, inbox: &str) -> Result<consumer::PullConsumer, BrokerError> {
        self.inbox(inbox)
            .await?
            .get_consumer(&self.names.consumer(inbox))
            .await
            .map_err(|e| BrokerError::request(format!("open the consumer of '{inbox}'"), e))
    }

    /// Backlog numbers of an inbox, straight from the broker.
    ///
    /// # Errors
    /// As [`Job::inbox`].
    pub async fn inbox_counts(&self, inbox: &str) -> Result<InboxCounts, BrokerError> {
        let mut s = self.inbox(inbox).await?;
        let info = s
            .info()
            .await
            .map_err(|e| BrokerError::request(format!("inbox '{inbox}' info"), e))?;
        let st = info.state.clone();
        let c = s
            .consumer_info(self.names.consumer(inbox))
            .await
            .map_err(|e| BrokerError::request(format!("consumer '{inbox}' info"), e))?;
        Ok(InboxCounts {
            stored: st.messages,
            first_seq: st.first_sequence,
            last_seq: st.last_sequence,
            pending: c.num_pending,
            ack_pending: c.num_ack_pending as u64,
            redelivered: c.num_redelivered as u64,
            waiting: c.num_waiting as u64,
        })
    }

    /// Every worker's latest statistics.
    ///
    /// # Errors
    /// When the bucket cannot be listed.
    pub async fn workers(&self) -> Result<Vec<WorkerStats>, BrokerError> {
        let prefix = format!("{}.w.", self.names.job());
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| BrokerError::request("list workers", e))?;
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            if let Ok(k) = k
                && k.starts_with(&prefix)
            {
                names.push(k);
            }
        }
        let mut out = Vec::new();
        for k in names {
            if let Ok(Some(b)) = self.kv.get(&k).await
                && let Ok(w) = serde_json::from_slice::<WorkerStats>(&b)
            {
                out.push(w);
            }
        }
        Ok(out)
    }

    /// The statistics of the workers counting run `run` (a job's
    /// `started_ms`).
    ///
    /// # Errors
    /// As [`Job::workers`].
    pub async fn workers_of_run(&self, run: u64) -> Result<Vec<WorkerStats>, BrokerError> {
        let mut w = self.workers().await?;
        w.retain(|w| w.run == run);
        Ok(w)
    }

    /// The numbers sources kept between runs of the job
    /// ([`Names::source_state_key`]), by the key the source gave
    /// (escaped as in the bucket, see [`escape_key`]): `Err` for a value
    /// that is not text, for the source to decide about.
    ///
    /// # Errors
    /// When the bucket cannot be listed or a value read.
    pub async fn source_state(
        &self,
    ) -> Result<BTreeMap<String, Result<String, String>>, BrokerError> {
        let mut out = BTreeMap::new();
        for k in self.source_state_keys().await? {
            let got = self
                .kv
                .get(&k)
                .await
                .map_err(|e| BrokerError::request(format!("read source state '{k}'"), e))?;
            // Deleted since it was listed: nothing saved.
            let Some(b) = got else { continue };
            let n = std::str::from_utf8(&b).map(str::to_owned).map_err(|_| {
                format!(
                    "'{k}' on the broker is not text: '{}'",
                    String::from_utf8_lossy(&b[..b.len().min(40)])
                )
            });
            let key = k.split_once(".s.").map_or(k.as_str(), |(_, key)| key);
            out.insert(key.to_string(), n);
        }
        Ok(out)
    }

    /// Deletes what sources kept between runs of the job (it starts over).
    ///
    /// # Errors
    /// When the bucket cannot be listed.
    pub async fn purge_source_state(&self) -> Result<(), BrokerError> {
        for k in self.source_state_keys().await? {
            let _ = self.kv.purge(k).await;
        }
        Ok(())
    }

    /// Saves a value a source keeps between runs.
    ///
    /// # Errors
    /// When the bucket cannot be written.
    pub async fn put_source_state(&self, key: &str, value: &str) -> Result<(), BrokerError> {
        self.kv
            .put(
                self.names.source_state_key(key),
                value.to_owned().into_bytes().into(),
            )
            .await
            .map_err(|e| BrokerError::request("write source state", e))?;
        Ok(())
    }

    async fn source_state_keys(&self) -> Result<Vec<String>, BrokerError> {
        let prefix = self.names.source_state_key("");
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| BrokerError::request("list source state", e))?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| BrokerError::request("list source state", e))?;
            if k.starts_with(&prefix) {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// Publishes a worker's statistics.
    ///
    /// # Errors
    /// When the bucket cannot be written.
    pub async fn put_worker(&self, stats: &WorkerStats) -> Result<(), BrokerError> {
        let body = serde_json::to_vec(stats).expect("stats serialize");
        self.kv
            .put(self.names.worker_key(&stats.worker), body.into())
            .await
            .map_err(|e| BrokerError::request("write worker stats", e))?;
        Ok(())
    }

    /// Dead letters stored for the job.
    ///
    /// # Errors
    /// When the dead-letter stream cannot be read.
    pub async fn dlq_count(&self) -> Result<u64, BrokerError> {
        let mut s = self
            .broker
            .js
            .get_stream(self.names.dlq_stream())
            .await
            .map_err(|e| BrokerError::request("open the dead-letter stream", e))?;
        let info = s
            .info()
            .await
            .map_err(|e| BrokerError::request("dead-letter stream info", e))?;
        Ok(info.state.messages)
    }

    /// Every job in the state bucket.
    ///
    /// # Errors
    /// When the bucket cannot be listed.
    pub async fn list(broker: &Broker) -> Result<Vec<(String, JobState)>, BrokerError> {
        let Ok(kv) = broker.js.get_key_value(STATE_BUCKET).await else {
            return Ok(Vec::new());
        };
        let mut keys = kv
            .keys()
            .await
            .map_err(|e| BrokerError::request("list jobs", e))?;
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            if let Ok(k) = k
                && let Some(job) = k.strip_suffix(".state")
            {
                names.push((job.to_string(), k));
            }
        }
        let mut out = Vec::new();
        for (job, k) in names {
            if let Ok(Some(b)) = kv.get(&k).await
                && let Ok(s) = serde_json::from_slice::<JobState>(&b)
            {
                out.push((job, s));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// An inbox's numbers on the broker, in messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxCounts {
    /// Messages stored: not yet committed (work queue).
    pub stored: u64,
    /// First stored sequence.
    pub first_seq: u64,
    /// Last sequence ever stored.
    pub last_seq: u64,
    /// Not yet delivered.
    pub pending: u64,
    /// Delivered, not acknowledged.
    pub ack_pending: u64,
    /// Redelivered and not yet acknowledged.
    pub redelivered: u64,
    /// Pull requests waiting (idle workers).
    pub waiting: u64,
}

impl InboxCounts {
    /// Messages committed so far (deleted from the work queue).
    pub fn done(&self) -> u64 {
        self.last_seq.saturating_sub(self.stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two inputs the pipeline accepts as distinct names get distinct
    /// state keys, valid in a key-value key.
    #[test]
    fn source_state_keys_of_distinct_inputs_differ() {
        let n = Names::new("job");
        let a = n.source_state_key("schedule.ticks.eu");
        let b = n.source_state_key("schedule.ticks_eu");
        assert_ne!(a, b);
        assert_eq!(a, "job.s.schedule_2eticks_2eeu");
        assert_eq!(b, "job.s.schedule_2eticks_5feu");
        for name in ["a b", "a*b", "a>b", "é", "a_2eb"] {
            let k = escape_key(name);
            assert!(
                k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'),
                "{k}"
            );
        }
        assert_ne!(escape_key("a.b"), escape_key("a_2eb"));
    }
}
