//! The builder: [`Pipeline`] holds the graph, [`Flow`] is one unconnected
//! output of it, and each method on a flow adds a stage.
//!
//! Nothing runs while the graph is built. Stage settings (`workers`,
//! `ordered`, `on_error`) apply to the stage just added, so they read in
//! order: `.map("parse", f).workers(4)`.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::channel::{
    Closer, DirectCell, Emitter, Input, PortSpec, Rx, Slot, check, edge, fill, new_slot, resolve,
};
use crate::dead_letter::DeadLetter;
use crate::error::{BoxError, RunError};
use crate::metrics::{Metrics, Report, StageInfo, StageMetrics};
use crate::ops::{Filter, FlatMap, ItemOp, Map, TryFilter, TryFlatMap};
use crate::pool::{self, AsyncFn, Sequencer, StageCtx, SyncStage};
use crate::runtime::{self, Spawner};
use crate::sink::{self, Sink};
use crate::source::Source;
use crate::stage::{ErrorPolicy, PipelineOptions, StageOptions};

/// Starts a stage's workers at run time. `Err` names what is wrong with the
/// graph.
pub(crate) type SpawnFn = Box<dyn FnOnce(&mut Spawner, Arc<StageCtx>) -> Result<(), String> + Send>;

/// What kind of worker a stage runs, which decides what it can fuse with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Source { blocking: bool },
    SyncOp,
    Sink,
    Other,
}

pub(crate) struct Node {
    pub name: String,
    pub role: Role,
    /// The stage feeding this one through a private edge (one producer, no
    /// fan-out, no explicit buffer): a candidate for fusion.
    pub fuse_from: Option<usize>,
    pub options: StageOptions,
    /// Sources and sinks run one worker.
    pub single: bool,
    pub info: usize,
    pub metrics: Arc<StageMetrics>,
    pub spawn: Option<SpawnFn>,
    /// Checks, before anything runs, that the stage's output is connected.
    pub check: Option<Box<dyn Fn() -> Result<(), String> + Send>>,
}

pub(crate) struct Graph {
    pub options: PipelineOptions,
    pub nodes: Vec<Node>,
    pub names: HashSet<String>,
    pub problems: Vec<String>,
    pub closers: Vec<Closer>,
    pub dead_letter_sink: Option<Box<dyn FnOnce(Rx<DeadLetter>) -> SpawnFn + Send>>,
    pub metrics: Metrics,
    pub cancel: CancellationToken,
    /// Child of `cancel`, also cancelled when the run fails.
    pub stop: CancellationToken,
    pub ran: bool,
}

pub(crate) type SharedGraph = Arc<Mutex<Graph>>;

pub(crate) fn lock(g: &SharedGraph) -> std::sync::MutexGuard<'_, Graph> {
    g.lock().unwrap_or_else(|p| p.into_inner())
}

impl Graph {
    /// Records that stage `idx` writes to `slot`, to be checked before the run.
    pub fn output<T: Send + 'static>(&mut self, idx: usize, slot: &Slot<T>) {
        let slot = slot.clone();
        let what = format!("output of stage '{}'", self.nodes[idx].name);
        self.nodes[idx].check = Some(Box::new(move || check(&slot, &what)));
    }

    /// Registers a stage; returns its index.
    pub fn add_node(
        &mut self,
        name: &str,
        kind: &'static str,
        role: Role,
        capacity: Option<usize>,
    ) -> usize {
        let single = matches!(role, Role::Source { .. } | Role::Sink);
        if name.is_empty() {
            self.problems.push("a stage has an empty name".into());
        } else if name == runtime::DEAD_LETTER_STAGE {
            self.problems
                .push(format!("stage name '{name}' is reserved"));
        } else if !self.names.insert(name.to_string()) {
            self.problems.push(format!("two stages are named '{name}'"));
        }
        let metrics = Arc::new(StageMetrics::default());
        let mut stages = self
            .metrics
            .stages
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        stages.push(StageInfo {
            name: name.to_string(),
            kind,
            workers: 1,
            capacity,
            metrics: metrics.clone(),
            runs_in: None,
        });
        let info = stages.len() - 1;
        drop(stages);
        self.nodes.push(Node {
            name: name.to_string(),
            role,
            fuse_from: None,
            options: StageOptions::default(),
            single,
            info,
            metrics,
            spawn: None,
            check: None,
        });
        self.nodes.len() - 1
    }
}

