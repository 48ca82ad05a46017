//! Worker pools: parallelism, order, reorder window, async concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use weir::{Pipeline, PipelineOptions, collect, from_iter};

use crate::util::{assert_balanced, within};

/// A busy-wait of `micros`, so workers really occupy threads.
fn spin(micros: u64) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_micros(micros) {
        std::hint::spin_loop();
    }
}

#[test]
fn ordered_pool_keeps_input_order_with_uneven_work() {
    within(30, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 4,
            ..Default::default()
        });
        let out = p
            .source("n", from_iter(0..2_000u64))
            .map("uneven", |x| {
                if x % 97 == 0 {
                    spin(2_000);
                }
                x * 3
            })
            .workers(4)
            .ordered()
            .sink("out", collect());
        let report = p.run().await.unwrap();
        assert_eq!(
            out.take().unwrap(),
            (0..2_000u64).map(|x| x * 3).collect::<Vec<_>>()
        );
        assert_balanced(&report);
    });
}

#[test]
fn unordered_pool_uses_all_workers_and_loses_nothing() {
    within(30, async {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (r, pk) = (running.clone(), peak.clone());
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 1,
            ..Default::default()
        });
        let out = p
            .source("n", from_iter(0..200u64))
            .map("work", move |x| {
                let now = r.fetch_add(1, SeqCst) + 1;
                pk.fetch_max(now, SeqCst);
                spin(500);
                r.fetch_sub(1, SeqCst);
                x
            })
            .workers(3)
            .sink("out", collect());
        p.run().await.unwrap();
        let mut got = out.take().unwrap();
        got.sort_unstable();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        assert!(peak.load(SeqCst) >= 2, "workers never overlapped");
        assert!(peak.load(SeqCst) <= 3, "more workers than configured");
    });
}

#[test]
fn reorder_window_bounds_how_far_a_pool_runs_ahead_of_a_slow_item() {
    within(30, async {
        let started = Arc::new(AtomicUsize::new(0));
        let at_slow_end = Arc::new(AtomicUsize::new(usize::MAX));
        let (s, e) = (started.clone(), at_slow_end.clone());
        let batch = 8;
        let window = 3;
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: batch,
            ..Default::default()
        });
        let out = p
            .source("n", from_iter(0..10_000u64))
            .map("head-of-line", move |x| {
                s.fetch_add(1, SeqCst);
                if x == 0 {
                    std::thread::sleep(Duration::from_millis(300));
                    e.store(s.load(SeqCst), SeqCst);
                }
                x
            })
            .workers(2)
            .ordered()
            .reorder_window(window)
            .sink("out", collect());
        p.run().await.unwrap();
        assert_eq!(out.take().unwrap(), (0..10_000).collect::<Vec<_>>());
        // While item 0 was stuck, the other worker could only take batches
        // inside the window.
        let ahead = at_slow_end.load(SeqCst);
        assert!(
            ahead <= window * batch,
            "ran {ahead} items ahead, window allows {}",
            window * batch
        );
        assert!(
            ahead > batch,
            "the other worker did not work at all meanwhile ({ahead})"
        );
    });
}

#[test]
fn async_pool_keeps_exactly_n_calls_in_flight() {
    within(30, async {
        let inflight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (i, pk) = (inflight.clone(), peak.clone());
        let p = Pipeline::new();
        let out = p
            .source("n", from_iter(0..500u64))
            .map_async("call", move |x| {
                let (i, pk) = (i.clone(), pk.clone());
                async move {
                    let now = i.fetch_add(1, SeqCst) + 1;
                    pk.fetch_max(now, SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    i.fetch_sub(1, SeqCst);
                    x + 1
                }
            })
            .workers(50)
            .sink("out", collect());
        let t = Instant::now();
        let report = p.run().await.unwrap();
        let mut got = out.take().unwrap();
        got.sort_unstable();
        assert_eq!(got, (1..=500).collect::<Vec<_>>());
        assert_eq!(peak.load(SeqCst), 50);
        // 500 calls of 5 ms, 50 at a time: about 50 ms, surely under 2 s.
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_balanced(&report);
    });
}

#[test]
fn ordered_async_pool_keeps_order() {
    within(30, async {
        let p = Pipeline::new();
        let out = p
            .source("n", from_iter(0..300u64))
            .map_async("call", |x| async move {
                // Later items finish first.
                tokio::time::sleep(Duration::from_micros(2_000 - (x % 10) * 200)).await;
                x
            })
            .workers(16)
            .ordered()
            .sink("out", collect());
        p.run().await.unwrap();
        assert_eq!(out.take().unwrap(), (0..300).collect::<Vec<_>>());
    });
}

#[test]
fn sync_stage_code_does_not_block_the_async_reactor() {
    // On a single-threaded runtime, a sync stage that blocks would stop every
    // timer; a ticker must keep ticking while the stage sleeps.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ticks = Arc::new(AtomicUsize::new(0));
        let t2 = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                t2.fetch_add(1, SeqCst);
            }
        });
        let p = Pipeline::new();
        let _out = p
            .source("n", from_iter(0..2u8))
            .map("blocking", |x| {
                std::thread::sleep(Duration::from_millis(150));
                x
            })
            .sink("out", collect());
        tokio::time::timeout(Duration::from_secs(10), p.run())
            .await
            .unwrap()
            .unwrap();
        ticker.abort();
        assert!(
            ticks.load(SeqCst) >= 20,
            "only {} ticks in 300 ms",
            ticks.load(SeqCst)
        );
    });
}

#[test]
fn a_reorder_window_below_the_worker_count_is_honoured() {
    within(30, async {
        let inside = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (i, pk) = (inside.clone(), peak.clone());
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 1,
            ..Default::default()
        });
        let out = p
            .source("n", from_iter(0..200u64))
            .map("slow", move |x| {
                let now = i.fetch_add(1, SeqCst) + 1;
                pk.fetch_max(now, SeqCst);
                std::thread::sleep(Duration::from_millis(2));
                i.fetch_sub(1, SeqCst);
                x
            })
            .workers(4)
            .ordered()
            .reorder_window(2)
            .sink("out", collect());
        let report = p.run().await.unwrap();
        assert_eq!(out.take().unwrap(), (0..200).collect::<Vec<_>>());
        // A window of 2 one-item batches: at most 2 items taken and not yet
        // emitted, so at most 2 in the function at once.
        assert!(peak.load(SeqCst) <= 2, "{} at once", peak.load(SeqCst));
        assert_eq!(peak.load(SeqCst), 2, "the window was not used");
        assert_balanced(&report);
    });
}
