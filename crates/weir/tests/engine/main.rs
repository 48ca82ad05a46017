//! Behaviour tests of the weir engine at its public API. Every test bounds
//! its own time (see [`util::within`]) so a deadlock fails instead of
//! hanging.

// `x % n == 0` reads as the arithmetic the tests mean.
#![allow(clippy::manual_is_multiple_of)]

mod accounting;
mod acks;
mod bounds;
mod errors;
mod fan_in;
mod fan_out;
mod fusion;
mod gauges;
mod linger;
mod loops;
mod pipeline;
mod pools;
mod props;
mod retry_order;
mod shutdown;
mod util;
