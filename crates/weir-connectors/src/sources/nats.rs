//! The `nats` source: messages of a NATS JetStream stream, read through a
//! durable pull consumer, or of a plain (core) NATS subject.
//!
//! # Design
//!
//! * **One message, one record, one ack.** A message's payload is one JSON
//!   value. Its record carries an engine [`Ack`]; the message is
//!   acknowledged to the broker only when that ack settles as handled:
//!   every record derived from it committed by the outputs, filtered out,
//!   or dead-lettered. An ack that settles as failed (the run aborted, an
//!   output failed for good) gives the message back (`-NAK`, with a delay
//!   of `ack_wait_secs`, 5 s at most, so that it does not go into the
//!   failing run's pull request), so it is delivered again.
//! * **Positions.** A record's position is the stream and the message's
//!   stream sequence (`ORDERS:42`, like a file and a line), so a dead
//!   letter names the message, and the `nats` sink derives the same
//!   message id from it in every run. Core messages are numbered in the
//!   order they arrive (`in#42`).
//! * **Bad messages.** A payload that is not valid JSON (or not UTF-8) is
//!   dead-lettered by the decode stage with that position, and the message
//!   is acknowledged once the dead letter is written. A message delivered
//!   more than `max_deliver` times without being acknowledged (it made the
//!   run fail, or a process holding it was killed, that many times) is
//!   dead-lettered at its next delivery with reason `max_deliver`, without
//!   being processed. Weir counts deliveries itself (the consumer is
//!   created without a delivery limit), so such a message is never left
//!   stuck in the consumer.
//! * **Bounded.** The consumer's `max_ack_pending` is `max_in_flight`: the
//!   server delivers no more unacknowledged messages than that, so the
//!   messages the run holds (in its channels, in an aggregate) are
//!   bounded.
//! * **In progress while held.** Every `ack_wait_secs / 2` the
//!   acknowledging thread reports each message the run holds (taken, not
//!   yet settled) in progress (`+WPI`), which restarts its `ack_wait` on
//!   the server: a message held long (a slow output, an aggregate) is not
//!   delivered again meanwhile, so its delivery count, which `max_deliver`
//!   checks, counts the runs that held it, not the time they took. Only
//!   held messages are reported (at most `max_in_flight`).
//! * **Redelivered while held.** Should a copy still come (progress
//!   reports lost to a broker restart), it is not processed a second time:
//!   it is acknowledged together with the original (messages held are
//!   remembered by stream sequence).
//! * **Acknowledgements travel on a connection of their own**, served by a
//!   thread of the run's blocking pool with its own small runtime: a
//!   stopped run (Ctrl-C) settles the records it had taken before it
//!   returns, and the tokio runtime waits for that thread, so those
//!   acknowledgements are sent and flushed before the process exits (as
//!   `http_server` answers its clients). Acknowledgements are not
//!   confirmed: one lost on the way (the broker restarting at that moment)
//!   means the message is delivered again after `ack_wait_secs`:
//!   at-least-once. Give the output a `key`, or use the `nats` sink's
//!   message ids, to make that harmless.
//! * **Broker restarts.** The client reconnects by itself; the pull stream
//!   asks again, and a consumer found missing is created again (a durable
//!   consumer on a file-backed stream survives a restart). Messages that
//!   were delivered into the broken connection come back after
//!   `ack_wait_secs`.
//! * **The end.** The source runs until the run is stopped (SIGINT,
//!   SIGTERM: the engine drops the stream; messages taken are processed
//!   and acknowledged, messages still in the client's buffer were never
//!   handed on and are delivered again after `ack_wait_secs`; that
//!   delivery still counts towards `max_deliver`). With
//!   `until_drained: true` it ends by itself once the consumer has nothing
//!   left: no message waiting, none delivered and unacknowledged (which
//!   includes messages a killed run held: they are waited for until the
//!   broker delivers them again), and none held by this run.
//! * **Core subjects** (`subject:` without `stream:`) are at-most-once:
//!   core NATS keeps nothing, so a message published while the run is not
//!   subscribed, or taken by a run that is then killed, is gone. Their
//!   records carry no ack. The subscription's buffer is the client's own
//!   (it drops messages for a slow consumer, with a warning).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::{FutureExt, StreamExt};
use serde_saphyr::Spanned;
use weir::{Ack, AckOutcome, BoxError};

use crate::error::ConfigError;
use crate::record::{Position, Record};
use crate::sources::decode::Decoder;
use crate::sources::{BuildContext, InvalidUtf8, Raw, Text, raw_from_text};
use crate::value::{self, Val};

/// The server when neither `url` nor `url_env` is given.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";
const DEFAULT_MAX_DELIVER: u32 = 5;
const DEFAULT_ACK_WAIT_SECS: u64 = 30;
const DEFAULT_BATCH: usize = 256;
const DEFAULT_MAX_IN_FLIGHT: usize = 4096;
/// How long a first connection may take before the run fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the pull stream may stay quiet before the consumer is asked
/// whether anything is left (`until_drained`) and whether the server still
/// has this run's pull request (see [`idle`]).
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// Quiet checks in a row that find no pull request waiting on the server
/// before the pull stream is started again.
const STALLED_AFTER: u32 = 4;

