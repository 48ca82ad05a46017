//! Message size: records are cut into messages under the server's
//! `max_payload` (not only by count), a record that cannot fit a message
//! alone is dead-lettered as `too_large`, and a publish the server refuses
//! is an error at once, naming the inbox. Before issue 8 a few hundred
//! records of 8 KB made a message over 1 MiB that the broker refused, and
//! the publisher retried it for five minutes without a word.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use weir_nats::job::Fingerprint;

use serde_json::json;
use weir::{CancellationToken, Pipeline, from_iter};
use weir_nats::publish::{EdgeSink, MessageLimits, Outgoing, Publisher, chunk};
use weir_nats::{EdgeSettings, Job, dlq, worker};
use weir_record::{Position, Record};

use crate::nats::util::{
    collect_out, connect, coordinator, double_job, n_of, pool, publish, server, within, worker_opts,
};

/// `{"n": i, "pad": "xxx…"}` of about `bytes` bytes, at `numbers#(i+1)`.
fn padded(i: i64, bytes: usize) -> Record {
    Record::from_json(
        &json!({ "n": i, "pad": "x".repeat(bytes) }),
        Arc::new(Position {
            input: Arc::from("numbers"),
            file: None,
            line: i as u64 + 1,
        }),
    )
}

#[test]
fn chunk_cuts_by_bytes_and_sets_aside_what_cannot_fit() {
    let limits = MessageLimits {
        records: 100,
        bytes: 10_000,
    };
    let mut records: Vec<Record> = (0..50).map(|i| padded(i, 3_000)).collect();
    records.insert(20, padded(1_000, 20_000));
    let mut next = 0;
    let c = chunk(&records, limits, "s", "p", &mut next);
    assert_eq!(c.too_large, vec![20]);
    for m in &c.messages {
        assert!(m.body.len() <= limits.bytes, "{} bytes", m.body.len());
    }
    // Three records of ~3 KB per message; every other record in exactly one.
    let held: Vec<usize> = c.ranges.iter().flat_map(|r| r.clone()).collect();
    let want: Vec<usize> = (0..51).filter(|i| *i != 20).collect();
    assert_eq!(held, want);
    assert!(c.ranges.iter().all(|r| r.len() <= 3), "{:?}", c.ranges);
    assert_eq!(next, c.messages.len() as u64);
}

/// The coordinator's edge: 2,000 records of 8 KB (256 to a message would
/// be 2 MB) and one of 3 MB, published into a pool inbox; a worker passes
/// them on. Every 8 KB record arrives once; the 3 MB one is a dead letter
/// with its position and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_are_split_across_messages_and_a_huge_one_is_dead_lettered() {
    within(async {
        let server = server().await;
        let settings = EdgeSettings {
            records_per_message: 256,
            ..Default::default()
        };
        let job = double_job(connect(&server).await, "large", settings).await;
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(worker::run(
            job.clone(),
            vec![crate::nats::util::doubler(|_| Ok(()), false)],
            worker_opts("w"),
            cancel.clone(),
        ));
        let mut records: Vec<Record> = (0..2000).map(|i| padded(i, 8 * 1024)).collect();
        records.insert(1000, padded(5000, 3 << 20));
        let published = Arc::new(AtomicBool::new(false));
        let flag = published.clone();
        let p = Pipeline::new();
        let sent = p.source("in", from_iter(records)).sink(
            "in>double",
            EdgeSink::new(&job, "double", "in", true, move |_| {
                flag.store(true, Ordering::Release)
            }),
        );
        let run = tokio::spawn(p.run());
        let got = collect_out(&job, published).await;
        run.await.unwrap().expect("publishing pipeline");
        assert_eq!(sent.take(), Some(2000), "records published");
        got.assert_exactly((0..2000).map(|i| i * 2));
        let dead = dlq::list(&job).await.unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        let e = &dead[0].1;
        assert_eq!(e.stage, "in");
        assert_eq!(e.position.as_deref(), Some("numbers#5001"));
        assert!(e.error.starts_with("too_large: "), "{}", e.error);
        assert!(e.truncated.unwrap() > 3 << 20, "{e:?}");
        cancel.cancel();
        worker.await.unwrap().unwrap();
    })
    .await;
}

