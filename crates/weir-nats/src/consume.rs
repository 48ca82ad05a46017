//! The coordinator's end of an inbox: a weir source whose records carry the
//! broker's acknowledgement.
//!
//! Each message becomes one [`weir::Ack`]; every record decoded from it gets
//! a fork. When the last fork settles (the record and everything derived
//! from it committed or dead-lettered) the message is acknowledged, with
//! confirmation from the broker; if it failed, it is given back (nak) so a
//! restarted coordinator gets it again. That is the engine's end-to-end
//! acknowledgement carried over the broker unchanged: a whole-input
//! aggregate holds its messages until it has written its result.
//!
//! The source ends when every producer of the inbox is done
//! (`producers_done`, set by [`crate::completion`]) and every message the
//! inbox still stores is one this reader holds.
//!
//! **Deliveries lost in transit.** The coordinator's consumers have a long
//! `ack_wait` (a whole-input aggregate holds its messages until the end),
//! so a message the broker delivered into a connection that then broke (a
//! broker restart) would not come back for hours. The reader therefore
//! compares what the inbox stores with what it holds: when messages are
//! stored that are neither pending delivery nor held here for
//! [`STRANDED_AFTER`], it recreates its consumer, which delivers every
//! unacknowledged message again; copies of what it holds are acknowledged
//! with the originals, the stranded ones are processed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use weir::{Ack, AckOutcome};
use weir_record::Record;

use crate::codec::{self, DlqEntry};
use crate::job::Job;
use crate::publish::{Outgoing, Publisher};

/// Counts a reader keeps (records and messages taken from its inbox).
#[derive(Debug, Default)]
pub struct ReaderCounters {
    /// Messages received.
    pub messages: AtomicU64,
    /// Records received.
    pub records: AtomicU64,
}

/// Reads one inbox for the coordinator.
pub struct InboxReader {
    job: Job,
    inbox: String,
    producers_done: Arc<AtomicBool>,
    counters: Arc<ReaderCounters>,
}

struct State {
    job: Job,
    inbox: String,
    producers_done: Arc<AtomicBool>,
    counters: Arc<ReaderCounters>,
    consumer: Option<jetstream::consumer::PullConsumer>,
    batch: Option<jetstream::consumer::pull::Batch>,
    got_in_batch: usize,
    seen: Seen,
    /// Messages taken since the last pruning of `seen`.
    since_prune: usize,
    /// Since when the inbox has stored messages this reader neither holds
    /// nor can be delivered (lost in transit).
    stranded_since: Option<std::time::Instant>,
    /// To the acknowledger task, started with the first message.
    acks: Option<AckTx>,
}

/// Messages taken in this run, by stream sequence: a message delivered
/// again (its ack lost in a broker crash, or a consumer reset) is not
/// processed twice; its new copy is acknowledged with the original.
///
/// Only what is needed to acknowledge is kept (the reply subject, made an
/// [`Acker`] with the job's context when it is used)/// subject), never the payload, so a whole-input aggregate holding its
/// inputs costs about a hundred bytes per message. Entries whose
/// acknowledgement the broker confirmed are pruned once the stream's first
/// sequence has passed them: a message deleted from a work queue is never
/// delivered again.
type Seen = Arc<Mutex<HashMap<u64, Taken>>>;

enum Taken {
    /// In the engine; copies delivered meanwhile, to acknowledge with it.
    Pending(Vec<Reply>),
    /// Committed; its acknowledgement is on its way to the broker.
    Acking,
    /// Committed, and the broker confirmed the acknowledgement.
    Done,
}

/// How long the reader may see messages stored in its inbox that are
/// neither pending delivery nor held by it before it asks the broker to
/// deliver them again (see [`next_message`]).
const STRANDED_AFTER: Duration = Duration::from_secs(2);

impl InboxReader {
    /// A reader of `inbox`; it ends once `producers_done` is set and the
    /// inbox has nothing left to deliver.
    pub fn new(job: &Job, inbox: &str, producers_done: Arc<AtomicBool>) -> Self {
        InboxReader {
            job: job.clone(),
            inbox: inbox.to_string(),
            producers_done,
            counters: Arc::default(),
        }
    }

