//! The dead-letter file: every item a stage gave up on, one JSON object per
//! line, with why and where:
//!
//! ```json
//! {"stage":"decode","error":"parse_error: invalid JSON at column 17: ...","attempts":1,
//!  "position":"data/orders.jsonl:12","input":"orders","record":null,"raw":"{\"id\":1,"}
//! ```
//!
//! `record` is the record when the item was a [`Record`] (or a
//! `Raw::Record`), `raw` the text when it was a line or a CSV row (the row
//! re-encoded as CSV with `,`; a line that is not UTF-8 with U+FFFD for each
//! invalid sequence, the error saying where the first one was); `position`
//! and `input` come from the item.
//! Items of other types have all four null. The file is truncated when the
//! sink is created, and flushed after every batch (like the file sink).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use crate::error::ConfigError;
use crate::record::{Position, Record};
use crate::sinks::file::create;
use crate::sources::{BuildContext, Raw, csv_line};

/// Where dead letters go: a JSON Lines file.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// The dead-letter file (jsonl), relative to the pipeline file's
    /// directory. Parent directories are created; an existing file is
    /// truncated.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
}

impl DeadLetterConfig {
    /// A minimal configuration.
    pub const EXAMPLE: &str = "path: out/dead-letters.jsonl\n";

    /// Creates the file; returns the sink.
    ///
    /// # Errors
    /// A [`ConfigError`] at `path` when the file cannot be created.
    pub fn build(&self, ctx: &BuildContext) -> Result<DeadLetterFile, ConfigError> {
        let given = self.path.value.as_str();
        if given.is_empty() {
            return Err(ConfigError::at(
                "dead-letter file: path is empty",
                &self.path,
            ));
        }
        DeadLetterFile::open(&ctx.base_dir.join(given), given)
            .map_err(|msg| ConfigError::at(msg, &self.path))
    }
}

/// A dead-letter sink writing JSON Lines; implements
/// [`weir::Sink<weir::DeadLetter>`]. Its output is the number of dead
/// letters written.
#[derive(Debug)]
pub struct DeadLetterFile {
    shown: String,
    out: BufWriter<File>,
    written: u64,
}

impl DeadLetterFile {
    /// Creates (truncates) the file at `path`, and its parent directories.
    ///
    /// # Errors
    /// A [`ConfigError`] (without location) when the file cannot be
    /// created.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        DeadLetterFile::open(path, &path.display().to_string()).map_err(ConfigError::new)
    }

    /// Opens the file at `path` for appending (creating it and its parent
    /// directories): a resumed run keeps the dead letters of the run it
    /// resumes.
    ///
    /// # Errors
    /// A [`ConfigError`] (without location) when the file cannot be opened.
    pub fn append(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let full = path.as_ref();
        let shown = full.display().to_string();
        if let Some(dir) = full.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                ConfigError::new(format!(
                    "dead-letter file: cannot create directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(full)
            .map_err(|e| ConfigError::new(format!("dead-letter file: cannot open {shown}: {e}")))?;
        Ok(DeadLetterFile {
            shown,
            out: BufWriter::with_capacity(64 * 1024, file),
            written: 0,
        })
    }

    fn open(full: &Path, shown: &str) -> Result<Self, String> {
        let file = create(full, shown).map_err(|m| format!("dead-letter file: {m}"))?;
        Ok(DeadLetterFile {
            shown: shown.to_string(),
            out: BufWriter::with_capacity(64 * 1024, file),
            written: 0,
        })
    }

    /// Dead letters written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes a batch synchronously; see [`weir::Sink::write`].
    ///
    /// # Errors
    /// The whole batch on an I/O error (lines of it may be in the file).
    pub fn write_batch(
        &mut self,
        items: Vec<weir::DeadLetter>,
    ) -> Result<(), weir::WriteError<weir::DeadLetter>> {
        let mut buf = Vec::with_capacity(items.len() * 256);
        for d in &items {
            // Serializing a Value into memory cannot fail.
            let _ = serde_json::to_writer(&mut buf, &letter_json(d));
            buf.push(b'\n');
        }
        if let Err(e) = self.out.write_all(&buf).and_then(|()| self.out.flush()) {
            let msg = format!("writing dead letters to {}: {e}", self.shown);
            return Err(weir::WriteError::all(items, msg));
        }
        self.written += items.len() as u64;
        Ok(())
    }
}

/// The JSON object for one dead letter.
pub fn letter_json(d: &weir::DeadLetter) -> Value {
    let (pos, record, raw): (Option<&Position>, Value, Value) = if let Some(r) = d.item::<Record>()
    {
        (Some(&r.pos), r.value.clone(), Value::Null)
    } else if let Some(raw) = d.item::<Raw>() {
        match raw {
            Raw::Line { pos, text } | Raw::NotUtf8 { pos, text, .. } => {
                (Some(pos), Value::Null, Value::String(text.clone()))
            }
            Raw::Row { pos, fields, .. } => {
                (Some(pos), Value::Null, Value::String(csv_line(fields)))
            }
            Raw::Record(r) => (Some(&r.pos), r.value.clone(), Value::Null),
        }
    } else {
        (None, Value::Null, Value::Null)
    };
    let mut m = Map::with_capacity(7);
    m.insert("stage".into(), Value::String(d.stage.clone()));
    m.insert("error".into(), Value::String(d.error.clone()));
    m.insert("attempts".into(), Value::from(d.attempts));
    m.insert(
        "position".into(),
        pos.map_or(Value::Null, |p| Value::String(p.to_string())),
    );
    m.insert(
        "input".into(),
        pos.map_or(Value::Null, |p| Value::String(p.input.to_string())),
    );
    m.insert("record".into(), record);
    m.insert("raw".into(), raw);
    Value::Object(m)
}

impl weir::Sink<weir::DeadLetter> for DeadLetterFile {
    type Output = u64;

    async fn write(
        &mut self,
        items: Vec<weir::DeadLetter>,
    ) -> Result<(), weir::WriteError<weir::DeadLetter>> {
        self.write_batch(items)
    }

    async fn finish(mut self) -> Result<u64, weir::BoxError> {
        self.out
            .flush()
            .map_err(|e| format!("writing dead letters to {}: {e}", self.shown))?;
        Ok(self.written)
    }

    fn blocking(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_builds() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: DeadLetterConfig = serde_saphyr::from_str(DeadLetterConfig::EXAMPLE).unwrap();
        let ctx = BuildContext {
            input: "dl".into(),
            base_dir: dir.path().to_path_buf(),
        };
        let f = cfg.build(&ctx).unwrap();
        assert_eq!(f.written(), 0);
        assert!(dir.path().join("out/dead-letters.jsonl").is_file());
    }
}
