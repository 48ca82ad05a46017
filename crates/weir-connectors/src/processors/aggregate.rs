//! `aggregate`: group records by a key and compute per-group fields.
//!
//! This is a fan-in stage on the engine's [`Flow::aggregate`](weir::Flow::aggregate),
//! whose fold cannot fail, so the work is split in two:
//!
//! 1. [`Aggregator::extract`] runs on each record (in a `try_map` stage, on
//!    any number of workers): it evaluates the group key and every field's
//!    expression, and rejects a record whose values do not fit (reason
//!    `aggregate_type`, `jq_error`, `jq_limit` or `missing_key`);
//! 2. [`Aggregator::init`] and [`Aggregator::fold`] are the aggregate's
//!    accumulator, keyed by [`Extracted::key`], emitted per
//!    [`Aggregator::window`]; [`Aggregator::finish`] turns a group into a
//!    record `{"key": <group key>, <field>: <value>, ...}`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), weir::RunError> {
//! use std::sync::Arc;
//! use weir::{Pipeline, from_iter, collect};
//! use weir_connectors::{Position, Record};
//! use weir_connectors::processors::aggregate::AggregateConfig;
//! use weir_connectors::processors::ProcessorContext;
//!
//! let cfg: AggregateConfig = serde_saphyr::from_str(
//!     "group_by: .region\nfields: {n: count, total: {sum: .cents}}",
//! ).unwrap();
//! let agg = Arc::new(cfg.build(&ProcessorContext::default()).unwrap());
//! let pos = Arc::new(Position { input: "in".into(), file: None, line: 1 });
//! let records = (0..4).map(move |i| {
//!     Record::from_json(&serde_json::json!({"region": i % 2, "cents": i}), pos.clone())
//! });
//!
//! let p = Pipeline::new();
//! let (a, b, c) = (agg.clone(), agg.clone(), agg.clone());
//! let out = p
//!     .source("in", from_iter(records))
//!     .try_map("extract", move |r| a.extract(r))
//!     .aggregate("agg", |e| e.key.clone(), move |_| b.init(), move |acc, e| c.fold(acc, e), agg.window())
//!     .map("finish", move |(k, acc)| { let pos = acc.first_pos(); agg.finish(&k, acc, pos) })
//!     .sink("out", collect());
//! p.run().await?;
//! let out: Vec<_> = out.take().unwrap().into_iter().map(|r| r.json()).collect();
//! assert_eq!(out[0], serde_json::json!({"key": 0, "n": 2, "total": 2}));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crate::value::{self, Val as Value};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use super::ProcessorContext;
use super::jq::{EnvConfig, JqProgram, RecordBudget, StageLimits};
use crate::error::{ConfigError, ProcessError};
use crate::limits::LimitsConfig;
use crate::record::{Position, Record};

/// Group records by a key and compute fields per group.
///
/// Emits one record per group and window:
/// `{"key": <group key>, <field>: <value>, ...}`, fields in the order
/// written. Groups are emitted in the order their keys were first seen.
///
/// A record is rejected (dead-lettered) when `group_by` fails (`jq_error`)
/// or goes over one of the `limits` (`jq_limit`), or gives no output (`missing_key`; a `null` key is a group of its own),
/// or when a `sum`, `min`, `max` or `avg` expression gives something other
/// than a number (`aggregate_type`, naming the field). An expression with no
/// output (`.discount // empty`) leaves that field of that record out.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// A jq expression giving the group key, for example `.region` or
    /// `[.region, .product]`. Keys are compared as JSON text, so `1` and
    /// `1.0` are different groups, and so are objects with the same entries
    /// in a different order.
    #[schemars(with = "String")]
    pub group_by: Spanned<String>,
    /// The fields of each output record, in order: a name (not `key`) and
    /// one of `count` (records in the group), `{sum: <jq>}`, `{min: <jq>}`,
    /// `{max: <jq>}`, `{avg: <jq>}` (of a number per record) or
    /// `{collect: <jq>}` (every output of the expression, in an array).
    ///
    /// `sum` of integers is an exact integer (floats with an integral value
    /// below 2⁵³ count as integers); it becomes a float when a float is
    /// added or when the sum overflows 64 bits. `avg` is always a float.
    /// `collect` keeps every value in memory until the group is emitted.
    #[schemars(with = "BTreeMap<String, FieldConfig>")]
    pub fields: Fields,
    /// When a group is emitted: `all` (the default: once, at the end of
    /// input), `{count: N}` (when its key has absorbed N records; the
    /// remainder at the end of input) or `{seconds: S}` (every S seconds of
    /// processing time, all open groups at once: tumbling windows).
    #[serde(default)]
    #[schemars(with = "Option<WindowConfig>")]
    pub window: Option<Spanned<WindowConfig>>,
    /// Per-record limits of the expressions' evaluation: `max_outputs` per
    /// expression, `timeout_ms` for `group_by` and all fields of one record
    /// together (see `weir explain jq`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The environment variables the expressions may read with `env` or
    /// `$ENV` (default: none; see `weir explain jq`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub env: EnvConfig,
}

