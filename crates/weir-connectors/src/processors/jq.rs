//! `jq`: transform each record with a jq program (run by [jaq]).
//!
//! Every output of the program becomes a record with the input record's
//! position: `.` keeps it, `.items[]` splits it, `select(...)` or `empty`
//! drops it. A runtime error (`.a + 1` on a string, `error("...")`)
//! rejects the record with reason `jq_error` and jq's message.
//!
//! [`JqProgram`] is the compiled form, shared by the other processors that
//! take jq expressions (`filter`, `dedupe`, `aggregate`, `switch`): a
//! program is compiled once per stage and run by every worker (it is
//! `Send + Sync`).
//!
//! # Untrusted records
//!
//! Pipeline files are trusted, records are not, and a record can drive a
//! correct program anywhere: `range(.n)` with `n = 1e12`, a recursion `.n`
//! levels deep, a loop that never yields. Every evaluation therefore runs
//! under the stage's [`limits`](crate::limits) (outputs and time per
//! record, with defaults) and a stack guard; a record over a limit is
//! rejected with reason `jq_limit` and the limit in the detail (`more than
//! 100000 outputs (limits.max_outputs)`, `took longer than 1s
//! (limits.timeout_ms)`, `recursed deeper than the thread's stack
//! allows`), and the run goes on. The checkpoints are jaq's own: every
//! call and variable binding clones jaq's context, and our context's
//! `Clone` checks the stack and the watchdog's time flag (about a
//! nanosecond); `range` is replaced by one that checks at every step.
//!
//! * **Depth.** A recursion is stopped before the stack runs out, whatever
//!   the thread's stack; how deep it can go before that depends on the
//!   stack: about 400,000 levels on [`STACK_SIZE`](crate::limits::STACK_SIZE)
//!   threads (release build; the CLI's threads), 700 on a 2 MiB thread.
//!   What cannot be survived: freeing a value nested deeper than the
//!   thread's stack can free (about 20 million levels on 1 GiB, 40,000 on
//!   2 MiB), which a program can only build within its time limit; see
//!   [`STACK_SIZE`](crate::limits::STACK_SIZE). Outputs nest at most
//!   [`MAX_OUTPUT_DEPTH`] levels (what serde_json, and so every reader of
//!   weir's records, accepts), and `fromjson` refuses deeper texts.
//! * **Time.** A call that works for long inside jaq without a checkpoint
//!   (`indices` of a long string, `sort` of a huge array) cannot be stopped:
//!   the [`watchdog`](crate::watchdog) reports it one second after the
//!   limit, and by default ends the process with exit status 1, naming the
//!   stage, the record's position and the limit.
//! * **Memory.** See [`limits`](crate::limits): outputs are bounded by
//!   count, one huge value inside one evaluation only by time.
//! * **Environment.** `env` and `$ENV` read only the variables the stage
//!   lists (`env: [NAME]`); without a list a program that uses them does
//!   not compile (see [`EnvConfig`]). jaq has no `input`, `inputs`,
//!   `$__prog_args` or `$__loc__` here, and `debug`/`stderr` write to the
//!   log, never to a record.
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
use std::sync::Arc;

use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::native::{Fun, bome, v};
use jaq_core::{Compiler, Ctx, DataT, Vars, data::HasLut};
use jaq_json::Val;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Processor, ProcessorContext};
use crate::error::{ConfigError, ProcessError};
use crate::limits::{Budget, LimitExceeded, Limits, LimitsConfig};
use crate::record::{Position, Record};
use crate::value::{self, Val as Value};

/// Transform each record with a jq program.
///
/// Each output of the program becomes a record: one output replaces the
/// record, several split it, none drops it (counted as filtered). A runtime
/// error rejects the record with reason `jq_error`; a record that drives
/// the program over one of its `limits` is rejected with reason `jq_limit`.
/// Programs are jq as implemented by jaq, with its standard library;
/// modules (`import`, `include`) and `input`/`inputs` are not available, and
/// `env`/`$ENV` only with an `env` list.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JqConfig {
    /// The jq program, for example `{id, total: (.price * .qty)}` or
    /// `.items[]`. Compiled once when the pipeline starts: a syntax error or
    /// an unknown function is reported with its position in the program.
    #[schemars(with = "String")]
    pub program: Spanned<String>,
    /// Per-record limits, `{max_outputs: N, timeout_ms: T}`; a record over
    /// one is dead-lettered with reason `jq_limit` and the run goes on.
    /// `max_outputs` (default 100000): outputs of the program for one
    /// record; more is a runaway (`range(.n)` on a bad `n`) far more often
    /// than data, and the default keeps one record's outputs to tens of MB.
    /// `timeout_ms` (default 1000): wall-clock time for one record; jq
    /// takes microseconds per record, so a second is a thousand times the
    /// norm yet costs a worker little per runaway record, and bounds what
    /// one evaluation can allocate. A call that cannot be interrupted and
    /// is still running a second after `timeout_ms` stops the run (exit
    /// status 1, naming the stage, the record and the limit).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The environment variables the program may read with `env` or `$ENV`,
    /// for example `[REGION]` (default: none). The environment holds
    /// secrets and records are untrusted (`env[.field]`), so a program that
    /// uses `env` or `$ENV` without this list is refused at `weir check`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub env: EnvConfig,
}

