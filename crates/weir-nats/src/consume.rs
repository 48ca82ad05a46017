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
//! (`producers_done`, set by [`crate::completion`]) and the broker has no
//! message of the inbox left to deliver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use weir::{Ack, AckOutcome};
use weir_connectors::Record;

use crate::codec::{self, DlqEntry};
use crate::job::Job;
use crate::publish::{Outgoing, Publisher, dlq_id};

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
}

/// Messages taken in this run, by stream sequence: a message delivered
/// again (its ack lost in a broker crash) is not processed twice; its new
/// copy is acknowledged with the original.
type Seen = Arc<Mutex<HashMap<u64, Taken>>>;

enum Taken {
    /// In the engine; copies delivered meanwhile, to acknowledge with it.
    Pending(Vec<jetstream::Message>),
    /// Committed and acknowledged.
    Done,
}

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

/// The records of the next message (empty when there was none to take);
/// `None` at the end.
///
/// Messages come by one-shot pull requests (up to 256, expiring after
/// 500 ms). The end is decided only when a request expired without a
/// message: then nothing is in transit to this reader, and if every
/// producer is done and the broker has nothing pending, nothing ever will be.
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
                if st.got_in_batch == 0
                    && st.producers_done.load(Ordering::Acquire)
                    && let Ok(c) = st.job.inbox_counts(&st.inbox).await
                    && c.pending == 0
                {
                    return None;
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

/// One delivered message: its records with forks of its ack.
async fn take(st: &mut State, msg: jetstream::Message) -> Vec<(Record, Ack)> {
    st.counters.messages.fetch_add(1, Ordering::Relaxed);
    let seq = msg.info().map_or(0, |i| i.stream_sequence);
    // Decided under the lock, acted on after it (no lock across an await).
    let already_done = {
        let mut seen = st.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(&seq) {
            Some(Taken::Done) => true,
            Some(Taken::Pending(copies)) => {
                copies.push(msg);
                return Vec::new();
            }
            None => {
                seen.insert(seq, Taken::Pending(Vec::new()));
                false
            }
        }
    };
    if already_done {
        let _ = msg.double_ack().await;
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
            let ack = message_ack(msg, seq, st.seen.clone());
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
            garbage(&st.job, &st.inbox, msg, e.to_string()).await;
        }
    }
    out
}

/// The ack of one message: acknowledged with confirmation once its records
/// settle (with any copy delivered meanwhile); given back on failure.
fn message_ack(msg: jetstream::Message, seq: u64, seen: Seen) -> Ack {
    let handle = tokio::runtime::Handle::current();
    Ack::new(move |outcome| {
        handle.spawn(async move {
            let failed = matches!(outcome, AckOutcome::Failed { .. });
            let copies = {
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                let copies = match s.remove(&seq) {
                    Some(Taken::Pending(c)) => c,
                    _ => Vec::new(),
                };
                if !failed {
                    s.insert(seq, Taken::Done);
                }
                copies
            };
            for m in std::iter::once(msg).chain(copies) {
                if failed {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                    continue;
                }
                for _ in 0..20 {
                    if m.double_ack().await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });
    })
}

/// A message that is not weir's: kept in the dead-letter stream, raw, and
/// terminated so it is not delivered again.
pub(crate) async fn garbage(job: &Job, stage: &str, msg: jetstream::Message, error: String) {
    let attempts = msg.info().map_or(1, |i| i.delivered as u32);
    let entry = DlqEntry::unreadable(stage, error, attempts, &msg.payload);
    let seq = msg.info().map_or(0, |i| i.stream_sequence);
    let out = Outgoing::dead_letter(
        &job.names,
        dlq_id(&entry, &format!("garbage:{seq}")),
        &entry,
    );
    if Publisher::new(job.clone())
        .publish_all(&[out])
        .await
        .is_ok()
    {
        let _ = msg.ack_with(AckKind::Term).await;
    }
}
