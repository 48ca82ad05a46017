//! Publishing into an inbox: batched, deduplicated, retried, bounded.
//!
//! **Message ids.** Every message carries a deterministic `Nats-Msg-Id`, so
//! a publish repeated after a crash or a lost acknowledgement is dropped by
//! the broker (within the stream's duplicate window):
//! - a worker's outputs: `<stage>:<input key>:<port>:<n>`: a hash of the
//!   input message's own id and the output message's index (its dead
//!   letters `<stage>:<input key>:dl:<i>`). Remote stages are deterministic
//!   functions of their input message, so a redelivered (or republished)
//!   input produces the same messages with the same ids;
//! - a coordinator's flows (sources and the stages after them):
//!   `<producer>><inbox>:<input>:<n>`, the n-th message of that producer's
//!   records read from pipeline input `<input>`, when those come in the same
//!   order in every run (the flow starts at the job's inputs, every stage
//!   on it keeps order, and a merge on it joins producers of different
//!   inputs): a restarted coordinator reading its inputs again produces the
//!   same messages with the same ids. Flows whose content depends on timing
//!   (a merge of producers that read the same input, an inbox read by the
//!   coordinator) get ids unique to the run instead: reusing an id for
//!   different content would make the broker drop new records as
//!   duplicates.
//!
//! **Message size.** A message holds at most `records_per_message` records
//! and at most [`Publisher::max_body`] bytes (the server's advertised
//! `max_payload`, less room for headers). Boundaries depend only on the
//! records, so ids stay deterministic. A record that cannot fit a message
//! on its own is dead-lettered with reason `too_large`.
//!
//! **Backpressure, retries and errors.** Messages are published pipelined
//! and their acknowledgements awaited together. A refused message (the
//! inbox is full, `discard: new`) is backpressure: it is published again,
//! same id, with backoff, for as long as it takes. A timed-out or
//! unanswered one (the broker restarting) is retried the same way for up
//! to `give_up_after`, with a warning after a few seconds naming the inbox.
//! Anything else (a message the server refuses) is an error at once, naming
//! the inbox.

use std::ops::Range;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use bytes::Bytes;
use weir::{BoxError, DeadLetter, Sink, WriteError};
use weir_record::Record;

use crate::broker::BrokerError;
use crate::codec::{self, DlqEntry, FORMAT_HEADER, FORMAT_VERSION};
use crate::job::Job;

/// Room kept in every message for its headers (`Weir-Format`,
/// `Nats-Msg-Id`): ids hold stage names, so they are short, but a margin
/// costs nothing against a limit of a megabyte.
pub const HEADER_ROOM: usize = 1024;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Where.
    pub subject: String,
    /// Its `Nats-Msg-Id`.
    pub id: String,
    /// The body.
    pub body: Bytes,
}

impl Outgoing {
    /// A dead letter for the job's dead-letter stream, cut down to fit a
    /// message of `max_body` bytes (see [`DlqEntry::fit`]).
    pub fn dead_letter(
        names: &crate::job::Names,
        id: String,
        entry: &DlqEntry,
        max_body: usize,
    ) -> Self {
        Outgoing {
            subject: names.dlq_subject(),
            id,
            body: entry.encode_within(max_body).into(),
        }
    }
}

/// How a failed publish is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The inbox is full: backpressure, wait as long as it takes.
    Full,
    /// The broker did not answer (restarting, unreachable): retry for a
    /// while.
    Transient(String),
    /// The server refused the message: retrying cannot help.
    Permanent(String),
}

fn classify(e: &PublishError) -> Failure {
    let text = e.to_string();
    match e.kind() {
        // No responders (JetStream not yet back after a restart) comes as
        // "stream not found".
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound => Failure::Transient(text),
        _ if is_full(&text) => Failure::Full,
        _ => Failure::Permanent(text),
    }
}

