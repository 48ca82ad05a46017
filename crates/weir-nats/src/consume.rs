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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    messages: Option<jetstream::consumer::pull::Stream>,
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
            messages: None,
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

/// The records of the next message (empty when none came for a while);
/// `None` at the end.
async fn next_message(st: &mut State) -> Option<Vec<(Record, Ack)>> {
    if st.messages.is_none() {
        let opened = match st.job.consumer(&st.inbox).await {
            Ok(c) => c
                .stream()
                .max_messages_per_batch(256)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .ok(),
            Err(_) => None,
        };
        match opened {
            Some(m) => st.messages = Some(m),
            None => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                return Some(Vec::new());
            }
        }
    }
    let messages = st.messages.as_mut().expect("set above");
    let next = tokio::select! {
        m = messages.next() => Some(m),
        () = tokio::time::sleep(Duration::from_millis(200)) => None,
    };
    let msg = match next {
        Some(Some(Ok(m))) => m,
        Some(Some(Err(_)) | None) => {
            // Missed heartbeats (a broker restart): open again.
            st.messages = None;
            tokio::time::sleep(Duration::from_millis(250)).await;
            return Some(Vec::new());
        }
        None => {
            // Nothing for a while: the end, once every producer is done
            // and the broker has nothing left to deliver.
            if st.producers_done.load(Ordering::Acquire)
                && let Ok(c) = st.job.inbox_counts(&st.inbox).await
                && c.pending == 0
            {
                return None;
            }
            return Some(Vec::new());
        }
    };
    st.counters.messages.fetch_add(1, Ordering::Relaxed);
    let records =
        codec::check_version(msg.headers.as_ref()).and_then(|()| codec::decode(&msg.payload));
    let mut out = Vec::new();
    match records {
        Ok(records) if records.is_empty() => {
            let _ = msg.double_ack().await;
        }
        Ok(records) => {
            st.counters
                .records
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            let ack = message_ack(msg);
            out.reserve(records.len());
            for r in records {
                out.push((r, ack.fork()));
            }
            ack.deliver();
        }
        Err(e) => garbage(&st.job, &st.inbox, msg, e.to_string()).await,
    }
    Some(out)
}

/// The ack of one message: acknowledged with confirmation once its records
/// settle; given back on failure.
fn message_ack(msg: jetstream::Message) -> Ack {
    let handle = tokio::runtime::Handle::current();
    Ack::new(move |outcome| {
        handle.spawn(async move {
            match outcome {
                AckOutcome::Delivered | AckOutcome::DeadLettered { .. } => {
                    for _ in 0..20 {
                        if msg.double_ack().await.is_ok() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                AckOutcome::Failed { .. } => {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                }
            }
        });
    })
}

/// A message that is not weir's: kept in the dead-letter stream, raw, and
/// terminated so it is not delivered again.
pub(crate) async fn garbage(job: &Job, stage: &str, msg: jetstream::Message, error: String) {
    let entry = DlqEntry {
        stage: stage.to_string(),
        error,
        attempts: msg.info().map_or(1, |i| i.delivered as u32),
        position: None,
        input: None,
        file: None,
        line: None,
        record: serde_json::Value::Null,
        raw: serde_json::Value::String(String::from_utf8_lossy(&msg.payload).into_owned()),
    };
    let out = Outgoing {
        subject: job.names.dlq_subject(),
        id: dlq_id(&entry),
        body: serde_json::to_vec(&entry).expect("entry serializes").into(),
    };
    if Publisher::new(job.clone())
        .publish_all(&[out])
        .await
        .is_ok()
    {
        let _ = msg.ack_with(AckKind::Term).await;
    }
}