/// Reads messages of a NATS JetStream stream through a durable pull
/// consumer (at-least-once), or of a core NATS subject (at-most-once).
///
/// Each message's payload is one JSON value, one record. A JetStream
/// message is acknowledged only once everything derived from its record
/// is committed by the outputs or dead-lettered; one that is not valid
/// JSON is dead-lettered with its position `STREAM:SEQ`.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSource {
    /// The server's URL (`nats://host:port`; several, comma-separated,
    /// for a cluster). Default: `nats://127.0.0.1:4222`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// The name of an environment variable holding the URL instead (it may
    /// carry credentials that do not belong in the pipeline file). Read
    /// when the pipeline is built; unset or empty is an error.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub url_env: Option<Spanned<String>>,
    /// The JetStream stream to read (it must exist). Without it, `subject`
    /// is read as a core NATS subject, at-most-once.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub stream: Option<Spanned<String>>,
    /// The durable consumer's name (required with `stream`). It is created
    /// when missing (delivering the stream from its first message) and
    /// keeps the position between runs: a rerun reads what the last one
    /// did not acknowledge. Runs sharing a consumer share its messages.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub consumer: Option<Spanned<String>>,
    /// With `stream`: only messages on this subject (wildcards allowed),
    /// as the consumer's filter. Without `stream`: the core subject to
    /// subscribe to (required then).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub subject: Option<Spanned<String>>,
    /// Deliveries a message may have without being acknowledged; at the
    /// next one it is dead-lettered with reason `max_deliver` instead of
    /// being processed, and acknowledged. Default: 5.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub max_deliver: Option<Spanned<u32>>,
    /// Seconds the broker waits for a delivered message's acknowledgement
    /// before delivering it again (after a crash, say: a rerun gets the
    /// messages a killed run held after this long). Set it above the
    /// longest time a record may spend in the pipeline; a copy delivered
    /// while the original is still held is not processed twice. Applied
    /// when the consumer is created or updated. Default: 30.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub ack_wait_secs: Option<Spanned<u64>>,
    /// Messages asked for per pull request. Default: 256.
    #[serde(default)]
    #[schemars(with = "Option<usize>")]
    pub batch: Option<Spanned<usize>>,
    /// Messages delivered and not yet acknowledged, at most (the
    /// consumer's `max_ack_pending`): what bounds the messages a run holds.
    /// A whole-input aggregate needs it above the input's size. Default:
    /// 4096.
    #[serde(default)]
    #[schemars(with = "Option<usize>")]
    pub max_in_flight: Option<Spanned<usize>>,
    /// A field name: each record gets it as an object `{"subject", "seq",
    /// "headers"}`: the message's subject, its stream sequence (core
    /// messages: their number in the run) and its headers, each name to
    /// its value as text (repeated headers joined with `, `, names sorted).
    /// The message must then be a JSON
    /// object (an existing field of that name is replaced); any other value
    /// is dead-lettered with reason `not_an_object`. Default: no meta
    /// field, the record is the payload as it is.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub meta: Option<Spanned<String>>,
    /// End the run once the consumer is drained (nothing waiting, nothing
    /// delivered and unacknowledged, nothing held) instead of waiting for
    /// more: for batch jobs and tests. Messages a killed run held are
    /// waited for (`ack_wait_secs`). Only with `stream`. Default: false
    /// (run until stopped).
    #[serde(default)]
    pub until_drained: bool,
}

impl NatsSource {
    /// A minimal configuration.
    pub const EXAMPLE: &str =
        "url: nats://127.0.0.1:4222\nstream: ORDERS\nconsumer: weir-orders\nmeta: _nats\n";

    /// Checks the options and reads the URL's variable.
    ///
    /// # Errors
    /// At the option concerned: a missing `consumer` or `subject`, options
    /// that only apply to streams given for a core subject, a limit of 0,
    /// an unset variable, an empty `meta`.
    pub fn settings(&self, ctx: &BuildContext) -> Result<Settings, ConfigError> {
        let url = resolve_url(self.url.as_ref(), self.url_env.as_ref(), "nats source")?;
        let meta = match &self.meta {
            Some(m) if m.value.is_empty() => {
                return Err(ConfigError::at("nats source: meta must not be empty", m));
            }
            m => m.as_ref().map(|m| Arc::<str>::from(m.value.as_str())),
        };
        let mode = match (&self.stream, &self.consumer) {
            (Some(stream), Some(consumer)) => {
                let positive = |o: &Option<Spanned<usize>>, name: &str, default: usize| match o {
                    Some(v) if v.value == 0 => Err(ConfigError::at(
                        format!("nats source: {name} must be at least 1"),
                        v,
                    )),
                    Some(v) => Ok(v.value),
                    None => Ok(default),
                };
                let ack_wait = match &self.ack_wait_secs {
                    Some(v) if v.value == 0 => {
                        return Err(ConfigError::at(
                            "nats source: ack_wait_secs must be at least 1",
                            v,
                        ));
                    }
                    Some(v) => v.value,
                    None => DEFAULT_ACK_WAIT_SECS,
                };
                let max_deliver = match &self.max_deliver {
                    Some(v) if v.value == 0 => {
                        return Err(ConfigError::at(
                            "nats source: max_deliver must be at least 1",
                            v,
                        ));
                    }
                    Some(v) => v.value,
                    None => DEFAULT_MAX_DELIVER,
                };
                Mode::Stream(StreamOpts {
                    stream: stream.value.clone(),
                    consumer: consumer.value.clone(),
                    filter: self.subject.as_ref().map(|s| s.value.clone()),
                    max_deliver,
                    ack_wait: Duration::from_secs(ack_wait),
                    batch: positive(&self.batch, "batch", DEFAULT_BATCH)?,
                    max_in_flight: positive(
                        &self.max_in_flight,
                        "max_in_flight",
                        DEFAULT_MAX_IN_FLIGHT,
                    )?,
                    until_drained: self.until_drained,
                    progress: Some(Duration::from_secs(ack_wait) / 2),
                })
            }
            (Some(stream), None) => {
                return Err(ConfigError::at(
                    "nats source: a stream is read through a durable consumer: give `consumer`",
                    stream,
                ));
            }
            (None, Some(consumer)) => {
                return Err(ConfigError::at(
                    "nats source: `consumer` needs `stream`",
                    consumer,
                ));
            }
            (None, None) => {
                let Some(subject) = &self.subject else {
                    return Err(ConfigError::new(
                        "nats source: give `stream` and `consumer` (JetStream, at-least-once) or `subject` (core NATS, at-most-once)",
                    ));
                };
                let only = |name: &str| {
                    format!(
                        "nats source: {name} applies to a stream; a core subject has no acknowledgements"
                    )
                };
                if let Some(v) = &self.max_deliver {
                    return Err(ConfigError::at(only("max_deliver"), v));
                }
                if let Some(v) = &self.ack_wait_secs {
                    return Err(ConfigError::at(only("ack_wait_secs"), v));
                }
                if let Some(v) = &self.batch {
                    return Err(ConfigError::at(only("batch"), v));
                }
                if let Some(v) = &self.max_in_flight {
                    return Err(ConfigError::at(only("max_in_flight"), v));
                }
                if self.until_drained {
                    return Err(ConfigError::new(
                        "nats source: until_drained needs `stream` (a core subject is never drained)",
                    ));
                }
                Mode::Core {
                    subject: subject.value.clone(),
                }
            }
        };
        Ok(Settings {
            input: ctx.input.clone(),
            url,
            meta,
            mode,
        })
    }

