//! B6: the main job, `examples/pipelines/orders.yaml`, on its data scaled
//! up by `weir gen orders --scale N` (default 20: about 326k order lines
//! and 30k customers).
//!
//! Variants, each round in this order:
//!
//! * **baseline**: one thread reads the three files and parses every line
//!   with serde_json (orders) or splits it (customers): the cost of just
//!   reading the input, nothing else;
//! * **weir**: `weir run orders.yaml --report json` by the release binary,
//!   as a user runs it; wall time, CPU (user + system, from
//!   `/usr/bin/time`) and peak RSS;
//! * **before** (only with `B6_BEFORE=/path/to/an/older/weir`): the same
//!   run by another binary, for before/after figures from one window.
//!
//! Every weir run is checked against the generator's expected figures:
//! rows of the three SQLite tables, the total item count, dead letters and
//! the duplicates `unique` filtered. Records are input records (order
//! lines + customer rows); records/s is per wall second.
//!
//! Run: `cargo bench -p weir-cli --bench b6_orders`
//! (`B6_SCALE=n`, default 20; `B6_ROUNDS=n`, default 3.)
#![allow(clippy::print_stdout, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// The single-threaded reading loop; returns the records read.
fn baseline(data: &Path) -> u64 {
    let mut n = 0u64;
    let mut parse = |r: &mut dyn BufRead| {
        for line in r.lines() {
            let line = line.expect("read");
            // Truncated lines fail to parse: still a record read.
            let _ = std::hint::black_box(serde_json::from_str::<serde_json::Value>(&line));
            n += 1;
        }
    };
    let eu = std::fs::File::open(data.join("orders-eu.jsonl")).expect("eu");
    parse(&mut BufReader::with_capacity(1 << 20, eu));
    let us = std::fs::File::open(data.join("orders-us.jsonl.gz")).expect("us");
    parse(&mut BufReader::with_capacity(
        1 << 20,
        flate2::read::GzDecoder::new(us),
    ));
    let mut text = String::new();
    std::fs::File::open(data.join("customers.csv"))
        .expect("csv")
        .read_to_string(&mut text)
        .expect("read csv");
    for line in text.lines().skip(1) {
        std::hint::black_box(line.split(',').count());
        n += 1;
    }
    n
}

struct Run {
    wall: f64,
    cpu: f64,
    rss_mib: f64,
}

fn count(conn: &rusqlite::Connection, sql: &str) -> u64 {
    conn.query_row(sql, [], |r| r.get::<_, i64>(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}")) as u64
}

fn run_weir(bin: &Path, dir: &Path, expected: &serde_json::Value) -> Run {
    let _ = std::fs::remove_dir_all(dir.join("out"));
    let times = dir.join("time.txt");
    let t0 = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%U %S %M", "-o"])
        .arg(&times)
        .arg(bin)
        .arg("run")
        .arg(dir.join("orders.yaml"))
        .args(["--report", "json", "--quiet"])
        .output()
        .expect("run /usr/bin/time (apt-get install time)");
    let wall = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "weir run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = std::fs::read_to_string(&times).expect("times");
    let f: Vec<f64> = t
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    let want = |k: &str| expected[k].as_u64().unwrap_or_else(|| panic!("{k}"));
    assert_eq!(report["dead_lettered"].as_u64(), Some(want("dead_letters")));
    let unique = report["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["name"] == "unique")
        .expect("unique");
    assert_eq!(unique["filtered"].as_u64(), Some(want("duplicates")));
    let db = rusqlite::Connection::open(dir.join("out/shop.db")).expect("db");
    assert_eq!(count(&db, "select count(*) from orders"), want("orders"));
    assert_eq!(
        count(&db, "select count(*) from customer_totals"),
        want("customer_totals")
    );
    assert_eq!(
        count(&db, "select sum(items) from customer_totals"),
        want("items")
    );
    assert_eq!(
        count(&db, "select count(*) from customers"),
        want("customers")
    );
    Run {
        wall,
        cpu: f[0] + f[1],
        rss_mib: f[2] / 1024.0,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let scale = env_u64("B6_SCALE", 20);
    let rounds = env_u64("B6_ROUNDS", 3).max(1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join(format!("target/b6/scale-{scale}"));
    let weir = PathBuf::from(env!("CARGO_BIN_EXE_weir"));
    let generated = Command::new(&weir)
        .args(["gen", "orders", "--scale", &scale.to_string(), "-o"])
        .arg(dir.join("data"))
        .output()
        .expect("weir gen orders");
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let expected: serde_json::Value = serde_json::from_slice(&generated.stdout).expect("expected");
    copy_dir(
        &root.join("examples/pipelines/schemas"),
        &dir.join("schemas"),
    );
    std::fs::copy(
        root.join("examples/pipelines/orders.yaml"),
        dir.join("orders.yaml"),
    )
    .expect("copy orders.yaml");
    let records = expected["order_lines"].as_u64().expect("lines")
        + expected["customers"].as_u64().expect("customers")
        + expected["bad_customers"].as_u64().expect("bad");
    println!("B6 main job, scale {scale}: {records} input records; expected {expected}");

    let before = std::env::var_os("B6_BEFORE").map(PathBuf::from);
    let mut base = Vec::new();
    let mut now = Vec::new();
    let mut old = Vec::new();
    for round in 0..rounds {
        let t0 = Instant::now();
        assert_eq!(baseline(&dir.join("data")), records);
        let b = t0.elapsed().as_secs_f64();
        base.push(records as f64 / b);
        let r = run_weir(&weir, &dir, &expected);
        println!(
            "  round {round}: baseline {:>9.0} rec/s   weir {:>9.0} rec/s  {:.2} us CPU/rec  {:.1} MiB",
            records as f64 / b,
            records as f64 / r.wall,
            r.cpu * 1e6 / records as f64,
            r.rss_mib
        );
        now.push(r);
        if let Some(bin) = &before {
            let r = run_weir(bin, &dir, &expected);
            println!(
                "           before {:>9.0} rec/s  {:.2} us CPU/rec  {:.1} MiB",
                records as f64 / r.wall,
                r.cpu * 1e6 / records as f64,
                r.rss_mib
            );
            old.push(r);
        }
    }
    let rate = |rs: &[Run]| median(rs.iter().map(|r| records as f64 / r.wall).collect());
    let cpu = |rs: &[Run]| median(rs.iter().map(|r| r.cpu * 1e6 / records as f64).collect());
    let rss = |rs: &[Run]| rs.iter().map(|r| r.rss_mib).fold(0.0, f64::max);
    let b = median(base);
    println!("\nmedians over {rounds} rounds (records/s per wall second; CPU = user + system):");
    println!("variant     records/s   vs baseline   CPU us/record   peak RSS");
    println!("baseline   {b:>10.0}       1.000");
    println!(
        "weir       {:>10.0}       {:.3}        {:>8.2}      {:.1} MiB",
        rate(&now),
        rate(&now) / b,
        cpu(&now),
        rss(&now)
    );
    if !old.is_empty() {
        println!(
            "before     {:>10.0}       {:.3}        {:>8.2}      {:.1} MiB",
            rate(&old),
            rate(&old) / b,
            cpu(&old),
            rss(&old)
        );
        println!("weir / before: {:.2}x", rate(&now) / rate(&old));
    }
}
