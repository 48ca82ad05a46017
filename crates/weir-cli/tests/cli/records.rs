//! Hostile records in a real run: each one is dead-lettered with its
//! position and a reason, nothing is stored or replaced silently, and the
//! counts add up.

use serde_json::json;

use crate::util::{Dir, assert_accounting, assert_conserved, code, n, text};

fn ids(db: &std::path::Path) -> Vec<(Option<i64>, Option<String>)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut s = c.prepare("SELECT id, user FROM t ORDER BY id").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

const KEYED: &str = "\
inputs:
  - name: in
    decode_workers: 1
    file: { path: in.jsonl }
outputs:
  - name: db
    on_error: dead_letter
    sqlite: { path: out.db, table: t, columns: { id: integer, user: text }, key: [id] }
";

/// A keyed table never stores a record without its key: such records are
/// dead-lettered naming the key column, and a rerun leaves the same rows
/// (it used to add the null-key rows again: 4 rows, then 6).
#[test]
fn records_without_their_key_are_dead_lettered_and_reruns_change_nothing() {
    let d = Dir::new();
    d.file(
        "in.jsonl",
        "{\"id\":1,\"user\":\"a\"}\n{\"id\":null,\"user\":\"b\"}\n{\"user\":\"c\"}\n{\"id\":2,\"user\":\"d\"}\n",
    )
    .file("p.yaml", KEYED);
    for _run in 0..2 {
        let report = d.run_ok("p.yaml");
        assert_eq!(
            ids(&d.join("out.db")),
            vec![(Some(1), Some("a".into())), (Some(2), Some("d".into()))]
        );
        assert_eq!(n(&report, "db", "in"), 4);
        assert_eq!(n(&report, "db", "ok"), 2);
        assert_eq!(n(&report, "db", "dead_lettered"), 2);
        assert_accounting(&report);
        assert_conserved(&report);
        let mut dead = d.jsonl("dead-letters.jsonl");
        dead.sort_by_key(|x| x["position"].as_str().unwrap().to_string());
        assert_eq!(
            dead,
            vec![
                json!({"stage": "db", "error": "record at in.jsonl:2: key column id is null",
                       "attempts": 1, "position": "in.jsonl:2", "input": "in",
                       "record": {"id": null, "user": "b"}, "raw": null}),
                json!({"stage": "db", "error": "record at in.jsonl:3: key column id is missing",
                       "attempts": 1, "position": "in.jsonl:3", "input": "in",
                       "record": {"user": "c"}, "raw": null}),
            ]
        );
    }
}

/// With the outputs' default policy (`fail`), the first record without its
/// key stops the run, naming it; nothing keyless is stored.
#[test]
fn with_on_error_fail_a_record_without_its_key_stops_the_run() {
    let d = Dir::new();
    d.file("in.jsonl", "{\"id\":1,\"user\":\"a\"}\n{\"user\":\"c\"}\n")
        .file("p.yaml", KEYED.replace("    on_error: dead_letter\n", ""));
    let out = d.weir(&["run", "p.yaml"]).output().unwrap();
    assert_eq!(code(&out), 1);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: stage 'db' failed: record at in.jsonl:2: key column id is missing"),
        "{stderr}"
    );
    assert_eq!(ids(&d.join("out.db")), vec![(Some(1), Some("a".into()))]);
}
