//! B5: a work-queue job through one remote stage on NATS JetStream.
//!
//! A real nats-server (2.15.1, started on a free loopback port by the test
//! kit) carries everything. Measured in one run, so the ratios hold on a
//! noisy machine:
//!
//! * **raw JetStream**: the baseline. One stream (file storage, work-queue
//!   retention, like weir's inboxes); one task publishes N 128-byte
//!   messages pipelined (up to 1024 acknowledgements outstanding) while
//!   another drains them with pull fetches of 512 and acknowledges each.
//!   Messages per second, end to end.
//! * **weir, batched**: `weir run b5.yaml --broker URL` (the coordinator:
//!   reads the JSON Lines input, publishes to the remote stage's inbox,
//!   reads the stage's output inbox, writes a JSON Lines file) with 1, 2
//!   and 4 `weir worker` processes (`--workers 2` each) running the remote
//!   stage, a jq pass-through (`.`: the numbers measure the engine and the
//!   transport, not jq). Records per second of the
//!   coordinator's wall time, from start to the job's completion; every
//!   run's output is checked to hold exactly N distinct ids.
//! * **weir, batching off** (`records_per_message: 1`), 1 worker with
//!   `--workers 32` (one-record messages need many in flight), on N/10
//!   records.
//! * **B2 remote**: a CPU-bound jq stage (a 3,000-step `reduce` per
//!   record) with 1 and then 2 worker processes (`--workers 1` each):
//!   speedup of 2 over 1.
//!
//! Every record is about 128 bytes of JSON. Targets: batched ≥ 3× the raw
//! per-message rate; batching off ≥ 0.6× raw.
//!
//! Run: `cargo bench -p weir-cli --bench b5_distributed`
//! (`B5_RECORDS=n`, default 1,000,000.)
#![allow(clippy::print_stdout, missing_docs)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use weir_testkit::NatsServer;

const BATCHED_TARGET: f64 = 3.0;
const UNBATCHED_TARGET: f64 = 0.6;

fn main() {
    let n: u64 = std::env::var("B5_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let server = NatsServer::start();
    let url = server.url();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("b5");
    std::fs::create_dir_all(&dir).expect("bench dir");
    println!("B5: {n} records of ~128 bytes, nats-server 2.15.1 at {url}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let raw = rt.block_on(raw_jetstream(&url, n));
    println!("raw JetStream (publish pipelined + pull/ack drain): {raw:>10.0} msgs/s");
    drop(rt);

    let input = dir.join(format!("input-{n}.jsonl"));
    write_input(&input, n);
    let mut rows = Vec::new();
    for workers in [1, 2, 4] {
        let rate = weir_job(
            &dir,
            &url,
            &input,
            n,
            workers,
            256,
            2,
            &format!("b5-w{workers}"),
        );
        println!(
            "weir, batched (256/msg), {workers} worker process(es): {rate:>10.0} records/s = {:.2}x raw",
            rate / raw
        );
        rows.push((workers, rate));
    }
    let small = n / 10;
    let small_input = dir.join(format!("input-{small}.jsonl"));
    write_input(&small_input, small);
    let off = weir_job(&dir, &url, &small_input, small, 1, 1, 32, "b5-off");
    println!(
        "weir, batching off (1/msg), 1 worker (--workers 32), {small} records: {off:>10.0} records/s = {:.2}x raw",
        off / raw
    );

    let cpu_n = 20_000;
    let cpu_input = dir.join(format!("input-{cpu_n}.jsonl"));
    write_input(&cpu_input, cpu_n);
    let cpu1 = cpu_job(&dir, &url, &cpu_input, cpu_n, 1);
    let cpu2 = cpu_job(&dir, &url, &cpu_input, cpu_n, 2);
    println!(
        "B2 remote (CPU-bound jq, {cpu_n} records): 1 worker {cpu1:.0} records/s, 2 workers {cpu2:.0} records/s: speedup {:.2}x",
        cpu2 / cpu1
    );

    let best = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    println!();
    println!("| measure | target | result |");
    println!("|---|---|---|");
    println!("| raw JetStream, 128-byte messages | baseline | {raw:.0} msgs/s |");
    for (w, r) in &rows {
        println!(
            "| weir batched, {w} worker(s) | ≥ {BATCHED_TARGET}× raw | {r:.0} records/s ({:.2}×) |",
            r / raw
        );
    }
    println!(
        "| weir batching off, 1 worker | ≥ {UNBATCHED_TARGET}× raw | {off:.0} records/s ({:.2}×) |",
        off / raw
    );
    println!(
        "| B2 remote, 2 workers vs 1 | speedup | {:.2}× |",
        cpu2 / cpu1
    );
    println!(
        "batched target {}; batching-off target {}",
        if best / raw >= BATCHED_TARGET {
            "met"
        } else {
            "MISSED"
        },
        if off / raw >= UNBATCHED_TARGET {
            "met"
        } else {
            "MISSED"
        }
    );
}

/// The raw baseline: messages per second through one stream.
async fn raw_jetstream(url: &str, n: u64) -> f64 {
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client);
    let s = js
        .create_stream(stream::Config {
            name: "RAW".into(),
            subjects: vec!["raw".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("stream");
    let c = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let payload = bytes::Bytes::from(vec![b'x'; 128]);
    let started = Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            let mut window = std::collections::VecDeque::new();
            for _ in 0..n {
                let f = js.publish("raw", payload.clone()).await.expect("publish");
                window.push_back(f);
                if window.len() >= 1024 {
                    window.pop_front().expect("one").await.expect("puback");
                }
            }
            for f in window {
                f.await.expect("puback");
            }
        })
    };
    let mut got = 0;
    while got < n {
        let mut batch = c
            .fetch()
            .max_messages(512)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            m.ack().await.expect("ack");
            got += 1;
        }
    }
    publisher.await.expect("publisher");
    let rate = n as f64 / started.elapsed().as_secs_f64();
    js.delete_stream("RAW").await.expect("delete");
    rate
}

