//! B7: HTTP ingest with `ack: commit` into SQLite.
//!
//! `weir run` (the release binary) of `examples/pipelines/ingest.yaml` on
//! a free port (http_server → validate → sqlite with a key); 32 client
//! threads POST NDJSON bodies of 1,000 events each, one request at a time
//! per client, each waiting for its 200 (every record committed). Reported:
//! records/s accepted, p50/p99 request latency. The baseline, in the same
//! run, is a plain single-threaded loop writing the same rows into SQLite
//! with rusqlite (the same table, upserts on the key, one transaction per
//! 1,000 rows): the ratio is weir's rate over that loop's.
//!
//! Run: `cargo bench -p weir-cli --bench b7_ingest` (`B7_REQUESTS` per
//! client, default 40; `B7_ROUNDS`, default 3).
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLIENTS: usize = 32;
const PER_BODY: usize = 1000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn body(client: usize, request: usize) -> String {
    (0..PER_BODY)
        .map(|i| {
            format!(
                "{{\"id\":\"c{client}-r{request}-e{i}\",\"kind\":\"click\",\"ts\":\"2026-11-30T10:00:00Z\",\"amount\":{}.5}}\n",
                i % 100
            )
        })
        .collect()
}

fn post(addr: SocketAddr, body: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    write!(
        s,
        "POST /events HTTP/1.1\r\nHost: b\r\nConnection: close\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the ingest example in `dir`; where it listens.
fn start(weir: &Path, dir: &Path) -> (Server, SocketAddr) {
    let mut child = Command::new(weir)
        .current_dir(dir)
        .args(["run", "ingest.yaml", "--quiet", "--no-checkpoint"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir run");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("weir says where it listens").unwrap();
        if let Some(a) = line.strip_prefix("http_server 'events' listening on http://") {
            break a.parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Server(child), addr)
}

/// One weir round: records/s and the request latencies.
fn weir_round(weir: &Path, example: &Path, requests: usize) -> (f64, Vec<Duration>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    std::fs::copy(
        example.join("schemas/event.json"),
        dir.path().join("schemas/event.json"),
    )
    .unwrap();
    let yaml = std::fs::read_to_string(example.join("ingest.yaml"))
        .unwrap()
        .replace("127.0.0.1:18080", "127.0.0.1:0");
    std::fs::write(dir.path().join("ingest.yaml"), yaml).unwrap();
    let (server, addr) = start(weir, dir.path());
    let bodies: Vec<Vec<String>> = (0..CLIENTS)
        .map(|c| (0..requests).map(|r| body(c, r)).collect())
        .collect();
    let t0 = Instant::now();
    let clients: Vec<_> = bodies
        .into_iter()
        .map(|bodies| {
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                for b in bodies {
                    loop {
                        let t = Instant::now();
                        match post(addr, &b) {
                            200 => {
                                latencies.push(t.elapsed());
                                break;
                            }
                            503 => std::thread::sleep(Duration::from_millis(20)),
                            s => panic!("status {s}"),
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for c in clients {
        latencies.extend(c.join().unwrap());
    }
    let took = t0.elapsed();
    drop(server);
    let conn = rusqlite::Connection::open(dir.path().join("out/ingest.db")).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    let total = CLIENTS * requests * PER_BODY;
    assert_eq!(rows as usize, total, "every acknowledged record is stored");
    (total as f64 / took.as_secs_f64(), latencies)
}

/// The baseline: the same rows, one thread, rusqlite, 1,000 per
/// transaction, parsed from the same NDJSON.
fn baseline(requests: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("b.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE events (id TEXT PRIMARY KEY, kind TEXT, ts TEXT, amount REAL);",
    )
    .unwrap();
    let bodies: Vec<String> = (0..CLIENTS)
        .flat_map(|c| (0..requests).map(move |r| body(c, r)))
        .collect();
    let t0 = Instant::now();
    let mut conn = conn;
    for b in &bodies {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO events (id, kind, ts, amount) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, ts = excluded.ts, amount = excluded.amount",
                )
                .unwrap();
            for line in b.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                stmt.execute(rusqlite::params![
                    v["id"].as_str(),
                    v["kind"].as_str(),
                    v["ts"].as_str(),
                    v["amount"].as_f64()
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    (bodies.len() * PER_BODY) as f64 / t0.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let requests = env_or("B7_REQUESTS", 40);
    let rounds = env_or("B7_ROUNDS", 3);
    let weir = PathBuf::from(env!("CARGO_BIN_EXE_weir"));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipelines");
    println!(
        "B7: {CLIENTS} clients x {requests} requests x {PER_BODY} records, ack: commit, into SQLite"
    );
    let (mut rates, mut bases, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (rate, mut lat) = weir_round(&weir, &example, requests);
        let base = baseline(requests);
        lat.sort();
        println!(
            "  round {round}: weir {rate:.0} records/s (p50 {:?}, p99 {:?}); baseline loop {base:.0} records/s; ratio {:.2}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            rate / base
        );
        rates.push(rate);
        bases.push(base);
        all.extend(lat);
    }
    all.sort();
    let (rate, base) = (median(rates), median(bases));
    println!(
        "weir ingest {rate:.0} records/s, p50 {:?}, p99 {:?} (all rounds); single-thread rusqlite loop {base:.0} records/s; ratio {:.2}",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        rate / base
    );
}
