//! The components of weir's declarative (YAML) pipelines.
//!
//! Everything here works on one dynamic item type, [`Record`]: a JSON value
//! plus where it came from ([`Position`]: input, file, line), so that any
//! error about a record can say where the record was read.
//!
//! * [`sources`] read items: `file` (jsonl, csv, lines; gzip), `stdin`,
//!   `generate`. A source yields [`Raw`] items (text lines, CSV rows) with
//!   their position; [`sources::decode::Decoder`] turns them into records in
//!   a stage of its own (in parallel), and a line that does not decode goes
//!   to the dead-letter output with its position and reason.
//! * [`processors`] transform records: `jq`, `filter`, `validate`, `dedupe`,
//!   `aggregate`, `batch`. A processor is a function from one record to zero
//!   or more records, or an error that dead-letters the record.
//! * [`limits`] and [`watchdog`]: every jq evaluation runs under per-record
//!   limits (outputs, time, stack), so a record that drives a program
//!   astray is dead-lettered; one that cannot be stopped is reported to a
//!   process-wide hook (by default: exit with status 1).
//! * [`sinks`] write records: `sqlite` (the embedded default store), `file`,
//!   `stdout`, `http`.
//!
//! * [`registry`]: the one list of components, and the trait each kind
//!   implements; pipeline files are parsed and built through it.
//!
//! Each component's configuration struct is its user documentation: every
//! field has a `///` doc, unknown keys are rejected, and `weir explain`
//! prints the JSON schema derived from it.

pub use weir_record::{record, value, watchdog};

pub mod checkpoint;
pub mod error;
pub mod http_client;
pub mod limits;
mod pg;
pub mod processors;
pub mod registry;
pub mod sinks;
pub mod sources;

pub use error::{ConfigError, ProcessError};
pub use record::{Position, Record};
pub use sources::Raw;
pub use value::Val;
