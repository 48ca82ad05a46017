//! Per-stage counters and timings, live while the pipeline runs and final in
//! the [`Report`].
//!
//! Counters are relaxed atomics bumped once per batch, not per item, so they
//! are cheap enough to leave on. Readers (a progress display, the autoscaler
//! that sizes pools from measured throughput) take [`Metrics::snapshot`] at
//! any time.
//!
//! Every stage balances: `received = ok + filtered + dead_lettered + dropped`.
//! `emitted` counts outputs, which differ from `ok` for `flat_map` and
//! aggregates. Along an edge, the producer's `emitted` equals the consumer's
//! `received` unless the run was aborted.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::dead_letter::DeadLetter;

/// Live counters of one stage.
#[derive(Debug, Default)]
pub(crate) struct StageMetrics {
    pub received: AtomicU64,
    pub ok: AtomicU64,
    pub emitted: AtomicU64,
    pub filtered: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dropped: AtomicU64,
    pub retries: AtomicU64,
    /// Busy time is measured on a sample of batches (see [`BusyClock`]):
    /// `busy_ns` over `busy_samples` timed batches, out of `busy_batches`.
    pub busy_ns: AtomicU64,
    pub busy_samples: AtomicU64,
    pub busy_batches: AtomicU64,
    pub wait_input_ns: AtomicU64,
    pub wait_output_ns: AtomicU64,
    /// Sum of input queue lengths (in batches) seen at each receive.
    pub queue_sum: AtomicU64,
    pub queue_samples: AtomicU64,
    /// Input queue length (batches) at the last receive.
    pub queue_now: AtomicU64,
    pub workers_active: AtomicU64,
    /// Workers blocked right now waiting for input / for room downstream.
    pub waiting_input_now: AtomicU64,
    pub waiting_output_now: AtomicU64,
}

impl StageMetrics {
    pub fn add(c: &AtomicU64, n: usize) {
        if n > 0 {
            c.fetch_add(n as u64, Relaxed);
        }
    }

    pub fn time(c: &AtomicU64, d: Duration) {
        c.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    /// Busy time, scaled up from the sampled batches.
    pub fn busy(&self) -> Duration {
        let (ns, samples, batches) = (
            self.busy_ns.load(Relaxed),
            self.busy_samples.load(Relaxed),
            self.busy_batches.load(Relaxed),
        );
        if samples == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos((ns as u128 * batches as u128 / samples as u128) as u64)
    }

    /// Records one unit of work timed in full (async calls).
    pub fn busy_exact(&self, d: Duration) {
        self.busy_ns.fetch_add(d.as_nanos() as u64, Relaxed);
        self.busy_samples.fetch_add(1, Relaxed);
        self.busy_batches.fetch_add(1, Relaxed);
    }

    pub fn sample_queue(&self, len: usize) {
        self.queue_sum.fetch_add(len as u64, Relaxed);
        self.queue_samples.fetch_add(1, Relaxed);
        self.queue_now.store(len as u64, Relaxed);
    }
}

/// Times one batch in [`BusyClock::EVERY`] per worker. Reading the clock
/// costs about 25 ns; twice per batch per stage it was a measurable share of
/// the per-item cost of cheap stages (B1), while a sample estimates busy time
/// well for any stage that runs more than a few batches.
#[derive(Default)]
pub(crate) struct BusyClock {
    n: u64,
}

impl BusyClock {
    const EVERY: u64 = 8;

    /// Starts timing this batch if it is one of the sampled ones.
    pub fn start(&mut self) -> Option<std::time::Instant> {
        let sample = self.n.is_multiple_of(Self::EVERY);
        self.n += 1;
        sample.then(std::time::Instant::now)
    }

    /// Ends the batch started with [`start`](Self::start).
    pub fn stop(m: &StageMetrics, started: Option<std::time::Instant>) {
        m.busy_batches.fetch_add(1, Relaxed);
        if let Some(t) = started {
            m.busy_ns.fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
            m.busy_samples.fetch_add(1, Relaxed);
        }
    }
}

/// Static facts about a stage, fixed when the pipeline is built.
#[derive(Debug, Clone)]
pub(crate) struct StageInfo {
    pub name: String,
    pub kind: &'static str,
    pub workers: usize,
    pub capacity: Option<usize>,
    pub metrics: Arc<StageMetrics>,
    /// The stage whose worker runs this one (fusion).
    pub runs_in: Option<String>,
}

/// What one stage did: a snapshot of its counters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StageReport {
    /// The stage's name.
    pub name: String,
    /// `source`, `map`, `filter`, `sink`, ...
    pub kind: &'static str,
    /// Workers configured.
    pub workers: usize,
    /// When the stage is fused: the stage whose worker runs it (it then has
    /// no queue and no workers of its own).
    pub runs_in: Option<String>,
    /// Workers running now (0 once the stage finished).
    pub workers_active: u64,
    /// Items taken from the input queue (produced, for a source).
    pub received: u64,
    /// Items processed successfully (a sink: committed).
    pub ok: u64,
    /// Items sent downstream.
    pub emitted: u64,
    /// Items dropped on purpose (a filter said no; `flat_map` gave nothing).
    pub filtered: u64,
    /// Items sent to the dead-letter output.
    pub dead_lettered: u64,
    /// Items the stage received and gave up on because the run failed or
    /// was aborted (calls in flight, items waiting for a retry, the rest of
    /// a batch whose item failed fatally, what a failed sink did not
    /// commit), or because the run was stopped (what a `Window::All`
    /// aggregate held, what a sink could not write during the drain); their
    /// acks failed.
    pub dropped: u64,
    /// Retry attempts made (not counting first attempts).
    pub retries: u64,
    /// Time workers spent running stage code, summed over workers. For an
    /// async stage: the summed duration of its calls (with 100 calls in
    /// flight it grows 100 times faster than the clock).
    pub busy: Duration,
    /// Time workers waited for input, summed over workers. A wait that
    /// ended because something else woke the worker (a window's timer, an
    /// async call finishing) counts up to that moment.
    pub waiting_for_input: Duration,
    /// Time workers waited for room downstream (backpressure), summed.
    pub waiting_for_output: Duration,
    /// Workers waiting for input right now (starved); at most `workers`,
    /// and 0 once the run ended.
    pub workers_waiting_for_input: u64,
    /// Workers waiting for room downstream right now (backpressured).
    pub workers_waiting_for_output: u64,
    /// Bound of the input queue in batches (`None` for sources).
    pub queue_capacity: Option<usize>,
    /// Input queue length in batches at the last receive.
    pub queue_len: u64,
    /// Mean input queue fill in batches, sampled at each receive.
    pub mean_queue_fill: f64,
}

