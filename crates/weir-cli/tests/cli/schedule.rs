//! The `schedule` source in a real `weir run`: ticks 100 ms apart reach a
//! SQLite table once each; a restart with `missed: catch_up` after a gap
//! emits the ticks missed during it, once, before going on; SIGINT ends an
//! unbounded schedule with every emitted tick written and remembered; bad
//! options are errors at their line.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{Dir, KillOnDrop, assert_accounting, code, n, text};

/// A schedule every 100 ms into a table keyed by `scheduled_at`; `extra`
/// adds options to the schedule.
fn pipeline(extra: &str) -> String {
    format!(
        "\
inputs:
  - name: ticks
    schedule: {{ every: 100ms, missed: catch_up, name: job{extra} }}
outputs:
  - name: db
    sqlite:
      path: out.db
      table: ticks
      columns: {{ scheduled_at: text, fired_at: text, name: text }}
      key: [scheduled_at]
"
    )
}

/// The table's `scheduled_at`s as Unix milliseconds, in order, and how
/// many rows it has.
fn scheduled(d: &Dir) -> Vec<i64> {
    let conn = rusqlite::Connection::open(d.join("out.db")).unwrap();
    let mut st = conn
        .prepare("SELECT scheduled_at, fired_at, name FROM ticks ORDER BY scheduled_at")
        .unwrap();
    st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })
    .unwrap()
    .map(|row| {
        let (at, fired, name) = row.unwrap();
        assert_eq!(name, "job");
        assert!(fired >= at, "fired at {fired}, before its time {at}");
        at.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    })
    .collect()
}

/// The last handled tick the state database holds for the pipeline.
fn last_handled(d: &Dir) -> i64 {
    let conn = rusqlite::Connection::open(d.join(".weir/schedule.db")).unwrap();
    conn.query_row(
        "SELECT last_handled_ms FROM schedule_ticks WHERE input = 'ticks'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn assert_every_100ms(ticks: &[i64]) {
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] == 100),
        "ticks not 100 ms apart, each once: {ticks:?}"
    );
}

#[test]
fn a_restart_catches_up_the_ticks_it_missed_once() {
    let d = Dir::new();
    d.file("p.yaml", pipeline(", count: 5"));
    let report = d.run_ok_within("p.yaml", Duration::from_secs(30));
    assert_accounting(&report);
    assert_eq!(n(&report, "db", "ok"), 5);
    let first = scheduled(&d);
    assert_eq!(first.len(), 5);
    assert_every_100ms(&first);
    assert_eq!(last_handled(&d), first[4]);

    // Down for about 700 ms: about 7 ticks missed, all emitted at the
    // start of the next run, then the schedule goes on.
    std::thread::sleep(Duration::from_millis(700));
    d.file("p.yaml", pipeline(", count: 12"));
    let report = d.run_ok_within("p.yaml", Duration::from_secs(30));
    assert_accounting(&report);
    assert_eq!(n(&report, "db", "ok"), 12, "each tick emitted once");
    let all = scheduled(&d);
    assert_eq!(all.len(), 17, "{all:?}");
    assert_eq!(all[..5], first[..]);
    assert_every_100ms(&all);
    assert_eq!(last_handled(&d), all[16]);
}

