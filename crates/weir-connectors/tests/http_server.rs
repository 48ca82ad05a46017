//! The `http_server` source in a running pipeline, through real sockets:
//! every kind of body ingested in order, every refusal ingesting nothing,
//! `ack: commit` answers that count what reached the sink and the dead
//! letters, 503 with `Retry-After` when the pipeline is backed up, and a
//! drain that answers what is in flight, refuses the rest and ends.
//!
//! The client is a few lines over `std::net::TcpStream` (one request per
//! connection, `Connection: close`), run on tokio's blocking threads.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use weir::{BoxError, DeadLetter, ErrorPolicy, Pipeline, PipelineOptions, Report, WriteError};
use weir_connectors::sources::BuildContext;
use weir_connectors::sources::http_server::HttpServerSource;
use weir_connectors::{ProcessError, Raw, Record};

/// Fails the test instead of hanging it.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test timed out")
}

/// An answer as the client read it.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// One request on a connection of its own; `Err` when the connection is
/// refused or breaks before an answer.
fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(body);
    // The server may answer (413) and close before reading everything.
    let _ = s.write_all(&req);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no answer: {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Resp {
        status,
        headers,
        body: body.to_string(),
    })
}

/// `METHOD path` with `headers` and `body` (Content-Length set).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Resp> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let body = body.as_bytes().to_vec();
    tokio::task::spawn_blocking(move || exchange(addr, &head, &body))
        .await
        .unwrap()
}

/// [`send`], which must get an answer.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    bounded(send(addr, method, path, headers, body))
        .await
        .expect("an answer")
}

async fn post(addr: SocketAddr, path: &str, content_type: &str, body: &str) -> Resp {
    send(addr, "POST", path, &[("Content-Type", content_type)], body)
        .await
        .expect("an answer")
}

const NDJSON: &str = "application/x-ndjson";
const JSON: &str = "application/json";

/// A sink that takes a permit of `gate` per record before writing it, and
/// tells `entered` when a write begins: a pipeline the test can back up.
struct Gated {
    gate: Arc<Semaphore>,
    entered: Arc<Notify>,
    written: Arc<AtomicUsize>,
    got: Vec<Record>,
}

impl weir::Sink<Record> for Gated {
    type Output = Vec<Record>;

    async fn write(&mut self, items: Vec<Record>) -> Result<(), WriteError<Record>> {
        self.entered.notify_one();
        let n = u32::try_from(items.len()).unwrap();
        self.gate.acquire_many(n).await.unwrap().forget();
        self.written.fetch_add(items.len(), Ordering::SeqCst);
        self.got.extend(items);
        Ok(())
    }

    async fn finish(self) -> Result<Vec<Record>, BoxError> {
        Ok(self.got)
    }
}

/// A pipeline `http_server` -> decode -> `check` (dead-letters records with
/// `"reject": true`) -> a gated sink, running.
struct Running {
    addr: SocketAddr,
    cancel: weir::CancellationToken,
    run: tokio::task::JoinHandle<Result<Report, weir::RunError>>,
    out: weir::SinkHandle<Vec<Record>>,
    dead: weir::SinkHandle<Vec<DeadLetter>>,
    gate: Arc<Semaphore>,
    entered: Arc<Notify>,
    written: Arc<AtomicUsize>,
}

