//! The `sql` source examples of `examples/pipelines`, run end to end on
//! copies against real PostgreSQL servers ([`PgServer`]): the incremental
//! copies `pg-to-sqlite.yaml` and `sqlite-to-pg.yaml` (exact tables, a
//! rerun reads only the new rows, a `kill -9` mid-copy then a rerun), and
//! the scheduled `snapshot.yaml` (a snapshot per second of a table that
//! changes while it runs, and SIGINT).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_testkit::PgServer;

use crate::util::{Dir, KillOnDrop, assert_accounting, assert_conserved, code, n, text};

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipelines")
}

/// Copies `example` and `data/orders.sql` into `d`; `edit` changes the
/// pipeline's text.
fn copy_example(d: &Dir, example: &str, edit: impl Fn(String) -> String) {
    let yaml = std::fs::read_to_string(examples().join(example)).unwrap();
    let edited = edit(yaml.clone());
    d.file(example, edited).file("data/orders.sql", seed());
}

/// The bundled seed: the orders table and its 12 orders.
fn seed() -> String {
    std::fs::read_to_string(examples().join("data/orders.sql")).unwrap()
}

fn report(out: &std::process::Output) -> Value {
    serde_json::from_str(text(&out.stdout).lines().last().expect("a report")).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}):\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// `weir run NAME --report json` with DATABASE_URL, which must succeed.
fn run_ok(d: &Dir, name: &str, pg: &PgServer) -> Value {
    let out = d
        .weir(&["run", name, "--report", "json"])
        .env("DATABASE_URL", pg.url())
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let r = report(&out);
    assert_accounting(&r);
    assert_conserved(&r);
    r
}

/// An order: id, customer, region, amount, created_at.
type Order = (i64, String, String, f64, String);

/// PostgreSQL's `orders` as the sql source reads it (times in UTC, as
/// `row_to_json` writes them).
fn pg_orders(pg: &PgServer, table: &str, time: &str) -> Vec<Order> {
    pg.psql(&format!(
        "SET TimeZone = 'UTC'; SELECT id, customer, region, amount, {time} FROM {table} ORDER BY id"
    ))
    .lines()
    .map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        (
            f[0].parse().unwrap(),
            f[1].to_string(),
            f[2].to_string(),
            f[3].parse().unwrap(),
            f[4].to_string(),
        )
    })
    .collect()
}

