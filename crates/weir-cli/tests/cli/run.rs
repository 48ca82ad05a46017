//! `weir run`: every component in a real run, with exact outputs and
//! report counts that add up.

use serde_json::{Value, json};

use crate::util::{Dir, assert_accounting, assert_conserved, code, n, parse_jsonl, stage, text};

const GZ: &[u8] = include_bytes!("../fixtures/two-members.jsonl.gz");

/// The file source in its formats: jsonl (blank lines skipped), csv with
/// typed columns (bad rows dead-lettered), plain lines, and gzip with two
/// members; the file sink in jsonl and csv.
#[test]
fn file_source_formats() {
    let d = Dir::new();
    d.file("in/a.jsonl", "{\"id\":1,\"x\":\"a\"}\n\n   \n{\"id\":2,\"x\":[1,{\"y\":null}]}\n")
        .file(
            "in/c.csv",
            "id,name,score,vip\n1,ann,2.5,true\n2,\"b,ob\",,FALSE\n3,cy,x,true\n4,dee,7,false,extra\n5,eve,-1e3, True \n",
        )
        .file("in/l.txt", "hello\n\n  world  \r\nlast")
        .file("in/z.jsonl.gz", GZ)
        .file(
            "p.yaml",
            "\
inputs:
  - name: j
    decode_workers: 1
    file: { path: in/a.jsonl }
  - name: c
    decode_workers: 1
    file:
      path: in/c.csv
      columns: { id: int, score: float, vip: bool }
  - name: l
    decode_workers: 1
    file: { path: in/l.txt }
  - name: z
    decode_workers: 1
    file: { path: 'in/*.gz' }
outputs:
  - name: oj
    from: j
    file: { path: out/j.jsonl }
  - name: oc
    from: c
    file: { path: out/c.jsonl }
  - name: ol
    from: l
    file: { path: out/l.csv }
  - name: oz
    from: z
    file: { path: out/z.csv, columns: [v, g, missing] }
dead_letter: { path: out/dead.jsonl }
",
        );
    let report = d.run_ok("p.yaml");
    assert_eq!(
        d.jsonl("out/j.jsonl"),
        vec![
            json!({"id": 1, "x": "a"}),
            json!({"id": 2, "x": [1, {"y": null}]})
        ]
    );
    assert_eq!(
        d.jsonl("out/c.jsonl"),
        vec![
            json!({"id": 1, "name": "ann", "score": 2.5, "vip": true}),
            json!({"id": 2, "name": "b,ob", "score": null, "vip": false}),
            json!({"id": 5, "name": "eve", "score": -1000.0, "vip": true}),
        ]
    );
    assert_eq!(d.read("out/l.csv"), "line\nhello\n\"\"\n  world  \nlast\n");
    assert_eq!(d.read("out/z.csv"), "v,g,missing\n1,a,\n2.5,b,\n3,a,\n");
    let dead = d.jsonl("out/dead.jsonl");
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0]["position"], "in/c.csv:4");
    assert_eq!(
        dead[0]["error"],
        "parse_error: column score: 'x' is not a float"
    );
    assert_eq!(dead[1]["position"], "in/c.csv:5");
    assert_eq!(
        dead[1]["error"],
        "parse_error: csv row has 5 fields, the header has 4"
    );

    assert_eq!(n(&report, "j", "out"), 2, "blank lines are skipped");
    assert_eq!(n(&report, "c", "out"), 5);
    assert_eq!(n(&report, "c/decode", "dead_lettered"), 2);
    assert_eq!(n(&report, "l", "out"), 4, "blank lines are kept in `lines`");
    assert_eq!(n(&report, "z", "out"), 3);
    assert_eq!(report["dead_lettered"], 2);
    assert_accounting(&report);
    assert_conserved(&report);
}

