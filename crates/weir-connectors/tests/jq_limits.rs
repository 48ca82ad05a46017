//! Records are untrusted: whatever a record drives a jq expression into
//! (millions of outputs, a loop that yields nothing, a deep recursion, a
//! deeply nested value, reading the environment), every component that
//! runs jq rejects that record with reason `jq_limit` and the limit named,
//! or refuses the program when the pipeline is built; the process neither
//! aborts nor hangs, and no environment variable reaches a record.
//!
//! The watchdog's hook is process-wide: [`setup`] replaces the default
//! (which ends the process) with one that records what it is told, so a
//! test can assert what was reported.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_connectors::limits::STACK_SIZE;
use weir_connectors::processors::aggregate::AggregateConfig;
use weir_connectors::processors::dedupe::DedupeConfig;
use weir_connectors::processors::filter::FilterConfig;
use weir_connectors::processors::jq::JqConfig;
use weir_connectors::processors::switch::SwitchConfig;
use weir_connectors::processors::{Processor, ProcessorContext};
use weir_connectors::watchdog::{self, GRACE, Stuck, TICK};
use weir_connectors::{ConfigError, Position, ProcessError, Record};

/// What the watchdog reported, across the tests of this binary.
fn reports() -> &'static Mutex<Vec<Stuck>> {
    static REPORTS: OnceLock<Mutex<Vec<Stuck>>> = OnceLock::new();
    REPORTS.get_or_init(|| {
        watchdog::set_hook(|s| reports().lock().unwrap().push(s.clone()));
        Mutex::new(Vec::new())
    })
}

fn setup() {
    reports();
}

/// The reports about `stage`.
fn reported(stage: &str) -> Vec<Stuck> {
    let all = reports().lock().unwrap();
    all.iter().filter(|s| s.stage == stage).cloned().collect()
}

fn ctx(stage: &str) -> ProcessorContext {
    ProcessorContext {
        stage: stage.to_owned(),
        ..ProcessorContext::default()
    }
}

fn rec(v: Value) -> Record {
    Record::from_json(
        &v,
        Arc::new(Position {
            input: "in".into(),
            file: Some("in.jsonl".into()),
            line: 7,
        }),
    )
}

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A `jq` processor for `program` with extra options (YAML flow-map
/// entries such as `limits: {timeout_ms: 200}`).
fn jq(stage: &str, program: &str, options: &str) -> impl Processor + use<> {
    let cfg: JqConfig = yaml(&format!(
        "{{program: {}, {options}}}",
        serde_json::to_string(program).unwrap()
    ));
    cfg.build(&ctx(stage)).unwrap()
}

/// Runs `f` on a thread with `stack` bytes of stack, failing the test if it
/// takes longer than `limit` (the thread is then left behind).
fn within<T: Send + 'static>(
    limit: Duration,
    stack: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("no result within {limit:?}: {e}"))
}

fn process(p: &impl Processor, v: Value) -> Result<Vec<Value>, ProcessError> {
    let mut out = Vec::new();
    p.process(&rec(v), &mut out)?;
    Ok(out.into_iter().map(|r| r.json()).collect())
}

fn limit_error(detail: &str) -> ProcessError {
    ProcessError::new("jq_limit", detail)
}

const BIG_STACK: usize = STACK_SIZE;
const SMALL_STACK: usize = 2 * 1024 * 1024;

mod outputs {
    use super::*;

