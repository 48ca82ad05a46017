//! State that sources keep between runs (a schedule's last handled tick,
//! an `sql` source's cursor),
//! in distributed mode: in the job's key-value bucket on the broker
//! (`Job::source_state`), so that whichever coordinator holds the job
//! next, on any machine, reads it.
//!
//! Every value is read once, when the coordinator starts
//! ([`KvState::open`]); writes go through a channel to one task that puts
//! them in order, so a source never waits for the broker (its saves come
//! from ack callbacks, on engine threads). [`Writer::close`] waits for the
//! queued writes when the run is over. A write lost with the process (or
//! refused by a broker that went away) only makes the next run redo what
//! it recorded: sources save what they can afford to do again (a schedule
//! re-emits those ticks). A coordinator that lost the job's lease and has
//! not stopped yet may still write for a moment: what it writes was
//! handled too (by it), so at worst a value moves back and the next run
//! redoes work; it never skips any.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use weir_connectors::sources::StateStore;
use weir_nats::Job;
use weir_nats::job::escape_key;

/// How long the end of a run waits for the queued writes.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// A job's source state on the broker; see the module docs.
#[derive(Debug)]
pub struct KvState {
    /// The values as read at the start, by (escaped) key; `Err` for one
    /// that is not text.
    values: BTreeMap<String, Result<String, String>>,
    /// Writes for the writer task. Unbounded on purpose: a source saves
    /// a few values a second at most (a schedule every 200 ms at most),
    /// and a bound would make an ack callback wait for the broker.
    tx: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

/// The writer task, to wait for at the end of the run.
pub struct Writer(tokio::task::JoinHandle<()>);

impl KvState {
    /// Reads the job's source state and starts the task that writes it.
    /// With `fresh` (the job starts over), what earlier runs kept is
    /// deleted instead.
    ///
    /// # Errors
    /// When the bucket cannot be listed or a value read.
    pub async fn open(job: &Job, fresh: bool) -> anyhow::Result<(Arc<KvState>, Writer)> {
        let values = if fresh {
            job.purge_source_state().await?;
            BTreeMap::new()
        } else {
            job.source_state().await?
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
        let job = job.clone();
        let writer = tokio::spawn(async move {
            while let Some((key, value)) = rx.recv().await {
                if let Err(e) = job.put_source_state(&key, &value).await {
                    tracing::warn!("cannot save the state '{key}' on the broker: {e}");
                }
            }
        });
        Ok((Arc::new(KvState { values, tx }), Writer(writer)))
    }
}

impl Writer {
    /// Waits (at most [`CLOSE_LIMIT`]) for the writes queued before every
    /// [`KvState`] was dropped.
    pub async fn close(self) {
        let _ = tokio::time::timeout(CLOSE_LIMIT, self.0).await;
    }
}

impl StateStore for KvState {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        self.values.get(&escape_key(key)).cloned().transpose()
    }

    fn put(&self, key: &str, value: String) -> Result<(), String> {
        self.tx
            .send((key.to_string(), value))
            .map_err(|_| "the run is over".to_string())
    }
}
