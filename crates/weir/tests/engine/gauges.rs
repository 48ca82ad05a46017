//! Live gauges stay true when a wait is cancelled: a stage that waits for
//! input inside a `select!` (a tumbling window's timer, an async pool's
//! completions) gives its "waiting for input" mark back (issue 8, item 19a).

use std::time::Duration;

use futures::StreamExt;
use weir::{Pipeline, Window, collect, from_stream};

use crate::util::within;

/// A few items, then a long silence, then the end: the stage under test
/// waits for input across many wake-ups that are not input.
fn trickle() -> impl futures::Stream<Item = u64> + Send + 'static {
    futures::stream::iter(0..3u64).chain(futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        3
    }))
}

/// Samples a stage's "workers waiting for input" while the run goes on and
/// returns the largest value seen and the value in the final report.
async fn waiting_gauge(p: Pipeline, stage: &str) -> (u64, u64) {
    let metrics = p.metrics();
    let run = tokio::spawn(p.run());
    let mut most = 0;
    while !run.is_finished() {
        for s in metrics.snapshot() {
            if s.name == stage {
                most = most.max(s.workers_waiting_for_input);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = run.await.unwrap().unwrap();
    for s in &report.stages {
        assert_eq!(s.workers_waiting_for_input, 0, "{}: {s:?}", s.name);
        assert_eq!(s.workers_waiting_for_output, 0, "{}: {s:?}", s.name);
    }
    (most, report.stage(stage).unwrap().workers_waiting_for_input)
}

#[test]
fn a_tumbling_aggregate_waiting_across_timer_ticks_counts_one_waiting_worker() {
    let (most, end) = within(20, async {
        let p = Pipeline::new();
        let _ = p
            .source("s", from_stream(trickle()))
            .aggregate(
                "tumble",
                |_| (),
                |_| 0u32,
                |n, _| *n += 1,
                Window::Tumbling(Duration::from_millis(5)),
            )
            .sink("out", collect());
        waiting_gauge(p, "tumble").await
    });
    assert!(most <= 1, "one worker, {most} counted as waiting for input");
    assert_eq!(end, 0);
}

#[test]
fn an_async_pool_waiting_while_calls_complete_counts_one_waiting_worker() {
    let (most, end) = within(20, async {
        let p = Pipeline::new();
        let _ = p
            .source("s", from_stream(trickle()))
            .map_async("call", |x| async move {
                // Completions arrive while the pool also waits for input.
                tokio::time::sleep(Duration::from_millis(20 * (x + 1))).await;
                x
            })
            .workers(4)
            .sink("out", collect());
        waiting_gauge(p, "call").await
    });
    assert!(most <= 1, "one task, {most} counted as waiting for input");
    assert_eq!(end, 0);
}
