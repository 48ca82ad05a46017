//! `weir run --resume` after `kill -9`: nothing lost, nothing duplicated.
//!
//! A run is killed (SIGKILL, no chance to clean up) twice in a row while it
//! writes to SQLite; each time the next run resumes from the checkpoint. The
//! final table must equal the table of an uninterrupted run, and the resumed
//! runs must really have skipped the lines the killed ones had finished.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PIPELINE: &str = r#"
inputs:
  - name: events
    file: { path: events.jsonl }
stages:
  - name: shape
    jq: { program: '{id, user, amount, kind: (.kind | ascii_downcase)}' }
outputs:
  - name: db
    sqlite:
      path: out/e.db
      table: events
      key: [id]
      columns: { id: integer, user: text, amount: real, kind: text }
"#;

const LINES: u64 = 300_000;

fn weir() -> Command {
    Command::new(assert_cmd::cargo::cargo_bin("weir"))
}

fn setup(dir: &Path) {
    std::fs::write(dir.join("p.yaml"), PIPELINE).unwrap();
    let st = weir()
        .args([
            "gen",
            "events",
            "--seed",
            "7",
            "--lines",
            &LINES.to_string(),
            "-o",
        ])
        .arg(dir.join("events.jsonl"))
        .status()
        .unwrap();
    assert!(st.success());
}

/// All rows, ordered, as text.
fn table(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut s = c
        .prepare("SELECT id, user, amount, kind FROM events ORDER BY id")
        .unwrap();
    s.query_map([], |r| {
        Ok(format!(
            "{}|{:?}|{:?}|{:?}",
            r.get::<_, i64>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<f64>>(2)?,
            r.get::<_, Option<String>>(3)?
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn checkpoint_line(dir: &Path) -> i64 {
    let Ok(c) = rusqlite::Connection::open(dir.join(".weir/checkpoints.db")) else {
        return 0;
    };
    c.query_row("SELECT COALESCE(MAX(line), 0) FROM checkpoints", [], |r| {
        r.get(0)
    })
    .unwrap_or(0)
}

/// Starts a run and kills it with SIGKILL once it has checkpointed some
/// progress beyond `after`; returns the checkpoint it left.
fn run_and_kill(dir: &Path, resume: bool, after: i64) -> i64 {
    let mut cmd = weir();
    cmd.current_dir(dir).args(["run", "p.yaml", "--quiet"]);
    if resume {
        cmd.arg("--resume");
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "no progress was checkpointed within 60 s"
        );
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the run finished ({st}) before it could be killed: make the input larger");
        }
        if checkpoint_line(dir) > after + 10_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    checkpoint_line(dir)
}

fn run_to_end(dir: &Path, resume: bool) -> serde_json::Value {
    let mut cmd = weir();
    cmd.current_dir(dir)
        .args(["run", "p.yaml", "--quiet", "--report", "json"]);
    if resume {
        cmd.arg("--resume");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stage_in(report: &serde_json::Value, name: &str) -> u64 {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()["in"]
        .as_u64()
        .unwrap()
}

#[test]
fn resume_after_kill_9_loses_and_duplicates_nothing() {
    let reference = tempfile::tempdir().unwrap();
    setup(reference.path());
    let full = run_to_end(reference.path(), false);
    assert_eq!(stage_in(&full, "events"), LINES);
    let want = table(&reference.path().join("out/e.db"));
    assert!(want.len() > 290_000, "{}", want.len());

    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let first = run_and_kill(dir.path(), false, 0);
    let second = run_and_kill(dir.path(), true, first);
    assert!(second > first, "the resumed run made no progress");
    let last = run_to_end(dir.path(), true);
    // The last run skipped what the killed runs had finished...
    assert_eq!(stage_in(&last, "events"), LINES - second as u64);
    // ...and the table is exactly the uninterrupted one: no row lost, none twice.
    assert_eq!(table(&dir.path().join("out/e.db")), want);
}

#[test]
fn resume_refuses_outputs_it_cannot_resume() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "{\"a\":1}\n").unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "inputs:\n  - name: i\n    file: { path: in.jsonl }\noutputs:\n  - name: o\n    file: { path: out.jsonl }\n",
    )
    .unwrap();
    let out = weir()
        .current_dir(dir.path())
        .args(["run", "p.yaml", "--resume"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--resume: output 'o' writes a file"), "{err}");
    assert!(err.contains("p.yaml:5:11"), "{err}");
}

#[test]
fn ctrl_c_drains_what_is_in_flight_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let child = weir()
        .current_dir(dir.path())
        .args(["run", "p.yaml", "--quiet", "--report", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint_line(dir.path()) == 0 {
        assert!(Instant::now() < deadline, "no progress within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("interrupted: draining"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["cancelled"], true);
    let read = stage_in(&report, "events");
    assert!(read < LINES, "the run was not stopped early");
    // Drained: everything read was decoded and written or dead-lettered.
    let written = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "db")
        .unwrap()["ok"]
        .as_u64()
        .unwrap();
    let dead = report["dead_lettered"].as_u64().unwrap();
    assert_eq!(read, written + dead);
    assert_eq!(table(&dir.path().join("out/e.db")).len() as u64, written);
}
