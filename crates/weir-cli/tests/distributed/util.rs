//! Helpers: a per-test deadline, `weir` child processes killed on drop,
//! a temporary job directory, the events pipeline and its reference
//! table, `weir status` parsed, and SQLite tables read row by row.

use std::fmt::Display;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The overall time a test may take before it fails instead of hanging.
pub const TEST_LIMIT: Duration = Duration::from_secs(120);

/// How long a short command (`weir status`, `weir dlq ...`) may take.
pub const SHORT: Duration = Duration::from_secs(30);

/// The `weir` binary under test.
pub fn weir_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

/// The point in time by which a test must be finished.
#[derive(Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    /// [`TEST_LIMIT`] from now.
    pub fn new() -> Self {
        Deadline(Instant::now() + TEST_LIMIT)
    }

    /// Panics when the deadline has passed, saying what was awaited.
    pub fn check(&self, what: impl Display) {
        assert!(
            Instant::now() < self.0,
            "test deadline ({TEST_LIMIT:?}) passed while {what}"
        );
    }

    /// The earlier of `d` from now and the deadline.
    pub fn within(&self, d: Duration) -> Instant {
        (Instant::now() + d).min(self.0)
    }
}

/// A spawned `weir` process; killed (SIGKILL) and reaped on drop, so a
/// failing test leaves nothing running. Its output goes to files (a pipe
/// nobody reads could block it).
pub struct Proc {
    pub name: String,
    child: std::process::Child,
    out: PathBuf,
    err: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `weir ARGS` in `dir` with the environment variables `env`
    /// added; its output goes to `dir/logs/NAME.*`.
    pub fn spawn(dir: &Path, name: &str, args: &[&str], env: &[(String, String)]) -> Proc {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let out = logs.join(format!("{name}.out"));
        let err = logs.join(format!("{name}.err"));
        let child = Command::new(weir_bin())
            .current_dir(dir)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn weir {args:?}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            out,
            err,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits until it exits, at most `limit` (and never past `deadline`);
    /// panics with its stderr when it does not.
    pub fn wait(&mut self, limit: Duration, deadline: &Deadline) -> ExitStatus {
        let until = deadline.within(limit);
        loop {
            if let Some(st) = self.try_status() {
                return st;
            }
            if Instant::now() >= until {
                panic!(
                    "{} did not exit within {limit:?} (or the test deadline); stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`Proc::wait`], and the exit must be a success.
    pub fn wait_ok(&mut self, limit: Duration, deadline: &Deadline) {
        let st = self.wait(limit, deadline);
        assert!(
            st.success(),
            "{} failed ({st}); stderr:\n{}",
            self.name,
            self.stderr()
        );
    }

    /// SIGKILL: no chance to clean up, acknowledge or report.
    pub fn kill9(&mut self) {
        assert!(
            self.try_status().is_none(),
            "{} exited before it could be killed:\n{}",
            self.name,
            self.stderr()
        );
        self.child.kill().expect("SIGKILL");
        self.status = Some(self.child.wait().expect("reap"));
    }

    /// SIGTERM (a worker drains and exits).
    pub fn term(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM {} failed", self.pid());
    }

    /// Sends `signal` (a `kill` option: `-INT`, `-TERM`, ...); it must
    /// still be running.
    pub fn signal(&mut self, signal: &str) {
        self.assert_running(&format!("before kill {signal}"));
        let st = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {signal} {} failed", self.pid());
    }

    /// Panics when it has exited.
    pub fn assert_running(&mut self, when: &str) {
        if let Some(st) = self.try_status() {
            panic!(
                "{} exited ({st}) {when}; stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a short `weir` command did.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(self, what: &str) -> Ran {
        assert!(
            self.status.success(),
            "{what} failed ({}):\n{}",
            self.status,
            self.stderr
        );
        self
    }
}

/// A job's temporary directory: the pipeline files, their data, `out/`,
/// and `logs/` with every process's output; and the environment variables
/// every process started here gets ([`Dir::set_env`]).
pub struct Dir {
    tmp: tempfile::TempDir,
    n: std::cell::Cell<usize>,
    env: std::cell::RefCell<Vec<(String, String)>>,
}

impl Dir {
    pub fn new() -> Self {
        Dir {
            tmp: tempfile::Builder::new()
                .prefix("weir-dist-test")
                .tempdir()
                .expect("temp dir"),
            n: std::cell::Cell::new(0),
            env: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Sets environment variable `key` for every process started here from
    /// now on.
    pub fn set_env(&self, key: &str, value: &str) {
        let mut env = self.env.borrow_mut();
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn file(&self, name: &str, contents: impl AsRef<[u8]>) {
        let p = self.join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, contents).expect("write");
    }

    /// Starts `weir ARGS` here.
    pub fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        Proc::spawn(self.path(), name, args, &self.env.borrow())
    }

    /// Runs `weir ARGS` here to the end, bounded by `limit`.
    pub fn run(&self, args: &[&str], limit: Duration, deadline: &Deadline) -> Ran {
        let i = self.n.get();
        self.n.set(i + 1);
        let mut p = self.spawn(&format!("cmd{i}-{}", args[0]), args);
        let status = p.wait(limit, deadline);
        Ran {
            status,
            stdout: p.stdout(),
            stderr: p.stderr(),
        }
    }

    /// `weir run PIPELINE --broker URL --job JOB --report json --quiet`,
    /// started.
    pub fn coordinator(&self, pipeline: &str, url: &str, job: &str) -> Proc {
        let i = self.n.get();
        self.n.set(i + 1);
        self.spawn(
            &format!("coordinator{i}"),
            &[
                "run", pipeline, "--broker", url, "--job", job, "--report", "json", "--quiet",
            ],
        )
    }

    /// `weir worker PIPELINE --broker URL --job JOB --workers N`, started.
    pub fn worker(&self, name: &str, pipeline: &str, url: &str, job: &str, workers: usize) -> Proc {
        let n = workers.to_string();
        self.spawn(
            name,
            &[
                "worker",
                pipeline,
                "--broker",
                url,
                "--job",
                job,
                "--workers",
                &n,
            ],
        )
    }

    /// `weir status --broker URL --job JOB`, parsed.
    pub fn status(&self, url: &str, job: &str, deadline: &Deadline) -> Status {
        let r = self
            .run(&["status", "--broker", url, "--job", job], SHORT, deadline)
            .ok("weir status");
        Status::parse(&r.stdout)
    }

    /// `weir dlq list --broker URL --job JOB --json`: the entries.
    pub fn dlq(&self, url: &str, job: &str, deadline: &Deadline) -> Vec<Value> {
        let r = self
            .run(
                &["dlq", "list", "--broker", url, "--job", job, "--json"],
                SHORT,
                deadline,
            )
            .ok("weir dlq list");
        parse_jsonl(&r.stdout)
    }

    /// Copies `examples/pipelines/{orders.yaml,data,schemas}` here.
    pub fn copy_orders_example(&self) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipelines");
        for part in ["data", "schemas"] {
            copy_dir(&src.join(part), &self.join(part));
        }
        std::fs::copy(src.join("orders.yaml"), self.join("orders.yaml")).expect("copy orders");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Waits for the coordinator's "job '...' started" line, so that the job
/// exists on the broker.
pub fn wait_started(coordinator: &mut Proc, deadline: &Deadline) {
    let until = deadline.within(Duration::from_secs(30));
    while !coordinator.stderr().contains("started on nats://") {
        coordinator.assert_running("before the job started");
        assert!(
            Instant::now() < until,
            "the job did not start within 30 s:\n{}",
            coordinator.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a coordinator to succeed; its JSON report.
pub fn report_of(coordinator: &mut Proc, limit: Duration, deadline: &Deadline) -> Value {
    coordinator.wait_ok(limit, deadline);
    last_json(&coordinator.stdout(), &coordinator.stderr())
}

/// `weir run PIPELINE --report json --quiet` without a broker, in `dir`:
/// its report.
pub fn run_local(dir: &Dir, pipeline: &str, deadline: &Deadline) -> Value {
    let r = dir
        .run(
            &["run", pipeline, "--report", "json", "--quiet"],
            Duration::from_secs(120),
            deadline,
        )
        .ok("the local run");
    last_json(&r.stdout, &r.stderr)
}

fn last_json(stdout: &str, stderr: &str) -> Value {
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("the last line of stdout is not a JSON report ({e}):\n{stdout}\nstderr:\n{stderr}")
    })
}

pub fn parse_jsonl(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// A counter of a stage of a local report.
pub fn stage_counter(report: &Value, stage: &str, counter: &str) -> u64 {
    report["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["name"] == stage)
        .unwrap_or_else(|| panic!("no stage '{stage}' in {report}"))[counter]
        .as_u64()
        .unwrap_or_else(|| panic!("{stage}.{counter} in {report}"))
}

/// A counter of a remote stage in a coordinator's report (`remote`).
pub fn remote_counter(report: &Value, stage: &str, counter: &str) -> u64 {
    report["remote"][stage][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("remote.{stage}.{counter} in {}", report["remote"]))
}

/// Every row of a query, as SQLite values.
pub fn rows(db: &Path, sql: &str) -> Vec<Vec<rusqlite::types::Value>> {
    let c = rusqlite::Connection::open(db).unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let mut s = c.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let n = s.column_count();
    s.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
        .expect("query")
        .map(Result::unwrap)
        .collect()
}

/// Asserts two tables are equal, showing the first difference rather than
/// two tables of thousands of rows.
pub fn assert_same_rows(
    what: &str,
    got: &[Vec<rusqlite::types::Value>],
    want: &[Vec<rusqlite::types::Value>],
) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: {} rows, expected {}; first difference at row {first:?}: got {:?}, expected {:?}",
        got.len(),
        want.len(),
        first.and_then(|i| got.get(i)),
        first.and_then(|i| want.get(i)),
    );
}

// ---------------------------------------------------------------------------
// The events job: one remote jq stage between a file and an upserting table.

/// Records in the events input.
pub const EVENTS: u64 = 40_000;

/// Records per broker message in the events job: small, so that there are
/// many messages and every worker holds some when it is killed.
pub const PER_MESSAGE: u64 = 10;

/// The events job. Local runs ignore the `broker` section; `ack_wait_secs:
/// 2` makes what a killed worker held come back quickly.
pub const EVENTS_PIPELINE: &str = r#"
inputs:
  - name: events
    file: { path: events.jsonl }
stages:
  - name: work
    remote: true
    workers: 2
    jq:
      program: |
        .kind |= ascii_downcase
        | .score = (.id * 7 + (.tags | length))
        | .tags = (.tags | join(","))
outputs:
  - name: db
    sqlite:
      path: out/e.db
      table: events
      key: [id]
      columns: { id: integer, user: text, amount: real, kind: text, tags: text, score: integer }
broker:
  ack_wait_secs: 2
  records_per_message: 10
"#;

/// Writes `n` order-like JSON lines (ids 0..n) to `path`.
pub fn write_events(path: &Path, n: u64) {
    let mut f = std::io::BufWriter::new(File::create(path).expect("create events"));
    for i in 0..n {
        let kind = ["Click", "VIEW", "buy"][(i % 3) as usize];
        let tags = match i % 4 {
            0 => "[]".to_string(),
            1 => "[\"a\"]".to_string(),
            2 => "[\"a\",\"b\"]".to_string(),
            _ => "[\"x\",\"y\",\"z\"]".to_string(),
        };
        writeln!(
            f,
            r#"{{"id":{i},"user":"u{}","amount":{}.{},"kind":"{kind}","tags":{tags}}}"#,
            i % 997,
            (i * 37) % 1000,
            i % 10
        )
        .expect("write");
    }
    f.flush().expect("flush");
}

/// The events table, ordered.
pub fn events_table(db: &Path) -> Vec<Vec<rusqlite::types::Value>> {
    rows(db, "SELECT * FROM events ORDER BY id")
}

/// A directory with the events job and its input.
pub fn events_dir() -> Dir {
    let d = Dir::new();
    d.file("p.yaml", EVENTS_PIPELINE);
    write_events(&d.join("events.jsonl"), EVENTS);
    d
}

/// The table of a local run of the events job, computed once for the
/// whole test binary (every test using it reads the same input).
pub fn events_reference() -> &'static [Vec<rusqlite::types::Value>] {
    static REF: OnceLock<Vec<Vec<rusqlite::types::Value>>> = OnceLock::new();
    REF.get_or_init(|| {
        let d = events_dir();
        let deadline = Deadline::new();
        let report = run_local(&d, "p.yaml", &deadline);
        assert_eq!(stage_counter(&report, "db", "ok"), EVENTS, "{report}");
        let t = events_table(&d.join("out/e.db"));
        assert_eq!(t.len() as u64, EVENTS);
        t
    })
}

// ---------------------------------------------------------------------------
// `weir status`, parsed.

/// One inbox line of `weir status`.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    pub name: String,
    pub pool: bool,
    pub backlog: u64,
    pub in_flight: u64,
    pub done: u64,
    /// Live workers (pool inboxes only).
    pub workers: Option<u64>,
    pub records_in: u64,
    pub records_out: u64,
    pub dead: u64,
    pub redelivered: u64,
}

/// `weir status --job J`, parsed.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub text: String,
    /// `Running`, `Done`, `Failed`; empty when the job is unknown.
    pub state: String,
    pub inboxes: Vec<Inbox>,
    pub dead_letters: u64,
}

impl Status {
    pub fn parse(text: &str) -> Status {
        let mut s = Status {
            text: text.to_string(),
            ..Default::default()
        };
        let num = |t: &str| -> u64 {
            t.parse()
                .unwrap_or_else(|e| panic!("not a number {t:?} ({e}) in:\n{text}"))
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("job ") {
                let after = rest.split_once(": ").map_or("", |(_, a)| a);
                s.state = after.split_whitespace().next().unwrap_or("").to_string();
            } else if let Some(n) = line.trim().strip_prefix("dead letters: ") {
                s.dead_letters = num(n.trim());
            } else {
                let t: Vec<&str> = line.split_whitespace().collect();
                if t.len() == 11 && (t[1] == "pool" || t[1] == "coordinator") {
                    s.inboxes.push(Inbox {
                        name: t[0].to_string(),
                        pool: t[1] == "pool",
                        backlog: num(t[2]),
                        in_flight: num(t[3]),
                        done: num(t[4]),
                        workers: (t[5] != "-").then(|| num(t[5])),
                        records_in: num(t[6]),
                        records_out: num(t[7]),
                        dead: num(t[8]),
                        redelivered: num(t[9]),
                    });
                }
            }
        }
        s
    }

    pub fn inbox(&self, name: &str) -> &Inbox {
        self.inboxes
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no inbox '{name}' in:\n{}", self.text))
    }
}

/// Polls `weir status` until `inbox` has committed at least `done`
/// messages. The coordinator must still be running: if the job ends first,
/// the input is too small for the test.
pub fn wait_done(
    dir: &Dir,
    url: &str,
    job: &str,
    inbox: &str,
    done: u64,
    coordinator: &mut Proc,
    deadline: &Deadline,
) -> Status {
    loop {
        deadline.check(format_args!(
            "waiting for {done} messages done in '{inbox}'"
        ));
        coordinator.assert_running(&format!(
            "before '{inbox}' reached {done} messages: make the input larger"
        ));
        let s = dir.status(url, job, deadline);
        if s.inboxes.iter().any(|i| i.name == inbox && i.done >= done) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Drains workers with SIGTERM; each must exit 0 within 20 s.
pub fn drain(workers: &mut [Proc], deadline: &Deadline) {
    for w in workers.iter_mut() {
        if w.try_status().is_none() {
            w.term();
        }
    }
    for w in workers.iter_mut() {
        w.wait_ok(Duration::from_secs(20), deadline);
    }
}
