//! Worker pools: the loops that run a stage's workers on a shared queue.
//!
//! * Sync stages run `workers` OS threads (from tokio's blocking pool, so CPU
//!   work never stalls the async reactor), all pulling batches from the
//!   stage's one input edge: Go's worker-pool pattern. Output order follows
//!   completion.
//! * Ordered sync pools number batches as workers take them and a reorder
//!   task emits them in that order. A semaphore of `window` permits, taken
//!   before a batch is pulled and returned when it is emitted, bounds how far
//!   the pool may run ahead of its slowest batch: memory stays at `window`
//!   batches however slow one item is.
//! * Async stages run in one task that keeps up to `workers` item futures in
//!   flight (per item, not per batch, so a pool of 1,000 really has 1,000
//!   calls outstanding). Ordered mode completes them in input order.
//!
//! Every loop applies the stage's [`ErrorPolicy`] the same way, through
//! [`settle_failures`]: a retried item's outputs take the place of the item
//! in its batch, so retries never reorder a one-worker stage or an ordered
//! pool.
//!
//! Every item a worker received ends counted as ok, filtered, dead-lettered
//! or dropped, whichever way the worker stops: a fatal error, an abort
//! during a retry's backoff or during an async call. Items it gives up on
//! are counted as dropped and their acks fail with the reason
//! ([`drop_items`]); the report then balances even for a failed run.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::ack::{Ack, AckOutcome};
use crate::channel::{
    ABORTED, Batch, Downstream, Emitter, Envelope, Halt, Rx, Tx, abandon, drop_items, recv,
};
use crate::dead_letter::DeadLetter;
use crate::error::{BoxError, StageFailure, panic_message};
use crate::metrics::{BusyClock, StageMetrics};
use crate::ops::{Failure, ItemOp, Tally};
use crate::stage::{ErrorPolicy, StageOptions};

/// What every worker of a stage shares.
pub(crate) struct StageCtx {
    pub name: String,
    pub metrics: Arc<StageMetrics>,
    /// Fired on a fatal error: stop now, drop what is in flight.
    pub abort: CancellationToken,
    /// Fired on cancel or abort: sources stop producing (then the pipeline
    /// drains).
    pub stop: CancellationToken,
    pub dead_letters: Tx<DeadLetter>,
    pub options: StageOptions,
    pub batch_size: usize,
    /// See [`PipelineOptions::linger`](crate::PipelineOptions::linger).
    pub linger: std::time::Duration,
    /// Runs inside its producer's worker instead of its own.
    pub fused: bool,
}

/// Runs one batch of a fused stage inside its producer's worker, catching a
/// panic so that it is reported against the fused stage, not the producer.
pub(crate) async fn fused_step<F>(stage: &str, fut: F) -> Result<(), Halt>
where
    F: Future<Output = Result<(), Halt>>,
{
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(Halt::Stopped)) => Err(Halt::Stopped),
        Ok(Err(Halt::Failed(e))) => Err(Halt::Failed(StageFailure::attribute(stage, e))),
        Err(panic) => Err(Halt::Failed(Box::new(StageFailure {
            stage: stage.to_string(),
            panic: Some(panic_message(&*panic)),
            error: "panicked".into(),
        }))),
    }
}

impl StageCtx {
    /// Ends a worker that stopped early: an abort is not an error of its own.
    pub fn halted(&self, h: Halt) -> Result<(), BoxError> {
        match h {
            Halt::Stopped => self.stopped(),
            Halt::Failed(e) => Err(e),
        }
    }

    /// An edge closed under us: normal during an abort; otherwise the stage
    /// downstream died, and its own error is the one to report.
    pub fn stopped(&self) -> Result<(), BoxError> {
        if self.abort.is_cancelled() {
            Ok(())
        } else {
            Err(Box::new(crate::error::EdgeClosed))
        }
    }