/// A minimal `aggregate` configuration.
pub const EXAMPLE: &str = "\
group_by: .region
fields:
  orders: count
  revenue: {sum: .cents}
  largest: {max: .cents}
window: all
";

/// One computed field of an aggregate.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum FieldConfig {
    /// The number of records in the group.
    Count,
    /// The sum of a number per record.
    Sum(#[schemars(with = "String")] Spanned<String>),
    /// The smallest number.
    Min(#[schemars(with = "String")] Spanned<String>),
    /// The largest number.
    Max(#[schemars(with = "String")] Spanned<String>),
    /// The mean of a number per record (a float; `null` if no record had one).
    Avg(#[schemars(with = "String")] Spanned<String>),
    /// Every output of the expression, in an array, in arrival order.
    Collect(#[schemars(with = "String")] Spanned<String>),
}

/// When an aggregate emits its groups.
#[derive(Debug, Clone, Copy, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum WindowConfig {
    /// Once, at the end of input.
    #[default]
    All,
    /// When a key has absorbed this many records (at least 1).
    Count(usize),
    /// Every this many seconds (more than 0) of processing time.
    Seconds(f64),
}

impl WindowConfig {
    /// The engine's window.
    ///
    /// # Errors
    /// A count of 0, or a period that is not a positive number of seconds.
    pub fn to_window(self) -> Result<weir::Window, String> {
        match self {
            WindowConfig::All => Ok(weir::Window::All),
            WindowConfig::Count(0) => Err("a count window needs at least 1 record".to_owned()),
            WindowConfig::Count(n) => Ok(weir::Window::Count(n)),
            WindowConfig::Seconds(s) => seconds(s).map(weir::Window::Tumbling),
        }
    }
}

/// A positive, finite period.
pub(crate) fn seconds(s: f64) -> Result<Duration, String> {
    match Duration::try_from_secs_f64(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "a window needs a positive number of seconds, not {s}"
        )),
    }
}

/// The fields of an aggregate in the order they are written.
#[derive(Debug, Clone, Default)]
pub struct Fields(pub Vec<(String, FieldConfig)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of field names to `count`, `{sum: ...}`, ...")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields: Vec<(String, FieldConfig)> = Vec::new();
                while let Some((name, field)) = map.next_entry::<String, FieldConfig>()? {
                    if fields.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!("duplicate field '{name}'")));
                    }
                    fields.push((name, field));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

