//! The `http` and `scatter` processors against real HTTP servers on
//! loopback (scripted ones, standing in for remote services): answers
//! merged into records, retries, dead letters for every way a call can fail
//! (status, hang, oversized or malformed answers, redirect loops), the
//! circuit breaker, per-host rate and concurrency limits, deadlines,
//! hedging, gather policies, and counts that add up.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir::{ErrorPolicy, Pipeline};
use weir_connectors::processors::ProcessorContext;
use weir_connectors::processors::http::HttpConfig;
use weir_connectors::processors::scatter::ScatterConfig;
use weir_connectors::registry::{Stage, StageOptions};
use weir_connectors::{Position, Record};
use weir_testkit::http::{MockHttp, Response};

/// Fails the test instead of hanging it.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test timed out")
}

fn records(n: u64) -> Vec<Record> {
    (1..=n)
        .map(|i| {
            let pos = Arc::new(Position {
                input: "in".into(),
                file: None,
                line: i,
            });
            Record::from_json(&json!({"id": i, "name": format!("item {i}")}), pos)
        })
        .collect()
}

fn ctx() -> ProcessorContext {
    ProcessorContext {
        stage: "call".into(),
        ..ProcessorContext::default()
    }
}

fn stage(yaml: &str) -> Stage {
    let cfg: HttpConfig = serde_saphyr::from_str(yaml).unwrap();
    Stage::Call(Arc::new(cfg.build(&ctx()).unwrap()))
}

fn scatter(yaml: &str) -> Stage {
    let cfg: ScatterConfig = serde_saphyr::from_str(yaml).unwrap();
    Stage::Call(Arc::new(cfg.build(&ctx()).unwrap()))
}

/// What a run gave: the outputs by id, the dead letters as (id, error),
/// and the stage's counts (received, ok, dead-lettered).
struct Ran {
    out: Vec<Value>,
    dead: Vec<(u64, String)>,
    counts: (u64, u64, u64),
}

async fn run(yaml: &str, items: Vec<Record>) -> Ran {
    run_stage(stage(yaml), items).await
}

