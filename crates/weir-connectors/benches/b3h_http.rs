//! B3h: the `http` processor against a local service with 10 ms latency.
//!
//! For each concurrency (100 and 500), `CALLS_PER_SLOT` × concurrency
//! records go through the `http` processor configured as a pipeline file
//! would (`url: '"http://…/item/\(.id)"'`, `concurrency: N`), the answer
//! (JSON) merged into each record, into a counting sink; beside it, in
//! the same rounds, a hand-written loop: one reqwest client, a `JoinSet`
//! keeping N requests in flight, each answer read and parsed. The service
//! (hyper, on its own one-thread runtime) sleeps 10 ms per request.
//!
//! Efficiency = ideal time / actual time, the ideal being calls ÷
//! concurrency × 10 ms (every slot always busy, zero overhead). Rounds are
//! interleaved and the median reported, every run printed.
//!
//! Run: `cargo bench -p weir-connectors --bench b3h_http`
//! (`B3H_ROUNDS`, `B3H_CALLS_PER_SLOT` override the defaults).
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use weir::{Pipeline, fold, from_iter};
use weir_connectors::processors::ProcessorContext;
use weir_connectors::processors::http::HttpConfig;
use weir_connectors::registry::{Stage, StageOptions};
use weir_connectors::{Position, Record};

const LATENCY: Duration = Duration::from_millis(10);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The service: every request answered after [`LATENCY`] with a small
/// JSON body, keep-alive on. Runs on a runtime of its own (one thread).
fn start_service() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                        tokio::time::sleep(LATENCY).await;
                        let body = format!("{{\"path\":\"{}\",\"price\":42}}", req.uri().path());
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// The `http` processor in a pipeline: `calls` records through it.
async fn weir_http(addr: SocketAddr, calls: usize, concurrency: usize) -> Duration {
    let yaml = format!(
        "url: '\"http://{addr}/item/\\(.id)\"'\nconcurrency: {concurrency}\ntimeout_ms: 30000\ninto: quote\n"
    );
    let cfg: HttpConfig = serde_saphyr::from_str(&yaml).unwrap();
    let stage = Stage::Call(Arc::new(cfg.build(&ProcessorContext::default()).unwrap()));
    let pos = Arc::new(Position {
        input: "ids".into(),
        file: None,
        line: 0,
    });
    let records: Vec<Record> = (0..calls)
        .map(|i| Record::from_json(&serde_json::json!({ "id": i }), pos.clone()))
        .collect();
    let p = Pipeline::new();
    let flows = stage.attach(
        p.source("ids", from_iter(records)),
        &StageOptions {
            name: "price".into(),
            workers: 1,
            policy: weir::ErrorPolicy::Fail,
            ordered: false,
        },
    );
    let (_, flow) = flows.into_iter().next().unwrap();
    let sum = flow.sink(
        "count",
        fold(0u64, |n, r: Record| {
            let ok = weir_connectors::value::get(&r.value, "quote")
                .and_then(|q| weir_connectors::value::get(q, "status"))
                .and_then(weir_connectors::value::as_u64)
                == Some(200);
            n + u64::from(ok)
        }),
    );
    let t0 = Instant::now();
    p.run().await.expect("the run succeeds");
    let took = t0.elapsed();
    assert_eq!(sum.take(), Some(calls as u64), "every call answered");
    took
}

/// The hand-written loop: one client, a JoinSet with `concurrency`
/// requests in flight, each answer read and parsed.
async fn hand_written(addr: SocketAddr, calls: usize, concurrency: usize) -> Duration {
    let client = weir_connectors::http_client::client_builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut ok = 0;
    loop {
        while set.len() < concurrency && next < calls {
            let (client, url) = (client.clone(), format!("http://{addr}/item/{next}"));
            set.spawn(async move {
                let resp = client.get(url).send().await.unwrap();
                let status = resp.status();
                let body = resp.bytes().await.unwrap();
                let _: serde_json::Value = serde_json::from_slice(&body).unwrap();
                status.is_success()
            });
            next += 1;
        }
        match set.join_next().await {
            Some(r) => ok += usize::from(r.unwrap()),
            None => break,
        }
    }
    let took = t0.elapsed();
    assert_eq!(ok, calls);
    took
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds = env_or("B3H_ROUNDS", 3);
    let per_slot = env_or("B3H_CALLS_PER_SLOT", 100);
    let addr = start_service();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("B3h: http calls against a local service with {LATENCY:?} latency");
    for concurrency in [100usize, 500] {
        let calls = per_slot * concurrency;
        let ideal = LATENCY.as_secs_f64() * per_slot as f64;
        // Warm-up: connections opened, code paths paged in.
        rt.block_on(hand_written(addr, concurrency * 2, concurrency));
        rt.block_on(weir_http(addr, concurrency * 2, concurrency));
        let (mut w, mut h) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let tw = rt
                .block_on(weir_http(addr, calls, concurrency))
                .as_secs_f64();
            let th = rt
                .block_on(hand_written(addr, calls, concurrency))
                .as_secs_f64();
            println!(
                "  c={concurrency} round {round}: weir {:.0} calls/s (efficiency {:.2}), hand-written {:.0} calls/s (efficiency {:.2})",
                calls as f64 / tw,
                ideal / tw,
                calls as f64 / th,
                ideal / th
            );
            w.push(tw);
            h.push(th);
        }
        let (tw, th) = (median(w), median(h));
        println!(
            "c={concurrency}: {calls} calls; weir {:.0} calls/s, efficiency {:.2}; hand-written reqwest+JoinSet {:.0} calls/s, efficiency {:.2}; weir/hand-written {:.2}",
            calls as f64 / tw,
            ideal / tw,
            calls as f64 / th,
            ideal / th,
            th / tw
        );
    }
}
