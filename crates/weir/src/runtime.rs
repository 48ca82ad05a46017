//! Running a built graph: spawn every stage, watch them, cancel on the
//! first fatal error, and join everything before returning.
//!
//! Shutdown has two speeds. *Cancel* (the pipeline's token) stops only the
//! sources; everything downstream drains naturally, because a stage ends when
//! its input edge is closed and empty, and closes its output when it ends.
//! *Abort* (a fatal error or a panic) additionally closes every edge, so that
//! blocked senders and receivers wake at once and drop what they hold; the
//! acks of dropped items fail. Either way `run` joins every task and thread
//! before it returns.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::channel::{Closer, edge};
use crate::dead_letter::{Collector, DeadLetter};
use crate::error::{BoxError, EdgeClosed, Error, RunError, StageFailure, panic_message};
use crate::metrics::{Metrics, Report, StageMetrics};
use crate::pipeline::{Graph, Role, SharedGraph, SpawnFn, lock};
use crate::pool::StageCtx;

/// The name of the dead-letter output in reports.
pub const DEAD_LETTER_STAGE: &str = "dead-letter";

type TaskOut = (usize, Result<(), BoxError>);

/// Starts a run's tasks and threads and remembers which stage owns each.
pub(crate) struct Spawner {
    set: JoinSet<TaskOut>,
    owners: HashMap<Id, usize>,
    current: usize,
    metrics: Arc<StageMetrics>,
    closers: Vec<Closer>,
}

/// Counts a worker as active for as long as it lives, panics included.
struct Active(Arc<StageMetrics>);

impl Active {
    fn new(m: Arc<StageMetrics>) -> Self {
        m.workers_active.fetch_add(1, Relaxed);
        Active(m)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.workers_active.fetch_sub(1, Relaxed);
    }
}

impl Spawner {
    /// Spawns an async worker of the current stage.
    pub fn task(&mut self, fut: impl Future<Output = Result<(), BoxError>> + Send + 'static) {
        let idx = self.current;
        let active = Active::new(self.metrics.clone());
        let h = self.set.spawn(async move {
            let _active = active;
            (idx, fut.await)
        });
        self.owners.insert(h.id(), idx);
    }

    /// Runs a worker of the current stage on a thread of its own (tokio's
    /// blocking pool), driving its future there so that sync stage code
    /// never blocks the async reactor.
    pub fn thread(&mut self, fut: impl Future<Output = Result<(), BoxError>> + Send + 'static) {
        let idx = self.current;
        let active = Active::new(self.metrics.clone());
        let h = self.set.spawn_blocking(move || {
            let _active = active;
            (idx, futures::executor::block_on(fut))
        });
        self.owners.insert(h.id(), idx);
    }

    /// Closes this internal channel too when the run aborts.
    pub fn close_on_abort<T: Send + 'static>(&mut self, rx: &async_channel::Receiver<T>) {
        let weak = rx.downgrade();
        self.closers.push(Box::new(move || {
            if let Some(r) = weak.upgrade() {
                r.close();
            }
        }));
    }
}

struct Stage {
    name: String,
    spawn: SpawnFn,
    ctx: Arc<StageCtx>,
}

pub(crate) async fn run(graph: SharedGraph) -> Result<Report, RunError> {
    let start = Instant::now();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let abort = CancellationToken::new();
    let (stages, mut closers, metrics, cancel, problems) = prepare(&graph, &abort, &kept);
    let finish = |error: Option<Error>| {
        let report = Report {
            stages: metrics.snapshot(),
            elapsed: start.elapsed(),
            cancelled: cancel.is_cancelled(),
            dead_letters: std::mem::take(&mut *kept.lock().unwrap_or_else(|p| p.into_inner())),
        };
        match error {
            None => Ok(report),
            Some(error) => Err(RunError {
                error,
                report: Box::new(report),
            }),
        }
    };
    if !problems.is_empty() {
        return finish(Some(Error::Build(problems)));
    }

    let mut sp = Spawner {
        set: JoinSet::new(),
        owners: HashMap::new(),
        current: 0,
        metrics: Arc::new(StageMetrics::default()),
        closers: Vec::new(),
    };
    let names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
    let mut problems = Vec::new();
    // Consumers first: a fused stage must be in place before its producer
    // resolves its output. Every consumer was added after its producer.
    for (i, s) in stages.into_iter().enumerate().rev() {
        sp.current = i;
        sp.metrics = s.ctx.metrics.clone();
        if let Err(p) = (s.spawn)(&mut sp, s.ctx) {
            problems.push(p);
        }
    }
    closers.append(&mut sp.closers);

    let abort_all = || {
        abort.cancel();
        for c in &closers {
            c();
        }
    };
    let mut first: Option<Error> = None;
    if !problems.is_empty() {
        // Nothing may be left running: stop what did start, then report.
        first = Some(Error::Build(problems));
        abort_all();
    }
    let mut symptom: Option<Error> = None;
    while let Some(joined) = sp.set.join_next_with_id().await {
        let failure = match joined {
            Ok((_, (_, Ok(())))) => None,
            Ok((_, (idx, Err(source)))) if source.is::<EdgeClosed>() => {
                symptom.get_or_insert(StageFailure::into_error(source, &names[idx]));
                None
            }
            Ok((_, (idx, Err(source)))) => Some(StageFailure::into_error(source, &names[idx])),
            Err(e) => {
                let stage = sp
                    .owners
                    .get(&e.id())
                    .map_or("?", |&i| &names[i])
                    .to_string();
                let message = if e.is_panic() {
                    panic_message(&*e.into_panic())
                } else {
                    "worker was cancelled".to_string()
                };
                Some(Error::Panic { stage, message })
            }
        };
        if let Some(f) = failure
            && first.is_none()
        {
            first = Some(f);
            abort_all();
        }
    }
    finish(first.or(symptom))
}

