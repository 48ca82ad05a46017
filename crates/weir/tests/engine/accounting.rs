//! Counts add up when a run fails: every item a stage received ends as ok,
//! filtered, dead-lettered or dropped, also when the run aborts during an
//! async call or a retry backoff, when an item's error is fatal, and when a
//! sink's write fails (issue 8, items 19b and 9).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir::{
    AckOutcome, BoxError, ErrorPolicy, Flow, Pipeline, PipelineOptions, Report, Retry, Sink,
    WriteError, collect, for_each, from_acked_iter, from_iter, from_try_iter,
};

use crate::util::{AckLog, assert_balanced, within};

fn stage<'a>(report: &'a Report, name: &str) -> &'a weir::StageReport {
    report.stage(name).unwrap()
}

/// A sink that fails on its `nth` write (1-based), after writing the first
/// `prefix` items of that batch; `Fail` until then it commits.
#[derive(Clone)]
struct FailsOnWrite {
    nth: usize,
    prefix: usize,
    writes: Arc<AtomicUsize>,
    committed: Arc<Mutex<Vec<u64>>>,
}

impl FailsOnWrite {
    fn new(nth: usize, prefix: usize) -> Self {
        FailsOnWrite {
            nth,
            prefix,
            writes: Arc::default(),
            committed: Arc::default(),
        }
    }
}

impl Sink<u64> for FailsOnWrite {
    type Output = ();

    async fn write(&mut self, mut items: Vec<u64>) -> Result<(), WriteError<u64>> {
        if self.writes.fetch_add(1, SeqCst) + 1 < self.nth {
            self.committed.lock().unwrap().extend(items);
            return Ok(());
        }
        let rest = items.split_off(self.prefix.min(items.len()));
        self.committed.lock().unwrap().extend(items);
        Err(WriteError::partial(rest, "database is locked"))
    }

    async fn finish(self) -> Result<(), BoxError> {
        Ok(())
    }
}

#[test]
fn an_abort_during_async_calls_counts_the_calls_in_flight_as_dropped() {
    within(20, async {
        let log = AckLog::default();
        let l = log.clone();
        let p = Pipeline::new();
        p.source(
            "src",
            from_acked_iter((0..16u64).map(move |i| (i, l.ack(i)))),
        )
        .map_async("call", |x| async move {
            if x >= 8 {
                std::future::pending::<()>().await;
            }
            x
        })
        .workers(8)
        .sink("db", FailsOnWrite::new(1, 0));
        let err = p.run().await.unwrap_err();
        assert_eq!(err.to_string(), "stage 'db' failed: database is locked");
        let call = stage(&err.report, "call");
        assert_eq!(
            (call.received, call.ok, call.dropped),
            (16, 8, 8),
            "{call:?}"
        );
        assert_balanced(&err.report);
        let outcomes = log.outcomes();
        assert_eq!(outcomes.len(), 16);
        assert!(
            outcomes.iter().all(|(_, o)| !o.is_handled()),
            "{outcomes:?}"
        );
    });
}

/// How the stage that retries runs.
#[derive(Debug, Clone, Copy)]
enum Shape {
    OneWorker,
    Pool,
    OrderedPool,
    Async,
}

/// Item 3 fails for ever under a retry policy with a long backoff; the
/// other branch fails the run meanwhile.
fn retry_interrupted_by_abort(shape: Shape) {
    within(20, async move {
        let log = AckLog::default();
        let l = log.clone();
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 4,
            ..Default::default()
        });
        let mut b = p
            .source(
                "src",
                from_acked_iter((0..10u64).map(move |i| (i, l.ack(i)))),
            )
            .broadcast(2)
            .into_iter();
        let policy = ErrorPolicy::Retry(
            Retry::attempts(5)
                .initial(Duration::from_secs(10))
                .max_delay(Duration::from_secs(10)),
        );
        let try_it = |x: &u64| if *x == 3 { Err("busy") } else { Ok(*x) };
        let flow: Flow<u64> = b.next().unwrap();
        let retried = match shape {
            Shape::OneWorker => flow.try_map("retry", try_it).on_error(policy),
            Shape::Pool => flow.try_map("retry", try_it).workers(2).on_error(policy),
            Shape::OrderedPool => flow
                .try_map("retry", try_it)
                .workers(2)
                .ordered()
                .on_error(policy),
            Shape::Async => flow
                .try_map_async("retry", move |x: u64| async move { try_it(&x) })
                .workers(4)
                .on_error(policy),
        };
        let _ = retried.sink("kept", collect());
        b.next()
            .unwrap()
            .try_map_async("breaks", |x: u64| async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if x == 0 { Err("broken") } else { Ok(x) }
            })
            .sink("other", for_each(|_x: u64| {}));
        let t = Instant::now();
        let err = p.run().await.unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{shape:?}: the backoff was not interrupted ({:?})",
            t.elapsed()
        );
        assert_eq!(err.to_string(), "stage 'breaks' failed: broken");
        let s = stage(&err.report, "retry");
        // A one-worker stage stops at item 3's batch; a pool goes on.
        let received = if matches!(shape, Shape::OneWorker) {
            4
        } else {
            10
        };
        assert_eq!(s.received, received, "{shape:?}: {s:?}");
        assert_eq!(
            (s.ok, s.dropped),
            (received - 1, 1),
            "{shape:?}: item 3 was waiting to retry: {s:?}"
        );
        assert_balanced(&err.report);
        let outcomes = log.outcomes();
        assert_eq!(outcomes.len(), 10);
        assert!(
            matches!(outcomes[3].1, AckOutcome::Failed { .. }),
            "{shape:?}"
        );
    });
}

