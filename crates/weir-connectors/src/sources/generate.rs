//! The `generate` source: synthetic records for tests, demos and
//! benchmarks, deterministic for a given seed.
//!
//! Either a `template` (a mapping whose string values may hold placeholders)
//! or a `preset` (`events`: the B4 benchmark lines of
//! [`events`](crate::sources::events), as jsonl text to decode).
//!
//! Placeholders, drawn in template order from one splitmix64 generator:
//!
//! | placeholder | value |
//! |---|---|
//! | `{{seq}}` | the record's 0-based index |
//! | `{{int:A..B}}` | a uniform integer in `[A, B)` |
//! | `{{float:A..B}}` | a uniform float in `[A, B)` |
//! | `{{choice:a\|b\|c}}` | one of the options, uniformly |
//!
//! A string that is exactly one placeholder becomes a JSON number for
//! `seq`, `int` and `float`; placeholders inside longer text are replaced by
//! their text.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::value::{self, Val};
use serde_saphyr::Spanned;

use crate::error::ConfigError;
use crate::record::{Position, Record};
use crate::sources::decode::Decoder;
use crate::sources::events::{SplitMix64, events};
use crate::sources::{BuildContext, Raw};

/// Ready-made generators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The B4 benchmark events: jsonl lines with `id`, `user`, `ts`, `kind`,
    /// `amount` and `tags`, about 1% of them invalid (truncated, missing a
    /// field, negative amount).
    Events,
}

/// `preset: events` users when `users` is not set.
const DEFAULT_USERS: u64 = 10_000;

/// The slowest `rate`: one record a day. Slower than that is almost surely
/// a typo (a rate in records per hour, say), and a pause far longer than
/// any run is indistinguishable from a hang.
pub const MIN_RATE: f64 = 1.0 / 86_400.0;

/// The fastest `rate`: one record a nanosecond, the resolution of the
/// pacing clock; above it a rate could not be kept, only ignored.
pub const MAX_RATE: f64 = 1e9;

/// Generates `count` synthetic records, from a template or a preset.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateSource {
    /// How many records to generate.
    pub count: u64,
    /// The random seed: the same seed gives the same records. Default: 0.
    #[serde(default)]
    pub seed: u64,
    /// Records per second, paced evenly: from one a day (1/86400, about
    /// 0.0000116) to 1e9. Default: as fast as possible.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub rate: Option<Spanned<f64>>,
    /// The record to generate: a mapping whose string values may contain
    /// `{{seq}}`, `{{int:A..B}}`, `{{float:A..B}}` and `{{choice:a|b|c}}`
    /// placeholders. Exactly one of `template` and `preset` is required.
    #[serde(default)]
    #[schemars(with = "Option<Map<String, Value>>")]
    pub template: Option<Spanned<Map<String, Value>>>,
    /// A ready-made generator instead of a template: `events` (the B4
    /// benchmark lines, decoded as jsonl).
    #[serde(default)]
    pub preset: Option<Preset>,
    /// `preset: events` only: the number of distinct users, at least 1.
    /// Default: 10000.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub users: Option<Spanned<u64>>,
}

impl GenerateSource {
    /// A minimal configuration.
    pub const EXAMPLE: &str = "count: 1000\nseed: 7\ntemplate:\n  id: \"{{seq}}\"\n  user: \"u{{int:0..100}}\"\n  amount: \"{{float:0..500}}\"\n  kind: \"{{choice:click|view|buy}}\"\n";

