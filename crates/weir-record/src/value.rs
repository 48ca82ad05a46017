//! The value inside a [`Record`](crate::Record): jq's own value type.
//!
//! Records hold [`Val`] (jaq's value, with its `sync` feature: strings are
//! reference-counted bytes, arrays and objects `Arc`s), so a jq stage runs
//! on a record as it is and its outputs become records as they are: no
//! conversion in or out, and a field a program passes through is shared,
//! not copied. Before this, records were `serde_json::Value` and every jq
//! evaluation converted the whole record in and every output back, which
//! was most of the YAML path's CPU (see BENCHMARKS.md, issue 9).
//!
//! Records keep to JSON's data model, so that what a sink writes is what a
//! JSON reader expects and every stage sees the same values a JSON round
//! trip would give: strings are valid UTF-8 text strings, object keys are
//! strings, numbers are machine integers, integers up to `u64::MAX`, or
//! finite floats. Values read from input are so by construction
//! ([`parse`]); a jq output is brought into it by [`canonical`] (jq can
//! make byte strings, non-string keys, `nan`, decimal literals).
//!
//! Text is read and written through serde_json (its parser, its number
//! formats, its recursion limit of 128), so JSON in and out is exactly what
//! it was with `serde_json::Value`.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

pub use jaq_json::{Map, Num, Val};

/// A value nests arrays and objects deeper than [`MAX_DEPTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep;

/// How deep a record's value may nest: what serde_json reads (its
/// recursion limit is 128), so every reader of weir's output accepts it.
pub const MAX_DEPTH: usize = 127;

/// A text string.
pub fn string(s: impl Into<String>) -> Val {
    Val::utf8_str(s.into().into_bytes())
}

/// An integer.
pub fn int(i: i64) -> Val {
    Val::Num(Num::from_integral(i))
}

/// A float; the non-finite ones have no JSON form and become `null`.
pub fn float(f: f64) -> Val {
    if f.is_finite() {
        Val::Num(Num::Float(f))
    } else {
        Val::Null
    }
}

/// An object of string keys, in the given order.
pub fn object<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Val)>) -> Val {
    Val::obj(pairs.into_iter().map(|(k, v)| (string(k), v)).collect())
}

/// Objects up to this many keys are searched key by key: cheaper than
/// hashing the key (records are mostly small objects; a profile of B4 had
/// 14% of its time in hashed lookups).
const SCAN: usize = 16;

/// `v[key]` when `v` is an object that has it.
pub fn get<'a>(v: &'a Val, key: &str) -> Option<&'a Val> {
    match v {
        Val::Obj(o) => field(o, key),
        _ => None,
    }
}

/// `o[key]` when the object has it.
pub fn field<'a>(o: &'a Map, key: &str) -> Option<&'a Val> {
    if o.len() <= SCAN {
        let key = key.as_bytes();
        o.iter()
            .find(|(k, _)| matches!(k, Val::TStr(s) | Val::BStr(s) if &***s == key))
            .map(|(_, x)| x)
    } else {
        o.get(&Key(key.as_bytes()))
    }
}

/// The text of a string.
pub fn as_str(v: &Val) -> Option<&str> {
    match v {
        Val::TStr(s) | Val::BStr(s) => std::str::from_utf8(s).ok(),
        _ => None,
    }
}

