//! Linear pipelines: order, counts, build errors, live metrics.

use std::time::Duration;

use futures::StreamExt;
use weir::{
    Error, Pipeline, PipelineOptions, collect, fold, from_iter, from_stream, from_try_iter,
};

use crate::util::{assert_balanced, within};

#[test]
fn single_worker_stages_keep_order_and_counts_add_up() {
    within(20, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 7,
            buffer: 2,
            ..Default::default()
        });
        let out = p
            .source("n", from_iter(0..10_000u64))
            .map("sq", |x| x * x)
            .filter("even", |x| x % 2 == 0)
            .flat_map("dup", |x| [x, x + 1])
            .sink("out", collect());
        let report = p.run().await.unwrap();
        let want: Vec<u64> = (0..10_000u64)
            .map(|x| x * x)
            .filter(|x| x % 2 == 0)
            .flat_map(|x| [x, x + 1])
            .collect();
        assert_eq!(out.take().unwrap(), want);
        assert_balanced(&report);
        let even = report.stage("even").unwrap();
        assert_eq!(
            (even.received, even.ok, even.filtered),
            (10_000, 5_000, 5_000)
        );
        let dup = report.stage("dup").unwrap();
        assert_eq!((dup.received, dup.emitted), (5_000, 10_000));
        // Edges lose nothing: each producer's emitted is its consumer's received.
        assert_eq!(
            report.stage("n").unwrap().emitted,
            report.stage("sq").unwrap().received
        );
        assert_eq!(report.stage("sq").unwrap().emitted, even.received);
        assert_eq!(report.stage("out").unwrap().ok, 10_000);
    });
}

#[test]
fn the_sketch_from_the_issue_gives_the_checksum() {
    within(60, async {
        let p = Pipeline::new();
        let sum = p
            .source("numbers", from_iter(0..1_000_000u64))
            .map("double", |x| x * 2 + 1)
            .workers(2)
            .filter("not-div3", |x| x % 3 != 0)
            .sink("sum", fold(0u64, |acc, x: u64| acc.wrapping_add(x)));
        let report = p.run().await.unwrap();
        let want = (0..1_000_000u64)
            .map(|x| x * 2 + 1)
            .filter(|x| x % 3 != 0)
            .fold(0u64, |a, x| a.wrapping_add(x));
        assert_eq!(sum.take(), Some(want));
        assert_balanced(&report);
    });
}

#[test]
fn sink_handle_runs_its_pipeline() {
    within(10, async {
        let (v, report) = Pipeline::new()
            .source("n", from_iter(1..=3u8))
            .sink("all", collect())
            .run()
            .await
            .unwrap();
        assert_eq!(v, vec![1, 2, 3]);
        assert_eq!(report.stage("all").unwrap().ok, 3);
    });
}

#[test]
fn empty_source_finishes() {
    within(10, async {
        let p = Pipeline::new();
        let out = p
            .source("none", from_iter(std::iter::empty::<u32>()))
            .map("m", |x| x)
            .workers(3)
            .sink("out", collect());
        p.run().await.unwrap();
        assert_eq!(out.take().unwrap(), Vec::<u32>::new());
    });
}

#[test]
fn stream_source_delivers_without_waiting_for_a_full_batch() {
    within(10, async {
        // A stream that yields one item, then waits: the item must arrive at
        // the sink before the stream ends.
        let (tx, rx) = tokio::sync::mpsc::channel::<u32>(4);
        let seen = std::sync::Arc::new(tokio::sync::Notify::new());
        let s = seen.clone();
        let p = Pipeline::new();
        let _h = p
            .source("chan", from_stream(tokio_stream(rx)))
            .sink("out", weir::for_each(move |_x: u32| s.notify_one()));
        let run = tokio::spawn(p.run());
        tx.send(1).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), seen.notified())
            .await
            .expect("a lone item waited for a full batch");
        drop(tx);
        run.await.unwrap().unwrap();
    });
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<u32>,
) -> impl futures::Stream<Item = u32> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

#[test]
fn source_error_fails_the_run_naming_the_source() {
    within(10, async {
        let items = (0..100u32).map(|i| if i == 50 { Err("bad row 50") } else { Ok(i) });
        let p = Pipeline::new();
        let _out = p
            .source("rows", from_try_iter(items))
            .sink("out", collect());
        let err = p.run().await.unwrap_err();
        match &err.error {
            Error::Stage { stage, source } => {
                assert_eq!(stage, "rows");
                assert_eq!(source.to_string(), "bad row 50");
            }
            other => panic!("unexpected {other:?}"),
        }
    });
}

#[test]
fn build_errors_are_all_reported() {
    within(10, async {
        let p = Pipeline::new();
        let f = p.source("a", from_iter(0..3u8));
        let _dangling = f.map("a", |x| x).workers(0);
        let err = p.run().await.unwrap_err();
        let Error::Build(problems) = &err.error else {
            panic!("expected a build error, got {:?}", err.error)
        };
        let text = problems.join("\n");
        assert!(text.contains("two stages are named 'a'"), "{text}");
        assert!(text.contains("workers must be at least 1"), "{text}");
        assert!(text.contains("not connected"), "{text}");
    });
}

#[test]
fn metrics_are_readable_while_running() {
    within(20, async {
        let p = Pipeline::new();
        let gate = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let g = gate.clone();
        let slow = p
            .source("n", from_iter(0..100_000u64))
            // A real queue between the two (no fusion), so the source shows backpressure.
            .buffer(8)
            .map("slow", move |x| {
                while !g.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                x
            });
        let metrics = p.metrics();
        let out = slow.sink("out", collect());
        let run = tokio::spawn(p.run());
        // The slow stage is stuck: its input queue fills up and the source blocks.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let snap = metrics.snapshot();
        let src = snap.iter().find(|s| s.name == "n").unwrap();
        assert!(src.emitted > 0 && src.emitted < 100_000, "{src:?}");
        assert_eq!(src.workers_waiting_for_output, 1, "{src:?}");
        let slow = snap.iter().find(|s| s.name == "slow").unwrap();
        assert_eq!(slow.workers_active, 1);
        gate.store(true, std::sync::atomic::Ordering::Relaxed);
        let report = run.await.unwrap().unwrap();
        assert!(report.stage("n").unwrap().waiting_for_output > Duration::from_millis(50));
        assert_eq!(out.take().unwrap().len(), 100_000);
        assert!(report.stage("slow").unwrap().mean_queue_fill > 0.0);
        assert_eq!(
            report.stage("out").unwrap().runs_in.as_deref(),
            Some("slow")
        );
    });
}
