//! The `nats` source and sink against a real nats-server: a stream read
//! into SQLite exactly, through a bad message, a `kill -9` and a broker
//! restart; replays of the sink stored once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::Value;
use weir_testkit::NatsServer;

use crate::util::{Dir, KillOnDrop, assert_accounting, assert_conserved, code, n, text};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Creates stream `name` on `subjects` and publishes `{"id": i, "v": i %
/// 10}` for i in 1..=n on `<prefix>.<i % 4>`; after message `bad_after`, a
/// message that is not JSON.
fn fill(url: &str, name: &str, prefix: &str, n: u64, bad_after: Option<u64>) {
    rt().block_on(async {
        let js = jetstream::new(async_nats::connect(url).await.unwrap());
        js.create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
        let mut acks = Vec::new();
        for i in 1..=n {
            let body = format!("{{\"id\":{i},\"v\":{}}}", i % 10);
            acks.push(
                js.publish(format!("{prefix}.{}", i % 4), body.into())
                    .await
                    .unwrap(),
            );
            if Some(i) == bad_after {
                acks.push(
                    js.publish(format!("{prefix}.bad"), "{\"id\": oops".into())
                        .await
                        .unwrap(),
                );
            }
            if acks.len() >= 512 {
                for a in acks.drain(..) {
                    a.await.unwrap();
                }
            }
        }
        for a in acks {
            a.await.unwrap();
        }
    });
}

/// Creates an empty stream `name` on `<prefix>.>`.
fn create_stream(url: &str, name: &str, prefix: &str) {
    rt().block_on(async {
        let js = jetstream::new(async_nats::connect(url).await.unwrap());
        js.create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    });
}

/// Messages stream `name` stores.
fn stored(url: &str, name: &str) -> u64 {
    rt().block_on(async {
        let js = jetstream::new(async_nats::connect(url).await.unwrap());
        let mut s = js.get_stream(name).await.unwrap();
        s.info().await.unwrap().state.messages
    })
}

/// The ids in table `t` of `db`, sorted, and the number of rows.
fn ids(db: &std::path::Path, t: &str) -> Vec<i64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(&format!("SELECT id FROM {t} ORDER BY id"))
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Rows in table `t`, 0 while it does not exist yet.
fn rows_now(db: &std::path::Path, t: &str) -> i64 {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return 0;
    };
    conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
        .unwrap_or(0)
}

fn pipeline(url: &str, consumer: &str, extra_outputs: &str) -> String {
    format!(
        "\
inputs:
  - name: orders
    nats:
      url: {url}
      stream: ORDERS
      consumer: {consumer}
      until_drained: true
      ack_wait_secs: 2
      meta: _nats
stages:
  - name: keep
    filter: {{ condition: '.v != 0' }}
  - name: row
    jq: {{ program: '{{id, v, subject: ._nats.subject, seq: ._nats.seq}}' }}
outputs:
  - name: db
    sqlite:
      path: out/db.sqlite
      table: orders
      key: [id]
      columns: {{ id: integer, v: integer, subject: text, seq: integer }}
{extra_outputs}dead_letter: {{ path: out/dead.jsonl }}
"
    )
}

/// The ids 1..=n that the filter keeps.
fn kept(n: i64) -> Vec<i64> {
    (1..=n).filter(|i| i % 10 != 0).collect()
}

