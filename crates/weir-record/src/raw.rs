//! What a source reads before it is decoded.

use std::sync::Arc;

use crate::record::{Position, Record};

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
    /// A line (csv: a record) that is not valid UTF-8: the decoder rejects
    /// it with reason `invalid_utf8`, so it is dead-lettered with its
    /// position instead of being changed silently.
    NotUtf8 {
        /// Where it was read.
        pos: Arc<Position>,
        /// The text with each invalid sequence replaced by U+FFFD, for the
        /// dead-letter file (a csv row re-encoded with `,`).
        text: String,
        /// Where the first invalid byte is, for a human.
        detail: String,
    },
    /// A record that needs no decoding (the `generate` source).
    Record(Record),
    /// An item the source itself refuses (a broker message delivered too
    /// many times): the decoder rejects it with `reason` and `detail`, so
    /// it is dead-lettered with its position.
    Refused {
        /// Where it was read.
        pos: Arc<Position>,
        /// Its text (lossy UTF-8), for the dead-letter file.
        text: String,
        /// The dead letter's reason (`max_deliver`).
        reason: &'static str,
        /// The details for a human.
        detail: String,
    },
}

impl Raw {
    /// Where the item was read.
    pub fn pos(&self) -> &Arc<Position> {
        match self {
            Raw::Line { pos, .. }
            | Raw::Row { pos, .. }
            | Raw::NotUtf8 { pos, .. }
            | Raw::Refused { pos, .. } => pos,
            Raw::Record(r) => &r.pos,
        }
    }
}

/// CSV fields as one line of text (`,`-separated, quoted as needed).
pub fn csv_line(fields: &[String]) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let _ = w.write_record(fields);
    let bytes = w.into_inner().unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}
