//! The `file` source: reads one file or every file a glob matches, in
//! sorted order, as jsonl, csv or plain lines; `.gz` files are decompressed
//! on the fly.
//!
//! Reading runs on a thread of its own with large buffers and yields one
//! [`Raw`] item per line (per CSV record), with the file and 1-based line in
//! its [`Position`]; decoding is left to the [`Decoder`] the source comes
//! with, so that it can run in parallel. An I/O error (including a corrupt
//! gzip stream) stops the run with a message naming the file and line.
//! Invalid UTF-8 does not: such a line (csv: row) is yielded as
//! `Raw::NotUtf8`, which the decoder dead-letters with reason
//! `invalid_utf8` and the byte offset of the first bad byte, unless the
//! source says `invalid_utf8: replace`. A csv header that is not UTF-8
//! stops the run (column names cannot be guessed).
//!
//! A CSV record whose field count differs from the header's is not an I/O
//! error: it is yielded as a `Raw::Row` with the fields it has, and the
//! decoder rejects it (`csv row has 4 fields, the header has 3`), so it is
//! dead-lettered with its position like any other bad line.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_saphyr::Spanned;

use crate::checkpoint::{CHUNK_LINES, Checkpoint, Chunk, FileIdentity};
use crate::error::ConfigError;
use crate::record::Position;
use crate::sources::decode::{ColumnType, Decoder, Format};
use crate::sources::{BuildContext, InvalidUtf8, Raw, Text, csv_line};

/// Read buffer size: large enough that a read is a few system calls per
/// megabyte, small enough not to matter for memory.
const BUF_SIZE: usize = 256 * 1024;

/// Reads records from files: one path, or a glob such as `logs/*.jsonl.gz`
/// (every match, in sorted order).
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    /// A file path or a glob pattern (`*`, `?`, `[...]`), relative to the
    /// pipeline file's directory. Files matching a glob are read one after
    /// the other in sorted order. A path that matches no file is an error.
    /// A `.gz` file is decompressed on the fly.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    /// `jsonl` (one JSON value per line), `csv` (with a header row) or
    /// `lines` (each line becomes `{"line": "..."}`). Default: from the file
    /// extension, ignoring `.gz`: `.jsonl` and `.ndjson` are jsonl, `.csv` is
    /// csv, anything else is lines.
    #[serde(default)]
    pub format: Option<Format>,
    /// csv only: the field delimiter, one ASCII character. Default: `,`.
    #[serde(default)]
    pub delimiter: Option<char>,
    /// csv only: column types, `name: int|float|bool|string`. Unlisted
    /// columns are strings; an empty field is null; a field that does not
    /// parse as its type dead-letters the row. Default: none.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnType>,
    /// What to do with a line (csv: a row) that is not valid UTF-8:
    /// `dead_letter` it, with reason `invalid_utf8` and the byte offset of
    /// the first invalid byte, or `replace` each invalid sequence with
    /// U+FFFD and decode the line as usual. Default: `dead_letter`.
    #[serde(default)]
    pub invalid_utf8: InvalidUtf8,
    /// What `weir run --resume` does with a file of this input that changed
    /// since the checkpoint other than by growing (truncated, rewritten,
    /// rotated: the lines the checkpoint counts as done are not its lines):
    /// `refuse` to start, naming the file, or `restart` it, reading it
    /// again from line 1. Default: `refuse`.
    #[serde(default)]
    pub on_rewrite: OnRewrite,
    /// Keep reading as the file grows, like `tail -F`, until the run is
    /// stopped (Ctrl-C drains): a line goes on once its newline is
    /// written; a rotated file (the path now names a new file) is read to
    /// its end, then the new one from its start; a truncated one is read
    /// again from its start. Lines of later files read `path@N:line`. For
    /// one plain (not gzip) jsonl or lines file; the file may not exist
    /// yet. Decoded in order. `--resume` goes on after the last handled
    /// line: the rest of a file rotated meanwhile (found beside the path),
    /// then the current one; a saved file that is gone or rewritten is
    /// named in a warning and its unread lines are lost. Default: false.
    #[serde(default)]
    pub follow: bool,
}

/// What `--resume` does with a file that is not the one its checkpoint
/// was made on; see [`FileSource::on_rewrite`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnRewrite {
    /// Stop before anything runs, naming the file.
    #[default]
    Refuse,
    /// Read the file again from line 1.
    Restart,
}

