//! Publishing: deterministic ids drop duplicates, the engine sink batches
//! records into messages, and a full inbox slows its producer down without
//! losing anything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use weir_nats::job::Fingerprint;

use futures::StreamExt;
use weir::{Pipeline, PipelineOptions, from_iter};
use weir_nats::codec;
use weir_nats::publish::{EdgeSink, MessageLimits, Outgoing, Publisher, chunk};
use weir_nats::{EdgeSettings, Job};
use weir_record::Record;

use crate::nats::util::{connect, coordinator, n_of, numbers, pool, server, settings, within};

async fn job_with(server: &weir_testkit::NatsServer, settings: EdgeSettings) -> Job {
    let job = Job::open(connect(server).await, "pub", settings)
        .await
        .unwrap();
    job.start(
        "p.yaml",
        &[pool("double"), coordinator("out")],
        &Fingerprint::default(),
        false,
    )
    .await
    .unwrap();
    job
}

/// Takes every message of `inbox` (acknowledging each) until `want`
/// records were read or nothing came for 2 s; returns the records and the
/// message ids seen.
async fn drain(job: &Job, inbox: &str, want: usize) -> (Vec<Record>, Vec<String>) {
    let consumer = job.consumer(inbox).await.unwrap();
    let mut records = Vec::new();
    let mut ids = Vec::new();
    let mut idle_since = Instant::now();
    while records.len() < want && idle_since.elapsed() < Duration::from_secs(2) {
        let mut batch = consumer
            .fetch()
            .max_messages(2)
            .expires(Duration::from_millis(200))
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            codec::check_version(m.headers.as_ref()).unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.to_string())
                .expect("a message id");
            ids.push(id);
            records.extend(codec::decode(&m.payload).unwrap());
            m.double_ack().await.unwrap();
            idle_since = Instant::now();
        }
    }
    (records, ids)
}

