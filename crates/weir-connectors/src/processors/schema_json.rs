//! `validate` reads records where they are: jsonschema's [`Json`] traits
//! implemented for jaq's [`Val`], so a record is checked without first
//! being copied into a `serde_json::Value` (that copy was a fifth of the
//! main job's CPU; BENCHMARKS.md, issue 9).
//!
//! Records are in JSON's data model (see [`value`](crate::value)): strings
//! are UTF-8 text, keys strings, numbers integers (up to `u64::MAX`) or
//! finite floats, which is all the traits need to answer.

use std::borrow::Cow;

use jaq_json::{Map, Num, Val};
use jsonschema::JsonType;
use jsonschema::json::{Array, Json, JsonNumber, Node, NodeIdentity, Object};
use serde_json::Value;

use crate::value;

/// The record representation for jsonschema.
#[derive(Debug)]
pub struct ValJson;

impl Json for ValJson {
    type Node<'a> = &'a Val;
    type PreparedKey = String;
    type StringBuffer = Val;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>(buffer: &mut Val, string: &str, f: impl FnOnce(&Val) -> T) -> T {
        *buffer = value::string(string);
        f(buffer)
    }
}

/// A number of a record.
pub struct ValNumber<'a>(&'a Num);

impl JsonNumber for ValNumber<'_> {
    fn as_u64(&self) -> Option<u64> {
        value::num_u64(self.0)
    }

    fn as_i64(&self) -> Option<i64> {
        value::num_i64(self.0)
    }

    fn as_f64(&self) -> Option<f64> {
        value::num_f64(self.0)
    }

    fn as_str(&self) -> Cow<'_, str> {
        Cow::Owned(self.to_number().to_string())
    }

    fn to_number(&self) -> Cow<'_, serde_json::Number> {
        let n = match self.0 {
            Num::Int(i) => serde_json::Number::from(*i as i64),
            Num::Float(f) => serde_json::Number::from_f64(*f).unwrap_or_else(|| 0.into()),
            other => match value::to_json(&Val::Num(other.clone())) {
                Value::Number(n) => n,
                _ => 0.into(),
            },
        };
        Cow::Owned(n)
    }

    fn is_written_as_integer(&self) -> bool {
        // Records keep no literal: integers are integers.
        matches!(self.0, Num::Int(_) | Num::BigInt(_))
    }
}

impl<'a> Node<'a, ValJson> for &'a Val {
    type Object = &'a Map;
    type Array = &'a [Val];
    type Number = ValNumber<'a>;

    fn as_object(&self) -> Option<&'a Map> {
        match self {
            Val::Obj(o) => Some(o),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&'a [Val]> {
        match self {
            Val::Arr(a) => Some(a.as_slice()),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self {
            Val::TStr(s) | Val::BStr(s) => Some(value::text(s)),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<ValNumber<'a>> {
        match self {
            Val::Num(n) => Some(ValNumber(n)),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    fn json_type(&self) -> JsonType {
        match self {
            Val::Null => JsonType::Null,
            Val::Bool(_) => JsonType::Boolean,
            Val::Num(_) => JsonType::Number,
            Val::TStr(_) | Val::BStr(_) => JsonType::String,
            Val::Arr(_) => JsonType::Array,
            Val::Obj(_) => JsonType::Object,
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(value::to_json(self))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(std::ptr::from_ref::<Val>(*self) as usize))
    }
}

impl<'a> Object<'a, ValJson> for &'a Map {
    type Node = &'a Val;
    type MemberName = Cow<'a, str>;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        Map::len(self)
    }

    fn get(&self, key: &String) -> Option<&'a Val> {
        value::field(self, key)
    }

    fn members(&self) -> Members<'a> {
        Members(self.iter())
    }
}

/// An object's members, keys as text.
pub struct Members<'a>(indexmap::map::Iter<'a, Val, Val>);

impl<'a> Iterator for Members<'a> {
    type Item = (Cow<'a, str>, &'a Val);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| {
            let name = match k {
                Val::TStr(s) | Val::BStr(s) => value::text(s),
                other => Cow::Owned(other.to_string()),
            };
            (name, v)
        })
    }
}

impl<'a> Array<'a, ValJson> for &'a [Val] {
    type Node = &'a Val;
    type ElementsIter = std::slice::Iter<'a, Val>;

    fn len(&self) -> usize {
        <[Val]>::len(self)
    }

    fn elements(&self) -> std::slice::Iter<'a, Val> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn meets_the_accessor_contract() {
        let doc = value::from_json(&jsonschema::json::conformance::document());
        jsonschema::json::conformance::assert_conformance::<ValJson>(&&doc);
    }

    /// A schema using most keywords, `format` included.
    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["a"],
            "additionalProperties": false,
            "propertyNames": {"maxLength": 2},
            "properties": {
                "a": {"type": "integer", "minimum": -3, "exclusiveMaximum": 18446744073709551615u64},
                "b": {"type": ["string", "null"], "pattern": "^x", "minLength": 1},
                "c": {"enum": [1, "one", [1], {"k": 1}, null]},
                "d": {"type": "array", "maxItems": 3, "uniqueItems": true,
                      "items": {"type": "number", "multipleOf": 0.5}},
                "e": {"type": "string", "format": "date-time"},
                "f": {"const": {"k": [1, 2.0]}},
                "g": {"anyOf": [{"type": "boolean"}, {"type": "object", "minProperties": 1}]},
                "hh": {"not": {"type": "string"}}
            }
        })
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
            (-5i64..5).prop_map(|i| json!(i)),
            Just(json!(18446744073709551615u64)),
            Just(json!(2.0)),
            Just(json!(1.5)),
            Just(json!(-0.25)),
            Just(json!("x1")),
            Just(json!("one")),
            Just(json!("2026-11-30T10:00:00Z")),
            Just(json!("not a date")),
            Just(json!("")),
        ];
        leaf.prop_recursive(2, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-hk]{1,3}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn record() -> impl Strategy<Value = Value> {
        prop::collection::vec(
            (
                prop_oneof![
                    Just("a"),
                    Just("b"),
                    Just("c"),
                    Just("d"),
                    Just("e"),
                    Just("f"),
                    Just("g"),
                    Just("hh"),
                    Just("long")
                ],
                json_value(),
            ),
            0..6,
        )
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Validating a record in place says what validating its
        /// `serde_json::Value` says, error messages included.
        #[test]
        fn in_place_validation_agrees_with_serde_json(r in record()) {
            let s = schema();
            let serde = jsonschema::options()
                .should_validate_formats(true)
                .build(&s)
                .unwrap();
            let ours = jsonschema::options_for::<ValJson>()
                .should_validate_formats(true)
                .build(&s)
                .unwrap();
            let v = value::from_json(&r);
            prop_assert_eq!(ours.is_valid(&v), serde.is_valid(&r));
            let msgs = |it: jsonschema::ErrorIterator<'_>| {
                it.map(|e| format!("{}: {e}", e.instance_path())).collect::<Vec<_>>()
            };
            prop_assert_eq!(msgs(ours.iter_errors(&v)), msgs(serde.iter_errors(&r)));
        }
    }
}
