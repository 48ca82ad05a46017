//! Loops: a flow fed back upstream. The run ends by itself exactly when
//! nothing is left inside; a frontier far larger than every channel does
//! not deadlock; `max_depth` and `max_pending` bound it, with counts that
//! add up; source acks fire once, after everything derived is done; a
//! cancel or a panic inside the loop ends the run.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use weir::{
    AckOutcome, ErrorPolicy, LoopOptions, Pipeline, PipelineOptions, collect, from_acked_iter,
    from_iter,
};

use crate::util::{AckLog, assert_balanced, within};

/// A node of a tree: `(root, path)`; each node has `fanout(node)` children
/// until `depth`.
type Node = (u64, Vec<u8>);

fn children(n: &Node, fanout: u8, depth: usize) -> Vec<Node> {
    if n.1.len() >= depth {
        return Vec::new();
    }
    (0..fanout)
        .map(|i| {
            let mut p = n.1.clone();
            p.push(i);
            (n.0, p)
        })
        .collect()
}

/// Every node of the trees under `roots`, as a plain loop computes them.
fn expected(roots: u64, fanout: u8, depth: usize) -> Vec<Node> {
    let mut all = Vec::new();
    let mut frontier: Vec<Node> = (0..roots).map(|r| (r, Vec::new())).collect();
    while let Some(n) = frontier.pop() {
        frontier.extend(children(&n, fanout, depth));
        all.push(n);
    }
    all.sort();
    all
}

/// Expands trees through a loop: every node is emitted once, children are
/// fed back. Returns the nodes seen, sorted, and the report.
async fn expand(
    roots: u64,
    fanout: u8,
    depth: usize,
    opts: PipelineOptions,
    workers: usize,
) -> (Vec<Node>, weir::Report) {
    let p = Pipeline::with_options(opts);
    let (body, back) = p
        .source("roots", from_iter((0..roots).map(|r| (r, Vec::new()))))
        .loop_start("tree", LoopOptions::default());
    let nodes = body.broadcast(2);
    let mut it = nodes.into_iter();
    let (a, b) = (it.next().unwrap(), it.next().unwrap());
    back.close(
        a.flat_map("children", move |n: Node| children(&n, fanout, depth))
            .workers(workers),
    );
    let out = b.sink("nodes", collect());
    let report = p.run().await.expect("the run completes");
    let mut got = out.take().unwrap();
    got.sort();
    (got, report)
}

#[test]
fn a_tree_is_expanded_exactly_once_and_the_run_ends_by_itself() {
    let (got, report) = within(60, async {
        // 3 roots, fan-out 4, depth 6: 3 × 5461 = 16,383 nodes through
        // batches of 16 and edges of 2 batches: the frontier is hundreds
        // of times larger than every channel.
        expand(
            3,
            4,
            6,
            PipelineOptions {
                batch_size: 16,
                buffer: 2,
                ..PipelineOptions::default()
            },
            2,
        )
        .await
    });
    assert_eq!(got, expected(3, 4, 6), "no node lost or repeated");
    assert_balanced(&report);
    let tree = report.stage("tree").unwrap();
    assert_eq!(tree.received, 16_383);
    assert_eq!(tree.ok, 16_383);
}

#[test]
fn max_depth_bounds_an_endless_loop_and_counts_what_it_stops() {
    let report = within(30, async {
        let p = Pipeline::new();
        let (body, back) = p.source("seeds", from_iter(0..10u64)).loop_start(
            "again",
            LoopOptions {
                max_depth: Some(5),
                ..LoopOptions::default()
            },
        );
        let mut copies = body.broadcast(2).into_iter();
        let (a, b) = (copies.next().unwrap(), copies.next().unwrap());
        // Every item comes back, for ever, unless the depth stops it.
        back.close(a.map("same", |x: u64| x));
        let out = b.sink("out", collect());
        let report = p.run().await.unwrap();
        let got = out.take().unwrap();
        assert_eq!(got.len(), 10 * 6, "depths 0 to 5");
        report
    });
    assert_balanced(&report);
    let s = report.stage("again").unwrap();
    assert_eq!(s.filtered, 10, "the sixth pass of each item is filtered");
    assert_eq!(s.received, 70);
}

#[test]
fn a_full_loop_dead_letters_what_it_cannot_hold() {
    let report = within(30, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 8,
            ..PipelineOptions::default()
        });
        let (body, back) = p.source("seeds", from_iter(0..4u64)).loop_start(
            "burst",
            LoopOptions {
                max_depth: Some(1),
                max_pending: 100,
            },
        );
        let mut copies = body.broadcast(2).into_iter();
        let (a, b) = (copies.next().unwrap(), copies.next().unwrap());
        // Each seed comes back as 1,000 items at once: far more than 100.
        back.close(a.flat_map("expand", |x: u64| {
            if x < 1000 {
                (0..1000).map(|i| 1000 + x * 1000 + i).collect()
            } else {
                Vec::new()
            }
        }));
        let out = b.sink("out", collect());
        let report = p.run().await.unwrap();
        let got: Vec<u64> = out.take().unwrap();
        let dead = report.dead_letters.len();
        assert!(dead > 0, "the queue overflowed");
        assert!(
            report.dead_letters[0].error.contains("loop full"),
            "{}",
            report.dead_letters[0].error
        );
        // Nothing lost: every fed-back item either went round or is a dead
        // letter.
        assert_eq!(got.len() - 4 + dead, 4000);
        report
    });
    assert_balanced(&report);
}

