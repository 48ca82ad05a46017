//! `batch`: group consecutive records into one record
//! `{"records": [...], "count": n}`.
//!
//! Like `aggregate`, this is a fan-in stage on the engine's
//! [`Flow::aggregate`](weir::Flow::aggregate), wired with [`Batcher::key`],
//! [`Batcher::init`], [`Batcher::fold`], [`Batcher::window`] and
//! [`Batcher::finish`]:
//!
//! * without `seconds`: one key and a count window of `size`
//!   ([`weir::Window::Count`]): a batch is emitted as soon as it is full,
//!   and the last, partial batch at the end of input;
//! * with `seconds`: a tumbling window of that period
//!   ([`weir::Window::Tumbling`]) with records numbered in arrival order
//!   and keyed by `number / size`, so every batch has at most `size`
//!   records; all the batches of a period are emitted when it ends (the
//!   engine has no "full or timed out, whichever first" window), so a full
//!   batch waits for the end of its period.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::value::{self, Val as Value};
use serde::Deserialize;

use super::ProcessorContext;
use super::aggregate::seconds;
use crate::error::ConfigError;
use crate::record::{Position, Record};

/// Group consecutive records into batches: one record
/// `{"records": [<record>, ...], "count": <n>}` per batch, for sinks that
/// write in bulk.
///
/// Without `seconds`, a batch is emitted when it has `size` records (the
/// last one, partial, at the end of input). With `seconds`, batches are cut
/// every `seconds` of processing time, split so that none has more than
/// `size` records; a full batch then waits for the end of its period. A
/// batch takes the position of its first record.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// The largest number of records in a batch (at least 1).
    pub size: usize,
    /// Also emit batches every this many seconds (more than 0) of
    /// processing time, full or not. Default: none (batches are emitted
    /// only when full, and at the end of input).
    #[serde(default)]
    pub seconds: Option<f64>,
}

/// A minimal `batch` configuration.
pub const EXAMPLE: &str = "size: 500\nseconds: 2.5\n";

impl BatchConfig {
    /// Checks the options.
    ///
    /// # Errors
    /// `size` is 0, or `seconds` is not a positive number.
    pub fn build(&self, _ctx: &ProcessorContext) -> Result<Batcher, ConfigError> {
        if self.size == 0 {
            return Err(ConfigError::new("batch size must be at least 1"));
        }
        let window = match self.seconds {
            None => weir::Window::Count(self.size),
            Some(s) => weir::Window::Tumbling(seconds(s).map_err(ConfigError::new)?),
        };
        Ok(Batcher {
            size: self.size as u64,
            window,
            seq: AtomicU64::new(0),
        })
    }
}

/// The `batch` component, compiled: see [`BatchConfig`].
#[derive(Debug)]
pub struct Batcher {
    size: u64,
    window: weir::Window,
    seq: AtomicU64,
}

/// The records of one batch being filled.
#[derive(Debug, Clone, Default)]
pub struct BatchAcc {
    records: Vec<Value>,
    first_pos: Option<Arc<Position>>,
}

impl BatchAcc {
    /// How many records are in the batch.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

impl Batcher {
    /// The engine window to aggregate with.
    pub fn window(&self) -> weir::Window {
        self.window
    }

    /// The batch a record goes to. Call it once per record, in arrival
    /// order (the aggregate's key function does): with `seconds` it numbers
    /// the records.
    pub fn key(&self, _r: &Record) -> u64 {
        match self.window {
            weir::Window::Tumbling(_) => self.seq.fetch_add(1, Ordering::Relaxed) / self.size,
            _ => 0,
        }
    }

    /// An empty batch.
    pub fn init(&self) -> BatchAcc {
        BatchAcc {
            records: Vec::with_capacity(self.size.min(4096) as usize),
            first_pos: None,
        }
    }

    /// Adds a record to a batch.
    pub fn fold(&self, acc: &mut BatchAcc, r: Record) {
        if acc.first_pos.is_none() {
            acc.first_pos = Some(r.pos);
        }
        acc.records.push(r.value);
    }

    /// The batch as one record `{"records": [...], "count": n}`, at the
    /// position of its first record.
    pub fn finish(&self, acc: BatchAcc) -> Record {
        let pos = acc.first_pos.unwrap_or_else(|| {
            Arc::new(Position {
                input: "batch".into(),
                file: None,
                line: 0,
            })
        });
        let count = acc.records.len();
        let out = value::object([
            ("records", Value::Arr(acc.records.into())),
            ("count", Value::from(count)),
        ]);
        Record::new(out, pos)
    }
}

impl crate::registry::Documented for BatchConfig {
    const EXAMPLE: &'static str = EXAMPLE;
}

impl crate::registry::ProcessorComponent for BatchConfig {
    fn scope(&self) -> crate::registry::Scope {
        crate::registry::Scope::Windowed
    }

    fn build(&self, ctx: &ProcessorContext) -> Result<crate::registry::Stage, ConfigError> {
        Ok(crate::registry::Stage::Batch(std::sync::Arc::new(
            BatchConfig::build(self, ctx)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn example_parses_and_builds() {
        let cfg: BatchConfig = serde_saphyr::from_str(EXAMPLE).unwrap();
        let b = cfg.build(&ProcessorContext::default()).unwrap();
        assert_eq!(
            b.window(),
            weir::Window::Tumbling(Duration::from_millis(2500))
        );
        let cfg: BatchConfig = serde_saphyr::from_str("size: 3").unwrap();
        let b = cfg.build(&ProcessorContext::default()).unwrap();
        assert_eq!(b.window(), weir::Window::Count(3));
    }
}
