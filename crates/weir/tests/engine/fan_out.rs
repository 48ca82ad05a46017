//! Fan-out policies, including what one slow branch does to the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use weir::{Flow, Pipeline, PipelineOptions, collect, for_each, from_iter};

use crate::util::{assert_balanced, within};

fn opts(batch_size: usize, buffer: usize) -> PipelineOptions {
    PipelineOptions {
        batch_size,
        buffer,
        ..Default::default()
    }
}

/// A map stage that blocks until `gate` opens.
fn gated(f: Flow<u64>, name: &str, gate: Arc<AtomicBool>) -> Flow<u64> {
    f.map(name, move |x| {
        while !gate.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        x
    })
}

#[test]
fn broadcast_gives_every_branch_every_item() {
    within(20, async {
        let p = Pipeline::with_options(opts(16, 2));
        let mut b = p
            .source("n", from_iter(0..5_000u64))
            .broadcast(3)
            .into_iter();
        let a = b.next().unwrap().sink("a", collect());
        let bb = b.next().unwrap().map("x2", |x| x * 2).sink("b", collect());
        let c = b
            .next()
            .unwrap()
            .filter("odd", |x| x % 2 == 1)
            .sink("c", collect());
        let report = p.run().await.unwrap();
        assert_eq!(a.take().unwrap(), (0..5_000).collect::<Vec<_>>());
        assert_eq!(
            bb.take().unwrap(),
            (0..5_000).map(|x| x * 2).collect::<Vec<_>>()
        );
        assert_eq!(
            c.take().unwrap(),
            (0..5_000).filter(|x| x % 2 == 1).collect::<Vec<_>>()
        );
        assert_eq!(report.stage("n").unwrap().emitted, 15_000);
        assert_balanced(&report);
    });
}

#[test]
fn broadcast_slow_branch_holds_the_fast_one_to_its_buffer() {
    within(20, async {
        let (batch, buffer) = (10, 2);
        let p = Pipeline::with_options(opts(batch, buffer));
        let mut b = p
            .source("n", from_iter(0..10_000u64))
            .broadcast(2)
            .into_iter();
        let fast_seen = Arc::new(AtomicUsize::new(0));
        let fs = fast_seen.clone();
        let fast = b.next().unwrap().sink(
            "fast",
            for_each(move |_x: u64| {
                fs.fetch_add(1, SeqCst);
            }),
        );
        let gate = Arc::new(AtomicBool::new(false));
        let slow = gated(b.next().unwrap(), "slow", gate.clone()).sink("slow-out", collect());
        let run = tokio::spawn(p.run());
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The slow branch holds one batch in its worker and `buffer` in its
        // edge; the source holds one more it cannot send. The fast branch can
        // be ahead by no more than that.
        let ahead = fast_seen.load(SeqCst);
        let bound = (buffer + 3) * batch;
        assert!(
            ahead <= bound,
            "fast branch ran {ahead} items ahead (bound {bound})"
        );
        gate.store(true, SeqCst);
        run.await.unwrap().unwrap();
        assert_eq!(fast_seen.load(SeqCst), 10_000);
        let _ = fast.take();
        assert_eq!(slow.take().unwrap().len(), 10_000);
    });
}

#[test]
fn partition_keeps_per_key_order_across_parallel_branches() {
    within(20, async {
        let p = Pipeline::with_options(opts(8, 2));
        let parts = p
            .source("n", from_iter(0..20_000u64))
            .partition(4, |x| x % 13);
        let branches: Vec<_> = parts
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                f.map(&format!("work-{i}"), |x| {
                    if x % 101 == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    x
                })
            })
            .collect();
        let out = Flow::merge(branches).sink("out", collect());
        let report = p.run().await.unwrap();
        let got = out.take().unwrap();
        assert_eq!(got.len(), 20_000);
        for key in 0..13 {
            let seq: Vec<u64> = got.iter().copied().filter(|x| x % 13 == key).collect();
            let want: Vec<u64> = (0..20_000).filter(|x| x % 13 == key).collect();
            assert_eq!(seq, want, "key {key} out of order");
        }
        // The work really was spread over branches.
        let used = (0..4)
            .filter(|i| report.stage(&format!("work-{i}")).unwrap().received > 0)
            .count();
        assert!(used >= 2);
        assert_balanced(&report);
    });
}

#[test]
fn route_splits_by_predicate() {
    within(20, async {
        let p = Pipeline::with_options(opts(5, 1));
        let (valid, invalid) = p.source("n", from_iter(0..1_000i64)).route(|x| x % 7 != 0);
        let v = valid.sink("valid", collect());
        let i = invalid.map("neg", |x| -x).sink("invalid", collect());
        p.run().await.unwrap();
        assert_eq!(
            v.take().unwrap(),
            (0..1_000).filter(|x| x % 7 != 0).collect::<Vec<_>>()
        );
        assert_eq!(
            i.take().unwrap(),
            (0..1_000)
                .filter(|x| x % 7 == 0)
                .map(|x| -x)
                .collect::<Vec<_>>()
        );
    });
}

#[test]
fn balance_lets_a_fast_branch_take_the_work_of_a_stuck_one() {
    within(20, async {
        let p = Pipeline::with_options(opts(4, 1));
        let mut b = p.source("n", from_iter(0..2_000u64)).balance(2).into_iter();
        let gate = Arc::new(AtomicBool::new(false));
        let stuck = gated(b.next().unwrap(), "stuck", gate.clone()).sink("stuck-out", collect());
        let fast_seen = Arc::new(AtomicUsize::new(0));
        let fs = fast_seen.clone();
        let fast = b.next().unwrap().map("fast", |x| x).sink(
            "fast-out",
            for_each(move |_x: u64| {
                fs.fetch_add(1, SeqCst);
            }),
        );
        let run = tokio::spawn(p.run());
        // The stuck branch holds at most one batch; the fast one takes the rest.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while fast_seen.load(SeqCst) < 2_000 - 4 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            fast_seen.load(SeqCst) >= 2_000 - 4,
            "fast branch starved: {}",
            fast_seen.load(SeqCst)
        );
        gate.store(true, SeqCst);
        let report = run.await.unwrap().unwrap();
        let _ = fast.take();
        let stuck_n = stuck.take().unwrap().len();
        assert_eq!(stuck_n + fast_seen.load(SeqCst), 2_000);
        assert_balanced(&report);
    });
}

#[test]
fn merge_of_sources_interleaves_but_keeps_each_upstream_in_order() {
    within(20, async {
        let p = Pipeline::with_options(opts(3, 1));
        let a = p.source("a", from_iter((0..3_000u64).map(|i| (0u8, i))));
        let b = p.source("b", from_iter((0..3_000u64).map(|i| (1u8, i))));
        let c = p.source("c", from_iter((0..3_000u64).map(|i| (2u8, i))));
        let out = Flow::merge([a, b, c]).sink("out", collect());
        p.run().await.unwrap();
        let got = out.take().unwrap();
        assert_eq!(got.len(), 9_000);
        for src in 0..3u8 {
            let seq: Vec<u64> = got
                .iter()
                .filter(|(s, _)| *s == src)
                .map(|(_, i)| *i)
                .collect();
            assert_eq!(seq, (0..3_000).collect::<Vec<_>>());
        }
    });
}
