//! `weir`: runs declarative YAML pipelines on the weir engine.
//!
//! ```text
//! weir run PIPELINE.yaml [--report json]   run it; live view on a terminal
//! weir check PIPELINE.yaml                 validate without running
//! weir list [KIND]                         every component
//! weir explain COMPONENT                   a component's options and example
//! weir gen events --seed 42 --lines N      benchmark data (B4)
//! weir gen orders --scale 20 -o DIR        the main job's data, scaled (B6)
//! weir demo prices | site                  local services for the service examples
//!
//! weir run PIPELINE.yaml --broker nats://HOST:PORT    coordinate a distributed job
//! weir worker PIPELINE.yaml --broker nats://HOST:PORT join its worker pools
//! weir status --broker nats://HOST:PORT              every job, per stage
//! weir dlq list|replay --broker URL --job JOB        the job's dead letters
//! ```

// Printing is this binary's job.
#![allow(clippy::print_stdout)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

mod build;
mod config;
mod demo;
mod diag;
mod distributed;
mod edges;
mod explain;
mod graph;
mod progress;
mod report;
mod runtime;
mod signals;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Run declarative data pipelines on the weir engine."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline file.
    Run {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Print the run report as JSON on stdout when the run ends.
        #[arg(long, value_enum)]
        report: Option<ReportFormat>,
        /// Never draw the live view (it is off anyway when stderr is not a terminal).
        #[arg(long)]
        quiet: bool,
        /// Resume a run that was stopped or killed: skip the input lines it
        /// had finished (see README, "Resume").
        #[arg(long)]
        resume: bool,
        /// Keep no checkpoint (slightly faster; such a run cannot be resumed).
        #[arg(long, conflicts_with = "resume")]
        no_checkpoint: bool,
        /// Where checkpoints are kept (default: `.weir/` beside the pipeline file).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Run as a distributed job on this NATS JetStream server
        /// (nats://HOST:PORT): remote stages run in `weir worker` processes.
        #[arg(long, conflicts_with_all = ["resume", "no_checkpoint", "state_dir"])]
        broker: Option<String>,
        /// The job's name on the broker (default: the file name without extension).
        #[arg(long, requires = "broker")]
        job: Option<String>,
        /// Start the job over: delete what an unfinished (running or
        /// failed) job of this name left on the broker instead of resuming it.
        #[arg(long, requires = "broker")]
        fresh: bool,
    },
    /// Join the worker pools of a distributed job's remote stages; runs until stopped (SIGTERM drains).
    Worker {
        /// The pipeline file (YAML), the same as the coordinator's.
        pipeline: PathBuf,
        /// The NATS JetStream server (nats://HOST:PORT).
        #[arg(long)]
        broker: String,
        /// The job's name (default: the file name without extension).
        #[arg(long)]
        job: Option<String>,
        /// Only these remote stages (default: all of them).
        #[arg(long, value_delimiter = ',')]
        stages: Option<Vec<String>>,
        /// Messages processed at once per stage.
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Show every job on a broker: per stage, backlog, in flight, done, dead letters, workers, rate.
    Status {
        /// The NATS JetStream server (nats://HOST:PORT).
        #[arg(long)]
        broker: String,
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
    },
    /// A distributed job's dead letters.
    Dlq {
        #[command(subcommand)]
        what: Dlq,
    },
    /// Check a pipeline file without running it: reports every problem with its line and column.
    Check {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
    },
    /// List the components (sources, processors, sinks).
    List {
        /// Only this kind: source, processor or sink.
        kind: Option<String>,
    },
    /// Explain a component: its options, defaults and an example.
    Explain {
        /// The component's name (see `weir list`).
        component: String,
    },
    /// Generate data sets.
    Gen {
        #[command(subcommand)]
        what: Gen,
    },
    /// Local stand-ins for the services the examples call; serve until Ctrl-C.
    Demo {
        #[command(subcommand)]
        what: Demo,
    },
}

#[derive(Subcommand)]
enum Demo {
    /// The price services of examples/pipelines/prices.yaml: fast, slow
    /// (a latency tail) and flaky (503s), on PORT, PORT+1 and PORT+2.
    Prices {
        /// The first port (0: any free ports).
        #[arg(long, default_value_t = 18081)]
        port: u16,
    },
    /// The web site examples/pipelines/crawler.yaml crawls: generated
    /// pages with cycles and broken links.
    Site {
        /// The port (0: any free port).
        #[arg(long, default_value_t = 18090)]
        port: u16,
        /// How many pages.
        #[arg(long, default_value_t = 1000)]
        pages: u64,
    },
}

