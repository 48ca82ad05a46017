//! The trait each kind of component implements.
//!
//! The traits are object-safe: the registry parses an entry's options into
//! a boxed trait object, and everything after parsing (checking, placement,
//! building) goes through these methods, never through the concrete type.

use std::fmt::Debug;
use std::sync::Arc;

use schemars::JsonSchema;
use serde_saphyr::Spanned;
use weir::{ErrorPolicy, Flow};

use super::Stage;
use crate::checkpoint::Checkpoint;
use crate::error::ConfigError;
use crate::processors::ProcessorContext;
use crate::record::Record;
use crate::sources::decode::Decoder;
use crate::sources::file::FileSource;
use crate::sources::{BuildContext, Raw};

/// A component's documentation beyond its schema: a minimal example of its
/// options, shown by `weir explain` and parsed by the registry's tests.
pub trait Documented: JsonSchema {
    /// The options as YAML, without the component's key.
    const EXAMPLE: &'static str;
}

/// A source: reads [`Raw`] items in order and says how to decode them.
pub trait SourceComponent: Debug + Send + Sync {
    /// Opens what the source reads. `checkpoint` is given to a source that
    /// [`reads files`](Self::files) when the run keeps progress: it then
    /// acknowledges each line and skips what an earlier run finished.
    ///
    /// # Errors
    /// Whatever stops the source from starting (a path that matches
    /// nothing, bad options), at its YAML location when known.
    fn build(
        &self,
        ctx: &BuildContext,
        checkpoint: Option<Arc<Checkpoint>>,
    ) -> Result<(weir::Source<Raw>, Decoder), ConfigError>;

    /// The file source's options when this source reads files: `--resume`,
    /// job fingerprints and the check that outputs do not overwrite inputs
    /// apply to it. `None` (the default) for sources that do not.
    fn files(&self) -> Option<&FileSource> {
        None
    }

    /// Whether the source picks up where earlier runs left off by itself,
    /// on every run, through its own state and policy (`schedule` and its
    /// `missed`): `--resume` accepts it beside file inputs and changes
    /// nothing for it. False (the default) for sources that cannot resume.
    fn resumes_itself(&self) -> bool {
        false
    }

    /// Workers decoding its items when the entry does not say
    /// (`decode_workers`). Several decode faster but let records overtake
    /// each other, which a file (read whole, with positions) tolerates and
    /// a stream read as it comes (stdin) should not: its default is 1.
    fn default_decode_workers(&self) -> usize {
        2
    }

    /// Whether the source tells someone outside what became of its records
    /// (`http_server` with `ack: commit` answers "3 committed, 2
    /// dead-lettered"). A pipeline with such a source appends to its
    /// dead-letter file instead of starting it over, so that a restart does
    /// not erase dead letters a client was told about.
    fn promises_outcomes(&self) -> bool {
        false
    }
}

/// What placement and ordering need to know of a processor, before it is
/// built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Each record on its own: runs on any number of workers, in fused
    /// pools, and in remote worker pools in distributed mode.
    PerRecord,
    /// Sees every record and emits as it goes (dedupe): one process, order
    /// of arrival matters.
    Keyed,
    /// Each record on its own, through an async call to a service
    /// (`http`): runs its own number of calls in flight (its
    /// `concurrency`, not `workers`), never fused, and in distributed mode
    /// in the coordinator.
    Call,
    /// Holds records until a window closes (aggregate, batch): one process,
    /// and in distributed mode the messages it reads stay unacknowledged
    /// until then.
    Windowed,
}

/// A processor: one entry of `stages:`.
pub trait ProcessorComponent: Debug + Send + Sync {
    /// Whether it sees records one at a time.
    fn scope(&self) -> Scope;

    /// Compiles and checks the options into the stage that runs.
    ///
    /// # Errors
    /// A jq program that does not compile, a schema that does not load, ...
    fn build(&self, ctx: &ProcessorContext) -> Result<Stage, ConfigError>;

    /// Named outputs (`<stage>/<branch>` in `from:`); empty (the default)
    /// for a stage with one output under its own name.
    fn branches(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What `--resume` can promise for a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Writing again what an interrupted run wrote changes nothing.
    Exact,
    /// It works, with a warning: the reason, after "output 'x' ".
    MayDuplicate(&'static str),
    /// Resuming would lose output: the reason, after "output 'x' ".
    Refused(&'static str),
}

/// A file or database a sink writes, for the check that outputs do not
/// overwrite inputs, each other or the pipeline file.
#[derive(Debug, Clone, Copy)]
pub struct Written<'a> {
    /// The path option, with its YAML location.
    pub path: &'a Spanned<String>,
    /// Sinks with the same tag may share the file (`sqlite`: one table
    /// each); `None`: the file is this sink's alone.
    pub shared: Option<&'static str>,
}

/// A sink: one entry of `outputs:`.
pub trait SinkComponent: Debug + Send + Sync {
    /// Checks the options without creating anything (`weir check` must not
    /// truncate an output file); `ctx` resolves relative paths (a
    /// certificate file to read).
    ///
    /// # Errors
    /// What is wrong with the options.
    fn check(&self, ctx: &BuildContext) -> Result<(), ConfigError> {
        let _ = ctx;
        Ok(())
    }

    /// Opens the destination and attaches the sink to `input` as the engine
    /// sink `name`, failing or dead-lettering a batch it cannot write as
    /// `policy` says.
    ///
    /// # Errors
    /// What stopped the destination from opening.
    fn attach(
        &self,
        ctx: &BuildContext,
        name: &str,
        input: Flow<Record>,
        policy: ErrorPolicy,
    ) -> Result<(), ConfigError>;

    /// The file it writes, if any.
    fn writes(&self) -> Option<Written<'_>> {
        None
    }

    /// What `--resume` can promise.
    fn resume(&self) -> Resume;
}
