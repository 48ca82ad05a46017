//! The `file` sink: writes records to one file as JSON Lines or CSV.
//!
//! The file is created (with its parent directories) and truncated when the
//! sink is built: a run replaces the previous output. Writes are buffered
//! and flushed to the operating system at the end of every batch, so when a
//! write returns the data is in the file (it survives the process, not a
//! power cut: there is no fsync per batch, which would cost milliseconds
//! each). On an I/O error the whole batch is given back; lines of it may
//! already be in the file, so a retry can duplicate them.
//!
//! CSV values: strings as they are, null and missing fields empty, numbers
//! and booleans as JSON text, arrays and objects as JSON text. A record that
//! is not an object cannot be a CSV row: it fails the write (the records
//! before it are written, the rest is given back).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::value::{self, Json, Val as Value};
use serde_saphyr::Spanned;

use crate::error::ConfigError;
use crate::record::Record;
use crate::sources::BuildContext;

/// Output formats of the file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    /// One JSON value per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

/// Writes records to a file (replacing it) as JSON Lines or CSV.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    /// The output file, relative to the pipeline file's directory. Parent
    /// directories are created; an existing file is truncated.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    /// `jsonl` or `csv`. Default: from the extension (`.csv` is csv,
    /// anything else jsonl).
    #[serde(default)]
    pub format: Option<SinkFormat>,
    /// csv only: the columns, in header order; each is the record's
    /// top-level field of that name. Default: the keys of the first record.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

impl FileSink {
    /// A minimal configuration.
    pub const EXAMPLE: &str = "path: out/orders.csv\nformat: csv\ncolumns: [id, user, amount]\n";

    /// Checks the options without touching the file (`weir check`);
    /// returns the format.
    ///
    /// # Errors
    /// As [`build`](Self::build), except for opening the file.
    pub fn check(&self) -> Result<SinkFormat, ConfigError> {
        let given = self.path.value.as_str();
        if given.is_empty() {
            return Err(ConfigError::at("file sink: path is empty", &self.path));
        }
        if given.ends_with(".gz") {
            return Err(ConfigError::at(
                "file sink: compressed output is not supported; drop the .gz extension",
                &self.path,
            ));
        }
        let format = self.format.unwrap_or_else(|| {
            if given.to_ascii_lowercase().ends_with(".csv") {
                SinkFormat::Csv
            } else {
                SinkFormat::Jsonl
            }
        });
        if format == SinkFormat::Jsonl && self.columns.is_some() {
            return Err(ConfigError::new(
                "file sink: 'columns' applies to csv only, the format is jsonl",
            ));
        }
        Ok(format)
    }

    /// Creates (truncates) the file; returns the sink.
    ///
    /// # Errors
    /// A [`ConfigError`] at `path` when the file cannot be created, or
    /// when `columns` is set for jsonl or `path` ends in `.gz`.
    pub fn build(&self, ctx: &BuildContext) -> Result<FileWriter, ConfigError> {
        let format = self.check()?;
        let given = self.path.value.as_str();
        let file = create(&ctx.base_dir.join(given), given)
            .map_err(|msg| ConfigError::at(format!("file sink: {msg}"), &self.path))?;
        Ok(FileWriter {
            shown: given.to_string(),
            out: BufWriter::with_capacity(256 * 1024, file),
            format,
            columns: self.columns.clone(),
            header_done: false,
            lines: 0,
        })
    }
}

/// Creates `full` and its parent directories, truncating it.
pub(crate) fn create(full: &Path, shown: &str) -> Result<File, String> {
    if let Some(dir) = full.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    File::create(full).map_err(|e| format!("cannot create {shown}: {e}"))
}

/// An open file sink: implements [`weir::Sink<Record>`]; its output is the
/// number of records written (CSV: rows, not counting the header).
#[derive(Debug)]
pub struct FileWriter {
    shown: String,
    out: BufWriter<File>,
    format: SinkFormat,
    columns: Option<Vec<String>>,
    header_done: bool,
    lines: u64,
}

/// One CSV field.
fn csv_field(v: Option<&Value>) -> std::borrow::Cow<'_, str> {
    match v {
        None | Some(Value::Null) => "".into(),
        Some(s @ (Value::TStr(_) | Value::BStr(_))) => {
            value::as_str(s).map_or_else(|| value::to_text(s).into(), Into::into)
        }
        Some(other) => value::to_text(other).into(),
    }
}