impl FileSource {
    /// A minimal configuration.
    pub const EXAMPLE: &str = "path: data/orders.jsonl\nformat: jsonl\n";

    /// Resolves the files and returns the source with the decoder for its
    /// items.
    ///
    /// # Errors
    /// A [`ConfigError`] at the `path` field when the pattern is invalid,
    /// matches nothing, or names a file that cannot be opened; when the
    /// matched files imply different formats; when csv options are given
    /// for another format.
    pub fn build(&self, ctx: &BuildContext) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        if self.follow {
            return self.build_follow(ctx, None);
        }
        let (reader, decoder) = self.prepare(ctx)?;
        Ok((weir::from_try_iter(reader), decoder))
    }

    /// The source of `follow: true`, keeping progress in `checkpoint`
    /// when given: see [`follow`](super::follow).
    fn build_follow(
        &self,
        ctx: &BuildContext,
        checkpoint: Option<Arc<Checkpoint>>,
    ) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        let text = self.path.value.as_str();
        if text.contains(['*', '?', '[']) {
            return Err(ConfigError::at(
                "file source: `follow` reads one file; the path is a glob",
                &self.path,
            ));
        }
        if text.ends_with(".gz") {
            return Err(ConfigError::at(
                "file source: `follow` cannot read a gzip file as it grows",
                &self.path,
            ));
        }
        let format = self.format.unwrap_or_else(|| Format::from_file_name(text));
        let (decoder, skip_blank) = match format {
            Format::Jsonl => (Decoder::jsonl(), true),
            Format::Lines => (Decoder::lines(), false),
            Format::Csv => {
                return Err(ConfigError::at(
                    "file source: `follow` reads jsonl or lines files, not csv",
                    &self.path,
                ));
            }
        };
        let mut lines = super::follow::Follow::new(
            ctx.base_dir.join(text),
            text,
            ctx.input.clone(),
            self.invalid_utf8,
            skip_blank,
        );
        use futures::StreamExt as _;
        let Some(cp) = checkpoint else {
            let raws = super::live::stream(lines, "a followed file").map(|r| r.map(|(raw, _)| raw));
            return Ok((weir::from_try_stream(raws), decoder));
        };
        let said = lines
            .keep_progress(cp)
            .map_err(|e| ConfigError::new(format!("checkpoint database: {e}")))?;
        for line in said {
            eprintln!("{line}");
        }
        // Every line carries an ack once progress is kept.
        let acked = super::live::stream(lines, "a followed file")
            .map(|r| r.map(|(raw, ack)| (raw, ack.unwrap_or_else(|| weir::Ack::new(|_| {})))));
        Ok((weir::from_try_acked_stream(acked), decoder))
    }

    /// Like [`build`](Self::build), with progress kept in `checkpoint`: each
    /// line carries an ack that marks it done once its records are committed,
    /// and lines an earlier run finished are skipped (`weir run --resume`).
    /// Each file's [`FileIdentity`] is recorded; a file whose checkpoint was
    /// made on other content is refused or restarted, as `on_rewrite` says.
    ///
    /// # Errors
    /// As [`build`](Self::build); a file that cannot be read; with
    /// `on_rewrite: refuse`, files that changed since the checkpoint other
    /// than by growing (every one is named).
    pub fn build_resumable(
        &self,
        ctx: &BuildContext,
        checkpoint: Arc<Checkpoint>,
    ) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        let (reader, decoder) = self.prepare(ctx)?;
        self.check_identities(ctx, &reader.files, &checkpoint)?;
        let items = Resumable {
            reader,
            input: ctx.input.clone(),
            checkpoint,
            current: None,
            chunk: None,
        };
        Ok((weir::from_try_acked_iter(items), decoder))
    }

    /// Records what each file is, and checks that each file with progress
    /// in the checkpoint is the file (perhaps grown) that progress counts.
    fn check_identities(
        &self,
        ctx: &BuildContext,
        files: &VecDeque<FileEntry>,
        checkpoint: &Checkpoint,
    ) -> Result<(), ConfigError> {
        let input = &*ctx.input;
        let unreadable = |f: &FileEntry, e: io::Error| {
            ConfigError::at(
                format!("file source: cannot read {}: {e}", f.display),
                &self.path,
            )
        };
        let mut changed = Vec::new();
        for f in files {
            let file = &*f.display;
            let now = FileIdentity::of(&f.path).map_err(|e| unreadable(f, e))?;
            let verdict = match checkpoint.saved(input, file) {
                Some(saved) if saved.line > 0 => match &saved.identity {
                    Some(then) => then
                        .continued_by(&now, &f.path)
                        .map_err(|e| unreadable(f, e))?
                        .map_err(|why| (why, saved.line)),
                    None => Err((
                        "the checkpoint, written by an older weir, does not record what the file was".to_string(),
                        saved.line,
                    )),
                },
                _ => Ok(()),
            };
            match verdict {
                Ok(()) => checkpoint.read_as(input, file, now),
                Err(_) if self.on_rewrite == OnRewrite::Restart => {
                    checkpoint
                        .restart(input, file, now)
                        .map_err(|e| ConfigError::new(format!("checkpoint database: {e}")))?;
                }
                Err((why, done)) => changed.push((file.to_string(), why, done)),
            }
        }
        let message = match changed.as_slice() {
            [] => return Ok(()),
            [(file, why, done)] => format!(
                "--resume: {file} changed since the checkpoint other than by growing ({why}); \
                 resuming would skip its first {done} lines. Run without --resume to start over, \
                 or set `on_rewrite: restart` on this input to read it again from line 1"
            ),
            many => {
                let list: Vec<String> = many
                    .iter()
                    .map(|(file, why, done)| format!("{file} ({why}; {done} lines done)"))
                    .collect();
                format!(
                    "--resume: {} files changed since the checkpoint other than by growing: {}; \
                     resuming would skip those lines. Run without --resume to start over, \
                     or set `on_rewrite: restart` on this input to read them again from line 1",
                    many.len(),
                    list.join(", ")
                )
            }
        };
        Err(ConfigError::at(message, &self.path))
    }

    /// Checks the options and resolves the files: the line reader over
    /// them, and the decoder for its items.
    fn prepare(&self, ctx: &BuildContext) -> Result<(FileReader, Decoder), ConfigError> {
        let files = resolve(&self.path, &ctx.base_dir)?;
        let format = match self.format {
            Some(f) => f,
            None => infer_format(&files, &self.path)?,
        };
        if format != Format::Csv {
            if self.delimiter.is_some() {
                return Err(ConfigError::new(format!(
                    "file source: 'delimiter' applies to csv only, the format is {}",
                    format.name()
                )));
            }
            if !self.columns.is_empty() {
                return Err(ConfigError::new(format!(
                    "file source: 'columns' applies to csv only, the format is {}",
                    format.name()
                )));
            }
        }
        let delimiter = match self.delimiter {
            None => b',',
            Some(c) if c.is_ascii() => c as u8,
            Some(c) => {
                return Err(ConfigError::new(format!(
                    "file source: delimiter '{c}' is not an ASCII character"
                )));
            }
        };
        let reader = FileReader {
            input: ctx.input.clone(),
            format,
            delimiter,
            invalid_utf8: self.invalid_utf8,
            files: files.into(),
            current: None,
        };
        Ok((reader, Decoder::new(format, self.columns.clone())))
    }
}