    /// The source and the decoder of its items. Nothing is contacted
    /// before the run starts (`weir check` connects to nothing); an
    /// unreachable server or a missing stream then fails the run.
    ///
    /// # Errors
    /// As [`settings`](Self::settings).
    pub fn build(&self, ctx: &BuildContext) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        Ok((self.settings(ctx)?.into_source(), Decoder::jsonl()))
    }
}

/// The URL from `url`, `url_env` or the default; `what` names the
/// component in errors.
pub(crate) fn resolve_url(
    url: Option<&Spanned<String>>,
    url_env: Option<&Spanned<String>>,
    what: &str,
) -> Result<String, ConfigError> {
    match (url, url_env) {
        (Some(_), Some(var)) => Err(ConfigError::at(
            format!("{what}: give url or url_env, not both"),
            var,
        )),
        (Some(u), None) if u.value.trim().is_empty() => {
            Err(ConfigError::at(format!("{what}: url is empty"), u))
        }
        (Some(u), None) => Ok(u.value.clone()),
        (None, Some(var)) => match std::env::var(&var.value) {
            Ok(u) if !u.trim().is_empty() => Ok(u),
            Ok(_) => Err(ConfigError::at(
                format!(
                    "{what}: environment variable {} (url_env) is empty",
                    var.value
                ),
                var,
            )),
            Err(e) => Err(ConfigError::at(
                format!("{what}: environment variable {} (url_env): {e}", var.value),
                var,
            )),
        },
        (None, None) => Ok(DEFAULT_URL.to_string()),
    }
}

/// The options, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    input: Arc<str>,
    url: String,
    meta: Option<Arc<str>>,
    mode: Mode,
}

#[derive(Debug, Clone)]
enum Mode {
    Stream(StreamOpts),
    Core { subject: String },
}

/// The options of a stream's source.
#[derive(Debug, Clone)]
struct StreamOpts {
    stream: String,
    consumer: String,
    filter: Option<String>,
    max_deliver: u32,
    ack_wait: Duration,
    batch: usize,
    max_in_flight: usize,
    until_drained: bool,
    /// How often the messages held are reported in progress (`+WPI`):
    /// half of `ack_wait`. `None` in tests that need copies delivered.
    progress: Option<Duration>,
}

impl Settings {
    /// The engine source (not connected yet: it connects at its first
    /// poll).
    pub fn into_source(self) -> weir::Source<Raw> {
        match self.mode {
            Mode::Core { .. } => weir::from_try_stream(core_messages(self)),
            Mode::Stream(opts) => {
                weir::from_try_acked_stream(stream_messages(self.input, self.url, self.meta, opts))
            }
        }
    }
}

/// Connects, or says why not.
async fn connect(url: &str) -> Result<async_nats::Client, BoxError> {
    let opts = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .name("weir nats source")
        .request_timeout(Some(Duration::from_secs(10)));
    match tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_secs(1),
        async_nats::connect_with_options(url, opts),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("nats: cannot connect to {url}: {e}").into()),
        Err(_) => Err(format!(
            "nats: cannot connect to {url}: no answer within {CONNECT_TIMEOUT:?}"
        )
        .into()),
    }
}

/// A message's record (or what the decoder dead-letters), from its
/// payload, subject, headers and position.
fn raw_item(meta: Option<&str>, pos: Arc<Position>, msg: &async_nats::Message, seq: u64) -> Raw {
    let text = Text::decode(&msg.payload, InvalidUtf8::DeadLetter, "message");
    let Some(meta) = meta else {
        return raw_from_text(pos, text);
    };
    let text = match text {
        Text::Valid(t) => t,
        invalid => return raw_from_text(pos, invalid),
    };
    let parsed = match value::parse(text.as_bytes()) {
        Ok(v) => v,
        // The decoder says what is wrong and where.
        Err(_) => return Raw::Line { pos, text },
    };
    let Val::Obj(mut obj) = parsed else {
        return Raw::Refused {
            pos,
            text,
            reason: "not_an_object",
            detail: "meta is set and the message is not a JSON object".into(),
        };
    };
    std::sync::Arc::make_mut(&mut obj).insert(value::string(meta), meta_value(msg, seq));
    Raw::Record(Record::new(Val::Obj(obj), pos))
}

/// `{"subject", "seq", "headers"}` of a message (see [`NatsSource::meta`]).
fn meta_value(msg: &async_nats::Message, seq: u64) -> Val {
    let mut headers: Vec<(String, Val)> = Vec::new();
    if let Some(h) = &msg.headers {
        for (name, values) in h.iter() {
            let joined: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
            headers.push((name.to_string(), value::string(joined.join(", "))));
        }
        // Hash-map order is not stable: sorted, records are reproducible.
        headers.sort_by(|a, b| a.0.cmp(&b.0));
    }
    value::object([
        ("subject", value::string(msg.subject.as_str())),
        ("seq", Val::from(seq as usize)),
        ("headers", value::object(headers)),
    ])
}

