//! Sinks: where items leave a pipeline, and where their acks are settled.
//!
//! A sink implements [`Sink`]: `write` a batch, `finish` at the end. The
//! engine adds the rest: it settles the acks of the items a write
//! committed (never before `write` returns `Ok`), retries a failed write
//! under a retry policy, and dead-letters what a sink gave back.
//! [`fold`], [`for_each`] and [`collect`] cover in-memory results.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::channel::{Batch, Rx, abandon, recv};
use crate::error::{BoxError, WriteError};
use crate::metrics::StageMetrics;
use crate::pool::StageCtx;
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

/// The sink stage's loop: write, settle acks, apply the error policy.
pub(crate) async fn run_sink<T: Send + 'static, S: Sink<T>>(
    rx: Rx<T>,
    mut sink: S,
    ctx: Arc<StageCtx>,
    result: Arc<Mutex<Option<S::Output>>>,
) -> Result<(), BoxError> {
    let m = &*ctx.metrics;
    let max = ctx.options.max_attempts();
    while let Some(batch) = recv(&rx, m).await {
        if ctx.abort.is_cancelled() {
            abandon(batch, m);
            return Ok(());
        }
        let t0 = Instant::now();
        let (mut values, mut acks): (Vec<T>, Vec<_>) =
            batch.into_iter().map(|e| (e.value, e.ack)).unzip();
        let mut attempts = 1;
        loop {
            let n = values.len();
            let (unwritten, err) = match sink.write(values).await {
                Ok(()) => (Vec::new(), None),
                Err(WriteError { unwritten, error }) => (unwritten, Some(error)),
            };
            // The written prefix is committed: settle it now.
            let written = n.saturating_sub(unwritten.len());
            StageMetrics::add(&m.ok, written);
            for a in acks.drain(..written).flatten() {
                a.deliver();
            }
            let Some(err) = err else { break };
            values = unwritten;
            if values.is_empty() {
                if matches!(ctx.options.on_error, ErrorPolicy::Fail) {
                    return Err(err);
                }
                break;
            }
            if attempts < max {
                if !ctx.backoff(attempts).await {
                    return Ok(());
                }
                attempts += 1;
                continue;
            }
            if matches!(ctx.options.on_error, ErrorPolicy::Fail) {
                return Err(err);
            }
            let letters: Batch<_> = values
                .into_iter()
                .zip(acks.drain(..))
                .map(|(v, a)| ctx.letter(a, v, &err, attempts))
                .collect();
            ctx.dead_letter(letters).await?;
            break;
        }
        StageMetrics::time(&m.busy_ns, t0.elapsed());
    }
    let out = sink.finish().await?;
    *result.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
    Ok(())
}
