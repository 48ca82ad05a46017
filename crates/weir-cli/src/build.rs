//! From a checked pipeline file to a runnable weir pipeline.
//!
//! One generic loop per kind: each entry's component comes from the
//! registry ([`weir_connectors::registry`]) as a trait object that builds
//! itself. Every input becomes a source stage followed by a decode stage
//! (lines are read in order, decoded in parallel; a line that does not
//! decode is a dead letter of `<input>/decode`). Each stage entry becomes
//! the engine stages of its shape ([`Stage::attach`]). How a producer
//! reaches its readers is the [`Edges`] strategy's business (broadcast in
//! one process; broker inboxes in distributed mode); an entry reading
//! several producers merges them. Every component is built here, so `weir check` finds what a run
//! would find before it starts: jq programs that do not compile, schemas
//! that do not load, files that do not exist.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use weir::{ErrorPolicy, Flow, LoopBack, LoopExit, LoopOptions, Pipeline, PipelineOptions};
use weir_connectors::checkpoint::Checkpoint;
use weir_connectors::processors::ProcessorContext;
use weir_connectors::registry::{Kind, Resume, Scope, Stage, StageOptions};
use weir_connectors::sources::{BuildContext, State, StateDir, StateStore};
use weir_connectors::{Raw, Record};

use crate::config::{OnError, PipelineFile, StageEntry, component_count_error};
use crate::diag::Diagnostic;
use crate::edges::Edges;
use crate::graph::Wiring;

/// A pipeline ready to run.
pub struct Built {
    pub pipeline: Pipeline,
    /// The file's `description`.
    pub description: Option<String>,
    /// Where dead letters are written.
    pub dead_letter_path: std::path::PathBuf,
    /// Progress of the file inputs, when kept.
    pub checkpoint: Option<Arc<Checkpoint>>,
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
        resume, checkpoint, ..
    } = mode
    else {
        return Ok((None, false));
    };
    let mut diags = Vec::new();
    if *resume {
        for i in &file.inputs {
            // An entry without exactly one source has its own error.
            if i.value
                .source()
                .is_some_and(|s| s.files().is_none() && !s.resumes_itself())
            {
                diags.push(Diagnostic::at(
                    format!(
                        "--resume: input '{}' is not a file input; only file inputs (and schedules and sql inputs with a cursor, which resume by themselves) can be resumed",
                        i.value.name.value
                    ),
                    &i.value.name,
                ));
            }
        }
        for o in &file.outputs {
            let name = &o.value.name;
            match o.value.sink().map(|s| s.resume()) {
                Some(Resume::Refused(why)) => diags.push(Diagnostic::at(
                    format!("--resume: output '{}' {why}", name.value),
                    name,
                )),
                Some(Resume::MayDuplicate(why)) => {
                    eprintln!("warning: --resume: output '{}' {why}", name.value);
                }
                Some(Resume::Exact) | None => {}
            }
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let has_files = file
        .inputs
        .iter()
        .any(|i| i.value.source().is_some_and(|s| s.files().is_some()));
    if !checkpoint || !has_files {
        return Ok((None, *resume));
    }
    let Some(state) = state_dir_of(pipeline_path, base_dir, mode) else {
        return Ok((None, *resume));
    };
    match Checkpoint::open(&state.dir.join("checkpoints.db"), &state.pipeline, *resume) {
        Ok(cp) => Ok((Some(cp), *resume)),
        Err(e) => Err(vec![e.into()]),
    }
}

/// Where a run keeps state between runs (file checkpoints, a schedule's
/// last handled tick): `--state-dir`, else `.weir/` beside the pipeline
/// file, keyed by the file's canonical path. `None` for a check and for a
/// run that keeps no state (`--no-checkpoint`, distributed mode).
fn state_dir_of(pipeline_path: &Path, base_dir: &Path, mode: &Mode) -> Option<StateDir> {
    let Mode::Run {
        checkpoint: true,
        state_dir,
        ..
    } = mode
    else {
        return None;
    };
    Some(StateDir {
        dir: state_dir.clone().unwrap_or_else(|| base_dir.join(".weir")),
        pipeline: std::fs::canonicalize(pipeline_path)
            .unwrap_or_else(|_| pipeline_path.to_path_buf())
            .display()
            .to_string(),
    })
}

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
        /// Where sources keep state between runs instead of the state
        /// directory: in distributed mode, the job's bucket on the broker.
        shared_state: Option<Arc<dyn StateStore>>,
    },
}