/// Starts the pipeline with the source's options `yaml` (on a free port);
/// `open` says whether the sink's gate starts open.
fn start(yaml: &str, options: PipelineOptions, open: bool) -> Running {
    let cfg: HttpServerSource =
        serde_saphyr::from_str(&format!("address: 127.0.0.1:0\n{yaml}")).unwrap();
    let ctx = BuildContext {
        input: "in".into(),
        base_dir: ".".into(),
        state: None,
    };
    let server = cfg.open(&ctx).expect("the server binds");
    let addr = server.local_addr();
    let (source, decoder) = server.into_source();
    let p = Pipeline::with_options(options);
    let dead = p.dead_letter_sink(weir::collect());
    let gate = Arc::new(Semaphore::new(if open {
        Semaphore::MAX_PERMITS / 2
    } else {
        0
    }));
    let entered = Arc::new(Notify::new());
    let written = Arc::new(AtomicUsize::new(0));
    let out = p
        .source("in", source)
        .try_map("in/decode", move |raw: &Raw| decoder.decode(raw))
        .on_error(ErrorPolicy::DeadLetter)
        .try_map("check", |r: &Record| {
            if r.json()["reject"] == json!(true) {
                Err(ProcessError::new("rejected", "the record asked for it"))
            } else {
                Ok(r.clone())
            }
        })
        .on_error(ErrorPolicy::DeadLetter)
        .sink(
            "out",
            Gated {
                gate: gate.clone(),
                entered: entered.clone(),
                written: written.clone(),
                got: Vec::new(),
            },
        );
    let cancel = p.cancel_token();
    let run = tokio::spawn(p.run());
    Running {
        addr,
        cancel,
        run,
        out,
        dead,
        gate,
        entered,
        written,
    }
}

impl Running {
    /// Stops the run (as SIGINT does) and waits for its end: the records
    /// that reached the sink, the dead letters, the report.
    async fn stop(self) -> (Vec<Record>, Vec<DeadLetter>, Report) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 4);
        self.cancel.cancel();
        let report = bounded(self.run).await.unwrap().expect("the run succeeds");
        (
            self.out.take().unwrap(),
            self.dead.take().unwrap_or_default(),
            report,
        )
    }
}