/// A minimal `jq` configuration.
pub const EXAMPLE: &str = "program: '{id: .id, total: (.price * .qty)}'\n";

impl JqConfig {
    /// Compiles the program.
    ///
    /// # Errors
    /// The program does not compile (the error points at `program`), or a
    /// limit is 0.
    pub fn build(&self, ctx: &ProcessorContext) -> Result<Jq, ConfigError> {
        Ok(Jq {
            program: JqProgram::compile_spanned(&self.program, "jq program", &self.env)?,
            limits: StageLimits::new(ctx, &self.limits)?,
        })
    }
}

/// The environment variables a stage's jq expressions may read, as written
/// in the pipeline file: `env: [REGION, DEPLOY_ENV]`.
///
/// Records are untrusted and the environment holds secrets (broker
/// credentials, cloud keys): a program that can read any variable can copy
/// it into a record (`env[.field]`), so no variable is readable unless it is
/// listed. Without a list, a program that uses `env` or `$ENV` is refused
/// when the pipeline is checked, with a message saying how to list the
/// variables, rather than given an empty object: a program that reads the
/// environment expects something there, and `null`s in every record would
/// be found much later than an error at `weir check`. With a list, `env`
/// and `$ENV` are an object of the listed variables that are set, read
/// once when the pipeline starts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct EnvConfig(pub Vec<Spanned<String>>);

impl EnvConfig {
    /// The listed names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| s.value.as_str())
    }
}

/// The `jq` processor: see [`JqConfig`].
#[derive(Debug)]
pub struct Jq {
    program: JqProgram,
    limits: StageLimits,
}

impl Jq {
    /// The compiled program.
    pub fn program(&self) -> &JqProgram {
        &self.program
    }
}

impl Processor for Jq {
    fn process(&self, record: &Record, out: &mut Vec<Record>) -> Result<(), ProcessError> {
        if let Some(v) = self.program.fast(&record.value) {
            out.push(record.derive(v));
            return Ok(());
        }
        let budget = self.limits.start(&record.pos);
        let outputs = self
            .program
            .run_in(&budget, record.value.clone())
            .map_err(JqError::into_process_error)?;
        out.extend(outputs.into_iter().map(|v| record.derive(v)));
        Ok(())
    }
}

/// A rejection with reason `jq_error`.
pub(crate) fn jq_error(message: String) -> ProcessError {
    ProcessError::new("jq_error", message)
}

/// Why an evaluation gave no (complete) result.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JqError {
    /// jq's runtime error (`error("x")` gives `x`, `.a + 1` on a string
    /// jq's message); the record is rejected with reason `jq_error`.
    Runtime(String),
    /// The evaluation went over a limit; the record is rejected with reason
    /// `jq_limit`.
    Limit(LimitExceeded),
}

impl JqError {
    /// The rejection of the record: reason `jq_error` or `jq_limit`.
    pub fn into_process_error(self) -> ProcessError {
        match self {
            JqError::Runtime(m) => jq_error(m),
            JqError::Limit(l) => l.into_process_error(),
        }
    }

    /// Like [`into_process_error`](Self::into_process_error), with the
    /// detail prefixed (`field 'total': ...`).
    pub(crate) fn context(self, prefix: &str) -> ProcessError {
        let mut e = self.into_process_error();
        e.detail = format!("{prefix}: {}", e.detail);
        e
    }
}

impl fmt::Display for JqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JqError::Runtime(m) => f.write_str(m),
            JqError::Limit(l) => l.fmt(f),
        }
    }
}

impl std::error::Error for JqError {}

/// A component's limits and stage name: one [`Budget`] per record is
/// started from it.
#[derive(Debug, Clone)]
pub(crate) struct StageLimits {
    stage: Arc<str>,
    limits: Limits,
}

impl StageLimits {
    pub(crate) fn new(ctx: &ProcessorContext, cfg: &LimitsConfig) -> Result<Self, ConfigError> {
        Ok(StageLimits {
            stage: ctx.stage.as_str().into(),
            limits: cfg.build()?,
        })
    }

