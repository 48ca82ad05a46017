//! The background-jobs example of README.md, end to end with the bundled
//! files (`examples/pipelines/jobs.yaml`, `jobs-produce.yaml`,
//! `data/jobs.jsonl`, copied byte for byte into the test's directory so
//! that the dead-letter file lands there) and the commands the README
//! gives: `scripts/nats-stream` creates the stream, the producer pipeline
//! publishes the 3,000 jobs, two workers and the coordinator run them into
//! a real PostgreSQL, one worker is killed with SIGKILL mid-run. Every good
//! job must be in the table once with its result (computed here, in Rust),
//! every bad one in the job's dead-letter stream with its reason; then
//! `weir dlq replay` with a raised step budget brings the over-budget jobs
//! into the table and the malformed ones back to the dead letters.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_testkit::{NatsServer, PgServer};

use crate::util::{
    Deadline, Dir, Proc, SHORT, drain, parse_jsonl, report_of, stage_counter, wait_started,
};

/// The repository's `examples/pipelines`.
fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipelines")
}

/// What a job should come to: its row `(kind, result)`, or the words its
/// dead letter's reason must contain.
type Outcome = Result<(String, i64), &'static str>;

/// The step budget of `jobs.yaml` when `JOBS_MAX_STEPS` is not set.
const DEFAULT_STEPS: u64 = 250;

