//! Mutated pipeline files never crash `weir check`: it exits 0 (ok) or 2
//! (diagnostics), never 101 (a panic) or by a signal.
//!
//! The mutations are drawn from a fixed seed (splitmix64), so a failure
//! reproduces; the failing file is printed. (weir-cli has no proptest
//! dev-dependency; the connector configs are fuzzed with proptest in
//! `weir-connectors/tests/fuzz.rs`.)

use crate::util::{Dir, code, text};

/// Only a `generate` source and `stdout` sinks: whatever a mutation makes of
/// this file, `weir check` cannot be made to write outside the temporary
/// directory (the dead-letter file is the default one, beside the file).
const BASE: &str = "\
description: fuzz base
inputs:
  - name: gen
    decode_workers: 2
    generate:
      count: 10
      seed: 3
      template: { id: '{{seq}}', v: '{{int:0..9}}', k: '{{choice:a|b}}' }
  - name: ev
    generate: { count: 5, preset: events, users: 2 }
stages:
  - name: clean
    from: [gen, ev]
    workers: 2
    ordered: true
    on_error: { retry: { attempts: 2, initial_ms: 1 } }
    jq: { program: '.v |= (. // 0) | .k = (.k // \"x\")' }
  - name: keep
    filter: { condition: '.v > 2', drop_reason: small }
  - name: valid
    validate: { inline: { type: object, required: [id] } }
  - name: unique
    dedupe: { key: .id, capacity: 100 }
  - name: per-k
    aggregate:
      group_by: .k
      fields: { n: count, s: { sum: .v }, all: { collect: .id } }
      window: { count: 3 }
  - name: batches
    from: unique
    batch: { size: 2, seconds: 0.5 }
outputs:
  - name: out
    from: per-k
    on_error: dead_letter
    stdout: { pretty: true }
  - name: out2
    from: batches
    stdout: {}
settings: { batch_size: 4, buffer: 2 }
";

/// Tokens a mutation may put in place of a word: other types, YAML syntax,
/// other names.
const TOKENS: &[&str] = &[
    "many",
    "-1",
    "0",
    "1.5",
    "null",
    "~",
    "true",
    "[]",
    "{}",
    "[",
    "{",
    "]",
    "}",
    ":",
    "- ",
    "''",
    "\"",
    "&a",
    "*a",
    "!!int",
    "#",
    "|",
    ">",
    "gen",
    "clean",
    "unique",
    "per-k",
    "nope",
    "jq",
    "filter",
    "stdin",
    "template",
    "{{int:5..1}}",
    "{{seq",
    ".a +",
    "\t",
    "\u{feff}",
    "é",
    "---",
    "...",
    "1e999",
    "99999999999999999999",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to three mutations of `BASE`, line- or token-wise.
fn mutate(rng: &mut Rng) -> String {
    let mut lines: Vec<String> = BASE.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(lines.len());
        match rng.below(7) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(rng.below(lines.len()), l);
            }
            2 => {
                let j = rng.below(lines.len());
                lines.swap(i, j);
            }
            3 => {
                // Shift the indentation.
                let l = &lines[i];
                lines[i] = if rng.below(2) == 0 {
                    format!("  {l}")
                } else {
                    l.strip_prefix(' ').unwrap_or(l).to_string()
                };
            }
            4 | 5 => {
                // Replace one word with a token.
                let words: Vec<&str> = lines[i].split(' ').collect();
                let w = rng.below(words.len());
                let mut words: Vec<String> = words.iter().map(|s| s.to_string()).collect();
                words[w] = TOKENS[rng.below(TOKENS.len())].to_string();
                lines[i] = words.join(" ");
            }
            _ => {
                // Cut the line at a character boundary.
                let l = &lines[i];
                let cut = rng.below(l.len() + 1);
                let cut = (0..=cut)
                    .rev()
                    .find(|&c| l.is_char_boundary(c))
                    .unwrap_or(0);
                lines[i] = l[..cut].to_string();
            }
        }
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

#[test]
fn base_pipeline_checks() {
    let d = Dir::new();
    d.file("p.yaml", BASE);
    let (code, stdout, stderr) = d.check("p.yaml");
    assert_eq!(
        (code, stdout.as_str()),
        (0, "p.yaml: ok (fuzz base)\n"),
        "{stderr}"
    );
}

#[test]
fn mutated_pipelines_never_crash_check() {
    let d = Dir::new();
    let mut rng = Rng(0x5eed);
    for case in 0..24 {
        let yaml = mutate(&mut rng);
        d.file("p.yaml", &yaml);
        let out = d.weir(&["check", "p.yaml"]).output().unwrap();
        let stderr = text(&out.stderr);
        let c = code(&out);
        assert!(
            c == 0 || c == 2,
            "case {case}: exit {c}\n--- p.yaml\n{yaml}--- stderr\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "case {case}:\n{yaml}\n{stderr}"
        );
        if c == 2 {
            assert!(
                stderr.trim_end().ends_with(" in p.yaml") && stderr.starts_with("error: "),
                "case {case}: diagnostics are rendered\n{yaml}\n{stderr}"
            );
        }
    }
}
