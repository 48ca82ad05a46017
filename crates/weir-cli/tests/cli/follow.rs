//! `file` with `follow: true` in a real `weir run`: lines appended to the
//! file reach the output while the run goes on; a rotation (the file
//! renamed, a new one created) and a truncation are followed; SIGINT ends
//! the run with every line written out once and counts that add up;
//! `--resume` refuses a followed input.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{Dir, KillOnDrop, assert_accounting, code, n, text};

const PIPELINE: &str = "\
inputs:
  - name: log
    file: { path: app.jsonl, follow: true }
stages:
  - name: tag
    jq: { program: '.seen = true' }
outputs:
  - name: out
    file: { path: out.jsonl }
";

/// Waits until `out.jsonl` holds `n` lines.
fn wait_for(d: &Dir, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = std::fs::read_to_string(d.join("out.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if got >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{got} of {n} lines written out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn append(d: &Dir, lines: std::ops::Range<u32>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.join("app.jsonl"))
        .unwrap();
    for i in lines {
        writeln!(f, "{{\"i\":{i}}}").unwrap();
    }
}

#[test]
fn a_followed_file_is_read_as_it_grows_through_rotation_and_truncation() {
    let d = Dir::new();
    d.file("p.yaml", PIPELINE);
    append(&d, 0..3);
    let child = Command::new(assert_cmd::cargo::cargo_bin("weir"))
        .current_dir(d.path())
        .args(["run", "p.yaml", "--report", "json", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kill = KillOnDrop(child.id());
    wait_for(&d, 3);
    append(&d, 3..10);
    wait_for(&d, 10);
    // Rotation: the file moves away, a new one takes its name.
    std::fs::rename(d.join("app.jsonl"), d.join("app.jsonl.1")).unwrap();
    append(&d, 10..15);
    wait_for(&d, 15);
    // Truncation: emptied in place, then written again.
    std::fs::File::create(d.join("app.jsonl")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    append(&d, 15..17);
    wait_for(&d, 17);
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    drop(kill);
    assert_eq!(code(&out), 130, "{}", text(&out.stderr));
    let report: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_accounting(&report);
    assert_eq!(n(&report, "out", "ok"), 17);
    let got: Vec<u64> = d
        .jsonl("out.jsonl")
        .iter()
        .map(|v| {
            assert_eq!(v["seen"], true);
            v["i"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        got,
        (0..17).collect::<Vec<u64>>(),
        "every line once, in order"
    );

    // A followed input keeps no checkpoint: --resume refuses it.
    let out = d.weir(&["run", "p.yaml", "--resume"]).output().unwrap();
    assert_eq!(code(&out), 2);
    assert!(
        text(&out.stderr).contains("follows its file"),
        "{}",
        text(&out.stderr)
    );
}