impl FileSource {
    /// What each file this source would read is now, by name as shown in
    /// positions: a distributed job records them so that a resumed run on
    /// changed files is refused.
    ///
    /// # Errors
    /// As [`build`](Self::build) when the path matches no readable file.
    pub fn identities(&self, base_dir: &Path) -> Result<Vec<(String, FileIdentity)>, ConfigError> {
        resolve(&self.path, base_dir)?
            .into_iter()
            .map(|f| {
                FileIdentity::of(&f.path)
                    .map(|id| (f.display.to_string(), id))
                    .map_err(|e| {
                        ConfigError::at(
                            format!("file source: cannot read {}: {e}", f.display),
                            &self.path,
                        )
                    })
            })
            .collect()
    }

    /// Whether this source reads the file at `path` (relative to
    /// `base_dir`, like the source's own path) or, for a glob, would read
    /// it once it exists: the same file under another spelling, through a
    /// symbolic link or a hard link counts. `weir check` uses it to refuse
    /// outputs that would overwrite their own input.
    pub fn reads(&self, base_dir: &Path, path: &Path) -> bool {
        let pattern = self.path.value.as_str();
        if pattern.is_empty() {
            return false;
        }
        let target = Located::of(&base_dir.join(path));
        if !pattern.contains(['*', '?', '[']) {
            return Located::of(&base_dir.join(pattern)).is(&target);
        }
        // The pattern over the canonical base, so that it can be compared
        // with the canonical target, existing or not.
        let base = Located::of(base_dir).path;
        let full = if Path::new(pattern).is_relative() {
            format!(
                "{}/{pattern}",
                glob::Pattern::escape(&base.to_string_lossy()).trim_end_matches('/')
            )
        } else {
            pattern.to_string()
        };
        let full = lexical(Path::new(&full)).to_string_lossy().into_owned();
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::new()
        };
        if glob::Pattern::new(&full).is_ok_and(|p| p.matches_path_with(&target.path, options)) {
            return true;
        }
        glob::glob_with(&full, options).is_ok_and(|matches| {
            matches
                .flatten()
                .any(|m| m.is_file() && Located::of(&m).is(&target))
        })
    }
}

