//! Checkpoints for `weir run --resume`: which lines of which input files
//! are done, kept in SQLite.
//!
//! Every line a file source emits carries a fork of its chunk's
//! [`weir::Ack`] (a chunk is up to [`CHUNK_LINES`] consecutive lines). When
//! the chunk's ack settles as handled (every record derived from its lines
//! committed by the sinks, or dead-lettered), its lines are done. Per file, the checkpoint is
//! the *watermark*: the highest line such that every emitted line up to it
//! is done. A resumed run skips the lines up to the watermark.
//!
//! Guarantees, stated plainly:
//! * a line is never skipped unless it was handled: the watermark only moves
//!   past lines whose acks settled as delivered or dead-lettered;
//! * lines handled after the last saved watermark are processed again on
//!   resume, so outputs must be idempotent (a `sqlite` output with a `key`
//!   upserts; a keyless table could get a row twice; the dead-letter file
//!   skips the letters it already holds, see
//!   [`DeadLetterFile::append`](crate::sinks::dead_letter::DeadLetterFile::append));
//! * records that feed a whole-input aggregate are acknowledged only when the
//!   aggregate is written at the end, so such a pipeline saves no progress
//!   before it finishes (resuming it starts over, which is still exact).
//!
//! The watermark is saved at most every [`SAVE_EVERY`] and when the run ends.
//!
//! # Which file a watermark belongs to
//! A watermark counts lines, so it is only valid for the file it was taken
//! from, or that file with lines appended. Next to each watermark the
//! checkpoint keeps the file's [`FileIdentity`] (size, modification time,
//! device and inode, and a SHA-256 of its first and last
//! [`SAMPLE_BYTES`] as of the run that read it). On resume, a file that is
//! at least as long as recorded and holds the same bytes at those places
//! was appended to (or not touched): its watermark holds. Any other file
//! under that name (truncated, rewritten, rotated) is not the file the
//! watermark counted, and the file source refuses to skip its lines (or,
//! when told to, reads it again from line 1). An edit in the middle of a
//! large file that keeps its size and both samples goes unnoticed: reading
//! the whole file again to hash it would double the cost of every run.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::OptionalExtension as _;
use sha2::Digest as _;

use crate::error::ConfigError;

pub mod follow;
pub use follow::{FollowRow, Mark, Next};

/// Lines per chunk: one ack, and one entry in a whole-input aggregate,
/// per this many lines.
pub const CHUNK_LINES: usize = 1024;

/// How often completed progress is written to the database at most.
pub const SAVE_EVERY: Duration = Duration::from_millis(200);

/// Lines emitted and not yet done, as ranges `start -> end` (inclusive), with
/// the last emitted line: memory follows the number of gaps in flight, not
/// the number of lines (a whole-input aggregate holds one range).
#[derive(Debug, Default)]
struct Track {
    pending: BTreeMap<u64, u64>,
    last_emitted: u64,
    /// The watermark already in the database.
    saved: u64,
    /// A followed file's [`Mark`] at the last line of each chunk not yet
    /// saved (empty for other files).
    marks: BTreeMap<u64, Mark>,
}

impl Track {
    fn emit(&mut self, line: u64) {
        if let Some((_, end)) = self.pending.iter_mut().next_back()
            && *end + 1 == line
        {
            *end = line;
        } else {
            self.pending.insert(line, line);
        }
        self.last_emitted = self.last_emitted.max(line);
    }

    /// Every pending line in `first..=last` is done.
    fn done_range(&mut self, first: u64, last: u64) {
        let overlapping: Vec<(u64, u64)> = self
            .pending
            .range(..=last)
            .filter(|(_, end)| **end >= first)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (start, end) in overlapping {
            self.pending.remove(&start);
            if start < first {
                self.pending.insert(start, first - 1);
            }
            if end > last {
                self.pending.insert(last + 1, end);
            }
        }
    }

    fn watermark(&self) -> u64 {
        match self.pending.keys().next() {
            Some(first) => first - 1,
            None => self.last_emitted,
        }
    }
}

type Key = (Arc<str>, Arc<str>);

/// Bytes hashed at each end of a file for its [`FileIdentity`]: enough to
/// tell a rotated or regenerated file from the one that was read (they
/// rarely share both their first and last 4 KiB), cheap enough to read on
/// every run.
pub const SAMPLE_BYTES: u64 = 4096;

