//! The modules of the weir-nats test binary, one per area of the crate.

mod completion;
mod connect;
mod consume;
mod dlq;
mod errors;
mod job;
mod lease;
mod publish;
mod restart;
mod size;
mod util;
mod worker;
