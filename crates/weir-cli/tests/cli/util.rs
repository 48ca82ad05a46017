//! Helpers: a temporary pipeline directory, `weir` invocations bounded in
//! time, and readers for what a run leaves behind.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

/// How long a small `weir` invocation may take (debug build, two shared
/// cores, tests running in parallel).
pub const SMALL: Duration = Duration::from_secs(60);

/// A temporary directory holding a pipeline file and its data; `weir`
/// runs inside it, so paths in messages are relative and stable.
pub struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Self {
        Dir {
            tmp: tempfile::Builder::new()
                .prefix("weir-cli-test")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Writes `name` (creating parent directories); returns `self`.
    pub fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> &Self {
        let p = self.join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, contents).expect("write");
        self
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.join(name))
            .unwrap_or_else(|e| panic!("cannot read {name}: {e}"))
    }

    /// `weir ARGS` in this directory, stdin empty, bounded by [`SMALL`].
    pub fn weir(&self, args: &[&str]) -> Command {
        let mut c = Command::cargo_bin("weir").expect("the weir binary");
        c.current_dir(self.path())
            .args(args)
            .write_stdin("")
            .timeout(SMALL);
        c
    }

    /// `weir check NAME`: (exit code, stdout, stderr).
    pub fn check(&self, name: &str) -> (i32, String, String) {
        let out = self.weir(&["check", name]).output().expect("weir runs");
        (code(&out), text(&out.stdout), text(&out.stderr))
    }

    /// `weir run NAME --report json` with `stdin` piped in: the process
    /// output and the parsed report.
    pub fn run_with_stdin(&self, name: &str, stdin: &str) -> (Output, Value) {
        self.run_within(name, stdin, SMALL)
    }

    /// Like [`run_with_stdin`](Self::run_with_stdin), bounded by `limit`.
    pub fn run_within(&self, name: &str, stdin: &str, limit: Duration) -> (Output, Value) {
        let out = self
            .weir(&["run", name, "--report", "json"])
            .write_stdin(stdin.to_string())
            .timeout(limit)
            .output()
            .expect("weir runs");
        let stdout = text(&out.stdout);
        let last = stdout.lines().last().unwrap_or("");
        let report: Value = serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "the last line of stdout is not a JSON report ({e}):\n{stdout}\nstderr:\n{}",
                text(&out.stderr)
            )
        });
        (out, report)
    }

    /// `weir run NAME --report json`, which must succeed: the report.
    pub fn run_ok(&self, name: &str) -> Value {
        self.run_ok_within(name, SMALL)
    }

    /// Like [`run_ok`](Self::run_ok), bounded by `limit`.
    pub fn run_ok_within(&self, name: &str, limit: Duration) -> Value {
        let (out, report) = self.run_within(name, "", limit);
        assert_eq!(
            code(&out),
            0,
            "weir run {name} failed:\n{}",
            text(&out.stderr)
        );
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["error"], Value::Null, "{report}");
        report
    }

    /// The JSON values of a jsonl file, one per line.
    pub fn jsonl(&self, name: &str) -> Vec<Value> {
        parse_jsonl(&self.read(name))
    }
}

pub fn parse_jsonl(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed by a signal")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A stage of a report, by name.
pub fn stage<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage '{name}' in {report}"))
}

/// A counter of a stage of a report.
pub fn n(report: &Value, name: &str, counter: &str) -> u64 {
    stage(report, name)[counter]
        .as_u64()
        .unwrap_or_else(|| panic!("{name}.{counter} in {report}"))
}

/// Every stage accounts for each item it took: `in = ok + filtered +
/// dead_lettered`, nothing dropped; and the report's total of dead letters
/// is the sum over stages and what the dead-letter stage received.
pub fn assert_accounting(report: &Value) {
    let mut dead = 0;
    for s in report["stages"].as_array().expect("stages") {
        let get = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
        assert_eq!(
            get("in"),
            get("ok") + get("filtered") + get("dead_lettered"),
            "stage {s}"
        );
        assert_eq!(get("dropped"), 0, "stage {s}");
        if s["kind"] != "dead-letter" {
            dead += get("dead_lettered");
        }
    }
    assert_eq!(report["dead_lettered"].as_u64(), Some(dead), "{report}");
    assert_eq!(n(report, "dead-letter", "ok"), dead, "{report}");
}

/// For a pipeline where every stage maps one record to at most one (no
/// splitting, no aggregation): every item the sources produced reached a
/// sink, was filtered, or was dead-lettered.
pub fn assert_conserved(report: &Value) {
    let stages = report["stages"].as_array().expect("stages");
    let sum = |kind: &str, counter: &str| -> u64 {
        stages
            .iter()
            .filter(|s| s["kind"] == kind)
            .map(|s| s[counter].as_u64().expect("counter"))
            .sum()
    };
    let filtered: u64 = stages
        .iter()
        .map(|s| s["filtered"].as_u64().expect("filtered"))
        .sum();
    let produced = sum("source", "out");
    let written = sum("sink", "ok");
    let dead = report["dead_lettered"].as_u64().expect("dead_lettered");
    assert_eq!(produced, written + filtered + dead, "{report}");
}

/// Kills process `0` with SIGKILL when dropped during a panic: a test that
/// fails while a `weir` it started is running does not leave it behind.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}
