//! Cancellation and abort: prompt, draining (or not) as documented, and no
//! task left behind (checked by `within`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use weir::{AckOutcome, Pipeline, PipelineOptions, for_each, from_acked_iter, from_iter};

use crate::util::{AckLog, assert_balanced, within};

#[test]
fn cancel_with_full_edges_drains_everything_in_flight() {
    within(20, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 64,
            buffer: 4,
            ..Default::default()
        });
        let token = p.cancel_token();
        let log = AckLog::default();
        let l = log.clone();
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        p.source(
            "endless",
            from_acked_iter((0..u64::MAX).map(move |i| (i, l.ack(i)))),
        )
        .map("m", |x| x + 1)
        .workers(2)
        .sink(
            "slow",
            for_each(move |_x: u64| {
                std::thread::sleep(Duration::from_micros(50));
                s.fetch_add(1, SeqCst);
            }),
        );
        let run = tokio::spawn(p.run());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        token.cancel();
        let report = run.await.unwrap().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "drain took {:?}",
            t.elapsed()
        );
        assert!(report.cancelled);
        assert_balanced(&report);
        // Everything the source produced reached the sink.
        let produced = report.stage("endless").unwrap().emitted;
        assert_eq!(report.stage("slow").unwrap().ok, produced);
        assert_eq!(seen.load(SeqCst), produced);
        // And every produced item was acked once, delivered.
        let outcomes = log.outcomes();
        assert_eq!(outcomes.len() as u64, produced);
        assert!(outcomes.iter().all(|(_, o)| *o == AckOutcome::Delivered));
    });
}

#[test]
fn abort_does_not_wait_for_a_stuck_async_call() {
    within(20, async {
        let p = Pipeline::new();
        let mut b = p
            .source("n", from_iter(0..1_000u64))
            .broadcast(2)
            .into_iter();
        b.next()
            .unwrap()
            .map_async("hangs", |x| async move {
                std::future::pending::<()>().await;
                x
            })
            .workers(4)
            .sink("never", for_each(|_x: u64| {}));
        b.next()
            .unwrap()
            .try_map(
                "fails",
                |x: &u64| if *x == 10 { Err("broken") } else { Ok(*x) },
            )
            .sink("other", for_each(|_x: u64| {}));
        let t = Instant::now();
        let err = p.run().await.unwrap_err();
        assert!(
            err.to_string().contains("stage 'fails' failed: broken"),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn cancel_before_any_item_ends_an_idle_stream_source() {
    within(20, async {
        let p = Pipeline::new();
        let token = p.cancel_token();
        let _h = p
            .source("idle", weir::from_stream(futures::stream::pending::<u32>()))
            .sink("out", for_each(|_x: u32| {}));
        let run = tokio::spawn(p.run());
        tokio::time::sleep(Duration::from_millis(50)).await;
        token.cancel();
        let report = run.await.unwrap().unwrap();
        assert!(report.cancelled);
        assert_eq!(report.stage("out").unwrap().received, 0);
    });
}
