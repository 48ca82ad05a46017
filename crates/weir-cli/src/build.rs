//! From a checked pipeline file to a runnable weir pipeline.
//!
//! Every input becomes a source stage followed by a decode stage (lines are
//! read in order, decoded in parallel; a line that does not decode is a dead
//! letter of `<input>/decode`). Each stage entry becomes one engine stage
//! (aggregates become three: extract, aggregate, emit). A producer read by
//! several entries is broadcast; an entry reading several producers merges
//! them. Every component is built here, so `weir check` finds what a run
//! would find before it starts: jq programs that do not compile, schemas
//! that do not load, files that do not exist.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use weir::{ErrorPolicy, Flow, Pipeline, PipelineOptions};
use weir_connectors::checkpoint::Checkpoint;
use weir_connectors::processors::{Processor, ProcessorContext};
use weir_connectors::sources::BuildContext;
use weir_connectors::{Raw, Record};

use crate::config::{OnError, PipelineFile, StageEntry};
use crate::diag::Diagnostic;
use crate::distributed::placement::{Placement, producer_component};
use crate::graph::Wiring;
use weir_nats::completion::{Node, Producer};
use weir_nats::consume::InboxReader;
use weir_nats::publish::{DlqSink, EdgeSink};

/// Distributed mode, as the coordinator: the job on the broker and where
/// each component runs.
pub struct Dist {
    /// The job.
    pub job: weir_nats::Job,
    /// Where components run.
    pub placement: Placement,
    /// The inputs were read to the end by an earlier run of the job (it is
    /// resumed after `weir dlq replay`): they are not read again.
    pub inputs_done: bool,
    /// The job's replay epoch (`weir dlq replay` runs so far): part of the
    /// coordinator's dead-letter ids.
    pub replays: u64,
}

/// A pipeline ready to run.
pub struct Built {
    pub pipeline: Pipeline,
    /// The file's `description`.
    pub description: Option<String>,
    /// Where dead letters are written.
    pub dead_letter_path: std::path::PathBuf,
    /// Progress of the file inputs, when kept.
    pub checkpoint: Option<Arc<Checkpoint>>,
    /// Distributed mode: the job's inboxes and their producers, for
    /// [`weir_nats::completion::watch`].
    pub nodes: Vec<Node>,
    /// Distributed mode: the counters of the coordinator's inbox readers,
    /// by inbox (shown by `weir status`).
    pub inbox_counters: Vec<(String, Arc<weir_nats::consume::ReaderCounters>)>,
}

