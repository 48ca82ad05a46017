//! How records cross the edges between a pipeline's components.
//!
//! [`build`](crate::build::build) wires every producer (an input, a stage,
//! a switch branch) to its readers through an [`Edges`] strategy and knows
//! nothing else about where a reader runs. [`LocalEdges`] is the one-process
//! strategy: each reader gets its own copy of the flow over an in-process
//! channel. Distributed mode supplies its own (`distributed::edges`), where
//! a reader may be a worker pool on another machine and an edge a broker
//! inbox; only that module knows an edge can be remote.

use std::collections::VecDeque;

use weir::{Flow, Pipeline};
use weir_connectors::Record;

use crate::graph::Wiring;

/// Where each edge runs.
pub trait Edges {
    /// The inputs are not read at all (a distributed job whose inputs an
    /// earlier run read to the end).
    fn skip_inputs(&self) -> bool {
        false
    }

    /// Flows should come out in the same order in every run wherever the
    /// stages allow it (inputs decoded in file order, per-record stages
    /// ordered): what crosses the edge is identified by its order.
    fn deterministic(&self) -> bool {
        false
    }

    /// The component runs elsewhere (a remote worker pool): it is built
    /// here only to report its errors.
    fn elsewhere(&self, _component: &str) -> bool {
        false
    }

    /// The component's input when this strategy supplies it (a reader of
    /// its inbox); `None`: it reads its producers' local flows.
    fn input(&mut self, _p: &Pipeline, _component: &str) -> Option<Flow<Record>> {
        None
    }

    /// Sends `flow`, the output of `producer`, to its readers: returns the
    /// copies for the readers that take local flows, in wiring order.
    /// `deterministic`: the flow's order is the same in every run.
    fn offer(
        &mut self,
        p: &Pipeline,
        producer: &str,
        flow: Flow<Record>,
        deterministic: bool,
    ) -> VecDeque<Flow<Record>>;

    /// Installs the pipeline's dead-letter sink when the strategy has its
    /// own; `false`: the caller writes the dead-letter file.
    fn dead_letters(&mut self, _p: &Pipeline) -> bool {
        false
    }
}

/// Every component in this process; a producer read by several readers is
/// broadcast, one copy each.
pub struct LocalEdges<'a> {
    wiring: &'a Wiring,
}

impl<'a> LocalEdges<'a> {
    pub fn new(wiring: &'a Wiring) -> Self {
        LocalEdges { wiring }
    }
}

impl Edges for LocalEdges<'_> {
    fn offer(
        &mut self,
        _p: &Pipeline,
        producer: &str,
        flow: Flow<Record>,
        _deterministic: bool,
    ) -> VecDeque<Flow<Record>> {
        copies(
            flow,
            self.wiring.readers.get(producer).copied().unwrap_or(0),
        )
    }
}

/// `n` copies of `flow` (one flow when `n` is 0 or 1).
pub fn copies(flow: Flow<Record>, n: usize) -> VecDeque<Flow<Record>> {
    if n > 1 {
        flow.broadcast(n).into()
    } else {
        VecDeque::from([flow])
    }
}
