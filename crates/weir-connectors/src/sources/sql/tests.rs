//! The `sql` source against SQLite files and real PostgreSQL servers
//! ([`PgServer`]): every row once, in cursor order, across pages, passes
//! and runs; the cursor held back by rows not handled; snapshots; bad
//! values dead-lettered; bad options and databases as clear errors.

use std::path::Path;
use std::time::Duration;

use weir_testkit::PgServer;

use super::*;
use crate::sources::{State, StateDir};

/// Every test finishes within this.
const DEADLINE: Duration = Duration::from_secs(60);

fn ctx(dir: &Path) -> BuildContext {
    BuildContext {
        input: "rows".into(),
        base_dir: dir.to_path_buf(),
        state: Some(State::Dir(StateDir {
            dir: dir.join(".weir"),
            pipeline: "p.yaml".into(),
        })),
    }
}

/// What a run gave: the records, and the dead letters' errors.
#[derive(Debug)]
struct Got {
    records: Vec<serde_json::Value>,
    dead: Vec<String>,
}

/// Runs the source in a pipeline that commits every record, except those
/// `fail` picks, which fail (not handled: the cursor stays before them).
async fn run_with(
    dir: &Path,
    yaml: &str,
    fail: fn(&serde_json::Value) -> bool,
) -> Result<Got, String> {
    let cfg: SqlSource = serde_saphyr::from_str(yaml).unwrap();
    let (source, decoder) = cfg.build(&ctx(dir)).map_err(|e| e.to_string())?;
    let p = weir::Pipeline::new();
    let dead = p.dead_letter_sink(weir::collect());
    let out = p
        .source("rows", source)
        .try_map("decode", move |r: &Raw| decoder.decode(r))
        .on_error(weir::ErrorPolicy::DeadLetter)
        .try_map("gate", move |r: &Record| {
            let v = r.json();
            if fail(&v) {
                Err(weir::BoxError::from("refused by the test"))
            } else {
                Ok(v)
            }
        })
        .sink("all", weir::collect());
    let res = tokio::time::timeout(DEADLINE, p.run())
        .await
        .expect("the run ends in time");
    let records = out.take().unwrap_or_default();
    let dead = dead
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.error)
        .collect();
    res.map_err(|e| e.to_string())?;
    Ok(Got { records, dead })
}

async fn run(dir: &Path, yaml: &str) -> Result<Got, String> {
    run_with(dir, yaml, |_| false).await
}

fn ids(got: &Got) -> Vec<i64> {
    got.records
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

fn sqlite_db(dir: &Path, rows: std::ops::RangeInclusive<i64>) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("shop.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, name TEXT, amount REAL)",
    )
    .unwrap();
    insert(&conn, rows);
    conn
}

fn insert(conn: &rusqlite::Connection, rows: std::ops::RangeInclusive<i64>) {
    for i in rows {
        conn.execute(
            "INSERT INTO orders VALUES (?1, ?2, ?3)",
            (i, format!("n{i}"), i as f64 / 4.0),
        )
        .unwrap();
    }
}