/// Core NATS: every message on the subject, as it comes, without acks.
fn core_messages(
    settings: Settings,
) -> impl futures::Stream<Item = Result<Raw, BoxError>> + Send + 'static {
    let Mode::Core { subject } = settings.mode.clone() else {
        unreachable!("core_messages is called for core subjects only");
    };
    enum State {
        Start(Settings, String),
        Reading(Settings, async_nats::Subscriber, u64),
        Done,
    }
    futures::stream::unfold(State::Start(settings, subject), |state| async move {
        let (settings, mut sub, mut n) = match state {
            State::Done => return None,
            State::Reading(s, sub, n) => (s, sub, n),
            State::Start(s, subject) => {
                let client = match connect(&s.url).await {
                    Ok(c) => c,
                    Err(e) => return Some((Err(e), State::Done)),
                };
                match client.subscribe(subject.clone()).await {
                    Ok(sub) => (s, sub, 0),
                    Err(e) => {
                        let e = format!("nats: cannot subscribe to {subject}: {e}");
                        return Some((Err(e.into()), State::Done));
                    }
                }
            }
        };
        // The subscription ends only when the client is closed.
        let msg = sub.next().await?;
        n += 1;
        let pos = Arc::new(Position {
            input: settings.input.clone(),
            file: None,
            line: n,
        });
        let raw = raw_item(settings.meta.as_deref(), pos, &msg, n);
        Some((Ok(raw), State::Reading(settings, sub, n)))
    })
}

/// Messages held by the run, by stream sequence: the reply subjects of
/// the message and of copies delivered meanwhile (the latest last), to
/// acknowledge together and to report in progress.
type Held = Arc<Mutex<HashMap<u64, Vec<async_nats::Subject>>>>;

/// What the acknowledging thread sends.
struct AckCmd {
    replies: Vec<async_nats::Subject>,
    ack: bool,
}

/// To the acknowledging thread. Unbounded on purpose: an ack callback runs
/// wherever the last record settles (any engine thread, never async) and
/// must not block; what waits here is at most one small entry per message
/// held, which `max_in_flight` bounds.
type AckTx = tokio::sync::mpsc::UnboundedSender<AckCmd>;

struct StreamState {
    input: Arc<str>,
    /// The stream's name, as positions carry it.
    file: Arc<str>,
    url: String,
    meta: Option<Arc<str>>,
    opts: StreamOpts,
    client: Option<async_nats::Client>,
    consumer: Option<jetstream::consumer::PullConsumer>,
    messages: Option<pull::Stream>,
    held: Held,
    acks: Option<AckTx>,
    /// Quiet checks in a row that found no pull request waiting.
    stalls: u32,
}

/// JetStream: the consumer's messages with their acks.
fn stream_messages(
    input: Arc<str>,
    url: String,
    meta: Option<Arc<str>>,
    opts: StreamOpts,
) -> impl futures::Stream<Item = Result<(Raw, Ack), BoxError>> + Send + 'static {
    let state = StreamState {
        input,
        file: Arc::from(opts.stream.as_str()),
        url,
        meta,
        opts,
        client: None,
        consumer: None,
        messages: None,
        held: Arc::default(),
        acks: None,
        stalls: 0,
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut st = state?;
        loop {
            match next_message(&mut st).await {
                Next::Item(item) => return Some((Ok(item), Some(st))),
                Next::Nothing => {}
                Next::End => return None,
                Next::Fail(e) => return Some((Err(e), None)),
            }
        }
    })
}

enum Next {
    Item((Raw, Ack)),
    Nothing,
    End,
    Fail(BoxError),
}

