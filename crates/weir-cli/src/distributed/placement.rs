//! Which parts of a pipeline run where, in distributed mode.
//!
//! - **Pool stages** (`remote: true`, or every eligible stage with
//!   `broker: { remote: all }`) run in worker pools: in `weir worker`
//!   processes on any machine, reading their inbox on the broker.
//! - Everything else runs in the **coordinator** (`weir run --broker`):
//!   the inputs, the stages that must see every record (dedupe,
//!   aggregate, batch), the outputs, and any stage left local.
//! - A component has an **inbox** when it is a pool stage or reads from
//!   one; then all its producers publish into the inbox (merging there),
//!   and the edge runs over the broker.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use weir_nats::{EdgeSettings, InboxSpec};

use weir_connectors::registry::Scope;

use crate::config::{PipelineFile, StageEntry};
use crate::diag::Diagnostic;
use crate::graph::Wiring;

/// Where each component runs.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Stages run by worker pools.
    pub pool: HashSet<String>,
    /// Components with an inbox on the broker.
    pub inboxes: HashSet<String>,
    /// The inboxes in pipeline order (stages, then outputs).
    pub specs: Vec<InboxSpec>,
    /// Edge behaviour from the file's `broker` section.
    pub settings: EdgeSettings,
    /// For each producer name (a stage, an input or `switch/branch`), the
    /// components reading it.
    pub readers: HashMap<String, Vec<String>>,
}

/// Can this stage run in a pool (does it see one record at a time)? An
/// entry without exactly one component counts as eligible: placing it
/// anywhere leads to the build, which reports that error.
fn eligible(e: &StageEntry) -> bool {
    e.processor().is_none_or(|p| p.scope() == Scope::PerRecord)
}

/// The component a `from` name refers to: itself, or the switch of a
/// `switch/branch` name.
pub fn producer_component<'a>(from: &'a str, stages: &HashSet<&str>) -> &'a str {
    if stages.contains(from) {
        return from;
    }
    match from.rsplit_once('/') {
        Some((s, _)) if stages.contains(s) => s,
        _ => from,
    }
}

