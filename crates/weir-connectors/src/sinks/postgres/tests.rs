//! The postgres sink against a real server ([`PgServer`]), plus the
//! statements it sends and the values it refuses before sending.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::Sink;
use weir_testkit::PgServer;

use super::*;
use crate::record::Position;

/// Every test that talks to a server finishes within this.
const DEADLINE: Duration = Duration::from_secs(60);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn config(url: &str, rest: &str) -> PostgresSink {
    serde_saphyr::from_str(&format!("url: \"{url}\"\n{rest}")).unwrap()
}

const ORDERS: &str = "table: orders\ncolumns:\n  id: integer\n  user: text\n  amount: real\n  tags: json\n  paid: boolean\nkey: [id]\n";

fn ctx() -> BuildContext {
    BuildContext {
        input: "pg".into(),
        base_dir: std::env::temp_dir(),
        state: None,
    }
}

fn rec(line: u64, v: serde_json::Value) -> Record {
    Record::from_json(
        &v,
        Arc::new(Position {
            input: "in".into(),
            file: None,
            line,
        }),
    )
}

fn order(id: i64, amount: f64) -> Record {
    rec(
        id as u64,
        serde_json::json!({"id": id, "user": format!("u{id}"), "amount": amount, "tags": ["a", {"n": id}], "paid": id % 2 == 0}),
    )
}

/// Runs `f` on a runtime, failing the test past [`DEADLINE`].
fn within<F: std::future::Future>(f: F) -> F::Output {
    rt().block_on(async {
        tokio::time::timeout(DEADLINE, f)
            .await
            .expect("test deadline")
    })
}

#[test]
fn example_parses_and_checks() {
    let cfg: PostgresSink = serde_saphyr::from_str(PostgresSink::EXAMPLE).unwrap();
    assert_eq!(cfg.columns.0[3], ("tags".to_string(), PgType::Json));
    assert_eq!(cfg.key, ["id"]);
    // The example reads its connection string from DATABASE_URL.
    let err = match std::env::var_os("DATABASE_URL") {
        Some(_) => None,
        None => Some(cfg.check().unwrap_err().message),
    };
    if let Some(msg) = err {
        assert!(msg.contains("DATABASE_URL"), "{msg}");
    }
}

#[test]
fn sql_text() {
    let cfg: PostgresSink = serde_saphyr::from_str(PostgresSink::EXAMPLE).unwrap();
    assert_eq!(
        cfg.create_sql(),
        "CREATE TABLE IF NOT EXISTS \"orders\" (\"id\" BIGINT, \"user\" TEXT, \"amount\" DOUBLE PRECISION, \"tags\" JSONB, PRIMARY KEY (\"id\"))"
    );
    assert_eq!(
        cfg.insert_sql(),
        "INSERT INTO \"orders\" (\"id\", \"user\", \"amount\", \"tags\") SELECT u.c0, u.c1, u.c2, u.c3::jsonb \
         FROM unnest($1::int8[], $2::text[], $3::float8[], $4::text[]) AS u(c0, c1, c2, c3) \
         ON CONFLICT (\"id\") DO UPDATE SET \"user\" = excluded.\"user\", \
         \"amount\" = excluded.\"amount\", \"tags\" = excluded.\"tags\""
    );
}

#[test]
fn check_refuses_what_cannot_work() {
    let msg = |yaml: &str| {
        serde_saphyr::from_str::<PostgresSink>(yaml)
            .unwrap()
            .check()
            .unwrap_err()
            .message
    };
    let cols = "table: t\ncolumns: {id: integer}\n";
    assert!(msg(cols).contains("`url` or `url_env`"));
    assert!(msg(&format!("url: postgresql://h/d\nurl_env: X\n{cols}")).contains("not both"));
    assert!(
        msg(&format!("url_env: WEIR_TEST_SURELY_UNSET_VAR\n{cols}"))
            .contains("WEIR_TEST_SURELY_UNSET_VAR")
    );
    assert!(
        msg(&format!(
            "url: \"postgresql://h/d\"\nca_file: ca.pem\n{cols}"
        ))
        .contains("ca_file needs sslmode=require")
    );
    assert!(msg(&format!("url: \"postgresql://h:notaport/d\"\n{cols}")).contains("invalid"));
    assert!(
        msg("url: postgresql://h/d\ntable: t\ncolumns: {id: integer}\nkey: [x]\n")
            .contains("not in 'columns'")
    );
    assert!(
        msg("url: postgresql://h/d\ntable: t\ncolumns: {id: integer}\ntimeout_secs: 0\n")
            .contains("timeout_secs")
    );
}

