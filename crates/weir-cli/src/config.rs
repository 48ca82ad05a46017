//! The pipeline file: what users write, as serde types.
//!
//! A pipeline has `inputs`, `stages` and `outputs`, each a list of named
//! entries; an entry names its component by a key (`file:`, `jq:`,
//! `sqlite:` ...) holding that component's options. `from` wires the graph;
//! it defaults to the entry just above (for the first stage: every input;
//! for an output: the last stage), so a straight pipeline needs none.
//!
//! ```yaml
//! inputs:
//!   - name: orders
//!     file: { path: data/orders.jsonl }
//! stages:
//!   - name: clean
//!     jq: { program: '.amount |= tonumber' }
//!     workers: 2
//! outputs:
//!   - name: db
//!     sqlite: { path: out/orders.db, table: orders, columns: { id: integer, amount: real }, key: [id] }
//! ```
//!
//! Component options are the connector crates' own config types, so their
//! docs and defaults live in one place.

use serde::Deserialize;
use serde_saphyr::Spanned;

use weir_connectors::processors::{
    aggregate::AggregateConfig, batch::BatchConfig, dedupe::DedupeConfig, filter::FilterConfig,
    jq::JqConfig, validate::ValidateConfig,
};
use weir_connectors::sinks::{file::FileSink, sqlite::SqliteSink, stdout::StdoutSink};
use weir_connectors::sources::{file::FileSource, generate::GenerateSource, stdin::StdinSource};

use crate::diag::Diagnostic;

/// A whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// What the pipeline does, for people.
    #[serde(default)]
    pub description: Option<String>,
    /// Where records come from; several inputs feeding one stage are merged.
    pub inputs: Vec<Spanned<InputEntry>>,
    /// Processing steps, in order.
    #[serde(default)]
    pub stages: Vec<Spanned<StageEntry>>,
    /// Where records go.
    pub outputs: Vec<Spanned<OutputEntry>>,
    /// Where rejected records go (default: `dead-letters.jsonl` beside the
    /// pipeline file).
    #[serde(default)]
    pub dead_letter: Option<DeadLetterEntry>,
    /// Engine settings.
    #[serde(default)]
    pub settings: Settings,
}

/// `from: a` or `from: [a, b]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum From {
    One(String),
    Many(Vec<String>),
}

impl From {
    pub fn names(&self) -> Vec<String> {
        match self {
            From::One(s) => vec![s.clone()],
            From::Many(v) => v.clone(),
        }
    }
}

/// What a stage does with a record its component rejects.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OnError {
    /// Send it to the dead-letter output (the default).
    DeadLetter,
    /// Stop the whole run.
    Fail,
    /// Try again with backoff, then dead-letter.
    Retry {
        /// Attempts in all.
        attempts: u32,
        /// First delay in milliseconds (default 10).
        #[serde(default = "default_initial_ms")]
        initial_ms: u64,
    },
}

fn default_initial_ms() -> u64 {
    10
}

impl OnError {
    pub fn policy(&self) -> weir::ErrorPolicy {
        match self {
            OnError::DeadLetter => weir::ErrorPolicy::DeadLetter,
            OnError::Fail => weir::ErrorPolicy::Fail,
            OnError::Retry {
                attempts,
                initial_ms,
            } => weir::ErrorPolicy::Retry(
                weir::Retry::attempts(*attempts)
                    .initial(std::time::Duration::from_millis(*initial_ms)),
            ),
        }
    }
}

/// One input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputEntry {
    /// Unique name; stages refer to it in `from`.
    pub name: Spanned<String>,
    /// Workers decoding this input's lines (default: 2).
    #[serde(default)]
    pub decode_workers: Option<Spanned<usize>>,
    /// Read files.
    #[serde(default)]
    pub file: Option<FileSource>,
    /// Read standard input.
    #[serde(default)]
    pub stdin: Option<StdinSource>,
    /// Generate synthetic records.
    #[serde(default)]
    pub generate: Option<GenerateSource>,
}

/// One processing stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageEntry {
    /// Unique name.
    pub name: Spanned<String>,
    /// Upstream inputs or stages (default: the entry above).
    #[serde(default)]
    pub from: Option<Spanned<From>>,
    /// Workers running this stage in parallel (default 1).
    #[serde(default)]
    pub workers: Option<Spanned<usize>>,
    /// Keep input order across workers.
    #[serde(default)]
    pub ordered: bool,
    /// What to do with rejected records (default: dead_letter).
    #[serde(default)]
    pub on_error: Option<OnError>,
    /// Transform with a jq program.
    #[serde(default)]
    pub jq: Option<JqConfig>,
    /// Keep records matching a jq condition.
    #[serde(default)]
    pub filter: Option<FilterConfig>,
    /// Check records against a JSON Schema.
    #[serde(default)]
    pub validate: Option<ValidateConfig>,
    /// Drop records whose key was seen before.
    #[serde(default)]
    pub dedupe: Option<DedupeConfig>,
    /// Group and summarise.
    #[serde(default)]
    pub aggregate: Option<AggregateConfig>,
    /// Group records into batches.
    #[serde(default)]
    pub batch: Option<BatchConfig>,
}

/// One output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputEntry {
    /// Unique name.
    pub name: Spanned<String>,
    /// Upstream stages (default: the last stage).
    #[serde(default)]
    pub from: Option<Spanned<From>>,
    /// What to do with a batch the sink fails to write (default: fail).
    #[serde(default)]
    pub on_error: Option<OnError>,
    /// Write to a SQLite database.
    #[serde(default)]
    pub sqlite: Option<SqliteSink>,
    /// Write to a file.
    #[serde(default)]
    pub file: Option<FileSink>,
    /// Write JSON lines to standard output.
    #[serde(default)]
    pub stdout: Option<StdoutSink>,
}

/// The dead-letter output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterEntry {
    /// A JSON-lines file, one rejected record per line with its reason.
    pub path: Spanned<String>,
}

/// Engine settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Items per batch between stages.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Bound of each edge, in batches.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
}

fn default_batch() -> usize {
    weir::DEFAULT_BATCH_SIZE
}

fn default_buffer() -> usize {
    weir::DEFAULT_BUFFER
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_size: default_batch(),
            buffer: default_buffer(),
        }
    }
}

/// Parses a pipeline file. YAML and type errors stop at the first one (the
/// parser cannot resume); everything after parsing reports all problems.
pub fn parse(source: &str) -> Result<PipelineFile, Diagnostic> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 64,
            max_nodes: 200_000,
            max_aliases: 1_000,
            max_total_scalar_bytes: 16 << 20,
        },
        alias_limits: serde_saphyr::alias_limits! { max_total_replayed_events: 100_000 },
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options::<PipelineFile>(source, options).map_err(|e| {
        let at = e.location().map(|l| (l.line(), l.column()));
        Diagnostic::new(strip_location(&e.to_string()), at)
    })
}

/// The parser appends " at line L, column C" to its messages; the
/// diagnostic shows the location itself.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}
