//! `weir`: runs declarative YAML pipelines on the weir engine.
//!
//! ```text
//! weir run PIPELINE.yaml [--report json]   run it; live view on a terminal
//! weir check PIPELINE.yaml                 validate without running
//! weir list [KIND]                         every component
//! weir explain COMPONENT                   a component's options and example
//! weir gen events --seed 42 --lines N      benchmark data (B4)
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
mod diag;
mod graph;
mod progress;
mod registry;
mod report;

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
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            pipeline,
            report,
            quiet,
            resume,
            no_checkpoint,
            state_dir,
        } => {
            let mode = build::Mode::Run {
                resume,
                checkpoint: !no_checkpoint,
                state_dir,
            };
            run(&pipeline, report, quiet, mode)
        }
        Command::Check { pipeline } => check(&pipeline),
        Command::List { kind } => registry::list(kind.as_deref()).map(|()| ExitCode::SUCCESS),
        Command::Explain { component } => registry::explain(&component).map(|()| ExitCode::SUCCESS),
        Command::Gen { what } => gen_data(what).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Reads and checks a pipeline file: `Err` carries the rendered diagnostics.
fn load(path: &Path, mode: build::Mode) -> Result<std::result::Result<build::Built, String>> {
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
    let wiring = match graph::check(&file) {
        Ok(w) => w,
        Err(diags) => return Ok(Err(diag::render(&name, &source, &diags))),
    };
    Ok(build::build(&file, &wiring, path, &base_dir, mode)
        .map_err(|diags| diag::render(&name, &source, &diags)))
}

fn check(path: &Path) -> Result<ExitCode> {
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let live = !quiet && std::io::stderr().is_terminal();
    let dead_letter_path = built.dead_letter_path.clone();
    let outcome = rt.block_on(build::run(built, live));
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
        None => Ok(ExitCode::SUCCESS),
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
    }
}
