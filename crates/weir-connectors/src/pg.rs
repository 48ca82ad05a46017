//! What the `postgres` sink and the `sql` source share about reaching a
//! PostgreSQL server: the connection string (from the pipeline file or an
//! environment variable), TLS, how a server is named in messages (never
//! with its password), and a server error in words.
//!
//! TLS follows the connection string's `sslmode`: `require` connects
//! through rustls (with ring, like the HTTP client), verifying the server's
//! certificate against the component's `ca_file` (or, without one, the
//! system's roots) and its name against the host's subjectAltName, which
//! is stricter than libpq's `require` (close to its `verify-full`, which
//! tokio-postgres does not parse; unlike libpq, a certificate's CN alone
//! does not name the host, and a self-signed CA certificate cannot be the
//! server's own); `disable` and the default `prefer` connect without TLS.
//! A certificate that cannot be verified fails the connection, never
//! falls back to plain text.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde_saphyr::Spanned;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::ConfigError;

/// How to talk to a server: in plain text, or through TLS.
#[derive(Clone)]
pub(crate) enum Tls {
    /// `sslmode=disable` or `prefer`.
    Off,
    /// `sslmode=require`.
    Rustls(MakeRustlsConnect),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tls::Off => "Tls::Off",
            Tls::Rustls(_) => "Tls::Rustls",
        })
    }
}

/// The TLS a connection string asks for; `ca_file` (PEM, relative to
/// `base_dir`) adds certificates to trust; `what` names the component.
///
/// # Errors
/// A `ca_file` without `sslmode=require` (it would do nothing), one that
/// cannot be read or holds no certificate, no root to trust at all.
pub(crate) fn tls(
    config: &tokio_postgres::Config,
    ca_file: Option<&Spanned<String>>,
    base_dir: &Path,
    what: &str,
) -> Result<Tls, ConfigError> {
    if config.get_ssl_mode() != SslMode::Require {
        if let Some(ca) = ca_file {
            return Err(ConfigError::at(
                format!("{what}: ca_file needs sslmode=require in the connection string"),
                ca,
            ));
        }
        return Ok(Tls::Off);
    }
    if config
        .get_hosts()
        .iter()
        .any(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
    {
        return Err(ConfigError::new(format!(
            "{what}: sslmode=require with a Unix socket host: PostgreSQL has no TLS on \
             sockets; connect over TCP, or use sslmode=disable for the socket"
        )));
    }
    // Like libpq's `sslrootcert`: a `ca_file` is what is trusted;
    // without one, the system's roots (unreadable ones skipped).
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        None => {
            let native = rustls_native_certs::load_native_certs();
            let _ = roots.add_parsable_certificates(native.certs);
        }
        Some(ca) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject as _;
            let path = base_dir.join(&ca.value);
            let certs = CertificateDer::pem_file_iter(&path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    ConfigError::at(format!("{what}: ca_file {}: {e}", path.display()), ca)
                })?;
            if certs.is_empty() {
                return Err(ConfigError::at(
                    format!("{what}: ca_file {} holds no certificate", path.display()),
                    ca,
                ));
            }
            for c in certs {
                roots.add(c).map_err(|e| {
                    ConfigError::at(format!("{what}: ca_file {}: {e}", path.display()), ca)
                })?;
            }
        }
    }
    if roots.is_empty() {
        return Err(ConfigError::new(format!(
            "{what}: sslmode=require, but there is no certificate to trust: the system has \
             none and no ca_file is given"
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(format!("{what}: TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Tls::Rustls(MakeRustlsConnect::new(client)))
}

/// Connects and authenticates, and starts the task driving the
/// connection's socket (aborting it closes the connection).
///
/// # Errors
/// The server's or the network's.
pub(crate) async fn connect(
    config: &tokio_postgres::Config,
    tls: &Tls,
) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    // Its error shows on the client's next call.
    Ok(match tls {
        Tls::Off => {
            let (client, connection) = config.connect(NoTls).await?;
            let task = tokio::spawn(async move {
                let _ = connection.await;
            });
            (client, task)
        }
        Tls::Rustls(make) => {
            let (client, connection) = config.connect(make.clone()).await?;
            let task = tokio::spawn(async move {
                let _ = connection.await;
            });
            (client, task)
        }
    })
}

/// Asks the server to cancel what a connection runs (a connection of its
/// own, over the same TLS). Best effort.
pub(crate) async fn cancel(token: tokio_postgres::CancelToken, tls: &Tls) {
    let _ = match tls {
        Tls::Off => token.cancel_query(NoTls).await,
        Tls::Rustls(make) => token.cancel_query(make.clone()).await,
    };
}

/// The parsed connection settings from `url` or the variable `url_env`
/// names; `what` names the component in errors ("postgres sink").
///
/// # Errors
/// No or two connection strings, an unset variable, a string that does not
/// parse or names no host.
pub(crate) fn config(
    url: Option<&Spanned<String>>,
    url_env: Option<&Spanned<String>>,
    what: &str,
) -> Result<tokio_postgres::Config, ConfigError> {
    let (text, at) = match (url, url_env) {
        (Some(u), None) => (u.value.clone(), u),
        (None, Some(var)) => match std::env::var(&var.value) {
            Ok(u) if !u.is_empty() => (u, var),
            _ => {
                return Err(ConfigError::at(
                    format!(
                        "{what}: environment variable `{}` (url_env) is not set",
                        var.value
                    ),
                    var,
                ));
            }
        },
        (Some(u), Some(_)) => {
            return Err(ConfigError::at(
                format!("{what}: set one of `url` and `url_env`, not both"),
                u,
            ));
        }
        (None, None) => {
            return Err(ConfigError::new(format!(
                "{what}: `url` or `url_env` (the connection string) is required"
            )));
        }
    };
    // The parser's messages do not quote the string (no password).
    let config = tokio_postgres::Config::from_str(&text)
        .map_err(|e| ConfigError::at(format!("{what}: invalid connection string: {e}"), at))?;
    if config.get_hosts().is_empty() {
        return Err(ConfigError::at(
            format!("{what}: the connection string names no host"),
            at,
        ));
    }
    Ok(config)
}

/// `postgres host:port/db` of a connection string, for messages (no
/// password).
pub(crate) fn shown(c: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match c.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres {host}:{port}/{}",
        c.get_dbname().or(c.get_user()).unwrap_or("?")
    )
}

/// A server error in words: SQLSTATE, message, detail.
pub(crate) fn db_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("SQLSTATE {}: {}", db.code().code(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(" (");
                s.push_str(d);
                s.push(')');
            }
            s
        }
        None => weir::error_chain(e),
    }
}

/// `ident` as a quoted SQL identifier (`"a""b"`), valid in PostgreSQL and
/// SQLite.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}
