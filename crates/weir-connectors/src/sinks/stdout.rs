//! The `stdout` sink: writes records to standard output as JSON Lines.
//!
//! Each batch is serialized in memory, then written under one lock of
//! standard output and flushed, so lines of concurrent writers never
//! interleave and a write that returns has reached the pipe or terminal.

use std::io::{self, Write};

use crate::error::ConfigError;
use crate::record::Record;
use crate::sources::BuildContext;
use crate::value::Json;

/// Writes records to standard output, one JSON value per line.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSink {
    /// Write each record as indented, multi-line JSON instead of one line
    /// (for reading by eye; the output is then not JSON Lines). Default:
    /// false.
    #[serde(default)]
    pub pretty: bool,
}

impl StdoutSink {
    /// A minimal configuration.
    pub const EXAMPLE: &str = "pretty: false\n";

    /// The sink.
    ///
    /// # Errors
    /// None today; the signature matches the other sinks.
    pub fn build(&self, _ctx: &BuildContext) -> Result<StdoutWriter, ConfigError> {
        Ok(StdoutWriter {
            pretty: self.pretty,
            buf: Vec::new(),
            lines: 0,
        })
    }
}

/// An open stdout sink: implements [`weir::Sink<Record>`]; its output is
/// the number of records written.
#[derive(Debug)]
pub struct StdoutWriter {
    pretty: bool,
    buf: Vec<u8>,
    lines: u64,
}

impl weir::Sink<Record> for StdoutWriter {
    type Output = u64;

    async fn write(&mut self, items: Vec<Record>) -> Result<(), weir::WriteError<Record>> {
        self.buf.clear();
        for r in &items {
            // Serializing a Value into memory cannot fail.
            let _ = if self.pretty {
                serde_json::to_writer_pretty(&mut self.buf, &Json(&r.value))
            } else {
                serde_json::to_writer(&mut self.buf, &Json(&r.value))
            };
            self.buf.push(b'\n');
        }
        let mut out = io::stdout().lock();
        if let Err(e) = out.write_all(&self.buf).and_then(|()| out.flush()) {
            return Err(weir::WriteError::all(
                items,
                format!("cannot write to standard output: {e}"),
            ));
        }
        self.lines += items.len() as u64;
        Ok(())
    }

    async fn finish(self) -> Result<u64, weir::BoxError> {
        Ok(self.lines)
    }

    fn blocking(&self) -> bool {
        true
    }
}

impl crate::registry::Documented for StdoutSink {
    const EXAMPLE: &'static str = StdoutSink::EXAMPLE;
}

impl crate::registry::SinkComponent for StdoutSink {
    fn attach(
        &self,
        ctx: &BuildContext,
        name: &str,
        input: weir::Flow<Record>,
        policy: weir::ErrorPolicy,
    ) -> Result<(), ConfigError> {
        input
            .sink(name, StdoutSink::build(self, ctx)?)
            .on_error(policy);
        Ok(())
    }

    fn resume(&self) -> crate::registry::Resume {
        crate::registry::Resume::MayDuplicate(
            "prints again the records written after the last checkpoint",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_builds() {
        let cfg: StdoutSink = serde_saphyr::from_str(StdoutSink::EXAMPLE).unwrap();
        let ctx = BuildContext {
            input: "out".into(),
            base_dir: ".".into(),
            state: None,
        };
        cfg.build(&ctx).unwrap();
    }
}