#[test]
fn an_abort_during_a_retry_backoff_counts_the_waiting_item_as_dropped_one_worker() {
    retry_interrupted_by_abort(Shape::OneWorker);
}

#[test]
fn an_abort_during_a_retry_backoff_counts_the_waiting_item_as_dropped_pool() {
    retry_interrupted_by_abort(Shape::Pool);
}

#[test]
fn an_abort_during_a_retry_backoff_counts_the_waiting_item_as_dropped_ordered_pool() {
    retry_interrupted_by_abort(Shape::OrderedPool);
}

#[test]
fn an_abort_during_a_retry_backoff_counts_the_waiting_item_as_dropped_async() {
    retry_interrupted_by_abort(Shape::Async);
}

#[test]
fn a_fatal_item_error_counts_the_item_and_the_rest_of_its_batch() {
    for (workers, ordered) in [(1, false), (2, false), (2, true)] {
        within(20, async move {
            let p = Pipeline::with_options(PipelineOptions {
                batch_size: 10,
                ..Default::default()
            });
            let f = p
                .source("n", from_iter(0..100u64))
                .buffer(1)
                .try_map(
                    "parse",
                    |x: &u64| if *x == 55 { Err("bad 55") } else { Ok(*x) },
                )
                .workers(workers);
            let f = if ordered { f.ordered() } else { f };
            let _ = f.sink("out", collect());
            let err = p.run().await.unwrap_err();
            assert_eq!(err.to_string(), "stage 'parse' failed: bad 55");
            let s = stage(&err.report, "parse");
            assert!(
                s.dropped >= 1,
                "workers {workers}, ordered {ordered}: {s:?}"
            );
            assert_balanced(&err.report);
        });
    }
}

#[test]
fn a_fatal_async_error_counts_everything_in_flight() {
    within(20, async {
        let p = Pipeline::new();
        let _ = p
            .source("n", from_iter(0..100u64))
            .try_map_async("call", |x: u64| async move {
                tokio::time::sleep(Duration::from_millis(if x == 5 { 1 } else { 50 })).await;
                if x == 5 { Err("bad 5") } else { Ok(x) }
            })
            .workers(10)
            .sink("out", collect());
        let err = p.run().await.unwrap_err();
        assert_eq!(err.to_string(), "stage 'call' failed: bad 5");
        let s = stage(&err.report, "call");
        assert_eq!((s.received, s.ok), (100, 0), "{s:?}");
        assert_balanced(&err.report);
    });
}

/// Runs 0..1000 (batches of 100) into `sink`, fused into the source or
/// behind its own queue; returns the report and the ack outcomes.
fn into_failing_sink(sink: FailsOnWrite, queued: bool) -> (Report, Vec<(u64, AckOutcome)>) {
    within(20, async move {
        let log = AckLog::default();
        let l = log.clone();
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 100,
            ..Default::default()
        });
        let src = p.source(
            "src",
            from_acked_iter((0..1_000u64).map(move |i| (i, l.ack(i)))),
        );
        let src = if queued { src.buffer(2) } else { src };
        src.sink("db", sink);
        let err = p.run().await.unwrap_err();
        assert_eq!(err.to_string(), "stage 'db' failed: database is locked");
        (*err.report, log.outcomes())
    })
}

