//! Error policies, panics and failing sinks: counts always add up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use weir::{
    BoxError, Error, ErrorPolicy, Pipeline, PipelineOptions, Retry, Sink, WriteError, collect,
    from_iter,
};

use crate::util::{assert_balanced, within};

const N: u64 = 10_000;

/// Fails on 1% of items.
fn one_percent(x: &u64) -> Result<u64, String> {
    if x % 100 == 42 {
        Err(format!("item {x} is malformed"))
    } else {
        Ok(*x)
    }
}

#[test]
fn fail_policy_stops_the_run_naming_the_stage() {
    within(20, async {
        let p = Pipeline::new();
        let _out = p
            .source("n", from_iter(0..N))
            .try_map("parse", one_percent)
            .workers(2)
            .sink("out", collect());
        let err = p.run().await.unwrap_err();
        match &err.error {
            Error::Stage { stage, source } => {
                assert_eq!(stage, "parse");
                assert!(source.to_string().ends_with("is malformed"));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.report.stages.iter().all(|s| s.workers_active == 0));
    });
}

#[test]
fn dead_letter_policy_counts_add_up() {
    within(20, async {
        let p = Pipeline::new();
        let out = p
            .source("n", from_iter(0..N))
            .try_map("parse", one_percent)
            .workers(3)
            .on_error(ErrorPolicy::DeadLetter)
            .try_filter("keep", |x: &u64| {
                if *x == 7 {
                    Err("seven")
                } else {
                    Ok(x % 2 == 0)
                }
            })
            .on_error(ErrorPolicy::DeadLetter)
            .sink("out", collect());
        let report = p.run().await.unwrap();
        assert_balanced(&report);
        let parse = report.stage("parse").unwrap();
        assert_eq!(
            (parse.received, parse.ok, parse.dead_lettered),
            (N, N - 100, 100)
        );
        let keep = report.stage("keep").unwrap();
        assert_eq!(keep.received, N - 100);
        assert_eq!(keep.dead_lettered, 1);
        let got = out.take().unwrap();
        assert_eq!(got.len() as u64, keep.ok);
        // in = out + filtered + dead-lettered, end to end.
        assert_eq!(N, got.len() as u64 + keep.filtered + report.dead_lettered());
        assert_eq!(report.dead_letters.len(), 101);
        let d = report
            .dead_letters
            .iter()
            .find(|d| d.stage == "parse")
            .unwrap();
        assert_eq!(d.attempts, 1);
        assert!(d.error.ends_with("is malformed"));
        assert_eq!(d.item::<u64>().unwrap() % 100, 42);
    });
}

#[test]
fn retry_recovers_transient_failures() {
    within(20, async {
        // Every item fails on its first attempt only.
        let attempts = Arc::new(dashmap_like::Attempts::default());
        let a = attempts.clone();
        let p = Pipeline::new();
        let out = p
            .source("n", from_iter(0..200u64))
            .try_map("flaky", move |x: &u64| {
                if a.bump(*x) == 1 {
                    Err("transient")
                } else {
                    Ok(*x)
                }
            })
            .workers(2)
            .on_error(ErrorPolicy::Retry(
                Retry::attempts(3).initial(Duration::from_millis(1)),
            ))
            .sink("out", collect());
        let report = p.run().await.unwrap();
        let mut got = out.take().unwrap();
        got.sort_unstable();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        let s = report.stage("flaky").unwrap();
        assert_eq!((s.ok, s.retries, s.dead_lettered), (200, 200, 0));
        assert_balanced(&report);
    });
}

#[test]
fn retry_then_dead_letter_when_attempts_run_out() {
    within(20, async {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let p = Pipeline::new();
        let out = p
            .source("n", from_iter(0..N))
            .try_map("parse", move |x: &u64| {
                if x % 100 == 42 {
                    c.fetch_add(1, SeqCst);
                }
                one_percent(x)
            })
            .workers(2)
            .on_error(ErrorPolicy::Retry(
                Retry::attempts(4).initial(Duration::from_millis(1)),
            ))
            .sink("out", collect());
        let report = p.run().await.unwrap();
        assert_eq!(out.take().unwrap().len() as u64, N - 100);
        assert_eq!(
            calls.load(SeqCst),
            400,
            "4 attempts for each of 100 bad items"
        );
        assert_eq!(report.dead_letters.len(), 100);
        assert!(report.dead_letters.iter().all(|d| d.attempts == 4));
        assert_eq!(report.stage("parse").unwrap().retries, 300);
        assert_balanced(&report);
    });
}

#[test]
fn async_stage_errors_follow_the_policy() {
    within(20, async {
        let p = Pipeline::new();
        let out = p
            .source("n", from_iter(0..1_000u64))
            .try_map_async("call", |x| async move { one_percent(&x) })
            .workers(10)
            .on_error(ErrorPolicy::Retry(
                Retry::attempts(2).initial(Duration::from_millis(1)),
            ))
            .sink("out", collect());
        let report = p.run().await.unwrap();
        assert_eq!(out.take().unwrap().len(), 990);
        assert_eq!(report.dead_letters.len(), 10);
        assert!(
            report
                .dead_letters
                .iter()
                .all(|d| d.attempts == 2 && d.item::<u64>().is_some())
        );
        assert_balanced(&report);
    });
}

#[test]
fn a_panicking_worker_fails_the_run_with_its_message() {
    within(20, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 8,
            buffer: 1,
            ..Default::default()
        });
        let _out = p
            .source("n", from_iter(0..1_000_000u64))
            .map("boom", |x| {
                if x == 5_000 {
                    panic!("cannot handle {x}");
                }
                x
            })
            .workers(2)
            .sink("out", collect());
        let err = p.run().await.unwrap_err();
        match &err.error {
            Error::Panic { stage, message } => {
                assert_eq!(stage, "boom");
                assert_eq!(message, "cannot handle 5000");
            }
            other => panic!("{other:?}"),
        }
        // The source was stopped long before the end.
        assert!(err.report.stage("n").unwrap().emitted < 1_000_000);
    });
}