/// Flows waiting for their readers, by producer name, and what each flow
/// derives from.
struct Offers<'a> {
    wiring: &'a Wiring,
    flows: HashMap<String, VecDeque<Flow<Record>>>,
    /// Per producer: the pipeline inputs its flow derives from, when the
    /// records of each come in the same order in every run; `None` when
    /// timing can change them. Kept only for a deterministic strategy.
    lineage: HashMap<String, Option<BTreeSet<String>>>,
    /// The exits of the loops started, by entry.
    loop_exits: HashMap<String, LoopExit>,
}

impl Offers<'_> {
    fn offer(
        &mut self,
        edges: &mut dyn Edges,
        p: &Pipeline,
        name: &str,
        flow: Flow<Record>,
        lineage: Option<BTreeSet<String>>,
    ) {
        let deterministic = lineage.is_some();
        self.lineage.insert(name.to_string(), lineage);
        let local = edges.offer(p, name, flow, deterministic);
        self.flows.insert(name.to_string(), local);
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

    /// The flows `name` reads, merged into one; a flow leaving a loop's
    /// cycle passes the loop's exit first.
    fn take(&mut self, name: &str) -> Option<Flow<Record>> {
        let wiring = self.wiring;
        self.take_all(wiring.from.get(name)?, Some(name))
    }

    /// Whether every one of `producers` has a flow on offer.
    fn offered(&self, producers: &[String]) -> bool {
        producers
            .iter()
            .all(|f| self.flows.get(f).is_some_and(|q| !q.is_empty()))
    }

    /// A flow of each of `producers`, merged into one; `None` (and nothing
    /// taken) until all of them were offered. With a `reader`, the flows
    /// that leave a loop's cycle for it pass the loop's exit.
    fn take_all(&mut self, producers: &[String], reader: Option<&str>) -> Option<Flow<Record>> {
        if !self.offered(producers) {
            return None;
        }
        let mut got: Vec<Flow<Record>> = Vec::with_capacity(producers.len());
        for f in producers {
            let flow = self
                .flows
                .get_mut(f)
                .and_then(VecDeque::pop_front)
                .expect("offered");
            let exit = reader.and_then(|r| {
                let entry = self.wiring.exits.get(&(r.to_string(), f.clone()))?;
                Some((entry, r, *self.loop_exits.get(entry)?))
            });
            got.push(match exit {
                Some((entry, r, x)) => flow.leave_loop(&format!("{entry}/exit-to-{r}"), x),
                None => flow,
            });
        }
        if got.len() == 1 {
            got.pop()
        } else {
            Some(Flow::merge(got))
        }
    }

    /// Closes every open loop whose fed-back producers are all offered.
    fn close_loops(&mut self, open: &mut HashMap<String, LoopBack<Record>>) {
        let wiring = self.wiring;
        let ready: Vec<String> = open
            .keys()
            .filter(|entry| self.offered(&wiring.loops[entry.as_str()]))
            .cloned()
            .collect();
        for entry in ready {
            let back = open.remove(&entry).expect("listed");
            // Fed back within the cycle: no exit.
            let flow = self.take_all(&wiring.loops[&entry], None).expect("offered");
            back.close(flow);
        }
    }
}

