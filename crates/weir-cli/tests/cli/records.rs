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

/// With the outputs' default policy (`fail`) too: a record without its key
/// is bad data, not a failed database, so it is dead-lettered and the run
/// goes on (it used to stop the run at the first such record).
#[test]
fn with_the_default_policy_a_record_without_its_key_is_dead_lettered() {
    let d = Dir::new();
    d.file(
        "in.jsonl",
        "{\"id\":1,\"user\":\"a\"}\n{\"user\":\"c\"}\n{\"id\":2,\"user\":\"d\"}\n",
    )
    .file("p.yaml", KEYED.replace("    on_error: dead_letter\n", ""));
    let report = d.run_ok("p.yaml");
    assert_eq!(n(&report, "db", "ok"), 2);
    assert_eq!(n(&report, "db", "dead_lettered"), 1);
    assert_accounting(&report);
    let dead = d.jsonl("dead-letters.jsonl");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0]["error"],
        "record at in.jsonl:2: key column id is missing"
    );
    assert_eq!(
        ids(&d.join("out.db")),
        vec![(Some(1), Some("a".into())), (Some(2), Some("d".into()))]
    );
}

/// A line that is not UTF-8 is dead-lettered by `<input>/decode` with its
/// file:line, reason `invalid_utf8` and the byte offset, in every text
/// format; it used to be stored with U+FFFD in place of the bad byte.
#[test]
fn lines_that_are_not_utf8_are_dead_lettered_in_every_format() {
    let d = Dir::new();
    d.file(
        "data/a.jsonl",
        b"{\"id\":1}\n{\"id\":2,\"s\":\"bad\xff\"}\n{\"id\":3}\n",
    )
    .file("data/b.csv", b"id,s\n4,ok\n5,\xc3\x28\n")
    .file("data/c.log", b"fine\n\xfe tail\n")
    .file(
        "p.yaml",
        "\
inputs:
  - name: j
    file: { path: data/a.jsonl }
  - name: c
    file: { path: data/b.csv }
  - name: l
    file: { path: data/c.log }
outputs:
  - name: out
    file: { path: out/all.jsonl }
",
    );
    let report = d.run_ok("p.yaml");
    let mut got = d.jsonl("out/all.jsonl");
    got.sort_by_key(|v| v.to_string());
    assert_eq!(
        got,
        vec![
            json!({"id": "4", "s": "ok"}),
            json!({"id": 1}),
            json!({"id": 3}),
            json!({"line": "fine"}),
        ]
    );
    let mut dead = d.jsonl("dead-letters.jsonl");
    dead.sort_by_key(|x| x["position"].as_str().unwrap().to_string());
    let letter = |stage: &str, error: &str, position: &str, input: &str, raw: &str| {
        json!({"stage": stage, "error": error, "attempts": 1, "position": position,
               "input": input, "record": null, "raw": raw})
    };
    assert_eq!(
        dead,
        vec![
            letter(
                "j/decode",
                "invalid_utf8: invalid UTF-8 at byte offset 16 of the line (0xff)",
                "data/a.jsonl:2",
                "j",
                "{\"id\":2,\"s\":\"bad\u{fffd}\"}",
            ),
            letter(
                "c/decode",
                "invalid_utf8: column s: invalid UTF-8 at byte offset 0 of the field (0xc3)",
                "data/b.csv:3",
                "c",
                "5,\u{fffd}(",
            ),
            letter(
                "l/decode",
                "invalid_utf8: invalid UTF-8 at byte offset 0 of the line (0xfe)",
                "data/c.log:2",
                "l",
                "\u{fffd} tail",
            ),
        ]
    );
    for (input, read, dead) in [("j", 3, 1), ("c", 2, 1), ("l", 2, 1)] {
        assert_eq!(n(&report, input, "out"), read);
        assert_eq!(n(&report, &format!("{input}/decode"), "in"), read);
        assert_eq!(
            n(&report, &format!("{input}/decode"), "dead_lettered"),
            dead
        );
    }
    assert_eq!(report["dead_lettered"], 3);
    assert_accounting(&report);
    assert_conserved(&report);
}

/// Standard input too, jsonl and lines.
#[test]
fn stdin_lines_that_are_not_utf8_are_dead_lettered() {
    for (format, ok) in [
        ("jsonl", json!({"a": 1})),
        ("lines", json!({"line": "{\"a\":1}"})),
    ] {
        let d = Dir::new();
        d.file(
            "p.yaml",
            format!(
                "inputs:\n  - name: s\n    stdin: {{ format: {format} }}\noutputs:\n  - name: out\n    file: {{ path: out.jsonl }}\n"
            ),
        );
        let out = d
            .weir(&["run", "p.yaml", "--report", "json"])
            .write_stdin(b"{\"a\":1}\n\"x\xff\"\n".to_vec())
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        let report: serde_json::Value =
            serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
        assert_eq!(d.jsonl("out.jsonl"), vec![ok]);
        assert_eq!(
            d.jsonl("dead-letters.jsonl"),
            vec![json!({"stage": "s/decode",
                "error": "invalid_utf8: invalid UTF-8 at byte offset 2 of the line (0xff)",
                "attempts": 1, "position": "s#2", "input": "s", "record": null,
                "raw": "\"x\u{fffd}\""})]
        );
        assert_eq!(n(&report, "s", "out"), 2);
        assert_eq!(n(&report, "s/decode", "dead_lettered"), 1);
        assert_accounting(&report);
        assert_conserved(&report);
    }
}
