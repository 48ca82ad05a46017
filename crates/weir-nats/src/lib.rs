//! Weir's broker transport: pipeline edges carried by NATS JetStream.
//!
//! When one machine is not enough, an edge of a pipeline can run through
//! the broker instead of an in-process channel. The stages on either side
//! do not know: the coordinator publishes a flow into the reader's
//! **inbox** (one stream per reading component) with an engine sink, and
//! reads an inbox with an engine source whose records carry the broker's
//! acknowledgement; workers on any machine share one durable consumer per
//! stage, which is how a worker pool spans nodes.
//!
//! - [`broker`]: connecting, and refusing servers that are too old.
//! - [`codec`]: the versioned, batched wire format.
//! - [`job`]: a job's streams, consumers, state and statistics.
//! - [`lease`]: one coordinator (or replay) per job at a time.
//! - [`publish`]: batched publishing with deterministic ids, retries and
//!   backpressure; the engine sinks that publish.
//! - [`consume`]: the coordinator's inbox source.
//! - [`worker`]: `weir worker`: pull, process, publish, acknowledge.
//! - [`completion`]: when a job is finished, counted on the broker.
//! - [`dlq`]: the dead-letter stream: list and replay.
//!
//! Guarantees: at-least-once delivery between stages, duplicates dropped
//! by message id within the duplicate window, and exact results with
//! idempotent sinks (upsert on key). See the README's "Distributed mode".

pub mod broker;
pub mod codec;
pub mod completion;
pub mod consume;
pub mod dlq;
pub mod job;
pub mod lease;
pub mod publish;
pub mod worker;

pub use broker::{Broker, BrokerError};
pub use job::{EdgeSettings, InboxSpec, Job, JobState, Status};
