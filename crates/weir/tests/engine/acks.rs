//! End-to-end acks: exactly once per source item, never before the sink
//! commit, through every kind of stage; dead letters and aborts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::{
    Ack, AckOutcome, DeadLetter, ErrorPolicy, Flow, Pipeline, PipelineOptions, Sink, Window,
    WriteError, from_acked_iter,
};

use crate::util::{AckLog, within};

/// A sink that marks values committed only when its write returns, and can
/// be told to fail after a number of items.
#[derive(Clone)]
struct Recorder<T> {
    committed: Arc<Mutex<HashSet<T>>>,
    fail_after: Option<usize>,
}

impl<T> Recorder<T> {
    fn new() -> Self {
        Recorder {
            committed: Arc::new(Mutex::new(HashSet::new())),
            fail_after: None,
        }
    }
}

impl<T: std::hash::Hash + Eq + Send + 'static> Sink<T> for Recorder<T> {
    type Output = ();

    async fn write(&mut self, items: Vec<T>) -> Result<(), WriteError<T>> {
        tokio::time::sleep(Duration::from_micros(300)).await;
        let mut c = self.committed.lock().unwrap();
        if let Some(limit) = self.fail_after
            && c.len() + items.len() > limit
        {
            return Err(WriteError::all(items, "disk full"));
        }
        c.extend(items);
        Ok(())
    }

    async fn finish(self) -> Result<(), weir::BoxError> {
        Ok(())
    }
}

/// Source items 0..n, each with an ack that checks, when it fires, that
/// `committed(id)` holds, and records a violation otherwise.
fn checked_source(
    n: u64,
    log: &AckLog,
    violations: &Arc<Mutex<Vec<String>>>,
    committed: impl Fn(u64) -> bool + Send + Sync + 'static,
) -> impl Iterator<Item = (u64, Ack)> + Send + 'static {
    let log = log.clone();
    let violations = violations.clone();
    let committed = Arc::new(committed);
    (0..n).map(move |id| {
        let inner = log.ack(id);
        let v = violations.clone();
        let c = committed.clone();
        (
            id,
            Ack::new(move |o| {
                if o == AckOutcome::Delivered && !c(id) {
                    v.lock()
                        .unwrap()
                        .push(format!("item {id} acked before its outputs were committed"));
                }
                inner.settle(o);
            }),
        )
    })
}

fn assert_once_each(log: &AckLog, n: u64) -> HashMap<u64, AckOutcome> {
    let outcomes = log.outcomes();
    let ids: Vec<u64> = outcomes.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (0..n).collect::<Vec<_>>(),
        "each item acked exactly once"
    );
    outcomes.into_iter().collect()
}

#[test]
fn acks_fire_once_after_all_derived_items_commit_through_flat_map_filter_broadcast() {
    within(30, async {
        let n = 1_000;
        let log = AckLog::default();
        let violations = Arc::new(Mutex::new(Vec::new()));
        let a = Recorder::<(u64, u8)>::new();
        let b = Recorder::<(u64, u8)>::new();
        let (ca, cb) = (a.committed.clone(), b.committed.clone());
        let source = checked_source(n, &log, &violations, move |id| {
            id % 5 == 0 || {
                let (ca, cb) = (ca.lock().unwrap(), cb.lock().unwrap());
                [0u8, 1]
                    .iter()
                    .all(|k| ca.contains(&(id, *k)) && cb.contains(&(id, *k)))
            }
        });
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 16,
            buffer: 2,
            ..Default::default()
        });
        let mut branches = p
            .source("src", from_acked_iter(source))
            .flat_map("split", |id| [(id, 0u8), (id, 1u8)])
            .workers(2)
            .filter("drop-5s", |(id, _)| id % 5 != 0)
            .broadcast(2)
            .into_iter();
        let _ = branches.next().unwrap().sink("a", a.clone());
        let _ = branches
            .next()
            .unwrap()
            .map("pass", |x| x)
            .workers(3)
            .sink("b", b.clone());
        p.run().await.unwrap();
        let outcomes = assert_once_each(&log, n);
        assert!(outcomes.values().all(|o| *o == AckOutcome::Delivered));
        assert_eq!(*violations.lock().unwrap(), Vec::<String>::new());
    });
}