/// Builds the pipeline: every input, stage and output through the
/// component registry, every edge through `edges`. Reports every problem
/// it finds, not only the first.
pub fn build(
    file: &PipelineFile,
    wiring: &Wiring,
    pipeline_path: &Path,
    base_dir: &Path,
    mode: Mode,
    edges: &mut dyn Edges,
) -> Result<Built, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let (checkpoint, resume) = open_checkpoint(file, pipeline_path, base_dir, &mode)?;
    let state = match &mode {
        Mode::Run {
            shared_state: Some(shared),
            ..
        } => Some(State::Shared(shared.clone())),
        _ => state_dir_of(pipeline_path, base_dir, &mode).map(State::Dir),
    };
    let p = Pipeline::with_options(PipelineOptions {
        batch_size: file.settings.batch_size.max(1),
        buffer: file.settings.buffer.max(1),
        linger: std::time::Duration::from_millis(file.settings.linger_ms),
        ..Default::default()
    });
    let deterministic = edges.deterministic();
    // Producers that are unordered per-record pools, by name, with their
    // workers: a per-record stage reading one of them alone takes as many
    // workers by default, which lets the engine run it inside that pool
    // (fusion: no channel hop, no thread hand-off per record).
    let mut pool_width: HashMap<String, usize> = HashMap::new();
    let mut offers = Offers {
        wiring,
        flows: HashMap::new(),
        lineage: HashMap::new(),
        loop_exits: HashMap::new(),
    };

    for input in &file.inputs {
        if edges.skip_inputs() {
            // Nothing reads this input's flow: the stages and outputs it
            // feeds in-process are skipped with it.
            break;
        }
        let e = &input.value;
        let name = e.name.value.as_str();
        if let Some(msg) = component_count_error("input", name, Kind::Source, &e.components) {
            diags.push(Diagnostic::at(msg, &e.name));
            continue;
        }
        let source = e.source().expect("one component");
        let ctx = BuildContext {
            input: Arc::from(name),
            base_dir: base_dir.to_path_buf(),
            state: state.clone(),
        };
        let cp = checkpoint.clone().filter(|_| source.files().is_some());
        let default_workers = source.default_decode_workers();
        let (source, decoder) = match source.build(&ctx, cp) {
            Ok(b) => b,
            Err(err) => {
                diags.push(located(err, &e.name));
                continue;
            }
        };
        let workers = e
            .decode_workers
            .as_ref()
            .map_or(default_workers, |w| w.value);
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
        // In file order, so that what crosses the edges is the same in
        // every run (a restarted coordinator re-reads its inputs).
        let flow = if deterministic { flow.ordered() } else { flow };
        let lineage = deterministic.then(|| BTreeSet::from([name.to_string()]));
        if !deterministic {
            pool_width.insert(name.to_string(), workers);
        }
        offers.offer(edges, &p, name, flow, lineage);
    }

    let pctx = ProcessorContext {
        base_dir: base_dir.to_path_buf(),
        stage: String::new(),
    };
    // Loops started and not yet given what they feed back.
    let mut open_loops: HashMap<String, LoopBack<Record>> = HashMap::new();
    for &i in &wiring.stage_order {
        let e = &file.stages[i].value;
        let name = e.name.value.clone();
        let built = stage(e, &pctx);
        if edges.elsewhere(&name) {
            if let Err(d) = built {
                diags.extend(d);
            }
            continue;
        }
        let (mut input, lineage) = match edges.input(&p, &name) {
            Some(input) => (Some(input), None),
            None => (
                offers.take(&name),
                offers.merged_lineage(&name).filter(|_| deterministic),
            ),
        };
        if let Some(l) = &e.feedback {
            if deterministic {
                // Refused by placement, before the job is created.
                continue;
            }
            let options = LoopOptions {
                max_depth: l.value.max_depth,
                max_pending: l
                    .value
                    .max_pending
                    .unwrap_or(LoopOptions::default().max_pending),
            };
            input = input.map(|flow| {
                let (flow, back) = flow.loop_start(&format!("{name}/loop"), options);
                offers.loop_exits.insert(name.clone(), back.exit());
                open_loops.insert(name.clone(), back);
                flow
            });
        }
        match (built, input) {
            (Ok((stage, mut options)), Some(input)) => {
                // Per-record stages keep their input's order when asked;
                // a dedupe of several inputs keeps whichever duplicate
                // came first; windowed ones emit in timing's order.
                let scope = e.processor().expect("built").scope();
                let lineage = lineage.filter(|l| match scope {
                    Scope::PerRecord | Scope::Call => true,
                    Scope::Keyed => l.len() == 1,
                    Scope::Windowed => false,
                });
                options.ordered |= lineage.is_some();
                // An aggregate's per-record part (extract) is such a stage too.
                let per_record = scope == Scope::PerRecord || matches!(stage, Stage::Aggregate(_));
                // Only where fusion can follow: the producer's only reader,
                // in a run whose edges need no particular order.
                if per_record && !options.ordered && !deterministic && e.feedback.is_none() {
                    if e.workers.is_none()
                        && let Some([from]) = wiring.from.get(&name).map(Vec::as_slice)
                        && wiring.readers.get(from) == Some(&1)
                        && let Some(&w) = pool_width.get(from)
                    {
                        options.workers = w;
                    }
                    if scope == Scope::PerRecord && matches!(stage, Stage::Records(_)) {
                        pool_width.insert(name.clone(), options.workers);
                    }
                }
                for (n, flow) in stage.attach(input, &options) {
                    offers.offer(edges, &p, &n, flow, lineage.clone());
                }
                offers.close_loops(&mut open_loops);
            }
            (Err(d), _) => diags.extend(d),
            // An upstream failed to build; its own error is reported.
            (Ok(_), None) => {}
        }
    }

    for o in &file.outputs {
        let e = &o.value;
        let name = e.name.value.clone();
        if let Some(msg) = component_count_error("output", &name, Kind::Sink, &e.components) {
            diags.push(Diagnostic::at(msg, &e.name));
            continue;
        }
        let sink = e.sink().expect("one component");
        let input = match edges.input(&p, &name) {
            Some(input) => Some(input),
            None => offers.take(&name),
        };
        let policy = e
            .on_error
            .as_ref()
            .map_or(ErrorPolicy::Fail, OnError::policy);
        let ctx = BuildContext {
            input: Arc::from(name.as_str()),
            base_dir: base_dir.to_path_buf(),
            state: state.clone(),
        };
        let Some(input) = input.filter(|_| !matches!(mode, Mode::Check)) else {
            // Checking (or an upstream failed): check the options, create
            // nothing (a check must not truncate an output file).
            if let Err(err) = sink.check(&ctx) {
                diags.push(located(err, &e.name));
            }
            continue;
        };
        if let Err(err) = sink.attach(&ctx, &name, input, policy) {
            diags.push(located(err, &e.name));
        }
    }

    let dl_path = match &file.dead_letter {
        Some(d) => base_dir.join(&d.path.value),
        None => base_dir.join("dead-letters.jsonl"),
    };
    let own_dead_letters = edges.dead_letters(&p);
    let done = |diags: Vec<Diagnostic>, pipeline, checkpoint| {
        if diags.is_empty() {
            Ok(Built {
                pipeline,
                description: file.description.clone(),
                dead_letter_path: dl_path.clone(),
                checkpoint,
            })
        } else {
            Err(diags)
        }
    };
    if matches!(mode, Mode::Check) || own_dead_letters {
        return done(diags, p, None);
    }
    // A restart must not erase dead letters a source told a client about;
    // a resumed run keeps those of the run it resumes.
    let keep = file
        .inputs
        .iter()
        .any(|i| i.value.source().is_some_and(|s| s.promises_outcomes()));
    let dead_letter_file = if resume {
        weir_connectors::sinks::dead_letter::DeadLetterFile::append(&dl_path)
    } else if keep {
        weir_connectors::sinks::dead_letter::DeadLetterFile::append_all(&dl_path)
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
    done(diags, p, checkpoint)
}