/// Publishes messages and waits until the broker stored each of them.
#[derive(Clone)]
pub struct Publisher {
    job: Job,
    /// How long one message may keep failing for want of an answer before
    /// the publish is an error (the broker down for longer than this fails
    /// the run).
    pub give_up_after: Duration,
    /// After how long a streak of unanswered publishes is reported (a
    /// warning naming the inbox): a restarting broker takes a second or
    /// two, a misconfigured one forever.
    pub warn_after: Duration,
    /// Fired when the run is being stopped: a publish still waiting (for
    /// room in a full inbox, for the broker) gives up then, so that a
    /// stopping run is not held forever by an inbox nobody reads any more.
    pub stop: Option<weir::CancellationToken>,
}

impl Publisher {
    /// A publisher for `job`'s streams.
    pub fn new(job: Job) -> Self {
        Publisher {
            job,
            give_up_after: Duration::from_secs(300),
            warn_after: Duration::from_secs(5),
            stop: None,
        }
    }

    /// The largest message body the broker takes, less [`HEADER_ROOM`].
    pub fn max_body(&self) -> usize {
        self.job
            .broker
            .client
            .max_payload()
            .saturating_sub(HEADER_ROOM)
            .max(1)
    }

    /// How records are cut into messages on this job's edges.
    pub fn limits(&self) -> MessageLimits {
        MessageLimits {
            records: self.job.settings.records_per_message.max(1),
            bytes: self.max_body(),
        }
    }

    fn headers(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(FORMAT_HEADER, FORMAT_VERSION);
        h.insert(async_nats::header::NATS_MESSAGE_ID, wire_id(id).as_ref());
        h
    }

    /// Sends one message without waiting for the broker's acknowledgement;
    /// [`Publisher::confirm`] waits for it.
    pub async fn send(&self, m: Outgoing) -> Sent {
        let f = self
            .job
            .broker
            .js
            .publish_with_headers(m.subject.clone(), Self::headers(&m.id), m.body.clone())
            .await;
        Sent { msg: m, ack: f }
    }

    /// Waits until a sent message is stored, publishing it again (same
    /// id) when it was refused or its acknowledgement was lost.
    ///
    /// # Errors
    /// As [`Publisher::publish_all`].
    pub async fn confirm(&self, sent: Sent) -> Result<(), BrokerError> {
        self.confirm_all(vec![sent]).await
    }

