//! B4's rules, typed and YAML, agree: hand-written edge cases go through
//! the typed rules (`benches/b4/rules.rs`, what the typed benchmark runs)
//! and through `examples/pipelines/b4.yaml`, and every line must end the
//! same way: the same dead letters with the same reasons at the same lines,
//! and the same per-user counts and cents.
//!
//! Not covered, on purpose: blank lines (the file input skips them, the
//! typed loop would call them a parse error; the generator writes none) and
//! amounts whose cents overflow `i64` (the typed rules saturate).

use std::collections::BTreeMap;
use std::path::Path;

use crate::b4_rules::{Reject, decode};
use crate::util::{Dir, n};

const LINES: &[&str] = &[
    r#"{"id":1,"user":"u1","ts":5,"kind":"Click","amount":1.005,"tags":["a"]}"#,
    r#"{"id":2,"user":7,"ts":5,"kind":"x","amount":1}"#,
    r#"{"id":3,"user":"u1","ts":5.5,"kind":"x","amount":1}"#,
    r#"{"id":4,"user":"u1","ts":5,"kind":"x","amount":true}"#,
    r#"{"id":5,"user":"u1","ts":5,"kind":"x","amount":1,"tags":"a"}"#,
    r#"{"id":6,"user":"u1","ts":5,"kind":"x","amount":"x"}"#,
    r#"{"id":-1,"user":"u1","ts":5,"kind":"x","amount":1}"#,
    r#"{"id":8.0,"user":"u2","ts":5.0,"kind":"x","amount":2.5}"#,
    r#"{"id":1e19,"user":"u2","ts":5,"kind":"x","amount":0}"#,
    r#"{"id":18446744073709551615,"user":"u2","ts":5,"kind":"x","amount":3}"#,
    r#"{"id":18446744073709551616,"user":"u2","ts":5,"kind":"x","amount":3}"#,
    r#"{"id":12,"user":"u1","#,
    r#"[1,2]"#,
    r#"5"#,
    r#"null"#,
    r#""text""#,
    r#"{"id":17,"ts":5,"kind":"x","amount":1}"#,
    r#"{"id":18,"user":null,"ts":5,"kind":"x","amount":1}"#,
    r#"{"id":19,"user":"u3","ts":5,"kind":"x","amount":-0.5}"#,
    r#"{"id":20,"user":"u3","ts":5,"kind":"x","amount":-0.0}"#,
    r#"{"id":21,"user":7,"user":"u4","ts":5,"kind":"x","amount":4}"#,
    r#"{"id":22,"user":"u4","user":7,"ts":5,"kind":"x","amount":4}"#,
    r#"{"id":23,"user":"u4","ts":5,"kind":"x","amount":4,"tags":[]}"#,
    r#"{"id":24,"user":"u4","ts":5,"kind":"x","amount":4,"tags":["a",1]}"#,
    r#"{"id":25,"user":"u4","ts":5,"kind":"x","amount":4,"tags":null}"#,
    r#"{"id":26,"user":"u5","ts":5,"kind":"x","amount":4,"x":{"y":[1,{"z":null}]}}"#,
    r#"{"id":27,"us\u0065r":"u5","ts":5,"kind":"x","amount":4}"#,
    r#"{"id":28,"user":"u\"6","ts":5,"kind":"ÉvÉnt","amount":0.125}"#,
    r#"{"id":"29","user":"u6","ts":5,"kind":"x","amount":1}"#,
    r#"{}"#,
    r#"  {"id":31,"user":"u6","ts":5,"kind":"x","amount":0}  "#,
    r#"{"id":32,"user":"u6","ts":-5,"kind":"x","amount":1}"#,
    r#"{"id":33,"user":"u6","ts":5,"kind":null,"amount":null}"#,
    r#"{"id":34,"user":"u6","ts":5,"kind":["x"],"amount":1}"#,
    r#"{"id":35,"user":"u7","ts":5,"kind":"x","amount":12345.675}"#,
    r#"{"id":36,"user":"u7","ts":5,"kind":"x","amount":1,"amount":-1}"#,
    r#"{"id":37,"user":"u7","ts":5,"kind":"x","amount":-1,"amount":1}"#,
    r#"{"id":38,"user":"u7","ts":5,"kind":"x","amount":1e2}"#,
    r#"{"id":39,"user":"u7","ts":5,"kind":"x","amount":1}garbage"#,
];

#[test]
fn b4_rules_agree() {
    // The typed rules.
    let mut want_dead = BTreeMap::new();
    let mut want_users: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for (i, line) in LINES.iter().enumerate() {
        match decode(line) {
            Ok(e) => {
                let t = want_users.entry(e.user.to_string()).or_default();
                t.0 += 1;
                t.1 += e.cents;
            }
            Err(r) => {
                want_dead.insert(i as u64 + 1, r.to_string());
            }
        }
    }
    // Every kind of outcome occurs, so agreement means something.
    for r in [
        Reject::ParseError,
        Reject::MissingField,
        Reject::NegativeAmount,
    ] {
        assert!(
            want_dead.values().any(|v| *v == r.to_string()),
            "{r} covered"
        );
    }
    assert!(want_users.len() >= 5);

    // The YAML pipeline.
    let d = Dir::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipelines/b4.yaml");
    std::fs::copy(src, d.join("b4.yaml")).unwrap();
    d.file("data/b4-events.jsonl", LINES.join("\n") + "\n");
    let report = d.run_ok("b4.yaml");
    let mut got_dead = BTreeMap::new();
    for l in d.jsonl("out/b4-dead-letters.jsonl") {
        let pos = l["position"].as_str().unwrap();
        let line: u64 = pos.rsplit(':').next().unwrap().parse().unwrap();
        let err = l["error"].as_str().unwrap();
        let reason = err.split(':').next().unwrap().to_string();
        assert!(
            got_dead.insert(line, reason).is_none(),
            "one letter per line"
        );
    }
    let mut got_users = BTreeMap::new();
    for u in d.jsonl("out/b4-users.jsonl") {
        let key = u["key"].as_str().unwrap().to_string();
        let cents = u["amount_cents"]
            .as_i64()
            .unwrap_or_else(|| panic!("integer cents: {u}"));
        got_users.insert(key, (u["count"].as_u64().unwrap(), cents));
    }
    assert_eq!(got_dead, want_dead, "dead letters by line");
    assert_eq!(got_users, want_users, "per-user count and cents");
    assert_eq!(
        n(&report, "events/decode", "dead_lettered") + n(&report, "shape", "dead_lettered"),
        want_dead.values().filter(|r| *r == "parse_error").count() as u64
    );
}
