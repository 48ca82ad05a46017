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
//!   upserts; a keyless table could get a row twice, and the dead-letter file
//!   may repeat a rejected line);
//! * records that feed a whole-input aggregate are acknowledged only when the
//!   aggregate is written at the end, so such a pipeline saves no progress
//!   before it finishes (resuming it starts over, which is still exact).
//!
//! The watermark is saved at most every [`SAVE_EVERY`] and when the run ends.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::error::ConfigError;

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
}

/// The progress of one pipeline's file inputs.
pub struct Checkpoint {
    conn: Mutex<Connection>,
    pipeline: String,
    /// Watermarks found at start (what a resumed run skips).
    resume: HashMap<(String, String), u64>,
    tracks: Mutex<HashMap<Key, Track>>,
    last_save: Mutex<Instant>,
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
               PRIMARY KEY (pipeline, input, file))",
        )
        .map_err(fail)?;
        if !resume {
            conn.execute("DELETE FROM checkpoints WHERE pipeline = ?1", [pipeline])
                .map_err(fail)?;
        }
        let mut resume_at = HashMap::new();
        {
            let mut stmt = conn
                .prepare("SELECT input, file, line FROM checkpoints WHERE pipeline = ?1")
                .map_err(fail)?;
            let rows = stmt
                .query_map([pipeline], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(fail)?;
            for row in rows {
                let (input, file, line) = row.map_err(fail)?;
                resume_at.insert((input, file), line.max(0) as u64);
            }
        }
        Ok(Arc::new(Checkpoint {
            conn: Mutex::new(conn),
            pipeline: pipeline.to_string(),
            resume: resume_at,
            tracks: Mutex::new(HashMap::new()),
            last_save: Mutex::new(Instant::now()),
        }))
    }

    /// Lines of `file` (read by `input`) up to this one are done: a resumed
    /// run skips them.
    pub fn resume_after(&self, input: &str, file: &str) -> u64 {
        self.resume
            .get(&(input.to_string(), file.to_string()))
            .copied()
            .unwrap_or(0)
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
        let changed: Vec<(Key, u64)> = {
            let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
            tracks
                .iter_mut()
                .filter_map(|(k, t)| {
                    let w = t.watermark();
                    (w > t.saved).then(|| {
                        t.saved = w;
                        (k.clone(), w)
                    })
                })
                .collect()
        };
        if changed.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        for ((input, file), line) in changed {
            tx.execute(
                "INSERT INTO checkpoints (pipeline, input, file, line) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (pipeline, input, file) DO UPDATE SET line = excluded.line",
                rusqlite::params![self.pipeline, &*input, &*file, line as i64],
            )
            .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())
    }
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
