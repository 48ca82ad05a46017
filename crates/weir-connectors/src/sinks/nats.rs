//! The `nats` sink: records published to NATS JetStream, one message per
//! record, each confirmed by the server before the record is acknowledged.
//!
//! # Design
//!
//! * **Confirmed.** A write publishes its batch pipelined (up to
//!   `max_in_flight` messages sent before their acknowledgements are
//!   awaited) and returns only once the server stored every one of them
//!   (its `PubAck`), so a record's ack (its source message's, its
//!   checkpoint's) never runs ahead of the stream.
//! * **No duplicates on replay.** Every message carries a `Nats-Msg-Id`
//!   derived from the output's name, the subject, the record's position
//!   (input, file or stream, line or sequence), the record's number among
//!   the records of that position in a row (a `jq` stage may emit several)
//!   and its JSON text. A rerun after a crash, a `--resume`, or a retried
//!   write publishes the same records with the same ids, and the server
//!   drops them as duplicates within the stream's duplicate window
//!   (`duplicate_window`, two minutes by default). Only positions with a
//!   file or a stream (file inputs, a JetStream `nats` source) name the
//!   same record in every run. The others (`stdin`, `http_server`, a core
//!   `nats` subject, `generate`, `schedule`) are numbered afresh each run:
//!   their ids also mix in a number drawn when the output is built, so the
//!   record numbered 7 in this run is not taken for the one numbered 7 in
//!   the last run (same body, within the window) and silently dropped;
//!   a retried write within the run keeps its ids, replays across runs of
//!   those inputs are not deduplicated. As the id includes the record's
//!   JSON, a stage whose output differs per run (jq `now`, a random
//!   value, a fetched time) defeats replay deduplication too.
//! * **Refusals.** A record the server refuses (larger than its
//!   `max_payload`, a subject no stream takes, a stream rule such as a
//!   subject's message limit) is dead-lettered with the server's reason,
//!   and the rest of the batch is written. A subject that does not compute
//!   (a `subject_jq` error, no output, not a string) is dead-lettered too,
//!   and so is one that starts with `$` or `_INBOX.` (the server's API,
//!   such as `$JS.API.*`, and clients' replies: a record must not reach
//!   them). A full stream with `discard: new` (maximum messages or bytes)
//!   is backpressure, not a refusal: those publishes are sent again.
//! * **Broker restarts.** A publish that is not answered (the connection
//!   broke, the server is restarting, JetStream not back yet) is sent again
//!   with the same id, with backoff, for up to `retry_secs`; then the
//!   write fails and the output's `on_error` decides. The client
//!   reconnects by itself; nothing is acknowledged before it is stored.
//!   While the client is not connected (it then stops taking publishes
//!   once its queue is full), a round sends nothing more after the first
//!   publish that could not get in: the rest is counted as to send again,
//!   and no send or acknowledgement waits past `retry_secs`, so a broker
//!   gone for good fails the write after about `retry_secs`, whatever the
//!   batch's size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::{self};
use bytes::Bytes;
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};
use weir::WriteError;

use crate::error::ConfigError;
use crate::processors::jq::{EnvConfig, JqProgram};
use crate::record::{Position, Record};
use crate::sources::BuildContext;
use crate::sources::nats::resolve_url;
use crate::value::{self, Json};

const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// The client lets a JetStream context have 5,000 acknowledgements
/// outstanding and makes a publish past that wait for one: a write sends a
/// whole round before awaiting any, so a round larger than that would wait
/// for itself.
const MAX_IN_FLIGHT: usize = 4096;
const DEFAULT_RETRY_SECS: u64 = 120;
/// How long the first connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Room kept for a message's headers when its size is checked against
/// the server's `max_payload`.
const HEADER_ROOM: usize = 256;

