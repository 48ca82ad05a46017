//! B8: the `postgres` sink writing B4's events, upserting on the key,
//! against `psql \copy` of the same rows into the same server.
//!
//! Input: the valid lines of B4's events (`weir gen events --seed 42
//! --users 10000`, `B8_LINES` lines, default 1,000,000; the ~0.7% that are
//! truncated or miss a field are left out, so both sides write the same
//! rows), as JSON Lines for weir and as CSV for psql, generated into
//! `target/b8/` before timing. The server is the test fixture's (a fresh
//! PostgreSQL cluster on loopback, `fsync=off`: both sides pay the same
//! commits, and neither waits for this machine's disk).
//!
//! Each round, on a freshly created table `events (id bigint PRIMARY KEY,
//! user text, ts bigint, kind text, amount double precision, tags jsonb)`:
//!
//! * **copy** (the baseline): `psql -c "\copy events (...) FROM 'events.csv'
//!   WITH (FORMAT csv)"`: one COPY, one transaction, no conflict handling;
//! * **weir**: the release `weir run` of a pipeline `file -> postgres` with
//!   `key: [id]` (an upsert per row, one transaction per batch of 1,024,
//!   checkpoints on as in any `weir run`), timed from start to exit;
//! * **weir again**, on the full table: every row now conflicts and is
//!   updated (shown, not compared: COPY cannot update);
//! * **weir append**, on a fresh table: the same pipeline without `key`
//!   (append-only, so the sink writes each batch with one `COPY ... FROM
//!   STDIN`), compared with copy as well.
//!
//! Rows/s of wall time; the ratio is weir's over copy's in the same round
//! (target >= 0.5). Each run's table is checked (row count, sum of ids);
//! medians over rounds.
//!
//! Run: `cargo bench -p weir-cli --bench b8_postgres`
//! (`B8_ROUNDS`, default 3; `B8_LINES`, default 1000000).
#![allow(clippy::print_stdout, missing_docs)]

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use weir_testkit::PgServer;

const TARGET: f64 = 0.5;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Writes `events.jsonl` and `events.csv` (the valid events); returns
/// (rows, sum of ids).
fn generate(dir: &Path, lines: u64) -> (u64, u64) {
    let mut jsonl = BufWriter::new(std::fs::File::create(dir.join("events.jsonl")).unwrap());
    let mut csv = BufWriter::new(std::fs::File::create(dir.join("events.csv")).unwrap());
    let (mut rows, mut ids) = (0, 0);
    for line in weir_connectors::sources::events::events(42, lines, 10_000) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let f = |k: &str| v.get(k).filter(|x| !x.is_null());
        let (Some(id), Some(user), Some(ts), Some(kind), Some(amount), Some(tags)) = (
            f("id"),
            f("user"),
            f("ts"),
            f("kind"),
            f("amount"),
            f("tags"),
        ) else {
            continue;
        };
        writeln!(jsonl, "{line}").unwrap();
        let tags = tags.to_string().replace('"', "\"\"");
        writeln!(
            csv,
            "{id},{},{ts},{},{amount},\"{tags}\"",
            user.as_str().unwrap(),
            kind.as_str().unwrap()
        )
        .unwrap();
        rows += 1;
        ids += id.as_u64().unwrap();
    }
    jsonl.flush().unwrap();
    csv.flush().unwrap();
    (rows, ids)
}

fn fresh_table(pg: &PgServer) {
    pg.psql(
        "DROP TABLE IF EXISTS events; CREATE TABLE events (id bigint PRIMARY KEY, \"user\" text, \
         ts bigint, kind text, amount double precision, tags jsonb); CHECKPOINT",
    );
}

fn check_table(pg: &PgServer, rows: u64, ids: u64) {
    assert_eq!(
        pg.psql("SELECT count(*), sum(id) FROM events").trim(),
        format!("{rows}|{ids}"),
        "the table after a run"
    );
}

