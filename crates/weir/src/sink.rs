//! Sinks: where items leave a pipeline, and where their acks are settled.
//!
//! A sink implements [`Sink`]: `write` a batch, `finish` at the end. The
//! engine adds the rest: it settles the acks of the items a write
//! committed (never before `write` returns `Ok`), retries a failed write
//! under a retry policy, and dead-letters what a sink gave back.
//! [`fold`], [`for_each`] and [`collect`] cover in-memory results.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::ack::Ack;
use crate::channel::{ABORTED, Batch, Downstream, Envelope, Halt, Rx, abandon, drop_items, recv};
use crate::error::{BoxError, WriteError};
use crate::metrics::{BusyClock, StageMetrics};
use crate::pool::{StageCtx, fused_step};
use crate::stage::ErrorPolicy;

/// A destination for items.
///
/// # Contract
/// When `write` returns `Ok`, every item of the batch is committed (durable,
/// for a store): the engine then acknowledges them. A sink that buffers must
/// flush before returning `Ok`. On failure it gives back the items it did not
/// write, a suffix of the batch, in [`WriteError::unwritten`].
pub trait Sink<T>: Send + 'static {
    /// What the sink yields when the pipeline ends (a sum, a row count, `()`).
    type Output: Send + 'static;

    /// Writes a batch.
    ///
    /// # Errors
    /// A [`WriteError`] with the items not written.
    fn write(&mut self, items: Vec<T>) -> impl Future<Output = Result<(), WriteError<T>>> + Send;

    /// Called once after the last write, when the input is exhausted.
    ///
    /// # Errors
    /// Whatever closing the destination failed with.
    fn finish(self) -> impl Future<Output = Result<Self::Output, BoxError>> + Send
    where
        Self: Sized;

    /// True when `write` blocks the thread (a synchronous database driver,
    /// say): the engine then runs this sink on a thread of its own.
    fn blocking(&self) -> bool {
        false
    }
}

/// Folds every item into one value.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), weir::RunError> {
/// use weir::{Pipeline, from_iter, fold};
/// let p = Pipeline::new();
/// let sum = p.source("n", from_iter(1..=4u64)).sink("sum", fold(0, |a, x| a + x));
/// p.run().await?;
/// assert_eq!(sum.take(), Some(10));
/// # Ok(()) }
/// ```
pub fn fold<T, A, F>(init: A, f: F) -> Fold<A, F>
where
    F: FnMut(A, T) -> A + Send + 'static,
    A: Send + 'static,
{
    Fold { acc: Some(init), f }
}

/// The sink [`fold`] makes.
pub struct Fold<A, F> {
    acc: Option<A>,
    f: F,
}

impl<T, A, F> Sink<T> for Fold<A, F>
where
    T: Send + 'static,
    A: Send + 'static,
    F: FnMut(A, T) -> A + Send + 'static,
{
    type Output = A;

    async fn write(&mut self, items: Vec<T>) -> Result<(), WriteError<T>> {
        let mut acc = self.acc.take().expect("fold accumulator present");
        for x in items {
            acc = (self.f)(acc, x);
        }
        self.acc = Some(acc);
        Ok(())
    }

    async fn finish(self) -> Result<A, BoxError> {
        Ok(self.acc.expect("fold accumulator present"))
    }
}

/// Calls `f` on every item.
pub fn for_each<T, F>(f: F) -> ForEach<F>
where
    F: FnMut(T) + Send + 'static,
{
    ForEach(f)
}

/// The sink [`for_each`] makes.
pub struct ForEach<F>(F);