/// Publishes each record as a JSON message to NATS JetStream, with a
/// message id derived from the record's position, so that a replay does
/// not duplicate; a record is acknowledged once the server stored it.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSink {
    /// The server's URL. Default: `nats://127.0.0.1:4222`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// The name of an environment variable holding the URL instead. Read
    /// when the pipeline is built; unset or empty is an error.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub url_env: Option<Spanned<String>>,
    /// The subject every record is published to (a stream must take it).
    /// Give this or `subject_jq`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub subject: Option<Spanned<String>>,
    /// A jq expression computing each record's subject from the record
    /// (`"orders." + .region`); its first output must be a non-empty
    /// string, else the record is dead-lettered (reason in the letter).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub subject_jq: Option<Spanned<String>>,
    /// Messages sent before their acknowledgements are awaited, at most.
    /// More keep the link busy on a distant server; each holds its body
    /// until it is confirmed. At most 4096. Default: 1024.
    #[serde(default)]
    #[schemars(with = "Option<usize>")]
    pub max_in_flight: Option<Spanned<usize>>,
    /// Seconds a message may go unanswered (the server restarting or
    /// unreachable), sent again with the same id, before the write fails.
    /// Default: 120.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub retry_secs: Option<Spanned<u64>>,
}

/// Where a record goes.
#[derive(Debug, Clone)]
enum Subject {
    Fixed(String),
    Jq(Arc<JqProgram>),
}

impl NatsSink {
    /// A minimal configuration.
    pub const EXAMPLE: &str = "url: nats://127.0.0.1:4222\nsubject_jq: '\"orders.\" + .region'\n";

    fn subject(&self) -> Result<Subject, ConfigError> {
        match (&self.subject, &self.subject_jq) {
            (Some(_), Some(j)) => Err(ConfigError::at(
                "nats sink: give subject or subject_jq, not both",
                j,
            )),
            (Some(s), None) => {
                if !publishable(&s.value) {
                    return Err(ConfigError::at(
                        format!(
                            "nats sink: '{}' is not a subject to publish to (an empty token, whitespace or a wildcard)",
                            s.value
                        ),
                        s,
                    ));
                }
                Ok(Subject::Fixed(s.value.clone()))
            }
            (None, Some(j)) => Ok(Subject::Jq(Arc::new(JqProgram::compile_spanned(
                j,
                "subject_jq",
                &EnvConfig::default(),
            )?))),
            (None, None) => Err(ConfigError::new(
                "nats sink: give subject (a fixed subject) or subject_jq (one per record)",
            )),
        }
    }

    /// Checks the options without connecting.
    ///
    /// # Errors
    /// At the option concerned.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.build("check").map(|_| ())
    }

    /// The sink, not connected yet (it connects at its first write).
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn build(&self, name: &str) -> Result<NatsWriter, ConfigError> {
        let url = resolve_url(self.url.as_ref(), self.url_env.as_ref(), "nats sink")?;
        let subject = self.subject()?;
        let max_in_flight = match &self.max_in_flight {
            Some(v) if v.value == 0 || v.value > MAX_IN_FLIGHT => {
                return Err(ConfigError::at(
                    format!("nats sink: max_in_flight must be 1 to {MAX_IN_FLIGHT}"),
                    v,
                ));
            }
            Some(v) => v.value,
            None => DEFAULT_MAX_IN_FLIGHT,
        };
        let retry = match &self.retry_secs {
            Some(v) if v.value == 0 => {
                return Err(ConfigError::at(
                    "nats sink: retry_secs must be at least 1",
                    v,
                ));
            }
            Some(v) => v.value,
            None => DEFAULT_RETRY_SECS,
        };
        Ok(NatsWriter {
            name: name.to_string(),
            url,
            subject,
            max_in_flight,
            retry_for: Duration::from_secs(retry),
            js: None,
            run: Run::default(),
            published: 0,
            nonce: run_nonce(),
        })
    }
}

/// The records of one position in a row, for message ids.
#[derive(Debug, Clone, Default)]
struct Run {
    pos: Option<Arc<Position>>,
    n: u64,
}

impl Run {
    /// The number of `pos`'s record among its position's records in a row.
    fn next(&mut self, pos: &Arc<Position>) -> u64 {
        let same = self
            .pos
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, pos) || **p == **pos);
        if same {
            self.n += 1;
        } else {
            self.pos = Some(pos.clone());
            self.n = 0;
        }
        self.n
    }
}

/// An open nats sink: implements [`weir::Sink<Record>`]; its output is the
/// number of records published.
#[derive(Debug)]
pub struct NatsWriter {
    name: String,
    url: String,
    subject: Subject,
    max_in_flight: usize,
    retry_for: Duration,
    js: Option<(async_nats::Client, jetstream::Context)>,
    run: Run,
    published: u64,
    /// Mixed into the ids of records whose position has no file (see the
    /// module docs): drawn when the output is built.
    nonce: u64,
}