/// Seconds `psql \copy` takes.
fn copy(pg: &PgServer, dir: &Path) -> f64 {
    let t0 = Instant::now();
    let out = Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(pg.url())
        .arg("-c")
        .arg(format!(
            "\\copy events (id, \"user\", ts, kind, amount, tags) FROM '{}' WITH (FORMAT csv)",
            dir.join("events.csv").display()
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "psql \\copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs
}

/// Seconds `weir run` takes.
fn weir(weir: &Path, pg: &PgServer, dir: &Path, rows: u64, pipeline: &str) -> f64 {
    let t0 = Instant::now();
    let out = Command::new(weir)
        .current_dir(dir)
        .args(["run", pipeline, "--quiet", "--report", "json"])
        .env("B8_PG_URL", pg.url())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weir run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let db = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "db")
        .unwrap();
    assert_eq!(db["ok"].as_u64(), Some(rows), "{report}");
    secs
}

fn main() {
    let rounds = env_or("B8_ROUNDS", 3);
    let lines = env_or("B8_LINES", 1_000_000);
    let weir_bin = PathBuf::from(env!("CARGO_BIN_EXE_weir"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("b8");
    std::fs::create_dir_all(&dir).unwrap();
    let (rows, ids) = generate(&dir, lines);
    std::fs::write(
        dir.join("b8.yaml"),
        "\
inputs:
  - name: events
    file: { path: events.jsonl }
outputs:
  - name: db
    postgres:
      url_env: B8_PG_URL
      table: events
      key: [id]
      columns: { id: integer, user: text, ts: integer, kind: text, amount: real, tags: json }
",
    )
    .unwrap();
    std::fs::write(
        dir.join("b8-append.yaml"),
        "\
inputs:
  - name: events
    file: { path: events.jsonl }
outputs:
  - name: db
    postgres:
      url_env: B8_PG_URL
      table: events
      columns: { id: integer, user: text, ts: integer, kind: text, amount: real, tags: json }
",
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(dir.join(".weir"));
    let pg = PgServer::start();
    println!(
        "B8: {rows} events (of {lines} B4 lines) into PostgreSQL, upsert on id, vs psql \\copy"
    );
    let (mut copies, mut weirs, mut agains, mut ratios) = (vec![], vec![], vec![], vec![]);
    let (mut appends, mut append_ratios) = (vec![], vec![]);
    for round in 1..=rounds {
        fresh_table(&pg);
        let c = rows as f64 / copy(&pg, &dir);
        check_table(&pg, rows, ids);
        fresh_table(&pg);
        let _ = std::fs::remove_dir_all(dir.join(".weir"));
        let w = rows as f64 / weir(&weir_bin, &pg, &dir, rows, "b8.yaml");
        check_table(&pg, rows, ids);
        let _ = std::fs::remove_dir_all(dir.join(".weir"));
        let a = rows as f64 / weir(&weir_bin, &pg, &dir, rows, "b8.yaml");
        check_table(&pg, rows, ids);
        fresh_table(&pg);
        let _ = std::fs::remove_dir_all(dir.join(".weir"));
        let ap = rows as f64 / weir(&weir_bin, &pg, &dir, rows, "b8-append.yaml");
        check_table(&pg, rows, ids);
        println!(
            "  round {round}: copy {c:.0} rows/s; weir {w:.0} rows/s (ratio {:.2}); weir again (all updates) {a:.0} rows/s; weir append (COPY) {ap:.0} rows/s (ratio {:.2})",
            w / c,
            ap / c
        );
        appends.push(ap);
        append_ratios.push(ap / c);
        copies.push(c);
        weirs.push(w);
        agains.push(a);
        ratios.push(w / c);
    }
    let ratio = median(ratios);
    println!(
        "postgres sink {:.0} rows/s (updates {:.0} rows/s); psql \\copy {:.0} rows/s; ratio {ratio:.2} (target {TARGET}: {})",
        median(weirs),
        median(agains),
        median(copies),
        if ratio >= TARGET { "met" } else { "missed" }
    );
    println!(
        "postgres sink append-only (COPY) {:.0} rows/s; ratio {:.2}",
        median(appends),
        median(append_ratios)
    );
}