/// The SQLite table `orders` of `path`, checking each value's storage
/// class: integer, text, text, real, text.
fn sqlite_orders(path: &Path) -> Vec<Order> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut st = conn
        .prepare(
            "SELECT id, customer, region, amount, created_at, \
             typeof(id) || typeof(customer) || typeof(region) || typeof(amount) || typeof(created_at) \
             FROM orders ORDER BY id",
        )
        .unwrap();
    st.query_map([], |r| {
        let types: String = r.get(5)?;
        assert_eq!(
            types,
            "integertexttextrealtext",
            "row {}",
            r.get::<_, i64>(0)?
        );
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn sqlite_count(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .and_then(|c| {
            c.busy_timeout(Duration::from_secs(5))?;
            c.query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        })
        .unwrap_or(0)
}

/// Orders 13..=20, as SQL values.
const MORE: &str = "\
(13, 'ivan', 'eu', 14.99, '2026-11-06T08:00:00Z'),
(14, 'ada', 'us', 2.5, '2026-11-06T09:30:00Z'),
(15, 'june', 'asia', 1000, '2026-11-06T10:00:00Z'),
(16, 'bob', 'eu', 0.01, '2026-11-06T11:11:11Z'),
(17, 'kai', 'us', 77.7, '2026-11-07T00:00:00Z'),
(18, 'chen', 'asia', 9.95, '2026-11-07T01:02:03Z'),
(19, 'lea', 'eu', 45, '2026-11-07T12:00:00Z'),
(20, 'dora', 'us', 3.33, '2026-11-07T23:59:59Z')";

/// `pg-to-sqlite.yaml`: the SQLite copy equals the PostgreSQL table, value
/// for value and with SQLite's storage classes; after 8 more orders in
/// PostgreSQL, the rerun reads those 8 only.
#[test]
fn pg_to_sqlite_copies_exactly_and_a_rerun_reads_only_new_rows() {
    let pg = PgServer::start();
    pg.psql(&seed());
    let d = Dir::new();
    copy_example(&d, "pg-to-sqlite.yaml", |y| y);
    let db = d.join("out/orders.db");
    let iso = "to_json(created_at) #>> '{}'";

    let r = run_ok(&d, "pg-to-sqlite.yaml", &pg);
    assert_eq!(n(&r, "orders", "out"), 12, "{r}");
    assert_eq!(n(&r, "copy", "ok"), 12, "{r}");
    let copied = sqlite_orders(&db);
    assert_eq!(copied, pg_orders(&pg, "orders", iso));
    assert_eq!(copied[0].4, "2026-11-02T09:15:00+00:00");

    // Nothing new: nothing read.
    let r = run_ok(&d, "pg-to-sqlite.yaml", &pg);
    assert_eq!(n(&r, "orders", "out"), 0, "{r}");

    pg.psql(&format!("INSERT INTO orders VALUES {MORE}"));
    let r = run_ok(&d, "pg-to-sqlite.yaml", &pg);
    assert_eq!(n(&r, "orders", "out"), 8, "{r}");
    assert_eq!(n(&r, "copy", "ok"), 8, "{r}");
    let copied = sqlite_orders(&db);
    assert_eq!(copied.len(), 20);
    assert_eq!(copied, pg_orders(&pg, "orders", iso));
}

/// `sqlite-to-pg.yaml`: a SQLite file loaded from the bundled seed,
/// copied into PostgreSQL exactly (bigint, text, double precision); after
/// 8 more orders in the file, the rerun reads those 8 only.
#[test]
fn sqlite_to_pg_copies_exactly_and_a_rerun_reads_only_new_rows() {
    let pg = PgServer::start();
    let d = Dir::new();
    copy_example(&d, "sqlite-to-pg.yaml", |y| y);
    std::fs::create_dir_all(d.join("out")).unwrap();
    let db = d.join("out/orders.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(&seed()).unwrap();

    let r = run_ok(&d, "sqlite-to-pg.yaml", &pg);
    assert_eq!(n(&r, "orders", "out"), 12, "{r}");
    assert_eq!(n(&r, "back", "ok"), 12, "{r}");
    let back = pg_orders(&pg, "orders_back", "created_at");
    assert_eq!(back, sqlite_orders(&db));
    assert_eq!(back[0].4, "2026-11-02T09:15:00Z");
    assert_eq!(
        pg.psql(
            "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY column_name) \
             FROM information_schema.columns WHERE table_name = 'orders_back'"
        )
        .trim(),
        "amount double precision, created_at text, customer text, id bigint, region text"
    );

    let r = run_ok(&d, "sqlite-to-pg.yaml", &pg);
    assert_eq!(n(&r, "orders", "out"), 0, "{r}");

    conn.execute_batch(&format!("INSERT INTO orders VALUES {MORE}"))
        .unwrap();
    let r = run_ok(&d, "sqlite-to-pg.yaml", &pg);
    assert_eq!(n(&r, "orders", "out"), 8, "{r}");
    let back = pg_orders(&pg, "orders_back", "created_at");
    assert_eq!(back.len(), 20);
    assert_eq!(back, sqlite_orders(&db));
}

/// `kill -9` of `pg-to-sqlite.yaml` mid-copy of 200,000 orders: the rerun
/// reads from the last cursor saved (rows after it that were already
/// written are written again, harmlessly: the key) and the copy is exact.
#[test]
fn pg_to_sqlite_killed_mid_copy_then_rerun_is_exact() {
    const ROWS: i64 = 200_000;
    let pg = PgServer::start();
    pg.psql(&seed());
    pg.psql(&format!(
        "INSERT INTO orders SELECT g, 'c' || (g % 997), (ARRAY['eu', 'us', 'asia'])[1 + g % 3], \
         (g % 10007) / 100.0, timestamptz '2026-11-01T00:00:00Z' + g * interval '1 second' \
         FROM generate_series(13, {ROWS}) AS g"
    ));
    let d = Dir::new();
    copy_example(&d, "pg-to-sqlite.yaml", |y| y);
    let db = d.join("out/orders.db");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("weir"))
        .current_dir(d.path())
        .args(["run", "pg-to-sqlite.yaml", "--quiet"])
        .env("DATABASE_URL", pg.url())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kill = KillOnDrop(child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    while sqlite_count(&db) < 5_000 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy ended before it was killed"
        );
        assert!(Instant::now() < deadline, "the copy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(kill);
    let before = sqlite_count(&db);
    assert!(before < ROWS, "killed after the end: make the table larger");

    let r = run_ok(&d, "pg-to-sqlite.yaml", &pg);
    let read = i64::try_from(n(&r, "orders", "out")).unwrap();
    // The rerun starts at or before the first row not written, and after
    // the first row (the cursor was saved at least once, or the rerun
    // reads everything).
    assert!(read >= ROWS - before, "read {read}, {before} were there");
    assert!(read <= ROWS, "read {read}");
    let copied = sqlite_orders(&db);
    assert_eq!(copied.len(), usize::try_from(ROWS).unwrap());
    assert!(
        copied == pg_orders(&pg, "orders", "to_json(created_at) #>> '{}'"),
        "the copy differs from the table"
    );
}

/// The snapshot example with `every: 1s`; `runs` adds `runs:`.
fn snapshot_copy(d: &Dir, runs: Option<u64>) {
    copy_example(d, "snapshot.yaml", |y| {
        assert!(y.contains("      every: 1m\n"), "{y}");
        let with = match runs {
            Some(r) => format!("      every: 1s\n      runs: {r}\n"),
            None => "      every: 1s\n".to_string(),
        };
        y.replace("      every: 1m\n", &with)
    });
}

/// A stored snapshot: taken_at (Unix ms), and per region (name, orders,
/// total), sorted by region.
type Snapshot = (i64, Vec<(String, i64, f64)>);

fn snapshots(d: &Dir) -> Vec<Snapshot> {
    let conn = rusqlite::Connection::open(d.join("out/snapshots.db")).unwrap();
    let mut st = conn
        .prepare(
            "SELECT taken_at, region, orders, total FROM region_snapshots ORDER BY taken_at, region",
        )
        .unwrap();
    let rows: Vec<(String, String, i64, f64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out: Vec<Snapshot> = Vec::new();
    for (at, region, orders, total) in rows {
        let ms = at.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        match out.last_mut() {
            Some((t, regions)) if *t == ms => regions.push((region, orders, total)),
            _ => out.push((ms, vec![(region, orders, total)])),
        }
    }
    out
}

/// The table's per-region state after the seed and `inserted` (region,
/// amount) orders.
fn state(inserted: &[(String, f64)]) -> Vec<(String, i64, f64)> {
    let mut s = vec![
        ("asia".to_string(), 4, 7.25 + 18.75 + 61.2 + 33.3),
        ("eu".to_string(), 4, 12.5 + 99.99 + 250.0 + 5.0),
        ("us".to_string(), 4, 40.0 + 3.1 + 0.5 + 120.45),
    ];
    for (region, amount) in inserted {
        let r = s.iter_mut().find(|r| &r.0 == region).unwrap();
        r.1 += 1;
        r.2 += amount;
    }
    s
}

fn same_state(got: &[(String, i64, f64)], want: &[(String, i64, f64)]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| g.0 == w.0 && g.1 == w.1 && (g.2 - w.2).abs() < 1e-6)
}

/// `snapshot.yaml` every second, 3 passes, while orders are inserted
/// every 150 ms: one row per region per pass; the first pass at the start,
/// the next ones at whole seconds, one second apart; each snapshot is the
/// table after some prefix of the inserts, the prefixes growing (no
/// snapshot sees an insert that a later one misses).
#[test]
fn snapshot_every_second_stores_the_table_state_of_each_pass() {
    let pg = PgServer::start();
    pg.psql(&seed());
    let d = Dir::new();
    snapshot_copy(&d, Some(3));
    let stop = AtomicBool::new(false);
    let regions = ["eu", "us", "asia"];
    let (out, inserted) = std::thread::scope(|s| {
        let inserter = s.spawn(|| {
            let mut inserted = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let region = regions[i % 3];
                let amount = f64::from(u32::try_from(i % 7).unwrap()) + 0.25;
                pg.psql(&format!(
                    "INSERT INTO orders VALUES ({}, 'c{i}', '{region}', {amount}, now())",
                    100 + i
                ));
                inserted.push((region.to_string(), amount));
                i += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            inserted
        });
        let out = d
            .weir(&["run", "snapshot.yaml", "--report", "json"])
            .env("DATABASE_URL", pg.url())
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        (out, inserter.join().unwrap())
    });
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let r = report(&out);
    assert_accounting(&r);
    assert_eq!(n(&r, "snapshots", "ok"), 9, "{r}");

    let snaps = snapshots(&d);
    assert_eq!(snaps.len(), 3, "{snaps:?}");
    let times: Vec<i64> = snaps.iter().map(|s| s.0).collect();
    assert!(times[1] % 1000 == 0 && times[2] % 1000 == 0, "{times:?}");
    assert_eq!(times[2] - times[1], 1000, "{times:?}");
    // The first pass runs at the start, the second at the next whole
    // second (at once if the first pass ended after it).
    assert_eq!(
        times[1],
        (times[0].div_euclid(1000) + 1) * 1000,
        "{times:?}"
    );
    let mut prefixes = Vec::new();
    for (at, regions) in &snaps {
        let total: i64 = regions.iter().map(|r| r.1).sum();
        let k = usize::try_from(total - 12).unwrap();
        assert!(k <= inserted.len(), "{at}: {regions:?}");
        assert!(
            same_state(regions, &state(&inserted[..k])),
            "snapshot {at}: {regions:?}, want {:?}",
            state(&inserted[..k])
        );
        prefixes.push(k);
    }
    // The first two passes can be milliseconds apart; the last two are a
    // second apart, with orders inserted between them.
    assert!(
        prefixes[0] <= prefixes[1] && prefixes[1] < prefixes[2],
        "the table changed between passes: {prefixes:?}"
    );
}

/// `snapshot.yaml` every second without `runs`: SIGINT ends it with the
/// interrupted status (130), every snapshot taken stored whole.
#[test]
fn snapshot_sigint_stores_the_snapshots_taken() {
    let pg = PgServer::start();
    pg.psql(&seed());
    let d = Dir::new();
    snapshot_copy(&d, None);
    let child = Command::new(assert_cmd::cargo::cargo_bin("weir"))
        .current_dir(d.path())
        .args(["run", "snapshot.yaml", "--report", "json", "--quiet"])
        .env("DATABASE_URL", pg.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kill = KillOnDrop(child.id());
    let db = d.join("out/snapshots.db");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&db).is_err()
        || rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM region_snapshots", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .unwrap_or(0)
            < 6
    {
        assert!(Instant::now() < deadline, "no two snapshots stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    let out = child.wait_with_output().unwrap();
    drop(kill);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(code(&out), 130, "{}", text(&out.stderr));
    let r = report(&out);
    assert_accounting(&r);
    let snaps = snapshots(&d);
    assert!(snaps.len() >= 2, "{snaps:?}");
    assert_eq!(n(&r, "snapshots", "ok"), 3 * snaps.len() as u64, "{r}");
    for (at, regions) in &snaps {
        assert!(same_state(regions, &state(&[])), "{at}: {regions:?}");
    }
}