/// Whether `a` and `b` name the same file (existing or not), under any
/// spelling, through links.
pub fn same_file(a: &Path, b: &Path) -> bool {
    Located::of(a).is(&Located::of(b))
}

/// A file by its canonical path and, when it exists, its device and inode.
struct Located {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl Located {
    /// Canonical when `p` exists; else its canonical directory and its
    /// name; else `p` made absolute with `.` and `..` resolved by hand.
    fn of(p: &Path) -> Located {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        if let Ok(path) = std::fs::canonicalize(p) {
            return Located {
                id: file_id(&path),
                path,
            };
        }
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        let abs = lexical(&abs);
        let path = match (abs.parent(), abs.file_name()) {
            (Some(dir), Some(name)) => match std::fs::canonicalize(dir) {
                Ok(d) => d.join(name),
                Err(_) => abs,
            },
            _ => abs,
        };
        Located { path, id: None }
    }

    fn is(&self, other: &Located) -> bool {
        self.path == other.path || (self.id.is_some() && self.id == other.id)
    }
}

/// `p` with `.` dropped and `..` taking off the component before it.
fn lexical(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(unix)]
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &Path) -> Option<(u64, u64)> {
    None
}

/// A [`FileReader`] that skips what a checkpoint says is done and gives
/// every line a fork of its chunk's ack.
struct Resumable {
    reader: FileReader,
    input: Arc<str>,
    checkpoint: Arc<Checkpoint>,
    /// The file being read and its resume point, looked up once per file.
    current: Option<(Arc<str>, u64)>,
    chunk: Option<Chunk>,
}

impl Iterator for Resumable {
    type Item = Result<(Raw, weir::Ack), ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let raw = match self.reader.next() {
                None => {
                    if let Some(c) = self.chunk.take() {
                        c.close();
                    }
                    return None;
                }
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(raw)) => raw,
            };
            let pos = raw.pos().clone();
            let file = pos.file.clone().unwrap_or_else(|| Arc::from(""));
            let skip_to = match &self.current {
                Some((f, n)) if Arc::ptr_eq(f, &file) => *n,
                _ => {
                    let n = self.checkpoint.resume_after(&self.input, &file);
                    self.current = Some((file.clone(), n));
                    n
                }
            };
            if pos.line <= skip_to {
                continue;
            }
            let full = self
                .chunk
                .as_ref()
                .is_some_and(|c| c.len() >= CHUNK_LINES || !Arc::ptr_eq(c.file(), &file));
            if full && let Some(c) = self.chunk.take() {
                c.close();
            }
            let chunk = self
                .chunk
                .get_or_insert_with(|| self.checkpoint.chunk(&self.input, &file));
            let ack = chunk.add(pos.line);
            return Some(Ok((raw, ack)));
        }
    }
}

/// One file to read.
#[derive(Debug, Clone)]
struct FileEntry {
    path: PathBuf,
    /// The name positions and errors use: relative to the pipeline file's
    /// directory when the pattern was relative.
    display: Arc<str>,
    gzip: bool,
}

