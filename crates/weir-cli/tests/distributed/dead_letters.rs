//! Dead letters of a distributed job: a poison record retried through the
//! broker and given up after `max_deliver`, then `weir status`, `weir dlq
//! list` and `weir dlq replay`.

use std::time::Duration;

use serde_json::Value;
use weir_testkit::NatsServer;

use crate::util::{
    Deadline, Dir, Proc, SHORT, drain, parse_jsonl, report_of, rows, wait_started, write_events,
};

/// Records in the poison job's input (ids 0..).
const RECORDS: u64 = 200;

/// The id the stage fails on.
const POISON: i64 = 13;

/// A remote stage that fails on record 13 on every attempt.
const POISONED: &str = r#"
inputs:
  - name: events
    file: { path: events.jsonl }
stages:
  - name: work
    remote: true
    on_error: { retry: { attempts: 3 } }
    jq: { program: 'if .id == 13 then error("poison") else .kind |= ascii_downcase end' }
outputs:
  - name: db
    sqlite:
      path: out/e.db
      table: events
      key: [id]
      columns: { id: integer, kind: text }
broker:
  max_deliver: 3
  records_per_message: 10
"#;

/// The same stages, fixed.
const FIXED: &str = r#"
inputs:
  - name: events
    file: { path: events.jsonl }
stages:
  - name: work
    remote: true
    on_error: { retry: { attempts: 3 } }
    jq: { program: '.kind |= ascii_downcase' }
outputs:
  - name: db
    sqlite:
      path: out/e.db
      table: events
      key: [id]
      columns: { id: integer, kind: text }
broker:
  max_deliver: 3
  records_per_message: 10
"#;

fn ids(d: &Dir) -> Vec<i64> {
    rows(&d.join("out/e.db"), "SELECT id FROM events ORDER BY id")
        .into_iter()
        .map(|r| match r[0] {
            rusqlite::types::Value::Integer(i) => i,
            ref v => panic!("id {v:?}"),
        })
        .collect()
}

fn all_but_poison() -> Vec<i64> {
    (0..RECORDS as i64).filter(|&i| i != POISON).collect()
}

/// Runs the poisoned job to its end with one worker; returns the report
/// and the worker, still running.
fn run_poisoned(d: &Dir, url: &str, job: &str, deadline: &Deadline) -> (Value, Proc) {
    d.file("p.yaml", POISONED);
    d.file("fixed.yaml", FIXED);
    write_events(&d.join("events.jsonl"), RECORDS);
    let mut coordinator = d.coordinator("p.yaml", url, job);
    wait_started(&mut coordinator, deadline);
    let worker = d.worker("worker", "p.yaml", url, job, 2);
    let report = report_of(&mut coordinator, Duration::from_secs(60), deadline);
    (report, worker)
}

/// The one dead letter: the poison record, given up on by `work` after
/// three deliveries.
fn assert_poison_entry(e: &Value) {
    assert_eq!(e["stage"], "work", "{e}");
    assert_eq!(e["record"]["id"], POISON, "{e}");
    assert_eq!(e["attempts"], 3, "{e}");
    let error = e["error"].as_str().unwrap_or_default();
    assert!(error.contains("poison"), "{e}");
    assert!(error.contains("gave up after 3 deliveries"), "{e}");
    assert_eq!(e["position"], "events.jsonl:14", "{e}");
}

#[test]
fn poison_record_is_retried_then_dead_lettered() {
    let deadline = Deadline::new();
    let server = NatsServer::start();
    let url = server.url();
    let job = "poison";
    let d = Dir::new();
    let (report, worker) = run_poisoned(&d, &url, job, &deadline);

    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["broker_dead_letters"], 1, "{report}");
    // Every other record is in the table, including the nine that shared
    // the poison record's message.
    assert_eq!(ids(&d), all_but_poison());

    let dlq = d.dlq(&url, job, &deadline);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_poison_entry(&dlq[0]);
    // The coordinator copied it to the dead-letter file.
    let file = parse_jsonl(&std::fs::read_to_string(d.join("dead-letters.jsonl")).unwrap());
    assert_eq!(file.len(), 1, "{file:?}");
    assert_poison_entry(&file[0]);

    // Two retries (naks), then given up on the third delivery.
    let mut workers = vec![worker];
    drain(&mut workers, &deadline);
    let status = d.status(&url, job, &deadline);
    let work = status.inbox("work");
    assert_eq!(work.dead, 1, "{}", status.text);
    assert_eq!(work.redelivered, 2, "{}", status.text);
    assert_eq!(work.records_in, RECORDS, "{}", status.text);
    assert_eq!(work.records_out, RECORDS - 1, "{}", status.text);
    assert!(
        status.text.contains("last retried error: ") && status.text.contains("poison"),
        "{}",
        status.text
    );
}

