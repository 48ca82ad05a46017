//! `http`: one request to a service per record, the answer merged into the
//! record (enrichment, scatter-gather by stages, crawling).
//!
//! URL, headers and body are jq expressions on the record; `concurrency`
//! requests are in flight at once (the stage is one async pool, not
//! threads). Each request is retried on what is worth retrying
//! (connection errors, timeouts, 408, 429, 5xx) with backoff and jitter,
//! honouring `Retry-After`; per host, an optional rate limit
//! ([governor]'s GCRA), an optional cap on requests in flight, and a
//! circuit breaker (see [`breaker`](super::http_hosts)) keep one slow or
//! failing service from being hammered. A record whose request fails for
//! good goes to the dead-letter output with the status and an excerpt of
//! the answer: nothing is dropped.
//!
//! # Untrusted answers
//! Answers are read up to `max_response_bytes` (a larger one is a dead
//! letter, not an allocation); a JSON body nests at most as deep as a
//! record may; a text body must be UTF-8; redirects are followed up to
//! `max_redirects` times (a loop ends there). A service that never answers
//! is cut by `timeout_ms`.
//!
//! [governor]: https://docs.rs/governor

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::ProcessorContext;
use super::http_hosts::{Admit, Host, HostLimits, Hosts};
use super::jq::{EnvConfig, JqError, JqProgram, RecordBudget, StageLimits};
use crate::error::{ConfigError, ProcessError};
use crate::http_client;
use crate::limits::LimitsConfig;
use crate::record::Record;
use crate::value::{self, Val};

/// Call a service for each record and merge its answer into the record.
///
/// The answer is put at `into` as `{status, url, body}` (plus `headers`
/// with `include_headers`): `body` is the parsed JSON when the answer says
/// it is JSON (`content-type` containing `json`), else its text, `null`
/// when empty. A record whose request fails for good is dead-lettered:
/// reason `http_status` (a status that is neither 2xx nor in `accept`, after
/// retries), `http_error` (no answer: connection, timeout, too many
/// redirects), `http_body` (an answer too large, not UTF-8, or not the
/// JSON it claims), `http_request` (the URL or a header the expressions
/// gave is not valid), `http_circuit_open` (the host's circuit stayed open
/// through every try).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// A jq expression giving the URL, for example `.url` or
    /// `"http://prices.local/item/\(.id)"` (http or https).
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// The request method. Default: GET.
    #[serde(default)]
    pub method: Method,
    /// Request headers: name → a jq expression giving its value (a string;
    /// a number is sent as its text), for example `X-Request-Id: .id |
    /// tostring`, or a constant: `Accept: '"application/json"'`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// A jq expression giving the request body, sent as JSON
    /// (`content-type: application/json` unless `headers` sets one), for
    /// example `{query: .name}`. Absent: no body.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub body: Option<Spanned<String>>,
    /// Where the answer goes in the record: a field name, or a path of
    /// field names separated by dots (`enrich.price`). Default: `response`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub into: Option<Spanned<String>>,
    /// Also keep the answer's headers (lower-case names), as
    /// `headers` beside `status` and `body`. Default: false.
    #[serde(default)]
    pub include_headers: bool,
    /// Statuses besides 2xx that are answers rather than failures, for
    /// example `[404, 410]` for a crawler that records broken links.
    #[serde(default)]
    pub accept: Vec<u16>,
    /// Records whose calls are in flight at once, for the whole stage.
    /// Default: 16. (In a `scatter`, set on the scatter, not on a
    /// request.)
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Milliseconds one try may take, from connecting to the last byte of
    /// the answer. Default: 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Tries per record for connection errors, timeouts, 408, 429 and 5xx,
    /// the first included. Default: 3.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// First delay between tries, in milliseconds (at most 10000); it
    /// doubles each time (with jitter) up to 10 s; a longer `Retry-After`
    /// (up to 60 s) is honoured. Default: 100.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Milliseconds the whole call may take, tries and pauses between them
    /// included; when it passes, the record is dead-lettered with reason
    /// `http_error` (`deadline`). Absent: only `timeout_ms` per try and
    /// `attempts` bound it.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Hedging: milliseconds after which a try with no answer yet is sent a
    /// second time; the first answer wins and the other request is dropped
    /// (its connection closed). Cuts the latency tail of a service with
    /// slow outliers at the cost of extra requests; only for calls that may
    /// be repeated (GET, or a service that dedupes). Both requests of a try
    /// count as one try; pauses between tries and `Retry-After` apply as
    /// without hedging. Absent: no hedging.
    #[serde(default)]
    pub hedge_after_ms: Option<u64>,
    /// Redirects followed per request; 0: none (a 3xx is then a status like
    /// any other). Default: 5.
    #[serde(default = "default_redirects")]
    pub max_redirects: usize,
    /// Bytes of answer body read at most; a larger answer is dead-lettered
    /// (`http_body`). Default: 10485760 (10 MiB).
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// The name of an environment variable holding a token, sent as
    /// `Authorization: Bearer <token>` to every URL the `url` expression
    /// gives: do not combine it with URLs taken from untrusted data (a
    /// crawler's links), or the token goes to whatever host they name.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub bearer_token_env: Option<Spanned<String>>,
    /// Per-host limits: requests per second, requests in flight, and the
    /// circuit breaker.
    #[serde(default)]
    pub per_host: HostLimits,
    /// Per-record limits of the jq expressions' evaluation (see `weir
    /// explain jq`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The environment variables the expressions may read with `env` or
    /// `$ENV` (default: none; see `weir explain jq`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub env: EnvConfig,
}

