//! The `http` sink against a real HTTP server on loopback (a scripted
//! one, standing in for a remote service): batching, order, retries with
//! the same idempotency key, refused records isolated and dead-lettered,
//! destination errors failing the run.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir::{ErrorPolicy, Pipeline};
use weir_connectors::sinks::http::HttpSink;
use weir_connectors::sources::BuildContext;
use weir_connectors::{Position, Record};
use weir_testkit::http::{MockHttp, Request, Response};

/// Fails the test instead of hanging it.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test timed out")
}

fn ctx() -> BuildContext {
    BuildContext {
        input: "out".into(),
        base_dir: std::env::temp_dir(),
        state: None,
    }
}

fn records(n: u64) -> Vec<Record> {
    (1..=n)
        .map(|i| {
            let pos = Arc::new(Position {
                input: "in".into(),
                file: Some("t.jsonl".into()),
                line: i,
            });
            Record::from_json(&json!({"id": i, "bad": i % 97 == 0}), pos)
        })
        .collect()
}

fn sink(url: &str, extra: &str) -> HttpSink {
    let backoff = if extra.contains("backoff_ms") {
        ""
    } else {
        "backoff_ms: 1\n"
    };
    let yaml = format!("url: {url}\n{backoff}{extra}");
    serde_saphyr::from_str(&yaml).unwrap()
}

