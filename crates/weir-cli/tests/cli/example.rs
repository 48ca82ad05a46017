//! The bundled example, `examples/pipelines/orders.yaml`, run on a copy
//! (it writes `out/` beside the pipeline file).

use std::path::Path;
use std::time::Duration;

use crate::util::{Dir, assert_accounting, code, n, text};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn count(conn: &rusqlite::Connection, sql: &str) -> u64 {
    conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64
}

/// Row counts, as of the data in `examples/pipelines/data`:
///
/// * orders: 16,306 lines read (8,158 eu + 8,148 us); 67 do not parse,
///   90 fail the schema, 305 are duplicate deliveries: 15,844 orders;
/// * customer_totals: one row per distinct customer of those orders, 1,500;
/// * customers: 1,500 csv rows, 6 of them malformed: 1,494;
/// * dead letters: 67 + 90 + 6 = 163.
#[test]
fn orders_example() {
    let d = Dir::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipelines");
    for part in ["data", "schemas"] {
        copy_dir(&src.join(part), &d.join(part));
    }
    std::fs::copy(src.join("orders.yaml"), d.join("orders.yaml")).unwrap();

    let out = d
        .weir(&["run", "orders.yaml"])
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(
        stderr.contains("items from sources in") && stderr.contains("; 163 dead-lettered"),
        "the summary: {stderr}"
    );
    assert!(
        stderr.contains("dead letters: out/dead-letters.jsonl"),
        "{stderr}"
    );
    assert!(stderr.contains("orders-db"), "one line per stage: {stderr}");

    let conn = rusqlite::Connection::open(d.join("out/shop.db")).unwrap();
    let orders = count(&conn, "SELECT count(*) FROM orders");
    let totals = count(&conn, "SELECT count(*) FROM customer_totals");
    let customers = count(&conn, "SELECT count(*) FROM customers");
    assert_eq!((orders, totals, customers), (15_844, 1_500, 1_494));
    // The totals agree with the orders they summarise.
    assert_eq!(
        count(&conn, "SELECT count(DISTINCT customer_id) FROM orders"),
        totals
    );
    assert_eq!(
        count(&conn, "SELECT sum(orders) FROM customer_totals"),
        orders
    );
    assert_eq!(
        count(&conn, "SELECT sum(item_count) FROM orders"),
        count(&conn, "SELECT sum(items) FROM customer_totals")
    );
    let dead = d.jsonl("out/dead-letters.jsonl");
    assert_eq!(dead.len(), 163);
    drop(conn);

    // A rerun with --report json: same rows (upserts), same counts.
    let report = d.run_ok_within("orders.yaml", Duration::from_secs(300));
    assert_eq!(report["dead_lettered"], 163);
    assert_eq!(n(&report, "orders-db", "ok"), 15_844);
    assert_eq!(n(&report, "totals-db", "ok"), 1_500);
    assert_eq!(n(&report, "customers-db", "ok"), 1_494);
    assert_eq!(
        n(&report, "orders-eu", "out") + n(&report, "orders-us", "out"),
        16_306
    );
    assert_accounting(&report);
    let conn = rusqlite::Connection::open(d.join("out/shop.db")).unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM orders"), orders);
}
