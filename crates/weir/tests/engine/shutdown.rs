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

/// A whole-input aggregate of a cancelled run has seen part of its input:
/// its groups are not the totals. It emits nothing and fails the acks of
/// what it absorbed, so a checkpoint (or an inbox) does not count those
/// items done and a resumed run reads them again. Before, it emitted the
/// partial totals and settled every absorbed item as delivered: a resumed
/// run skipped them and wrote totals without them.
#[test]
fn a_cancelled_whole_input_aggregate_emits_nothing_and_fails_its_acks() {
    within(20, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 64,
            ..Default::default()
        });
        let token = p.cancel_token();
        let log = AckLog::default();
        let l = log.clone();
        let out = p
            .source(
                "endless",
                from_acked_iter((0..u64::MAX).map(move |i| (i, l.ack(i)))),
            )
            .aggregate(
                "totals",
                |x| x % 10,
                |_| 0u64,
                |a, _x| *a += 1,
                weir::Window::All,
            )
            .sink("out", weir::collect());
        let run = tokio::spawn(p.run());
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel();
        let report = run.await.unwrap().unwrap();
        assert!(report.cancelled);
        assert_balanced(&report);
        assert!(out.take().unwrap().is_empty(), "partial totals emitted");
        let produced = report.stage("endless").unwrap().emitted;
        assert!(produced > 0);
        let totals = report.stage("totals").unwrap();
        assert_eq!((totals.ok, totals.dropped), (0, produced));
        let outcomes = log.outcomes();
        assert_eq!(outcomes.len() as u64, produced, "each item settled once");
        assert!(
            outcomes
                .iter()
                .all(|(_, o)| matches!(o, AckOutcome::Failed { .. })),
            "an absorbed item settled as delivered"
        );
    });
}

/// A sink whose write fails while the run is being stopped (a publish that
/// gave up waiting for room nobody will make) does not fail the run: its
/// items count as dropped and their acks fail with the reason.
#[test]
fn a_sink_failing_while_the_run_stops_gives_its_items_back() {
    use weir::{BoxError, Sink, WriteError};
    struct Stuck(weir::CancellationToken);
    impl Sink<u64> for Stuck {
        type Output = ();
        async fn write(&mut self, items: Vec<u64>) -> Result<(), WriteError<u64>> {
            self.0.cancelled().await;
            Err(WriteError::all(items, "gave up: the run stopped"))
        }
        async fn finish(self) -> Result<(), BoxError> {
            Ok(())
        }
    }
    within(20, async {
        let p = Pipeline::new();
        let token = p.cancel_token();
        let log = AckLog::default();
        let l = log.clone();
        p.source(
            "endless",
            from_acked_iter((0..u64::MAX).map(move |i| (i, l.ack(i)))),
        )
        .sink("stuck", Stuck(p.stop_token()));
        let run = tokio::spawn(p.run());
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel();
        let report = run.await.unwrap().expect("a stopped sink is not a failure");
        assert!(report.cancelled);
        assert_balanced(&report);
        let stuck = report.stage("stuck").unwrap();
        assert_eq!(stuck.ok, 0);
        assert!(stuck.dropped > 0);
        let outcomes = log.outcomes();
        assert_eq!(
            outcomes.len() as u64,
            report.stage("endless").unwrap().emitted
        );
        assert!(outcomes.iter().all(|(_, o)| matches!(
            o,
            AckOutcome::Failed { reason } if reason.contains("the run stopped before the item was written")
        )));
    });
}
