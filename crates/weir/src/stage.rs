//! Stage configuration: worker count, ordering, queue bound, error policy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The most items that travel together between stages. Users still write
/// per-item functions; batches only amortise channel and wake-up costs.
/// A stage that emits more at once (a `flat_map`, an aggregate's flush) has
/// its output split into batches of this size.
///
/// Choosing it: larger batches cost less per item but hold more items in
/// flight (an edge holds at most `buffer * batch_size` items) and add
/// latency at low rates. 1024 keeps the per-item channel cost near 1 ns for
/// small items (measured in B1: 1024 runs 1.6x faster than 512) while an
/// edge holds at most 8,192 with the default buffer. Sources that wait
/// for input (streams) send what they have instead of waiting to fill a batch.
pub const DEFAULT_BATCH_SIZE: usize = 1024;

/// Default bound of every edge, in batches. See [`DEFAULT_BATCH_SIZE`].
///
/// Choosing it: a few batches let a producer run ahead while the consumer
/// works, which keeps both busy; more only adds memory and latency, because a
/// steady-state pipeline runs at the pace of its slowest stage whatever the
/// bound. Raise it when a producer is bursty (a source that delivers in
/// spurts); lower it to bound memory for large items.
pub const DEFAULT_BUFFER: usize = 8;

/// How long an iterator source holds a partial batch while its items come
/// slowly, by default: a few milliseconds, so a trickle of items (one every
/// few ms) reaches the sink at once instead of when 1,024 have come, and a
/// cancel is seen as soon. Stages already send a partial batch whenever
/// their input queue is empty; a stream source sends whatever is ready. An
/// iterator blocked in `next()` cannot be interrupted: what it gave before
/// waits with it, so sources that wait for input should be streams
/// ([`from_stream`](crate::from_stream)). Zero sends every item on its own
/// (slow). A source slower than `batch_size` items per linger sends
/// batches smaller than `batch_size`.
pub const DEFAULT_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// Settings that apply to the whole pipeline.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Items per batch; see [`DEFAULT_BATCH_SIZE`].
    pub batch_size: usize,
    /// Default bound of every edge, in batches; see [`DEFAULT_BUFFER`].
    pub buffer: usize,
    /// The longest an iterator source holds the first item of a partial
    /// batch before sending it on; see [`DEFAULT_LINGER`].
    pub linger: std::time::Duration,
    /// How many dead letters the built-in dead-letter collector keeps (in
    /// [`Report::dead_letters`](crate::Report::dead_letters)) when no
    /// dead-letter sink is set. One more fails the run rather than lose one.
    pub dead_letter_limit: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            batch_size: DEFAULT_BATCH_SIZE,
            buffer: DEFAULT_BUFFER,
            linger: DEFAULT_LINGER,
            dead_letter_limit: 10_000,
        }
    }
}

/// What a stage does with an item whose function returned an error.
#[derive(Debug, Clone, Default)]
pub enum ErrorPolicy {
    /// Fail the whole pipeline, naming the stage (the default: a library
    /// should not decide that losing the happy path is fine).
    #[default]
    Fail,
    /// Send the item, the error, the stage and the attempt count to the
    /// dead-letter output and go on.
    DeadLetter,
    /// Try again with exponential backoff and jitter; dead-letter the item
    /// when the attempts run out.
    Retry(Retry),
}

/// Retry settings: attempt `n` waits about `initial * 2^(n-1)`, capped at
/// `max_delay`, with jitter of up to half the delay so that many workers
/// failing together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
}

impl Retry {
    /// `max_attempts` attempts, starting at 10 ms, capped at 5 s.
    pub fn attempts(max_attempts: u32) -> Self {
        Retry {
            max_attempts: max_attempts.max(1),
            initial: Duration::from_millis(10),
            max_delay: Duration::from_secs(5),
        }
    }

    /// Sets the first delay.
    pub fn initial(mut self, d: Duration) -> Self {
        self.initial = d;
        self
    }

    /// Sets the cap on the delay.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// The delay after failed attempt `attempt` (1-based).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let base = exp.min(self.max_delay);
        // Equal jitter: half fixed, half random, so delays never collapse to 0.
        let half = base / 2;
        let jitter = half.mul_f64(next_unit());
        half + jitter
    }
}

/// A uniform number in [0, 1). Jitter needs no quality beyond "not in
/// lockstep", so a shared splitmix64 counter is enough and adds no crate to
/// the core's dependency set.
fn next_unit() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0x853c_49e6_748f_ea9b);
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Per-stage settings, set on a [`Flow`](crate::Flow) right after the stage.
#[derive(Debug, Clone)]
pub(crate) struct StageOptions {
    pub workers: usize,
    pub ordered: bool,
    /// Reorder window in batches for ordered pools.
    pub window: Option<usize>,
    pub on_error: ErrorPolicy,
}

impl Default for StageOptions {
    fn default() -> Self {
        StageOptions {
            workers: 1,
            ordered: false,
            window: None,
            on_error: ErrorPolicy::Fail,
        }
    }
}

impl StageOptions {
    /// Reorder window of an ordered pool, in batches taken but not yet
    /// emitted. The default, 4 per worker, keeps every worker busy while one
    /// batch is slow. A window set by the user is honoured exactly, also
    /// below the worker count (then at most that many workers are busy at
    /// once): it is the memory bound the user asked for.
    pub fn reorder_window(&self) -> usize {
        self.window.unwrap_or(self.workers * 4).max(1)
    }

    pub fn max_attempts(&self) -> u32 {
        match &self.on_error {
            ErrorPolicy::Retry(r) => r.max_attempts,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = Retry::attempts(10)
            .initial(Duration::from_millis(100))
            .max_delay(Duration::from_millis(1000));
        for attempt in 1..12 {
            let d = r.delay(attempt);
            let full = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20)))
                .min(Duration::from_millis(1000));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }
}