/// A component's error, at its own YAML location or else at the entry's name.
fn located(e: weir_connectors::ConfigError, entry: &serde_saphyr::Spanned<String>) -> Diagnostic {
    match e.at {
        Some(_) => Diagnostic::from(e),
        None => Diagnostic::at(format!("'{}': {}", entry.value, e.message), entry),
    }
}

/// Builds a stage entry's processor (whether or not its input could be
/// built, so that every error is reported), with the options the entry's
/// own keys give it.
pub(crate) fn stage(
    e: &StageEntry,
    ctx: &ProcessorContext,
) -> Result<(Stage, StageOptions), Vec<Diagnostic>> {
    let name = e.name.value.as_str();
    if let Some(msg) = component_count_error("stage", name, Kind::Processor, &e.components) {
        return Err(vec![Diagnostic::at(msg, &e.name)]);
    }
    let processor = e.processor().expect("one component");
    let workers = match &e.workers {
        Some(w) if w.value == 0 => {
            return Err(vec![Diagnostic::at("workers must be at least 1", w)]);
        }
        Some(w) if processor.scope() == Scope::Call => {
            return Err(vec![Diagnostic::at(
                format!(
                    "stage '{name}' calls a service: its calls in flight are its `concurrency`, not `workers` (it runs no threads of its own)"
                ),
                w,
            )]);
        }
        Some(w) => w.value,
        None => 1,
    };
    let ctx = &ProcessorContext {
        stage: name.to_owned(),
        ..ctx.clone()
    };
    let stage = processor
        .build(ctx)
        .map_err(|err| vec![located(err, &e.name)])?;
    let options = StageOptions {
        name: name.to_owned(),
        workers,
        policy: e
            .on_error
            .as_ref()
            .map_or(ErrorPolicy::DeadLetter, OnError::policy),
        ordered: e.ordered,
    };
    Ok((stage, options))
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
