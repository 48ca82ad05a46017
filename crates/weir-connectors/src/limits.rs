//! Limits on the jq evaluation of one record.
//!
//! Pipeline files are trusted, records are not: a correct program can still
//! be driven by a record into producing `range(.n)` outputs with `n = 1e12`,
//! recursing `.n` levels deep or looping for ever. Every component that runs
//! jq (`jq`, `filter`, `dedupe`, `aggregate`, `switch`) therefore evaluates
//! each record under a budget:
//!
//! * **outputs**: at most [`Limits::max_outputs`] outputs of one expression
//!   on one record, counted as they are pulled from jaq's lazy iterator, so
//!   `range(1e12)` stops after the limit without building anything more;
//! * **time**: at most [`Limits::timeout`] of wall-clock time for all the
//!   component's expressions on one record. The [`watchdog`] looks at every
//!   evaluation in progress each [`watchdog::TICK`] (50 ms) and flags one
//!   over its limit; the evaluation stops at its next output or
//!   checkpoint: every call of a definition, every variable binding, every
//!   step of `range`, so a loop that yields nothing stops too, within a
//!   tick of the limit;
//! * **stack**: a record-driven recursion is stopped when the thread has
//!   less than [`RED_ZONE`] of stack left, instead of overflowing it (an
//!   overflow aborts the whole process).
//!
//! A record over a limit is rejected with reason [`LIMIT_REASON`]
//! (`jq_limit`) and the limit in the detail, and goes to the dead-letter
//! output; the run goes on. A checkpoint unwinds out of jaq with a private
//! panic payload, caught where the evaluation started (jaq has no
//! cancellation hook, and no unsafe code, so unwinding through it leaves
//! nothing inconsistent); this needs the default `panic = "unwind"`. A few
//! operations of jaq cannot be stopped from inside (one native call that
//! works for long without calling back, such as `indices` of a long string
//! or `sort` of a huge array): the watchdog reports them.
//!
//! # What is still not bounded
//!
//! Memory is bounded only indirectly. The output limit bounds how many
//! values one record can produce, and the stage's batches bound how many
//! records are in flight; but one output, or one value inside an
//! evaluation, can be huge (`[range(1e8)]`, `"x" * 1e9`, doubling a string
//! in a `reduce`). Such a value takes time to build, so the time limit stops
//! it: what one evaluation can allocate is about what the machine can
//! allocate in [`Limits::timeout`] (a few GB per second of memory
//! bandwidth). A single native call that allocates at once (`"x" * 1e10`
//! asks for 10 GB in one step) is not bounded at all; cap the process's
//! memory (a cgroup, `ulimit -v`) if programs may do that.

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::error::{ConfigError, ProcessError};
use crate::record::Position;
use crate::watchdog;

/// The reason of a record rejected because its evaluation went over a
/// limit.
pub const LIMIT_REASON: &str = "jq_limit";

/// The default of [`LimitsConfig::max_outputs`].
pub const DEFAULT_MAX_OUTPUTS: u64 = 100_000;

/// The default of [`LimitsConfig::timeout_ms`].
pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;

/// How much stack an evaluation must leave unused: when a checkpoint finds
/// less, the evaluation is stopped as too deep.
///
/// It covers what jaq uses between two checkpoints (a few KiB per level of
/// recursion), the unwinding that follows, and the conversion of an output
/// to JSON. It is also the smallest stack on which an evaluation can start.
pub const RED_ZONE: usize = 256 * 1024;

/// The stack size the threads that evaluate jq should have, for example
/// `tokio::runtime::Builder::thread_stack_size(STACK_SIZE)` (the `weir` CLI
/// does this).
///
/// jaq recurses on the thread's stack, measured at about 2.7 KiB per level
/// of a record-driven recursion in a release build and 26 KiB in a debug
/// build, so 1 GiB lets a recursion 100,000 levels deep finish in a release
/// build (up to about 400,000; a debug build stops at about 40,000). Deeper
/// than that, the recursion is stopped when the stack runs low (see
/// [`RED_ZONE`]) and the record dead-lettered; it never overflows.
///
/// What the red zone cannot guard is freeing a deeply nested value that an
/// evaluation built (`reduce range(.n) as $x (null; [.])`, or
/// `reduce .path[] as $k (null; {($k): .})` on a long array): jaq frees it
/// recursively, about 50 bytes of stack per level in a release build. On
/// 1 GiB that is about 20 million levels, and an evaluation builds at most
/// 2 to 3 million levels per second, so the default one-second time limit
/// keeps it well inside; a `timeout_ms` above about 7 s on such a program,
/// or a thread with a small stack (a default 2 MiB Rust thread: about
/// 40,000 levels, built in 20 ms), can overflow and abort the process.
/// Recursion itself is safe on any stack: on a 2 MiB thread it is stopped
/// at about 700 levels (70 in a debug build).
///
/// The cost is address space, not memory: a thread's stack is reserved
/// when the thread starts and only the pages a computation touches are
/// backed by memory, so a thread that never recurses deeply costs a few
/// KiB; the pages a deep record touched stay resident until the thread
/// ends. Reserving fails where the kernel does not overcommit
/// (`vm.overcommit_memory = 2`) or under an address-space limit
/// (`ulimit -v`): count 1 GiB per thread there.
pub const STACK_SIZE: usize = 1024 * 1024 * 1024;

