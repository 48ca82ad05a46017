//! Fusion: one-worker sync stages run inside their producer's thread. The
//! behaviour must be the same as with queues between them: counts, acks,
//! errors and panics named after the right stage.

use weir::{
    AckOutcome, Error, ErrorPolicy, Pipeline, PipelineOptions, collect, from_acked_iter, from_iter,
};

use crate::util::{AckLog, assert_balanced, within};

/// The run failed with a panic of `stage` saying `message`.
fn assert_panic(err: &Error, stage: &str, message: &str) {
    match err {
        Error::Panic {
            stage: s,
            message: m,
        } => assert_eq!((s.as_str(), m.as_str()), (stage, message)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_chain_of_one_worker_stages_runs_in_the_source_thread() {
    within(20, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 10,
            ..Default::default()
        });
        let log = AckLog::default();
        let l = log.clone();
        let out = p
            .source(
                "src",
                from_acked_iter((0..1_000u64).map(move |i| (i, l.ack(i)))),
            )
            .map("inc", |x| x + 1)
            .filter("odd", |x| x % 2 == 1)
            .flat_map("twice", |x| [x, x])
            .sink("out", collect());
        let report = p.run().await.unwrap();
        let want: Vec<u64> = (1..=1_000u64)
            .filter(|x| x % 2 == 1)
            .flat_map(|x| [x, x])
            .collect();
        assert_eq!(out.take().unwrap(), want);
        for name in ["inc", "odd", "twice", "out"] {
            assert_eq!(
                report.stage(name).unwrap().runs_in.as_deref(),
                Some("src"),
                "{name}"
            );
        }
        assert_balanced(&report);
        let outcomes = log.outcomes();
        assert_eq!(outcomes.len(), 1_000);
        assert!(outcomes.iter().all(|(_, o)| *o == AckOutcome::Delivered));
    });
}

#[test]
fn workers_or_buffer_keep_a_stage_separate() {
    within(20, async {
        let p = Pipeline::new();
        let _out = p
            .source("src", from_iter(0..100u64))
            .map("pool", |x| x)
            .workers(2)
            .map("after-pool", |x| x)
            .buffer(4)
            .map("after-buffer", |x| x)
            .sink("out", collect());
        let report = p.run().await.unwrap();
        assert_eq!(report.stage("pool").unwrap().runs_in, None);
        assert_eq!(
            report.stage("after-pool").unwrap().runs_in,
            None,
            "a pool's output is shared by its workers"
        );
        assert_eq!(report.stage("after-buffer").unwrap().runs_in, None);
        assert_eq!(
            report.stage("out").unwrap().runs_in.as_deref(),
            Some("after-buffer")
        );
    });
}