impl StageReport {
    /// True when every received item is accounted for.
    pub fn is_balanced(&self) -> bool {
        self.received == self.ok + self.filtered + self.dead_lettered + self.dropped
    }
}

impl StageInfo {
    pub fn snapshot(&self) -> StageReport {
        let m = &self.metrics;
        let samples = m.queue_samples.load(Relaxed);
        StageReport {
            name: self.name.clone(),
            kind: self.kind,
            workers: self.workers,
            runs_in: self.runs_in.clone(),
            workers_active: m.workers_active.load(Relaxed),
            received: m.received.load(Relaxed),
            ok: m.ok.load(Relaxed),
            emitted: m.emitted.load(Relaxed),
            filtered: m.filtered.load(Relaxed),
            dead_lettered: m.dead_lettered.load(Relaxed),
            dropped: m.dropped.load(Relaxed),
            retries: m.retries.load(Relaxed),
            busy: m.busy(),
            waiting_for_input: Duration::from_nanos(m.wait_input_ns.load(Relaxed)),
            waiting_for_output: Duration::from_nanos(m.wait_output_ns.load(Relaxed)),
            workers_waiting_for_input: m.waiting_input_now.load(Relaxed),
            workers_waiting_for_output: m.waiting_output_now.load(Relaxed),
            queue_capacity: self.capacity,
            queue_len: m.queue_now.load(Relaxed),
            mean_queue_fill: if samples == 0 {
                0.0
            } else {
                m.queue_sum.load(Relaxed) as f64 / samples as f64
            },
        }
    }
}

/// A live view of a pipeline's counters; cheap to clone and to read while
/// the pipeline runs.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub(crate) stages: Arc<Mutex<Vec<StageInfo>>>,
}

impl Metrics {
    /// Counters of every stage, in the order the stages were added.
    pub fn snapshot(&self) -> Vec<StageReport> {
        let stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        stages.iter().map(StageInfo::snapshot).collect()
    }
}

/// What a run did: per-stage counts and timings, and the dead letters kept
/// by the built-in collector.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Report {
    /// One entry per stage, in the order they were added.
    pub stages: Vec<StageReport>,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// True when the run stopped early because its cancellation token fired
    /// (it still drained what was in flight).
    pub cancelled: bool,
    /// Dead letters, when no dead-letter sink was set.
    pub dead_letters: Vec<DeadLetter>,
}

impl Report {
    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// Items dead-lettered across all stages.
    pub fn dead_lettered(&self) -> u64 {
        self.stages.iter().map(|s| s.dead_lettered).sum()
    }
}

impl std::fmt::Display for Report {
    /// A summary table, one line per stage, then the totals.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<16} {:<12} {:>7} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "stage",
            "kind",
            "workers",
            "in",
            "out",
            "filtered",
            "dead",
            "busy",
            "starved",
            "blocked",
            "runs in"
        )?;
        for s in &self.stages {
            let workers = if s.runs_in.is_some() {
                "-".to_string()
            } else {
                s.workers.to_string()
            };
            writeln!(
                f,
                "{:<16} {:<12} {:>7} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
                truncate(&s.name, 16),
                s.kind,
                workers,
                s.received,
                s.emitted
                    .max(if s.kind == "sink" || s.kind == "dead-letter" {
                        s.ok
                    } else {
                        0
                    }),
                s.filtered,
                s.dead_lettered,
                ms(s.busy),
                ms(s.waiting_for_input),
                ms(s.waiting_for_output),
                s.runs_in
                    .as_deref()
                    .map(|r| truncate(r, 9))
                    .unwrap_or_default(),
            )?;
        }
        let secs = self.elapsed.as_secs_f64();
        let produced: u64 = self
            .stages
            .iter()
            .filter(|s| s.kind == "source")
            .map(|s| s.emitted)
            .sum();
        write!(
            f,
            "{} items from sources in {:.3} s ({:.0} items/s); {} dead-lettered{}",
            produced,
            secs,
            if secs > 0.0 {
                produced as f64 / secs
            } else {
                0.0
            },
            self.dead_lettered(),
            if self.cancelled { "; cancelled" } else { "" }
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}