/// The per-record limits of a component that runs jq, as written in the
/// pipeline file (`limits:` under the component).
///
/// ```yaml
/// jq:
///   program: '.items[]'
///   limits: { max_outputs: 1000000, timeout_ms: 5000 }
/// ```
///
/// A record over a limit is dead-lettered with reason `jq_limit` and the
/// limit in the detail (`more than 100000 outputs`, `took longer than 1s`);
/// the run goes on.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// How many outputs one expression may give for one record (default
    /// 100000, at least 1).
    ///
    /// A record that splits into more than 100,000 records is a runaway
    /// program (`range(.n)` on a bad `n`) far more often than data: a record
    /// that really holds 100,000 items is a line of megabytes. At about
    /// 0.7 KB per output record, the default keeps one record's outputs
    /// under about 70 MB per worker. Raise it for inputs whose records hold
    /// larger arrays to split.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub max_outputs: Option<Spanned<u64>>,
    /// How long, in milliseconds of wall-clock time, the component's jq
    /// expressions may take on one record, all together (default 1000, at
    /// least 1).
    ///
    /// jq typically takes microseconds per record, so one second is
    /// thousands of times the norm even on a loaded machine, yet short
    /// enough that a runaway record costs a worker only a second, and that
    /// what it can allocate in that time stays bounded (see the `jq`
    /// component's documentation). Raise it for a program that is slow on
    /// purpose on big records.
    ///
    /// A few jq operations cannot be interrupted (one native call that
    /// works for long, such as `[range(1e10)] | length` building its array,
    /// or `sort` of a huge array): when one of them is still running one
    /// second after this limit, the record cannot be dead-lettered and the
    /// run stops with exit status 1 and an error that names the stage, the
    /// record's position and the limit, rather than hang.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub timeout_ms: Option<Spanned<u64>>,
}

impl LimitsConfig {
    /// The limits, defaults filled in.
    ///
    /// # Errors
    /// A limit of 0.
    pub fn build(&self) -> Result<Limits, ConfigError> {
        let positive = |v: &Option<Spanned<u64>>, what: &str, default: u64| match v {
            Some(s) if s.value == 0 => Err(ConfigError::at(
                format!("limits.{what} must be at least 1"),
                s,
            )),
            Some(s) => Ok(s.value),
            None => Ok(default),
        };
        Ok(Limits {
            max_outputs: positive(&self.max_outputs, "max_outputs", DEFAULT_MAX_OUTPUTS)?,
            timeout: Duration::from_millis(positive(
                &self.timeout_ms,
                "timeout_ms",
                DEFAULT_TIMEOUT_MS,
            )?),
        })
    }
}

/// Resolved per-record limits: see [`LimitsConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Outputs of one expression on one record.
    pub max_outputs: u64,
    /// Wall-clock time of all the component's expressions on one record.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_outputs: DEFAULT_MAX_OUTPUTS,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
        }
    }
}

/// Which limit an evaluation went over.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitExceeded {
    /// It gave more outputs than this.
    Outputs(u64),
    /// It ran for longer than this.
    Time(Duration),
    /// It recursed until the thread's stack (this many bytes) was nearly
    /// used up.
    Depth(Option<usize>),
    /// An output nests arrays and objects deeper than this.
    Nesting(usize),
}

