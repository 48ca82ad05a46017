//! `jq`: transform each record with a jq program (run by [jaq]).
//!
//! Every output of the program becomes a record with the input record's
//! position: `.` keeps it, `.items[]` splits it, `select(...)` or `empty`
//! drops it. A runtime error (`.a + 1` on a string, `error("...")`)
//! rejects the record with reason `jq_error` and jq's message.
//!
//! [`JqProgram`] is the compiled form, shared by the other processors that
//! take jq expressions (`filter`, `dedupe`, `aggregate`): a program is
//! compiled once per stage and run by every worker (it is `Send + Sync`).
//!
//! # Values
//!
//! Records are JSON ([`serde_json::Value`]); jq works on its own value type,
//! so each run converts the input in and every output out: `.` costs about
//! 2 µs for a 200-byte record, most of it conversion (release build). The conversion is exact for `null`, booleans,
//! strings, arrays, objects (key order kept) and integers (any size: an
//! integer beyond `i64`/`u64` becomes a float). Floats keep their `f64`
//! value, so `1.0` stays `1.0`; the non-finite floats jq can compute
//! (`nan`, `infinite`) have no JSON form and become `null`, as in jq.
//!
//! [jaq]: https://github.com/01mf02/jaq

use std::fmt;

use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars};
use jaq_json::{Num, Val};
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use super::{Processor, ProcessorContext};
use crate::error::{ConfigError, ProcessError};
use crate::record::Record;

/// Transform each record with a jq program.
///
/// Each output of the program becomes a record: one output replaces the
/// record, several split it, none drops it (counted as filtered). A runtime
/// error rejects the record with reason `jq_error`. Programs are jq as
/// implemented by jaq, with its standard library; modules (`import`,
/// `include`), `input`/`inputs` and `$ENV` are not available.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JqConfig {
    /// The jq program, for example `{id, total: (.price * .qty)}` or
    /// `.items[]`. Compiled once when the pipeline starts: a syntax error or
    /// an unknown function is reported with its position in the program.
    #[schemars(with = "String")]
    pub program: Spanned<String>,
}

/// A minimal `jq` configuration.
pub const EXAMPLE: &str = "program: '{id: .id, total: (.price * .qty)}'\n";

impl JqConfig {
    /// Compiles the program.
    ///
    /// # Errors
    /// The program does not compile; the error points at `program`.
    pub fn build(&self, _ctx: &ProcessorContext) -> Result<Jq, ConfigError> {
        Ok(Jq {
            program: JqProgram::compile_spanned(&self.program, "jq program")?,
        })
    }
}

/// The `jq` processor: see [`JqConfig`].
#[derive(Debug)]
pub struct Jq {
    program: JqProgram,
}

impl Jq {
    /// The compiled program.
    pub fn program(&self) -> &JqProgram {
        &self.program
    }
}

impl Processor for Jq {
    fn process(&self, record: &Record, out: &mut Vec<Record>) -> Result<(), ProcessError> {
        let outputs = self.program.run(&record.value).map_err(jq_error)?;
        out.extend(outputs.into_iter().map(|v| record.derive(v)));
        Ok(())
    }
}

/// A rejection with reason `jq_error`.
pub(crate) fn jq_error(message: String) -> ProcessError {
    ProcessError::new("jq_error", message)
}

type Data = jaq_core::data::JustLut<Val>;

/// A compiled jq program, `Send + Sync`: compile once, run on many threads.
pub struct JqProgram {
    filter: jaq_core::Filter<Data>,
    source: String,
    /// When the program is a plain path (`.`, `.a`, `.a.b`): its fields.
    /// Such a program is evaluated directly on the JSON value, skipping the
    /// conversion to jaq's value type that costs about 1 µs per record.
    path: Option<Vec<String>>,
}

