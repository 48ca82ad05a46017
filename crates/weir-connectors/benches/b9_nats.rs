//! B9: the `nats` source draining a JetStream stream, against the raw
//! pull+ack rate of the same server in the same run.
//!
//! A real nats-server (2.15.1, started on a free loopback port by the test
//! kit) holds one stream (file storage, limits retention) with N small JSON
//! messages (`{"id":N,"user":"uNNN","amount":NN.NN}`, ~50 bytes),
//! published before anything is timed. Then, alternating, each on a fresh
//! durable consumer of that stream:
//!
//! * **raw**: a plain async-nats loop: the consumer's pull stream (batches
//!   of 256, the source's default), `ack()` on every message, until N
//!   messages came. Messages per second.
//! * **weir**: the `nats` source (`until_drained: true`, `batch: 256`) in
//!   an engine pipeline: source → decode (JSON parsed into records, as a
//!   pipeline's decode stage does) → a counting sink; every record's ack
//!   acknowledges its message after the sink. Records per second from the
//!   start (connection and consumer creation included) to the N-th record
//!   in the sink, as the raw loop stops at its N-th message; the rate of
//!   the whole run, to the source's drained end (nothing pending, nothing
//!   unacknowledged: one idle check of ~250 ms more), is printed beside.
//!
//! Each is run `B9_ROUNDS` times (default 3); the best of each is
//! compared. Target: weir ≥ 0.8× raw.
//!
//! Run: `cargo bench -p weir-connectors --bench b9_nats`
//! (`B9_MESSAGES=n`, default 500,000.)
#![allow(clippy::print_stdout, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use weir::{ErrorPolicy, Pipeline};
use weir_connectors::sources::nats::NatsSource;
use weir_connectors::sources::{BuildContext, Raw};
use weir_testkit::NatsServer;

const TARGET: f64 = 0.8;

fn main() {
    let n: u64 = std::env::var("B9_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let rounds: usize = std::env::var("B9_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let server = NatsServer::start();
    let url = server.url();
    println!("B9: {n} messages of ~50 bytes, nats-server 2.15.1 at {url}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(fill(&url, n));
    let mut raw_best = 0f64;
    let mut weir_best = 0f64;
    for round in 0..rounds {
        let raw = rt.block_on(raw_drain(&url, n, &format!("raw{round}")));
        println!("round {round}: raw pull+ack      {raw:>10.0} msgs/s");
        let (weir, whole) = rt.block_on(weir_drain(&url, n, &format!("weir{round}")));
        println!(
            "round {round}: weir nats source  {weir:>10.0} records/s ({whole:.0}/s with the drained end)"
        );
        raw_best = raw_best.max(raw);
        weir_best = weir_best.max(weir);
    }
    let ratio = weir_best / raw_best;
    println!(
        "best: raw {raw_best:.0} msgs/s, weir {weir_best:.0} records/s: {ratio:.2}x raw (target >= {TARGET}x: {})",
        if ratio >= TARGET { "met" } else { "MISSED" }
    );
}

async fn fill(url: &str, n: u64) {
    let js = jetstream::new(async_nats::connect(url).await.expect("connect"));
    js.create_stream(stream::Config {
        name: "B9".into(),
        subjects: vec!["b9.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("stream");
    let started = Instant::now();
    let mut acks = std::collections::VecDeque::new();
    for i in 0..n {
        let body = format!(
            "{{\"id\":{i},\"user\":\"u{}\",\"amount\":{}.{:02}}}",
            i % 1000,
            i % 97,
            i % 100
        );
        acks.push_back(
            js.publish(format!("b9.{}", i % 8), body.into())
                .await
                .expect("publish"),
        );
        if acks.len() >= 1024 {
            acks.pop_front().unwrap().await.expect("stored");
        }
    }
    for a in acks {
        a.await.expect("stored");
    }
    println!(
        "published {n} messages in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The baseline: pull and ack every message of the stream on a new
/// durable consumer.
async fn raw_drain(url: &str, n: u64, name: &str) -> f64 {
    let js = jetstream::new(async_nats::connect(url).await.expect("connect"));
    let s = js.get_stream("B9").await.expect("stream");
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 4096,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let started = Instant::now();
    let mut messages = c
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await
        .expect("pull");
    let mut got = 0;
    while got < n {
        let m = messages.next().await.expect("more").expect("a message");
        m.ack().await.expect("ack");
        got += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    // The last acks are on their way: make sure they were sent.
    drop(messages);
    n as f64 / secs
}

/// The `nats` source in a pipeline with a counting sink.
/// Records per second to the n-th record in the sink, and for the whole
/// run (its drained end included).
async fn weir_drain(url: &str, n: u64, name: &str) -> (f64, f64) {
    let cfg: NatsSource = serde_saphyr::from_str(&format!(
        "url: {url}\nstream: B9\nconsumer: {name}\nuntil_drained: true\nbatch: 256\n"
    ))
    .expect("options");
    let ctx = BuildContext {
        input: "b9".into(),
        base_dir: ".".into(),
        state: None,
    };
    let started = Instant::now();
    let (source, decoder) = cfg.build(&ctx).expect("source");
    let p = Pipeline::new();
    // When the n-th record reached the sink: what the raw loop measures
    // (it stops at its n-th message, with no end check).
    let last = Arc::new(Mutex::new(None));
    let at = last.clone();
    let mut seen = 0u64;
    let count = p
        .source("b9", source)
        .try_map("b9/decode", move |raw: &Raw| decoder.decode(raw))
        .on_error(ErrorPolicy::Fail)
        .sink(
            "count",
            weir::fold(0u64, move |a, _| {
                seen += 1;
                if seen == n {
                    *at.lock().unwrap() = Some(Instant::now());
                }
                a + 1
            }),
        );
    tokio::time::timeout(Duration::from_secs(600), p.run())
        .await
        .expect("drained within 10 minutes")
        .expect("run");
    let whole = started.elapsed().as_secs_f64();
    assert_eq!(count.take(), Some(n), "every message, once");
    let to_last = last
        .lock()
        .unwrap()
        .expect("n records")
        .duration_since(started);
    (n as f64 / to_last.as_secs_f64(), n as f64 / whole)
}
