//! `weir check`: every class of configuration error is reported with file,
//! line, column and the offending line, exit code 2; the messages are
//! pinned. Where several problems are found, all are reported.

use crate::util::Dir;

/// A directory with an input file, a broken and an invalid schema.
fn dir() -> Dir {
    let d = Dir::new();
    d.file("in.jsonl", "{\"id\":1}\n")
        .file("broken.json", "{\"type\": \"object\",\n")
        .file("invalid.json", "{\"type\": 12}\n");
    d
}

/// Checks `yaml` as `p.yaml`: exit code 2, nothing on stdout, and exactly
/// `expected` (plus a newline) on stderr.
fn assert_check_fails(yaml: &str, expected: &str) {
    let d = dir();
    d.file("p.yaml", yaml);
    let (code, stdout, stderr) = d.check("p.yaml");
    assert_eq!(stderr, format!("{expected}\n"), "stderr of weir check");
    assert_eq!(code, 2, "exit code; stderr:\n{stderr}");
    assert_eq!(stdout, "");
}

#[test]
fn passes_and_says_ok() {
    let d = dir();
    d.file(
        "p.yaml",
        "inputs:\n  - name: in\n    file: { path: in.jsonl }\noutputs:\n  - name: out\n    stdout: {}\n",
    );
    assert_eq!(d.check("p.yaml"), (0, "p.yaml: ok\n".into(), String::new()));

    d.file(
        "sub/q.yaml",
        "description: Copies records.\ninputs:\n  - name: in\n    file: { path: ../in.jsonl }\noutputs:\n  - name: out\n    stdout: {}\n",
    );
    assert_eq!(
        d.check("sub/q.yaml"),
        (
            0,
            "sub/q.yaml: ok (Copies records.)\n".into(),
            String::new()
        )
    );
}

#[test]
fn unknown_key_in_an_entry() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
    workers: 2
outputs:
  - name: out
    stdout: {}
",
        "\
error: unknown field `workers`, expected one of name, decode_workers, file, stdin, generate, http_server, schedule, nats, sql
  --> p.yaml:4:5
  |
4 |     workers: 2
  |     ^

1 error in p.yaml",
    );
}

#[test]
fn unknown_top_level_key() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
outputs:
  - name: out
    stdout: {}
setting: { buffer: 4 }
",
        "\
error: unknown field `setting`, expected one of description, inputs, stages, outputs, dead_letter, settings, broker
  --> p.yaml:7:1
  |
7 | setting: { buffer: 4 }
  | ^

1 error in p.yaml",
    );
}

#[test]
fn unknown_key_in_component_options() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: s
    jq:
      program: .
      progam: .id
outputs:
  - name: out
    stdout: {}
",
        "\
error: unknown field `progam`, expected one of program, limits, env
  --> p.yaml:8:7
  |
8 |       progam: .id
  |       ^

1 error in p.yaml",
    );
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl, bogus: 1 }
outputs:
  - name: out
    stdout: {}
",
        "\
error: unknown field `bogus`, expected one of path, format, delimiter, columns, invalid_utf8, on_rewrite, follow
  --> p.yaml:3:29
  |
3 |     file: { path: in.jsonl, bogus: 1 }
  |                             ^

1 error in p.yaml",
    );
}

#[test]
fn wrong_type() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: s
    workers: many
    jq: { program: . }
outputs:
  - name: out
    stdout: {}
",
        "\
error: invalid value `many`: expected a whole number, 0 or more
  --> p.yaml:6:14
  |
6 |     workers: many
  |              ^

1 error in p.yaml",
    );
}

#[test]
fn missing_required_option() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: s
    jq: {}
outputs:
  - name: out
    stdout: {}
",
        "\
error: missing field `program`
  --> p.yaml:6:9
  |
6 |     jq: {}
  |         ^

1 error in p.yaml",
    );
}

#[test]
fn unknown_component_lists_the_expected_keys() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: s
    jqq: { program: . }
outputs:
  - name: out
    stdout: {}
",
        "\
error: unknown field `jqq`, expected one of name, from, workers, ordered, remote, on_error, loop, jq, filter, validate, dedupe, aggregate, batch, switch, http, scatter, html
  --> p.yaml:6:5
  |
6 |     jqq: { program: . }
  |     ^

1 error in p.yaml",
    );
}

#[test]
fn dangling_from_references() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: s
    from: inn
    jq: { program: . }
outputs:
  - name: out
    from: [s, t]
    stdout: {}
",
        "\
error: 's' reads from 'inn', which is not an input or a stage
  --> p.yaml:6:11
  |
6 |     from: inn
  |           ^

error: 'out' reads from 't', which is not an input or a stage
  --> p.yaml:10:11
   |
10 |     from: [s, t]
   |           ^

error: input 'in' is not read by any stage or output
  --> p.yaml:2:11
  |
