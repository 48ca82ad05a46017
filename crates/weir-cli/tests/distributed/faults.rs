//! Faults in the middle of a job: workers killed with SIGKILL (three in a
//! row, each replaced), and the broker killed and restarted. The events
//! job's table must be exactly the local run's: the sink upserts on `id`,
//! so redelivered messages may write a row twice, but no row may be lost
//! or differ.

use std::time::Duration;

use weir_testkit::NatsServer;

use crate::util::{
    Deadline, EVENTS, EVENTS_PIPELINE, PER_MESSAGE, Proc, assert_same_rows, drain, events_dir,
    events_reference, events_table, remote_counter, report_of, wait_done, wait_started,
};

#[test]
fn three_workers_killed_with_sigkill_lose_nothing() {
    let deadline = Deadline::new();
    let want = events_reference();
    let server = NatsServer::start();
    let url = server.url();
    let job = "kill-nine";
    let d = events_dir();
    let total = EVENTS / PER_MESSAGE;

    let mut coordinator = d.coordinator("p.yaml", &url, job);
    wait_started(&mut coordinator, &deadline);
    let mut alive: Vec<Proc> = (1..=3)
        .map(|i| d.worker(&format!("worker{i}"), "p.yaml", &url, job, 2))
        .collect();
    let mut killed = Vec::new();
    for round in 1..=3u64 {
        // Some progress first, so the victim holds messages it pulled.
        let s = wait_done(
            &d,
            &url,
            job,
            "work",
            total * round * 15 / 100,
            &mut coordinator,
            &deadline,
        );
        let mut victim = alive.remove(0);
        victim.kill9();
        eprintln!(
            "round {round}: killed {} at {} of {total} messages done",
            victim.name,
            s.inbox("work").done
        );
        killed.push(victim);
        alive.push(d.worker(&format!("worker{}", round + 3), "p.yaml", &url, job, 2));
    }

    let report = report_of(&mut coordinator, Duration::from_secs(120), &deadline);
    assert_same_rows("events", &events_table(&d.join("out/e.db")), want);
    // No message ran out of deliveries (max_deliver 5).
    assert_eq!(report["broker_dead_letters"], 0, "{report}");
    assert_eq!(report["swept"], 0, "{report}");

    // What the killed workers held came back to the others. The survivors,
    // drained, report their final counts; the killed workers' last reports
    // (at most a second old when they died) stay in the job's bucket. The
    // messages held by the last victim can only have been finished by the
    // survivors, so their redeliveries are certainly counted.
    let in_report = remote_counter(&report, "work", "redelivered");
    drain(&mut alive, &deadline);
    let status = d.status(&url, job, &deadline);
    assert_eq!(status.state, "Done", "{}", status.text);
    let work = status.inbox("work");
    eprintln!(
        "redeliveries: {in_report} in the coordinator's report, {} in the final statistics",
        work.redelivered
    );
    assert!(
        work.redelivered > 0,
        "no redelivery counted after three workers were killed:\n{}",
        status.text
    );
    // The report is read when the job ends, seconds after the first
    // kills' redeliveries were reported; it may miss only the last second.
    assert!(in_report > 0, "{}", report["remote"]);
    assert!(
        in_report <= work.redelivered,
        "the report counted {in_report} redeliveries, the final statistics {}",
        work.redelivered
    );
    assert_eq!((work.backlog, work.in_flight), (0, 0), "{}", status.text);
    assert_eq!(status.dead_letters, 0, "{}", status.text);
}

/// Where a broker restart hits the events job.
#[derive(Clone, Copy, Debug)]
enum RestartAt {
    /// A quarter of the messages done, after the coordinator published
    /// every message of its input (the inbox holds them all:
    /// `edge_capacity: 10000`): the workers and the coordinator's readers
    /// ride out the restart, its publisher has nothing in flight.
    AllPublished,
    /// A quarter of the messages done and the pool's inbox full (1,000
    /// messages): the coordinator is held back by backpressure.
    FullInbox,
    /// Early, while the coordinator publishes freely: the inbox has room
    /// and its sends are in flight. (Until 66717ba the coordinator then
    /// confirmed each lost publish ack after its own 5 s timeout, one after
    /// the other, and the job crawled for minutes.)
    Publishing,
}