/// The request method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET (the default).
    #[default]
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
    /// HEAD.
    Head,
}

/// Records in flight when `concurrency` is not given.
const DEFAULT_CONCURRENCY: usize = 16;
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_attempts() -> u32 {
    3
}
fn default_backoff() -> u64 {
    100
}
fn default_redirects() -> usize {
    5
}
fn default_max_response() -> usize {
    10 << 20
}

/// A minimal `http` configuration.
pub const EXAMPLE: &str =
    "url: '\"http://localhost:8080/price/\\(.id)\"'\ninto: price\nconcurrency: 32\n";

impl HttpConfig {
    /// Compiles the expressions and sets up the client.
    ///
    /// # Errors
    /// An expression that does not compile, an invalid header name, a
    /// limit of 0, an unset token variable.
    pub fn build(&self, ctx: &ProcessorContext) -> Result<Http, ConfigError> {
        let concurrency = self.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 {
            return Err(ConfigError::new(
                "http processor: concurrency must be at least 1",
            ));
        }
        let into = match &self.into {
            None => vec!["response".to_string()],
            Some(i) => parse_path(&i.value).ok_or_else(|| {
                ConfigError::at(
                    "http processor: `into` must be a field name or a dotted path of field names",
                    i,
                )
            })?,
        };
        Ok(Http {
            caller: Arc::new(self.caller(ctx, "http processor", concurrency)?),
            into,
            concurrency,
        })
    }