/// What a file was when a run read it; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    /// Its length in bytes.
    pub size: u64,
    /// Its modification time, in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// The device it is on (0 where there is none to ask).
    pub dev: u64,
    /// Its inode (0 where there is none to ask).
    pub ino: u64,
    /// SHA-256 of its first [`SAMPLE_BYTES`] and of its last ones before
    /// `size` (each byte once when the two overlap).
    pub sample: [u8; 32],
}

impl FileIdentity {
    /// The identity of the file at `path` now.
    ///
    /// # Errors
    /// When the file cannot be opened or read.
    pub fn of(path: &Path) -> std::io::Result<FileIdentity> {
        let mut f = std::fs::File::open(path)?;
        let meta = f.metadata()?;
        let size = meta.len();
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let (dev, ino) = dev_ino(&meta);
        Ok(FileIdentity {
            size,
            mtime_ns,
            dev,
            ino,
            sample: sample(&mut f, size)?,
        })
    }

    /// Whether `now` (the identity of the file at the same path) is this
    /// file, possibly with bytes appended; if not, why, in words.
    ///
    /// # Errors
    /// When the file must be read again (it grew) and cannot be.
    pub fn continued_by(
        &self,
        now: &FileIdentity,
        path: &Path,
    ) -> std::io::Result<Result<(), String>> {
        if now.size < self.size {
            return Ok(Err(format!(
                "it is shorter: {} bytes, {} when checkpointed",
                now.size, self.size
            )));
        }
        // The same places, in the file as it is now.
        let same = if now.size == self.size {
            now.sample == self.sample
        } else {
            let mut f = std::fs::File::open(path)?;
            sample(&mut f, self.size)? == self.sample
        };
        if same {
            return Ok(Ok(()));
        }
        let replaced = (self.dev, self.ino) != (now.dev, now.ino) && self.ino != 0;
        Ok(Err(if replaced {
            format!(
                "it was replaced (inode {}, was {}) and its content changed",
                now.ino, self.ino
            )
        } else {
            "its content changed".to_string()
        }))
    }
}

#[cfg(unix)]
fn dev_ino(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn dev_ino(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// SHA-256 of the first [`SAMPLE_BYTES`] of `f` and of the last ones
/// before `size`.
fn sample(f: &mut std::fs::File, size: u64) -> std::io::Result<[u8; 32]> {
    let head = size.min(SAMPLE_BYTES);
    let tail_start = size.saturating_sub(SAMPLE_BYTES).max(head);
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0; SAMPLE_BYTES as usize];
    for (start, end) in [(0, head), (tail_start, size)] {
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().into())
}

/// What a checkpoint says about one file: where to resume, and what the
/// file was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Every line up to this one is done.
    pub line: u64,
    /// The file as the run that saved `line` read it; `None` in checkpoints
    /// written before identities were kept.
    pub identity: Option<FileIdentity>,
}

/// Consecutive lines of one file sharing one ack; see [`Checkpoint::chunk`].
pub struct Chunk {
    cp: Arc<Checkpoint>,
    key: Key,
    /// The chunk's own fork, settled by [`close`](Chunk::close): until then
    /// the chunk's callback cannot run, so its line range is final when it
    /// does.
    ack: weir::Ack,
    first: Arc<std::sync::atomic::AtomicU64>,
    last: Arc<std::sync::atomic::AtomicU64>,
    lines: usize,
}

impl Chunk {
    /// Adds `line` (lines come in increasing order); returns its ack.
    pub fn add(&mut self, line: u64) -> weir::Ack {
        use std::sync::atomic::Ordering::Release;
        self.cp.register(&self.key, line);
        if self.lines == 0 {
            self.first.store(line, Release);
        }
        self.last.store(line, Release);
        self.lines += 1;
        self.ack.fork()
    }

    /// Lines added so far.
    pub fn len(&self) -> usize {
        self.lines
    }

    /// True when no line was added.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The file the chunk belongs to.
    pub fn file(&self) -> &Arc<str> {
        &self.key.1
    }

    /// No more lines: the chunk is done once its lines are.
    pub fn close(self) {
        self.ack.deliver();
    }