    /// [`Publisher::confirm`] for many messages, waited for together: after
    /// a broker restart every lost acknowledgement times out at once, not
    /// one after the other.
    ///
    /// # Errors
    /// As [`Publisher::publish_all`].
    pub async fn confirm_all(&self, sent: Vec<Sent>) -> Result<(), BrokerError> {
        let results = futures::future::join_all(sent.into_iter().map(|s| async move {
            let res = match s.ack {
                Ok(f) => f.await.map(|_| ()),
                Err(e) => Err(e),
            };
            (s.msg, res)
        }))
        .await;
        let mut failed = Vec::new();
        for (m, res) in results {
            if let Err(e) = res {
                if let Failure::Permanent(why) = classify(&e) {
                    return Err(refused(&m, &why));
                }
                failed.push(m);
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        self.publish_all(&failed).await.map(|_| ())
    }

    /// Publishes every message; returns once the broker acknowledged all
    /// of them (how many were duplicates it dropped).
    ///
    /// # Errors
    /// At once when the server refuses a message for a reason other than a
    /// full inbox (too large, say); when a message goes unanswered for
    /// [`Publisher::give_up_after`]. Either names the inbox.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped midway, some messages may be stored and
    /// others not. Publishing again is safe (same ids).
    pub async fn publish_all(&self, msgs: &[Outgoing]) -> Result<u64, BrokerError> {
        let mut started = Instant::now();
        let mut warned = false;
        let mut todo: Vec<usize> = (0..msgs.len()).collect();
        let mut duplicates = 0;
        let mut backoff = Duration::from_millis(2);
        while !todo.is_empty() {
            let mut futures: Vec<(usize, Result<PublishAckFuture, PublishError>)> =
                Vec::with_capacity(todo.len());
            for &i in &todo {
                let m = &msgs[i];
                let f = self
                    .job
                    .broker
                    .js
                    .publish_with_headers(m.subject.clone(), Self::headers(&m.id), m.body.clone())
                    .await;
                futures.push((i, f));
            }
            // Awaited together, so that lost acknowledgements time out at
            // once rather than one after the other.
            let results = futures::future::join_all(futures.into_iter().map(|(i, f)| async move {
                let res = match f {
                    Ok(f) => f.await,
                    Err(e) => Err(e),
                };
                (i, res)
            }))
            .await;
            let mut failed = Vec::new();
            let mut full = false;
            let mut last_err = String::new();
            for (i, res) in results {
                match res {
                    Ok(ack) => duplicates += u64::from(ack.duplicate),
                    Err(e) => {
                        match classify(&e) {
                            Failure::Permanent(why) => return Err(refused(&msgs[i], &why)),
                            Failure::Full => full = true,
                            Failure::Transient(why) => last_err = why,
                        }
                        failed.push(i);
                    }
                }
            }
            todo = failed;
            if todo.is_empty() {
                break;
            }
            // A full inbox (`discard: new`) is backpressure, not a failure:
            // wait as long as it takes. Only unanswered publishes (the
            // broker unreachable) count towards giving up.
            if full && last_err.is_empty() {
                started = Instant::now();
            }
            let subject = &msgs[todo[0]].subject;
            if !warned && started.elapsed() > self.warn_after {
                warned = true;
                tracing::warn!(
                    "publishing to {subject} gets no answer for {:?} ({last_err}); retrying for up to {:?}",
                    started.elapsed(),
                    self.give_up_after
                );
            }
            if started.elapsed() > self.give_up_after {
                return Err(BrokerError::Request(format!(
                    "publishing to {subject} failed for {:?}: {last_err}",
                    self.give_up_after
                )));
            }
            if self.stop.as_ref().is_some_and(|t| t.is_cancelled()) {
                return Err(BrokerError::Request(format!(
                    "the run stopped while publishing to {subject} waited ({})",
                    if full {
                        "the inbox is full"
                    } else {
                        last_err.as_str()
                    }
                )));
            }
            // Room in a full inbox comes back as soon as its readers
            // acknowledge: poll it briskly. An unreachable broker is
            // tried less and less often, up to once a second.
            let cap = if full {
                Duration::from_millis(20)
            } else {
                Duration::from_secs(1)
            };
            backoff = backoff.min(cap);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(cap);
        }
        Ok(duplicates)
    }
}

/// Ids hold stage, input and file names, which users choose: a long one is
/// replaced by its hash (the same for the same id), so that headers stay
/// well within [`HEADER_ROOM`].
pub fn wire_id(id: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 200;
    if id.len() <= MAX {
        std::borrow::Cow::Borrowed(id)
    } else {
        std::borrow::Cow::Owned(format!(
            "h:{:016x}{:016x}",
            fnv1a(&[id.as_bytes()]),
            fnv1a(&[id.as_bytes(), b"weir"])
        ))
    }
}

/// The error of a message the server refused.
fn refused(m: &Outgoing, why: &str) -> BrokerError {
    BrokerError::Request(format!(
        "publishing to {} refused: {why} (message {}, {} bytes)",
        m.subject,
        m.id,
        m.body.len()
    ))
}

/// Whether a publish error says the stream is full.
fn is_full(error: &str) -> bool {
    error.contains("maximum messages") || error.contains("maximum bytes")
}

/// A message sent, its acknowledgement not yet awaited.
pub struct Sent {
    msg: Outgoing,
    ack: Result<PublishAckFuture, PublishError>,
}

/// Messages a deterministic [`EdgeSink`] keeps unconfirmed: enough to keep
/// the link busy while the broker stores them (a round trip per engine
/// batch would cap an edge at a few batches per millisecond).
const SEND_WINDOW: usize = 256;

/// How many records, and how many bytes of body, a message may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// Records per message (`records_per_message`).
    pub records: usize,
    /// Bytes of body (see [`Publisher::max_body`]).
    pub bytes: usize,
}

impl MessageLimits {
    /// At most `records` records and a megabyte (nats-server's default
    /// `max_payload`, less [`HEADER_ROOM`]).
    pub fn records(records: usize) -> Self {
        MessageLimits {
            records: records.max(1),
            bytes: (1 << 20) - HEADER_ROOM,
        }
    }
}

/// Records cut into messages.
#[derive(Debug, Default)]
pub struct Chunks {
    /// The messages, in order.
    pub messages: Vec<Outgoing>,
    /// For each message, the records it holds (indices into the input).
    pub ranges: Vec<Range<usize>>,
    /// Records too large for a message of their own (indices, in order).
    pub too_large: Vec<usize>,
}

/// Splits records into messages within `limits`, with ids `<prefix>:<n>`
/// counting from `*next`. A message ends when it holds `limits.records`
/// records or the next record would take it past `limits.bytes`; a record
/// larger than `limits.bytes` on its own goes in no message and is listed
/// in [`Chunks::too_large`].
pub fn chunk(
    records: &[Record],
    limits: MessageLimits,
    subject: &str,
    prefix: &str,
    next: &mut u64,
) -> Chunks {
    let mut out = Chunks::default();
    let mut buf: Vec<u8> = Vec::new();
    // The first record of the open message.
    let mut first = 0;
    let mut emit = |buf: &mut Vec<u8>, range: Range<usize>, out: &mut Chunks| {
        // Which records it holds, by origin, too: an id must never name two
        // different sets of records (the broker would drop the second as a
        // duplicate, and the records only it holds would be lost), whatever
        // cut them (a failed run's partial last message, sizes that differ
        // between runs). Their content is left out on purpose: a stage
        // whose output differs from run to run (jq `now`) must still give
        // the same records the same id, so that a resumed run's copy is
        // dropped instead of stored twice.
        let id = format!(
            "{prefix}:{next}.{:016x}",
            origins_hash(&records[range.clone()])
        );
        *next += 1;
        out.messages.push(Outgoing {
            subject: subject.to_string(),
            id,
            body: Bytes::from(std::mem::take(buf)),
        });
        out.ranges.push(range);
    };
    for (i, r) in records.iter().enumerate() {
        let start = buf.len();
        codec::encode_into(std::slice::from_ref(r), &mut buf);
        if buf.len() - start > limits.bytes {
            // Too large even alone (a record is never split): it closes
            // the open message and goes in none.
            buf.truncate(start);
            if !buf.is_empty() {
                emit(&mut buf, first..i, &mut out);
            }
            out.too_large.push(i);
            first = i + 1;
            continue;
        }
        if buf.len() > limits.bytes {
            // This record starts the next message.
            let rest = buf.split_off(start);
            emit(&mut buf, first..i, &mut out);
            buf = rest;
            first = i;
        }
        if i + 1 - first >= limits.records {
            emit(&mut buf, first..i + 1, &mut out);
            first = i + 1;
        }
    }
    if !buf.is_empty() {
        emit(&mut buf, first..records.len(), &mut out);
    }
    out
}

/// Reason of a record too large for a message.
pub const TOO_LARGE: &str = "too_large";

/// The dead letter of a record too large to travel in a message.
pub fn too_large_entry(stage: &str, record: &Record, max_body: usize) -> DlqEntry {
    let size = codec::encode(std::slice::from_ref(record)).len();
    DlqEntry::for_record(
        stage,
        format!(
            "{TOO_LARGE}: the record takes {size} bytes on the wire, more than a message holds ({max_body} bytes: the broker's max_payload less {HEADER_ROOM} for headers)"
        ),
        1,
        record,
    )
}

/// An engine sink that publishes records into an inbox: the end of a
/// coordinator flow whose reader is remote.
///
/// A deterministic flow is cut into **lanes**, one per pipeline input the
/// records were read from (`Position::input`), each with its own message
/// numbers: `<producer>><inbox>:<input>:<n>`. A flow that merges producers
/// fed by different inputs interleaves them differently in every run, but
/// the records of each input still come in the same order, so each lane's
/// messages, and their ids, are the same in every run.
pub struct EdgeSink {
    publisher: Publisher,
    limits: MessageLimits,
    subject: String,
    prefix: String,
    /// The component that produces the flow, for dead letters.
    producer: String,
    /// Deterministic flows: per input, what waits to be sent.
    lanes: std::collections::BTreeMap<std::sync::Arc<str>, Lane>,
    /// Other flows: what this write sends.
    pending: Vec<Record>,
    /// Other flows: the next message number.
    next: u64,
    on_finish: Option<Box<dyn FnOnce(u64) + Send>>,
    published: u64,
    too_large: u64,
    carry: bool,
    window: std::collections::VecDeque<Sent>,
    /// Other flows: records taken so far (they name too-large letters).
    consumed: u64,
    /// Fired when the run is being stopped (a signal, a lost lease): the
    /// flow then ends early, and a lane's partial last message is not
    /// published (its records carry no acks: the resumed run reads them
    /// again and sends the complete message).
    stopping: Option<weir::CancellationToken>,
    /// A write failed: its records were given back, and the lanes no
    /// longer hold what follows what was sent. Nothing more is sent (a
    /// message cut across the gap would carry an id the resumed run never
    /// gives it, and its records would be processed twice).
    broken: bool,
}

/// One input's share of a deterministic flow.
#[derive(Default)]
struct Lane {
    pending: Vec<Record>,
    /// Its next message number.
    next: u64,
    /// Records of the lane taken off `pending` so far (they name the dead
    /// letters of records too large to send).
    consumed: u64,
}

/// Messages (and too-large dead letters) cut from some records.
struct Cut {
    messages: Vec<Outgoing>,
    dead: Vec<Outgoing>,
    /// Records in `messages`.
    records: u64,
    /// Records taken off the front of the pending list.
    taken: usize,
    /// The next message number after these.
    next: u64,
}

impl EdgeSink {
    /// Publishes into `inbox` of the job; `on_finish` is called with the
    /// records published once the flow ends and everything is stored.
    ///
    /// `deterministic`: in every run, the records of each pipeline input
    /// come in the same order with the same content (the flow starts at the
    /// job's inputs, every stage on it keeps order, and no two producers it
    /// merges read the same input), and they carry no acknowledgements.
    /// Then a partial message waits for more records, so message boundaries
    /// and ids do not depend on engine batch sizes or timing, and a
    /// restarted coordinator publishes the same ids again. Otherwise (a
    /// merge of flows from one input, a flow fed by an inbox, whose
    /// records' acks must not fire before they are published) every batch
    /// is published before `write` returns, with ids unique to this run:
    /// after a coordinator restart such records may be published twice.
    pub fn new(
        job: &Job,
        inbox: &str,
        producer: &str,
        deterministic: bool,
        on_finish: impl FnOnce(u64) + Send + 'static,
    ) -> Self {
        let prefix = if deterministic {
            format!("{producer}>{inbox}")
        } else {
            format!(
                "{producer}>{inbox}@{}.{}",
                crate::job::now_ms(),
                std::process::id()
            )
        };
        let publisher = Publisher::new(job.clone());
        EdgeSink {
            limits: publisher.limits(),
            publisher,
            subject: job.names.subject(inbox),
            prefix,
            producer: producer.to_string(),
            lanes: std::collections::BTreeMap::new(),
            pending: Vec::new(),
            next: 0,
            on_finish: Some(Box::new(on_finish)),
            published: 0,
            too_large: 0,
            carry: deterministic,
            window: std::collections::VecDeque::new(),
            consumed: 0,
            stopping: None,
            broken: false,
        }
    }

