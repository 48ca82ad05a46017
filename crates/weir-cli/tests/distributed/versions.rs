//! What a resumed job may mix: nothing. A job records what it runs (the
//! whole pipeline file and what each input file is); a coordinator run
//! again on an unfinished job with another version of either is refused
//! (exit 2) unless it starts over with `--fresh`. And names that would
//! share one inbox on the broker are refused before anything runs.

use std::time::Duration;

use weir_testkit::NatsServer;

use crate::util::{Deadline, Dir, SHORT, assert_same_rows, drain, report_of, rows, run_local};

/// Two inputs, a coordinator-side stage, a remote stage, a keyed table.
const PIPELINE: &str = r#"
inputs:
  - name: a
    file: { path: a.jsonl }
  - name: b
    file: { path: b.jsonl }
stages:
  - name: tag
    from: [a, b]
    jq: { program: '.src = "v1"' }
  - name: check
    validate: { schema: s.json }
  - name: work
    remote: true
    jq: { program: '.score = (.id * 3)' }
outputs:
  - name: db
    sqlite:
      path: out/v.db
      table: v
      key: [id]
      columns: { id: integer, src: text, score: integer }
broker:
  records_per_message: 10
"#;

const SCHEMA: &str = r#"{ "type": "object", "required": ["id"] }"#;

fn lines(range: std::ops::Range<u64>) -> String {
    range.map(|i| format!("{{\"id\":{i}}}\n")).collect()
}

