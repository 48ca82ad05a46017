//! Sources: where items enter a pipeline.
//!
//! A source is an iterator (run on its own thread, since `next` may block on
//! a file or a socket) or a stream (run as a task). Either way the engine
//! batches items and stops pulling when the pipeline is cancelled; items it
//! already pulled are still delivered (graceful drain).
//!
//! Items may carry an [`Ack`] (the `*_acked` constructors) so the source
//! learns when each one, and all that derived from it, is committed.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use futures::{Stream, StreamExt};

use crate::ack::Ack;
use crate::channel::{Emitter, Envelope};
use crate::error::BoxError;
use crate::metrics::{BusyClock, StageMetrics};
use crate::pool::{BoxFut, StageCtx};

type Driver<T> = Box<dyn FnOnce(Emitter<T>, Arc<StageCtx>) -> BoxFut<Result<(), BoxError>> + Send>;

/// Items entering a pipeline; build one with [`from_iter`], [`from_stream`]
/// and friends, then pass it to [`Pipeline::source`](crate::Pipeline::source).
pub struct Source<T> {
    pub(crate) driver: Driver<T>,
    /// Run on a dedicated thread (iterators) rather than as a task (streams).
    pub(crate) blocking: bool,
}

/// A source over an iterator. It runs on a thread of its own, so `next` may
/// block (reading a file, say).
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), weir::RunError> {
/// use weir::{Pipeline, from_iter, collect};
/// let p = Pipeline::new();
/// let out = p.source("n", from_iter(1..=3u32)).sink("all", collect());
/// p.run().await?;
/// assert_eq!(out.take().unwrap(), vec![1, 2, 3]);
/// # Ok(()) }
/// ```
pub fn from_iter<I>(iter: I) -> Source<I::Item>
where
    I: IntoIterator + Send + 'static,
    I::IntoIter: Send,
    I::Item: Send + 'static,
{
    iter_source(iter.into_iter().map(|v| Ok(Envelope::new(v))))
}

/// A source over an iterator of results: an `Err` fails the pipeline, naming
/// the source.
pub fn from_try_iter<I, T, E>(iter: I) -> Source<T>
where
    I: IntoIterator<Item = Result<T, E>> + Send + 'static,
    I::IntoIter: Send,
    T: Send + 'static,
    E: Into<BoxError>,
{
    iter_source(
        iter.into_iter()
            .map(|r| r.map(Envelope::new).map_err(Into::into)),
    )
}

/// A source over an iterator of items with their acks.
pub fn from_acked_iter<I, T>(iter: I) -> Source<T>
where
    I: IntoIterator<Item = (T, Ack)> + Send + 'static,
    I::IntoIter: Send,
    T: Send + 'static,
{
    iter_source(iter.into_iter().map(|(value, ack)| {
        Ok(Envelope {
            value,
            ack: Some(ack),
        })
    }))
}

/// A source over an iterator of results of items with their acks: what a
/// checkpointing file reader yields (an `Err` fails the pipeline).
pub fn from_try_acked_iter<I, T, E>(iter: I) -> Source<T>
where
    I: IntoIterator<Item = Result<(T, Ack), E>> + Send + 'static,
    I::IntoIter: Send,
    T: Send + 'static,
    E: Into<BoxError>,
{
    iter_source(iter.into_iter().map(|r| {
        r.map(|(value, ack)| Envelope {
            value,
            ack: Some(ack),
        })
        .map_err(Into::into)
    }))
}

/// A source over a stream. Items that are ready go out together; the engine
/// never waits to fill a batch, so a slow stream is not delayed.
pub fn from_stream<S>(stream: S) -> Source<S::Item>
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    stream_source(stream.map(|v| Ok(Envelope::new(v))))
}

/// A source over a stream of results: an `Err` fails the pipeline, naming
/// the source.
pub fn from_try_stream<S, T, E>(stream: S) -> Source<T>
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Into<BoxError>,
{
    stream_source(stream.map(|r| r.map(Envelope::new).map_err(Into::into)))
}

/// A source over a stream of items with their acks: the way a broker or a
/// checkpointing file reader learns what is durable.
pub fn from_acked_stream<S, T>(stream: S) -> Source<T>
where
    S: Stream<Item = (T, Ack)> + Send + 'static,
    T: Send + 'static,
{
    stream_source(stream.map(|(value, ack)| {
        Ok(Envelope {
            value,
            ack: Some(ack),
        })
    }))
}

/// A source over a stream of results of items with their acks: a
/// checkpointing reader of a live input, or a broker consumer that can
/// fail for good (an unreachable server). An `Err` fails the pipeline,
/// naming the source.
pub fn from_try_acked_stream<S, T, E>(stream: S) -> Source<T>
where
    S: Stream<Item = Result<(T, Ack), E>> + Send + 'static,
    T: Send + 'static,
    E: Into<BoxError>,
{
    stream_source(stream.map(|r| {
        r.map(|(value, ack)| Envelope {
            value,
            ack: Some(ack),
        })
        .map_err(Into::into)
    }))
}

fn iter_source<T, I>(iter: I) -> Source<T>
where
    T: Send + 'static,
    I: Iterator<Item = Result<Envelope<T>, BoxError>> + Send + 'static,
{
    Source {
        blocking: true,
        driver: Box::new(move |em, ctx| Box::pin(run_iter(iter, em, ctx))),
    }
}