/// A number unlikely to repeat between runs (no dependency on a random
/// number crate: the standard library's randomly keyed hasher, the time
/// and the process id).
fn run_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// One record ready to go.
struct Prepared {
    subject: String,
    id: String,
    body: Bytes,
}

/// How a publish went.
enum Outcome {
    /// Not answered: send again.
    Again(String),
    /// Refused: dead-letter the record with this reason.
    Refused(String),
}

impl NatsWriter {
    async fn connect(&mut self) -> Result<(async_nats::Client, jetstream::Context), String> {
        if let Some(js) = &self.js {
            return Ok(js.clone());
        }
        let b = weir_nats::Broker::connect(&self.url, CONNECT_TIMEOUT)
            .await
            .map_err(|e| format!("nats sink: {e}"))?;
        self.js = Some((b.client, b.js));
        Ok(self.js.clone().expect("set above"))
    }

    /// A record's subject, id and body, or why it cannot be published.
    fn prepare(&self, r: &Record, n: u64, max_payload: usize) -> Result<Prepared, String> {
        let subject = match &self.subject {
            Subject::Fixed(s) => s.clone(),
            Subject::Jq(p) => match p.first(&r.value) {
                Ok(Some(v)) => match value::as_str(&v) {
                    // A record must not reach the server's API ($JS.API.*,
                    // $SYS...) or another client's replies.
                    Some(s) if s.starts_with('$') || s.starts_with("_INBOX.") => {
                        return Err(format!(
                            "subject_jq gave {s:?}: subjects starting with '$' or '_INBOX.' are reserved"
                        ));
                    }
                    Some(s) if publishable(s) => s.to_string(),
                    Some(s) => {
                        return Err(format!(
                            "subject_jq gave {s:?}, not a subject to publish to"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "subject_jq gave {}, not a string",
                            value::to_text(&v)
                        ));
                    }
                },
                Ok(None) => return Err("subject_jq gave no output".into()),
                Err(e) => return Err(format!("subject_jq: {e}")),
            },
        };
        let body = serde_json::to_vec(&Json(&r.value)).expect("records are JSON");
        if body.len() + subject.len() + HEADER_ROOM > max_payload {
            return Err(format!(
                "too_large: a message of {} bytes exceeds the server's max_payload ({max_payload} bytes)",
                body.len()
            ));
        }
        let id = message_id(&self.name, &subject, &r.pos, n, &body, self.nonce);
        Ok(Prepared {
            subject,
            id,
            body: body.into(),
        })
    }

