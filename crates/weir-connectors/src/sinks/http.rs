//! The `http` sink: records sent to a service, batch by batch.
//!
//! Each batch the engine hands over is cut into requests of at most
//! `max_records` records and `max_bytes` of body (a record larger than
//! that goes alone), as JSON Lines or one JSON array, sent one after
//! another in order. A write returns once every request of the batch got a
//! 2xx answer, so records are acknowledged (and `--resume` checkpoints
//! move) only after the service took them.
//!
//! # Failures
//! - Connection errors, timeouts, 408, 429 and 5xx are retried with
//!   exponential backoff and jitter, up to `attempts` tries, honouring a
//!   `Retry-After` given in seconds (at most [`MAX_RETRY_AFTER`](http_client::MAX_RETRY_AFTER)). Every try
//!   of a request carries the same idempotency key, so a service that
//!   honours it applies a retried request once.
//! - 400, 413 and 422 say the content is refused: the request is split in
//!   halves and each half sent again, down to the single records the
//!   service refuses, which go to the dead-letter output with the status
//!   and an excerpt of the answer ([`weir::WriteError::bad_item`]); the
//!   others are delivered.
//!   A service that refuses [`MAX_REFUSED_IN_A_ROW`] records in a row, one
//!   by one, with no 2xx between, is refusing the requests, not the
//!   records (a wrong `format`, header or URL): the write then fails like
//!   the next case instead of dead-lettering everything.
//! - Other answers (401, 403, 404 ...) are about the destination, not the
//!   records: the write fails with the status, the URL and an excerpt, and
//!   the output's `on_error` decides (fail by default). Redirects are not
//!   followed (a POST redirected with 301/302/303 would become a GET and
//!   lose its body, and a redirect to another host would receive the
//!   headers): a 3xx fails the same way, naming where it pointed.
//! - A drain (the first Ctrl-C) lets the requests in flight finish their
//!   tries, so what was read is delivered or dead-lettered: at most
//!   `attempts` × (`timeout_secs` + 60 s) per request.
//!
//! # The idempotency key
//! A SHA-256 of the request's body and of its records' positions (input,
//! file, line): a retried request always carries the same key, and so
//! does a request of a rerun or resumed run that groups the same records
//! in the same order (stages that keep order, the same `batch_size`,
//! `max_records`, `max_bytes` and `format`); unordered stages can group
//! records differently from run to run, and then the keys differ. Two
//! requests carrying identical records from the same input lines (a stage
//! that emits one record twice) share a key.
//!
//! URLs in messages and dead letters have their password replaced by
//! `***`; the bearer token never appears.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use crate::error::ConfigError;
use crate::http_client;
use crate::record::Record;
use crate::sources::BuildContext;
use crate::value::Json;

/// Records refused one by one in a row, with no 2xx between, after which
/// the service is taken to refuse the requests rather than the records.
pub const MAX_REFUSED_IN_A_ROW: u32 = 10;

/// Sends records to an HTTP service: batches of JSON Lines (or a JSON
/// array) per request, retried on failures, with an idempotency key.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSink {
    /// The URL requests go to (`http://` or `https://`).
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// The request method.
    #[serde(default)]
    pub method: Method,
    /// The body of a request: `ndjson` (one JSON record per line,
    /// `application/x-ndjson`) or `json_array` (`application/json`).
    #[serde(default)]
    pub format: BodyFormat,
    /// Extra request headers, by name.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The name of an environment variable holding a token, sent as
    /// `Authorization: Bearer <token>` (the token stays out of the
    /// pipeline file).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub bearer_token_env: Option<Spanned<String>>,
    /// Records per request at most. Default: 500.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Bytes of body per request at most (a single larger record is sent
    /// alone). Default: 4194304 (4 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Seconds a request may take, connecting included. Default: 30.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Tries per request for connection errors, timeouts, 408, 429 and
    /// 5xx, the first included. Default: 5.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// First delay between tries, in milliseconds (at most 10000); it
    /// doubles each time (with jitter) up to 10 s. Default: 200.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// The header carrying each request's idempotency key; empty: none.
    /// Default: `Idempotency-Key`.
    #[serde(default = "default_idempotency_header")]
    pub idempotency_header: String,
}