#[test]
fn values_that_do_not_fit_are_refused_before_sending() {
    let cfg = config("postgresql://u:p@127.0.0.1:1/d", ORDERS);
    let w = cfg.build(&ctx()).unwrap();
    let items = vec![
        order(1, 1.0),
        rec(2, serde_json::json!({"id": 2, "user": "a\u{0}b"})),
    ];
    let (rows, bad) = w.encode(&items);
    assert_eq!(rows.len, 1);
    let (i, why) = bad.unwrap();
    assert_eq!(i, 1);
    assert!(why.contains("NUL"), "{why}");
    for (v, want) in [
        (serde_json::json!({"id": 1.5}), "64-bit integer"),
        (serde_json::json!({"id": null}), "key column id is null"),
        (serde_json::json!({"user": "x"}), "key column id is missing"),
        (serde_json::json!({"id": 1, "amount": "3"}), "a number"),
        (serde_json::json!({"id": 1, "paid": 1}), "true or false"),
        (serde_json::json!({"id": 1, "tags": {"k\u{0}": 1}}), "NUL"),
        (serde_json::json!([1]), "not an object"),
    ] {
        let items = [rec(7, v.clone())];
        let (_, bad) = w.encode(&items);
        let why = bad.unwrap_or_else(|| panic!("{v} accepted")).1;
        assert!(why.contains(want), "{v}: {why}");
        assert!(why.contains("in#7"), "{why}");
    }
    // Text columns take other values as JSON text; a repeated key cuts
    // the statement.
    let items = [
        rec(1, serde_json::json!({"id": 1, "user": 5})),
        rec(2, serde_json::json!({"id": 2})),
        rec(3, serde_json::json!({"id": 1})),
    ];
    let (rows, bad) = w.encode(&items);
    assert!(bad.is_none());
    assert_eq!(rows.cuts, [2]);
    match &rows.cols[1] {
        Col::Text(v) => assert_eq!(v[0].as_deref(), Some("5")),
        _ => panic!("text column"),
    }
}

fn table(pg: &PgServer) -> String {
    pg.psql("SELECT id, \"user\", amount, tags::text, paid FROM orders ORDER BY id")
}

#[test]
fn upserts_are_exact_across_runs_and_repeated_keys() {
    let pg = PgServer::start();
    let cfg = config(&pg.url(), ORDERS);
    within(async {
        for _ in 0..2 {
            let mut w = cfg.build(&ctx()).unwrap();
            w.write(vec![order(1, 1.0), order(2, 2.0), order(3, 3.0)])
                .await
                .unwrap();
            // Key 2 twice in one batch: the later one wins.
            w.write(vec![order(4, 4.0), order(2, 20.0), order(2, 22.0)])
                .await
                .unwrap();
            assert_eq!(w.finish().await.unwrap(), 6);
        }
    });
    assert_eq!(
        table(&pg),
        "1|u1|1|[\"a\", {\"n\": 1}]|f\n2|u2|22|[\"a\", {\"n\": 2}]|t\n3|u3|3|[\"a\", {\"n\": 3}]|f\n4|u4|4|[\"a\", {\"n\": 4}]|t\n"
    );
}

#[test]
fn append_only_without_a_key_and_an_empty_run_creates_the_table() {
    let pg = PgServer::start();
    let cfg = config(
        &pg.url(),
        "table: events\ncolumns: {id: integer, kind: text}\n",
    );
    within(async {
        let w = cfg.build(&ctx()).unwrap();
        assert_eq!(w.finish().await.unwrap(), 0);
    });
    assert_eq!(pg.psql("SELECT count(*) FROM events").trim(), "0");
    within(async {
        let mut w = cfg.build(&ctx()).unwrap();
        let batch: Vec<Record> = (0..2000)
            .map(|i| rec(i, serde_json::json!({"id": i % 10, "kind": "k"})))
            .collect();
        w.write(batch).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 2000);
    });
    assert_eq!(
        pg.psql("SELECT count(*), sum(id) FROM events").trim(),
        "2000|9000"
    );
}