    /// The source and the decoder for its items (jsonl for `preset:
    /// events`, pass-through for a template).
    ///
    /// # Errors
    /// A [`ConfigError`] when neither or both of `template` and `preset` are
    /// set, when a placeholder is malformed, when `rate` is not between
    /// [`MIN_RATE`] and [`MAX_RATE`], or when `users` is 0 or set with a
    /// template; at the option's line when it has one.
    pub fn build(&self, ctx: &BuildContext) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        let pacer = match &self.rate {
            None => None,
            Some(r) => Some(Pacer::new(check_rate(r)?)),
        };
        let users = match &self.users {
            None => DEFAULT_USERS,
            Some(u) if self.template.is_some() => {
                return Err(ConfigError::at(
                    "generate source: 'users' applies to preset: events only",
                    u,
                ));
            }
            Some(u) if u.value == 0 => {
                return Err(ConfigError::at(
                    "generate source: users must be at least 1",
                    u,
                ));
            }
            Some(u) => u.value,
        };
        let input = ctx.input.clone();
        let pos = move |i: u64| {
            Arc::new(Position {
                input: input.clone(),
                file: None,
                line: i + 1,
            })
        };
        match (&self.template, self.preset) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "generate source: set either 'template' or 'preset', not both",
            )),
            (None, None) => Err(ConfigError::new(
                "generate source: set 'template' or 'preset'",
            )),
            (None, Some(Preset::Events)) => {
                let iter =
                    events(self.seed, self.count, users)
                        .enumerate()
                        .map(move |(i, text)| Raw::Line {
                            pos: pos(i as u64),
                            text,
                        });
                Ok((paced(iter, pacer), Decoder::jsonl()))
            }
            (Some(t), None) => {
                let template =
                    Template::compile(&t.value).map_err(|e| ConfigError::at(e.message, t))?;
                let mut rng = SplitMix64::new(self.seed);
                let iter = (0..self.count)
                    .map(move |i| Raw::Record(Record::new(template.render(i, &mut rng), pos(i))));
                Ok((paced(iter, pacer), Decoder::jsonl()))
            }
        }
    }
}

/// `rate` when it is a number of records per second that can be paced:
/// NaN, infinities, zero and negative rates, and rates outside
/// [`MIN_RATE`]..=[`MAX_RATE`] are errors at the option.
fn check_rate(rate: &Spanned<f64>) -> Result<f64, ConfigError> {
    let r = rate.value;
    if (MIN_RATE..=MAX_RATE).contains(&r) {
        return Ok(r);
    }
    // `{:?}` keeps `1e-300` short where `{}` writes out 300 digits.
    Err(ConfigError::at(
        format!(
            "generate source: rate must be between 1/86400 (one record a day) and 1e9 records per second, not {r:?}"
        ),
        rate,
    ))
}

/// Even pacing: item `k` is not released before `start + k / rate`, so a
/// slow consumer does not cause a burst later (no credit accumulates beyond
/// the schedule).
#[derive(Debug)]
struct Pacer {
    /// Nanoseconds between items: at least 1 and at most a day, by
    /// [`check_rate`].
    interval_ns: u128,
    start: Option<Instant>,
    n: u64,
}

impl Pacer {
    /// # Panics
    /// Never for a rate [`check_rate`] accepted.
    fn new(rate: f64) -> Self {
        Pacer {
            interval_ns: Duration::from_secs_f64(1.0 / rate).as_nanos().max(1),
            start: None,
            n: 0,
        }
    }

    /// Waits until the next item is due.
    ///
    /// # Cancel safety
    /// Dropped while waiting (the run stopping), it drops the item it was
    /// waiting for, which nothing has seen or counted yet.
    async fn wait(&mut self) {
        let start = *self.start.get_or_insert_with(Instant::now);
        // In u128 nanoseconds: `count` items a day apart overflow neither
        // this product nor, for any run that could finish, the instant.
        let offset = self.interval_ns.saturating_mul(u128::from(self.n));
        self.n = self.n.saturating_add(1);
        let offset = Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX));
        match start.checked_add(offset) {
            Some(due) => tokio::time::sleep_until(due.into()).await,
            // Centuries away: as good as never.
            None => std::future::pending().await,
        }
    }
}