    /// Its counters.
    pub fn counters(&self) -> Arc<ReaderCounters> {
        self.counters.clone()
    }

    /// The weir source.
    pub fn source(self) -> weir::Source<Record> {
        let state = State {
            job: self.job,
            inbox: self.inbox,
            producers_done: self.producers_done,
            counters: self.counters,
            consumer: None,
            batch: None,
            got_in_batch: 0,
            seen: Arc::default(),
            since_prune: 0,
            stranded_since: None,
            acks: None,
        };
        let batches = futures::stream::unfold(state, |mut st| async move {
            loop {
                let got = next_message(&mut st).await?;
                if !got.is_empty() {
                    return Some((got, st));
                }
            }
        });
        weir::from_acked_stream(batches.flat_map(futures::stream::iter))
    }
}

/// Messages taken between two prunings of the seen-set.
const PRUNE_EVERY: usize = 1024;

/// The records of the next message (empty when there was none to take);
/// `None` at the end.
///
/// Messages come by one-shot pull requests (up to 256, expiring after
/// 500 ms). The end is decided only when a request expired without a
/// message: then nothing is in transit to this reader, and if every
/// producer is done and every message the inbox stores is held here,
/// nothing more will come.
async fn next_message(st: &mut State) -> Option<Vec<(Record, Ack)>> {
    if let Some(batch) = st.batch.as_mut() {
        match batch.next().await {
            Some(Ok(msg)) => {
                st.got_in_batch += 1;
                return Some(take(st, msg).await);
            }
            Some(Err(_)) => {
                // A broker restart: open again.
                st.batch = None;
                st.consumer = None;
                tokio::time::sleep(Duration::from_millis(250)).await;
                return Some(Vec::new());
            }
            None => {
                st.batch = None;
                if st.got_in_batch == 0 && st.producers_done.load(Ordering::Acquire) {
                    match end_check(st).await {
                        EndCheck::End => return None,
                        EndCheck::Reset => {
                            // Deliver everything unacknowledged again.
                            st.consumer = None;
                            if let Err(e) = st.job.reset_coordinator_consumer(&st.inbox).await {
                                tracing::warn!(inbox = %st.inbox, "could not reset the consumer: {e}");
                            }
                        }
                        EndCheck::Wait => {}
                    }
                }
            }
        }
    }
    if st.consumer.is_none() {
        match st.job.consumer(&st.inbox).await {
            Ok(c) => st.consumer = Some(c),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                return Some(Vec::new());
            }
        }
    }
    let consumer = st.consumer.as_ref().expect("set above");
    match consumer
        .batch()
        .max_messages(256)
        .expires(Duration::from_millis(500))
        .messages()
        .await
    {
        Ok(b) => {
            st.batch = Some(b);
            st.got_in_batch = 0;
        }
        Err(_) => {
            st.consumer = None;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Some(Vec::new())
}

enum EndCheck {
    /// Every stored message is held here: the inbox is read to the end.
    End,
    /// Messages are stored that nobody will deliver (lost in transit):
    /// recreate the consumer.
    Reset,
    /// Not yet decided (messages pending, acks on their way, the broker
    /// unreachable).
    Wait,
}

/// Decides, once every producer is done and a pull came back empty,
/// whether the inbox is finished (see the module docs).
async fn end_check(st: &mut State) -> EndCheck {
    let Ok(c) = st.job.inbox_counts(&st.inbox).await else {
        return EndCheck::Wait;
    };
    prune(&st.seen, c.first_seq);
    if c.pending > 0 {
        st.stranded_since = None;
        return EndCheck::Wait;
    }
    // Messages whose acknowledgement was sent but not confirmed: gone from
    // the stream (the ack was applied, its answer lost) or not. Asked one by
    // one: counts cannot tell an ack in flight from a lost delivery.
    let acking: Vec<u64> = {
        let s = st.seen.lock().unwrap_or_else(|p| p.into_inner());
        s.iter()
            .filter(|(_, t)| matches!(t, Taken::Acking))
            .map(|(seq, _)| *seq)
            .collect()
    };
    if !acking.is_empty() {
        let Ok(stream) = st.job.inbox(&st.inbox).await else {
            return EndCheck::Wait;
        };
        for seq in acking {
            if stream.get_raw_message(seq).await.is_err_and(|e| {
                e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
            }) {
                mark_done(&st.seen, seq);
            }
        }
    }
    let (held, acking) = {
        let s = st.seen.lock().unwrap_or_else(|p| p.into_inner());
        let held = s
            .values()
            .filter(|t| matches!(t, Taken::Pending(_)))
            .count() as u64;
        let acking = s.values().filter(|t| matches!(t, Taken::Acking)).count() as u64;
        (held, acking)
    };
    // Every message held here is stored (not acknowledged): when no ack is
    // in doubt and the inbox stores as many, it stores exactly these.
    if acking == 0 && c.stored <= held {
        return EndCheck::End;
    }
    // Stored but neither pending nor held: acknowledgements on their way
    // (wait), or deliveries lost in transit (reset), which only time tells
    // apart. A reset also delivers again what an unconfirmed ack left.
    match st.stranded_since {
        Some(t) if t.elapsed() >= STRANDED_AFTER => {
            st.stranded_since = None;
            tracing::warn!(
                inbox = %st.inbox,
                stored = c.stored,
                held,
                acking,
                "messages delivered but never received (lost in a broker restart?): asking for them again"
            );
            EndCheck::Reset
        }
        Some(_) => EndCheck::Wait,
        None => {
            st.stranded_since = Some(std::time::Instant::now());
            EndCheck::Wait
        }
    }
}

/// Marks message `seq` committed and its acknowledgement confirmed.
fn mark_done(seen: &Seen, seq: u64) {
    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = s.get_mut(&seq) {
        *t = Taken::Done;
    }
}

/// Forgets confirmed messages below `first_seq` (they are deleted and never
/// delivered again).
fn prune(seen: &Seen, first_seq: u64) {
    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
    s.retain(|seq, t| !(matches!(t, Taken::Done) && *seq < first_seq));
}

/// One delivered message: its records with forks of its ack.
async fn take(st: &mut State, msg: jetstream::Message) -> Vec<(Record, Ack)> {
    st.counters.messages.fetch_add(1, Ordering::Relaxed);
    let seq = msg.info().map_or(0, |i| i.stream_sequence);
    st.since_prune += 1;
    if st.since_prune >= PRUNE_EVERY {
        st.since_prune = 0;
        if let Ok(c) = st.job.inbox_counts(&st.inbox).await {
            prune(&st.seen, c.first_seq);
        }
    }
    // Decided under the lock, acted on after it (no lock across an await).
    // Copied: the subject as received may share the connection's read
    // buffer, which it would keep alive while its message is held.
    let reply: Reply = msg
        .message
        .reply
        .as_ref()
        .map(|r| async_nats::Subject::from(r.as_str().to_string()));
    let msg: async_nats::Message = msg.into();
    let already_done = {
        let mut seen = st.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(&seq) {
            Some(Taken::Done | Taken::Acking) => true,
            Some(Taken::Pending(copies)) => {
                copies.push(reply);
                return Vec::new();
            }
            None => {
                seen.insert(seq, Taken::Pending(Vec::new()));
                false
            }
        }
    };
    if already_done {
        // Its content is committed: acknowledge the copy (which settles an
        // acknowledgement left unconfirmed).
        if st.job.acker(reply).double_ack().await.is_ok() {
            mark_done(&st.seen, seq);
        }
        return Vec::new();
    }
    let records =
        codec::check_version(msg.headers.as_ref()).and_then(|()| codec::decode(&msg.payload));
    let mut out = Vec::new();
    match records {
        Ok(records) => {
            st.counters
                .records
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            let tx = st.acks.get_or_insert_with(|| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(acknowledger(rx, st.seen.clone(), st.job.clone()));
                tx
            });
            let ack = message_ack(reply, seq, tx.clone());
            out.reserve(records.len());
            for r in records {
                out.push((r, ack.fork()));
            }
            // No records: acknowledged right here.
            ack.deliver();
        }
        Err(e) => {
            st.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(seq, Taken::Done);
            garbage(
                &st.job,
                &st.inbox,
                seq,
                &msg,
                st.job.acker(reply),
                e.to_string(),
            )
            .await;
        }
    }
    out
}