/// Opens the consumer (created or updated) and its pull stream, when
/// missing; `Some` when the caller should come back later (`Nothing`) or
/// give up (`Fail`).
async fn start_pulling(st: &mut StreamState, client: async_nats::Client) -> Option<Next> {
    let StreamOpts {
        stream,
        consumer: consumer_name,
        filter,
        ack_wait,
        batch,
        max_in_flight,
        ..
    } = st.opts.clone();
    let (stream, consumer_name) = (stream.as_str(), consumer_name.as_str());
    if st.consumer.is_none() {
        let js = jetstream::new(client.clone());
        let s = match js.get_stream(stream).await {
            Ok(s) => s,
            Err(e) => {
                use jetstream::context::GetStreamErrorKind;
                if matches!(e.kind(), GetStreamErrorKind::JetStream(_)) {
                    return Some(Next::Fail(format!("nats: stream {stream}: {e}").into()));
                }
                // The broker restarting: try again.
                tracing::warn!("nats source: stream {stream}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Some(Next::Nothing);
            }
        };
        let config = pull::Config {
            durable_name: Some(consumer_name.to_string()),
            filter_subject: filter.unwrap_or_default(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            // Weir counts deliveries itself (see the module docs).
            max_deliver: -1,
            max_ack_pending: i64::try_from(max_in_flight).unwrap_or(i64::MAX),
            ..Default::default()
        };
        match s.create_consumer(config).await {
            Ok(c) => st.consumer = Some(c),
            Err(e) => {
                use jetstream::stream::ConsumerErrorKind;
                if matches!(e.kind(), ConsumerErrorKind::JetStream(_)) {
                    return Some(Next::Fail(
                        format!("nats: cannot create consumer {consumer_name} on {stream}: {e}")
                            .into(),
                    ));
                }
                tracing::warn!("nats source: consumer {consumer_name}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Some(Next::Nothing);
            }
        }
    }
    if st.messages.is_none() {
        let c = st.consumer.as_ref().expect("set above");
        match c
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(m) => st.messages = Some(m),
            Err(e) => {
                tracing::warn!("nats source: pull from {consumer_name}: {e}; retrying");
                st.consumer = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Some(Next::Nothing);
            }
        }
    }
    None
}

async fn next_message(st: &mut StreamState) -> Next {
    let (max_deliver, until_drained) = (st.opts.max_deliver, st.opts.until_drained);
    if st.client.is_none() {
        // Only the first connection must succeed: the client reconnects by
        // itself afterwards.
        match connect(&st.url).await {
            Ok(c) => st.client = Some(c),
            Err(e) => return Next::Fail(e),
        }
    }
    if st.consumer.is_none() || st.messages.is_none() {
        let client = st.client.clone().expect("set above");
        if let Some(wait) = start_pulling(st, client).await {
            return wait;
        }
    }
    let messages = st.messages.as_mut().expect("set above");
    // A message already buffered is taken without arming a timer; the
    // stream's `next` is cancel-safe, so the poll can be dropped.
    let next = match messages.next().now_or_never() {
        Some(n) => n,
        None => match tokio::time::timeout(IDLE_CHECK, messages.next()).await {
            Ok(n) => n,
            Err(_) => return idle(st, until_drained).await,
        },
    };
    st.stalls = 0;
    let msg = match next {
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            use pull::MessagesErrorKind;
            if matches!(
                e.kind(),
                MessagesErrorKind::ConsumerDeleted | MessagesErrorKind::NoResponders
            ) {
                st.messages = None;
                st.consumer = None;
            }
            tracing::debug!("nats source: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Next::Nothing;
        }
        None => {
            st.messages = None;
            return Next::Nothing;
        }
    };
    let (seq, delivered) = match msg.info() {
        Ok(i) => (i.stream_sequence, i.delivered),
        // Not a JetStream delivery (cannot happen on a pull consumer):
        // nothing to acknowledge it with.
        Err(_) => return Next::Nothing,
    };
    // Copied: the subject as received shares the connection's read
    // buffer, which it would keep alive while the message is held.
    let Some(reply) = msg
        .message
        .reply
        .as_ref()
        .map(|r| async_nats::Subject::from(r.as_str().to_string()))
    else {
        return Next::Nothing;
    };
    // A copy of a message still held: acknowledged with it.
    {
        let mut held = st.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(replies) = held.get_mut(&seq) {
            replies.push(reply);
            return Next::Nothing;
        }
        held.insert(seq, vec![reply.clone()]);
    }
    let tx = st
        .acks
        .get_or_insert_with(|| {
            let nak_delay = st.opts.ack_wait.min(NAK_DELAY);
            start_acker(st.url.clone(), st.held.clone(), st.opts.progress, nak_delay)
        })
        .clone();
    let ack = message_ack(reply, seq, st.held.clone(), tx);
    let pos = Arc::new(Position {
        input: st.input.clone(),
        file: Some(st.file.clone()),
        line: seq,
    });
    let msg: async_nats::Message = msg.into();
    let raw = if delivered > i64::from(max_deliver) {
        Raw::Refused {
            pos,
            text: String::from_utf8_lossy(&msg.payload).into_owned(),
            reason: "max_deliver",
            detail: format!(
                "delivered {delivered} times without being acknowledged (max_deliver: {max_deliver})"
            ),
        }
    } else {
        raw_item(st.meta.as_deref(), pos, &msg, seq)
    };
    Next::Item((raw, ack))
}

/// After a quiet spell: whether the consumer is drained (with
/// `until_drained`, see the module docs), and whether the pull stream
/// still works. After a broker restart the client's pull stream can stay
/// registered on the client's side while the server holds no request from
/// it (`num_waiting` 0): nothing would ever come again, so after
/// [`STALLED_AFTER`] such checks in a row it is started again. (Another
/// reader of the same consumer with a request waiting hides this; its
/// deliveries then keep the consumer moving anyway.)
async fn idle(st: &mut StreamState, until_drained: bool) -> Next {
    tracing::debug!("nats source: quiet; asking the consumer");
    let Some(c) = st.consumer.as_mut() else {
        return Next::Nothing;
    };
    let info = match tokio::time::timeout(Duration::from_secs(5), c.info()).await {
        Ok(Ok(i)) => i.clone(),
        _ => return Next::Nothing,
    };
    if info.num_waiting == 0 {
        st.stalls += 1;
        if st.stalls >= STALLED_AFTER {
            tracing::info!(
                "nats source: no pull request of this run waits on consumer {}; pulling again",
                info.name
            );
            st.stalls = 0;
            st.messages = None;
        }
    } else {
        st.stalls = 0;
    }
    let held = st.held.lock().unwrap_or_else(|p| p.into_inner()).len();
    if until_drained && held == 0 && info.num_pending == 0 && info.num_ack_pending == 0 {
        return Next::End;
    }
    Next::Nothing
}

/// The ack of one message: when its record settles, the message and any
/// copy delivered meanwhile are acknowledged (or given back) by the
/// acknowledging thread.
fn message_ack(reply: async_nats::Subject, seq: u64, held: Held, tx: AckTx) -> Ack {
    Ack::new(move |outcome: AckOutcome| {
        let replies = held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq)
            .unwrap_or_else(|| vec![reply]);
        // The thread outlives every ack (each holds a sender).
        let _ = tx.send(AckCmd {
            replies,
            ack: outcome.is_handled(),
        });
    })
}

/// Starts the acknowledging thread (see the module docs): a thread of the
/// run's blocking pool when there is a runtime, with a runtime and a
/// connection of its own, which ends once every ack is gone and what it
/// sent is flushed.
fn start_acker(url: String, held: Held, progress: Option<Duration>, nak_delay: Duration) -> AckTx {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let run = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build();
        match rt {
            Ok(rt) => rt.block_on(acknowledge(url, rx, held, progress, nak_delay)),
            Err(e) => tracing::warn!(
                "nats source: cannot start the acknowledging runtime: {e}; messages will be delivered again"
            ),
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => drop(h.spawn_blocking(run)),
        Err(_) => {
            if let Err(e) = std::thread::Builder::new()
                .name("weir-nats-ack".into())
                .spawn(run)
            {
                tracing::warn!(
                    "nats source: cannot start the acknowledging thread: {e}; messages will be delivered again"
                );
            }
        }
    }
    tx
}

/// How long the acknowledging thread may try to flush at the end (a broker
/// gone for good must not hold the process: what is not flushed is
/// delivered again).
const FINAL_FLUSH: Duration = Duration::from_secs(10);

async fn acknowledge(
    url: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<AckCmd>,
    held: Held,
    progress: Option<Duration>,
    nak_delay: Duration,
) {
    // Given back with a delay: redelivered at once, a message would go
    // into the pull request still open of the run that failed, whose
    // client buffers it without handing it on: one more delivery counted
    // for nothing.
    let nak = bytes::Bytes::from(format!("-NAK {{\"delay\":{}}}", nak_delay.as_nanos()));
    let client = loop {
        match connect(&url).await {
            Ok(c) => break c,
            Err(e) => {
                // Once the run is over, a broker still unreachable must not
                // hold the process: what is not acknowledged comes back.
                if rx.is_closed() {
                    tracing::warn!("{e}: {} messages will be delivered again", rx.len());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    // While the broker is unreachable the client queues publishes, and a
    // full queue makes a publish wait: acks given up on then are delivered
    // again (after `ack_wait_secs`) instead of holding the process.
    let mut given_up = 0u64;
    let mut skip_until: Option<std::time::Instant> = None;
    // Every message held is reported in progress (`+WPI`) each
    // `ack_wait / 2`, which restarts its `ack_wait` on the server: a
    // message held long (a slow output, a large aggregate) is not
    // delivered again meanwhile, and its delivery count stays that of the
    // runs that held it. The work is bounded by the messages held
    // (`max_in_flight`).
    let mut ticks = progress.map(|p| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let verdict = |ack: bool| {
            if ack {
                bytes::Bytes::from_static(b"+ACK")
            } else {
                nak.clone()
            }
        };
        let (replies, payload): (Vec<async_nats::Subject>, bytes::Bytes) = match &mut ticks {
            Some(t) => tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => (cmd.replies, verdict(cmd.ack)),
                    None => break,
                },
                _ = t.tick() => {
                    // The latest delivery's reply of each message held. A
                    // message acknowledged meanwhile left `held` before its
                    // command was queued, so an in-progress never follows
                    // its acknowledgement.
                    let latest = held
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                        .filter_map(|r| r.last().cloned())
                        .collect();
                    (latest, bytes::Bytes::from_static(b"+WPI"))
                }
            },
            None => match rx.recv().await {
                Some(cmd) => (cmd.replies, verdict(cmd.ack)),
                None => break,
            },
        };
        // The connection's own task writes them out as they come (no flush
        // per message); the end flushes what is left.
        for r in replies {
            // After a send that could not get in, the next second's acks
            // are given up on at once: a stuck queue costs 200 ms once, not
            // 200 ms per held message.
            if skip_until.is_some_and(|t| std::time::Instant::now() < t) {
                given_up += u64::from(&payload[..] != b"+WPI");
                continue;
            }
            let sent = tokio::time::timeout(ACK_SEND, client.publish(r, payload.clone())).await;
            if sent.is_err() {
                given_up += u64::from(&payload[..] != b"+WPI");
                skip_until = Some(std::time::Instant::now() + Duration::from_secs(1));
            }
        }
    }
    if given_up > 0 {
        tracing::warn!(
            "nats source: {given_up} acknowledgements could not be sent (the broker unreachable); those messages will be delivered again"
        );
    }
    let _ = tokio::time::timeout(FINAL_FLUSH, client.flush()).await;
}

/// The longest delay before a message given back (`-NAK`) is delivered
/// again (at most `ack_wait`).
const NAK_DELAY: Duration = Duration::from_secs(5);

/// How long one acknowledgement may wait for room in the client's queue.
const ACK_SEND: Duration = Duration::from_millis(200);

impl crate::registry::Documented for NatsSource {
    const EXAMPLE: &'static str = NatsSource::EXAMPLE;
}

impl crate::registry::SourceComponent for NatsSource {
    fn build(
        &self,
        ctx: &BuildContext,
        _checkpoint: Option<Arc<crate::checkpoint::Checkpoint>>,
    ) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        NatsSource::build(self, ctx)
    }

    /// Records in the order of the stream.
    fn default_decode_workers(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir::{ErrorPolicy, Pipeline};

    fn ctx() -> BuildContext {
        BuildContext {
            input: "in".into(),
            base_dir: ".".into(),
            state: None,
        }
    }

    fn cfg(yaml: &str) -> NatsSource {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn options_are_checked_at_their_line() {
        let err = |yaml: &str| cfg(yaml).settings(&ctx()).unwrap_err().to_string();
        assert!(err("stream: S\n").contains("give `consumer`"));
        assert!(err("consumer: c\n").contains("`consumer` needs `stream`"));
        assert!(err("url: nats://x:1\n").contains("give `stream` and `consumer`"));
        assert!(err("subject: a.b\nmax_deliver: 3\n").contains("max_deliver applies to a stream"));
        assert!(err("subject: a.b\nuntil_drained: true\n").contains("until_drained needs"));
        assert!(err("stream: S\nconsumer: c\nbatch: 0\n").contains("batch must be at least 1"));
        assert!(err("stream: S\nconsumer: c\nmeta: ''\n").contains("meta must not be empty"));
        assert!(
            err("stream: S\nconsumer: c\nurl_env: WEIR_SURELY_UNSET_VARIABLE\n")
                .contains("WEIR_SURELY_UNSET_VARIABLE")
        );
        assert!(err("stream: S\nconsumer: c\nurl: nats://a:1\nurl_env: X\n").contains("not both"));
        cfg(NatsSource::EXAMPLE).settings(&ctx()).unwrap();
    }

    /// A stream with `n` JSON messages on `orders.<i % 3>`, and one that is
    /// not JSON after the `bad_after`-th.
    async fn fill(url: &str, n: u64, bad_after: u64) -> jetstream::Context {
        let client = async_nats::connect(url).await.unwrap();
        let js = jetstream::new(client);
        js.create_stream(jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        for i in 1..=n {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Trace", format!("t{i}").as_str());
            js.publish_with_headers(
                format!("orders.{}", i % 3),
                h,
                format!("{{\"id\":{i}}}").into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
            if i == bad_after {
                js.publish("orders.x", "not json {".into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
        js
    }

    /// Runs the source into a collecting sink, decoding as a pipeline
    /// does; returns the records and the dead letters (position, error).
    async fn drain(src: &NatsSource) -> (Vec<Record>, Vec<(String, String)>) {
        let (source, decoder) = src.build(&ctx()).unwrap();
        let p = Pipeline::new();
        let dead = p.dead_letter_sink(weir::collect());
        let out = p
            .source("in", source)
            .try_map("in/decode", move |raw: &Raw| decoder.decode(raw))
            .on_error(ErrorPolicy::DeadLetter)
            .sink("out", weir::collect());
        tokio::time::timeout(Duration::from_secs(30), p.run())
            .await
            .expect("drained within 30 s")
            .unwrap();
        let letters = dead
            .take()
            .unwrap()
            .iter()
            .map(|d: &weir::DeadLetter| {
                (d.item::<Raw>().unwrap().pos().to_string(), d.error.clone())
            })
            .collect();
        (out.take().unwrap(), letters)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_is_read_acknowledged_and_drained() {
        let server = weir_testkit::NatsServer::start();
        let js = fill(&server.url(), 50, 20).await;
        // Seq 52: not an object (meta is set); seq 53: not UTF-8.
        for body in [&b"[1,2]"[..], &b"{\"a\":\"\xff\"}"[..]] {
            js.publish("orders.odd", bytes::Bytes::copy_from_slice(body))
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let src = cfg(&format!(
            "url: {}\nstream: ORDERS\nconsumer: c1\nsubject: 'orders.>'\nmeta: _nats\nuntil_drained: true\nbatch: 7\n",
            server.url()
        ));
        let (records, letters) = drain(&src).await;
        assert_eq!(records.len(), 50);
        let first = records.iter().find(|r| r.pos.line == 1).unwrap();
        assert_eq!(
            first.json(),
            serde_json::json!({"id": 1, "_nats": {"subject": "orders.1", "seq": 1, "headers": {"Trace": "t1"}}})
        );
        assert_eq!(first.pos.to_string(), "ORDERS:1");
        let mut letters = letters;
        letters.sort();
        assert_eq!(letters.len(), 3, "{letters:?}");
        assert_eq!(letters[0].0, "ORDERS:21");
        assert!(letters[0].1.contains("invalid JSON"), "{letters:?}");
        assert_eq!(letters[1].0, "ORDERS:52");
        assert!(letters[1].1.contains("not a JSON object"), "{letters:?}");
        assert_eq!(letters[2].0, "ORDERS:53");
        assert!(letters[2].1.contains("invalid UTF-8"), "{letters:?}");
        // Everything was acknowledged: a second run finds nothing.
        let mut c: jetstream::consumer::PullConsumer = js
            .get_stream("ORDERS")
            .await
            .unwrap()
            .get_consumer("c1")
            .await
            .unwrap();
        let info = c.info().await.unwrap();
        assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
        let (again, letters) = drain(&src).await;
        assert!(again.is_empty() && letters.is_empty());
    }

    /// An output that refuses every write.
    struct Down;

    impl weir::Sink<Record> for Down {
        type Output = ();
        async fn write(&mut self, items: Vec<Record>) -> Result<(), weir::WriteError<Record>> {
            Err(weir::WriteError::all(items, "the output is down"))
        }
        async fn finish(self) -> Result<(), BoxError> {
            Ok(())
        }
    }

    /// A failed run gives its messages back; a message delivered more than
    /// `max_deliver` times is dead-lettered at its next delivery.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_messages_come_back_then_are_dead_lettered() {
        let server = weir_testkit::NatsServer::start();
        let _js = fill(&server.url(), 3, 0).await;
        let src = cfg(&format!(
            "url: {}\nstream: ORDERS\nconsumer: c2\nuntil_drained: true\nmax_deliver: 1\nack_wait_secs: 1\n",
            server.url()
        ));
        // A run whose output fails: nothing is acknowledged.
        let (source, decoder) = src.build(&ctx()).unwrap();
        let p = Pipeline::new();
        p.source("in", source)
            .try_map("in/decode", move |raw: &Raw| decoder.decode(raw))
            .sink("out", Down);
        let run = tokio::time::timeout(Duration::from_secs(30), p.run()).await;
        assert!(run.expect("ends").is_err());
        // Delivered once already: the next delivery is the last straw.
        let (records, letters) = drain(&src).await;
        assert!(records.is_empty(), "{records:?}");
        assert_eq!(letters.len(), 3, "{letters:?}");
        assert!(
            letters.iter().all(|(_, e)| e.contains("max_deliver")),
            "{letters:?}"
        );
    }

    /// A core subject: records as they are published, numbered in the
    /// order they came, with their subject; no acks. Runs until stopped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_core_subject_is_read_until_the_run_stops() {
        let server = weir_testkit::NatsServer::start();
        let src = cfg(&format!(
            "url: {}\nsubject: 'events.>'\nmeta: m\n",
            server.url()
        ));
        let (source, decoder) = src.build(&ctx()).unwrap();
        let p = Pipeline::new();
        let stop = p.cancel_token();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink_got = got.clone();
        p.source("in", source)
            .try_map("in/decode", move |raw: &Raw| decoder.decode(raw))
            .sink(
                "out",
                weir::for_each(move |r: Record| {
                    let mut g = sink_got.lock().unwrap();
                    g.push(r);
                    if g.len() == 5 {
                        stop.cancel();
                    }
                }),
            );
        // Published until the run stops: the subscription starts with the
        // run, so the first few may be missed (at-most-once).
        let client = async_nats::connect(server.url()).await.unwrap();
        let publisher = tokio::spawn(async move {
            for i in 0.. {
                let body = format!("{{\"i\":{i}}}");
                if client.publish("events.a", body.into()).await.is_err() {
                    return;
                }
                let _ = client.flush().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        tokio::time::timeout(Duration::from_secs(30), p.run())
            .await
            .expect("stopped within 30 s")
            .unwrap();
        publisher.abort();
        let got = got.lock().unwrap();
        assert!(got.len() >= 5, "{got:?}");
        for (k, r) in got.iter().enumerate() {
            assert_eq!(r.pos.to_string(), format!("in#{}", k + 1));
            assert_eq!(r.json()["m"]["subject"], "events.a");
            assert_eq!(r.json()["m"]["seq"], k as u64 + 1);
        }
        // In order: each one published after the one before.
        let is: Vec<u64> = got
            .iter()
            .map(|r| r.json()["i"].as_u64().unwrap())
            .collect();
        assert!(is.windows(2).all(|w| w[0] < w[1]), "{is:?}");
    }

    /// An output slower than `ack_wait_secs` once.
    struct Slow(Arc<Mutex<Vec<Record>>>, bool);

    impl weir::Sink<Record> for Slow {
        type Output = ();
        async fn write(&mut self, items: Vec<Record>) -> Result<(), weir::WriteError<Record>> {
            if !self.1 {
                self.1 = true;
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
            self.0.lock().unwrap().extend(items);
            Ok(())
        }
        async fn finish(self) -> Result<(), BoxError> {
            Ok(())
        }
    }

    /// Messages held longer than `ack_wait_secs` and not reported in
    /// progress (here turned off; in a run, progress reports lost to a
    /// broker restart) are delivered again while the run still holds them:
    /// the copies are acknowledged with the originals, not processed twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_of_held_messages_are_not_processed_twice() {
        let server = weir_testkit::NatsServer::start();
        let js = fill(&server.url(), 20, 0).await;
        let src = cfg(&format!(
            "url: {}\nstream: ORDERS\nconsumer: c3\nuntil_drained: true\nack_wait_secs: 1\n",
            server.url()
        ));
        let mut settings = src.settings(&ctx()).unwrap();
        let Mode::Stream(opts) = &mut settings.mode else {
            unreachable!("a stream")
        };
        opts.progress = None;
        let (source, decoder) = (settings.into_source(), Decoder::jsonl());
        let p = Pipeline::new();
        let got = Arc::new(Mutex::new(Vec::new()));
        p.source("in", source)
            .try_map("in/decode", move |raw: &Raw| decoder.decode(raw))
            .sink("out", Slow(got.clone(), false));
        tokio::time::timeout(Duration::from_secs(30), p.run())
            .await
            .expect("drained within 30 s")
            .unwrap();
        let mut lines: Vec<u64> = got.lock().unwrap().iter().map(|r| r.pos.line).collect();
        lines.sort_unstable();
        assert_eq!(lines, (1..=20).collect::<Vec<u64>>());
        let mut c: jetstream::consumer::PullConsumer = js
            .get_stream("ORDERS")
            .await
            .unwrap()
            .get_consumer("c3")
            .await
            .unwrap();
        let info = c.info().await.unwrap();
        // More deliveries than messages: copies came while they were held.
        assert!(
            info.delivered.consumer_sequence > 20,
            "no copy was delivered: {info:?}"
        );
        assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    }

    /// An output slower than `ack_wait_secs`, then failing.
    struct SlowThenDown;

    impl weir::Sink<Record> for SlowThenDown {
        type Output = ();
        async fn write(&mut self, items: Vec<Record>) -> Result<(), weir::WriteError<Record>> {
            tokio::time::sleep(Duration::from_millis(4500)).await;
            Err(weir::WriteError::all(items, "the output is down"))
        }
        async fn finish(self) -> Result<(), BoxError> {
            Ok(())
        }
    }

    /// Messages held for several `ack_wait_secs` are reported in progress,
    /// so they are not delivered again meanwhile: a run that held them
    /// long and then failed counts one delivery, and with `max_deliver: 2`
    /// the next run processes them instead of dead-lettering them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_hold_then_one_failure_is_not_max_deliver() {
        let server = weir_testkit::NatsServer::start();
        let js = fill(&server.url(), 3, 0).await;
        let src = cfg(&format!(
            "url: {}\nstream: ORDERS\nconsumer: c9\nuntil_drained: true\nmax_deliver: 2\nack_wait_secs: 1\n",
            server.url()
        ));
        let (source, decoder) = src.build(&ctx()).unwrap();
        let p = Pipeline::new();
        p.source("in", source)
            .try_map("in/decode", move |raw: &Raw| decoder.decode(raw))
            .sink("out", SlowThenDown);
        let run = tokio::time::timeout(Duration::from_secs(30), p.run()).await;
        assert!(run.expect("ends").is_err());
        let mut c: jetstream::consumer::PullConsumer = js
            .get_stream("ORDERS")
            .await
            .unwrap()
            .get_consumer("c9")
            .await
            .unwrap();
        let info = c.info().await.unwrap();
        assert_eq!(
            info.delivered.consumer_sequence, 3,
            "delivered again while held, or into the failed run: {info:?}"
        );
        let (records, letters) = drain(&src).await;
        assert!(letters.is_empty(), "{letters:?}");
        assert_eq!(records.len(), 3);
    }
}
