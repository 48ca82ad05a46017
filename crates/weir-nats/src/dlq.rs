//! A job's dead-letter stream: listing and replaying.
//!
//! Replay puts a record back into the inbox of the stage that rejected it
//! (fixed data, or a fixed stage deployed to the workers) and removes the
//! entry. The job is marked running again with its sources done, so the
//! next `weir run --broker` of the job resumes it to completion instead of
//! reading the inputs again, with its own version of the pipeline (the
//! fixed one): replay forgets the job's fingerprint. Entries from stages without an inbox (decode
//! errors, coordinator stages fed in-process) cannot be replayed and stay.

use crate::broker::BrokerError;
use crate::codec::{self, DlqEntry};
use crate::job::{Job, Status, now_ms};
use crate::publish::{Outgoing, Publisher};

/// The entries, with their stream sequence.
///
/// # Errors
/// When the stream cannot be read (no such job).
pub async fn list(job: &Job) -> Result<Vec<(u64, DlqEntry)>, BrokerError> {
    let mut s = job
        .broker
        .js
        .get_stream(job.names.dlq_stream())
        .await
        .map_err(|e| {
            BrokerError::request(
                format!("job '{}' has no dead-letter stream", job.names.job()),
                e,
            )
        })?;
    let st = s
        .info()
        .await
        .map_err(|e| BrokerError::request("dead-letter stream info", e))?
        .state
        .clone();
    let mut out = Vec::new();
    let mut ids = std::collections::HashSet::new();
    if st.messages == 0 {
        return Ok(out);
    }
    for seq in st.first_sequence..=st.last_sequence {
        let Ok(m) = s.get_raw_message(seq).await else {
            continue;
        };
        // The same dead letter stored twice (published again after the
        // duplicate window, or by a run before a broker restart forgot its
        // id) is listed once.
        let id = m
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_string());
        if let Some(id) = id
            && !ids.insert(id)
        {
            continue;
        }
        if let Ok(e) = serde_json::from_slice::<DlqEntry>(&m.payload) {
            out.push((seq, e));
        }
    }
    Ok(out)
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Records put back.
    pub replayed: u64,
    /// Entries left, with why.
    pub skipped: Vec<(u64, String)>,
}

/// Replays the entries whose sequence is in `only` (all when empty).
///
/// # Errors
/// When the broker cannot be read or written.
pub async fn replay(job: &Job, only: &[u64]) -> Result<Replayed, BrokerError> {
    let Some(mut state) = job.state().await? else {
        return Err(BrokerError::Request(format!(
            "no job '{}' on this broker",
            job.names.job()
        )));
    };
    let entries = list(job).await?;
    let dlq = job
        .broker
        .js
        .get_stream(job.names.dlq_stream())
        .await
        .map_err(|e| BrokerError::request("open the dead-letter stream", e))?;
    let mut done = Replayed::default();
    let mut moves = Vec::new();
    for (seq, e) in entries {
        if !only.is_empty() && !only.contains(&seq) {
            continue;
        }
        let Some(inbox) = state.inboxes.iter().find(|i| i.name == e.stage) else {
            done.skipped.push((
                seq,
                format!("stage '{}' has no inbox on the broker", e.stage),
            ));
            continue;
        };
        let Some(record) = e.to_record() else {
            let why = match e.truncated {
                Some(n) => format!("the record ({n} bytes) was too large to keep whole"),
                None => "no record (a line that never decoded)".into(),
            };
            done.skipped.push((seq, why));
            continue;
        };
        moves.push((seq, inbox.name.clone(), record));
    }
    if moves.is_empty() {
        return Ok(done);
    }
    // The job is marked running (its sources done) before any record
    // moves, and with a new replay epoch, so that a coordinator started
    // now finishes the job, and the dead letters of replayed records are
    // new ids rather than duplicates of the entries they replace. Its
    // fingerprint is forgotten: replaying is how a fixed stage is brought
    // in, so the next coordinator's pipeline becomes the job's.
    state.status = Status::Running;
    state.sources_done = true;
    state.replays += 1;
    state.fingerprint = None;
    state.updated_ms = now_ms();
    job.put_state(&state).await?;
    let publisher = Publisher::new(job.clone());
    for (seq, inbox, record) in moves {
        let out = Outgoing {
            subject: job.names.subject(&inbox),
            id: format!("replay:{seq}"),
            body: codec::encode(&[record]).into(),
        };
        publisher.publish_all(&[out]).await?;
        dlq.delete_message(seq)
            .await
            .map_err(|e| BrokerError::request("delete a replayed entry", e))?;
        done.replayed += 1;
    }
    Ok(done)
}