/// A pipeline under construction, and the handle that runs it.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), weir::RunError> {
/// use weir::{Pipeline, from_iter, fold};
/// let p = Pipeline::new();
/// let sum = p
///     .source("numbers", from_iter(0..1_000u64))
///     .map("double", |x| x * 2 + 1)
///     .workers(2)
///     .filter("not-div3", |x| x % 3 != 0)
///     .sink("sum", fold(0u64, |acc, x: u64| acc.wrapping_add(x)));
/// let report = p.run().await?;
/// assert_eq!(report.stage("double").unwrap().received, 1_000);
/// assert!(sum.take().unwrap() > 0);
/// # Ok(()) }
/// ```
pub struct Pipeline {
    graph: SharedGraph,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline::new()
    }
}

impl Pipeline {
    /// An empty pipeline with default options.
    pub fn new() -> Self {
        Pipeline::with_options(PipelineOptions::default())
    }

    /// An empty pipeline with `options`.
    pub fn with_options(options: PipelineOptions) -> Self {
        let mut problems = Vec::new();
        if options.batch_size == 0 {
            problems.push("batch_size must be at least 1".to_string());
        }
        if options.buffer == 0 {
            problems.push("buffer must be at least 1 batch".to_string());
        }
        let cancel = CancellationToken::new();
        let stop = cancel.child_token();
        Pipeline {
            graph: Arc::new(Mutex::new(Graph {
                options,
                nodes: Vec::new(),
                names: HashSet::new(),
                problems,
                closers: Vec::new(),
                dead_letter_sink: None,
                metrics: Metrics::default(),
                cancel,
                stop,
                ran: false,
            })),
        }
    }

    /// Adds a source named `name`; returns its output.
    pub fn source<T: Send + 'static>(&self, name: &str, source: Source<T>) -> Flow<T> {
        let mut g = lock(&self.graph);
        let Source { driver, blocking } = source;
        let idx = g.add_node(name, "source", Role::Source { blocking }, None);
        let out = new_slot::<T>();
        let slot = out.clone();
        g.output(idx, &out);
        g.nodes[idx].spawn = Some(Box::new(move |sp, ctx| {
            let port = resolve(&slot, &format!("output of source '{}'", ctx.name))?;
            let em = Emitter::new(port, ctx.batch_size, ctx.metrics.clone());
            let fut = driver(em, ctx);
            if blocking {
                sp.thread(fut);
            } else {
                sp.task(fut);
            }
            Ok(())
        }));
        drop(g);
        Flow::new(self.graph.clone(), Head::Slots(vec![out]), Some(idx))
    }

    /// Sends dead letters to `sink` instead of keeping them in the report.
    /// Its acks settle as [`AckOutcome::DeadLettered`](crate::AckOutcome)
    /// once the sink commits them.
    pub fn dead_letter_sink<S: Sink<DeadLetter>>(&self, sink: S) -> SinkHandle<S::Output> {
        let result = Arc::new(Mutex::new(None));
        let r = result.clone();
        lock(&self.graph).dead_letter_sink =
            Some(Box::new(move |rx| dead_letter_spawn(rx, sink, r)));
        SinkHandle {
            result,
            graph: self.graph.clone(),
            node: None,
        }
    }

    /// Live counters of every stage, readable while the pipeline runs.
    pub fn metrics(&self) -> Metrics {
        lock(&self.graph).metrics.clone()
    }

    /// The token that stops the pipeline gracefully: sources stop, what is
    /// in flight drains to the sinks, sinks finish, `run` returns.
    pub fn cancel_token(&self) -> CancellationToken {
        lock(&self.graph).cancel.clone()
    }

    /// A token cancelled when the run stops before its sources end: a
    /// graceful cancel ([`cancel_token`](Self::cancel_token)) or a failure.
    /// A sink whose `finish` must tell "the input ended" from "the run
    /// stopped" (to hold back an incomplete unit of output) checks it.
    pub fn stop_token(&self) -> CancellationToken {
        lock(&self.graph).stop.clone()
    }

    /// Runs the pipeline to completion.
    ///
    /// Returns when every item has reached a sink, been filtered or been
    /// dead-lettered; no task or thread of the run outlives it. Must be
    /// called within a tokio runtime (either flavour).
    ///
    /// # Errors
    /// The first fatal error (a stage under [`ErrorPolicy::Fail`], a
    /// panicking worker, a failed sink) cancels the rest and is returned,
    /// naming the stage, with the report of what happened until then. A
    /// sink that fails while the run is being stopped (after a cancel) is
    /// not one: its items count as dropped and their acks fail.
    ///
    /// # Cancel safety
    /// Dropping the future aborts nothing already spawned; use
    /// [`cancel_token`](Self::cancel_token) to stop a run.
    pub fn run(self) -> impl Future<Output = Result<Report, RunError>> + Send + 'static {
        runtime::run(self.graph)
    }
}