    /// The budget of one record's evaluations.
    pub(crate) fn start(&self, pos: &Arc<Position>) -> Budget {
        Budget::start(self.limits, &self.stage, Some(pos))
    }
}

/// jaq's view of our data: JSON-like values ([`Val`]) and, in every
/// context, the record's [`Budget`] and the readable environment.
struct Guarded;

impl DataT for Guarded {
    type V<'a> = Val;
    type Data<'a> = Scope<'a>;
}

/// What every jaq context of one evaluation carries: one pointer, so that
/// jaq's contexts, copied everywhere, stay as small as with its own data.
struct Scope<'a>(&'a Shared<'a>);

struct Shared<'a> {
    lut: &'a jaq_core::Lut<Guarded>,
    budget: &'a Budget,
    env: &'a Val,
}

impl Clone for Scope<'_> {
    /// jaq clones its context at every call of a definition and every
    /// variable binding, also inside loops that yield nothing: the one
    /// place an evaluation can be stopped from inside.
    #[inline]
    fn clone(&self) -> Self {
        self.0.budget.checkpoint();
        Scope(self.0)
    }
}

impl<'a> HasLut<'a, Guarded> for Scope<'a> {
    fn lut(&self) -> &'a jaq_core::Lut<Guarded> {
        self.0.lut
    }
}

/// Our replacements of jaq's natives: `range` with a checkpoint at every
/// step (it is the one loop of the standard library written in Rust, and
/// `[range(1e10)]` would otherwise build its array unchecked), `env` that
/// reads only the listed variables, and `fromjson` that refuses a text
/// nested deeper than [`MAX_OUTPUT_DEPTH`] (jaq's parser recurses once per
/// level: a record holding `"[[[[…"` a million deep would overflow any
/// stack).
fn own_funs() -> impl Iterator<Item = Fun<Guarded>> {
    let range: jaq_core::RunPtr<Guarded> = |mut cv| {
        let budget = cv.0.data().0.budget;
        let by = cv.0.pop_var();
        let to = cv.0.pop_var();
        let from = cv.0.pop_var();
        Box::new(range(from, to, by).inspect(move |_| budget.checkpoint()))
    };
    let env: jaq_core::RunPtr<Guarded> = |cv| bome(Ok(cv.0.data().0.env.clone()));
    let fromjson: jaq_core::RunPtr<Guarded> = |cv| {
        let text = cv.1;
        let bytes = match text.try_as_utf8_bytes_owned() {
            Ok(b) if json_nesting_exceeds(&b, MAX_OUTPUT_DEPTH) => {
                return bome(Err(jaq_core::Error::str(format_args!(
                    "cannot parse a JSON text nested deeper than {MAX_OUTPUT_DEPTH} levels"
                ))));
            }
            Ok(b) => b,
            Err(e) => return bome(Err(e)),
        };
        let values = jaq_json::bytes_valrs(bytes, move |s| {
            Box::new(jaq_json::read::parse_many(s).map(move |r| {
                r.map_err(|e| {
                    jaq_core::Error::str(format_args!("cannot parse {text} as JSON: {e}"))
                })
            }))
        });
        Box::new(values.map(|r| r.map_err(jaq_core::Exn::from)))
    };
    let own: [jaq_core::native::Filter<jaq_core::RunPtr<Guarded>>; 3] = [
        ("range", v(3), range),
        ("env", v(0), env),
        ("fromjson", v(0), fromjson),
    ];
    own.into_iter().map(jaq_core::native::run::<Guarded>)
}

/// jaq's `range($from; $to; $by)`: from `$from` while below `$to` (above
/// for a negative `$by`, different for a zero one), adding `$by`.
fn range<'a>(from: Val, to: Val, by: Val) -> impl Iterator<Item = jaq_core::ValX<'a, Val>> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let cmp = by.partial_cmp(&Val::from(0usize)).unwrap_or(Equal);
    let mut next: Option<jaq_core::ValX<'a, Val>> = Some(Ok(from));
    std::iter::from_fn(move || match next.take()? {
        Ok(x) => {
            let go_on = match cmp {
                Greater => x < to,
                Less => x > to,
                Equal => x != to,
            };
            if go_on {
                next = Some((x.clone() + by.clone()).map_err(jaq_core::Exn::from));
                Some(Ok(x))
            } else {
                None
            }
        }
        Err(e) => Some(Err(e)),
    })
}

