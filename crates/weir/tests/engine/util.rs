//! Helpers shared by the engine tests.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::{Ack, AckOutcome, Report};

/// Runs `fut` on a fresh 2-thread runtime, failing if it takes longer than
/// `secs` (a deadlock fails instead of hanging). Checks that no task of the
/// run is left alive afterwards.
pub fn within<F: Future + Send + 'static>(secs: u64, fut: F) -> F::Output
where
    F::Output: Send,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async move { tokio::time::timeout(Duration::from_secs(secs), fut).await })
    }));
    let out = match out {
        Ok(out) => out,
        Err(panic) => {
            // A failed assertion may leave a stage blocked for ever: do not
            // wait for it when the runtime drops.
            rt.shutdown_timeout(Duration::from_secs(1));
            std::panic::resume_unwind(panic);
        }
    };
    // A task's bookkeeping ends just after its output is taken: allow that.
    let mut alive = rt.metrics().num_alive_tasks();
    for _ in 0..100 {
        if alive == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        alive = rt.metrics().num_alive_tasks();
    }
    // Never wait on a stuck thread when a test failed: that would hang.
    rt.shutdown_timeout(Duration::from_secs(1));
    let out = out.unwrap_or_else(|_| panic!("test did not finish within {secs}s (deadlock?)"));
    assert_eq!(alive, 0, "a task of the run outlived it");
    out
}

/// Asserts that every stage balances and that no worker is left running.
pub fn assert_balanced(report: &Report) {
    for s in &report.stages {
        assert!(
            s.is_balanced(),
            "stage '{}' does not balance: {s:?}",
            s.name
        );
        assert_eq!(s.workers_active, 0, "stage '{}' has workers left", s.name);
    }
}

/// Records every ack outcome by item id.
#[derive(Clone, Default)]
pub struct AckLog(pub Arc<Mutex<Vec<(u64, AckOutcome)>>>);

impl AckLog {
    pub fn ack(&self, id: u64) -> Ack {
        let log = self.0.clone();
        Ack::new(move |o| log.lock().unwrap().push((id, o)))
    }

    pub fn outcomes(&self) -> Vec<(u64, AckOutcome)> {
        let mut v = self.0.lock().unwrap().clone();
        v.sort_by_key(|(id, _)| *id);
        v
    }
}

/// Counts live values: [`Gauge::item`] makes one, dropping it gives it back.
/// The peak is the most that were ever alive at once, which is what a
/// memory bound is about.
#[derive(Default)]
pub struct Gauge {
    live: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl Gauge {
    pub fn item(self: &Arc<Self>, v: u64) -> Tracked {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.live.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        Tracked {
            v,
            gauge: self.clone(),
        }
    }

    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A value counted by a [`Gauge`] while it lives.
pub struct Tracked {
    pub v: u64,
    gauge: Arc<Gauge>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.gauge
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