/// The fields of a program that is a plain path: `.` or `.a`, `.a.b`, ...
/// with identifier-like names. Anything else (`.a?`, `.[0]`, `..`,
/// whitespace) is left to jaq.
fn simple_path(code: &str) -> Option<Vec<String>> {
    let code = code.trim();
    if code == "." {
        return Some(Vec::new());
    }
    let mut fields = Vec::new();
    for part in code.strip_prefix('.')?.split('.') {
        let mut chars = part.chars();
        let first = chars.next()?;
        if !(first.is_ascii_alphabetic() || first == '_')
            || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return None;
        }
        fields.push(part.to_string());
    }
    Some(fields)
}

impl fmt::Debug for JqProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JqProgram")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why a jq program does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JqCompileError {
    /// What is wrong (all problems found, joined by "; ").
    pub message: String,
    /// 1-based line and column (in characters) of the first problem within
    /// the program, when it is in the program.
    pub at: Option<(usize, usize)>,
}

impl fmt::Display for JqCompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match self.at {
            Some((1, col)) => write!(f, " (at column {col} of the program)"),
            Some((line, col)) => write!(f, " (at line {line}, column {col} of the program)"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for JqCompileError {}

impl JqProgram {
    /// Compiles `code` with jq's core and standard definitions.
    ///
    /// # Errors
    /// A lex, parse or compile (undefined name) error, with its position.
    pub fn compile(code: &str) -> Result<Self, JqCompileError> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .map_err(|errs| load_errors(code, errs))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| compile_errors(code, errs))?;
        Ok(JqProgram {
            filter,
            source: code.to_owned(),
            path: simple_path(code),
        })
    }

    /// Compiles the program in a spanned configuration value; `what` names
    /// it in the error (`"jq program"`, `"condition"`, ...).
    ///
    /// # Errors
    /// A [`ConfigError`] at the value's location, with jq's message and the
    /// position within the program.
    pub fn compile_spanned(code: &Spanned<String>, what: &str) -> Result<Self, ConfigError> {
        JqProgram::compile(&code.value)
            .map_err(|e| ConfigError::at(format!("{what} does not compile: {e}"), code))
    }

    /// The program's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Runs the program on `input`, collecting every output.
    ///
    /// # Errors
    /// jq's runtime error message (the outputs before it are discarded).
    pub fn run(&self, input: &Value) -> Result<Vec<Value>, String> {
        if let Some(v) = self.fast(input) {
            return Ok(vec![v]);
        }
        self.run_val(to_val(input))
    }

    /// The output of a plain-path program, computed directly on JSON; `None`
    /// when the program is not a plain path, or when jq would raise an
    /// error (indexing a non-object), which jaq then reports itself.
    pub(crate) fn fast(&self, input: &Value) -> Option<Value> {
        let path = self.path.as_ref()?;
        let mut cur = input;
        for field in path {
            match cur {
                Value::Object(m) => match m.get(field) {
                    Some(v) => cur = v,
                    None => return Some(Value::Null),
                },
                Value::Null => return Some(Value::Null),
                _ => return None,
            }
        }
        Some(cur.clone())
    }

    /// Runs the program on `input` and returns its first output (the rest is
    /// not computed).
    ///
    /// # Errors
    /// jq's runtime error message, if it comes before the first output.
    pub fn first(&self, input: &Value) -> Result<Option<Value>, String> {
        if let Some(v) = self.fast(input) {
            return Ok(Some(v));
        }
        self.first_val(to_val(input))
    }

    /// Whether the first output is truthy (neither `false` nor `null`); no
    /// output is `false`.
    ///
    /// # Errors
    /// jq's runtime error message, if it comes before the first output.
    pub fn first_truthy(&self, input: &Value) -> Result<bool, String> {
        if let Some(v) = self.fast(input) {
            return Ok(!matches!(v, Value::Null | Value::Bool(false)));
        }
        let mut truthy = false;
        self.each_val(to_val(input), |v| {
            truthy = !matches!(v, Val::Null | Val::Bool(false));
            false
        })?;
        Ok(truthy)
    }

    /// Like [`run`](Self::run), on an input already converted with
    /// [`to_val`] (to run several programs on one record).
    pub(crate) fn run_val(&self, input: Val) -> Result<Vec<Value>, String> {
        let mut outputs = Vec::new();
        self.each_val(input, |v| {
            outputs.push(val_to_json(&v));
            true
        })?;
        Ok(outputs)
    }