/// Collatz steps from `n` to 1.
fn collatz(mut n: u64) -> u64 {
    let mut steps = 0;
    while n != 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

/// The outcome of `job` with a budget of `max_steps`, computed without jq.
fn expected(job: &Value, max_steps: u64) -> Outcome {
    let kind = job["kind"].as_str().unwrap_or("");
    let result = match kind {
        "sum" => {
            let numbers = job["numbers"].as_array().ok_or("sum: numbers must be")?;
            let mut sum = 0;
            for n in numbers {
                sum += n
                    .as_i64()
                    .ok_or("sum: numbers must be an array of integers")?;
            }
            sum
        }
        "words" => {
            let text = job["text"].as_str().ok_or("words: text must be a string")?;
            text.split_whitespace().count() as i64
        }
        "collatz" => {
            let n = job["n"]
                .as_u64()
                .filter(|&n| n >= 1)
                .ok_or("collatz: n must be a positive integer")?;
            let steps = collatz(n);
            if steps > max_steps {
                return Err("over budget: more than");
            }
            steps as i64
        }
        _ => return Err("unknown kind"),
    };
    Ok((kind.to_string(), result))
}

/// Every bundled job by id, with its outcome at `max_steps`.
fn outcomes(jobs: &[Value], max_steps: u64) -> BTreeMap<i64, Outcome> {
    jobs.iter()
        .map(|j| (j["id"].as_i64().expect("id"), expected(j, max_steps)))
        .collect()
}

/// The rows `id|kind|result` the table must hold.
fn want_rows(outcomes: &BTreeMap<i64, Outcome>) -> Vec<String> {
    outcomes
        .iter()
        .filter_map(|(id, o)| o.as_ref().ok().map(|(k, r)| format!("{id}|{k}|{r}")))
        .collect()
}

/// Rows in `job_results`; `None` while the table does not exist (or the
/// server does not answer).
fn rows_now(pg: &PgServer) -> Option<u64> {
    let out = Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-q", "-At", "-d"])
        .arg(pg.url())
        .args(["-c", "SELECT count(*) FROM job_results"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Asserts the table is exactly `want` (as `id|kind|result`, by id),
/// showing the first difference.
fn assert_table(pg: &PgServer, want: &[String], when: &str) {
    let got = pg.psql("SELECT id, kind, result FROM job_results ORDER BY id");
    let got: Vec<&str> = got.lines().collect();
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{when}: {} rows, expected {}; first difference at {first:?}: got {:?}, expected {:?}",
            got.len(),
            want.len(),
            first.and_then(|i| got.get(i)),
            first.and_then(|i| want.get(i)),
        );
    }
}

/// Asserts the job's dead letters are exactly the failing jobs of
/// `outcomes`, each rejected by stage `run` with its reason.
fn assert_dead_letters(letters: &[Value], outcomes: &BTreeMap<i64, Outcome>, when: &str) {
    let mut got = BTreeMap::new();
    for e in letters {
        assert_eq!(e["stage"], "run", "{when}: {e}");
        let id = e["record"]["id"].as_i64().unwrap_or_else(|| panic!("{e}"));
        let error = e["error"].as_str().unwrap_or_default().to_string();
        assert!(
            got.insert(id, error).is_none(),
            "{when}: job {id} dead-lettered twice"
        );
    }
    let want: BTreeMap<i64, &str> = outcomes
        .iter()
        .filter_map(|(id, o)| o.as_ref().err().map(|why| (*id, *why)))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{when}: the dead-lettered jobs"
    );
    for (id, why) in want {
        assert!(
            got[&id].starts_with("jq_error: ") && got[&id].contains(why),
            "{when}: job {id}: reason {:?}, expected one with {why:?}",
            got[&id]
        );
    }
}

/// Runs `scripts/nats-stream ARGS` (it bounds its own time: 5 s socket
/// timeouts); its exit status must be 0.
fn nats_stream(args: &[&str]) {
    let script = examples().join("../../scripts/nats-stream");
    let out = Command::new(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/nats-stream {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn background_jobs_example_is_exact_through_a_killed_worker_and_a_replay() {
    let deadline = Deadline::new();
    let server = NatsServer::start();
    let pg = PgServer::start();
    let url = server.url();
    let job = "jobs";
    let d = Dir::new();
    for f in ["jobs.yaml", "jobs-produce.yaml", "data/jobs.jsonl"] {
        d.file(
            f,
            std::fs::read(examples().join(f)).expect("bundled example file"),
        );
    }
    d.set_env("NATS_URL", &url);
    d.set_env("DATABASE_URL", &pg.url());
    let jobs: Vec<Value> =
        parse_jsonl(&std::fs::read_to_string(d.join("data/jobs.jsonl")).unwrap());
    let total = jobs.len() as u64;
    assert_eq!(total, 3000);
    let first = outcomes(&jobs, DEFAULT_STEPS);
    let want = want_rows(&first);
    let over_budget = first
        .values()
        .filter(|o| *o == &Err("over budget: more than"))
        .count();
    // The data has some of each: good jobs, malformed ones, jobs over the
    // default budget.
    assert!(over_budget > 0 && want.len() as u64 + (over_budget as u64) < total);

    // The stream, twice (the script leaves an existing one alone), and the
    // jobs published.
    nats_stream(&["JOBS", "jobs.>", "--url", &url]);
    nats_stream(&["JOBS", "jobs.>", "--url", &url]);
    let produced = d
        .run(
            &["run", "jobs-produce.yaml", "--report", "json", "--quiet"],
            Duration::from_secs(60),
            &deadline,
        )
        .ok("the producer");
    let produced: Value =
        serde_json::from_str(produced.stdout.lines().last().unwrap_or("")).expect("a report");
    assert_eq!(stage_counter(&produced, "queue", "ok"), total, "{produced}");

    // Two workers and the job; one worker killed mid-run.
    let mut coordinator = d.coordinator("jobs.yaml", &url, job);
    wait_started(&mut coordinator, &deadline);
    let mut victim = d.worker("worker1", "jobs.yaml", &url, job, 2);
    let mut survivors = vec![d.worker("worker2", "jobs.yaml", &url, job, 2)];
    let until = deadline.within(Duration::from_secs(60));
    let at_kill = loop {
        coordinator.assert_running("before a tenth of the results were in the table");
        assert!(Instant::now() < until, "no results in the table after 60 s");
        if let Some(n) = rows_now(&pg).filter(|&n| n >= total / 10) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    victim.kill9();
    coordinator.assert_running("when the worker was killed");
    assert!(
        at_kill < want.len() as u64,
        "the job was done before the kill ({at_kill} rows)"
    );
    eprintln!(
        "killed worker1 with {at_kill} of {} results in the table",
        want.len()
    );

    let report = report_of(&mut coordinator, Duration::from_secs(90), &deadline);
    assert_eq!(report["ok"], true, "{report}");
    let dead = total - want.len() as u64;
    assert_eq!(report["broker_dead_letters"], dead, "{report}");
    assert_eq!(report["swept"], 0, "{report}");
    assert_table(&pg, &want, "after the killed worker");
    let letters = d.dlq(&url, job, &deadline);
    assert_dead_letters(&letters, &first, "the job's dead letters");
    assert_eq!(want.len() as u64 + letters.len() as u64, total);
    // The coordinator copied them to the pipeline's dead-letter file.
    let file =
        parse_jsonl(&std::fs::read_to_string(d.join("out/jobs-dead-letters.jsonl")).unwrap());
    assert_dead_letters(&file, &first, "the dead-letter file");

    // As the README says: the workers stopped, a worker with a larger
    // budget, the dead letters replayed, the job run again.
    drain(&mut survivors, &deadline);
    // The killed worker's messages went to the survivor (its final
    // statistics, reported as it drained, count them).
    let status = d.status(&url, job, &deadline);
    assert!(status.inbox("run").redelivered > 0, "{}", status.text);
    d.set_env("JOBS_MAX_STEPS", "1000");
    let second = outcomes(&jobs, 1000);
    let mut workers: Vec<Proc> = vec![d.worker("worker3", "jobs.yaml", &url, job, 2)];
    let r = d
        .run(
            &["dlq", "replay", "--broker", &url, "--job", job],
            SHORT,
            &deadline,
        )
        .ok("weir dlq replay");
    assert!(
        r.stderr.contains(&format!("{dead} records put back")),
        "{}",
        r.stderr
    );
    let mut coordinator = d.coordinator("jobs.yaml", &url, job);
    let report = report_of(&mut coordinator, Duration::from_secs(60), &deadline);
    assert!(
        coordinator.stderr().contains("resumed"),
        "{}",
        coordinator.stderr()
    );
    let want = want_rows(&second);
    assert_eq!(want.len(), first.len() - (dead as usize) + over_budget);
    assert_eq!(
        report["broker_dead_letters"],
        total - want.len() as u64,
        "{report}"
    );
    assert_table(&pg, &want, "after the replay");
    let letters = d.dlq(&url, job, &deadline);
    assert_dead_letters(&letters, &second, "the dead letters after the replay");
    assert_eq!(want.len() as u64 + letters.len() as u64, total);
    drain(&mut workers, &deadline);
    let status = d.status(&url, job, &deadline);
    assert_eq!(status.state, "Done", "{}", status.text);
}
