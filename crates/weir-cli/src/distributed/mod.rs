//! Distributed mode: the commands that run a pipeline file on a broker.
//!
//! - `weir run FILE --broker URL`: the **coordinator**. Creates the job's
//!   streams, runs the inputs, the coordinator stages and the outputs, and
//!   waits until every record is committed or dead-lettered (counted on the
//!   broker, see `weir_nats::completion`).
//! - `weir worker FILE --broker URL`: joins the pools of the remote stages
//!   and runs until stopped; SIGTERM drains.
//! - `weir status --broker URL`: every job, per inbox.
//! - `weir dlq list|replay`: the job's dead letters.
//!
//! Which stage runs where is [`placement`]'s business; the stages and
//! components themselves are the same as in a local run.

mod edges;
mod fingerprint;
pub mod placement;
mod state;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weir::CancellationToken;
use weir_connectors::processors::ProcessorContext;
use weir_connectors::registry::Resume;
use weir_nats::completion;
use weir_nats::job::{Status, WorkerStats, now_ms};
use weir_nats::lease::Lease;
use weir_nats::worker::{RemoteStage, WorkerOptions};
use weir_nats::{Broker, EdgeSettings, Job};

use crate::build;
use crate::config::OnError;
use crate::{Loaded, ReportFormat};
use placement::Placement;

/// `println!` that ends the process quietly when stdout is closed
/// (`weir status | head`), instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// How long connecting may take before "unreachable".
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The job name: `--job`, else the pipeline file's stem.
fn job_name(path: &Path, job: Option<String>) -> String {
    job.unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "weir".to_string(), |s| s.to_string_lossy().into_owned())
    })
}

/// The placement, or the rendered diagnostics.
fn place(l: &Loaded) -> std::result::Result<Placement, String> {
    let p = Placement::new(&l.file, &l.wiring).map_err(|d| l.render(&d))?;
    if p.pool.is_empty() {
        return Err(format!(
            "{}: no stage runs on the broker: mark stages `remote: true`, or set `broker: {{ remote: all }}`",
            l.name
        ));
    }
    Ok(p)
}

