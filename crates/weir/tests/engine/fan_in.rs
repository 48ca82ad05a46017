//! Fan-in: aggregation windows and scatter-gather.

use std::time::Duration;

use futures::StreamExt;
use weir::{
    BranchError, ErrorPolicy, Gather, Pipeline, PipelineOptions, Window, branch, collect,
    from_iter, from_stream,
};

use crate::util::{assert_balanced, within};

#[test]
fn count_window_emits_per_key_every_n_and_the_rest_at_the_end() {
    within(20, async {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 3,
            ..Default::default()
        });
        let out = p
            .source("n", from_iter(0..25u32))
            .aggregate(
                "by-mod",
                |x| x % 2,
                |_| Vec::new(),
                |acc: &mut Vec<u32>, x| acc.push(x),
                Window::Count(5),
            )
            .sink("out", collect());
        let report = p.run().await.unwrap();
        let got = out.take().unwrap();
        let evens: Vec<u32> = (0..25).filter(|x| x % 2 == 0).collect();
        let odds: Vec<u32> = (0..25).filter(|x| x % 2 == 1).collect();
        let want = vec![
            (0, evens[0..5].to_vec()),
            (1, odds[0..5].to_vec()),
            (0, evens[5..10].to_vec()),
            (1, odds[5..10].to_vec()),
            (0, evens[10..13].to_vec()),
            (1, odds[10..12].to_vec()),
        ];
        assert_eq!(got, want);
        let agg = report.stage("by-mod").unwrap();
        assert_eq!((agg.received, agg.ok, agg.emitted), (25, 25, 6));
        assert_balanced(&report);
    });
}

#[test]
fn tumbling_window_flushes_on_time_without_new_input() {
    within(20, async {
        // Ten items, then silence for 400 ms, then ten more: with a 100 ms
        // window the first ten are emitted before the second ten arrive.
        let first = futures::stream::iter(0..10u32);
        let pause = futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            100u32
        });
        let second = futures::stream::iter(101..110u32);
        let stream = first.chain(pause).chain(second);
        let p = Pipeline::new();
        let out = p
            .source("s", from_stream(stream))
            .aggregate(
                "count",
                |_| (),
                |_| 0u32,
                |n, _| *n += 1,
                Window::Tumbling(Duration::from_millis(100)),
            )
            .sink("out", collect());
        p.run().await.unwrap();
        let counts: Vec<u32> = out.take().unwrap().into_iter().map(|(_, n)| n).collect();
        assert_eq!(counts.iter().sum::<u32>(), 20);
        assert_eq!(
            counts[0], 10,
            "first window should hold the first burst: {counts:?}"
        );
    });
}

#[test]
fn reduce_folds_the_whole_input() {
    within(20, async {
        let p = Pipeline::new();
        let out = p
            .source("n", from_iter(1..=100u64))
            .map("sq", |x| x * x)
            .workers(2)
            .reduce("total", 0u64, |acc, x| *acc += x)
            .sink("out", collect());
        p.run().await.unwrap();
        assert_eq!(
            out.take().unwrap(),
            vec![(1..=100u64).map(|x| x * x).sum::<u64>()]
        );
    });
}

fn slow_branch(ms: u64) -> weir::Branch<u32, u32> {
    branch("slow", move |x: &u32| {
        let x = *x;
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, String>(x + 1000)
        }
    })
}

fn fast_branch() -> weir::Branch<u32, u32> {
    branch("fast", |x: &u32| {
        let x = *x;
        async move { Ok::<_, String>(x * 2) }
    })
}

#[test]
fn scatter_gather_runs_branches_concurrently_and_joins_in_branch_order() {
    within(20, async {
        let p = Pipeline::new();
        let out = p
            .source("ids", from_iter(0..20u32))
            .scatter_gather(
                "enrich",
                vec![slow_branch(50), slow_branch(50), fast_branch()],
                Duration::from_secs(2),
                Gather::All,
                |x, r| (x, r.into_iter().map(Result::unwrap).collect::<Vec<_>>()),
            )
            .workers(20)
            .ordered()
            .sink("out", collect());
        let t = std::time::Instant::now();
        p.run().await.unwrap();
        let got = out.take().unwrap();
        assert_eq!(
            got,
            (0..20)
                .map(|x| (x, vec![x + 1000, x + 1000, x * 2]))
                .collect::<Vec<_>>()
        );
        // Branches and items ran concurrently: far less than 20 * 2 * 50 ms.
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
    });
}

#[test]
fn scatter_gather_partial_results_and_timeouts() {
    within(20, async {
        let p = Pipeline::new();
        let out = p
            .source("ids", from_iter(0..5u32))
            .scatter_gather(
                "enrich",
                vec![fast_branch(), slow_branch(5_000)],
                Duration::from_millis(50),
                Gather::AtLeast(1),
                |x, r| (x, r),
            )
            .workers(5)
            .sink("out", collect());
        p.run().await.unwrap();
        for (x, r) in out.take().unwrap() {
            assert_eq!(r[0], Ok(x * 2));
            assert_eq!(
                r[1],
                Err(BranchError::Timeout {
                    branch: "slow".into(),
                    after: Duration::from_millis(50)
                })
            );
        }
    });
}

#[test]
fn scatter_gather_short_of_quorum_goes_to_dead_letter() {
    within(20, async {
        let p = Pipeline::new();
        let out = p
            .source("ids", from_iter(0..4u32))
            .scatter_gather(
                "enrich",
                vec![fast_branch(), slow_branch(5_000)],
                Duration::from_millis(30),
                Gather::All,
                |x, _| x,
            )
            .workers(4)
            .on_error(ErrorPolicy::DeadLetter)
            .sink("out", collect());
        let report = p.run().await.unwrap();
        assert!(out.take().unwrap().is_empty());
        assert_eq!(report.dead_letters.len(), 4);
        let mut items: Vec<u32> = report
            .dead_letters
            .iter()
            .map(|d| *d.item::<u32>().unwrap())
            .collect();
        items.sort_unstable();
        assert_eq!(items, vec![0, 1, 2, 3]);
        assert!(
            report.dead_letters[0].error.contains("timed out"),
            "{}",
            report.dead_letters[0].error
        );
        assert_balanced(&report);
    });
}
