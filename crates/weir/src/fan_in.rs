//! Fan-in by aggregation: many items into one per key and window.
//!
//! (Plain merging of flows is [`Flow::merge`]; joining the results of
//! several calls for one item is [`scatter_gather`](Flow::scatter_gather).)
//!
//! An aggregate keeps one accumulator per key and emits `(key, acc)` when the
//! key's window closes. Groups are emitted in the order their keys were
//! first seen, so output is deterministic. An emitted group carries one ack
//! that settles the acks of every item it absorbed: a source hears about an
//! item only once the aggregate that contains it is committed.
//!
//! Memory is one accumulator per open key, plus, when sources attach acks,
//! the acks of the absorbed items until their group is emitted: one per
//! source ack, not per item, when a source shares an ack among a batch of
//! items (forks of the same ack arriving one after another coalesce).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::ack::Ack;
use crate::channel::{Emitter, Envelope, Halt, Rx, abandon, recv, resolve};
use crate::error::BoxError;
use crate::metrics::{BusyClock, StageMetrics};
use crate::pipeline::Flow;
use crate::pool::StageCtx;

/// Why a whole-input aggregate's items failed when its run stopped early.
const STOPPED_EARLY: &str =
    "the run stopped before the end of input: a whole-input aggregate emits nothing";

/// When an aggregate emits a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// When its key has absorbed this many items (and, for the remainder,
    /// at the end of input).
    Count(usize),
    /// Every period of processing time, all open groups at once (tumbling
    /// windows), and at the end of input.
    Tumbling(Duration),
    /// Once, at the end of input: a whole-input aggregate for finite jobs.
    All,
}

struct Group<A> {
    first_seen: u64,
    acc: A,
    count: usize,
    /// Acks of the absorbed items (count and tumbling windows).
    acks: Vec<Ack>,
}

/// Keeps `a` unless it is a fork of the last ack kept (then they coalesce):
/// consecutive items of one source batch cost one entry.
fn keep_ack(acks: &mut Vec<Ack>, a: Ack) {
    let a = match acks.last() {
        Some(last) => last.coalesce(a),
        None => Some(a),
    };
    if let Some(a) = a {
        acks.push(a);
    }
}

impl<T: Send + 'static> Flow<T> {
    /// Groups items by `key` and folds each group with `fold`, starting
    /// from `init(key)`; emits `(key, accumulator)` per group per
    /// [`Window`]. Runs one worker: partition first and merge after to
    /// aggregate in parallel.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), weir::RunError> {
    /// use weir::{Pipeline, Window, from_iter, collect};
    /// let p = Pipeline::new();
    /// let out = p
    ///     .source("n", from_iter(0..10u32))
    ///     .aggregate("by-parity", |x| x % 2, |_| 0u32, |acc, x| *acc += x, Window::All)
    ///     .sink("out", collect());
    /// p.run().await?;
    /// assert_eq!(out.take().unwrap(), vec![(0, 20), (1, 25)]);
    /// # Ok(()) }
    /// ```
    pub fn aggregate<K, A, KF, IF, FF>(
        self,
        name: &str,
        key: KF,
        init: IF,
        fold: FF,
        window: Window,
    ) -> Flow<(K, A)>
    where
        K: Hash + Eq + Clone + Send + 'static,
        A: Send + 'static,
        KF: Fn(&T) -> K + Send + Sync + 'static,
        IF: Fn(&K) -> A + Send + Sync + 'static,
        FF: Fn(&mut A, T) + Send + Sync + 'static,
    {
        if let Window::Count(0) = window {
            crate::pipeline::lock(&self.graph).problems.push(format!(
                "aggregate '{name}': a count window needs at least 1 item"
            ));
        }
        self.stage(
            name,
            "aggregate",
            crate::pipeline::Role::Other,
            move |input, out| {
                Box::new(move |sp, ctx| {
                    let port = resolve(&out, &format!("output of stage '{}'", ctx.name))?;
                    let em = Emitter::new(port, ctx.batch_size, ctx.metrics.clone());
                    let agg = Aggregator {
                        key,
                        init,
                        fold,
                        window,
                        groups: HashMap::new(),
                        seen: 0,
                        all_acks: Vec::new(),
                    };
                    sp.task(agg.run(input.rx, em, ctx));
                    Ok(())
                })
            },
        )
    }

    /// Folds the whole input into one value, emitted at the end of input.
    pub fn reduce<A, F>(self, name: &str, init: A, fold: F) -> Flow<A>
    where
        A: Clone + Send + Sync + 'static,
        F: Fn(&mut A, T) + Send + Sync + 'static,
    {
        self.aggregate(name, |_| (), move |_| init.clone(), fold, Window::All)
            .map(&format!("{name}/value"), |(_, a)| a)
    }
}

struct Aggregator<K, A, KF, IF, FF> {
    key: KF,
    init: IF,
    fold: FF,
    window: Window,
    groups: HashMap<K, Group<A>>,
    seen: u64,
    /// For `Window::All`: the acks of every absorbed item, in arrival order
    /// (so forks of one source batch coalesce); all groups are emitted
    /// together at the end and share them.
    all_acks: Vec<Ack>,
}