/// The files `path` names, sorted.
fn resolve(path: &Spanned<String>, base: &Path) -> Result<Vec<FileEntry>, ConfigError> {
    let pattern = path.value.as_str();
    if pattern.is_empty() {
        return Err(ConfigError::at("file source: path is empty", path));
    }
    let relative = Path::new(pattern).is_relative();
    let entry = |p: PathBuf| {
        let shown = if relative {
            p.strip_prefix(base).unwrap_or(&p).to_path_buf()
        } else {
            p.clone()
        };
        let display: Arc<str> = shown.to_string_lossy().into();
        let gzip = display.ends_with(".gz");
        FileEntry {
            path: p,
            display,
            gzip,
        }
    };

    if !pattern.contains(['*', '?', '[']) {
        let full = if relative {
            base.join(pattern)
        } else {
            PathBuf::from(pattern)
        };
        if full.is_dir() {
            return Err(ConfigError::at(
                format!(
                    "file source: '{pattern}' is a directory; use a glob such as '{pattern}/*.jsonl'"
                ),
                path,
            ));
        }
        if let Err(e) = File::open(&full) {
            let why = if e.kind() == io::ErrorKind::NotFound {
                "no such file".to_string()
            } else {
                e.to_string()
            };
            return Err(ConfigError::at(
                format!("file source: cannot open '{pattern}': {why}"),
                path,
            ));
        }
        return Ok(vec![entry(full)]);
    }

    let full = if relative {
        let base = glob::Pattern::escape(&base.to_string_lossy());
        if base.is_empty() {
            pattern.to_string()
        } else {
            format!("{}/{pattern}", base.trim_end_matches('/'))
        }
    } else {
        pattern.to_string()
    };
    let matches = glob::glob(&full).map_err(|e| {
        ConfigError::at(
            format!("file source: invalid glob '{pattern}': {}", e.msg),
            path,
        )
    })?;
    let mut files = Vec::new();
    for m in matches {
        let p = m.map_err(|e| {
            ConfigError::at(
                format!(
                    "file source: cannot read {} while matching '{pattern}': {}",
                    e.path().display(),
                    e.error()
                ),
                path,
            )
        })?;
        if p.is_file() {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(ConfigError::at(
            format!(
                "file source: no file matches '{pattern}' (in {})",
                if base.as_os_str().is_empty() {
                    std::borrow::Cow::Borrowed(".")
                } else {
                    base.to_string_lossy()
                }
            ),
            path,
        ));
    }
    files.sort();
    Ok(files.into_iter().map(entry).collect())
}

/// The format the files' extensions imply, when they agree.
fn infer_format(files: &[FileEntry], path: &Spanned<String>) -> Result<Format, ConfigError> {
    let first = Format::from_file_name(&files[0].display);
    for f in &files[1..] {
        let other = Format::from_file_name(&f.display);
        if other != first {
            return Err(ConfigError::at(
                format!(
                    "file source: the files have different formats ({} is {}, {} is {}); set 'format'",
                    files[0].display,
                    first.name(),
                    f.display,
                    other.name()
                ),
                path,
            ));
        }
    }
    Ok(first)
}

/// A file that could not be read: stops the run.
#[derive(Debug)]
pub struct ReadError {
    /// The file, as positions name it.
    pub file: Arc<str>,
    /// The line being read, when the file was open.
    pub line: Option<u64>,
    /// The I/O error.
    pub source: io::Error,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "cannot read {} at line {line}: {}",
                self.file, self.source
            ),
            None => write!(f, "cannot open {}: {}", self.file, self.source),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads lines from a buffered reader: 1-based line numbers, newline (and a
/// `\r` before it) removed, invalid UTF-8 handled as `invalid_utf8` says.
pub(crate) struct LineReader<R> {
    reader: R,
    buf: Vec<u8>,
    line: u64,
    invalid_utf8: InvalidUtf8,
}

impl<R: BufRead> LineReader<R> {
    pub(crate) fn new(reader: R, invalid_utf8: InvalidUtf8) -> Self {
        LineReader {
            reader,
            buf: Vec::with_capacity(1024),
            line: 0,
            invalid_utf8,
        }
    }

    /// The number of the line read last (0 before the first).
    pub(crate) fn line(&self) -> u64 {
        self.line
    }

    /// The next line and its number; `None` at the end.
    pub(crate) fn next_line(&mut self) -> Option<io::Result<(u64, Text)>> {
        self.buf.clear();
        match self.reader.read_until(b'\n', &mut self.buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(e)),
        }
        self.line += 1;
        let mut bytes = self.buf.as_slice();
        if let Some(b) = bytes.strip_suffix(b"\n") {
            bytes = b;
            if let Some(b) = bytes.strip_suffix(b"\r") {
                bytes = b;
            }
        }
        Some(Ok((
            self.line,
            Text::decode(bytes, self.invalid_utf8, "line"),
        )))
    }
}

impl<R: io::Read> LineReader<BufReader<R>> {
    /// Bytes read ahead and not yet returned. Unless they hold a newline,
    /// the next line needs a read from the underlying reader (which may
    /// wait).
    pub(crate) fn buffered(&self) -> &[u8] {
        self.reader.buffer()
    }
}

/// True for a line with nothing but whitespace.
pub(crate) fn is_blank(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_whitespace())
}

