//! What the HTTP components (the `http` sink and the `http` processor)
//! share: setting up a client, the timing of retries, the excerpt of an
//! answer quoted in errors, and URLs shown without their password.

use std::time::Duration;

use crate::error::ConfigError;

/// The longest `Retry-After` honoured; longer asks wait this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The longest pause between two tries (before `Retry-After`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The most of an answer's body read for its excerpt.
const EXCERPT_READ: usize = 64 << 10;

/// A client builder with what every HTTP component wants: rustls with
/// ring, and the caller's redirect policy and timeout.
///
/// reqwest is built without a default crypto provider (the default one
/// compiles aws-lc); ring is the one the rest of weir uses. This sets the
/// process's default unless one is set already, so a program embedding
/// weir with another provider installs it first.
pub fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// `url` for messages: its password replaced by `***`.
pub fn shown(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// Parses `text` as an http(s) URL; `what` names the component in errors.
///
/// # Errors
/// Not a URL, or another scheme.
pub fn http_url(text: &str, what: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{what}: invalid url: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{what}: url scheme `{}` is not supported; use http or https",
            url.scheme()
        ));
    }
    Ok(url)
}

/// An answer's `Retry-After` in seconds, capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// The pause before the next try: half of `delay` plus up to the other
/// half ("equal jitter", so that clients that failed together do not retry
/// together), or `retry_after` when the service asked for longer.
pub fn pause(delay: Duration, retry_after: Option<Duration>) -> Duration {
    let jittered = delay / 2 + delay.mul_f64(jitter() / 2.0);
    retry_after.map_or(jittered, |r| r.max(jittered))
}

/// The delay after `delay`: doubled, up to [`MAX_BACKOFF`].
pub fn next_delay(delay: Duration) -> Duration {
    (delay * 2).min(MAX_BACKOFF)
}

/// Checks a backoff option.
///
/// # Errors
/// Longer than [`MAX_BACKOFF`].
pub fn check_backoff(ms: u64, what: &str) -> Result<(), ConfigError> {
    if Duration::from_millis(ms) > MAX_BACKOFF {
        return Err(ConfigError::new(format!(
            "{what}: backoff_ms must be at most {}",
            MAX_BACKOFF.as_millis()
        )));
    }
    Ok(())
}

/// Checks a timeout option given in seconds.
///
/// # Errors
/// Not a positive number of seconds up to a day.
pub fn check_timeout(secs: f64, what: &str) -> Result<Duration, ConfigError> {
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(ConfigError::new(format!(
            "{what}: timeout_secs must be a number of seconds above 0 (at most a day)"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The bearer token from the environment variable `var` names.
///
/// # Errors
/// The variable is unset or empty.
pub fn bearer_token(
    var: Option<&serde_saphyr::Spanned<String>>,
    what: &str,
) -> Result<Option<reqwest::header::HeaderValue>, ConfigError> {
    let Some(var) = var else {
        return Ok(None);
    };
    match std::env::var(&var.value) {
        Ok(t) if !t.is_empty() => {
            let mut v =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    ConfigError::at(
                        format!("{what}: the bearer token is not a valid header value"),
                        var,
                    )
                })?;
            v.set_sensitive(true);
            Ok(Some(v))
        }
        _ => Err(ConfigError::at(
            format!(
                "{what}: environment variable `{}` (bearer_token_env) is not set",
                var.value
            ),
            var,
        )),
    }
}

/// The first 200 characters of an answer's body, on one line (at most
/// 64 KiB of it are read).
pub async fn excerpt(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < EXCERPT_READ {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    body.truncate(EXCERPT_READ);
    excerpt_of(&body)
}

/// The first 200 characters of `body`, on one line.
pub fn excerpt_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut s: String = one_line.chars().take(200).collect();
    if one_line.chars().count() > 200 {
        s.push('…');
    }
    if s.is_empty() {
        "(empty body)".into()
    } else {
        s
    }
}

/// A number in [0, 1) that differs between calls (for backoff jitter; no
/// need for a random number generator).
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let h = RandomState::new().hash_one(std::time::Instant::now());
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A reqwest error as text, the URL's password masked (reqwest's messages
/// quote the URL).
pub fn error_text(e: &reqwest::Error, url: &reqwest::Url, shown: &str) -> String {
    weir::error_chain(e).replace(url.as_str(), shown)
}