/// A sink that always fails.
struct Broken;

impl Sink<u64> for Broken {
    type Output = ();
    async fn write(&mut self, items: Vec<u64>) -> Result<(), WriteError<u64>> {
        Err(WriteError::all(items, "database is locked"))
    }
    async fn finish(self) -> Result<(), BoxError> {
        Ok(())
    }
}

#[test]
fn a_failing_sink_fails_the_run_promptly_even_with_full_edges() {
    within(20, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 4,
            buffer: 1,
            ..Default::default()
        });
        p.source("n", from_iter(0..u64::MAX))
            .map("m", |x| x)
            .sink("db", Broken);
        let err = p.run().await.unwrap_err();
        assert_eq!(err.to_string(), "stage 'db' failed: database is locked");
    });
}

#[test]
fn a_failing_sink_can_retry_then_dead_letter_instead() {
    within(20, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 10,
            ..Default::default()
        });
        let _h = p
            .source("n", from_iter(0..100u64))
            .sink("db", Broken)
            .on_error(ErrorPolicy::Retry(
                Retry::attempts(2).initial(Duration::from_millis(1)),
            ));
        let report = p.run().await.unwrap();
        assert_eq!(report.dead_letters.len(), 100);
        assert!(
            report
                .dead_letters
                .iter()
                .all(|d| d.stage == "db" && d.attempts == 2)
        );
        let db = report.stage("db").unwrap();
        assert_eq!(
            (db.received, db.ok, db.dead_lettered, db.retries),
            (100, 0, 100, 10)
        );
        assert_balanced(&report);
    });
}

/// A sink the destination refuses outright (wrong credentials).
struct Refused;