    #[test]
    fn a_huge_range_stops_at_the_default_limit_quickly() {
        setup();
        let p = jq("spread", "range(.n)", "");
        let start = Instant::now();
        let r = within(Duration::from_secs(30), BIG_STACK, move || {
            process(&p, json!({"n": 1e12}))
        });
        assert_eq!(
            r,
            Err(limit_error("more than 100000 outputs (limits.max_outputs)"))
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn the_limit_is_a_stage_option_and_counts_outputs_exactly() {
        setup();
        let p = jq("split", ".items[]", "limits: {max_outputs: 3}");
        assert_eq!(
            process(&p, json!({"items": [1, 2, 3]})),
            Ok(vec![json!(1), json!(2), json!(3)])
        );
        assert_eq!(
            process(&p, json!({"items": [1, 2, 3, 4]})),
            Err(limit_error("more than 3 outputs (limits.max_outputs)"))
        );
        // The next record has its own count.
        assert_eq!(process(&p, json!({"items": [5]})), Ok(vec![json!(5)]));
    }

    #[test]
    fn an_aggregate_field_is_limited_and_named() {
        setup();
        let cfg: AggregateConfig =
            yaml("group_by: .k\nfields: {all: {collect: 'range(.n)'}}\nlimits: {max_outputs: 2}\n");
        let agg = cfg.build(&ctx("agg")).unwrap();
        assert!(agg.extract(&rec(json!({"k": 1, "n": 2}))).is_ok());
        assert_eq!(
            agg.extract(&rec(json!({"k": 1, "n": 1e12}))).unwrap_err(),
            limit_error("field 'all': more than 2 outputs (limits.max_outputs)")
        );
    }

    #[test]
    fn limits_of_zero_and_unknown_keys_are_refused() {
        let cfg: JqConfig = yaml("program: .\nlimits:\n  max_outputs: 0\n");
        assert_eq!(
            cfg.build(&ctx("z")).unwrap_err(),
            ConfigError {
                message: "limits.max_outputs must be at least 1".into(),
                at: Some((3, 16))
            }
        );
        let cfg: FilterConfig = yaml("condition: .\nlimits: {timeout_ms: 0}\n");
        assert_eq!(
            cfg.build(&ctx("z")).unwrap_err().message,
            "limits.timeout_ms must be at least 1"
        );
        let bad: Result<JqConfig, _> = serde_saphyr::from_str("program: .\nlimits: {timeout: 5}\n");
        assert!(bad.unwrap_err().to_string().contains("timeout"));
    }
}

mod time {
    use super::*;

    const TIMEOUT: &str = "limits: {timeout_ms: 200}";
    const OVER: &str = "took longer than 200ms (limits.timeout_ms)";

    /// Runs `p` on `v`, expecting the time limit: within the limit plus
    /// the watchdog's tick plus a margin for a loaded machine, and long
    /// before the watchdog would call the evaluation stuck.
    fn expect_timeout(p: impl Processor, v: Value) {
        let start = Instant::now();
        let r = within(Duration::from_secs(30), BIG_STACK, move || process(&p, v));
        let took = start.elapsed();
        assert_eq!(r, Err(limit_error(OVER)));
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_millis(200) + GRACE, "{took:?}");
    }

    #[test]
    fn loops_that_yield_nothing_stop_at_the_limit() {
        setup();
        for program in [
            "def f: f; f",
            "def f: . as $x | f; f",
            "[range(.n)] | length",
            "last(range(.n))",
            "reduce range(.n) as $x (0; . + $x)",
            "[limit(.n; repeat(1))] | length",
            "until(false; .)",
            "first(range(.n) | select(. < 0))",
            "0 | [recurse(. + 1)] | length",
        ] {
            let stage = format!("loop {program}");
            expect_timeout(jq(&stage, program, TIMEOUT), json!({"n": 1e12}));
            assert!(reported(&stage).is_empty(), "{program} was reported stuck");
        }
    }

    #[test]
    fn every_component_that_runs_jq_has_the_limit() {
        setup();
        let forever = "def f: f; f";
        let f: FilterConfig = yaml(&format!("{{condition: '{forever}', {TIMEOUT}}}"));
        expect_timeout(f.build(&ctx("f")).unwrap(), json!(1));
        let d: DedupeConfig = yaml(&format!("{{key: '{forever}', {TIMEOUT}}}"));
        expect_timeout(d.build(&ctx("d")).unwrap(), json!(1));

        let s: SwitchConfig = yaml(&format!(
            "{{cases: [{{name: a, when: .a}}, {{name: b, when: '{forever}'}}], {TIMEOUT}}}"
        ));
        let s = s.build(&ctx("s")).unwrap();
        let start = Instant::now();
        assert_eq!(s.route(&rec(json!({"a": true}))), Ok(Some(0)));
        assert_eq!(s.route(&rec(json!({"a": false}))), Err(limit_error(OVER)));
        assert!(start.elapsed() < Duration::from_millis(200) + GRACE);

        for (fields, what) in [
            (format!("{{n: {{sum: '{forever}'}}}}"), "field 'n': "),
            ("{n: count}".to_owned(), "group_by: "),
        ] {
            let group_by = if what == "group_by: " { forever } else { ".k" };
            let a: AggregateConfig = yaml(&format!(
                "{{group_by: '{group_by}', fields: {fields}, {TIMEOUT}}}"
            ));
            let a = a.build(&ctx("a")).unwrap();
            let start = Instant::now();
            assert_eq!(
                a.extract(&rec(json!({"k": 1}))).unwrap_err(),
                limit_error(&format!("{what}{OVER}"))
            );
            assert!(start.elapsed() < Duration::from_millis(200) + GRACE);
        }
    }

    #[test]
    fn a_record_after_one_over_the_limit_has_its_own_time() {
        setup();
        let p = Arc::new(jq("next", "if .stop then def f: f; f else .n end", TIMEOUT));
        let q = p.clone();
        let r = within(Duration::from_secs(30), BIG_STACK, move || {
            let first = process(&*q, json!({"stop": true}));
            let t = Instant::now();
            let second = process(&*q, json!({"stop": false, "n": 1}));
            (first, second, t.elapsed())
        });
        assert_eq!(r.0, Err(limit_error(OVER)));
        assert_eq!(r.1, Ok(vec![json!(1)]));
        assert!(r.2 < Duration::from_millis(100), "{:?}", r.2);
    }

    #[test]
    fn a_call_that_cannot_be_stopped_is_reported_once_with_stage_position_and_limit() {
        setup();
        // `indices` compares every window natively: about 3 s for n = 6e5,
        // without calling back into jaq, so no checkpoint can stop it.
        let p = jq(
            "search",
            ".n as $n | (\"a\" * $n) | indices((\"a\" * ($n / 2 | floor)) + \"b\") | length",
            TIMEOUT,
        );
        let start = Instant::now();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(process(&p, json!({"n": 600_000})));
        });
        let deadline = Duration::from_millis(200) + GRACE + 2 * TICK + Duration::from_secs(2);
        let report = loop {
            if let Some(r) = reported("search").first().cloned() {
                break r;
            }
            assert!(
                start.elapsed() < deadline,
                "not reported within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let at = start.elapsed();
        assert!(
            at >= Duration::from_millis(200) + GRACE,
            "reported early: {at:?}"
        );
        assert_eq!(report.stage, "search");
        assert_eq!(report.position.as_deref(), Some("in.jsonl:7"));
        assert_eq!(report.limit, Duration::from_millis(200));
        assert!(report.elapsed >= Duration::from_millis(200) + GRACE);
        let text = report.to_string();
        assert!(
            text.starts_with(
                "stage 'search': the jq evaluation of the record at in.jsonl:7 took longer \
                 than 200ms (limits.timeout_ms) and cannot be interrupted"
            ),
            "{text}"
        );
        // When the call returns at last, the record is rejected, and it was
        // reported once, however many ticks it ran over.
        let r = rx.recv_timeout(Duration::from_secs(120)).unwrap();
        assert_eq!(r, Err(limit_error(OVER)));
        assert_eq!(reported("search").len(), 1);
    }
}

mod stack {
    use super::*;