/// Opens the checkpoint for a run, refusing `--resume` where resuming could
/// lose or duplicate output.
fn open_checkpoint(
    file: &PipelineFile,
    pipeline_path: &Path,
    base_dir: &Path,
    mode: &Mode,
) -> Result<(Option<Arc<Checkpoint>>, bool), Vec<Diagnostic>> {
    let Mode::Run {
        resume,
        checkpoint,
        state_dir,
    } = mode
    else {
        return Ok((None, false));
    };
    let mut diags = Vec::new();
    if *resume {
        for i in &file.inputs {
            if i.value.file.is_none() {
                diags.push(Diagnostic::at(
                    format!(
                        "--resume: input '{}' is not a file input; only file inputs can be resumed",
                        i.value.name.value
                    ),
                    &i.value.name,
                ));
            }
        }
        for o in &file.outputs {
            if o.value.file.is_some() {
                diags.push(Diagnostic::at(
                    format!("--resume: output '{}' writes a file from the start, which would lose what the first run wrote; resume works with sqlite outputs", o.value.name.value),
                    &o.value.name,
                ));
            }
            if let Some(s) = &o.value.sqlite
                && s.key.is_empty()
            {
                eprintln!(
                    "warning: --resume: output '{}' has no `key`; rows written after the last checkpoint may be written twice",
                    o.value.name.value
                );
            }
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let has_files = file.inputs.iter().any(|i| i.value.file.is_some());
    if !checkpoint || !has_files {
        return Ok((None, *resume));
    }
    let dir = state_dir.clone().unwrap_or_else(|| base_dir.join(".weir"));
    let key = std::fs::canonicalize(pipeline_path)
        .unwrap_or_else(|_| pipeline_path.to_path_buf())
        .display()
        .to_string();
    match Checkpoint::open(&dir.join("checkpoints.db"), &key, *resume) {
        Ok(cp) => Ok((Some(cp), *resume)),
        Err(e) => Err(vec![e.into()]),
    }
}

/// Decode workers per input when not set: parsing is the heavy part of
/// reading, and this machine class has two cores.
const DEFAULT_DECODE_WORKERS: usize = 2;

/// What the pipeline is built for.
pub enum Mode {
    /// `weir check`: build every component, keep no state.
    Check,
    /// `weir run`.
    Run {
        /// Skip what an earlier run finished.
        resume: bool,
        /// Record progress so that this run can be resumed.
        checkpoint: bool,
        /// Where the checkpoint database lives.
        state_dir: Option<std::path::PathBuf>,
    },
}

/// Flows waiting for their readers, by producer name; in distributed mode
/// the copies for remote readers are published into their inboxes at once.
struct Offers<'a> {
    wiring: &'a Wiring,
    dist: Option<&'a Dist>,
    flows: HashMap<String, VecDeque<Flow<Record>>>,
    /// Per inbox: flags set when a coordinator producer finished publishing.
    local_done: HashMap<String, Vec<Arc<AtomicBool>>>,
    /// Per producer: the pipeline inputs its flow derives from, when the
    /// records of each come in the same order in every run; `None` when
    /// timing can change them.
    lineage: HashMap<String, Option<BTreeSet<String>>>,
    /// The pipeline's stop token (a cancel or a failure): publishing sinks
    /// learn from it that the run is being stopped, not ending.
    stopping: weir::CancellationToken,
}

impl Offers<'_> {
    fn offer(&mut self, name: &str, flow: Flow<Record>, lineage: Option<BTreeSet<String>>) {
        let deterministic = lineage.is_some();
        self.lineage.insert(name.to_string(), lineage);
        let (local, remote) = match self.dist {
            Some(d) => (
                d.placement.local_readers(name),
                d.placement.remote_readers(name),
            ),
            None => (
                self.wiring.readers.get(name).copied().unwrap_or(0),
                Vec::new(),
            ),
        };
        let copies = local + remote.len();
        let mut out: VecDeque<Flow<Record>> = if copies > 1 {
            flow.broadcast(copies).into()
        } else {
            VecDeque::from([flow])
        };
        if let Some(d) = self.dist {
            for inbox in remote {
                let flow = out.pop_back().expect("one copy per reader");
                let done = Arc::new(AtomicBool::new(false));
                let flag = done.clone();
                let sink = EdgeSink::new(&d.job, &inbox, name, deterministic, move |_| {
                    flag.store(true, Ordering::Release);
                })
                .stopping(self.stopping.clone());
                flow.sink(&format!("{name}>{inbox}"), sink);
                self.local_done.entry(inbox).or_default().push(done);
            }
        }
        self.flows.insert(name.to_string(), out);
    }

    /// The lineage of what `name` reads: the union of its producers'
    /// inputs when each producer is deterministic and no input reaches it
    /// by two of them (two flows of one input interleave differently in
    /// every run; flows of different inputs keep each input's order).
    fn merged_lineage(&self, name: &str) -> Option<BTreeSet<String>> {
        let mut all = BTreeSet::new();
        for f in self.wiring.from.get(name)? {
            for input in self.lineage.get(f)?.as_ref()? {
                if !all.insert(input.clone()) {
                    return None;
                }
            }
        }
        Some(all)
    }
}

