//! A source whose items come slowly does not hold them until a batch is
//! full: the first item reaches the sink while the source is still
//! producing, through a fused stage and a pool behind a channel, and a
//! cancel is seen as soon; a fast source still fills whole batches.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir::{Pipeline, PipelineOptions};

use crate::util::{assert_balanced, within};

/// One item every `gap`, `n` items; each item's production time recorded.
fn trickle(n: u64, gap: Duration, made: Arc<Mutex<Vec<Instant>>>) -> impl Iterator<Item = u64> {
    (0..n).inspect(move |_| {
        std::thread::sleep(gap);
        made.lock().unwrap().push(Instant::now());
    })
}

#[test]
fn a_trickle_reaches_the_sink_while_the_source_still_runs() {
    within(60, async {
        let made = Arc::new(Mutex::new(Vec::new()));
        let seen: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let s = seen.clone();
        let p = Pipeline::new();
        let report_out = p
            .source(
                "in",
                weir::from_iter(trickle(100, Duration::from_millis(4), made.clone())),
            )
            // One worker fed by a one-worker iterator source: fused into the
            // source's thread, so a partial batch must be pushed through it.
            .map("double", |x: u64| x * 2)
            // Two workers: a channel between them and the fused chain.
            .map("inc", |x: u64| x + 1)
            .workers(2)
            .sink(
                "out",
                weir::for_each(move |x: u64| s.lock().unwrap().push((x, Instant::now()))),
            );
        let report = p.run().await.unwrap();
        drop(report_out);
        assert_balanced(&report);
        assert_eq!(
            report.stage("double").unwrap().runs_in.as_deref(),
            Some("in")
        );
        let seen = seen.lock().unwrap().clone();
        let made = made.lock().unwrap().clone();
        assert_eq!(seen.len(), 100);
        let first = seen
            .iter()
            .find(|(x, _)| *x == 1)
            .expect("item 0 arrived")
            .1;
        // Item 0 was made at made[0]; the source was still making items
        // long after it arrived (100 items, 4 ms apart, about 400 ms).
        assert!(
            first < made[50],
            "item 0 reached the sink {:?} after it was made, after item 50 was made",
            first - made[0]
        );
    });
}

/// A burst, then a trickle: the trickle is not held back by what the
/// burst taught the source about its pace.
#[test]
fn a_trickle_after_a_burst_is_not_held() {
    within(60, async {
        let made: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let seen: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let (m, s) = (made.clone(), seen.clone());
        let items = (0..10_060u64).inspect(move |&i| {
            if i >= 10_000 {
                std::thread::sleep(Duration::from_millis(20));
            }
            m.lock().unwrap().push((i, Instant::now()));
        });
        let p = Pipeline::new();
        p.source("in", weir::from_iter(items))
            .map("inc", |x: u64| x + 1)
            .workers(2)
            .sink(
                "out",
                weir::for_each(move |x: u64| s.lock().unwrap().push((x - 1, Instant::now()))),
            );
        let report = p.run().await.unwrap();
        assert_balanced(&report);
        let made: std::collections::HashMap<u64, Instant> =
            made.lock().unwrap().iter().copied().collect();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 10_060);
        for (i, at) in seen.iter().filter(|(i, _)| *i >= 10_000) {
            let waited = *at - made[i];
            // The linger is 5 ms; a batch held until the iterator ends (60
            // items at this pace) would wait more than a second.
            assert!(
                waited < Duration::from_millis(1000),
                "item {i} waited {waited:?}"
            );
        }
    });
}

#[test]
fn a_cancel_is_seen_while_items_trickle() {
    within(60, async {
        let made = Arc::new(Mutex::new(Vec::new()));
        let p = Pipeline::new();
        let out = p
            .source(
                "in",
                weir::from_iter(trickle(100_000, Duration::from_millis(1), made.clone())),
            )
            .map("inc", |x: u64| x + 1)
            .sink("out", weir::collect());
        let token = p.cancel_token();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            token.cancel();
        });
        let started = Instant::now();
        let report = p.run().await.unwrap();
        assert!(report.cancelled);
        // Before: the source stopped only after a batch of 1,024 items, a
        // second at this pace.
        assert!(
            started.elapsed() < Duration::from_millis(700),
            "the run took {:?} to stop",
            started.elapsed()
        );
        assert_balanced(&report);
        let got: Vec<u64> = out.take().unwrap();
        assert_eq!(got.len() as u64, report.stage("in").unwrap().emitted);
    });
}

/// Records the size of each batch it is given.
struct Sizes(Arc<Mutex<Vec<usize>>>);

impl weir::Sink<u64> for Sizes {
    type Output = ();

    async fn write(&mut self, items: Vec<u64>) -> Result<(), weir::WriteError<u64>> {
        self.0.lock().unwrap().push(items.len());
        Ok(())
    }

    async fn finish(self) -> Result<(), weir::BoxError> {
        Ok(())
    }
}

/// A source faster than the linger bound still sends whole batches (the
/// clock is read rarely and never cuts them).
#[test]
fn a_fast_source_fills_whole_batches() {
    within(60, async {
        let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: 1000,
            ..Default::default()
        });
        p.source("in", weir::from_iter(0..100_000u64))
            .sink("out", Sizes(batches.clone()));
        let report = p.run().await.unwrap();
        assert_balanced(&report);
        let batches = batches.lock().unwrap().clone();
        let full = batches.iter().filter(|&&n| n == 1000).count();
        assert!(
            full >= 95,
            "{} of {} batches full: {batches:?}",
            full,
            batches.len()
        );
    });
}