#[test]
fn a_row_the_server_refuses_is_given_back_alone_and_the_rest_commits() {
    let pg = PgServer::start();
    pg.psql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, \"user\" text, amount double precision \
         CHECK (amount >= 0), tags jsonb, paid boolean)",
    );
    let cfg = config(&pg.url(), ORDERS);
    within(async {
        let mut w = cfg.build(&ctx()).unwrap();
        let batch: Vec<Record> = (1..=100)
            .map(|i| order(i, if i == 37 || i == 80 { -1.0 } else { 1.0 }))
            .collect();
        let err = w.write(batch).await.unwrap_err();
        assert!(err.first_is_bad && !err.fatal);
        assert_eq!(err.unwritten.len(), 64);
        assert_eq!(err.unwritten[0].pos.line, 37);
        let msg = err.error.to_string();
        assert!(msg.contains("SQLSTATE 23514"), "{msg}");
        assert!(msg.contains("orders_amount_check"), "{msg}");
        assert_eq!(w.rows(), 36);
        // The engine writes the rest after the refused record.
        let mut rest = err.unwritten;
        rest.remove(0);
        let err = w.write(rest).await.unwrap_err();
        assert_eq!(err.unwritten[0].pos.line, 80);
        let mut rest = err.unwritten;
        rest.remove(0);
        w.write(rest).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 98);
    });
    assert_eq!(
        pg.psql("SELECT count(*), sum(id) FROM orders").trim(),
        format!("98|{}", 5050 - 37 - 80)
    );
}

#[test]
fn wrong_password_and_no_server_fail_fast_and_for_good() {
    let pg = PgServer::start();
    for (url, want) in [
        (
            pg.url_with_password("wrong"),
            "password authentication failed",
        ),
        (
            format!(
                "postgresql://weir:x@127.0.0.1:{}/postgres",
                weir_testkit::free_port()
            ),
            "cannot connect to postgres 127.0.0.1",
        ),
    ] {
        let cfg = config(&url, ORDERS);
        let t0 = Instant::now();
        within(async {
            let mut w = cfg.build(&ctx()).unwrap();
            let err = w.write(vec![order(1, 1.0)]).await.unwrap_err();
            assert!(err.fatal, "{}", err.error);
            assert_eq!(err.unwritten.len(), 1);
            let msg = err.error.to_string();
            assert!(msg.contains(want), "{msg}");
            assert!(!msg.contains("wrong") && !msg.contains(":x@"), "{msg}");
        });
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    }
}

#[test]
fn a_table_that_does_not_fit_is_refused() {
    let pg = PgServer::start();
    // No unique index on the key column: ON CONFLICT cannot work.
    pg.psql("CREATE TABLE orders (id bigint, \"user\" text, amount float8, tags jsonb, paid bool)");
    let cfg = config(&pg.url(), ORDERS);
    within(async {
        let mut w = cfg.build(&ctx()).unwrap();
        let err = w.write(vec![order(1, 1.0)]).await.unwrap_err();
        assert!(err.fatal);
        let msg = err.error.to_string();
        assert!(
            msg.contains("table orders") && msg.contains("42P10"),
            "{msg}"
        );
    });
}

#[test]
fn a_server_restarted_mid_run_is_waited_for_and_nothing_is_lost() {
    let mut pg = PgServer::start();
    let cfg = config(&pg.url(), ORDERS);
    let rt = rt();
    let mut w = cfg.build(&ctx()).unwrap();
    rt.block_on(w.write((1..=10).map(|i| order(i, 1.0)).collect()))
        .unwrap();
    pg.stop();
    // The next batch waits for the server; it comes back 1.5 s later.
    let write = rt.spawn(async move {
        let r = w.write((11..=20).map(|i| order(i, 2.0)).collect()).await;
        (w, r.map_err(|e| e.error.to_string()))
    });
    std::thread::sleep(Duration::from_millis(1500));
    pg.restart();
    let (w, r) = rt
        .block_on(async { tokio::time::timeout(DEADLINE, write).await })
        .expect("test deadline")
        .unwrap();
    r.unwrap();
    assert!(w.reconnects() > 0);
    assert_eq!(rt.block_on(w.finish()).unwrap(), 20);
    assert_eq!(
        pg.psql("SELECT count(*), sum(amount) FROM orders").trim(),
        "20|30"
    );
}