impl<T, F> Sink<T> for ForEach<F>
where
    T: Send + 'static,
    F: FnMut(T) + Send + 'static,
{
    type Output = ();

    async fn write(&mut self, items: Vec<T>) -> Result<(), WriteError<T>> {
        items.into_iter().for_each(&mut self.0);
        Ok(())
    }

    async fn finish(self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Collects every item into a `Vec`, in arrival order. Memory grows with the
/// input: for tests and small results.
pub fn collect<T>() -> Collect<T> {
    Collect(Vec::new())
}

/// The sink [`collect`] makes.
pub struct Collect<T>(Vec<T>);

impl<T: Send + 'static> Sink<T> for Collect<T> {
    type Output = Vec<T>;

    async fn write(&mut self, mut items: Vec<T>) -> Result<(), WriteError<T>> {
        self.0.append(&mut items);
        Ok(())
    }

    async fn finish(self) -> Result<Vec<T>, BoxError> {
        Ok(self.0)
    }
}

/// A sink stage: writes batches, settles acks, applies the error policy.
/// Runs as its own worker or fused into its producer.
///
/// Counts: `ok` is what a write committed. Whatever the sink received and
/// did not commit is dead-lettered (under a dead-letter or retry policy) or,
/// when the sink fails for good or the run aborts meanwhile, counted as
/// dropped with its ack failed; so a failed sink still balances
/// (`received = ok + dead_lettered + dropped`).
pub(crate) struct SinkStage<T, S: Sink<T>> {
    sink: Option<S>,
    ctx: Arc<StageCtx>,
    result: Arc<Mutex<Option<S::Output>>>,
    clock: BusyClock,
    _items: std::marker::PhantomData<fn(T)>,
}

impl<T: Send + 'static, S: Sink<T>> SinkStage<T, S> {
    pub fn new(sink: S, ctx: Arc<StageCtx>, result: Arc<Mutex<Option<S::Output>>>) -> Self {
        SinkStage {
            sink: Some(sink),
            ctx,
            result,
            clock: BusyClock::default(),
            _items: std::marker::PhantomData,
        }
    }

    async fn process(&mut self, batch: Batch<T>) -> Result<(), Halt> {
        let ctx = &*self.ctx;
        let m = &*ctx.metrics;
        if ctx.abort.is_cancelled() {
            abandon(batch, m);
            return Err(Halt::Stopped);
        }
        let sink = self.sink.as_mut().expect("sink present until finish");
        let t0 = self.clock.start();
        let max = ctx.options.max_attempts();
        // One pass: values in place, acks (rare) aside with their positions.
        let mut acks: VecDeque<(usize, Ack)> = VecDeque::new();
        let mut values: Vec<T> = batch
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                if let Some(a) = e.ack {
                    acks.push_back((i, a));
                }
                e.value
            })
            .collect();
        // Position in the original batch of `values[0]`.
        let mut base = 0;
        let mut attempts = 1;
        let fail = matches!(ctx.options.on_error, ErrorPolicy::Fail);
        loop {
            let n = values.len();
            let (unwritten, err, first_is_bad, fatal) = match sink.write(values).await {
                Ok(()) => (Vec::new(), None, false, false),
                Err(e) => (e.unwritten, Some(e.error), e.first_is_bad, e.fatal),
            };
            // The written prefix is committed: settle it now.
            let written = n.saturating_sub(unwritten.len());
            StageMetrics::add(&m.ok, written);
            base += written;
            settle_before(&mut acks, base);
            let Some(err) = err else { break };
            values = unwritten;
            // One item that can never be written (a value its column cannot
            // take) is a bad record, not a failed destination: it is
            // dead-lettered under every policy, `Fail` included.
            let one_bad = first_is_bad && !values.is_empty();
            if ctx.stop.is_cancelled() && !one_bad {
                // The run is being stopped (a cancel, a failure elsewhere):
                // neither retry nor fail the run for what a stopping sink
                // could not write (a publish that gave up waiting for room
                // nobody will make). Its acks fail with the reason, so a
                // checkpoint or an inbox does not count it as done.
                drop_items(
                    unsettled(values, &mut acks, base),
                    m,
                    &format!("the run stopped before the item was written ({err})"),
                );
                break;
            }
            if (fail || fatal) && !one_bad {
                // What is left will never be written: count it and fail its
                // acks with the sink's error before failing the run.
                ctx.drop_on_failure(unsettled(values, &mut acks, base), &err);
                return Err(Halt::Failed(err));
            }
            if values.is_empty() {
                break;
            }
            if first_is_bad {
                // One item is the problem: retrying cannot help it, and the
                // items behind it deserve their own attempt.
                let bad = values.remove(0);
                let ack = take_ack(&mut acks, base);
                base += 1;
                let letter = ctx.letter(ack, bad, &err, attempts);
                if let Err(e) = ctx.dead_letter(vec![letter]).await {
                    ctx.drop_on_failure(unsettled(values, &mut acks, base), &e);
                    return Err(Halt::Failed(e));
                }
                attempts = 1;
                if values.is_empty() {
                    break;
                }
                continue;
            }
            if attempts < max {
                if !ctx.backoff(attempts).await {
                    drop_items(unsettled(values, &mut acks, base), m, ABORTED);
                    return Err(Halt::Stopped);
                }
                attempts += 1;
                continue;
            }
            let letters: Batch<_> = values
                .into_iter()
                .enumerate()
                .map(|(j, v)| ctx.letter(take_ack(&mut acks, base + j), v, &err, attempts))
                .collect();
            ctx.dead_letter(letters).await.map_err(Halt::Failed)?;
            break;
        }
        BusyClock::stop(m, t0);
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), Halt> {
        if let Some(sink) = self.sink.take() {
            let out = sink.finish().await.map_err(Halt::Failed)?;
            *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
        }
        Ok(())
    }
}