/// A compiled jq program, `Send + Sync`: compile once, run on many threads.
pub struct JqProgram {
    filter: jaq_core::Filter<Guarded>,
    source: String,
    /// The program compiled for direct evaluation, when it is in the
    /// subset of [`jq_fast`](super::jq_fast) (not with `env`): tried first,
    /// jaq runs it when it declines.
    fast: Option<super::jq_fast::Fast>,
    /// The readable environment: the listed variables that are set.
    env: Val,
    /// Whether `$ENV` is bound (only when variables are listed).
    env_var: bool,
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

/// The name `$ENV` has for jaq's compiler.
const ENV_VAR: &str = "$ENV";

impl JqProgram {
    /// Compiles `code` with jq's core and standard definitions; `env` and
    /// `$ENV` are refused (see [`compile_with_env`](Self::compile_with_env)).
    ///
    /// # Errors
    /// A lex, parse or compile (undefined name) error, with its position.
    pub fn compile(code: &str) -> Result<Self, JqCompileError> {
        Self::compile_with_env(code, &[] as &[&str])
    }

    /// Compiles `code`; `env` and `$ENV` are the object of the variables
    /// named in `env` that are set now. With no names, a program that uses
    /// them does not compile (see [`EnvConfig`] for why).
    ///
    /// # Errors
    /// A lex, parse or compile (undefined name) error, with its position.
    pub fn compile_with_env(code: &str, env: &[impl AsRef<str>]) -> Result<Self, JqCompileError> {
        let allowed = !env.is_empty();
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let replaced = |name: &str, arity: usize| {
            (name == "range" && arity == 3) || (arity == 0 && (name == "env" || name == "fromjson"))
        };
        let funs = jaq_core::funs::<Guarded>()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, args, _)| !replaced(name, args.len()))
            .chain(own_funs().filter(|(name, ..)| allowed || *name != "env"));
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .map_err(|errs| load_errors(code, errs))?;
        let globals: &[&str] = if allowed { &[ENV_VAR] } else { &[] };
        let filter = Compiler::default()
            .with_funs(funs)
            .with_global_vars(globals.iter().copied())
            .compile(modules)
            .map_err(|errs| compile_errors(code, errs))?;
        let env = Val::obj(
            env.iter()
                .filter_map(|name| {
                    let name = name.as_ref();
                    let value = std::env::var_os(name)?;
                    let value = value.to_string_lossy().into_owned();
                    Some((
                        Val::utf8_str(name.as_bytes().to_vec()),
                        Val::utf8_str(value.into_bytes()),
                    ))
                })
                .collect(),
        );
        Ok(JqProgram {
            filter,
            source: code.to_owned(),
            fast: if allowed {
                None
            } else {
                super::jq_fast::Fast::compile(code)
            },
            env,
            env_var: allowed,
        })
    }

    /// Compiles the program in a spanned configuration value; `what` names
    /// it in the error (`"jq program"`, `"condition"`, ...).
    ///
    /// # Errors
    /// A [`ConfigError`] at the value's location, with jq's message and the
    /// position within the program.
    pub fn compile_spanned(
        code: &Spanned<String>,
        what: &str,
        env: &EnvConfig,
    ) -> Result<Self, ConfigError> {
        let names: Vec<&str> = env.names().collect();
        JqProgram::compile_with_env(&code.value, &names)
            .map_err(|e| ConfigError::at(format!("{what} does not compile: {e}"), code))
    }

    /// The program's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Runs the program on `input` under the default [`Limits`],
    /// collecting every output.
    ///
    /// # Errors
    /// jq's runtime error (the outputs before it are discarded), or the
    /// limit the evaluation went over.
    pub fn run(&self, input: &Value) -> Result<Vec<Value>, JqError> {
        if let Some(v) = self.fast(input) {
            return Ok(vec![v]);
        }
        self.run_in(&default_budget(), input.clone())
    }

    /// The output of the direct evaluation; `None` when the program is not
    /// in its subset or it declines this input (an error, no output),
    /// which jaq then evaluates itself.
    pub(crate) fn fast(&self, input: &Value) -> Option<Value> {
        self.fast.as_ref()?.eval(input)
    }

    /// [`fast`](Self::fast) for a truth value only.
    fn fast_truthy(&self, input: &Value) -> Option<bool> {
        self.fast.as_ref()?.eval_truthy(input)
    }

    /// Runs the program on `input` under the default [`Limits`] and
    /// returns its first output (the rest is not computed).
    ///
    /// # Errors
    /// jq's runtime error, if it comes before the first output, or the
    /// limit the evaluation went over.
    pub fn first(&self, input: &Value) -> Result<Option<Value>, JqError> {
        if let Some(v) = self.fast(input) {
            return Ok(Some(v));
        }
        self.first_in(&default_budget(), input.clone())
    }

    /// Whether the first output, under the default [`Limits`], is truthy
    /// (neither `false` nor `null`); no output is `false`.
    ///
    /// # Errors
    /// jq's runtime error, if it comes before the first output, or the
    /// limit the evaluation went over.
    pub fn first_truthy(&self, input: &Value) -> Result<bool, JqError> {
        if let Some(t) = self.fast_truthy(input) {
            return Ok(t);
        }
        self.first_truthy_in(&default_budget(), input.clone())
    }

    /// Like [`first_truthy`](Self::first_truthy), on a record under its
    /// budget.
    pub(crate) fn record_truthy(
        &self,
        record: &Record,
        budget: &mut RecordBudget<'_>,
    ) -> Result<bool, JqError> {
        if let Some(t) = self.fast_truthy(&record.value) {
            return Ok(t);
        }
        let (budget, input) = budget.get();
        self.first_truthy_in(budget, input)
    }

    /// Like [`first`](Self::first), on a record under its budget.
    pub(crate) fn record_first(
        &self,
        record: &Record,
        budget: &mut RecordBudget<'_>,
    ) -> Result<Option<Value>, JqError> {
        if let Some(v) = self.fast(&record.value) {
            return Ok(Some(v));
        }
        let (budget, input) = budget.get();
        self.first_in(budget, input)
    }

    /// Like [`run`](Self::run), on a record under its budget.
    pub(crate) fn record_run(
        &self,
        record: &Record,
        budget: &mut RecordBudget<'_>,
    ) -> Result<Vec<Value>, JqError> {
        if let Some(v) = self.fast(&record.value) {
            return Ok(vec![v]);
        }
        let (budget, input) = budget.get();
        self.run_in(budget, input)
    }

    /// Every output of the program on `input`, under `budget`.
    pub(crate) fn run_in(&self, budget: &Budget, input: Val) -> Result<Vec<Value>, JqError> {
        let mut outputs = Vec::new();
        self.each_val(budget, input, |v| {
            outputs
                .push(value::canonical(v).map_err(|_| LimitExceeded::Nesting(MAX_OUTPUT_DEPTH))?);
            Ok(true)
        })?;
        Ok(outputs)
    }

    /// The first output of the program on `input`, under `budget`.
    pub(crate) fn first_in(&self, budget: &Budget, input: Val) -> Result<Option<Value>, JqError> {
        let mut first = None;
        self.each_val(budget, input, |v| {
            first =
                Some(value::canonical(v).map_err(|_| LimitExceeded::Nesting(MAX_OUTPUT_DEPTH))?);
            Ok(false)
        })?;
        Ok(first)
    }

    fn first_truthy_in(&self, budget: &Budget, input: Val) -> Result<bool, JqError> {
        let mut truthy = false;
        self.each_val(budget, input, |v| {
            truthy = !matches!(v, Val::Null | Val::Bool(false));
            Ok(false)
        })?;
        Ok(truthy)
    }

    /// Runs the program under `budget`, calling `f` with each output until
    /// it returns `false`. Outputs are counted as they are pulled from
    /// jaq's lazy iterator, so the one past the limit is never computed
    /// beyond its own value.
    fn each_val(
        &self,
        budget: &Budget,
        input: Val,
        mut f: impl FnMut(Val) -> Result<bool, LimitExceeded>,
    ) -> Result<(), JqError> {
        let shared = Shared {
            lut: &self.filter.lut,
            budget,
            env: &self.env,
        };
        let vars = if self.env_var {
            Vars::new([self.env.clone()])
        } else {
            Vars::new([])
        };
        let max = budget.max_outputs();
        let run = || {
            let ctx = Ctx::<Guarded>::new(Scope(&shared), vars);
            let mut n = 0u64;
            let mut outputs = self.filter.id.run((ctx, input));
            let result = loop {
                match outputs.next() {
                    None => break Ok(()),
                    Some(Ok(v)) => {
                        n += 1;
                        if n > max {
                            break Err(LimitExceeded::Outputs(max));
                        }
                        if let Err(e) = budget.check_time() {
                            break Err(e);
                        }
                        match f(v) {
                            Ok(true) => {}
                            Ok(false) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    }
                    Some(Err(exn)) => return Err(JqError::Runtime(exn_message(exn))),
                }
            };
            if result.is_err() {
                // Freeing what the evaluation built is bounded but may be
                // long (a deep value): not a stuck evaluation.
                budget.stopping();
            }
            drop(outputs);
            result.map_err(JqError::Limit)
        };
        crate::limits::guarded(run).map_err(JqError::Limit)?
    }
}