/// `stdin` as the source, `stdout` as the sink: records come out in order
/// (one decode worker), the bad line is dead-lettered with its line number
/// on standard input.
#[test]
fn stdin_to_stdout() {
    let d = Dir::new();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: in
    decode_workers: 1
    stdin: {}
outputs:
  - name: out
    stdout: {}
dead_letter: { path: dead.jsonl }
",
    );
    let (out, report) = d.run_with_stdin("p.yaml", "{\"a\":1}\n\n{\"b\":[2]}\nbad\n\"text\"\n");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(&lines[..3], ["{\"a\":1}", "{\"b\":[2]}", "\"text\""]);
    let dead = d.jsonl("dead.jsonl");
    assert_eq!(
        dead,
        vec![json!({
            "stage": "in/decode",
            "error": "parse_error: invalid JSON at column 1: expected value",
            "attempts": 1,
            "position": "in#4",
            "input": "in",
            "record": null,
            "raw": "bad",
        })]
    );
    assert_eq!(n(&report, "in", "out"), 4);
    assert_eq!(n(&report, "out", "ok"), 3);
    assert_accounting(&report);
    assert_conserved(&report);

    // `format: lines` keeps blank lines and takes any text.
    d.file(
        "q.yaml",
        "inputs:\n  - name: in\n    decode_workers: 1\n    stdin: { format: lines }\noutputs:\n  - name: out\n    stdout: {}\n",
    );
    let (out, report) = d.run_with_stdin("q.yaml", "a\n\n{b\n");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        &lines[..3],
        ["{\"line\":\"a\"}", "{\"line\":\"\"}", "{\"line\":\"{b\"}"]
    );
    assert_eq!(report["dead_lettered"], 0);
}

/// stdin keeps its order by default, through per-record stages too (they
/// take its single decode worker).
#[test]
fn stdin_keeps_its_order_by_default() {
    let d = Dir::new();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: in
    stdin: {}
stages:
  - name: bump
    jq: { program: '.n += 1' }
  - name: odd
    filter: { condition: '.n % 2 == 1' }
outputs:
  - name: out
    stdout: {}
",
    );
    let input: String = (0..20_000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let (out, report) = d.run_with_stdin("p.yaml", &input);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let got: Vec<u64> = parse_jsonl(&text(&out.stdout))
        .iter()
        .filter_map(|v| v["n"].as_u64())
        .collect();
    let expected: Vec<u64> = (0..20_000).map(|i| i + 1).filter(|n| n % 2 == 1).collect();
    assert_eq!(got, expected);
    assert_eq!(stage(&report, "in/decode")["workers"], 1);
    assert_accounting(&report);
}

/// `generate` with a template: the documented placeholders, the same
/// records for the same seed.
#[test]
fn generate_template() {
    let d = Dir::new();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: gen
    generate:
      count: 20
      seed: 7
      template:
        id: '{{seq}}'
        user: 'u{{int:0..3}}'
        n: '{{int:-5..5}}'
        x: '{{float:1..2}}'
        kind: '{{choice:click|view}}'
        fixed: { a: [1, 'k{{seq}}'] }
outputs:
  - name: out
    file: { path: out.jsonl }
",
    );
    let report = d.run_ok("p.yaml");
    let first = d.read("out.jsonl");
    let mut records = parse_jsonl(&first);
    assert_eq!(records.len(), 20);
    records.sort_by_key(|r| r["id"].as_u64());
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["id"], i, "{r}");
        let user = r["user"].as_str().unwrap();
        assert!(["u0", "u1", "u2"].contains(&user), "{r}");
        assert!((-5..5).contains(&r["n"].as_i64().unwrap()), "{r}");
        let x = r["x"].as_f64().unwrap();
        assert!((1.0..=2.0).contains(&x), "{r}");
        assert!(
            ["click", "view"].contains(&r["kind"].as_str().unwrap()),
            "{r}"
        );
        assert_eq!(r["fixed"], json!({"a": [1, format!("k{i}")]}));
    }
    assert_eq!(n(&report, "gen", "out"), 20);
    assert_accounting(&report);
    assert_conserved(&report);

    d.run_ok("p.yaml");
    let mut again = d.jsonl("out.jsonl");
    again.sort_by_key(|r| r["id"].as_u64());
    assert_eq!(again, records, "the same seed gives the same records");
}

