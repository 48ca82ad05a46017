//! Sources: where records enter a declarative pipeline.
//!
//! A source reads [`Raw`] items (a line of text, a CSV row, or a ready
//! record) with their [`Position`]; it does not decode them. Decoding is a
//! separate step ([`decode::Decoder`]) that the pipeline runs as a stage of
//! its own, on several workers, right after the source: reading stays
//! sequential (it has to be), parsing runs in parallel, and a line that does
//! not decode becomes a dead letter of that stage, with its position and
//! reason, and is counted like any other.

use std::sync::Arc;

use crate::record::{Position, Record};

pub mod decode;
pub mod events;
pub mod file;
pub mod generate;
pub mod stdin;

/// An item as a source read it, not yet decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    /// One line of text (jsonl or `lines` format), without its newline.
    Line {
        /// Where it was read.
        pos: Arc<Position>,
        /// The text.
        text: String,
    },
    /// One CSV record, split into fields.
    Row {
        /// Where it was read (the line the record starts on).
        pos: Arc<Position>,
        /// The header row of its file.
        headers: Arc<[String]>,
        /// The fields, as text.
        fields: Vec<String>,
    },
    /// A record that needs no decoding (the `generate` source).
    Record(Record),
}

impl Raw {
    /// Where the item was read.
    pub fn pos(&self) -> &Arc<Position> {
        match self {
            Raw::Line { pos, .. } | Raw::Row { pos, .. } => pos,
            Raw::Record(r) => &r.pos,
        }
    }
}

/// What a source needs from the pipeline that builds it.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The input's name in the pipeline file.
    pub input: Arc<str>,
    /// The directory relative paths in the pipeline file resolve against
    /// (the pipeline file's own directory).
    pub base_dir: std::path::PathBuf,
}