    /// Sends items to the dead-letter output (their acks already marked by
    /// [`letter`](Self::letter)), in batches of at most `batch_size`. They
    /// count as dead-lettered once the dead-letter edge took them; if it is
    /// closed (the run is aborting) they count as dropped instead.
    pub async fn dead_letter(&self, letters: Batch<DeadLetter>) -> Result<(), BoxError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut letters = letters.into_iter();
        while letters.len() > 0 {
            let chunk: Batch<DeadLetter> = letters.by_ref().take(self.batch_size).collect();
            let n = chunk.len();
            if let Err(async_channel::SendError(back)) = self.dead_letters.send(chunk).await {
                drop_items(back.into_iter().chain(letters), &self.metrics, ABORTED);
                return self.stopped();
            }
            StageMetrics::add(&self.metrics.dead_lettered, n);
        }
        Ok(())
    }

    /// Counts `items` as dropped because this stage failed on an item (the
    /// run is about to abort), failing their acks with the error.
    pub fn drop_on_failure<T>(&self, items: impl IntoIterator<Item = Envelope<T>>, err: &BoxError) {
        let reason = format!(
            "stage '{}' failed: {}",
            self.name,
            crate::dead_letter::error_chain(err.as_ref())
        );
        drop_items(items, &self.metrics, &reason);
    }

    /// Wraps one failed item as a dead letter.
    pub fn letter<I: Send + 'static>(
        &self,
        ack: Option<Ack>,
        item: I,
        error: &BoxError,
        attempts: u32,
    ) -> Envelope<DeadLetter> {
        let letter = DeadLetter::new(&self.name, error, attempts, item);
        if let Some(a) = &ack {
            a.mark(AckOutcome::DeadLettered {
                stage: self.name.clone(),
                reason: letter.error.clone(),
            });
        }
        Envelope { value: letter, ack }
    }

    /// Sleeps before a retry; false when the run aborted meanwhile.
    pub async fn backoff(&self, attempt: u32) -> bool {
        let ErrorPolicy::Retry(r) = &self.options.on_error else {
            return false;
        };
        StageMetrics::add(&self.metrics.retries, 1);
        tokio::select! {
            _ = self.abort.cancelled() => false,
            _ = tokio::time::sleep(r.delay(attempt)) => true,
        }
    }
}

/// Applies the error policy to the failures of one batch (or slice): retries
/// each in turn, putting the outputs of a retry that succeeds where the item
/// stood in `out`; dead-letters what still fails; under
/// [`ErrorPolicy::Fail`] returns the error.
///
/// # Errors
/// [`Halt::Failed`] under `Fail`, [`Halt::Stopped`] when the run aborted
/// during a backoff. Either way every failure not settled is counted as
/// dropped with its ack failed; the outputs already in `out` are counted in
/// `t` as usual.
async fn settle_failures<I: Send + 'static, O: 'static>(
    op: &dyn ItemOp<I, O>,
    failed: &mut Vec<Failure<I>>,
    out: &mut Batch<O>,
    t: &mut Tally,
    ctx: &StageCtx,
) -> Result<(), Halt> {
    let max = ctx.options.max_attempts();
    let mut letters = Vec::new();
    // Outputs of retries that succeeded, with where they go in `out`.
    let mut retried: Vec<(usize, Batch<O>)> = Vec::new();
    let mut halt = None;
    let mut pending = failed.drain(..);
    'items: for Failure { item, error, at } in pending.by_ref() {
        let (mut e, mut err) = (item, error);
        let mut attempts = 1;
        while attempts < max {
            if !ctx.backoff(attempts).await {
                drop_items([e], &ctx.metrics, ABORTED);
                halt = Some(Halt::Stopped);
                break 'items;
            }
            attempts += 1;
            let mut outs = Vec::new();
            match op.retry(e, &mut outs, t) {
                Ok(()) => {
                    retried.push((at, outs));
                    continue 'items;
                }
                Err((back, why)) => (e, err) = (back, why),
            }
        }
        if matches!(ctx.options.on_error, ErrorPolicy::Fail) {
            ctx.drop_on_failure([e], &err);
            halt = Some(Halt::Failed(err));
            break;
        }
        letters.push(ctx.letter(e.ack, e.value, &err, attempts));
    }
    match &halt {
        Some(Halt::Failed(err)) => ctx.drop_on_failure(pending.map(|f| f.item), err),
        Some(Halt::Stopped) => drop_items(pending.map(|f| f.item), &ctx.metrics, ABORTED),
        None => {}
    }
    if !retried.is_empty() {
        *out = put_back(std::mem::take(out), retried);
    }
    ctx.dead_letter(letters).await.map_err(Halt::Failed)?;
    halt.map_or(Ok(()), Err)
}

