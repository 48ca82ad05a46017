//! A worker: joins the pools of remote stages and runs until stopped.
//!
//! For each stage it hosts, a worker runs a small weir pipeline:
//!
//! ```text
//! pull (durable consumer, shared) -> stage (N workers) -> publish + ack
//! ```
//!
//! The unit of work is one **message** (a batch of records), so the outputs
//! of an input message can be published as messages with ids derived from
//! the input's own id (`<stage>:<input key>:<port>:<n>`), and a redelivered input
//! republishes the same ids, which the broker drops. The input is
//! acknowledged only after every output and dead letter is stored
//! (at-least-once, duplicates removed by id, sinks idempotent on key).
//!
//! - **Errors.** A record whose stage fails with the dead-letter policy goes
//!   to the job's dead-letter stream at once. With `retry` (and for panics),
//!   the whole message is given back with a nak delayed by exponential
//!   backoff, and its outputs are not published; at the last delivery
//!   (`max_deliver`) the failing records are dead-lettered with the reason
//!   and the rest published. A message that never gets a result (its worker
//!   dies on every attempt) is dead-lettered by the coordinator's sweep.
//! - **Flow.** A worker pulls at most twice its concurrency per stage, so
//!   messages do not sit in a worker's queue while their `ack_wait` runs
//!   (tiny messages, as with batching off, want a higher concurrency),
//!   and it sends in-progress acks every `ack_wait / 3` for every message it
//!   holds, so a slow task is not redelivered to another worker.
//! - **Stopping.** Cancelling the token stops the pulls; messages already
//!   pulled are finished, published and acknowledged before `run` returns.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use weir::{BoxError, CancellationToken, Pipeline, PipelineOptions, Sink, WriteError};
use weir_record::Record;

use crate::broker::BrokerError;
use crate::codec::{self, DlqEntry};
use crate::job::{Job, StageStats, WorkerStats, now_ms};
use crate::publish::{Outgoing, Publisher};

/// What a remote stage does to one record: its outputs, each tagged with
/// the output port it leaves by (0 for single-output stages; the branch for
/// a switch).
pub type StageFn = dyn Fn(&Record) -> Result<Vec<(usize, Record)>, BoxError> + Send + Sync;

/// A stage a worker can host.
#[derive(Clone)]
pub struct RemoteStage {
    /// Its name in the pipeline file (and its inbox).
    pub name: String,
    /// For each output port, the inboxes it publishes into.
    pub ports: Vec<Vec<String>>,
    /// The processing.
    pub process: Arc<StageFn>,
    /// Errors are retried through the broker (`on_error: retry`); else
    /// they are dead-lettered at once.
    pub retry_errors: bool,
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Its id in `weir status` (host and pid by default).
    pub id: String,
    /// Messages processed at once, per stage.
    pub concurrency: usize,
    /// How often statistics are written to the job's state bucket.
    pub report_every: Duration,
    /// What this worker runs: it refuses to work for a job whose workers
    /// must run something else (another version of the pipeline file).
    /// `None` skips the check.
    pub fingerprint: Option<crate::job::Fingerprint>,
    /// Install [`give_back_and_exit`] as the process's jq watchdog hook
    /// (see `weir_record::watchdog`): a record whose evaluation cannot
    /// be interrupted ends the worker, after it gave back every other
    /// message it holds.
    pub exit_on_stuck: bool,
}

/// Why a worker refused a job, set by whichever pull noticed first.
type Refusal = Arc<Mutex<Option<String>>>;

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    records_in: AtomicU64,
    records_out: AtomicU64,
    dead: AtomicU64,
    redelivered: AtomicU64,
    retried: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The run of the job these counters belong to (its `started_ms`). A
    /// worker outlives runs (a job of the same name started afresh): when
    /// it opens the consumer of a new run, the counters start from zero, so
    /// `weir status` and the coordinator's report count this run only.
    run: AtomicU64,
}

