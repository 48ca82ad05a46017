//! Weir: typed, concurrent data pipelines inside one process.
//!
//! # The model
//!
//! A [`Pipeline`] is a graph of *stages* joined by bounded channels
//! (*edges*). Items enter at a [`Source`], pass through stages that
//! transform, filter, split or aggregate them, and leave at a [`Sink`].
//! Every edge is bounded, so a slow stage makes its producers wait instead
//! of growing memory (backpressure): memory depends on configuration, never
//! on input size.
//!
//! * **Pipelines**: [`Flow::map`], [`Flow::filter`], [`Flow::flat_map`],
//!   their fallible `try_` forms and [`Flow::map_async`] each add a stage.
//! * **Worker pools**: [`Flow::workers`] runs a stage on `n` workers over
//!   one shared queue; [`Flow::ordered`] keeps input order with a bounded
//!   reorder window. Sync functions run on threads, never on the async
//!   reactor; async functions run `n` calls at once.
//! * **Fan-out / fan-in**: [`Flow::broadcast`], [`Flow::partition`],
//!   [`Flow::route`], [`Flow::balance`]; [`Flow::merge`],
//!   [`Flow::aggregate`] with [`Window`]s, [`Flow::scatter_gather`].
//! * **Coordination**: [`Pipeline::run`] returns when every item has been
//!   committed, filtered or dead-lettered, with a [`Report`] whose per-stage
//!   counts add up (`received = ok + filtered + dead_lettered + dropped`).
//!   The first fatal error cancels the rest; a panic is such an error;
//!   [`Pipeline::cancel_token`] stops the sources and drains.
//! * **End-to-end acks**: a source may attach an [`Ack`] to an item; it
//!   fires once, after everything derived from the item is committed or
//!   dead-lettered.
//! * **Errors**: per stage, an [`ErrorPolicy`]: fail, dead-letter, or retry
//!   with backoff then dead-letter. Nothing is dropped silently.
//!
//! Items cross edges in batches ([`PipelineOptions::batch_size`]) so the
//! per-item cost is a few nanoseconds; stage functions are still written per
//! item.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), weir::RunError> {
//! use weir::{Pipeline, from_iter, fold};
//!
//! let p = Pipeline::new();
//! let sum = p
//!     .source("numbers", from_iter(0..100_000u64))
//!     .map("double", |x| x * 2 + 1)
//!     .workers(2)
//!     .filter("not-div3", |x| x % 3 != 0)
//!     .sink("sum", fold(0u64, |acc, x: u64| acc.wrapping_add(x)));
//! let report = p.run().await?;
//!
//! let filter = report.stage("not-div3").unwrap();
//! assert_eq!(filter.received, filter.ok + filter.filtered);
//! assert_eq!(sum.take(), Some((0..100_000u64).map(|x| x * 2 + 1).filter(|x| x % 3 != 0).sum()));
//! # Ok(()) }
//! ```

mod ack;
mod channel;
mod dead_letter;
mod error;
mod fan_in;
mod fan_out;
mod feedback;
mod metrics;
mod ops;
mod pipeline;
mod pool;
mod runtime;
mod scatter;
mod sink;
mod source;
mod stage;

pub use ack::{Ack, AckOutcome};
pub use dead_letter::{DeadLetter, error_chain};
pub use error::{BoxError, Error, RunError, WriteError};
pub use fan_in::Window;
pub use feedback::{LoopBack, LoopExit, LoopOptions};
pub use metrics::{Metrics, Report, StageReport};
pub use pipeline::{Flow, Pipeline, SinkHandle};
pub use runtime::DEAD_LETTER_STAGE;
pub use scatter::{Branch, BranchError, Gather, branch};
pub use sink::{Collect, Fold, ForEach, Sink, collect, fold, for_each};
pub use source::{
    Source, from_acked_iter, from_acked_stream, from_iter, from_stream, from_try_acked_iter,
    from_try_acked_stream, from_try_iter, from_try_stream,
};
pub use stage::{
    DEFAULT_BATCH_SIZE, DEFAULT_BUFFER, DEFAULT_LINGER, ErrorPolicy, PipelineOptions, Retry,
};
pub use tokio_util::sync::CancellationToken;
