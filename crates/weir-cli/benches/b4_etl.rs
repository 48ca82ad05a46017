//! B4: an ETL job on 1M and 5M JSON event lines.
//!
//! Input: `weir gen events --seed 42 --lines N --users 10000` (generated
//! into `target/b4/data/`, reused while its sha256 matches). Each line is
//! parsed and dead-lettered with reason `parse_error` (not a JSON object of
//! the event shape), `missing_field` (id, user, ts, kind or amount absent or
//! null) or `negative_amount` (amount < 0), checked in that order; valid
//! events get `kind` lowercased and `cents = round(amount * 100)` (f64,
//! half away from zero), and are aggregated per user (count, integer cents).
//! The rules in full are in `b4/rules.rs`; the YAML variant applies the
//! same ones (test `b4_rules_agree`).
//!
//! Variants, each run in a child process so that its peak RSS is its own:
//!
//! * **baseline**: a single-threaded loop (read lines, serde_json into a
//!   struct, check, transform, `HashMap` per user);
//! * **typed**: the same job as a weir library pipeline (file source, a
//!   `try_map` decode/check/transform stage on 2 workers with the
//!   dead-letter policy, `aggregate` per user, `fold` sink); peak RSS from
//!   the child's own `/proc/self/status` (VmHWM);
//! * **yaml**: `examples/pipelines/b4.yaml` run by the release `weir`
//!   binary (`weir run --report json`), peak RSS of that process from
//!   `/usr/bin/time` (wait4). Counts are checked from the report, the
//!   dead-letter file and the aggregate written by the file sink.
//!
//! Every run checks the expected counts and cents total (a wrong result
//! panics). Variants are interleaved round by round; medians are reported.
//! Throughput is input lines per second of wall time.
//!
//! Run: `cargo bench -p weir-cli --bench b4_etl`
//! (`B4_ROUNDS=n` sets the number of 1M rounds, default 3; 5M runs once.)
#![allow(clippy::print_stdout, missing_docs)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use weir::{DeadLetter, ErrorPolicy, Pipeline, Window, fold, from_try_iter};

#[path = "b4/rules.rs"]
mod rules;
use rules::{Clean, Reject, decode};

const SEED: u64 = 42;
const USERS: u64 = 10_000;
/// Target: typed library pipeline, input lines per second.
const TYPED_TARGET: f64 = 1.5e6;
/// Target: YAML pipeline run by the `weir` binary, input lines per second.
const YAML_TARGET: f64 = 7e5;
/// Peak RSS at 5M may exceed the 1M figure by this factor and still count as
/// flat (allocator and timing noise).
const FLAT_RSS: f64 = 1.25;

/// What a correct run produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expect {
    valid: u64,
    parse_error: u64,
    missing_field: u64,
    negative_amount: u64,
    users: u64,
    cents: i64,
}

struct Size {
    name: &'static str,
    lines: u64,
    bytes: u64,
    sha256: &'static str,
    expect: Expect,
}

const SIZES: [Size; 2] = [
    Size {
        name: "1M",
        lines: 1_000_000,
        bytes: 100_168_501,
        sha256: "7d65043f016fb52940070302f02dcb2668696246ab9439d6e73358e4eef3ff17",
        expect: Expect {
            valid: 990_068,
            parse_error: 3_829,
            missing_field: 3_123,
            negative_amount: 2_980,
            users: 10_000,
            cents: 49_494_907_009,
        },
    },
    Size {
        name: "5M",
        lines: 5_000_000,
        bytes: 505_234_617,
        sha256: "8de442bdb4c3db7c9014a09410d5a994c54b7e14aa683759341f3f7e53e5eea3",
        // Computed by the baseline; the typed and YAML pipelines agree.
        expect: Expect {
            valid: 4_950_280,
            parse_error: 19_651,
            missing_field: 15_228,
            negative_amount: 14_841,
            users: 10_000,
            cents: 247_584_142_170,
        },
    },
];

// ---------------------------------------------------------------- the job

/// What a run counted; compared with [`Expect`].
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    valid: u64,
    parse_error: u64,
    missing_field: u64,
    negative_amount: u64,
    users: u64,
    cents: i64,
}

impl Counts {
    fn as_expect(&self) -> Expect {
        Expect {
            valid: self.valid,
            parse_error: self.parse_error,
            missing_field: self.missing_field,
            negative_amount: self.negative_amount,
            users: self.users,
            cents: self.cents,
        }
    }