fn lines_of(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.pos.line).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_kind_is_ingested_in_order() {
    let r = start(
        "paths: [/ingest, /other]\n",
        PipelineOptions::default(),
        true,
    );
    let health = bounded(send(r.addr, "GET", "/health", &[], ""))
        .await
        .unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let one = bounded(post(r.addr, "/ingest", JSON, r#"{"n":1}"#)).await;
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(
        one.json(),
        json!({"accepted": 1, "committed": 1, "dead_lettered": 0, "first_line": 1})
    );
    let array = bounded(post(
        r.addr,
        "/other",
        "application/json; charset=utf-8",
        r#"[{"n":2},{"n":3},{"n":4}]"#,
    ))
    .await;
    assert_eq!(
        array.json(),
        json!({"accepted": 3, "committed": 3, "dead_lettered": 0, "first_line": 2})
    );
    let nd = bounded(post(
        r.addr,
        "/ingest",
        NDJSON,
        "{\"n\":5}\r\n\n{\"n\":6}\n   \n{\"n\":7}",
    ))
    .await;
    assert_eq!(
        nd.json(),
        json!({"accepted": 3, "committed": 3, "dead_lettered": 0, "first_line": 5})
    );
    // No Content-Type: JSON.
    let bare = bounded(send(r.addr, "POST", "/ingest", &[], r#"{"n":8}"#))
        .await
        .unwrap();
    assert_eq!(bare.status, 200, "{bare:?}");
    let empty = bounded(post(r.addr, "/ingest", JSON, "[]")).await;
    assert_eq!(empty.json()["accepted"], 0);

    let (out, dead, report) = r.stop().await;
    assert!(dead.is_empty());
    let got: Vec<Value> = out.iter().map(Record::json).collect();
    let want: Vec<Value> = (1..=8).map(|n| json!({"n": n})).collect();
    assert_eq!(got, want);
    assert_eq!(lines_of(&out), (1..=8).collect::<Vec<_>>());
    assert!(
        out.iter()
            .all(|r| &*r.pos.input == "in" && r.pos.file.is_none())
    );
    assert_eq!(report.stage("in").unwrap().ok, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_ingest_nothing() {
    // An environment variable every `cargo test` run has; tests cannot set
    // one (unsafe code is forbidden).
    let token = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it");
    let r = start(
        "paths: [/ingest]\nbearer_token_env: CARGO_MANIFEST_DIR\nmax_body_bytes: 64\n",
        PipelineOptions::default(),
        true,
    );
    let addr = r.addr;
    let auth = format!("Bearer {token}");
    let json_auth = [("Authorization", auth.as_str()), ("Content-Type", JSON)];
    let nd_auth = [("Authorization", auth.as_str()), ("Content-Type", NDJSON)];

    let missing = call(addr, "POST", "/ingest", &[], r#"{"n":1}"#).await;
    assert_eq!(missing.status, 401, "{missing:?}");
    assert_eq!(missing.header("WWW-Authenticate"), Some("Bearer"));
    let wrong = format!("Bearer {token}x");
    let wrong = call(
        addr,
        "POST",
        "/ingest",
        &[("Authorization", &wrong)],
        r#"{"n":1}"#,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.header("WWW-Authenticate"), Some("Bearer"));
    let basic = format!("Basic {token}");
    let basic = call(
        addr,
        "POST",
        "/ingest",
        &[("Authorization", &basic)],
        r#"{"n":1}"#,
    )
    .await;
    assert_eq!(basic.status, 401);

    let big = "[".to_string() + &"1,".repeat(40) + "1]";
    let too_big = call(addr, "POST", "/ingest", &json_auth, &big).await;
    assert_eq!(too_big.status, 413, "{too_big:?}");
    assert!(
        too_big.json()["error"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes (64 bytes)")
    );

    let bad_line = "{\"n\":1}\n{\"n\":}\n{\"n\":3}\n";
    let bad_line = call(addr, "POST", "/ingest", &nd_auth, bad_line).await;
    assert_eq!(bad_line.status, 400);
    assert_eq!(
        bad_line.json()["error"],
        "line 2: invalid JSON at column 6: expected value; nothing was ingested"
    );
    let bad_json = call(addr, "POST", "/ingest", &json_auth, "[{\"n\":1},").await;
    assert_eq!(bad_json.status, 400);
    assert!(
        bad_json.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON at line 1 column 9: "),
        "{bad_json:?}"
    );
    let csv = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "text/csv"),
    ];
    let media = call(addr, "POST", "/ingest", &csv, "n\n1\n").await;
    assert_eq!(media.status, 415);

    let get = call(addr, "GET", "/ingest", &json_auth, "").await;
    assert_eq!(get.status, 405);
    assert_eq!(get.header("Allow"), Some("POST"));
    let lost = call(addr, "POST", "/nowhere", &json_auth, "{}").await;
    assert_eq!(lost.status, 404);
    // Health needs no token.
    let health = call(addr, "GET", "/health", &[], "").await;
    assert_eq!(health.status, 200);

    // What gets through is numbered from 1: refusals took no positions.
    let ok = call(addr, "POST", "/ingest", &nd_auth, "{\"n\":1}\n{\"n\":2}\n").await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["first_line"], 1);

    let (out, dead, _) = r.stop().await;
    assert!(dead.is_empty());
    assert_eq!(lines_of(&out), vec![1, 2]);
}

/// A body over the limit without a Content-Length (chunked) is cut off
/// while it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_are_limited_too() {
    let r = start("max_body_bytes: 16\n", PipelineOptions::default(), true);
    let addr = r.addr;
    let head =
        "POST / HTTP/1.1\r\nHost: test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut body = Vec::new();
    for chunk in ["[1,2,3,4,5,6,7,8", ",9,10,11,12,13]"] {
        body.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let resp = bounded(tokio::task::spawn_blocking(move || {
        exchange(addr, head, &body)
    }))
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status, 413, "{resp:?}");
    let (out, _, _) = r.stop().await;
    assert!(out.is_empty());
}

/// Concurrent clients: each `ack: commit` answer counts exactly its own
/// records, and the answers add up to what the sink and the dead-letter
/// output got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_answers_count_the_sink_and_the_dead_letters() {
    let r = start("paths: [/ingest]\n", PipelineOptions::default(), true);
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let addr = r.addr;
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for q in 0..5u64 {
                // Record i of the request is rejected when i % 3 == 0.
                let body: String = (0..10u64)
                    .map(|i| {
                        format!(
                            "{{\"c\":{c},\"q\":{q},\"i\":{i},\"reject\":{}}}\n",
                            i % 3 == 0
                        )
                    })
                    .collect();
                let resp = post(addr, "/ingest", NDJSON, &body).await;
                assert_eq!(resp.status, 200, "{resp:?}");
                answers.push(resp.json());
            }
            answers
        }));
    }
    let mut committed = 0;
    let mut dead_lettered = 0;
    let mut firsts = Vec::new();
    for c in clients {
        for a in bounded(c).await.unwrap() {
            assert_eq!(a["accepted"], 10);
            assert_eq!(a["committed"], 6, "{a}");
            assert_eq!(a["dead_lettered"], 4, "{a}");
            committed += a["committed"].as_u64().unwrap();
            dead_lettered += a["dead_lettered"].as_u64().unwrap();
            firsts.push(a["first_line"].as_u64().unwrap());
        }
    }
    firsts.sort_unstable();
    assert_eq!(firsts, (0..20).map(|k| 1 + 10 * k).collect::<Vec<_>>());
    let (out, dead, report) = r.stop().await;
    assert_eq!(out.len() as u64, committed);
    assert_eq!(dead.len() as u64, dead_lettered);
    assert!(out.iter().all(|r| r.json()["reject"] == json!(false)));
    let check = report.stage("check").unwrap();
    assert_eq!(
        (check.received, check.ok, check.dead_lettered),
        (200, 120, 80)
    );
    // A dead letter says where its record came from.
    let d = dead[0].item::<Record>().unwrap();
    assert_eq!(&*d.pos.input, "in");
}

