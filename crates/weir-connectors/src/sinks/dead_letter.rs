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
//! sink is created (added to instead on `--resume`, and by a pipeline whose
//! source tells clients what became of their records, such as
//! `http_server`: see [`DeadLetterFile::append_all`]), and flushed after
//! every batch (like the file sink).
//!
//! # On resume
//! `weir run --resume` appends to the file ([`DeadLetterFile::append`]).
//! The lines after the last checkpoint are processed again, and give the
//! same dead letters again: so the sink first reads the letters already in
//! the file, by identity (stage, error, position, input, record, raw: all
//! but the attempt count, which may differ), and skips that many
//! repeats of each. The file then holds each letter once, as after an
//! uninterrupted run. A last line cut short by a crash (its write never
//! returned, so its record was not checkpointed and comes again) is cut
//! off. Memory: 20 bytes or so per letter already in the file, for the
//! run.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::Value;
use serde_saphyr::Spanned;
use sha2::Digest as _;

use crate::error::ConfigError;
use crate::sinks::file::create;
use crate::sources::BuildContext;

/// Where dead letters go: a JSON Lines file.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// The dead-letter file (jsonl), relative to the pipeline file's
    /// directory. Parent directories are created; an existing file is
    /// truncated, except on `--resume` and in a pipeline whose source tells
    /// clients what became of their records (`http_server`), which add to
    /// it.
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
    /// Letters in the file before this run and not yet met again, by
    /// identity, with their count (see "On resume").
    seen: HashMap<Identity, u32>,
    /// Letters not written because the file had them.
    repeats: u64,
}

/// A dead letter's identity: 128 bits of SHA-256 over its fields.
type Identity = [u8; 16];

/// The identity of a letter, as [`letter_json`] makes it or as read back.
fn identity(v: &Value) -> Identity {
    let mut h = sha2::Sha256::new();
    // Fields one by one, in a fixed order: the identity must not depend on
    // the order of the object's keys.
    for key in ["stage", "error", "position", "input", "record", "raw"] {
        // Serializing a Value into memory cannot fail.
        let bytes = serde_json::to_vec(v.get(key).unwrap_or(&Value::Null)).unwrap_or_default();
        h.update(&bytes);
        h.update([0]);
    }
    let digest = h.finalize();
    let mut id = [0; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// The letters in `file` by identity, and the length of its complete
/// lines (a torn last line is not a letter).
fn read_letters(file: &mut File) -> std::io::Result<(HashMap<Identity, u32>, u64)> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::with_capacity(256 * 1024, &*file);
    let mut seen = HashMap::new();
    let mut complete = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        complete += n as u64;
        // A line that is not a letter (edited by hand, say) cannot match
        // one: it is kept, and not counted.
        if let Ok(v) = serde_json::from_slice::<Value>(&line) {
            *seen.entry(identity(&v)).or_insert(0) += 1;
        }
    }
    Ok((seen, complete))
}

/// Creates the directories `full` is in.
fn create_parent(full: &Path) -> Result<(), ConfigError> {
    if let Some(dir) = full.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            ConfigError::new(format!(
                "dead-letter file: cannot create directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    Ok(())
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

    /// Opens the file at `path` to add to what it holds (creating it and
    /// its parent directories), without reading it: a service restarted
    /// keeps the dead letters of its earlier runs (clients were told about
    /// them), and every new letter is written, however alike an old one
    /// it is (positions of a stream start over in every run).
    ///
    /// # Errors
    /// A [`ConfigError`] (without location) when the file cannot be opened.
    pub fn append_all(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let full = path.as_ref();
        let shown = full.display().to_string();
        create_parent(full)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(full)
            .map_err(|e| ConfigError::new(format!("dead-letter file: cannot open {shown}: {e}")))?;
        Ok(DeadLetterFile {
            shown,
            out: BufWriter::with_capacity(64 * 1024, file),
            written: 0,
            seen: HashMap::new(),
            repeats: 0,
        })
    }

    /// Opens the file at `path` for appending (creating it and its parent
    /// directories): a resumed run keeps the dead letters of the run it
    /// resumes, and does not write them again (see "On resume").
    ///
    /// # Errors
    /// A [`ConfigError`] (without location) when the file cannot be opened,
    /// read or cut.
    pub fn append(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let full = path.as_ref();
        let shown = full.display().to_string();
        create_parent(full)?;
        let fail = |e: std::io::Error| {
            ConfigError::new(format!("dead-letter file: cannot open {shown}: {e}"))
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(full)
            .map_err(fail)?;
        let (seen, complete) = read_letters(&mut file).map_err(fail)?;
        if file.metadata().map_err(fail)?.len() > complete {
            file.set_len(complete).map_err(fail)?;
        }
        file.seek(SeekFrom::End(0)).map_err(fail)?;
        Ok(DeadLetterFile {
            shown,
            out: BufWriter::with_capacity(64 * 1024, file),
            written: 0,
            seen,
            repeats: 0,
        })
    }

    fn open(full: &Path, shown: &str) -> Result<Self, String> {
        let file = create(full, shown).map_err(|m| format!("dead-letter file: {m}"))?;
        Ok(DeadLetterFile {
            shown: shown.to_string(),
            out: BufWriter::with_capacity(64 * 1024, file),
            written: 0,
            seen: HashMap::new(),
            repeats: 0,
        })
    }

    /// Dead letters written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Dead letters not written because the file already had them (a
    /// resumed run meeting the letters of the run it resumes).
    pub fn repeats(&self) -> u64 {
        self.repeats
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
        // Repeats skipped in this batch: given back to `seen` if the write
        // fails, so that a retry skips them again.
        let mut skipped: Vec<Identity> = Vec::new();
        for d in &items {
            let v = letter_json(d);
            if !self.seen.is_empty() {
                let id = identity(&v);
                if let Some(n) = self.seen.get_mut(&id) {
                    *n -= 1;
                    if *n == 0 {
                        self.seen.remove(&id);
                    }
                    skipped.push(id);
                    continue;
                }
            }
            // Serializing a Value into memory cannot fail.
            let _ = serde_json::to_writer(&mut buf, &v);
            buf.push(b'\n');
        }
        if let Err(e) = self.out.write_all(&buf).and_then(|()| self.out.flush()) {
            for id in skipped {
                *self.seen.entry(id).or_insert(0) += 1;
            }
            let msg = format!("writing dead letters to {}: {e}", self.shown);
            return Err(weir::WriteError::all(items, msg));
        }
        self.repeats += skipped.len() as u64;
        self.written += (items.len() - skipped.len()) as u64;
        Ok(())
    }
}

pub use weir_record::dead_letter::letter_json;

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
            state: None,
        };
        let f = cfg.build(&ctx).unwrap();
        assert_eq!(f.written(), 0);
        assert!(dir.path().join("out/dead-letters.jsonl").is_file());
    }
}