#[test]
fn a_sink_failing_on_its_nth_write_counts_what_it_did_not_commit_as_dropped() {
    for queued in [false, true] {
        for prefix in [0, 30] {
            let sink = FailsOnWrite::new(3, prefix);
            let committed = sink.committed.clone();
            let (report, outcomes) = into_failing_sink(sink, queued);
            let db = stage(&report, "db");
            let written = 200 + prefix as u64;
            assert_eq!(db.ok, written, "queued {queued}: {db:?}");
            assert!(db.received >= 300, "{db:?}");
            assert_eq!(db.dropped, db.received - written, "queued {queued}: {db:?}");
            assert_balanced(&report);
            let committed = committed.lock().unwrap().clone();
            assert_eq!(committed, (0..written).collect::<Vec<_>>());
            let mut ids: Vec<u64> = outcomes.iter().map(|(id, _)| *id).collect();
            ids.dedup();
            assert_eq!(ids.len(), outcomes.len(), "an ack settled twice");
            for (id, o) in outcomes {
                if id < written {
                    assert_eq!(o, AckOutcome::Delivered, "{id}");
                } else if id < 300 {
                    assert_eq!(
                        o,
                        AckOutcome::Failed {
                            reason: "stage 'db' failed: database is locked".into()
                        },
                        "{id}"
                    );
                } else {
                    assert!(!o.is_handled(), "{id}: {o:?}");
                }
            }
        }
    }
}

#[test]
fn a_sink_waiting_to_retry_when_the_run_aborts_counts_its_batch_as_dropped() {
    within(20, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 10,
            ..Default::default()
        });
        let mut b = p
            .source("src", from_iter(0..10u64))
            .broadcast(2)
            .into_iter();
        let _ = b
            .next()
            .unwrap()
            .sink("db", FailsOnWrite::new(1, 0))
            .on_error(ErrorPolicy::Retry(
                Retry::attempts(5)
                    .initial(Duration::from_secs(10))
                    .max_delay(Duration::from_secs(10)),
            ));
        b.next()
            .unwrap()
            .try_map_async("breaks", |x: u64| async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if x == 0 { Err("broken") } else { Ok(x) }
            })
            .sink("other", for_each(|_x: u64| {}));
        let err = p.run().await.unwrap_err();
        assert_eq!(err.to_string(), "stage 'breaks' failed: broken");
        let db = stage(&err.report, "db");
        assert_eq!((db.received, db.ok, db.dropped), (10, 0, 10), "{db:?}");
        assert_balanced(&err.report);
    });
}

/// Commits every write, then fails to close.
struct FailsInFinish(Arc<Mutex<Vec<u64>>>);

impl Sink<u64> for FailsInFinish {
    type Output = ();

    async fn write(&mut self, items: Vec<u64>) -> Result<(), WriteError<u64>> {
        self.0.lock().unwrap().extend(items);
        Ok(())
    }

    async fn finish(self) -> Result<(), BoxError> {
        Err("fsync failed: no space left on device".into())
    }
}

#[test]
fn a_sink_failing_in_finish_fails_the_run_and_its_counts_still_add_up() {
    for queued in [false, true] {
        within(20, async move {
            let log = AckLog::default();
            let l = log.clone();
            let committed = Arc::new(Mutex::new(Vec::new()));
            let p = Pipeline::with_options(PipelineOptions {
                batch_size: 64,
                ..Default::default()
            });
            let src = p.source(
                "src",
                from_acked_iter((0..1_000u64).map(move |i| (i, l.ack(i)))),
            );
            let src = if queued { src.buffer(2) } else { src };
            src.sink("db", FailsInFinish(committed.clone()));
            let err = p.run().await.unwrap_err();
            assert_eq!(
                err.to_string(),
                "stage 'db' failed: fsync failed: no space left on device"
            );
            let db = stage(&err.report, "db");
            // Every write returned Ok, so by the Sink contract every item
            // was committed before `finish` was called.
            assert_eq!(
                (db.received, db.ok, db.dropped),
                (1_000, 1_000, 0),
                "{db:?}"
            );
            assert_balanced(&err.report);
            assert_eq!(*committed.lock().unwrap(), (0..1_000).collect::<Vec<_>>());
            let outcomes = log.outcomes();
            assert_eq!(outcomes.len(), 1_000);
            assert!(outcomes.iter().all(|(_, o)| *o == AckOutcome::Delivered));
        });
    }
}

#[test]
fn a_source_error_counts_the_items_it_had_already_pulled() {
    within(20, async {
        let p = Pipeline::new();
        let items = (0..5u64).map(Ok).chain([Err("unreadable line 6")]);
        let _ = p.source("src", from_try_iter(items)).sink("out", collect());
        let err = p.run().await.unwrap_err();
        assert_eq!(err.to_string(), "stage 'src' failed: unreadable line 6");
        let s = stage(&err.report, "src");
        assert_eq!((s.received, s.ok, s.dropped), (5, 0, 5), "{s:?}");
        assert_balanced(&err.report);
    });
}