#[test]
fn a_server_away_longer_than_reconnect_for_fails_the_write() {
    let mut pg = PgServer::start();
    let cfg = config(&pg.url(), &format!("{ORDERS}reconnect_for_secs: 1\n"));
    within(async {
        let mut w = cfg.build(&ctx()).unwrap();
        w.write(vec![order(1, 1.0)]).await.unwrap();
        tokio::task::block_in_place(|| pg.stop());
        let t0 = Instant::now();
        let err = w.write(vec![order(2, 1.0)]).await.unwrap_err();
        assert!(err.fatal);
        assert!(t0.elapsed() < Duration::from_secs(10));
        let msg = err.error.to_string();
        assert!(msg.contains("unreachable for 1 s"), "{msg}");
    });
}

/// Holds an ACCESS EXCLUSIVE lock on `table` for `secs` from another
/// session (psql); returns once it is taken (give or take 500 ms).
fn hold_lock(pg: &PgServer, table: &str, secs: f64) -> std::process::Child {
    let c = std::process::Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-q", "-d"])
        .arg(pg.url())
        .args([
            "-c",
            &format!(
                "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({secs}); COMMIT;"
            ),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c
}

/// An existing column of another type than configured would take the
/// values through an assignment cast (a real rounded into an integer
/// column): the sink refuses the table, naming the column and both types.
#[test]
fn an_existing_column_of_another_type_is_refused_by_name() {
    let pg = PgServer::start();
    pg.psql("CREATE TABLE orders (id bigint PRIMARY KEY, \"user\" text, amount integer, tags jsonb, paid bool)");
    let cfg = config(&pg.url(), ORDERS);
    within(async {
        let mut w = cfg.build(&ctx()).unwrap();
        let err = w
            .write(vec![order(1, 1.5), order(2, 2.5)])
            .await
            .unwrap_err();
        assert!(err.fatal, "{}", err.error);
        assert_eq!(err.unwritten.len(), 2);
        let msg = err.error.to_string();
        for want in ["table orders", "column amount", "integer", "real"] {
            assert!(msg.contains(want), "{want}: {msg}");
        }
    });
    assert_eq!(pg.psql("SELECT count(*) FROM orders").trim(), "0");
    // A configured column the table lacks is named too.
    pg.psql("ALTER TABLE orders DROP COLUMN amount");
    within(async {
        let mut w = cfg.build(&ctx()).unwrap();
        let err = w.write(vec![order(1, 1.5)]).await.unwrap_err();
        assert!(err.fatal);
        let msg = err.error.to_string();
        assert!(
            msg.contains("column amount") && msg.contains("no such column"),
            "{msg}"
        );
    });
}

/// Wider columns that hold every value exactly are taken as they are.
#[test]
fn an_existing_table_with_lossless_wider_columns_is_written() {
    let pg = PgServer::start();
    pg.psql("CREATE TABLE orders (id numeric PRIMARY KEY, \"user\" varchar, amount float8, tags json, paid bool, extra text)");
    let cfg = config(&pg.url(), ORDERS);
    within(async {
        let mut w = cfg.build(&ctx()).unwrap();
        w.write(vec![order(12345678901234, 1.5)]).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 1);
    });
    assert_eq!(
        table(&pg),
        "12345678901234|u12345678901234|1.5|[\"a\", {\"n\": 12345678901234}]|t\n"
    );
}

/// Several sinks (outputs, workers) creating the same new table at once:
/// the ones that lose the race write into the winner's table.
#[test]
fn sinks_creating_the_same_table_at_once_all_write() {
    let pg = PgServer::start();
    for round in 0..6 {
        let cfg = config(
            &pg.url(),
            // Eight clients authenticating at once (SCRAM, in a debug
            // build, on a busy machine): more time than the default 5 s.
            &format!(
                "table: t{round}\ncolumns: {{id: integer}}\nkey: [id]\nconnect_timeout_secs: 30\n"
            ),
        );
        let res: Vec<_> = within(async {
            let hs: Vec<_> = (0..8)
                .map(|j| {
                    let mut w = cfg.build(&ctx()).unwrap();
                    tokio::spawn(async move {
                        w.write(vec![rec(j, serde_json::json!({"id": j}))])
                            .await
                            .map_err(|e| format!("fatal={} {}", e.fatal, e.error))
                    })
                })
                .collect();
            let mut out = Vec::new();
            for h in hs {
                out.push(h.await.unwrap());
            }
            out
        });
        let failures: Vec<_> = res.into_iter().filter_map(Result::err).collect();
        assert!(failures.is_empty(), "round {round}: {failures:#?}");
        assert_eq!(
            pg.psql(&format!("SELECT count(*) FROM t{round}")).trim(),
            "8"
        );
    }
}

/// A role with SELECT, INSERT and UPDATE on an existing table but no
/// CREATE on the schema (PostgreSQL 15's default for `public`) writes.
#[test]
fn a_role_without_create_writes_to_an_existing_table() {
    let pg = PgServer::start();
    pg.psql("CREATE TABLE orders (id bigint PRIMARY KEY, \"user\" text, amount float8, tags jsonb, paid bool)");
    pg.psql("CREATE ROLE app LOGIN PASSWORD 'app'; GRANT SELECT, INSERT, UPDATE ON orders TO app");
    let url = format!("postgresql://app:app@127.0.0.1:{}/postgres", pg.port());
    within(async {
        let mut w = config(&url, ORDERS).build(&ctx()).unwrap();
        w.write(vec![order(1, 1.0)])
            .await
            .map_err(|e| format!("fatal={} {}", e.fatal, e.error))
            .unwrap();
        assert_eq!(w.finish().await.unwrap(), 1);
    });
    assert_eq!(pg.psql("SELECT count(*) FROM orders").trim(), "1");
}

/// Without a key, a batch slower than `timeout_secs` (waiting on a lock
/// someone else holds) is aborted on the server before it is written
/// again, so it is in the table once.
#[test]
fn a_batch_slower_than_the_timeout_is_not_committed_twice_without_a_key() {
    let pg = PgServer::start();
    pg.psql("CREATE TABLE ev (id bigint, kind text)");
    let cfg = config(
        &pg.url(),
        "table: ev\ncolumns: {id: integer, kind: text}\ntimeout_secs: 1\nreconnect_for_secs: 30\n",
    );
    let mut w = cfg.build(&ctx()).unwrap();
    let rt = rt();
    rt.block_on(w.write(vec![rec(99, serde_json::json!({"id": 99}))]))
        .unwrap();
    let mut locker = hold_lock(&pg, "ev", 3.5);
    rt.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            w.write(
                (0..10)
                    .map(|i| rec(i, serde_json::json!({"id": i, "kind": "k"})))
                    .collect(),
            )
            .await
            .unwrap();
            w.finish().await.unwrap();
        })
        .await
        .expect("test deadline")
    });
    locker.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        pg.psql("SELECT count(*) FROM ev WHERE id < 99").trim(),
        "10"
    );
}

