//! B3: an I/O-bound async stage on a worker pool.
//!
//! 5,000 items, each awaiting a 10 ms tokio timer in a `map_async` stage
//! with `workers(100)` and `workers(1000)`. The ideal wall time is
//! `items * 10 ms / workers` (500 ms and 50 ms). The baseline, measured in
//! the same run with the same concurrency, is a hand-rolled tokio version
//! (a `JoinSet` of tasks gated by a `Semaphore`) doing the same sleeps, so
//! the excess over ideal splits into tokio's timer granularity (the
//! hand-rolled excess) and weir's own share (the rest). A second reference,
//! one task driving a `FuturesUnordered` refilled to the same concurrency,
//! is the shape of weir's async pool without the engine around it.
//! Rounds are interleaved; medians are reported, every run is printed.
//!
//! Run: `cargo bench -p weir --bench b3_io_pool`
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use weir::{Pipeline, fold, from_iter};

const N: u64 = 5_000;
const SLEEP: Duration = Duration::from_millis(10);
const ROUNDS: usize = 5;
/// Target: wall time at most this multiple of the ideal.
const TARGET: f64 = 1.10;
const CHECKSUM: u64 = N * (N - 1) / 2;

async fn weir_pool(workers: usize) -> u64 {
    let p = Pipeline::new();
    let sum = p
        .source("ids", from_iter(0..N))
        .map_async("sleep", |x: u64| async move {
            tokio::time::sleep(SLEEP).await;
            x
        })
        .workers(workers)
        .sink("sum", fold(0u64, |acc, x: u64| acc.wrapping_add(x)));
    let report = p.run().await.expect("pipeline runs");
    let stage = report.stage("sleep").expect("map_async stage in report");
    assert_eq!(stage.ok, N, "every call completed");
    sum.take().expect("sink finished")
}

/// Hand-rolled: one spawned task per item, at most `workers` at once.
async fn joinset_semaphore(workers: usize) -> u64 {
    let sem = Arc::new(Semaphore::new(workers));
    let mut set = JoinSet::new();
    let mut acc = 0u64;
    for x in 0..N {
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        set.spawn(async move {
            tokio::time::sleep(SLEEP).await;
            drop(permit);
            x
        });
        // Reap what has finished so the set stays small.
        while let Some(r) = set.try_join_next() {
            acc = acc.wrapping_add(r.expect("task"));
        }
    }
    while let Some(r) = set.join_next().await {
        acc = acc.wrapping_add(r.expect("task"));
    }
    acc
}

/// Reference: one task keeps `workers` sleeps in flight in a
/// `FuturesUnordered` (the shape of weir's async pool, without the engine).
async fn futures_unordered(workers: usize) -> u64 {
    let mut inflight = FuturesUnordered::new();
    let mut next = 0u64;
    let mut acc = 0u64;
    loop {
        while inflight.len() < workers && next < N {
            let x = next;
            next += 1;
            inflight.push(async move {
                tokio::time::sleep(SLEEP).await;
                x
            });
        }
        match inflight.next().await {
            Some(x) => acc = acc.wrapping_add(x),
            None => break,
        }
    }
    acc
}

/// How long `sleep(SLEEP)` really takes on this runtime: the mean of
/// back-to-back sleeps, which start right after a timer tick just as the
/// waves of a saturated pool do.
async fn timer_floor() -> Duration {
    const K: u32 = 20;
    let t = Instant::now();
    for _ in 0..K {
        tokio::time::sleep(SLEEP).await;
    }
    t.elapsed() / K
}

/// The engine's fixed cost: the same pipeline with calls that return at
/// once.
async fn weir_no_sleep(workers: usize) -> u64 {
    let p = Pipeline::new();
    let sum = p
        .source("ids", from_iter(0..N))
        .map_async("sleep", |x: u64| async move { x })
        .workers(workers)
        .sink("sum", fold(0u64, |acc, x: u64| acc.wrapping_add(x)));
    p.run().await.expect("pipeline runs");
    sum.take().expect("sink finished")
}

struct Variant {
    name: String,
    runs: Vec<Duration>,
}

impl Variant {
    fn new(name: String) -> Self {
        Variant {
            name,
            runs: Vec::new(),
        }
    }

    fn median(&self) -> Duration {
        median(self.runs.clone())
    }
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    // Warm-up (thread pools, timer wheel).
    assert_eq!(rt.block_on(weir_pool(1000)), CHECKSUM);
    assert_eq!(rt.block_on(joinset_semaphore(1000)), CHECKSUM);

