//! The edge strategy of the coordinator (`weir run --broker`): where a
//! reader runs in a worker pool, or reads from one, the edge is the
//! reader's inbox on the broker; every other edge stays in-process.
//!
//! [`BrokerEdges`] is what [`build`](crate::build::build) calls for each
//! producer and reader; it also collects what completion needs (which
//! coordinator producers finished publishing into which inbox), so that
//! the build code knows nothing of brokers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use weir::{Flow, Pipeline};
use weir_connectors::Record;
use weir_nats::completion::{Node, Producer};
use weir_nats::consume::{InboxReader, ReaderCounters};
use weir_nats::publish::{DlqSink, EdgeSink};

use super::placement::{Placement, producer_component};
use crate::config::PipelineFile;
use crate::edges::{Edges, copies};
use crate::graph::Wiring;

/// The coordinator's side of a job on the broker.
pub struct BrokerEdges<'a> {
    job: &'a weir_nats::Job,
    placement: &'a Placement,
    /// The inputs were read to the end by an earlier run of the job (it is
    /// resumed after `weir dlq replay`): they are not read again.
    inputs_done: bool,
    /// The job's replay epoch (`weir dlq replay` runs so far): part of the
    /// coordinator's dead-letter ids.
    replays: u64,
    /// Per inbox: flags set when a coordinator producer finished publishing.
    local_done: HashMap<String, Vec<Arc<AtomicBool>>>,
    /// Per inbox the coordinator reads: set when its producers are done.
    reader_flags: HashMap<String, Arc<AtomicBool>>,
    /// The counters of the coordinator's inbox readers, by inbox (shown by
    /// `weir status`).
    pub inbox_counters: Vec<(String, Arc<ReaderCounters>)>,
}

impl<'a> BrokerEdges<'a> {
    pub fn new(
        job: &'a weir_nats::Job,
        placement: &'a Placement,
        inputs_done: bool,
        replays: u64,
    ) -> Self {
        BrokerEdges {
            job,
            placement,
            inputs_done,
            replays,
            local_done: HashMap::new(),
            reader_flags: HashMap::new(),
            inbox_counters: Vec::new(),
        }
    }

    /// The job's inboxes with their producers, for the completion watch
    /// ([`weir_nats::completion::watch`]); after the build.
    pub fn nodes(&self, file: &PipelineFile, wiring: &Wiring) -> Vec<Node> {
        let stages: HashSet<&str> = file
            .stages
            .iter()
            .map(|s| s.value.name.value.as_str())
            .collect();
        self.placement
            .specs
            .iter()
            .map(|spec| {
                let mut producers: Vec<Producer> = self
                    .local_done
                    .get(&spec.name)
                    .into_iter()
                    .flatten()
                    .map(|f| Producer::Local(f.clone()))
                    .collect();
                let mut pools: Vec<&str> = wiring
                    .from
                    .get(&spec.name)
                    .into_iter()
                    .flatten()
                    .map(|f| producer_component(f, &stages))
                    .filter(|c| self.placement.pool.contains(*c))
                    .collect();
                pools.dedup();
                producers.extend(pools.into_iter().map(|c| Producer::Pool(c.to_string())));
                Node {
                    inbox: spec.name.clone(),
                    pool: spec.pool,
                    producers,
                    producers_done: self
                        .reader_flags
                        .get(&spec.name)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(AtomicBool::new(false))),
                }
            })
            .collect()
    }
}

impl Edges for BrokerEdges<'_> {
    fn skip_inputs(&self) -> bool {
        self.inputs_done
    }

    /// Message ids are derived from the order of what is published, so a
    /// restarted coordinator publishes the same ids and the broker drops
    /// the duplicates.
    fn deterministic(&self) -> bool {
        true
    }

    fn elsewhere(&self, component: &str) -> bool {
        self.placement.pool.contains(component)
    }

    fn input(&mut self, p: &Pipeline, component: &str) -> Option<Flow<Record>> {
        if !self.placement.inboxes.contains(component) {
            return None;
        }
        let flag = Arc::new(AtomicBool::new(false));
        self.reader_flags
            .insert(component.to_string(), flag.clone());
        let reader = InboxReader::new(self.job, component, flag);
        self.inbox_counters
            .push((component.to_string(), reader.counters()));
        Some(p.source(&format!("{component}/inbox"), reader.source()))
    }

    fn offer(
        &mut self,
        p: &Pipeline,
        producer: &str,
        flow: Flow<Record>,
        deterministic: bool,
    ) -> VecDeque<Flow<Record>> {
        let local = self.placement.local_readers(producer);
        let remote = self.placement.remote_readers(producer);
        let mut out = copies(flow, local + remote.len());
        for inbox in remote {
            let flow = out.pop_back().expect("one copy per reader");
            let done = Arc::new(AtomicBool::new(false));
            let flag = done.clone();
            let sink = EdgeSink::new(self.job, &inbox, producer, deterministic, move |_| {
                flag.store(true, Ordering::Release);
            })
            // A cancel or a failure: the publishing sink learns that the
            // run is being stopped, not ending.
            .stopping(p.stop_token());
            flow.sink(&format!("{producer}>{inbox}"), sink);
            self.local_done.entry(inbox).or_default().push(done);
        }
        out
    }

    /// Dead letters of a job go to its stream on the broker; the
    /// coordinator copies them to the dead-letter file at the end.
    fn dead_letters(&mut self, p: &Pipeline) -> bool {
        p.dead_letter_sink(DlqSink::new(self.job, self.replays));
        true
    }
}