impl Placement {
    /// Computes the placement; reports every problem.
    pub fn new(file: &PipelineFile, wiring: &Wiring) -> Result<Placement, Vec<Diagnostic>> {
        let mut diags = Vec::new();
        // Before anything is created on the broker.
        for s in &file.stages {
            if let Some(l) = &s.value.feedback {
                diags.push(Diagnostic::at(
                    format!(
                        "stage '{}' is a loop, which runs in one process: loops are not supported with --broker yet",
                        s.value.name.value
                    ),
                    l,
                ));
            }
        }
        let broker = file.broker.as_ref();
        let all = match broker.and_then(|b| b.remote.as_ref()) {
            None => false,
            Some(r) if r.value == "all" => true,
            Some(r) if r.value == "none" => false,
            Some(r) => {
                diags.push(Diagnostic::at(
                    format!(
                        "broker.remote: expected `all` or `none`, found `{}`",
                        r.value
                    ),
                    r,
                ));
                false
            }
        };
        let mut pool = HashSet::new();
        for s in &file.stages {
            let e = &s.value;
            let explicit = e.remote.as_ref().map(|r| r.value);
            match explicit {
                Some(true)
                    if e
                        .processor()
                        .is_some_and(|p| p.scope() == Scope::Call) =>
                {
                    diags.push(Diagnostic::at(
                        format!(
                            "stage '{}' calls a service ({}): its calls run in the coordinator, which waits on the service with `concurrency` calls in flight, and it cannot be `remote` yet (remote workers run stages that compute)",
                            e.name.value,
                            e.component_name()
                        ),
                        e.remote.as_ref().expect("set"),
                    ));
                }
                Some(true) if !eligible(e) => diags.push(Diagnostic::at(
                    format!(
                        "stage '{}' is a {}: it must see every record, so it runs in the coordinator and cannot be `remote` (remote pools are for stages that see one record at a time, such as jq, filter, validate and switch)",
                        e.name.value,
                        e.component_name()
                    ),
                    e.remote.as_ref().expect("set"),
                )),
                Some(true) => {
                    pool.insert(e.name.value.clone());
                }
                Some(false) => {}
                None if all && eligible(e) => {
                    pool.insert(e.name.value.clone());
                }
                None => {}
            }
        }
        let stage_names: HashSet<&str> = file
            .stages
            .iter()
            .map(|s| s.value.name.value.as_str())
            .collect();
        let mut readers: HashMap<String, Vec<String>> = HashMap::new();
        let mut inboxes = HashSet::new();
        let mut order: Vec<&str> = wiring
            .stage_order
            .iter()
            .map(|&i| file.stages[i].value.name.value.as_str())
            .collect();
        order.extend(file.outputs.iter().map(|o| o.value.name.value.as_str()));
        for &c in &order {
            let froms = wiring.from.get(c).cloned().unwrap_or_default();
            let reads_pool = froms
                .iter()
                .any(|f| pool.contains(producer_component(f, &stage_names)));
            if pool.contains(c) || reads_pool {
                inboxes.insert(c.to_string());
            }
            for f in froms {
                readers.entry(f).or_default().push(c.to_string());
            }
        }
        // Inboxes whose messages stay unacknowledged until a window closes
        // in the coordinator: read by an aggregate or batch, or by stages
        // that feed one in-process.
        let windowed: HashSet<&str> = file
            .stages
            .iter()
            .filter(|s| {
                s.value
                    .processor()
                    .is_some_and(|p| p.scope() == Scope::Windowed)
            })
            .map(|s| s.value.name.value.as_str())
            .collect();
        let holds = |start: &str| -> bool {
            let mut todo = vec![start.to_string()];
            let mut seen = HashSet::new();
            while let Some(c) = todo.pop() {
                if windowed.contains(c.as_str()) {
                    return true;
                }
                if !seen.insert(c.clone()) {
                    continue;
                }
                for (producer, rs) in &readers {
                    if producer_component(producer, &stage_names) == c {
                        todo.extend(rs.iter().filter(|r| !inboxes.contains(*r)).cloned());
                    }
                }
            }
            false
        };
        let specs: Vec<InboxSpec> = order
            .iter()
            .filter(|c| inboxes.contains(**c))
            .map(|c| InboxSpec {
                name: (*c).to_string(),
                pool: pool.contains(*c),
                holds: !pool.contains(*c) && holds(c),
            })
            .collect();
        // An inbox's stream and subject carry its name with every character
        // outside `[A-Za-z0-9_-]` replaced: two names that differ only there
        // would share one inbox and mix their records.
        let mut tokens: HashMap<String, &str> = HashMap::new();
        for spec in &specs {
            let token = weir_nats::job::sanitize(&spec.name);
            let span = || {
                file.stages
                    .iter()
                    .map(|s| &s.value.name)
                    .chain(file.outputs.iter().map(|o| &o.value.name))
                    .find(|n| n.value == spec.name)
                    .expect("an inbox is a stage or an output")
            };
            if token == "_DLQ" {
                // The job's dead-letter stream is `WEIR_<job>__DLQ`.
                diags.push(Diagnostic::at(
                    format!(
                        "'{}' would share the job's dead-letter stream on the broker; rename it",
                        spec.name
                    ),
                    span(),
                ));
            } else if let Some(first) = tokens.get(&token) {
                diags.push(Diagnostic::at(
                    format!(
                        "'{}' and '{first}' would share one inbox on the broker ('{token}'): names there keep only letters, digits, '_' and '-'; rename one",
                        spec.name
                    ),
                    span(),
                ));
            } else {
                tokens.insert(token, &spec.name);
            }
        }
        let mut settings = EdgeSettings::default();
        if let Some(b) = broker {
            let mut positive =
                |v: &Option<serde_saphyr::Spanned<i64>>, name: &str, into: &mut i64| {
                    if let Some(v) = v {
                        if v.value < 1 {
                            diags.push(Diagnostic::at(
                                format!("broker.{name} must be at least 1"),
                                v,
                            ));
                        } else {
                            *into = v.value;
                        }
                    }
                };
            positive(
                &b.edge_capacity,
                "edge_capacity",
                &mut settings.edge_capacity,
            );
            positive(&b.max_deliver, "max_deliver", &mut settings.max_deliver);
            positive(
                &b.max_ack_pending,
                "max_ack_pending",
                &mut settings.max_ack_pending,
            );
            if let Some(v) = &b.records_per_message {
                if v.value == 0 {
                    diags.push(Diagnostic::at(
                        "broker.records_per_message must be at least 1",
                        v,
                    ));
                } else {
                    settings.records_per_message = v.value;
                }
            }
            if let Some(v) = &b.ack_wait_secs {
                if v.value == 0 {
                    diags.push(Diagnostic::at("broker.ack_wait_secs must be at least 1", v));
                } else {
                    settings.ack_wait = Duration::from_secs(v.value);
                }
            }
            if let Some(v) = &b.duplicate_window_secs {
                settings.duplicate_window = Duration::from_secs(v.value.max(1));
            }
        }
        if diags.is_empty() {
            Ok(Placement {
                pool,
                inboxes,
                specs,
                settings,
                readers,
            })
        } else {
            Err(diags)
        }
    }

    /// The pool stages, sorted.
    pub fn pool_stages(&self) -> BTreeSet<&str> {
        self.pool.iter().map(String::as_str).collect()
    }

    /// The inboxes `producer`'s output is published into (its readers that
    /// have one).
    pub fn remote_readers(&self, producer: &str) -> Vec<String> {
        self.readers
            .get(producer)
            .into_iter()
            .flatten()
            .filter(|r| self.inboxes.contains(*r))
            .cloned()
            .collect()
    }

    /// The readers of `producer` that read it in-process.
    pub fn local_readers(&self, producer: &str) -> usize {
        self.readers
            .get(producer)
            .into_iter()
            .flatten()
            .filter(|r| !self.inboxes.contains(*r))
            .count()
    }
}