impl<T: Send + 'static, S: Sink<T>> Downstream<T> for SinkStage<T, S> {
    fn consume(&mut self, batch: Batch<T>) -> BoxFuture<'_, Result<(), Halt>> {
        Box::pin(async move {
            StageMetrics::add(&self.ctx.metrics.received, batch.len());
            let ctx = self.ctx.clone();
            fused_step(&ctx.name, self.process(batch)).await
        })
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<(), Halt>> {
        Box::pin(async move {
            let ctx = self.ctx.clone();
            fused_step(&ctx.name, SinkStage::finish(self)).await
        })
    }

    /// A sink writes each batch as it comes: nothing is held.
    fn flush(&mut self) -> BoxFuture<'_, Result<(), Halt>> {
        Box::pin(async { Ok(()) })
    }
}

/// Delivers the acks of items before position `base` (they are committed).
fn settle_before(acks: &mut VecDeque<(usize, Ack)>, base: usize) {
    while acks.front().is_some_and(|(i, _)| *i < base) {
        if let Some((_, a)) = acks.pop_front() {
            a.deliver();
        }
    }
}

/// The unwritten items, from position `base` on, as envelopes again (with
/// their acks), to be dropped.
fn unsettled<T>(
    values: Vec<T>,
    acks: &mut VecDeque<(usize, Ack)>,
    base: usize,
) -> impl Iterator<Item = Envelope<T>> {
    let mut acks = std::mem::take(acks);
    values
        .into_iter()
        .enumerate()
        .map(move |(j, value)| Envelope {
            value,
            ack: take_ack(&mut acks, base + j),
        })
}

/// The ack of the item at position `at`, if it has one.
fn take_ack(acks: &mut VecDeque<(usize, Ack)>, at: usize) -> Option<Ack> {
    if acks.front().is_some_and(|(i, _)| *i == at) {
        acks.pop_front().map(|(_, a)| a)
    } else {
        None
    }
}

/// The sink stage's own worker.
pub(crate) async fn run_sink<T: Send + 'static, S: Sink<T>>(
    rx: Rx<T>,
    mut stage: SinkStage<T, S>,
) -> Result<(), BoxError> {
    let ctx = stage.ctx.clone();
    while let Some(batch) = recv(&rx, &ctx.metrics).await {
        if let Err(h) = stage.process(batch).await {
            return ctx.halted(h);
        }
    }
    match stage.finish().await {
        Ok(()) => Ok(()),
        Err(h) => ctx.halted(h),
    }
}
