//! Issue 8's distributed defects, end to end through the `weir` binary:
//! records too large for a message, a worker on another version of the
//! pipeline, a coordinator killed in a job whose coordinator merges two
//! inputs, a second coordinator on a running job, a failed job run again,
//! dead letters after a coordinator restart, a coordinator stopped by
//! SIGINT or SIGTERM mid-input and run again. Each test failed before its
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

/// H1: a coordinator stopped by SIGINT or SIGTERM drains, and a lane (the
/// records of one input) then ends anywhere, mid-message. Before the fix
/// (6567662) the drain published the lane's partial last message under
/// the id the complete message gets when the job is run again: the broker
/// dropped the complete one as a duplicate and the records after the cut
/// were lost. 300 records to a message does not divide the engine's
/// batches of 1,024, so a lane almost always holds a partial message when
/// the signal comes.
const STOPPED: &str = r#"
inputs:
  - name: events
    file: { path: events.jsonl }
stages:
  - name: work
    remote: true
    jq:
      program: |
        .kind |= ascii_downcase
        | .score = (.id * 7 + (.tags | length))
        | .tags = (.tags | join(","))
outputs:
  - name: db
    sqlite:
      path: out/s.db
      table: events
      key: [id]
      columns: { id: integer, user: text, amount: real, kind: text, tags: text, score: integer }
broker:
  records_per_message: 300
  ack_wait_secs: 2
"#;

/// Lines in the stopped job's input; every 97th (from the 14th) is not
/// JSON, each differently. The coordinator publishes some 100,000 records
/// a second (debug build), so a signal sent when its first messages are
/// stored comes well before the end of the input.
const STOPPED_LINES: u64 = 100_000;

/// What the stopped job's dead letters say, one canonical line each, sorted
/// (the distributed file adds `file` and `line`, and its order varies).
fn letter_lines(path: &std::path::Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut lines: Vec<String> = parse_jsonl(&text)
        .iter()
        .map(|v| {
            serde_json::json!({
                "stage": v["stage"],
                "error": v["error"],
                "position": v["position"],
                "input": v["input"],
                "record": v["record"],
                "raw": v["raw"],
            })
            .to_string()
        })
        .collect();
    lines.sort();
    lines
}

/// Messages stored in inbox `work` so far (waiting, held or done).
fn stored(d: &Dir, url: &str, job: &str, deadline: &Deadline) -> u64 {
    let s = d.status(url, job, deadline);
    s.inboxes
        .iter()
        .find(|i| i.name == "work")
        .map_or(0, |i| i.backlog + i.in_flight + i.done)
}