    const RECURSE: &str = "def f: if . > 0 then 1 + (. - 1 | f) else 0 end; .n | f";
    const TOO_DEEP: &str = "recursed deeper than the thread's stack allows";

    #[test]
    fn a_thousand_levels_are_computed_on_the_recommended_stack() {
        setup();
        let p = jq("rec", RECURSE, "");
        let r = within(Duration::from_secs(60), BIG_STACK, move || {
            process(&p, json!({"n": 1000}))
        });
        assert_eq!(r, Ok(vec![json!(1000)]));
    }

    #[test]
    fn a_hundred_thousand_levels_are_computed_or_rejected_never_an_abort() {
        setup();
        let p = jq("rec", RECURSE, "limits: {timeout_ms: 60000}");
        let r = within(Duration::from_secs(120), BIG_STACK, move || {
            process(&p, json!({"n": 100_000}))
        });
        // A release build computes it (about 2.7 KiB of stack per level); a
        // debug build's frames are ten times bigger and it runs out first.
        match r {
            Ok(v) => assert_eq!(v, vec![json!(100_000)]),
            Err(e) => {
                assert_eq!(e.reason, "jq_limit");
                assert!(e.detail.starts_with(TOO_DEEP), "{e}");
            }
        }
    }

    #[test]
    fn on_a_small_stack_deep_recursion_is_rejected_not_an_abort() {
        setup();
        for stack in [SMALL_STACK, 512 * 1024] {
            let p = jq("rec", RECURSE, "limits: {timeout_ms: 60000}");
            let r = within(Duration::from_secs(60), stack, move || {
                process(&p, json!({"n": 100_000}))
            });
            let e = r.unwrap_err();
            assert_eq!(e.reason, "jq_limit");
            assert!(e.detail.starts_with(TOO_DEEP), "{e}");
        }
    }

