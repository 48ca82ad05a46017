//! The `sql` source in a real `weir run`: a SQLite table copied into
//! another, each rerun (with or without `--resume`) reading only rows
//! added since; a bad row dead-lettered with its column and cursor; `weir
//! check` connecting to nothing; an unreachable server failing the run
//! within seconds.

use std::time::{Duration, Instant};

use crate::util::{Dir, assert_accounting, assert_conserved, code, n, text};

const PIPELINE: &str = "\
inputs:
  - name: orders
    sql: { sqlite: shop.db, table: orders, cursor: id, page_size: 50 }
outputs:
  - name: copy
    sqlite:
      path: copy.db
      table: orders
      columns: { id: integer, customer: text, amount: real }
      key: [id]
";

fn shop(d: &Dir) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(d.join("shop.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT, amount)",
    )
    .unwrap();
    conn
}

fn add(conn: &rusqlite::Connection, ids: std::ops::RangeInclusive<i64>) {
    for i in ids {
        conn.execute(
            "INSERT INTO orders VALUES (?1, ?2, ?3)",
            (i, format!("c{}", i % 7), i as f64 * 0.5),
        )
        .unwrap();
    }
}

fn copied(d: &Dir) -> Vec<(i64, String, f64)> {
    let conn = rusqlite::Connection::open(d.join("copy.db")).unwrap();
    let mut st = conn
        .prepare("SELECT id, customer, amount FROM orders ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn reruns_and_resume_read_only_new_rows() {
    let d = Dir::new();
    let conn = shop(&d);
    add(&conn, 1..=300);
    d.file("p.yaml", PIPELINE);
    let report = d.run_ok("p.yaml");
    assert_accounting(&report);
    assert_conserved(&report);
    assert_eq!(n(&report, "orders", "out"), 300);
    add(&conn, 301..=320);
    let report = d.run_ok("p.yaml");
    assert_eq!(n(&report, "orders", "out"), 20, "only the new rows");
    add(&conn, 321..=325);
    let out = d
        .weir(&["run", "p.yaml", "--resume", "--report", "json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(
        n(&report, "orders", "out"),
        5,
        "--resume reads on from the cursor too"
    );
    let rows = copied(&d);
    assert_eq!(rows.len(), 325);
    assert_eq!(rows[41], (42, "c0".to_string(), 21.0));
    // A bad row: dead-lettered with its column and cursor, and passed.
    conn.execute("INSERT INTO orders VALUES (326, x'01', 1)", [])
        .unwrap();
    add(&conn, 327..=327);
    let report = d.run_ok("p.yaml");
    assert_eq!(report["dead_lettered"], 1, "{report}");
    let dead = d.read("dead-letters.jsonl");
    assert!(
        dead.contains("sql_value")
            && dead.contains("column 'customer' is a BLOB")
            && dead.contains("cursor [326]"),
        "{dead}"
    );
    assert_eq!(copied(&d).len(), 326);
    assert_eq!(n(&d.run_ok("p.yaml"), "orders", "out"), 0);
}

#[test]
fn check_connects_to_nothing_and_run_fails_fast_on_a_dead_server() {
    let d = Dir::new();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: orders
    sql: { url: 'postgresql://weir@127.0.0.1:1/db', table: orders, cursor: [id] }
outputs:
  - name: out
    stdout: {}
",
    );
    let (code_, _, stderr) = d.check("p.yaml");
    assert_eq!(code_, 0, "{stderr}");
    let started = Instant::now();
    let out = d
        .weir(&["run", "p.yaml"])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("sql input 'orders'") && stderr.contains("cannot connect"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}
