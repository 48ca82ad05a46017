//! The `stdin` source: reads standard input line by line, as jsonl or plain
//! lines, on a thread of its own. Positions have no file; the line is the
//! 1-based line number on standard input. A line that is not UTF-8 is
//! dead-lettered (`invalid_utf8`), as in the `file` source.
//!
//! Standard input is often a live stream (`tail -f app.log | weir run`): a
//! line must move on when it arrives, not when a batch of them has. The
//! reading thread sends lines in chunks into a bounded channel, a chunk as
//! soon as no whole line is left buffered (so a burst goes in chunks of up
//! to 1,024 lines, a lone line at once), and the source is a stream over
//! it, so the engine sends on whatever is ready. The thread starts at the
//! first read, so `weir check` reads nothing; it blocks when the channel is
//! full, which bounds memory; a stopped run stops waiting for it at once.
//! The thread itself is not joined: it may be blocked reading a quiet
//! stdin when the run ends, and ends with the process (or at its next
//! line, finding the run gone); a program embedding weir that reads stdin
//! after a run could lose what this thread read ahead.

use std::io::{self, BufReader};
use std::sync::Arc;

use crate::error::ConfigError;
use crate::record::Position;
use crate::sources::decode::Decoder;
use crate::sources::file::{LineReader, is_blank};
use crate::sources::{BuildContext, InvalidUtf8, Raw, Text, live};

/// The line formats standard input can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StdinFormat {
    /// One JSON value per line; blank lines are skipped.
    Jsonl,
    /// Plain text: each line becomes `{"line": "<text>"}`.
    Lines,
}

/// Reads records from standard input until it closes.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinSource {
    /// `jsonl` (one JSON value per line) or `lines` (each line becomes
    /// `{"line": "..."}`). Default: `jsonl`.
    #[serde(default)]
    pub format: Option<StdinFormat>,
    /// What to do with a line that is not valid UTF-8: `dead_letter` it,
    /// with reason `invalid_utf8` and the byte offset of the first invalid
    /// byte, or `replace` each invalid sequence with U+FFFD and decode the
    /// line as usual. Default: `dead_letter`.
    #[serde(default)]
    pub invalid_utf8: InvalidUtf8,
}

impl StdinSource {
    /// A minimal configuration.
    pub const EXAMPLE: &str = "format: jsonl\n";

    /// The source and the decoder for its items.
    ///
    /// # Errors
    /// None today; the signature matches the other sources.
    pub fn build(&self, ctx: &BuildContext) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        let format = self.format.unwrap_or(StdinFormat::Jsonl);
        let (decoder, skip_blank) = match format {
            StdinFormat::Jsonl => (Decoder::jsonl(), true),
            StdinFormat::Lines => (Decoder::lines(), false),
        };
        let lines = StdinLines {
            reader: LineReader::new(
                BufReader::with_capacity(256 * 1024, io::stdin()),
                self.invalid_utf8,
            ),
            input: ctx.input.clone(),
            skip_blank,
        };
        Ok((
            weir::from_try_stream(live::stream(lines, "standard input")),
            decoder,
        ))
    }
}

/// Standard input's lines as raw items.
struct StdinLines {
    reader: LineReader<BufReader<io::Stdin>>,
    input: Arc<str>,
    skip_blank: bool,
}

impl live::Lines for StdinLines {
    type Item = Raw;

    fn ready(&self) -> bool {
        self.reader.buffered().contains(&b'\n')
    }

    fn next(&mut self, _quit: &dyn Fn() -> bool) -> Option<Option<io::Result<Raw>>> {
        {
            Some(match self.reader.next_line()? {
                Ok((_, Text::Valid(text))) if self.skip_blank && is_blank(&text) => None,
                Ok((line, text)) => Some(Ok(super::raw_from_text(
                    Arc::new(Position {
                        input: self.input.clone(),
                        file: None,
                        line,
                    }),
                    text,
                ))),
                Err(e) => Some(Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot read standard input at line {}: {e}",
                        self.reader.line() + 1
                    ),
                ))),
            })
        }
    }
}

impl crate::registry::Documented for StdinSource {
    const EXAMPLE: &'static str = StdinSource::EXAMPLE;
}

impl crate::registry::SourceComponent for StdinSource {
    fn build(
        &self,
        ctx: &BuildContext,
        _checkpoint: Option<Arc<crate::checkpoint::Checkpoint>>,
    ) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        StdinSource::build(self, ctx)
    }

    /// In input order unless the entry asks for parallel decoding.
    fn default_decode_workers(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::decode::Format;

    #[test]
    fn example_builds() {
        let cfg: StdinSource = serde_saphyr::from_str(StdinSource::EXAMPLE).unwrap();
        let ctx = BuildContext {
            input: "in".into(),
            base_dir: ".".into(),
            state: None,
        };
        let (_source, decoder) = cfg.build(&ctx).unwrap();
        assert_eq!(decoder.format(), Format::Jsonl);
    }

    /// Lines from a script: `ready()` is false before the lines after
    /// which the script's producer waits for the test.
    struct Scripted {
        next: u64,
        total: u64,
        /// After this line, the next read waits for the gate.
        wait_after: u64,
        /// This line is skipped (a blank line).
        skip: u64,
        gate: std::sync::mpsc::Receiver<()>,
    }

    impl live::Lines for Scripted {
        type Item = Raw;

        fn next(&mut self, _quit: &dyn Fn() -> bool) -> Option<Option<io::Result<Raw>>> {
            if self.next == self.total {
                return None;
            }
            if self.next == self.wait_after {
                self.gate.recv().unwrap();
            }
            self.next += 1;
            if self.next == self.skip {
                return Some(None);
            }
            Some(Some(Ok(Raw::Line {
                pos: Arc::new(Position {
                    input: "in".into(),
                    file: None,
                    line: self.next,
                }),
                text: format!("{{\"n\":{}}}", self.next),
            })))
        }

        fn ready(&self) -> bool {
            self.next != self.wait_after
        }
    }

    /// Lines come out as soon as the reader would wait, not when a chunk
    /// is full: the first two are there before the fourth exists (the third
    /// is blank, skipped: it must not hold them back either); then
    /// the rest, in order, and the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_move_on_when_the_reader_would_wait() {
        use futures::StreamExt;
        let (gate_tx, gate) = std::sync::mpsc::channel::<()>();
        let lines = Scripted {
            next: 0,
            total: 3000,
            wait_after: 3,
            skip: 3,
            gate,
        };
        let mut s = std::pin::pin!(live::stream(lines, "a script"));
        let limit = std::time::Duration::from_secs(10);
        for want in 1..=2 {
            let got = tokio::time::timeout(limit, s.next())
                .await
                .expect("a line that was read is not held back");
            assert_eq!(got.unwrap().unwrap().pos().line, want);
        }
        gate_tx.send(()).unwrap();
        for want in 4..=3000 {
            let got = tokio::time::timeout(limit, s.next()).await.expect("line");
            assert_eq!(got.unwrap().unwrap().pos().line, want);
        }
        let end = tokio::time::timeout(limit, s.next())
            .await
            .expect("the end");
        assert!(end.is_none());
    }
}