async fn run_stage(stage: Stage, items: Vec<Record>) -> Ran {
    let p = Pipeline::new();
    let dead = p.dead_letter_sink(weir::collect());
    let flows = stage.attach(
        p.source("in", weir::from_iter(items)),
        &StageOptions {
            name: "call".into(),
            workers: 1,
            policy: ErrorPolicy::DeadLetter,
            ordered: false,
        },
    );
    let (_, flow) = flows.into_iter().next().unwrap();
    let out = flow.sink("out", weir::collect());
    let report = bounded(p.run()).await.expect("the run succeeds");
    let s = report.stage("call").unwrap();
    let mut out: Vec<Value> = out.take().unwrap().iter().map(Record::json).collect();
    out.sort_by_key(|v| v["id"].as_u64());
    let mut dead: Vec<(u64, String)> = dead
        .take()
        .unwrap_or_default()
        .iter()
        .map(|d: &weir::DeadLetter| {
            let r = d.item::<Record>().unwrap();
            (r.json()["id"].as_u64().unwrap(), d.error.clone())
        })
        .collect();
    dead.sort();
    let counts = (s.received, s.ok, s.dead_lettered);
    assert_eq!(counts.0, counts.1 + counts.2, "in = out + dead-lettered");
    Ran { out, dead, counts }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_merged_into_each_record() {
    let server = MockHttp::start(|r| {
        let id = r.path.rsplit('/').next().unwrap().to_string();
        Response::new(
            200,
            &format!(
                "{{\"id\":{id},\"price\":{id}0,\"seen\":{:?},\"body\":{:?}}}",
                r.header("x-item").unwrap_or(""),
                r.text()
            ),
        )
        .header("content-type", "application/json; charset=utf-8")
        .header("x-served-by", "mock")
    });
    let yaml = format!(
        "url: '\"{}/price/\\(.id)\"'\nmethod: POST\nbody: '{{q: .name}}'\nheaders:\n  X-Item: .name\ninto: enrich.price\ninclude_headers: true\nconcurrency: 8\n",
        server.url("")
    );
    let ran = run(&yaml, records(40)).await;
    assert_eq!(ran.counts, (40, 40, 0));
    assert!(ran.dead.is_empty());
    assert_eq!(ran.out.len(), 40);
    for (i, v) in ran.out.iter().enumerate() {
        let id = i as u64 + 1;
        let answer = &v["enrich"]["price"];
        assert_eq!(answer["status"], 200);
        assert_eq!(answer["body"]["price"], id * 10);
        assert_eq!(answer["body"]["seen"], format!("item {id}"));
        assert_eq!(answer["body"]["body"], format!("{{\"q\":\"item {id}\"}}"));
        assert_eq!(answer["headers"]["x-served-by"], "mock");
        assert!(
            answer["url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/price/{id}"))
        );
        assert_eq!(
            v["name"],
            format!("item {id}"),
            "the record's own fields stay"
        );
    }
    let reqs = server.requests();
    assert_eq!(reqs.len(), 40);
    assert!(
        reqs.iter()
            .all(|r| r.method == "POST" && r.header("content-type") == Some("application/json"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_then_dead_lettered_with_status_and_excerpt() {
    // Record 3 fails twice with 503 then answers; record 5 is not found;
    // record 7 always fails with 500.
    let tries = Arc::new(AtomicUsize::new(0));
    let t = tries.clone();
    let server = MockHttp::start(move |r| match r.path.as_str() {
        "/i/3" if t.fetch_add(1, Ordering::SeqCst) < 2 => {
            Response::new(503, "busy").header("retry-after", "0")
        }
        "/i/5" => Response::new(404, "no such item\n  here"),
        "/i/7" => Response::new(500, "boom"),
        _ => Response::new(200, "fine"),
    });
    let yaml = format!(
        "url: '\"{}/i/\\(.id)\"'\nattempts: 3\nbackoff_ms: 1\nper_host: {{circuit_breaker: {{failures: 0}}}}\n",
        server.url("")
    );
    let ran = run(&yaml, records(8)).await;
    assert_eq!(ran.counts, (8, 6, 2));
    assert_eq!(
        ran.out[2]["response"]["body"], "fine",
        "text answers stay text"
    );
    assert_eq!(ran.dead.len(), 2);
    let (id, e) = &ran.dead[0];
    assert_eq!(*id, 5);
    assert!(
        e.contains("http_status") && e.contains("404 from") && e.contains("no such item here"),
        "{e}"
    );
    assert!(!e.contains("tries"), "a 404 is not retried: {e}");
    let (id, e) = &ran.dead[1];
    assert_eq!(*id, 7);
    assert!(
        e.contains("500 from") && e.contains("boom") && e.contains("after 3 tries"),
        "{e}"
    );
    let count = |p: &str| server.requests().iter().filter(|r| r.path == p).count();
    assert_eq!((count("/i/3"), count("/i/5"), count("/i/7")), (3, 1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_are_dead_letters_not_crashes() {
    let server = MockHttp::start(|r| match r.path.as_str() {
        // Larger than max_response_bytes.
        "/i/1" => Response::new(200, &"x".repeat(5000)),
        // Not UTF-8.
        "/i/2" => Response {
            status: 200,
            headers: vec![("content-type".into(), "text/html".into())],
            body: vec![b'<', 0xff, 0xfe, b'>'],
        },
        // Says JSON, is not.
        "/i/3" => Response::new(200, "{\"a\":").header("content-type", "application/json"),
        // JSON nested deeper than a record may be.
        "/i/4" => Response::new(
            200,
            &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        )
        .header("content-type", "application/json"),
        // A redirect to itself.
        "/i/5" => Response::new(302, "").header("location", "/i/5"),
        // Hangs past the timeout.
        "/i/6" => {
            std::thread::sleep(Duration::from_millis(1500));
            Response::new(200, "late")
        }
        _ => Response::new(200, "{}").header("content-type", "application/json"),
    });
    let yaml = format!(
        "url: '\"{}/i/\\(.id)\"'\nmax_response_bytes: 4096\ntimeout_ms: 300\nattempts: 2\nbackoff_ms: 1\nper_host: {{circuit_breaker: {{failures: 0}}}}\n",
        server.url("")
    );
    let ran = run(&yaml, records(7)).await;
    assert_eq!(ran.counts, (7, 1, 6));
    let reason = |id: u64| {
        ran.dead
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| panic!("record {id} is not dead-lettered"))
    };
    assert!(
        reason(1).contains("http_body") && reason(1).contains("larger than 4096"),
        "{}",
        reason(1)
    );
    assert!(reason(2).contains("not UTF-8"), "{}", reason(2));
    assert!(
        reason(3).contains("says it is JSON but is not"),
        "{}",
        reason(3)
    );
    assert!(reason(4).contains("http_body"), "{}", reason(4));
    assert!(
        reason(5).contains("http_error") && reason(5).contains("redirect"),
        "{}",
        reason(5)
    );
    assert!(
        reason(6).contains("http_error") && reason(6).contains("after 2 tries"),
        "{}",
        reason(6)
    );
    // The redirect loop is followed max_redirects (5) times, once: a loop
    // is not retried.
    let loops = server
        .requests()
        .iter()
        .filter(|r| r.path == "/i/5")
        .count();
    assert_eq!(loops, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_spares_a_failing_host() {
    let server = MockHttp::start(|_| Response::new(500, "down"));
    let yaml = format!(
        "url: '\"{}/x\"'\nconcurrency: 1\nattempts: 2\nbackoff_ms: 1\nper_host: {{circuit_breaker: {{failures: 3, open_ms: 60000}}}}\n",
        server.url("")
    );
    let ran = run(&yaml, records(50)).await;
    assert_eq!(
        ran.counts,
        (50, 0, 50),
        "nothing is lost: all dead-lettered"
    );
    // Three failures open the circuit; nothing more reaches the server.
    assert_eq!(server.requests().len(), 3);
    let open = ran
        .dead
        .iter()
        .filter(|(_, e)| e.contains("http_circuit_open"))
        .count();
    assert!(open >= 48, "{:?}", ran.dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_host_rate_and_concurrency_hold() {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let server = MockHttp::start(move |_| {
        let c = n.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(c, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        n.fetch_sub(1, Ordering::SeqCst);
        Response::new(200, "ok")
    });
    // Concurrency: 32 in flight for the stage, 3 per host.
    let yaml = format!(
        "url: '\"{}/x\"'\nconcurrency: 32\nper_host: {{concurrency: 3}}\n",
        server.url("")
    );
    let ran = run(&yaml, records(60)).await;
    assert_eq!(ran.counts, (60, 60, 0));
    let seen = peak.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&seen),
        "peak in flight at the host: {seen}"
    );

    // Rate: 40 per second with a burst of 1: 20 requests take at least
    // 19 intervals of 25 ms.
    let yaml = format!(
        "url: '\"{}/x\"'\nconcurrency: 32\nper_host: {{rate: 40}}\n",
        server.url("")
    );
    let t0 = Instant::now();
    let ran = run(&yaml, records(20)).await;
    assert_eq!(ran.counts, (20, 20, 0));
    assert!(
        t0.elapsed() >= Duration::from_millis(19 * 25 - 10),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expression_results_are_request_dead_letters() {
    let server = MockHttp::start(|_| Response::new(200, "ok"));
    let yaml = format!(
        "url: 'if .id == 1 then 42 elif .id == 2 then \"ftp://x/\" elif .id == 3 then empty else \"{}/ok\" end'\nheaders:\n  X-Bad: 'if .id == 4 then \"a\\nb\" else \"fine\" end'\n",
        server.url("")
    );
    let ran = run(&yaml, records(5)).await;
    assert_eq!(ran.counts, (5, 1, 4));
    let errors: Vec<&str> = ran.dead.iter().map(|(_, e)| e.as_str()).collect();
    assert!(
        errors[0].contains("http_request") && errors[0].contains("gave 42, not a string"),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("scheme `ftp`"), "{}", errors[1]);
    assert!(errors[2].contains("gave no value"), "{}", errors[2]);
    assert!(
        errors[3].contains("X-Bad") || errors[3].contains("x-bad"),
        "{}",
        errors[3]
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn options_are_checked_when_built() {
    let ctx = ProcessorContext::default();
    let build = |yaml: &str| {
        serde_saphyr::from_str::<HttpConfig>(yaml)
            .unwrap()
            .build(&ctx)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(
        build("url: .u\nconcurrency: 0\n")
            .unwrap_err()
            .contains("concurrency")
    );
    assert!(
        build("url: '.u +'\n")
            .unwrap_err()
            .contains("does not compile")
    );
    assert!(
        build("url: .u\ninto: 'a..b'\n")
            .unwrap_err()
            .contains("into")
    );
    assert!(
        build("url: .u\nper_host: {rate: 0}\n")
            .unwrap_err()
            .contains("rate")
    );
    assert!(
        build("url: .u\nheaders: {'bad header': .x}\n")
            .unwrap_err()
            .contains("header name")
    );
    assert!(
        build("url: .u\nbearer_token_env: WEIR_SURELY_UNSET_VAR\n")
            .unwrap_err()
            .contains("not set")
    );
    build("url: .u\n").unwrap();
}

/// Three price services: `fast` answers at once, `slow` after 300 ms,
/// `broken` with 500.
fn price_services() -> (MockHttp, MockHttp, MockHttp) {
    let price = |r: &weir_testkit::http::Request, k: u64| {
        let id: u64 = r.path.rsplit('/').next().unwrap().parse().unwrap();
        Response::new(200, &format!("{{\"price\":{}}}", id * k))
            .header("content-type", "application/json")
    };
    let fast = MockHttp::start(move |r| price(r, 10));
    let slow = MockHttp::start(move |r| {
        std::thread::sleep(Duration::from_millis(300));
        price(r, 7)
    });
    let broken = MockHttp::start(|_| Response::new(500, "out of order"));
    (fast, slow, broken)
}

fn scatter_yaml(fast: &MockHttp, slow: &MockHttp, broken: &MockHttp, gather: &str) -> String {
    format!(
        "requests:\n  fast: {{ url: '\"{}/p/\\(.id)\"' }}\n  slow: {{ url: '\"{}/p/\\(.id)\"', deadline_ms: 5000 }}\n  broken: {{ url: '\"{}/p/\\(.id)\"', attempts: 2, backoff_ms: 1 }}\ngather: {gather}\ninto: prices\nconcurrency: 8\n",
        fast.url(""),
        slow.url(""),
        broken.url("")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scatter_gathers_partial_answers_and_names_the_misses() {
    let (fast, slow, broken) = price_services();
    let ran = run_stage(
        scatter(&scatter_yaml(&fast, &slow, &broken, "{at_least: 2}")),
        records(10),
    )
    .await;
    assert_eq!(ran.counts, (10, 10, 0));
    for (i, v) in ran.out.iter().enumerate() {
        let id = i as u64 + 1;
        let p = &v["prices"];
        assert_eq!(p["answers"]["fast"]["body"]["price"], id * 10);
        assert_eq!(p["answers"]["slow"]["body"]["price"], id * 7);
        assert!(p["answers"].get("broken").is_none());
        let why = p["missed"]["broken"].as_str().unwrap();
        // Its 500s, until they open its circuit.
        assert!(
            (why.contains("http_status") && why.contains("500") && why.contains("after 2 tries"))
                || why.contains("http_circuit_open"),
            "{why}"
        );
    }

    // `all`: the broken service fails every record, which says why.
    let ran = run_stage(
        scatter(&scatter_yaml(&fast, &slow, &broken, "all")),
        records(3),
    )
    .await;
    assert_eq!(ran.counts, (3, 0, 3));
    for (_, e) in &ran.dead {
        assert!(
            e.contains("scatter_gather")
                && e.contains("'broken'")
                && (e.contains("out of order") || e.contains("http_circuit_open")),
            "{e}"
        );
    }

    // `first`: the fast answer alone; the slow calls are dropped.
    let ran = run_stage(
        scatter(&scatter_yaml(&fast, &slow, &broken, "first")),
        records(5),
    )
    .await;
    assert_eq!(ran.counts, (5, 5, 0));
    for v in &ran.out {
        let answers = v["prices"]["answers"].as_object().unwrap();
        assert_eq!(answers.keys().collect::<Vec<_>>(), ["fast"], "{v}");
        // The others are named: the slow one cancelled, the broken one
        // failed or cancelled.
        let missed = v["prices"]["missed"].as_object().unwrap();
        assert!(
            missed["slow"].as_str().unwrap().contains("gather: first"),
            "{v}"
        );
        assert!(missed.contains_key("broken"), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_wins_against_a_slow_first_try_and_deadlines_bound_a_call() {
    // The first request for each id hangs for 3 s; a repeat answers at once.
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let s = seen.clone();
    let server = MockHttp::start(move |r| {
        if s.lock().unwrap().insert(r.path.clone()) {
            std::thread::sleep(Duration::from_secs(3));
            Response::new(200, "slow")
        } else {
            Response::new(200, "hedged")
        }
    });
    let yaml = format!(
        "url: '\"{}/h/\\(.id)\"'\nhedge_after_ms: 50\nconcurrency: 8\n",
        server.url("")
    );
    let ran = run(&yaml, records(8)).await;
    assert_eq!(ran.counts, (8, 8, 0));
    assert!(
        ran.out.iter().all(|v| v["response"]["body"] == "hedged"),
        "{:?}",
        ran.out
    );
    assert_eq!(server.requests().len(), 16, "one hedge per record");

    // A deadline ends a call whose tries would take longer.
    let hang = MockHttp::start(|_| {
        std::thread::sleep(Duration::from_secs(2));
        Response::new(200, "late")
    });
    let yaml = format!(
        "url: '\"{}/x\"'\ndeadline_ms: 150\ntimeout_ms: 1000\nattempts: 5\n",
        hang.url("")
    );
    let ran = run(&yaml, records(2)).await;
    assert_eq!(ran.counts, (2, 0, 2));
    for (_, e) in &ran.dead {
        assert!(e.contains("deadline of 150 ms"), "{e}");
    }
}

#[test]
fn scatter_options_are_checked_when_built() {
    let build = |yaml: &str| {
        serde_saphyr::from_str::<ScatterConfig>(yaml)
            .unwrap()
            .build(&ctx())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(
        build("requests: {}\n")
            .unwrap_err()
            .contains("at least one request")
    );
    assert!(
        build("requests: {a: {url: .u}}\ngather: {at_least: 2}\n")
            .unwrap_err()
            .contains("at_least 2")
    );
    assert!(
        build("requests: {a: {url: .u, into: x}}\n")
            .unwrap_err()
            .contains("`into` is the scatter's")
    );
    assert!(
        build("requests: {a: {url: .u, concurrency: 3}}\n")
            .unwrap_err()
            .contains("`concurrency` is the scatter's")
    );
    assert!(
        build("requests: {a: {url: .u, hedge_after_ms: 0}}\n")
            .unwrap_err()
            .contains("hedge_after_ms")
    );
    build("requests: {a: {url: .u}, b: {url: .v}}\ngather: first\n").unwrap();
}

/// Hedges are part of a try: a slow, failing service sees two requests
/// per try (the try and its hedge), never more, and a 429's Retry-After
/// holds the next try back however early the hedge would fire.
#[test]
fn hedges_share_the_tries_and_respect_retry_after() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let slow = MockHttp::start(|_| {
        std::thread::sleep(Duration::from_millis(200));
        Response::new(500, "slow and broken")
    });
    let yaml = format!(
        "url: '\"{}/x\"'\nattempts: 2\nbackoff_ms: 1\nhedge_after_ms: 50\nper_host: {{circuit_breaker: {{failures: 0}}}}\n",
        slow.url("")
    );
    let ran = rt.block_on(run(&yaml, records(1)));
    assert_eq!(ran.counts, (1, 0, 1));
    assert_eq!(slow.requests().len(), 4, "2 tries, each hedged once");

    let t = Arc::new(AtomicUsize::new(0));
    let t2 = t.clone();
    let busy = MockHttp::start(move |_| {
        if t2.fetch_add(1, Ordering::SeqCst) == 0 {
            Response::new(429, "later").header("retry-after", "1")
        } else {
            Response::new(200, "now")
        }
    });
    let yaml = format!(
        "url: '\"{}/x\"'\nbackoff_ms: 1\nhedge_after_ms: 20\n",
        busy.url("")
    );
    let t0 = Instant::now();
    let ran = rt.block_on(run(&yaml, records(1)));
    assert_eq!(ran.counts, (1, 1, 0));
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(busy.requests().len(), 2);
}