    /// The call these options describe, without what is the stage's
    /// (`into`, `concurrency`); `what` names it in errors; `concurrency`
    /// sizes its connection pool.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub(crate) fn caller(
        &self,
        ctx: &ProcessorContext,
        what: &str,
        concurrency: usize,
    ) -> Result<Caller, ConfigError> {
        if self.attempts == 0 || self.timeout_ms == 0 {
            return Err(ConfigError::new(format!(
                "{what}: attempts and timeout_ms must be at least 1"
            )));
        }
        if self.deadline_ms == Some(0) || self.hedge_after_ms == Some(0) {
            return Err(ConfigError::new(format!(
                "{what}: deadline_ms and hedge_after_ms must be at least 1"
            )));
        }
        if self.max_response_bytes == 0 {
            return Err(ConfigError::new(format!(
                "{what}: max_response_bytes must be at least 1"
            )));
        }
        http_client::check_backoff(self.backoff_ms, what)?;
        let mut headers = Vec::new();
        for (name, expr) in &self.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ConfigError::at(format!("{what}: `{name}` is not a valid header name"), expr)
            })?;
            headers.push((
                name,
                JqProgram::compile_spanned(expr, "http header expression", &self.env)?,
            ));
        }
        let mut defaults = reqwest::header::HeaderMap::new();
        if let Some(token) = http_client::bearer_token(self.bearer_token_env.as_ref(), what)? {
            defaults.insert(reqwest::header::AUTHORIZATION, token);
        }
        let redirects = if self.max_redirects == 0 {
            reqwest::redirect::Policy::none()
        } else {
            reqwest::redirect::Policy::limited(self.max_redirects)
        };
        let timeout = Duration::from_millis(self.timeout_ms);
        let client = http_client::client_builder()
            .default_headers(defaults)
            .redirect(redirects)
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(concurrency)
            .build()
            .map_err(|e| ConfigError::new(format!("{what}: cannot set up the client: {e}")))?;
        let has_content_type = self
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"));
        Ok(Caller {
            client,
            url: JqProgram::compile_spanned(&self.url, "http url expression", &self.env)?,
            method: match self.method {
                Method::Get => reqwest::Method::GET,
                Method::Post => reqwest::Method::POST,
                Method::Put => reqwest::Method::PUT,
                Method::Patch => reqwest::Method::PATCH,
                Method::Delete => reqwest::Method::DELETE,
                Method::Head => reqwest::Method::HEAD,
            },
            headers,
            body: self
                .body
                .as_ref()
                .map(|b| JqProgram::compile_spanned(b, "http body expression", &self.env))
                .transpose()?,
            json_content_type: !has_content_type,
            include_headers: self.include_headers,
            accept: self.accept.clone(),
            attempts: self.attempts,
            backoff: Duration::from_millis(self.backoff_ms),
            max_response: self.max_response_bytes,
            hosts: Hosts::new(&self.per_host)?,
            limits: StageLimits::new(ctx, &self.limits)?,
            deadline: self.deadline_ms.map(Duration::from_millis),
            hedge: self.hedge_after_ms.map(Duration::from_millis),
        })
    }
}

/// `a.b.c` (a leading `.` allowed) as its field names.
pub(crate) fn parse_path(text: &str) -> Option<Vec<String>> {
    let text = text.strip_prefix('.').unwrap_or(text);
    let parts: Vec<String> = text.split('.').map(str::to_owned).collect();
    parts.iter().all(|p| !p.is_empty()).then_some(parts)
}

/// The `http` processor: see [`HttpConfig`].
#[derive(Debug, Clone)]
pub struct Http {
    caller: Arc<Caller>,
    into: Vec<String>,
    concurrency: usize,
}

/// One service call per record, as options describe it: the `http`
/// processor's, or one request of a `scatter`.
pub(crate) struct Caller {
    client: reqwest::Client,
    url: JqProgram,
    method: reqwest::Method,
    headers: Vec<(reqwest::header::HeaderName, JqProgram)>,
    body: Option<JqProgram>,
    json_content_type: bool,
    include_headers: bool,
    accept: Vec<u16>,
    attempts: u32,
    backoff: Duration,
    max_response: usize,
    hosts: Hosts,
    limits: StageLimits,
    deadline: Option<Duration>,
    hedge: Option<Duration>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("url", &self.url.source())
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// One record's request, from the expressions.
struct Request {
    url: reqwest::Url,
    shown: String,
    host: String,
    headers: reqwest::header::HeaderMap,
    body: Option<bytes::Bytes>,
}

/// How one try ended.
enum Try {
    /// An answer to keep (2xx or accepted).
    Answer(Val),
    /// Worth another try (why; how long the service asked to wait).
    Again(ProcessError, Option<Duration>),
    /// Final: no other try would do better.
    Final(ProcessError),
}

fn request_error(detail: String) -> ProcessError {
    ProcessError::new("http_request", detail)
}

impl super::CallProcessor for Http {
    fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Calls the service for `record`; the record with the answer merged.
    ///
    /// The jq expressions run before the returned future (on the caller's
    /// thread, under the stage's limits); the future owns all it needs.
    fn call(&self, record: Record) -> BoxFuture<'static, Result<Record, ProcessError>> {
        let call = Caller::call(&self.caller, &record);
        let into = self.into.clone();
        Box::pin(async move {
            let answer = call.await?;
            let value = set_path(&record.value, &into, answer)?;
            Ok(record.derive(value))
        })
    }
}