/// The job is stopped twice, mid-input, by SIGINT (exit 130) and, run
/// again, by SIGTERM (exit 143), then run again to its end: the table is
/// the local run's, row for row, and so are the dead letters (the
/// malformed lines, each once).
#[test]
fn a_coordinator_stopped_by_sigint_or_sigterm_loses_nothing_when_run_again() {
    let deadline = Deadline::new();
    let d = Dir::new();
    d.file("p.yaml", STOPPED);
    let path = d.join("events.jsonl");
    crate::util::write_events(&path, STOPPED_LINES);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut input = String::new();
    let mut bad = 0;
    for (i, line) in text.lines().enumerate() {
        if i % 97 == 13 {
            input.push_str(&format!("{{\"id\":{i},\"user\":oops{i}\n"));
            bad += 1;
        } else {
            input.push_str(line);
            input.push('\n');
        }
    }
    std::fs::write(&path, input).unwrap();

    let local = run_local(&d, "p.yaml", &deadline);
    assert_eq!(local["dead_lettered"], bad, "{local}");
    let want = rows(&d.join("out/s.db"), "SELECT * FROM events ORDER BY id");
    assert_eq!(want.len() as u64, STOPPED_LINES - bad);
    let want_letters = letter_lines(&d.join("dead-letters.jsonl"));
    assert_eq!(want_letters.len() as u64, bad);
    std::fs::remove_dir_all(d.join("out")).unwrap();
    std::fs::remove_file(d.join("dead-letters.jsonl")).unwrap();

    let server = NatsServer::start();
    let url = server.url();
    let job = "stopped";
    let mut workers = Vec::new();
    let mut before = 0;
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let mut c = d.coordinator("p.yaml", &url, job);
        // "started on" the first time, "resumed on" the second.
        while !c.stderr().contains(" on nats://") {
            deadline.check("the coordinator to start");
            c.assert_running("before the job started");
            std::thread::sleep(Duration::from_millis(20));
        }
        if workers.is_empty() {
            workers.push(d.worker("w1", "p.yaml", &url, job, 2));
        }
        // Publishing, past what the previous run stored.
        loop {
            deadline.check("the coordinator to publish");
            c.assert_running("before the signal: make the input larger");
            if stored(&d, &url, job, &deadline) >= before + 10 {
                break;
            }
        }
        c.signal(signal);
        let st = c.wait(Duration::from_secs(60), &deadline);
        let err = c.stderr();
        assert_eq!(st.code(), Some(code), "{signal}: {err}");
        assert!(
            err.contains("interrupted: the job stays on the broker"),
            "{signal}: {err}"
        );
        let report: Value = serde_json::from_str(c.stdout().lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{signal}: no JSON report ({e}):\n{}\n{err}", c.stdout()));
        assert_eq!(report["cancelled"], true, "{signal}: {report}");
        // Stopped before the end of the input (else no lane is cut).
        let read = crate::util::stage_counter(&report, "events", "in");
        assert!(
            read < STOPPED_LINES,
            "{signal}: the run read all {read} lines before it stopped: make the input larger"
        );
        before = stored(&d, &url, job, &deadline);
    }
    let partial = rows(&d.join("out/s.db"), "SELECT id FROM events").len() as u64;
    assert!(
        partial < STOPPED_LINES - bad,
        "the stopped runs wrote every row ({partial})"
    );

    let mut last = d.coordinator("p.yaml", &url, job);
    let report = report_of(&mut last, Duration::from_secs(90), &deadline);
    assert!(last.stderr().contains("resumed"), "{}", last.stderr());
    let got = rows(&d.join("out/s.db"), "SELECT * FROM events ORDER BY id");
    assert_same_rows("events", &got, &want);
    assert_eq!(report["broker_dead_letters"], bad, "{report}");
    let got_letters = letter_lines(&d.join("dead-letters.jsonl"));
    assert_eq!(got_letters.len(), want_letters.len(), "dead letters");
    assert_eq!(got_letters, want_letters, "dead letters");
    assert_eq!(
        d.dlq(&url, job, &deadline).len() as u64,
        bad,
        "weir dlq list"
    );
    drain(&mut workers, &deadline);
}

/// A coordinator stopped while its inboxes are full must still exit. The
/// signal stops the coordinator's sources, its inbox readers among them;
/// but its edge sink still has messages to store in `work`, which is full
/// (`edge_capacity: 4`) until the worker settles what it holds, and the
/// worker cannot: its results go to `db`, which fills up now that nobody
/// reads it. Found writing the test above: the coordinator never exits
/// (every run of this test; the same should happen with the default
/// `edge_capacity` of 10,000 when a coordinator slower than its workers
/// keeps both inboxes full, not tried). A second signal aborted it. Fixed:
/// a publish still waiting when the run is stopped gives up, and what it
/// did not store is read again by the resumed run.
#[test]
fn a_coordinator_stopped_while_its_inboxes_are_full_exits() {
    let deadline = Deadline::new();
    let d = Dir::new();
    d.file(
        "p.yaml",
        STOPPED.replace(
            "  records_per_message: 300\n",
            "  records_per_message: 300\n  edge_capacity: 4\n",
        ),
    );
    assert!(
        std::fs::read_to_string(d.join("p.yaml"))
            .unwrap()
            .contains("edge_capacity: 4")
    );
    crate::util::write_events(&d.join("events.jsonl"), 60_000);
    run_local(&d, "p.yaml", &deadline);
    let want = rows(&d.join("out/s.db"), "SELECT * FROM events ORDER BY id");
    std::fs::remove_dir_all(d.join("out")).unwrap();

    let server = NatsServer::start();
    let url = server.url();
    let mut first = d.coordinator("p.yaml", &url, "full");
    wait_started(&mut first, &deadline);
    let mut workers = vec![d.worker("w1", "p.yaml", &url, "full", 1)];
    wait_done(&d, &url, "full", "work", 20, &mut first, &deadline);
    first.signal("-INT");
    let st = first.wait(Duration::from_secs(30), &deadline);
    assert_eq!(st.code(), Some(130), "{}", first.stderr());
    let mut second = d.coordinator("p.yaml", &url, "full");
    report_of(&mut second, Duration::from_secs(60), &deadline);
    let got = rows(&d.join("out/s.db"), "SELECT * FROM events ORDER BY id");
    assert_same_rows("events", &got, &want);
    drain(&mut workers, &deadline);
}

