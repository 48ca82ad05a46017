//! Numeric options out of range are configuration errors at their own YAML
//! line, found by `weir check` (exit 2), never a panic at start-up: the
//! `generate` source's `rate` and `users`, the `sqlite` sink's
//! `busy_timeout_ms`.

use crate::util::Dir;

/// `weir check` on `yaml`: exit 2, nothing on stdout, exactly `expected`
/// (plus a newline) on stderr.
fn assert_check_fails(yaml: &str, expected: &str) {
    let d = Dir::new();
    d.file("p.yaml", yaml);
    let (code, stdout, stderr) = d.check("p.yaml");
    assert_eq!(stderr, format!("{expected}\n"), "stderr of weir check");
    assert_eq!(code, 2, "exit code; stderr:\n{stderr}");
    assert_eq!(stdout, "");
}

fn generate(options: &str) -> String {
    format!(
        "\
inputs:
  - name: g
    generate: {{ count: 3, {options} }}
outputs:
  - name: out
    stdout: {{}}
"
    )
}

/// Every rate that cannot be paced, the tiny ones that used to panic in
/// `Duration::from_secs_f64` included, is reported at the `rate` value.
#[test]
fn generate_rates_out_of_range_are_config_errors() {
    for (rate, shown) in [
        ("0", "0.0"),
        ("-5", "-5.0"),
        ("1e-300", "1e-300"),
        ("0.00001", "1e-5"),
        (".nan", "NaN"),
        (".inf", "inf"),
        ("-.inf", "-inf"),
        ("1e300", "1e300"),
        ("2e9", "2000000000.0"),
    ] {
        let options = format!("rate: {rate}, template: {{ a: 1 }}");
        let line = format!("    generate: {{ count: 3, {options} }}");
        let col = line.find(rate).unwrap();
        assert_check_fails(
            &generate(&options),
            &format!(
                "\
error: generate source: rate must be between 1/86400 (one record a day) and 1e9 records per second, not {shown}
  --> p.yaml:3:{}
  |
3 | {line}
  | {}^

1 error in p.yaml",
                col + 1,
                " ".repeat(col),
            ),
        );
    }
}

#[test]
fn generate_rates_at_the_bounds_are_accepted() {
    for rate in ["0.0000116", "1e9", "1000"] {
        let d = Dir::new();
        d.file(
            "p.yaml",
            generate(&format!("rate: {rate}, template: {{ a: 1 }}")),
        );
        assert_eq!(d.check("p.yaml"), (0, "p.yaml: ok\n".into(), String::new()));
    }
}

#[test]
fn generate_users_must_be_positive_and_only_with_the_preset() {
    assert_check_fails(
        &generate("preset: events, users: 0"),
        "\
error: generate source: users must be at least 1
  --> p.yaml:3:50
  |
3 |     generate: { count: 3, preset: events, users: 0 }
  |                                                  ^

1 error in p.yaml",
    );
    assert_check_fails(
        &generate("template: { a: 1 }, users: 5"),
        "\
error: generate source: 'users' applies to preset: events only
  --> p.yaml:3:54
  |
3 |     generate: { count: 3, template: { a: 1 }, users: 5 }
  |                                                      ^

1 error in p.yaml",
    );
}

/// A malformed placeholder is reported at the template, not at the input's
/// name.
#[test]
fn generate_template_errors_point_at_the_template() {
    assert_check_fails(
        &generate("template: { a: '{{float:-1e308..1e308}}' }"),
        "\
error: generate source: template.a: '{{float:-1e308..1e308}}': empty or infinite range -1e308..1e308
  --> p.yaml:3:37
  |
3 |     generate: { count: 3, template: { a: '{{float:-1e308..1e308}}' } }
  |                                     ^

1 error in p.yaml",
    );
}

/// `busy_timeout_ms` beyond a day is refused at its line by `weir check`
/// and `weir run` alike (above 2^31 - 1 ms, opening the database used to
/// panic in rusqlite, "too big", after `weir check` had said ok).
#[test]
fn sqlite_busy_timeout_out_of_range_is_a_config_error() {
    let d = Dir::new();
    d.file("in.jsonl", "{\"id\":1}\n").file(
        "p.yaml",
        "\
inputs:
  - name: in
    file: { path: in.jsonl }
outputs:
  - name: db
    sqlite:
      path: out.db
      table: t
      columns: { id: integer }
      busy_timeout_ms: 3000000000
",
    );
    let expected = "\
error: sqlite sink: busy_timeout_ms must be at most 86400000 (a day), not 3000000000
  --> p.yaml:10:24
   |
10 |       busy_timeout_ms: 3000000000
   |                        ^

1 error in p.yaml
";
    let (code, stdout, stderr) = d.check("p.yaml");
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (2, "", expected));
    let out = d.weir(&["run", "p.yaml"]).output().unwrap();
    assert_eq!(crate::util::text(&out.stderr), expected);
    assert_eq!(crate::util::code(&out), 2);
    assert!(!d.join("out.db").exists(), "nothing was created");

    // The largest value is accepted.
    d.file("p.yaml", d.read("p.yaml").replace("3000000000", "86400000"));
    assert_eq!(d.check("p.yaml"), (0, "p.yaml: ok\n".into(), String::new()));
}
