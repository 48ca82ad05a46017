//! B2: a CPU-bound stage on a worker pool.
//!
//! 200,000 items; item `i` runs 2,000 xorshift rounds seeded from
//! `(i+1) * 0x9E3779B97F4A7C15`; the results are summed (wrapping). The
//! baseline is the same computation in a plain single-threaded loop. The
//! weir variants put it in one `map` stage with `workers(1)`, `workers(2)`
//! and `workers(2).ordered()`. A plain two-thread split (std threads, half
//! the range each) is measured too, as the best speedup this shared machine
//! gives right now. Rounds are interleaved; medians are reported, every run
//! is printed, every sum is checked against the baseline.
//!
//! Run: `cargo bench -p weir --bench b2_cpu_pool`
#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use weir::{Pipeline, fold, from_iter};

const N: u64 = 200_000;
const ROUNDS: usize = 5;
/// Target: `workers(2)` at least this much faster than `workers(1)`.
const SPEEDUP_TARGET: f64 = 1.85;
/// Target: ordered within this fraction of unordered.
const ORDERED_TOLERANCE: f64 = 0.05;

#[inline(never)]
fn work(i: u64) -> u64 {
    let mut x = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for _ in 0..2_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

fn plain_loop() -> u64 {
    let n = black_box(N);
    let mut acc = 0u64;
    for i in 0..n {
        acc = acc.wrapping_add(work(i));
    }
    acc
}

/// The same loop split over two std threads: the machine's own ceiling for
/// a two-way speedup at this moment.
fn plain_two_threads() -> u64 {
    let n = black_box(N);
    let half = n / 2;
    std::thread::scope(|s| {
        let a = s.spawn(|| (0..half).fold(0u64, |acc, i| acc.wrapping_add(work(i))));
        let b = (half..n).fold(0u64, |acc, i| acc.wrapping_add(work(i)));
        a.join().expect("thread").wrapping_add(b)
    })
}

async fn weir_pool(workers: usize, ordered: bool) -> u64 {
    let p = Pipeline::new();
    let flow = p
        .source("indices", from_iter(0..N))
        .map("xorshift", work)
        .workers(workers);
    let flow = if ordered { flow.ordered() } else { flow };
    let sum = flow.sink("sum", fold(0u64, |acc, x: u64| acc.wrapping_add(x)));
    let report = p.run().await.expect("pipeline runs");
    let stage = report.stage("xorshift").expect("map stage in report");
    assert_eq!(stage.received, N, "map saw every item");
    assert_eq!(stage.ok, N, "map succeeded on every item");
    sum.take().expect("sink finished")
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

    fn median(&self) -> Duration {
        median(self.runs.clone())
    }

    fn best(&self) -> Duration {
        *self.runs.iter().min().expect("runs")
    }
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

fn rate(d: Duration) -> f64 {
    N as f64 / d.as_secs_f64()
}

fn timed(v: &mut Variant, expected: u64, f: impl FnOnce() -> u64) {
    let t = Instant::now();
    let s = f();
    let d = t.elapsed();
    assert_eq!(s, expected, "{}: sum differs from the plain loop's", v.name);
    v.runs.push(d);
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    // The reference sum, also a warm-up.
    let expected = plain_loop();
    assert_eq!(rt.block_on(weir_pool(2, false)), expected, "warm-up run");

    let mut plain = Variant::new("plain loop (baseline)");
    let mut two = Variant::new("plain 2 std threads");
    let mut w1 = Variant::new("weir workers(1)");
    let mut w2 = Variant::new("weir workers(2)");
    let mut w2o = Variant::new("weir workers(2).ordered()");

    let wall = Instant::now();
    for round in 0..ROUNDS {
        timed(&mut plain, expected, plain_loop);
        timed(&mut two, expected, plain_two_threads);
        timed(&mut w1, expected, || rt.block_on(weir_pool(1, false)));
        timed(&mut w2, expected, || rt.block_on(weir_pool(2, false)));
        timed(&mut w2o, expected, || rt.block_on(weir_pool(2, true)));
        let ms = |v: &Variant| v.runs[round].as_secs_f64() * 1e3;
        println!(
            "round {round}: plain {:>7.1} ms | 2 threads {:>7.1} ms | w1 {:>7.1} ms | w2 {:>7.1} ms | w2 ordered {:>7.1} ms",
            ms(&plain),
            ms(&two),
            ms(&w1),
            ms(&w2),
            ms(&w2o),
        );
    }

    println!();
    println!(
        "B2 CPU-bound pool: {N} items x 2000 xorshift rounds, sum {expected:#x} verified on every run"
    );
    println!("{ROUNDS} interleaved rounds; ratios are against the plain loop of the same run");
    println!(
        "{:<28} {:>14} {:>14} {:>12}",
        "variant", "median items/s", "best items/s", "vs plain"
    );
    let base = rate(plain.median());
    for v in [&plain, &two, &w1, &w2, &w2o] {
        println!(
            "{:<28} {:>14.0} {:>14.0} {:>12.3}",
            v.name,
            rate(v.median()),
            rate(v.best()),
            rate(v.median()) / base
        );
    }
    println!();
    for v in [&plain, &two, &w1, &w2, &w2o] {
        let all: Vec<String> = v.runs.iter().map(|d| format!("{:.0}", rate(*d))).collect();
        println!("{:<28} all runs items/s: {}", v.name, all.join(", "));
    }

    // Per-round ratios: both sides of a ratio ran back to back, so a noisy
    // neighbour affects both alike; the median of them is the headline.
    let per_round = |a: &Variant, b: &Variant| -> Vec<f64> {
        a.runs
            .iter()
            .zip(&b.runs)
            .map(|(ta, tb)| ta.as_secs_f64() / tb.as_secs_f64())
            .collect()
    };
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let speedup = per_round(&w1, &w2);
    let machine = per_round(&plain, &two);
    let ordered = per_round(&w2o, &w2);
    let w1_eff = per_round(&plain, &w1);
    let (speedup_med, machine_med, ordered_med) = (
        median(speedup.clone()),
        median(machine.clone()),
        median(ordered.clone()),
    );
    println!();
    println!(
        "speedup workers(2) vs workers(1), per round: {}  median {speedup_med:.3}",
        fmt(&speedup)
    );
    println!(
        "speedup plain 2 threads vs plain loop, per round: {}  median {machine_med:.3}",
        fmt(&machine)
    );
    println!(
        "workers(1) items/s vs plain loop, per round: {}  median {:.3}",
        fmt(&w1_eff),
        median(w1_eff.clone())
    );
    println!(
        "ordered time / unordered time, per round: {}  median {ordered_med:.3}",
        fmt(&ordered)
    );
    println!();
    println!(
        "target: workers(2) >= {SPEEDUP_TARGET} x workers(1) -> measured {speedup_med:.3} : {}",
        if speedup_med >= SPEEDUP_TARGET {
            "MET"
        } else {
            "MISSED"
        }
    );
    println!(
        "target: ordered within {:.0}% of unordered -> measured {:+.1}% : {}",
        ORDERED_TOLERANCE * 100.0,
        (ordered_med - 1.0) * 100.0,
        if (ordered_med - 1.0).abs() <= ORDERED_TOLERANCE {
            "MET"
        } else {
            "MISSED"
        }
    );
    println!("timed wall: {:.1} s", wall.elapsed().as_secs_f64());
}