    #[test]
    fn outputs_deeper_than_json_allows_are_rejected() {
        setup();
        let p = jq("nest", "reduce range(.n) as $x (0; [.])", "");
        let ok = process(&p, json!({"n": 127})).unwrap();
        let text = serde_json::to_string(&ok[0]).unwrap();
        assert!(
            serde_json::from_str::<Value>(&text).is_ok(),
            "readable back"
        );
        assert_eq!(
            process(&p, json!({"n": 128})),
            Err(limit_error(
                "an output nests arrays and objects deeper than 127 levels"
            ))
        );
    }

    #[test]
    fn fromjson_refuses_what_json_records_may_not_hold() {
        setup();
        let p = jq("parse", ".s | fromjson", "");
        let deep = |n: usize| json!({"s": format!("{}{}", "[".repeat(n), "]".repeat(n))});
        // Before: jaq's parser recursed once per level and overflowed the
        // stack (a debug build, 1 GiB, a million levels: a 2 MB record).
        let r = within(Duration::from_secs(60), BIG_STACK, move || {
            process(&p, deep(1_000_000))
        });
        assert_eq!(
            r,
            Err(ProcessError::new(
                "jq_error",
                "cannot parse a JSON text nested deeper than 127 levels"
            ))
        );
        let p = jq("parse", ".s | fromjson", "");
        assert_eq!(process(&p, deep(127)).map(|v| v.len()), Ok(1));
        assert!(process(&p, deep(128)).is_err());
        assert_eq!(
            process(&p, json!({"s": "[1, {\"a\": \"[[\"}] 2"})),
            Ok(vec![json!([1, {"a": "[["}]), json!(2)])
        );
        assert_eq!(
            process(&p, json!({"s": "[1"})).unwrap_err().reason,
            "jq_error"
        );
    }

    #[test]
    fn a_deep_value_built_inside_an_evaluation_is_freed() {
        setup();
        let p = jq("deepval", "reduce range(.n) as $x (null; [.]) | 1", "");
        let r = within(Duration::from_secs(60), BIG_STACK, move || {
            process(&p, json!({"n": 1_000_000}))
        });
        // Computed, or stopped by the time limit (a debug build is slow);
        // either way the value was freed without overflowing the stack.
        match r {
            Ok(v) => assert_eq!(v, vec![json!(1)]),
            Err(e) => assert_eq!(e, limit_error("took longer than 1s (limits.timeout_ms)")),
        }
    }
}

mod env {
    use super::*;

    /// A variable cargo sets in the test's environment, and its value.
    fn secret() -> (&'static str, String) {
        let name = "CARGO_MANIFEST_DIR";
        let value = std::env::var(name).expect("cargo sets CARGO_MANIFEST_DIR");
        assert!(value.len() > 5);
        (name, value)
    }

    fn build_jq(program: &str, options: &str) -> Result<impl Processor + use<>, ConfigError> {
        let cfg: JqConfig = yaml(&format!(
            "{{program: {}, {options}}}",
            serde_json::to_string(program).unwrap()
        ));
        cfg.build(&ctx("env"))
    }

