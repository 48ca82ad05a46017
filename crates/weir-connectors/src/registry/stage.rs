//! The shapes a built processor takes in the engine.
//!
//! A processor component builds into one of a few shapes; the shape, not
//! the component, decides how it is wired: a per-record function on a pool
//! of workers (which the engine may fuse with its neighbours), a router
//! with one output per branch, or a fold over windows. A new processor of
//! an existing shape needs no change here.

use std::sync::Arc;

use weir::{ErrorPolicy, Flow};

use crate::error::ProcessError;
use crate::processors::aggregate::Aggregator;
use crate::processors::batch::Batcher;
use crate::processors::switch::Switch;
use crate::processors::{CallProcessor, Processor};
use crate::record::Record;

/// A built processor, by shape.
pub enum Stage {
    /// One record in, zero or more out.
    Records(Arc<dyn Processor>),
    /// One record in, sent to one of its branches (or none).
    Switch(Arc<Switch>),
    /// Group by key and summarise, per window: extracts on the stage's
    /// workers, folds in one place, emits a record per group.
    Aggregate(Arc<Aggregator>),
    /// Group into batches, per window.
    Batch(Arc<Batcher>),
    /// One record in, one out, through an async call to a service: its
    /// own number of calls in flight, in one process.
    Call(Arc<dyn CallProcessor>),
}

/// How a stage entry runs, from the keys every stage has.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// The stage's name; engine stages of its own are `<name>/...`.
    pub name: String,
    /// Workers of its per-record part.
    pub workers: usize,
    /// What to do with a record its component rejects.
    pub policy: ErrorPolicy,
    /// Keep input order across workers.
    pub ordered: bool,
}

/// A per-record stage as a function for remote worker pools: each output
/// with the index of the port (the switch branch) it leaves by.
pub type RecordFn = dyn Fn(&Record) -> Result<Vec<(usize, Record)>, ProcessError> + Send + Sync;

/// Runs `call` as a task of its own, so that the calls of one stage (an
/// async pool is one task) spread over the runtime's threads: answers are
/// parsed and merged in parallel. Dropping the returned future (a run
/// that aborts) aborts the task, as dropping `call` itself would.
fn spawned<T: Send + 'static>(
    call: futures::future::BoxFuture<'static, T>,
) -> impl std::future::Future<Output = T> + Send + 'static {
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(call));
    async move {
        match (&mut task.0).await {
            Ok(v) => v,
            Err(e) => match e.try_into_panic() {
                // A panic in the call is the stage's, as it would have
                // been unspawned.
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => unreachable!("the task is aborted only when this future is dropped"),
            },
        }
    }
}

impl Stage {
    /// The per-record function of a [`Records`](Stage::Records) or
    /// [`Switch`](Stage::Switch) stage; `None` for windowed stages, which
    /// must see every record in one place, and for calls, which run in the
    /// coordinator.
    pub fn record_fn(&self) -> Option<Arc<RecordFn>> {
        match self {
            Stage::Records(p) => {
                let p = p.clone();
                Some(Arc::new(move |r: &Record| {
                    let mut v = Vec::new();
                    p.process(r, &mut v)?;
                    Ok(v.into_iter().map(|o| (0, o)).collect())
                }))
            }
            Stage::Switch(sw) => {
                let sw = sw.clone();
                Some(Arc::new(move |r: &Record| {
                    Ok(sw
                        .route(r)?
                        .map(|i| vec![(i, r.clone())])
                        .unwrap_or_default())
                }))
            }
            Stage::Aggregate(_) | Stage::Batch(_) | Stage::Call(_) => None,
        }
    }

    /// Wires the stage onto `input`; returns the flows it offers
    /// downstream by the names readers use (`<name>/<branch>` for a
    /// switch).
    pub fn attach(self, input: Flow<Record>, o: &StageOptions) -> Vec<(String, Flow<Record>)> {
        let name = o.name.as_str();
        match self {
            Stage::Records(processor) => {
                let flow = input
                    .try_flat_map(name, move |r: &Record| {
                        let mut out = Vec::new();
                        processor.process(r, &mut out).map(|()| out)
                    })
                    .workers(o.workers)
                    .on_error(o.policy.clone());
                vec![(
                    name.to_string(),
                    if o.ordered { flow.ordered() } else { flow },
                )]
            }
            Stage::Switch(sw) => {
                let router = sw.clone();
                let tagged = input
                    .try_flat_map(name, move |r: &Record| {
                        router.route(r).map(|b| b.map(|i| (i, r.clone())))
                    })
                    .workers(o.workers)
                    .on_error(o.policy.clone());
                let mut rest = if o.ordered { tagged.ordered() } else { tagged };
                let mut out = Vec::new();
                let n = sw.branches().len();
                for (i, b) in sw.branches().iter().enumerate() {
                    let full = format!("{name}/{b}");
                    if i + 1 == n {
                        out.push((full.clone(), rest.map(&full, |(_, r)| r)));
                        break;
                    }
                    let (this, others) = rest.route(move |(t, _): &(usize, Record)| *t == i);
                    out.push((full.clone(), this.map(&full, |(_, r)| r)));
                    rest = others;
                }
                out
            }
            Stage::Aggregate(agg) => {
                let (a1, a2, a3) = (agg.clone(), agg.clone(), agg.clone());
                let window = agg.window();
                let flow = input
                    .try_map(&format!("{name}/extract"), move |r: &Record| a1.extract(r))
                    .workers(o.workers)
                    .on_error(o.policy.clone())
                    .aggregate(
                        name,
                        |x| x.key.clone(),
                        move |_| a2.init(),
                        move |acc, x| agg.fold(acc, x),
                        window,
                    )
                    .map(&format!("{name}/emit"), move |(key, acc)| {
                        let pos = acc.first_pos();
                        a3.finish(&key, acc, pos)
                    });
                vec![(name.to_string(), flow)]
            }
            Stage::Call(c) => {
                let n = c.concurrency();
                let flow = input
                    .try_map_async(name, move |r: Record| spawned(c.call(r)))
                    .workers(n)
                    .on_error(o.policy.clone());
                vec![(
                    name.to_string(),
                    if o.ordered { flow.ordered() } else { flow },
                )]
            }
            Stage::Batch(b) => {
                let (b1, b2, b3) = (b.clone(), b.clone(), b.clone());
                let window = b.window();
                let flow = input
                    .aggregate(
                        name,
                        move |r| b1.key(r),
                        move |_| b2.init(),
                        move |acc, r| b3.fold(acc, r),
                        window,
                    )
                    .map(&format!("{name}/emit"), move |(_, acc)| b.finish(acc));
                vec![(name.to_string(), flow)]
            }
        }
    }
}