impl FileWriter {
    /// Serializes records into `buf` up to the first that cannot be
    /// written; returns how many were and the error about the next one.
    fn encode(&mut self, items: &[Record], buf: &mut Vec<u8>) -> (usize, Option<String>) {
        match self.format {
            SinkFormat::Jsonl => {
                for r in items {
                    // Serializing a Value into memory cannot fail.
                    let _ = serde_json::to_writer(&mut *buf, &Json(&r.value));
                    buf.push(b'\n');
                }
                (items.len(), None)
            }
            SinkFormat::Csv => {
                let mut w = csv::Writer::from_writer(buf);
                for (i, r) in items.iter().enumerate() {
                    let Value::Obj(m) = &r.value else {
                        return (
                            i,
                            Some(format!(
                                "record at {} is not an object, cannot write it as a csv row",
                                r.pos
                            )),
                        );
                    };
                    let cols = self.columns.get_or_insert_with(|| {
                        m.keys()
                            .map(|k| value::as_str(k).unwrap_or_default().to_owned())
                            .collect()
                    });
                    if !self.header_done {
                        let _ = w.write_record(cols.iter());
                        self.header_done = true;
                    }
                    let _ = w.write_record(
                        cols.iter()
                            .map(|c| csv_field(value::get(&r.value, c)).into_owned()),
                    );
                }
                let _ = w.flush();
                (items.len(), None)
            }
        }
    }

    fn io_error(&self, e: &io::Error) -> String {
        format!("writing to {}: {e}", self.shown)
    }

    /// Writes a batch synchronously; see [`weir::Sink::write`].
    ///
    /// # Errors
    /// The whole batch on an I/O error; the suffix from a record that
    /// cannot be a CSV row.
    pub fn write_batch(&mut self, items: Vec<Record>) -> Result<(), weir::WriteError<Record>> {
        let mut buf = Vec::with_capacity(items.len() * 128);
        let (n, bad) = self.encode(&items, &mut buf);
        if let Err(e) = self.out.write_all(&buf).and_then(|()| self.out.flush()) {
            let msg = self.io_error(&e);
            return Err(weir::WriteError::all(items, msg));
        }
        self.lines += n as u64;
        match bad {
            None => Ok(()),
            Some(msg) => {
                let mut items = items;
                let unwritten = items.split_off(n);
                // The record that cannot be encoded alone is dead-lettered.
                Err(weir::WriteError::bad_item(unwritten, msg))
            }
        }
    }

    /// Writes the CSV header if no record did, then flushes.
    ///
    /// # Errors
    /// The I/O error, naming the file.
    pub fn close(mut self) -> Result<u64, String> {
        if self.format == SinkFormat::Csv
            && !self.header_done
            && let Some(cols) = &self.columns
        {
            let mut w = csv::Writer::from_writer(Vec::new());
            let _ = w.write_record(cols.iter());
            let bytes = w.into_inner().unwrap_or_default();
            self.out.write_all(&bytes).map_err(|e| self.io_error(&e))?;
        }
        self.out.flush().map_err(|e| self.io_error(&e))?;
        Ok(self.lines)
    }
}

impl weir::Sink<Record> for FileWriter {
    type Output = u64;

    async fn write(&mut self, items: Vec<Record>) -> Result<(), weir::WriteError<Record>> {
        self.write_batch(items)
    }

    async fn finish(self) -> Result<u64, weir::BoxError> {
        Ok(self.close()?)
    }

    fn blocking(&self) -> bool {
        true
    }
}

impl crate::registry::Documented for FileSink {
    const EXAMPLE: &'static str = FileSink::EXAMPLE;
}

impl crate::registry::SinkComponent for FileSink {
    fn check(&self, _ctx: &BuildContext) -> Result<(), ConfigError> {
        FileSink::check(self).map(|_| ())
    }

    fn attach(
        &self,
        ctx: &BuildContext,
        name: &str,
        input: weir::Flow<Record>,
        policy: weir::ErrorPolicy,
    ) -> Result<(), ConfigError> {
        input
            .sink(name, FileSink::build(self, ctx)?)
            .on_error(policy);
        Ok(())
    }

    fn writes(&self) -> Option<crate::registry::Written<'_>> {
        Some(crate::registry::Written {
            path: &self.path,
            shared: None,
        })
    }

    fn resume(&self) -> crate::registry::Resume {
        crate::registry::Resume::Refused(
            "writes a file from the start, which would lose what the first run wrote; resume works with sqlite outputs",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_builds() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: FileSink = serde_saphyr::from_str(FileSink::EXAMPLE).unwrap();
        let ctx = BuildContext {
            input: "out".into(),
            base_dir: dir.path().to_path_buf(),
            state: None,
        };
        let w = cfg.build(&ctx).unwrap();
        assert_eq!(w.close().unwrap(), 0);
        let text = std::fs::read_to_string(dir.path().join("out/orders.csv")).unwrap();
        assert_eq!(text, "id,user,amount\n");
    }
}