impl LimitExceeded {
    /// The rejection of the record: reason `jq_limit`, the limit in the
    /// detail.
    pub fn into_process_error(self) -> ProcessError {
        ProcessError::new(LIMIT_REASON, self.to_string())
    }
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitExceeded::Outputs(n) => write!(f, "more than {n} outputs (limits.max_outputs)"),
            LimitExceeded::Time(t) => {
                write!(f, "took longer than {} (limits.timeout_ms)", human(*t))
            }
            LimitExceeded::Depth(stack) => {
                f.write_str("recursed deeper than the thread's stack allows")?;
                if let Some(s) = stack {
                    write!(f, " ({} MiB)", s / (1024 * 1024))?;
                }
                Ok(())
            }
            LimitExceeded::Nesting(n) => {
                write!(
                    f,
                    "an output nests arrays and objects deeper than {n} levels"
                )
            }
        }
    }
}

impl std::error::Error for LimitExceeded {}

pub(crate) use crate::watchdog::human;

/// The budget of one record: created when its evaluation starts, consulted
/// at every checkpoint, and registered with the [`watchdog`] for as long as
/// it lives (the thread's evaluation in progress).
///
/// It reads no clock: the watchdog, which looks at every evaluation in
/// progress each [`watchdog::TICK`], flags one that is over its time
/// limit, and a checkpoint only reads that flag. Reading the clock would
/// cost more than the checkpoints themselves on a small record.
pub(crate) struct Budget {
    limits: Limits,
    /// Below this stack address, the evaluation is too deep (0: unknown
    /// stack, not checked).
    stack_floor: usize,
    /// The stack the evaluation started with, for the error message.
    stack_left: Option<usize>,
    watch: watchdog::Watch,
}

/// The panic payload that stops an evaluation from inside jaq.
struct Stop(LimitExceeded);

/// An address on the current stack: the stack pointer, give or take the
/// caller's frame.
#[inline(always)]
fn stack_address() -> usize {
    let here = 0u8;
    std::ptr::addr_of!(here) as usize
}

impl Budget {
    /// Starts the budget of one record of `stage`, read at `pos`.
    pub(crate) fn start(limits: Limits, stage: &Arc<str>, pos: Option<&Arc<Position>>) -> Self {
        // Stacks grow down on every platform `stacker` knows.
        let stack_left = stacker::remaining_stack();
        let stack_floor = stack_left.map_or(0, |left| {
            (stack_address() - left.min(stack_address())).saturating_add(RED_ZONE)
        });
        Budget {
            limits,
            stack_floor,
            stack_left,
            watch: watchdog::Watch::begin(limits.timeout, stage, pos),
        }
    }

    /// The output limit.
    pub(crate) fn max_outputs(&self) -> u64 {
        self.limits.max_outputs
    }

    /// Stops the evaluation (unwinding out of jaq to [`guarded`]) when the
    /// stack runs low or the watchdog found it over time. Called by jaq
    /// (through its context) at every call and binding, and by `range` at
    /// every step: about a nanosecond.
    #[inline]
    pub(crate) fn checkpoint(&self) {
        if stack_address() < self.stack_floor {
            stop(LimitExceeded::Depth(self.stack_left));
        }
        if self.watch.over_time() {
            stop(LimitExceeded::Time(self.limits.timeout));
        }
    }

    /// Tells the watchdog the evaluation is over a limit and on its way out:
    /// what remains (freeing what it built) is bounded, not stuck.
    pub(crate) fn stopping(&self) {
        self.watch.stopping();
    }

    /// The time limit, checked at every output.
    pub(crate) fn check_time(&self) -> Result<(), LimitExceeded> {
        if self.watch.over_time() {
            return Err(LimitExceeded::Time(self.limits.timeout));
        }
        Ok(())
    }
}

/// Runs `f` (a jq evaluation under a [`Budget`]), turning a stop at a
/// checkpoint into the limit it names. Any other panic goes on unwinding.
///
/// # Errors
/// The limit the evaluation went over, when a checkpoint stopped it.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, LimitExceeded> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| match downcast_stop(payload) {
        Ok(limit) => limit,
        Err(other) => resume_unwind(other),
    })
}

fn downcast_stop(payload: Box<dyn Any + Send>) -> Result<LimitExceeded, Box<dyn Any + Send>> {
    payload.downcast::<Stop>().map(|s| s.0)
}

/// Unwinds to [`guarded`] without running the panic hook (nothing is
/// printed: this is not a bug, the record is dead-lettered).
#[cold]
fn stop(limit: LimitExceeded) -> ! {
    watchdog::stopping_current();
    resume_unwind(Box::new(Stop(limit)))
}
