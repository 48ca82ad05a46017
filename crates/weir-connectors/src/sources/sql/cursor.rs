//! The cursor of an incremental `sql` input: the last row handled, kept
//! between runs.
//!
//! Rows are read in cursor order and each carries an ack. The cursor saved
//! is that of the last row such that it and every row read before it were
//! handled (committed by every output, filtered or dead-lettered): a row
//! still in flight, or one that failed, holds the saved cursor back, so the
//! next run reads it again (duplicates, never losses; give the output a
//! key). Saves are at most every [`SAVE_EVERY`] from the acks, from the
//! reader while it waits, and once more when the run is over.
//!
//! The cursor is kept under a key made of the pipeline, the input and a
//! hash of what was read (the database, the query, the cursor columns): a
//! changed query or cursor starts from the beginning rather than skip rows
//! by a cursor that meant something else.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension as _};

use crate::error::ConfigError;
use crate::sources::{State, StateDir, StateStore};

/// How often the cursor is saved at most.
pub const SAVE_EVERY: Duration = Duration::from_millis(200);

/// A row's cursor: the values of the cursor columns as a JSON array
/// (PostgreSQL: their text forms; SQLite: the values).
pub type Cursor = String;

/// Where a cursor is kept.
enum Store {
    /// `sql.db` in the state directory.
    Sqlite {
        conn: Mutex<Connection>,
        pipeline: String,
        input: String,
        source: String,
    },
    /// Under a key in the runner's store (the job's bucket on the broker).
    Shared {
        store: Arc<dyn StateStore>,
        key: String,
    },
}

impl Store {
    const FILE: &'static str = "sql.db";

    fn open(state: &State, input: &str, source: &str) -> Result<Store, ConfigError> {
        match state {
            State::Dir(dir) => Self::open_dir(dir, input, source),
            State::Shared(store) => Ok(Store::Shared {
                store: store.clone(),
                key: format!("sql.{input}.{source}"),
            }),
        }
    }