#[test]
fn aggregate_acks_its_inputs_only_when_the_aggregate_commits() {
    within(30, async {
        let n = 500;
        let log = AckLog::default();
        let violations = Arc::new(Mutex::new(Vec::new()));
        let sink = Recorder::<(u64, u64)>::new();
        let c = sink.committed.clone();
        let source = checked_source(n, &log, &violations, move |id| {
            c.lock().unwrap().iter().any(|(k, _)| *k == id % 7)
        });
        let p = Pipeline::new();
        p.source("src", from_acked_iter(source))
            .aggregate(
                "sum",
                |id| id % 7,
                |_| 0u64,
                |acc, id| *acc += id,
                Window::Count(20),
            )
            .sink("out", sink.clone());
        p.run().await.unwrap();
        let outcomes = assert_once_each(&log, n);
        assert!(outcomes.values().all(|o| *o == AckOutcome::Delivered));
        assert_eq!(*violations.lock().unwrap(), Vec::<String>::new());
        let total: u64 = sink.committed.lock().unwrap().iter().map(|(_, s)| s).sum();
        assert_eq!(total, (0..n).sum::<u64>());
    });
}

/// A dead-letter sink that records the items it committed.
struct DlqRecorder(Arc<Mutex<Vec<(u64, String)>>>);

impl Sink<DeadLetter> for DlqRecorder {
    type Output = ();

    async fn write(&mut self, items: Vec<DeadLetter>) -> Result<(), WriteError<DeadLetter>> {
        let mut v = self.0.lock().unwrap();
        for d in items {
            v.push((*d.item::<u64>().unwrap(), d.stage.clone()));
        }
        Ok(())
    }

    async fn finish(self) -> Result<(), weir::BoxError> {
        Ok(())
    }
}

#[test]
fn dead_lettered_items_nack_with_the_reason_after_the_dead_letter_sink_commits() {
    within(30, async {
        let n = 300;
        let log = AckLog::default();
        let dlq = Arc::new(Mutex::new(Vec::new()));
        let d = dlq.clone();
        let violations = Arc::new(Mutex::new(Vec::new()));
        let v = violations.clone();
        let items: Vec<(u64, Ack)> = (0..n)
            .map(|id| {
                let inner = log.ack(id);
                let (d, v) = (d.clone(), v.clone());
                let ack = Ack::new(move |o| {
                    if matches!(o, AckOutcome::DeadLettered { .. })
                        && !d.lock().unwrap().iter().any(|(i, _)| *i == id)
                    {
                        v.lock()
                            .unwrap()
                            .push(format!("{id} nacked before the dead-letter sink committed"));
                    }
                    inner.settle(o);
                });
                (id, ack)
            })
            .collect();
        let p = Pipeline::new();
        p.dead_letter_sink(DlqRecorder(dlq.clone()));
        let out = p
            .source("src", from_acked_iter(items))
            .try_map("check", |id: &u64| {
                if id % 10 == 3 {
                    Err(format!("{id} is bad"))
                } else {
                    Ok(*id)
                }
            })
            .workers(2)
            .on_error(ErrorPolicy::DeadLetter)
            .sink("out", weir::collect());
        let report = p.run().await.unwrap();
        let outcomes = assert_once_each(&log, n);
        for (id, o) in &outcomes {
            if id % 10 == 3 {
                assert_eq!(
                    *o,
                    AckOutcome::DeadLettered {
                        stage: "check".into(),
                        reason: format!("{id} is bad")
                    }
                );
            } else {
                assert_eq!(*o, AckOutcome::Delivered);
            }
        }
        assert_eq!(out.take().unwrap().len(), 270);
        assert_eq!(dlq.lock().unwrap().len(), 30);
        assert_eq!(report.stage("check").unwrap().dead_lettered, 30);
        assert!(report.dead_letters.is_empty(), "a dead-letter sink was set");
        assert_eq!(*violations.lock().unwrap(), Vec::<String>::new());
    });
}

