//! What the `postgres` sink and the `sql` source share about reaching a
//! PostgreSQL server: the connection string (from the pipeline file or an
//! environment variable, TLS refused since this build has none), how a
//! server is named in messages (never with its password), and a server
//! error in words.

use std::str::FromStr;

use serde_saphyr::Spanned;
use tokio_postgres::config::SslMode;

use crate::error::ConfigError;

/// The parsed connection settings from `url` or the variable `url_env`
/// names; `what` names the component in errors ("postgres sink").
///
/// # Errors
/// No or two connection strings, an unset variable, a string that does not
/// parse, asks for TLS or names no host.
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
    if config.get_ssl_mode() == SslMode::Require {
        return Err(ConfigError::at(
            format!(
                "{what}: the connection string requires TLS (sslmode=require), which \
                 this build does not include; use sslmode=disable or prefer over a trusted network"
            ),
            at,
        ));
    }
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