/// A backed-up pipeline (the sink waits) fills the bounded intake; then
/// requests are refused with 503 and `Retry-After: 1`, nothing of them
/// ingested; once the sink moves, requests are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backed_up_pipeline_answers_503_with_retry_after() {
    let options = PipelineOptions {
        batch_size: 1,
        buffer: 1,
        ..PipelineOptions::default()
    };
    let r = start("ack: accept\nqueue: 1\n", options, false);
    let mut accepted = 0;
    let mut refused = None;
    for n in 0..200 {
        let resp = bounded(post(r.addr, "/", JSON, &format!("{{\"n\":{n}}}"))).await;
        match resp.status {
            202 => accepted += 1,
            503 => {
                refused = Some(resp);
                break;
            }
            other => panic!("unexpected {other}: {resp:?}"),
        }
    }
    let refused = refused.expect("a full intake refuses requests");
    assert_eq!(refused.header("Retry-After"), Some("1"));
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("backed up")
    );
    assert!(
        accepted >= 1,
        "the pipeline took at least one request first"
    );

    // Released, the pipeline takes requests again (after a retry or two).
    r.gate.add_permits(1000);
    let mut again = None;
    for _ in 0..100 {
        let resp = bounded(post(r.addr, "/", JSON, r#"{"n":"again"}"#)).await;
        if resp.status == 202 {
            again = Some(resp);
            break;
        }
        assert_eq!(resp.status, 503);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        again.expect("taken once the sink moves").json()["accepted"],
        1
    );
    accepted += 1;
    // With `ack: accept`, records still queued at a stop are lost (and
    // logged): wait until the sink has them all before stopping.
    bounded(async {
        while r.written.load(Ordering::SeqCst) < accepted {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let (out, _, _) = r.stop().await;
    assert_eq!(out.len(), accepted);
}

/// Stopping the run: a request whose records the pipeline holds is
/// answered once they are committed; requests after the stop get 503 (or
/// find the port closed); health says `draining`; the run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_drains_what_is_in_flight_and_refuses_the_rest() {
    let r = start("paths: [/ingest]\n", PipelineOptions::default(), false);
    let addr = r.addr;
    // The sink holds this request's record when the run is stopped.
    let entered = r.entered.notified();
    let held = tokio::spawn(post(addr, "/ingest", JSON, r#"{"n":"held"}"#));
    bounded(entered).await;
    r.cancel.cancel();
    // The run stops reading the source: health says so, while the held
    // request still waits for its commit.
    bounded(async {
        loop {
            match send(addr, "GET", "/health", &[], "").await {
                Ok(resp) if resp.status == 200 => {}
                Ok(resp) => {
                    break assert_eq!((resp.status, resp.body.as_str()), (503, "draining\n"));
                }
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(!held.is_finished());
    let late = bounded(send(addr, "POST", "/ingest", &[], r#"{"n":"late"}"#)).await;
    // The sink moves again: the held record is committed and the run ends.
    r.gate.add_permits(1000);
    let report = bounded(r.run).await.unwrap().expect("the run succeeds");
    let held = bounded(held).await.unwrap();
    assert_eq!(held.status, 200, "{held:?}");
    assert_eq!(held.json()["committed"], 1);
    match late {
        Ok(resp) => {
            assert_eq!(resp.status, 503, "{resp:?}");
            assert_eq!(resp.header("Retry-After"), Some("1"));
        }
        // Refused, or closed unanswered: a connection the server had not
        // taken yet when it stopped listening.
        Err(e) => eprintln!("late request: {e}"),
    }
    // After the run, nothing listens (or what is left says so).
    if let Ok(resp) = bounded(send(addr, "GET", "/health", &[], "")).await {
        assert_eq!((resp.status, resp.body.as_str()), (503, "draining\n"));
    }
    let out = r.out.take().unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].json(), json!({"n": "held"}));
    assert_eq!(report.stage("in").unwrap().ok, 1);
}

/// A request whose records take longer to commit than the drain limit
/// after a stop still gets its answer: the server waits for every request
/// waiting on its commit before it lets the limit cut connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_slower_than_the_drain_limit_is_still_answered() {
    let r = start("paths: [/ingest]\n", PipelineOptions::default(), false);
    let addr = r.addr;
    let entered = r.entered.notified();
    let held = tokio::spawn(post(addr, "/ingest", JSON, r#"{"n":"slow"}"#));
    bounded(entered).await;
    r.cancel.cancel();
    tokio::time::sleep(weir_connectors::sources::http_server::DRAIN_LIMIT + Duration::from_secs(1))
        .await;
    assert!(!held.is_finished(), "answered before its commit");
    r.gate.add_permits(1000);
    bounded(r.run).await.unwrap().expect("the run succeeds");
    let held = bounded(held).await.unwrap();
    assert_eq!(held.status, 200, "{held:?}");
    assert_eq!(held.json()["committed"], 1);
}

/// More records in one request than `max_records_per_request`: 413, and
/// nothing of it reaches the pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_records_in_one_request_are_refused_whole() {
    let r = start(
        "paths: [/ingest]\nmax_records_per_request: 3\n",
        PipelineOptions::default(),
        true,
    );
    let resp = bounded(post(r.addr, "/ingest", JSON, "[1,2,3,4]")).await;
    assert_eq!(resp.status, 413, "{resp:?}");
    assert!(
        resp.body.contains("max_records_per_request (3)"),
        "{resp:?}"
    );
    let resp = bounded(post(r.addr, "/ingest", JSON, "[1,2,3]")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    r.cancel.cancel();
    bounded(r.run).await.unwrap().expect("the run succeeds");
    assert_eq!(r.out.take().unwrap().len(), 3);
}

/// Requests waiting for their commit hold their connections: past half of
/// `max_connections` a new request is answered 503 at once instead of a
/// new client hanging behind a stalled pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_their_commit_are_bounded() {
    // Two connections: one may wait for its commit.
    let r = start(
        "paths: [/ingest]\nmax_connections: 2\n",
        PipelineOptions::default(),
        false,
    );
    let addr = r.addr;
    let entered = r.entered.notified();
    let first = tokio::spawn(post(addr, "/ingest", JSON, r#"{"n":1}"#));
    bounded(entered).await;
    let refused = bounded(post(addr, "/ingest", JSON, r#"{"n":2}"#)).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused.body.contains("waiting for their records' commit"),
        "{refused:?}"
    );
    assert_eq!(refused.header("Retry-After"), Some("1"));
    r.gate.add_permits(1000);
    assert_eq!(bounded(first).await.unwrap().status, 200);
    r.cancel.cancel();
    bounded(r.run).await.unwrap().expect("the run succeeds");
    assert_eq!(r.out.take().unwrap().len(), 1);
}
