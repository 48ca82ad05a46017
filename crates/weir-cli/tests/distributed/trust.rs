//! Issue 8's distributed defects, end to end through the `weir` binary:
//! records too large for a message, a worker on another version of the
//! pipeline, a coordinator killed in a job whose coordinator merges two
//! inputs, a second coordinator on a running job, a failed job run again,
//! dead letters after a coordinator restart. Each test failed before its
//! fix (noted per test).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use weir_testkit::NatsServer;

use crate::util::{
    Deadline, Dir, SHORT, assert_same_rows, drain, parse_jsonl, report_of, rows, run_local,
    wait_done, wait_started,
};

/// A pass-through remote stage into an upserting table.
const WIDE: &str = r#"
inputs:
  - name: wide
    file: { path: wide.jsonl }
stages:
  - name: work
    remote: true
    jq: { program: '.n = (.id * 2)' }
outputs:
  - name: db
    sqlite:
      path: out/w.db
      table: wide
      key: [id]
      columns: { id: integer, n: integer, pad: text }
broker:
  records_per_message: 256
"#;

/// 2,000 records of 8 KB (256 to a message would be 2 MB, over the
/// broker's 1 MiB max_payload) and, at line 1001, one of 3 MB. Before the
/// fix the job stalled at a few hundred rows, forever, with nothing logged.
#[test]
fn records_too_large_for_a_message_are_split_or_dead_lettered() {
    let deadline = Deadline::new();
    let d = Dir::new();
    d.file("p.yaml", WIDE);
    let mut f = std::io::BufWriter::new(std::fs::File::create(d.join("wide.jsonl")).unwrap());
    for i in 0..2001u64 {
        let pad = if i == 1000 { 3 << 20 } else { 8 * 1024 };
        writeln!(f, r#"{{"id":{i},"pad":"{}"}}"#, "x".repeat(pad)).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    run_local(&d, "p.yaml", &deadline);
    let local = rows(
        &d.join("out/w.db"),
        "SELECT id, n, pad FROM wide ORDER BY id",
    );
    assert_eq!(local.len(), 2001);
    std::fs::remove_dir_all(d.join("out")).unwrap();

    let server = NatsServer::start();
    let url = server.url();
    let mut coordinator = d.coordinator("p.yaml", &url, "wide");
    let mut workers = vec![d.worker("w1", "p.yaml", &url, "wide", 2)];
    let report = report_of(&mut coordinator, Duration::from_secs(90), &deadline);
    let got = rows(
        &d.join("out/w.db"),
        "SELECT id, n, pad FROM wide ORDER BY id",
    );
    // Everything but the 3 MB record, which no message can carry.
    let want: Vec<_> = local
        .iter()
        .filter(|r| r[0] != rusqlite::types::Value::Integer(1000))
        .cloned()
        .collect();
    assert_same_rows("wide", &got, &want);
    assert_eq!(report["broker_dead_letters"], 1, "{report}");
    let dlq = d.dlq(&url, "wide", &deadline);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0]["position"], "wide.jsonl:1001", "{}", dlq[0]);
    let error = dlq[0]["error"].as_str().unwrap();
    assert!(error.starts_with("too_large: "), "{error}");
    // The dead-letter file has it too, with its position.
    let file = std::fs::read_to_string(d.join("dead-letters.jsonl")).unwrap();
    let letters = parse_jsonl(&file);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["position"], "wide.jsonl:1001");
    drain(&mut workers, &deadline);
}

