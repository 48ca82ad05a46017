//! The memory bound README states ("Bounded memory"): an edge holds at most
//! `buffer` batches of at most `batch_size` items, however many items a
//! stage emits at once; a worker holds besides what it works on (issue 8,
//! item 18).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::{
    Ack, BoxError, ErrorPolicy, Pipeline, PipelineOptions, Sink, Window, WriteError,
    from_acked_iter, from_iter,
};

use crate::util::{Gauge, Tracked, assert_balanced, within};

/// A slow sink that records the largest batch it was given: a sink with a
/// queue of its own receives batches exactly as they crossed its edge.
#[derive(Clone, Default)]
struct Widest {
    largest: Arc<AtomicUsize>,
    items: Arc<AtomicUsize>,
    pause: Duration,
}

impl<T: Send + 'static> Sink<T> for Widest {
    type Output = ();

    async fn write(&mut self, items: Vec<T>) -> Result<(), WriteError<T>> {
        self.largest.fetch_max(items.len(), SeqCst);
        self.items.fetch_add(items.len(), SeqCst);
        if !self.pause.is_zero() {
            tokio::time::sleep(self.pause).await;
        }
        Ok(())
    }

    async fn finish(self) -> Result<(), BoxError> {
        Ok(())
    }
}

#[test]
fn a_thousandfold_flat_map_sends_batch_size_batches_and_holds_a_bounded_number_of_items() {
    let (batch, buffer, fan) = (64usize, 2usize, 1_000u64);
    let gauge = Arc::new(Gauge::default());
    let sink = Widest {
        pause: Duration::from_micros(200),
        ..Default::default()
    };
    let (g, s) = (gauge.clone(), sink.clone());
    within(60, async move {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: batch,
            buffer,
            ..Default::default()
        });
        p.source("n", from_iter(0..(4 * batch) as u64))
            .flat_map("x1000", move |x| {
                let g = g.clone();
                (0..fan).map(move |i| g.item(x * fan + i))
            })
            // Its own queue: the sink sees the batches of a real edge.
            .buffer(buffer)
            .sink("out", s);
        let report = p.run().await.unwrap();
        assert_balanced(&report);
    });
    assert_eq!(sink.items.load(SeqCst), 4 * batch * fan as usize);
    assert!(
        sink.largest.load(SeqCst) <= batch,
        "a batch of {} items crossed an edge (batch_size {batch})",
        sink.largest.load(SeqCst)
    );
    // The edge (buffer batches), the sink's batch in hand, and the flat_map
    // worker: less than two batches plus the outputs of one input item.
    let bound = (buffer + 3) * batch + fan as usize;
    assert!(
        gauge.peak() <= bound,
        "{} items alive at once, the documented bound is {bound}",
        gauge.peak()
    );
    assert_eq!(gauge.live(), 0);
}

#[test]
fn a_fused_thousandfold_flat_map_hands_over_batch_size_batches() {
    let batch = 32usize;
    let sink = Widest::default();
    let s = sink.clone();
    within(60, async move {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: batch,
            ..Default::default()
        });
        let _ = p
            .source("n", from_iter(0..100u64))
            .flat_map("x1000", |x| (0..1_000u64).map(move |i| x * 1_000 + i))
            .sink("out", s);
        let report = p.run().await.unwrap();
        assert_eq!(report.stage("out").unwrap().runs_in.as_deref(), Some("n"));
        assert_balanced(&report);
    });
    assert_eq!(sink.items.load(SeqCst), 100_000);
    assert!(
        sink.largest.load(SeqCst) <= batch,
        "{}",
        sink.largest.load(SeqCst)
    );
}

#[test]
fn an_aggregate_flushing_many_groups_sends_batch_size_batches() {
    for window in [Window::All, Window::Count(2)] {
        let batch = 50usize;
        let sink = Widest::default();
        let s = sink.clone();
        within(60, async move {
            let p = Pipeline::with_options(PipelineOptions {
                batch_size: batch,
                buffer: 2,
                ..Default::default()
            });
            p.source("n", from_iter(0..20_000u64))
                .aggregate("groups", |x| x % 10_000, |_| 0u64, |a, x| *a += x, window)
                .sink("out", s);
            let report = p.run().await.unwrap();
            assert_eq!(report.stage("groups").unwrap().emitted, 10_000);
            assert_balanced(&report);
        });
        assert_eq!(sink.items.load(SeqCst), 10_000, "{window:?}");
        assert!(
            sink.largest.load(SeqCst) <= batch,
            "{window:?}: a batch of {} groups crossed an edge (batch_size {batch})",
            sink.largest.load(SeqCst)
        );
    }
}