impl AggregateConfig {
    /// Compiles the key and field expressions.
    ///
    /// # Errors
    /// An expression does not compile, a field is named `key`, or the
    /// window is invalid.
    pub fn build(&self, ctx: &ProcessorContext) -> Result<Aggregator, ConfigError> {
        let group_by = JqProgram::compile_spanned(&self.group_by, "group_by", &self.env)?;
        let mut fields = Vec::with_capacity(self.fields.0.len());
        for (name, field) in &self.fields.0 {
            let compile = |e: &Spanned<String>| {
                JqProgram::compile_spanned(e, &format!("field '{name}'"), &self.env)
            };
            let (kind, expr) = match field {
                FieldConfig::Count => (Kind::Count, None),
                FieldConfig::Sum(e) => (Kind::Sum, Some((compile(e)?, e))),
                FieldConfig::Min(e) => (Kind::Min, Some((compile(e)?, e))),
                FieldConfig::Max(e) => (Kind::Max, Some((compile(e)?, e))),
                FieldConfig::Avg(e) => (Kind::Avg, Some((compile(e)?, e))),
                FieldConfig::Collect(e) => (Kind::Collect, Some((compile(e)?, e))),
            };
            if name == "key" {
                let msg = "the field name 'key' is reserved for the group key";
                return Err(match expr {
                    Some((_, e)) => ConfigError::at(msg, e),
                    None => ConfigError::at(msg, &self.group_by),
                });
            }
            fields.push(Field {
                name: name.clone(),
                kind,
                expr: expr.map(|(p, _)| p),
            });
        }
        let window = match &self.window {
            None => weir::Window::All,
            Some(w) => w.value.to_window().map_err(|m| ConfigError::at(m, w))?,
        };
        Ok(Aggregator {
            group_by,
            fields,
            window,
            limits: StageLimits::new(ctx, &self.limits)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    Collect,
}

#[derive(Debug)]
struct Field {
    name: String,
    kind: Kind,
    expr: Option<JqProgram>,
}

/// The `aggregate` component, compiled: see [`AggregateConfig`] and the
/// module docs for how to wire it.
#[derive(Debug)]
pub struct Aggregator {
    group_by: JqProgram,
    fields: Vec<Field>,
    window: weir::Window,
    limits: StageLimits,
}

/// A group key. Keys are equal when their JSON texts are: a string key is
/// compared and hashed by its bytes (shared with the record, no
/// allocation: the common case, and on the aggregate's hot path), any
/// other key by its JSON text. That equivalence holds for values in JSON's
/// data model (text strings of valid UTF-8), which is what records and
/// canonical jq outputs are; a byte string or invalid UTF-8 given to
/// [`GroupKey::new`] groups by its bytes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GroupKey(KeyRepr);

#[derive(Debug, Clone)]
enum KeyRepr {
    /// A string: its value (whose bytes are the key).
    Str(Value),
    /// Any other value: its JSON text (what is compared and hashed) and
    /// the value.
    Json { text: Arc<str>, value: Arc<Value> },
}

impl GroupKey {
    /// The key of `value`.
    pub fn new(value: Value) -> Self {
        GroupKey(match value {
            Value::TStr(_) => KeyRepr::Str(value),
            value => KeyRepr::Json {
                text: value::to_text(&value).into(),
                value: Arc::new(value),
            },
        })
    }

    /// The key's value.
    pub fn value(&self) -> &Value {
        match &self.0 {
            KeyRepr::Str(v) => v,
            KeyRepr::Json { value, .. } => value,
        }
    }

    /// The bytes compared and hashed, and which kind they are.
    fn identity(&self) -> (u8, &[u8]) {
        match &self.0 {
            KeyRepr::Str(Value::TStr(b)) => (0, b),
            KeyRepr::Str(_) => unreachable!("only strings are kept as KeyRepr::Str"),
            KeyRepr::Json { text, .. } => (1, text.as_bytes()),
        }
    }
}

impl PartialEq for GroupKey {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for GroupKey {}

impl Hash for GroupKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

/// What [`Aggregator::extract`] computed from one record.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// The record's group.
    pub key: GroupKey,
    values: Vec<Option<Extract>>,
    pos: Arc<Position>,
}

impl Extracted {
    /// Where the record was read.
    pub fn pos(&self) -> &Arc<Position> {
        &self.pos
    }
}

#[derive(Debug, Clone)]
enum Extract {
    Num(Num),
    Values(Vec<Value>),
}

/// A number as aggregated: integers (and integral floats below 2^53) exact.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
}

/// The largest integer every smaller one of which an f64 holds exactly.
const EXACT_F64: f64 = 9_007_199_254_740_992.0;

impl Num {
    fn from_val(n: &Value) -> Num {
        if let Some(i) = value::as_i64(n) {
            return Num::Int(i);
        }
        let f = value::as_f64(n).unwrap_or(f64::NAN);
        if f.fract() == 0.0 && f.abs() < EXACT_F64 {
            Num::Int(f as i64)
        } else {
            Num::Float(f)
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn add(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a
                .checked_add(b)
                .map_or(Num::Float(a as f64 + b as f64), Num::Int),
            (a, b) => Num::Float(a.as_f64() + b.as_f64()),
        }
    }

    fn less(self, other: Num) -> bool {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a < b,
            (a, b) => a.as_f64() < b.as_f64(),
        }
    }

    fn to_val(self) -> Value {
        match self {
            Num::Int(i) => value::int(i),
            Num::Float(f) => value::float(f),
        }
    }
}

/// The accumulator of one group.
#[derive(Debug, Clone)]
pub struct Acc {
    count: u64,
    fields: Vec<FieldAcc>,
    first_pos: Option<Arc<Position>>,
}

impl Acc {
    /// How many records the group absorbed.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The position of the group's first record (a placeholder for a group
    /// that absorbed nothing).
    pub fn first_pos(&self) -> Arc<Position> {
        self.first_pos.clone().unwrap_or_else(|| {
            Arc::new(Position {
                input: "aggregate".into(),
                file: None,
                line: 0,
            })
        })
    }
}

#[derive(Debug, Clone)]
enum FieldAcc {
    Count,
    Sum(Option<Num>),
    Min(Option<Num>),
    Max(Option<Num>),
    Avg(Option<Num>, u64),
    Collect(Vec<Value>),
}

impl Aggregator {
    /// The engine window to aggregate with.
    pub fn window(&self) -> weir::Window {
        self.window
    }

    /// Evaluates the group key and every field's expression on `r`.
    ///
    /// # Errors
    /// `jq_error` (an expression failed), `jq_limit` (it went over a
    /// limit), `missing_key` (`group_by` gave no
    /// output) or `aggregate_type` (a `sum`/`min`/`max`/`avg` expression
    /// gave something other than a number), naming the field.
    pub fn extract(&self, r: &Record) -> Result<Extracted, ProcessError> {
        // The record's budget and its conversion to jq's value type are made
        // only if some expression needs them: plain paths (`.user`,
        // `.cents`) read the JSON directly.
        let mut budget = RecordBudget::new(&self.limits, r);
        let key = self
            .group_by
            .record_first(r, &mut budget)
            .map_err(|e| e.context("group_by"))?
            .ok_or_else(|| {
                ProcessError::new(
                    "missing_key",
                    format!("group_by `{}` gave no value", self.group_by.source()),
                )
            })?;
        let mut values = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            let Some(expr) = &f.expr else {
                values.push(None);
                continue;
            };
            let field_err = |e: super::jq::JqError| e.context(&format!("field '{}'", f.name));
            let v = if f.kind == Kind::Collect {
                Some(Extract::Values(
                    expr.record_run(r, &mut budget).map_err(field_err)?,
                ))
            } else {
                let first = expr.record_first(r, &mut budget).map_err(field_err)?;
                match first {
                    None => None,
                    Some(n @ Value::Num(_)) => Some(Extract::Num(Num::from_val(&n))),
                    Some(other) => {
                        return Err(ProcessError::new(
                            "aggregate_type",
                            format!(
                                "field '{}': `{}` gave {}, not a number",
                                f.name,
                                expr.source(),
                                short(&other)
                            ),
                        ));
                    }
                }
            };
            values.push(v);
        }
        Ok(Extracted {
            key: GroupKey::new(key),
            values,
            pos: r.pos.clone(),
        })
    }

    /// A new group's accumulator.
    pub fn init(&self) -> Acc {
        Acc {
            count: 0,
            fields: self
                .fields
                .iter()
                .map(|f| match f.kind {
                    Kind::Count => FieldAcc::Count,
                    Kind::Sum => FieldAcc::Sum(None),
                    Kind::Min => FieldAcc::Min(None),
                    Kind::Max => FieldAcc::Max(None),
                    Kind::Avg => FieldAcc::Avg(None, 0),
                    Kind::Collect => FieldAcc::Collect(Vec::new()),
                })
                .collect(),
            first_pos: None,
        }
    }

    /// Adds one extracted record to a group.
    pub fn fold(&self, acc: &mut Acc, e: Extracted) {
        acc.count += 1;
        if acc.first_pos.is_none() {
            acc.first_pos = Some(e.pos);
        }
        for (fa, v) in acc.fields.iter_mut().zip(e.values) {
            match (fa, v) {
                (FieldAcc::Sum(s), Some(Extract::Num(n))) => {
                    *s = Some(s.map_or(n, |s| s.add(n)));
                }
                (FieldAcc::Min(m), Some(Extract::Num(n))) if m.is_none_or(|m| n.less(m)) => {
                    *m = Some(n);
                }
                (FieldAcc::Max(m), Some(Extract::Num(n))) if m.is_none_or(|m| m.less(n)) => {
                    *m = Some(n);
                }
                (FieldAcc::Avg(s, k), Some(Extract::Num(n))) => {
                    *s = Some(s.map_or(n, |s| s.add(n)));
                    *k += 1;
                }
                (FieldAcc::Collect(all), Some(Extract::Values(vs))) => all.extend(vs),
                _ => {}
            }
        }
    }

    /// The output record of a group: `{"key": <key>, <field>: <value>, ...}`
    /// at `pos` (typically [`Acc::first_pos`]). A `sum` with no values is
    /// 0; `min`, `max` and `avg` with no values are `null`.
    pub fn finish(&self, key: &GroupKey, acc: Acc, pos: Arc<Position>) -> Record {
        let mut out =
            value::Map::with_capacity_and_hasher(self.fields.len() + 1, Default::default());
        out.insert(value::string("key"), key.value().clone());
        for (f, fa) in self.fields.iter().zip(acc.fields) {
            let v = match fa {
                FieldAcc::Count => Value::Num(value::Num::from_integral(acc.count)),
                FieldAcc::Sum(s) => s.map_or(value::int(0), Num::to_val),
                FieldAcc::Min(m) | FieldAcc::Max(m) => m.map_or(Value::Null, Num::to_val),
                FieldAcc::Avg(s, k) => match s {
                    Some(s) if k > 0 => Num::Float(s.as_f64() / k as f64).to_val(),
                    _ => Value::Null,
                },
                FieldAcc::Collect(all) => Value::Arr(all.into()),
            };
            out.insert(value::string(f.name.as_str()), v);
        }
        Record::new(Value::obj(out), pos)
    }
}

/// A value for an error message, cut to a readable length.
fn short(v: &Value) -> String {
    let text = value::to_text(v);
    if text.chars().count() > 40 {
        let cut: String = text.chars().take(40).collect();
        format!("{cut}...")
    } else {
        text
    }
}

impl crate::registry::Documented for AggregateConfig {
    const EXAMPLE: &'static str = EXAMPLE;
}

impl crate::registry::ProcessorComponent for AggregateConfig {
    fn scope(&self) -> crate::registry::Scope {
        crate::registry::Scope::Windowed
    }

