//! Property tests: over random worker counts, edge bounds, batch sizes and
//! per-item delays, no primitive loses, duplicates or (where it promises
//! order) reorders an item.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use proptest::prelude::*;
use weir::{
    AckOutcome, ErrorPolicy, Flow, Pipeline, PipelineOptions, Retry, collect, from_acked_iter,
    from_iter,
};

use crate::util::{AckLog, assert_balanced, within};

#[derive(Debug, Clone)]
struct Shape {
    items: u64,
    workers: usize,
    batch_size: usize,
    buffer: usize,
    /// Every `slow_every`-th item sleeps `delay_us`.
    slow_every: u64,
    delay_us: u64,
}

fn shapes() -> impl Strategy<Value = Shape> {
    (
        0u64..3_000,
        1usize..5,
        1usize..40,
        1usize..4,
        1u64..50,
        0u64..300,
    )
        .prop_map(
            |(items, workers, batch_size, buffer, slow_every, delay_us)| Shape {
                items,
                workers,
                batch_size,
                buffer,
                slow_every,
                delay_us,
            },
        )
}

impl Shape {
    fn pipeline(&self) -> Pipeline {
        Pipeline::with_options(PipelineOptions {
            batch_size: self.batch_size,
            buffer: self.buffer,
            ..Default::default()
        })
    }

    fn work(&self) -> impl Fn(u64) -> u64 + Send + Sync + 'static {
        let (every, delay) = (self.slow_every, self.delay_us);
        move |x| {
            if delay > 0 && x % every == 0 {
                std::thread::sleep(Duration::from_micros(delay));
            }
            x
        }
    }
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn unordered_pool_neither_loses_nor_duplicates(s in shapes()) {
        let got = within(30, {
            let s = s.clone();
            async move {
                let p = s.pipeline();
                let out = p.source("n", from_iter(0..s.items)).map("w", s.work()).workers(s.workers).sink("out", collect());
                let report = p.run().await.unwrap();
                assert_balanced(&report);
                out.take().unwrap()
            }
        });
        prop_assert_eq!(sorted(got), (0..s.items).collect::<Vec<_>>());
    }

    #[test]
    fn ordered_pool_keeps_order(s in shapes(), window in proptest::option::of(1usize..10)) {
        let got = within(30, {
            let s = s.clone();
            async move {
                let p = s.pipeline();
                let f = p.source("n", from_iter(0..s.items)).map("w", s.work()).workers(s.workers).ordered();
                // Any window, below the worker count too.
                let f = match window { Some(w) => f.reorder_window(w), None => f };
                let out = f.sink("out", collect());
                p.run().await.unwrap();
                out.take().unwrap()
            }
        });
        prop_assert_eq!(got, (0..s.items).collect::<Vec<_>>());
    }

    #[test]
    fn async_pool_neither_loses_nor_duplicates_and_ordered_keeps_order(s in shapes(), ordered in any::<bool>()) {
        let got = within(30, {
            let s = s.clone();
            async move {
                let p = s.pipeline();
                let (every, delay) = (s.slow_every, s.delay_us);
                let f = p.source("n", from_iter(0..s.items)).map_async("w", move |x| async move {
                    if delay > 0 && x % every == 0 {
                        tokio::time::sleep(Duration::from_micros(delay)).await;
                    }
                    x
                }).workers(s.workers * 8);
                let f = if ordered { f.ordered() } else { f };
                let out = f.sink("out", collect());
                p.run().await.unwrap();
                out.take().unwrap()
            }
        });
        if ordered {
            prop_assert_eq!(got, (0..s.items).collect::<Vec<_>>());
        } else {
            prop_assert_eq!(sorted(got), (0..s.items).collect::<Vec<_>>());
        }
    }

    #[test]
    fn fan_out_and_merge_lose_nothing(s in shapes(), branches in 1usize..4) {
        let (bcast, part, bal) = within(30, {
            let s = s.clone();
            async move {
                let p = s.pipeline();
                let src = p.source("n", from_iter(0..s.items));
                let mut three = src.broadcast(3).into_iter();
                // Broadcast copy 1 as is.
                let b = three.next().unwrap().sink("bcast", collect());
                // Copy 2: partition, work per branch, merge; per-key order kept.
                let parts: Vec<_> = three.next().unwrap().partition(branches, |x| x % 5).into_iter().enumerate()
                    .map(|(i, f)| f.map(&format!("p{i}"), s.work())).collect();
                let pm = Flow::merge(parts).sink("part", collect());
                // Copy 3: balance over branches, then merge.
                let bals: Vec<_> = three.next().unwrap().balance(branches).into_iter().enumerate()
                    .map(|(i, f)| f.map(&format!("b{i}"), s.work()).workers(s.workers)).collect();
                let bm = Flow::merge(bals).sink("bal", collect());
                let report = p.run().await.unwrap();
                assert_balanced(&report);
                (b.take().unwrap(), pm.take().unwrap(), bm.take().unwrap())
            }
        });
        let all: Vec<u64> = (0..s.items).collect();
        prop_assert_eq!(&bcast, &all);
        for k in 0..5 {
            let keyed: Vec<u64> = part.iter().copied().filter(|x| x % 5 == k).collect();
            let want: Vec<u64> = all.iter().copied().filter(|x| x % 5 == k).collect();
            prop_assert_eq!(keyed, want);
        }
        prop_assert_eq!(sorted(part), all.clone());
        prop_assert_eq!(sorted(bal), all);
    }
}

