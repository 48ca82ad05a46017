//! Behaviour of the processors at their public API: jq, filter, validate,
//! dedupe, aggregate (wired into a real weir pipeline) and batch.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use weir_connectors::processors::Processor;
use weir_connectors::processors::ProcessorContext;
use weir_connectors::processors::aggregate::AggregateConfig;
use weir_connectors::processors::batch::BatchConfig;
use weir_connectors::processors::dedupe::DedupeConfig;
use weir_connectors::processors::filter::FilterConfig;
use weir_connectors::processors::jq::{JqConfig, JqProgram};
use weir_connectors::processors::validate::ValidateConfig;
use weir_connectors::value;
use weir_connectors::{ConfigError, Position, ProcessError, Record};

fn pos(line: u64) -> Arc<Position> {
    Arc::new(Position {
        input: "test".into(),
        file: Some("in.jsonl".into()),
        line,
    })
}

fn rec(v: Value) -> Record {
    Record::from_json(&v, pos(7))
}

fn ctx() -> ProcessorContext {
    ProcessorContext::default()
}

/// Runs a processor on one value: the output values, or the rejection.
fn run(p: &dyn Processor, v: Value) -> Result<Vec<Value>, ProcessError> {
    let mut out = Vec::new();
    p.process(&rec(v), &mut out)?;
    assert!(
        out.iter().all(|r| r.pos == pos(7)),
        "outputs keep the position"
    );
    Ok(out.into_iter().map(|r| r.json()).collect())
}

/// Runs an async test on a multi-thread runtime, bounded in time.
fn block_on<F: Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("test timed out");
    });
}

mod jq {
    use super::*;

    fn jq(program: &str) -> impl Processor {
        let yaml = format!("program: {}", serde_json::to_string(program).unwrap());
        let cfg: JqConfig = serde_saphyr::from_str(&yaml).unwrap();
        cfg.build(&ctx()).unwrap()
    }

    fn compile_error(yaml: &str) -> ConfigError {
        let cfg: JqConfig = serde_saphyr::from_str(yaml).unwrap();
        cfg.build(&ctx()).unwrap_err()
    }