2 |   - name: in
  |           ^

3 errors in p.yaml",
    );
}

/// A cycle names exactly the stages on it (not those downstream of it), a
/// self-reference is reported once.
#[test]
fn cyclic_references() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: a
    from: [in, c]
    jq: { program: . }
  - name: b
    jq: { program: . }
  - name: c
    jq: { program: . }
  - name: d
    from: c
    jq: { program: . }
  - name: e
    from: e
    jq: { program: . }
outputs:
  - name: out
    from: [d, e]
    stdout: {}
",
        "\
error: 'e' reads from itself (a stage that feeds its own records back needs `loop:`)
  --> p.yaml:16:11
   |
16 |     from: e
   |           ^

error: stages 'a', 'b', 'c' read from each other in a cycle (to feed records back on purpose, give the stage where they re-enter `loop: { max_depth: N }`)
  --> p.yaml:5:11
  |
5 |   - name: a
  |           ^

2 errors in p.yaml",
    );
}

#[test]
fn jq_program_that_does_not_compile() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: s
    jq: { program: '.a +' }
  - name: t
    jq:
      program: |
        .a as $x
        | {b: $y}
outputs:
  - name: out
    stdout: {}
",
        "\
error: jq program does not compile: expected term, found end of program (at column 5 of the program)
  --> p.yaml:6:20
  |
6 |     jq: { program: '.a +' }
  |                    ^

error: jq program does not compile: undefined variable '$y' (at line 2, column 7 of the program)
  --> p.yaml:10:9
   |
10 |         .a as $x
   |         ^

2 errors in p.yaml",
    );
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: t
    jq:
      program: |
        .a as $x
        | {b: $y}
outputs:
  - name: out
    stdout: {}
",
        "\
error: jq program does not compile: undefined variable '$y' (at line 2, column 7 of the program)
  --> p.yaml:8:9
  |
8 |         .a as $x
  |         ^

1 error in p.yaml",
    );
}

#[test]
fn schemas_that_do_not_load() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: broken
    from: in
    validate: { schema: broken.json }
  - name: invalid
    from: in
    validate: { schema: invalid.json }
  - name: absent
    from: in
    validate: { schema: absent.json }
  - name: inline
    from: in
    validate:
      inline: { type: object, required: id }
outputs:
  - name: out
    from: [broken, invalid, absent, inline]
    stdout: {}
",
        "\
error: schema file 'broken.json' does not parse: EOF while parsing a value at line 2 column 0
  --> p.yaml:7:25
  |
7 |     validate: { schema: broken.json }
  |                         ^

error: schema file 'invalid.json' does not compile: 12 is not valid under any of the schemas listed in the 'anyOf' keyword
  --> p.yaml:10:25
   |
10 |     validate: { schema: invalid.json }
   |                         ^

error: cannot read schema file 'absent.json': No such file or directory (os error 2)
  --> p.yaml:13:25
   |
13 |     validate: { schema: absent.json }
   |                         ^

error: inline schema does not compile: \"id\" is not of type \"array\"
  --> p.yaml:17:15
   |
17 |       inline: { type: object, required: id }
   |               ^

4 errors in p.yaml",
    );
}