    fn open_dir(state: &StateDir, input: &str, source: &str) -> Result<Store, ConfigError> {
        let conn = state
            .open_db(
                Self::FILE,
                "CREATE TABLE IF NOT EXISTS sql_cursors (
                   pipeline TEXT NOT NULL, input TEXT NOT NULL, source TEXT NOT NULL,
                   cursor TEXT NOT NULL,
                   PRIMARY KEY (pipeline, input, source))",
            )
            .map_err(|e| {
                ConfigError::new(format!(
                    "sql state database {}: {e}",
                    state.dir.join(Self::FILE).display()
                ))
            })?;
        Ok(Store::Sqlite {
            conn: Mutex::new(conn),
            pipeline: state.pipeline.clone(),
            input: input.to_string(),
            source: source.to_string(),
        })
    }

    fn load(&self) -> Result<Option<Cursor>, String> {
        match self {
            Store::Sqlite {
                conn,
                pipeline,
                input,
                source,
            } => {
                let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                conn.query_row(
                    "SELECT cursor FROM sql_cursors WHERE pipeline = ?1 AND input = ?2 AND source = ?3",
                    (pipeline, input, source),
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| e.to_string())
            }
            Store::Shared { store, key } => store.get(key),
        }
    }

    fn save(&self, cursor: &str) -> Result<(), String> {
        match self {
            Store::Sqlite {
                conn,
                pipeline,
                input,
                source,
            } => {
                let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                conn.execute(
                    "INSERT INTO sql_cursors (pipeline, input, source, cursor) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (pipeline, input, source) DO UPDATE SET cursor = excluded.cursor",
                    (pipeline, input, source, cursor),
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
            Store::Shared { store, key } => store.put(key, cursor.to_string()),
        }
    }
}

/// What was read and what became of it.
#[derive(Default)]
struct Track {
    /// Rows read and not handled yet (or failed), by number: their cursors.
    pending: BTreeMap<u64, Cursor>,
    /// Rows handled while an earlier one is pending.
    handled: BTreeMap<u64, Cursor>,
    /// The cursor of the last row that, with every row before it, is
    /// handled.
    water: Option<Cursor>,
    /// Whether `water` moved since the last save.
    dirty: bool,
    last_save: Option<Instant>,
}

impl Track {
    fn settled(&mut self, row: u64, handled: bool) {
        if !handled {
            // Stays pending: the watermark never passes it.
            return;
        }
        let Some(cursor) = self.pending.remove(&row) else {
            return;
        };
        self.handled.insert(row, cursor);
        let bound = self.pending.keys().next().copied();
        while let Some(entry) = self.handled.first_entry() {
            if bound.is_some_and(|b| *entry.key() > b) {
                break;
            }
            self.water = Some(entry.remove());
            self.dirty = true;
        }
    }
}

/// The cursor's progress in one run; shared by the reader and the acks.
pub struct Progress {
    track: Mutex<Track>,
    store: Option<Store>,
    input: Arc<str>,
}

impl Progress {
    /// Progress kept in `state` (nothing kept when `None`: `weir check`,
    /// `--no-checkpoint`); `source` identifies what is read.
    ///
    /// # Errors
    /// When the state database cannot be opened.
    pub fn open(
        state: Option<&State>,
        input: &Arc<str>,
        source: &str,
    ) -> Result<Self, ConfigError> {
        Ok(Progress {
            track: Mutex::new(Track::default()),
            store: state.map(|s| Store::open(s, input, source)).transpose()?,
            input: input.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Track> {
        self.track.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cursor an earlier run saved.
    ///
    /// # Errors
    /// When one is saved but cannot be read.
    pub fn load(&self) -> Result<Option<Cursor>, String> {
        match &self.store {
            Some(store) => store.load(),
            None => Ok(None),
        }
    }

    /// Row `row` (numbered in reading order) was read, with `cursor`.
    pub fn read(&self, row: u64, cursor: Cursor) {
        if self.store.is_some() {
            self.lock().pending.insert(row, cursor);
        }
    }

    /// Row `row`'s ack settled.
    pub fn settled(&self, row: u64, handled: bool) {
        let Some(store) = &self.store else { return };
        let mut t = self.lock();
        t.settled(row, handled);
        if t.dirty && t.last_save.is_none_or(|s| s.elapsed() >= SAVE_EVERY) {
            self.save(store, &mut t);
        }
    }

    /// Saves a moved cursor whose last save is old enough.
    pub fn flush(&self) {
        let Some(store) = &self.store else { return };
        let mut t = self.lock();
        if t.dirty && t.last_save.is_none_or(|s| s.elapsed() >= SAVE_EVERY) {
            self.save(store, &mut t);
        }
    }

    fn save(&self, store: &Store, t: &mut Track) {
        let Some(water) = &t.water else { return };
        match store.save(water) {
            Ok(()) => {
                t.dirty = false;
                t.last_save = Some(Instant::now());
            }
            Err(e) => tracing::warn!("sql '{}': cannot save the cursor: {e}", self.input),
        }
    }
}

impl Drop for Progress {
    // The reader and every row's ack are gone: the run is over.
    fn drop(&mut self) {
        if let Some(store) = &self.store {
            let t = self.track.get_mut().unwrap_or_else(|p| p.into_inner());
            if t.dirty
                && let Some(water) = &t.water
                && let Err(e) = store.save(water)
            {
                tracing::warn!("sql '{}': cannot save the cursor: {e}", self.input);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(dir: &std::path::Path, source: &str) -> Progress {
        let state = State::Dir(StateDir {
            dir: dir.to_path_buf(),
            pipeline: "p.yaml".into(),
        });
        Progress::open(Some(&state), &Arc::from("in"), source).unwrap()
    }

    #[test]
    fn the_cursor_waits_for_every_earlier_row() {
        let dir = tempfile::tempdir().unwrap();
        let p = progress(dir.path(), "s");
        for i in 1..=4 {
            p.read(i, format!("[{i}]"));
        }
        p.settled(2, true);
        p.settled(3, true);
        assert_eq!(p.lock().water, None, "row 1 is in flight");
        p.settled(1, true);
        assert_eq!(p.lock().water.as_deref(), Some("[3]"));
        p.settled(4, false);
        assert_eq!(
            p.lock().water.as_deref(),
            Some("[3]"),
            "a failed row holds it"
        );
        drop(p);
        let p = progress(dir.path(), "s");
        assert_eq!(p.load().unwrap().as_deref(), Some("[3]"));
        // Another source (query, columns, database) starts afresh.
        assert_eq!(progress(dir.path(), "t").load().unwrap(), None);
    }

    #[test]
    fn no_state_keeps_nothing() {
        let p = Progress::open(None, &Arc::from("in"), "s").unwrap();
        p.read(1, "[1]".into());
        p.settled(1, true);
        assert_eq!(p.load().unwrap(), None);
    }
}