/// The file being read.
enum Current {
    Lines {
        file: Arc<str>,
        reader: LineReader<Box<dyn BufRead + Send>>,
    },
    Csv {
        file: Arc<str>,
        reader: csv::Reader<Box<dyn Read + Send>>,
        headers: Arc<[String]>,
        record: csv::ByteRecord,
    },
}

/// The source's iterator: every file in turn, one [`Raw`] per line or CSV
/// record. Each item's position (file, line) is all a later checkpointing
/// reader needs to attach an ack per line.
struct FileReader {
    input: Arc<str>,
    format: Format,
    delimiter: u8,
    invalid_utf8: InvalidUtf8,
    files: VecDeque<FileEntry>,
    current: Option<Current>,
}

impl FileReader {
    fn open(&self, entry: &FileEntry) -> Result<Current, ReadError> {
        let fail = |source| ReadError {
            file: entry.display.clone(),
            line: None,
            source,
        };
        let file = File::open(&entry.path).map_err(fail)?;
        let raw: Box<dyn Read + Send> = if entry.gzip {
            Box::new(flate2::bufread::MultiGzDecoder::new(
                BufReader::with_capacity(BUF_SIZE, file),
            ))
        } else {
            Box::new(file)
        };
        match self.format {
            Format::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .delimiter(self.delimiter)
                    .flexible(true)
                    .has_headers(true)
                    .buffer_capacity(BUF_SIZE)
                    .from_reader(raw);
                let headers: Arc<[String]> = match reader.byte_headers() {
                    Ok(h) => {
                        let mut names = Vec::with_capacity(h.len());
                        for (i, f) in h.iter().enumerate() {
                            match Text::decode(f, self.invalid_utf8, "field") {
                                Text::Valid(name) => names.push(name),
                                Text::Invalid { detail, .. } => {
                                    return Err(ReadError {
                                        file: entry.display.clone(),
                                        line: Some(1),
                                        source: io::Error::new(
                                            io::ErrorKind::InvalidData,
                                            format!(
                                                "header field {}: {detail}; set `invalid_utf8: replace` to read it anyway",
                                                i + 1
                                            ),
                                        ),
                                    });
                                }
                            }
                        }
                        names.into()
                    }
                    Err(e) => {
                        return Err(ReadError {
                            file: entry.display.clone(),
                            line: Some(1),
                            source: csv_io(e),
                        });
                    }
                };
                Ok(Current::Csv {
                    file: entry.display.clone(),
                    reader,
                    headers,
                    record: csv::ByteRecord::new(),
                })
            }
            Format::Jsonl | Format::Lines => Ok(Current::Lines {
                file: entry.display.clone(),
                reader: LineReader::new(
                    Box::new(BufReader::with_capacity(BUF_SIZE, raw)),
                    self.invalid_utf8,
                ),
            }),
        }
    }

    /// The next item of the current file; `None` when it is exhausted.
    fn next_in_current(&mut self) -> Option<Result<Raw, ReadError>> {
        let skip_blank = self.format == Format::Jsonl;
        let invalid_utf8 = self.invalid_utf8;
        let input = &self.input;
        let pos = |file: &Arc<str>, line: u64| {
            Arc::new(Position {
                input: input.clone(),
                file: Some(file.clone()),
                line,
            })
        };
        let cur = self.current.as_mut()?;
        match cur {
            Current::Lines { file, reader } => loop {
                match reader.next_line()? {
                    Ok((_, Text::Valid(text))) if skip_blank && is_blank(&text) => continue,
                    Ok((line, text)) => {
                        return Some(Ok(super::raw_from_text(pos(file, line), text)));
                    }
                    Err(source) => {
                        return Some(Err(ReadError {
                            file: file.clone(),
                            line: Some(reader.line() + 1),
                            source,
                        }));
                    }
                }
            },
            Current::Csv {
                file,
                reader,
                headers,
                record,
            } => match reader.read_byte_record(record) {
                Ok(false) => None,
                Ok(true) => {
                    let line = record.position().map_or(0, |p| p.line());
                    let mut fields = Vec::with_capacity(record.len());
                    let mut invalid = None;
                    for (i, f) in record.iter().enumerate() {
                        match Text::decode(f, invalid_utf8, "field") {
                            Text::Valid(s) => fields.push(s),
                            Text::Invalid { lossy, detail } => {
                                invalid.get_or_insert_with(|| match headers.get(i) {
                                    Some(name) => format!("column {name}: {detail}"),
                                    None => format!("field {}: {detail}", i + 1),
                                });
                                fields.push(lossy);
                            }
                        }
                    }
                    let pos = pos(file, line);
                    Some(Ok(match invalid {
                        None => Raw::Row {
                            pos,
                            headers: headers.clone(),
                            fields,
                        },
                        Some(detail) => Raw::NotUtf8 {
                            pos,
                            text: csv_line(&fields),
                            detail,
                        },
                    }))
                }
                Err(e) => {
                    let line = e.position().map_or(reader.position().line(), |p| p.line());
                    Some(Err(ReadError {
                        file: file.clone(),
                        line: Some(line),
                        source: csv_io(e),
                    }))
                }
            },
        }
    }
}