    /// Like [`first`](Self::first), on an input already converted with
    /// [`to_val`].
    pub(crate) fn first_val(&self, input: Val) -> Result<Option<Value>, String> {
        let mut first = None;
        self.each_val(input, |v| {
            first = Some(val_to_json(&v));
            false
        })?;
        Ok(first)
    }

    /// Runs the program, calling `f` with each output until it returns
    /// `false`.
    fn each_val(&self, input: Val, mut f: impl FnMut(Val) -> bool) -> Result<(), String> {
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        for out in self.filter.id.run((ctx, input)) {
            match out {
                Ok(v) => {
                    if !f(v) {
                        break;
                    }
                }
                Err(exn) => return Err(exn_message(exn)),
            }
        }
        Ok(())
    }
}

/// The message of a runtime exception: `error("x")` gives `x`, a built-in
/// error its text, `halt` says so (it never exits the process).
fn exn_message(exn: jaq_core::Exn<'_, Val>) -> String {
    match exn.get_err() {
        Ok(err) => match err.into_val() {
            Val::TStr(s) | Val::BStr(s) => String::from_utf8_lossy(&s).into_owned(),
            v => v.to_string(),
        },
        Err(exn) => match exn.get_halt() {
            Ok(code) => format!("program halted with exit code {code}"),
            Err(_) => "internal jq error".to_owned(),
        },
    }
}

fn load_errors(code: &str, errs: load::Errors<&str, ()>) -> JqCompileError {
    let mut problems = Vec::new();
    let mut at = None;
    for (file, err) in errs {
        let mut note = |msg: String, part: &str| {
            if at.is_none() && std::ptr::eq(file.code, code) {
                at = Some(line_col(code, load::span(file.code, part).start));
            }
            problems.push(msg);
        };
        match err {
            load::Error::Io(errs) => {
                for (path, msg) in errs {
                    problems.push(format!("cannot load module {path}: {msg}"));
                }
            }
            load::Error::Lex(errs) => {
                for (expect, part) in errs {
                    note(format!("expected {}", expect.as_str()), part);
                }
            }
            load::Error::Parse(errs) => {
                for (expect, part) in errs {
                    let msg = format!("expected {}, found {}", expect.as_str(), found(part));
                    note(msg, part);
                }
            }
        }
    }
    JqCompileError {
        message: problems.join("; "),
        at,
    }
}

fn compile_errors(code: &str, errs: jaq_core::compile::Errors<&str, ()>) -> JqCompileError {
    let mut problems = Vec::new();
    let mut at = None;
    for (file, errs) in errs {
        for (name, undefined) in errs {
            if at.is_none() && std::ptr::eq(file.code, code) {
                at = Some(line_col(code, load::span(file.code, name).start));
            }
            problems.push(format!("undefined {} '{name}'", undefined.as_str()));
        }
    }
    JqCompileError {
        message: problems.join("; "),
        at,
    }
}

/// How a parse error shows the token it found: a short quote, or the end.
fn found(part: &str) -> String {
    let token: String = part.chars().take(12).collect();
    if token.trim().is_empty() {
        "end of program".to_owned()
    } else if token.len() < part.len() {
        format!("'{token}...'")
    } else {
        format!("'{token}'")
    }
}

/// 1-based line and character column of byte `offset` in `code`.
fn line_col(code: &str, offset: usize) -> (usize, usize) {
    let before = code.get(..offset).unwrap_or(code);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Converts JSON to a jq value (cheap to clone afterwards).
pub(crate) fn to_val(v: &Value) -> Val {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => Val::Num(if let Some(i) = n.as_i64() {
            Num::from_integral(i)
        } else if let Some(u) = n.as_u64() {
            Num::from_integral(u)
        } else {
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }),
        Value::String(s) => Val::utf8_str(s.clone().into_bytes()),
        Value::Array(a) => Val::Arr(jaq_json::Rc::new(a.iter().map(to_val).collect())),
        Value::Object(o) => Val::obj(
            o.iter()
                .map(|(k, v)| (Val::utf8_str(k.clone().into_bytes()), to_val(v)))
                .collect(),
        ),
    }
}