    fn build(&self, ctx: &ProcessorContext) -> Result<crate::registry::Stage, ConfigError> {
        Ok(crate::registry::Stage::Aggregate(std::sync::Arc::new(
            AggregateConfig::build(self, ctx)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pos() -> Arc<Position> {
        Arc::new(Position {
            input: "t".into(),
            file: None,
            line: 1,
        })
    }

    /// Keys are equal exactly when their JSON texts are, whichever
    /// representation holds them.
    #[test]
    fn group_keys_are_equal_when_their_json_is() {
        use std::collections::hash_map::DefaultHasher;
        let key = |v: serde_json::Value| GroupKey::new(value::from_json(&v));
        let hash = |k: &GroupKey| {
            let mut h = DefaultHasher::new();
            k.hash(&mut h);
            h.finish()
        };
        let values = [
            json!("a"),
            json!("1"),
            json!(1),
            json!(1.5),
            json!(null),
            json!(["a"]),
            json!({"a": 1}),
            json!(""),
            json!("\"a\""),
        ];
        for a in &values {
            for b in &values {
                let (ka, kb) = (key(a.clone()), key(b.clone()));
                let text = |v: &serde_json::Value| v.to_string();
                let same_text = text(a) == text(b);
                assert_eq!(ka == kb, same_text, "{a} vs {b}");
                if same_text {
                    assert_eq!(hash(&ka), hash(&kb), "{a}");
                }
            }
            assert_eq!(value::to_json(key(a.clone()).value()), *a);
        }
    }

    #[test]
    fn example_parses_and_builds() {
        let cfg: AggregateConfig = serde_saphyr::from_str(EXAMPLE).unwrap();
        let names: Vec<_> = cfg.fields.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["orders", "revenue", "largest"]);
        let agg = cfg.build(&ProcessorContext::default()).unwrap();
        assert_eq!(agg.window(), weir::Window::All);
        let mut acc = agg.init();
        for c in [5, 7] {
            let r = Record::from_json(&json!({"region": "eu", "cents": c}), pos());
            agg.fold(&mut acc, agg.extract(&r).unwrap());
        }
        let out = agg.finish(&GroupKey::new(value::string("eu")), acc, pos());
        assert_eq!(
            out.json(),
            json!({"key": "eu", "orders": 2, "revenue": 12, "largest": 7})
        );
    }

    #[test]
    fn sums_overflow_to_float() {
        let a = Num::Int(i64::MAX).add(Num::Int(1));
        assert_eq!(a, Num::Float(i64::MAX as f64 + 1.0));
        assert_eq!(Num::from_val(&value::float(3.0)), Num::Int(3));
        assert_eq!(Num::Int(2).add(Num::Float(0.5)), Num::Float(2.5));
    }
}
