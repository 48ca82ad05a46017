//! Retries keep input order: a one-worker stage and an `ordered()` pool emit
//! a retried item's outputs where they belong, not after the rest of its
//! batch (issue 8, item 17).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use weir::{ErrorPolicy, Flow, Pipeline, PipelineOptions, Retry, collect, from_iter};

use crate::util::{assert_balanced, within};

/// Fails each listed item on its first `times` attempts.
fn flaky(fail: &'static [u64], times: u32) -> impl Fn(&u64) -> Result<u64, String> + Send + Sync {
    let attempts: Arc<Vec<AtomicU32>> = Arc::new((0..64).map(|_| AtomicU32::new(0)).collect());
    move |x: &u64| {
        if fail.contains(x) && attempts[*x as usize].fetch_add(1, SeqCst) < times {
            Err(format!("{x} not yet"))
        } else {
            Ok(*x)
        }
    }
}

fn retry() -> ErrorPolicy {
    ErrorPolicy::Retry(Retry::attempts(4).initial(Duration::from_millis(1)))
}

/// Runs `0..n` through `stage` (which adds the stage under test) and
/// returns what the sink got.
async fn through(n: u64, stage: impl FnOnce(Flow<u64>) -> Flow<u64>) -> Vec<u64> {
    let p = Pipeline::with_options(PipelineOptions {
        batch_size: 16,
        ..Default::default()
    });
    let out = stage(p.source("n", from_iter(0..n))).sink("out", collect());
    let report = p.run().await.unwrap();
    assert_balanced(&report);
    out.take().unwrap()
}

#[test]
fn a_one_worker_stage_keeps_order_when_an_item_is_retried() {
    let got = within(
        20,
        through(40, |f| {
            f.try_map("flaky", flaky(&[3, 20], 1)).on_error(retry())
        }),
    );
    assert_eq!(got, (0..40).collect::<Vec<_>>());
}

#[test]
fn a_one_worker_stage_with_its_own_queue_keeps_order_when_an_item_is_retried() {
    let got = within(
        20,
        through(40, |f| {
            f.buffer(2)
                .try_map("flaky", flaky(&[0, 3, 4, 15, 31], 2))
                .on_error(retry())
        }),
    );
    assert_eq!(got, (0..40).collect::<Vec<_>>());
}

#[test]
fn an_ordered_pool_keeps_order_when_an_item_is_retried() {
    let got = within(
        20,
        through(64, |f| {
            f.try_map("flaky", flaky(&[3, 17, 18, 40, 63], 1))
                .workers(3)
                .ordered()
                .on_error(retry())
        }),
    );
    assert_eq!(got, (0..64).collect::<Vec<_>>());
}

#[test]
fn a_retried_flat_map_item_keeps_its_outputs_in_place() {
    let got = within(20, async {
        let attempts: Arc<Vec<AtomicU32>> = Arc::new((0..10).map(|_| AtomicU32::new(0)).collect());
        let p = Pipeline::new();
        let out = p
            .source("n", from_iter(0..10u64))
            .try_flat_map("twice", move |x: &u64| {
                if *x == 4 && attempts[4].fetch_add(1, SeqCst) == 0 {
                    Err("not yet")
                } else {
                    Ok([*x * 10, *x * 10 + 1])
                }
            })
            .on_error(retry())
            .sink("out", collect());
        let report = p.run().await.unwrap();
        assert_balanced(&report);
        out.take().unwrap()
    });
    let want: Vec<u64> = (0..10u64).flat_map(|x| [x * 10, x * 10 + 1]).collect();
    assert_eq!(got, want);
}