/// A string's bytes as text: borrowed when they are UTF-8 (records'
/// strings are), with replacement characters otherwise
/// (`from_utf8_lossy` is slower even on valid text).
pub fn text(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(t) => Cow::Borrowed(t),
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// The number as an `i64` when it is an integer that fits.
pub fn as_i64(v: &Val) -> Option<i64> {
    match v {
        Val::Num(n) => num_i64(n),
        _ => None,
    }
}

/// The number as a `u64` when it is a non-negative integer that fits.
pub fn as_u64(v: &Val) -> Option<u64> {
    match v {
        Val::Num(n) => num_u64(n),
        _ => None,
    }
}

/// The number as an `f64` (integers too).
pub fn as_f64(v: &Val) -> Option<f64> {
    match v {
        Val::Num(n) => num_f64(n),
        _ => None,
    }
}

/// [`as_i64`] of a number.
pub fn num_i64(n: &Num) -> Option<i64> {
    match n {
        Num::Int(i) => Some(*i as i64),
        Num::Float(_) => None,
        other => other.to_string().parse().ok(),
    }
}

/// [`as_u64`] of a number.
pub fn num_u64(n: &Num) -> Option<u64> {
    match n {
        Num::Int(i) => u64::try_from(*i).ok(),
        Num::Float(_) => None,
        other => other.to_string().parse().ok(),
    }
}

/// [`as_f64`] of a number.
pub fn num_f64(n: &Num) -> Option<f64> {
    match n {
        Num::Int(i) => Some(*i as f64),
        Num::Float(f) => Some(*f),
        other => other.to_string().parse().ok(),
    }
}

/// jq's truth: everything but `null` and `false`.
pub fn truthy(v: &Val) -> bool {
    !matches!(v, Val::Null | Val::Bool(false))
}

/// Parses one JSON text (serde_json's parser: its errors, number rules and
/// recursion limit).
///
/// # Errors
/// serde_json's error for text that is not one JSON value.
pub fn parse(text: &[u8]) -> Result<Val, serde_json::Error> {
    serde_json::from_slice(text)
}

/// The JSON text of a value, as serde_json writes it.
pub fn to_text(v: &Val) -> String {
    serde_json::to_string(&Json(v)).expect("a value always serializes")
}

/// Serializes a [`Val`] as JSON with serde (`serde_json::to_writer(w,
/// &Json(&v))`), numbers as serde_json writes them.
#[derive(Debug, Clone, Copy)]
pub struct Json<'a>(pub &'a Val);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Val::Null => s.serialize_unit(),
            Val::Bool(b) => s.serialize_bool(*b),
            Val::Num(Num::Int(i)) => s.serialize_i64(*i as i64),
            Val::Num(Num::Float(f)) => s.serialize_f64(*f),
            Val::Num(n) => {
                let text = n.to_string();
                if let Ok(u) = text.parse::<u64>() {
                    s.serialize_u64(u)
                } else if let Ok(i) = text.parse::<i64>() {
                    s.serialize_i64(i)
                } else {
                    s.serialize_f64(text.parse().unwrap_or(f64::NAN))
                }
            }
            Val::TStr(b) | Val::BStr(b) => s.serialize_str(&text(b)),
            Val::Arr(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a.iter() {
                    seq.serialize_element(&Json(x))?;
                }
                seq.end()
            }
            Val::Obj(o) => {
                let mut map = s.serialize_map(Some(o.len()))?;
                for (k, v) in o.iter() {
                    match k {
                        Val::TStr(_) | Val::BStr(_) => map.serialize_entry(&Json(k), &Json(v))?,
                        other => map.serialize_entry(&other.to_string(), &Json(v))?,
                    }
                }
                map.end()
            }
        }
    }
}

/// A `serde_json::Value` of the same JSON (for components that take one:
/// JSON Schema validation, dead-letter envelopes, tests).
pub fn to_json(v: &Val) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(Num::Int(i)) => Value::from(*i as i64),
        Val::Num(Num::Float(f)) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        Val::Num(_) => serde_json::to_value(Json(v)).expect("a number always converts"),
        Val::TStr(s) | Val::BStr(s) => Value::String(text(s).into_owned()),
        Val::Arr(a) => Value::Array(a.iter().map(to_json).collect()),
        Val::Obj(o) => {
            let mut m = serde_json::Map::with_capacity(o.len());
            for (k, x) in o.iter() {
                let key = match k {
                    Val::TStr(s) | Val::BStr(s) => text(s).into_owned(),
                    other => other.to_string(),
                };
                m.insert(key, to_json(x));
            }
            Value::Object(m)
        }
    }
}

/// The [`Val`] of a `serde_json::Value`.
pub fn from_json(v: &Value) -> Val {
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
        Value::String(s) => string(s.as_str()),
        Value::Array(a) => Val::Arr(jaq_json::Rc::new(a.iter().map(from_json).collect())),
        Value::Object(o) => Val::obj(
            o.iter()
                .map(|(k, v)| (string(k.as_str()), from_json(v)))
                .collect(),
        ),
    }
}

/// Brings a jq output into JSON's data model (see the module docs) and
/// refuses one nested deeper than [`MAX_DEPTH`]. A value already in it
/// (the common case) is returned as it is, after one walk.
///
/// # Errors
/// [`TooDeep`] when the value nests too deep.
pub fn canonical(v: Val) -> Result<Val, TooDeep> {
    if is_canonical(&v, 0)? {
        Ok(v)
    } else {
        Ok(rebuild(&v))
    }
}

fn is_canonical(v: &Val, depth: usize) -> Result<bool, TooDeep> {
    let inner = || {
        if depth >= MAX_DEPTH {
            Err(TooDeep)
        } else {
            Ok(depth + 1)
        }
    };
    Ok(match v {
        Val::Null | Val::Bool(_) | Val::Num(Num::Int(_)) => true,
        Val::Num(Num::Float(f)) => f.is_finite(),
        Val::Num(Num::BigInt(_) | Num::Dec(_)) => false,
        Val::BStr(_) => false,
        Val::TStr(s) => std::str::from_utf8(s).is_ok(),
        Val::Arr(a) => {
            let d = inner()?;
            let mut ok = true;
            for x in a.iter() {
                // Keep walking after a fix is known to be needed: the depth
                // limit must be checked everywhere.
                ok &= is_canonical(x, d)?;
            }
            ok
        }
        Val::Obj(o) => {
            let d = inner()?;
            let mut ok = true;
            for (k, x) in o.iter() {
                ok &= matches!(k, Val::TStr(s) if std::str::from_utf8(s).is_ok());
                ok &= is_canonical(x, d)?;
            }
            ok
        }
    })
}

