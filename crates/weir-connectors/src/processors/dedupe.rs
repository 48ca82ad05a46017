//! `dedupe`: drop records whose key was already seen.
//!
//! The key is a jq expression; what is remembered is a 64-bit hash of the
//! key's canonical form, in a set bounded by `capacity` keys (first in,
//! first out). This is a stateful processor: its set is shared by all the
//! stage's workers behind a mutex.

use std::collections::{HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use crate::value::{self, Val as Value};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::jq::{EnvConfig, JqError, JqProgram, RecordBudget, StageLimits};
use super::{Processor, ProcessorContext};
use crate::error::{ConfigError, ProcessError};
use crate::limits::LimitsConfig;
use crate::record::Record;

fn default_capacity() -> usize {
    1_000_000
}

/// Drop (filter) the records whose key was already seen.
///
/// Memory is bounded: the last `capacity` distinct keys are remembered (the
/// oldest is forgotten first), about 40 bytes each, so a duplicate that
/// comes more than `capacity` distinct keys after its original is not
/// caught. Keys are remembered as 64-bit hashes of their canonical JSON
/// (object keys sorted, `1.0` equal to `1`): two different keys collide
/// with probability about n²/2⁶⁵ for n keys held (3·10⁻⁸ for a million),
/// and a collision drops a record that is not a duplicate.
///
/// With several workers, which of two duplicates is kept depends on which
/// worker gets there first; use `workers: 1` when the first one in input
/// order must win. A runtime error in `key` rejects the record with reason
/// `jq_error`, a record over one of the `limits` with `jq_limit`; a `null`
/// key or no output rejects it with `missing_key`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// A jq expression giving the key that identifies a record, for example
    /// `.id` or `[.customer, .order_id]`.
    #[schemars(with = "String")]
    pub key: Spanned<String>,
    /// How many distinct keys to remember (default 1000000, about 40 MB).
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// Per-record limits of the key's evaluation (`max_outputs`,
    /// `timeout_ms`; see `weir explain jq`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The environment variables the key may read with `env` or `$ENV`
    /// (default: none; see `weir explain jq`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub env: EnvConfig,
}

/// A minimal `dedupe` configuration.
pub const EXAMPLE: &str = "key: .id\ncapacity: 100000\n";

impl DedupeConfig {
    /// Compiles the key expression.
    ///
    /// # Errors
    /// The key does not compile, or `capacity` or a limit is 0.
    pub fn build(&self, ctx: &ProcessorContext) -> Result<Dedupe, ConfigError> {
        let key = JqProgram::compile_spanned(&self.key, "key", &self.env)?;
        if self.capacity == 0 {
            return Err(ConfigError::new("dedupe capacity must be at least 1"));
        }
        Ok(Dedupe {
            key,
            capacity: self.capacity,
            seen: Mutex::new(Seen::default()),
            limits: StageLimits::new(ctx, &self.limits)?,
        })
    }
}

#[derive(Debug, Default)]
struct Seen {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

/// The `dedupe` processor: see [`DedupeConfig`].
#[derive(Debug)]
pub struct Dedupe {
    key: JqProgram,
    capacity: usize,
    seen: Mutex<Seen>,
    limits: StageLimits,
}

impl Dedupe {
    /// Records `hash` as seen; `false` if it already was.
    fn insert(&self, hash: u64) -> bool {
        // A panic while holding the lock cannot leave the set inconsistent
        // in a way that matters (at worst one key is missing from `order`).
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.set.insert(hash) {
            return false;
        }
        seen.order.push_back(hash);
        if seen.order.len() > self.capacity
            && let Some(old) = seen.order.pop_front()
        {
            seen.set.remove(&old);
        }
        true
    }

    /// How many keys are remembered now.
    pub fn len(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.order.len())
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Processor for Dedupe {
    fn process(&self, record: &Record, out: &mut Vec<Record>) -> Result<(), ProcessError> {
        let mut budget = RecordBudget::new(&self.limits, record);
        let key = self
            .key
            .record_first(record, &mut budget)
            .map_err(JqError::into_process_error)?;
        let key = match key {
            None | Some(Value::Null) => {
                return Err(ProcessError::new(
                    "missing_key",
                    format!("key `{}` is null", self.key.source()),
                ));
            }
            Some(k) => k,
        };
        if self.insert(key_hash(&key)) {
            out.push(record.clone());
        }
        Ok(())
    }
}

/// A 64-bit hash of `v`'s canonical form: object keys in sorted order,
/// integral floats equal to integers.
pub fn key_hash(v: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    hash_canonical(v, &mut h);
    h.finish()
}

fn hash_canonical(v: &Value, h: &mut DefaultHasher) {
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => {
            1u8.hash(h);
            b.hash(h);
        }
        Value::Num(_) => {
            2u8.hash(h);
            if let Some(i) = value::as_i64(v) {
                i.hash(h);
            } else if let Some(u) = value::as_u64(v) {
                u.hash(h);
            } else {
                let f = value::as_f64(v).unwrap_or(0.0);
                if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
                    (f as i64).hash(h);
                } else {
                    f.to_bits().hash(h);
                }
            }
        }
        Value::TStr(_) | Value::BStr(_) => {
            3u8.hash(h);
            key_text(v).hash(h);
        }
        Value::Arr(a) => {
            4u8.hash(h);
            a.len().hash(h);
            for x in a.iter() {
                hash_canonical(x, h);
            }
        }
        Value::Obj(o) => {
            5u8.hash(h);
            o.len().hash(h);
            let mut entries: Vec<_> = o.iter().map(|(k, x)| (key_text(k), x)).collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (k, x) in entries {
                k.hash(h);
                hash_canonical(x, h);
            }
        }
    }
}

/// A string's text (records' strings are UTF-8; see [`value`]).
fn key_text(v: &Value) -> std::borrow::Cow<'_, str> {
    match v {
        Value::TStr(b) | Value::BStr(b) => value::text(b),
        other => value::to_text(other).into(),
    }
}

impl crate::registry::Documented for DedupeConfig {
    const EXAMPLE: &'static str = EXAMPLE;
}

impl crate::registry::ProcessorComponent for DedupeConfig {
    fn scope(&self) -> crate::registry::Scope {
        crate::registry::Scope::Keyed
    }

    fn build(&self, ctx: &ProcessorContext) -> Result<crate::registry::Stage, ConfigError> {
        Ok(crate::registry::Stage::Records(std::sync::Arc::new(
            DedupeConfig::build(self, ctx)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn example_parses_and_builds() {
        let cfg: DedupeConfig = serde_saphyr::from_str(EXAMPLE).unwrap();
        assert_eq!(cfg.capacity, 100_000);
        cfg.build(&ProcessorContext::default()).unwrap();
        let cfg: DedupeConfig = serde_saphyr::from_str("key: .id").unwrap();
        assert_eq!(cfg.capacity, 1_000_000);
    }

    #[test]
    fn canonical_hash() {
        assert_eq!(
            key_hash(&value::from_json(&json!({"a": 1, "b": [1.0, "x"]}))),
            key_hash(&value::from_json(&json!({"b": [1, "x"], "a": 1})))
        );
        assert_ne!(
            key_hash(&value::from_json(&json!("1"))),
            key_hash(&value::from_json(&json!(1)))
        );
        assert_ne!(
            key_hash(&value::from_json(&json!([[1], 2]))),
            key_hash(&value::from_json(&json!([1, [2]])))
        );
    }
}