    /// Whether the run is being stopped (see [`EdgeSink::stopping`]).
    fn is_stopping(&self) -> bool {
        self.stopping.as_ref().is_some_and(|t| t.is_cancelled())
    }

    /// Tells the sink when the run is being stopped rather than ending
    /// (see [`EdgeSink`]'s `stopping`).
    pub fn stopping(mut self, token: weir::CancellationToken) -> Self {
        self.publisher.stop = Some(token.clone());
        self.stopping = Some(token);
        self
    }

    /// Cuts `records` into messages with ids `<prefix>:<n>` from `next`,
    /// and dead letters for records too large (named `<prefix>:too_large:
    /// <consumed + i>`). Unless `all`, an open last message (fewer records
    /// than a message holds, at the end) is left out, its records not taken.
    fn cut(&self, records: &[Record], prefix: &str, next: u64, consumed: u64, all: bool) -> Cut {
        let mut n = next;
        let mut chunks = chunk(records, self.limits, &self.subject, prefix, &mut n);
        let mut taken = records.len();
        if !all
            && let Some(last) = chunks.ranges.last()
            && last.end == records.len()
            && last.len() < self.limits.records
        {
            taken = last.start;
            chunks.ranges.pop();
            chunks.messages.pop();
            n -= 1;
        }
        let max_body = self.limits.bytes;
        let dead = chunks
            .too_large
            .iter()
            .filter(|&&i| i < taken)
            .map(|&i| {
                let entry = too_large_entry(&self.producer, &records[i], max_body);
                let id = format!("{prefix}:{TOO_LARGE}:{}", consumed + i as u64);
                Outgoing::dead_letter(&self.publisher.job.names, id, &entry, max_body)
            })
            .collect();
        Cut {
            records: chunks.ranges.iter().map(|r| r.len() as u64).sum(),
            messages: chunks.messages,
            dead,
            taken,
            next: n,
        }
    }