/// A stream read into SQLite: the table is exact, the message that is not
/// JSON is dead-lettered with its stream sequence, counts add up, and
/// everything is acknowledged (a rerun reads nothing).
#[test]
fn a_stream_into_sqlite_is_exact_and_a_bad_message_is_dead_lettered() {
    let server = NatsServer::start();
    fill(&server.url(), "ORDERS", "orders", 1000, Some(500));
    let d = Dir::new();
    d.file("p.yaml", pipeline(&server.url(), "etl", ""));
    let report = d.run_ok("p.yaml");
    assert_eq!(ids(&d.join("out/db.sqlite"), "orders"), kept(1000));
    assert_eq!(n(&report, "orders", "out"), 1001, "{report}");
    assert_eq!(n(&report, "keep", "filtered"), 100, "{report}");
    assert_eq!(n(&report, "db", "ok"), 900, "{report}");
    assert_eq!(report["dead_lettered"], 1, "{report}");
    assert_accounting(&report);
    assert_conserved(&report);
    let letters = d.jsonl("out/dead.jsonl");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["position"], "ORDERS:501", "{letters:?}");
    assert_eq!(letters[0]["raw"], "{\"id\": oops", "{letters:?}");
    assert_eq!(letters[0]["stage"], "orders/decode", "{letters:?}");
    let conn = rusqlite::Connection::open(d.join("out/db.sqlite")).unwrap();
    let (subject, seq): (String, i64) = conn
        .query_row("SELECT subject, seq FROM orders WHERE id = 7", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((subject.as_str(), seq), ("orders.3", 7));
    // Everything was acknowledged: a rerun reads nothing.
    let again = d.run_ok("p.yaml");
    assert_eq!(n(&again, "orders", "out"), 0, "{again}");
}

