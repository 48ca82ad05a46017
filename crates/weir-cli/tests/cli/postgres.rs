//! The `postgres` sink end to end, against real servers ([`PgServer`]):
//! exact upserts over reruns, records the server refuses dead-lettered
//! with its message, a wrong password or no server failing the run within
//! seconds, and a server stopped mid-run and restarted.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir_testkit::PgServer;

use crate::util::{Dir, KillOnDrop, assert_accounting, assert_conserved, code, n, text};

const PIPELINE: &str = "\
inputs:
  - name: in
    decode_workers: 1
    file: { path: in.jsonl }
outputs:
  - name: db
    postgres:
      url_env: WEIR_TEST_PG_URL
      table: orders
      key: [id]
      columns: { id: integer, user: text, amount: real, tags: json }
";

/// 300 orders, id = line = amount, except: line 50 has a negative amount
/// (the table's CHECK refuses it), line 100 a NUL in its user (text cannot
/// hold it), line 150 is id 10 again with amount 999 (it wins).
fn orders() -> String {
    (1..=300)
        .map(|i| match i {
            50 => "{\"id\":50,\"user\":\"u\",\"amount\":-5,\"tags\":[]}\n".to_string(),
            100 => "{\"id\":100,\"user\":\"a\\u0000b\",\"amount\":100}\n".to_string(),
            150 => "{\"id\":10,\"user\":\"again\",\"amount\":999,\"tags\":{\"x\":1}}\n".to_string(),
            i => format!("{{\"id\":{i},\"user\":\"u{i}\",\"amount\":{i},\"tags\":[{i}]}}\n"),
        })
        .collect()
}

#[test]
fn postgres_upserts_are_exact_and_refused_records_are_dead_lettered() {
    let pg = PgServer::start();
    pg.psql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, \"user\" text, \
         amount double precision CHECK (amount >= 0), tags jsonb)",
    );
    let d = Dir::new();
    d.file("in.jsonl", orders()).file("p.yaml", PIPELINE);
    for run in 0..2 {
        let out = d
            .weir(&["run", "p.yaml", "--report", "json"])
            .env("WEIR_TEST_PG_URL", pg.url())
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(code(&out), 0, "run {run}: {stderr}");
        let report: serde_json::Value =
            serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
        assert_accounting(&report);
        assert_conserved(&report);
        assert_eq!(n(&report, "db", "in"), 300, "{report}");
        assert_eq!(n(&report, "db", "ok"), 298, "{report}");
        assert_eq!(n(&report, "db", "dead_lettered"), 2, "{report}");
        let letters = d.jsonl("dead-letters.jsonl");
        assert_eq!(letters.len(), 2, "{letters:?}");
        let all = serde_json::to_string(&letters).unwrap();
        assert!(all.contains("SQLSTATE 23514"), "{all}");
        assert!(all.contains("orders_amount_check"), "{all}");
        assert!(all.contains("NUL"), "{all}");
        assert_eq!(
            pg.psql("SELECT count(*), sum(amount), min(id), max(id) FROM orders")
                .trim(),
            format!("297|{}|1|300", 45150 - 50 - 100 - 150 - 10 + 999)
        );
        assert_eq!(
            pg.psql("SELECT \"user\", tags::text FROM orders WHERE id = 10")
                .trim(),
            "again|{\"x\": 1}"
        );
    }
}

/// A wrong password and a port nobody listens on: exit 1 within seconds,
/// with a message naming the server (never the password).
#[test]
fn postgres_wrong_password_or_no_server_exits_1_within_seconds() {
    let pg = PgServer::start();
    let d = Dir::new();
    d.file("in.jsonl", orders()).file("p.yaml", PIPELINE);
    let nobody = format!(
        "postgresql://weir:secret@127.0.0.1:{}/postgres",
        weir_testkit::free_port()
    );
    for (url, want) in [
        (
            pg.url_with_password("secret"),
            "password authentication failed for user \"weir\"",
        ),
        (nobody, "cannot connect to postgres 127.0.0.1:"),
    ] {
        let t0 = Instant::now();
        let out = d
            .weir(&["run", "p.yaml"])
            .env("WEIR_TEST_PG_URL", &url)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(code(&out), 1, "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(stderr.contains("error: stage 'db' failed"), "{stderr}");
        assert!(!stderr.contains("secret"), "{stderr}");
        assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    }
}

/// The server is stopped while the run is writing and comes back 2 s
/// later: the run waits, reconnects, and ends with every row exactly once.
#[test]
fn postgres_stopped_mid_run_and_restarted_ends_with_the_exact_table() {
    let mut pg = PgServer::start();
    let d = Dir::new();
    d.file(
        "p.yaml",
        PIPELINE.replace("file: { path: in.jsonl }", "stdin: {}"),
    );
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("weir"))
        .current_dir(d.path())
        .args(["run", "p.yaml", "--report", "json"])
        .env("WEIR_TEST_PG_URL", pg.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let mut stdin = child.stdin.take().unwrap();
    let line = |i: u64| format!("{{\"id\":{i},\"user\":\"u{i}\",\"amount\":{i},\"tags\":null}}\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    // The first half, until it is in the table.
    for i in 1..=5000 {
        stdin.write_all(line(i).as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    while pg.psql("SELECT to_regclass('orders') IS NOT NULL").trim() != "t"
        || pg.psql("SELECT count(*) FROM orders").trim() != "5000"
    {
        assert!(Instant::now() < deadline, "the first half never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The server goes away; the second half comes while it is away (and
    // ids 1..=100 again, which must not add rows). Written from a thread:
    // weir's bounded queues fill while the server is away (backpressure),
    // so the writes may wait for the restart.
    pg.stop();
    let writer = std::thread::spawn(move || {
        for i in (5001..=10_000).chain(1..=100) {
            if stdin.write_all(line(i).as_bytes()).is_err() {
                return false;
            }
        }
        drop(stdin);
        true
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended while the server was away"
    );
    pg.restart();
    assert!(
        writer.join().unwrap(),
        "weir stopped reading its input after the server came back"
    );
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the run did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stderr.contains("lost the server; reconnecting"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_accounting(&report);
    assert_conserved(&report);
    assert_eq!(n(&report, "db", "ok"), 10_100, "{report}");
    assert_eq!(
        pg.psql("SELECT count(*), sum(amount), count(DISTINCT id) FROM orders")
            .trim(),
        "10000|50005000|10000"
    );
}

/// The example `weir explain postgres` prints runs as it is, with
/// `DATABASE_URL` set.
#[test]
fn postgres_explain_example_runs() {
    let pg = PgServer::start();
    let d = Dir::new();
    let out = d.weir(&["explain", "postgres"]).output().unwrap();
    assert_eq!(code(&out), 0);
    let explained = text(&out.stdout);
    let example: String = explained
        .split("example:\n")
        .nth(1)
        .expect("an example")
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    d.file(
        "in.jsonl",
        "{\"id\":1,\"user\":\"ann\",\"amount\":2.5,\"tags\":[\"a\"]}\n{\"id\":2,\"user\":\"bob\",\"amount\":3}\n",
    )
    .file(
        "p.yaml",
        format!(
            "inputs:\n  - name: in\n    file: {{ path: in.jsonl }}\noutputs:\n  - name: db\n    postgres:\n{example}"
        ),
    );
    let out = d
        .weir(&["run", "p.yaml"])
        .env("DATABASE_URL", pg.url())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        pg.psql("SELECT id, \"user\", amount, tags::text FROM orders ORDER BY id"),
        "1|ann|2.5|[\"a\"]\n2|bob|3|\n"
    );
}
