//! The `schedule` source in distributed mode: ticks fire in the
//! coordinator (the holder of the job's lease, so one process fires), go
//! through a remote stage on a worker, and the last handled tick is kept
//! in the job's bucket on the broker: the next coordinator run, with
//! `missed: catch_up` after a gap, emits the ticks missed meanwhile, once;
//! `--fresh` forgets them.

use std::time::Duration;

use rusqlite::types::Value as Sql;
use weir_testkit::NatsServer;

use crate::util::{Deadline, Dir, drain, report_of, rows, stage_counter};

fn pipeline(count: u64) -> String {
    format!(
        "\
inputs:
  - name: ticks
    schedule: {{ every: 100ms, missed: catch_up, count: {count} }}
stages:
  - name: tag
    jq: {{ program: '.name = \"remote-\" + .name' }}
    remote: true
outputs:
  - name: db
    sqlite:
      path: out/t.db
      table: ticks
      columns: {{ scheduled_at: text, name: text }}
      key: [scheduled_at]
"
    )
}

/// The table's ticks as Unix milliseconds, in order.
fn ticks(d: &Dir) -> Vec<i64> {
    rows(
        &d.join("out/t.db"),
        "SELECT scheduled_at, name FROM ticks ORDER BY scheduled_at",
    )
    .into_iter()
    .map(|r| {
        assert_eq!(r[1], Sql::Text("remote-ticks".into()), "through the worker");
        let Sql::Text(at) = &r[0] else {
            panic!("{r:?}")
        };
        at.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    })
    .collect()
}

fn assert_every_100ms(t: &[i64]) {
    assert!(
        t.windows(2).all(|w| w[1] - w[0] == 100),
        "ticks not 100 ms apart, each once: {t:?}"
    );
}

#[test]
fn the_last_handled_tick_is_kept_on_the_broker() {
    let deadline = Deadline::new();
    let server = NatsServer::start();
    let url = server.url();
    let d = Dir::new();
    d.file("p.yaml", pipeline(5));
    let mut worker = d.worker("w1", "p.yaml", &url, "sched", 2);

    let mut c = d.coordinator("p.yaml", &url, "sched");
    let report = report_of(&mut c, Duration::from_secs(60), &deadline);
    assert_eq!(stage_counter(&report, "db", "ok"), 5, "{report}");
    let first = ticks(&d);
    assert_eq!(first.len(), 5);
    assert_every_100ms(&first);
    assert!(
        !d.join(".weir").exists(),
        "no local state in distributed mode"
    );

    // About 7 ticks missed while no coordinator ran: the next one emits
    // them first, from what the broker kept.
    std::thread::sleep(Duration::from_millis(700));
    d.file("p.yaml", pipeline(12));
    let mut c = d.coordinator("p.yaml", &url, "sched");
    let report = report_of(&mut c, Duration::from_secs(60), &deadline);
    assert_eq!(stage_counter(&report, "db", "ok"), 12, "{report}");
    let all = ticks(&d);
    assert_eq!(all.len(), 17, "{all:?}");
    assert_eq!(all[..5], first[..]);
    assert_every_100ms(&all);

    // --fresh starts over: the next tick from now, nothing caught up.
    std::thread::sleep(Duration::from_millis(700));
    d.file("p.yaml", pipeline(2));
    let before = jiff::Timestamp::now().as_millisecond();
    let mut c = d.spawn(
        "coordinator-fresh",
        &[
            "run", "p.yaml", "--broker", &url, "--job", "sched", "--fresh", "--report", "json",
            "--quiet",
        ],
    );
    report_of(&mut c, Duration::from_secs(60), &deadline);
    let fresh: Vec<i64> = ticks(&d).into_iter().filter(|t| *t > all[16]).collect();
    assert_eq!(fresh.len(), 2, "{fresh:?}");
    assert!(fresh[0] > before, "{fresh:?} after {before}");

    drain(std::slice::from_mut(&mut worker), &deadline);
}

/// A last handled tick on the broker that cannot be read fails a
/// `catch_up` run with a clear error, instead of starting from now and
/// losing the ticks missed since. Its key names the input one-to-one.
#[test]
fn an_unreadable_tick_on_the_broker_fails_a_catch_up_run() {
    let deadline = Deadline::new();
    let server = NatsServer::start();
    let url = server.url();
    let d = Dir::new();
    d.file("p.yaml", pipeline(2));
    let mut worker = d.worker("w1", "p.yaml", &url, "sched-bad", 1);
    let mut c = d.coordinator("p.yaml", &url, "sched-bad");
    let report = report_of(&mut c, Duration::from_secs(60), &deadline);
    assert_eq!(stage_counter(&report, "db", "ok"), 2, "{report}");

    let key = "sched-bad.s.schedule_2eticks";
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = async_nats::connect(url.as_str()).await.unwrap();
            let kv = async_nats::jetstream::new(client)
                .get_key_value("weir_jobs")
                .await
                .unwrap();
            assert!(kv.get(key).await.unwrap().is_some(), "{key} was saved");
            kv.put(key, "garbage".into()).await.unwrap();
        });

    let r = d.run(
        &[
            "run",
            "p.yaml",
            "--broker",
            &url,
            "--job",
            "sched-bad",
            "--quiet",
        ],
        Duration::from_secs(60),
        &deadline,
    );
    assert!(!r.status.success(), "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot read the last handled tick")
            && r.stderr.contains("is not a number"),
        "{}",
        r.stderr
    );
    assert_eq!(ticks(&d).len(), 2, "nothing emitted");
    drain(std::slice::from_mut(&mut worker), &deadline);
}
