//! Loops: a flow fed back into an earlier point of the same pipeline (a
//! crawler's frontier: pages → links → pages).
//!
//! [`Flow::loop_start`] adds the loop's entry, a stage that merges the
//! flow (the items entering from outside) with the items fed back by
//! [`LoopBack::close`]. Three things make a cycle of bounded channels safe:
//!
//! * **Completion.** Every item that passes the entry gets an ack of the
//!   loop's (a child of its own ack, which it settles), so the entry knows
//!   how many items, with everything derived from them, are still inside:
//!   in a stage or on an edge of the cycle. An item leaves the count when
//!   it is settled (filtered, dead-lettered, committed) or when it leaves
//!   the cycle through [`Flow::leave_loop`], which every flow from the
//!   cycle to the rest of the pipeline must pass (a sink, or an aggregate
//!   that waits for the end of its input, outside the loop must not hold
//!   the loop open). When the outside input has ended and the count is
//!   zero, nothing can come back: the entry ends its output, the stages of
//!   the loop finish one after the other, and the run completes by itself.
//!   A stage of the cycle itself that waits for the end of its input
//!   (an aggregate, a batch) would wait for ever: the pipeline-file layer
//!   refuses one.
//! * **No deadlock.** The entry reads the fed-back edge eagerly into a
//!   queue of its own and sends from that queue downstream in another
//!   task, so the stage feeding back never waits on a loop that waits on
//!   it. Items from outside are taken only while that queue is nearly
//!   empty: the loop's own work goes first, and the outside input gets
//!   backpressure.
//! * **Bounded memory.** The queue holds at most `max_pending` items. An
//!   item fed back while it is full goes to the dead-letter output with
//!   reason "loop full" (nothing is dropped silently): a loop whose
//!   frontier grows past that bound needs a larger bound, a `max_depth`,
//!   or a dedupe. Every other edge of the loop is bounded as usual.
//!
//! `max_depth` bounds how many times an item may go round: an item fed
//! back more often is filtered at the entry (counted as filtered).
//!
//! A graceful stop (a cancel, Ctrl-C) ends the loop early: items waiting
//! in the entry's queue and items fed back after it are dropped (counted,
//! their acks failed, so a checkpointing source reads their origin again
//! on resume) instead of followed; what is already in the cycle's stages
//! finishes.
//!
//! Memory per item: an item that comes back alone keeps its ack (one more
//! hop counted in place); one that branched gets a new ack chained to its
//! fork, so the acks of an item's ancestors stay alive until its whole
//! subtree is settled: bounded by the depth times what is inside.
//!
//! Items that enter the loop's stages other than through the entry (a
//! stage of the loop that also reads another flow) are counted only once
//! they reach the entry: when the loop ends, one still on its way back is
//! dropped (counted as such).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::ack::Ack;
use crate::channel::{ABORTED, Batch, Emitter, Envelope, Input, Rx, drop_items, recv, resolve};
use crate::error::BoxError;
use crate::metrics::StageMetrics;
use crate::pipeline::{Flow, Role, SharedGraph, lock};
use crate::pool::StageCtx;

/// How a loop bounds itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopOptions {
    /// Times an item may be fed back; one fed back more often is filtered
    /// at the loop's entry. `None`: no bound (a dedupe in the loop must
    /// then end it).
    pub max_depth: Option<u32>,
    /// Items the entry's queue holds at most (fed-back items waiting to go
    /// round again); more are dead-lettered. Default: 100,000.
    pub max_pending: usize,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            max_depth: None,
            max_pending: 100_000,
        }
    }
}

type Back<T> = Arc<Mutex<Option<Input<T>>>>;

/// Ids of loops, for the acks they make: unique in the process.
static NEXT_LOOP: AtomicUsize = AtomicUsize::new(1);

/// The open end of a loop: give it the flow to feed back with
/// [`close`](Self::close). A loop never closed fails the run before it
/// starts.
#[must_use = "a loop must be closed with the flow it feeds back"]
pub struct LoopBack<T> {
    graph: SharedGraph,
    back: Back<T>,
    exit: LoopExit,
}

/// What flows leaving a loop pass through: see [`Flow::leave_loop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopExit {
    id: usize,
}

impl<T: Send + 'static> LoopBack<T> {
    /// The loop's exit, for [`Flow::leave_loop`].
    pub fn exit(&self) -> LoopExit {
        self.exit
    }

    /// Feeds `flow` back into the loop's entry.
    pub fn close(self, flow: Flow<T>) {
        if !Arc::ptr_eq(&flow.graph, &self.graph) {
            lock(&self.graph)
                .problems
                .push("LoopBack::close was given a flow of another pipeline".into());
            return;
        }
        let mut g = lock(&self.graph);
        let input = flow.connect(&mut g);
        *self.back.lock().unwrap_or_else(|p| p.into_inner()) = Some(input);
    }
}

