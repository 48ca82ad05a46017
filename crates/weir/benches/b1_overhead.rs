//! B1: per-item overhead of the engine.
//!
//! 10,000,000 `u64` (0..10_000_000) through map `x*2+1` -> filter `x%3!=0`
//! -> wrapping sum. Compared, in the same process run, with a plain
//! single-threaded loop (the baseline), weir with default settings, weir
//! with `.workers(2)` on the map, and a hand-written per-item tokio mpsc
//! pipeline. Rounds are interleaved (every variant once per round) so that
//! the noise of a shared machine hits every variant alike; the median of
//! the rounds is reported, every run is printed.
//!
//! Run: `cargo bench -p weir --bench b1_overhead`
#![allow(clippy::print_stdout)]
// The brief spells the predicate `x % 3 != 0`; keep it as written.
#![allow(clippy::manual_is_multiple_of)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use weir::{Pipeline, PipelineOptions, fold, from_iter};

const N: u64 = 10_000_000;
const CHECKSUM: u64 = 66_666_673_333_333;
const ROUNDS: usize = 5;
/// Target: weir default settings reach at least this share of the plain
/// loop's items/s.
const TARGET: f64 = 0.20;

fn plain_loop() -> u64 {
    let n = black_box(N);
    let mut acc = 0u64;
    for x in 0..n {
        let y = x * 2 + 1;
        if y % 3 != 0 {
            acc = acc.wrapping_add(y);
        }
    }
    acc
}

async fn weir_pipeline(map_workers: Option<usize>) -> u64 {
    weir_pipeline_with(map_workers, PipelineOptions::default()).await
}

async fn weir_pipeline_with(map_workers: Option<usize>, options: PipelineOptions) -> u64 {
    let p = Pipeline::with_options(options);
    let mapped = p
        .source("numbers", from_iter(0..N))
        .map("double", |x: u64| x * 2 + 1);
    let mapped = match map_workers {
        Some(n) => mapped.workers(n),
        None => mapped,
    };
    let sum = mapped
        .filter("not-div3", |x: &u64| x % 3 != 0)
        .sink("sum", fold(0u64, |acc, x: u64| acc.wrapping_add(x)));
    let report = p.run().await.expect("pipeline runs");
    let filter = report.stage("not-div3").expect("filter stage in report");
    assert_eq!(filter.received, N, "filter saw every item");
    assert_eq!(
        filter.received,
        filter.ok + filter.filtered,
        "filter balances"
    );
    sum.take().expect("sink finished")
}

/// Diagnostic: the same work as one stage (`flat_map` returning an
/// `Option`), i.e. map and filter fused by hand: one edge and one thread
/// fewer.
async fn weir_fused_by_hand() -> u64 {
    let p = Pipeline::new();
    let sum = p
        .source("numbers", from_iter(0..N))
        .flat_map("double-not-div3", |x: u64| {
            let y = x * 2 + 1;
            (y % 3 != 0).then_some(y)
        })
        .sink("sum", fold(0u64, |acc, x: u64| acc.wrapping_add(x)));
    p.run().await.expect("pipeline runs");
    sum.take().expect("sink finished")
}

/// Diagnostic: the floor of weir's design at its default batch size, by
/// hand: one OS thread per stage (source, map, filter, sum), blocking
/// `std::sync::mpsc::sync_channel`s of 8 batches of 512 plain `u64`s, no
/// envelopes, no metrics, batches reused in place.
fn std_threads_batched() -> u64 {
    use std::sync::mpsc::sync_channel;
    const BATCH: u64 = weir::DEFAULT_BATCH_SIZE as u64;
    const BOUND: usize = weir::DEFAULT_BUFFER;
    let n = black_box(N);
    let (tx1, rx1) = sync_channel::<Vec<u64>>(BOUND);
    let (tx2, rx2) = sync_channel::<Vec<u64>>(BOUND);
    let (tx3, rx3) = sync_channel::<Vec<u64>>(BOUND);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut x = 0;
            while x < n {
                let end = (x + BATCH).min(n);
                tx1.send((x..end).collect()).expect("map alive");
                x = end;
            }
        });
        s.spawn(move || {
            for mut b in rx1 {
                b.iter_mut().for_each(|x| *x = *x * 2 + 1);
                tx2.send(b).expect("filter alive");
            }
        });
        s.spawn(move || {
            for mut b in rx2 {
                b.retain(|x| x % 3 != 0);
                tx3.send(b).expect("sum alive");
            }
        });
        let sum = s.spawn(move || {
            rx3.into_iter()
                .flatten()
                .fold(0u64, |acc, x| acc.wrapping_add(x))
        });
        sum.join().expect("sum thread")
    })
}