    fn reject(&mut self, r: Reject) {
        match r {
            Reject::ParseError => self.parse_error += 1,
            Reject::MissingField => self.missing_field += 1,
            Reject::NegativeAmount => self.negative_amount += 1,
        }
    }
}

fn open(path: &Path) -> BufReader<File> {
    BufReader::with_capacity(1 << 20, File::open(path).expect("open input"))
}

/// The baseline: one thread, no engine.
fn baseline(path: &Path) -> Counts {
    let mut reader = open(path);
    let mut line = String::new();
    let mut c = Counts::default();
    let mut per_user: HashMap<Arc<str>, (u64, i64)> = HashMap::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("read") == 0 {
            break;
        }
        let text = line.strip_suffix('\n').unwrap_or(&line);
        match decode(text) {
            Ok(e) => {
                c.valid += 1;
                match per_user.get_mut(&e.user) {
                    Some(t) => {
                        t.0 += 1;
                        t.1 += e.cents;
                    }
                    None => {
                        per_user.insert(e.user, (1, e.cents));
                    }
                }
            }
            Err(r) => c.reject(r),
        }
    }
    c.users = per_user.len() as u64;
    c.cents = per_user.values().map(|t| t.1).sum();
    c
}

/// Per-user totals in the typed pipeline.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    count: u64,
    cents: i64,
}

/// The typed library pipeline.
async fn typed(path: PathBuf) -> Counts {
    let p = Pipeline::new();
    // Dead letters counted by reason (there are ~50k at 5M lines: more than
    // the report keeps by default).
    let rejected = p.dead_letter_sink(fold([0u64; 3], |mut n, d: DeadLetter| {
        match d.error.as_str() {
            "parse_error" => n[0] += 1,
            "missing_field" => n[1] += 1,
            "negative_amount" => n[2] += 1,
            other => panic!("unexpected dead letter: {other}"),
        }
        n
    }));
    let totals = p
        .source("read", from_try_iter(open(&path).lines()))
        .try_map("decode", |line: &String| decode(line))
        .workers(2)
        .on_error(ErrorPolicy::DeadLetter)
        .aggregate(
            "per-user",
            |e: &Clean| e.user.clone(),
            |_| Totals::default(),
            |t, e| {
                t.count += 1;
                t.cents += e.cents;
            },
            Window::All,
        )
        .sink(
            "totals",
            fold(Counts::default(), |mut c, (_, t): (Arc<str>, Totals)| {
                c.users += 1;
                c.valid += t.count;
                c.cents += t.cents;
                c
            }),
        );
    let report = p.run().await.expect("typed pipeline runs");
    if std::env::var_os("B4_REPORT").is_some() {
        eprintln!("{report}");
    }
    let mut c = totals.take().expect("totals");
    let [pe, mf, na] = rejected.take().expect("dead letters");
    c.parse_error = pe;
    c.missing_field = mf;
    c.negative_amount = na;
    let decode = report.stage("decode").expect("decode stage");
    assert_eq!(decode.dead_lettered, pe + mf + na, "report agrees");
    c
}

// ------------------------------------------------- child processes, RSS

/// Peak resident set of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Runs one variant in this (child) process and prints its result line.
fn child(variant: &str, path: &Path) {
    let t0 = Instant::now();
    let c = match variant {
        "baseline" => baseline(path),
        "typed" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(typed(path.to_path_buf())),
        other => panic!("unknown variant {other}"),
    };
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "B4RESULT {}",
        serde_json::json!({
            "secs": secs, "rss_kib": vm_hwm_kib(),
            "valid": c.valid, "parse_error": c.parse_error, "missing_field": c.missing_field,
            "negative_amount": c.negative_amount, "users": c.users, "cents": c.cents,
        })
    );
}

struct Run {
    secs: f64,
    rss_kib: u64,
    counts: Expect,
}