/// `generate` with `preset: events` yields the lines of `weir gen events`
/// decoded as jsonl: the valid ones reach the sink, the truncated ones are
/// dead-lettered.
#[test]
fn generate_events_preset() {
    let d = Dir::new();
    let gen_out = d
        .weir(&[
            "gen", "events", "--seed", "42", "--lines", "2000", "--users", "3",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&gen_out), 0);
    let lines = text(&gen_out.stdout);
    let (valid, invalid): (Vec<&str>, Vec<&str>) = lines
        .lines()
        .partition(|l| serde_json::from_str::<Value>(l).is_ok());
    assert_eq!(valid.len() + invalid.len(), 2000);
    assert!(!invalid.is_empty(), "2000 lines hold some truncated ones");

    d.file(
        "p.yaml",
        "\
inputs:
  - name: ev
    decode_workers: 1
    generate: { count: 2000, seed: 42, users: 3, preset: events }
outputs:
  - name: out
    file: { path: out.jsonl }
dead_letter: { path: dead.jsonl }
",
    );
    let report = d.run_ok("p.yaml");
    let expected: Vec<Value> = valid
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(d.jsonl("out.jsonl"), expected);
    let dead = d.jsonl("dead.jsonl");
    let raws: Vec<&str> = dead.iter().map(|x| x["raw"].as_str().unwrap()).collect();
    assert_eq!(raws, invalid);
    assert_eq!(report["dead_lettered"], invalid.len());
    assert_accounting(&report);
    assert_conserved(&report);
}

