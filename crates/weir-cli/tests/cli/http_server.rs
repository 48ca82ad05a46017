//! `http_server` in a real `weir run`: concurrent clients POST NDJSON
//! with a bearer token into `http_server -> filter -> sqlite`; every record
//! a client got a 200 for is in the table; SIGINT then drains, the run
//! exits 130 and its report adds up.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{Dir, KillOnDrop, assert_accounting, n, text};

const PIPELINE: &str = "\
inputs:
  - name: in
    http_server:
      address: 127.0.0.1:0
      paths: [/ingest]
      bearer_token_env: WEIR_TEST_INGEST_TOKEN
stages:
  - name: keep
    filter: { condition: '.n >= 0', drop_reason: negative }
outputs:
  - name: db
    sqlite:
      path: out/db.sqlite
      table: events
      key: [id]
      columns: { id: text, n: integer }
";

const TOKEN: &str = "s3cret-t0ken";

/// POSTs `body` as NDJSON on a connection of its own: (status, headers
/// and body as text).
fn post(addr: SocketAddr, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /ingest HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/x-ndjson\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("an answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    (status, answer)
}

#[test]
fn concurrent_clients_are_committed_and_sigint_drains() {
    let d = Dir::new();
    d.file("p.yaml", PIPELINE);
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("weir"))
        .current_dir(d.path())
        .args(["run", "p.yaml", "--report", "json", "--quiet"])
        .env("WEIR_TEST_INGEST_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kill_on_panic = KillOnDrop(child.id());
    let (lines_tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            all.push_str(&line);
            all.push('\n');
            let _ = lines_tx.send(line);
        }
        all
    });
    let prefix = "http_server 'in' listening on http://";
    let addr: SocketAddr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the server says where it listens");
        if let Some(addr) = line.strip_prefix(prefix) {
            break addr.parse().expect("an address");
        }
    };

    // 4 clients x 5 requests x 20 records; every fifth record is negative
    // and dead-lettered by the filter.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                let mut committed = BTreeSet::new();
                for q in 0..5 {
                    let records: Vec<(String, i64)> = (0..20)
                        .map(|i| (format!("c{c}-q{q}-i{i}"), if i % 5 == 0 { -1 } else { i }))
                        .collect();
                    let body: String = records
                        .iter()
                        .map(|(id, n)| format!("{{\"id\":\"{id}\",\"n\":{n}}}\n"))
                        .collect();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let answer = loop {
                        let (status, answer) = post(addr, &body);
                        match status {
                            200 => break answer,
                            // Backed up: the answer says when to come back.
                            503 if Instant::now() < deadline => {
                                assert!(answer.contains("Retry-After: 1"), "{answer}");
                                std::thread::sleep(Duration::from_millis(200));
                            }
                            _ => panic!("unexpected answer: {answer}"),
                        }
                    };
                    let json: Value =
                        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap())
                            .unwrap_or_else(|e| panic!("{e}: {answer}"));
                    assert_eq!(json["accepted"], 20, "{json}");
                    assert_eq!(json["committed"], 16, "{json}");
                    assert_eq!(json["dead_lettered"], 4, "{json}");
                    committed.extend(
                        records
                            .into_iter()
                            .filter(|(_, n)| *n >= 0)
                            .map(|(id, _)| id),
                    );
                }
                committed
            })
        })
        .collect();
    let mut committed = BTreeSet::new();
    for c in clients {
        committed.extend(c.join().expect("a client"));
    }
    assert_eq!(committed.len(), 4 * 5 * 16);

    // Acknowledged means in the table, before any stop.
    let in_table = |d: &Dir| -> BTreeSet<String> {
        let conn = rusqlite::Connection::open(d.join("out/db.sqlite")).unwrap();
        let mut stmt = conn.prepare("SELECT id FROM events").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(in_table(&d), committed);

    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the run did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(kill_on_panic);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    let report: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}): {}\n{stderr}",
                text(stdout.as_bytes())
            )
        });
    assert_accounting(&report);
    assert_eq!(n(&report, "in", "out"), 4 * 5 * 20, "{report}");
    assert_eq!(n(&report, "db", "ok"), 4 * 5 * 16, "{report}");
    assert_eq!(report["dead_lettered"], 4 * 5 * 4, "{report}");
    assert_eq!(in_table(&d), committed);
}