fn run_child(variant: &str, data: &Path) -> Run {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .arg("--b4-child")
        .arg(variant)
        .arg(data)
        .output()
        .expect("spawn child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{variant} child failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("B4RESULT "))
        .expect("result line");
    let v: serde_json::Value = serde_json::from_str(line).expect("result json");
    let n = |k: &str| v[k].as_u64().expect(k);
    Run {
        secs: v["secs"].as_f64().expect("secs"),
        rss_kib: n("rss_kib"),
        counts: Expect {
            valid: n("valid"),
            parse_error: n("parse_error"),
            missing_field: n("missing_field"),
            negative_amount: n("negative_amount"),
            users: n("users"),
            cents: v["cents"].as_i64().expect("cents"),
        },
    }
}

/// Runs `b4.yaml` with the release `weir` binary in `dir` (which holds the
/// pipeline file and `data/b4-events.jsonl`).
fn run_yaml(dir: &Path) -> Run {
    let rss_file = dir.join("maxrss.txt");
    let t0 = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .arg(dir.join("b4.yaml"))
        .arg("--report")
        .arg("json")
        .arg("--quiet")
        .output()
        .expect("run /usr/bin/time (apt-get install time)");
    let secs = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "weir run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss_kib: u64 = std::fs::read_to_string(&rss_file)
        .expect("maxrss")
        .trim()
        .parse()
        .expect("maxrss is a number");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report json");
    assert_eq!(report["ok"], true, "run failed: {report}");
    let stage_dl = |name: &str| {
        report["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("stage {name} in report"))["dead_lettered"]
            .as_u64()
            .expect("dead_lettered")
    };
    let mut c = Counts {
        parse_error: stage_dl("events/decode") + stage_dl("shape"),
        missing_field: stage_dl("has-fields"),
        negative_amount: stage_dl("non-negative"),
        ..Counts::default()
    };
    assert_eq!(
        report["dead_lettered"].as_u64(),
        Some(c.parse_error + c.missing_field + c.negative_amount),
        "no other dead letters"
    );
    // The dead-letter file says the same, by reason.
    let mut reasons: HashMap<String, u64> = HashMap::new();
    for l in open(&dir.join("out/b4-dead-letters.jsonl")).lines() {
        let v: serde_json::Value = serde_json::from_str(&l.expect("read")).expect("dl json");
        let err = v["error"].as_str().expect("error");
        let reason = err.split(':').next().unwrap_or(err).to_string();
        *reasons.entry(reason).or_default() += 1;
    }
    let by_reason = |r: &str| reasons.get(r).copied().unwrap_or(0);
    assert_eq!(
        (
            by_reason("parse_error"),
            by_reason("missing_field"),
            by_reason("negative_amount"),
            reasons.values().sum::<u64>()
        ),
        (
            c.parse_error,
            c.missing_field,
            c.negative_amount,
            c.parse_error + c.missing_field + c.negative_amount
        ),
        "dead-letter file reasons"
    );
    // The aggregate, as the file sink wrote it.
    for l in open(&dir.join("out/b4-users.jsonl")).lines() {
        let v: serde_json::Value = serde_json::from_str(&l.expect("read")).expect("out json");
        c.users += 1;
        c.valid += v["count"].as_u64().expect("count");
        c.cents += v["amount_cents"]
            .as_i64()
            .expect("amount_cents is an integer");
    }
    Run {
        secs,
        rss_kib,
        counts: c.as_expect(),
    }
}

// ------------------------------------------------------------------ data

fn sha256_of(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )
}

/// The input file of `size`, generated unless a file with the right
/// checksum is already there.
fn ensure_data(dir: &Path, size: &Size) -> PathBuf {
    let path = dir.join(format!("events-{}.jsonl", size.name.to_lowercase()));
    if sha256_of(&path).as_deref() == Some(size.sha256) {
        return path;
    }
    let t0 = Instant::now();
    let tmp = path.with_extension("tmp");
    let f = File::create(&tmp).expect("create data file");
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let bytes = weir_connectors::sources::events::write_events(SEED, size.lines, USERS, &mut w)
        .expect("write events");
    w.flush().expect("flush");
    drop(w);
    std::fs::rename(&tmp, &path).expect("rename data file");
    let sum = sha256_of(&path).expect("hash");
    println!(
        "data {}: generated {} ({bytes} bytes, sha256 {sum}) in {:.1} s",
        size.name,
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(sum, size.sha256, "generator output changed");
    assert_eq!(bytes, size.bytes, "generator output changed");
    path
}

/// A directory holding a verbatim copy of `examples/pipelines/b4.yaml` and
/// `data/b4-events.jsonl` linked to `data`.
fn yaml_dir(root: &Path, work: &Path, size: &Size, data: &Path) -> PathBuf {
    let dir = work.join(format!("run-{}", size.name.to_lowercase()));
    std::fs::create_dir_all(dir.join("data")).expect("mkdir");
    std::fs::copy(root.join("examples/pipelines/b4.yaml"), dir.join("b4.yaml")).expect("copy");
    let link = dir.join("data/b4-events.jsonl");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(data, &link).expect("symlink data");
    dir
}

// ---------------------------------------------------------------- report

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

struct Stats {
    rate: f64,
    rss_kib: u64,
}

fn summarize(runs: &[Run], lines: u64) -> Stats {
    Stats {
        rate: lines as f64 / median(runs.iter().map(|r| r.secs).collect()),
        rss_kib: runs.iter().map(|r| r.rss_kib).max().unwrap_or(0),
    }
}

fn check(variant: &str, size: &Size, got: &Expect, want: &Expect) {
    assert_eq!(got, want, "{variant} at {}: wrong result", size.name);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--b4-child") {
        child(&args[2], Path::new(&args[3]));
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().expect("workspace root");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let work = target.join("b4");
    let data_dir = work.join("data");
    std::fs::create_dir_all(&data_dir).expect("mkdir target/b4/data");
    let rounds_1m: usize = std::env::var("B4_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let started = Instant::now();

    println!(
        "B4 ETL: baseline (1 thread serde_json), typed weir pipeline, YAML via `weir run`; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut table = Vec::new();
    for size in &SIZES {
        let data = ensure_data(&data_dir, size);
        let ydir = yaml_dir(&root, &work, size, &data);
        let rounds = if size.lines > 1_000_000 { 1 } else { rounds_1m };
        let (mut base, mut typ, mut yaml) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let b = run_child("baseline", &data);
            check("baseline", size, &b.counts, &size.expect);
            let t = run_child("typed", &data);
            check("typed", size, &t.counts, &size.expect);
            assert_eq!(t.counts, b.counts, "typed agrees with the baseline");
            let y = run_yaml(&ydir);
            check("yaml", size, &y.counts, &size.expect);
            assert_eq!(y.counts, b.counts, "yaml agrees with the baseline");
            for (name, r) in [("baseline", &b), ("typed", &t), ("yaml", &y)] {
                println!(
                    "  {} round {round}: {name:8} {:7.3} s  {:>10.0} lines/s  peak RSS {:>7.1} MiB",
                    size.name,
                    r.secs,
                    size.lines as f64 / r.secs,
                    r.rss_kib as f64 / 1024.0
                );
            }
            if round == 0 {
                println!("  {} counts: {:?}", size.name, b.counts);
            }
            base.push(b);
            typ.push(t);
            yaml.push(y);
        }
        let b = summarize(&base, size.lines);
        let t = summarize(&typ, size.lines);
        let y = summarize(&yaml, size.lines);
        table.push((size.name, b, t, y));
    }

    println!("\nmedians (lines/s = input lines / wall time; RSS = max over runs):");
    println!(
        "{:<5} {:<10} {:>12} {:>9} {:>12}",
        "size", "variant", "lines/s", "vs base", "peak RSS"
    );
    for (name, b, t, y) in &table {
        for (v, s) in [("baseline", b), ("typed", t), ("yaml", y)] {
            println!(
                "{name:<5} {v:<10} {:>12.0} {:>9.3} {:>8.1} MiB",
                s.rate,
                s.rate / b.rate,
                s.rss_kib as f64 / 1024.0
            );
        }
    }
    let (_, _, t1, y1) = &table[0];
    let (_, _, t5, y5) = &table[1];
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let worst_typed = t1.rate.min(t5.rate);
    let worst_yaml = y1.rate.min(y5.rate);
    println!(
        "\ntarget typed >= {:.1e} lines/s: {} (1M {:.3e}, 5M {:.3e})",
        TYPED_TARGET,
        verdict(worst_typed >= TYPED_TARGET),
        t1.rate,
        t5.rate
    );
    println!(
        "target yaml  >= {:.1e} lines/s: {} (1M {:.3e}, 5M {:.3e})",
        YAML_TARGET,
        verdict(worst_yaml >= YAML_TARGET),
        y1.rate,
        y5.rate
    );
    for (v, a, b) in [("typed", t1, t5), ("yaml", y1, y5)] {
        let ratio = b.rss_kib as f64 / a.rss_kib as f64;
        println!(
            "RSS flat ({v}): {} (5M/1M = {ratio:.2}: {:.1} -> {:.1} MiB)",
            verdict(ratio <= FLAT_RSS),
            a.rss_kib as f64 / 1024.0,
            b.rss_kib as f64 / 1024.0
        );
    }
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
}