    #[test]
    fn reading_the_environment_is_refused_without_a_list() {
        setup();
        for (program, name) in [
            ("env", "env"),
            ("env.CARGO_MANIFEST_DIR", "env"),
            ("env[.f]", "env"),
            ("env | getpath([.f])", "env"),
            ("[env[]]", "env"),
            ("env | to_entries", "env"),
            ("{x: 1} + env", "env"),
            ("$ENV", "$ENV"),
            ("$ENV.CARGO_MANIFEST_DIR", "$ENV"),
            ("$ENV[.f]", "$ENV"),
            ("$ENV | keys", "$ENV"),
        ] {
            let Err(e) = build_jq(program, "") else {
                panic!("{program} compiled");
            };
            assert_eq!(
                e.message,
                format!(
                    "jq program does not compile: `{name}` is not available: the environment \
                     may hold secrets, so a program reads only the variables its stage lists, \
                     as in `env: [NAME]` (at column {} of the program)",
                    program.find(name).unwrap() + 1
                ),
                "{program}"
            );
        }
        let f: FilterConfig = yaml("condition: 'env.X != null'");
        assert!(
            f.build(&ctx("f"))
                .unwrap_err()
                .message
                .contains("`env` is not available")
        );
        let d: DedupeConfig = yaml("key: '$ENV.X'");
        assert!(
            d.build(&ctx("d"))
                .unwrap_err()
                .message
                .contains("`$ENV` is not available")
        );
        let a: AggregateConfig = yaml("group_by: .k\nfields: {x: {collect: 'env'}}");
        assert!(
            a.build(&ctx("a"))
                .unwrap_err()
                .message
                .contains("`env` is not available")
        );
        let s: SwitchConfig = yaml("cases: [{name: a, when: 'env.X'}]");
        assert!(
            s.build(&ctx("s"))
                .unwrap_err()
                .message
                .contains("`env` is not available")
        );
    }

    #[test]
    fn no_other_route_reaches_the_environment() {
        setup();
        let (name, value) = secret();
        let input = json!({"f": name, "path": [name]});
        for program in [
            "$__prog_args",
            "$__loc__",
            "$__named",
            "input",
            "[inputs]",
            "input_filename",
            "get_search_list",
            "getpath([.f])",
            "getpath(.path)",
            ".[.f]",
            "[paths]",
            "now | strflocaltime(\"%Z\")",
            "debug",
            "stderr",
            "@sh \"\\(.)\"",
            "[splits(\"/\")]?",
            "tojson",
            "$ENV_X",
            "def env: {}; env",
            "builtins",
            "[.[] | tostring]",
        ] {
            let Ok(p) = build_jq(program, "") else {
                continue;
            };
            let out = within(Duration::from_secs(30), BIG_STACK, {
                let input = input.clone();
                move || process(&p, input)
            });
            let text = format!("{out:?}");
            assert!(!text.contains(&value), "{program} leaked {name}: {text}");
        }
    }

    #[test]
    fn a_list_allows_only_the_listed_variables() {
        setup();
        let (secret_name, secret_value) = secret();
        let allowed = std::env::var("CARGO_PKG_NAME").expect("cargo sets CARGO_PKG_NAME");
        let options = "env: [CARGO_PKG_NAME, WEIR_SURELY_UNSET_VARIABLE]";
        for (program, expected) in [
            ("env", json!({"CARGO_PKG_NAME": allowed})),
            ("$ENV", json!({"CARGO_PKG_NAME": allowed})),
            ("$ENV.CARGO_PKG_NAME", json!(allowed)),
            ("env[.f]", json!(null)),
            ("$ENV[.f]", json!(null)),
            ("env | keys", json!(["CARGO_PKG_NAME"])),
            ("env.WEIR_SURELY_UNSET_VARIABLE", json!(null)),
        ] {
            let p = build_jq(program, options).unwrap();
            let out = process(&p, json!({"f": secret_name})).unwrap();
            assert_eq!(out, vec![expected], "{program}");
            assert!(!format!("{out:?}").contains(&secret_value));
        }
    }
}