/// A remote stage whose outputs grow: small inputs, 8 KB outputs (a
/// message of 256 would be 2 MB), and one output of 3 MB, dead-lettered by
/// the worker while the other outputs of its message go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_splits_grown_outputs_and_dead_letters_one_too_large() {
    within(async {
        let server = server().await;
        let settings = EdgeSettings {
            records_per_message: 256,
            ..Default::default()
        };
        let job = double_job(connect(&server).await, "grow", settings).await;
        let grow = weir_nats::worker::RemoteStage {
            name: "double".to_string(),
            ports: vec![vec!["out".to_string()]],
            process: Arc::new(|r: &Record| {
                let n = n_of(&r.json());
                let pad = if n == 777 { 3 << 20 } else { 8 * 1024 };
                Ok(vec![(
                    0,
                    r.derive(weir_record::value::from_json(
                        &json!({ "n": n * 2, "pad": "y".repeat(pad) }),
                    )),
                )])
            }),
            retry_errors: false,
        };
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(worker::run(
            job.clone(),
            vec![grow],
            worker_opts("w"),
            cancel.clone(),
        ));
        let published = Arc::new(AtomicBool::new(false));
        publish(&job, "double", "src", &crate::nats::util::numbers(0..2000)).await;
        published.store(true, Ordering::Release);
        let got = collect_out(&job, published).await;
        got.assert_exactly((0..2000).filter(|n| *n != 777).map(|n| n * 2));
        let dead = dlq::list(&job).await.unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        let e = &dead[0].1;
        assert_eq!(e.stage, "double");
        assert_eq!(e.position.as_deref(), Some("numbers#778"));
        assert!(e.error.starts_with("too_large: "), "{}", e.error);
        cancel.cancel();
        let stats = worker.await.unwrap().unwrap();
        let s = &stats.stages["double"];
        assert_eq!((s.records_in, s.records_out, s.dead), (2000, 1999, 1));
    })
    .await;
}

/// The server refusing a message is an error within seconds that names
/// the inbox, not minutes of silent retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_is_an_error_at_once_naming_the_inbox() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "refused", EdgeSettings::default())
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
        let publisher = Publisher::new(job.clone());
        let too_big = Outgoing {
            subject: job.names.subject("double"),
            id: "big".into(),
            body: vec![b'x'; publisher.max_body() + 4096].into(),
        };
        let t = Instant::now();
        let err = publisher.publish_all(&[too_big]).await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let msg = err.to_string();
        assert!(msg.contains("weir.refused.double"), "{msg}");
        assert!(msg.contains("max payload"), "{msg}");
    })
    .await;
}

/// A failed publish gives the records back: their acks fail, so the
/// inbox messages they came from are not acknowledged (before issue 8 the
/// engine was told everything was written, and settled them as delivered).
/// The failure: the downstream inbox refuses messages over 100 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_does_not_acknowledge_the_messages_that_fed_it() {
    within(async {
        let server = server().await;
        let broker = connect(&server).await;
        let job = Job::open(broker.clone(), "giveback", EdgeSettings::default())
            .await
            .unwrap();
        job.start(
            "p.yaml",
            &[coordinator("mid"), pool("double")],
            &Fingerprint::default(),
            false,
        )
        .await
        .unwrap();
        let mut cfg = job
            .inbox("double")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .clone();
        cfg.max_message_size = 100;
        broker.js.update_stream(cfg).await.unwrap();
        publish(&job, "mid", "src", &crate::nats::util::numbers(0..500)).await;
        let stored_before = job.inbox_counts("mid").await.unwrap().stored;
        assert_eq!(stored_before, 2);

        let reader =
            weir_nats::consume::InboxReader::new(&job, "mid", Arc::new(AtomicBool::new(true)));
        let p = Pipeline::new();
        let _ = p.source("mid/inbox", reader.source()).sink(
            "mid>double",
            EdgeSink::new(&job, "double", "mid", false, |_| {}),
        );
        let err = p.run().await.expect_err("the publish is refused");
        assert!(err.to_string().contains("weir.giveback.double"), "{err}");
        let db = err.report.stage("mid>double").unwrap();
        assert_eq!(db.ok, 0, "nothing was written: {db:?}");
        // Acks run on tasks of their own: give them time to (wrongly) fire.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let c = job.inbox_counts("mid").await.unwrap();
        assert_eq!(c.stored, stored_before, "no input message was acknowledged");
    })
    .await;
}
