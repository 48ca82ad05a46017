//! Checkpoints of followed files (`file` with `follow: true`).
//!
//! A followed file has no fixed content to count lines in: it grows, and it
//! is rotated (renamed away, a new file taking its name) or truncated while
//! it is read. So its progress is not a line watermark under a file name
//! but a place in one particular file: per *generation* (each file, or
//! each truncation, the run moved on to), the device and inode of the
//! file, a SHA-256 of its first [`HEAD_BYTES`] (so that a reused inode is
//! not taken for it), and the [`Mark`] after the last line whose records
//! are all committed or dead-lettered: how many lines and bytes were read
//! up to there.
//!
//! Generations are tracked like files (a line watermark over chunk acks,
//! see the [parent module](super)); their key is `path#seq`, `seq` counting
//! generations over the runs of one input. A generation that ended
//! (rotated away, or truncated) is marked finished once all its lines are
//! done (its row goes when its file is gone); the other rows are what a
//! resumed run still has to read: the rest of rotated files, then the
//! current one from its mark.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::Connection;

use super::{Checkpoint, Key, Track, lock};

/// Bytes at the start of a followed file hashed to recognise it.
pub const HEAD_BYTES: usize = 4096;

/// Where a followed file stands after some line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    /// Lines read from the file up to here, blank ones included: the
    /// number of the last line read.
    pub line: u64,
    /// Bytes read from the file up to here.
    pub offset: u64,
    /// How many of the file's first bytes `head` hashes:
    /// `min(HEAD_BYTES, bytes read)` when the mark was taken (read, not
    /// handled: a file nothing of which is handled is still recognised).
    pub head_len: u64,
    /// SHA-256 of those bytes.
    pub head: [u8; 32],
}

/// A followed file's saved progress, as found when the run started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowRow {
    /// The generation, counted over the runs of the input.
    pub seq: u64,
    /// The file's device and inode.
    pub dev: u64,
    /// Its inode.
    pub ino: u64,
    /// Where it stands.
    pub mark: Mark,
}

/// What a tracked generation is.
#[derive(Debug)]
struct Meta {
    path: String,
    seq: u64,
    dev: u64,
    ino: u64,
    /// The run moved on from it: once its lines are done its row goes.
    ended: bool,
    /// The hash of its first bytes read (what tells it from another file
    /// on the same inode), and whether the row has it yet.
    head: (u64, [u8; 32]),
    head_saved: bool,
    /// The place its row holds.
    saved: Mark,
}

/// The followed files of one pipeline: rows found at start, and the
/// generations this run reads.
#[derive(Debug, Default)]
pub(super) struct Follows {
    found: HashMap<(String, String), Vec<FollowRow>>,
    /// Files read to their end and handled: not to be read again when
    /// found beside the path.
    finished: HashMap<(String, String), Vec<FollowRow>>,
    next: HashMap<(String, String), Next>,
    meta: HashMap<Key, Meta>,
}

/// Per followed path, kept across runs: the next generation's number (so
/// that positions never repeat, even after every row is gone) and when
/// progress was last saved (files modified after it were written while
/// weir was down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// The next generation's number.
    pub seq: u64,
    /// When the run that saved it last wrote progress, in nanoseconds
    /// since the Unix epoch.
    pub saved_ns: i64,
}