impl<T: Send + 'static> Flow<T> {
    /// Starts a loop named `name` at this flow: returns the flow into the
    /// loop's body (this flow's items, then the ones fed back) and the end
    /// to feed items back into. See the [module docs](self) for completion,
    /// memory and stopping.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), weir::RunError> {
    /// use weir::{LoopOptions, Pipeline, collect, from_iter};
    /// let p = Pipeline::new();
    /// // Halve each number until it is odd; keep the odd ones.
    /// let (body, back) = p
    ///     .source("numbers", from_iter([8u32, 12, 7]))
    ///     .loop_start("halving", LoopOptions::default());
    /// let (even, odd) = body.route(|n: &u32| n % 2 == 0);
    /// back.close(even.map("halve", |n| n / 2));
    /// let out = odd.sink("odd", collect());
    /// p.run().await?;
    /// let mut got = out.take().unwrap();
    /// got.sort();
    /// assert_eq!(got, vec![1, 3, 7]);
    /// # Ok(()) }
    /// ```
    pub fn loop_start(self, name: &str, options: LoopOptions) -> (Flow<T>, LoopBack<T>) {
        let graph = self.graph.clone();
        let id = NEXT_LOOP.fetch_add(1, Ordering::Relaxed);
        if options.max_pending == 0 {
            lock(&graph)
                .problems
                .push(format!("loop '{name}': max_pending must be at least 1"));
        }
        let back: Back<T> = Arc::new(Mutex::new(None));
        let b = back.clone();
        let flow = self.stage(name, "loop", Role::Other, move |input, out| {
            Box::new(move |sp, ctx| {
                let fed = b
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .ok_or_else(|| {
                        format!(
                            "loop '{}' was never closed: nothing is fed back into it",
                            ctx.name
                        )
                    })?;
                let port = resolve(&out, &format!("output of loop '{}'", ctx.name))?;
                let em = Emitter::new(port, ctx.batch_size, ctx.metrics.clone());
                let state = Arc::new(State {
                    id,
                    queue: Mutex::new(VecDeque::new()),
                    to_sender: Notify::new(),
                    to_collector: Arc::new(Notify::new()),
                    inside: Arc::new(AtomicUsize::new(0)),
                    ended: AtomicBool::new(false),
                });
                sp.task(collect(
                    input.rx,
                    fed.rx,
                    state.clone(),
                    options,
                    ctx.clone(),
                ));
                sp.task(send(state, em, ctx));
                Ok(())
            })
        });
        (
            flow,
            LoopBack {
                graph,
                back,
                exit: LoopExit { id },
            },
        )
    }

    /// Marks this flow as leaving the loop of `exit`: its items stop
    /// counting as inside that loop (whose end waits for everything
    /// inside), and go on with their own acks. Every flow from a stage of
    /// a loop's cycle to a stage or sink outside it must pass here, or the
    /// loop waits for those items' sinks, and a stage that waits for the
    /// end of its input (an aggregate) would wait for the loop for ever.
    pub fn leave_loop(self, name: &str, exit: LoopExit) -> Flow<T> {
        let id = exit.id;
        self.stage(name, "loop-exit", Role::Other, move |input, out| {
            Box::new(move |sp, ctx| {
                let port = resolve(&out, &format!("output of '{}'", ctx.name))?;
                let mut em = Emitter::new(port, ctx.batch_size, ctx.metrics.clone());
                sp.task(async move {
                    let m = &*ctx.metrics;
                    while let Some(batch) = recv(&input.rx, m).await {
                        let n = batch.len();
                        em.push_batch(
                            batch
                                .into_iter()
                                .map(|e| Envelope {
                                    value: e.value,
                                    ack: e.ack.and_then(|a| a.leave_loop(id)),
                                })
                                .collect(),
                        );
                        StageMetrics::add(&m.ok, n);
                        if let Err(h) = em.flush(true).await {
                            return ctx.halted(h);
                        }
                    }
                    match em.close().await {
                        Ok(()) => Ok(()),
                        Err(h) => ctx.halted(h),
                    }
                });
                Ok(())
            })
        })
    }
}

/// What the entry's two tasks share.
struct State<T> {
    /// The loop's id in its acks.
    id: usize,
    /// Items taken in, waiting to be sent into the loop's body.
    queue: Mutex<VecDeque<Envelope<T>>>,
    /// Items were queued, or the loop ended.
    to_sender: Notify,
    /// Room in the queue, or the count inside reached zero.
    to_collector: Arc<Notify>,
    /// Items that passed the entry and are not settled yet.
    inside: Arc<AtomicUsize>,
    /// Nothing more will be queued.
    ended: AtomicBool,
}

impl<T> State<T> {
    fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The run aborted: what is queued will never be sent.
    fn abandon(&self, m: &StageMetrics) {
        let q = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        drop_items(q, m, ABORTED);
    }

    /// Gives `e` the loop's ack (`hops` passes so far) and counts it in.
    fn admit(&self, e: Envelope<T>, hops: u32) -> Envelope<T> {
        self.inside.fetch_add(1, Ordering::AcqRel);
        let inside = self.inside.clone();
        let wake = self.to_collector.clone();
        let ack = Ack::in_loop(e.ack, self.id, hops, move || {
            if inside.fetch_sub(1, Ordering::AcqRel) == 1 {
                wake.notify_one();
            }
        });
        Envelope {
            value: e.value,
            ack: Some(ack),
        }
    }
}

