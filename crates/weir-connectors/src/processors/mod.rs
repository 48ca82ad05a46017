//! Processors: per-record transformations of declarative pipelines.
//!
//! A processor maps one record to zero or more records, or rejects it with
//! a [`ProcessError`](crate::ProcessError) (the record then goes to the
//! dead-letter output with that reason). Processors are `Send + Sync` and
//! stateless unless they say otherwise, so a stage can run them on many
//! workers.

use crate::error::ProcessError;
use crate::record::Record;

pub mod aggregate;
pub mod batch;
pub mod dedupe;
pub mod filter;
pub mod html;
pub mod http;
mod http_hosts;
pub mod jq;
mod jq_fast;
pub mod scatter;
pub mod schema_json;
pub mod switch;
pub mod validate;

/// What a processor's `build` may need from its surroundings.
#[derive(Debug, Clone, Default)]
pub struct ProcessorContext {
    /// The directory relative paths in the configuration are resolved
    /// against: the directory of the pipeline file.
    pub base_dir: std::path::PathBuf,
    /// The stage's name in the pipeline file: errors that are not about one
    /// record (a jq evaluation that cannot be stopped) name it.
    pub stage: String,
}

/// A per-record transformation.
pub trait Processor: Send + Sync + 'static {
    /// Pushes the outputs for `record` onto `out` (none: filtered).
    ///
    /// # Errors
    /// The reason the record is rejected.
    fn process(&self, record: &Record, out: &mut Vec<Record>) -> Result<(), ProcessError>;
}

/// A per-record call to a service: an async function, run with up to
/// [`concurrency`](Self::concurrency) calls in flight in one async pool
/// (I/O waits, not threads).
pub trait CallProcessor: Send + Sync + 'static {
    /// Calls in flight at once.
    fn concurrency(&self) -> usize;

    /// The record's call; resolves to the record to pass on, or the reason
    /// it is rejected.
    fn call(
        &self,
        record: Record,
    ) -> futures::future::BoxFuture<'static, Result<Record, ProcessError>>;
}