    /// Publishes `msgs` until each is stored or refused; `Err` when some
    /// stayed unanswered for `retry_for`.
    async fn publish(
        &self,
        client: &async_nats::Client,
        js: &jetstream::Context,
        msgs: &[Prepared],
    ) -> Result<Vec<Option<String>>, String> {
        let mut refused: Vec<Option<String>> = vec![None; msgs.len()];
        let mut todo: Vec<usize> = (0..msgs.len()).collect();
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut again = Vec::new();
            let mut last = String::new();
            // The round may take what is left of `retry_for`, no more.
            let deadline = started + self.retry_for;
            // Once a send could not get in (the client not connected, its
            // queue full: it reads it only when connected), the rest of
            // the round is not sent, only counted as to send again: a
            // broker gone for good costs one send timeout per round, not
            // one per message.
            let mut stuck: Option<String> = None;
            for chunk in todo.chunks(self.max_in_flight) {
                let mut sent: Vec<(usize, PublishAckFuture)> = Vec::with_capacity(chunk.len());
                for &i in chunk {
                    if stuck.is_none()
                        && client.connection_state() != async_nats::connection::State::Connected
                    {
                        stuck = Some("not connected to the server".into());
                    }
                    if let Some(why) = &stuck {
                        last.clone_from(why);
                        again.push(i);
                        continue;
                    }
                    let m = &msgs[i];
                    let mut h = async_nats::HeaderMap::new();
                    h.insert(async_nats::header::NATS_MESSAGE_ID, m.id.as_str());
                    let left = deadline.saturating_duration_since(Instant::now());
                    let f = tokio::time::timeout(
                        left,
                        js.publish_with_headers(m.subject.clone(), h, m.body.clone()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(PublishError::new(PublishErrorKind::TimedOut)));
                    match f {
                        Ok(f) => sent.push((i, f)),
                        Err(e) if e.kind() == PublishErrorKind::TimedOut => {
                            stuck = Some(format!("a publish could not be sent: {e}"));
                            last = e.to_string();
                            again.push(i);
                        }
                        Err(e) => match classify(js, client, &msgs[i].subject, &e).await {
                            Outcome::Again(why) => {
                                last = why;
                                again.push(i);
                            }
                            Outcome::Refused(why) => refused[i] = Some(why),
                        },
                    }
                }
                // Awaited together: each acknowledgement's timeout starts
                // when it is awaited, so after a broker restart lost ones
                // time out at once, not one after the other; none waits
                // past the round's deadline.
                let left = deadline.saturating_duration_since(Instant::now());
                let results =
                    futures::future::join_all(sent.into_iter().map(|(i, f)| async move {
                        let r = tokio::time::timeout(left, f)
                            .await
                            .unwrap_or_else(|_| Err(PublishError::new(PublishErrorKind::TimedOut)));
                        (i, r.map(|_| ()))
                    }))
                    .await;
                for (i, res) in results {
                    if let Err(e) = res {
                        match classify(js, client, &msgs[i].subject, &e).await {
                            Outcome::Again(why) => {
                                last = why;
                                again.push(i);
                            }
                            Outcome::Refused(why) => refused[i] = Some(why),
                        }
                    }
                }
            }
            if again.is_empty() {
                return Ok(refused);
            }
            if started.elapsed() >= self.retry_for {
                return Err(format!(
                    "nats sink: {} messages unanswered for {:?}: {last}",
                    again.len(),
                    self.retry_for
                ));
            }
            tracing::warn!(
                "nats sink '{}': {} messages unanswered ({last}); sending them again",
                self.name,
                again.len()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            // In the records' order again (skipped ones came first).
            again.sort_unstable();
            todo = again;
        }
    }
}

/// What a failed publish means (see the module docs).
async fn classify(
    js: &jetstream::Context,
    client: &async_nats::Client,
    subject: &str,
    e: &PublishError,
) -> Outcome {
    match e.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => Outcome::Again(e.to_string()),
        PublishErrorKind::MaxPayloadExceeded => Outcome::Refused(format!("too_large: {e}")),
        // No responders: no stream takes the subject, or JetStream is not
        // back yet after a restart. Ask which.
        PublishErrorKind::StreamNotFound => {
            if client.connection_state() != async_nats::connection::State::Connected {
                return Outcome::Again(e.to_string());
            }
            // JetStream answers (it is up) and no stream lists the
            // subject: refused. (Asking for the stream by subject alone is
            // not enough: the server answers an empty list, which the
            // client reports as a failed request.)
            if js.query_account().await.is_err() {
                return Outcome::Again(e.to_string());
            }
            match js.stream_by_subject(subject).await {
                Ok(_) => Outcome::Again(e.to_string()),
                Err(_) => Outcome::Refused(format!("no stream takes subject {subject}")),
            }
        }
        _ => {
            let text = e.to_string();
            // A stream with `discard: new` that is full: backpressure. A
            // subject's own limit ("maximum messages per subject
            // exceeded", `discard_new_per_subject`) is a stream rule: the
            // record is refused.
            if text.contains("per subject") {
                Outcome::Refused(format!("refused by the server: {text}"))
            } else if text.contains("maximum messages") || text.contains("maximum bytes") {
                Outcome::Again(text)
            } else {
                Outcome::Refused(format!("refused by the server: {text}"))
            }
        }
    }
}