pub fn build(
    file: &PipelineFile,
    wiring: &Wiring,
    pipeline_path: &Path,
    base_dir: &Path,
    mode: Mode,
    dist: Option<&Dist>,
) -> Result<Built, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let (checkpoint, resume) = open_checkpoint(file, pipeline_path, base_dir, &mode)?;
    let p = Pipeline::with_options(PipelineOptions {
        batch_size: file.settings.batch_size.max(1),
        buffer: file.settings.buffer.max(1),
        ..Default::default()
    });
    let mut offers = Offers {
        wiring,
        dist,
        flows: HashMap::new(),
        local_done: HashMap::new(),
        lineage: HashMap::new(),
        stopping: p.stop_token(),
    };
    // Inbox readers of the coordinator: (inbox, producers-done flag).
    let mut reader_flags: HashMap<String, Arc<AtomicBool>> = HashMap::new();
    let mut inbox_counters = Vec::new();
    let mut inbox_source = |name: &str| -> Flow<Record> {
        let d = dist.expect("inboxes exist only in distributed mode");
        let flag = Arc::new(AtomicBool::new(false));
        reader_flags.insert(name.to_string(), flag.clone());
        let reader = InboxReader::new(&d.job, name, flag);
        inbox_counters.push((name.to_string(), reader.counters()));
        p.source(&format!("{name}/inbox"), reader.source())
    };

    for input in &file.inputs {
        if dist.is_some_and(|d| d.inputs_done) {
            // Nothing reads this input's flow: the stages and outputs it
            // feeds in-process are skipped with it.
            break;
        }
        let e = &input.value;
        let name = e.name.value.as_str();
        let ctx = BuildContext {
            input: Arc::from(name),
            base_dir: base_dir.to_path_buf(),
        };
        let count = [e.file.is_some(), e.stdin.is_some(), e.generate.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if count != 1 {
            diags.push(Diagnostic::at(format!("input '{name}' must have exactly one of `file`, `stdin`, `generate` (found {count})"), &e.name));
            continue;
        }
        let built = if let Some(c) = &e.file {
            match &checkpoint {
                Some(cp) => c.build_resumable(&ctx, cp.clone()),
                None => c.build(&ctx),
            }
        } else if let Some(c) = &e.stdin {
            c.build(&ctx)
        } else if let Some(c) = &e.generate {
            c.build(&ctx)
        } else {
            unreachable!("one component is set")
        };
        let (source, decoder) = match built {
            Ok(b) => b,
            Err(err) => {
                diags.push(located(err, &e.name));
                continue;
            }
        };
        let workers = e
            .decode_workers
            .as_ref()
            .map_or(DEFAULT_DECODE_WORKERS, |w| w.value);
        if workers == 0 {
            diags.push(Diagnostic::at(
                "decode_workers must be at least 1",
                e.decode_workers.as_ref().expect("set"),
            ));
            continue;
        }
        let decoder = Arc::new(decoder);
        let flow = p
            .source(name, source)
            .try_map(&format!("{name}/decode"), move |raw: &Raw| {
                decoder.decode(raw)
            })
            .workers(workers)
            .on_error(ErrorPolicy::DeadLetter);
        // Distributed: in file order, so that what is published has the
        // same message ids in every run (a restarted coordinator re-reads).
        let flow = if dist.is_some() { flow.ordered() } else { flow };
        offers.offer(name, flow, Some(BTreeSet::from([name.to_string()])));
    }

    let pctx = ProcessorContext {
        base_dir: base_dir.to_path_buf(),
        stage: String::new(),
    };
    for &i in &wiring.stage_order {
        let e = &file.stages[i].value;
        let name = e.name.value.clone();
        let (in_pool, has_inbox) = dist.map_or((false, false), |d| {
            (
                d.placement.pool.contains(&name),
                d.placement.inboxes.contains(&name),
            )
        });
        if in_pool {
            // Run by the workers; built here only to report its errors.
            if let Err(d) = component(e, &pctx) {
                diags.extend(d);
            }
            continue;
        }
        let input = if has_inbox {
            Some(inbox_source(&name))
        } else {
            take_inputs(&name, wiring, &mut offers.flows)
        };
        let lineage = if dist.is_some() && !has_inbox {
            offers.merged_lineage(&name)
        } else {
            None
        };
        match (component(e, &pctx), input) {
            (Ok((c, workers)), Some(input)) => {
                // Per-record stages keep it when they keep order; stateful
                // ones (aggregate, batch) emit in timing's order; a dedupe
                // of several inputs keeps whichever duplicate came first.
                let lineage = lineage.filter(|l| {
                    matches!(c, Component::Processor(_) | Component::Switch(_))
                        && (e.dedupe.is_none() || l.len() == 1)
                });
                let keeps_order = lineage.is_some();
                for (n, flow) in attach(e, c, workers, input, keeps_order) {
                    offers.offer(&n, flow, lineage.clone());
                }
            }
            (Err(d), _) => diags.extend(d),
            // An upstream failed to build; its own error is reported.
            (Ok(_), None) => {}
        }
    }

    for o in &file.outputs {
        let e = &o.value;
        let name = e.name.value.clone();
        let count = [e.sqlite.is_some(), e.file.is_some(), e.stdout.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if count != 1 {
            diags.push(Diagnostic::at(format!("output '{name}' must have exactly one of `sqlite`, `file`, `stdout` (found {count})"), &e.name));
            continue;
        }
        let input = if dist.is_some_and(|d| d.placement.inboxes.contains(&name)) {
            Some(inbox_source(&name))
        } else {
            take_inputs(&name, wiring, &mut offers.flows)
        };
        let policy = e
            .on_error
            .as_ref()
            .map_or(ErrorPolicy::Fail, OnError::policy);
        let ctx = BuildContext {
            input: Arc::from(name.as_str()),
            base_dir: base_dir.to_path_buf(),
        };
        let Some(input) = input.filter(|_| !matches!(mode, Mode::Check)) else {
            // Checking (or an upstream failed): check the options, create
            // nothing (a check must not truncate an output file).
            let checked = if let Some(c) = &e.sqlite {
                c.check()
            } else if let Some(c) = &e.file {
                c.check().map(|_| ())
            } else {
                Ok(())
            };
            if let Err(err) = checked {
                diags.push(located(err, &e.name));
            }
            continue;
        };
        let handle = if let Some(c) = &e.sqlite {
            c.build(&ctx).map(|s| input.sink(&name, s))
        } else if let Some(c) = &e.file {
            c.build(&ctx).map(|s| input.sink(&name, s))
        } else if let Some(c) = &e.stdout {
            c.build(&ctx).map(|s| input.sink(&name, s))
        } else {
            unreachable!("one component is set")
        };
        match handle {
            Ok(h) => {
                h.on_error(policy);
            }
            Err(err) => diags.push(located(err, &e.name)),
        }
    }

    let dl_path = match &file.dead_letter {
        Some(d) => base_dir.join(&d.path.value),
        None => base_dir.join("dead-letters.jsonl"),
    };
    let nodes = match dist {
        Some(d) => completion_nodes(d, wiring, file, &offers, &reader_flags),
        None => Vec::new(),
    };
    if let Some(d) = dist {
        // Dead letters of a job go to its stream on the broker; the
        // coordinator copies them to the dead-letter file at the end.
        p.dead_letter_sink(DlqSink::new(&d.job, d.replays));
    }
    if matches!(mode, Mode::Check) || dist.is_some() {
        return if diags.is_empty() {
            Ok(Built {
                pipeline: p,
                description: file.description.clone(),
                dead_letter_path: dl_path,
                checkpoint: None,
                nodes,
                inbox_counters,
            })
        } else {
            Err(diags)
        };
    }
    let dead_letter_file = if resume {
        weir_connectors::sinks::dead_letter::DeadLetterFile::append(&dl_path)
    } else {
        weir_connectors::sinks::dead_letter::DeadLetterFile::create(&dl_path)
    };
    match dead_letter_file {
        Ok(sink) => {
            p.dead_letter_sink(sink);
        }
        Err(err) => {
            diags.push(err.into());
            return Err(diags);
        }
    };
    if diags.is_empty() {
        Ok(Built {
            pipeline: p,
            description: file.description.clone(),
            dead_letter_path: dl_path,
            checkpoint,
            nodes,
            inbox_counters,
        })
    } else {
        Err(diags)
    }
}

/// The job's inboxes with their producers, for the completion watch.
fn completion_nodes(
    d: &Dist,
    wiring: &Wiring,
    file: &PipelineFile,
    offers: &Offers<'_>,
    reader_flags: &HashMap<String, Arc<AtomicBool>>,
) -> Vec<Node> {
    let stages: std::collections::HashSet<&str> = file
        .stages
        .iter()
        .map(|s| s.value.name.value.as_str())
        .collect();
    d.placement
        .specs
        .iter()
        .map(|spec| {
            let mut producers: Vec<Producer> = offers
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
                .filter(|c| d.placement.pool.contains(*c))
                .collect();
            pools.dedup();
            producers.extend(pools.into_iter().map(|c| Producer::Pool(c.to_string())));
            Node {
                inbox: spec.name.clone(),
                pool: spec.pool,
                producers,
                producers_done: reader_flags
                    .get(&spec.name)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(AtomicBool::new(false))),
            }
        })
        .collect()
}