#[test]
fn abort_fails_the_acks_of_everything_not_committed_and_acks_nothing_twice() {
    within(30, async {
        let log = AckLog::default();
        let violations = Arc::new(Mutex::new(Vec::new()));
        let mut sink = Recorder::<u64>::new();
        sink.fail_after = Some(2_000);
        let c = sink.committed.clone();
        let source = checked_source(1_000_000, &log, &violations, move |id| {
            c.lock().unwrap().contains(&id)
        });
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 100,
            ..Default::default()
        });
        let a = p
            .source("src", from_acked_iter(source))
            .map("m", |x| x)
            .workers(2);
        let b = Flow::merge([a]);
        b.sink("out", sink.clone());
        let err = p.run().await.unwrap_err();
        assert!(
            err.to_string().contains("stage 'out' failed: disk full"),
            "{err}"
        );
        let outcomes = log.outcomes();
        let mut ids: Vec<u64> = outcomes.iter().map(|(id, _)| *id).collect();
        let before = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), before, "an item was acked twice");
        assert!(ids.len() < 1_000_000, "the source was not stopped");
        let committed = sink.committed.lock().unwrap().clone();
        assert_eq!(committed.len(), 2_000);
        for (id, o) in outcomes {
            match o {
                AckOutcome::Delivered => assert!(committed.contains(&id)),
                AckOutcome::Failed { .. } => assert!(!committed.contains(&id)),
                other => panic!("{id}: {other:?}"),
            }
        }
        assert_eq!(*violations.lock().unwrap(), Vec::<String>::new());
    });
}

#[test]
fn a_whole_input_aggregate_keeps_one_ack_per_source_batch_and_fires_after_commit() {
    within(30, async {
        // Every 100 items share one ack (forks of it), as a checkpointing
        // source does for a chunk of lines.
        let log = AckLog::default();
        let committed = Arc::new(Mutex::new(false));
        let c = committed.clone();
        let violations = Arc::new(Mutex::new(0u32));
        let v = violations.clone();
        let mut items = Vec::new();
        for chunk in 0..50u64 {
            let inner = log.ack(chunk);
            let (c, v) = (c.clone(), v.clone());
            let root = Ack::new(move |o| {
                if !*c.lock().unwrap() {
                    *v.lock().unwrap() += 1;
                }
                inner.settle(o);
            });
            for i in 0..100u64 {
                items.push((chunk * 100 + i, root.fork()));
            }
            root.deliver();
        }
        struct Flag(Arc<Mutex<bool>>, Vec<(u64, u64)>);
        impl Sink<(u64, u64)> for Flag {
            type Output = Vec<(u64, u64)>;
            async fn write(
                &mut self,
                mut items: Vec<(u64, u64)>,
            ) -> Result<(), WriteError<(u64, u64)>> {
                self.1.append(&mut items);
                *self.0.lock().unwrap() = true;
                Ok(())
            }
            async fn finish(self) -> Result<Vec<(u64, u64)>, weir::BoxError> {
                Ok(self.1)
            }
        }
        let p = Pipeline::new();
        let out = p
            .source("src", from_acked_iter(items))
            .aggregate("sum", |x| x % 7, |_| 0u64, |a, x| *a += x, Window::All)
            .sink("out", Flag(committed.clone(), Vec::new()));
        p.run().await.unwrap();
        let got = out.take().unwrap();
        assert_eq!(
            got.iter().map(|(_, s)| s).sum::<u64>(),
            (0..5_000u64).sum::<u64>()
        );
        let outcomes = assert_once_each(&log, 50);
        assert!(outcomes.values().all(|o| *o == AckOutcome::Delivered));
        assert_eq!(
            *violations.lock().unwrap(),
            0,
            "an ack fired before the aggregate was committed"
        );
    });
}