/// Per-item hand-written tokio pipeline: four tasks over bounded mpsc
/// channels of 1024, one item per message.
async fn tokio_mpsc() -> u64 {
    use tokio::sync::mpsc;
    let (tx1, mut rx1) = mpsc::channel::<u64>(1024);
    let (tx2, mut rx2) = mpsc::channel::<u64>(1024);
    let (tx3, mut rx3) = mpsc::channel::<u64>(1024);
    let n = black_box(N);
    let source = tokio::spawn(async move {
        for x in 0..n {
            if tx1.send(x).await.is_err() {
                break;
            }
        }
    });
    let map = tokio::spawn(async move {
        while let Some(x) = rx1.recv().await {
            if tx2.send(x * 2 + 1).await.is_err() {
                break;
            }
        }
    });
    let filter = tokio::spawn(async move {
        while let Some(x) = rx2.recv().await {
            if x % 3 != 0 && tx3.send(x).await.is_err() {
                break;
            }
        }
    });
    let sum = tokio::spawn(async move {
        let mut acc = 0u64;
        while let Some(x) = rx3.recv().await {
            acc = acc.wrapping_add(x);
        }
        acc
    });
    source.await.expect("source task");
    map.await.expect("map task");
    filter.await.expect("filter task");
    sum.await.expect("sum task")
}

struct Variant {
    name: &'static str,
    runs: Vec<Duration>,
}

impl Variant {
    fn new(name: &'static str) -> Self {
        Variant {
            name,
            runs: Vec::new(),
        }
    }

    fn record(&mut self, d: Duration, sum: u64) {
        assert_eq!(sum, CHECKSUM, "{}: wrong checksum", self.name);
        self.runs.push(d);
    }

    fn median(&self) -> Duration {
        let mut v = self.runs.clone();
        v.sort();
        v[v.len() / 2]
    }

    fn best(&self) -> Duration {
        *self.runs.iter().min().expect("runs")
    }
}

fn rate(d: Duration) -> f64 {
    N as f64 / d.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut plain = Variant::new("plain loop (baseline)");
    let mut default = Variant::new("weir default");
    let mut workers2 = Variant::new("weir map.workers(2)");
    let mut mpsc = Variant::new("tokio mpsc per item");
    // Diagnostics: not the benchmark's configuration; they locate the cost.
    let mut big = Variant::new("diag: weir batch_size 8192");
    let mut fused = Variant::new("diag: weir 1 stage flat_map");
    let mut threads = Variant::new("diag: std threads, 512/batch");

    // Warm-up: one untimed run of each (page faults, thread pool spin-up).
    assert_eq!(plain_loop(), CHECKSUM);
    assert_eq!(rt.block_on(weir_pipeline(None)), CHECKSUM);
    assert_eq!(rt.block_on(tokio_mpsc()), CHECKSUM);

    let wall = Instant::now();
    for round in 0..ROUNDS {
        let t = Instant::now();
        let s = plain_loop();
        plain.record(t.elapsed(), s);

        let t = Instant::now();
        let s = rt.block_on(weir_pipeline(None));
        default.record(t.elapsed(), s);

        let t = Instant::now();
        let s = rt.block_on(weir_pipeline(Some(2)));
        workers2.record(t.elapsed(), s);

        let t = Instant::now();
        let s = rt.block_on(tokio_mpsc());
        mpsc.record(t.elapsed(), s);

        let t = Instant::now();
        let s = rt.block_on(weir_pipeline_with(
            None,
            PipelineOptions {
                batch_size: 8192,
                ..PipelineOptions::default()
            },
        ));
        big.record(t.elapsed(), s);

        let t = Instant::now();
        let s = rt.block_on(weir_fused_by_hand());
        fused.record(t.elapsed(), s);

        let t = Instant::now();
        let s = std_threads_batched();
        threads.record(t.elapsed(), s);

        let ms = |v: &Variant| v.runs[round].as_secs_f64() * 1e3;
        println!(
            "round {round}: plain {:.1} | weir default {:.1} | weir workers(2) {:.1} | tokio mpsc {:.1} | diag batch 8192 {:.1} | diag flat_map {:.1} | diag std threads {:.1} (ms)",
            ms(&plain),
            ms(&default),
            ms(&workers2),
            ms(&mpsc),
            ms(&big),
            ms(&fused),
            ms(&threads),
        );
    }

    println!();
    println!(
        "B1 per-item overhead: {N} items, map -> filter -> fold, checksum {CHECKSUM} verified on every run"
    );
    println!("{ROUNDS} interleaved rounds; ratios are against the plain loop of the same run");
    println!(
        "{:<30} {:>14} {:>14} {:>12} {:>12}",
        "variant", "median items/s", "best items/s", "ratio(med)", "ratio(best)"
    );
    let base_med = rate(plain.median());
    let base_best = rate(plain.best());
    for v in [&plain, &default, &workers2, &mpsc, &big, &fused, &threads] {
        println!(
            "{:<30} {:>14.3e} {:>14.3e} {:>12.4} {:>12.4}",
            v.name,
            rate(v.median()),
            rate(v.best()),
            rate(v.median()) / base_med,
            rate(v.best()) / base_best,
        );
    }
    println!();
    for v in [&plain, &default, &workers2, &mpsc, &big, &fused, &threads] {
        let all: Vec<String> = v.runs.iter().map(|d| format!("{:.3e}", rate(*d))).collect();
        println!("{:<30} all runs items/s: {}", v.name, all.join(", "));
    }
    let ratio = rate(default.median()) / base_med;
    println!();
    println!(
        "target: weir default >= {:.0}% of plain loop -> measured {:.2}% (median) : {}",
        TARGET * 100.0,
        ratio * 100.0,
        if ratio >= TARGET { "MET" } else { "MISSED" }
    );
    println!("timed wall: {:.1} s", wall.elapsed().as_secs_f64());
}
