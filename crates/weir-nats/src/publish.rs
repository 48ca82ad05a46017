//! Publishing into an inbox: batched, deduplicated, retried, bounded.
//!
//! **Message ids.** Every message carries a deterministic `Nats-Msg-Id`, so
//! a publish repeated after a crash or a lost acknowledgement is dropped by
//! the broker (within the stream's duplicate window):
//! - a worker's outputs: `<stage>:<input seq>:<n>`: the input message's
//!   stream sequence and the output message's index. Remote stages are
//!   deterministic functions of their input message, so a redelivered input
//!   produces the same messages with the same ids;
//! - a coordinator's flows (sources and the stages after them):
//!   `<producer>:<n>`, the n-th message of that producer. The flow is kept
//!   in order, so a restarted coordinator reading its inputs again produces
//!   the same messages with the same ids.
//!
//! **Backpressure and retries.** Messages are published pipelined and their
//! acknowledgements awaited together. A refused message (the inbox is full,
//! `discard: new`) or a timed-out one (the broker restarting) is published
//! again, same id, with backoff, until `give_up_after`; so a full edge
//! slows its producer, and nothing is dropped.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use weir::{BoxError, DeadLetter, Sink, WriteError};
use weir_connectors::Record;

use crate::broker::BrokerError;
use crate::codec::{self, DlqEntry, FORMAT_HEADER, FORMAT_VERSION};
use crate::job::Job;

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
    /// A dead letter for the job's dead-letter stream.
    pub fn dead_letter(names: &crate::job::Names, id: String, entry: &DlqEntry) -> Self {
        Outgoing {
            subject: names.dlq_subject(),
            id,
            body: serde_json::to_vec(entry)
                .expect("an entry always serializes")
                .into(),
        }
    }
}

/// Publishes messages and waits until the broker stored each of them.
#[derive(Clone)]
pub struct Publisher {
    job: Job,
    /// How long one message may keep failing before the publish is an
    /// error (the broker down for longer than this fails the run).
    pub give_up_after: Duration,
}

impl Publisher {
    /// A publisher for `job`'s streams.
    pub fn new(job: Job) -> Self {
        Publisher {
            job,
            give_up_after: Duration::from_secs(300),
        }
    }