fn assert_each_once(records: &[Record], want: std::ops::Range<i64>) {
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for r in records {
        *counts.entry(n_of(&r.json())).or_default() += 1;
    }
    let expected: BTreeMap<i64, usize> = want.map(|n| (n, 1)).collect();
    assert_eq!(counts, expected, "each record exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_ids_published_twice_are_stored_once() {
    within(async {
        let server = server().await;
        let job = job_with(&server, settings()).await;
        let mut next = 0;
        let msgs = chunk(
            &numbers(0..1000),
            MessageLimits::records(100),
            &job.names.subject("double"),
            "src",
            &mut next,
        )
        .messages;
        assert_eq!((msgs.len(), next), (10, 10));
        // `<prefix>:<n>.<hash of the content>`: an id never names two contents.
        assert!(msgs[3].id.starts_with("src:3."), "{}", msgs[3].id);
        assert_eq!(msgs[3].id.len(), "src:3.".len() + 16);
        let publisher = Publisher::new(job.clone());
        assert_eq!(publisher.publish_all(&msgs).await.unwrap(), 0);
        assert_eq!(job.inbox_counts("double").await.unwrap().stored, 10);
        // Again (a coordinator restarted, an ack lost): all dropped.
        assert_eq!(publisher.publish_all(&msgs).await.unwrap(), 10);
        // Overlapping: the old ids dropped, the new one stored.
        let mut more = msgs[5..].to_vec();
        more.push(Outgoing {
            subject: job.names.subject("double"),
            id: "src:10".into(),
            body: codec::encode(&numbers(1000..1001)).into(),
        });
        assert_eq!(publisher.publish_all(&more).await.unwrap(), 5);
        let c = job.inbox_counts("double").await.unwrap();
        assert_eq!((c.stored, c.last_seq, c.pending), (11, 11, 11));
        let (records, ids) = drain(&job, "double", 1001).await;
        assert_each_once(&records, 0..1001);
        let expected: Vec<String> = msgs
            .iter()
            .map(|m| m.id.clone())
            .chain(["src:10".into()])
            .collect();
        assert_eq!(ids, expected, "in order");
        // Positions travel with the records.
        assert_eq!(records[41].pos.to_string(), "numbers#42");
    })
    .await;
}

/// Runs `records` through an engine pipeline into an [`EdgeSink`] on
/// `double`; returns what the sink and its `on_finish` reported.
async fn run_edge_sink(
    job: &Job,
    records: Vec<Record>,
    deterministic: bool,
    batch: usize,
) -> (u64, u64) {
    let finished = Arc::new(AtomicU64::new(u64::MAX));
    let f = finished.clone();
    let p = Pipeline::with_options(PipelineOptions {
        batch_size: batch,
        ..Default::default()
    });
    let out = p.source("numbers", from_iter(records)).sink(
        "to-double",
        EdgeSink::new(job, "double", "numbers", deterministic, move |n| {
            f.store(n, Ordering::SeqCst);
        }),
    );
    let report = p.run().await.expect("pipeline");
    assert_eq!(report.dead_lettered(), 0);
    (
        out.take().expect("sink output"),
        finished.load(Ordering::SeqCst),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sink_batches_records_and_a_deterministic_rerun_adds_nothing() {
    within(async {
        let server = server().await;
        let job = job_with(&server, settings()).await;
        let n = 1050;
        // ceil(1050 / 100) = 11 messages.
        let (published, finished) = run_edge_sink(&job, numbers(0..n), true, 64).await;
        assert_eq!((published, finished), (n as u64, n as u64));
        assert_eq!(job.inbox_counts("double").await.unwrap().stored, 11);

        // The same flow again, cut into other engine batches: message
        // boundaries and ids depend on record order only, so every message
        // is a duplicate.
        let (published, _) = run_edge_sink(&job, numbers(0..n), true, 7).await;
        assert_eq!(published, n as u64);
        let c = job.inbox_counts("double").await.unwrap();
        assert_eq!((c.stored, c.last_seq), (11, 11), "duplicates dropped");

        let (records, ids) = drain(&job, "double", n as usize).await;
        assert_each_once(&records, 0..n);
        assert_eq!(ids.len(), 11);
        assert!(
            ids[0].starts_with("numbers>double:numbers:0."),
            "{}",
            ids[0]
        );
        assert!(
            ids[10].starts_with("numbers>double:numbers:10."),
            "{}",
            ids[10]
        );
        assert_eq!(
            records
                .iter()
                .filter(|r| r.pos.input.as_ref() == "numbers")
                .count(),
            n as usize
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_deterministic_edge_sink_publishes_each_batch_and_every_run() {
    within(async {
        let server = server().await;
        let job = job_with(&server, settings()).await;
        // Engine batches of 30: each write is published at once (its acks
        // must not wait for more records), so messages hold at most 30.
        let (published, finished) = run_edge_sink(&job, numbers(0..300), false, 30).await;
        assert_eq!((published, finished), (300, 300));
        let stored = job.inbox_counts("double").await.unwrap().stored;
        assert!(
            stored >= 10,
            "one message per engine batch at least: {stored}"
        );
        // Ids are unique to the run: a second run is stored again.
        tokio::time::sleep(Duration::from_millis(5)).await;
        run_edge_sink(&job, numbers(300..600), false, 30).await;
        let again = job.inbox_counts("double").await.unwrap().stored;
        assert!(again >= stored + 10, "{stored} then {again}");
        let (records, _) = drain(&job, "double", 600).await;
        assert_each_once(&records, 0..600);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_blocks_its_producer_until_drained_and_loses_nothing() {
    within(async {
        let server = server().await;
        let job = job_with(
            &server,
            EdgeSettings {
                records_per_message: 10,
                edge_capacity: 3,
                ..Default::default()
            },
        )
        .await;
        let mut next = 0;
        let msgs = chunk(
            &numbers(0..200),
            MessageLimits::records(10),
            &job.names.subject("double"),
            "src",
            &mut next,
        )
        .messages;
        assert_eq!(msgs.len(), 20);
        let publisher = Publisher::new(job.clone());
        let publishing = tokio::spawn(async move { publisher.publish_all(&msgs).await });

        // Nobody reads: three messages fit, the producer waits (no error,
        // nothing dropped).
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            !publishing.is_finished(),
            "publish_all returned with a full inbox"
        );
        let c = job.inbox_counts("double").await.unwrap();
        assert_eq!(c.stored, 3, "the inbox holds its capacity: {c:?}");

        // A consumer drains it: the producer gets through.
        let (records, ids) = drain(&job, "double", 200).await;
        let dups = publishing
            .await
            .unwrap()
            .expect("publish succeeds once drained");
        assert_eq!(dups, 0);
        assert_each_once(&records, 0..200);
        let mut ids_sorted = ids.clone();
        ids_sorted.sort();
        ids_sorted.dedup();
        assert_eq!(ids_sorted.len(), 20, "each message once: {ids:?}");
        let c = job.inbox_counts("double").await.unwrap();
        assert_eq!((c.stored, c.last_seq), (0, 20), "stored once each: {c:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_is_waited_for_but_a_dead_broker_is_given_up_on() {
    within(async {
        let mut server = server().await;
        let job = job_with(
            &server,
            EdgeSettings {
                edge_capacity: 1,
                ..Default::default()
            },
        )
        .await;
        let mut next = 0;
        let msgs = chunk(
            &numbers(0..3),
            MessageLimits::records(1),
            &job.names.subject("double"),
            "src",
            &mut next,
        )
        .messages;
        // Full for longer than give_up_after: backpressure, not an error.
        let mut publisher = Publisher::new(job.clone());
        publisher.give_up_after = Duration::from_millis(300);
        let pending = {
            let publisher = publisher.clone();
            let msgs = msgs.clone();
            tokio::spawn(async move { publisher.publish_all(&msgs).await })
        };
        let mut all = Vec::new();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let (got, _) = drain(&job, "double", 1).await;
            all.extend(got);
        }
        assert_eq!(pending.await.unwrap().unwrap(), 0);
        assert_each_once(&all, 0..3);
        // The broker gone: an error once give_up_after has passed.
        server.stop();
        let started = Instant::now();
        let err = publisher.publish_all(&msgs).await.unwrap_err().to_string();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert!(
            err.contains("publishing to weir.pub.double failed for 300ms"),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deterministic_edge_sink_waits_for_room_in_a_full_inbox() {
    within(async {
        let server = server().await;
        let job = job_with(
            &server,
            EdgeSettings {
                records_per_message: 10,
                edge_capacity: 3,
                ..Default::default()
            },
        )
        .await;
        // More messages than the inbox holds and than the sink keeps
        // unconfirmed: refused ones are sent again, same ids.
        let sink = {
            let job = job.clone();
            tokio::spawn(async move { run_edge_sink(&job, numbers(0..1000), true, 64).await })
        };
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(!sink.is_finished(), "the sink finished into a full inbox");
        assert_eq!(job.inbox_counts("double").await.unwrap().stored, 3);
        let (records, ids) = drain(&job, "double", 1000).await;
        let (published, finished) = sink.await.unwrap();
        assert_eq!((published, finished), (1000, 1000));
        assert_each_once(&records, 0..1000);
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 100, "each message once");
        let c = job.inbox_counts("double").await.unwrap();
        assert_eq!((c.stored, c.last_seq), (0, 100), "{c:?}");
    })
    .await;
}