/// Converts a jq value to JSON. Integers stay integers (a big integer that
/// fits neither `i64` nor `u64` becomes a float); a non-finite float becomes
/// `null`; byte strings become (lossy UTF-8) strings; non-string object keys
/// are written as their JSON text.
pub fn val_to_json(v: &Val) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => num_to_json(n),
        Val::TStr(s) | Val::BStr(s) => Value::String(bytes_to_string(s)),
        Val::Arr(a) => Value::Array(a.iter().map(val_to_json).collect()),
        Val::Obj(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Val::TStr(s) | Val::BStr(s) => bytes_to_string(s),
                        other => other.to_string(),
                    };
                    (key, val_to_json(v))
                })
                .collect(),
        ),
    }
}

fn bytes_to_string(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn num_to_json(n: &Num) -> Value {
    match n {
        Num::Int(i) => Value::from(*i as i64),
        Num::Float(f) => float_to_json(*f),
        other => number_text_to_json(&other.to_string()),
    }
}

fn float_to_json(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// A big integer or a decimal literal, from its text.
fn number_text_to_json(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(u) = text.parse::<u64>() {
        return Value::from(u);
    }
    text.parse::<f64>().map_or(Value::Null, float_to_json)
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_paths_agree_with_jaq() {
        let inputs = [
            json!({"a": {"b": 1}, "c": [1, 2], "d": null, "e": "x", "f": 1.5, "g": 12345678901234567u64}),
            json!(null),
            json!({"a": 3}),
            json!({"a": {"b": {"c": true}}}),
            json!([1, 2]),
            json!("text"),
            json!(7),
        ];
        for code in [
            ".",
            ".a",
            ".a.b",
            ".a.b.c",
            ".c",
            ".d",
            ".d.x",
            ".e",
            ".f",
            ".g",
            ".missing",
            ".missing.x",
            "._x1",
        ] {
            let p = JqProgram::compile(code).unwrap();
            assert!(p.path.is_some(), "{code} should take the fast path");
            for input in &inputs {
                let slow = p.run_val(to_val(input));
                match p.fast(input) {
                    Some(v) => assert_eq!(Ok(vec![v]), slow, "{code} on {input}"),
                    None => assert!(
                        slow.is_err(),
                        "{code} on {input}: fast path declined but jq succeeded"
                    ),
                }
            }
        }
        for code in [
            ".a?", ".[0]", "..", ".a | .b", ". a", ".a.b?", "$__loc__", ".a[]",
        ] {
            if let Ok(p) = JqProgram::compile(code) {
                assert!(p.path.is_none(), "{code} must not take the fast path");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn example_parses_and_builds() {
        let cfg: JqConfig = serde_saphyr::from_str(EXAMPLE).unwrap();
        let jq = cfg.build(&ProcessorContext::default()).unwrap();
        let out = jq.program().run(&json!({"id": 1, "price": 2, "qty": 3}));
        assert_eq!(out.unwrap(), vec![json!({"id": 1, "total": 6})]);
    }

    #[test]
    fn program_is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<JqProgram>();
        check::<Jq>();
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncdé f", 8), (2, 5));
        assert_eq!(line_col("abc", 0), (1, 1));
    }

    #[test]
    fn halt_is_an_error_not_an_exit() {
        let p = JqProgram::compile("halt").unwrap();
        assert!(p.run(&json!(1)).unwrap_err().contains("halt"));
    }

    #[test]
    fn big_numbers_and_literals() {
        let p = JqProgram::compile("[1.5, 100000000000000000000, 18446744073709551615]").unwrap();
        let out = p.first(&Value::Null).unwrap().unwrap();
        assert_eq!(out[0], json!(1.5));
        assert_eq!(out[2], json!(18446744073709551615u64));
        assert!(out[1].is_f64());
    }
}