/// A worker started on an edited copy (its jq stage doubles `amount`)
/// must refuse to join, exit 2, and say what differs; before the fix it
/// joined, and the table came out wrong with exit 0.
#[test]
fn a_worker_on_another_pipeline_version_refuses_to_join() {
    let deadline = Deadline::new();
    let d = crate::util::events_dir();
    let edited = crate::util::EVENTS_PIPELINE.replace(
        "| .tags = (.tags | join(\",\"))",
        "| .tags = (.tags | join(\",\"))\n        | .amount = (.amount * 2)",
    );
    assert_ne!(edited, crate::util::EVENTS_PIPELINE);
    d.file("edited.yaml", edited);
    let server = NatsServer::start();
    let url = server.url();
    let mut coordinator = d.coordinator("p.yaml", &url, "versions");
    wait_started(&mut coordinator, &deadline);
    let mut wrong = d.worker("wrong", "edited.yaml", &url, "versions", 2);
    let st = wrong.wait(Duration::from_secs(20), &deadline);
    assert_eq!(st.code(), Some(2), "{}", wrong.stderr());
    let err = wrong.stderr();
    assert!(
        err.contains("differs from the one job 'versions' runs")
            && err.contains("stage 'work': its configuration"),
        "{err}"
    );
    // The right worker finishes the job; the table is the local run's.
    let mut workers = vec![d.worker("right", "p.yaml", &url, "versions", 2)];
    report_of(&mut coordinator, Duration::from_secs(90), &deadline);
    assert_same_rows(
        "events",
        &crate::util::events_table(&d.join("out/e.db")),
        crate::util::events_reference(),
    );
    drain(&mut workers, &deadline);
}

/// Two inputs merged by a coordinator stage, then a remote stage. The
/// merge interleaves the inputs differently in every run; before the fix
/// its messages had ids `<producer>:<n>` all the same, so after a
/// coordinator restart the broker dropped new content as duplicates of old
/// ids and rows were lost.
const MERGED: &str = r#"
inputs:
  - name: a
    file: { path: a.jsonl }
  - name: b
    file: { path: b.jsonl }
stages:
  - name: tag
    from: [a, b]
    jq: { program: '.src = (if .id % 2 == 0 then "even" else "odd" end)' }
  - name: work
    remote: true
    jq: { program: '.score = (.id * 3)' }
outputs:
  - name: db
    sqlite:
      path: out/m.db
      table: merged
      key: [id]
      columns: { id: integer, src: text, score: integer }
broker:
  records_per_message: 10
  ack_wait_secs: 2
"#;

fn merged_dir(n: u64) -> Dir {
    let d = Dir::new();
    d.file("p.yaml", MERGED);
    let mut a = String::new();
    let mut b = String::new();
    for i in 0..n {
        let line = format!("{{\"id\":{i}}}\n");
        if i % 2 == 0 {
            a.push_str(&line)
        } else {
            b.push_str(&line)
        }
    }
    d.file("a.jsonl", a);
    d.file("b.jsonl", b);
    d
}

#[test]
fn a_coordinator_killed_in_a_merging_job_loses_nothing_when_run_again() {
    let deadline = Deadline::new();
    let n = 40_000;
    let d = merged_dir(n);
    run_local(&d, "p.yaml", &deadline);
    let want = rows(&d.join("out/m.db"), "SELECT * FROM merged ORDER BY id");
    assert_eq!(want.len() as u64, n);
    std::fs::remove_dir_all(d.join("out")).unwrap();

    let server = NatsServer::start();
    let url = server.url();
    let mut first = d.coordinator("p.yaml", &url, "merged");
    wait_started(&mut first, &deadline);
    let mut workers = vec![d.worker("w1", "p.yaml", &url, "merged", 2)];
    wait_done(
        &d,
        &url,
        "merged",
        "work",
        n / 10 / 4,
        &mut first,
        &deadline,
    );
    first.kill9();
    let mut second = d.coordinator("p.yaml", &url, "merged");
    let report = report_of(&mut second, Duration::from_secs(90), &deadline);
    assert!(second.stderr().contains("resumed"), "{}", second.stderr());
    let got = rows(&d.join("out/m.db"), "SELECT * FROM merged ORDER BY id");
    assert_same_rows("merged", &got, &want);
    assert_eq!(report["broker_dead_letters"], 0, "{report}");
    drain(&mut workers, &deadline);
}