/// A delivered message's reply subject: all that acknowledging it needs.
type Reply = Option<async_nats::Subject>;

/// A message whose records settled, waiting for its acknowledgement.
struct Settled {
    reply: Reply,
    seq: u64,
    outcome: AckOutcome,
}

/// Acknowledgements in flight at once. A whole-input aggregate settles all
/// its messages together at the end: one task each used to hold ~5 KB per
/// message (100 MB at 5M records), where a few dozen requests in flight
/// keep the broker just as busy.
const ACKS_IN_FLIGHT: usize = 64;

/// Where settled messages go to be acknowledged (see [`acknowledger`]).
///
/// Unbounded on purpose: an ack callback runs wherever the last record
/// settles (any engine thread, never async) and must not block; what waits
/// here is at most one small entry per message the reader holds.
type AckTx = tokio::sync::mpsc::UnboundedSender<Settled>;

/// Acknowledges settled messages, [`ACKS_IN_FLIGHT`] at a time; ends when
/// the reader and every outstanding ack are gone.
async fn acknowledger(mut rx: tokio::sync::mpsc::UnboundedReceiver<Settled>, seen: Seen, job: Job) {
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            next = rx.recv(), if in_flight.len() < ACKS_IN_FLIGHT => match next {
                Some(s) => in_flight.push(settle(s, seen.clone(), job.clone())),
                None => break,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Acknowledges one message (with any copy delivered meanwhile), with
/// confirmation; gives it back (nak) when its records failed.
async fn settle(s: Settled, seen: Seen, job: Job) {
    let Settled {
        reply,
        seq,
        outcome,
    } = s;
    let failed = matches!(outcome, AckOutcome::Failed { .. });
    let copies = {
        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
        let copies = match s.remove(&seq) {
            Some(Taken::Pending(c)) => c,
            _ => Vec::new(),
        };
        if !failed {
            s.insert(seq, Taken::Acking);
        }
        copies
    };
    let mut confirmed = false;
    for a in std::iter::once(reply).chain(copies).map(|r| job.acker(r)) {
        if failed {
            let _ = a.ack_with(AckKind::Nak(None)).await;
            continue;
        }
        for _ in 0..20 {
            if a.double_ack().await.is_ok() {
                confirmed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    if confirmed {
        mark_done(&seen, seq);
    }
}

/// The ack of one message: once its records settle, it goes to the
/// [`acknowledger`].
fn message_ack(reply: Reply, seq: u64, tx: AckTx) -> Ack {
    Ack::new(move |outcome| {
        // The acknowledger outlives every ack (each holds a sender).
        let _ = tx.send(Settled {
            reply,
            seq,
            outcome,
        });
    })
}

/// A message that is not weir's: kept in the dead-letter stream, raw, and
/// acknowledged so it is not delivered again (a work queue deletes it).
/// Its dead letter is named after the message's sequence, so a copy
/// delivered again is stored once.
pub(crate) async fn garbage(
    job: &Job,
    stage: &str,
    seq: u64,
    msg: &async_nats::Message,
    acker: Acker,
    error: String,
) {
    let entry = DlqEntry::unreadable(stage, error, 1, &msg.payload);
    let id = format!("{stage}:{seq}:garbage");
    let publisher = Publisher::new(job.clone());
    let out = Outgoing::dead_letter(&job.names, id, &entry, publisher.max_body());
    if publisher.publish_all(&[out]).await.is_ok() {
        let _ = acker.double_ack().await;
    }
}