/// Whether `json` nests arrays and objects deeper than `max` (brackets
/// inside strings do not count).
fn json_nesting_exceeds(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The budget of an evaluation that is not of a record (no stage, no
/// position): the default limits.
fn default_budget() -> Budget {
    static ANONYMOUS: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    Budget::start(Limits::default(), ANONYMOUS.get_or_init(|| "".into()), None)
}

/// One record's budget and its value in jaq's type, both made on first
/// use: a record whose expressions are all plain paths needs neither.
pub(crate) struct RecordBudget<'r> {
    limits: &'r StageLimits,
    record: &'r Record,
    started: Option<(Budget, Val)>,
}

impl<'r> RecordBudget<'r> {
    pub(crate) fn new(limits: &'r StageLimits, record: &'r Record) -> Self {
        RecordBudget {
            limits,
            record,
            started: None,
        }
    }

    fn get(&mut self) -> (&Budget, Val) {
        let (b, v) = self.started.get_or_insert_with(|| {
            (
                self.limits.start(&self.record.pos),
                self.record.value.clone(),
            )
        });
        (b, v.clone())
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
            problems.push(if name == "env" || name == ENV_VAR {
                format!(
                    "`{name}` is not available: the environment may hold secrets, so a \
                     program reads only the variables its stage lists, as in `env: [NAME]`"
                )
            } else {
                format!("undefined {} '{name}'", undefined.as_str())
            });
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

/// How deeply an output may nest arrays and objects: the deepest document
/// serde_json reads.
///
/// serde_json reads every record weir reads (files, the broker between a
/// coordinator and its workers) and refuses deeper documents; and writing
/// or freeing a deeper value recurses on the stack of whatever thread does
/// it (a sink's, where nothing guards the stack). A jq program can build
/// any depth (`reduce range(1e6) as $x (null; [.])`), so a deeper output is
/// rejected here, where it is built.
pub const MAX_OUTPUT_DEPTH: usize = value::MAX_DEPTH;

#[cfg(test)]
mod fast_path_tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// What jaq alone gives, as text (`Val`'s `==` says `1 == 1.0`).
    fn jaq_only(p: &JqProgram, input: &Value) -> Result<Vec<String>, String> {
        p.run_in(&default_budget(), input.clone())
            .map(|vs| vs.iter().map(value::to_text).collect())
            .map_err(|e| e.to_string())
    }

    /// What a stage gives: the direct evaluation first, jaq when it
    /// declines.
    fn staged(p: &JqProgram, input: &Value) -> Result<Vec<String>, String> {
        p.run(input)
            .map(|vs| vs.iter().map(value::to_text).collect())
            .map_err(|e| e.to_string())
    }

    fn agree(code: &str, input: &Value) -> Result<(), TestCaseError> {
        let Ok(p) = JqProgram::compile(code) else {
            return Ok(());
        };
        let slow = jaq_only(&p, input);
        if let Some(v) = p.fast(input) {
            prop_assert_eq!(
                &slow,
                &Ok(vec![value::to_text(&v)]),
                "{} on {}: direct evaluation",
                code,
                value::to_text(input)
            );
        }
        if let Some(t) = p.fast_truthy(input) {
            // A filter's truth is of jaq's raw first output (`1 / 0` is
            // infinite, so true, though it is written `null`).
            let jaq_truth = p.first_truthy_in(&default_budget(), input.clone());
            prop_assert_eq!(Ok(t), jaq_truth, "{} truth", code);
        }
        prop_assert_eq!(
            staged(&p, input),
            slow,
            "{} on {}",
            code,
            value::to_text(input)
        );
        Ok(())
    }

    #[test]
    fn programs_pipelines_use_are_evaluated_directly() {
        for code in [
            ".",
            ".a.b",
            "._x1",
            ".a?",
            ".a | .b",
            ".id and .user and .ts and .kind and .amount",
            ".amount >= 0",
            "{user, kind: (.kind | ascii_downcase), cents: (.amount * 100 | round)}",
            "type == \"object\"",
            "(.tier // \"standard\") | ascii_upcase",
            "if .n > 1 then \"big\" elif .n == 1 then \"one\" else null end",
            "[.a, .b, {c: -.n}] | length",
            ".x.y != null or (.z | not)",
            ".amount |= (if type == \"string\" then (gsub(\",\"; \".\") | tonumber) else . end)\n| .customer_id |= (if type == \"string\" then tonumber else . end)\n| .status |= (ascii_downcase | ltrimstr(\" \") | rtrimstr(\" \"))\n| .region = .order_id[0:2]\n| .item_count = (.items | map(.qty) | add)",
        ] {
            let p = JqProgram::compile(code).unwrap();
            assert!(p.fast.is_some(), "{code} should be evaluated directly");
        }
        for code in [
            ".[0]",
            "..",
            ".a[]",
            "$__loc__",
            "tostring",
            "select(.a)",
            "def f: 1; f",
        ] {
            if let Ok(p) = JqProgram::compile(code) {
                assert!(p.fast.is_none(), "{code} is not in the subset");
            }
        }
        let p = JqProgram::compile(".a").unwrap();
        assert!(p.fast.as_ref().unwrap().is_plain_path());
    }

    /// What a record can blow up stays under the stage's limits: the direct
    /// evaluation declines it, jaq runs it with its budget.
    #[test]
    fn record_driven_blow_ups_are_left_to_jaq_and_its_limits() {
        let p = JqProgram::compile("(\"x\" * .n) | length").unwrap();
        assert!(p.fast.is_some());
        let n = value::from_json(&json!({"n": 3_000_000_000u64}));
        assert_eq!(p.fast(&n), None, "string repetition declines");
        let p = JqProgram::compile(".a | add").unwrap();
        let strings = value::from_json(&json!({"a": ["x", "y"]}));
        assert_eq!(p.fast(&strings), None, "adding strings declines");
        let numbers = value::from_json(&json!({"a": [1, 2.5, null]}));
        assert_eq!(
            p.fast(&numbers).map(|v| value::to_text(&v)),
            Some("3.5".into())
        );
        // jaq computes it, under the stage's budget.
        let p = JqProgram::compile("(\"x\" * .n) | length").unwrap();
        let small = value::from_json(&json!({"n": 1000}));
        assert_eq!(p.fast(&small), None);
        let out = p.run(&small).unwrap();
        assert_eq!(out.iter().map(value::to_text).collect::<Vec<_>>(), ["1000"]);
    }

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
            ".a?",
            ".a.b?",
            ".a | .b",
            ". a",
            ".[\"a\"]",
        ] {
            for input in &inputs {
                agree(code, &value::from_json(input)).unwrap();
            }
        }
    }

    /// The main job's `clean` program on the bundled orders (messy amounts,
    /// ids as text, padded statuses): evaluated directly, same as jaq.
    #[test]
    fn the_main_jobs_clean_program_agrees_on_its_data() {
        let code =
            ".amount |= (if type == \"string\" then (gsub(\",\"; \".\") | tonumber) else . end)
            | .customer_id |= (if type == \"string\" then tonumber else . end)
            | .status |= (ascii_downcase | ltrimstr(\" \") | rtrimstr(\" \"))
            | .region = .order_id[0:2]
            | .item_count = (.items | map(.qty) | add)";
        let data = include_str!("../../../../examples/pipelines/data/orders-eu.jsonl");
        let p = JqProgram::compile(code).unwrap();
        let mut direct = 0;
        for line in data.lines().take(3000) {
            let Ok(v) = value::parse(line.as_bytes()) else {
                continue;
            };
            agree(code, &v).unwrap();
            direct += usize::from(p.fast(&v).is_some());
        }
        assert!(direct > 2900, "{direct} of 3000 evaluated directly");
    }

    /// Random records: objects over a few keys, so that paths hit.
    fn record() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
            (-5i64..5).prop_map(|i| json!(i)),
            // Not any i64: jaq repeats a string `n` times for `"s" * n` and
            // an `n` near i64::MAX aborts the process on the allocation
            // (a known hazard of hostile records, see the issue 9 notes).
            // (i64::MIN neither: jaq's `length` negates it, which panics in
            // a debug build.)
            (-1_000_000i64..1_000_000).prop_map(|i| json!(i)),
            prop_oneof![Just(0.5f64), Just(-2.5), Just(1e300), Just(3.0), Just(-0.0)]
                .prop_map(|f| json!(f)),
            "[a-cA-C é,0-9.]{0,4}".prop_map(|s| json!(s)),
            prop_oneof![
                Just("12"),
                Just("1,5"),
                Just(" 7"),
                Just("-0.25"),
                Just("1e2"),
                Just("NaN")
            ]
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 20, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::Array),
                prop::collection::vec(("[abcn]", inner), 0..4)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Random programs from the subset's grammar, with some constructs
    /// outside it mixed in (they must fall back to jaq).
    fn program() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just(".".to_string()),
            Just(".a".to_string()),
            Just(".b".to_string()),
            Just(".n".to_string()),
            Just(".a.b".to_string()),
            Just(".c?".to_string()),
            Just("1".to_string()),
            Just("-2".to_string()),
            Just("1.5".to_string()),
            Just("100".to_string()),
            Just("0".to_string()),
            Just("\"x\"".to_string()),
            Just("\"A b\"".to_string()),
            Just("\" 12 \"".to_string()),
            Just("\"1,5\"".to_string()),
            Just("\"-3e2\"".to_string()),
            Just("\"nan\"".to_string()),
            Just("\"1 2\"".to_string()),
            Just("[1, 2.5, 3]".to_string()),
            Just("[\"a\", \"b\"]".to_string()),
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just(".[0]".to_string()),
            Just("empty".to_string()),
        ];
        leaf.prop_recursive(4, 24, 3, |inner| {
            let bin = |op: &'static str| {
                (inner.clone(), inner.clone()).prop_map(move |(l, r)| format!("({l}) {op} ({r})"))
            };
            let call = |f: &'static str| inner.clone().prop_map(move |x| format!("({x}) | {f}"));
            prop_oneof![
                bin("=="),
                bin("!="),
                bin("<"),
                bin("<="),
                bin(">"),
                bin(">="),
                bin("and"),
                bin("or"),
                bin("//"),
                bin("+"),
                bin("-"),
                bin("*"),
                bin("/"),
                bin("%"),
                bin("|"),
                inner.clone().prop_map(|x| format!("-({x})")),
                call("not"),
                call("type"),
                call("length"),
                call("ascii_downcase"),
                call("ascii_upcase"),
                call("floor"),
                call("round"),
                call("ceil"),
                call("tostring"),
                call("tonumber"),
                call("add"),
                call("ltrimstr(\"a\")"),
                call("rtrimstr(\" \")"),
                call("gsub(\"a\"; \"-\")"),
                call("sub(\"b\"; \"\")"),
                call("gsub(\"a.\"; \"x\")"),
                call(".[1:]"),
                call(".[0:2]"),
                call(".[-1:]"),
                inner.clone().prop_map(|x| format!("map({x})")),
                inner.clone().prop_map(|x| format!(".a |= ({x})")),
                inner.clone().prop_map(|x| format!(".a.b |= ({x})")),
                inner.clone().prop_map(|x| format!(". |= ({x})")),
                inner.clone().prop_map(|x| format!(".n = ({x})")),
                inner.clone().prop_map(|x| format!(".a.c = ({x})")),
                (inner.clone(), inner.clone(), inner.clone())
                    .prop_map(|(c, t, e)| format!("if {c} then {t} else {e} end")),
                (inner.clone(), inner.clone()).prop_map(|(c, t)| format!("if {c} then {t} end")),
                (inner.clone(), inner.clone(), inner.clone(), inner.clone()).prop_map(
                    |(c, t, d, e)| format!("if {c} then {t} elif {d} then ({t}) else {e} end")
                ),
                (inner.clone(), inner.clone())
                    .prop_map(|(x, y)| format!("{{a: ({x}), b: ({y}), a: 1}}")),
                inner
                    .clone()
                    .prop_map(|x| format!("{{a, (\"k\"): ({x}), n}}")),
                inner.clone().prop_map(|x| format!("{{(({x}) | type): 1}}")),
                (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("[({x}), ({y})]")),
                inner.clone().prop_map(|x| format!("({x}).a")),
                inner.clone().prop_map(|x| format!("({x}) | .[]")),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// A stage's output, errors included, is jaq's, whether the direct
        /// evaluation or jaq computed it.
        #[test]
        fn fast_evaluation_agrees_with_jaq(code in program(), input in record()) {
            agree(&code, &value::from_json(&input))?;
        }
    }
}

impl crate::registry::Documented for JqConfig {
    const EXAMPLE: &'static str = EXAMPLE;
}

impl crate::registry::ProcessorComponent for JqConfig {
    fn scope(&self) -> crate::registry::Scope {
        crate::registry::Scope::PerRecord
    }

    fn build(&self, ctx: &ProcessorContext) -> Result<crate::registry::Stage, ConfigError> {
        Ok(crate::registry::Stage::Records(std::sync::Arc::new(
            JqConfig::build(self, ctx)?,
        )))
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
        let out = jq
            .program()
            .run(&value::from_json(&json!({"id": 1, "price": 2, "qty": 3})));
        let out: Vec<_> = out.unwrap().iter().map(value::to_json).collect();
        assert_eq!(out, vec![json!({"id": 1, "total": 6})]);
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
        assert!(
            p.run(&value::int(1))
                .unwrap_err()
                .to_string()
                .contains("halt")
        );
    }

    #[test]
    fn big_numbers_and_literals() {
        let p = JqProgram::compile("[1.5, 100000000000000000000, 18446744073709551615]").unwrap();
        let out = p.first(&Value::Null).unwrap().unwrap();
        let out = value::to_json(&out);
        assert_eq!(out[0], json!(1.5));
        assert_eq!(out[2], json!(18446744073709551615u64));
        assert!(out[1].is_f64());
    }
}
