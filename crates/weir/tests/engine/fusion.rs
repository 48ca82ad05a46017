//! Fusion: one-worker sync stages run inside their producer's thread. The
//! behaviour must be the same as with queues between them: counts, acks,
//! errors and panics named after the right stage.

use weir::{
    AckOutcome, Error, ErrorPolicy, Pipeline, PipelineOptions, collect, from_acked_iter, from_iter,
};

use crate::util::{AckLog, assert_balanced, within};

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
        match &err.error {
            Error::Panic { stage, message } => {
                assert_eq!(stage, "boom");
                assert_eq!(message, "no 700");
            }
            other => panic!("{other:?}"),
        }
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