/// Runs the events job on two workers, kills the broker (SIGKILL) at
/// `at`, restarts it 1.5 s later on the same store and port, and checks
/// that everyone rode it out and the table is exact.
fn broker_restart(job: &str, at: RestartAt) {
    let deadline = Deadline::new();
    let want = events_reference();
    let mut server = NatsServer::start();
    let url = server.url();
    let d = events_dir();
    // The inbox holds every message, or a quarter of them.
    let capacity = match at {
        RestartAt::AllPublished => 10_000,
        RestartAt::FullInbox | RestartAt::Publishing => 1_000,
    };
    d.file(
        "p.yaml",
        EVENTS_PIPELINE.replace(
            "broker:\n",
            &format!("broker:\n  edge_capacity: {capacity}\n"),
        ),
    );
    let total = EVENTS / PER_MESSAGE;

    let mut coordinator = d.coordinator("p.yaml", &url, job);
    wait_started(&mut coordinator, &deadline);
    let mut workers: Vec<Proc> = (1..=2)
        .map(|i| d.worker(&format!("worker{i}"), "p.yaml", &url, job, 2))
        .collect();
    loop {
        deadline.check(format_args!("waiting for the restart point {at:?}"));
        coordinator.assert_running("before the restart point: make the input larger");
        let s = d.status(&url, job, &deadline);
        std::thread::sleep(Duration::from_millis(50));
        let Some(work) = s.inboxes.iter().find(|i| i.name == "work") else {
            continue;
        };
        // Stored, i.e. published and not yet committed.
        let stored = work.backlog + work.in_flight;
        let published = stored + work.done;
        let reached = match at {
            RestartAt::AllPublished => work.done >= total / 4 && published == total,
            RestartAt::FullInbox => work.done >= total / 4 && stored >= 990,
            RestartAt::Publishing => (100..total / 5).contains(&published) && stored < 900,
        };
        if reached {
            eprintln!("restart at {at:?}: {work:?}");
            break;
        }
        assert!(
            !matches!(at, RestartAt::Publishing) || published < total / 5,
            "the coordinator published too fast to catch it publishing: {work:?}"
        );
    }

    server.stop(); // SIGKILL
    std::thread::sleep(Duration::from_millis(1500));
    server.restart();
    // Everyone rode out the outage: nobody exited.
    coordinator.assert_running("after the broker restart");
    for w in &mut workers {
        w.assert_running("after the broker restart");
    }

    let report = report_of(&mut coordinator, Duration::from_secs(100), &deadline);
    assert_same_rows("events", &events_table(&d.join("out/e.db")), want);
    assert_eq!(report["broker_dead_letters"], 0, "{report}");
    // Not asserted: records the sink took more than once (harmless with
    // upserts; see the report).
    let taken = crate::util::stage_counter(&report, "db", "in");
    eprintln!("the sink took {taken} records for {EVENTS} rows");
    assert!(taken >= EVENTS, "{report}");
    drain(&mut workers, &deadline);
    let status = d.status(&url, job, &deadline);
    assert_eq!(status.state, "Done", "{}", status.text);
    assert_eq!(status.dead_letters, 0, "{}", status.text);
}

#[test]
fn broker_restart_after_publishing_loses_nothing() {
    broker_restart("restart-published", RestartAt::AllPublished);
}

#[test]
fn broker_restart_under_backpressure_loses_nothing() {
    broker_restart("restart-full", RestartAt::FullInbox);
}

#[test]
fn broker_restart_while_the_coordinator_publishes_loses_nothing() {
    broker_restart("restart-publishing", RestartAt::Publishing);
}