/// Decides which stages run fused into their producer's worker; returns,
/// per stage, the stage whose worker hosts it.
///
/// A stage is fused when it is fed through a private edge (one producer,
/// no fan-in, no `buffer(n)`) and
///
/// * it is a one-worker sync stage or a sink, and its producer a one-worker
///   stage on a thread of its own (an iterator source or a sync stage); or
/// * it is an unordered sync pool of `n` workers and so is its producer:
///   each of the producer's workers then runs its own copy of the stage,
///   so a chain of per-item stages with the same worker count is one pool
///   of `n` workers, batch by batch, with no channel between them.
///
/// Handing a batch over is then a call instead of a wake-up on another
/// thread. A different worker count, `ordered()` on a pool, or a
/// `buffer(n)` keeps the stage separate. Every instance a fused stage
/// offers is taken by one producer worker, which is why the counts must be
/// equal.
fn fusion(nodes: &[crate::pipeline::Node]) -> Vec<Option<usize>> {
    let mut host: Vec<Option<usize>> = vec![None; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        let Some(from) = n.fuse_from else { continue };
        let p = &nodes[from];
        let single = matches!(p.role, Role::Source { blocking: true } | Role::SyncOp)
            && p.options.workers == 1
            && matches!(n.role, Role::SyncOp | Role::Sink)
            && n.options.workers == 1;
        let pool = p.role == Role::SyncOp
            && n.role == Role::SyncOp
            && p.options.workers == n.options.workers
            && !p.options.ordered
            && !n.options.ordered;
        if single || pool {
            host[i] = Some(host[from].unwrap_or(from));
        }
    }
    host
}

type Prepared = (
    Vec<Stage>,
    Vec<Closer>,
    Metrics,
    CancellationToken,
    Vec<String>,
);

/// Takes the graph apart into stages ready to spawn, adding the dead-letter
/// output.
fn prepare(
    graph: &SharedGraph,
    abort: &CancellationToken,
    kept: &Arc<Mutex<Vec<DeadLetter>>>,
) -> Prepared {
    let mut g = lock(graph);
    let g: &mut Graph = &mut g;
    let mut problems = std::mem::take(&mut g.problems);
    if g.ran {
        problems.push("this pipeline has already run".into());
    }
    g.ran = true;
    if g.nodes.is_empty() {
        problems.push("the pipeline has no stages".into());
    }
    let mut closers = std::mem::take(&mut g.closers);
    let (dl_tx, dl_rx) = edge::<DeadLetter>(g.options.buffer, &mut closers);
    let dl_idx = g.add_node(
        DEAD_LETTER_STAGE,
        "dead-letter",
        Role::Sink,
        Some(g.options.buffer),
    );
    let dl_spawn = match g.dead_letter_sink.take() {
        Some(make) => make(dl_rx),
        None => {
            let collector = Collector {
                limit: g.options.dead_letter_limit,
                kept: kept.clone(),
            };
            crate::pipeline::dead_letter_spawn(dl_rx, collector, Arc::new(Mutex::new(None)))
        }
    };
    g.nodes[dl_idx].spawn = Some(dl_spawn);
    let stop = g.stop.clone();
    let metrics = g.metrics.clone();
    let fused = fusion(&g.nodes);
    {
        let mut infos = metrics.stages.lock().unwrap_or_else(|p| p.into_inner());
        for (i, n) in g.nodes.iter().enumerate() {
            infos[n.info].workers = n.options.workers;
            infos[n.info].runs_in = fused[i].map(|host| g.nodes[host].name.clone());
        }
    }
    for node in &g.nodes {
        if let Some(Err(p)) = node.check.as_ref().map(|c| c()) {
            problems.push(p);
        }
    }
    let mut stages = Vec::new();
    for (i, node) in g.nodes.drain(..).enumerate() {
        let Some(spawn) = node.spawn else {
            problems.push(format!("stage '{}' has nothing to run", node.name));
            continue;
        };
        let ctx = Arc::new(StageCtx {
            name: node.name.clone(),
            metrics: node.metrics,
            abort: abort.clone(),
            stop: stop.clone(),
            // The dead-letter stage must not hold a sender to its own input,
            // or that edge would never close; it never dead-letters anyway.
            dead_letters: if node.name == DEAD_LETTER_STAGE {
                async_channel::bounded(1).0
            } else {
                dl_tx.clone()
            },
            options: node.options,
            batch_size: g.options.batch_size,
            linger: g.options.linger,
            fused: fused[i].is_some(),
        });
        stages.push(Stage {
            name: node.name,
            spawn,
            ctx,
        });
    }
    // Abort stops the sources too. First, before any edge closes: a sink
    // whose input edge closes sees the run as ending, and must already
    // know it is stopping (a broker edge then leaves its partial last
    // messages unsent; told after, it published them, and a resumed run
    // sent those records again under other ids).
    let stop2 = stop.clone();
    let abort2 = abort.clone();
    closers.insert(
        0,
        Box::new(move || {
            abort2.cancel();
            stop2.cancel();
        }),
    );
    (stages, closers, metrics, g.cancel.clone(), problems)
}
