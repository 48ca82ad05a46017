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
    signal_drains_what_is_in_flight_and_reports("-INT", 130);
}

/// systemd and Kubernetes stop a service with SIGTERM: the same drain, and
/// exit status 143 (before issue 8 the process died at once, no report).
#[test]
fn sigterm_drains_what_is_in_flight_and_reports() {
    signal_drains_what_is_in_flight_and_reports("-TERM", 143);
}

/// Sends `signal` mid-run: the run drains, prints its report and exits
/// with `code` (128 + the signal's number).
fn signal_drains_what_is_in_flight_and_reports(signal: &str, code: i32) {
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
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
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

/// `weir ARGS` in `dir`, killed after a minute (a hang fails the test).
fn weir_in(dir: &Path, args: &[&str]) -> std::process::Output {
    assert_cmd::Command::cargo_bin("weir")
        .unwrap()
        .current_dir(dir)
        .args(args)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap()
}

/// `weir run p.yaml --report json [--resume]`, which must succeed.
fn run_ok(dir: &Path, resume: bool) -> serde_json::Value {
    let mut args = vec!["run", "p.yaml", "--quiet", "--report", "json"];
    if resume {
        args.push("--resume");
    }
    let out = weir_in(dir, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const SMALL: &str = "\
inputs:
  - name: in
    decode_workers: 1
    file: { path: in.jsonl }
outputs:
  - name: db
    sqlite: { path: out.db, table: t, key: [id], columns: { id: integer, v: text } }
";

fn lines(ids: std::ops::Range<u64>, v: &str) -> String {
    ids.map(|i| format!("{{\"id\":{i},\"v\":\"{v}\"}}\n"))
        .collect()
}

/// `(id, v)` rows of the small pipeline's table.
fn small_table(dir: &Path) -> Vec<(i64, String)> {
    let c = rusqlite::Connection::open(dir.join("out.db")).unwrap();
    let mut s = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn rows(ids: std::ops::Range<i64>, v: &str) -> Vec<(i64, String)> {
    ids.map(|i| (i, v.to_string())).collect()
}

/// A small pipeline run to the end over ids 1..=5 ("a"): its checkpoint
/// says all 5 lines are done.
fn finished_small_run() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), SMALL).unwrap();
    std::fs::write(dir.path().join("in.jsonl"), lines(1..6, "a")).unwrap();
    let report = run_ok(dir.path(), false);
    assert_eq!(stage_in(&report, "in"), 5);
    assert_eq!(checkpoint_line(dir.path()), 5);
    dir
}

#[cfg(unix)]
fn inode(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
}

/// An input rewritten, truncated or rotated under the same name is not the
/// file the checkpoint counted: `--resume` refuses, naming the file, the
/// reason and the input's YAML line, and writes nothing. (It used to skip
/// the new file's first 5 lines silently.)
#[cfg(unix)]
#[test]
fn resume_refuses_an_input_that_was_rewritten() {
    let refused = |dir: &Path, why: &str| {
        let out = weir_in(dir, &["run", "p.yaml", "--resume"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "\
error: --resume: in.jsonl changed since the checkpoint other than by growing ({why}); resuming would skip its first 5 lines. Run without --resume to start over, or set `on_rewrite: restart` on this input to read it again from line 1
  --> p.yaml:4:19
  |
4 |     file: {{ path: in.jsonl }}
  |                   ^

1 error in p.yaml
"
            )
        );
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(small_table(dir), rows(1..6, "a"), "nothing was written");
        assert_eq!(checkpoint_line(dir), 5, "the checkpoint was kept");
    };
    let input = |dir: &Path| dir.join("in.jsonl");

    // Truncated and rewritten in place: shorter.
    let dir = finished_small_run();
    let before = std::fs::metadata(input(dir.path())).unwrap().len();
    std::fs::write(input(dir.path()), lines(10..13, "b")).unwrap();
    let after = std::fs::metadata(input(dir.path())).unwrap().len();
    refused(
        dir.path(),
        &format!("it is shorter: {after} bytes, {before} when checkpointed"),
    );

    // Rewritten in place, same length, other content.
    let dir = finished_small_run();
    std::fs::write(input(dir.path()), lines(1..6, "b")).unwrap();
    refused(dir.path(), "its content changed");

    // Rotated: a new, longer file renamed over the old one.
    let dir = finished_small_run();
    let was = inode(&input(dir.path()));
    std::fs::write(dir.path().join("new.jsonl"), lines(10..20, "b")).unwrap();
    std::fs::rename(dir.path().join("new.jsonl"), input(dir.path())).unwrap();
    let now = inode(&input(dir.path()));
    refused(
        dir.path(),
        &format!("it was replaced (inode {now}, was {was}) and its content changed"),
    );
}

/// With `on_rewrite: restart`, a rewritten input is read again from line
/// 1, and the checkpoint then counts the new file.
#[test]
fn resume_restarts_a_rewritten_input_when_asked() {
    let dir = finished_small_run();
    std::fs::write(
        dir.path().join("p.yaml"),
        SMALL.replace(
            "{ path: in.jsonl }",
            "{ path: in.jsonl, on_rewrite: restart }",
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("in.jsonl"), lines(3..10, "b")).unwrap();
    let report = run_ok(dir.path(), true);
    assert_eq!(stage_in(&report, "in"), 7, "every line of the new file");
    let mut want = rows(1..3, "a");
    want.extend(rows(3..10, "b"));
    assert_eq!(small_table(dir.path()), want);
    assert_eq!(checkpoint_line(dir.path()), 7);
    // Resumed again: the new file is done, nothing is read twice.
    let report = run_ok(dir.path(), true);
    assert_eq!(stage_in(&report, "in"), 0);
    assert_eq!(small_table(dir.path()), want);
}

/// An input that only grew (a log being appended to) resumes after the
/// lines already done.
#[test]
fn resume_continues_an_input_that_grew() {
    let dir = finished_small_run();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("in.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, lines(6..9, "c").as_bytes()).unwrap();
    drop(f);
    let report = run_ok(dir.path(), true);
    assert_eq!(stage_in(&report, "in"), 3, "only the appended lines");
    let mut want = rows(1..6, "a");
    want.extend(rows(6..9, "c"));
    assert_eq!(small_table(dir.path()), want);
    assert_eq!(checkpoint_line(dir.path()), 8);
}

/// About one line in ten is dead-lettered (by the filter; 0.4% by decode),
/// so letters are written all through a run.
const DEAD_LETTERS: &str = r#"
inputs:
  - name: events
    file: { path: events.jsonl }
stages:
  - name: shape
    jq: { program: '{id, user, amount}' }
  - name: small
    filter: { condition: '(.amount // 0) < 900', drop_reason: big_amount }
outputs:
  - name: db
    sqlite:
      path: out/e.db
      table: events
      key: [id]
      columns: { id: integer, user: text, amount: real, kind: text }
dead_letter: { path: out/dead.jsonl }
"#;

/// The dead letters of `dir` as a multiset: each letter without its
/// attempt count (which may differ between runs), with how many times it
/// is in the file. Every line must be a whole JSON object.
fn letters(dir: &Path) -> std::collections::BTreeMap<String, usize> {
    let text = std::fs::read_to_string(dir.join("out/dead.jsonl")).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "a torn last line");
    let mut set = std::collections::BTreeMap::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a dead letter ({e}): {line}"));
        v.as_object_mut().unwrap().remove("attempts");
        *set.entry(v.to_string()).or_insert(0) += 1;
    }
    set
}

/// After `kill -9` and `--resume` (twice), the dead-letter file holds each
/// dead letter once: the same set as an uninterrupted run's, no repeats,
/// none missing. Lines re-processed after the last checkpoint used to
/// append their letters again.
#[test]
fn resume_after_kill_9_writes_each_dead_letter_once() {
    let with_letters = |dir: &Path| {
        setup(dir);
        std::fs::write(dir.join("p.yaml"), DEAD_LETTERS).unwrap();
    };
    let reference = tempfile::tempdir().unwrap();
    with_letters(reference.path());
    let full = run_to_end(reference.path(), false);
    let want = letters(reference.path());
    assert_eq!(
        want.values().sum::<usize>() as u64,
        full["dead_lettered"].as_u64().unwrap()
    );
    assert!(want.values().all(|&n| n == 1));
    assert!(want.len() > 25_000, "{}", want.len());

    let dir = tempfile::tempdir().unwrap();
    with_letters(dir.path());
    let first = run_and_kill(dir.path(), false, 0);
    let second = run_and_kill(dir.path(), true, first);
    assert!(second > first, "the resumed run made no progress");
    let last = run_to_end(dir.path(), true);
    assert_eq!(stage_in(&last, "events"), LINES - second as u64);
    let got = letters(dir.path());
    let repeated: Vec<_> = got.iter().filter(|(_, n)| **n > 1).take(3).collect();
    assert!(
        repeated.is_empty(),
        "{} letters repeated, e.g. {repeated:?}",
        got.values().filter(|n| **n > 1).count()
    );
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(3)
        .collect();
    assert!(missing.is_empty(), "missing, e.g. {missing:?}");
    assert_eq!(got, want);
    // And the table is the uninterrupted one.
    assert_eq!(
        table(&dir.path().join("out/e.db")),
        table(&reference.path().join("out/e.db"))
    );
}

/// Per-user totals over the whole input, in SQLite.
const TOTALS: &str = r#"
inputs:
  - name: events
    file: { path: events.jsonl }
stages:
  - name: totals
    aggregate:
      group_by: .user
      fields: { n: count }
  - name: row
    jq: { program: '{user: .key, n}' }
outputs:
  - name: db
    sqlite:
      path: out/t.db
      table: totals
      key: [user]
      columns: { user: text, n: integer }
"#;

fn totals(db: &Path) -> Vec<(String, i64)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut s = c
        .prepare("SELECT user, n FROM totals ORDER BY user")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Ctrl-C in a run with a whole-input aggregate, then `--resume`: the
/// totals count every record once. Before, the stopped run's aggregate
/// wrote the totals of what it had read and settled those lines as done;
/// the resumed run skipped them and overwrote the totals without them.
#[test]
fn ctrl_c_then_resume_keeps_whole_input_totals_exact() {
    let whole = tempfile::tempdir().unwrap();
    setup(whole.path());
    std::fs::write(whole.path().join("p.yaml"), TOTALS).unwrap();
    run_to_end(whole.path(), false);
    let want = totals(&whole.path().join("out/t.db"));
    assert!(!want.is_empty());

    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    std::fs::write(dir.path().join("p.yaml"), TOTALS).unwrap();
    let child = weir()
        .current_dir(dir.path())
        .args(["run", "p.yaml", "--quiet", "--report", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        stage_in(&report, "events") < LINES,
        "the run was not stopped early"
    );
    // Nothing partial was written.
    assert!(
        !dir.path().join("out/t.db").exists() || totals(&dir.path().join("out/t.db")).is_empty()
    );
    run_to_end(dir.path(), true);
    assert_eq!(totals(&dir.path().join("out/t.db")), want);
}
