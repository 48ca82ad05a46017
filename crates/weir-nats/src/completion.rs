//! When is a distributed job finished? Counted on the broker, not guessed.
//!
//! Inboxes are settled in pipeline order. An inbox's producers are done
//! when each is either a coordinator flow whose publishing sink finished,
//! or a pool stage whose own inbox is complete. A pool inbox is complete
//! when its producers are done and its work-queue stream is empty: a worker
//! acknowledges a message only after its outputs are stored downstream, and
//! an acknowledged message is deleted, so an empty stream means every
//! record passed on. A coordinator inbox is told its producers are done and
//! its reader ends once nothing is left to deliver.
//!
//! One case needs a hand: a message whose every delivery died with its
//! worker (killed, timed out) stops being delivered after `max_deliver` and
//! stays in the stream. When an inbox's producers are done and the broker
//! has nothing pending or in flight for it, whatever is still stored is
//! such a message: the sweep moves its records to the dead-letter stream
//! with that reason, and deletes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use futures::StreamExt;

use weir::CancellationToken;

use crate::broker::BrokerError;
use crate::codec::{self, DlqEntry};
use crate::job::{InboxCounts, Job};
use crate::publish::{Outgoing, Publisher};

/// Who publishes into an inbox.
#[derive(Clone)]
pub enum Producer {
    /// A coordinator flow; the flag is set when its sink has finished.
    Local(Arc<AtomicBool>),
    /// A pool stage, by its inbox.
    Pool(String),
}

/// An inbox and its producers.
#[derive(Clone)]
pub struct Node {
    /// The inbox.
    pub inbox: String,
    /// Read by a pool (else by the coordinator).
    pub pool: bool,
    /// Its producers.
    pub producers: Vec<Producer>,
    /// For coordinator inboxes: set when the producers are done.
    pub producers_done: Arc<AtomicBool>,
}

/// Watches the job until every coordinator inbox has been told its
/// producers are done (its reader then ends on its own). Returns the
/// records swept into the dead-letter stream.
///
/// # Errors
/// When cancelled.
pub async fn watch(
    job: &Job,
    nodes: &[Node],
    poll: Duration,
    cancel: &CancellationToken,
) -> Result<u64, BrokerError> {
    let mut complete: HashMap<String, bool> = HashMap::new();
    let mut swept = 0;
    // Per pool inbox: its counts when they last changed, and when.
    let mut last: HashMap<String, (InboxCounts, Instant)> = HashMap::new();
    loop {
        let mut all = true;
        for n in nodes {
            if complete.get(&n.inbox).copied().unwrap_or(false) {
                continue;
            }
            let done = n.producers.iter().all(|p| match p {
                Producer::Local(f) => f.load(Ordering::Acquire),
                Producer::Pool(i) => complete.get(i).copied().unwrap_or(false),
            });
            if !done {
                all = false;
                continue;
            }
            if !n.pool {
                n.producers_done.store(true, Ordering::Release);
                complete.insert(n.inbox.clone(), true);
                continue;
            }
            let c = match job.inbox_counts(&n.inbox).await {
                Ok(c) => c,
                Err(_) => {
                    all = false;
                    continue;
                }
            };
            all &= c.stored == 0;
            if c.stored == 0 {
                complete.insert(n.inbox.clone(), true);
            } else if c.pending == 0 && c.ack_pending == 0 {
                swept += sweep(job, &n.inbox, c).await?;
            } else if c.pending == 0 {
                // Nothing to deliver and something in flight: workers at
                // work, or a message past max_deliver that the server
                // keeps counting as in flight until it serves a pull. If
                // nothing changed for longer than ack_wait, pull once.
                let since = match last.get(&n.inbox) {
                    Some((prev, at)) if *prev == c => *at,
                    _ => {
                        last.insert(n.inbox.clone(), (c, Instant::now()));
                        Instant::now()
                    }
                };
                if since.elapsed() > job.settings.ack_wait + Duration::from_secs(1) {
                    probe(job, &n.inbox).await;
                    last.remove(&n.inbox);
                }
            }
        }
        if all {
            return Ok(swept);
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(BrokerError::Request("cancelled".into())),
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// One pull on a stalled pool inbox: lets the server retire messages past
/// `max_deliver`; anything it does deliver goes straight back (nak).
async fn probe(job: &Job, inbox: &str) {
    let Ok(consumer) = job.consumer(inbox).await else {
        return;
    };
    if let Ok(mut batch) = consumer.fetch().max_messages(16).messages().await {
        while let Some(Ok(m)) = batch.next().await {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
    }
}

/// Dead-letters the records of messages no worker could finish.
async fn sweep(job: &Job, inbox: &str, c: InboxCounts) -> Result<u64, BrokerError> {
    let stream = job.inbox(inbox).await?;
    let publisher = Publisher::new(job.clone());
    let mut n = 0;
    for seq in c.first_seq..=c.last_seq {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let reason = format!(
            "no result after {} deliveries: the worker was lost (killed or past ack_wait) on every attempt",
            job.settings.max_deliver
        );
        let entries: Vec<DlqEntry> = match codec::decode(&m.payload) {
            Ok(records) => records
                .iter()
                .map(|r| {
                    DlqEntry::for_record(inbox, reason.clone(), job.settings.max_deliver as u32, r)
                })
                .collect(),
            Err(e) => vec![DlqEntry::unreadable(inbox, e.to_string(), 0, &m.payload)],
        };
        let out: Vec<Outgoing> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let id = format!("sweep:{inbox}:{seq}:{i}");
                Outgoing::dead_letter(&job.names, id, e, publisher.max_body())
            })
            .collect();
        publisher.publish_all(&out).await?;
        stream
            .delete_message(seq)
            .await
            .map_err(|e| BrokerError::request("delete a swept message", e))?;
        n += entries.len() as u64;
    }
    Ok(n)
}