async fn run_iter<T, I>(mut iter: I, mut em: Emitter<T>, ctx: Arc<StageCtx>) -> Result<(), BoxError>
where
    I: Iterator<Item = Result<Envelope<T>, BoxError>>,
{
    let m = &*ctx.metrics;
    let mut clock = BusyClock::default();
    let linger = Linger::new(ctx.linger);
    while !ctx.stop.is_cancelled() {
        let t0 = clock.start();
        let mut batch = Vec::with_capacity(ctx.batch_size);
        let start = linger.start();
        let mut cut = false;
        for item in iter.by_ref() {
            match item {
                Ok(e) => batch.push(e),
                Err(err) => return Err(lost_with(batch, err, &ctx)),
            }
            if batch.len() == ctx.batch_size {
                break;
            }
            if linger.expired(start) {
                cut = true;
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        BusyClock::stop(m, t0);
        StageMetrics::add(&m.received, batch.len());
        StageMetrics::add(&m.ok, batch.len());
        em.push_batch(batch);
        // A batch cut short because items come slowly goes on now, through
        // any fused consumers too.
        if let Err(h) = em.flush(cut).await {
            return ctx.halted(h);
        }
    }
    match em.close().await {
        Ok(()) => Ok(()),
        Err(h) => ctx.halted(h),
    }
}

/// When a slow iterator's partial batch has waited long enough. Reading the
/// clock after every item would cost a fast iterator (B1: a few ns per
/// item) more than the item itself, so a thread of its own ticks a counter
/// every half `limit`, and the source compares it after each item (one
/// relaxed load): a batch is cut once the counter moved twice since the
/// batch began, between half `limit` and `limit` later. The ticker holds a
/// weak reference and ends by itself within 50 ms of the source. A zero
/// `limit` sends every item on its own (no ticker).
///
/// An iterator blocked in `next()` cannot be cut: the items it gave before
/// wait with it. Sources that wait for input (stdin, a broker) are stream
/// sources, which send what is ready.
struct Linger {
    ticks: Option<Arc<AtomicU64>>,
    /// A zero limit: every item goes on its own.
    every_item: bool,
}

impl Linger {
    fn new(limit: std::time::Duration) -> Self {
        if limit.is_zero() {
            return Linger {
                ticks: None,
                every_item: true,
            };
        }
        let ticks = Arc::new(AtomicU64::new(0));
        let weak = Arc::downgrade(&ticks);
        let period = limit / 2;
        let spawned = std::thread::Builder::new()
            .name("weir-linger".into())
            .spawn(move || {
                loop {
                    // Sleep in slices, so that the thread notices the end of
                    // its source soon even with a long linger.
                    let mut left = period;
                    while !left.is_zero() {
                        let nap = left.min(std::time::Duration::from_millis(50));
                        std::thread::sleep(nap);
                        left -= nap;
                        if weak.strong_count() == 0 {
                            return;
                        }
                    }
                    match weak.upgrade() {
                        Some(t) => t.fetch_add(1, Relaxed),
                        None => return,
                    };
                }
            });
        // Without a ticker, batches are only ever full: the behaviour
        // before lingering existed, not a failure.
        Linger {
            ticks: spawned.ok().map(|_| ticks),
            every_item: false,
        }
    }

    /// A new batch begins: the tick it begins at.
    fn start(&self) -> u64 {
        self.ticks.as_ref().map_or(0, |t| t.load(Relaxed))
    }

    /// After each item: true when the batch that began at `start` has
    /// waited long enough.
    #[inline]
    fn expired(&self, start: u64) -> bool {
        match &self.ticks {
            Some(t) => t.load(Relaxed).wrapping_sub(start) >= 2,
            None => self.every_item,
        }
    }
}

/// A source failed with items of a batch already pulled: they count as
/// produced and dropped (their acks fail), so the report shows them.
fn lost_with<T>(batch: Vec<Envelope<T>>, err: BoxError, ctx: &StageCtx) -> BoxError {
    StageMetrics::add(&ctx.metrics.received, batch.len());
    ctx.drop_on_failure(batch, &err);
    err
}

fn stream_source<T, S>(stream: S) -> Source<T>
where
    T: Send + 'static,
    S: Stream<Item = Result<Envelope<T>, BoxError>> + Send + 'static,
{
    Source {
        blocking: false,
        driver: Box::new(move |em, ctx| Box::pin(run_stream(stream, em, ctx))),
    }
}

async fn run_stream<T, S>(stream: S, mut em: Emitter<T>, ctx: Arc<StageCtx>) -> Result<(), BoxError>
where
    T: Send + 'static,
    S: Stream<Item = Result<Envelope<T>, BoxError>> + Send + 'static,
{
    let m = &*ctx.metrics;
    let mut chunks = std::pin::pin!(stream.ready_chunks(ctx.batch_size));
    loop {
        let t0 = Instant::now();
        let chunk = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => break,
            c = chunks.next() => c,
        };
        StageMetrics::time(&m.wait_input_ns, t0.elapsed());
        let Some(chunk) = chunk else { break };
        let mut batch = Vec::with_capacity(chunk.len());
        let mut chunk = chunk.into_iter();
        for item in chunk.by_ref() {
            match item {
                Ok(e) => batch.push(e),
                Err(err) => {
                    // Items after the error in this chunk were pulled too.
                    batch.extend(chunk.filter_map(Result::ok));
                    return Err(lost_with(batch, err, &ctx));
                }
            }
        }
        StageMetrics::add(&m.received, batch.len());
        StageMetrics::add(&m.ok, batch.len());
        em.push_batch(batch);
        // A stream says when it has nothing ready, so send now.
        if let Err(h) = em.flush(true).await {
            return ctx.halted(h);
        }
    }
    match em.close().await {
        Ok(()) => Ok(()),
        Err(h) => ctx.halted(h),
    }
}