/// Where a flow's items come from: stage outputs not yet connected, or an
/// edge that already exists (a branch of [`Flow::balance`]).
pub(crate) enum Head<T> {
    Slots(Vec<Slot<T>>),
    Rx(Rx<T>),
}

/// The output of a stage (or of several, merged), to which the next stage or
/// a sink is attached.
#[must_use = "a flow must end in a sink (or be merged into one that does)"]
pub struct Flow<T> {
    pub(crate) graph: SharedGraph,
    pub(crate) head: Head<T>,
    /// The stage that settings like `workers` apply to.
    pub(crate) node: Option<usize>,
    /// Bound of the edge this flow's items travel on, in batches.
    pub(crate) buffer: Option<usize>,
}

impl<T: Send + 'static> Flow<T> {
    pub(crate) fn new(graph: SharedGraph, head: Head<T>, node: Option<usize>) -> Self {
        Flow {
            graph,
            head,
            node,
            buffer: None,
        }
    }

    fn set(self, what: &str, f: impl FnOnce(&mut Node) -> Result<(), String>) -> Self {
        let mut g = lock(&self.graph);
        match self.node {
            Some(i) => {
                if let Err(p) = f(&mut g.nodes[i]) {
                    g.problems.push(p);
                }
            }
            None => g.problems.push(format!(
                "{what} must directly follow a stage (not a fan-out or merge)"
            )),
        }
        drop(g);
        self
    }

    /// Runs the stage just added on `n` workers sharing its input queue.
    /// Output order then follows completion; add [`ordered`](Self::ordered)
    /// to keep input order. For async stages `n` is how many calls are in
    /// flight at once.
    pub fn workers(self, n: usize) -> Self {
        self.set("workers()", |node| {
            if n == 0 {
                Err(format!("stage '{}': workers must be at least 1", node.name))
            } else if node.single && n > 1 {
                Err(format!(
                    "stage '{}': sources and sinks run one worker",
                    node.name
                ))
            } else {
                node.options.workers = n;
                Ok(())
            }
        })
    }

    /// Keeps input order through the stage just added, however many
    /// workers it has. A reorder window bounds memory: see
    /// [`reorder_window`](Self::reorder_window).
    pub fn ordered(self) -> Self {
        self.set("ordered()", |node| {
            node.options.ordered = true;
            Ok(())
        })
    }

    /// Batches an ordered pool may have taken and not yet emitted, the
    /// oldest unfinished one included (default: 4 per worker). When one
    /// item is slow, the other workers go on until the window is full, then
    /// wait: the pool holds at most `batches` input batches and their
    /// outputs, never more.
    ///
    /// The window is honoured exactly. Below the worker count it also caps
    /// how many workers are busy at once (`reorder_window(1)` runs one
    /// batch at a time): memory is what it bounds, and the caller asked for
    /// that bound.
    pub fn reorder_window(self, batches: usize) -> Self {
        self.set("reorder_window()", |node| {
            if batches == 0 {
                return Err(format!(
                    "stage '{}': reorder window must be at least 1",
                    node.name
                ));
            }
            node.options.window = Some(batches);
            Ok(())
        })
    }

    /// What the stage just added does with an item its function failed on.
    pub fn on_error(self, policy: ErrorPolicy) -> Self {
        self.set("on_error()", |node| {
            node.options.on_error = policy;
            Ok(())
        })
    }

    /// Bounds the edge carrying this flow's items to `batches` batches
    /// (default [`PipelineOptions::buffer`]).
    pub fn buffer(mut self, batches: usize) -> Self {
        if batches == 0 {
            lock(&self.graph)
                .problems
                .push("buffer must be at least 1 batch".into());
        }
        self.buffer = Some(batches);
        self
    }

    /// Connects this flow to a new edge (or hands over its existing one).
    pub(crate) fn connect(self, g: &mut Graph) -> Input<T> {
        let direct: DirectCell<T> = Arc::new(Mutex::new(Vec::new()));
        match self.head {
            Head::Rx(rx) => Input { rx, direct },
            Head::Slots(slots) => {
                let cap = self.buffer.unwrap_or(g.options.buffer);
                let (tx, rx) = edge::<T>(cap, &mut g.closers);
                for s in &slots {
                    fill(s, PortSpec::Chan(tx.clone(), direct.clone()));
                }
                Input { rx, direct }
            }
        }
    }

    /// The producer this flow could be fused to: exactly one stage, feeding
    /// it directly, with no buffer asked for in between.
    fn fusable_producer(&self) -> Option<usize> {
        match &self.head {
            Head::Slots(s) if s.len() == 1 && self.buffer.is_none() => self.node,
            _ => None,
        }
    }

    /// Adds a stage reading this flow; `make` builds its spawner from its
    /// input edge and its output slot.
    pub(crate) fn stage<O: Send + 'static>(
        self,
        name: &str,
        kind: &'static str,
        role: Role,
        make: impl FnOnce(Input<T>, Slot<O>) -> SpawnFn,
    ) -> Flow<O> {
        let graph = self.graph.clone();
        let mut g = lock(&graph);
        let cap = Some(self.buffer.unwrap_or(g.options.buffer));
        let from = self.fusable_producer();
        let input = self.connect(&mut g);
        let idx = g.add_node(name, kind, role, cap);
        g.nodes[idx].fuse_from = from;
        let out = new_slot::<O>();
        g.output(idx, &out);
        g.nodes[idx].spawn = Some(make(input, out.clone()));
        drop(g);
        Flow::new(graph, Head::Slots(vec![out]), Some(idx))
    }

    /// Adds a sync per-item stage.
    fn item_stage<O: Send + 'static>(
        self,
        name: &str,
        kind: &'static str,
        op: Arc<dyn ItemOp<T, O>>,
    ) -> Flow<O> {
        self.stage(name, kind, Role::SyncOp, move |input, out| {
            Box::new(move |sp, ctx| spawn_item_pool(sp, ctx, input, out, op))
        })
    }

    /// Transforms each item with `f`, a sync function run on worker threads
    /// (not on the async reactor), so it may be CPU-heavy.
    pub fn map<O, F>(self, name: &str, f: F) -> Flow<O>
    where
        O: Send + 'static,
        F: Fn(T) -> O + Send + Sync + 'static,
    {
        self.item_stage(name, "map", Arc::new(Map::new(f)))
    }

    /// Keeps the items for which `f` holds; the others count as filtered.
    pub fn filter<F>(self, name: &str, f: F) -> Flow<T>
    where
        F: Fn(&T) -> bool + Send + Sync + 'static,
    {
        self.item_stage(name, "filter", Arc::new(Filter::new(f)))
    }

    /// Turns each item into zero or more items. An item that yields none
    /// counts as filtered; its ack settles when all its outputs have.
    pub fn flat_map<O, It, F>(self, name: &str, f: F) -> Flow<O>
    where
        O: Send + 'static,
        It: IntoIterator<Item = O> + 'static,
        F: Fn(T) -> It + Send + Sync + 'static,
    {
        self.item_stage(name, "flat_map", Arc::new(FlatMap::new(f)))
    }

    /// Like [`map`](Self::map), for a function that can fail. It borrows the
    /// item, so a failed item can be retried or dead-lettered as it was.
    /// Failures go through the stage's [`ErrorPolicy`].
    pub fn try_map<O, E, F>(self, name: &str, f: F) -> Flow<O>
    where
        O: Send + 'static,
        E: Into<BoxError> + 'static,
        F: Fn(&T) -> Result<O, E> + Send + Sync + 'static,
    {
        let op = TryFlatMap::new(move |x: &T| f(x).map(std::iter::once));
        self.item_stage(name, "map", Arc::new(op))
    }

    /// Like [`filter`](Self::filter), for a predicate that can fail.
    pub fn try_filter<E, F>(self, name: &str, f: F) -> Flow<T>
    where
        E: Into<BoxError> + 'static,
        F: Fn(&T) -> Result<bool, E> + Send + Sync + 'static,
    {
        self.item_stage(name, "filter", Arc::new(TryFilter::new(f)))
    }

    /// Like [`flat_map`](Self::flat_map), for a function that can fail.
    pub fn try_flat_map<O, It, E, F>(self, name: &str, f: F) -> Flow<O>
    where
        O: Send + 'static,
        It: IntoIterator<Item = O> + 'static,
        E: Into<BoxError> + 'static,
        F: Fn(&T) -> Result<It, E> + Send + Sync + 'static,
    {
        self.item_stage(name, "flat_map", Arc::new(TryFlatMap::new(f)))
    }

    /// Transforms each item with an async function (I/O: a call to a
    /// service). [`workers`](Self::workers) sets how many calls are in
    /// flight at once.
    pub fn map_async<O, Fut, F>(self, name: &str, f: F) -> Flow<O>
    where
        O: Send + 'static,
        Fut: Future<Output = O> + Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
    {
        let call = Box::new(move |x: T| -> pool::BoxFut<Result<O, BoxError>> {
            let fut = f(x);
            Box::pin(async move { Ok(fut.await) })
        });
        self.async_stage(name, "map_async", AsyncFn { call, clone: None })
    }

    /// Like [`map_async`](Self::map_async), for a call that can fail. Each
    /// attempt gets a clone of the item, so it can be retried and
    /// dead-lettered.
    pub fn try_map_async<O, E, Fut, F>(self, name: &str, f: F) -> Flow<O>
    where
        T: Clone,
        O: Send + 'static,
        E: Into<BoxError> + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
    {
        let call = Box::new(move |x: T| -> pool::BoxFut<Result<O, BoxError>> {
            let fut = f(x);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        self.async_stage(
            name,
            "map_async",
            AsyncFn {
                call,
                clone: Some(T::clone),
            },
        )
    }

    pub(crate) fn async_stage<O: Send + 'static>(
        self,
        name: &str,
        kind: &'static str,
        f: AsyncFn<T, O>,
    ) -> Flow<O> {
        let f = Arc::new(f);
        self.stage(name, kind, Role::Other, move |input, out| {
            Box::new(move |sp, ctx| {
                let port = resolve(&out, &format!("output of stage '{}'", ctx.name))?;
                let em = Emitter::new(port, ctx.batch_size, ctx.metrics.clone());
                sp.task(pool::async_pool(input.rx, f, em, ctx));
                Ok(())
            })
        })
    }

    /// Ends the flow in `sink`. The returned handle yields the sink's output
    /// after the run.
    pub fn sink<S: Sink<T>>(self, name: &str, sink: S) -> SinkHandle<S::Output> {
        let graph = self.graph.clone();
        let mut g = lock(&graph);
        let cap = Some(self.buffer.unwrap_or(g.options.buffer));
        let from = self.fusable_producer();
        let input = self.connect(&mut g);
        let idx = g.add_node(name, "sink", Role::Sink, cap);
        g.nodes[idx].fuse_from = from;
        let result = Arc::new(Mutex::new(None));
        g.nodes[idx].spawn = Some(sink_spawn(input, sink, result.clone()));
        drop(g);
        SinkHandle {
            result,
            graph,
            node: Some(idx),
        }
    }
}