#[derive(Subcommand)]
enum Gen {
    /// The B4 benchmark events (JSON lines, ~1% malformed), byte-identical on every machine.
    Events {
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 1_000_000)]
        lines: u64,
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// Output file (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// The main job's three input files (examples/pipelines/data), N times
    /// larger, deterministic; prints what orders.yaml must make of them.
    Orders {
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// How many times the bundled data's size (1 to 124: order ids
        /// have six digits).
        #[arg(long, default_value_t = 1)]
        scale: u64,
        /// The directory to write into.
        #[arg(long, short)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum Dlq {
    /// List the dead letters (stage, position, reason).
    List {
        /// The NATS JetStream server.
        #[arg(long)]
        broker: String,
        /// The job.
        #[arg(long)]
        job: String,
        /// One JSON object per line, with the record.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back into the inbox of the stage that rejected them.
    Replay {
        /// The NATS JetStream server.
        #[arg(long)]
        broker: String,
        /// The job.
        #[arg(long)]
        job: String,
        /// Only these entries (the numbers `list` shows); default all.
        #[arg(long, value_delimiter = ',')]
        seq: Vec<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ReportFormat {
    Json,
}

/// Warnings of the libraries (a broker that stops answering, say) on
/// stderr; `WEIR_LOG=info|debug|trace` shows more.
fn init_logging() {
    let level = match std::env::var("WEIR_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("info") => tracing::Level::INFO,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::WARN,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// mimalloc, not glibc's malloc, for the binary (the library leaves the
/// choice to its users): a coordinator holding many small long-lived
/// allocations (one per held message) among short-lived large ones (the
/// messages' payloads) kept glibc's freed memory from going back (peak RSS
/// 1.25x from 1M to 5M records); measured in BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            pipeline,
            report,
            quiet,
            resume,
            no_checkpoint,
            state_dir,
            broker,
            job,
            fresh,
        } => {
            if let Some(url) = broker {
                let live = !quiet && std::io::stderr().is_terminal();
                return finish(read(&pipeline).and_then(|l| match l {
                    Ok(l) => distributed::run_coordinator(&l, &url, job, report, live, fresh),
                    Err(text) => {
                        eprintln!("{text}");
                        Ok(ExitCode::from(2))
                    }
                }));
            }
            let mode = build::Mode::Run {
                resume,
                checkpoint: !no_checkpoint,
                state_dir,
                shared_state: None,
            };
            run(&pipeline, report, quiet, mode)
        }
        Command::Check { pipeline } => check(&pipeline),
        Command::List { kind } => explain::list(kind.as_deref()).map(|()| ExitCode::SUCCESS),
        Command::Explain { component } => explain::explain(&component).map(|()| ExitCode::SUCCESS),
        Command::Gen { what } => gen_data(what).map(|()| ExitCode::SUCCESS),
        Command::Demo { what } => match what {
            Demo::Prices { port } => demo::prices(port).and_then(|s| {
                let all: Vec<(&str, &weir_testkit::http::MockHttp)> =
                    s.iter().map(|(n, m)| (*n, m)).collect();
                demo::serve("prices", &all)
            }),
            Demo::Site { port, pages } => {
                demo::site(port, pages).and_then(|s| demo::serve("site", &[("pages", &s)]))
            }
        }
        .map(|()| ExitCode::SUCCESS),
        Command::Worker {
            pipeline,
            broker,
            job,
            stages,
            workers,
        } => read(&pipeline).and_then(|l| match l {
            Ok(l) => distributed::run_worker(&l, &broker, job, stages, workers),
            Err(text) => {
                eprintln!("{text}");
                Ok(ExitCode::from(2))
            }
        }),
        Command::Status { broker, job } => distributed::status(&broker, job),
        Command::Dlq { what } => match what {
            Dlq::List { broker, job, json } => distributed::dlq_list(&broker, &job, json),
            Dlq::Replay { broker, job, seq } => distributed::dlq_replay(&broker, &job, &seq),
        },
    };
    finish(result)
}

fn finish(result: Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A parsed and wired pipeline file.
pub(crate) struct Loaded {
    /// The path as given.
    pub path: PathBuf,
    /// The path for messages.
    pub name: String,
    /// The file's text, for rendering diagnostics.
    pub source: String,
    pub file: config::PipelineFile,
    pub wiring: graph::Wiring,
    /// Paths in the file are relative to it.
    pub base_dir: PathBuf,
}

impl Loaded {
    /// Diagnostics rendered against the file's text.
    pub fn render(&self, diags: &[diag::Diagnostic]) -> String {
        diag::render(&self.name, &self.source, diags)
    }
}

/// Reads, parses and wires a pipeline file: `Err` inside carries the
/// rendered diagnostics.
fn read(path: &Path) -> Result<std::result::Result<Loaded, String>> {
    let source =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.display().to_string();
    // Empty for a file in the current directory, so that paths shown to
    // the user stay as they wrote them.
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let file = match config::parse(&source) {
        Ok(f) => f,
        Err(d) => return Ok(Err(diag::render(&name, &source, &[d]))),
    };
    let wiring = match graph::check(&file, &base_dir, path) {
        Ok(w) => w,
        Err(diags) => return Ok(Err(diag::render(&name, &source, &diags))),
    };
    Ok(Ok(Loaded {
        path: path.to_path_buf(),
        name,
        source,
        file,
        wiring,
        base_dir,
    }))
}

/// Reads and checks a pipeline file: `Err` carries the rendered diagnostics.
fn load(path: &Path, mode: build::Mode) -> Result<std::result::Result<build::Built, String>> {
    let l = match read(path)? {
        Ok(l) => l,
        Err(text) => return Ok(Err(text)),
    };
    Ok(build::build(
        &l.file,
        &l.wiring,
        path,
        &l.base_dir,
        mode,
        &mut edges::LocalEdges::new(&l.wiring),
    )
    .map_err(|diags| l.render(&diags)))
}

fn check(path: &Path) -> Result<ExitCode> {
    // The distributed settings too, so that a file is checked once for
    // both modes.
    if let Ok(l) = read(path)?
        && (l.file.broker.is_some() || l.file.stages.iter().any(|s| s.value.remote.is_some()))
        && let Err(diags) = distributed::placement::Placement::new(&l.file, &l.wiring)
    {
        eprintln!("{}", l.render(&diags));
        return Ok(ExitCode::from(2));
    }
    match load(path, build::Mode::Check)? {
        Ok(built) => {
            match &built.description {
                Some(d) => println!("{}: ok ({d})", path.display()),
                None => println!("{}: ok", path.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(text) => {
            eprintln!("{text}");
            Ok(ExitCode::from(2))
        }
    }
}

fn run(
    path: &Path,
    format: Option<ReportFormat>,
    quiet: bool,
    mode: build::Mode,
) -> Result<ExitCode> {
    let built = match load(path, mode)? {
        Ok(b) => b,
        Err(text) => {
            eprintln!("{text}");
            return Ok(ExitCode::from(2));
        }
    };
    let rt = runtime::build()?;
    let live = !quiet && std::io::stderr().is_terminal();
    let dead_letter_path = built.dead_letter_path.clone();
    let outcome = rt.block_on(build::run(built, live, None));
    let (report, error) = match outcome {
        Ok(report) => (report, None),
        Err(e) => (*e.report, Some(e.error)),
    };
    match format {
        Some(ReportFormat::Json) => println!("{}", report::json(&report, error.as_ref())),
        None => {
            eprintln!("{report}");
            if report.dead_lettered() > 0 {
                eprintln!("dead letters: {}", dead_letter_path.display());
            }
        }
    }
    match error {
        None => Ok(signals::exit_code().map_or(ExitCode::SUCCESS, ExitCode::from)),
        Some(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn gen_data(what: Gen) -> Result<()> {
    match what {
        Gen::Events {
            seed,
            lines,
            users,
            output,
        } => {
            let bytes = match output {
                Some(path) => {
                    let f = std::fs::File::create(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                    let n =
                        weir_connectors::sources::events::write_events(seed, lines, users, &mut w)?;
                    std::io::Write::flush(&mut w)?;
                    n
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
                    let n =
                        weir_connectors::sources::events::write_events(seed, lines, users, &mut w)?;
                    std::io::Write::flush(&mut w)?;
                    n
                }
            };
            eprintln!("{lines} lines, {bytes} bytes");
            Ok(())
        }
        Gen::Orders {
            seed,
            scale,
            output,
        } => {
            if !(1..=124).contains(&scale) {
                anyhow::bail!("--scale must be 1 to 124 (order ids have six digits)");
            }
            let expected = weir_connectors::sources::orders::write_orders(seed, scale, &output)
                .with_context(|| format!("cannot write into {}", output.display()))?;
            let text = serde_json::to_string(&expected)?;
            std::io::Write::write_all(&mut std::io::stdout(), format!("{text}\n").as_bytes())?;
            Ok(())
        }
    }
}
