//! Loops in pipeline files: a stage with `loop:` reads records fed back
//! from further down; the run ends by itself when nothing is left inside;
//! `max_depth` filters (counted) what goes round too often; a cycle without
//! `loop:` and a `loop:` with nothing fed back are check errors.

use serde_json::Value;

use crate::util::{Dir, assert_accounting, code, n, text};

/// Collatz: each number goes round (halved, or tripled plus one) until it
/// reaches 1.
fn collatz(max_depth: u32) -> String {
    format!(
        "\
inputs:
  - name: nums
    file: {{ path: nums.jsonl }}
stages:
  - name: step
    from: [nums, next]
    loop: {{ max_depth: {max_depth} }}
    jq: {{ program: '.steps = ((.steps // -1) + 1)' }}
  - name: route
    switch:
      cases:
        - {{ name: done, when: '.n == 1' }}
      default: more
  - name: next
    from: route/more
    jq: {{ program: 'if .n % 2 == 0 then .n = (.n / 2 | floor) else .n = 3 * .n + 1 end' }}
outputs:
  - name: out
    from: route/done
    file: {{ path: out.jsonl }}
"
    )
}

fn steps(mut n: u64) -> u64 {
    let mut s = 0;
    while n != 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        s += 1;
    }
    s
}

#[test]
fn records_go_round_until_done_and_the_run_ends_by_itself() {
    let d = Dir::new();
    let nums: String = (1..=300)
        .map(|i| format!("{{\"start\":{i},\"n\":{i}}}\n"))
        .collect();
    d.file("nums.jsonl", nums).file("p.yaml", collatz(500));
    let out = d
        .weir(&["run", "p.yaml", "--report", "json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let report: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_accounting(&report);
    let mut rows = d.jsonl("out.jsonl");
    rows.sort_by_key(|v| v["start"].as_u64());
    assert_eq!(rows.len(), 300, "each number once");
    for v in &rows {
        let start = v["start"].as_u64().unwrap();
        assert_eq!(v["n"], 1);
        assert_eq!(v["steps"].as_u64(), Some(steps(start)), "{v}");
    }
    let total: u64 = (1..=300).map(|i| steps(i) + 1).sum();
    assert_eq!(n(&report, "step/loop", "in"), total);
    assert_eq!(n(&report, "step/loop", "filtered"), 0);
}

#[test]
fn max_depth_filters_what_goes_round_too_often() {
    let d = Dir::new();
    // 27 takes 111 steps; 8 takes 3.
    d.file(
        "nums.jsonl",
        "{\"start\":27,\"n\":27}\n{\"start\":8,\"n\":8}\n",
    )
    .file("p.yaml", collatz(10));
    let out = d
        .weir(&["run", "p.yaml", "--report", "json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let report: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_accounting(&report);
    let rows = d.jsonl("out.jsonl");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["start"], 8);
    assert_eq!(n(&report, "step/loop", "filtered"), 1, "27's eleventh pass");
}

#[test]
fn cycles_need_loop_and_a_loop_needs_something_fed_back() {
    let d = Dir::new();
    d.file("nums.jsonl", "{\"n\":1}\n").file(
        "cycle.yaml",
        collatz(5).replace("    loop: { max_depth: 5 }\n", ""),
    );
    let out = d.weir(&["check", "cycle.yaml"]).output().unwrap();
    assert_eq!(code(&out), 2);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("read from each other in a cycle")
            && stderr.contains("`loop: { max_depth: N }`"),
        "{stderr}"
    );

    let nothing_back = "\
inputs:
  - name: nums
    file: { path: nums.jsonl }
stages:
  - name: a
    loop: { max_depth: 2 }
    jq: { program: . }
outputs:
  - name: out
    file: { path: out.jsonl }
";
    d.file("open.yaml", nothing_back);
    let out = d.weir(&["check", "open.yaml"]).output().unwrap();
    assert_eq!(code(&out), 2);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("stage 'a' has `loop` but none of its `from` is downstream of it")
            && stderr.contains("open.yaml:6:11"),
        "{stderr}"
    );
}
