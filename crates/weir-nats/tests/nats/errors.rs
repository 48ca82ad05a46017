//! Failing records on a worker: errors retried through the broker then
//! dead-lettered, errors dead-lettered at once, panics, and messages that
//! are not weir's. The rest of the data always gets through, exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use weir::CancellationToken;
use weir_nats::codec::{DlqEntry, FORMAT_HEADER};
use weir_nats::job::WorkerStats;
use weir_nats::worker::{self, RemoteStage};
use weir_nats::{EdgeSettings, Job, dlq};

use crate::nats::util::{
    Collected, collect_out, connect, double_job, doubler, numbers, publish, server, within,
    worker_opts,
};

fn poison_settings() -> EdgeSettings {
    EdgeSettings {
        records_per_message: 100,
        max_deliver: 3,
        ack_wait: Duration::from_secs(3),
        ..Default::default()
    }
}

/// Runs one worker hosting `stage` over records 0..1000 published into
/// `double`; returns what reached `out` and the worker's statistics.
pub async fn run_over_1000(job: &Job, stage: RemoteStage) -> (Collected, WorkerStats) {
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(worker::run(
        job.clone(),
        vec![stage],
        worker_opts("w"),
        cancel.clone(),
    ));
    let published = Arc::new(AtomicBool::new(false));
    assert_eq!(publish(job, "double", "src", &numbers(0..1000)).await, 10);
    published.store(true, Ordering::Release);
    let got = collect_out(job, published).await;
    cancel.cancel();
    let stats = worker
        .await
        .unwrap()
        .expect("the worker survives bad records");
    (got, stats)
}

fn all_but_13() -> impl Iterator<Item = i64> {
    (0..1000).filter(|n| *n != 13).map(|n| n * 2)
}