impl Follows {
    /// Creates the table if needed; forgets the pipeline's rows unless
    /// resuming, else reads them.
    pub(super) fn open(conn: &Connection, pipeline: &str, resume: bool) -> rusqlite::Result<Self> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS follows (
               pipeline TEXT NOT NULL, input TEXT NOT NULL, path TEXT NOT NULL,
               seq INTEGER NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL,
               line INTEGER NOT NULL, offset INTEGER NOT NULL,
               head_len INTEGER NOT NULL, head BLOB NOT NULL, saved_ns INTEGER NOT NULL,
               finished INTEGER NOT NULL DEFAULT 0,
               PRIMARY KEY (pipeline, input, seq));
             CREATE TABLE IF NOT EXISTS follow_next (
               pipeline TEXT NOT NULL, input TEXT NOT NULL, path TEXT NOT NULL,
               seq INTEGER NOT NULL, saved_ns INTEGER NOT NULL,
               PRIMARY KEY (pipeline, input, path))",
        )?;
        if !resume {
            conn.execute("DELETE FROM follows WHERE pipeline = ?1", [pipeline])?;
            conn.execute("DELETE FROM follow_next WHERE pipeline = ?1", [pipeline])?;
            return Ok(Follows::default());
        }
        let mut stmt = conn.prepare(
            "SELECT input, path, seq, dev, ino, line, offset, head_len, head, finished
             FROM follows WHERE pipeline = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([pipeline], |r| {
            let head: Vec<u8> = r.get(8)?;
            let int = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                r.get::<_, i64>(9)? != 0,
                head.try_into().ok().map(|head| FollowRow {
                    seq: int(2).unwrap_or(0),
                    dev: int(3).unwrap_or(0),
                    ino: int(4).unwrap_or(0),
                    mark: Mark {
                        line: int(5).unwrap_or(0),
                        offset: int(6).unwrap_or(0),
                        head_len: int(7).unwrap_or(0),
                        head,
                    },
                }),
            ))
        })?;
        let mut found: HashMap<(String, String), Vec<FollowRow>> = HashMap::new();
        let mut finished: HashMap<(String, String), Vec<FollowRow>> = HashMap::new();
        for row in rows {
            let (key, done, row) = row?;
            // A row whose hash is not 32 bytes was not written by weir:
            // without it the file cannot be recognised.
            if let Some(row) = row {
                let to = if done { &mut finished } else { &mut found };
                to.entry(key).or_default().push(row);
            }
        }
        let mut stmt =
            conn.prepare("SELECT input, path, seq, saved_ns FROM follow_next WHERE pipeline = ?1")?;
        let next = stmt
            .query_map([pipeline], |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                    Next {
                        seq: r.get::<_, i64>(2)?.max(0) as u64,
                        saved_ns: r.get(3)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<HashMap<_, _>>>()?;
        Ok(Follows {
            found,
            finished,
            next,
            meta: HashMap::new(),
        })
    }

    pub(super) fn is_followed(&self, key: &Key) -> bool {
        self.meta.contains_key(key)
    }

    pub(super) fn ended(&self, key: &Key) -> bool {
        self.meta.get(key).is_some_and(|m| m.ended)
    }

    /// Saves generation `key` at `mark` (its line and byte offset; the
    /// head hashed is the longest read so far).
    pub(super) fn write(
        &mut self,
        conn: &Connection,
        pipeline: &str,
        key: &Key,
        mark: &Mark,
    ) -> rusqlite::Result<()> {
        let Some(m) = self.meta.get_mut(key) else {
            return Ok(());
        };
        m.saved = *mark;
        m.head_saved = true;
        let now = now_ns();
        conn.execute(
            "INSERT INTO follows (pipeline, input, path, seq, dev, ino, line, offset, head_len, head, saved_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (pipeline, input, seq) DO UPDATE SET path = excluded.path,
               dev = excluded.dev, ino = excluded.ino, line = excluded.line,
               offset = excluded.offset, head_len = excluded.head_len, head = excluded.head,
               saved_ns = excluded.saved_ns",
            rusqlite::params![
                pipeline,
                &*key.0,
                m.path,
                m.seq as i64,
                m.dev as i64,
                m.ino as i64,
                mark.line as i64,
                mark.offset as i64,
                m.head.0 as i64,
                m.head.1.to_vec(),
                now,
            ],
        )?;
        conn.execute(
            "INSERT INTO follow_next (pipeline, input, path, seq, saved_ns) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (pipeline, input, path) DO UPDATE SET
               seq = max(seq, excluded.seq), saved_ns = excluded.saved_ns",
            rusqlite::params![pipeline, &*key.0, m.path, m.seq as i64 + 1, now],
        )?;
        Ok(())
    }

    /// Rows whose file has more of its head read since they were written
    /// (a file nothing of which is handled yet is still recognised by
    /// what was read of it).
    pub(super) fn heads_to_save(&self) -> Vec<(Key, Mark)> {
        self.meta
            .iter()
            .filter(|(_, m)| !m.head_saved)
            .map(|(k, m)| (k.clone(), m.saved))
            .collect()
    }

    /// Generation `key` ended and all its lines are done: its row is
    /// kept as finished (so that its file, found beside the path by a
    /// resumed run, is known to be read) until the file is gone.
    pub(super) fn finish(
        &mut self,
        conn: &Connection,
        pipeline: &str,
        key: &Key,
    ) -> rusqlite::Result<()> {
        if let Some(m) = self.meta.remove(key) {
            conn.execute(
                "UPDATE follows SET finished = 1 WHERE pipeline = ?1 AND input = ?2 AND seq = ?3",
                rusqlite::params![pipeline, &*key.0, m.seq as i64],
            )?;
        }
        Ok(())
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn delete(conn: &Connection, pipeline: &str, input: &str, seq: u64) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM follows WHERE pipeline = ?1 AND input = ?2 AND seq = ?3",
        rusqlite::params![pipeline, input, seq as i64],
    )?;
    Ok(())
}

