//! The dead-letter path: every kind of rejection ends up in the dead-letter
//! file with its stage, reason, position and the raw line or the record,
//! and the file holds exactly as many letters as the report counts.

use serde_json::json;

use crate::util::{Dir, assert_accounting, assert_conserved, n};

#[test]
fn every_rejection_reaches_the_dead_letter_file() {
    let d = Dir::new();
    d.file(
        "data/orders.jsonl",
        "\
{\"id\":1,\"amount\":10}
{\"id\":2,\"amount\":
{\"id\":3,\"amount\":-4}
{\"id\":4,\"amount\":\"ten\"}
{\"amount\":5}
{\"id\":6,\"amount\":6}
",
    )
    .file("data/people.csv", "id,age\n1,30\n2,old\n3,40,extra\n")
    .file(
        "schema.json",
        "{\"type\":\"object\",\"required\":[\"id\",\"amount\"],\"properties\":{\"id\":{\"type\":\"integer\"}}}",
    )
    .file(
        "p.yaml",
        "\
inputs:
  - name: orders
    decode_workers: 1
    file: { path: data/orders.jsonl }
  - name: people
    decode_workers: 1
    file: { path: data/people.csv, columns: { id: int, age: int } }
stages:
  - name: valid
    from: orders
    validate: { schema: schema.json }
  - name: double
    jq: { program: '.amount = (.amount - 0) * 2' }
  - name: positive
    filter: { condition: '.amount >= 0', drop_reason: negative_amount }
outputs:
  - name: out
    file: { path: out/orders.jsonl }
  - name: people-out
    from: people
    stdout: {}
dead_letter: { path: out/dead/letters.jsonl }
",
    );
    let report = d.run_ok("p.yaml");
    assert_eq!(
        d.jsonl("out/orders.jsonl"),
        vec![
            json!({"id": 1, "amount": 20}),
            json!({"id": 6, "amount": 12})
        ]
    );
    let mut dead = d.jsonl("out/dead/letters.jsonl");
    dead.sort_by_key(|x| x["position"].as_str().unwrap().to_string());
    assert_eq!(
        dead,
        vec![
            json!({
                "stage": "orders/decode",
                "error": "parse_error: invalid JSON at column 17: EOF while parsing a value",
                "attempts": 1,
                "position": "data/orders.jsonl:2",
                "input": "orders",
                "record": null,
                "raw": "{\"id\":2,\"amount\":",
            }),
            json!({
                "stage": "positive",
                "error": "negative_amount: condition `.amount >= 0` is not true",
                "attempts": 1,
                "position": "data/orders.jsonl:3",
                "input": "orders",
                "record": {"id": 3, "amount": -8},
                "raw": null,
            }),
            json!({
                "stage": "double",
                "error": "jq_error: cannot calculate \"ten\" - 0",
                "attempts": 1,
                "position": "data/orders.jsonl:4",
                "input": "orders",
                "record": {"id": 4, "amount": "ten"},
                "raw": null,
            }),
            json!({
                "stage": "valid",
                "error": "schema: (root): \"id\" is a required property",
                "attempts": 1,
                "position": "data/orders.jsonl:5",
                "input": "orders",
                "record": {"amount": 5},
                "raw": null,
            }),
            json!({
                "stage": "people/decode",
                "error": "parse_error: column age: 'old' is not an int",
                "attempts": 1,
                "position": "data/people.csv:3",
                "input": "people",
                "record": null,
                "raw": "2,old",
            }),
            json!({
                "stage": "people/decode",
                "error": "parse_error: csv row has 3 fields, the header has 2",
                "attempts": 1,
                "position": "data/people.csv:4",
                "input": "people",
                "record": null,
                "raw": "3,40,extra",
            }),
        ]
    );
    assert_eq!(report["dead_lettered"], 6);
    assert_eq!(n(&report, "dead-letter", "ok"), 6);
    assert_eq!(n(&report, "orders/decode", "dead_lettered"), 1);
    assert_eq!(n(&report, "people/decode", "dead_lettered"), 2);
    assert_eq!(n(&report, "valid", "dead_lettered"), 1);
    assert_eq!(n(&report, "double", "dead_lettered"), 1);
    assert_eq!(n(&report, "positive", "dead_lettered"), 1);
    assert_accounting(&report);
    assert_conserved(&report);
}

/// Without `dead_letter`, the letters go to `dead-letters.jsonl` beside the
/// pipeline file, and the summary on stderr says where.
#[test]
fn default_dead_letter_file_is_beside_the_pipeline() {
    let d = Dir::new();
    d.file("sub/in.jsonl", "{\"a\":1}\nnope\n").file(
        "sub/p.yaml",
        "inputs:\n  - name: in\n    file: { path: in.jsonl }\noutputs:\n  - name: out\n    file: { path: out.jsonl }\n",
    );
    let out = d.weir(&["run", "sub/p.yaml"]).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dead letters: sub/dead-letters.jsonl"),
        "{stderr}"
    );
    let dead = d.jsonl("sub/dead-letters.jsonl");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["raw"], "nope");
    assert_eq!(dead[0]["position"], "in.jsonl:2");
}
