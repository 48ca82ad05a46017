//! Behaviour tests of the weir engine at its public API. Every test bounds
//! its own time (see [`util::within`]) so a deadlock fails instead of
//! hanging.

mod acks;
mod errors;
mod fan_in;
mod fan_out;
mod pipeline;
mod pools;
mod props;
mod shutdown;
mod util;
