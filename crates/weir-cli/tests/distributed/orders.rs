//! The bundled example, `examples/pipelines/orders.yaml` (`broker: {
//! remote: all }`: clean, valid and totals run in worker pools), on a
//! coordinator and three workers, against a local run of the same files.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use weir_testkit::NatsServer;

use crate::util::{
    Deadline, Dir, Proc, assert_same_rows, drain, parse_jsonl, remote_counter, report_of, rows,
    run_local, stage_counter,
};

/// The tables of the example, each in a fixed order.
const TABLES: [(&str, &str); 3] = [
    ("orders", "SELECT * FROM orders ORDER BY order_id"),
    (
        "customer_totals",
        "SELECT * FROM customer_totals ORDER BY customer_id",
    ),
    ("customers", "SELECT * FROM customers ORDER BY id"),
];

/// The dead letters of a file, field order aside: the sorted set of
/// (stage, position, input, error, record, raw).
fn dead_letters(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut v: Vec<String> = parse_jsonl(&text)
        .iter()
        .map(|e| {
            serde_json::json!([
                e["stage"],
                e["position"],
                e["input"],
                e["error"],
                e["record"],
                e["raw"]
            ])
            .to_string()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn orders_on_three_workers_equals_a_local_run() {
    let deadline = Deadline::new();
    let server = NatsServer::start();
    let url = server.url();
    let job = "orders-three-workers";

    let dist = Dir::new();
    dist.copy_orders_example();
    // Workers first: they wait for the job to appear on the broker.
    let mut workers: Vec<Proc> = (1..=3)
        .map(|i| dist.worker(&format!("worker{i}"), "orders.yaml", &url, job, 2))
        .collect();
    let mut coordinator = dist.coordinator("orders.yaml", &url, job);

    // The local run, meanwhile, in another directory.
    let local = Dir::new();
    local.copy_orders_example();
    let local_report = run_local(&local, "orders.yaml", &deadline);

    let report = report_of(&mut coordinator, Duration::from_secs(120), &deadline);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["error"], Value::Null, "{report}");
    assert_eq!(report["job"], job);

    // The tables, row for row.
    for (table, sql) in TABLES {
        let want = rows(&local.join("out/shop.db"), sql);
        assert!(!want.is_empty(), "the local run wrote no {table}");
        assert_same_rows(table, &rows(&dist.join("out/shop.db"), sql), &want);
    }

    // The dead letters: the same set (the distributed file has `file` and
    // `line` too, and another order).
    let want = dead_letters(&local.join("out/dead-letters.jsonl"));
    let got = dead_letters(&dist.join("out/dead-letters.jsonl"));
    assert_eq!(
        want.len() as u64,
        local_report["dead_lettered"].as_u64().unwrap()
    );
    assert_eq!(want.len(), 163, "the example's dead letters");
    assert_eq!(got.len(), want.len());
    if got != want {
        let g: BTreeSet<_> = got.iter().collect();
        let w: BTreeSet<_> = want.iter().collect();
        panic!(
            "dead letters differ: only distributed {:?}; only local {:?}",
            g.difference(&w).take(3).collect::<Vec<_>>(),
            w.difference(&g).take(3).collect::<Vec<_>>()
        );
    }
    assert_eq!(report["broker_dead_letters"], 163, "{report}");
    assert_eq!(report["swept"], 0, "{report}");

    // The remote statistics of clean: every record the local clean took,
    // summed over the workers, and more than one worker took part.
    let clean_in = stage_counter(&local_report, "clean", "in");
    assert_eq!(clean_in, 16_239, "the example's input");
    assert_eq!(
        remote_counter(&report, "clean", "in"),
        clean_in,
        "{}",
        report["remote"]
    );
    assert_eq!(
        remote_counter(&report, "clean", "out"),
        stage_counter(&local_report, "clean", "out")
    );
    assert!(
        remote_counter(&report, "clean", "workers") >= 2,
        "the pool spans processes: {}",
        report["remote"]
    );
    for stage in ["clean", "valid", "totals"] {
        assert_eq!(
            remote_counter(&report, stage, "redelivered"),
            0,
            "{}",
            report["remote"]
        );
    }

    // Drained, the workers have written their final statistics: every
    // remote stage took exactly what the local stage took.
    drain(&mut workers, &deadline);
    let status = dist.status(&url, job, &deadline);
    assert_eq!(status.state, "Done", "{}", status.text);
    for stage in ["clean", "valid", "totals"] {
        let i = status.inbox(stage);
        assert!(i.pool, "{}", status.text);
        assert_eq!(
            i.records_in,
            stage_counter(&local_report, stage, "in"),
            "{stage}: {}",
            status.text
        );
        assert_eq!(
            i.records_out,
            stage_counter(&local_report, stage, "out"),
            "{stage}: {}",
            status.text
        );
        assert_eq!(
            i.dead,
            stage_counter(&local_report, stage, "dead_lettered"),
            "{stage}: {}",
            status.text
        );
        assert_eq!((i.backlog, i.in_flight), (0, 0), "{stage}: {}", status.text);
    }
    assert_eq!(status.dead_letters, 163, "{}", status.text);
}
