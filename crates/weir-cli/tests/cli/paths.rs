//! A pipeline must not write over what it reads: an output (or the
//! dead-letter file) that is one of the input files, under any spelling,
//! through a link or matched by an input's glob, is refused by `weir check`
//! and `weir run` before anything is opened, showing both YAML lines. It
//! used to pass `weir check`, and `weir run` truncated the input to 0 lines.

use crate::util::{Dir, code, text};

/// `weir check NAME` and `weir run NAME` both fail with exactly `expected`
/// on stderr and exit 2, and `in.jsonl` keeps its two lines.
fn assert_refused(d: &Dir, name: &str, expected: &str) {
    let (code_check, stdout, stderr) = d.check(name);
    assert_eq!(stderr, format!("{expected}\n"), "stderr of weir check");
    assert_eq!((code_check, stdout.as_str()), (2, ""));
    let out = d.weir(&["run", name]).output().unwrap();
    assert_eq!(
        text(&out.stderr),
        format!("{expected}\n"),
        "stderr of weir run"
    );
    assert_eq!(code(&out), 2);
    assert_eq!(
        d.read("in.jsonl"),
        "{\"id\":1}\n{\"id\":2}\n",
        "the input was touched"
    );
}

fn dir() -> Dir {
    let d = Dir::new();
    d.file("in.jsonl", "{\"id\":1}\n{\"id\":2}\n");
    d
}

#[test]
fn a_file_output_that_is_the_input_is_refused() {
    let d = dir();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: orders
    file: { path: in.jsonl }
outputs:
  - name: out
    file: { path: in.jsonl }
",
    );
    assert_refused(
        &d,
        "p.yaml",
        "\
error: output 'out' would write over in.jsonl, which input 'orders' reads
  --> p.yaml:6:19
  |
6 |     file: { path: in.jsonl }
  |                   ^
note: input 'orders' reads it here
  --> p.yaml:3:19
  |
3 |     file: { path: in.jsonl }
  |                   ^

1 error in p.yaml",
    );
}

/// Another spelling, a pipeline in a subdirectory, a sqlite output.
#[test]
fn paths_are_compared_after_resolving_them() {
    let d = dir();
    d.file(
        "sub/p.yaml",
        "\
inputs:
  - name: orders
    file: { path: ../in.jsonl }
outputs:
  - name: db
    sqlite: { path: ./../sub/../in.jsonl, table: t, columns: { id: integer } }
",
    );
    assert_refused(
        &d,
        "sub/p.yaml",
        "\
error: output 'db' would write over ./../sub/../in.jsonl, which input 'orders' reads
  --> sub/p.yaml:6:21
  |
6 |     sqlite: { path: ./../sub/../in.jsonl, table: t, columns: { id: integer } }
  |                     ^
note: input 'orders' reads it here
  --> sub/p.yaml:3:19
  |
3 |     file: { path: ../in.jsonl }
  |                   ^

1 error in sub/p.yaml",
    );
}

/// A symbolic link to the input, and a hard link to it.
#[cfg(unix)]
#[test]
fn links_to_the_input_are_the_input() {
    let d = dir();
    std::os::unix::fs::symlink("in.jsonl", d.join("soft.jsonl")).unwrap();
    std::fs::hard_link(d.join("in.jsonl"), d.join("hard.jsonl")).unwrap();
    for link in ["soft.jsonl", "hard.jsonl"] {
        d.file(
            "p.yaml",
            format!(
                "inputs:\n  - name: orders\n    file: {{ path: in.jsonl }}\noutputs:\n  - name: out\n    file: {{ path: {link} }}\n"
            ),
        );
        assert_refused(
            &d,
            "p.yaml",
            &format!(
                "\
error: output 'out' would write over {link}, which input 'orders' reads
  --> p.yaml:6:19
  |
6 |     file: {{ path: {link} }}
  |                   ^
note: input 'orders' reads it here
  --> p.yaml:3:19
  |
3 |     file: {{ path: in.jsonl }}
  |                   ^

1 error in p.yaml"
            ),
        );
    }
}