/// Merges the outputs of retried items into a batch at their positions
/// (given in order, as positions in `out` before any insertion).
fn put_back<O>(out: Batch<O>, retried: Vec<(usize, Batch<O>)>) -> Batch<O> {
    let extra: usize = retried.iter().map(|(_, v)| v.len()).sum();
    let mut merged = Vec::with_capacity(out.len() + extra);
    let mut rest = out.into_iter();
    let mut taken = 0;
    for (at, mut outs) in retried {
        merged.extend(rest.by_ref().take(at - taken));
        taken = at;
        merged.append(&mut outs);
    }
    merged.extend(rest);
    merged
}

fn tally(m: &StageMetrics, t: Tally) {
    StageMetrics::add(&m.ok, t.ok);
    StageMetrics::add(&m.filtered, t.filtered);
}

/// A sync stage's per-batch work, shared by pool workers and by the fused
/// form that runs inside its producer.
pub(crate) struct SyncStage<I, O> {
    pub op: Arc<dyn ItemOp<I, O>>,
    pub em: Emitter<O>,
    pub ctx: Arc<StageCtx>,
    failed: Vec<Failure<I>>,
    clock: BusyClock,
}

/// Runs `f`, the stage's function over `n` received items; if it panics,
/// counts the `n` items as dropped before the panic goes on (to end the
/// run), so that the stage's counts still add up: the items' outputs and
/// the rest of the batch are lost with the unwinding, and their acks fail.
/// (A panic during a retry of failed items is not covered.)
fn counting_lost<R>(m: &StageMetrics, n: usize, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            StageMetrics::add(&m.dropped, n);
            resume_unwind(panic)
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> SyncStage<I, O> {
    pub fn new(op: Arc<dyn ItemOp<I, O>>, em: Emitter<O>, ctx: Arc<StageCtx>) -> Self {
        SyncStage {
            op,
            em,
            ctx,
            failed: Vec::new(),
            clock: BusyClock::default(),
        }
    }

    /// Applies the stage to one batch and hands on what is ready.
    pub async fn process(&mut self, batch: Batch<I>) -> Result<(), Halt> {
        if self.ctx.abort.is_cancelled() {
            abandon(batch, &self.ctx.metrics);
            return Err(Halt::Stopped);
        }
        if !self.op.expands() {
            let t0 = self.clock.start();
            let mut out = Vec::new();
            let mut t = Tally::default();
            let (op, failed) = (&self.op, &mut self.failed);
            counting_lost(&self.ctx.metrics, batch.len(), || {
                op.apply(batch, &mut out, failed, &mut t)
            });
            return self.hand_on(out, t, t0).await;
        }
        // A slice at a time, so that one batch of inputs never becomes
        // batch_size times their expansion in memory at once.
        let mut input = batch.into_iter();
        while input.len() > 0 {
            if self.ctx.abort.is_cancelled() {
                abandon(input.collect(), &self.ctx.metrics);
                return Err(Halt::Stopped);
            }
            let t0 = self.clock.start();
            let mut out = Vec::new();
            let mut t = Tally::default();
            let limit = self.ctx.batch_size;
            // What a panic loses: this slice and the rest of the batch.
            let (op, failed) = (&self.op, &mut self.failed);
            counting_lost(&self.ctx.metrics, input.len(), || {
                op.apply_some(&mut input, &mut out, failed, &mut t, limit)
            });
            if let Err(h) = self.hand_on(out, t, t0).await {
                match &h {
                    Halt::Stopped => abandon(input.collect(), &self.ctx.metrics),
                    Halt::Failed(err) => self.ctx.drop_on_failure(input, err),
                }
                return Err(h);
            }
        }
        Ok(())
    }

    /// Settles the failures of what was just applied, counts it, and hands
    /// the outputs to the emitter.
    async fn hand_on(
        &mut self,
        mut out: Batch<O>,
        mut t: Tally,
        t0: Option<Instant>,
    ) -> Result<(), Halt> {
        let m = &*self.ctx.metrics;
        let settled = if self.failed.is_empty() {
            Ok(())
        } else {
            settle_failures(&*self.op, &mut self.failed, &mut out, &mut t, &self.ctx).await
        };
        tally(m, t);
        BusyClock::stop(m, t0);
        settled?;
        self.em.push_batch(out);
        if self.em.has_full() {
            self.em.flush(false).await?;
        }
        Ok(())
    }
}

impl<I: Send + 'static, O: Send + 'static> Downstream<I> for SyncStage<I, O> {
    fn consume(&mut self, batch: Batch<I>) -> BoxFuture<'_, Result<(), Halt>> {
        Box::pin(async move {
            StageMetrics::add(&self.ctx.metrics.received, batch.len());
            let ctx = self.ctx.clone();
            fused_step(&ctx.name, self.process(batch)).await
        })
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<(), Halt>> {
        Box::pin(async move {
            let ctx = self.ctx.clone();
            fused_step(&ctx.name, self.em.close()).await
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), Halt>> {
        Box::pin(async move {
            let ctx = self.ctx.clone();
            fused_step(&ctx.name, self.em.flush(true)).await
        })
    }
}

/// One worker of an unordered sync pool.
pub(crate) async fn sync_worker<I: Send + 'static, O: Send + 'static>(
    rx: Rx<I>,
    mut stage: SyncStage<I, O>,
) -> Result<(), BoxError> {
    let ctx = stage.ctx.clone();
    loop {
        // Send a partial batch only when we would otherwise wait for input:
        // full batches while busy, low latency when idle.
        if stage.em.holds_items()
            && rx.is_empty()
            && let Err(h) = stage.em.flush(true).await
        {
            return ctx.halted(h);
        }
        let Some(batch) = recv(&rx, &ctx.metrics).await else {
            break;
        };
        if let Err(h) = stage.process(batch).await {
            return ctx.halted(h);
        }
    }
    match stage.em.close().await {
        Ok(()) => Ok(()),
        Err(h) => ctx.halted(h),
    }
}

/// What an ordered pool's workers share.
pub(crate) struct Sequencer {
    /// Next sequence number; locked across the receive so numbers follow
    /// input order.
    pub next: tokio::sync::Mutex<u64>,
    /// Reorder window: permits for batches taken but not yet emitted.
    pub window: Arc<Semaphore>,
}

/// One worker of an ordered sync pool.
pub(crate) async fn ordered_worker<I: Send + 'static, O: Send + 'static>(
    rx: Rx<I>,
    op: Arc<dyn ItemOp<I, O>>,
    seq: Arc<Sequencer>,
    to_reorder: async_channel::Sender<(u64, Batch<O>)>,
    ctx: Arc<StageCtx>,
) -> Result<(), BoxError> {
    let m = &*ctx.metrics;
    let mut failed = Vec::new();
    let mut clock = BusyClock::default();
    loop {
        let permit = tokio::select! {
            biased;
            _ = ctx.abort.cancelled() => return Ok(()),
            p = seq.window.acquire() => p,
        };
        let Ok(permit) = permit else { return Ok(()) };
        // The reorder task gives the permit back when it emits this batch.
        permit.forget();
        let (n, batch) = {
            let mut next = seq.next.lock().await;
            let Some(batch) = recv(&rx, m).await else {
                // No batch to go with the permit: give it back, or a worker
                // still waiting for one would never learn that input ended
                // (with fewer permits than workers, it would wait for ever).
                seq.window.add_permits(1);
                break;
            };
            let n = *next;
            *next += 1;
            (n, batch)
        };
        if ctx.abort.is_cancelled() {
            abandon(batch, m);
            return Ok(());
        }
        let t0 = clock.start();
        let mut out = Vec::with_capacity(batch.len());
        let mut t = Tally::default();
        counting_lost(m, batch.len(), || {
            op.apply(batch, &mut out, &mut failed, &mut t)
        });
        let settled = if failed.is_empty() {
            Ok(())
        } else {
            settle_failures(&*op, &mut failed, &mut out, &mut t, &ctx).await
        };
        tally(m, t);
        BusyClock::stop(m, t0);
        if let Err(h) = settled {
            return ctx.halted(h);
        }
        if to_reorder.send((n, out)).await.is_err() {
            return ctx.stopped();
        }
    }
    Ok(())
}

/// Emits an ordered pool's batches in sequence order.
pub(crate) async fn reorderer<O: Send + 'static>(
    rx: async_channel::Receiver<(u64, Batch<O>)>,
    mut em: Emitter<O>,
    window: Arc<Semaphore>,
    ctx: Arc<StageCtx>,
) -> Result<(), BoxError> {
    let mut next = 0u64;
    let mut held: BTreeMap<u64, Batch<O>> = BTreeMap::new();
    while let Ok((n, batch)) = rx.recv().await {
        held.insert(n, batch);
        while let Some(batch) = held.remove(&next) {
            next += 1;
            em.push_batch(batch);
            window.add_permits(1);
            if em.has_full()
                && let Err(h) = em.flush(false).await
            {
                return ctx.halted(h);
            }
        }
        if rx.is_empty()
            && em.holds_items()
            && let Err(h) = em.flush(true).await
        {
            return ctx.halted(h);
        }
    }
    if !held.is_empty() && !ctx.abort.is_cancelled() {
        return Err(format!("reorder buffer left {} batches behind a gap", held.len()).into());
    }
    match em.close().await {
        Ok(()) => Ok(()),
        Err(h) => ctx.halted(h),
    }
}

/// An async stage function, boxed. `clone` is set when the input type can
/// be cloned, which retries and dead letters need (the call consumes its
/// argument).
pub(crate) struct AsyncFn<I, O> {
    pub call: Box<dyn Fn(I) -> BoxFut<Result<O, BoxError>> + Send + Sync>,
    pub clone: Option<fn(&I) -> I>,
}

pub(crate) type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How one item fared in an async pool.
struct Done<I, O> {
    ack: Option<Ack>,
    result: Outcome<I, O>,
}

enum Outcome<I, O> {
    Ok(O),
    /// Failed for good after `attempts`; the item, when it could be kept.
    Failed(Option<I>, BoxError, u32),
    /// The run aborted while the item waited to be retried.
    Interrupted,
}

fn item_future<I: Send + 'static, O: Send + 'static>(
    f: Arc<AsyncFn<I, O>>,
    e: Envelope<I>,
    ctx: Arc<StageCtx>,
) -> BoxFut<Done<I, O>> {
    Box::pin(async move {
        let t0 = Instant::now();
        let max = ctx.options.max_attempts();
        let keep = !matches!(ctx.options.on_error, ErrorPolicy::Fail);
        let Envelope { value, ack } = e;
        let mut value = Some(value);
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            let arg = match (keep, f.clone) {
                (true, Some(clone)) => clone(value.as_ref().expect("kept")),
                _ => value.take().expect("called once"),
            };
            match (f.call)(arg).await {
                Ok(o) => break Outcome::Ok(o),
                Err(err) => {
                    if attempts < max && value.is_some() {
                        if ctx.backoff(attempts).await {
                            continue;
                        }
                        break Outcome::Interrupted;
                    }
                    break Outcome::Failed(value.take(), err, attempts);
                }
            }
        };
        ctx.metrics.busy_exact(t0.elapsed());
        Done { ack, result }
    })
}

enum InFlight<F: Future> {
    Unordered(FuturesUnordered<F>),
    Ordered(FuturesOrdered<F>),
}

impl<F: Future> InFlight<F> {
    fn len(&self) -> usize {
        match self {
            InFlight::Unordered(f) => f.len(),
            InFlight::Ordered(f) => f.len(),
        }
    }

    fn push(&mut self, fut: F) {
        match self {
            InFlight::Unordered(f) => f.push(fut),
            InFlight::Ordered(f) => f.push_back(fut),
        }
    }

    async fn next(&mut self) -> Option<F::Output> {
        match self {
            InFlight::Unordered(f) => f.next().await,
            InFlight::Ordered(f) => f.next().await,
        }
    }
}

/// An async pool: one task with up to `workers` item futures in flight.
pub(crate) async fn async_pool<I: Send + 'static, O: Send + 'static>(
    rx: Rx<I>,
    f: Arc<AsyncFn<I, O>>,
    mut em: Emitter<O>,
    ctx: Arc<StageCtx>,
) -> Result<(), BoxError> {
    let m = &*ctx.metrics;
    let limit = ctx.options.workers.max(1);
    let mut queue: VecDeque<Envelope<I>> = VecDeque::new();
    let mut inflight = if ctx.options.ordered {
        InFlight::Ordered(FuturesOrdered::new())
    } else {
        InFlight::Unordered(FuturesUnordered::new())
    };
    let mut open = true;
    let ended: Result<(), Halt> = loop {
        while inflight.len() < limit {
            let Some(e) = queue.pop_front() else { break };
            inflight.push(item_future(f.clone(), e, ctx.clone()));
        }
        if !open && queue.is_empty() && inflight.len() == 0 {
            break em.close().await;
        }
        let want_input = open && queue.is_empty();
        let busy = inflight.len() > 0;
        tokio::select! {
            biased;
            _ = ctx.abort.cancelled() => break Err(Halt::Stopped),
            done = inflight.next(), if busy => {
                let mut letters = Vec::new();
                let mut next = done;
                let mut fatal = None;
                while let Some(d) = next {
                    if let Err(h) = finish_item(d, &mut em, &mut letters, &ctx) {
                        fatal = Some(h);
                        break;
                    }
                    next = inflight.next().now_or_never().flatten();
                }
                if let Err(e) = ctx.dead_letter(letters).await {
                    break Err(Halt::Failed(e));
                }
                if let Some(h) = fatal {
                    break Err(h);
                }
                // Nothing else is ready: send what we have rather than sit on it.
                if em.holds_items()
                    && let Err(h) = em.flush(true).await
                {
                    break Err(h);
                }
            }
            batch = recv(&rx, m), if want_input => match batch {
                Some(b) => queue.extend(b),
                None => open = false,
            },
        }
    };
    // What is still in flight or queued was received and will never finish.
    // Dropping a call fails its item's ack.
    StageMetrics::add(&m.dropped, inflight.len());
    drop(inflight);
    match &ended {
        Err(Halt::Failed(err)) => ctx.drop_on_failure(queue, err),
        _ => drop_items(queue, m, ABORTED),
    }
    ended.or_else(|h| ctx.halted(h))
}

fn finish_item<I: Send + 'static, O>(
    d: Done<I, O>,
    em: &mut Emitter<O>,
    letters: &mut Batch<DeadLetter>,
    ctx: &StageCtx,
) -> Result<(), Halt> {
    match d.result {
        Outcome::Ok(value) => {
            StageMetrics::add(&ctx.metrics.ok, 1);
            em.push(Envelope { value, ack: d.ack });
        }
        Outcome::Interrupted => {
            drop_items(
                [Envelope {
                    value: (),
                    ack: d.ack,
                }],
                &ctx.metrics,
                ABORTED,
            );
        }
        Outcome::Failed(item, err, attempts) => match (&ctx.options.on_error, item) {
            (ErrorPolicy::Fail, _) => {
                ctx.drop_on_failure(
                    [Envelope {
                        value: (),
                        ack: d.ack,
                    }],
                    &err,
                );
                return Err(Halt::Failed(err));
            }
            (_, Some(item)) => letters.push(ctx.letter(d.ack, item, &err, attempts)),
            // The item was consumed by the call (it cannot be cloned): the
            // dead letter carries the error alone.
            (_, None) => letters.push(ctx.letter(d.ack, (), &err, attempts)),
        },
    }
    Ok(())
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::put_back;
    use crate::channel::{Batch, Envelope};

    fn batch(v: &[i32]) -> Batch<i32> {
        v.iter().map(|&x| Envelope::new(x)).collect()
    }

    fn values(b: Batch<i32>) -> Vec<i32> {
        b.into_iter().map(|e| e.value).collect()
    }

    #[test]
    fn put_back_inserts_at_the_positions_given_before_insertion() {
        // Outputs of items 0, 2, 3, 5 went out; an item before all of them,
        // item 1, item 4 (two outputs) and one after the last were retried.
        let retried = vec![
            (0, batch(&[-1])),
            (1, batch(&[1])),
            (3, batch(&[40, 41])),
            (4, batch(&[9])),
        ];
        assert_eq!(
            values(put_back(batch(&[0, 2, 3, 5]), retried)),
            vec![-1, 0, 1, 2, 3, 40, 41, 5, 9]
        );
        let two_at_start = vec![(0, batch(&[7])), (0, batch(&[8]))];
        assert_eq!(values(put_back(batch(&[]), two_at_start)), vec![7, 8]);
    }
}