/// The server's statement timeout is a little below the client's.
#[test]
fn the_statement_timeout_is_a_little_below_timeout_secs() {
    assert_eq!(statement_timeout_ms(Duration::from_secs(60)), 59_000);
    assert_eq!(statement_timeout_ms(Duration::from_secs(1)), 900);
    assert_eq!(statement_timeout_ms(Duration::from_micros(100)), 1);
    assert_eq!(
        statement_timeout_ms(Duration::from_secs(86_400)),
        86_399_000
    );
}

/// A record a trigger refuses (RAISE EXCEPTION, SQLSTATE P0001) is
/// dead-lettered with the server's message; the records before it commit.
#[test]
fn a_record_a_trigger_refuses_is_dead_lettered() {
    let pg = PgServer::start();
    pg.psql("CREATE TABLE orders (id bigint PRIMARY KEY, \"user\" text, amount float8, tags jsonb, paid bool)");
    pg.psql(
        "CREATE FUNCTION chk() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.amount < 0 THEN RAISE EXCEPTION 'negative amount'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER t BEFORE INSERT OR UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION chk()",
    );
    let cfg = config(&pg.url(), ORDERS);
    within(async {
        let mut w = cfg.build(&ctx()).unwrap();
        let e = w
            .write(vec![order(1, 1.0), order(2, -1.0), order(3, 1.0)])
            .await
            .unwrap_err();
        assert!(e.first_is_bad && !e.fatal, "fatal={} {}", e.fatal, e.error);
        assert_eq!(e.unwritten[0].pos.line, 2);
        let msg = e.error.to_string();
        assert!(
            msg.contains("SQLSTATE P0001") && msg.contains("negative amount"),
            "{msg}"
        );
        let mut rest = e.unwritten;
        rest.remove(0);
        w.write(rest).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 2);
    });
    assert_eq!(pg.psql("SELECT id FROM orders ORDER BY id"), "1\n3\n");
}