    /// Like [`close`](Self::close), for a followed file: `mark` says where
    /// the file stands after the chunk's last line, which is what is saved
    /// once the chunk's lines are done.
    pub fn close_at(self, mark: Mark) {
        let last = self.last.load(std::sync::atomic::Ordering::Acquire);
        if self.lines > 0 {
            let mut tracks = lock(&self.cp.tracks);
            if let Some(t) = tracks.get_mut(&self.key) {
                t.marks.insert(last, mark);
            }
        }
        self.cp.follow_read(&self.key.0, &self.key.1, &mark);
        self.ack.deliver();
    }
}

/// The progress of one pipeline's file inputs.
pub struct Checkpoint {
    conn: Mutex<Connection>,
    pipeline: String,
    /// Watermarks found at start (what a resumed run skips), less the files
    /// restarted since.
    resume: Mutex<HashMap<(String, String), Saved>>,
    /// What each file read by this run is, saved with its watermark.
    identities: Mutex<HashMap<(String, String), FileIdentity>>,
    tracks: Mutex<HashMap<Key, Track>>,
    last_save: Mutex<Instant>,
    /// Followed files: what each tracked one is, and the rows found at
    /// start (see [`follow`]).
    follows: Mutex<follow::Follows>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// Opens (creating) the checkpoint database at `db` for the pipeline
    /// identified by `pipeline`. Without `resume` the pipeline's earlier
    /// progress is forgotten: the run starts from the first line.
    ///
    /// # Errors
    /// When the database cannot be opened or written.
    pub fn open(db: &Path, pipeline: &str, resume: bool) -> Result<Arc<Self>, ConfigError> {
        let fail = |e: rusqlite::Error| {
            ConfigError::new(format!("checkpoint database {}: {e}", db.display()))
        };
        if let Some(dir) = db.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| ConfigError::new(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(db).map_err(fail)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(fail)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS checkpoints (
               pipeline TEXT NOT NULL, input TEXT NOT NULL, file TEXT NOT NULL, line INTEGER NOT NULL,
               size INTEGER, mtime_ns INTEGER, dev INTEGER, ino INTEGER, sample BLOB,
               PRIMARY KEY (pipeline, input, file))",
        )
        .map_err(fail)?;
        // A database from before identities were kept: add their columns
        // (NULL in old rows, which then cannot be resumed blindly).
        let has_identity = conn
            .query_row(
                "SELECT 1 FROM pragma_table_info('checkpoints') WHERE name = 'sample'",
                [],
                |_| Ok(()),
            )
            .optional()
            .map_err(fail)?
            .is_some();
        if !has_identity {
            conn.execute_batch(
                "ALTER TABLE checkpoints ADD COLUMN size INTEGER;
                 ALTER TABLE checkpoints ADD COLUMN mtime_ns INTEGER;
                 ALTER TABLE checkpoints ADD COLUMN dev INTEGER;
                 ALTER TABLE checkpoints ADD COLUMN ino INTEGER;
                 ALTER TABLE checkpoints ADD COLUMN sample BLOB;",
            )
            .map_err(fail)?;
        }
        if !resume {
            conn.execute("DELETE FROM checkpoints WHERE pipeline = ?1", [pipeline])
                .map_err(fail)?;
        }
        let follows = follow::Follows::open(&conn, pipeline, resume).map_err(fail)?;
        let mut resume_at = HashMap::new();
        {
            let mut stmt = conn
                .prepare(
                    "SELECT input, file, line, size, mtime_ns, dev, ino, sample
                     FROM checkpoints WHERE pipeline = ?1",
                )
                .map_err(fail)?;
            let rows = stmt
                .query_map([pipeline], |r| {
                    let sample: Option<Vec<u8>> = r.get(7)?;
                    let identity = match (r.get::<_, Option<i64>>(3)?, sample) {
                        (Some(size), Some(sample)) => {
                            sample.try_into().ok().map(|sample| FileIdentity {
                                size: size.max(0) as u64,
                                mtime_ns: r.get::<_, Option<i64>>(4).ok().flatten().unwrap_or(0),
                                dev: r.get::<_, Option<i64>>(5).ok().flatten().unwrap_or(0) as u64,
                                ino: r.get::<_, Option<i64>>(6).ok().flatten().unwrap_or(0) as u64,
                                sample,
                            })
                        }
                        _ => None,
                    };
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        Saved {
                            line: r.get::<_, i64>(2)?.max(0) as u64,
                            identity,
                        },
                    ))
                })
                .map_err(fail)?;
            for row in rows {
                let (input, file, saved) = row.map_err(fail)?;
                resume_at.insert((input, file), saved);
            }
        }
        Ok(Arc::new(Checkpoint {
            conn: Mutex::new(conn),
            pipeline: pipeline.to_string(),
            resume: Mutex::new(resume_at),
            identities: Mutex::new(HashMap::new()),
            tracks: Mutex::new(HashMap::new()),
            last_save: Mutex::new(Instant::now()),
            follows: Mutex::new(follows),
        }))
    }

    /// Lines of `file` (read by `input`) up to this one are done: a resumed
    /// run skips them.
    pub fn resume_after(&self, input: &str, file: &str) -> u64 {
        self.saved(input, file).map_or(0, |s| s.line)
    }

    /// What the checkpoint holds for `file` (read by `input`), if anything.
    pub fn saved(&self, input: &str, file: &str) -> Option<Saved> {
        lock(&self.resume)
            .get(&(input.to_string(), file.to_string()))
            .cloned()
    }

    /// Records what `file` is in this run: its watermarks are saved with
    /// `identity`, for the next resume to check.
    pub fn read_as(&self, input: &str, file: &str, identity: FileIdentity) {
        lock(&self.identities).insert((input.to_string(), file.to_string()), identity);
    }

    /// Forgets the progress of `file` (read by `input`), which is not the
    /// file it was made on: this run reads it from line 1, and the
    /// database says so at once, so that a run killed before its first save
    /// does not resume the old watermark on the new file.
    ///
    /// # Errors
    /// When the database write fails.
    pub fn restart(&self, input: &str, file: &str, identity: FileIdentity) -> Result<(), String> {
        let key = (input.to_string(), file.to_string());
        lock(&self.resume).remove(&key);
        lock(&self.identities).insert(key, identity.clone());
        let conn = lock(&self.conn);
        write_row(&conn, &self.pipeline, input, file, 0, Some(&identity))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Starts a chunk of lines of `file` that will share one ack: the
    /// checkpoint then costs one ack per chunk, not per line (what a
    /// whole-input aggregate holds until the end is one ack per chunk).
    pub fn chunk(self: &Arc<Self>, input: &Arc<str>, file: &Arc<str>) -> Chunk {
        let key: Key = (input.clone(), file.clone());
        let first = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let last = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (me, k, f, l) = (self.clone(), key.clone(), first.clone(), last.clone());
        let ack = weir::Ack::new(move |outcome| {
            if outcome.is_handled() {
                use std::sync::atomic::Ordering::Acquire;
                me.done(&k, f.load(Acquire), l.load(Acquire));
            }
        });
        Chunk {
            cp: self.clone(),
            key,
            ack,
            first,
            last,
            lines: 0,
        }
    }

    fn register(&self, key: &Key, line: u64) {
        let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let t = tracks.entry(key.clone()).or_insert_with(|| {
            let base = self.resume_after(&key.0, &key.1);
            Track {
                last_emitted: base,
                saved: base,
                ..Track::default()
            }
        });
        t.emit(line);
    }

    fn done(&self, key: &Key, first: u64, last: u64) {
        {
            let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = tracks.get_mut(key) {
                t.done_range(first, last);
            }
        }
        // Save now and then, from whichever thread finishes a chunk; never
        // wait for another thread that is saving.
        self.tick();
    }

    /// Saves when the last save is [`SAVE_EVERY`] old: for a reader that
    /// waits (a followed file), whose last chunk's acks may have come
    /// just after a save, with no later ack to save them.
    pub fn tick(&self) {
        let due = match self.last_save.try_lock() {
            Ok(mut last) if last.elapsed() >= SAVE_EVERY => {
                *last = Instant::now();
                true
            }
            _ => false,
        };
        if due {
            let _ = self.save();
        }
    }

    /// Writes the current watermarks.
    ///
    /// # Errors
    /// When the database write fails.
    pub fn save(&self) -> Result<(), String> {
        let (changed, finished) = {
            let mut tracks = lock(&self.tracks);
            let follows = lock(&self.follows);
            let changed: Vec<(Key, u64, Option<Mark>)> = tracks
                .iter_mut()
                .filter_map(|(k, t)| {
                    let w = t.watermark();
                    if w <= t.saved {
                        return None;
                    }
                    t.saved = w;
                    // A followed file resumes at the last chunk's end at
                    // or before the watermark (blank lines between chunks
                    // are not emitted, so the watermark may pass it).
                    let mark = t.marks.range(..=w).next_back().map(|(l, m)| (*l, *m));
                    if let Some((l, _)) = mark {
                        t.marks = t.marks.split_off(&l);
                    }
                    Some((k.clone(), w, mark.map(|(_, m)| m)))
                })
                .collect();
            // Followed files rotated away whose every line is done: their
            // rows go, and so does their tracking.
            let finished: Vec<Key> = tracks
                .iter()
                .filter(|(k, t)| t.pending.is_empty() && follows.ended(k))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &finished {
                tracks.remove(k);
            }
            (changed, finished)
        };
        let heads = lock(&self.follows).heads_to_save();
        if changed.is_empty() && finished.is_empty() && heads.is_empty() {
            return Ok(());
        }
        let identities = lock(&self.identities).clone();
        let mut follows = lock(&self.follows);
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        let mut written = std::collections::HashSet::new();
        for ((input, file), line, mark) in changed {
            let key = (input.clone(), file.clone());
            if follows.is_followed(&key) {
                if let Some(mark) = mark {
                    follows
                        .write(&tx, &self.pipeline, &key, &mark)
                        .map_err(|e| e.to_string())?;
                    written.insert(key);
                }
                continue;
            }
            let identity = identities.get(&(input.to_string(), file.to_string()));
            write_row(&tx, &self.pipeline, &input, &file, line, identity)
                .map_err(|e| e.to_string())?;
        }
        for (key, mark) in heads {
            if !written.contains(&key) {
                follows
                    .write(&tx, &self.pipeline, &key, &mark)
                    .map_err(|e| e.to_string())?;
            }
        }
        for k in finished {
            follows
                .finish(&tx, &self.pipeline, &k)
                .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())
    }
}