    #[test]
    fn zero_one_or_many_outputs() {
        let p = jq(".items[]");
        assert_eq!(run(&p, json!({"items": []})).unwrap(), Vec::<Value>::new());
        assert_eq!(run(&p, json!({"items": [1]})).unwrap(), vec![json!(1)]);
        assert_eq!(
            run(&p, json!({"items": [1, "a", null]})).unwrap(),
            vec![json!(1), json!("a"), json!(null)]
        );
        let p = jq("{id, total: (.price * .qty)} | select(.total > 5)");
        assert_eq!(
            run(&p, json!({"id": 1, "price": 2, "qty": 3})).unwrap(),
            vec![json!({"id": 1, "total": 6})]
        );
        assert!(
            run(&p, json!({"id": 1, "price": 2, "qty": 1}))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn standard_library_is_available() {
        let p =
            jq(r#"[(.xs | map(. * 2) | add), (.s | ascii_upcase | test("^A")), (.t | length)]"#);
        assert_eq!(
            run(&p, json!({"xs": [1, 2, 3], "s": "abc", "t": "héllo"})).unwrap(),
            vec![json!([12, true, 5])]
        );
    }

    #[test]
    fn runtime_error_rejects_with_jq_message() {
        let p = jq(".a + 1");
        let e = run(&p, json!({"a": "x"})).unwrap_err();
        assert_eq!(e.reason, "jq_error");
        assert!(e.detail.contains("cannot"), "{e}");
        let e = run(&jq(r#"error("bad \(.id)")"#), json!({"id": 3})).unwrap_err();
        assert_eq!(e, ProcessError::new("jq_error", "bad 3"));
        // outputs before the error are discarded: the record is rejected as a whole
        let e = run(&jq(r#"1, error("late")"#), json!(null)).unwrap_err();
        assert_eq!(e.detail, "late");
    }

    #[test]
    fn compile_error_points_into_the_yaml_and_the_program() {
        let e = compile_error("# a jq stage\nprogram: .a | foo(1)\n");
        assert_eq!(e.at, Some((2, 10)), "{e}");
        assert!(e.message.contains("undefined filter 'foo'"), "{e}");
        assert!(e.message.contains("column 6 of the program"), "{e}");

        let e = compile_error("program: '{a: 1'\n");
        assert_eq!(e.at, Some((1, 10)), "{e}");
        assert!(
            e.message
                .starts_with("jq program does not compile: expected"),
            "{e}"
        );

        let e = compile_error("program: |\n  .a\n  | .b +\n");
        // a block scalar's location is where its text starts
        assert_eq!(e.at, Some((2, 3)), "{e}");
        assert!(e.message.contains("found end of program (at line 3"), "{e}");
    }

    #[test]
    fn program_is_shared_across_threads() {
        let p = Arc::new(JqProgram::compile(".n * 2").unwrap());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let n = t * 1000 + i;
                        let out = p.first(&value::from_json(&json!({"n": n}))).unwrap();
                        assert_eq!(out.map(|v| value::to_json(&v)), Some(json!(n * 2)));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-zé\"\\\\ \n\u{1F600}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-z]{0,3}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// `.` returns its input unchanged: the JSON -> jq -> JSON conversion
        /// is exact for every value JSON can hold (finite floats keep their
        /// f64; NaN and infinities cannot occur in JSON input).
        #[test]
        fn identity_round_trips(v in json_value()) {
            let p = JqProgram::compile(".").unwrap();
            let out: Vec<Value> = p.run(&value::from_json(&v)).unwrap().iter().map(value::to_json).collect();
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!(&out[0], &v);
            // same text too (key order, integer vs float)
            prop_assert_eq!(out[0].to_string(), v.to_string());
        }
    }
}

mod filter {
    use super::*;

    fn filter(yaml: &str) -> impl Processor {
        let cfg: FilterConfig = serde_saphyr::from_str(yaml).unwrap();
        cfg.build(&ctx()).unwrap()
    }

    #[test]
    fn jq_truthiness() {
        let f = filter("condition: .x");
        for keep in [
            json!(0),
            json!(""),
            json!([]),
            json!({}),
            json!(true),
            json!("no"),
        ] {
            assert_eq!(run(&f, json!({"x": keep})).unwrap().len(), 1, "{keep}");
        }
        for drop in [json!(false), json!(null)] {
            assert!(run(&f, json!({"x": drop})).unwrap().is_empty(), "{drop}");
        }
        assert!(run(&f, json!({})).unwrap().is_empty());
        // first output decides
        let f = filter("condition: '.xs[]'");
        assert_eq!(run(&f, json!({"xs": [1, false]})).unwrap().len(), 1);
        assert!(run(&f, json!({"xs": [false, 1]})).unwrap().is_empty());
        assert!(run(&f, json!({"xs": []})).unwrap().is_empty());
    }

    #[test]
    fn kept_record_is_unchanged() {
        let f = filter("condition: .amount >= 0");
        let v = json!({"amount": 3, "b": [1, 2]});
        assert_eq!(run(&f, v.clone()).unwrap(), vec![v]);
    }

    #[test]
    fn runtime_error_rejects() {
        let f = filter("condition: .amount > (.limit | tonumber)");
        let e = run(&f, json!({"amount": 1, "limit": "x"})).unwrap_err();
        assert_eq!(e.reason, "jq_error");
    }

    #[test]
    fn drop_reason_dead_letters() {
        let f = filter("condition: .amount >= 0\ndrop_reason: negative_amount\n");
        assert_eq!(run(&f, json!({"amount": 0})).unwrap().len(), 1);
        let e = run(&f, json!({"amount": -3})).unwrap_err();
        assert_eq!(e.reason, "negative_amount");
        assert!(e.detail.contains(".amount >= 0"), "{e}");
    }

    #[test]
    fn config_errors() {
        let cfg: FilterConfig = serde_saphyr::from_str("condition: .a ==\n").unwrap();
        let e = cfg.build(&ctx()).unwrap_err();
        assert_eq!(e.at, Some((1, 12)));
        assert!(e.message.starts_with("condition does not compile"), "{e}");
        let cfg: FilterConfig = serde_saphyr::from_str("condition: .a\ndrop_reason: ''\n").unwrap();
        assert_eq!(cfg.build(&ctx()).unwrap_err().at, Some((2, 14)));
        assert!(serde_saphyr::from_str::<FilterConfig>("condition: .a\nbogus: 1\n").is_err());
    }
}

mod validate {
    use super::*;

    const SCHEMA: &str = r#"{
        "type": "object",
        "required": ["id", "amount"],
        "properties": {
            "id": {"type": "integer"},
            "amount": {"type": "number", "minimum": 0},
            "email": {"type": "string", "format": "email"}
        }
    }"#;

    fn with_schema(file_text: &str) -> (tempfile::TempDir, ProcessorContext) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schemas")).unwrap();
        std::fs::write(dir.path().join("schemas/order.json"), file_text).unwrap();
        let ctx = ProcessorContext {
            base_dir: dir.path().to_owned(),
            ..ProcessorContext::default()
        };
        (dir, ctx)
    }

    fn build(yaml: &str, ctx: &ProcessorContext) -> Result<impl Processor, ConfigError> {
        let cfg: ValidateConfig = serde_saphyr::from_str(yaml).unwrap();
        cfg.build(ctx)
    }

    #[test]
    fn valid_passes_invalid_lists_every_error() {
        let (_dir, ctx) = with_schema(SCHEMA);
        let v = build("schema: schemas/order.json", &ctx).unwrap();
        let ok = json!({"id": 1, "amount": 2.5, "email": "a@b.example"});
        assert_eq!(run(&v, ok.clone()).unwrap(), vec![ok]);

        let e = run(&v, json!({"id": "x", "amount": -3})).unwrap_err();
        assert_eq!(e.reason, "schema");
        assert!(
            e.detail
                .contains("/amount: -3 is less than the minimum of 0"),
            "{e}"
        );
        assert!(
            e.detail.contains("/id: \"x\" is not of type \"integer\""),
            "{e}"
        );
        assert_eq!(e.detail.matches("; ").count(), 1, "{e}");

        let e = run(&v, json!({"amount": 1, "email": "nope"})).unwrap_err();
        assert!(
            e.detail.contains("(root): \"id\" is a required property"),
            "{e}"
        );
        assert!(e.detail.contains("/email: "), "format is validated: {e}");
    }

    #[test]
    fn inline_schema() {
        let v = build(
            "inline:\n  type: array\n  items: {type: integer}\n  maxItems: 2\n",
            &ctx(),
        )
        .unwrap();
        assert!(run(&v, json!([1, 2])).is_ok());
        let e = run(&v, json!([1, "a", 3])).unwrap_err();
        assert!(
            e.detail.contains("/1: \"a\" is not of type \"integer\""),
            "{e}"
        );
    }

    #[test]
    fn long_error_lists_are_capped() {
        let v = build("inline: {type: array, items: {type: string}}", &ctx()).unwrap();
        let e = run(&v, json!((0..50).collect::<Vec<_>>())).unwrap_err();
        assert!(e.detail.ends_with("; and 30 more"), "{e}");
    }

    #[test]
    fn bad_schemas_are_config_errors_at_the_schema_option() {
        let (_dir, ctx) = with_schema(r#"{"type": 5}"#);
        let e = build("# x\nschema: schemas/order.json\n", &ctx)
            .err()
            .unwrap();
        assert_eq!(e.at, Some((2, 9)));
        assert!(e.message.contains("schemas/order.json"), "{e}");
        assert!(e.message.contains("does not compile"), "{e}");

        let (_dir, ctx) = with_schema("{not json");
        let e = build("schema: schemas/order.json", &ctx).err().unwrap();
        assert!(e.message.contains("does not parse"), "{e}");

        let e = build("schema: schemas/missing.json", &ctx).err().unwrap();
        assert!(e.message.contains("cannot read schema file"), "{e}");
        assert!(e.message.contains("missing.json"), "{e}");

        let (_dir, ctx) = with_schema(r#"{"$ref": "https://example.invalid/s.json"}"#);
        let e = build("schema: schemas/order.json", &ctx).err().unwrap();
        assert!(e.message.contains("does not compile"), "{e}");
    }

    #[test]
    fn exactly_one_schema_source() {
        let e = build("schema: a.json\ninline: {type: object}\n", &ctx())
            .err()
            .unwrap();
        assert!(e.message.contains("not both"), "{e}");
        let e = build("{}", &ctx()).err().unwrap();
        assert!(e.message.contains("needs"), "{e}");
    }
}

mod dedupe {
    use super::*;
    use weir_connectors::processors::dedupe::Dedupe;

    fn dedupe(yaml: &str) -> Dedupe {
        let cfg: DedupeConfig = serde_saphyr::from_str(yaml).unwrap();
        cfg.build(&ctx()).unwrap()
    }

    fn passes(d: &Dedupe, v: Value) -> bool {
        !run(d, v).unwrap().is_empty()
    }

    #[test]
    fn drops_repeated_keys() {
        let d = dedupe("key: '[.a, .b]'");
        assert!(passes(&d, json!({"a": 1, "b": 2, "x": 1})));
        assert!(!passes(&d, json!({"a": 1, "b": 2, "x": 2})));
        assert!(passes(&d, json!({"a": 2, "b": 1})));
        assert!(!passes(&d, json!({"b": 1, "a": 2.0})));
    }

    #[test]
    fn capacity_evicts_the_oldest_key() {
        let d = dedupe("key: .id\ncapacity: 2\n");
        assert!(passes(&d, json!({"id": "a"})));
        assert!(passes(&d, json!({"id": "b"})));
        assert!(!passes(&d, json!({"id": "a"})));
        assert!(passes(&d, json!({"id": "c"}))); // forgets a
        assert_eq!(d.len(), 2);
        assert!(!passes(&d, json!({"id": "b"})));
        assert!(passes(&d, json!({"id": "a"}))); // too far apart: not caught
    }

    #[test]
    fn missing_key_and_errors_reject() {
        let d = dedupe("key: .id");
        assert_eq!(run(&d, json!({"x": 1})).unwrap_err().reason, "missing_key");
        assert_eq!(
            run(&d, json!({"id": null})).unwrap_err().reason,
            "missing_key"
        );
        let d = dedupe("key: .id | empty");
        assert_eq!(run(&d, json!({"id": 1})).unwrap_err().reason, "missing_key");
        let d = dedupe("key: .id + 1");
        assert_eq!(run(&d, json!({"id": "s"})).unwrap_err().reason, "jq_error");
        let cfg: DedupeConfig = serde_saphyr::from_str("key: .id\ncapacity: 0\n").unwrap();
        assert!(cfg.build(&ctx()).is_err());
    }

    #[test]
    fn concurrent_workers_keep_exactly_one_of_each() {
        let d = Arc::new(dedupe("key: .id"));
        let kept: usize = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || {
                    (0..1000).filter(|i| passes(&d, json!({"id": i}))).count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(kept, 1000);
    }
}

mod aggregate {
    use super::*;
    use weir::{ErrorPolicy, Pipeline, Window, collect, from_iter};
    use weir_connectors::processors::aggregate::{Aggregator, GroupKey};

    fn aggregator(yaml: &str) -> Aggregator {
        let cfg: AggregateConfig = serde_saphyr::from_str(yaml).unwrap();
        cfg.build(&ctx()).unwrap()
    }

    /// Folds values directly (no pipeline), one group per key, in first-seen order.
    fn fold_all(agg: &Aggregator, values: Vec<Value>) -> Vec<Value> {
        let mut groups: Vec<(GroupKey, _)> = Vec::new();
        for v in values {
            let e = agg.extract(&rec(v)).unwrap();
            let i = match groups.iter().position(|(k, _)| *k == e.key) {
                Some(i) => i,
                None => {
                    groups.push((e.key.clone(), agg.init()));
                    groups.len() - 1
                }
            };
            agg.fold(&mut groups[i].1, e);
        }
        groups
            .into_iter()
            .map(|(k, acc)| {
                let p = acc.first_pos();
                agg.finish(&k, acc, p).json()
            })
            .collect()
    }

    const ALL_FIELDS: &str = "\
group_by: .g
fields:
  n: count
  total: {sum: .x}
  low: {min: .x}
  high: {max: .x}
  mean: {avg: .x}
  xs: {collect: .x}
  tags: {collect: '.tags[]?'}
";

    #[test]
    fn every_field_kind() {
        let agg = aggregator(ALL_FIELDS);
        let out = fold_all(
            &agg,
            vec![
                json!({"g": "a", "x": 3, "tags": ["p"]}),
                json!({"g": "b", "x": 1.5}),
                json!({"g": "a", "x": -1, "tags": ["q", "r"]}),
                json!({"g": "a", "x": 10}),
            ],
        );
        assert_eq!(
            out,
            vec![
                json!({"key": "a", "n": 3, "total": 12, "low": -1, "high": 10, "mean": 4.0,
                       "xs": [3, -1, 10], "tags": ["p", "q", "r"]}),
                json!({"key": "b", "n": 1, "total": 1.5, "low": 1.5, "high": 1.5, "mean": 1.5,
                       "xs": [1.5], "tags": []}),
            ]
        );
    }

    #[test]
    fn absent_values_are_left_out_and_non_numbers_rejected() {
        let agg = aggregator(
            "group_by: .g\nfields: {n: count, total: {sum: '.x // empty'}, mean: {avg: '.x // empty'}, low: {min: '.x // empty'}}",
        );
        let out = fold_all(&agg, vec![json!({"g": 1}), json!({"g": 1, "x": 4})]);
        assert_eq!(
            out,
            vec![json!({"key": 1, "n": 2, "total": 4, "mean": 4.0, "low": 4})]
        );
        let out = fold_all(&agg, vec![json!({"g": null})]);
        assert_eq!(
            out,
            vec![json!({"key": null, "n": 1, "total": 0, "mean": null, "low": null})]
        );

        let agg = aggregator("group_by: .g\nfields: {total: {sum: .x}}");
        let e = agg.extract(&rec(json!({"g": 1, "x": "12"}))).unwrap_err();
        assert_eq!(e.reason, "aggregate_type");
        assert!(e.detail.contains("field 'total'"), "{e}");
        let e = agg.extract(&rec(json!({"g": 1}))).unwrap_err();
        assert_eq!(e.reason, "aggregate_type", "null is not a number");
        let e = agg
            .extract(&rec(json!({"g": 1, "x": {"a": 1}})))
            .unwrap_err();
        assert_eq!(e.reason, "aggregate_type");

        let agg = aggregator("group_by: .g | empty\nfields: {}");
        assert_eq!(
            agg.extract(&rec(json!({}))).unwrap_err().reason,
            "missing_key"
        );
        let agg = aggregator("group_by: .g + 1\nfields: {}");
        assert_eq!(
            agg.extract(&rec(json!({"g": "s"}))).unwrap_err().reason,
            "jq_error"
        );
    }

    #[test]
    fn integer_sums_are_exact_and_overflow_to_float() {
        let agg = aggregator("group_by: 'null'\nfields: {total: {sum: .c}}");
        // 2^53 + 1 is not representable as f64: a float sum would lose the 1
        let out = fold_all(
            &agg,
            vec![json!({"c": 9_007_199_254_740_992i64}), json!({"c": 1})],
        );
        assert_eq!(out[0]["total"], json!(9_007_199_254_740_993i64));
        // integral floats count as integers
        let out = fold_all(&agg, vec![json!({"c": 2.0}), json!({"c": 3})]);
        assert_eq!(out[0]["total"].to_string(), "5");
        // overflow falls back to a float
        let out = fold_all(&agg, vec![json!({"c": i64::MAX}), json!({"c": i64::MAX})]);
        assert_eq!(out[0]["total"].as_f64(), Some(2.0 * i64::MAX as f64));
        assert!(out[0]["total"].is_f64());
    }

    #[test]
    fn config_errors() {
        let bad = |yaml: &str| {
            let cfg: AggregateConfig = serde_saphyr::from_str(yaml).unwrap();
            cfg.build(&ctx()).unwrap_err()
        };
        let e = bad("group_by: .g\nfields:\n  total: {sum: .x +}\n");
        assert_eq!(e.at.map(|a| a.0), Some(3));
        assert!(
            e.message.starts_with("field 'total' does not compile"),
            "{e}"
        );
        assert!(
            bad("group_by: .g\nfields: {key: count}")
                .message
                .contains("reserved")
        );
        let e = bad("group_by: .g\nfields: {}\nwindow: {count: 0}\n");
        assert_eq!(e.at.map(|a| a.0), Some(3));
        assert!(
            bad("group_by: .g\nfields: {}\nwindow: {seconds: -1}\n")
                .message
                .contains("seconds")
        );
        assert!(
            serde_saphyr::from_str::<AggregateConfig>("group_by: .g\nfields: {a: {median: .x}}")
                .is_err()
        );
        assert!(
            serde_saphyr::from_str::<AggregateConfig>("group_by: .g\nfields: {a: count, a: count}")
                .is_err()
        );
    }

    #[test]
    fn windows() {
        let w = |yaml: &str| aggregator(&format!("group_by: .g\nfields: {{}}\n{yaml}")).window();
        assert_eq!(w(""), Window::All);
        assert_eq!(w("window: all"), Window::All);
        assert_eq!(w("window: {count: 5}"), Window::Count(5));
        assert_eq!(
            w("window: {seconds: 0.5}"),
            Window::Tumbling(Duration::from_millis(500))
        );
    }

    /// Wires the aggregator as the CLI does and returns the output values
    /// and the dead-lettered records' reasons.
    async fn pipeline(agg: Aggregator, values: Vec<Value>) -> (Vec<Value>, Vec<String>) {
        let agg = Arc::new(agg);
        let (a, b, c, d) = (agg.clone(), agg.clone(), agg.clone(), agg.clone());
        let records = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| Record::from_json(&v, pos(i as u64 + 1)));
        let p = Pipeline::new();
        let out = p
            .source("in", from_iter(records))
            .try_map("extract", move |r| a.extract(r))
            .workers(2)
            .on_error(ErrorPolicy::DeadLetter)
            .aggregate(
                "aggregate",
                |e| e.key.clone(),
                move |_| b.init(),
                move |acc, e| c.fold(acc, e),
                agg.window(),
            )
            .map("finish", move |(k, acc)| {
                let p = acc.first_pos();
                d.finish(&k, acc, p)
            })
            .sink("out", collect());
        let report = p.run().await.unwrap();
        let out: Vec<Record> = out.take().unwrap();
        let reasons = report
            .dead_letters
            .iter()
            .map(|d| d.error.clone())
            .collect();
        (out.into_iter().map(|r| r.json()).collect(), reasons)
    }

    #[test]
    fn in_a_pipeline_sums_integer_cents_exactly() {
        // 200_000 orders over 7 regions; cents up to ~10^6 each
        let values: Vec<Value> = (0..200_000u64)
            .map(|i| json!({"region": format!("r{}", i % 7), "cents": (i * 7919) % 999_983 + 17}))
            .collect();
        let mut expected = [0i64; 7];
        for v in &values {
            let r: usize = v["region"].as_str().unwrap()[1..].parse().unwrap();
            expected[r] += v["cents"].as_i64().unwrap();
        }
        let grand: i64 = expected.iter().sum();
        let mut bad = values.clone();
        bad.push(json!({"region": "r0", "cents": "oops"}));
        let agg = aggregator("group_by: .region\nfields: {orders: count, revenue: {sum: .cents}}");
        block_on(async move {
            let (out, dead) = pipeline(agg, bad).await;
            assert_eq!(out.len(), 7);
            let mut total = 0;
            for g in &out {
                let r: usize = g["key"].as_str().unwrap()[1..].parse().unwrap();
                assert_eq!(g["revenue"], json!(expected[r]), "{g}");
                assert!(g["revenue"].is_i64());
                total += g["revenue"].as_i64().unwrap();
            }
            assert_eq!(total, grand);
            assert_eq!(
                out.iter()
                    .map(|g| g["orders"].as_u64().unwrap())
                    .sum::<u64>(),
                200_000
            );
            assert_eq!(dead.len(), 1);
            assert!(dead[0].contains("aggregate_type"), "{dead:?}");
        });
    }

    #[test]
    fn in_a_pipeline_count_window_emits_full_groups() {
        let agg =
            aggregator("group_by: .g\nfields: {n: count, ids: {collect: .id}}\nwindow: {count: 2}");
        let values = (0..5).map(|i| json!({"g": "a", "id": i})).collect();
        block_on(async move {
            let (out, _) = pipeline(agg, values).await;
            let ns: Vec<_> = out.iter().map(|g| g["n"].clone()).collect();
            assert_eq!(ns, vec![json!(2), json!(2), json!(1)]);
            let mut ids: Vec<i64> = out
                .iter()
                .flat_map(|g| g["ids"].as_array().unwrap().clone())
                .map(|v| v.as_i64().unwrap())
                .collect();
            ids.sort_unstable();
            assert_eq!(ids, vec![0, 1, 2, 3, 4]);
        });
    }
}

mod batch {
    use super::*;
    use weir::{Pipeline, collect, from_iter};

    async fn batches(yaml: &str, n: u64) -> Vec<Record> {
        let cfg: BatchConfig = serde_saphyr::from_str(yaml).unwrap();
        let b = Arc::new(cfg.build(&ctx()).unwrap());
        let (k, i, f, fin) = (b.clone(), b.clone(), b.clone(), b.clone());
        let p = Pipeline::new();
        let out = p
            .source(
                "in",
                from_iter((0..n).map(|i| Record::from_json(&json!(i), pos(i + 1)))),
            )
            .aggregate(
                "batch",
                move |r| k.key(r),
                move |_| i.init(),
                move |acc, r| f.fold(acc, r),
                b.window(),
            )
            .map("finish", move |(_, acc)| fin.finish(acc))
            .sink("out", collect());
        p.run().await.unwrap();
        out.take().unwrap()
    }

    fn check(out: &[Record], sizes: &[u64]) {
        let counts: Vec<u64> = out
            .iter()
            .map(|r| r.json()["count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, sizes);
        let all: Vec<Value> = out
            .iter()
            .flat_map(|r| r.json()["records"].as_array().unwrap().clone())
            .collect();
        let n = sizes.iter().sum::<u64>();
        assert_eq!(all, (0..n).map(|i| json!(i)).collect::<Vec<_>>());
        assert_eq!(
            out[0].pos.line, 1,
            "a batch has its first record's position"
        );
    }

    #[test]
    fn by_count() {
        block_on(async {
            let out = batches("size: 3", 7).await;
            check(&out, &[3, 3, 1]);
            assert_eq!(out[1].pos.line, 4);
        });
    }

    #[test]
    fn by_time_never_exceeds_size() {
        block_on(async {
            let out = batches("size: 3\nseconds: 60", 7).await;
            check(&out, &[3, 3, 1]);
        });
    }

    #[test]
    fn config_errors() {
        for yaml in ["size: 0", "size: 2\nseconds: 0", "size: 2\nseconds: -1"] {
            let cfg: BatchConfig = serde_saphyr::from_str(yaml).unwrap();
            assert!(cfg.build(&ctx()).is_err(), "{yaml}");
        }
    }
}

mod schemas {
    use super::*;

    /// `weir explain` prints these: every option must carry its doc.
    fn check<T: schemars::JsonSchema>(required: &[&str]) {
        let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap();
        assert!(schema["description"].is_string(), "{schema:#}");
        assert_eq!(schema["additionalProperties"], json!(false), "{schema:#}");
        let props = schema["properties"].as_object().unwrap();
        for (name, p) in props {
            assert!(
                p["description"].is_string(),
                "option {name} has no doc: {schema:#}"
            );
        }
        let req: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(req, required, "{schema:#}");
    }

    #[test]
    fn every_option_is_documented() {
        check::<JqConfig>(&["program"]);
        check::<FilterConfig>(&["condition"]);
        check::<ValidateConfig>(&[]);
        check::<DedupeConfig>(&["key"]);
        check::<AggregateConfig>(&["group_by", "fields"]);
        check::<BatchConfig>(&["size"]);
    }
}

/// Per-record cost of the processors, in release builds:
/// `cargo test --release -p weir-connectors --test processors -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run in release by hand"]
fn per_record_cost() {
    let order = |i: u64| {
        json!({"id": i, "customer": format!("c{}", i % 1000), "amount": (i % 5000) as f64 / 100.0,
               "currency": "EUR", "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}]})
    };
    let records: Vec<Record> = (0..100_000).map(|i| rec(order(i))).collect();
    let time = |name: &str, p: &dyn Processor| {
        let mut out = Vec::new();
        let t = std::time::Instant::now();
        for r in &records {
            out.clear();
            let _ = p.process(r, &mut out);
        }
        let ns = t.elapsed().as_nanos() / records.len() as u128;
        eprintln!("{name}: {ns} ns/record");
    };
    let jq = |program: &str| {
        let cfg: JqConfig = serde_saphyr::from_str(&format!(
            "program: {}",
            serde_json::to_string(program).unwrap()
        ))
        .unwrap();
        cfg.build(&ctx()).unwrap()
    };
    time("jq .", &jq("."));
    time(
        "jq {id, cents: (.amount * 100)}",
        &jq("{id, cents: (.amount * 100)}"),
    );
    time("jq .items[]", &jq(".items[]"));
    time("jq [.items[].qty] | add", &jq("[.items[].qty] | add"));
    let f: FilterConfig = serde_saphyr::from_str("condition: .amount >= 10").unwrap();
    time("filter .amount >= 10", &f.build(&ctx()).unwrap());
    let v: ValidateConfig = serde_saphyr::from_str(
        "inline:\n  type: object\n  required: [id, customer, amount, currency]\n  properties:\n    id: {type: integer, minimum: 0}\n    customer: {type: string, pattern: '^c[0-9]+$'}\n    amount: {type: number, minimum: 0}\n    currency: {enum: [EUR, USD]}\n    items: {type: array, items: {type: object, required: [sku, qty]}}\n",
    )
    .unwrap();
    time("validate (valid)", &v.build(&ctx()).unwrap());
    let d: DedupeConfig = serde_saphyr::from_str("key: .id").unwrap();
    time("dedupe .id", &d.build(&ctx()).unwrap());
}