    fn headers(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(FORMAT_HEADER, FORMAT_VERSION);
        h.insert(async_nats::header::NATS_MESSAGE_ID, id);
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
            .await
            .map_err(|e| e.to_string());
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
            let ok = match s.ack {
                Ok(f) => f.await.is_ok(),
                Err(_) => false,
            };
            (s.msg, ok)
        }))
        .await;
        let failed: Vec<Outgoing> = results
            .into_iter()
            .filter(|(_, ok)| !ok)
            .map(|(m, _)| m)
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        self.publish_all(&failed).await.map(|_| ())
    }

    /// Publishes every message; returns once the broker acknowledged all
    /// of them (how many were duplicates it dropped).
    ///
    /// # Errors
    /// When a message keeps failing for [`Publisher::give_up_after`].
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped midway, some messages may be stored and
    /// others not. Publishing again is safe (same ids).
    pub async fn publish_all(&self, msgs: &[Outgoing]) -> Result<u64, BrokerError> {
        let mut started = Instant::now();
        let mut todo: Vec<usize> = (0..msgs.len()).collect();
        let mut duplicates = 0;
        let mut backoff = Duration::from_millis(2);
        let mut last_err = String::new();
        while !todo.is_empty() {
            let mut futures: Vec<(usize, Result<PublishAckFuture, String>)> =
                Vec::with_capacity(todo.len());
            for &i in &todo {
                let m = &msgs[i];
                let f = self
                    .job
                    .broker
                    .js
                    .publish_with_headers(m.subject.clone(), Self::headers(&m.id), m.body.clone())
                    .await
                    .map_err(|e| e.to_string());
                futures.push((i, f));
            }
            // Awaited together, so that lost acknowledgements time out at
            // once rather than one after the other.
            let results = futures::future::join_all(futures.into_iter().map(|(i, f)| async move {
                let res = match f {
                    Ok(f) => f.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                (i, res)
            }))
            .await;
            let mut failed = Vec::new();
            for (i, res) in results {
                match res {
                    Ok(ack) => duplicates += u64::from(ack.duplicate),
                    Err(e) => {
                        last_err = e;
                        failed.push(i);
                    }
                }
            }
            todo = failed;
            if !todo.is_empty() {
                // A full inbox (`discard: new`) is backpressure, not a
                // failure: wait as long as it takes. Only other errors
                // (the broker unreachable) count towards giving up.
                let full = is_full(&last_err);
                if full {
                    started = Instant::now();
                }
                if started.elapsed() > self.give_up_after {
                    return Err(BrokerError::Request(format!(
                        "publishing to {} failed for {:?}: {last_err}",
                        msgs[todo[0]].subject, self.give_up_after
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
        }
        Ok(duplicates)
    }
}

/// Whether a publish error says the stream is full.
fn is_full(error: &str) -> bool {
    error.contains("maximum messages") || error.contains("maximum bytes")
}

/// A message sent, its acknowledgement not yet awaited.
pub struct Sent {
    msg: Outgoing,
    ack: Result<PublishAckFuture, String>,
}

/// Messages a deterministic [`EdgeSink`] keeps unconfirmed: enough to keep
/// the link busy while the broker stores them (a round trip per engine
/// batch would cap an edge at a few batches per millisecond).
const SEND_WINDOW: usize = 256;

/// Splits records into messages of at most `per_message` records, with
/// ids `<prefix>:<n>` counting from `*next`.
pub fn chunk(
    records: &[Record],
    per_message: usize,
    subject: &str,
    prefix: &str,
    next: &mut u64,
) -> Vec<Outgoing> {
    records
        .chunks(per_message.max(1))
        .map(|c| {
            let id = format!("{prefix}:{next}");
            *next += 1;
            Outgoing {
                subject: subject.to_string(),
                id,
                body: codec::encode(c).into(),
            }
        })
        .collect()
}

/// An engine sink that publishes records into an inbox: the end of a
/// coordinator flow whose reader is remote. Records are buffered up to one
/// message and flushed when the engine's batch ends, so the ids depend only
/// on the order of records.
pub struct EdgeSink {
    publisher: Publisher,
    subject: String,
    prefix: String,
    per_message: usize,
    next: u64,
    pending: Vec<Record>,
    on_finish: Option<Box<dyn FnOnce(u64) + Send>>,
    published: u64,
    carry: bool,
    window: std::collections::VecDeque<Sent>,
}

impl EdgeSink {
    /// Publishes into `inbox` of the job; `on_finish` is called with the
    /// records published once the flow ends and everything is stored.
    ///
    /// `deterministic`: the flow's order is the same in every run (it
    /// starts at the job's inputs and every stage on it is ordered), and
    /// its records carry no acknowledgements. Then a partial message waits
    /// for more records, so message boundaries and ids (`<producer>:<n>`)
    /// do not depend on engine batch sizes, and a restarted coordinator
    /// publishes the same ids again. Otherwise (a flow fed by an inbox,
    /// whose records' acks must not fire before they are published) every
    /// batch is published before `write` returns, with ids unique to this
    /// run.
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
        EdgeSink {
            publisher: Publisher::new(job.clone()),
            subject: job.names.subject(inbox),
            prefix,
            per_message: job.settings.records_per_message,
            next: 0,
            pending: Vec::new(),
            on_finish: Some(Box::new(on_finish)),
            published: 0,
            carry: deterministic,
            window: std::collections::VecDeque::new(),
        }
    }

    async fn flush(&mut self, all: bool) -> Result<(), BrokerError> {
        let full = if all {
            self.pending.len()
        } else {
            self.pending.len() / self.per_message * self.per_message
        };
        if full == 0 {
            return Ok(());
        }
        let mut next = self.next;
        let msgs = chunk(
            &self.pending[..full],
            self.per_message,
            &self.subject,
            &self.prefix,
            &mut next,
        );
        if self.carry {
            // Records without acks: confirmations may lag behind `write`
            // (up to SEND_WINDOW messages); `finish` waits for all of them.
            for m in msgs {
                let sent = self.publisher.send(m).await;
                self.window.push_back(sent);
                if self.window.len() >= SEND_WINDOW {
                    // Confirm the older half together.
                    let older: Vec<Sent> = self.window.drain(..SEND_WINDOW / 2).collect();
                    self.publisher.confirm_all(older).await?;
                }
            }
        } else {
            self.publisher.publish_all(&msgs).await?;
        }
        self.next = next;
        self.published += full as u64;
        self.pending.drain(..full);
        Ok(())
    }
}

impl Sink<Record> for EdgeSink {
    type Output = u64;

    async fn write(&mut self, items: Vec<Record>) -> Result<(), WriteError<Record>> {
        // Deterministic flows: full messages go now, a partial one waits
        // for more records or the end (see `new`).
        self.pending.extend(items);
        self.flush(!self.carry)
            .await
            .map_err(|e| WriteError::all(Vec::new(), BoxError::from(e.to_string())))
    }

    async fn finish(mut self) -> Result<u64, BoxError> {
        self.flush(true)
            .await
            .map_err(|e| BoxError::from(e.to_string()))?;
        let rest: Vec<Sent> = self.window.drain(..).collect();
        self.publisher
            .confirm_all(rest)
            .await
            .map_err(|e| BoxError::from(e.to_string()))?;
        if let Some(f) = self.on_finish.take() {
            f(self.published);
        }
        Ok(self.published)
    }
}

/// An engine dead-letter sink publishing into the job's dead-letter stream.
pub struct DlqSink {
    publisher: Publisher,
    names: crate::job::Names,
    stored: u64,
    /// Makes ids unique to this run: the coordinator's dead letters come
    /// from records that a replay can send through again.
    run: String,
}

impl DlqSink {
    /// Dead letters of `job`.
    pub fn new(job: &Job) -> Self {
        DlqSink {
            publisher: Publisher::new(job.clone()),
            names: job.names.clone(),
            stored: 0,
            run: format!("{}.{}", crate::job::now_ms(), std::process::id()),
        }
    }
}

/// FNV-1a, 64 bits: stable across Rust releases (`DefaultHasher` is not).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The id of the `occurrence`-th dead letter of `e`'s content: a retried
/// publish of the same dead letter is dropped, a second occurrence (the
/// same record rejected again after a replay) is kept.
pub fn dlq_id(e: &DlqEntry, occurrence: &str) -> String {
    let h = fnv1a(&[
        e.record.to_string().as_bytes(),
        e.raw.to_string().as_bytes(),
        e.error.as_bytes(),
    ]);
    format!(
        "dl:{}:{}:{h:016x}:{occurrence}",
        e.stage,
        e.position.as_deref().unwrap_or("-"),
    )
}

impl Sink<DeadLetter> for DlqSink {
    type Output = u64;

    async fn write(&mut self, items: Vec<DeadLetter>) -> Result<(), WriteError<DeadLetter>> {
        let msgs: Vec<Outgoing> = items
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let entry = entry_of(d);
                let id = dlq_id(&entry, &format!("{}:{}", self.run, self.stored + i as u64));
                Outgoing::dead_letter(&self.names, id, &entry)
            })
            .collect();
        match self.publisher.publish_all(&msgs).await {
            Ok(_) => {
                self.stored += msgs.len() as u64;
                Ok(())
            }
            Err(e) => Err(WriteError::all(items, BoxError::from(e.to_string()))),
        }
    }

    async fn finish(self) -> Result<u64, BoxError> {
        Ok(self.stored)
    }
}

/// A dead letter of the engine as a stream entry.
pub fn entry_of(d: &DeadLetter) -> DlqEntry {
    let v = weir_connectors::sinks::dead_letter::letter_json(d);
    let mut e: DlqEntry = serde_json::from_value(v).expect("letter_json has the entry's fields");
    let pos = d
        .item::<Record>()
        .map(|r| r.pos.clone())
        .or_else(|| d.item::<weir_connectors::Raw>().map(|r| r.pos().clone()));
    if let Some(p) = pos {
        e.file = p.file.as_deref().map(str::to_string);
        e.line = Some(p.line);
    }
    e
}