const LITE: &str = "sqlite: shop.db\ntable: orders\ncursor: id\npage_size: 7\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_incremental_reads_new_rows_only_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let conn = sqlite_db(dir.path(), 1..=50);
    let first = run(dir.path(), LITE).await.unwrap();
    assert_eq!(
        ids(&first),
        (1..=50).collect::<Vec<_>>(),
        "every row once, in order, over 8 pages"
    );
    assert_eq!(
        first.records[3],
        serde_json::json!({"id": 4, "name": "n4", "amount": 1.0})
    );
    let again = run(dir.path(), LITE).await.unwrap();
    assert!(again.records.is_empty(), "nothing new: {:?}", ids(&again));
    insert(&conn, 51..=60);
    let more = run(dir.path(), LITE).await.unwrap();
    assert_eq!(ids(&more), (51..=60).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_not_handled_is_read_again_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_db(dir.path(), 1..=30);
    let err = run_with(dir.path(), LITE, |r| r["id"] == 12).await;
    assert!(err.is_err(), "a failed write fails the run");
    let next = run(dir.path(), LITE).await.unwrap();
    let got = ids(&next);
    // Rows settled in the failed run's batch with row 12 may come again
    // (duplicates, not losses): the run resumes at or before row 12.
    let from = got[0];
    assert!(
        from <= 12,
        "resumes at or before the row not handled: {got:?}"
    );
    assert_eq!(got, (from..=30).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_picks_up_rows_inserted_between_passes() {
    let dir = tempfile::tempdir().unwrap();
    let conn = sqlite_db(dir.path(), 1..=5);
    let path = dir.path().join("shop.db");
    let writer = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).unwrap();
        for i in 6..=10 {
            std::thread::sleep(Duration::from_millis(40));
            insert(&conn, i..=i);
        }
    });
    let got = run(
        dir.path(),
        "sqlite: shop.db\nquery: SELECT id, name FROM orders -- a comment\ncursor: [id]\nevery: 100ms\nruns: 8\nmeta: _sql\n",
    )
    .await
    .unwrap();
    writer.join().unwrap();
    drop(conn);
    assert_eq!(ids(&got), (1..=10).collect::<Vec<_>>(), "each row once");
    assert_eq!(got.records[0]["_sql"]["pass"], 1);
    assert!(
        got.records[0]["_sql"]["at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_read_the_whole_query_each_pass() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_db(dir.path(), 1..=20);
    let yaml = "sqlite: shop.db\nquery: SELECT count(*) AS n, sum(amount) AS total FROM orders;\nevery: 50ms\nruns: 3\nmeta: snap\n";
    let got = run(dir.path(), yaml).await.unwrap();
    assert_eq!(got.records.len(), 3, "one row per pass: {:?}", got.records);
    for (i, r) in got.records.iter().enumerate() {
        assert_eq!(r["n"], 20);
        assert_eq!(r["total"], 52.5);
        assert_eq!(r["snap"]["pass"], i + 1);
    }
    let ats: Vec<&str> = got
        .records
        .iter()
        .map(|r| r["snap"]["at"].as_str().unwrap())
        .collect();
    assert!(
        ats.windows(2).all(|w| w[0] < w[1]),
        "passes at later ticks: {ats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_values_that_have_no_json_form_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("odd.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v);
         INSERT INTO t VALUES (1, 'fine'), (2, x'00ff'), (3, 9e999), (4, CAST(x'ff' AS TEXT)), (5, NULL), (6, 2.5);",
    )
    .unwrap();
    let got = run(dir.path(), "sqlite: odd.db\ntable: t\ncursor: id\n")
        .await
        .unwrap();
    assert_eq!(ids(&got), vec![1, 5, 6]);
    assert_eq!(got.dead.len(), 3, "{:?}", got.dead);
    assert!(
        got.dead[0].contains("column 'v' is a BLOB") && got.dead[0].contains("cursor [2]"),
        "{:?}",
        got.dead
    );
    assert!(got.dead[1].contains("no JSON form"), "{:?}", got.dead);
    assert!(got.dead[2].contains("not UTF-8"), "{:?}", got.dead);
    // Dead letters are handled: the cursor passed them.
    let again = run(dir.path(), "sqlite: odd.db\ntable: t\ncursor: id\n")
        .await
        .unwrap();
    assert!(again.records.is_empty() && again.dead.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compound_cursor_with_ties_in_its_first_column() {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("ev.db")).unwrap();
    conn.execute_batch("CREATE TABLE ev (at TEXT, id INTEGER, UNIQUE(at, id))")
        .unwrap();
    for i in 0..40 {
        conn.execute(
            "INSERT INTO ev VALUES (?1, ?2)",
            (format!("2026-12-01T00:00:0{}", i / 10), i),
        )
        .unwrap();
    }
    conn.execute("INSERT INTO ev VALUES (NULL, 99)", [])
        .unwrap();
    let yaml = "sqlite: ev.db\ntable: ev\ncursor: [at, id]\npage_size: 3\n";
    let got = run(dir.path(), yaml).await.unwrap();
    assert_eq!(
        ids(&got),
        (0..40).collect::<Vec<_>>(),
        "ties across page ends are not lost"
    );
    conn.execute("INSERT INTO ev VALUES ('2026-12-01T00:00:03', 100)", [])
        .unwrap();
    let more = run(dir.path(), yaml).await.unwrap();
    assert_eq!(ids(&more), vec![100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_query_starts_from_the_beginning() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_db(dir.path(), 1..=10);
    assert_eq!(run(dir.path(), LITE).await.unwrap().records.len(), 10);
    let other = "sqlite: shop.db\nquery: SELECT id, name FROM orders\ncursor: id\n";
    assert_eq!(
        run(dir.path(), other).await.unwrap().records.len(),
        10,
        "another query's cursor is not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_errors_fail_the_run_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let e = run(dir.path(), "sqlite: missing.db\ntable: t\n")
        .await
        .unwrap_err();
    assert!(
        e.contains("sql input 'rows'") && e.contains("missing.db does not exist"),
        "{e}"
    );
    sqlite_db(dir.path(), 1..=3);
    let e = run(dir.path(), "sqlite: shop.db\ntable: orders\ncursor: nope\n")
        .await
        .unwrap_err();
    assert!(
        e.contains("cursor column 'nope' is not a column of the query (it has: id, name, amount)"),
        "{e}"
    );
    let e = run(dir.path(), "sqlite: shop.db\nquery: SELEC 1\n")
        .await
        .unwrap_err();
    assert!(e.contains("syntax error"), "{e}");
    let e = run(
        dir.path(),
        "sqlite: shop.db\nquery: DELETE FROM orders RETURNING id\n",
    )
    .await
    .unwrap_err();
    assert!(e.contains("readonly"), "{e}");
}

#[test]
fn bad_options_are_errors_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = |yaml: &str| {
        let cfg: SqlSource = serde_saphyr::from_str(yaml).unwrap();
        cfg.settings(&ctx(dir.path())).unwrap_err().to_string()
    };
    assert!(err("table: t\n").contains("give the database"));
    assert!(err("sqlite: a.db\nurl: postgresql://h/db\ntable: t\n").contains("not both"));
    assert!(err("sqlite: a.db\n").contains("give table or query"));
    assert!(err("sqlite: a.db\ntable: t\nquery: SELECT 1\n").contains("not both"));
    assert!(err("sqlite: a.db\ntable: t\ncursor: []\n").contains("names no column"));
    assert!(err("sqlite: a.db\ntable: t\ncursor: [a, a]\n").contains("listed twice"));
    assert!(err("sqlite: a.db\ntable: t\npage_size: 0\n").contains("page_size"));
    assert!(err("sqlite: a.db\ntable: t\nevery: soon\n").contains("every"));
    assert!(err("sqlite: a.db\ntable: t\nruns: 2\n").contains("runs needs every"));
    assert!(
        err("url: postgresql://h/db\nca_file: ca.pem\ntable: t\n")
            .contains("ca_file needs sslmode=require")
    );
    assert!(
        err("url: postgresql://h/db?sslmode=require\nca_file: none.pem\ntable: t\n")
            .contains("none.pem")
    );
    assert!(err("url_env: WEIR_SQL_TEST_UNSET\ntable: t\n").contains("WEIR_SQL_TEST_UNSET"));
    let e = err("sqlite: a.db\ntable: t\n\npage_size: 0\n");
    assert!(e.contains("line 4") || e.contains("4:"), "{e}");
}

// PostgreSQL, a real server per test.

fn pg_yaml(pg: &PgServer, rest: &str) -> String {
    format!("url: \"{}\"\n{rest}", pg.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_incremental_with_every_type_and_new_rows_only() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    pg.psql(
        "CREATE TABLE items (id bigint PRIMARY KEY, price numeric, at timestamptz, tags text[], doc jsonb, ok boolean, note text);
         INSERT INTO items SELECT i, i * 1.25, timestamptz '2026-12-01 10:00:00+01' + i * interval '1 second',
           ARRAY['a', 'b' || i], jsonb_build_object('n', i), i % 2 = 0, CASE WHEN i = 3 THEN 'quote \" and ''' END
         FROM generate_series(1, 25) AS i;",
    );
    let yaml = pg_yaml(&pg, "table: items\ncursor: id\npage_size: 4\n");
    let got = run(dir.path(), &yaml).await.unwrap();
    assert_eq!(ids(&got), (1..=25).collect::<Vec<_>>());
    assert_eq!(
        got.records[2],
        serde_json::json!({"id": 3, "price": 3.75, "at": "2026-12-01T09:00:03+00:00",
            "tags": ["a", "b3"], "doc": {"n": 3}, "ok": false, "note": "quote \" and '"})
    );
    assert!(run(dir.path(), &yaml).await.unwrap().records.is_empty());
    pg.psql("INSERT INTO items (id) VALUES (26), (27)");
    assert_eq!(ids(&run(dir.path(), &yaml).await.unwrap()), vec![26, 27]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cursor_by_time_compares_exactly() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    // Microseconds and a numeric with more digits than a double keeps:
    // the cursor goes back to the server as its own text, cast.
    pg.psql(
        "CREATE TABLE ev (at timestamptz, n numeric, id int);
         INSERT INTO ev VALUES ('2026-12-01 00:00:00.000001+00', 0.10000000000000000001, 1),
                               ('2026-12-01 00:00:00.000001+00', 0.10000000000000000002, 2),
                               ('2026-12-01 00:00:00.000002+00', 0, 3), (NULL, 1, 4);",
    );
    let yaml = pg_yaml(
        &pg,
        "query: SELECT at, n AS v, id FROM ev -- and a comment\ncursor: [at, v]\npage_size: 1\n",
    );
    let got = run(dir.path(), &yaml).await.unwrap();
    assert_eq!(ids(&got), vec![1, 2, 3], "a NULL cursor is not read");
    pg.psql("INSERT INTO ev VALUES ('2026-12-01 00:00:00.000002+00', 0.5, 5)");
    assert_eq!(ids(&run(dir.path(), &yaml).await.unwrap()), vec![5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_snapshot_in_pages_of_one_transaction() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    pg.psql("CREATE TABLE t AS SELECT i AS id FROM generate_series(1, 1000) AS i");
    let got = run(
        dir.path(),
        &pg_yaml(&pg, "query: SELECT id FROM t ORDER BY id\npage_size: 64\n"),
    )
    .await
    .unwrap();
    assert_eq!(ids(&got), (1..=1000).collect::<Vec<_>>());
    // A snapshot keeps no cursor: a second run reads it all again.
    let again = run(dir.path(), &pg_yaml(&pg, "table: t\n")).await.unwrap();
    assert_eq!(again.records.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_are_clear_and_quick() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    pg.psql("CREATE TABLE t (id int)");
    let started = std::time::Instant::now();
    let e = run(
        dir.path(),
        &format!("url: \"{}\"\ntable: t\n", pg.url_with_password("wrong")),
    )
    .await
    .unwrap_err();
    assert!(e.contains("SQLSTATE 28P01") && !e.contains("wrong"), "{e}");
    let e = run(dir.path(), &pg_yaml(&pg, "table: missing\ncursor: id\n"))
        .await
        .unwrap_err();
    assert!(e.contains("SQLSTATE 42P01"), "{e}");
    let e = run(dir.path(), &pg_yaml(&pg, "table: t\ncursor: nope\n"))
        .await
        .unwrap_err();
    assert!(
        e.contains("cursor column 'nope' is not a column of the query (it has: id)"),
        "{e}"
    );
    // Read-only: a function that writes is refused by the server.
    pg.psql("CREATE FUNCTION bump() RETURNS int LANGUAGE sql AS 'INSERT INTO t VALUES (1) RETURNING id'");
    let e = run(dir.path(), &pg_yaml(&pg, "query: SELECT bump() AS id\n"))
        .await
        .unwrap_err();
    assert!(e.contains("read-only"), "{e}");
    let port = pg.port();
    drop(pg);
    let e = run(
        dir.path(),
        &format!("url: \"postgresql://weir@127.0.0.1:{port}/weir\"\ntable: t\n"),
    )
    .await
    .unwrap_err();
    assert!(e.contains("cannot connect"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run_is_waited_for_and_nothing_is_lost() {
    let mut pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    pg.psql("CREATE TABLE t AS SELECT i AS id FROM generate_series(1, 3000) AS i");
    let yaml = pg_yaml(&pg, "table: t\ncursor: id\npage_size: 10\n");
    let dir_path = dir.path().to_path_buf();
    let reader = tokio::spawn(async move {
        // A slow pipeline: the restart lands mid-read.
        run_with(&dir_path, &yaml, |_| {
            std::thread::sleep(Duration::from_micros(300));
            false
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Kept until the end: dropping it would stop the server for good.
    let _pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    let got = reader.await.unwrap().unwrap();
    assert_eq!(ids(&got), (1..=3000).collect::<Vec<_>>(), "every row once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_when_asked() {
    let pg = tokio::task::spawn_blocking(PgServer::start_tls)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    pg.psql("CREATE TABLE t AS SELECT i AS id FROM generate_series(1, 100) AS i");
    std::fs::copy(pg.ca_file(), dir.path().join("ca.pem")).unwrap();
    let yaml = format!(
        "url: \"{}?sslmode=require\"\nca_file: ca.pem\ntable: t\ncursor: id\n",
        pg.url().replace("127.0.0.1", "localhost")
    );
    assert_eq!(run(dir.path(), &yaml).await.unwrap().records.len(), 100);
    let e = run(dir.path(), &pg_yaml(&pg, "table: t\n"))
        .await
        .unwrap_err();
    assert!(e.contains("no encryption"), "{e}");
}

// Found by review: each of these failed before its fix.

fn lite_exec(dir: &Path, sql: &str) {
    rusqlite::Connection::open(dir.join("shop.db"))
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

/// A cursor value JSON cannot hold (an infinite real, text that is not
/// UTF-8, a BLOB) is kept with its type: its row is dead-lettered with
/// what could be read of it, the cursor passes it, and later runs go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_values_without_a_json_form_are_kept_and_passed() {
    let dir = tempfile::tempdir().unwrap();
    lite_exec(
        dir.path(),
        "CREATE TABLE m (k REAL, id INTEGER); INSERT INTO m VALUES (1.5, 1), (9e999, 2);
         CREATE TABLE u (k TEXT, id INTEGER);
         INSERT INTO u VALUES ('a', 1), (CAST(x'ff' AS TEXT), 2), ('b', 3);
         CREATE TABLE b (k, id INTEGER); INSERT INTO b VALUES (1, 1), (x'00', 2), ('t', 3);",
    );
    for (table, good) in [("m", vec![1]), ("u", vec![1, 3]), ("b", vec![1, 3])] {
        let yaml = format!("sqlite: shop.db\ntable: {table}\ncursor: k\n");
        let got = run(dir.path(), &yaml).await.unwrap();
        assert_eq!(ids(&got), good, "{table}");
        assert_eq!(got.dead.len(), 1, "{table}: {:?}", got.dead);
        let again = run(dir.path(), &yaml).await.unwrap();
        assert!(
            again.records.is_empty() && again.dead.is_empty(),
            "{table}: {again:?}"
        );
    }
    // Text compares byte by byte, and text sorts before BLOBs: after 0xff
    // comes only more non-UTF-8 text, after a BLOB only BLOBs.
    lite_exec(
        dir.path(),
        "INSERT INTO u VALUES ('c', 4), (CAST(x'fff0' AS TEXT), 5);
         INSERT INTO b VALUES (x'01', 5), ('u', 6);",
    );
    for table in ["u", "b"] {
        let yaml = format!("sqlite: shop.db\ntable: {table}\ncursor: k\n");
        let got = run(dir.path(), &yaml).await.unwrap();
        assert!(got.records.is_empty(), "{table}: {got:?}");
        assert_eq!(
            got.dead.len(),
            1,
            "{table}: the row after the cursor is read: {got:?}"
        );
    }
}

/// The application owning the file can write while a slow pipeline reads
/// it: a page's statement ends before its rows wait on the pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_pipeline_does_not_lock_out_the_databases_writers() {
    let dir = tempfile::tempdir().unwrap();
    let conn = sqlite_db(dir.path(), 1..=3000);
    let d = dir.path().to_path_buf();
    let reader = tokio::spawn(async move {
        run_with(&d, "sqlite: shop.db\ntable: orders\ncursor: id\n", |_| {
            std::thread::sleep(Duration::from_millis(1));
            false
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    conn.busy_timeout(Duration::from_millis(200)).unwrap();
    for i in 0..10 {
        conn.execute("INSERT INTO orders VALUES (?1, 'x', 1.0)", [100_000 + i])
            .expect("the application writes while weir reads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reader.await.unwrap().unwrap().records.len() >= 3000);
}

/// Between the passes of a snapshot with `every`, the idle connection is
/// closed by the server: the next pass reconnects (it sent nothing yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_pass_reconnects_when_nothing_was_sent_yet() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    pg.psql("CREATE TABLE t AS SELECT i AS id FROM generate_series(1, 3) AS i");
    let yaml = pg_yaml(&pg, "table: t\nevery: 2s\nruns: 2\n");
    let d = dir.path().to_path_buf();
    let reader = tokio::spawn(async move { run(&d, &yaml).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'weir'",
    );
    let got = reader.await.unwrap().unwrap();
    assert_eq!(ids(&got), vec![1, 2, 3, 1, 2, 3]);
}

/// A role's `extra_float_digits = 0` would round a float cursor's text;
/// the reader pins it, so no row is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_cannot_round_a_saved_cursor() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    pg.psql(
        "ALTER ROLE weir SET extra_float_digits = 0; ALTER ROLE weir SET DateStyle = 'SQL, DMY'",
    );
    pg.psql(
        "CREATE TABLE f (k float8, at timestamp, id int);
         INSERT INTO f VALUES (0.1234567890123456, '2026-01-02 03:04:05.000001', 1),
                              (0.1234567890123458, '2026-01-02 03:04:05.000002', 2), (0.2, '2026-02-01', 3);",
    );
    let got = run(
        dir.path(),
        &pg_yaml(&pg, "table: f\ncursor: k\npage_size: 1\n"),
    )
    .await
    .unwrap();
    assert_eq!(ids(&got), vec![1, 2, 3]);
    let got = run(
        dir.path(),
        &pg_yaml(&pg, "table: f\ncursor: at\npage_size: 1\n"),
    )
    .await
    .unwrap();
    assert_eq!(ids(&got), vec![1, 2, 3]);
}

/// A server that stops answering (its backend stopped, the connection
/// open) counts as lost after `timeout_secs`, and the reader gives up
/// after `reconnect_for_secs` when it does not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_does_not_hang_the_run() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    pg.psql("CREATE TABLE t AS SELECT i AS id FROM generate_series(1, 3) AS i");
    // The backend stops answering, and so does the postmaster, so new
    // connections time out too.
    let yaml = pg_yaml(
        &pg,
        "table: t\ncursor: id\nevery: 200ms\nruns: 1000\ntimeout_secs: 1\nreconnect_for_secs: 2\nconnect_timeout_secs: 1\n",
    );
    let d = dir.path().to_path_buf();
    let reader = tokio::spawn(async move { run(&d, &yaml).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pids = pg.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'weir'");
    let backend = pids.lines().next().unwrap().trim().to_string();
    let postmaster = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    for pid in [&backend, &postmaster] {
        std::process::Command::new("kill")
            .args(["-STOP", pid])
            .status()
            .unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(20), reader).await;
    for pid in [&postmaster, &backend] {
        std::process::Command::new("kill")
            .args(["-CONT", pid])
            .status()
            .unwrap();
    }
    let err = got.expect("the run ends").unwrap().unwrap_err();
    assert!(err.contains("reconnect_for_secs"), "{err}");
}

/// A first pass that starts just before a tick and ends after it (it
/// takes 400 ms of a 1 s interval) skips no tick: the second pass is that
/// tick, run as soon as the first ends, not the one after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_pass_straddling_a_tick_does_not_skip_it() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let yaml = pg_yaml(
        &pg,
        "query: SELECT n FROM (SELECT 1 AS n, pg_sleep(0.4)) AS s\nevery: 1s\nruns: 2\nmeta: m\n",
    );
    // Start 200 to 250 ms before a whole second.
    while !(750..800).contains(&Timestamp::now().as_millisecond().rem_euclid(1000)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = run(dir.path(), &yaml).await.unwrap();
    let ats: Vec<i64> = got
        .records
        .iter()
        .map(|r| {
            r["m"]["at"]
                .as_str()
                .unwrap()
                .parse::<Timestamp>()
                .unwrap()
                .as_millisecond()
        })
        .collect();
    assert_eq!(ats.len(), 2, "{:?}", got.records);
    assert_eq!(ats[1] % 1000, 0, "{ats:?}");
    assert_eq!(
        ats[1],
        (ats[0].div_euclid(1000) + 1) * 1000,
        "the second pass is the first tick after the first pass started: {ats:?}"
    );
}
