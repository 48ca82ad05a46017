//! Property tests: over random worker counts, edge bounds, batch sizes and
//! per-item delays, no primitive loses, duplicates or (where it promises
//! order) reorders an item.

use std::time::Duration;

use proptest::prelude::*;
use weir::{Flow, Pipeline, PipelineOptions, collect, from_iter};

use crate::util::{assert_balanced, within};

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
    fn ordered_pool_keeps_order(s in shapes()) {
        let got = within(30, {
            let s = s.clone();
            async move {
                let p = s.pipeline();
                let out = p.source("n", from_iter(0..s.items)).map("w", s.work()).workers(s.workers).ordered().sink("out", collect());
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