    /// Publishes what is pending: all of it when `all`, else the complete
    /// messages (a partial last message of a lane waits for more records).
    async fn flush(&mut self, all: bool) -> Result<(), BrokerError> {
        if !self.carry {
            if self.pending.is_empty() {
                return Ok(());
            }
            let cut = self.cut(&self.pending, &self.prefix, self.next, self.consumed, true);
            if !cut.dead.is_empty() {
                self.publisher.publish_all(&cut.dead).await?;
            }
            self.publisher.publish_all(&cut.messages).await?;
            self.next = cut.next;
            self.consumed += cut.taken as u64;
            self.published += cut.records;
            self.too_large += cut.dead.len() as u64;
            self.pending.clear();
            return Ok(());
        }
        let inputs: Vec<std::sync::Arc<str>> = self.lanes.keys().cloned().collect();
        for input in inputs {
            let lane = &self.lanes[&input];
            if lane.pending.is_empty() {
                continue;
            }
            let prefix = format!("{}:{input}", self.prefix);
            let cut = self.cut(&lane.pending, &prefix, lane.next, lane.consumed, all);
            if !cut.dead.is_empty() {
                self.publisher.publish_all(&cut.dead).await?;
            }
            // Records without acks: confirmations may lag behind `write`
            // (up to SEND_WINDOW messages); `finish` waits for all.
            for m in cut.messages {
                let sent = self.publisher.send(m).await;
                self.window.push_back(sent);
                if self.window.len() >= SEND_WINDOW {
                    // Confirm the older half together.
                    let older: Vec<Sent> = self.window.drain(..SEND_WINDOW / 2).collect();
                    self.publisher.confirm_all(older).await?;
                }
            }
            self.published += cut.records;
            self.too_large += cut.dead.len() as u64;
            let lane = self.lanes.get_mut(&input).expect("a lane of this flow");
            lane.next = cut.next;
            lane.consumed += cut.taken as u64;
            lane.pending.drain(..cut.taken);
        }
        Ok(())
    }