/// The records a request carried, by its body (NDJSON or a JSON array).
fn ids(req: &Request) -> Vec<u64> {
    let text = req.text();
    let values: Vec<Value> = if text.starts_with('[') {
        serde_json::from_str(&text).unwrap()
    } else {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    values.iter().map(|v| v["id"].as_u64().unwrap()).collect()
}

/// Runs `items` into the sink; returns the report's counts for the sink
/// (received, ok, dead-lettered), the dead letters' (id, error), and the
/// run's error, if any.
async fn run(
    cfg: &HttpSink,
    items: Vec<Record>,
    policy: ErrorPolicy,
) -> ((u64, u64, u64), Vec<(u64, String)>, Option<String>) {
    let p = Pipeline::new();
    let dead = p.dead_letter_sink(weir::collect());
    p.source("in", weir::from_iter(items))
        .sink("out", cfg.build(&ctx()).unwrap())
        .on_error(policy);
    let result = bounded(p.run()).await;
    let letters = dead
        .take()
        .unwrap_or_default()
        .iter()
        .map(|d: &weir::DeadLetter| {
            let r = d.item::<Record>().unwrap();
            (r.json()["id"].as_u64().unwrap(), d.error.clone())
        })
        .collect();
    match result {
        Ok(report) => {
            let s = report.stage("out").unwrap();
            ((s.received, s.ok, s.dead_lettered), letters, None)
        }
        Err(e) => ((0, 0, 0), letters, Some(e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_arrives_once_in_order_in_bounded_requests() {
    let server = MockHttp::start(|_| Response::new(200, "ok"));
    let cfg = sink(&server.url("/ingest"), "max_records: 100\n");
    let (counts, dead, err) = run(&cfg, records(1234), ErrorPolicy::Fail).await;
    assert_eq!(err, None);
    assert_eq!(counts, (1234, 1234, 0));
    assert!(dead.is_empty());
    let reqs = server.requests();
    let all: Vec<u64> = reqs.iter().flat_map(ids).collect();
    assert_eq!(all, (1..=1234).collect::<Vec<_>>());
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/ingest");
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        assert!(ids(r).len() <= 100);
        assert_eq!(r.header("idempotency-key").map(str::len), Some(32));
    }
    // The same records sent again carry the same keys.
    let again = MockHttp::start(|_| Response::new(200, "ok"));
    let cfg = sink(&again.url("/ingest"), "max_records: 100\n");
    run(&cfg, records(1234), ErrorPolicy::Fail).await;
    let keys = |rs: &[Request]| -> Vec<String> {
        rs.iter()
            .map(|r| r.header("idempotency-key").unwrap().to_string())
            .collect()
    };
    assert_eq!(keys(&reqs), keys(&again.requests()));
    let mut unique = keys(&reqs);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), reqs.len(), "distinct requests, distinct keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_arrays_put_headers_bearer_token_and_byte_bound() {
    // A variable cargo sets for every test run (setting one here would
    // need `unsafe`).
    let server = MockHttp::start(|_| Response::new(204, ""));
    let cfg = sink(
        &server.url("/put"),
        "method: PUT\nformat: json_array\nmax_bytes: 62\nheaders: { X-Tenant: acme }\nbearer_token_env: CARGO_PKG_NAME\n",
    );
    let (counts, _, err) = run(&cfg, records(50), ErrorPolicy::Fail).await;
    assert_eq!(err, None);
    assert_eq!(counts, (50, 50, 0));
    let reqs = server.requests();
    assert!(reqs.len() > 1, "62 bytes hold a few records only");
    assert!(
        reqs.iter().any(|r| ids(r).len() > 1),
        "requests of several records"
    );
    for r in &reqs {
        assert_eq!(r.method, "PUT");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-tenant"), Some("acme"));
        assert_eq!(r.header("authorization"), Some("Bearer weir-connectors"));
        assert!(r.body.len() <= 62, "{} bytes: {}", r.body.len(), r.text());
    }
    let all: Vec<u64> = reqs.iter().flat_map(ids).collect();
    assert_eq!(all, (1..=50).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_the_same_key_honouring_retry_after() {
    // Every request fails twice (503 with Retry-After: 1, then a bare
    // 500) before it is taken.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let server = MockHttp::start(move |_| match c.fetch_add(1, Ordering::SeqCst) % 3 {
        0 => Response::new(503, "busy").header("Retry-After", "1"),
        1 => Response::new(500, "oops"),
        _ => Response::new(200, "ok"),
    });
    let cfg = sink(&server.url("/"), "max_records: 10\n");
    let started = Instant::now();
    let (counts, dead, err) = run(&cfg, records(20), ErrorPolicy::Fail).await;
    assert_eq!(err, None);
    assert_eq!(counts, (20, 20, 0));
    assert!(dead.is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After honoured twice"
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 6);
    for tries in reqs.chunks(3) {
        let key = tries[0].header("idempotency-key").unwrap();
        assert!(
            tries
                .iter()
                .all(|r| r.header("idempotency-key") == Some(key))
        );
        assert!(tries.iter().all(|r| ids(r) == ids(&tries[0])));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_are_isolated_and_dead_lettered_the_rest_delivered() {
    // The service refuses any request carrying a record with "bad": true.
    let server = MockHttp::start(|r| {
        if r.text().contains("\"bad\":true") {
            Response::new(422, "{\"error\": \"bad record\"}")
        } else {
            Response::new(200, "ok")
        }
    });
    let cfg = sink(&server.url("/"), "max_records: 64\n");
    let (counts, dead, err) = run(&cfg, records(300), ErrorPolicy::Fail).await;
    assert_eq!(err, None, "refused records do not fail the run");
    assert_eq!(counts, (300, 297, 3));
    let dead_ids: Vec<u64> = dead.iter().map(|(id, _)| *id).collect();
    assert_eq!(dead_ids, vec![97, 194, 291]);
    assert!(
        dead[0].1.contains("422") && dead[0].1.contains("bad record"),
        "{}",
        dead[0].1
    );
    let mut delivered: Vec<u64> = server
        .requests()
        .iter()
        .filter(|r| !r.text().contains("\"bad\":true"))
        .flat_map(ids)
        .collect();
    delivered.sort_unstable();
    let expected: Vec<u64> = (1..=300).filter(|i| i % 97 != 0).collect();
    assert_eq!(delivered, expected, "each good record delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_errors_fail_the_run_with_status_and_excerpt() {
    let server = MockHttp::start(|_| Response::new(404, "no such route"));
    let cfg = sink(&server.url("/nowhere"), "");
    let (_, dead, err) = run(&cfg, records(5), ErrorPolicy::Fail).await;
    let err = err.expect("a 404 fails the run");
    assert!(
        err.contains("404") && err.contains("/nowhere") && err.contains("no such route"),
        "{err}"
    );
    assert!(dead.is_empty());
    assert_eq!(server.requests().len(), 1, "a 404 is not retried");

    // Under dead_letter, the records are dead-lettered with the reason.
    let (counts, dead, err) = run(&cfg, records(5), ErrorPolicy::DeadLetter).await;
    assert_eq!(err, None);
    assert_eq!(counts, (5, 0, 5));
    assert!(dead.iter().all(|(_, e)| e.contains("404")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_service_is_retried_then_named() {
    let port = weir_testkit::free_port();
    let cfg = sink(&format!("http://127.0.0.1:{port}/x"), "attempts: 3\n");
    let (_, _, err) = run(&cfg, records(3), ErrorPolicy::Fail).await;
    let err = err.expect("nobody listens");
    assert!(
        err.contains("(after 3 tries)") && err.contains(&port.to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    // A POST redirected with 302 would become a GET without its body.
    let server = MockHttp::start(|_| Response::new(302, "").header("Location", "/moved"));
    let cfg = sink(&server.url("/in"), "");
    let (_, dead, err) = run(&cfg, records(5), ErrorPolicy::Fail).await;
    let err = err.expect("a redirect fails the batch");
    assert!(
        err.contains("302") && err.contains("/moved") && err.contains("not followed"),
        "{err}"
    );
    assert!(dead.is_empty());
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].method, "POST");
}

/// A service that refuses every request (a wrong format, say) is not
/// taken to refuse every record: after a few records refused one by one
/// with nothing taken between, the write fails instead of dead-lettering
/// the whole input one request at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_refusing_everything_fails_the_run() {
    let server = MockHttp::start(|_| Response::new(400, "unsupported media type"));
    let cfg = sink(&server.url("/"), "");
    let (_, dead, err) = run(&cfg, records(500), ErrorPolicy::Fail).await;
    let err = err.expect("the run fails");
    assert!(
        err.contains("refuses the requests, not the records"),
        "{err}"
    );
    assert_eq!(dead.len(), 9, "records refused one by one before the limit");
    let sent = server.requests().len();
    assert!(sent < 200, "{sent} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_the_url_are_masked() {
    let server = MockHttp::start(|_| Response::new(404, "no"));
    let url = server.url("/x").replace("http://", "http://alice:hunter2@");
    let cfg = sink(&url, "");
    let (_, _, err) = run(&cfg, records(1), ErrorPolicy::Fail).await;
    let err = err.expect("404");
    assert!(
        err.contains("alice:***@") && !err.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn options_are_checked_before_anything_is_sent() {
    let bad = |extra: &str, url: &str| {
        let cfg = sink(url, extra);
        cfg.check().unwrap_err().message
    };
    assert!(bad("", "ftp://x/").contains("scheme `ftp`"));
    assert!(bad("", "not a url").contains("invalid url"));
    assert!(bad("max_records: 0\n", "http://x/").contains("at least 1"));
    assert!(bad("timeout_secs: 0\n", "http://x/").contains("timeout_secs"));
    assert!(bad("backoff_ms: 600000\n", "http://x/").contains("backoff_ms"));
    assert!(bad("bearer_token_env: CARGO_PKG_NAME\n", "http://u:p@x/").contains("credentials"));
    assert!(bad("headers: { \"bad name\": v }\n", "http://x/").contains("header name"));
    assert!(
        bad("bearer_token_env: WEIR_TEST_UNSET_VARIABLE\n", "http://x/")
            .contains("WEIR_TEST_UNSET_VARIABLE")
    );
}