#[test]
fn status_and_replay_of_a_dead_letter() {
    let deadline = Deadline::new();
    let server = NatsServer::start();
    let url = server.url();
    let job = "replay";
    let d = Dir::new();
    let (_, worker) = run_poisoned(&d, &url, job, &deadline);
    let mut workers = vec![worker];
    drain(&mut workers, &deadline);

    // Finished: Done, every inbox listed, the dead letter counted.
    let status = d.status(&url, job, &deadline);
    assert_eq!(status.state, "Done", "{}", status.text);
    assert!(
        status.text.contains(&format!("job {job}: Done")),
        "{}",
        status.text
    );
    assert!(status.text.contains("(p.yaml)"), "{}", status.text);
    assert!(status.text.contains("finished in "), "{}", status.text);
    let names: Vec<(&str, bool)> = status
        .inboxes
        .iter()
        .map(|i| (i.name.as_str(), i.pool))
        .collect();
    assert_eq!(names, [("work", true), ("db", false)], "{}", status.text);
    for i in &status.inboxes {
        assert_eq!((i.backlog, i.in_flight), (0, 0), "{}", status.text);
    }
    assert_eq!(status.dead_letters, 1, "{}", status.text);

    // Replayed: back in the stage's inbox, the job running again.
    let dlq = d.dlq(&url, job, &deadline);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let seq = dlq[0]["seq"].as_u64().expect("seq").to_string();
    let r = d
        .run(
            &[
                "dlq", "replay", "--broker", &url, "--job", job, "--seq", &seq,
            ],
            SHORT,
            &deadline,
        )
        .ok("weir dlq replay");
    assert!(r.stderr.contains("1 records put back"), "{}", r.stderr);
    let status = d.status(&url, job, &deadline);
    assert_eq!(status.state, "Running", "{}", status.text);
    assert_eq!(status.inbox("work").backlog, 1, "{}", status.text);
    assert_eq!(status.dead_letters, 0, "{}", status.text);
    assert!(d.dlq(&url, job, &deadline).is_empty());

    // With the stage fixed, the job resumes and the record lands.
    let mut coordinator = d.coordinator("fixed.yaml", &url, job);
    let mut workers = vec![d.worker("fixed-worker", "fixed.yaml", &url, job, 2)];
    let report = report_of(&mut coordinator, Duration::from_secs(60), &deadline);
    assert!(
        coordinator.stderr().contains("resumed"),
        "{}",
        coordinator.stderr()
    );
    assert_eq!(report["broker_dead_letters"], 0, "{report}");
    let want: Vec<i64> = (0..RECORDS as i64).collect();
    assert_eq!(ids(&d), want);
    assert!(d.dlq(&url, job, &deadline).is_empty());
    drain(&mut workers, &deadline);
    let status = d.status(&url, job, &deadline);
    assert_eq!(status.state, "Done", "{}", status.text);
    assert_eq!(status.dead_letters, 0, "{}", status.text);
}

/// `weir dlq replay` marks the job "running with its sources done", and
/// its documentation promises that the next `weir run --broker` "resumes
/// it to completion instead of reading the inputs again". So resuming must
/// not need the input files.
#[test]
fn replayed_job_resumes_without_reading_its_inputs_again() {
    let deadline = Deadline::new();
    let server = NatsServer::start();
    let url = server.url();
    let job = "replay-no-inputs";
    let d = Dir::new();
    // Dead-lettered at once (no retry policy), to be quick.
    d.file(
        "p.yaml",
        POISONED.replace("    on_error: { retry: { attempts: 3 } }\n", ""),
    );
    d.file("fixed.yaml", FIXED);
    write_events(&d.join("events.jsonl"), RECORDS);
    let mut coordinator = d.coordinator("p.yaml", &url, job);
    let mut workers = vec![d.worker("worker", "p.yaml", &url, job, 2)];
    report_of(&mut coordinator, Duration::from_secs(60), &deadline);
    drain(&mut workers, &deadline);
    assert_eq!(ids(&d), all_but_poison());
    d.run(
        &["dlq", "replay", "--broker", &url, "--job", job],
        SHORT,
        &deadline,
    )
    .ok("weir dlq replay");

    // The inputs are gone: they were all published long ago.
    std::fs::remove_file(d.join("events.jsonl")).unwrap();
    let mut coordinator = d.coordinator("fixed.yaml", &url, job);
    let mut workers = vec![d.worker("fixed-worker", "fixed.yaml", &url, job, 2)];
    let report = report_of(&mut coordinator, Duration::from_secs(60), &deadline);
    assert_eq!(report["ok"], true, "{report}");
    let want: Vec<i64> = (0..RECORDS as i64).collect();
    assert_eq!(ids(&d), want);
    drain(&mut workers, &deadline);
}