    /// Records dead-lettered because no message could hold them.
    pub fn too_large(&self) -> u64 {
        self.too_large
    }
}

impl Sink<Record> for EdgeSink {
    type Output = u64;

    async fn write(&mut self, items: Vec<Record>) -> Result<(), WriteError<Record>> {
        if self.broken {
            return Err(WriteError::all(
                items,
                BoxError::from("not sent: an earlier publish of this edge failed"),
            ));
        }
        if self.carry {
            // Deterministic flows: complete messages go now, a partial one
            // waits for more records or the end (see `new`). (They carry
            // no acks: on a failure their records are read again from the
            // inputs when the job is resumed.)
            let mut added: std::collections::BTreeMap<std::sync::Arc<str>, usize> =
                std::collections::BTreeMap::new();
            for r in items {
                *added.entry(r.pos.input.clone()).or_default() += 1;
                self.lanes
                    .entry(r.pos.input.clone())
                    .or_default()
                    .pending
                    .push(r);
            }
            return match self.flush(false).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    self.broken = self.is_stopping();
                    // Give back what of this write was not sent, so the
                    // report does not count it as written.
                    let mut unsent = Vec::new();
                    for (input, n) in added {
                        if let Some(lane) = self.lanes.get_mut(&input) {
                            let keep = lane.pending.len().saturating_sub(n);
                            unsent.extend(lane.pending.drain(keep..));
                        }
                    }
                    Err(WriteError::all(unsent, BoxError::from(e.to_string())))
                }
            };
        }
        self.pending = items;
        match self.flush(true).await {
            Ok(()) => Ok(()),
            // Nothing of this write is stored for sure: give it all back,
            // so its acks fail (and the inbox messages that fed it are
            // delivered again) instead of being settled as written.
            Err(e) => {
                self.broken = self.is_stopping();
                Err(WriteError::all(
                    std::mem::take(&mut self.pending),
                    BoxError::from(e.to_string()),
                ))
            }
        }
    }

    async fn finish(mut self) -> Result<u64, BoxError> {
        // A run that stopped (cancelled or failed) ends its lanes anywhere:
        // their partial last messages stay unsent (a resumed run sends them
        // whole).
        let stopped = self.is_stopping();
        if self.broken {
            return Ok(self.published);
        }
        let mut sent = self.flush(!stopped).await;
        if sent.is_ok() {
            let rest: Vec<Sent> = self.window.drain(..).collect();
            sent = self.publisher.confirm_all(rest).await;
        }
        match sent {
            Ok(()) => {}
            // A stopped run gave up waiting (an inbox full that nobody
            // reads any more): what was not stored is read again from the
            // inputs by the resumed run, so stopping is not a failure.
            // (Asked again: the run may have been stopped while this
            // finish waited.)
            Err(e) if self.is_stopping() => {
                tracing::warn!("{}: stopped before all was published: {e}", self.prefix);
                return Ok(self.published);
            }
            Err(e) => return Err(BoxError::from(e.to_string())),
        }
        if let Some(f) = self.on_finish.take() {
            f(self.published);
        }
        Ok(self.published)
    }
}