/// The flows `name` reads, merged into one.
fn take_inputs(
    name: &str,
    wiring: &Wiring,
    flows: &mut HashMap<String, VecDeque<Flow<Record>>>,
) -> Option<Flow<Record>> {
    let mut got = Vec::new();
    for f in wiring.from.get(name)? {
        got.push(flows.get_mut(f)?.pop_front()?);
    }
    if got.len() == 1 {
        got.pop()
    } else {
        Some(Flow::merge(got))
    }
}

/// A stage entry's component, built (compiled, loaded, checked).
pub(crate) enum Component {
    Processor(Arc<dyn Processor>),
    Aggregate(Arc<weir_connectors::processors::aggregate::Aggregator>),
    Batch(Arc<weir_connectors::processors::batch::Batcher>),
    Switch(Arc<weir_connectors::processors::switch::Switch>),
}

/// A component's error, at its own YAML location or else at the entry's name.
fn located(e: weir_connectors::ConfigError, entry: &serde_saphyr::Spanned<String>) -> Diagnostic {
    match e.at {
        Some(_) => Diagnostic::from(e),
        None => Diagnostic::at(format!("'{}': {}", entry.value, e.message), entry),
    }
}

/// Builds a stage entry's component (whether or not its input could be
/// built, so that every error is reported).
pub(crate) fn component(
    e: &StageEntry,
    ctx: &ProcessorContext,
) -> Result<(Component, usize), Vec<Diagnostic>> {
    let name = e.name.value.as_str();
    let set = [
        e.jq.is_some(),
        e.filter.is_some(),
        e.validate.is_some(),
        e.dedupe.is_some(),
        e.aggregate.is_some(),
        e.batch.is_some(),
        e.switch.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err(vec![Diagnostic::at(
            format!(
                "stage '{name}' must have exactly one of `jq`, `filter`, `validate`, `dedupe`, `aggregate`, `batch`, `switch` (found {set})"
            ),
            &e.name,
        )]);
    }
    let workers = match &e.workers {
        Some(w) if w.value == 0 => {
            return Err(vec![Diagnostic::at("workers must be at least 1", w)]);
        }
        Some(w) => w.value,
        None => 1,
    };
    let ctx = &ProcessorContext {
        stage: name.to_owned(),
        ..ctx.clone()
    };
    let err = |err: weir_connectors::ConfigError| vec![located(err, &e.name)];
    let component = if let Some(c) = &e.jq {
        Component::Processor(Arc::new(c.build(ctx).map_err(err)?))
    } else if let Some(c) = &e.filter {
        Component::Processor(Arc::new(c.build(ctx).map_err(err)?))
    } else if let Some(c) = &e.validate {
        Component::Processor(Arc::new(c.build(ctx).map_err(err)?))
    } else if let Some(c) = &e.dedupe {
        Component::Processor(Arc::new(c.build(ctx).map_err(err)?))
    } else if let Some(c) = &e.aggregate {
        Component::Aggregate(Arc::new(c.build(ctx).map_err(err)?))
    } else if let Some(c) = &e.batch {
        Component::Batch(Arc::new(c.build(ctx).map_err(err)?))
    } else if let Some(c) = &e.switch {
        Component::Switch(Arc::new(c.build(ctx).map_err(err)?))
    } else {
        unreachable!("one component is set")
    };
    Ok((component, workers))
}