impl<K, A, KF, IF, FF> Aggregator<K, A, KF, IF, FF>
where
    K: Hash + Eq + Clone + Send + 'static,
    A: Send + 'static,
{
    async fn run<T>(
        mut self,
        rx: Rx<T>,
        mut em: Emitter<(K, A)>,
        ctx: Arc<StageCtx>,
    ) -> Result<(), BoxError>
    where
        T: Send + 'static,
        KF: Fn(&T) -> K,
        IF: Fn(&K) -> A,
        FF: Fn(&mut A, T),
    {
        let m = &*ctx.metrics;
        let period = match self.window {
            Window::Tumbling(d) => Some(d),
            _ => None,
        };
        let mut clock = BusyClock::default();
        let mut tick = period.map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
        loop {
            let batch = match &mut tick {
                None => recv(&rx, m).await,
                Some(t) => tokio::select! {
                    b = recv(&rx, m) => b,
                    _ = t.tick() => {
                        if let Err(h) = self.emit_all(&mut em).await {
                            return ctx.halted(h);
                        }
                        if let Err(h) = em.flush(true).await {
                            return ctx.halted(h);
                        }
                        continue;
                    }
                },
            };
            let Some(batch) = batch else { break };
            if ctx.abort.is_cancelled() {
                abandon(batch, m);
                return Ok(());
            }
            let t0 = clock.start();
            StageMetrics::add(&m.ok, batch.len());
            for e in batch {
                self.absorb(e, &mut em);
            }
            BusyClock::stop(m, t0);
            if em.has_full()
                && let Err(h) = em.flush(false).await
            {
                return ctx.halted(h);
            }
        }
        if self.window == Window::All && ctx.stop.is_cancelled() {
            // A whole-input aggregate of a run stopped early saw part of
            // its input: its groups are not the totals, and emitting them
            // would settle their items as done (a resumed run would skip
            // them and write totals without them). Nothing is emitted; the
            // items count as dropped and their acks fail.
            let absorbed: u64 = self.groups.values().map(|g| g.count as u64).sum();
            self.groups.clear();
            for a in self.all_acks.drain(..) {
                a.fail(STOPPED_EARLY);
            }
            m.ok.fetch_sub(absorbed.min(m.ok.load(Relaxed)), Relaxed);
            m.dropped.fetch_add(absorbed, Relaxed);
        } else if let Err(h) = self.emit_all(&mut em).await {
            return ctx.halted(h);
        }
        match em.close().await {
            Ok(()) => Ok(()),
            Err(h) => ctx.halted(h),
        }
    }

    fn absorb<T>(&mut self, e: Envelope<T>, em: &mut Emitter<(K, A)>)
    where
        KF: Fn(&T) -> K,
        IF: Fn(&K) -> A,
        FF: Fn(&mut A, T),
    {
        let k = (self.key)(&e.value);
        let Envelope { value, ack } = e;
        let all = self.window == Window::All;
        // Look up before inserting: the key is cloned only for a new group.
        let count = match self.groups.get_mut(&k) {
            Some(g) => {
                (self.fold)(&mut g.acc, value);
                g.count += 1;
                if let Some(a) = ack {
                    keep_ack(if all { &mut self.all_acks } else { &mut g.acks }, a);
                }
                g.count
            }
            None => {
                self.seen += 1;
                let mut g = Group {
                    first_seen: self.seen,
                    acc: (self.init)(&k),
                    count: 1,
                    acks: Vec::new(),
                };
                (self.fold)(&mut g.acc, value);
                if let Some(a) = ack {
                    keep_ack(if all { &mut self.all_acks } else { &mut g.acks }, a);
                }
                self.groups.insert(k.clone(), g);
                1
            }
        };
        if let Window::Count(n) = self.window
            && count >= n
            && let Some(g) = self.groups.remove(&k)
        {
            em.push(group_envelope(k, g));
        }
    }

    /// Emits every open group, sending each batch as it fills: the groups
    /// are in memory already, but the edge must not get them all as one
    /// batch.
    async fn emit_all(&mut self, em: &mut Emitter<(K, A)>) -> Result<(), Halt> {
        let mut groups: Vec<(K, Group<A>)> = self.groups.drain().collect();
        groups.sort_unstable_by_key(|(_, g)| g.first_seen);
        // A whole-input aggregate: every group carries a fork of one ack
        // over all inputs (the inputs are done when all groups are).
        let shared =
            (!self.all_acks.is_empty()).then(|| Ack::merge(std::mem::take(&mut self.all_acks)));
        for (k, g) in groups {
            let mut env = group_envelope(k, g);
            if let Some(s) = &shared {
                env.ack = Some(s.fork());
            }
            em.push(env);
            if em.has_full() {
                // On failure the shared ack is dropped unsettled: the inputs'
                // acks fail, as they must for groups never committed.
                em.flush(false).await?;
            }
        }
        if let Some(s) = shared {
            s.deliver();
        }
        Ok(())
    }
}

fn group_envelope<K, A>(k: K, g: Group<A>) -> Envelope<(K, A)> {
    let ack = if g.acks.is_empty() {
        None
    } else {
        Some(Ack::merge(g.acks))
    };
    Envelope {
        value: (k, g.acc),
        ack,
    }
}
