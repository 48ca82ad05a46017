//! `weir list`, `weir explain`, and the JSON report of a failed run.

use crate::util::{Dir, code, text};

const ALL: [(&str, &str); 23] = [
    ("source", "file"),
    ("source", "stdin"),
    ("source", "generate"),
    ("source", "http_server"),
    ("source", "schedule"),
    ("source", "nats"),
    ("source", "sql"),
    ("processor", "jq"),
    ("processor", "filter"),
    ("processor", "validate"),
    ("processor", "dedupe"),
    ("processor", "aggregate"),
    ("processor", "batch"),
    ("processor", "switch"),
    ("processor", "http"),
    ("processor", "scatter"),
    ("processor", "html"),
    ("sink", "sqlite"),
    ("sink", "postgres"),
    ("sink", "file"),
    ("sink", "stdout"),
    ("sink", "http"),
    ("sink", "nats"),
];

/// One line per component: kind, name and a one-sentence summary.
#[test]
fn list() {
    let d = Dir::new();
    let out = d.weir(&["list"]).output().unwrap();
    assert_eq!(code(&out), 0);
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), ALL.len(), "{stdout}");
    for (line, (kind, name)) in lines.iter().zip(ALL) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&words[..2], [kind, name], "{line}");
        assert!(
            line.ends_with('.'),
            "a summary is a whole sentence: {line:?}"
        );
    }
    assert!(stdout.contains("processor  jq          Transform each record with a jq program.\n"));

    let out = d.weir(&["list", "sink"]).output().unwrap();
    let sinks: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect();
    assert_eq!(
        sinks,
        ["sqlite", "postgres", "file", "stdout", "http", "nats"]
    );

    let out = d.weir(&["list", "bogus"]).output().unwrap();
    assert_eq!(code(&out), 1);
    assert_eq!(
        text(&out.stderr),
        "error: unknown kind 'bogus': expected source, processor or sink\n"
    );
}

#[test]
fn explain_jq() {
    let d = Dir::new();
    let out = d.weir(&["explain", "jq"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("jq (processor)\n\nTransform each record with a jq program.\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\noptions:\n  program: string (required)\n"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("\nexample:\n  program: '{id: .id, total: (.price * .qty)}'\n"),
        "{stdout}"
    );
}

/// Enum options show their values, not "one of several forms"; a name
/// shared by a source and a sink explains both.
#[test]
fn explain_file_shows_both_and_the_formats() {
    let d = Dir::new();
    let out = d.weir(&["explain", "file"]).output().unwrap();
    assert_eq!(code(&out), 0);
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("file (source)\n"), "{stdout}");
    assert!(stdout.contains("\n\nfile (sink)\n"), "{stdout}");
    assert!(
        stdout.contains("  format: \"jsonl\" | \"csv\" | \"lines\" | null\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  format: \"jsonl\" | \"csv\" | null\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("one of several forms"), "{stdout}");
}

#[test]
fn explain_unknown_lists_the_components() {
    let d = Dir::new();
    let out = d.weir(&["explain", "nope"]).output().unwrap();
    assert_eq!(code(&out), 1);
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "error: unknown component 'nope'; sources: file, stdin, generate, http_server, schedule, nats, sql; \
         processors: jq, filter, validate, dedupe, aggregate, batch, switch, http, scatter, html; \
         sinks: sqlite, postgres, file, stdout, http, nats\n"
    );
}

/// A run that fails still prints a valid JSON report, with `ok: false`
/// and the error, and exits 1.
#[test]
fn report_json_on_failure() {
    let d = Dir::new();
    d.file("in.jsonl", "{\"a\":1}\n{\"a\":\"x\"}\n{\"a\":3}\n")
        .file(
            "p.yaml",
            "\
inputs:
  - name: in
    decode_workers: 1
    file: { path: in.jsonl }
stages:
  - name: plus
    on_error: fail
    jq: { program: '.a += 1' }
outputs:
  - name: out
    file: { path: out.jsonl }
",
        );
    let (out, report) = d.run_with_stdin("p.yaml", "");
    assert_eq!(code(&out), 1);
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["error"],
        "stage 'plus' failed: jq_error: cannot calculate \"x\" + 1"
    );
    assert!(report["stages"].as_array().is_some_and(|s| !s.is_empty()));
    assert!(
        text(&out.stderr)
            .contains("error: stage 'plus' failed: jq_error: cannot calculate \"x\" + 1"),
        "{}",
        text(&out.stderr)
    );

    // A sink that cannot write one record does not fail the run, even under
    // its default `on_error: fail`: the record is bad, the database is fine,
    // so that record alone is dead-lettered with its reason.
    d.file(
        "q.yaml",
        "\
inputs:
  - name: in
    decode_workers: 1
    file: { path: in.jsonl }
outputs:
  - name: db
    sqlite: { path: out.db, table: t, columns: { a: integer } }
",
    );
    let (out, report) = d.run_with_stdin("q.yaml", "");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(report["ok"], true);
    let dead = std::fs::read_to_string(d.join("dead-letters.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 1, "{dead}");
    assert!(
        dead.contains("record at in.jsonl:2: column a: expected an integer, got"),
        "{dead}"
    );
}

/// A pipeline that does not check is not run: exit 2, the diagnostics on
/// stderr, no report.
#[test]
fn run_refuses_an_invalid_pipeline() {
    let d = Dir::new();
    d.file(
        "p.yaml",
        "inputs:\n  - name: in\n    stdin: {}\noutputs:\n  - name: out\n    stdot: {}\n",
    );
    let out = d
        .weir(&["run", "p.yaml", "--report", "json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).starts_with("error: unknown field `stdot`, expected one of name, from, on_error, sqlite, postgres, file, stdout, http, nats\n  --> p.yaml:6:5\n"),
        "{}",
        text(&out.stderr)
    );
}