/// Starts an unbounded `weir run` of `p.yaml` and waits until the table
/// holds `rows` ticks.
fn start_until(d: &Dir, rows: i64) -> (std::process::Child, KillOnDrop) {
    let child = Command::new(assert_cmd::cargo::cargo_bin("weir"))
        .current_dir(d.path())
        .args(["run", "p.yaml", "--report", "json", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kill = KillOnDrop(child.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(d.join("out.db")).is_err()
        || rusqlite::Connection::open(d.join("out.db"))
            .and_then(|c| c.query_row("SELECT count(*) FROM ticks", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
            < rows
    {
        assert!(Instant::now() < deadline, "no ticks written");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, kill)
}

#[test]
fn sigint_drains_and_the_next_run_goes_on_from_there() {
    let d = Dir::new();
    d.file("p.yaml", pipeline(""));
    let (child, kill) = start_until(&d, 4);
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
    let first = scheduled(&d);
    assert_eq!(n(&report, "db", "ok"), first.len() as u64);
    assert_every_100ms(&first);
    assert_eq!(last_handled(&d), *first.last().unwrap());

    std::thread::sleep(Duration::from_millis(300));
    d.file("p.yaml", pipeline(", count: 6"));
    d.run_ok_within("p.yaml", Duration::from_secs(30));
    let all = scheduled(&d);
    assert_eq!(all.len(), first.len() + 6, "{all:?}");
    assert_every_100ms(&all);
}

/// `kill -9` mid-run: ticks emitted and not yet remembered as handled are
/// emitted again by the next run (at least once), none is lost, and the
/// key on `scheduled_at` keeps each once in the table.
#[test]
fn after_kill_9_no_tick_is_lost() {
    let d = Dir::new();
    d.file("p.yaml", pipeline(""));
    let (mut child, kill) = start_until(&d, 6);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(kill);
    let first = scheduled(&d);
    assert_every_100ms(&first);
    // What was saved is at most what was written: nothing is skipped.
    assert!(last_handled(&d) <= *first.last().unwrap());

    std::thread::sleep(Duration::from_millis(300));
    d.file("p.yaml", pipeline(", count: 8"));
    let report = d.run_ok_within("p.yaml", Duration::from_secs(30));
    assert_accounting(&report);
    let all = scheduled(&d);
    assert_eq!(all[0], first[0]);
    assert_every_100ms(&all);
    assert!(all.len() >= first.len() + 3, "{first:?} then {all:?}");
}

/// `--no-checkpoint` keeps no state: nothing is written beside the
/// pipeline, and nothing is caught up.
#[test]
fn no_checkpoint_keeps_no_state() {
    let d = Dir::new();
    d.file("p.yaml", pipeline(", count: 2"));
    let out = d
        .weir(&["run", "p.yaml", "--no-checkpoint"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("keeps no state"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(scheduled(&d).len(), 2);
    assert!(!d.join(".weir").exists());
}

/// `--resume` accepts a schedule, which resumes by its own policy on
/// every run; a stdin input beside it is still refused.
#[test]
fn resume_accepts_a_schedule() {
    let d = Dir::new();
    for count in [3, 5] {
        d.file("p.yaml", pipeline(&format!(", count: {count}")));
        let out = d.weir(&["run", "p.yaml", "--resume"]).output().unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        std::thread::sleep(Duration::from_millis(250));
    }
    let all = scheduled(&d);
    assert_eq!(all.len(), 8, "{all:?}");
    assert_every_100ms(&all);

    let mixed = pipeline("").replace("outputs:", "  - name: typed\n    stdin: {}\noutputs:");
    d.file("p.yaml", mixed);
    let out = d.weir(&["run", "p.yaml", "--resume"]).output().unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("input 'typed' is not a file input"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_options_are_reported_at_their_line() {
    let d = Dir::new();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: ticks
    schedule:
      cron: '0 9 * * MON'
      timezone: Europe/Nowhere
outputs:
  - name: out
    stdout: {}
",
    );
    let (status, _, stderr) = d.check("p.yaml");
    assert_eq!(status, 2, "{stderr}");
    assert!(
        stderr.contains("unknown time zone 'Europe/Nowhere'"),
        "{stderr}"
    );
    assert!(stderr.contains("p.yaml:5:17"), "{stderr}");

    d.file(
        "p.yaml",
        "\
inputs:
  - name: ticks
    schedule: { cron: '61 * * * *' }
outputs:
  - name: out
    stdout: {}
",
    );
    let (status, _, stderr) = d.check("p.yaml");
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("cron '61 * * * *'"), "{stderr}");
    assert!(stderr.contains("p.yaml:3:23"), "{stderr}");

    // A schedule that never fires, a limit that would do nothing or cost
    // too much at start.
    for (schedule, message, at) in [
        ("{ cron: '0 0 30 2 *' }", "would never fire", "p.yaml:3:23"),
        ("{ every: 100000000d }", "would never fire", "p.yaml:3:24"),
        (
            "{ every: 1s, catch_up_limit: 5 }",
            "'missed: catch_up' only",
            "p.yaml:3:44",
        ),
        (
            "{ cron: '* * * * * *', missed: catch_up, catch_up_limit: 100001 }",
            "at most 100000",
            "p.yaml:3:72",
        ),
    ] {
        d.file(
            "p.yaml",
            format!(
                "inputs:\n  - name: ticks\n    schedule: {schedule}\noutputs:\n  - name: out\n    stdout: {{}}\n"
            ),
        );
        let (status, _, stderr) = d.check("p.yaml");
        assert_eq!(status, 2, "{schedule}: {stderr}");
        assert!(stderr.contains(message), "{schedule}: {stderr}");
        assert!(stderr.contains(at), "{schedule}: {stderr}");
    }
    // A check keeps no state.
    assert!(!d.join(".weir").exists());
}

#[test]
fn explain_shows_the_example() {
    let d = Dir::new();
    let out = d.weir(&["explain", "schedule"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("schedule (source)\n"), "{stdout}");
    assert!(stdout.contains("\n  missed: "), "{stdout}");
    assert!(
        stdout.ends_with(
            "\nexample:\n  cron: '0 */5 * * * *'\n  timezone: Europe/Paris\n  missed: catch_up\n"
        ),
        "{stdout}"
    );
}
