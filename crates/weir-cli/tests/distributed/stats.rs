//! The remote statistics: what the coordinator's `--report json` says
//! under `remote`, and what `weir status` says, on small jobs where every
//! number is known.

use std::time::Duration;

use weir_testkit::NatsServer;

use crate::util::{
    Deadline, Dir, EVENTS_PIPELINE, PER_MESSAGE, Proc, drain, remote_counter, report_of,
    wait_started, write_events,
};

const RECORDS: u64 = 1_000;

fn small_dir() -> Dir {
    let d = Dir::new();
    d.file("p.yaml", EVENTS_PIPELINE);
    write_events(&d.join("events.jsonl"), RECORDS);
    d
}

/// The report is printed when the job is finished, so its `remote`
/// numbers must be final, although workers publish their statistics only
/// once a second (until 66717ba the coordinator read them as soon as its
/// flows ended, and often missed the last messages, or all of them). Three
/// runs with fresh workers, so that a lucky timing does not hide it.
#[test]
fn report_counts_every_remote_record() {
    let deadline = Deadline::new();
    let server = NatsServer::start();
    let url = server.url();
    let d = small_dir();
    for run in 0..3 {
        let job = format!("final-stats-{run}");
        let mut coordinator = d.coordinator("p.yaml", &url, &job);
        wait_started(&mut coordinator, &deadline);
        let mut workers: Vec<Proc> = (1..=2)
            .map(|i| d.worker(&format!("worker{run}-{i}"), "p.yaml", &url, &job, 2))
            .collect();
        let report = report_of(&mut coordinator, Duration::from_secs(60), &deadline);
        drain(&mut workers, &deadline);
        let got = (
            remote_counter(&report, "work", "messages"),
            remote_counter(&report, "work", "in"),
            remote_counter(&report, "work", "out"),
        );
        assert_eq!(
            got,
            (RECORDS / PER_MESSAGE, RECORDS, RECORDS),
            "run {run}: {}",
            report["remote"]
        );
        // Counted on the broker: exact whatever happens to workers.
        assert_eq!(
            remote_counter(&report, "work", "messages_settled"),
            RECORDS / PER_MESSAGE,
            "{}",
            report["remote"]
        );
        assert_eq!(report["remote"]["work"]["records_estimated"], true);
        // `weir status` shows what the coordinator read from its own inbox
        // (it said 0 before issue 8).
        let status = d.status(&url, &job, &deadline);
        assert_eq!(status.inbox("db").records_in, RECORDS, "{}", status.text);
    }
}

/// Workers live longer than jobs: running a job again (same name, a fresh
/// start, which deletes the previous run's worker statistics) must count
/// what the same workers did in this run, no more (until 66717ba their
/// counters were cumulative: 2,000), no less.
#[test]
fn rerun_does_not_count_the_previous_run() {
    let deadline = Deadline::new();
    let server = NatsServer::start();
    let url = server.url();
    let job = "rerun";
    let d = small_dir();
    let mut workers: Vec<Proc> = (1..=2)
        .map(|i| d.worker(&format!("worker{i}"), "p.yaml", &url, job, 2))
        .collect();
    for run in 0..2 {
        let mut coordinator = d.coordinator("p.yaml", &url, job);
        let report = report_of(&mut coordinator, Duration::from_secs(60), &deadline);
        assert_eq!(report["ok"], true, "run {run}: {report}");
        assert_eq!(
            remote_counter(&report, "work", "in"),
            RECORDS,
            "run {run}: {}",
            report["remote"]
        );
    }
    // Drained, the workers write their final counts.
    drain(&mut workers, &deadline);
    let status = d.status(&url, job, &deadline);
    let work = status.inbox("work");
    assert_eq!(work.records_in, RECORDS, "{}", status.text);
    assert_eq!(work.records_out, RECORDS, "{}", status.text);
}