#[test]
fn a_partitioning_source_never_sends_more_than_a_batch() {
    // Routing a batch into branch buffers used to let a buffer reach almost
    // two batches before it was sent whole.
    let batch = 10usize;
    let (a, b) = (Widest::default(), Widest::default());
    let (sa, sb) = (a.clone(), b.clone());
    within(60, async move {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: batch,
            ..Default::default()
        });
        let mut parts = p
            .source("n", from_iter(0..10_007u64))
            .partition(2, |x| *x)
            .into_iter();
        parts.next().unwrap().sink("a", sa);
        parts.next().unwrap().sink("b", sb);
        p.run().await.unwrap();
    });
    let (na, nb) = (a.items.load(SeqCst), b.items.load(SeqCst));
    assert_eq!(na + nb, 10_007);
    assert!(
        na > 1_000 && nb > 1_000,
        "both branches get items: {na}, {nb}"
    );
    assert!(
        a.largest.load(SeqCst) <= batch && b.largest.load(SeqCst) <= batch,
        "batches of {} and {} items (batch_size {batch})",
        a.largest.load(SeqCst),
        b.largest.load(SeqCst)
    );
}

/// The shape of a YAML pipeline with an aggregate (BENCHMARKS.md, "RSS
/// growth of the YAML pipeline"): decode on two workers, then a one-worker
/// `try_map` (not fused: its producer is a pool), then a whole-input
/// aggregate, with acks shared by chunks of 1,024 items as a checkpointing
/// file source attaches them. Items in flight must stay under the
/// configured bounds, whatever the input size.
#[test]
fn decode_pool_then_one_worker_stage_then_aggregate_stays_within_the_bounds() {
    let (batch, buffer) = (256usize, 4usize);
    let n = 200_000u64;
    let decoded = Arc::new(Gauge::default());
    let extracted = Arc::new(Gauge::default());
    let (d, e) = (decoded.clone(), extracted.clone());
    let acked = Arc::new(Mutex::new(0u64));
    let a = acked.clone();
    within(120, async move {
        let p = Pipeline::with_options(PipelineOptions {
            batch_size: batch,
            buffer,
            ..Default::default()
        });
        let mut items = Vec::new();
        for chunk in 0..n.div_ceil(1_024) {
            let a = a.clone();
            let root = Ack::new(move |o| {
                assert!(o.is_handled(), "{o}");
                *a.lock().unwrap() += 1;
            });
            for i in chunk * 1_024..((chunk + 1) * 1_024).min(n) {
                items.push((i, root.fork()));
            }
            root.deliver();
        }
        let out = p
            .source("lines", from_acked_iter(items))
            .try_map("decode", move |x: &u64| {
                if x % 100 == 42 {
                    Err("malformed")
                } else {
                    Ok(d.item(*x))
                }
            })
            .workers(2)
            .on_error(ErrorPolicy::DeadLetter)
            .try_map("extract", move |t: &Tracked| {
                Ok::<_, String>(e.item(t.v % 1_000))
            })
            .aggregate(
                "sum",
                |t: &Tracked| t.v,
                |_| 0u64,
                |acc, t| {
                    // A slow consumer: everything upstream runs ahead and
                    // fills whatever it may.
                    if t.v % 100 == 7 {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    *acc += 1;
                },
                Window::All,
            )
            .sink("out", weir::collect());
        let report = p.run().await.unwrap();
        assert_balanced(&report);
        let groups = out.take().unwrap();
        assert_eq!(groups.iter().map(|(_, c)| c).sum::<u64>(), n - n / 100);
    });
    assert_eq!(*acked.lock().unwrap(), n.div_ceil(1_024));
    // decode -> extract: one edge, two workers each with an input batch and
    // less than two batches of output; extract: its input batch's outputs
    // and less than two batches; then the aggregate's batch in hand.
    let bound = (buffer + 2 * 2 + 2) * batch;
    for (what, g) in [("decoded", &decoded), ("extracted", &extracted)] {
        assert!(
            g.peak() <= bound,
            "{} {what} items alive at once for {n} items in; the bound is {bound}",
            g.peak()
        );
        assert_eq!(g.live(), 0);
    }
}
