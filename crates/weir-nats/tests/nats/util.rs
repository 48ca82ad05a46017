//! Helpers shared by the tests: a bounded test body, a server, a job, the
//! records `{"n": i}`, a doubling remote stage and a coordinator that reads
//! an output inbox to completion.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use weir_nats::job::Fingerprint;

use serde_json::{Value, json};
use weir::{BoxError, CancellationToken, Pipeline};
use weir_nats::completion::{self, Node, Producer};
use weir_nats::consume::InboxReader;
use weir_nats::job::Start;
use weir_nats::publish::{MessageLimits, Publisher, chunk};
use weir_nats::worker::{RemoteStage, WorkerOptions};
use weir_nats::{Broker, EdgeSettings, InboxSpec, Job};
use weir_record::{Position, Record};
use weir_testkit::NatsServer;

/// The time any one test may take.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Runs `fut`, failing the test if it takes longer than [`LIMIT`] (a hang
/// fails instead of blocking the whole binary).
pub async fn within<F: Future>(fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {LIMIT:?} (hang?)"),
    }
}

/// A fresh nats-server; started off the async threads (the fixture polls
/// with blocking sleeps).
pub async fn server() -> NatsServer {
    tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("start nats-server")
}

/// A new connection to `server`.
pub async fn connect(server: &NatsServer) -> Broker {
    Broker::connect(&server.url(), Duration::from_secs(5))
        .await
        .expect("connect to the test server")
}

/// Test settings: 100 records per message, the rest the defaults.
pub fn settings() -> EdgeSettings {
    EdgeSettings {
        records_per_message: 100,
        ..Default::default()
    }
}

/// An inbox read by a worker pool.
pub fn pool(name: &str) -> InboxSpec {
    InboxSpec {
        name: name.to_string(),
        pool: true,
        holds: false,
    }
}

/// An inbox read by the coordinator.
pub fn coordinator(name: &str) -> InboxSpec {
    InboxSpec {
        name: name.to_string(),
        pool: false,
        holds: false,
    }
}

/// Opens and starts job `name` with a pool inbox `double` and a coordinator
/// inbox `out` (the shape of most tests).
pub async fn double_job(broker: Broker, name: &str, settings: EdgeSettings) -> Job {
    let job = Job::open(broker, name, settings).await.expect("open job");
    let start = job
        .start(
            "test.yaml",
            &[pool("double"), coordinator("out")],
            &Fingerprint::default(),
            false,
        )
        .await
        .expect("start job");
    assert_eq!(start, Start::Fresh);
    job
}

/// Record `{"n": i}` read at `numbers#(i+1)`.
pub fn record(i: i64) -> Record {
    Record::from_json(
        &json!({ "n": i }),
        Arc::new(Position {
            input: Arc::from("numbers"),
            file: None,
            line: i as u64 + 1,
        }),
    )
}

/// Records `{"n": i}` for `i` in `range`.
pub fn numbers(range: std::ops::Range<i64>) -> Vec<Record> {
    range.map(record).collect()
}

/// `n` of a record value.
pub fn n_of(v: &Value) -> i64 {
    v["n"]
        .as_i64()
        .unwrap_or_else(|| panic!("not a {{\"n\": int}} record: {v}"))
}

/// Publishes `records` into `inbox` as messages of the job's
/// `records_per_message`, ids `<prefix>:<k>`; returns the messages made.
pub async fn publish(job: &Job, inbox: &str, prefix: &str, records: &[Record]) -> usize {
    let mut next = 0;
    let msgs = chunk(
        records,
        MessageLimits::records(job.settings.records_per_message),
        &job.names.subject(inbox),
        prefix,
        &mut next,
    )
    .messages;
    let dups = Publisher::new(job.clone())
        .publish_all(&msgs)
        .await
        .expect("publish");
    assert_eq!(dups, 0, "fresh ids are not duplicates");
    msgs.len()
}

