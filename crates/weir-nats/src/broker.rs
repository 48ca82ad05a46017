//! The connection to the broker, checked before anything is created on it.

use std::time::Duration;

use async_nats::jetstream;

/// The oldest nats-server weir runs against. Older servers accept some
/// stream and consumer options and silently ignore them (2.9 ignores
/// multi-subject filters; its key-value store fails with this client),
/// which would turn into lost guarantees rather than errors.
pub const MIN_SERVER: (u64, u64, u64) = (2, 10, 0);

/// An error talking to the broker.
#[derive(Debug)]
#[non_exhaustive]
pub enum BrokerError {
    /// Could not connect (refused, timed out, bad address).
    Connect {
        /// The address tried.
        url: String,
        /// The client's reason.
        reason: String,
    },
    /// The server is too old or has JetStream disabled.
    Unsupported(String),
    /// A JetStream request failed.
    Request(String),
    /// The job on the broker was made from another version of the pipeline
    /// file than this process's.
    Mismatch(String),
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerError::Connect { url, reason } => write!(
                f,
                "cannot reach the broker at {url}: {reason} (is nats-server running with --jetstream? scripts/nats-server starts one)"
            ),
            BrokerError::Unsupported(m) | BrokerError::Request(m) | BrokerError::Mismatch(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for BrokerError {}

impl BrokerError {
    /// Wraps any client error with what was being done.
    pub fn request(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        BrokerError::Request(format!("{what}: {e}"))
    }
}

/// A connected client with its JetStream context.
#[derive(Clone)]
pub struct Broker {
    /// The core client (for raw publishes such as in-progress acks).
    pub client: async_nats::Client,
    /// JetStream.
    pub js: jetstream::Context,
    /// The server's version, as it reports it.
    pub server_version: String,
}

impl Broker {
    /// Connects to `url`, within `timeout`, and checks the server.
    ///
    /// The client reconnects by itself after a later disconnect (a broker
    /// restart); only the first connection must succeed, so an unreachable
    /// broker is an error at start, not a hang.
    ///
    /// # Errors
    /// [`BrokerError::Connect`] when unreachable, [`BrokerError::Unsupported`]
    /// when the server is older than [`MIN_SERVER`] or lacks JetStream.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Broker, BrokerError> {
        let opts = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .name("weir")
            // Requests (stream info, acks with confirmation) during a broker
            // restart wait for the reconnect rather than fail at once.
            .request_timeout(Some(Duration::from_secs(10)));
        let connect = async_nats::connect_with_options(url, opts);
        let client = match tokio::time::timeout(timeout + Duration::from_secs(1), connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(BrokerError::Connect {
                    url: url.to_string(),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(BrokerError::Connect {
                    url: url.to_string(),
                    reason: format!("no answer within {timeout:?}"),
                });
            }
        };
        let info = client.server_info();
        check_version(&info.version)?;
        if !info.jetstream {
            return Err(BrokerError::Unsupported(format!(
                "the broker at {url} has JetStream disabled; start nats-server with --jetstream"
            )));
        }
        let js = jetstream::new(client.clone());
        Ok(Broker {
            client,
            js,
            server_version: info.version,
        })
    }
}

/// Refuses servers older than [`MIN_SERVER`].
///
/// # Errors
/// [`BrokerError::Unsupported`] with the versions involved.
pub fn check_version(version: &str) -> Result<(), BrokerError> {
    let core = version.split(['-', '+']).next().unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    if v >= MIN_SERVER {
        Ok(())
    } else {
        let (a, b, c) = MIN_SERVER;
        Err(BrokerError::Unsupported(format!(
            "nats-server {version} is too old: weir needs {a}.{b}.{c} or newer (older servers silently ignore stream and consumer options weir relies on); scripts/install-nats-server installs 2.15.1"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_floor() {
        assert!(check_version("2.15.1").is_ok());
        assert!(check_version("2.10.0").is_ok());
        assert!(check_version("2.11.0-RC.1").is_ok());
        let e = check_version("2.9.25").unwrap_err().to_string();
        assert!(e.contains("2.9.25 is too old"), "{e}");
        assert!(check_version("garbage").is_err());
    }
}