/// One generation of a followed file, as the checkpoint tracks it.
#[derive(Debug, Clone, Copy)]
pub struct Generation {
    /// Counted over the runs of the input.
    pub seq: u64,
    /// The file's device.
    pub dev: u64,
    /// The file's inode.
    pub ino: u64,
    /// Lines of it already done (a resumed file's mark).
    pub done: u64,
}

impl Checkpoint {
    /// The saved progress of the file `path` followed by `input`, oldest
    /// generation first (empty unless resuming).
    pub fn followed(&self, input: &str, path: &str) -> Vec<FollowRow> {
        lock(&self.follows)
            .found
            .get(&(input.to_string(), path.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Files followed by `input` as `path` that earlier runs read to their
    /// end and handled.
    pub fn follow_finished(&self, input: &str, path: &str) -> Vec<FollowRow> {
        lock(&self.follows)
            .finished
            .get(&(input.to_string(), path.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// What was kept across runs for the file `path` followed by `input`
    /// (`None` on a first run, or one without `--resume`).
    pub fn follow_next(&self, input: &str, path: &str) -> Option<Next> {
        lock(&self.follows)
            .next
            .get(&(input.to_string(), path.to_string()))
            .copied()
    }

    /// A chunk of generation `file` closed with `mark`: the head it read
    /// is kept for the row.
    pub(super) fn follow_read(&self, input: &Arc<str>, file: &Arc<str>, mark: &Mark) {
        if let Some(m) = lock(&self.follows)
            .meta
            .get_mut(&(input.clone(), file.clone()))
            && mark.head_len > m.head.0
        {
            m.head = (mark.head_len, mark.head);
            m.head_saved = false;
        }
    }

    /// Forgets generation `seq` of `input`: its file is gone, or is not
    /// the one it counted.
    ///
    /// # Errors
    /// When the database write fails.
    pub fn forget_followed(&self, input: &str, seq: u64) -> Result<(), String> {
        let conn = lock(&self.conn);
        delete(&conn, &self.pipeline, input, seq).map_err(|e| e.to_string())
    }

    /// Starts tracking a generation of the file `path` followed by
    /// `input`, standing at `start`; returns the file part of its key,
    /// for [`chunk`](Checkpoint::chunk). Its row is written at once, so
    /// that a run killed before its first save still knows the file (a
    /// file rotated away with none of its lines done is read again).
    ///
    /// # Errors
    /// When the database write fails.
    pub fn follow_generation(
        &self,
        input: &Arc<str>,
        path: &str,
        g: Generation,
        start: &Mark,
    ) -> Result<Arc<str>, String> {
        let file: Arc<str> = format!("{path}#{}", g.seq).into();
        let key: Key = (input.clone(), file.clone());
        lock(&self.tracks).insert(
            key.clone(),
            Track {
                last_emitted: g.done,
                saved: g.done,
                ..Track::default()
            },
        );
        let mut follows = lock(&self.follows);
        follows.meta.insert(
            key.clone(),
            Meta {
                path: path.to_string(),
                seq: g.seq,
                dev: g.dev,
                ino: g.ino,
                ended: false,
                head: (start.head_len, start.head),
                head_saved: false,
                saved: *start,
            },
        );
        let conn = lock(&self.conn);
        follows
            .write(&conn, &self.pipeline, &key, start)
            .map_err(|e| e.to_string())?;
        Ok(file)
    }

    /// The run moved on from this generation (rotated away or truncated):
    /// once all its lines are done, its row goes.
    pub fn follow_ended(&self, input: &Arc<str>, file: &Arc<str>) {
        if let Some(m) = lock(&self.follows)
            .meta
            .get_mut(&(input.clone(), file.clone()))
        {
            m.ended = true;
        }
    }
}