/// The source over `iter`, paced when `pacer` is set. Paced, it is a
/// stream rather than an iterator: the engine fills a whole batch from an
/// iterator before it hands anything on or looks at cancellation, so at 10
/// records a second nothing would arrive for minutes and Ctrl-C would wait
/// for the batch; a stream hands each record on when it is due and stops
/// when the run is cancelled.
fn paced<T: Send + 'static>(
    iter: impl Iterator<Item = T> + Send + 'static,
    pacer: Option<Pacer>,
) -> weir::Source<T> {
    let Some(pacer) = pacer else {
        return weir::from_iter(iter);
    };
    weir::from_stream(futures::stream::unfold(
        (iter, pacer),
        |(mut iter, mut pacer)| async move {
            let item = iter.next()?;
            pacer.wait().await;
            Some((item, (iter, pacer)))
        },
    ))
}

/// One generator in a template.
#[derive(Debug, Clone)]
enum Gen {
    Seq,
    Int(i64, i64),
    Float(f64, f64),
    Choice(Vec<Val>),
}

impl Gen {
    fn parse(spec: &str) -> Result<Gen, String> {
        let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
        let range = |arg: &str| -> Result<(String, String), String> {
            let (a, b) = arg
                .split_once("..")
                .ok_or_else(|| format!("expected a range A..B, got '{arg}'"))?;
            Ok((a.trim().to_string(), b.trim().to_string()))
        };
        match kind.trim() {
            "seq" if arg.is_empty() => Ok(Gen::Seq),
            "int" => {
                let (a, b) = range(arg)?;
                let a: i64 = a.parse().map_err(|_| format!("'{a}' is not an integer"))?;
                let b: i64 = b.parse().map_err(|_| format!("'{b}' is not an integer"))?;
                if a >= b {
                    return Err(format!("empty range {a}..{b}"));
                }
                Ok(Gen::Int(a, b))
            }
            "float" => {
                let (a, b) = range(arg)?;
                let a: f64 = a.parse().map_err(|_| format!("'{a}' is not a number"))?;
                let b: f64 = b.parse().map_err(|_| format!("'{b}' is not a number"))?;
                // A finite width too: `a + u * (b - a)` with an infinite
                // width would always give `b`.
                if !(a.is_finite() && b.is_finite() && a < b && (b - a).is_finite()) {
                    return Err(format!("empty or infinite range {a:?}..{b:?}"));
                }
                Ok(Gen::Float(a, b))
            }
            "choice" => {
                let options: Vec<Val> = arg.split('|').map(value::string).collect();
                if arg.is_empty() {
                    return Err("choice needs options, like choice:a|b".into());
                }
                Ok(Gen::Choice(options))
            }
            other => Err(format!(
                "unknown placeholder '{other}' (expected seq, int:A..B, float:A..B or choice:a|b)"
            )),
        }
    }

    fn value(&self, seq: u64, rng: &mut SplitMix64) -> Val {
        match self {
            Gen::Seq => Val::Num(value::Num::from_integral(seq)),
            Gen::Int(a, b) => {
                let span = b.wrapping_sub(*a) as u64;
                value::int(a.wrapping_add((rng.next() % span) as i64))
            }
            Gen::Float(a, b) => {
                let x = a + rng.next_unit() * (b - a);
                // Finite by construction; fall back to `a` if rounding says not.
                let x = x.min(*b);
                value::float(if x.is_finite() { x } else { *a })
            }
            Gen::Choice(opts) => {
                let i = (rng.next() % opts.len() as u64) as usize;
                opts[i].clone()
            }
        }
    }
}

/// A piece of a template string.
#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Gen(Gen),
}

/// A compiled template: constants stay as they are, strings with
/// placeholders are split once.
#[derive(Debug, Clone)]
enum Template {
    Const(Val),
    Whole(Gen),
    Text(Vec<Part>),
    Array(Vec<Template>),
    Object(Vec<(Val, Template)>),
}

impl Template {
    fn compile(t: &Map<String, Value>) -> Result<Template, ConfigError> {
        Template::compile_value(&Value::Object(t.clone()), "template")
    }