/// A poisoned lock still holds consistent data here (every critical
/// section is a map update), so take it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Upserts one file's watermark and identity.
fn write_row(
    conn: &Connection,
    pipeline: &str,
    input: &str,
    file: &str,
    line: u64,
    identity: Option<&FileIdentity>,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO checkpoints (pipeline, input, file, line, size, mtime_ns, dev, ino, sample)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (pipeline, input, file) DO UPDATE SET line = excluded.line,
           size = excluded.size, mtime_ns = excluded.mtime_ns, dev = excluded.dev,
           ino = excluded.ino, sample = excluded.sample",
        rusqlite::params![
            pipeline,
            input,
            file,
            line as i64,
            identity.map(|i| i.size as i64),
            identity.map(|i| i.mtime_ns),
            identity.map(|i| i.dev as i64),
            identity.map(|i| i.ino as i64),
            identity.map(|i| i.sample.to_vec()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_follows_the_done_prefix_over_gaps() {
        let mut t = Track::default();
        for l in [1, 2, 3, 5, 6, 9] {
            t.emit(l);
        }
        assert_eq!(t.watermark(), 0);
        t.done_range(2, 2);
        assert_eq!(t.watermark(), 0);
        t.done_range(1, 1);
        assert_eq!(t.watermark(), 2);
        t.done_range(5, 5);
        t.done_range(3, 3);
        assert_eq!(t.watermark(), 5, "line 4 was never emitted (blank)");
        t.done_range(9, 9);
        assert_eq!(t.watermark(), 5);
        t.done_range(6, 6);
        assert_eq!(t.watermark(), 9);
        assert!(t.pending.is_empty());
        for l in 10..=20 {
            t.emit(l);
        }
        t.done_range(14, 16);
        t.done_range(10, 13);
        assert_eq!(t.watermark(), 16);
        t.done_range(17, 25);
        assert_eq!(t.watermark(), 20);
    }

    #[test]
    fn identities_tell_appends_from_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        // Larger than both samples, so that the middle is not hashed.
        let text: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&p, &text).unwrap();
        let then = FileIdentity::of(&p).unwrap();
        assert_eq!(then.size, 20_000);
        let verdict = |bytes: &[u8]| {
            std::fs::write(&p, bytes).unwrap();
            then.continued_by(&FileIdentity::of(&p).unwrap(), &p)
                .unwrap()
        };
        assert_eq!(verdict(&text), Ok(()));
        let mut grown = text.clone();
        grown.extend_from_slice(b"more\n");
        assert_eq!(verdict(&grown), Ok(()));
        assert_eq!(
            verdict(&text[..100]),
            Err("it is shorter: 100 bytes, 20000 when checkpointed".into())
        );
        for at in [0, 19_999, 10_000] {
            let mut edited = text.clone();
            edited[at] = b'#';
            // A change in either sample is seen; in between it is not (see
            // the module docs).
            let want = if at == 10_000 {
                Ok(())
            } else {
                Err("its content changed".to_string())
            };
            assert_eq!(verdict(&edited), want, "byte {at}");
            edited.extend_from_slice(b"grown too\n");
            assert_eq!(verdict(&edited), want, "byte {at}, grown");
        }
        // Small files are hashed whole.
        std::fs::write(&p, b"ab\n").unwrap();
        let small = FileIdentity::of(&p).unwrap();
        std::fs::write(&p, b"ac\nd\n").unwrap();
        let now = FileIdentity::of(&p).unwrap();
        assert_eq!(
            small.continued_by(&now, &p).unwrap(),
            Err("its content changed".into())
        );
    }

    /// A database from before identities were kept: its watermarks are
    /// read, without identity, and new rows are written with one.
    #[test]
    fn old_databases_gain_identity_columns() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("cp.db");
        {
            let c = Connection::open(&db).unwrap();
            c.execute_batch(
                "CREATE TABLE checkpoints (
                   pipeline TEXT NOT NULL, input TEXT NOT NULL, file TEXT NOT NULL, line INTEGER NOT NULL,
                   PRIMARY KEY (pipeline, input, file));
                 INSERT INTO checkpoints VALUES ('p', 'in', 'a.jsonl', 7);",
            )
            .unwrap();
        }
        let cp = Checkpoint::open(&db, "p", true).unwrap();
        assert_eq!(
            cp.saved("in", "a.jsonl"),
            Some(Saved {
                line: 7,
                identity: None
            })
        );
        let f = dir.path().join("b.jsonl");
        std::fs::write(&f, "x\n").unwrap();
        let id = FileIdentity::of(&f).unwrap();
        cp.restart("in", "a.jsonl", id.clone()).unwrap();
        assert_eq!(cp.resume_after("in", "a.jsonl"), 0);
        drop(cp);
        let cp = Checkpoint::open(&db, "p", true).unwrap();
        assert_eq!(
            cp.saved("in", "a.jsonl"),
            Some(Saved {
                line: 0,
                identity: Some(id)
            })
        );
    }

    #[test]
    fn saves_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("cp.db");
        let input: Arc<str> = Arc::from("in");
        let file: Arc<str> = Arc::from("a.jsonl");
        {
            let cp = Checkpoint::open(&db, "p", false).unwrap();
            // Chunks of 3 lines: 1-3, 4-6, 7-9, 10.
            let mut acks = Vec::new();
            let mut chunk = cp.chunk(&input, &file);
            for l in 1..=10 {
                if chunk.len() == 3 {
                    chunk.close();
                    chunk = cp.chunk(&input, &file);
                }
                acks.push(chunk.add(l));
            }
            chunk.close();
            for (i, a) in acks.into_iter().enumerate() {
                if i == 7 {
                    a.fail("aborted");
                } else {
                    a.deliver();
                }
            }
            cp.save().unwrap();
        }
        let cp = Checkpoint::open(&db, "p", true).unwrap();
        // Line 8 failed, so its chunk (7-9) is not done: resume after 6.
        assert_eq!(cp.resume_after("in", "a.jsonl"), 6);
        let fresh = Checkpoint::open(&db, "p", false).unwrap();
        assert_eq!(fresh.resume_after("in", "a.jsonl"), 0);
    }
}