    let wall = Instant::now();
    let floors: Vec<Duration> = (0..3).map(|_| rt.block_on(timer_floor())).collect();
    let floor = median(floors.clone());
    println!(
        "tokio sleep({} ms) measured back to back: {} ms; median {:.3} ms",
        SLEEP.as_millis(),
        floors
            .iter()
            .map(|d| format!("{:.3}", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", "),
        floor.as_secs_f64() * 1e3
    );
    let fixed: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(rt.block_on(weir_no_sleep(1000)), CHECKSUM);
            t.elapsed()
        })
        .collect();
    println!(
        "weir fixed cost (same pipeline, calls return at once, workers(1000)): {} ms; median {:.3} ms",
        fixed
            .iter()
            .map(|d| format!("{:.3}", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", "),
        median(fixed.clone()).as_secs_f64() * 1e3
    );
    println!();
    let mut missed = false;
    for workers in [100usize, 1000] {
        let ideal = SLEEP * (N as u32) / (workers as u32);
        let waves = N.div_ceil(workers as u64) as u32;
        let timer_ideal = floor * waves;
        let mut hand = Variant::new(format!("JoinSet+Semaphore({workers})"));
        let mut fu = Variant::new(format!("FuturesUnordered({workers})"));
        let mut weir = Variant::new(format!("weir workers({workers})"));
        println!(
            "workers {workers}: ideal {:.1} ms; timer-adjusted ideal ({waves} waves x measured sleep) {:.1} ms",
            ideal.as_secs_f64() * 1e3,
            timer_ideal.as_secs_f64() * 1e3
        );
        for round in 0..ROUNDS {
            for (v, which) in [(&mut hand, 0), (&mut fu, 1), (&mut weir, 2)] {
                let t = Instant::now();
                let s = rt.block_on(async {
                    match which {
                        0 => joinset_semaphore(workers).await,
                        1 => futures_unordered(workers).await,
                        _ => weir_pool(workers).await,
                    }
                });
                let d = t.elapsed();
                assert_eq!(s, CHECKSUM, "{}: wrong checksum", v.name);
                v.runs.push(d);
            }
            println!(
                "  round {round}: JoinSet+Semaphore {:>7.1} ms | FuturesUnordered {:>7.1} ms | weir {:>7.1} ms",
                hand.runs[round].as_secs_f64() * 1e3,
                fu.runs[round].as_secs_f64() * 1e3,
                weir.runs[round].as_secs_f64() * 1e3,
            );
        }
        println!(
            "  {:<28} {:>10} {:>10} {:>12} {:>10} {:>14} {:>14}",
            "variant",
            "median ms",
            "ideal ms",
            "items/s",
            "vs ideal",
            "vs timer-ideal",
            "vs JoinSet+Sem"
        );
        let hand_med = hand.median().as_secs_f64();
        for v in [&hand, &fu, &weir] {
            let m = v.median().as_secs_f64();
            println!(
                "  {:<28} {:>10.1} {:>10.1} {:>12.0} {:>10.3} {:>14.3} {:>14.3}",
                v.name,
                m * 1e3,
                ideal.as_secs_f64() * 1e3,
                N as f64 / m,
                m / ideal.as_secs_f64(),
                m / timer_ideal.as_secs_f64(),
                m / hand_med
            );
        }
        for v in [&hand, &fu, &weir] {
            let all: Vec<String> = v
                .runs
                .iter()
                .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
                .collect();
            println!("  {:<28} all runs ms: {}", v.name, all.join(", "));
        }
        let ratio = weir.median().as_secs_f64() / ideal.as_secs_f64();
        let ok = ratio <= TARGET;
        missed |= !ok;
        println!(
            "  target: weir wall <= {TARGET:.2} x ideal -> measured {ratio:.3} x : {}",
            if ok { "MET" } else { "MISSED" }
        );
        println!(
            "  (JoinSet+Semaphore reaches {:.3} x ideal; weir / JoinSet+Semaphore = {:.3}; weir / timer-adjusted ideal = {:.3})",
            hand_med / ideal.as_secs_f64(),
            weir.median().as_secs_f64() / hand_med,
            weir.median().as_secs_f64() / timer_ideal.as_secs_f64()
        );
        println!();
    }
    println!(
        "B3 I/O-bound pool: {N} items x {} ms sleep, checksum {CHECKSUM} verified on every run; overall: {}",
        SLEEP.as_millis(),
        if missed {
            "a target MISSED"
        } else {
            "targets MET"
        }
    );
    println!("timed wall: {:.1} s", wall.elapsed().as_secs_f64());
}