/// The request method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// POST (the default).
    #[default]
    Post,
    /// PUT.
    Put,
}

/// How records are laid out in a request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// One JSON record per line (the default).
    #[default]
    Ndjson,
    /// One JSON array of records.
    JsonArray,
}

fn default_max_records() -> usize {
    500
}
fn default_max_bytes() -> usize {
    4 << 20
}
fn default_timeout() -> f64 {
    30.0
}
fn default_attempts() -> u32 {
    5
}
fn default_backoff() -> u64 {
    200
}
fn default_idempotency_header() -> String {
    "Idempotency-Key".into()
}

impl HttpSink {
    /// A minimal configuration.
    pub const EXAMPLE: &str =
        "url: http://localhost:8080/ingest\nformat: ndjson\nmax_records: 500\n";

    /// Checks the options without sending anything (`weir check`).
    ///
    /// # Errors
    /// A URL that does not parse or is not http(s), limits of zero, a
    /// timeout that is not a positive number of seconds, header names or
    /// values HTTP does not allow, an unset token variable.
    pub fn check(&self) -> Result<reqwest::Url, ConfigError> {
        let url = http_client::http_url(&self.url.value, "http sink")
            .map_err(|e| ConfigError::at(e, &self.url))?;
        if self.max_records == 0 || self.max_bytes == 0 || self.attempts == 0 {
            return Err(ConfigError::new(
                "http sink: max_records, max_bytes and attempts must be at least 1",
            ));
        }
        http_client::check_backoff(self.backoff_ms, "http sink")?;
        if !url.username().is_empty() && self.bearer_token_env.is_some() {
            return Err(ConfigError::at(
                "http sink: the url carries credentials and bearer_token_env is set; use one",
                &self.url,
            ));
        }
        http_client::check_timeout(self.timeout_secs, "http sink")?;
        self.header_map()?;
        self.token()?;
        Ok(url)
    }

    /// The configured headers, checked.
    fn header_map(&self) -> Result<reqwest::header::HeaderMap, ConfigError> {
        use reqwest::header::{HeaderName, HeaderValue};
        let mut map = reqwest::header::HeaderMap::new();
        let mut names: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        if !self.idempotency_header.is_empty() {
            names.push(&self.idempotency_header);
        }
        for name in names {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ConfigError::new(format!("http sink: `{name}` is not a valid header name"))
            })?;
        }
        for (n, v) in &self.headers {
            let name = HeaderName::from_bytes(n.as_bytes()).expect("checked");
            let value = HeaderValue::from_str(v).map_err(|_| {
                ConfigError::new(format!(
                    "http sink: the value of header `{n}` is not a valid header value"
                ))
            })?;
            map.insert(name, value);
        }
        Ok(map)
    }

    /// The `Authorization` header, from the token's environment variable.
    fn token(&self) -> Result<Option<reqwest::header::HeaderValue>, ConfigError> {
        http_client::bearer_token(self.bearer_token_env.as_ref(), "http sink")
    }

    /// The sink, ready to send.
    ///
    /// # Errors
    /// As [`check`](Self::check); an HTTP client that cannot be set up.
    pub fn build(&self, _ctx: &BuildContext) -> Result<HttpWriter, ConfigError> {
        let url = self.check()?;
        let mut headers = self.header_map()?;
        if let Some(token) = self.token()? {
            headers.insert(reqwest::header::AUTHORIZATION, token);
        }
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static(match self.format {
                BodyFormat::Ndjson => "application/x-ndjson",
                BodyFormat::JsonArray => "application/json",
            }),
        );
        let client = http_client::client_builder()
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs_f64(self.timeout_secs))
            .build()
            .map_err(|e| ConfigError::new(format!("http sink: cannot set up the client: {e}")))?;
        Ok(HttpWriter {
            client,
            shown: http_client::shown(&url),
            url,
            method: match self.method {
                Method::Post => reqwest::Method::POST,
                Method::Put => reqwest::Method::PUT,
            },
            format: self.format,
            max_records: self.max_records,
            max_bytes: self.max_bytes,
            attempts: self.attempts,
            backoff: Duration::from_millis(self.backoff_ms),
            idempotency_header: (!self.idempotency_header.is_empty())
                .then(|| self.idempotency_header.clone()),
            records: 0,
            refused_in_a_row: 0,
        })
    }
}