/// A remote stage `double` mapping `{"n": i}` to `{"n": 2i}` on port 0
/// into inbox `out`, failing as `fail` says.
pub fn doubler(
    fail: impl Fn(i64) -> Result<(), BoxError> + Send + Sync + 'static,
    retry_errors: bool,
) -> RemoteStage {
    RemoteStage {
        name: "double".to_string(),
        ports: vec![vec!["out".to_string()]],
        process: Arc::new(move |r: &Record| {
            let n = n_of(&r.json());
            fail(n)?;
            Ok(vec![(
                0,
                r.derive(weir_record::value::from_json(&json!({ "n": n * 2 }))),
            )])
        }),
        retry_errors,
    }
}

/// Worker options with id `id`.
pub fn worker_opts(id: &str) -> WorkerOptions {
    WorkerOptions {
        id: id.to_string(),
        concurrency: 2,
        report_every: Duration::from_millis(200),
        fingerprint: None,
        exit_on_stuck: false,
    }
}

/// What the coordinator read from `out`.
pub struct Collected {
    /// The records of `out`, in arrival order.
    pub records: Vec<Record>,
    /// Records the completion sweep dead-lettered.
    pub swept: u64,
}

impl Collected {
    /// Occurrences of each `n`.
    pub fn counts(&self) -> BTreeMap<i64, usize> {
        let mut m = BTreeMap::new();
        for r in &self.records {
            *m.entry(n_of(&r.json())).or_default() += 1;
        }
        m
    }

    /// Asserts that the values read are exactly `expected`, each once.
    pub fn assert_exactly(&self, expected: impl IntoIterator<Item = i64>) {
        let want: BTreeMap<i64, usize> = expected.into_iter().map(|n| (n, 1)).collect();
        let got = self.counts();
        if got != want {
            let dups: Vec<_> = got.iter().filter(|(_, c)| **c > 1).take(10).collect();
            let missing: Vec<_> = want
                .keys()
                .filter(|k| !got.contains_key(k))
                .take(10)
                .collect();
            let extra: Vec<_> = got
                .keys()
                .filter(|k| !want.contains_key(k))
                .take(10)
                .collect();
            panic!(
                "read {} records, want {}: duplicates {dups:?}, missing {missing:?}, unexpected {extra:?}",
                self.records.len(),
                want.len()
            );
        }
    }
}

/// The coordinator's side of `double -> out`: watches completion (the pool
/// inbox `double` is fed by a local flow that is done once `published` is
/// set; `out` is fed by the pool `double`) and reads `out` with an
/// [`InboxReader`] into memory until it ends. Checks that every message of
/// `out` is acknowledged afterwards.
pub async fn collect_out(job: &Job, published: Arc<AtomicBool>) -> Collected {
    let out_done = Arc::new(AtomicBool::new(false));
    let nodes = vec![
        Node {
            inbox: "double".to_string(),
            pool: true,
            producers: vec![Producer::Local(published)],
            producers_done: Arc::default(),
        },
        Node {
            inbox: "out".to_string(),
            pool: false,
            producers: vec![Producer::Pool("double".to_string())],
            producers_done: out_done.clone(),
        },
    ];
    let reader = InboxReader::new(job, "out", out_done);
    let counters = reader.counters();
    let p = Pipeline::new();
    let got = p
        .source("out", reader.source())
        .sink("collect", weir::collect());
    let cancel = CancellationToken::new();
    let (report, swept) = tokio::join!(
        p.run(),
        completion::watch(job, &nodes, Duration::from_millis(50), &cancel)
    );
    let report = report.expect("coordinator pipeline");
    let swept = swept.expect("completion");
    let records = got.take().expect("collected records");
    assert_eq!(report.stage("collect").unwrap().ok, records.len() as u64);
    assert_eq!(
        counters.records.load(Ordering::Relaxed),
        records.len() as u64,
        "the reader counts what it read"
    );
    // The reader acknowledges a message once its records are committed;
    // the acks run on tasks of their own: wait for them.
    wait_until("every message of 'out' acknowledged", || async {
        job.inbox_counts("out").await.unwrap().stored == 0
    })
    .await;
    Collected { records, swept }
}

/// Polls `cond` every 20 ms until it holds, failing after 20 s.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