/// A lock timeout (SQLSTATE 55P03) while the sink first connects, after
/// it authenticated, or while it writes, is waited for like a lost
/// server, not fatal.
#[test]
fn a_lock_timeout_at_the_first_connect_is_waited_for() {
    let pg = PgServer::start();
    pg.psql("CREATE TABLE orders (id bigint PRIMARY KEY, \"user\" text, amount float8, tags jsonb, paid bool)");
    pg.psql("ALTER ROLE weir SET lock_timeout = '200ms'");
    let cfg = config(&pg.url(), ORDERS);
    let mut locker = hold_lock(&pg, "orders", 2.0);
    within(async {
        let mut w = cfg.build(&ctx()).unwrap();
        w.write(vec![order(1, 1.0)])
            .await
            .map_err(|e| format!("fatal={} {}", e.fatal, e.error))
            .unwrap();
        assert!(w.reconnects() > 0);
        locker.wait().unwrap();
        // And while writing.
        let mut locker = tokio::task::block_in_place(|| hold_lock(&pg, "orders", 2.0));
        let before = w.reconnects();
        w.write(vec![order(2, 1.0)])
            .await
            .map_err(|e| format!("fatal={} {}", e.fatal, e.error))
            .unwrap();
        assert!(w.reconnects() > before);
        locker.wait().unwrap();
    });
    assert_eq!(pg.psql("SELECT count(*) FROM orders").trim(), "2");
}

/// A shorter `statement_timeout` set for the role is kept, not raised to
/// the sink's: a statement slower than it fails.
#[test]
fn a_shorter_statement_timeout_of_the_role_is_kept() {
    let pg = PgServer::start();
    pg.psql("CREATE TABLE orders (id bigint PRIMARY KEY, \"user\" text, amount float8, tags jsonb, paid bool)");
    pg.psql(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         PERFORM pg_sleep(0.6); RETURN NEW; END $$; \
         CREATE TRIGGER t BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION slow()",
    );
    pg.psql("ALTER ROLE weir SET statement_timeout = '300ms'");
    let cfg = config(&pg.url(), &format!("{ORDERS}reconnect_for_secs: 1\n"));
    within(async {
        let mut w = cfg.build(&ctx()).unwrap();
        let err = w.write(vec![order(1, 1.0)]).await.unwrap_err();
        assert!(err.fatal);
        let msg = err.error.to_string();
        assert!(msg.contains("statement timeout"), "{msg}");
    });
    assert_eq!(pg.psql("SELECT count(*) FROM orders").trim(), "0");
}