/// Starts `weir run p.yaml` in `d`, its output piped.
fn spawn_run(d: &Dir) -> std::process::Child {
    Command::new(assert_cmd::cargo::cargo_bin("weir"))
        .current_dir(d.path())
        .env("WEIR_LOG", "info")
        .args(["run", "p.yaml", "--report", "json", "--quiet"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(d.join("stdout.txt")).unwrap())
        .stderr(std::fs::File::create(d.join("stderr.txt")).unwrap())
        .spawn()
        .unwrap()
}

/// Waits until table `t` has at least `at_least` rows.
fn wait_rows(db: &std::path::Path, t: &str, at_least: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows_now(db, t) < at_least {
        assert!(Instant::now() < deadline, "no rows in {t} within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kill -9` of weir in the middle of a stream, then a rerun: the messages
/// it held come back (after `ack_wait_secs`) and the table is exact.
#[test]
fn kill_9_mid_stream_then_rerun_loses_nothing() {
    let server = NatsServer::start();
    let total = 20_000;
    fill(&server.url(), "ORDERS", "orders", total as u64, None);
    let d = Dir::new();
    d.file("p.yaml", pipeline(&server.url(), "etl", ""));
    let mut child = spawn_run(&d);
    let guard = KillOnDrop(child.id());
    wait_rows(&d.join("out/db.sqlite"), "orders", 500);
    child.kill().unwrap();
    let _ = child.wait();
    drop(guard);
    let partial = rows_now(&d.join("out/db.sqlite"), "orders");
    assert!(
        partial < kept(total).len() as i64,
        "the run finished before the kill ({partial} rows): make it bigger"
    );
    let report = d.run_ok_within("p.yaml", Duration::from_secs(120));
    assert_eq!(ids(&d.join("out/db.sqlite"), "orders"), kept(total));
    assert_accounting(&report);
    assert_conserved(&report);
}

/// The broker killed and restarted in the middle of a run that reads a
/// stream into SQLite and publishes a copy into another stream: the run
/// completes, the table is exact and the copy holds each record once.
#[test]
fn a_broker_restart_mid_run_completes_exactly() {
    let mut server = NatsServer::start();
    let total = 20_000;
    fill(&server.url(), "ORDERS", "orders", total as u64, None);
    create_stream(&server.url(), "COPY", "copy");
    let d = Dir::new();
    let copy =
        "  - name: copy\n    nats: { url: URL, subject_jq: '\"copy.\" + (.v | tostring)' }\n"
            .replace("URL", &server.url());
    d.file(
        "p.yaml",
        pipeline(
            &server.url(),
            "etl",
            if std::env::var("NOCOPY").is_ok() {
                ""
            } else {
                &copy
            },
        ),
    );
    let mut child = spawn_run(&d);
    let guard = KillOnDrop(child.id());
    wait_rows(&d.join("out/db.sqlite"), "orders", 500);
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            let info = rt().block_on(async {
                let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
                let mut c: jetstream::consumer::PullConsumer = js
                    .get_stream("ORDERS")
                    .await
                    .unwrap()
                    .get_consumer("etl")
                    .await
                    .unwrap();
                format!("{:?}", c.info().await.unwrap())
            });
            drop(out);
            panic!(
                "the run did not end within 60 s; {} rows; consumer {info}\n{}",
                rows_now(&d.join("out/db.sqlite"), "orders"),
                {
                    let all = d.read("stderr.txt");
                    let keep: Vec<&str> = all
                        .lines()
                        .filter(|l| {
                            !l.contains("MESSAGE")
                                && !l.contains("multiplexer")
                                && !l.contains("pending")
                                && !l.contains("forwarding")
                        })
                        .collect();
                    keep[keep.len().saturating_sub(80)..].join("\n")
                }
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(guard);
    assert!(status.success(), "{}", d.read("stderr.txt"));
    let stdout = d.read("stdout.txt");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(ids(&d.join("out/db.sqlite"), "orders"), kept(total));
    assert_eq!(stored(&server.url(), "COPY"), kept(total).len() as u64);
    assert_eq!(report["dead_lettered"], 0, "{report}");
    assert_accounting(&report);
}

/// SIGINT on a run that follows a stream (no `until_drained`): it stops
/// pulling, commits what it took and acknowledges it before it exits, so
/// a rerun reads exactly the rest (nothing twice, nothing lost).
#[test]
fn sigint_drains_and_acknowledges_what_was_taken() {
    let server = NatsServer::start();
    let total = 20_000;
    fill(&server.url(), "ORDERS", "orders", total as u64, None);
    let d = Dir::new();
    let follow = pipeline(&server.url(), "etl", "").replace("      until_drained: true\n", "");
    d.file("p.yaml", &follow);
    let mut child = spawn_run(&d);
    let guard = KillOnDrop(child.id());
    wait_rows(&d.join("out/db.sqlite"), "orders", 500);
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the run did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(guard);
    assert_eq!(status.code(), Some(130), "{}", d.read("stderr.txt"));
    let first: Value = serde_json::from_str(d.read("stdout.txt").lines().last().unwrap()).unwrap();
    assert_accounting(&first);
    let taken = n(&first, "orders", "out");
    assert!(
        taken < total as u64,
        "the run read everything before the signal"
    );
    // Everything taken was acknowledged: the rerun gets exactly the rest,
    // with no redelivery (ack_wait is 2 s; a lost ack would show here).
    d.file("p.yaml", pipeline(&server.url(), "etl", ""));
    let rest = d.run_ok("p.yaml");
    assert_eq!(n(&rest, "orders", "out"), total as u64 - taken, "{rest}");
    assert_eq!(ids(&d.join("out/db.sqlite"), "orders"), kept(total));
}

/// The nats sink publishing the same input twice (a rerun) stores each
/// record once: message ids come from positions.
#[test]
fn the_sink_replayed_stores_each_record_once() {
    let server = NatsServer::start();
    create_stream(&server.url(), "OUT", "out");
    let d = Dir::new();
    let lines: String = (1..=500)
        .map(|i| format!("{{\"id\":{i},\"region\":\"r{}\"}}\n", i % 3))
        .collect();
    d.file("in.jsonl", lines);
    d.file(
        "p.yaml",
        format!(
            "\
inputs:
  - name: in
    file: {{ path: in.jsonl }}
outputs:
  - name: bus
    nats:
      url: {}
      subject_jq: '\"out.\" + .region'
",
            server.url()
        ),
    );
    for _ in 0..2 {
        let report = d.run_ok("p.yaml");
        assert_eq!(n(&report, "bus", "ok"), 500, "{report}");
    }
    assert_eq!(stored(&server.url(), "OUT"), 500);
}

/// An unreachable server fails the run within seconds, saying where.
#[test]
fn an_unreachable_server_is_a_clear_error() {
    let d = Dir::new();
    let port = weir_testkit::free_port();
    d.file(
        "p.yaml",
        format!(
            "\
inputs:
  - name: in
    nats: {{ url: 'nats://127.0.0.1:{port}', stream: S, consumer: c }}
outputs:
  - name: out
    stdout: {{}}
"
        ),
    );
    let started = Instant::now();
    let out = d.weir(&["run", "p.yaml"]).output().unwrap();
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("cannot connect to nats://127.0.0.1:{port}")),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}
