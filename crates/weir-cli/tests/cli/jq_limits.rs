//! jq under untrusted records, through the `weir` binary: a record that
//! recurses 100,000 deep, asks for 10¹² outputs or loops for ever is
//! dead-lettered with the limit named and the run goes on (exit 0, the other
//! records written); an evaluation that cannot be stopped ends the run with
//! exit status 1 and an error naming the stage, the record's position and
//! the limit, instead of hanging; and no environment variable reaches a
//! record.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Dir, assert_accounting, text};

/// What a bounded `weir` run left: exit code, stdout, stderr, how long it
/// took and the highest resident memory seen while it ran (Linux: from
/// `/proc`, sampled every 10 ms; 0 elsewhere).
struct Finished {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
    peak_rss_kib: u64,
}

/// Runs `weir ARGS` in `d`, killing it (and failing) after `limit`.
fn weir_within(d: &Dir, args: &[&str], envs: &[(&str, &str)], limit: Duration) -> Finished {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("weir"))
        .current_dir(d.path())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir starts");
    let start = Instant::now();
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        peak = peak.max(peak_rss_kib(child.id()));
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weir {args:?} still running after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Finished {
        code: status.code().expect("exited, not killed by a signal"),
        stdout: text(&stdout),
        stderr: text(&stderr),
        took,
        peak_rss_kib: peak,
    }
}

/// The process's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn report(f: &Finished) -> Value {
    let last = f.stdout.lines().last().unwrap_or("");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{}\n{}", f.stdout, f.stderr))
}

fn pipeline(input: &str, stage: &str) -> String {
    format!(
        "\
inputs:
  - name: in
    decode_workers: 1
    file: {{ path: {input} }}
stages:
  - name: s
    {stage}
outputs:
  - name: out
    file: {{ path: out/out.jsonl }}
dead_letter: {{ path: out/dead.jsonl }}
"
    )
}

#[test]
fn a_record_recursing_100000_deep_is_computed_or_dead_lettered() {
    let d = Dir::new();
    d.file("in.jsonl", "{\"n\":3}\n{\"n\":100000}\n{\"n\":5}\n")
        .file(
            "p.yaml",
            pipeline(
                "in.jsonl",
                "jq: { program: 'def f: if . > 0 then 1 + (. - 1 | f) else 0 end; {r: (.n | f)}', \
             limits: { timeout_ms: 60000 } }",
            ),
        );
    let f = weir_within(
        &d,
        &["run", "p.yaml", "--report", "json"],
        &[],
        Duration::from_secs(120),
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
    let report = report(&f);
    assert_accounting(&report);
    let out = d.jsonl("out/out.jsonl");
    let dead = if d.join("out/dead.jsonl").exists() {
        d.jsonl("out/dead.jsonl")
    } else {
        Vec::new()
    };
    // A release build computes it; a debug build's frames are ten times
    // bigger, and it runs out of stack and is dead-lettered.
    if out.len() == 3 {
        assert_eq!(
            out,
            vec![json!({"r": 3}), json!({"r": 100000}), json!({"r": 5})]
        );
        assert!(dead.is_empty());
    } else {
        assert_eq!(out, vec![json!({"r": 3}), json!({"r": 5})]);
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0]["stage"], "s");
        assert_eq!(dead[0]["position"], "in.jsonl:2");
        let error = dead[0]["error"].as_str().unwrap();
        assert!(
            error.starts_with("jq_limit: recursed deeper than the thread's stack allows"),
            "{error}"
        );
    }
}

#[test]
fn a_huge_range_is_dead_lettered_quickly_with_bounded_memory() {
    let d = Dir::new();
    d.file("in.jsonl", "{\"n\":3}\n{\"n\":1e12}\n{\"n\":5}\n")
        .file(
            "p.yaml",
            pipeline("in.jsonl", "jq: { program: 'range(.n)' }"),
        );
    let f = weir_within(
        &d,
        &["run", "p.yaml", "--report", "json"],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
    assert!(f.took < Duration::from_secs(30), "{:?}", f.took);
    if cfg!(target_os = "linux") {
        // Without the limit: 3.5 GB for n = 5e6, killed for 1e12.
        assert!(f.peak_rss_kib > 0, "RSS was sampled");
        assert!(
            f.peak_rss_kib < 1024 * 1024,
            "peak RSS {} KiB",
            f.peak_rss_kib
        );
    }
    let out = d.jsonl("out/out.jsonl");
    assert_eq!(out.len(), 3 + 5, "records written");
    let expected: Vec<Value> = (0..3).chain(0..5).map(|i| json!(i)).collect();
    let mut sorted = out.clone();
    sorted.sort_by_key(|v| v.as_i64());
    let mut want = expected.clone();
    want.sort_by_key(|v| v.as_i64());
    assert_eq!(sorted, want);
    assert_eq!(
        d.jsonl("out/dead.jsonl"),
        vec![json!({
            "stage": "s",
            "error": "jq_limit: more than 100000 outputs (limits.max_outputs)",
            "attempts": 1,
            "position": "in.jsonl:2",
            "input": "in",
            "record": {"n": 1e12},
            "raw": null,
        })]
    );
    assert_accounting(&report(&f));
}

#[test]
fn a_loop_that_yields_nothing_is_dead_lettered_at_the_time_limit() {
    let d = Dir::new();
    d.file("in.jsonl", "{\"n\":1}\n{\"loop\":true}\n{\"n\":2}\n")
        .file(
            "p.yaml",
            pipeline(
                "in.jsonl",
                "jq: { program: 'if .loop then def f: f; f else .n end', \
             limits: { timeout_ms: 300 } }",
            ),
        );
    let f = weir_within(
        &d,
        &["run", "p.yaml", "--report", "json"],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
    // 300 ms, the watchdog's tick, and a debug binary's start-up.
    assert!(f.took < Duration::from_secs(5), "{:?}", f.took);
    assert_eq!(d.jsonl("out/out.jsonl"), vec![json!(1), json!(2)]);
    let dead = d.jsonl("out/dead.jsonl");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0]["error"],
        "jq_limit: took longer than 300ms (limits.timeout_ms)"
    );
    assert_eq!(dead[0]["position"], "in.jsonl:2");
    assert_accounting(&report(&f));
}