#[test]
fn an_error_in_a_fused_stage_names_that_stage() {
    within(20, async {
        let p = Pipeline::new();
        let _out = p
            .source("src", from_iter(0..1_000u64))
            .map("ok", |x| x)
            .try_map(
                "parse",
                |x: &u64| if *x == 500 { Err("bad 500") } else { Ok(*x) },
            )
            .sink("out", collect());
        let err = p.run().await.unwrap_err();
        match &err.error {
            Error::Stage { stage, source } => {
                assert_eq!(stage, "parse");
                assert_eq!(source.to_string(), "bad 500");
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn a_panic_in_a_fused_stage_names_that_stage() {
    within(20, async {
        let p = Pipeline::new();
        let _out = p
            .source("src", from_iter(0..1_000u64))
            .map("boom", |x| if x == 700 { panic!("no {x}") } else { x })
            .sink("out", collect());
        let err = p.run().await.unwrap_err();
        assert_balanced(&err.report);
        assert_panic(&err.error, "boom", "no 700");
    });
}

#[test]
fn dead_letters_from_fused_stages_balance() {
    within(20, async {
        let p = Pipeline::new();
        let out = p
            .source("src", from_iter(0..1_000u64))
            .try_map(
                "parse",
                |x: &u64| if x % 10 == 0 { Err("tens") } else { Ok(*x) },
            )
            .on_error(ErrorPolicy::DeadLetter)
            .sink("out", collect());
        let report = p.run().await.unwrap();
        assert_eq!(out.take().unwrap().len(), 900);
        assert_eq!(report.dead_letters.len(), 100);
        assert_balanced(&report);
    });
}

/// A chain of unordered pools with one worker count is one pool: each
/// worker runs the whole chain. Nothing is lost or duplicated, every ack
/// settles once, and a stage with another count, `ordered()` or a sink
/// keeps its own queue.
#[test]
fn a_chain_of_pools_with_one_worker_count_runs_as_one_pool() {
    within(30, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 7,
            ..Default::default()
        });
        let log = AckLog::default();
        let l = log.clone();
        let out = p
            .source(
                "src",
                from_acked_iter((0..5_000u64).map(move |i| (i, l.ack(i)))),
            )
            .map("a", |x| x * 3)
            .workers(3)
            .filter("b", |x| x % 2 == 0)
            .workers(3)
            .flat_map("c", |x| [x, x + 1])
            .workers(3)
            .map("d", |x| x)
            .workers(2)
            .map("e", |x| x)
            .workers(2)
            .ordered()
            .sink("out", collect());
        let report = p.run().await.unwrap();
        let mut got = out.take().unwrap();
        got.sort_unstable();
        let mut want: Vec<u64> = (0..5_000u64)
            .map(|x| x * 3)
            .filter(|x| x % 2 == 0)
            .flat_map(|x| [x, x + 1])
            .collect();
        want.sort_unstable();
        assert_eq!(got, want);
        let runs_in = |s: &str| report.stage(s).unwrap().runs_in.clone();
        assert_eq!(runs_in("a"), None, "the source has one worker");
        assert_eq!(runs_in("b").as_deref(), Some("a"));
        assert_eq!(runs_in("c").as_deref(), Some("a"));
        assert_eq!(runs_in("d"), None, "another worker count");
        assert_eq!(runs_in("e"), None, "ordered");
        assert_eq!(runs_in("out"), None, "a pool's sink has its own queue");
        assert_balanced(&report);
        let outcomes = log.outcomes();
        assert_eq!(outcomes.len(), 5_000);
        assert!(outcomes.iter().all(|(_, o)| *o == AckOutcome::Delivered));
    });
}

#[test]
fn an_error_or_a_panic_in_a_fused_pool_names_that_stage() {
    within(20, async {
        let p = Pipeline::new();
        let _out = p
            .source("src", from_iter(0..10_000u64))
            .map("host", |x| x)
            .workers(2)
            .try_map(
                "parse",
                |x: &u64| if *x == 5_000 { Err("bad 5000") } else { Ok(*x) },
            )
            .workers(2)
            .sink("out", collect());
        let err = p.run().await.unwrap_err();
        assert_eq!(
            err.report.stage("parse").unwrap().runs_in.as_deref(),
            Some("host")
        );
        assert_balanced(&err.report);
        match &err.error {
            Error::Stage { stage, source } => {
                assert_eq!(stage, "parse");
                assert_eq!(source.to_string(), "bad 5000");
            }
            other => panic!("{other:?}"),
        }
    });
    within(20, async {
        let p = Pipeline::new();
        let _out = p
            .source("src", from_iter(0..10_000u64))
            .map("host", |x| x)
            .workers(2)
            .map("boom", |x| if x == 7_000 { panic!("no {x}") } else { x })
            .workers(2)
            .sink("out", collect());
        let err = p.run().await.unwrap_err();
        // The panicking batch's items count as dropped.
        assert_balanced(&err.report);
        assert_panic(&err.error, "boom", "no 7000");
    });
}

/// Cancelling a run whose fused pools are busy and whose sink is slow
/// (full channels) drains: every item the source produced is written or
/// counted, and every ack settles once.
#[test]
fn cancelling_fused_pools_with_full_channels_drains() {
    within(30, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 4,
            buffer: 1,
            ..Default::default()
        });
        let log = AckLog::default();
        let l = log.clone();
        let out = p
            .source(
                "src",
                from_acked_iter((0..u64::MAX).map(move |i| (i, l.ack(i)))),
            )
            .map("host", |x| x)
            .workers(2)
            .map("slow", |x| {
                std::thread::sleep(std::time::Duration::from_micros(200));
                x
            })
            .workers(2)
            .sink("out", collect());
        let token = p.cancel_token();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            token.cancel();
        });
        let report = p.run().await.unwrap();
        assert_eq!(
            report.stage("slow").unwrap().runs_in.as_deref(),
            Some("host")
        );
        assert_balanced(&report);
        let mut got = out.take().unwrap();
        got.sort_unstable();
        let produced = report.stage("src").unwrap().emitted;
        assert!(produced > 0);
        assert_eq!(got, (0..produced).collect::<Vec<_>>(), "drained in full");
        let outcomes = log.outcomes();
        assert_eq!(outcomes.len() as u64, produced);
        assert!(outcomes.iter().all(|(_, o)| *o == AckOutcome::Delivered));
    });
}

/// A panic in a stage's function, whatever runs it, leaves every stage's
/// counts balanced: the batch it was in is counted as dropped.
#[test]
fn a_panic_leaves_counts_balanced_in_every_kind_of_pool() {
    for mode in ["pool", "ordered", "flat_map"] {
        within(20, async move {
            let p = Pipeline::new();
            let src = p.source("src", from_iter(0..20_000u64));
            let boom = |x: u64| if x == 9_000 { panic!("no {x}") } else { x };
            let flow = match mode {
                "pool" => src.map("boom", boom).workers(3),
                "ordered" => src.map("boom", boom).workers(3).ordered(),
                _ => src.flat_map("boom", move |x| [boom(x)]).workers(2),
            };
            let _out = flow.sink("out", collect());
            let err = p.run().await.unwrap_err();
            assert!(matches!(err.error, Error::Panic { .. }), "{mode}");
            assert_balanced(&err.report);
            assert!(err.report.stage("boom").unwrap().dropped > 0, "{mode}");
        });
    }
}