/// The only dead letter of the job, which must be record 13's.
async fn the_dead_letter_of_13(job: &Job) -> DlqEntry {
    let entries = dlq::list(job).await.unwrap();
    assert_eq!(entries.len(), 1, "one dead letter: {entries:?}");
    let e = entries.into_iter().next().unwrap().1;
    assert_eq!(e.stage, "double");
    assert_eq!(e.record, json!({ "n": 13 }));
    assert_eq!(e.position.as_deref(), Some("numbers#14"));
    assert_eq!(
        (e.input.as_deref(), e.file.as_deref(), e.line),
        (Some("numbers"), None, Some(14))
    );
    assert!(e.raw.is_null());
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_failing_on_every_retry_is_dead_lettered_after_max_deliver() {
    within(async {
        let server = server().await;
        let job = double_job(connect(&server).await, "poison", poison_settings()).await;
        let stage = doubler(
            |n| {
                if n == 13 {
                    Err("unlucky 13".into())
                } else {
                    Ok(())
                }
            },
            true,
        );
        let started = Instant::now();
        let (got, stats) = run_over_1000(&job, stage).await;
        got.assert_exactly(all_but_13());
        assert_eq!(got.swept, 0);
        // Naks delayed 1 s then 2 s.
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        let e = the_dead_letter_of_13(&job).await;
        assert_eq!(e.error, "gave up after 3 deliveries: unlucky 13");
        assert_eq!(e.attempts, 3);

        let s = &stats.stages["double"];
        assert_eq!((s.records_in, s.records_out, s.dead), (1000, 999, 1));
        assert_eq!((s.messages, s.redelivered, s.retried), (12, 2, 2));
        assert_eq!(s.last_error.as_deref(), Some("unlucky 13"));
        assert_eq!(job.inbox_counts("double").await.unwrap().stored, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retry_a_failing_record_is_dead_lettered_at_once() {
    within(async {
        let server = server().await;
        let job = double_job(connect(&server).await, "dl", poison_settings()).await;
        let stage = doubler(
            |n| {
                if n == 13 {
                    Err("unlucky 13".into())
                } else {
                    Ok(())
                }
            },
            false,
        );
        let (got, stats) = run_over_1000(&job, stage).await;
        got.assert_exactly(all_but_13());
        let e = the_dead_letter_of_13(&job).await;
        assert_eq!((e.error.as_str(), e.attempts), ("unlucky 13", 1));
        let s = &stats.stages["double"];
        assert_eq!(
            (s.messages, s.redelivered, s.retried, s.dead),
            (10, 0, 0, 1)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_one_record_is_retried_then_dead_lettered() {
    within(async {
        let server = server().await;
        let job = double_job(connect(&server).await, "panic", poison_settings()).await;
        let stage = doubler(
            |n| {
                assert!(n != 13, "boom at 13");
                Ok(())
            },
            // Panics are retried whatever the error policy says.
            false,
        );
        let (got, stats) = run_over_1000(&job, stage).await;
        got.assert_exactly(all_but_13());
        let e = the_dead_letter_of_13(&job).await;
        assert!(e.error.contains("panicked"), "{}", e.error);
        assert!(e.error.contains("boom at 13"), "{}", e.error);
        assert!(
            e.error.starts_with("gave up after 3 deliveries: "),
            "{}",
            e.error
        );
        assert_eq!(e.attempts, 3);
        let s = &stats.stages["double"];
        assert_eq!((s.records_in, s.dead, s.retried), (1000, 1, 2));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_are_not_weirs_are_dead_lettered_raw_and_work_goes_on() {
    within(async {
        let server = server().await;
        let job = double_job(connect(&server).await, "garbage", poison_settings()).await;
        let js = &job.broker.js;
        let double = job.names.subject("double");
        // No format header, another version, a body that is not records.
        js.publish(double.clone(), "hello, not weir\n".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let mut h = async_nats::HeaderMap::new();
        h.insert(FORMAT_HEADER, "2");
        js.publish_with_headers(double.clone(), h, "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let mut h = async_nats::HeaderMap::new();
        h.insert(FORMAT_HEADER, "1");
        let body = "{\"in\":\"x\",\"line\":1,\"v\":1}\nnot json\n";
        js.publish_with_headers(double.clone(), h, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
        // And one into the coordinator's inbox, read by the InboxReader.
        js.publish(job.names.subject("out"), "junk for out".into())
            .await
            .unwrap()
            .await
            .unwrap();

        let stage = doubler(|_| Ok(()), false);
        let (got, stats) = run_over_1000(&job, stage).await;
        got.assert_exactly((0..1000).map(|n| n * 2));

        let mut entries: Vec<DlqEntry> = dlq::list(&job)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        entries.sort_by_key(|e| e.raw.to_string());
        assert_eq!(entries.len(), 4, "{entries:?}");
        for e in &entries {
            assert!(e.record.is_null(), "{e:?}");
            assert_eq!(e.attempts, 1, "{e:?}");
        }
        let by_raw = |raw: &str| {
            entries
                .iter()
                .find(|e| e.raw == json!(raw))
                .unwrap_or_else(|| panic!("no entry with raw {raw:?}: {entries:?}"))
        };
        let e = by_raw("hello, not weir\n");
        assert_eq!(e.stage, "double");
        assert!(
            e.error.contains("without a `Weir-Format` header"),
            "{}",
            e.error
        );
        let e = by_raw("{}");
        assert!(e.error.contains("wire format 2"), "{}", e.error);
        let e = by_raw(body);
        assert!(
            e.error.starts_with("record 2 of the message"),
            "{}",
            e.error
        );
        let e = by_raw("junk for out");
        assert_eq!(e.stage, "out");
        assert!(e.error.contains("not published by weir"), "{}", e.error);

        // The worker counted the garbage as messages, not records.
        let s = &stats.stages["double"];
        assert_eq!(
            (s.messages, s.records_in, s.records_out, s.dead),
            (13, 1000, 1000, 0)
        );
        // Garbage is terminated: gone from both work queues.
        assert_eq!(job.inbox_counts("double").await.unwrap().stored, 0);
        assert_eq!(job.inbox_counts("out").await.unwrap().stored, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_identical_garbage_messages_for_the_coordinator_are_both_kept() {
    within(async {
        let server = server().await;
        let job = double_job(connect(&server).await, "garbage2", poison_settings()).await;
        for _ in 0..2 {
            job.broker
                .js
                .publish(job.names.subject("out"), "same junk".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let (got, _) = run_over_1000(&job, doubler(|_| Ok(()), false)).await;
        got.assert_exactly((0..1000).map(|n| n * 2));
        let entries = dlq::list(&job).await.unwrap();
        assert_eq!(
            entries.len(),
            2,
            "each bad message is kept in the dead-letter stream: {entries:?}"
        );
    })
    .await;
}