impl Counters {
    /// Starts counting for `run` (from zero, if another run was counted).
    fn enter_run(&self, run: u64) {
        let was = self.run.swap(run, Ordering::AcqRel);
        if was != run && was != 0 {
            for c in [
                &self.messages,
                &self.records_in,
                &self.records_out,
                &self.dead,
                &self.redelivered,
                &self.retried,
            ] {
                c.store(0, Ordering::Relaxed);
            }
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

/// Messages pulled and not yet acknowledged, for in-progress acks.
pub type InFlight = Arc<Mutex<HashMap<(usize, u64), jetstream::Message>>>;

struct Delivery {
    msg: jetstream::Message,
    seq: u64,
    delivered: i64,
}

enum Verdict {
    Publish {
        outputs: Vec<Vec<Record>>,
        dead: Vec<DlqEntry>,
    },
    Retry(String),
    Garbage(String),
}

struct Outcome {
    msg: jetstream::Message,
    seq: u64,
    delivered: i64,
    records_in: usize,
    verdict: Verdict,
}

/// Runs a worker until `cancel` fires and everything pulled is finished.
/// Spawns its statistics and in-progress-ack tasks on the current runtime
/// and stops them before returning.
///
/// # Errors
/// When publishing keeps failing (the broker down for minutes), or the
/// engine fails.
pub async fn run(
    job: Job,
    stages: Vec<RemoteStage>,
    opts: WorkerOptions,
    cancel: CancellationToken,
) -> Result<WorkerStats, BrokerError> {
    let concurrency = opts.concurrency.max(1);
    let p = Pipeline::with_options(PipelineOptions {
        // Items are whole messages: hold few of them, and let the publish
        // sink take up to `concurrency` outcomes at once (published
        // pipelined).
        batch_size: concurrency,
        buffer: 1,
        ..Default::default()
    });
    let in_flight: InFlight = Arc::default();
    let refusal: Refusal = Arc::default();
    if opts.exit_on_stuck {
        let held = in_flight.clone();
        let names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
        let handle = tokio::runtime::Handle::current();
        weir_record::watchdog::set_hook(move |stuck| {
            give_back_and_exit(stuck, &held, &names, &handle);
        });
    }
    let mut counters = Vec::new();
    for (idx, stage) in stages.iter().enumerate() {
        let c = Arc::new(Counters::default());
        counters.push((stage.name.clone(), c.clone()));
        let pulls = pull_stream(Puller {
            check: (opts.fingerprint.clone(), refusal.clone()),
            job: job.clone(),
            inbox: stage.name.clone(),
            idx,
            prefetch: concurrency * 2,
            in_flight: in_flight.clone(),
            cancel: cancel.clone(),
            counters: c.clone(),
            consumer: None,
            batch: None,
        });
        let s = stage.clone();
        let max_deliver = job.settings.max_deliver;
        p.source(&format!("{}/pull", stage.name), weir::from_stream(pulls))
            .map(&stage.name, move |d: Delivery| process(&s, d, max_deliver))
            .workers(concurrency)
            .sink(
                &format!("{}/publish", stage.name),
                OutcomeSink {
                    publisher: Publisher::new(job.clone()),
                    job: job.clone(),
                    stage: stage.clone(),
                    idx,
                    in_flight: in_flight.clone(),
                    counters: c,
                    settling: tokio::task::JoinSet::new(),
                    unsettled: Arc::default(),
                },
            );
    }
    let stop_aux = CancellationToken::new();
    let progress = tokio::spawn(progress_acks(
        in_flight.clone(),
        job.settings.ack_wait / 3,
        stop_aux.clone(),
    ));
    let stats = move |stopped: bool, last: &mut HashMap<String, (u64, Instant)>| {
        let mut w = WorkerStats {
            worker: opts.id.clone(),
            concurrency,
            updated_ms: now_ms(),
            stopped,
            run: counters
                .iter()
                .map(|(_, c)| c.run.load(Ordering::Acquire))
                .max()
                .unwrap_or(0),
            ..Default::default()
        };
        let held = in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for (i, (name, c)) in counters.iter().enumerate() {
            let records_in = c.records_in.load(Ordering::Relaxed);
            // Records per second since the previous report; 0 for the
            // first (there is no interval to divide by).
            let rate = match last.get(name).copied() {
                Some((prev, at)) if at.elapsed().as_secs_f64() > 0.0 => {
                    records_in.saturating_sub(prev) as f64 / at.elapsed().as_secs_f64()
                }
                _ => 0.0,
            };
            last.insert(name.clone(), (records_in, Instant::now()));
            w.stages.insert(
                name.clone(),
                StageStats {
                    messages: c.messages.load(Ordering::Relaxed),
                    records_in,
                    records_out: c.records_out.load(Ordering::Relaxed),
                    dead: c.dead.load(Ordering::Relaxed),
                    redelivered: c.redelivered.load(Ordering::Relaxed),
                    retried: c.retried.load(Ordering::Relaxed),
                    in_flight: held.keys().filter(|(s, _)| *s == i).count() as u64,
                    rate,
                    last_error: c
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                },
            );
        }
        w
    };
    let reporter = {
        let job = job.clone();
        let stop = stop_aux.clone();
        let stats = stats.clone();
        let every = opts.report_every;
        // The job may be resumed by a coordinator with another pipeline
        // (after a replay) while this worker runs: checked at every report.
        let check = (opts.fingerprint.clone(), refusal.clone());
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut last = HashMap::new();
            loop {
                let _ = job.put_worker(&stats(false, &mut last)).await;
                if let Ok(Some(state)) = job.state().await
                    && refuse(&check, &state, job.names.job(), &cancel)
                {
                    return;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        })
    };
    let result = p.run().await;
    stop_aux.cancel();
    let _ = progress.await;
    let _ = reporter.await;
    let final_stats = stats(true, &mut HashMap::new());
    let _ = job.put_worker(&final_stats).await;
    if let Some(why) = refusal.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(BrokerError::Mismatch(why));
    }
    result.map_err(|e| BrokerError::Request(format!("worker stopped: {e}")))?;
    Ok(final_stats)
}

/// One stage's pulls: what [`pull_stream`] needs and keeps.
struct Puller {
    /// This worker's fingerprint, and where a refusal is recorded.
    check: (Option<crate::job::Fingerprint>, Refusal),
    job: Job,
    inbox: String,
    /// The stage's index (its key in `in_flight`).
    idx: usize,
    prefetch: usize,
    in_flight: InFlight,
    cancel: CancellationToken,
    counters: Arc<Counters>,
    consumer: Option<jetstream::consumer::PullConsumer>,
    batch: Option<jetstream::consumer::pull::Batch>,
}

/// Messages pulled from one stage's consumer, by one-shot pull requests
/// of at most `2 × concurrency` messages (expiring after a second), so a
/// busy worker does not hoard messages whose `ack_wait` runs out in its
/// queue. On cancel no new request is made, and the messages of the current
/// one are still taken and finished: a stopping worker leaves nothing
/// delivered and unacknowledged behind.
fn pull_stream(st: Puller) -> impl futures::Stream<Item = Delivery> + Send + 'static {
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(batch) = st.batch.as_mut() {
                match batch.next().await {
                    Some(Ok(msg)) => {
                        let Ok(info) = msg.info() else { continue };
                        let (seq, delivered) = (info.stream_sequence, info.delivered);
                        st.counters.messages.fetch_add(1, Ordering::Relaxed);
                        if delivered > 1 {
                            st.counters.redelivered.fetch_add(1, Ordering::Relaxed);
                        }
                        st.in_flight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert((st.idx, seq), msg.clone());
                        return Some((
                            Delivery {
                                msg,
                                seq,
                                delivered,
                            },
                            st,
                        ));
                    }
                    Some(Err(_)) => {
                        // A broker restart or a deleted consumer (the job
                        // started afresh): open it again.
                        st.batch = None;
                        st.consumer = None;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                    None => st.batch = None,
                }
            }
            if st.cancel.is_cancelled() {
                return None;
            }
            if st.consumer.is_none() {
                // The job may not exist yet (a worker started before the
                // coordinator): wait for it.
                match st.job.consumer(&st.inbox).await {
                    Ok(c) => {
                        // A consumer opened: maybe of a new run of the job.
                        if let Ok(Some(state)) = st.job.state().await {
                            // Of a new run, maybe of another pipeline.
                            if refuse(&st.check, &state, st.job.names.job(), &st.cancel) {
                                return None;
                            }
                            st.counters.enter_run(state.started_ms);
                        }
                        st.consumer = Some(c);
                    }
                    Err(_) => {
                        tokio::select! {
                            () = st.cancel.cancelled() => return None,
                            () = tokio::time::sleep(Duration::from_millis(250)) => continue,
                        }
                    }
                }
            }
            let consumer = st.consumer.as_ref().expect("set above");
            match consumer
                .batch()
                .max_messages(st.prefetch)
                .expires(Duration::from_secs(1))
                .messages()
                .await
            {
                Ok(b) => st.batch = Some(b),
                Err(_) => {
                    st.consumer = None;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    })
}

/// How long messages given back by a stuck worker wait before they are
/// delivered again: long enough for the worker to be gone.
const GIVE_BACK_DELAY: Duration = Duration::from_secs(1);

/// What a worker does with a record whose jq evaluation went over its time
/// limit and cannot be interrupted (its thread cannot be stopped, and
/// would spin for ever): it says so (stage, position, limit), gives back
/// (nak) every message it holds except the one with that record, so they
/// go to other workers at once, and exits with status 1. The stuck
/// message is no longer extended by in-progress acks: after `ack_wait` the
/// broker delivers it again, and after `max_deliver` deliveries the
/// coordinator dead-letters it ("no result after N deliveries").
pub fn give_back_and_exit(
    stuck: &weir_record::watchdog::Stuck,
    held: &InFlight,
    stages: &[String],
    handle: &tokio::runtime::Handle,
) {
    eprintln!("error: {stuck}");
    let held: Vec<(usize, jetstream::Message)> = held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|((idx, _), m)| (*idx, m.clone()))
        .collect();
    let others: Vec<jetstream::Message> = held
        .into_iter()
        .filter(|(idx, m)| {
            let holds_it = stages.get(*idx).is_some_and(|s| *s == stuck.stage)
                && codec::decode(&m.payload).is_ok_and(|records| {
                    records
                        .iter()
                        .any(|r| stuck.position.as_deref() == Some(&r.pos.to_string()))
                });
            !holds_it
        })
        .map(|(_, m)| m)
        .collect();
    let n = others.len();
    // On the watchdog's thread, not the runtime's: blocking is allowed.
    handle.block_on(async move {
        // Confirmed: an unconfirmed nak may still sit in the client when
        // the process exits. Delayed: this worker's own pull requests stay
        // open until it exits, and would take the messages back.
        let naks = futures::future::join_all(
            others
                .iter()
                .map(|m| m.double_ack_with(AckKind::Nak(Some(GIVE_BACK_DELAY)))),
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), naks).await;
    });
    eprintln!("worker exiting: {n} other messages given back to the pool");
    std::process::exit(1);
}

