//! The watchdog: what happens to a jq evaluation that went over its time
//! limit and cannot be stopped.
//!
//! Most evaluations stop themselves at their limit (see
//! `weir_connectors::limits`): the record is dead-lettered and the run goes
//! on. A few cannot: one native call of jaq that works for long without
//! calling back into the interpreter, such as building `[range(1e10)]`'s
//! array or sorting a huge one, or a tail-recursive loop that jaq runs
//! without a checkpoint (`def f: f; f`). A thread stuck in such a call cannot
//! be killed or unwound from outside, so the record can never be
//! dead-lettered, its stage never finishes and the run would hang (and a
//! distributed worker would keep its message alive for ever).
//!
//! So every evaluation is registered here while it runs (per thread, about
//! 40 ns per record), and one thread, `weir-jq-watchdog`, started by the
//! first evaluation, looks at them every [`TICK`]. An evaluation still
//! running [`GRACE`] after its time limit is reported, once, to the
//! [hook](set_hook) as a [`Stuck`]: the stage, the record's position and
//! the limit.
//!
//! The default hook, [`exit_on_stuck`], prints the [`Stuck`] as an error
//! on stderr and ends the process with exit status 1: a process with a
//! thread that spins for ever (and may allocate for ever) is worse than a
//! failed one, and the status makes the failure visible to whatever runs
//! it. The `weir` CLI installs the same action for local runs; a
//! distributed worker can install one that stops extending its message's
//! ack before exiting, so that the broker redelivers the message and
//! dead-letters it at `max_deliver`.
//!
//! ```
//! use weir_record::watchdog;
//! // Instead of exiting: log, and let the evaluation run on.
//! watchdog::set_hook(|stuck| eprintln!("warning: {stuck}"));
//! # watchdog::set_hook(watchdog::exit_on_stuck);
//! ```

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::record::Position;

/// How long after its time limit a running evaluation is reported as stuck.
///
/// An evaluation that can be stopped stops within a [`TICK`] of its limit
/// (at its next checkpoint after the watchdog flags it); one still running
/// a second later is in a call that cannot be stopped. The second absorbs a
/// loaded machine descheduling the thread.
pub const GRACE: Duration = Duration::from_secs(1);

/// How often the watchdog looks at the evaluations in progress: a stuck one
/// is reported between [`GRACE`] and `GRACE + TICK` after its limit.
pub const TICK: Duration = Duration::from_millis(50);

/// An evaluation that went over its time limit and has not returned
/// [`GRACE`] later.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stuck {
    /// The stage (the component's name in the pipeline file), or `""` when
    /// the component was built without one.
    pub stage: String,
    /// Where the record was read (`orders.jsonl:12`, `stdin#3`), when the
    /// evaluation was of a record.
    pub position: Option<String>,
    /// The stage's time limit per record.
    pub limit: Duration,
    /// How long the evaluation has been running.
    pub elapsed: Duration,
}

impl fmt::Display for Stuck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.stage.is_empty() {
            write!(f, "stage '{}': ", self.stage)?;
        }
        f.write_str("the jq evaluation of the record")?;
        if let Some(p) = &self.position {
            write!(f, " at {p}")?;
        }
        write!(
            f,
            " took longer than {} (limits.timeout_ms) and cannot be interrupted \
             (still running after {}), so the record cannot be dead-lettered: make the \
             program cheaper on such records, or raise limits.timeout_ms",
            human(self.limit),
            human(self.elapsed)
        )
    }
}

/// What the watchdog does with a stuck evaluation.
pub type Hook = dyn Fn(&Stuck) + Send + Sync;

fn hook() -> &'static RwLock<Arc<Hook>> {
    static HOOK: OnceLock<RwLock<Arc<Hook>>> = OnceLock::new();
    HOOK.get_or_init(|| RwLock::new(Arc::new(exit_on_stuck)))
}

/// Replaces what the watchdog does with a stuck evaluation (for the whole
/// process; the last call wins). The hook runs on the watchdog's thread,
/// once per stuck evaluation; the evaluation itself goes on running, since
/// nothing can stop it.
pub fn set_hook(f: impl Fn(&Stuck) + Send + Sync + 'static) {
    *hook().write().unwrap_or_else(|p| p.into_inner()) = Arc::new(f);
}

/// The default hook: prints `error: <stuck>` on stderr and ends the process
/// with exit status 1 (without unwinding: the stuck thread cannot be
/// joined).
pub fn exit_on_stuck(stuck: &Stuck) {
    eprintln!("error: {stuck}");
    std::process::exit(1);
}