/// How the stage under retry runs.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// One worker, fused into the source's thread.
    Fused,
    /// One worker with its own queue.
    Queued,
    /// A sync pool, `ordered()`.
    Ordered(usize),
    /// A sync pool, unordered (may reorder, must not lose or duplicate).
    Unordered(usize),
    /// An unordered sync pool fused into another pool of as many workers.
    FusedPool(usize),
    /// An async pool, `ordered()`.
    AsyncOrdered(usize),
}

impl Mode {
    fn keeps_order(self) -> bool {
        !matches!(self, Mode::Unordered(_) | Mode::FusedPool(_))
    }
}

#[derive(Debug, Clone)]
struct Faults {
    /// Failures of item `i` before it succeeds (at or above `max_attempts`:
    /// it is dead-lettered).
    fails: Vec<u32>,
    max_attempts: u32,
    batch_size: usize,
    mode: Mode,
}

fn faults() -> impl Strategy<Value = Faults> {
    let fail = prop_oneof![12 => Just(0u32), 3 => Just(1u32), 2 => Just(2u32), 1 => Just(9u32)];
    let mode = prop_oneof![
        Just(Mode::Fused),
        Just(Mode::Queued),
        (2usize..5).prop_map(Mode::Ordered),
        (2usize..5).prop_map(Mode::Unordered),
        (2usize..5).prop_map(Mode::FusedPool),
        (1usize..20).prop_map(Mode::AsyncOrdered),
    ];
    (
        prop::collection::vec(fail, 0..300),
        1u32..4,
        1usize..40,
        mode,
    )
        .prop_map(|(fails, max_attempts, batch_size, mode)| Faults {
            fails,
            max_attempts,
            batch_size,
            mode,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Random failure patterns under a retry policy: outputs keep input order
    /// where the stage promises it, nothing is lost or duplicated, what
    /// exhausts its attempts is dead-lettered, and every ack settles once
    /// with the right outcome.
    #[test]
    fn retries_keep_order_lose_nothing_and_settle_each_ack_once(f in faults()) {
        let n = f.fails.len() as u64;
        let log = AckLog::default();
        let (got, dead, report_ok) = within(30, {
            let f = f.clone();
            let log = log.clone();
            async move {
                let p = Pipeline::with_options(PipelineOptions {
                    batch_size: f.batch_size,
                    ..Default::default()
                });
                let seen: Arc<Vec<AtomicU32>> =
                    Arc::new((0..f.fails.len()).map(|_| AtomicU32::new(0)).collect());
                let fails = Arc::new(f.fails.clone());
                let policy = ErrorPolicy::Retry(
                    Retry::attempts(f.max_attempts).initial(Duration::from_micros(50)),
                );
                let l = log.clone();
                let src = p.source("src", from_acked_iter((0..n).map(move |i| (i, l.ack(i)))));
                let attempt = move |x: &u64| -> Result<u64, String> {
                    let k = *x as usize;
                    if seen[k].fetch_add(1, SeqCst) < fails[k] {
                        Err(format!("{x} failed"))
                    } else {
                        Ok(*x)
                    }
                };
                let flow = match f.mode {
                    Mode::Fused => src.try_map("flaky", attempt).on_error(policy),
                    Mode::Queued => src.buffer(2).try_map("flaky", attempt).on_error(policy),
                    Mode::Ordered(w) => src.try_map("flaky", attempt).workers(w).ordered().on_error(policy),
                    Mode::Unordered(w) => src.try_map("flaky", attempt).workers(w).on_error(policy),
                    Mode::FusedPool(w) => src
                        .map("host", |x| x)
                        .workers(w)
                        .try_map("flaky", attempt)
                        .workers(w)
                        .on_error(policy),
                    Mode::AsyncOrdered(w) => {
                        let attempt = Arc::new(attempt);
                        src.try_map_async("flaky", move |x: u64| {
                            let a = attempt.clone();
                            async move { a(&x) }
                        })
                        .workers(w)
                        .ordered()
                        .on_error(policy)
                    }
                };
                let out = flow.sink("out", collect());
                let report = p.run().await.unwrap();
                assert_balanced(&report);
                let mut dead: Vec<(u64, u32)> = report
                    .dead_letters
                    .iter()
                    .map(|d| (*d.item::<u64>().unwrap(), d.attempts))
                    .collect();
                dead.sort_unstable();
                let s = report.stage("flaky").unwrap();
                if let Mode::FusedPool(_) = f.mode {
                    assert_eq!(s.runs_in.as_deref(), Some("host"));
                }
                (out.take().unwrap(), dead, (s.ok, s.dead_lettered))
            }
        });
        let max = f.max_attempts;
        let want: Vec<u64> = (0..n).filter(|&i| f.fails[i as usize] < max).collect();
        let want_dead: Vec<(u64, u32)> =
            (0..n).filter(|&i| f.fails[i as usize] >= max).map(|i| (i, max)).collect();
        if f.mode.keeps_order() {
            prop_assert_eq!(&got, &want);
        } else {
            prop_assert_eq!(sorted(got.clone()), want.clone());
        }
        prop_assert_eq!(&dead, &want_dead);
        prop_assert_eq!(report_ok, (want.len() as u64, want_dead.len() as u64));
        let outcomes = log.outcomes();
        prop_assert_eq!(
            outcomes.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            (0..n).collect::<Vec<_>>(),
            "every ack settles exactly once"
        );
        for (id, o) in outcomes {
            if f.fails[id as usize] < max {
                prop_assert_eq!(o, AckOutcome::Delivered);
            } else {
                prop_assert_eq!(
                    o,
                    AckOutcome::DeadLettered { stage: "flaky".into(), reason: format!("{id} failed") }
                );
            }
        }
    }
}
