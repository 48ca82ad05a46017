//! The record of declarative pipelines: a JSON value as jq sees it
//! ([`value`]), with where it was read ([`record`]); what sources read
//! before decoding ([`raw`]); a dead letter's JSON ([`dead_letter`]); the
//! watchdog over jq evaluations ([`watchdog`]).
//!
//! Its own crate so that the transport (`weir-nats`) carries records
//! without depending on the connectors (SQLite, jsonschema, jaq's
//! interpreter), which only the processes running components need.

pub mod dead_letter;
pub mod raw;
pub mod record;
pub mod value;
pub mod watchdog;

pub use raw::Raw;
pub use record::{Position, Record};
pub use value::Val;