/// The evaluation in progress on one thread.
#[derive(Default)]
struct Slot {
    /// Counts the thread's evaluations (from 1), so that the watchdog tells
    /// one from the next; written only by the thread.
    seq: AtomicU64,
    /// Whether evaluation `seq` is running (and not yet stopping).
    running: AtomicBool,
    /// The evaluation (by its `seq`) the watchdog found over its time
    /// limit: its checkpoints stop it.
    over_time: AtomicU64,
    /// What the watchdog reports about evaluation `seq`, written when it
    /// begins.
    about: Mutex<About>,
    /// What the watchdog saw at its last look (only it touches this).
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct About {
    limit: Duration,
    /// Kept from one evaluation to the next: a thread usually runs one
    /// stage, so the name is cloned only when it changes.
    stage: Option<Arc<str>>,
    /// Kept after the evaluation ends (until the next one begins), which
    /// saves a lock per evaluation.
    pos: Option<Arc<Position>>,
}

#[derive(Default)]
struct Seen {
    seq: u64,
    /// When the watchdog first saw evaluation `seq` running.
    since: Option<Instant>,
    reported: bool,
}

fn slots() -> &'static Mutex<Vec<Weak<Slot>>> {
    static SLOTS: OnceLock<Mutex<Vec<Weak<Slot>>>> = OnceLock::new();
    SLOTS.get_or_init(|| {
        // Started with the first evaluation. If the thread cannot be
        // started, evaluations still stop at their output and stack limits,
        // but not at their time limit.
        let _ = std::thread::Builder::new()
            .name("weir-jq-watchdog".into())
            .stack_size(256 * 1024)
            .spawn(watch_loop);
        Mutex::new(Vec::new())
    })
}

thread_local! {
    static SLOT: Arc<Slot> = {
        let slot = Arc::new(Slot::default());
        lock(slots()).push(Arc::downgrade(&slot));
        slot
    };
}

/// The registration of the current thread's evaluation, for as long as it
/// lives: about 15 ns (one uncontended lock, a few atomic stores).
pub struct Watch {
    /// This thread's slot, held so that a checkpoint reads the flag
    /// through a plain pointer rather than a thread-local lookup.
    slot: Arc<Slot>,
    seq: u64,
    /// Whether this is the thread's outermost evaluation (only that one is
    /// registered; a nested one shares its time).
    outermost: bool,
}

impl Watch {
    /// Registers an evaluation of `stage` on the record at `pos` with a
    /// time limit; dropping the `Watch` ends it.
    pub fn begin(limit: Duration, stage: &Arc<str>, pos: Option<&Arc<Position>>) -> Watch {
        let slot = SLOT.with(Arc::clone);
        // Only this thread writes `seq` and `running`.
        let seq = slot.seq.load(Relaxed);
        if slot.running.load(Relaxed) {
            return Watch {
                slot,
                seq,
                outermost: false,
            };
        }
        let seq = seq + 1;
        {
            let mut a = lock(&slot.about);
            a.limit = limit;
            if !a.stage.as_ref().is_some_and(|s| Arc::ptr_eq(s, stage)) {
                a.stage = Some(stage.clone());
            }
            a.pos = pos.cloned();
            // Inside the lock, so that the watchdog never pairs this
            // evaluation with the previous one's position.
            slot.seq.store(seq, Relaxed);
            slot.running.store(true, Relaxed);
        }
        Watch {
            slot,
            seq,
            outermost: true,
        }
    }

    /// Whether the watchdog found this evaluation over its time limit.
    #[inline]
    pub fn over_time(&self) -> bool {
        self.slot.over_time.load(Relaxed) == self.seq
    }

    /// The evaluation went over a limit and is unwinding: that is bounded
    /// (though freeing a deep value may take a while), so it is no longer
    /// watched.
    pub fn stopping(&self) {
        self.slot.running.store(false, Relaxed);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.outermost {
            self.slot.running.store(false, Relaxed);
        }
    }
}

/// [`Watch::stopping`] for the current thread's evaluation.
pub fn stopping_current() {
    let _ = SLOT.try_with(|slot| slot.running.store(false, Relaxed));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data stays consistent whatever panicked while holding the lock.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn watch_loop() {
    loop {
        std::thread::sleep(TICK);
        let now = Instant::now();
        let mut stuck = Vec::new();
        {
            let mut slots = lock(slots());
            slots.retain(|w| w.strong_count() > 0);
            for slot in slots.iter().filter_map(Weak::upgrade) {
                if let Some(s) = look(&slot, now) {
                    stuck.push(s);
                }
            }
        }
        let hook = hook().read().unwrap_or_else(|p| p.into_inner()).clone();
        for s in &stuck {
            hook(s);
        }
    }
}

/// One look at a thread's evaluation: flags it over time, and returns it
/// when it is stuck (once).
fn look(slot: &Slot, now: Instant) -> Option<Stuck> {
    let about = lock(&slot.about);
    let (seq, running) = (slot.seq.load(Relaxed), slot.running.load(Relaxed));
    let mut seen = lock(&slot.seen);
    if !running {
        seen.since = None;
        return None;
    }
    if seen.seq != seq || seen.since.is_none() {
        *seen = Seen {
            seq,
            since: Some(now),
            reported: false,
        };
        return None;
    }
    // Seen running at a previous look: it has run at least since then (and
    // at most one tick more), so it is never flagged early.
    let elapsed = now.saturating_duration_since(seen.since?);
    if elapsed >= about.limit {
        slot.over_time.store(seq, Relaxed);
    }
    if elapsed < about.limit + GRACE || seen.reported {
        return None;
    }
    seen.reported = true;
    Some(Stuck {
        stage: about.stage.as_deref().unwrap_or("").to_owned(),
        position: about.pos.as_ref().map(|p| p.to_string()),
        limit: about.limit,
        elapsed,
    })
}

/// `1s`, `1500ms`, `250ms`: whole seconds, else milliseconds.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