/// A second `weir run --broker` on a running job refuses (exit 1, naming
/// the holder) and leaves the first alone, which finishes exactly. Before
/// the fix the second deleted the first's consumers and both wrote the
/// job's state.
#[test]
fn a_second_coordinator_on_a_running_job_refuses() {
    let deadline = Deadline::new();
    let d = crate::util::events_dir();
    let server = NatsServer::start();
    let url = server.url();
    let mut first = d.coordinator("p.yaml", &url, "twice");
    wait_started(&mut first, &deadline);
    let r = d.run(
        &[
            "run", "p.yaml", "--broker", &url, "--job", "twice", "--quiet",
        ],
        SHORT,
        &deadline,
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("job 'twice' is in use by weir run --broker (pid"),
        "{}",
        r.stderr
    );
    let mut workers = vec![d.worker("w1", "p.yaml", &url, "twice", 2)];
    report_of(&mut first, Duration::from_secs(90), &deadline);
    assert_same_rows(
        "events",
        &crate::util::events_table(&d.join("out/e.db")),
        crate::util::events_reference(),
    );
    drain(&mut workers, &deadline);
}

/// `weir status --job` of a job that does not exist fails (it said "no
/// jobs" and exited 0).
#[test]
fn status_of_an_unknown_job_fails() {
    let deadline = Deadline::new();
    let d = Dir::new();
    let server = NatsServer::start();
    let r = d.run(
        &["status", "--broker", &server.url(), "--job", "nope"],
        SHORT,
        &deadline,
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("no job 'nope'"), "{}", r.stderr);
}

