//! The tokio runtime every `weir` command runs on, built in one place so
//! that what the engine's threads need (for example the stack size that jq
//! evaluation of untrusted records relies on) is decided once.

use anyhow::Result;

/// A multi-threaded runtime with every driver (I/O, time, signals) enabled.
///
/// # Errors
/// When the operating system refuses the threads.
pub fn build() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
