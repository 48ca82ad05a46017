//! The item type of declarative pipelines.

use std::fmt;
use std::sync::Arc;

use crate::value::{self, Val};

/// Where a record was read: enough to point a user at the bad line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// The pipeline input that produced it (its `name` in the YAML).
    pub input: Arc<str>,
    /// The file, when the input reads files.
    pub file: Option<Arc<str>>,
    /// 1-based line (for csv: the line where the record starts), or the
    /// record's sequence number for inputs without lines.
    pub line: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{file}:{}", self.line),
            None => write!(f, "{}#{}", self.input, self.line),
        }
    }
}

/// A JSON value travelling through a pipeline, with its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The data, in JSON's data model (see [`value`](crate::value)).
    pub value: Val,
    /// Where it was read. Shared: records derived from one input record
    /// (by `jq`, say) keep the same position.
    pub pos: Arc<Position>,
}

impl Record {
    /// A record at `pos`.
    pub fn new(value: Val, pos: Arc<Position>) -> Self {
        Record { value, pos }
    }

    /// A record at `pos` holding a `serde_json::Value`'s data.
    pub fn from_json(value: &serde_json::Value, pos: Arc<Position>) -> Self {
        Record::new(value::from_json(value), pos)
    }

    /// The data as a `serde_json::Value` (a copy).
    pub fn json(&self) -> serde_json::Value {
        value::to_json(&self.value)
    }

    /// A record derived from this one (same position).
    pub fn derive(&self, value: Val) -> Self {
        Record {
            value,
            pos: self.pos.clone(),
        }
    }
}