/// An open http sink: implements [`weir::Sink<Record>`]; its output is the
/// number of records delivered.
#[derive(Debug)]
pub struct HttpWriter {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL for messages, its password masked.
    shown: String,
    method: reqwest::Method,
    format: BodyFormat,
    max_records: usize,
    max_bytes: usize,
    attempts: u32,
    backoff: Duration,
    idempotency_header: Option<String>,
    records: u64,
    /// Single records refused since the last 2xx.
    refused_in_a_row: u32,
}

/// How one request ended, after its retries.
enum Sent {
    /// 2xx.
    Delivered,
    /// 400, 413 or 422: the content is refused (status, excerpt).
    Refused(String),
    /// Anything else: the destination failed (why).
    Failed(String),
}

impl HttpWriter {
    /// The JSON text of each record.
    fn encode(items: &[Record]) -> Vec<Vec<u8>> {
        items
            .iter()
            .map(|r| serde_json::to_vec(&Json(&r.value)).expect("records are JSON"))
            .collect()
    }

    /// The bytes of a body around its records (a JSON array's brackets).
    fn framing(&self) -> usize {
        match self.format {
            BodyFormat::Ndjson => 0,
            BodyFormat::JsonArray => 2,
        }
    }

    /// The request body for `lines`.
    fn body(&self, lines: &[Vec<u8>]) -> Vec<u8> {
        let size: usize = lines.iter().map(|l| l.len() + 1).sum();
        let mut body = Vec::with_capacity(size + 2);
        match self.format {
            BodyFormat::Ndjson => {
                for l in lines {
                    body.extend_from_slice(l);
                    body.push(b'\n');
                }
            }
            BodyFormat::JsonArray => {
                body.push(b'[');
                for (i, l) in lines.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(l);
                }
                body.push(b']');
            }
        }
        body
    }

    /// The idempotency key of a request: its body and its records'
    /// positions, hashed.
    fn key(body: &[u8], items: &[Record]) -> String {
        let mut h = Sha256::new();
        for r in items {
            let p = &r.pos;
            h.update(p.input.as_bytes());
            h.update([0]);
            h.update(p.file.as_deref().unwrap_or("").as_bytes());
            h.update([0]);
            h.update(p.line.to_le_bytes());
        }
        h.update(body);
        h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Sends one request, retrying what is worth retrying.
    async fn send(&mut self, body: Vec<u8>, key: &str) -> Sent {
        // Shared, so that each try hands reqwest the body without a copy.
        let body = bytes::Bytes::from(body);
        let mut delay = self.backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let mut req = self
                .client
                .request(self.method.clone(), self.url.clone())
                .body(body.clone());
            if let Some(h) = &self.idempotency_header {
                req = req.header(h.as_str(), key);
            }
            let retry_after = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return Sent::Delivered;
                    }
                    let retry_after = http_client::retry_after(resp.headers());
                    let location = resp
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let excerpt = http_client::excerpt(resp).await;
                    let what = format!("{} from {}: {excerpt}", status.as_u16(), self.shown);
                    match status.as_u16() {
                        400 | 413 | 422 => return Sent::Refused(what),
                        408 | 429 | 500..=599 => {}
                        300..=399 => {
                            return Sent::Failed(format!(
                                "{what} (a redirect to {}, not followed: set the url to where the service is)",
                                location.as_deref().unwrap_or("nowhere")
                            ));
                        }
                        _ => return Sent::Failed(what),
                    }
                    last = what;
                    retry_after
                }
                Err(e) => {
                    let why = http_client::error_text(&e, &self.url, &self.shown);
                    last = format!("{}: {why}", self.shown);
                    None
                }
            };
            if attempt == self.attempts {
                break;
            }
            tokio::time::sleep(http_client::pause(delay, retry_after)).await;
            delay = http_client::next_delay(delay);
        }
        Sent::Failed(format!("{last} (after {} tries)", self.attempts))
    }

    /// Writes a batch; see [`weir::Sink::write`].
    ///
    /// # Errors
    /// The records not delivered: from the first record the service
    /// refuses ([`weir::WriteError::bad_item`]), or from the first request
    /// that failed.
    pub async fn write_batch(
        &mut self,
        items: Vec<Record>,
    ) -> Result<(), weir::WriteError<Record>> {
        let lines = Self::encode(&items);
        // Requests as ranges of the batch: at most max_records records and
        // max_bytes of body, in order.
        let mut ranges = Vec::new();
        let mut start = 0;
        let mut bytes = self.framing();
        for (i, l) in lines.iter().enumerate() {
            let n = i - start;
            if n > 0 && (n == self.max_records || bytes + l.len() + 1 > self.max_bytes) {
                ranges.push(start..i);
                start = i;
                bytes = self.framing();
            }
            // A newline after each record, or a comma before all but the
            // first (one byte too many for the first: a bound, not a size).
            bytes += l.len() + 1;
        }
        if start < lines.len() {
            ranges.push(start..lines.len());
        }
        // A stack of ranges still to send, the next one on top: a refused
        // request is replaced by its two halves.
        ranges.reverse();
        while let Some(range) = ranges.pop() {
            let body = self.body(&lines[range.clone()]);
            let key = Self::key(&body, &items[range.clone()]);
            match self.send(body, &key).await {
                Sent::Delivered => {
                    self.records += range.len() as u64;
                    self.refused_in_a_row = 0;
                }
                Sent::Refused(why) if range.len() == 1 => {
                    let mut items = items;
                    let rest = items.split_off(range.start);
                    self.refused_in_a_row += 1;
                    if self.refused_in_a_row >= MAX_REFUSED_IN_A_ROW {
                        self.refused_in_a_row = 0;
                        return Err(weir::WriteError::partial(
                            rest,
                            format!(
                                "the service refused the last {MAX_REFUSED_IN_A_ROW} records one by one and took none in between, so it refuses the requests, not the records (check url, format and headers); the last answer: {why}"
                            ),
                        ));
                    }
                    return Err(weir::WriteError::bad_item(rest, format!("refused: {why}")));
                }
                Sent::Refused(_) => {
                    let mid = range.start + range.len() / 2;
                    ranges.push(mid..range.end);
                    ranges.push(range.start..mid);
                }
                Sent::Failed(why) => {
                    let mut items = items;
                    let rest = items.split_off(range.start);
                    return Err(weir::WriteError::partial(rest, why));
                }
            }
        }
        Ok(())
    }
}

impl weir::Sink<Record> for HttpWriter {
    type Output = u64;

    async fn write(&mut self, items: Vec<Record>) -> Result<(), weir::WriteError<Record>> {
        self.write_batch(items).await
    }

    async fn finish(self) -> Result<u64, weir::BoxError> {
        Ok(self.records)
    }
}

impl crate::registry::Documented for HttpSink {
    const EXAMPLE: &'static str = HttpSink::EXAMPLE;
}

impl crate::registry::SinkComponent for HttpSink {
    fn check(&self, _ctx: &BuildContext) -> Result<(), ConfigError> {
        HttpSink::check(self).map(|_| ())
    }

    fn attach(
        &self,
        ctx: &BuildContext,
        name: &str,
        input: weir::Flow<Record>,
        policy: weir::ErrorPolicy,
    ) -> Result<(), ConfigError> {
        input
            .sink(name, HttpSink::build(self, ctx)?)
            .on_error(policy);
        Ok(())
    }

    fn resume(&self) -> crate::registry::Resume {
        crate::registry::Resume::MayDuplicate(
            "sends again the records after the last checkpoint; the service drops them only if it honours the idempotency key",
        )
    }
}