#[test]
fn an_evaluation_that_cannot_be_stopped_fails_the_run_naming_stage_position_and_limit() {
    let d = Dir::new();
    // `indices` compares every window in one native call (minutes for
    // n = 4e6): no checkpoint can stop it.
    d.file("in.jsonl", "{\"n\":3}\n{\"n\":4000000}\n{\"n\":5}\n").file(
        "p.yaml",
        pipeline(
            "in.jsonl",
            "jq: { program: '.n as $n | (\"a\" * $n) | indices((\"a\" * ($n / 2 | floor)) + \"b\") | length', \
             limits: { timeout_ms: 500 } }",
        ),
    );
    let f = weir_within(&d, &["run", "p.yaml"], &[], Duration::from_secs(60));
    assert_eq!(f.code, 1, "{}", f.stderr);
    // The limit, the grace, two ticks, and a debug binary's start-up.
    assert!(f.took < Duration::from_secs(5), "{:?}", f.took);
    assert!(f.took >= Duration::from_millis(1500), "{:?}", f.took);
    let first = f.stderr.lines().next().unwrap_or("");
    assert!(
        first.starts_with(
            "error: stage 's': the jq evaluation of the record at in.jsonl:2 took longer than \
             500ms (limits.timeout_ms) and cannot be interrupted (still running after "
        ),
        "{}",
        f.stderr
    );
    assert!(
        first.ends_with(
            "), so the record cannot be dead-lettered: make the program cheaper on such \
             records, or raise limits.timeout_ms"
        ),
        "{first}"
    );
}

#[test]
fn no_jq_route_copies_the_environment_into_records() {
    const SECRET: &str = "s3cr3t-value-9f2c";
    let env = [
        ("WEIR_TEST_SECRET", SECRET),
        ("WEIR_TEST_ALLOWED", "visible"),
    ];
    let d = Dir::new();
    d.file("in.jsonl", "{\"f\":\"WEIR_TEST_SECRET\"}\n");

    // Without a list, any use of the environment is refused at check time.
    d.file(
        "refused.yaml",
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: a
    jq: { program: 'env[.f]' }
  - name: b
    filter: { condition: '$ENV.WEIR_TEST_SECRET != null' }
outputs:
  - name: out
    stdout: {}
",
    );
    let f = weir_within(
        &d,
        &["check", "refused.yaml"],
        &env,
        Duration::from_secs(60),
    );
    assert_eq!(f.code, 2, "{}", f.stderr);
    assert_eq!(
        f.stderr.trim_end(),
        "\
error: jq program does not compile: `env` is not available: the environment may hold secrets, so a program reads only the variables its stage lists, as in `env: [NAME]` (at column 1 of the program)
  --> refused.yaml:6:20
  |
6 |     jq: { program: 'env[.f]' }
  |                    ^

error: condition does not compile: `$ENV` is not available: the environment may hold secrets, so a program reads only the variables its stage lists, as in `env: [NAME]` (at column 1 of the program)
  --> refused.yaml:8:26
  |
8 |     filter: { condition: '$ENV.WEIR_TEST_SECRET != null' }
  |                          ^

2 errors in refused.yaml"
    );

    // With a list, only the listed variables are there, whatever the
    // record asks for.
    d.file(
        "allowed.yaml",
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: s
    jq:
      program: |
        {a: env, b: $ENV, c: env[.f], d: (env | getpath([.f])), e: $ENV[.f],
         g: [env[]], h: (try input catch \"none\")}
      env: [WEIR_TEST_ALLOWED]
outputs:
  - name: out
    file: { path: out/out.jsonl }
dead_letter: { path: out/dead.jsonl }
",
    );
    let f = weir_within(&d, &["run", "allowed.yaml"], &env, Duration::from_secs(60));
    // `input` does not exist in weir's jq: the program is refused.
    assert_eq!(f.code, 2, "{}", f.stderr);
    assert!(
        f.stderr.contains("undefined filter 'input'"),
        "{}",
        f.stderr
    );
    d.file(
        "allowed.yaml",
        d.read("allowed.yaml")
            .replace(", h: (try input catch \"none\")", ""),
    );
    let f = weir_within(&d, &["run", "allowed.yaml"], &env, Duration::from_secs(60));
    assert_eq!(f.code, 0, "{}", f.stderr);
    let visible = json!({"WEIR_TEST_ALLOWED": "visible"});
    assert_eq!(
        d.jsonl("out/out.jsonl"),
        vec![
            json!({"a": visible, "b": visible, "c": null, "d": null, "e": null, "g": ["visible"]})
        ]
    );
    for written in [d.read("out/out.jsonl"), f.stdout, f.stderr] {
        assert!(!written.contains(SECRET), "{written}");
    }
    assert!(!d.join("out/dead.jsonl").exists() || !d.read("out/dead.jsonl").contains(SECRET));
}
