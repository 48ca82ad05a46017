//! Sources: where records enter a declarative pipeline.
//!
//! A source reads [`Raw`] items (a line of text, a CSV row, or a ready
//! record) with their [`Position`]; it does not decode them. Decoding is a
//! separate step ([`decode::Decoder`]) that the pipeline runs as a stage of
//! its own, on several workers, right after the source: reading stays
//! sequential (it has to be), parsing runs in parallel, and a line that does
//! not decode becomes a dead letter of that stage, with its position and
//! reason, and is counted like any other.

use std::sync::Arc;

use crate::record::Position;

pub mod decode;
pub mod events;
pub mod file;
pub(crate) mod follow;
pub mod generate;
pub mod http_server;
pub(crate) mod live;
pub mod nats;
pub mod orders;
pub mod schedule;
pub mod sql;
pub mod stdin;

pub use weir_record::raw::Raw;

/// A line as read: `Raw::Line`, or `Raw::NotUtf8` when it is not UTF-8.
pub(crate) fn raw_from_text(pos: Arc<Position>, text: Text) -> Raw {
    match text {
        Text::Valid(text) => Raw::Line { pos, text },
        Text::Invalid { lossy, detail } => Raw::NotUtf8 {
            pos,
            text: lossy,
            detail,
        },
    }
}

/// What a source does with text that is not valid UTF-8.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvalidUtf8 {
    /// Dead-letter the line (csv: the row) with reason `invalid_utf8`,
    /// naming the byte offset of the first invalid byte.
    #[default]
    DeadLetter,
    /// Replace each invalid sequence with U+FFFD and decode the line.
    Replace,
}

/// Text read as bytes: valid UTF-8, or why not.
#[derive(Debug)]
pub(crate) enum Text {
    /// Valid UTF-8 (or repaired, under [`InvalidUtf8::Replace`]).
    Valid(String),
    /// Not UTF-8: the text with U+FFFD for each invalid sequence, and
    /// where the first one is.
    Invalid {
        /// The text, repaired.
        lossy: String,
        /// `invalid UTF-8 at byte offset 3 of the line (0xff)`.
        detail: String,
    },
}

impl Text {
    /// `bytes` as text; `what` names them in the detail ("line", "field").
    pub(crate) fn decode(bytes: &[u8], policy: InvalidUtf8, what: &str) -> Text {
        match std::str::from_utf8(bytes) {
            Ok(s) => Text::Valid(s.to_owned()),
            Err(_) if policy == InvalidUtf8::Replace => {
                Text::Valid(String::from_utf8_lossy(bytes).into_owned())
            }
            Err(e) => Text::Invalid {
                lossy: String::from_utf8_lossy(bytes).into_owned(),
                detail: utf8_detail(bytes, &e, what),
            },
        }
    }
}

/// Where the first invalid sequence of `bytes` is, and its bytes in hex.
fn utf8_detail(bytes: &[u8], e: &std::str::Utf8Error, what: &str) -> String {
    let at = e.valid_up_to();
    let bad = match e.error_len() {
        Some(n) => &bytes[at..at + n],
        None => &bytes[at..],
    };
    let hex: Vec<String> = bad.iter().map(|b| format!("0x{b:02x}")).collect();
    let hex = hex.join(" ");
    match e.error_len() {
        Some(_) => format!("invalid UTF-8 at byte offset {at} of the {what} ({hex})"),
        None => {
            format!("truncated UTF-8 sequence at byte offset {at}, the end of the {what} ({hex})")
        }
    }
}

pub(crate) use weir_record::raw::csv_line;

/// What a source needs from the pipeline that builds it.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The input's name in the pipeline file.
    pub input: Arc<str>,
    /// The directory relative paths in the pipeline file resolve against
    /// (the pipeline file's own directory).
    pub base_dir: std::path::PathBuf,
    /// Where sources that remember something between runs (the `schedule`
    /// source's last handled tick) keep it: a directory in a local run, the
    /// broker in distributed mode; `None` when the run keeps no state
    /// (`weir check`, `--no-checkpoint`).
    pub state: Option<State>,
}

/// Where state kept between runs lives.
#[derive(Debug, Clone)]
pub enum State {
    /// In files of a directory (a local run).
    Dir(StateDir),
    /// In a store the runner provides (distributed mode: the job's
    /// key-value bucket on the broker, shared by whichever coordinator
    /// holds the job).
    Shared(Arc<dyn StateStore>),
}

/// Values kept between runs by key, outside a directory: in distributed
/// mode, the job's key-value bucket on the broker. Values are text; each
/// source reads back what it wrote (a number, a JSON value).
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// The value saved under `key` by an earlier run, as read when this
    /// run started (`None`: nothing is saved).
    ///
    /// # Errors
    /// When something is saved under `key` but cannot be read (not UTF-8).
    fn get(&self, key: &str) -> Result<Option<String>, String>;

    /// Saves `value` under `key`. The write happens in the background, in
    /// order (a later value replaces an earlier one); a value not yet
    /// written when the process dies is lost, so callers save only what
    /// they can afford to redo.
    ///
    /// # Errors
    /// When the value cannot be queued for writing (the store is closed).
    fn put(&self, key: &str, value: String) -> Result<(), String>;
}

/// A directory for state kept between runs, and the pipeline it is kept
/// for (several pipeline files may share a directory).
#[derive(Debug, Clone)]
pub struct StateDir {
    /// The directory (`.weir/` beside the pipeline file, or `--state-dir`):
    /// the one the checkpoint database is in.
    pub dir: std::path::PathBuf,
    /// The pipeline's key in it: its file's canonical path.
    pub pipeline: String,
}

impl StateDir {
    /// Opens (creating it and the directory when missing) the database
    /// `file` of this directory, in WAL mode with a busy timeout, and runs
    /// `schema` (its `CREATE TABLE IF NOT EXISTS`).
    ///
    /// # Errors
    /// The directory or database cannot be created or opened, as text.
    pub(crate) fn open_db(&self, file: &str, schema: &str) -> Result<rusqlite::Connection, String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let conn = rusqlite::Connection::open(self.dir.join(file)).map_err(|e| e.to_string())?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; {schema}"
        ))
        .map_err(|e| e.to_string())?;
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_located() {
        let detail = |b: &[u8]| match Text::decode(b, InvalidUtf8::DeadLetter, "line") {
            Text::Invalid { lossy, detail } => (lossy, detail),
            Text::Valid(s) => panic!("{s:?} is valid"),
        };
        assert_eq!(
            detail(b"bad\xff"),
            (
                "bad\u{fffd}".to_string(),
                "invalid UTF-8 at byte offset 3 of the line (0xff)".to_string()
            )
        );
        // A lead byte followed by a byte that cannot continue it.
        assert_eq!(
            detail(b"\xc3\xa9t\xe9\x28x").1,
            "invalid UTF-8 at byte offset 3 of the line (0xe9)"
        );
        assert_eq!(
            detail(b"ab\xe2\x82").1,
            "truncated UTF-8 sequence at byte offset 2, the end of the line (0xe2 0x82)"
        );
        match Text::decode(b"bad\xff", InvalidUtf8::Replace, "line") {
            Text::Valid(s) => assert_eq!(s, "bad\u{fffd}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn csv_rows_as_text() {
        assert_eq!(csv_line(&["a".into(), "b,c".into()]), "a,\"b,c\"");
    }
}