/// Input with malformed lines (every 50th): they are dead-lettered by the
/// coordinator's decode stage. After a kill -9 of the coordinator and a
/// rerun, each dead letter is listed once (before the fix the rerun
/// republished them under new ids: 5,756 letters for 3,806 unique).
#[test]
fn dead_letters_are_not_repeated_after_a_coordinator_restart() {
    let deadline = Deadline::new();
    let d = crate::util::events_dir();
    let path = d.join("events.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if i % 50 == 7 {
            out.push_str("{not json\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&path, out).unwrap();
    let bad = text
        .lines()
        .enumerate()
        .filter(|(i, _)| i % 50 == 7)
        .count();
    let server = NatsServer::start();
    let url = server.url();
    let mut first = d.coordinator("p.yaml", &url, "letters");
    wait_started(&mut first, &deadline);
    let mut workers = vec![d.worker("w1", "p.yaml", &url, "letters", 2)];
    wait_done(&d, &url, "letters", "work", 1000, &mut first, &deadline);
    first.kill9();
    let mut second = d.coordinator("p.yaml", &url, "letters");
    let report = report_of(&mut second, Duration::from_secs(90), &deadline);
    let dlq = d.dlq(&url, "letters", &deadline);
    let mut by_position: BTreeMap<String, usize> = BTreeMap::new();
    for e in &dlq {
        *by_position
            .entry(e["position"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let repeated: Vec<_> = by_position.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "repeated dead letters: {repeated:?}");
    assert_eq!(by_position.len(), bad, "every bad line once");
    assert_eq!(
        report["broker_dead_letters"],
        Value::from(bad as u64),
        "{report}"
    );
    let file = parse_jsonl(&std::fs::read_to_string(d.join("dead-letters.jsonl")).unwrap());
    assert_eq!(file.len(), bad, "the dead-letter file has each once");
    drain(&mut workers, &deadline);
}

/// A remote stage feeding a whole-input aggregate in the coordinator: the
/// aggregate holds its inbox's messages until it has them all, so an
/// inbox bounded by `edge_capacity` (here 20 messages of 10 records, for
/// 2,000 records) filled up and the job hung forever (found measuring
/// coordinator memory at 5M records with the default 10,000). Such an
/// inbox is not bounded now; the job ends with the local run's totals.
#[test]
fn a_whole_input_aggregate_behind_a_remote_stage_is_not_deadlocked_by_edge_capacity() {
    let deadline = Deadline::new();
    let d = Dir::new();
    d.file(
        "p.yaml",
        r#"
inputs:
  - name: events
    file: { path: events.jsonl }
stages:
  - name: work
    remote: true
    jq: { program: '{user, cents: (.amount * 100 | round)}' }
  - name: per-user
    aggregate:
      group_by: .user
      fields: { count: count, cents: { sum: .cents } }
      window: all
outputs:
  - name: db
    sqlite:
      path: out/a.db
      table: users
      key: [key]
      columns: { key: text, count: integer, cents: integer }
broker:
  records_per_message: 10
  edge_capacity: 20
"#,
    );
    crate::util::write_events(&d.join("events.jsonl"), 2_000);
    run_local(&d, "p.yaml", &deadline);
    let want = rows(&d.join("out/a.db"), "SELECT * FROM users ORDER BY key");
    std::fs::remove_dir_all(d.join("out")).unwrap();
    let server = NatsServer::start();
    let url = server.url();
    let mut coordinator = d.coordinator("p.yaml", &url, "holds");
    let mut workers = vec![d.worker("w1", "p.yaml", &url, "holds", 2)];
    report_of(&mut coordinator, Duration::from_secs(60), &deadline);
    let got = rows(&d.join("out/a.db"), "SELECT * FROM users ORDER BY key");
    assert_same_rows("users", &got, &want);
    drain(&mut workers, &deadline);
}

/// A record whose jq evaluation cannot be interrupted (one native call
/// running for minutes) on a remote stage: the worker running it reports
/// the stage, position and limit and exits (its thread cannot be stopped),
/// so it stops extending the message's ack; the broker delivers the message
/// to another worker, up to `max_deliver` times, and the coordinator then
/// dead-letters it. Every other record is written. Before issue 8 the
/// worker hung with the message in flight, renewed forever by in-progress
/// acks, and the job never ended.
#[test]
fn a_record_that_hangs_jq_on_a_worker_is_dead_lettered_after_max_deliver() {
    let deadline = Deadline::new();
    let d = Dir::new();
    d.file(
        "p.yaml",
        r#"
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: slow
    remote: true
    jq:
      program: '.n as $n | .hits = ("a" * $n | indices(("a" * ($n / 2 | floor)) + "b") | length)'
      limits: { timeout_ms: 300 }
outputs:
  - name: db
    sqlite: { path: out/h.db, table: t, key: [id], columns: { id: integer, hits: integer } }
broker:
  records_per_message: 1
  max_deliver: 2
  ack_wait_secs: 2
"#,
    );
    let mut input = String::new();
    for id in 0..20 {
        let n = if id == 7 { 4_000_000 } else { 3 };
        input.push_str(&format!("{{\"id\":{id},\"n\":{n}}}\n"));
    }
    d.file("in.jsonl", input);
    let server = NatsServer::start();
    let url = server.url();
    let mut coordinator = d.coordinator("p.yaml", &url, "hang");
    wait_started(&mut coordinator, &deadline);
    // Workers die on the stuck record; replace them until the job ends.
    let mut workers = vec![d.worker("w0", "p.yaml", &url, "hang", 1)];
    let mut died = Vec::new();
    let mut n = 1;
    while coordinator.try_status().is_none() {
        deadline.check("the job to end");
        let mut i = 0;
        while i < workers.len() {
            if let Some(st) = workers[i].try_status() {
                let w = workers.remove(i);
                died.push((w.name.clone(), st, w.stderr()));
                workers.push(d.worker(&format!("w{n}"), "p.yaml", &url, "hang", 1));
                n += 1;
            } else {
                i += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = report_of(&mut coordinator, Duration::from_secs(5), &deadline);
    assert_eq!(died.len(), 2, "one worker per delivery: {died:?}");
    for (name, st, err) in &died {
        assert_eq!(st.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("stage 'slow': the jq evaluation of the record at in.jsonl:8 took longer than 300ms (limits.timeout_ms) and cannot be interrupted"),
            "{name}: {err}"
        );
    }
    let ids: Vec<_> = rows(&d.join("out/h.db"), "SELECT id FROM t ORDER BY id");
    assert_eq!(ids.len(), 19, "every other record: {ids:?}");
    let dlq = d.dlq(&url, "hang", &deadline);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0]["position"], "in.jsonl:8");
    assert!(
        dlq[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("no result after 2 deliveries"),
        "{}",
        dlq[0]
    );
    assert_eq!(report["swept"], 1, "{report}");
    drain(&mut workers, &deadline);
}
