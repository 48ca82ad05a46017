//! A coordinator run that fails (not one that is stopped) and is run
//! again: the failed run must not publish what the resumed run would send
//! again under other ids. The output has no key, so a record stored twice
//! shows.

use std::time::Duration;

use weir_testkit::NatsServer;

use crate::util::{Deadline, Dir, SHORT, drain, report_of, rows, wait_started};

const PIPELINE: &str = r#"
inputs:
  - name: a
    generate: { count: 100000, rate: 25000, template: { id: "{{seq}}" } }
stages:
  - name: work
    remote: true
    jq: { program: '.score = (.id * 3)' }
outputs:
  - name: db
    sqlite:
      path: out/a.db
      table: t
      busy_timeout_ms: 50
      columns: { id: integer, score: integer }
broker:
  records_per_message: 300
"#;

/// The output database is locked by another writer, so the first write
/// fails and the run fails (exit 1) while its input (4 s of generated
/// records) is being read; then the
/// lock goes and the job is run again. Before the fix the failed run
/// published each input lane's partial last message (its sink finished as
/// if the input had ended); the resumed run sent those records again in a
/// complete message under another id, and they were stored twice.
#[test]
fn a_failed_run_resumed_stores_each_record_once() {
    let deadline = Deadline::new();
    let d = Dir::new();
    d.file("p.yaml", PIPELINE);
    let n: i64 = 100_000;
    std::fs::create_dir_all(d.join("out")).unwrap();
    let lock = rusqlite::Connection::open(d.join("out/a.db")).unwrap();
    lock.pragma_update(None, "journal_mode", "WAL").unwrap();
    lock.execute_batch(
        "CREATE TABLE t (\"id\" INTEGER, \"score\" INTEGER); BEGIN IMMEDIATE; INSERT INTO t VALUES (-1, -1);",
    )
    .unwrap();

    let server = NatsServer::start();
    let url = server.url();
    let mut workers = vec![d.worker("w1", "p.yaml", &url, "aborted", 2)];
    let mut first = d.coordinator("p.yaml", &url, "aborted");
    wait_started(&mut first, &deadline);
    let st = first.wait(SHORT, &deadline);
    assert_eq!(st.code(), Some(1), "{}", first.stderr());
    assert!(
        first.stderr().contains("is locked by another connection"),
        "{}",
        first.stderr()
    );
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);

    let mut second = d.coordinator("p.yaml", &url, "aborted");
    let report = report_of(&mut second, Duration::from_secs(120), &deadline);
    assert_eq!(report["ok"], true, "{report}");
    assert!(second.stderr().contains("resumed"), "{}", second.stderr());
    let counts = rows(
        &d.join("out/a.db"),
        "SELECT count(*), count(DISTINCT id), min(id), max(id), sum(score = id * 3) FROM t",
    );
    let want = [n, n, 0, n - 1, n]
        .map(rusqlite::types::Value::Integer)
        .to_vec();
    if counts[0] != want {
        // What went wrong, for the record: which ids are doubled or
        // missing, and what each coordinator said.
        let doubled = rows(
            &d.join("out/a.db"),
            "SELECT id, count(*) FROM t GROUP BY id HAVING count(*) > 1 ORDER BY id LIMIT 20",
        );
        let present = rows(&d.join("out/a.db"), "SELECT DISTINCT id FROM t ORDER BY id");
        let present: std::collections::BTreeSet<i64> = present
            .iter()
            .filter_map(|r| match r[0] {
                rusqlite::types::Value::Integer(i) => Some(i),
                _ => None,
            })
            .collect();
        let missing: Vec<i64> = (0..n).filter(|i| !present.contains(i)).take(20).collect();
        panic!(
            "rows, distinct ids, min, max, right scores: {:?}, want {want:?}\ndoubled (first 20): {doubled:?}\nmissing (first 20): {missing:?}\nfirst run: {}\nsecond run: {}\nreport: {report}",
            counts[0],
            first.stderr(),
            second.stderr()
        );
    }
    drain(&mut workers, &deadline);
}