/// An engine dead-letter sink publishing into the job's dead-letter stream.
///
/// Ids are derived from what the dead letter is, not from when it was
/// written: `dl:<epoch>:<stage>:<position>:<hash of record, raw text and
/// error>:<n>`, `n` counting identical letters of one position within the
/// run. A restarted
/// coordinator that reads its inputs again rejects the same lines again and
/// publishes the same ids, which the broker drops; `<epoch>` is the job's
/// replay count, so a record replayed with `weir dlq replay` and rejected
/// again is kept.
pub struct DlqSink {
    publisher: Publisher,
    names: crate::job::Names,
    stored: u64,
    epoch: u64,
    /// Identical dead letters seen in this run, by stage, position and
    /// content hash (per position, because dead letters of different
    /// records reach the sink in an order that varies between runs).
    occurrences: std::collections::HashMap<(String, String, u64), u32>,
}

impl DlqSink {
    /// Dead letters of `job` in replay epoch `epoch` (see
    /// [`crate::job::JobState::replays`]).
    pub fn new(job: &Job, epoch: u64) -> Self {
        DlqSink {
            publisher: Publisher::new(job.clone()),
            names: job.names.clone(),
            stored: 0,
            epoch,
            occurrences: std::collections::HashMap::new(),
        }
    }
}