/// A glob input matches an output that does not exist yet (the next run
/// would read it), and the default dead-letter file beside the pipeline.
#[test]
fn a_glob_input_that_matches_an_output_is_refused() {
    let d = dir();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: all
    file: { path: \"*.jsonl\" }
outputs:
  - name: out
    file: { path: out.jsonl }
",
    );
    assert_refused(
        &d,
        "p.yaml",
        "\
error: output 'out' would write over out.jsonl, which input 'all' reads
  --> p.yaml:6:19
  |
6 |     file: { path: out.jsonl }
  |                   ^
note: input 'all' reads it here (it matches '*.jsonl')
  --> p.yaml:3:19
  |
3 |     file: { path: \"*.jsonl\" }
  |                   ^

error: input 'all' would read dead-letters.jsonl, where dead letters go by default: set `dead_letter: { path: ... }` to another file
  --> p.yaml:3:19
  |
3 |     file: { path: \"*.jsonl\" }
  |                   ^

2 errors in p.yaml",
    );
    assert!(!d.join("out.jsonl").exists());
    assert!(!d.join("dead-letters.jsonl").exists());
}

/// The dead-letter file named as the input, and two outputs on one file.
#[test]
fn the_dead_letter_file_and_shared_outputs_are_refused() {
    let d = dir();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: orders
    file: { path: in.jsonl }
outputs:
  - name: a
    file: { path: out/x.jsonl }
  - name: b
    from: orders
    file: { path: out/./x.jsonl }
dead_letter: { path: in.jsonl }
",
    );
    assert_refused(
        &d,
        "p.yaml",
        "\
error: the dead-letter file would write over in.jsonl, which input 'orders' reads
  --> p.yaml:10:22
   |
10 | dead_letter: { path: in.jsonl }
   |                      ^
note: input 'orders' reads it here
  --> p.yaml:3:19
  |
3 |     file: { path: in.jsonl }
  |                   ^

error: output 'b' would write over out/./x.jsonl, which output 'a' writes too
  --> p.yaml:9:19
  |
9 |     file: { path: out/./x.jsonl }
  |                   ^
note: output 'a' writes it here
  --> p.yaml:6:19
  |
6 |     file: { path: out/x.jsonl }
  |                   ^

2 errors in p.yaml",
    );
}

/// Two sqlite outputs may share a database (a table each), and an output
/// beside the input is fine.
#[test]
fn distinct_files_and_shared_databases_pass() {
    let d = dir();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: orders
    file: { path: \"in*.jsonl\" }
outputs:
  - name: a
    sqlite: { path: out.db, table: a, columns: { id: integer } }
  - name: b
    from: orders
    sqlite: { path: ./out.db, table: b, columns: { id: integer } }
  - name: c
    from: orders
    file: { path: in.jsonl.out }
",
    );
    assert_eq!(d.check("p.yaml"), (0, "p.yaml: ok\n".into(), String::new()));
    d.run_ok("p.yaml");
    assert_eq!(d.read("in.jsonl.out"), "{\"id\":1}\n{\"id\":2}\n");
}

/// An output (or the dead-letter file) that is the pipeline file itself
/// would truncate the pipeline before the next run could read it.
#[test]
fn an_output_that_is_the_pipeline_file_is_refused() {
    let d = dir();
    d.file(
        "p.yaml",
        "\
inputs:
  - name: orders
    file: { path: in.jsonl }
outputs:
  - name: out
    file: { path: ./p.yaml }
",
    );
    assert_refused(
        &d,
        "p.yaml",
        "\
error: output 'out' would write over the pipeline file itself
  --> p.yaml:6:19
  |
6 |     file: { path: ./p.yaml }
  |                   ^

1 error in p.yaml",
    );
    assert!(
        std::fs::read_to_string(d.join("p.yaml"))
            .unwrap()
            .contains("inputs:")
    );
}