/// `sslmode=require`: TLS through rustls against a server that refuses
/// plain text, its certificate verified against `ca_file`; without the CA
/// (an unknown issuer) or without TLS, the sink fails at once, never
/// waiting as for a lost server.
#[test]
fn tls_when_asked_verified_against_ca_file() {
    let pg = PgServer::start_tls();
    let tls_url = |host: &str| pg.url().replace("127.0.0.1", host) + "?sslmode=require";
    let ca = pg.ca_file().display().to_string();
    for host in ["127.0.0.1", "localhost"] {
        let cfg = config(&tls_url(host), &format!("{ORDERS}ca_file: \"{ca}\"\n"));
        within(async {
            let mut w = cfg.build(&ctx()).unwrap();
            w.write((1..=10).map(|i| order(i, 1.5)).collect())
                .await
                .unwrap();
            assert_eq!(w.finish().await.unwrap(), 10);
        });
    }
    assert_eq!(pg.psql("SELECT count(*) FROM orders").trim(), "10");
    let started = Instant::now();
    for (url, rest, expect) in [
        (tls_url("127.0.0.1"), String::new(), "certificate"),
        (pg.url(), String::new(), "no encryption"),
    ] {
        let cfg = config(&url, &format!("{ORDERS}{rest}"));
        let err = within(async {
            let mut w = cfg.build(&ctx()).unwrap();
            w.write(vec![order(11, 1.0)]).await.unwrap_err()
        });
        let msg = err.error.to_string();
        assert!(err.fatal, "{msg}");
        assert!(msg.to_lowercase().contains(expect), "{msg}");
        assert!(!msg.contains(PgServer::PASSWORD), "{msg}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Append-only batches go through COPY (text format): values that need
/// escaping arrive as they were, a wider existing column (numeric, json)
/// takes them, and a row the server refuses fails the COPY whole, then is
/// found by the inserts and given back alone while the rest commits.
#[test]
fn append_only_copies_values_exactly_and_isolates_a_refused_row() {
    let pg = PgServer::start();
    pg.psql(
        "CREATE TABLE ev (id numeric CHECK (id <> 13), note text, x double precision, \
         ok boolean, doc json)",
    );
    let cfg = config(
        &pg.url(),
        "table: ev\ncolumns: {id: integer, note: text, x: real, ok: boolean, doc: json}\n",
    );
    let odd = "tab\there\nnew line\\back\\\\slash\r\\N \\. é 😀";
    within(async {
        let mut w = cfg.build(&ctx()).unwrap();
        let batch: Vec<Record> = (1..=20)
            .map(|i| {
                rec(
                    i as u64,
                    serde_json::json!({"id": i, "note": if i == 2 { serde_json::Value::Null } else { odd.into() },
                        "x": if i == 3 { 1e300 } else { 0.1 * i as f64 }, "ok": i % 2 == 0,
                        "doc": {"k": odd, "n": [i]}}),
                )
            })
            .collect();
        let err = w.write(batch).await.unwrap_err();
        assert!(err.first_is_bad && !err.fatal);
        assert_eq!(err.unwritten[0].pos.line, 13);
        assert!(
            err.error.to_string().contains("SQLSTATE 23514"),
            "{}",
            err.error
        );
        let mut rest = err.unwritten;
        rest.remove(0);
        w.write(rest).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 19);
    });
    assert_eq!(pg.psql("SELECT count(*) FROM ev").trim(), "19");
    let same = pg.psql(&format!(
        "SELECT count(*) FROM ev WHERE note = {} AND doc->>'k' = note",
        quote_literal(odd)
    ));
    assert_eq!(same.trim(), "18", "every note but the NULL one, exactly");
    assert_eq!(
        pg.psql("SELECT note IS NULL FROM ev WHERE id = 2").trim(),
        "t"
    );
    assert_eq!(pg.psql("SELECT x = 1e300 FROM ev WHERE id = 3").trim(), "t");
    assert_eq!(
        pg.psql("SELECT x = 0.7000000000000001 FROM ev WHERE id = 7")
            .trim(),
        "t"
    );
}

fn quote_literal(s: &str) -> String {
    format!(
        "E'{}'",
        s.replace('\\', "\\\\")
            .replace('\'', "\\'")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
            .replace('\r', "\\r")
    )
}

/// Which path wrote: a trigger records whether the statement was a COPY.
const PATH_LOG: &str = "CREATE TABLE path_log (copy boolean);
     CREATE FUNCTION log_path() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN INSERT INTO path_log VALUES (current_query() ILIKE 'COPY%'); RETURN NEW; END $$;";

/// A clean append-only batch goes through COPY, with float values at the
/// edges of what text can carry, exactly.
#[test]
fn a_clean_append_only_batch_is_one_copy_and_exact() {
    let pg = PgServer::start();
    pg.psql(PATH_LOG);
    pg.psql(
        "CREATE TABLE f (id bigint, x double precision);
         CREATE TRIGGER t AFTER INSERT ON f FOR EACH ROW EXECUTE FUNCTION log_path();",
    );
    let xs = [
        1e300,
        5e-324,
        -0.0,
        1e-7,
        f64::MAX,
        0.30000000000000004,
        -2.5e-308,
    ];
    let cfg = config(&pg.url(), "table: f\ncolumns: {id: integer, x: real}\n");
    within(async {
        let mut w = cfg.build(&ctx()).unwrap();
        let batch: Vec<Record> = xs
            .iter()
            .enumerate()
            .map(|(i, x)| rec(i as u64, serde_json::json!({"id": i, "x": x})))
            .collect();
        w.write(batch).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), xs.len() as u64);
    });
    assert_eq!(
        pg.psql("SELECT bool_and(copy), count(*) FROM path_log")
            .trim(),
        "t|7"
    );
    for (i, x) in xs.iter().enumerate() {
        let got: f64 = pg
            .psql(&format!("SELECT x::text FROM f WHERE id = {i}"))
            .trim()
            .parse()
            .unwrap();
        assert_eq!(got.to_bits(), x.to_bits(), "row {i}: {x:e}");
    }
}