fn rebuild(v: &Val) -> Val {
    match v {
        Val::Null | Val::Bool(_) | Val::Num(Num::Int(_)) => v.clone(),
        Val::Num(Num::Float(f)) => float(*f),
        Val::Num(n) => {
            let text = n.to_string();
            if let Ok(i) = text.parse::<i64>() {
                int(i)
            } else if let Ok(u) = text.parse::<u64>() {
                Val::Num(Num::from_integral(u))
            } else {
                float(text.parse().unwrap_or(f64::NAN))
            }
        }
        Val::TStr(s) | Val::BStr(s) => match std::str::from_utf8(s) {
            Ok(_) if matches!(v, Val::TStr(_)) => v.clone(),
            _ => string(String::from_utf8_lossy(s)),
        },
        Val::Arr(a) => Val::Arr(jaq_json::Rc::new(a.iter().map(rebuild).collect())),
        Val::Obj(o) => Val::obj(
            o.iter()
                .map(|(k, x)| {
                    let key = match k {
                        Val::TStr(_) | Val::BStr(_) => rebuild(k),
                        other => string(other.to_string()),
                    };
                    (key, rebuild(x))
                })
                .collect(),
        ),
    }
}

/// Looks up an object's string key without building a [`Val`] for it: it
/// hashes and compares as `Val::TStr` of the same bytes does.
struct Key<'a>(&'a [u8]);

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // `Val::hash` of a string: tag 5, then the bytes as a slice.
        state.write_u8(5);
        self.0.hash(state);
    }
}

impl indexmap::Equivalent<Val> for Key<'_> {
    fn equivalent(&self, key: &Val) -> bool {
        matches!(key, Val::TStr(s) | Val::BStr(s) if &***s == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_finds_string_keys_without_building_them() {
        let v = from_json(&json!({"a": 1, "bb": {"c": "x"}}));
        assert_eq!(get(&v, "a"), Some(&int(1)));
        assert_eq!(as_str(get(get(&v, "bb").unwrap(), "c").unwrap()), Some("x"));
        assert_eq!(get(&v, "zz"), None);
        assert_eq!(get(&int(1), "a"), None);
    }

    #[test]
    fn text_round_trips_as_serde_json_writes_it() {
        for text in [
            r#"{"a":1,"b":[true,null,1.5,-2],"c":"é\n\"","d":18446744073709551615,"e":1e300}"#,
            r#"[1.0,0.1,-0.0,123456789012]"#,
            r#""\u0000\u001f""#,
            r#"{"z":1,"a":2}"#,
        ] {
            let ours = to_text(&parse(text.as_bytes()).unwrap());
            let theirs = serde_json::to_string(&serde_json::from_str::<Value>(text).unwrap());
            assert_eq!(ours, theirs.unwrap(), "{text}");
        }
    }

    #[test]
    fn to_json_is_what_serde_makes() {
        for text in [
            r#"{"a":1,"b":[true,null,1.5,-2],"c":"é","d":18446744073709551615,"e":{"f":[]}}"#,
            r#"[0.1,-0.0,1e300]"#,
        ] {
            let v = parse(text.as_bytes()).unwrap();
            assert_eq!(
                to_json(&v),
                serde_json::to_value(Json(&v)).unwrap(),
                "{text}"
            );
        }
        // Lookups in objects past the scanning size hash the key.
        let big = object((0..40).map(|i| (format!("k{i}"), int(i))));
        assert_eq!(get(&big, "k33"), Some(&int(33)));
        assert_eq!(get(&big, "k40"), None);
    }

    #[test]
    fn canonical_fixes_what_jq_can_make() {
        let odd = Val::obj(
            [
                (int(1), Val::byte_str(vec![0xff, b'a'])),
                (string("n"), Val::Num(Num::Float(f64::NAN))),
                (
                    string("d"),
                    Val::Num(Num::Dec(jaq_json::Rc::new("1.50".into()))),
                ),
            ]
            .into_iter()
            .collect(),
        );
        let fixed = canonical(odd).unwrap();
        assert_eq!(
            to_json(&fixed),
            json!({"1": "\u{fffd}a", "n": null, "d": 1.5})
        );
        let mut deep = Val::Null;
        for _ in 0..200 {
            deep = Val::Arr(jaq_json::Rc::new(vec![deep]));
        }
        assert_eq!(canonical(deep).unwrap_err(), TooDeep);
    }
}