    fn compile_value(v: &Value, at: &str) -> Result<Template, ConfigError> {
        Ok(match v {
            Value::String(s) => {
                let parts = split_placeholders(s)
                    .map_err(|e| ConfigError::new(format!("generate source: {at}: '{s}': {e}")))?;
                match parts.as_slice() {
                    [] => Template::Const(value::string("")),
                    [Part::Text(t)] => Template::Const(value::string(t.as_str())),
                    [Part::Gen(g)] => Template::Whole(g.clone()),
                    _ => Template::Text(parts),
                }
            }
            Value::Array(items) => Template::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| Template::compile_value(x, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(m) => Template::Object(
                m.iter()
                    .map(|(k, x)| {
                        Ok((
                            value::string(k.as_str()),
                            Template::compile_value(x, &format!("{at}.{k}"))?,
                        ))
                    })
                    .collect::<Result<_, ConfigError>>()?,
            ),
            other => Template::Const(value::from_json(other)),
        })
    }

    fn render(&self, seq: u64, rng: &mut SplitMix64) -> Val {
        match self {
            Template::Const(v) => v.clone(),
            Template::Whole(g) => g.value(seq, rng),
            Template::Text(parts) => {
                let mut s = String::new();
                for p in parts {
                    match p {
                        Part::Text(t) => s.push_str(t),
                        Part::Gen(g) => {
                            let v = g.value(seq, rng);
                            match value::as_str(&v) {
                                Some(t) => s.push_str(t),
                                None => s.push_str(&value::to_text(&v)),
                            }
                        }
                    }
                }
                value::string(s)
            }
            Template::Array(items) => Val::Arr(
                items
                    .iter()
                    .map(|t| t.render(seq, rng))
                    .collect::<Vec<_>>()
                    .into(),
            ),
            Template::Object(fields) => Val::obj(
                fields
                    .iter()
                    .map(|(k, t)| (k.clone(), t.render(seq, rng)))
                    .collect(),
            ),
        }
    }
}

/// Splits `s` into text and `{{...}}` placeholders.
fn split_placeholders(s: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| "unterminated placeholder: '{{' without '}}'".to_string())?;
        parts.push(Part::Gen(Gen::parse(&after[..close])?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

impl crate::registry::Documented for GenerateSource {
    const EXAMPLE: &'static str = GenerateSource::EXAMPLE;
}

impl crate::registry::SourceComponent for GenerateSource {
    fn build(
        &self,
        ctx: &BuildContext,
        _checkpoint: Option<Arc<crate::checkpoint::Checkpoint>>,
    ) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        GenerateSource::build(self, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> BuildContext {
        BuildContext {
            input: "gen".into(),
            base_dir: ".".into(),
            state: None,
        }
    }

    #[test]
    fn example_builds() {
        let cfg: GenerateSource = serde_saphyr::from_str(GenerateSource::EXAMPLE).unwrap();
        cfg.build(&ctx()).unwrap();
    }

    #[test]
    fn template_values() {
        let cfg: GenerateSource = serde_saphyr::from_str(GenerateSource::EXAMPLE).unwrap();
        let t = Template::compile(&cfg.template.as_ref().unwrap().value).unwrap();
        let mut rng = SplitMix64::new(7);
        for i in 0..200 {
            let v = value::to_json(&t.render(i, &mut rng));
            assert_eq!(v["id"], Value::from(i));
            let user = v["user"].as_str().unwrap();
            let n: i64 = user.strip_prefix('u').unwrap().parse().unwrap();
            assert!((0..100).contains(&n));
            let a = v["amount"].as_f64().unwrap();
            assert!((0.0..=500.0).contains(&a));
            assert!(["click", "view", "buy"].contains(&v["kind"].as_str().unwrap()));
        }
    }

    #[test]
    fn bad_placeholders() {
        for bad in [
            "{{int:5..3}}",
            "{{nope}}",
            "x{{seq",
            "{{float:a..b}}",
            "{{choice:}}",
            "{{float:-1e308..1e308}}",
        ] {
            let m: Map<String, Value> =
                serde_json::from_value(serde_json::json!({ "f": bad })).unwrap();
            let e = Template::compile(&m).unwrap_err();
            assert!(e.message.contains("template.f"), "{e}");
        }
    }
}
