//! `file` with `follow: true` in a real `weir run`: lines appended to the
//! file reach the output while the run goes on; a rotation (the file
//! renamed, a new one created) and a truncation are followed; SIGINT ends
//! the run with every line written out once and counts that add up;
//! killed with SIGKILL and resumed, through a rotation while it was down,
//! the table holds every line once.

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
}

const RESUMABLE: &str = "\
inputs:
  - name: log
    file: { path: app.jsonl, follow: true }
outputs:
  - name: out
    sqlite: { path: out.db, table: t, key: [i], columns: { i: integer } }
";

/// Rows in `out.db`'s table, 0 before it exists.
fn rows(d: &Dir) -> usize {
    let Ok(c) = rusqlite::Connection::open_with_flags(
        d.join("out.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return 0;
    };
    c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .map_or(0, |n| n as usize)
}

fn wait_rows(d: &Dir, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(d) < n {
        assert!(Instant::now() < deadline, "{} of {n} rows", rows(d));
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start(d: &Dir, args: &[&str]) -> std::process::Child {
    Command::new(assert_cmd::cargo::cargo_bin("weir"))
        .current_dir(d.path())
        .args(["run", "p.yaml", "--report", "json", "--quiet"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A followed file through `kill -9`: lines keep coming while weir is
/// down, and the file is rotated meanwhile; `--resume` reads the rest of
/// the rotated file, then the new one, and does not read again what was
/// committed before the kill. The table holds every line, each once.
#[test]
fn a_followed_file_resumes_after_kill_9_through_a_rotation() {
    let d = Dir::new();
    d.file("p.yaml", RESUMABLE);
    append(&d, 0..1000);
    let mut child = start(&d, &[]);
    let kill = KillOnDrop(child.id());
    wait_rows(&d, 1000);
    // Lines keep coming, 50 every 20 ms; the kill lands while they are
    // being read, once the first 1,000 had time to be checkpointed.
    let dir = d.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        for k in 0..20u32 {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("app.jsonl"))
                .unwrap();
            for i in 1000 + k * 50..1050 + k * 50 {
                writeln!(f, "{{\"i\":{i}}}").unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(kill);
    writer.join().unwrap();
    let before = rows(&d);
    assert!(before < 2000, "killed before the end ({before} rows)");
    // While weir is down: more lines, a rotation, lines in the new file.
    append(&d, 2000..2500);
    std::fs::rename(d.join("app.jsonl"), d.join("app.jsonl.1")).unwrap();
    append(&d, 2500..3000);

    let child = start(&d, &["--resume"]);
    let kill = KillOnDrop(child.id());
    wait_rows(&d, 3000);
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    drop(kill);
    assert_eq!(code(&out), 130, "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    let report: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_accounting(&report);
    let reread = n(&report, "out", "ok") as usize;
    assert!(
        reread >= 3000 - before && reread <= 3000 - 1000,
        "the resumed run wrote {reread} rows; {before} were committed before the kill"
    );
    let c = rusqlite::Connection::open(d.join("out.db")).unwrap();
    let got: Vec<i64> = c
        .prepare("SELECT i FROM t ORDER BY i")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..3000).collect::<Vec<i64>>(), "every line, once");
}