/// Runs the coordinator on `pipeline` (job `versions`) and expects a
/// refusal, exit 2, whose message contains every one of `why`.
fn refused(d: &Dir, pipeline: &str, url: &str, why: &[&str], deadline: &Deadline) {
    let r = d.run(
        &[
            "run", pipeline, "--broker", url, "--job", "versions", "--quiet",
        ],
        SHORT,
        deadline,
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    for w in why {
        assert!(r.stderr.contains(w), "expected {w:?} in: {}", r.stderr);
    }
    assert!(r.stderr.contains("--fresh"), "{}", r.stderr);
}

/// Before this check, a resumed job read changed inputs (or ran a changed
/// coordinator stage) and the broker kept what the first run published:
/// the table mixed both versions, exit 0.
#[test]
fn an_unfinished_job_is_not_resumed_on_changed_inputs_or_pipeline() {
    let deadline = Deadline::new();
    let d = Dir::new();
    d.file("p.yaml", PIPELINE);
    d.file("s.json", SCHEMA);
    d.file("a.jsonl", lines(0..500));
    d.file("b.jsonl", lines(500..1000));
    run_local(&d, "p.yaml", &deadline);
    let want = rows(&d.join("out/v.db"), "SELECT * FROM v ORDER BY id");
    assert_eq!(want.len(), 1000);
    std::fs::remove_dir_all(d.join("out")).unwrap();

    let server = NatsServer::start();
    let url = server.url();
    // No worker: the job stays unfinished; the coordinator is killed.
    let mut first = d.coordinator("p.yaml", &url, "versions");
    crate::util::wait_started(&mut first, &deadline);
    first.kill9();

    // An input changed.
    d.file("a.jsonl", lines(0..499) + "{\"id\":7777}\n");
    refused(
        &d,
        "p.yaml",
        &url,
        &["input file a.jsonl changed"],
        &deadline,
    );
    d.file("a.jsonl", lines(0..500));

    // A schema a coordinator-side stage reads changed.
    d.file(
        "s.json",
        SCHEMA.replace("\"object\"", "[\"object\", \"array\"]"),
    );
    refused(
        &d,
        "p.yaml",
        &url,
        &["file s.json (read by stage 'check') changed"],
        &deadline,
    );
    d.file("s.json", SCHEMA);

    // A coordinator-side stage changed (the remote stages did not).
    d.file(
        "edited.yaml",
        PIPELINE.replace(r#"'.src = "v1"'"#, r#"'.src = "v2"'"#),
    );
    refused(
        &d,
        "edited.yaml",
        &url,
        &["the pipeline file differs"],
        &deadline,
    );

    // The same file and inputs resume and finish exactly.
    let mut second = d.coordinator("p.yaml", &url, "versions");
    let mut workers = vec![d.worker("w1", "p.yaml", &url, "versions", 2)];
    let report = report_of(&mut second, Duration::from_secs(60), &deadline);
    assert!(second.stderr().contains("resumed"), "{}", second.stderr());
    assert_eq!(report["ok"], true, "{report}");
    assert_same_rows(
        "v",
        &rows(&d.join("out/v.db"), "SELECT * FROM v ORDER BY id"),
        &want,
    );
    drain(&mut workers, &deadline);
}

/// Stage names that differ only in characters a stream name cannot hold
/// would share one inbox (their records mixed): refused, exit 2, pointing
/// at the second name.
#[test]
fn names_that_would_share_an_inbox_are_refused() {
    let deadline = Deadline::new();
    let d = Dir::new();
    d.file("in.jsonl", lines(0..10));
    d.file(
        "p.yaml",
        r#"
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: clean.a
    remote: true
    jq: { program: '.x = 1' }
  - name: clean a
    remote: true
    jq: { program: '.y = 1' }
outputs:
  - name: out
    file: { path: out.jsonl }
"#,
    );
    // Refused before the broker is contacted: none runs here.
    for cmd in ["run", "worker"] {
        let r = d.run(
            &[
                cmd,
                "p.yaml",
                "--broker",
                "nats://127.0.0.1:9",
                "--job",
                "names",
            ],
            SHORT,
            &deadline,
        );
        assert_eq!(r.status.code(), Some(2), "{cmd}: {}", r.stderr);
        assert!(
            r.stderr.contains(
                "'clean a' and 'clean.a' would share one inbox on the broker ('clean_a')"
            ) && r.stderr.contains("p.yaml:9:11"),
            "{cmd}: {}",
            r.stderr
        );
    }
    // Nor may a name take the job's dead-letter stream.
    d.file(
        "q.yaml",
        r#"
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: _DLQ
    remote: true
    jq: { program: '.x = 1' }
outputs:
  - name: out
    file: { path: out.jsonl }
"#,
    );
    let r = d.run(
        &[
            "run",
            "q.yaml",
            "--broker",
            "nats://127.0.0.1:9",
            "--job",
            "names",
        ],
        SHORT,
        &deadline,
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("'_DLQ' would share the job's dead-letter stream on the broker"),
        "{}",
        r.stderr
    );
}

/// A job resumed after the broker's duplicate window: what earlier runs
/// published is no longer recognised, which the coordinator says (the
/// keyed table stays exact: upserts).
#[test]
fn a_job_resumed_after_the_duplicate_window_warns() {
    let deadline = Deadline::new();
    let d = Dir::new();
    d.file(
        "p.yaml",
        PIPELINE.replace(
            "  records_per_message: 10\n",
            "  records_per_message: 10\n  duplicate_window_secs: 1\n",
        ),
    );
    d.file("s.json", SCHEMA);
    d.file("a.jsonl", lines(0..500));
    d.file("b.jsonl", lines(500..1000));
    let server = NatsServer::start();
    let url = server.url();
    let mut first = d.coordinator("p.yaml", &url, "window");
    crate::util::wait_started(&mut first, &deadline);
    std::thread::sleep(Duration::from_millis(1500));
    first.kill9();
    let mut second = d.coordinator("p.yaml", &url, "window");
    let mut workers = vec![d.worker("w1", "p.yaml", &url, "window", 2)];
    let report = report_of(&mut second, Duration::from_secs(60), &deadline);
    assert_eq!(report["ok"], true, "{report}");
    assert!(
        second
            .stderr()
            .contains("longer than the broker's duplicate window (1 s"),
        "{}",
        second.stderr()
    );
    assert_eq!(
        rows(&d.join("out/v.db"), "SELECT count(*) FROM v")[0][0],
        rusqlite::types::Value::Integer(1000)
    );
    drain(&mut workers, &deadline);
}

/// A `file` output starts its file over: resuming a job that writes one
/// would lose what the earlier run wrote (the file held only the resumed
/// run's lines, exit 0). Refused, exit 2; `--fresh` starts over and
/// writes every record.
#[test]
fn an_unfinished_job_with_a_file_output_is_not_resumed() {
    let deadline = Deadline::new();
    let d = Dir::new();
    d.file(
        "p.yaml",
        r#"
inputs:
  - name: a
    file: { path: a.jsonl }
stages:
  - name: work
    remote: true
    jq: { program: '.score = (.id * 3)' }
outputs:
  - name: out
    file: { path: out/v.jsonl }
broker:
  records_per_message: 10
"#,
    );
    d.file("a.jsonl", lines(0..1000));
    let server = NatsServer::start();
    let url = server.url();
    let mut first = d.coordinator("p.yaml", &url, "files");
    crate::util::wait_started(&mut first, &deadline);
    first.kill9();
    let r = d.run(
        &[
            "run", "p.yaml", "--broker", &url, "--job", "files", "--quiet",
        ],
        SHORT,
        &deadline,
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("resuming it would write output 'out' (a file) from the start")
            && r.stderr.contains("--fresh"),
        "{}",
        r.stderr
    );
    let mut workers = vec![d.worker("w1", "p.yaml", &url, "files", 2)];
    let r = d.run(
        &[
            "run", "p.yaml", "--broker", &url, "--job", "files", "--fresh", "--quiet",
        ],
        Duration::from_secs(60),
        &deadline,
    );
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    let out = std::fs::read_to_string(d.join("out/v.jsonl")).unwrap();
    let mut ids: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    drain(&mut workers, &deadline);
}