/// A whole-input aggregate in a coordinator stopped by SIGTERM, then run
/// again: the totals must count every record once. Found by the fault
/// suite: the stopped run's aggregate closes its window as if the input
/// had ended, writes totals of what it had, and acknowledges the messages
/// it held; the run again never gets them back, and its totals (upserted
/// over the first run's) miss them (at least the 20 messages held here:
/// 8,400 of 100,000 records in one run). The same happens locally with
/// Ctrl-C and `--resume`. Fixed: a stopped run's whole-input aggregate
/// emits nothing and fails the acks of what it holds.
#[test]
fn a_whole_input_aggregate_stopped_by_sigterm_counts_every_record_when_run_again() {
    whole_input_aggregate_stopped("", "-TERM", 143, "aggregate-stopped");
}

/// The same, stopped by SIGINT while the coordinator waits for room in a
/// full `work` inbox (`edge_capacity: 4`; the aggregate's inbox is
/// unbounded, so room keeps coming back). A review traced a way to double
/// counts here: the edge sink gives up the waiting publish and gives its
/// records back, then sends the batches still in flight cut across the
/// gap, under ids the resumed run never uses. An edge sink whose write
/// failed in a stopping run now sends nothing more. (Two runs of this test
/// on the code before that change passed: the window is narrow; the test
/// stays as the scenario's guard.)
#[test]
fn a_whole_input_aggregate_stopped_during_backpressure_counts_every_record_when_run_again() {
    whole_input_aggregate_stopped("  edge_capacity: 4\n", "-INT", 130, "aggregate-full");
}

/// A remote stage into a whole-input aggregate, stopped by `signal` once
/// the aggregate holds messages, then run again: the totals must be the
/// local run's. `broker` is added to the file's `broker` section.
fn whole_input_aggregate_stopped(broker: &str, signal: &str, code: i32, job: &str) {
    let deadline = Deadline::new();
    let d = Dir::new();
    d.file(
        "p.yaml",
        format!(
            "{}{broker}",
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
  records_per_message: 300
"#
        ),
    );
    crate::util::write_events(&d.join("events.jsonl"), 100_000);
    run_local(&d, "p.yaml", &deadline);
    let want = rows(&d.join("out/a.db"), "SELECT * FROM users ORDER BY key");
    std::fs::remove_dir_all(d.join("out")).unwrap();

    let server = NatsServer::start();
    let url = server.url();
    let mut first = d.coordinator("p.yaml", &url, job);
    wait_started(&mut first, &deadline);
    let mut workers = vec![d.worker("w1", "p.yaml", &url, job, 2)];
    // The aggregate holds some of its inbox's messages.
    loop {
        deadline.check("the aggregate to hold messages");
        first.assert_running("before the aggregate held 20 messages: make the input larger");
        let s = d.status(&url, job, &deadline);
        if s.inboxes
            .iter()
            .any(|i| i.name == "per-user" && i.in_flight >= 20)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    first.signal(signal);
    let st = first.wait(Duration::from_secs(60), &deadline);
    assert_eq!(st.code(), Some(code), "{}", first.stderr());
    let mut second = d.coordinator("p.yaml", &url, job);
    report_of(&mut second, Duration::from_secs(90), &deadline);
    let got = rows(&d.join("out/a.db"), "SELECT * FROM users ORDER BY key");
    let count = |t: &[Vec<rusqlite::types::Value>]| -> i64 {
        t.iter()
            .map(|r| match r[1] {
                rusqlite::types::Value::Integer(n) => n,
                _ => panic!("count {r:?}"),
            })
            .sum()
    };
    assert_eq!(count(&got), count(&want), "records counted");
    assert_same_rows("users", &got, &want);
    drain(&mut workers, &deadline);
}