/// The pipeline in a subdirectory: positions name `sub/p.yaml`, and the
/// glob message names the directory searched.
#[test]
fn missing_input_file_and_glob_matching_nothing() {
    let d = dir();
    d.file(
        "sub/p.yaml",
        "\
inputs:
  - name: a
    file: { path: nope.jsonl }
  - name: b
    file:
      path: logs/*.jsonl.gz
outputs:
  - name: out
    from: [a, b]
    stdout: {}
",
    );
    let (code, stdout, stderr) = d.check("sub/p.yaml");
    assert_eq!(
        stderr,
        "\
error: file source: cannot open 'nope.jsonl': no such file
  --> sub/p.yaml:3:19
  |
3 |     file: { path: nope.jsonl }
  |                   ^

error: file source: no file matches 'logs/*.jsonl.gz' (in sub)
  --> sub/p.yaml:6:13
  |
6 |       path: logs/*.jsonl.gz
  |             ^

2 errors in sub/p.yaml
"
    );
    assert_eq!((code, stdout.as_str()), (2, ""));
}

/// With the pipeline file in the working directory the message names it
/// as ".".

#[test]
fn glob_message_names_the_current_directory() {
    let d = dir();
    d.file(
        "p.yaml",
        "inputs:\n  - name: a\n    file: { path: 'logs/*.jsonl' }\noutputs:\n  - name: out\n    stdout: {}\n",
    );
    let (code, _, stderr) = d.check("p.yaml");
    assert_eq!(code, 2);
    assert!(
        stderr.contains("error: file source: no file matches 'logs/*.jsonl' (in .)"),
        "{stderr}"
    );
}

#[test]
fn stage_with_two_components() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: s
    jq: { program: . }
    filter: { condition: .ok }
outputs:
  - name: out
    stdout: {}
    file: { path: out.jsonl }
",
        "\
error: stage 's' must have exactly one of `jq`, `filter`, `validate`, `dedupe`, `aggregate`, `batch`, `switch`, `http`, `scatter`, `html` (found 2)
  --> p.yaml:5:11
  |
5 |   - name: s
  |           ^

error: output 'out' must have exactly one of `sqlite`, `postgres`, `file`, `stdout`, `http`, `nats` (found 2)
  --> p.yaml:9:11
  |
9 |   - name: out
  |           ^

2 errors in p.yaml",
    );
}

/// A switch beside another component still gets the one-component error
/// (its branches are wired, so no graph error hides it), and so does a
/// `remote` stage with two components (placement does not call it
/// stateful).
#[test]
fn two_components_with_a_switch_or_remote() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: sw
    switch: { cases: [ {name: a, when: 'true'} ] }
    jq: { program: . }
  - name: r
    from: sw/a
    remote: true
    filter: { condition: .ok }
    jq: { program: . }
outputs:
  - name: o
    stdout: {}
",
        "\
error: stage 'sw' must have exactly one of `jq`, `filter`, `validate`, `dedupe`, `aggregate`, `batch`, `switch`, `http`, `scatter`, `html` (found 2)
  --> p.yaml:5:11
  |
5 |   - name: sw
  |           ^

error: stage 'r' must have exactly one of `jq`, `filter`, `validate`, `dedupe`, `aggregate`, `batch`, `switch`, `http`, `scatter`, `html` (found 2)
  --> p.yaml:8:11
  |
8 |   - name: r
  |           ^

2 errors in p.yaml",
    );
}

/// A component key set to null is absent, like any optional key; the
/// entry's own `ordered` is a boolean, not null.
#[test]
fn null_component_keys_are_absent() {
    let d = dir();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: in
    stdin: ~
    file: { path: in.jsonl }
outputs:
  - name: o
    stdout: ~
    file: { path: out.jsonl }
",
    );
    let (code, _, stderr) = d.check("p.yaml");
    assert_eq!(code, 0, "{stderr}");
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: s
    ordered: ~
    jq: { program: . }
outputs:
  - name: o
    stdout: {}
",
        "\
error: invalid value `~`: expected true or false
  --> p.yaml:6:14
  |
6 |     ordered: ~
  |              ^

1 error in p.yaml",
    );
}

/// Duplicate names are reported at the second use, and nothing else: no
/// phantom cycle or unread input from the confusion of two same-named
/// stages.
#[test]
fn duplicate_names() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: s
    jq: { program: . }
  - name: s
    jq: { program: . }
outputs:
  - name: in
    stdout: {}
",
        "\
error: the name 's' is used twice
  --> p.yaml:7:11
  |
7 |   - name: s
  |           ^

error: the name 'in' is used twice
  --> p.yaml:10:11
   |
10 |   - name: in
   |           ^

2 errors in p.yaml",
    );
}

/// Every problem of the components is reported, not just the first.
#[test]
fn reports_every_component_error() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
stages:
  - name: a
    from: in
    jq: { program: '.a +' }
  - name: v
    from: in
    validate: { schema: broken.json }
  - name: two
    from: in
    jq: { program: . }
    filter: { condition: . }
  - name: f
    from: in
    filter: { condition: 'foo(1)' }
  - name: d
    from: in
    dedupe: { key: .id, capacity: 0 }
  - name: ag
    from: in
    aggregate: { group_by: .x, fields: { key: count } }
  - name: ag2
    from: in
    aggregate: { group_by: .x, fields: { n: count }, window: { count: 0 } }
outputs:
  - name: out
    from: [a, v, two, f, d, ag, ag2]
    stdout: {}
",
        "\
error: jq program does not compile: expected term, found end of program (at column 5 of the program)
  --> p.yaml:7:20
  |
7 |     jq: { program: '.a +' }
  |                    ^

error: schema file 'broken.json' does not parse: EOF while parsing a value at line 2 column 0
  --> p.yaml:10:25
   |
10 |     validate: { schema: broken.json }
   |                         ^

error: stage 'two' must have exactly one of `jq`, `filter`, `validate`, `dedupe`, `aggregate`, `batch`, `switch`, `http`, `scatter`, `html` (found 2)
  --> p.yaml:11:11
   |
11 |   - name: two
   |           ^

error: condition does not compile: undefined filter 'foo' (at column 1 of the program)
  --> p.yaml:17:26
   |
17 |     filter: { condition: 'foo(1)' }
   |                          ^

error: 'd': dedupe capacity must be at least 1
  --> p.yaml:18:11
   |
18 |   - name: d
   |           ^

error: the field name 'key' is reserved for the group key
  --> p.yaml:23:28
   |
23 |     aggregate: { group_by: .x, fields: { key: count } }
   |                            ^

error: a count window needs at least 1 record
  --> p.yaml:26:62
   |
26 |     aggregate: { group_by: .x, fields: { n: count }, window: { count: 0 } }
   |                                                              ^

7 errors in p.yaml",
    );
}

/// The graph is checked as a whole: every naming problem at once.
#[test]
fn reports_every_graph_error() {
    assert_check_fails(
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
  - name: in
    file: { path: in.jsonl }
stages:
  - name: a
    from: nope
    jq: { program: . }
  - name: b
    from: [in, in]
    jq: { program: . }
outputs:
  - name: out
    from: [b, out]
    stdout: {}
",
        "\
error: the name 'in' is used twice
  --> p.yaml:4:11
  |
4 |   - name: in
  |           ^

error: 'a' reads from 'nope', which is not an input or a stage
  --> p.yaml:8:11
  |
8 |     from: nope
  |           ^

error: 'b' names the same upstream twice
  --> p.yaml:11:11
   |
11 |     from: [in, in]
   |           ^

error: 'out' reads from 'out', which is an output
  --> p.yaml:15:11
   |
15 |     from: [b, out]
   |           ^

error: the records of stage 'a' go nowhere: no stage or output reads from it
  --> p.yaml:7:11
  |
7 |   - name: a
  |           ^

5 errors in p.yaml",
    );
}

/// A problem in a stage does not hide the problems of the stages after it.
#[test]
fn reports_errors_downstream_of_a_broken_stage() {
    let d = dir();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: in
    file: { path: nope.jsonl }
stages:
  - name: a
    jq: { program: '.a +' }
  - name: b
    filter: { condition: 'foo(1)' }
outputs:
  - name: out
    sqlite: { path: out.db, table: t, columns: { id: integer }, key: [nope] }
",
    );
    let (code, _, stderr) = d.check("p.yaml");
    assert_eq!(code, 2);
    assert!(stderr.ends_with("4 errors in p.yaml\n"), "{stderr}");
}

/// `weir check` looks, it does not touch: no output file, database or
/// dead-letter file is created or truncated.
#[test]
fn check_has_no_side_effects() {
    let d = dir();
    d.file("dead-letters.jsonl", "{\"keep\":1}\n")
        .file("out.jsonl", "{\"keep\":2}\n")
        .file(
            "p.yaml",
            "\
inputs:
  - name: in
    file: { path: in.jsonl }
outputs:
  - name: out
    file: { path: out.jsonl }
  - name: db
    from: in
    sqlite: { path: db/x.db, table: t, columns: { id: integer } }
",
        );
    assert_eq!(d.check("p.yaml").0, 0);
    assert_eq!(d.read("dead-letters.jsonl"), "{\"keep\":1}\n");
    assert_eq!(d.read("out.jsonl"), "{\"keep\":2}\n");
    assert!(!d.join("db").exists());
}

/// The messages of hand-written parts of the file format: `from`,
/// `on_error`, and YAML 1.2 booleans (`yes` is not one).
#[test]
fn from_on_error_and_boolean_messages() {
    let stage = |line: &str| {
        format!(
            "inputs:\n  - name: in\n    file: {{ path: in.jsonl }}\nstages:\n  - name: s\n    {line}\n    jq: {{ program: . }}\noutputs:\n  - name: out\n    stdout: {{}}\n"
        )
    };
    let expect = |line: &str, col: usize, message: &str| {
        let caret = " ".repeat(col - 1);
        format!(
            "error: {message}\n  --> p.yaml:6:{col}\n  |\n6 |     {line}\n  | {caret}^\n\n1 error in p.yaml"
        )
    };
    for (line, col, message) in [
        (
            "from: 3",
            5,
            "invalid type: integer `3`, expected a name or a list of names",
        ),
        (
            "on_error: retry",
            15,
            "`retry` needs its number of attempts: `on_error: {retry: {attempts: 3}}`",
        ),
        (
            "on_error: {fail: 1}",
            15,
            "`fail` takes no options: write `on_error: fail`",
        ),
        (
            "on_error: skip",
            15,
            "unknown policy `skip`, expected dead_letter, fail or {retry: {attempts: N}}",
        ),
        (
            "ordered: yes",
            14,
            "invalid value `yes`: expected true or false",
        ),
        (
            "workers: -1",
            14,
            "invalid value `-1`: expected a whole number, 0 or more",
        ),
    ] {
        assert_check_fails(&stage(line), &expect(line, col, message));
    }
    let d = dir();
    d.file(
        "p.yaml",
        stage("on_error: { retry: { attempts: 3, initial_ms: 5 } }"),
    );
    assert_eq!(d.check("p.yaml").0, 0);
}