#[test]
fn source_acks_fire_once_after_every_descendant_is_done() {
    let log = AckLog::default();
    let l = log.clone();
    let (report, committed) = within(30, async move {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 4,
            ..PipelineOptions::default()
        });
        let src = from_acked_iter((0..20u64).map(move |i| ((i, Vec::new()), l.ack(i))));
        let (body, back) = p
            .source("roots", src)
            .loop_start("tree", LoopOptions::default());
        let mut copies = body.broadcast(2).into_iter();
        let (a, b) = (copies.next().unwrap(), copies.next().unwrap());
        back.close(a.flat_map("children", |n: Node| children(&n, 2, 4)));
        // Nodes of root 7 at depth 3 are rejected: its ack says so.
        let out = b
            .try_map("check", |n: &Node| {
                if n.0 == 7 && n.1.len() == 3 {
                    Err("bad node")
                } else {
                    Ok(n.clone())
                }
            })
            .on_error(ErrorPolicy::DeadLetter)
            .sink("nodes", collect());
        let report = p.run().await.unwrap();
        (report, out.take().unwrap().len())
    });
    assert_balanced(&report);
    assert_eq!(committed, 20 * 31 - 8);
    let outcomes = log.outcomes();
    assert_eq!(outcomes.len(), 20, "one outcome per source item");
    for (id, o) in outcomes {
        if id == 7 {
            assert!(matches!(o, AckOutcome::DeadLettered { .. }), "{o:?}");
        } else {
            assert_eq!(o, AckOutcome::Delivered, "item {id}");
        }
    }
}

#[test]
fn a_cancel_ends_an_endless_loop_and_its_acks_fail() {
    let log = AckLog::default();
    let l = log.clone();
    let report = within(30, async move {
        let p = Pipeline::new();
        let cancel = p.cancel_token();
        let src = from_acked_iter((0..5u64).map(move |i| (i, l.ack(i))));
        let (body, back) = p
            .source("seeds", src)
            .loop_start("forever", LoopOptions::default());
        let mut copies = body.broadcast(2).into_iter();
        let (a, b) = (copies.next().unwrap(), copies.next().unwrap());
        let passes = Arc::new(AtomicUsize::new(0));
        let n = passes.clone();
        back.close(a.map("again", move |x: u64| {
            if n.fetch_add(1, Ordering::Relaxed) == 10_000 {
                cancel.cancel();
            }
            x
        }));
        let _out = b.sink("out", weir::for_each(|_: u64| {}));
        let report = p.run().await.unwrap();
        assert!(report.cancelled);
        report
    });
    assert_balanced(&report);
    assert!(report.stage("forever").unwrap().dropped > 0);
    let outcomes = log.outcomes();
    assert_eq!(outcomes.len(), 5);
    assert!(
        outcomes.iter().all(|(_, o)| !o.is_handled()),
        "{outcomes:?}"
    );
}

#[test]
fn a_panic_inside_a_loop_fails_the_run_without_hanging() {
    let err = within(30, async {
        let p = Pipeline::new();
        let (body, back) = p
            .source("seeds", from_iter(0..100u64))
            .loop_start("l", LoopOptions::default());
        let mut copies = body.broadcast(2).into_iter();
        let (a, b) = (copies.next().unwrap(), copies.next().unwrap());
        back.close(a.flat_map("boom", |x: u64| {
            assert!(x < 300, "item {x}");
            vec![x + 100]
        }));
        let _out = b.sink("out", weir::for_each(|_: u64| {}));
        p.run().await.unwrap_err()
    });
    assert!(err.to_string().contains("boom"), "{err}");
}

#[test]
fn a_loop_never_closed_is_a_build_error() {
    let err = within(10, async {
        let p = Pipeline::new();
        let (body, _back) = p
            .source("s", from_iter(0..3u64))
            .loop_start("open", LoopOptions::default());
        let _out = body.sink("out", collect());
        p.run().await.unwrap_err()
    });
    assert!(
        err.to_string().contains("loop 'open' was never closed"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random trees through random batch sizes, buffers and worker counts:
    /// the loop emits exactly the nodes a plain traversal finds.
    #[test]
    fn any_tree_any_shape(
        roots in 1u64..6,
        fanout in 1u8..4,
        depth in 0usize..6,
        batch_size in 1usize..40,
        buffer in 1usize..4,
        workers in 1usize..4,
    ) {
        let (got, report) = within(60, expand(
            roots,
            fanout,
            depth,
            PipelineOptions { batch_size, buffer, ..PipelineOptions::default() },
            workers,
        ));
        let want = expected(roots, fanout, depth);
        let mut counts: HashMap<&Node, usize> = HashMap::new();
        for n in &got {
            *counts.entry(n).or_default() += 1;
        }
        prop_assert!(counts.values().all(|&c| c == 1), "a node was repeated");
        prop_assert_eq!(got, want);
        assert_balanced(&report);
    }
}

/// A stage that waits for the end of its input (an aggregate over all of
/// it) after a loop: its flow leaves the loop, so the loop ends without
/// waiting for it, and the total is exact.
#[test]
fn an_aggregate_after_a_loop_sees_everything_and_the_run_ends() {
    let (total, report) = within(30, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 8,
            ..PipelineOptions::default()
        });
        let (body, back) = p
            .source("roots", from_iter((0..5u64).map(|r| (r, Vec::new()))))
            .loop_start("tree", LoopOptions::default());
        let exit = back.exit();
        let mut copies = body.broadcast(2).into_iter();
        let (a, b) = (copies.next().unwrap(), copies.next().unwrap());
        back.close(a.flat_map("children", |n: Node| children(&n, 3, 4)));
        let total = b
            .leave_loop("tree-exit", exit)
            .reduce("count", 0u64, |acc, _n: Node| *acc += 1)
            .sink("total", collect());
        let report = p.run().await.unwrap();
        (total.take().unwrap(), report)
    });
    assert_eq!(total, vec![5 * (1 + 3 + 9 + 27 + 81)]);
    assert_balanced(&report);
}
