//! The `http` sink from a pipeline file, against a scripted service on
//! loopback: records arrive with the token from the environment, refused
//! records reach the dead-letter file with the service's reason, counts
//! add up; a missing token variable is a check error at its line.

use serde_json::Value;
use weir_testkit::http::{MockHttp, Response};

use crate::util::{Dir, assert_accounting, code, n, parse_jsonl, text};

fn pipeline(url: &str) -> String {
    format!(
        "\
inputs:
  - name: events
    file: {{ path: events.jsonl }}
stages:
  - name: shape
    jq: {{ program: '{{id, kind, bad: (.kind == \"poison\")}}' }}
outputs:
  - name: service
    on_error: dead_letter
    http:
      url: {url}
      max_records: 7
      backoff_ms: 1
      bearer_token_env: WEIR_TEST_TOKEN
"
    )
}

#[test]
fn records_reach_the_service_and_refused_ones_the_dead_letters() {
    let server = MockHttp::start(|r| {
        if r.header("authorization") != Some("Bearer t0ken") {
            Response::new(401, "who are you")
        } else if r.text().contains("\"bad\":true") {
            Response::new(422, "poison is not an event kind")
        } else {
            Response::new(200, "")
        }
    });
    let d = Dir::new();
    let events: String = (1..=50)
        .map(|i| {
            let kind = if i % 20 == 0 { "poison" } else { "click" };
            format!("{{\"id\":{i},\"kind\":\"{kind}\"}}\n")
        })
        .collect();
    d.file("events.jsonl", events)
        .file("p.yaml", pipeline(&server.url("/events")));
    let out = d
        .weir(&["run", "p.yaml", "--report", "json"])
        .env("WEIR_TEST_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_accounting(&report);
    assert_eq!(n(&report, "service", "ok"), 48);
    assert_eq!(n(&report, "service", "dead_lettered"), 2);

    let mut got: Vec<u64> = server
        .requests()
        .iter()
        .filter(|r| !r.text().contains("\"bad\":true"))
        .flat_map(|r| parse_jsonl(&r.text()))
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    got.sort_unstable();
    let expected: Vec<u64> = (1..=50).filter(|i| i % 20 != 0).collect();
    assert_eq!(got, expected);

    let letters = d.jsonl("dead-letters.jsonl");
    let ids: Vec<u64> = letters
        .iter()
        .map(|l| l["record"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![20, 40]);
    let reason = letters[0].to_string();
    assert!(
        reason.contains("422") && reason.contains("poison is not an event kind"),
        "{reason}"
    );
    assert_eq!(letters[0]["position"], "events.jsonl:20", "{reason}");
    assert_eq!(letters[0]["stage"], "service", "{reason}");
}

#[test]
fn a_missing_token_variable_is_a_check_error_at_its_line() {
    let d = Dir::new();
    d.file("events.jsonl", "{\"id\":1}\n")
        .file("p.yaml", pipeline("http://127.0.0.1:9/x"));
    let out = d
        .weir(&["check", "p.yaml"])
        .env_remove("WEIR_TEST_TOKEN")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: http sink: environment variable `WEIR_TEST_TOKEN` (bearer_token_env) is not set\n  --> p.yaml:14:25\n"
        ),
        "{stderr}"
    );
}

/// The `http` processor from a pipeline file: each record enriched by a
/// call, a missing item dead-lettered with its status and position, the
/// rest stored; `workers` on such a stage, or `remote`, is refused with a
/// pointer to `concurrency`.
#[test]
fn the_http_processor_enriches_records_and_dead_letters_misses() {
    let server = MockHttp::start(|r| {
        let id: u64 = r.path.rsplit('/').next().unwrap().parse().unwrap();
        if id.is_multiple_of(10) {
            Response::new(404, "no price for this item")
        } else {
            Response::new(200, &format!("{{\"price\":{}}}", id * 3))
                .header("content-type", "application/json")
        }
    });
    let d = Dir::new();
    let items: String = (1..=30).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    let pipeline = format!(
        "\
inputs:
  - name: items
    file: {{ path: items.jsonl }}
stages:
  - name: price
    http:
      url: '\"{}/price/\\(.id)\"'
      concurrency: 8
      into: quote
  - name: shape
    jq: {{ program: '{{id, price: .quote.body.price}}' }}
outputs:
  - name: out
    file: {{ path: out.jsonl }}
",
        server.url("")
    );
    d.file("items.jsonl", items).file("p.yaml", &pipeline);
    let out = d
        .weir(&["run", "p.yaml", "--report", "json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_accounting(&report);
    assert_eq!(n(&report, "price", "ok"), 27);
    assert_eq!(n(&report, "price", "dead_lettered"), 3);
    let mut rows = d.jsonl("out.jsonl");
    rows.sort_by_key(|v| v["id"].as_u64());
    let expected: Vec<Value> = (1..=30u64)
        .filter(|i| i % 10 != 0)
        .map(|i| serde_json::json!({"id": i, "price": i * 3}))
        .collect();
    assert_eq!(rows, expected);
    let letters = d.jsonl("dead-letters.jsonl");
    let mut ids: Vec<u64> = letters
        .iter()
        .map(|l| l["record"]["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![10, 20, 30]);
    let l = letters.iter().find(|l| l["record"]["id"] == 20).unwrap();
    assert_eq!(l["stage"], "price");
    assert_eq!(l["position"], "items.jsonl:20");
    let why = l.to_string();
    assert!(
        why.contains("http_status")
            && why.contains("404")
            && why.contains("no price for this item"),
        "{why}"
    );

    // `workers` is not how a call stage scales.
    d.file(
        "w.yaml",
        pipeline.replace("      into: quote\n", "      into: quote\n    workers: 4\n"),
    );
    let out = d.weir(&["check", "w.yaml"]).output().unwrap();
    assert_eq!(code(&out), 2);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("calls a service")
            && stderr.contains("`concurrency`, not `workers`")
            && stderr.contains("w.yaml:10:14"),
        "{stderr}"
    );
}