pub(crate) fn dead_letter_spawn<S: Sink<DeadLetter>>(
    rx: Rx<DeadLetter>,
    sink: S,
    result: Arc<Mutex<Option<S::Output>>>,
) -> SpawnFn {
    let input = Input {
        rx,
        direct: Arc::new(Mutex::new(Vec::new())),
    };
    sink_spawn(input, sink, result)
}

fn sink_spawn<T: Send + 'static, S: Sink<T>>(
    input: Input<T>,
    sink: S,
    result: Arc<Mutex<Option<S::Output>>>,
) -> SpawnFn {
    Box::new(move |sp, ctx| {
        let blocking = sink.blocking();
        let fused = ctx.fused;
        let stage = sink::SinkStage::new(sink, ctx, result);
        if fused {
            input.fuse(Box::new(stage));
        } else if blocking {
            sp.thread(sink::run_sink(input.rx, stage));
        } else {
            sp.task(sink::run_sink(input.rx, stage));
        }
        Ok(())
    })
}

fn spawn_item_pool<I: Send + 'static, O: Send + 'static>(
    sp: &mut Spawner,
    ctx: Arc<StageCtx>,
    input: Input<I>,
    out: Slot<O>,
    op: Arc<dyn ItemOp<I, O>>,
) -> Result<(), String> {
    let what = format!("output of stage '{}'", ctx.name);
    let emitter = || -> Result<Emitter<O>, String> {
        Ok(Emitter::new(
            resolve(&out, &what)?,
            ctx.batch_size,
            ctx.metrics.clone(),
        ))
    };
    let opts = &ctx.options;
    if ctx.fused {
        // One instance per worker of the host pool (the same count: see
        // `runtime::fusion`).
        for _ in 0..opts.workers {
            input.fuse(Box::new(SyncStage::new(
                op.clone(),
                emitter()?,
                ctx.clone(),
            )));
        }
    } else if opts.ordered && opts.workers > 1 {
        let window = opts.reorder_window();
        let seq = Arc::new(Sequencer {
            next: tokio::sync::Mutex::new(0),
            window: Arc::new(tokio::sync::Semaphore::new(window)),
        });
        let (tx, reorder_rx) = async_channel::bounded(window);
        sp.close_on_abort(&reorder_rx);
        for _ in 0..opts.workers {
            sp.thread(pool::ordered_worker(
                input.rx.clone(),
                op.clone(),
                seq.clone(),
                tx.clone(),
                ctx.clone(),
            ));
        }
        sp.task(pool::reorderer(
            reorder_rx,
            emitter()?,
            seq.window.clone(),
            ctx.clone(),
        ));
    } else {
        for _ in 0..opts.workers {
            let stage = SyncStage::new(op.clone(), emitter()?, ctx.clone());
            sp.thread(pool::sync_worker(input.rx.clone(), stage));
        }
    }
    Ok(())
}