impl Caller {
    /// The call for `record`: the expressions evaluated now, on the
    /// caller's thread under the stage's limits; the request sent when the
    /// future is polled, with hedging and the deadline.
    pub(crate) fn call(
        this: &Arc<Caller>,
        record: &Record,
    ) -> impl Future<Output = Result<Val, ProcessError>> + Send + 'static {
        let request = this.request(record).map(Arc::new);
        let this = this.clone();
        async move {
            let request = request?;
            let calls = this.send(&request);
            match this.deadline {
                None => calls.await,
                Some(d) => tokio::time::timeout(d, calls).await.unwrap_or_else(|_| {
                    Err(ProcessError::new(
                        "http_error",
                        format!(
                            "{}: no answer within the deadline of {} ms (deadline_ms)",
                            request.shown,
                            d.as_millis()
                        ),
                    ))
                }),
            }
        }
    }

    /// The request for `record`, from the expressions.
    fn request(&self, record: &Record) -> Result<Request, ProcessError> {
        let mut budget = RecordBudget::new(&self.limits, record);
        let url_val = self
            .url
            .record_first(record, &mut budget)
            .map_err(JqError::into_process_error)?;
        let text = match &url_val {
            Some(v) => value::as_str(v).ok_or_else(|| {
                request_error(format!(
                    "the url expression `{}` gave {}, not a string",
                    self.url.source(),
                    value::to_text(v)
                ))
            })?,
            None => {
                return Err(request_error(format!(
                    "the url expression `{}` gave no value",
                    self.url.source()
                )));
            }
        };
        let url = http_client::http_url(text, "http processor").map_err(request_error)?;
        let host = match (url.host_str(), url.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(request_error(format!("the url `{text}` has no host"))),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, expr) in &self.headers {
            let v = expr
                .record_first(record, &mut budget)
                .map_err(JqError::into_process_error)?;
            let text = match &v {
                Some(v @ Val::Num(_)) => value::to_text(v),
                Some(v) => value::as_str(v)
                    .ok_or_else(|| {
                        request_error(format!(
                            "header `{name}`: the expression `{}` gave {}, not a string",
                            expr.source(),
                            value::to_text(v)
                        ))
                    })?
                    .to_owned(),
                // No value: no header.
                None => continue,
            };
            let hv = reqwest::header::HeaderValue::from_str(&text).map_err(|_| {
                request_error(format!(
                    "header `{name}`: `{}` is not a valid header value",
                    http_client::excerpt_of(text.as_bytes())
                ))
            })?;
            headers.append(name.clone(), hv);
        }
        let body = match &self.body {
            None => None,
            Some(expr) => {
                let v = expr
                    .record_first(record, &mut budget)
                    .map_err(JqError::into_process_error)?
                    .unwrap_or(Val::Null);
                if self.json_content_type {
                    headers.insert(
                        reqwest::header::CONTENT_TYPE,
                        reqwest::header::HeaderValue::from_static("application/json"),
                    );
                }
                Some(bytes::Bytes::from(value::to_text(&v)))
            }
        };
        Ok(Request {
            shown: http_client::shown(&url),
            url,
            host,
            headers,
            body,
        })
    }

    /// Sends `r`, retrying what is worth retrying.
    async fn send(&self, r: &Request) -> Result<Val, ProcessError> {
        let host = self.hosts.get(&r.host);
        let mut delay = self.backoff;
        let mut last = None;
        for attempt in 1..=self.attempts {
            let outcome = match host.admit() {
                Admit::Open(remaining) => Try::Again(
                    ProcessError::new(
                        "http_circuit_open",
                        format!(
                            "the circuit for {} is open after {} failures in a row; it half-opens in {:.1}s",
                            r.host,
                            host.threshold(),
                            remaining.as_secs_f64()
                        ),
                    ),
                    None,
                ),
                Admit::Go(ticket) => {
                    self.hosts.pace(&r.host).await;
                    let slot = host.slot().await;
                    let outcome = match self.hedge {
                        None => self.try_once(r).await,
                        Some(after) => self.try_hedged(r, &host, after).await,
                    };
                    drop(slot);
                    // The host answered unless the try is worth repeating
                    // (no answer, 408, 429, 5xx); a refusal of this one
                    // request (404, a body too large) says it is up.
                    match &outcome {
                        Try::Again(..) => host.failed(ticket),
                        Try::Answer(_) | Try::Final(_) => host.succeeded(ticket),
                    }
                    outcome
                }
            };
            match outcome {
                Try::Answer(v) => return Ok(v),
                Try::Final(e) => return Err(e),
                Try::Again(e, retry_after) => {
                    if attempt < self.attempts {
                        tokio::time::sleep(http_client::pause(delay, retry_after)).await;
                        delay = http_client::next_delay(delay);
                    }
                    last = Some(e);
                }
            }
        }
        let mut e = last.expect("at least one try");
        e.detail = format!("{} (after {} tries)", e.detail, self.attempts);
        Err(e)
    }

    /// One try of `r`, hedged: when it has no answer after `after`, the
    /// same request goes again (paced, in a slot of its own, like any
    /// request); the first answer wins and the other request is dropped.
    /// A failure waits for the other; when both fail, the more telling
    /// failure is kept (a status over no answer). Hedges are part of the
    /// try: tries, backoff and `Retry-After` are shared.
    async fn try_hedged(&self, r: &Request, host: &Host, after: Duration) -> Try {
        let first = self.try_once(r);
        tokio::pin!(first);
        tokio::select! {
            t = &mut first => return t,
            () = tokio::time::sleep(after) => {}
        }
        let second = async {
            self.hosts.pace(&r.host).await;
            let _slot = host.slot().await;
            self.try_once(r).await
        };
        tokio::pin!(second);
        let (done, other) = tokio::select! {
            t = &mut first => (t, true),
            t = &mut second => (t, false),
        };
        if matches!(done, Try::Answer(_)) {
            return done;
        }
        let rest = if other { second.await } else { first.await };
        match (done, rest) {
            (_, t @ Try::Answer(_))
            | (t @ (Try::Answer(_) | Try::Final(_)), _)
            | (Try::Again(..), t) => t,
        }
    }

    /// One try of `r`.
    async fn try_once(&self, r: &Request) -> Try {
        let mut req = self
            .client
            .request(self.method.clone(), r.url.clone())
            .headers(r.headers.clone());
        if let Some(b) = &r.body {
            req = req.body(b.clone());
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                let why = format!(
                    "{}: {}",
                    r.shown,
                    http_client::error_text(&e, &r.url, &r.shown)
                );
                let err = ProcessError::new("http_error", why);
                // A redirect loop or a bad request is not cured by trying
                // again.
                return if e.is_redirect() || e.is_builder() {
                    Try::Final(err)
                } else {
                    Try::Again(err, None)
                };
            }
        };
        let status = resp.status();
        if status.is_success() || self.accept.contains(&status.as_u16()) {
            return match self.answer(resp, r).await {
                Ok(v) => Try::Answer(v),
                Err(e) => e,
            };
        }
        let retry_after = http_client::retry_after(resp.headers());
        let excerpt = http_client::excerpt(resp).await;
        let err = ProcessError::new(
            "http_status",
            format!("{} from {}: {excerpt}", status.as_u16(), r.shown),
        );
        match status.as_u16() {
            408 | 429 | 500..=599 => Try::Again(err, retry_after),
            _ => Try::Final(err),
        }
    }

    /// The answer as the value merged into the record.
    async fn answer(&self, mut resp: reqwest::Response, r: &Request) -> Result<Val, Try> {
        let status = resp.status().as_u16();
        let final_url = resp.url().to_string();
        // application/json or a +json type; not NDJSON, which is lines.
        let json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                let essence = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                essence == "application/json" || essence.ends_with("+json")
            });
        let headers = self.include_headers.then(|| {
            let mut h: Vec<(String, Val)> = Vec::new();
            for (name, v) in resp.headers() {
                let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
                match h.iter_mut().find(|(n, _)| n == name.as_str()) {
                    // A repeated header, joined as HTTP allows.
                    Some((_, Val::TStr(prev))) => {
                        let joined = format!("{}, {text}", String::from_utf8_lossy(prev));
                        *h.iter_mut()
                            .find(|(n, _)| n == name.as_str())
                            .map(|(_, v)| v)
                            .expect("found") = value::string(joined);
                    }
                    _ => h.push((name.as_str().to_owned(), value::string(text))),
                }
            }
            value::object(h)
        });
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if body.len() + c.len() > self.max_response {
                        return Err(Try::Final(ProcessError::new(
                            "http_body",
                            format!(
                                "the answer from {} is larger than {} bytes (max_response_bytes)",
                                r.shown, self.max_response
                            ),
                        )));
                    }
                    body.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(Try::Again(
                        ProcessError::new(
                            "http_error",
                            format!(
                                "{}: reading the answer: {}",
                                r.shown,
                                http_client::error_text(&e, &r.url, &r.shown)
                            ),
                        ),
                        None,
                    ));
                }
            }
        }
        let body = if body.is_empty() {
            Val::Null
        } else if json {
            value::parse(&body).map_err(|e| {
                Try::Final(ProcessError::new(
                    "http_body",
                    format!(
                        "the answer from {} says it is JSON but is not ({e}); it begins: {}",
                        r.shown,
                        http_client::excerpt_of(&body)
                    ),
                ))
            })?
        } else {
            match String::from_utf8(body) {
                Ok(t) => value::string(t),
                Err(e) => {
                    return Err(Try::Final(ProcessError::new(
                        "http_body",
                        format!(
                            "the answer from {} is not UTF-8 text (invalid byte at offset {})",
                            r.shown,
                            e.utf8_error().valid_up_to()
                        ),
                    )));
                }
            }
        };
        let mut fields = vec![
            ("status", Val::from(usize::from(status))),
            ("url", value::string(final_url)),
        ];
        if let Some(h) = headers {
            fields.push(("headers", h));
        }
        fields.push(("body", body));
        Ok(value::object(fields))
    }
}