/// Why items fed back after a stop are not followed.
const STOPPED: &str = "the run was stopped: items fed back into the loop are not followed";
/// Why an item reaching the entry after the loop ended is dropped.
const ENDED: &str =
    "fed back after the loop had ended (it entered the loop other than through its entry)";

/// Takes items in: fed-back ones always (so the loop never waits on
/// itself), outside ones while the queue is nearly empty.
async fn collect<T: Send + 'static>(
    outside: Rx<T>,
    fed: Rx<T>,
    state: Arc<State<T>>,
    options: LoopOptions,
    ctx: Arc<StageCtx>,
) -> Result<(), BoxError> {
    let m = &*ctx.metrics;
    let (mut outside_open, mut fed_open) = (true, true);
    let low_water = ctx.batch_size;
    loop {
        if !outside_open
            && state.inside.load(Ordering::Acquire) == 0
            && !state.ended.load(Ordering::Acquire)
        {
            // Nothing inside can feed anything back any more.
            state.ended.store(true, Ordering::Release);
            state.to_sender.notify_one();
        }
        let ended = state.ended.load(Ordering::Acquire);
        if ended && !fed_open {
            return Ok(());
        }
        let take_outside = outside_open && !ended && state.queued() < low_water;
        tokio::select! {
            biased;
            () = ctx.abort.cancelled() => {
                state.abandon(m);
                return Ok(());
            }
            batch = recv(&fed, m), if fed_open => match batch {
                None => fed_open = false,
                Some(b) if ended => drop_items(b, m, ENDED),
                Some(b) if ctx.stop.is_cancelled() => drop_items(b, m, STOPPED),
                Some(b) => take_back(b, &state, options, &ctx).await?,
            },
            batch = recv(&outside, m), if take_outside => match batch {
                None => outside_open = false,
                Some(b) => {
                    let admitted: Vec<_> = b.into_iter().map(|e| state.admit(e, 0)).collect();
                    state.queue.lock().unwrap_or_else(|p| p.into_inner()).extend(admitted);
                    state.to_sender.notify_one();
                }
            },
            () = state.to_collector.notified() => {}
        }
    }
}

/// Queues fed-back items: over `max_depth` filtered, beyond `max_pending`
/// dead-lettered.
async fn take_back<T: Send + 'static>(
    batch: Batch<T>,
    state: &State<T>,
    options: LoopOptions,
    ctx: &StageCtx,
) -> Result<(), BoxError> {
    let m = &*ctx.metrics;
    let mut letters = Vec::new();
    {
        let mut q = state.queue.lock().unwrap_or_else(|p| p.into_inner());
        for mut e in batch {
            let hops = e.ack.as_ref().map_or(0, |a| a.hops_in(state.id)) + 1;
            if options.max_depth.is_some_and(|d| hops > d) {
                StageMetrics::add(&m.filtered, 1);
                e.deliver();
            } else if q.len() >= options.max_pending {
                let err: BoxError = format!(
                    "loop full: loop '{}' already holds {} fed-back items (max_pending); raise it, or bound the loop with max_depth or a dedupe",
                    ctx.name, options.max_pending
                )
                .into();
                letters.push(ctx.letter(e.ack, e.value, &err, 1));
            } else if e.ack.as_mut().is_some_and(|a| a.next_pass(state.id)) {
                // Still counted inside: the same ack, one pass more.
                q.push_back(e);
            } else {
                q.push_back(state.admit(e, hops));
            }
        }
    }
    state.to_sender.notify_one();
    ctx.dead_letter(letters).await
}

/// Sends queued items into the loop's body, with the usual backpressure.
async fn send<T: Send + 'static>(
    state: Arc<State<T>>,
    mut em: Emitter<T>,
    ctx: Arc<StageCtx>,
) -> Result<(), BoxError> {
    let m = &*ctx.metrics;
    loop {
        if ctx.stop.is_cancelled() {
            // Stopping: what waits to go round is not followed.
            let q = std::mem::take(&mut *state.queue.lock().unwrap_or_else(|p| p.into_inner()));
            drop_items(q, m, STOPPED);
        }
        let batch: Batch<T> = {
            let mut q = state.queue.lock().unwrap_or_else(|p| p.into_inner());
            let n = q.len().min(ctx.batch_size);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            if state.ended.load(Ordering::Acquire) {
                return match em.close().await {
                    Ok(()) => Ok(()),
                    Err(h) => {
                        state.abandon(m);
                        ctx.halted(h)
                    }
                };
            }
            // Nothing more is ready: send on what is held.
            if em.holds_items()
                && let Err(h) = em.flush(true).await
            {
                state.abandon(m);
                return ctx.halted(h);
            }
            tokio::select! {
                biased;
                () = ctx.abort.cancelled() => {
                    state.abandon(m);
                    return Ok(());
                }
                () = state.to_sender.notified() => {}
            }
            continue;
        }
        state.to_collector.notify_one();
        StageMetrics::add(&m.ok, batch.len());
        em.push_batch(batch);
        if let Err(h) = em.flush(false).await {
            state.abandon(m);
            return ctx.halted(h);
        }
    }
}