/// Yields a sink's output once the pipeline has run.
pub struct SinkHandle<R> {
    result: Arc<Mutex<Option<R>>>,
    graph: SharedGraph,
    node: Option<usize>,
}

impl<R: Send + 'static> SinkHandle<R> {
    /// What the sink does with a batch it failed to write: fail the run
    /// (the default), retry the unwritten items, or dead-letter them.
    pub fn on_error(self, policy: ErrorPolicy) -> Self {
        let mut g = lock(&self.graph);
        match self.node {
            Some(i) => g.nodes[i].options.on_error = policy,
            None => g.problems.push(
                "the dead-letter sink cannot dead-letter; its errors are always fatal".into(),
            ),
        }
        drop(g);
        self
    }

    /// The sink's output: `None` before the run ended or when the sink did
    /// not finish (the run failed).
    pub fn take(&self) -> Option<R> {
        self.result.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Runs the pipeline this sink belongs to; returns the sink's output and
    /// the report. A shortcut for one-sink pipelines.
    ///
    /// # Errors
    /// As [`Pipeline::run`].
    pub async fn run(self) -> Result<(R, Report), RunError> {
        let report = runtime::run(self.graph.clone()).await?;
        let out = self.take().expect("a sink that finished has an output");
        Ok((out, report))
    }
}