/// `v` with `answer` at `path` (objects created on the way).
pub(crate) fn set_path(v: &Val, path: &[String], answer: Val) -> Result<Val, ProcessError> {
    let Val::Obj(o) = v else {
        return Err(ProcessError::new(
            "http_into",
            format!(
                "the answer goes into field `{}`, but the record (or the field on the way) is not an object",
                path.join(".")
            ),
        ));
    };
    let (first, rest) = path.split_first().expect("a path has a field");
    let inner = if rest.is_empty() {
        answer
    } else {
        match value::field(o, first) {
            Some(child) => set_path(child, rest, answer)?,
            None => set_path(&value::object::<String>([]), rest, answer)?,
        }
    };
    let mut map = (**o).clone();
    map.insert(value::string(first.as_str()), inner);
    Ok(Val::obj(map))
}

impl crate::registry::Documented for HttpConfig {
    const EXAMPLE: &'static str = EXAMPLE;
}

impl crate::registry::ProcessorComponent for HttpConfig {
    fn scope(&self) -> crate::registry::Scope {
        crate::registry::Scope::Call
    }

    fn build(&self, ctx: &ProcessorContext) -> Result<crate::registry::Stage, ConfigError> {
        Ok(crate::registry::Stage::Call(Arc::new(HttpConfig::build(
            self, ctx,
        )?)))
    }
}