/// FNV-1a, 64 bits: stable across Rust releases (`DefaultHasher` is not).
/// Parts are fed one by one, each closed by a 0xff byte (so that `["ab",
/// "c"]` and `["a", "bc"]` differ).
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn part(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }
}

/// [`Fnv1a`] of `parts`.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = Fnv1a::new();
    for p in parts {
        h.part(p);
    }
    h.0
}

/// A hash of where each of `records` comes from (input, file, line), in
/// order: equal for the same records in any run of a deterministic flow.
pub(crate) fn origins_hash(records: &[Record]) -> u64 {
    let mut h = Fnv1a::new();
    for r in records {
        h.part(r.pos.input.as_bytes());
        h.part(r.pos.file.as_deref().unwrap_or("\u{0}").as_bytes());
        h.part(&r.pos.line.to_le_bytes());
    }
    h.0
}

/// The content hash of a dead letter: its record, raw text and error.
pub fn dlq_hash(e: &DlqEntry) -> u64 {
    fnv1a(&[
        e.record.to_string().as_bytes(),
        e.raw.to_string().as_bytes(),
        e.error.as_bytes(),
    ])
}

/// The id of the `occurrence`-th dead letter of `e`'s content in a run
/// of replay epoch `epoch` (see [`DlqSink`]).
pub fn dlq_id(e: &DlqEntry, epoch: u64, occurrence: u32) -> String {
    format!(
        "dl:{epoch}:{}:{}:{:016x}:{occurrence}",
        e.stage,
        e.position.as_deref().unwrap_or("-"),
        dlq_hash(e),
    )
}

impl Sink<DeadLetter> for DlqSink {
    type Output = u64;

    async fn write(&mut self, items: Vec<DeadLetter>) -> Result<(), WriteError<DeadLetter>> {
        let max_body = self.publisher.max_body();
        let mut counted = Vec::with_capacity(items.len());
        let msgs: Vec<Outgoing> = items
            .iter()
            .map(|d| {
                let entry = entry_of(d);
                let key = (
                    entry.stage.clone(),
                    entry.position.clone().unwrap_or_default(),
                    dlq_hash(&entry),
                );
                let n = self.occurrences.entry(key.clone()).or_default();
                *n += 1;
                let id = dlq_id(&entry, self.epoch, *n);
                counted.push(key);
                Outgoing::dead_letter(&self.names, id, &entry, max_body)
            })
            .collect();
        match self.publisher.publish_all(&msgs).await {
            Ok(_) => {
                self.stored += msgs.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Given back: the same letters will be counted again.
                for key in counted {
                    if let Some(n) = self.occurrences.get_mut(&key) {
                        *n -= 1;
                    }
                }
                Err(WriteError::all(items, BoxError::from(e.to_string())))
            }
        }
    }

    async fn finish(self) -> Result<u64, BoxError> {
        Ok(self.stored)
    }
}

/// A dead letter of the engine as a stream entry.
pub fn entry_of(d: &DeadLetter) -> DlqEntry {
    let v = weir_record::dead_letter::letter_json(d);
    let mut e: DlqEntry = serde_json::from_value(v).expect("letter_json has the entry's fields");
    let pos = d
        .item::<Record>()
        .map(|r| r.pos.clone())
        .or_else(|| d.item::<weir_record::Raw>().map(|r| r.pos().clone()));
    if let Some(p) = pos {
        e.file = p.file.as_deref().map(str::to_string);
        e.line = Some(p.line);
    }
    e
}