/// jq with 0, 1 and n outputs; filter with and without `drop_reason`;
/// validate; dedupe.
#[test]
fn processors() {
    let d = Dir::new();
    d.file(
        "in.jsonl",
        "\
{\"id\":1,\"n\":2,\"amount\":5}
{\"id\":2,\"n\":0,\"amount\":1}
{\"id\":3,\"n\":1,\"amount\":7}
{\"id\":1,\"n\":1,\"amount\":5}
{\"id\":4,\"n\":1,\"amount\":\"x\"}
{\"id\":5,\"n\":1,\"amount\":-3}
{\"id\":6,\"n\":3,\"amount\":2}
",
    )
    .file(
        "p.yaml",
        "\
inputs:
  - name: in
    decode_workers: 1
    file: { path: in.jsonl }
stages:
  - name: valid
    validate:
      inline:
        type: object
        required: [id, n, amount]
        properties: { amount: { type: number } }
  - name: unique
    dedupe: { key: .id }
  - name: positive
    filter: { condition: '.amount >= 0' }
  - name: split
    jq: { program: 'range(.n) as $i | {id, i: $i}' }
  - name: first-two
    filter: { condition: '.i < 2', drop_reason: too_many }
  - name: rename
    jq: { program: '{key: \"\\(.id)-\\(.i)\"}' }
outputs:
  - name: out
    file: { path: out.jsonl }
dead_letter: { path: dead.jsonl }
",
    );
    let report = d.run_ok("p.yaml");
    assert_eq!(
        d.jsonl("out.jsonl"),
        vec![
            json!({"key": "1-0"}),
            json!({"key": "1-1"}),
            json!({"key": "3-0"}),
            json!({"key": "6-0"}),
            json!({"key": "6-1"}),
        ]
    );
    let counts =
        |s: &str| ["in", "ok", "out", "filtered", "dead_lettered"].map(|c| n(&report, s, c));
    //                                  in ok out filtered dead
    assert_eq!(counts("valid"), [7, 6, 6, 0, 1]);
    assert_eq!(counts("unique"), [6, 5, 5, 1, 0]);
    assert_eq!(counts("positive"), [5, 4, 4, 1, 0]);
    // id 2 has n = 0: no output, counted as filtered.
    assert_eq!(counts("split"), [4, 3, 6, 1, 0]);
    assert_eq!(counts("first-two"), [6, 5, 5, 0, 1]);
    assert_eq!(counts("rename"), [5, 5, 5, 0, 0]);
    let dead = d.jsonl("dead.jsonl");
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["stage"], "valid");
    assert_eq!(
        dead[0]["error"],
        "schema: /amount: \"x\" is not of type \"number\""
    );
    assert_eq!(dead[1]["stage"], "first-two");
    assert_eq!(dead[1]["error"], "too_many: condition `.i < 2` is not true");
    assert_eq!(dead[1]["record"], json!({"id": 6, "i": 2}));
    assert_eq!(dead[1]["position"], "in.jsonl:7");
    assert_accounting(&report);
}

/// aggregate with every field kind, windows `all` and `{count: N}`; batch.
#[test]
fn aggregate_and_batch() {
    let d = Dir::new();
    d.file(
        "in.jsonl",
        "\
{\"g\":\"a\",\"v\":1}
{\"g\":\"b\",\"v\":2.5}
{\"g\":\"a\",\"v\":3}
{\"g\":\"a\",\"v\":\"x\"}
{\"g\":\"b\",\"v\":4}
{\"g\":\"a\",\"v\":-2}
",
    )
    .file(
        "p.yaml",
        "\
inputs:
  - name: in
    decode_workers: 1
    file: { path: in.jsonl }
stages:
  - name: all
    from: in
    aggregate:
      group_by: .g
      fields:
        n: count
        s: { sum: .v }
        lo: { min: .v }
        hi: { max: .v }
        mean: { avg: .v }
        vs: { collect: .v }
  - name: pairs
    from: in
    aggregate:
      group_by: .g
      window: { count: 2 }
      fields: { n: count, s: { sum: .v }, vs: { collect: .v } }
  - name: batches
    from: in
    batch: { size: 4 }
outputs:
  - name: o-all
    from: all
    file: { path: out/all.jsonl }
  - name: o-all-csv
    from: all
    file: { path: out/all.csv }
  - name: o-pairs
    from: pairs
    file: { path: out/pairs.jsonl }
  - name: o-batches
    from: batches
    file: { path: out/batches.jsonl }
dead_letter: { path: out/dead.jsonl }
",
    );
    let report = d.run_ok("p.yaml");
    assert_eq!(
        d.jsonl("out/all.jsonl"),
        vec![
            json!({"key": "a", "n": 3, "s": 2, "lo": -2, "hi": 3, "mean": 2.0 / 3.0, "vs": [1, 3, -2]}),
            json!({"key": "b", "n": 2, "s": 6.5, "lo": 2.5, "hi": 4, "mean": 3.25, "vs": [2.5, 4]}),
        ]
    );
    assert_eq!(
        d.read("out/all.csv"),
        "key,n,s,lo,hi,mean,vs\na,3,2,-2,3,0.6666666666666666,\"[1,3,-2]\"\nb,2,6.5,2.5,4,3.25,\"[2.5,4]\"\n"
    );
    assert_eq!(
        d.jsonl("out/pairs.jsonl"),
        vec![
            json!({"key": "a", "n": 2, "s": 4, "vs": [1, 3]}),
            json!({"key": "b", "n": 2, "s": 6.5, "vs": [2.5, 4]}),
            json!({"key": "a", "n": 1, "s": -2, "vs": [-2]}),
        ]
    );
    let batches = d.jsonl("out/batches.jsonl");
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0]["count"], 4);
    assert_eq!(batches[1]["count"], 2);
    let records: Vec<Value> = batches
        .iter()
        .flat_map(|b| b["records"].as_array().unwrap().clone())
        .collect();
    assert_eq!(records, d.jsonl("in.jsonl"));

    let dead = d.jsonl("out/dead.jsonl");
    assert_eq!(dead.len(), 2, "{dead:#?}");
    for x in &dead {
        assert_eq!(x["position"], "in.jsonl:4");
        assert!(
            x["error"].as_str().unwrap().starts_with("aggregate_type: "),
            "{x}"
        );
    }
    // `out` counts copies: `all` is read by two outputs.
    assert_eq!(n(&report, "all/emit", "ok"), 2);
    assert_eq!(n(&report, "all/emit", "out"), 4);
    assert_eq!(n(&report, "pairs/emit", "out"), 3);
    assert_eq!(n(&report, "batches/emit", "out"), 2);
    assert_accounting(&report);
}

/// The sqlite sink: typed columns, json, upserts by key, so a second run
/// leaves the same rows.
#[test]
fn sqlite_sink_is_idempotent() {
    let d = Dir::new();
    d.file(
        "in.jsonl",
        "\
{\"id\":1,\"name\":\"ann\",\"amount\":2.5,\"tags\":[\"a\"],\"n\":3}
{\"id\":2,\"name\":\"bob\",\"amount\":3,\"tags\":null}
{\"id\":1,\"name\":\"ann2\",\"amount\":4.0,\"tags\":{}, \"n\":4.0}
{\"id\":3,\"name\":7,\"amount\":-1}
",
    )
    .file(
        "p.yaml",
        "\
inputs:
  - name: in
    decode_workers: 1
    file: { path: in.jsonl }
outputs:
  - name: db
    sqlite:
      path: out/db.sqlite
      table: people
      key: [id]
      columns: { id: integer, name: text, amount: real, tags: json, n: integer }
",
    );
    type Row = (i64, String, f64, Option<String>, Option<i64>);
    let rows = || -> Vec<Row> {
        let conn = rusqlite::Connection::open(d.join("out/db.sqlite")).unwrap();
        let mut stmt = conn
            .prepare("SELECT id, name, amount, tags, n FROM people ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    let expected: Vec<Row> = vec![
        (1, "ann2".into(), 4.0, Some("{}".into()), Some(4)),
        (2, "bob".into(), 3.0, None, None),
        (3, "7".into(), -1.0, None, None),
    ];
    let report = d.run_ok("p.yaml");
    assert_eq!(rows(), expected);
    assert_eq!(n(&report, "db", "ok"), 4);
    assert_accounting(&report);
    assert_conserved(&report);

    d.run_ok("p.yaml");
    assert_eq!(rows(), expected, "a second run leaves the same rows");
}

#[test]
fn switch_routes_by_condition_and_rejects_on_runtime_errors() {
    let d = Dir::new();
    d.file(
        "in.jsonl",
        "{\"id\":1,\"amount\":500}\n{\"id\":2,\"amount\":5}\n{\"id\":3,\"amount\":{}}\n{\"id\":4,\"amount\":150}\n{\"id\":5}\n",
    );
    d.file(
        "p.yaml",
        r#"
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: split
    switch:
      cases:
        - { name: large, when: '.amount > 100 and (.amount | type) == "number"' }
        - { name: missing, when: '.amount == null' }
      default: small
  - name: tag
    from: split/small
    jq: { program: '. + {size: "small"}' }
outputs:
  - name: big
    from: split/large
    file: { path: out/large.jsonl }
  - name: small
    from: tag
    file: { path: out/small.jsonl }
  - name: none
    from: split/missing
    file: { path: out/missing.jsonl }
"#,
    );
    let report = d.run_ok("p.yaml");
    assert_accounting(&report);
    let ids = |f: &str| -> Vec<u64> {
        d.jsonl(f)
            .iter()
            .map(|v| v["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids("out/large.jsonl"), vec![1, 4]);
    assert_eq!(ids("out/missing.jsonl"), vec![5]);
    // An object compares greater than numbers in jq, but is no number: small.
    assert_eq!(ids("out/small.jsonl"), vec![2, 3]);
    assert_eq!(d.jsonl("out/small.jsonl")[0]["size"], "small");
    assert_eq!(n(&report, "split", "in"), 5);
}

#[test]
fn a_switch_is_read_through_its_branches() {
    let d = Dir::new();
    d.file("in.jsonl", "{}\n");
    d.file(
        "p.yaml",
        "inputs:\n  - name: in\n    file: { path: in.jsonl }\nstages:\n  - name: s\n    switch: { cases: [{ name: a, when: .x }] }\noutputs:\n  - name: o\n    stdout: {}\n",
    );
    let (code, _, stderr) = d.check("p.yaml");
    assert_eq!(code, 2);
    assert!(
        stderr.contains("'o' has no `from` and the entry above it is switch 's': name a branch, as `from: s/<branch>`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the records of branch 's/a' go nowhere"),
        "{stderr}"
    );
}

/// A per-record stage without `workers` takes its producer's (an input's
/// `decode_workers`, or the stage above) and runs inside that pool; a stage
/// that keeps order, reads two producers or is not per-record keeps 1
/// worker. Every record arrives either way.
#[test]
fn per_record_stages_take_their_producers_workers_and_fuse() {
    let d = Dir::new();
    let lines: String = (0..500).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    d.file("a.jsonl", &lines)
        .file("b.jsonl", &lines)
        .file("c.jsonl", "{\"src\":\"c\"}\n{\"src\":\"c\"}\n")
        .file(
            "p.yaml",
            "\
inputs:
  - name: a
    decode_workers: 3
    file: { path: a.jsonl }
  - name: b
    file: { path: b.jsonl }
  - name: c
    file: { path: c.jsonl }
  - name: d
    file: { path: c.jsonl }
stages:
  - name: d1
    from: d
    jq: { program: . }
  - name: d2
    from: d
    jq: { program: . }
  - name: tag
    from: a
    jq: { program: '.src = \"a\"' }
  - name: keep
    filter: { condition: '.id >= 0' }
  - name: kept-order
    ordered: true
    jq: { program: . }
  - name: both
    from: [kept-order, b]
    jq: { program: . }
  - name: unique
    dedupe: { key: '[.src, .id]' }
  - name: count
    from: c
    aggregate: { group_by: .src, fields: { n: count } }
outputs:
  - name: counts
    from: count
    file: { path: counts.jsonl }
  - name: ds
    from: [d1, d2]
    file: { path: ds.jsonl }
  - name: out
    from: unique
    file: { path: out.jsonl }
",
        );
    let report = d.run_ok("p.yaml");
    for (name, workers, runs_in) in [
        ("tag", 3, json!("a/decode")),
        ("keep", 3, json!("a/decode")),
        ("count/extract", 2, json!("c/decode")),
        // `d` is read twice: broadcast, so neither reader can fuse with it.
        ("d1", 1, Value::Null),
        ("d2", 1, Value::Null),
        ("kept-order", 1, Value::Null),
        ("both", 1, Value::Null),
        // One worker fed by one worker: the engine's one-to-one fusion.
        ("unique", 1, json!("both")),
    ] {
        let s = stage(&report, name);
        assert_eq!(s["workers"], workers, "{s}");
        assert_eq!(s["runs_in"], runs_in, "{s}");
    }
    assert_eq!(d.jsonl("out.jsonl").len(), 1000);
    assert_eq!(d.jsonl("counts.jsonl"), vec![json!({"key": "c", "n": 2})]);
    assert_accounting(&report);
}

/// A line written to a quiet stdin reaches the output without waiting for
/// a batch to fill or for the input to end, through a fused stage and a
/// pool of two behind a channel, and a Ctrl-C while stdin is quiet stops
/// the run at once (it used to wait for the next line).
#[test]
fn a_quiet_stdin_is_not_waited_for() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let d = Dir::new();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: in
    stdin: {}
stages:
  - name: tag
    jq: { program: '.seen = true' }
  - name: keep
    workers: 2
    filter: { condition: '.n > 0' }
outputs:
  - name: out
    stdout: {}
",
    );
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("weir"))
        .current_dir(d.path())
        .args(["run", "p.yaml", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    // Generous bounds: the point is that the line comes before the end of
    // the input (which never comes here), not how fast.
    let limit = Duration::from_secs(10);
    let mut latencies = Vec::new();
    // What is written before each line is expected out: a whole line; a
    // line, a blank line and the start of the next (neither may hold the
    // line back); the rest of that line.
    let writes = ["{\"n\":1}\n", "{\"n\":2}\n\n{\"n\":", "3}\n"];
    for (n, text) in (1..=3).zip(writes) {
        let sent = Instant::now();
        write!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
        let got = lines.recv_timeout(limit).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("line {n} did not come out while stdin stayed open")
        });
        latencies.push(sent.elapsed());
        assert_eq!(got, format!("{{\"n\":{n},\"seen\":true}}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("stdin to stdout latencies: {latencies:?}");
    // Ctrl-C with stdin open and quiet: the run drains and ends.
    let stopped = Instant::now();
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not stop on SIGINT with stdin quiet");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("stopped {:?} after SIGINT", stopped.elapsed());
    assert_eq!(status.code(), Some(130));
    drop(stdin);
}