/// `n` JSON lines of about 128 bytes, written once.
fn write_input(path: &Path, n: u64) {
    if path.exists() {
        return;
    }
    let kinds = ["click", "view", "purchase", "signup"];
    let mut w = BufWriter::new(std::fs::File::create(path).expect("input"));
    for i in 0..n {
        writeln!(
            w,
            r#"{{"id":{i},"user":"user-{:05}","kind":"{}","amount":{}.{:02},"ts":"2026-11-26T10:{:02}:{:02}Z","pad":"{}"}}"#,
            i % 10_000,
            kinds[(i % 4) as usize],
            i % 1000,
            i % 100,
            (i / 60) % 60,
            i % 60,
            &"abcdefghijklmnopqrstuvwxyz"[..(i % 7 + 12) as usize],
        )
        .expect("write");
    }
    w.flush().expect("flush");
}

fn weir_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs one job: `workers` worker processes, then the coordinator; returns
/// records per second of the coordinator's wall time.
#[allow(clippy::too_many_arguments)] // a bench helper: every knob of one job
fn run_job(
    dir: &Path,
    url: &str,
    yaml: &str,
    job: &str,
    workers: usize,
    per_worker: usize,
    n: u64,
) -> f64 {
    let pipeline = dir.join(format!("{job}.yaml"));
    std::fs::write(&pipeline, yaml).expect("pipeline");
    let out = dir.join(format!("{job}.out.jsonl"));
    let _ = std::fs::remove_file(&out);
    let mut guard = Kill(Vec::new());
    for _ in 0..workers {
        guard.0.push(
            Command::new(weir_bin())
                .args(["worker"])
                .arg(&pipeline)
                .args(["--broker", url, "--job", job, "--workers"])
                .arg(per_worker.to_string())
                .stderr(Stdio::null())
                .spawn()
                .expect("worker"),
        );
    }
    let started = Instant::now();
    let status = Command::new(weir_bin())
        .arg("run")
        .arg(&pipeline)
        .args(["--broker", url, "--job", job, "--quiet"])
        .stderr(Stdio::null())
        .status()
        .expect("coordinator");
    let secs = started.elapsed().as_secs_f64();
    assert!(status.success(), "{job}: coordinator failed");
    // Every record exactly once.
    let f = BufReader::new(std::fs::File::open(&out).expect("output"));
    let mut ids = HashSet::with_capacity(n as usize);
    for line in f.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.expect("line")).expect("json");
        assert!(
            ids.insert(v["id"].as_u64().expect("id")),
            "{job}: duplicate id"
        );
    }
    assert_eq!(ids.len() as u64, n, "{job}: records lost");
    n as f64 / secs
}

#[allow(clippy::too_many_arguments)] // a bench helper: every knob of one job
fn weir_job(
    dir: &Path,
    url: &str,
    input: &Path,
    n: u64,
    workers: usize,
    per_msg: usize,
    concurrency: usize,
    job: &str,
) -> f64 {
    let yaml = format!(
        r#"inputs:
  - name: events
    file: {{ path: {input} }}
stages:
  - name: work
    remote: true
    jq: {{ program: '.' }}
outputs:
  - name: out
    file: {{ path: {job}.out.jsonl }}
broker:
  records_per_message: {per_msg}
"#,
        input = input.display()
    );
    run_job(dir, url, &yaml, job, workers, concurrency, n)
}

fn cpu_job(dir: &Path, url: &str, input: &Path, n: u64, workers: usize) -> f64 {
    let yaml = format!(
        r#"inputs:
  - name: events
    file: {{ path: {input} }}
stages:
  - name: work
    remote: true
    jq: {{ program: '.h = (reduce range(0; 3000) as $i (.id; (. * 31 + $i) % 1000003))' }}
outputs:
  - name: out
    file: {{ path: b5-cpu{workers}.out.jsonl }}
broker:
  records_per_message: 64
"#,
        input = input.display()
    );
    run_job(dir, url, &yaml, &format!("b5-cpu{workers}"), workers, 1, n)
}