/// `weir run FILE --broker URL`.
pub fn run_coordinator(
    l: &Loaded,
    url: &str,
    job: Option<String>,
    format: Option<ReportFormat>,
    live: bool,
    fresh: bool,
) -> Result<ExitCode> {
    let placement = match place(l) {
        Ok(p) => p,
        Err(text) => {
            eprintln!("{text}");
            return Ok(ExitCode::from(2));
        }
    };
    let job_name = job_name(&l.path, job);
    let rt = crate::runtime::build()?;
    rt.block_on(async {
        let broker = Broker::connect(url, CONNECT_TIMEOUT).await?;
        let job = Job::open(broker.clone(), &job_name, placement.settings.clone()).await?;
        // One coordinator per job: held until the end of the run.
        let lease = Lease::acquire(&job, "weir run --broker").await?;
        let result = async {
            // A `file` output starts its file over: resuming would lose what
            // earlier runs of the job wrote there (a local --resume refuses
            // it too).
            if !fresh
                && let Some(s) = job.state().await?
                && matches!(s.status, Status::Running | Status::Failed)
            {
                let files: Vec<&str> = l
                    .file
                    .outputs
                    .iter()
                    .filter(|o| {
                        o.value
                            .sink()
                            .is_some_and(|s| matches!(s.resume(), Resume::Refused(_)))
                    })
                    .map(|o| o.value.name.value.as_str())
                    .collect();
                if !files.is_empty() {
                    eprintln!(
                        "error: job '{}' is unfinished, and resuming it would write output '{}' (a file) from the start, losing what earlier runs wrote there; run with --fresh to start the job over, or use a sqlite output (its upserts resume)",
                        job.names.job(),
                        files.join("', '")
                    );
                    return Ok(ExitCode::from(2));
                }
            }
            let print = fingerprint::of_job(l, &placement, broker.client.max_payload());
            let start = match job
                .start(&l.path.display().to_string(), &placement.specs, &print, fresh)
                .await
            {
                Ok(s) => s,
                Err(e @ weir_nats::BrokerError::Mismatch(_)) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
                Err(e) => return Err(e.into()),
            };
            eprintln!(
                "job '{}' {} on {url} (nats-server {}); remote stages: {}",
                job.names.job(),
                match start {
                    weir_nats::job::Start::Fresh => "started",
                    weir_nats::job::Start::Resumed { .. } => "resumed",
                },
                broker.server_version,
                placement
                    .pool_stages()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            let inputs_done = matches!(start, weir_nats::job::Start::Resumed { sources_done: true });
            if inputs_done {
                eprintln!("the inputs were read to the end by an earlier run: not reading them again");
            }
            let state = job.state().await?;
            let run = state.as_ref().map_or(0, |s| s.started_ms);
            // The broker recognises a message id again for its duplicate
            // window only: older messages read again are new to it.
            let window = placement.settings.duplicate_window;
            let age = Duration::from_millis(now_ms().saturating_sub(run));
            if matches!(start, weir_nats::job::Start::Resumed { .. }) && !inputs_done && age > window {
                eprintln!(
                    "warning: job '{}' started {} s ago, longer than the broker's duplicate window ({} s, broker.duplicate_window_secs): records published more than that ago are sent again as new, so outputs without a key may receive them twice; run with --fresh to start over",
                    job.names.job(),
                    age.as_secs(),
                    window.as_secs()
                );
            }
            let mut edges = edges::BrokerEdges::new(
                &job,
                &placement,
                inputs_done,
                state.as_ref().map_or(0, |s| s.replays),
            );
            // Sources' state between runs (a schedule's last handled
            // tick) in the job's bucket: read by whichever coordinator
            // holds the job next.
            let (shared_state, state_writer) = state::KvState::open(&job, fresh).await?;
            let mode = build::Mode::Run {
                resume: false,
                checkpoint: false,
                state_dir: None,
                shared_state: Some(shared_state.clone()),
            };
            let built = match build::build(&l.file, &l.wiring, &l.path, &l.base_dir, mode, &mut edges)
            {
                Ok(b) => b,
                Err(d) => {
                    eprintln!("{}", l.render(&d));
                    return Ok(ExitCode::from(2));
                }
            };
            let dead_letter_path = built.dead_letter_path.clone();
            let nodes = edges.nodes(&l.file, &l.wiring);
            let stop_watch = CancellationToken::new();
            // The coordinator's own inbox readers, shown by `weir status`
            // like a worker's stages.
            let counters = edges.inbox_counters.clone();
            let own_stats = {
                let job = job.clone();
                let counters = counters.clone();
                let stop = stop_watch.clone();
                tokio::spawn(async move {
                    loop {
                        let _ = job.put_worker(&coordinator_stats(&counters, run, false)).await;
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                })
            };
            // Another coordinator took the job over (this one was presumed
            // dead): stop reading, and leave the job's state to it.
            let lost = lease.lost();
            let on_lost = {
                let token = built.pipeline.cancel_token();
                let lost = lost.clone();
                tokio::spawn(async move {
                    lost.cancelled().await;
                    eprintln!("error: another coordinator took this job over; stopping");
                    token.cancel();
                })
            };
            let watch = {
                let job = job.clone();
                let stop = stop_watch.clone();
                tokio::spawn(async move {
                    completion::watch(&job, &nodes, Duration::from_millis(200), &stop).await
                })
            };
            // The live view shows the remote stages too, from the workers'
            // reports and the broker's counts.
            let extra: crate::progress::Extra = Arc::default();
            let remote_view = live.then(|| {
                let job = job.clone();
                let extra = extra.clone();
                let stop = stop_watch.clone();
                let pool: Vec<String> = placement
                    .pool_stages()
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                tokio::spawn(async move {
                    loop {
                        let workers = job.workers_of_run(run).await.unwrap_or_default();
                        let sums = per_stage(&workers);
                        let mut lines = vec![format!(
                            "{:<18} {:>10} {:>10} {:>9} {:>7} {:>7}",
                            "remote stage", "in", "rate/s", "dead", "backlog", "workers"
                        )];
                        for name in &pool {
                            let (_, st) = sums.get(name).cloned().unwrap_or_default();
                            let live_workers = workers
                                .iter()
                                .filter(|w| !w.stopped && w.stages.contains_key(name))
                                .count();
                            let backlog = job.inbox_counts(name).await.map_or(0, |c| c.pending);
                            lines.push(format!(
                                "{name:<18} {:>10} {:>10.0} {:>9} {:>7} {:>7}",
                                st.records_in, st.rate, st.dead, backlog, live_workers
                            ));
                        }
                        *extra.lock().unwrap_or_else(|p| p.into_inner()) = lines;
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                })
            });
            let outcome = build::run(built, live, live.then_some(extra)).await;
            // The sources are gone with the pipeline: the writes they
            // queued go out before the job's state says how the run ended.
            drop(shared_state);
            state_writer.close().await;
            on_lost.abort();
            stop_watch.cancel();
            if let Some(v) = remote_view {
                let _ = v.await;
            }
            let swept = watch.await.ok().and_then(Result::ok).unwrap_or(0);
            let (report, error) = match outcome {
                Ok(report) => (report, None),
                Err(e) => (*e.report, Some(e.error)),
            };
            let _ = own_stats.await;
            let _ = job.put_worker(&coordinator_stats(&counters, run, true)).await;
            let workers = final_worker_stats(&job, run).await;
            let dead = copy_dead_letters(&job, &dead_letter_path).await;
            let finished = error.is_none() && !report.cancelled;
            let still_ours = lease.held().await;
            if still_ours && let Ok(Some(mut state)) = job.state().await {
                state.status = if finished {
                    Status::Done
                } else if error.is_some() {
                    Status::Failed
                } else {
                    Status::Running
                };
                state.sources_done = finished || inputs_done;
                state.updated_ms = now_ms();
                state.summary =
                    finished.then(|| format!("finished in {:.1} s", report.elapsed.as_secs_f64()));
                let _ = job.put_state(&state).await;
            }
            let exact = exact_figures(
                &job,
                &placement,
                dead.as_deref().unwrap_or_default(),
            )
            .await;
            let remote = remote_table(&placement, &workers, &exact);
            match format {
                Some(ReportFormat::Json) => {
                    let mut v = crate::report::json(&report, error.as_ref());
                    v["job"] = job.names.job().into();
                    v["remote"] = remote_json(&placement, &workers, &exact);
                    v["broker_dead_letters"] = dead.as_ref().map_or(0, Vec::len).into();
                    v["swept"] = swept.into();
                    out!("{v}");
                }
                None => {
                    eprintln!("{report}");
                    eprintln!("{remote}");
                }
            }
            match &dead {
                Ok(d) if !d.is_empty() => eprintln!(
                    "dead letters: {} (weir dlq list --broker {url} --job {}; copied to {})",
                    d.len(),
                    job.names.job(),
                    dead_letter_path.display()
                ),
                Ok(_) => {}
                Err(e) => eprintln!("warning: could not copy the dead letters: {e}"),
            }
            if report.cancelled && error.is_none() {
                eprintln!(
                    "interrupted: the job stays on the broker; run the same command again to resume it"
                );
            }
            if !still_ours {
                eprintln!("error: this coordinator lost the job's lease to another; the job's state is left to it");
                return Ok(ExitCode::from(1));
            }
            match error {
                None => Ok(crate::signals::exit_code().map_or(ExitCode::SUCCESS, ExitCode::from)),
                Some(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        .await;
        lease.release().await;
        result
    })
}

/// The coordinator's inbox readers as a worker's statistics (worker
/// `coordinator`): records taken from each inbox it reads.
fn coordinator_stats(
    counters: &[(String, Arc<weir_nats::consume::ReaderCounters>)],
    run: u64,
    stopped: bool,
) -> WorkerStats {
    use std::sync::atomic::Ordering::Relaxed;
    WorkerStats {
        worker: "coordinator".to_string(),
        concurrency: 1,
        stages: counters
            .iter()
            .map(|(inbox, c)| {
                let stats = weir_nats::job::StageStats {
                    messages: c.messages.load(Relaxed),
                    records_in: c.records.load(Relaxed),
                    ..Default::default()
                };
                (inbox.clone(), stats)
            })
            .collect(),
        updated_ms: now_ms(),
        stopped,
        run,
    }
}

/// The workers' statistics for this run, once each live worker has
/// reported after the job's end (they report every second), or after 3 s.
async fn final_worker_stats(job: &Job, run: u64) -> Vec<WorkerStats> {
    let end = now_ms();
    // Workers report every second; on a loaded machine the report after
    // the end can take several (the wait ends as soon as every worker has
    // reported, so a long bound costs nothing when they are prompt).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Freshness over every worker (one that has not yet reported this
        // run's id may have worked on it), then this run's.
        let workers = job.workers().await.unwrap_or_default();
        let fresh = workers.iter().all(|w| {
            w.stopped || w.updated_ms > end || now_ms().saturating_sub(w.updated_ms) > 5_000
        });
        if fresh || std::time::Instant::now() > deadline {
            return workers.into_iter().filter(|w| w.run == run).collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes the job's dead-letter stream to the dead-letter file (the same
/// place and shape as a local run's); returns the entries.
async fn copy_dead_letters(job: &Job, path: &Path) -> Result<Vec<weir_nats::codec::DlqEntry>> {
    let entries = weir_nats::dlq::list(job).await?;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    for (_, e) in &entries {
        serde_json::to_writer(&mut f, e)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(entries.into_iter().map(|(_, e)| e).collect())
}

/// Worker statistics summed per stage: (workers that took part, totals).
fn per_stage(workers: &[WorkerStats]) -> BTreeMap<String, (usize, weir_nats::job::StageStats)> {
    let mut out: BTreeMap<String, (usize, weir_nats::job::StageStats)> = BTreeMap::new();
    for w in workers {
        for (name, s) in &w.stages {
            let e = out.entry(name.clone()).or_default();
            if s.messages > 0 {
                e.0 += 1;
            }
            e.1.messages += s.messages;
            e.1.records_in += s.records_in;
            e.1.records_out += s.records_out;
            e.1.dead += s.dead;
            e.1.redelivered += s.redelivered;
            e.1.retried += s.retried;
            e.1.in_flight += s.in_flight;
            if !w.stopped && now_ms().saturating_sub(w.updated_ms) < 5_000 {
                e.1.rate += s.rate;
            }
            if s.last_error.is_some() {
                e.1.last_error.clone_from(&s.last_error);
            }
        }
    }
    out
}

/// What the broker knows exactly of one remote stage: messages settled
/// (acknowledged and deleted from its work queue, or swept) and records
/// dead-lettered by it (its entries in the dead-letter stream, each once).
#[derive(Debug, Default, Clone, Copy)]
struct Exact {
    settled: u64,
    dead: u64,
}

/// [`Exact`] figures of every remote stage.
async fn exact_figures(
    job: &Job,
    p: &Placement,
    dead: &[weir_nats::codec::DlqEntry],
) -> BTreeMap<String, Exact> {
    let mut out = BTreeMap::new();
    for name in p.pool_stages() {
        let settled = job.inbox_counts(name).await.map_or(0, |c| c.done());
        let dead = dead.iter().filter(|e| e.stage == name).count() as u64;
        out.insert(name.to_string(), Exact { settled, dead });
    }
    out
}

/// The footnote of the remote tables: which figures are exact.
const REMOTE_NOTE: &str = "(messages settled and dead-lettered are counted on the broker; records in/out (~) are the workers' own reports: a killed worker's last second is missing and a redelivered message is counted again)";

fn remote_table(p: &Placement, workers: &[WorkerStats], exact: &BTreeMap<String, Exact>) -> String {
    let sums = per_stage(workers);
    let mut s = String::from(
        "remote stage          workers   settled  records in ~      out ~  dead-lettered  redelivered  retried\n",
    );
    for name in p.pool_stages() {
        let (n, st) = sums.get(name).cloned().unwrap_or_default();
        let e = exact.get(name).copied().unwrap_or_default();
        s.push_str(&format!(
            "{name:<21} {n:>7} {:>9} {:>13} {:>10} {:>14} {:>12} {:>8}\n",
            e.settled, st.records_in, st.records_out, e.dead, st.redelivered, st.retried
        ));
    }
    s.push_str(REMOTE_NOTE);
    s.push('\n');
    s
}

fn remote_json(
    p: &Placement,
    workers: &[WorkerStats],
    exact: &BTreeMap<String, Exact>,
) -> serde_json::Value {
    let sums = per_stage(workers);
    let mut m = serde_json::Map::new();
    for name in p.pool_stages() {
        let (n, st) = sums.get(name).cloned().unwrap_or_default();
        let e = exact.get(name).copied().unwrap_or_default();
        m.insert(
            name.to_string(),
            serde_json::json!({
                "workers": n,
                "messages": st.messages,
                "messages_settled": e.settled,
                "in": st.records_in,
                "out": st.records_out,
                "records_estimated": true,
                "dead_lettered": e.dead,
                "redelivered": st.redelivered,
                "retried": st.retried,
            }),
        );
    }
    serde_json::Value::Object(m)
}

/// The remote stages this worker hosts, built from the pipeline file.
fn remote_stages(
    l: &Loaded,
    placement: &Placement,
    only: Option<&[String]>,
) -> std::result::Result<Vec<RemoteStage>, String> {
    let pool = placement.pool_stages();
    if let Some(only) = only {
        for s in only {
            if !pool.contains(s.as_str()) {
                return Err(format!(
                    "--stages: '{s}' is not a remote stage of {} (remote stages: {})",
                    l.name,
                    pool.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    let ctx = ProcessorContext {
        base_dir: l.base_dir.clone(),
        stage: String::new(),
    };
    let mut out = Vec::new();
    let mut diags = Vec::new();
    for s in &l.file.stages {
        let e = &s.value;
        let name = e.name.value.as_str();
        if !pool.contains(name) || only.is_some_and(|o| !o.iter().any(|x| x == name)) {
            continue;
        }
        let (stage, _) = match build::stage(e, &ctx) {
            Ok(c) => c,
            Err(d) => {
                diags.extend(d);
                continue;
            }
        };
        let retry_errors = matches!(e.on_error, Some(OnError::Retry { .. } | OnError::Fail));
        let record_fn = stage
            .record_fn()
            .expect("placement keeps stateful stages in the coordinator");
        let process: Arc<weir_nats::worker::StageFn> =
            Arc::new(move |r| record_fn(r).map_err(Into::into));
        let ports = fingerprint::ports(l, placement, name);
        out.push(RemoteStage {
            name: name.to_string(),
            ports,
            process,
            retry_errors,
        });
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(l.render(&diags))
    }
}

/// `weir worker FILE --broker URL`.
pub fn run_worker(
    l: &Loaded,
    url: &str,
    job: Option<String>,
    only: Option<Vec<String>>,
    concurrency: usize,
) -> Result<ExitCode> {
    let placement = match place(l) {
        Ok(p) => p,
        Err(text) => {
            eprintln!("{text}");
            return Ok(ExitCode::from(2));
        }
    };
    let print = fingerprint::of(l, &placement, only.as_deref());
    let stages = match remote_stages(l, &placement, only.as_deref()) {
        Ok(s) => s,
        Err(text) => {
            eprintln!("{text}");
            return Ok(ExitCode::from(2));
        }
    };
    if concurrency == 0 {
        bail!("--workers must be at least 1");
    }
    let job_name = job_name(&l.path, job);
    let rt = crate::runtime::build()?;
    rt.block_on(async {
        let broker = Broker::connect(url, CONNECT_TIMEOUT).await?;
        let job = Job::open(broker, &job_name, placement.settings.clone()).await?;
        let id = format!("{}-{}", weir_nats::lease::hostname(), std::process::id());
        eprintln!(
            "worker {id}: job '{}', stages {}, {concurrency} at a time each; SIGTERM or Ctrl-C drains",
            job.names.job(),
            stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        );
        let cancel = CancellationToken::new();
        let signals = tokio::spawn(crate::signals::drain_on_signal(
            cancel.clone(),
            "draining: finishing the messages in hand",
        ));
        let stats = weir_nats::worker::run(
            job,
            stages,
            WorkerOptions {
                id: id.clone(),
                concurrency,
                report_every: Duration::from_secs(1),
                fingerprint: Some(print),
                exit_on_stuck: true,
            },
            cancel,
        )
        .await;
        signals.abort();
        let stats = match stats {
            Ok(s) => s,
            Err(e @ weir_nats::BrokerError::Mismatch(_)) => {
                eprintln!("error: worker {id}: {e}");
                return Ok(ExitCode::from(2));
            }
            Err(e) => return Err(e.into()),
        };
        for (name, s) in &stats.stages {
            eprintln!(
                "worker {id}: {name}: {} messages ({} redelivered, {} retried), {} records in, {} out, {} dead-lettered",
                s.messages, s.redelivered, s.retried, s.records_in, s.records_out, s.dead
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `weir status --broker URL [--job J]`.
pub fn status(url: &str, only: Option<String>) -> Result<ExitCode> {
    let rt = crate::runtime::build()?;
    rt.block_on(async {
        let broker = Broker::connect(url, CONNECT_TIMEOUT).await?;
        let jobs = Job::list(&broker).await?;
        let jobs: Vec<_> = jobs
            .into_iter()
            .filter(|(j, _)| {
                only.as_ref()
                    .is_none_or(|o| weir_nats::job::sanitize(o) == *j)
            })
            .collect();
        if jobs.is_empty() {
            return Ok(match only {
                Some(j) => {
                    eprintln!("error: no job '{j}' on {url}");
                    ExitCode::from(1)
                }
                None => {
                    out!("no jobs on {url}");
                    ExitCode::SUCCESS
                }
            });
        }
        for (name, state) in jobs {
            let job = Job::open(broker.clone(), &name, EdgeSettings::default()).await?;
            let age = Duration::from_millis(now_ms().saturating_sub(state.started_ms));
            out!(
                "job {name}: {:?} for {}s ({})",
                state.status,
                age.as_secs(),
                state.pipeline
            );
            let workers = job
                .workers_of_run(state.started_ms)
                .await
                .unwrap_or_default();
            let sums = per_stage(&workers);
            let live = |stage: &str| {
                workers
                    .iter()
                    .filter(|w| {
                        !w.stopped
                            && now_ms().saturating_sub(w.updated_ms) < 5_000
                            && w.stages.contains_key(stage)
                    })
                    .count()
            };
            out!(
                "  {:<20} {:<11} {:>8} {:>9} {:>9} {:>8} {:>11} {:>11} {:>6} {:>11} {:>9}",
                "inbox",
                "read by",
                "backlog",
                "in flight",
                "done",
                "workers",
                "records in",
                "records out",
                "dead",
                "redelivered",
                "rate/s"
            );
            for spec in &state.inboxes {
                let c = job.inbox_counts(&spec.name).await.unwrap_or_default();
                let (_, st) = sums.get(&spec.name).cloned().unwrap_or_default();
                out!(
                    "  {:<20} {:<11} {:>8} {:>9} {:>9} {:>8} {:>11} {:>11} {:>6} {:>11} {:>9.0}",
                    spec.name,
                    if spec.pool { "pool" } else { "coordinator" },
                    c.pending,
                    c.ack_pending,
                    c.done(),
                    if spec.pool {
                        live(&spec.name).to_string()
                    } else {
                        "-".to_string()
                    },
                    st.records_in,
                    st.records_out,
                    st.dead,
                    st.redelivered,
                    st.rate,
                );
                if let Some(e) = &st.last_error {
                    out!("    last retried error: {e}");
                }
            }
            out!(
                "  (backlog, in flight and done count messages of up to {} records)",
                state.records_per_message
            );
            out!("  dead letters: {}", job.dlq_count().await.unwrap_or(0));
            if let Some(s) = &state.summary {
                out!("  {s}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `weir dlq list`.
pub fn dlq_list(url: &str, job: &str, json: bool) -> Result<ExitCode> {
    let rt = crate::runtime::build()?;
    rt.block_on(async {
        let broker = Broker::connect(url, CONNECT_TIMEOUT).await?;
        let job = Job::open(broker, job, EdgeSettings::default()).await?;
        let entries = weir_nats::dlq::list(&job).await?;
        for (seq, e) in &entries {
            if json {
                let mut v = serde_json::to_value(e)?;
                v["seq"] = (*seq).into();
                out!("{v}");
            } else {
                out!(
                    "#{seq} {} at {}: {}",
                    e.stage,
                    e.position.as_deref().unwrap_or("?"),
                    e.error
                );
            }
        }
        eprintln!(
            "{} dead letters in job '{}'",
            entries.len(),
            job.names.job()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// `weir dlq replay`.
pub fn dlq_replay(url: &str, job: &str, seqs: &[u64]) -> Result<ExitCode> {
    let rt = crate::runtime::build()?;
    rt.block_on(async {
        let broker = Broker::connect(url, CONNECT_TIMEOUT).await?;
        let job = Job::open(broker, job, EdgeSettings::default()).await?;
        // Not while a coordinator runs the job (it could finish the job
        // before the replayed records arrive, and leave them stranded).
        let lease = Lease::acquire(&job, "weir dlq replay").await?;
        let r = weir_nats::dlq::replay(&job, seqs).await;
        lease.release().await;
        let r = r?;
        for (seq, why) in &r.skipped {
            eprintln!("#{seq} not replayed: {why}");
        }
        eprintln!(
            "{} records put back into their stage's inbox; `weir run PIPELINE --broker {url}` finishes the job",
            r.replayed
        );
        Ok(ExitCode::SUCCESS)
    })
}