/// Applies a built component to its input flow; returns the flows it
/// offers downstream, by the name readers use (a switch offers one per
/// branch).
fn attach(
    e: &StageEntry,
    component: Component,
    workers: usize,
    input: Flow<Record>,
    keep_order: bool,
) -> Vec<(String, Flow<Record>)> {
    let name = e.name.value.as_str();
    if let Component::Switch(sw) = component {
        let policy = e
            .on_error
            .as_ref()
            .map_or(ErrorPolicy::DeadLetter, OnError::policy);
        let router = sw.clone();
        let tagged = input
            .try_flat_map(name, move |r: &Record| {
                router.route(r).map(|b| b.map(|i| (i, r.clone())))
            })
            .workers(workers)
            .on_error(policy);
        let tagged = if e.ordered || keep_order {
            tagged.ordered()
        } else {
            tagged
        };
        let mut out = Vec::new();
        let mut rest = tagged;
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
        return out;
    }
    vec![(
        name.to_string(),
        attach_one(e, component, workers, input, keep_order),
    )]
}

/// [`attach`] for the components with one output.
fn attach_one(
    e: &StageEntry,
    component: Component,
    workers: usize,
    input: Flow<Record>,
    keep_order: bool,
) -> Flow<Record> {
    let name = e.name.value.as_str();
    let policy = e
        .on_error
        .as_ref()
        .map_or(ErrorPolicy::DeadLetter, OnError::policy);
    match component {
        Component::Processor(processor) => {
            let flow = input
                .try_flat_map(name, move |r: &Record| {
                    let mut out = Vec::new();
                    processor.process(r, &mut out).map(|()| out)
                })
                .workers(workers)
                .on_error(policy);
            if e.ordered || keep_order {
                flow.ordered()
            } else {
                flow
            }
        }
        Component::Aggregate(agg) => {
            let (a1, a2, a3) = (agg.clone(), agg.clone(), agg.clone());
            let window = agg.window();
            input
                .try_map(&format!("{name}/extract"), move |r: &Record| a1.extract(r))
                .workers(workers)
                .on_error(policy)
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
                })
        }
        Component::Batch(b) => {
            let (b1, b2, b3) = (b.clone(), b.clone(), b.clone());
            let window = b.window();
            input
                .aggregate(
                    name,
                    move |r| b1.key(r),
                    move |_| b2.init(),
                    move |acc, r| b3.fold(acc, r),
                    window,
                )
                .map(&format!("{name}/emit"), move |(_, acc)| b.finish(acc))
        }
        Component::Switch(_) => unreachable!("attach handles switches"),
    }
}

/// Runs a built pipeline: SIGINT or SIGTERM once drains, twice aborts the
/// process (see [`crate::signals`]).
pub async fn run(
    built: Built,
    live: bool,
    extra: Option<crate::progress::Extra>,
) -> Result<weir::Report, weir::RunError> {
    let Built {
        pipeline,
        checkpoint,
        ..
    } = built;
    let token = pipeline.cancel_token();
    let metrics = pipeline.metrics();
    let signals = tokio::spawn(crate::signals::drain_on_signal(
        token,
        "draining in-flight records",
    ));
    let done = weir::CancellationToken::new();
    let view = live.then(|| {
        tokio::spawn(crate::progress::live(
            metrics,
            crate::progress::tokio_util_like::Done(done.clone()),
            extra,
        ))
    });
    let result = pipeline.run().await;
    done.cancel();
    if let Some(v) = view {
        let _ = v.await;
    }
    signals.abort();
    // Whatever happened, record how far the inputs got: a failed or
    // interrupted run can be resumed from there.
    if let Some(cp) = checkpoint
        && let Err(e) = cp.save()
    {
        eprintln!("warning: could not save the checkpoint: {e}");
    }
    result
}
