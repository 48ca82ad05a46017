//! Fan-out: one flow into several branches, by a named policy.
//!
//! Fan-out costs no extra hop: the upstream stage's workers route each item
//! straight into the branch edges. What a slow branch does to the others is
//! part of each policy:
//!
//! | policy | every item goes to | one slow branch |
//! |---|---|---|
//! | [`broadcast`](Flow::broadcast) | every branch (a clone each) | stalls all branches once its edge is full: the others run ahead by at most their own buffer |
//! | [`partition`](Flow::partition) | branch `hash(key) % n` | stalls the producer once its edge is full, so the others starve; keys keep their order |
//! | [`route`](Flow::route) | the first branch if the predicate holds, else the second | as `partition` |
//! | [`balance`](Flow::balance) | whichever branch is free (one shared queue) | takes fewer items; the others take more |
//!
//! Nothing is ever dropped to let a fast branch go on: a bounded pipeline
//! either waits or balances. A slow branch that must not hold the others
//! back belongs behind [`balance`](Flow::balance) or a larger
//! [`buffer`](Flow::buffer).

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use crate::channel::{PortSpec, Slot, fill, new_slot};
use crate::pipeline::{Flow, Head, lock};

impl<T: Send + 'static> Flow<T> {
    /// The slots this flow's items go out through; a flow that is already an
    /// edge (a `balance` branch) gets a relay stage first.
    fn into_slots(self) -> Vec<Slot<T>> {
        match self.head {
            Head::Slots(s) => s,
            Head::Rx(_) => {
                let name = {
                    let g = lock(&self.graph);
                    format!("relay-{}", g.nodes.len())
                };
                match self.map(&name, |x| x).head {
                    Head::Slots(s) => s,
                    Head::Rx(_) => unreachable!("a stage's output is a slot"),
                }
            }
        }
    }

    fn branches(&self, slots: &[Slot<T>]) -> Vec<Flow<T>> {
        slots
            .iter()
            .map(|s| Flow::new(self.graph.clone(), Head::Slots(vec![s.clone()]), None))
            .collect()
    }

    fn fan_out(self, n: usize, spec: impl Fn(Vec<Slot<T>>) -> PortSpec<T>) -> Vec<Flow<T>> {
        let graph = self.graph.clone();
        if n == 0 {
            lock(&graph)
                .problems
                .push("a fan-out needs at least one branch".into());
        }
        let children: Vec<Slot<T>> = (0..n).map(|_| new_slot()).collect();
        let template = Flow::<T>::new(graph, Head::Slots(Vec::new()), None);
        let out = template.branches(&children);
        for s in self.into_slots() {
            fill(&s, spec(children.clone()));
        }
        out
    }

    /// Every one of `n` branches gets every item (a clone each; acks settle
    /// when all copies have). The slowest branch sets the pace.
    pub fn broadcast(self, n: usize) -> Vec<Flow<T>>
    where
        T: Clone,
    {
        let clone: Arc<dyn Fn(&T) -> T + Send + Sync> = Arc::new(T::clone);
        self.fan_out(n, |c| PortSpec::Broadcast(clone.clone(), c))
    }

    /// Splits items over `n` branches by the hash of `key`: all items of a
    /// key go to the same branch, in order. A branch with one worker keeps
    /// per-key order while the branches run in parallel.
    pub fn partition<K, F>(self, n: usize, key: F) -> Vec<Flow<T>>
    where
        K: Hash,
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        // A fixed hasher, so a key lands on the same branch in every run.
        let hasher =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        let hash: Arc<dyn Fn(&T) -> u64 + Send + Sync> = Arc::new(move |x| hasher.hash_one(key(x)));
        self.fan_out(n, |c| PortSpec::Partition(hash.clone(), c))
    }

    /// Splits items in two by `pred`: `(matching, other)`. Useful for
    /// valid/invalid.
    pub fn route<F>(self, pred: F) -> (Flow<T>, Flow<T>)
    where
        F: Fn(&T) -> bool + Send + Sync + 'static,
    {
        let pred: Arc<dyn Fn(&T) -> bool + Send + Sync> = Arc::new(pred);
        let mut v = self.fan_out(2, |c| {
            PortSpec::Route(pred.clone(), c[0].clone(), c[1].clone())
        });
        let other = v.pop().expect("two branches");
        let matching = v.pop().expect("two branches");
        (matching, other)
    }

    /// `n` branches that share one queue: each item goes to whichever
    /// branch takes it first, so a slow branch takes fewer. Use this to
    /// spread work over branches that differ (a stage's own
    /// [`workers`](Flow::workers) is the same pattern within one stage).
    pub fn balance(self, n: usize) -> Vec<Flow<T>> {
        let graph = self.graph.clone();
        if n == 0 {
            lock(&graph)
                .problems
                .push("a fan-out needs at least one branch".into());
        }
        let rx = {
            let mut g = lock(&graph);
            self.connect(&mut g).rx
        };
        (0..n)
            .map(|_| Flow::new(graph.clone(), Head::Rx(rx.clone()), None))
            .collect()
    }

    /// Merges several flows into one (fan-in): items interleave as they
    /// arrive; each upstream's own order is kept. All flows must belong to
    /// the same pipeline.
    pub fn merge(flows: impl IntoIterator<Item = Flow<T>>) -> Flow<T> {
        let mut flows = flows.into_iter();
        let Some(first) = flows.next() else {
            panic!("Flow::merge needs at least one flow");
        };
        let graph = first.graph.clone();
        let mut slots = first.into_slots();
        for f in flows {
            if !Arc::ptr_eq(&f.graph, &graph) {
                lock(&graph)
                    .problems
                    .push("merge() was given flows of different pipelines".into());
                continue;
            }
            slots.extend(f.into_slots());
        }
        Flow::new(graph, Head::Slots(slots), None)
    }
}
