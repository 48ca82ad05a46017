//! A pool that changes during a job: one slow worker (one message at a
//! time) starts it, two more join, one of them leaves with SIGTERM.

use std::time::{Duration, Instant};

use weir_testkit::NatsServer;

use crate::util::{
    Deadline, EVENTS, EVENTS_PIPELINE, PER_MESSAGE, assert_same_rows, drain, events_dir,
    events_reference, events_table, remote_counter, report_of, wait_done, wait_started,
};

#[test]
fn workers_join_and_leave_mid_job() {
    let deadline = Deadline::new();
    let want = events_reference();
    let server = NatsServer::start();
    let url = server.url();
    let job = "join-leave";
    let d = events_dir();
    let total = EVENTS / PER_MESSAGE;

    let mut coordinator = d.coordinator("p.yaml", &url, job);
    wait_started(&mut coordinator, &deadline);
    let slow = d.worker("slow", "p.yaml", &url, job, 1);
    wait_done(
        &d,
        &url,
        job,
        "work",
        total / 10,
        &mut coordinator,
        &deadline,
    );

    // Two more join; `weir status` sees three live workers.
    let joined = d.worker("joined", "p.yaml", &url, job, 2);
    let mut leaving = d.worker("leaving", "p.yaml", &url, job, 2);
    let mut n = 0;
    loop {
        let s = wait_done(
            &d,
            &url,
            job,
            "work",
            total * 3 / 10 + n,
            &mut coordinator,
            &deadline,
        );
        if s.inbox("work").workers == Some(3) {
            break;
        }
        n += 1;
    }

    // One leaves: SIGTERM drains what it holds, and it exits 0.
    leaving.term();
    leaving.wait_ok(Duration::from_secs(20), &deadline);
    let err = leaving.stderr();
    assert!(err.contains("draining"), "{err}");
    let took: u64 = err
        .lines()
        .find_map(|l| {
            l.split_once(": work: ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no final statistics line for 'work':\n{err}"));
    assert!(took > 0, "the worker that left never got a message:\n{err}");
    assert!(err.contains("(0 redelivered, 0 retried)"), "{err}");

    let report = report_of(&mut coordinator, Duration::from_secs(120), &deadline);
    assert_same_rows("events", &events_table(&d.join("out/e.db")), want);

    let mut rest = vec![slow, joined];
    drain(&mut rest, &deadline);
    let logs: String = [&rest[0], &rest[1], &leaving]
        .iter()
        .map(|w| format!("{}:\n{}", w.name, w.stderr()))
        .collect();
    // No redelivery at all: the slow worker's queued messages are kept
    // alive by in-progress acks although ack_wait is 2 s, and the leaving
    // worker finished what it had been delivered.
    let status = d.status(&url, job, &deadline);
    let work = status.inbox("work");
    assert_eq!(
        remote_counter(&report, "work", "redelivered"),
        0,
        "{}\n{logs}",
        report["remote"]
    );
    assert_eq!(work.redelivered, 0, "{}\n{logs}", status.text);
    // Every worker stopped cleanly, so their final counts are exact: each
    // record went through the pool once.
    assert_eq!(work.records_in, EVENTS, "{}\n{logs}", status.text);
    assert_eq!(work.records_out, EVENTS, "{}", status.text);
    assert_eq!(work.done, total, "{}", status.text);
    assert_eq!(work.workers, Some(0), "all stopped: {}", status.text);
}

/// SIGTERM "finishes the messages in hand": a drained worker must leave
/// nothing delivered-but-unacknowledged behind. Here ack_wait is the
/// default 30 s, so whatever it left would stall the job for 30 s before
/// another worker got it. One worker, stopped mid-job: right after it
/// exits, nothing may be in flight on its inbox.
#[test]
fn drained_worker_leaves_nothing_in_flight() {
    let deadline = Deadline::new();
    let want = events_reference();
    let server = NatsServer::start();
    let url = server.url();
    let job = "drain";
    let d = events_dir();
    d.file(
        "p.yaml",
        EVENTS_PIPELINE.replace("  ack_wait_secs: 2\n", ""),
    );
    let total = EVENTS / PER_MESSAGE;

    let mut coordinator = d.coordinator("p.yaml", &url, job);
    wait_started(&mut coordinator, &deadline);
    let mut first = d.worker("first", "p.yaml", &url, job, 2);
    wait_done(
        &d,
        &url,
        job,
        "work",
        total / 10,
        &mut coordinator,
        &deadline,
    );
    first.term();
    first.wait_ok(Duration::from_secs(20), &deadline);

    // Acknowledgements sent just before the exit may take a moment.
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let s = d.status(&url, job, &deadline);
        let work = s.inbox("work");
        assert!(
            work.backlog > 0,
            "the job must not be finished yet:\n{}",
            s.text
        );
        if work.in_flight == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the drained worker left {} messages in flight (delivered, never acknowledged):\n{}\n{}",
            work.in_flight,
            s.text,
            first.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Another worker finishes the job, without any redelivery.
    let mut rest = vec![d.worker("second", "p.yaml", &url, job, 2)];
    report_of(&mut coordinator, Duration::from_secs(60), &deadline);
    assert_same_rows("events", &events_table(&d.join("out/e.db")), want);
    drain(&mut rest, &deadline);
    let s = d.status(&url, job, &deadline);
    assert_eq!(s.inbox("work").redelivered, 0, "{}", s.text);
}