/// Whether `s` is a subject one can publish to: dot-separated tokens, none
/// empty, without whitespace or wildcards.
fn publishable(s: &str) -> bool {
    !s.split('.').any(str::is_empty)
        && !s.contains(['*', '>'])
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The `Nats-Msg-Id` of a record (see the module docs): 32 hex digits.
/// `nonce` counts only for a position without a file (not replayable).
fn message_id(
    sink: &str,
    subject: &str,
    pos: &Position,
    n: u64,
    body: &[u8],
    nonce: u64,
) -> String {
    let mut h = Sha256::new();
    for part in [sink.as_bytes(), subject.as_bytes(), pos.input.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let file = pos.file.as_deref().unwrap_or("");
    h.update((file.len() as u64).to_le_bytes());
    h.update(file.as_bytes());
    h.update(u8::from(pos.file.is_some()).to_le_bytes());
    h.update(pos.line.to_le_bytes());
    h.update(n.to_le_bytes());
    if pos.file.is_none() {
        h.update(nonce.to_le_bytes());
    }
    h.update(body);
    let digest = h.finalize();
    let mut id = String::with_capacity(32);
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

impl weir::Sink<Record> for NatsWriter {
    type Output = u64;

    async fn write(&mut self, items: Vec<Record>) -> Result<(), WriteError<Record>> {
        let (client, js) = match self.connect().await {
            Ok(c) => c,
            Err(e) => return Err(WriteError::all(items, e)),
        };
        let max_payload = client.max_payload();
        // Prepared up to the first record that cannot be: what comes
        // after it is written by the next call.
        let mut run = self.run.clone();
        let mut msgs = Vec::with_capacity(items.len());
        let mut bad = None;
        for (i, r) in items.iter().enumerate() {
            let n = run.next(&r.pos);
            match self.prepare(r, n, max_payload) {
                Ok(m) => msgs.push(m),
                Err(why) => {
                    bad = Some((i, why));
                    break;
                }
            }
        }
        let refused = match self.publish(&client, &js, &msgs).await {
            Ok(r) => r,
            Err(e) => return Err(WriteError::all(items, e)),
        };
        if let Some(i) = refused.iter().position(Option::is_some) {
            // Stored up to `i`; `i` is refused. What follows it is
            // published again by the next call, with the same ids (the
            // server drops the copies), so the numbering restarts at `i`.
            let mut run = self.run.clone();
            for r in &items[..=i] {
                run.next(&r.pos);
            }
            self.run = run;
            self.published += i as u64;
            let why = refused[i].clone().expect("found above");
            let mut items = items;
            let rest = items.split_off(i);
            return Err(WriteError::bad_item(rest, why));
        }
        self.run = run;
        self.published += msgs.len() as u64;
        if let Some((i, why)) = bad {
            let mut items = items;
            let rest = items.split_off(i);
            return Err(WriteError::bad_item(rest, why));
        }
        Ok(())
    }

    async fn finish(self) -> Result<u64, weir::BoxError> {
        Ok(self.published)
    }
}

impl crate::registry::Documented for NatsSink {
    const EXAMPLE: &'static str = NatsSink::EXAMPLE;
}

impl crate::registry::SinkComponent for NatsSink {
    fn check(&self, _ctx: &BuildContext) -> Result<(), ConfigError> {
        NatsSink::check(self)
    }

    fn attach(
        &self,
        _ctx: &BuildContext,
        name: &str,
        input: weir::Flow<Record>,
        policy: weir::ErrorPolicy,
    ) -> Result<(), ConfigError> {
        input.sink(name, self.build(name)?).on_error(policy);
        Ok(())
    }

    fn resume(&self) -> crate::registry::Resume {
        crate::registry::Resume::MayDuplicate(
            "publishes again the records after the last checkpoint; the stream drops them as duplicates only within its duplicate window",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir::{ErrorPolicy, Pipeline};

    fn sink(yaml: &str) -> NatsSink {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn options_are_checked() {
        let err = |yaml: &str| sink(yaml).check().unwrap_err().to_string();
        assert!(err("url: nats://a:1\n").contains("give subject"));
        assert!(err("subject: a\nsubject_jq: .a\n").contains("not both"));
        assert!(err("subject: 'a.*'\n").contains("wildcard"));
        assert!(err("subject: 'a..b'\n").contains("empty token"));
        assert!(err("subject_jq: '.a +'\n").contains("subject_jq does not compile"));
        assert!(err("subject: a\nmax_in_flight: 0\n").contains("1 to 4096"));
        assert!(err("subject: a\nmax_in_flight: 5000\n").contains("1 to 4096"));
        sink(NatsSink::EXAMPLE).check().unwrap();
    }

    #[test]
    fn ids_depend_on_position_number_subject_and_output() {
        let pos = |line| Position {
            input: "in".into(),
            file: Some("f".into()),
            line,
        };
        let id = message_id("out", "s", &pos(1), 0, b"{}", 1);
        assert_eq!(id.len(), 32);
        // A position with a file: the same id in every run.
        assert_eq!(id, message_id("out", "s", &pos(1), 0, b"{}", 2));
        for other in [
            message_id("out2", "s", &pos(1), 0, b"{}", 1),
            message_id("out", "t", &pos(1), 0, b"{}", 1),
            message_id("out", "s", &pos(2), 0, b"{}", 1),
            message_id("out", "s", &pos(1), 1, b"{}", 1),
            message_id("out", "s", &pos(1), 0, b"[]", 1),
        ] {
            assert_ne!(id, other);
        }
        // Without a file (numbered afresh each run): differs per run.
        let bare = Position {
            input: "in".into(),
            file: None,
            line: 1,
        };
        assert_eq!(
            message_id("out", "s", &bare, 0, b"{}", 1),
            message_id("out", "s", &bare, 0, b"{}", 1)
        );
        assert_ne!(
            message_id("out", "s", &bare, 0, b"{}", 1),
            message_id("out", "s", &bare, 0, b"{}", 2)
        );
        assert_ne!(run_nonce(), run_nonce());
    }

    /// Records of an input numbered afresh each run (a core subject, stdin,
    /// `http_server`): the same body at the same number in the next run is
    /// a new record, stored, not dropped as a duplicate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_numbered_afresh_each_run_are_not_taken_for_duplicates() {
        let server = weir_testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        js.create_stream(jetstream::stream::Config {
            name: "OUT".into(),
            subjects: vec!["out.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let cfg = sink(&format!("url: {}\nsubject: out.a\n", server.url()));
        let bare = || {
            Record::from_json(
                &serde_json::json!({"ping": 1}),
                Arc::new(Position {
                    input: "in".into(),
                    file: None,
                    line: 1,
                }),
            )
        };
        use weir::Sink;
        for _ in 0..2 {
            let mut w = cfg.build("out").unwrap();
            w.write(vec![bare()]).await.unwrap();
        }
        let mut s = js.get_stream("OUT").await.unwrap();
        assert_eq!(s.info().await.unwrap().state.messages, 2);
    }

    fn rec(v: serde_json::Value, line: u64) -> Record {
        Record::from_json(
            &v,
            Arc::new(Position {
                input: "in".into(),
                file: Some("f.jsonl".into()),
                line,
            }),
        )
    }

    /// Publishing the same records twice stores them once; records the
    /// server refuses, or whose subject does not compute, are dead-lettered
    /// with the reason, and the rest is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replays_do_not_duplicate_and_refusals_are_dead_lettered() {
        let server = weir_testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        js.create_stream(jetstream::stream::Config {
            name: "OUT".into(),
            subjects: vec!["out.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let big = "x".repeat(client.max_payload() + 10);
        let records = move || {
            let mut v: Vec<Record> = (1..=20)
                .map(|i| {
                    rec(
                        serde_json::json!({"id": i, "region": format!("r{}", i % 2)}),
                        i,
                    )
                })
                .collect();
            v.insert(5, rec(serde_json::json!({"id": 100}), 100));
            v.insert(
                9,
                rec(
                    serde_json::json!({"id": 101, "region": "x", "big": big}),
                    101,
                ),
            );
            v.push(rec(
                serde_json::json!({"id": 102, "region": "nowhere", "to": "elsewhere"}),
                102,
            ));
            v
        };
        let cfg = sink(&format!(
            "url: {}\nsubject_jq: 'if .to then .to else \"out.\" + .region end'\nmax_in_flight: 4\nretry_secs: 3\n",
            server.url()
        ));
        for _ in 0..2 {
            let p = Pipeline::new();
            let dead = p.dead_letter_sink(weir::collect());
            let n = p
                .source("in", weir::from_iter(records()))
                .sink("out", cfg.build("out").unwrap())
                .on_error(ErrorPolicy::DeadLetter);
            tokio::time::timeout(Duration::from_secs(30), p.run())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n.take(), Some(20));
            let mut letters: Vec<(u64, String)> = dead
                .take()
                .unwrap()
                .iter()
                .map(|d: &weir::DeadLetter| (d.item::<Record>().unwrap().pos.line, d.error.clone()))
                .collect();
            letters.sort();
            assert_eq!(letters.len(), 3, "{letters:?}");
            assert!(letters[0].1.contains("subject_jq"), "{letters:?}");
            assert!(letters[1].1.contains("too_large"), "{letters:?}");
            assert!(
                letters[2].1.contains("no stream takes subject elsewhere"),
                "{letters:?}"
            );
        }
        let info = js
            .get_stream("OUT")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.state.messages, 20);
        let s = js.get_stream("OUT").await.unwrap();
        let m = s.get_last_raw_message_by_subject("out.r1").await.unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap(),
            serde_json::json!({"id": 19, "region": "r1"})
        );
    }

    /// The broker gone for good mid-run: the write fails after about
    /// `retry_secs`, instead of waiting a send timeout per message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_gone_mid_run_fails_the_write_within_retry_secs() {
        let mut server = weir_testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        js.create_stream(jetstream::stream::Config {
            name: "OUT".into(),
            subjects: vec!["out.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let cfg = sink(&format!(
            "url: {}\nsubject: out.a\nretry_secs: 3\n",
            server.url()
        ));
        let mut w = cfg.build("out").unwrap();
        use weir::Sink;
        w.write(vec![rec(serde_json::json!({"id": 0}), 0)])
            .await
            .unwrap();
        server.stop();
        let items: Vec<Record> = (1..=3000)
            .map(|i| rec(serde_json::json!({"id": i}), i))
            .collect();
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(30), w.write(items)).await;
        let r = r.unwrap_or_else(|_| panic!("write still waiting after {:?}", t.elapsed()));
        let Err(e) = r else {
            panic!("the broker is gone: the write must fail")
        };
        assert!(e.error.to_string().contains("unanswered"), "{}", e.error);
        assert_eq!(e.unwritten.len(), 3000);
    }

    /// A subject's own message limit refuses the record (dead-lettered,
    /// not sent again until `retry_secs`); subjects of the server's API or
    /// of replies, computed by `subject_jq`, are refused before sending.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_subject_limits_and_reserved_subjects_are_dead_lettered() {
        let server = weir_testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        js.create_stream(jetstream::stream::Config {
            name: "OUT".into(),
            subjects: vec!["out.>".into()],
            max_messages_per_subject: 1,
            discard: jetstream::stream::DiscardPolicy::New,
            discard_new_per_subject: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let cfg = sink(&format!(
            "url: {}\nsubject_jq: .to\nretry_secs: 30\n",
            server.url()
        ));
        let records = vec![
            rec(serde_json::json!({"to": "out.a"}), 1),
            rec(serde_json::json!({"to": "out.a", "n": 2}), 2),
            rec(serde_json::json!({"to": "$JS.API.STREAM.DELETE.OUT"}), 3),
            rec(serde_json::json!({"to": "_INBOX.abc"}), 4),
            rec(serde_json::json!({"to": "out.b"}), 5),
        ];
        let p = Pipeline::new();
        let dead = p.dead_letter_sink(weir::collect());
        let n = p
            .source("in", weir::from_iter(records))
            .sink("out", cfg.build("out").unwrap())
            .on_error(ErrorPolicy::DeadLetter);
        tokio::time::timeout(Duration::from_secs(20), p.run())
            .await
            .expect("refused at once, not sent again for retry_secs")
            .unwrap();
        assert_eq!(n.take(), Some(2));
        let letters: Vec<(u64, String)> = dead
            .take()
            .unwrap()
            .iter()
            .map(|d: &weir::DeadLetter| (d.item::<Record>().unwrap().pos.line, d.error.clone()))
            .collect();
        assert_eq!(letters.len(), 3, "{letters:?}");
        assert!(letters[0].1.contains("per subject"), "{letters:?}");
        assert!(letters[1].1.contains("reserved"), "{letters:?}");
        assert!(letters[2].1.contains("reserved"), "{letters:?}");
        let mut s = js.get_stream("OUT").await.unwrap();
        assert_eq!(s.info().await.unwrap().state.messages, 2);
    }
}
