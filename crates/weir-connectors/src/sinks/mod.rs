//! Sinks: where records leave a declarative pipeline. Each implements
//! [`weir::Sink<Record>`](weir::Sink): a write returns only when the batch
//! is durable, so acks (and `--resume` checkpoints) are exact.

pub mod dead_letter;
pub mod file;
pub mod http;
pub mod nats;
pub mod postgres;
pub mod sqlite;
pub mod stdout;
