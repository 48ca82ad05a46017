//! SIGINT (Ctrl-C) and SIGTERM (systemd, Kubernetes, `kill`): the first
//! stops the inputs and drains what is in flight; a second aborts at once.
//! An interrupted command exits with 128 + the signal's number (130 for
//! SIGINT, 143 for SIGTERM), after printing its report.

use std::sync::atomic::{AtomicU8, Ordering};

use weir::CancellationToken;

/// The exit status of the first signal received, 0 when none.
static RECEIVED: AtomicU8 = AtomicU8::new(0);

/// Waits for signals: the first cancels `cancel` (saying `draining`), the
/// second ends the process. Runs until aborted.
pub async fn drain_on_signal(cancel: CancellationToken, draining: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    loop {
        let code = tokio::select! {
            _ = term.recv() => 143,
            _ = int.recv() => 130,
        };
        if RECEIVED
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            eprintln!("\ninterrupted: {draining} (a second signal aborts)");
            cancel.cancel();
        } else {
            eprintln!("aborted");
            std::process::exit(i32::from(code));
        }
    }
}

/// The exit status an interrupted command ends with, if a signal came.
pub fn exit_code() -> Option<u8> {
    match RECEIVED.load(Ordering::Acquire) {
        0 => None,
        c => Some(c),
    }
}