/// Tables COPY would refuse or write otherwise than an insert get
/// inserts: a view, row-level security, an INSERT rule, a `json` column.
#[test]
fn tables_copy_does_not_fit_get_inserts() {
    let pg = PgServer::start();
    pg.psql(PATH_LOG);
    pg.psql(
        "CREATE TABLE base (id bigint, doc json);
         CREATE TRIGGER t AFTER INSERT ON base FOR EACH ROW EXECUTE FUNCTION log_path();
         CREATE VIEW v AS SELECT id, doc FROM base;
         CREATE TABLE routed (id bigint, doc jsonb); CREATE TABLE other (id bigint, doc jsonb);
         CREATE RULE r AS ON INSERT TO routed DO INSTEAD INSERT INTO other VALUES (NEW.id, NEW.doc);
         CREATE ROLE writer LOGIN PASSWORD 'w';
         CREATE TABLE secured (id bigint, doc jsonb); ALTER TABLE secured ENABLE ROW LEVEL SECURITY;
         CREATE POLICY p ON secured FOR ALL TO writer USING (true) WITH CHECK (true);
         GRANT INSERT, SELECT ON secured TO writer;",
    );
    let write = |url: String, table: &str, first: i64| {
        let cfg = config(
            &url,
            &format!("table: {table}\ncolumns: {{id: integer, doc: json}}\n"),
        );
        within(async {
            let mut w = cfg.build(&ctx()).unwrap();
            let batch: Vec<Record> = (first..first + 3)
                .map(|i| {
                    rec(
                        i as u64,
                        serde_json::json!({"id": i, "doc": {"b": 1, "a": i}}),
                    )
                })
                .collect();
            w.write(batch).await.unwrap();
            assert_eq!(w.finish().await.unwrap(), 3);
        });
    };
    write(pg.url(), "base", 0);
    write(pg.url(), "v", 10);
    write(pg.url(), "routed", 20);
    let writer = pg.url().replace(
        &format!("{}:{}", PgServer::USER, PgServer::PASSWORD),
        "writer:w",
    );
    write(writer, "secured", 30);
    assert_eq!(
        pg.psql("SELECT count(*), bool_or(copy) FROM path_log")
            .trim(),
        "6|f",
        "base and the view took inserts"
    );
    assert_eq!(
        pg.psql("SELECT doc::text FROM base WHERE id = 1").trim(),
        "{\"a\": 1, \"b\": 1}",
        "json text as an insert through jsonb gives"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM routed").trim(), "0");
    assert_eq!(
        pg.psql("SELECT count(*) FROM other").trim(),
        "3",
        "the rule routed them"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM secured").trim(), "3");
}

/// `weir check` reads the certificate file where a run would.
#[test]
fn check_reads_the_ca_file() {
    let cfg = config(
        "postgresql://u@127.0.0.1:1/d?sslmode=require",
        &format!("{ORDERS}ca_file: no-such-ca.pem\n"),
    );
    let err = crate::registry::SinkComponent::check(&cfg, &ctx()).unwrap_err();
    assert!(err.message.contains("no-such-ca.pem"), "{}", err.message);
}
