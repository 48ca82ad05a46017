//! Mistakes refused up front: a broker that cannot be reached, and a stage
//! that must see every record marked `remote`.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use weir_testkit::NatsServer;

use crate::util::{Deadline, Dir, EVENTS_PIPELINE, Proc, write_events};

/// Starts `weir run --broker URL`, `weir worker` and `weir status`
/// against `url`; each must fail within 10 s saying it cannot reach it.
fn assert_unreachable(d: &Dir, url: &str, deadline: &Deadline) {
    let started = Instant::now();
    let mut procs: Vec<Proc> = vec![
        d.spawn(
            "run",
            &[
                "run",
                "p.yaml",
                "--broker",
                url,
                "--job",
                "unreachable",
                "--quiet",
            ],
        ),
        d.spawn(
            "worker",
            &["worker", "p.yaml", "--broker", url, "--job", "unreachable"],
        ),
        d.spawn("status", &["status", "--broker", url]),
    ];
    for p in &mut procs {
        let st = p.wait(Duration::from_secs(10), deadline);
        let err = p.stderr();
        assert!(!st.success(), "{} succeeded against {url}:\n{err}", p.name);
        assert_eq!(st.code(), Some(1), "{}: {err}", p.name);
        assert!(
            err.contains(&format!("cannot reach the broker at {url}")),
            "{}: {err}",
            p.name
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// No broker: every command that needs one fails within 10 s (exit code 1)
/// naming the address, whether nothing listens there or something that
/// never speaks NATS.
#[test]
fn unreachable_broker_fails_fast() {
    let deadline = Deadline::new();
    let d = Dir::new();
    d.file("p.yaml", EVENTS_PIPELINE);
    write_events(&d.join("events.jsonl"), 10);

    // Nothing listens: refused at once.
    let url = format!("nats://127.0.0.1:{}", weir_testkit::free_port());
    assert_unreachable(&d, &url, &deadline);

    // Something listens but never speaks NATS: the connect times out.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", silent.local_addr().unwrap());
    assert_unreachable(&d, &url, &deadline);
    assert!(!d.join("out/e.db").exists(), "nothing was written");
}

/// `remote: true` on a dedupe: `weir run --broker`, `weir worker` and
/// `weir check` refuse it with exit code 2, pointing at the line and
/// column of `remote`, before anything is created on the broker.
#[test]
fn remote_dedupe_is_refused_at_its_line() {
    let deadline = Deadline::new();
    let server = NatsServer::start();
    let url = server.url();
    let d = Dir::new();
    d.file(
        "p.yaml",
        "inputs:\n  - name: events\n    file: { path: events.jsonl }\nstages:\n  - name: once\n    dedupe: { key: .id }\n    remote: true\noutputs:\n  - name: out\n    file: { path: out/x.jsonl }\n",
    );
    write_events(&d.join("events.jsonl"), 10);

    for args in [
        &["run", "p.yaml", "--broker", &url, "--job", "dedupe"][..],
        &["worker", "p.yaml", "--broker", &url, "--job", "dedupe"][..],
        &["check", "p.yaml"][..],
    ] {
        let r = d.run(args, Duration::from_secs(30), &deadline);
        assert_eq!(r.status.code(), Some(2), "weir {args:?}:\n{}", r.stderr);
        assert!(
            r.stderr.contains("stage 'once' is a dedupe")
                && r.stderr.contains("cannot be `remote`"),
            "{}",
            r.stderr
        );
        // Line 7, column 13: the value of `remote`.
        assert!(r.stderr.contains("--> p.yaml:7:13"), "{}", r.stderr);
        assert!(r.stderr.contains("7 |     remote: true"), "{}", r.stderr);
    }
    // Refused before anything was created on the broker.
    let r = d
        .run(
            &["status", "--broker", &url],
            Duration::from_secs(30),
            &deadline,
        )
        .ok("weir status");
    assert!(r.stdout.contains("no jobs on"), "{}", r.stdout);
    assert!(!d.join("out/x.jsonl").exists());
}