/// A csv error as an I/O error (the I/O error itself when it is one).
fn csv_io(e: csv::Error) -> io::Error {
    if e.is_io_error() {
        match e.into_kind() {
            csv::ErrorKind::Io(io) => io,
            other => io::Error::other(format!("{other:?}")),
        }
    } else {
        io::Error::other(e.to_string())
    }
}

impl Iterator for FileReader {
    type Item = Result<Raw, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_some() {
                match self.next_in_current() {
                    Some(Err(e)) => {
                        // A failed file stops the source: nothing after it.
                        self.current = None;
                        self.files.clear();
                        return Some(Err(e));
                    }
                    Some(item) => return Some(item),
                    None => self.current = None,
                }
            }
            let entry = self.files.pop_front()?;
            match self.open(&entry) {
                Ok(c) => self.current = Some(c),
                Err(e) => {
                    self.files.clear();
                    return Some(Err(e));
                }
            }
        }
    }
}

impl crate::registry::Documented for FileSource {
    const EXAMPLE: &'static str = FileSource::EXAMPLE;
}

impl crate::registry::SourceComponent for FileSource {
    fn build(
        &self,
        ctx: &BuildContext,
        checkpoint: Option<Arc<crate::checkpoint::Checkpoint>>,
    ) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        match checkpoint {
            Some(cp) if self.follow => self.build_follow(ctx, Some(cp)),
            Some(cp) => self.build_resumable(ctx, cp),
            _ => FileSource::build(self, ctx),
        }
    }

    fn files(&self) -> Option<&FileSource> {
        Some(self)
    }

    /// A followed file is a stream: in its order.
    fn default_decode_workers(&self) -> usize {
        if self.follow { 1 } else { 2 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_builds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/orders.jsonl"), "{\"a\":1}\n").unwrap();
        let cfg: FileSource = serde_saphyr::from_str(FileSource::EXAMPLE).unwrap();
        let ctx = BuildContext {
            input: "orders".into(),
            base_dir: dir.path().to_path_buf(),
            state: None,
        };
        let (_source, decoder) = cfg.build(&ctx).unwrap();
        assert_eq!(decoder.format(), Format::Jsonl);
    }

    #[test]
    fn line_reader_strips_newlines_and_flags_bad_utf8() {
        let data: &[u8] = b"a\r\nb\xff\r\n\nlast";
        for policy in [InvalidUtf8::DeadLetter, InvalidUtf8::Replace] {
            let mut r = LineReader::new(data, policy);
            let mut got = Vec::new();
            while let Some(l) = r.next_line() {
                got.push(match l.unwrap() {
                    (n, Text::Valid(s)) => (n, s, None),
                    (n, Text::Invalid { lossy, detail }) => (n, lossy, Some(detail)),
                });
            }
            let bad = (policy == InvalidUtf8::DeadLetter)
                .then(|| "invalid UTF-8 at byte offset 1 of the line (0xff)".to_string());
            assert_eq!(
                got,
                vec![
                    (1, "a".to_string(), None),
                    (2, "b\u{fffd}".to_string(), bad),
                    (3, String::new(), None),
                    (4, "last".to_string(), None),
                ]
            );
        }
    }
}
