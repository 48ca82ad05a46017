//! The tokio runtime every `weir` command runs on, built in one place so
//! that what the engine's threads need is decided once.
//!
//! Two things here exist for jq evaluation of untrusted records (see
//! `weir_connectors::limits`):
//!
//! * **The threads' stack size.** The engine runs jq stages on tokio's
//!   blocking threads, and jaq recurses on the thread's stack (about
//!   2.7 KiB per level of a record-driven recursion in a release build). A
//!   recursion that runs out of stack is stopped and its record
//!   dead-lettered whatever the size, so the size decides only how deep a
//!   record may recurse and still be computed: with
//!   [`STACK_SIZE`](weir_connectors::limits::STACK_SIZE) (1 GiB), about
//!   400,000 levels. It costs address space, not memory: pages are backed
//!   only once touched (a few KiB for a thread that never recurses deeply);
//!   the pages a deep record touched stay resident until tokio retires the
//!   idle thread (10 s).
//! * **What a stuck evaluation does.** An evaluation that cannot be stopped
//!   (see `weir_connectors::watchdog`) would hang the run; the hook
//!   installed here prints an error naming the stage, the record's position
//!   and the limit, and exits with status 1. A distributed worker replaces
//!   it with its own (`watchdog::set_hook`) after building the runtime.

use anyhow::Result;
use weir_connectors::{limits, watchdog};

/// A multi-threaded runtime with every driver (I/O, time, signals) enabled,
/// threads with [`limits::STACK_SIZE`] of stack, and the watchdog's hook
/// installed.
///
/// # Errors
/// When the operating system refuses the threads.
pub fn build() -> Result<tokio::runtime::Runtime> {
    watchdog::set_hook(watchdog::exit_on_stuck);
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(limits::STACK_SIZE)
        .build()?)
}