/// Checks this worker's fingerprint against an unfinished job's; on a difference,
/// records why and stops the worker. Returns whether it refused.
fn refuse(
    check: &(Option<crate::job::Fingerprint>, Refusal),
    state: &crate::job::JobState,
    job: &str,
    cancel: &CancellationToken,
) -> bool {
    let (Some(mine), Some(theirs)) = (&check.0, &state.fingerprint) else {
        return false;
    };
    // A finished job's fingerprint says what ran, not what will: a worker
    // started before the coordinator of the next run (of an edited file)
    // waits for that run instead of refusing the old one.
    if !matches!(
        state.status,
        crate::job::Status::Running | crate::job::Status::Failed
    ) {
        return false;
    }
    let diffs = theirs.differences(mine);
    if diffs.is_empty() {
        return false;
    }
    *check.1.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
        "this worker's pipeline file differs from the one job '{job}' runs: {}; start the worker with the coordinator's file",
        diffs.join("; ")
    ));
    cancel.cancel();
    true
}

/// Runs a stage over one message.
fn process(stage: &RemoteStage, d: Delivery, max_deliver: i64) -> Outcome {
    let Delivery {
        msg,
        seq,
        delivered,
    } = d;
    let records = match codec::check_version(msg.headers.as_ref())
        .and_then(|()| codec::decode(&msg.payload))
    {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                msg,
                seq,
                delivered,
                records_in: 0,
                verdict: Verdict::Garbage(e.to_string()),
            };
        }
    };
    let last_attempt = max_deliver > 0 && delivered >= max_deliver;
    let mut outputs: Vec<Vec<Record>> = vec![Vec::new(); stage.ports.len().max(1)];
    let mut dead = Vec::new();
    for r in &records {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| (stage.process)(r)));
        let (error, retryable) = match result {
            Ok(Ok(outs)) => {
                for (port, o) in outs {
                    if let Some(v) = outputs.get_mut(port) {
                        v.push(o);
                    }
                }
                continue;
            }
            Ok(Err(e)) => (weir::error_chain(e.as_ref()), stage.retry_errors),
            Err(panic) => (format!("panicked: {}", panic_message(&*panic)), true),
        };
        if retryable && !last_attempt {
            return Outcome {
                msg,
                seq,
                delivered,
                records_in: records.len(),
                verdict: Verdict::Retry(error),
            };
        }
        let error = if retryable {
            format!("gave up after {delivered} deliveries: {error}")
        } else {
            error
        };
        dead.push(DlqEntry::for_record(
            &stage.name,
            error,
            delivered as u32,
            r,
        ));
    }
    Outcome {
        msg,
        seq,
        delivered,
        records_in: records.len(),
        verdict: Verdict::Publish { outputs, dead },
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// What names the messages a worker publishes for input message `msg`:
/// a hash of the input's own `Nats-Msg-Id`, which is the same whenever
/// the same content is published (see [`crate::publish`]). Not its stream
/// sequence: after a broker restart the broker no longer knows the ids of
/// messages it had already deleted, so a restarted coordinator's
/// republished input can be stored again under a new sequence, and outputs
/// named after the sequence would then be new messages (and dead letters
/// twice). The sequence is the fallback for messages without an id.
fn message_key(msg: &jetstream::Message, seq: u64) -> String {
    match msg
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
    {
        Some(id) => format!("{:016x}", crate::publish::fnv1a(&[id.as_str().as_bytes()])),
        None => format!("s{seq}"),
    }
}

/// Nak delay before delivery `delivered + 1`: 1 s, 2 s, 4 s, … up to 30 s.
pub fn retry_delay(delivered: i64) -> Duration {
    let exp = delivered.clamp(1, 6) - 1;
    Duration::from_secs(1 << exp).min(Duration::from_secs(30))
}

/// Publishes outcomes, then acknowledges their messages.
struct OutcomeSink {
    publisher: Publisher,
    job: Job,
    stage: RemoteStage,
    idx: usize,
    in_flight: InFlight,
    counters: Arc<Counters>,
    settling: tokio::task::JoinSet<Result<(), String>>,
    unsettled: Arc<std::sync::atomic::AtomicUsize>,
}

impl Sink<Outcome> for OutcomeSink {
    type Output = ();

    async fn write(&mut self, mut items: Vec<Outcome>) -> Result<(), WriteError<Outcome>> {
        let mut out = Vec::new();
        let names = &self.job.names;
        let limits = self.publisher.limits();
        let max_body = limits.bytes;
        for o in &mut items {
            let seq = o.seq;
            let key = message_key(&o.msg, seq);
            match &mut o.verdict {
                Verdict::Publish { outputs, dead } => {
                    for (port, records) in outputs.iter_mut().enumerate() {
                        let mut big = Vec::new();
                        for inbox in self.stage.ports.get(port).into_iter().flatten() {
                            let mut n = 0;
                            let chunks = crate::publish::chunk(
                                records,
                                limits,
                                &names.subject(inbox),
                                &format!("{}:{key}:{port}", self.stage.name),
                                &mut n,
                            );
                            out.extend(chunks.messages);
                            big = chunks.too_large;
                        }
                        // An output too large for any message: dead-lettered
                        // (once, whatever the number of readers), named after
                        // the input message and its place among the outputs.
                        for i in big.into_iter().rev() {
                            let r = records.remove(i);
                            dead.push(crate::publish::too_large_entry(
                                &self.stage.name,
                                &r,
                                max_body,
                            ));
                        }
                    }
                    for (i, d) in dead.iter().enumerate() {
                        let id = format!("{}:{key}:dl:{i}", self.stage.name);
                        out.push(Outgoing::dead_letter(names, id, d, max_body));
                    }
                }
                Verdict::Garbage(e) => {
                    let entry = DlqEntry::unreadable(
                        &self.stage.name,
                        e.clone(),
                        o.delivered as u32,
                        &o.msg.payload,
                    );
                    let id = format!("{}:{key}:garbage", self.stage.name);
                    out.push(Outgoing::dead_letter(names, id, &entry, max_body));
                }
                Verdict::Retry(_) => {}
            }
        }
        // Send now, confirm and acknowledge in the background: the next
        // messages are processed while the broker stores these. At most
        // SETTLE_WINDOW input messages are unconfirmed; `finish` waits for
        // all. (Counted in messages, not writes: with small messages a
        // write often holds one, and 8 writes in flight capped a worker at
        // a few thousand messages per second.)
        let mut sent = Vec::with_capacity(out.len());
        for m in out {
            sent.push(self.publisher.send(m).await);
        }
        let publisher = self.publisher.clone();
        let counters = self.counters.clone();
        let in_flight = self.in_flight.clone();
        let idx = self.idx;
        let n = items.len();
        let unsettled = self.unsettled.clone();
        unsettled.fetch_add(n, Ordering::AcqRel);
        self.settling.spawn(async move {
            let result = async {
                publisher
                    .confirm_all(sent)
                    .await
                    .map_err(|e| e.to_string())?;
                settle(items, &counters, &in_flight, idx).await;
                Ok(())
            }
            .await;
            unsettled.fetch_sub(n, Ordering::AcqRel);
            result
        });
        while let Some(r) = self.settling.try_join_next() {
            flatten(r).map_err(|e| WriteError::all(Vec::new(), BoxError::from(e)))?;
        }
        while self.unsettled.load(Ordering::Acquire) > SETTLE_WINDOW {
            if let Some(r) = self.settling.join_next().await {
                flatten(r).map_err(|e| WriteError::all(Vec::new(), BoxError::from(e)))?;
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(), BoxError> {
        while let Some(r) = self.settling.join_next().await {
            flatten(r).map_err(BoxError::from)?;
        }
        Ok(())
    }
}

/// Input messages a worker's publish sink holds unconfirmed.
const SETTLE_WINDOW: usize = 256;

fn flatten(r: Result<Result<(), String>, tokio::task::JoinError>) -> Result<(), String> {
    r.map_err(|e| format!("publishing task failed: {e}"))?
}

/// Acknowledges (or gives back) the messages whose outputs are stored.
async fn settle(items: Vec<Outcome>, counters: &Counters, in_flight: &InFlight, idx: usize) {
    for o in &items {
        let kind = match &o.verdict {
            Verdict::Publish { outputs, dead } => {
                counters.records_out.fetch_add(
                    outputs.iter().map(Vec::len).sum::<usize>() as u64,
                    Ordering::Relaxed,
                );
                counters
                    .dead
                    .fetch_add(dead.len() as u64, Ordering::Relaxed);
                AckKind::Ack
            }
            Verdict::Garbage(_) => AckKind::Term,
            Verdict::Retry(reason) => {
                counters.retried.fetch_add(1, Ordering::Relaxed);
                *counters
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                AckKind::Nak(Some(retry_delay(o.delivered)))
            }
        };
        // The records of a message count once it is settled.
        if !matches!(o.verdict, Verdict::Retry(_)) {
            counters
                .records_in
                .fetch_add(o.records_in as u64, Ordering::Relaxed);
        }
        // A lost ack means a redelivery, whose outputs the broker drops
        // as duplicates: no retry needed here.
        let _ = o.msg.ack_with(kind).await;
        in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(idx, o.seq));
    }
}

/// Sends `+WPI` for every held message every `every`.
async fn progress_acks(in_flight: InFlight, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let held: Vec<jetstream::Message> = in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for m in held {
            let _ = m.ack_with(AckKind::Progress).await;
        }
    }
}