impl Sink<u64> for Refused {
    type Output = ();
    async fn write(&mut self, items: Vec<u64>) -> Result<(), WriteError<u64>> {
        Err(WriteError::fatal(items, "password authentication failed"))
    }
    async fn finish(self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A fatal write error fails the run under the dead-letter and retry
/// policies too, without retrying: nothing is dead-lettered, what the
/// sink held is counted as dropped.
#[test]
fn a_fatal_write_error_fails_the_run_under_every_policy() {
    for policy in [
        ErrorPolicy::DeadLetter,
        ErrorPolicy::Retry(Retry::attempts(5).initial(Duration::from_millis(1))),
    ] {
        within(20, async {
            let p = Pipeline::with_options(PipelineOptions {
                batch_size: 10,
                ..Default::default()
            });
            p.source("n", from_iter(0..100u64))
                .sink("db", Refused)
                .on_error(policy);
            let err = p.run().await.unwrap_err();
            assert_eq!(
                err.to_string(),
                "stage 'db' failed: password authentication failed"
            );
            let db = err.report.stage("db").unwrap();
            assert_eq!((db.ok, db.dead_lettered, db.retries), (0, 0, 0));
            assert!(db.dropped > 0);
            assert!(err.report.dead_letters.is_empty());
            assert_balanced(&err.report);
        });
    }
}

#[test]
fn too_many_dead_letters_without_a_sink_fail_rather_than_drop() {
    within(20, async {
        let p = Pipeline::with_options(PipelineOptions {
            dead_letter_limit: 50,
            ..Default::default()
        });
        let _out = p
            .source("n", from_iter(0..N))
            .try_map("parse", one_percent)
            .on_error(ErrorPolicy::DeadLetter)
            .sink("out", collect());
        let err = p.run().await.unwrap_err();
        assert!(
            err.to_string().contains("more than 50 dead letters"),
            "{err}"
        );
        assert_eq!(err.report.dead_letters.len(), 50);
    });
}

/// A tiny concurrent attempt counter (kept local: one test needs it).
mod dashmap_like {
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Attempts(Mutex<HashMap<u64, u32>>);

    impl Attempts {
        pub fn bump(&self, k: u64) -> u32 {
            let mut m = self.0.lock().unwrap();
            let e = m.entry(k).or_insert(0);
            *e += 1;
            *e
        }
    }
}

/// A sink that cannot store multiples of 10 (a value that does not fit).
struct Picky(Vec<u64>);

impl Sink<u64> for Picky {
    type Output = Vec<u64>;
    async fn write(&mut self, mut items: Vec<u64>) -> Result<(), WriteError<u64>> {
        match items.iter().position(|x| x % 10 == 0) {
            None => {
                self.0.append(&mut items);
                Ok(())
            }
            Some(i) => {
                let rest = items.split_off(i);
                self.0.append(&mut items);
                let msg = format!("{} does not fit", rest[0]);
                Err(WriteError::bad_item(rest, msg))
            }
        }
    }
    async fn finish(self) -> Result<Vec<u64>, BoxError> {
        Ok(self.0)
    }
}

#[test]
fn a_sink_rejecting_one_item_dead_letters_that_item_alone() {
    for policy in [ErrorPolicy::DeadLetter, ErrorPolicy::Fail] {
        a_sink_rejecting_one_item_dead_letters_it_under(policy);
    }
}

/// Under `Fail` too: the item is bad, the destination is not (a run that
/// stopped on the first bad value lost the rest of its input's work).
fn a_sink_rejecting_one_item_dead_letters_it_under(policy: ErrorPolicy) {
    within(20, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 16,
            ..Default::default()
        });
        let out = p
            .source("n", from_iter(1..=1_000u64))
            .sink("db", Picky(Vec::new()))
            .on_error(policy);
        let report = p.run().await.unwrap();
        let stored = out.take().unwrap();
        assert_eq!(
            stored,
            (1..=1_000u64).filter(|x| x % 10 != 0).collect::<Vec<_>>()
        );
        let mut dead: Vec<u64> = report
            .dead_letters
            .iter()
            .map(|d| *d.item::<u64>().unwrap())
            .collect();
        dead.sort_unstable();
        assert_eq!(dead, (1..=100u64).map(|x| x * 10).collect::<Vec<_>>());
        assert!(
            report
                .dead_letters
                .iter()
                .all(|d| d.error.ends_with("does not fit"))
        );
        assert_balanced(&report);
    });
}
