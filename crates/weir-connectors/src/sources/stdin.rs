//! The `stdin` source: reads standard input line by line, as jsonl or plain
//! lines, on a thread of its own. Positions have no file; the line is the
//! 1-based line number on standard input. A line that is not UTF-8 is
//! dead-lettered (`invalid_utf8`), as in the `file` source.

use std::io::{self, BufReader};
use std::sync::Arc;

use crate::error::ConfigError;
use crate::record::Position;
use crate::sources::decode::Decoder;
use crate::sources::file::{LineReader, is_blank};
use crate::sources::{BuildContext, InvalidUtf8, Raw, Text};

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
        let input = ctx.input.clone();
        let mut reader = LineReader::new(
            BufReader::with_capacity(256 * 1024, io::stdin()),
            self.invalid_utf8,
        );
        let iter = std::iter::from_fn(move || {
            loop {
                return match reader.next_line()? {
                    Ok((_, Text::Valid(text))) if skip_blank && is_blank(&text) => continue,
                    Ok((line, text)) => Some(Ok(super::raw_from_text(
                        Arc::new(Position {
                            input: input.clone(),
                            file: None,
                            line,
                        }),
                        text,
                    ))),
                    Err(e) => Some(Err(io::Error::new(
                        e.kind(),
                        format!(
                            "cannot read standard input at line {}: {e}",
                            reader.line() + 1
                        ),
                    ))),
                };
            }
        });
        Ok((weir::from_try_iter(iter), decoder))
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
        };
        let (_source, decoder) = cfg.build(&ctx).unwrap();
        assert_eq!(decoder.format(), Format::Jsonl);
    }
}
