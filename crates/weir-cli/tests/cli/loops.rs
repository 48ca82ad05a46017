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

/// `weir run p.yaml`, which must succeed; its report, checked to add up.
fn run_ok(d: &Dir) -> Value {
    let out = d
        .weir(&["run", "p.yaml", "--report", "json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let report: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_accounting(&report);
    report
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
    let report = run_ok(&d);
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
    let report = run_ok(&d);
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
        stderr.contains("stage 'a' has `loop` but its `from` names no stage after it (or itself)")
            && stderr.contains("open.yaml:6:11"),
        "{stderr}"
    );
}

/// An aggregate after a loop (over the whole input) sees every record that
/// left the loop, and the run still ends by itself: the loop does not wait
/// for it.
#[test]
fn an_aggregate_after_a_loop_gets_everything() {
    let d = Dir::new();
    let nums: String = (1..=50)
        .map(|i| format!("{{\"start\":{i},\"n\":{i}}}\n"))
        .collect();
    let yaml = collatz(500).replace(
        "outputs:\n",
        "  - name: total\n    from: route/done\n    aggregate: { group_by: 'null', fields: { done: count, steps: { sum: .steps } } }\noutputs:\n  - name: totals\n    from: total\n    file: { path: totals.jsonl }\n",
    );
    d.file("nums.jsonl", nums).file("p.yaml", yaml);
    run_ok(&d);
    let totals = d.jsonl("totals.jsonl");
    assert_eq!(totals.len(), 1);
    assert_eq!(totals[0]["done"], 50);
    assert_eq!(
        totals[0]["steps"].as_u64(),
        Some((1..=50).map(steps).sum::<u64>())
    );
    assert_eq!(d.jsonl("out.jsonl").len(), 50);
}

/// A stage that feeds its own records back: each goes round until
/// `max_depth`, and every pass is also written out.
#[test]
fn a_stage_may_feed_itself() {
    let d = Dir::new();
    d.file("in.jsonl", "{\"k\":1}\n{\"k\":2}\n").file(
        "p.yaml",
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: again
    from: [in, again]
    loop: { max_depth: 3 }
    jq: { program: '.pass = ((.pass // -1) + 1)' }
outputs:
  - name: out
    from: again
    file: { path: out.jsonl }
",
    );
    let report = run_ok(&d);
    let mut passes: Vec<(u64, u64)> = d
        .jsonl("out.jsonl")
        .iter()
        .map(|v| (v["k"].as_u64().unwrap(), v["pass"].as_u64().unwrap()))
        .collect();
    passes.sort_unstable();
    let want: Vec<(u64, u64)> = [1, 2]
        .iter()
        .flat_map(|&k| (0..4).map(move |p| (k, p)))
        .collect();
    assert_eq!(passes, want);
    assert_eq!(n(&report, "again/loop", "filtered"), 2);
}

/// What a loop cannot hold is refused at check: an aggregate inside it, a
/// stage inside it reading from outside, loops sharing stages, loops with
/// a broker.
#[test]
fn what_a_loop_cannot_hold_is_refused() {
    let d = Dir::new();
    d.file("nums.jsonl", "{\"n\":1}\n")
        .file("side.jsonl", "{\"n\":2}\n");
    let check = |name: &str, yaml: String| -> String {
        d.file(name, yaml);
        let out = d.weir(&["check", name]).output().unwrap();
        assert_eq!(code(&out), 2, "{name}: {}", text(&out.stdout));
        text(&out.stderr)
    };
    let inside = collatz(5).replace(
        "  - name: next\n    from: route/more\n",
        "  - name: group\n    from: route/more\n    batch: { size: 10 }\n  - name: next\n    from: group\n",
    );
    let e = check("agg.yaml", inside);
    assert!(
        e.contains("stage 'group' (batch) is inside the loop of 'step'"),
        "{e}"
    );

    let side = collatz(5)
        .replace(
            "inputs:\n",
            "inputs:\n  - name: side\n    file: { path: side.jsonl }\n",
        )
        .replace("    from: route/more\n", "    from: [route/more, side]\n");
    let e = check("side.yaml", side);
    assert!(
        e.contains(
            "stage 'next' is inside the loop of 'step' and also reads 'side' from outside it"
        ),
        "{e}"
    );

    let nested = "\
inputs:
  - name: nums
    file: { path: nums.jsonl }
stages:
  - name: outer
    from: [nums, back]
    loop: { max_depth: 3 }
    jq: { program: . }
  - name: inner
    from: [outer, inner]
    loop: { max_depth: 3 }
    jq: { program: . }
  - name: back
    from: inner
    jq: { program: . }
outputs:
  - name: out
    from: back
    file: { path: out.jsonl }
";
    let e = check("nested.yaml", nested.to_string());
    assert!(e.contains("loops may not share stages"), "{e}");

    let broker = format!("{}broker: {{ remote: all }}\n", collatz(5));
    let e = check("broker.yaml", broker);
    assert!(
        e.contains("loops are not supported with --broker yet"),
        "{e}"
    );
}
