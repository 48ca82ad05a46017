//! B4's rules as typed Rust: what the typed and baseline variants run, and
//! what `examples/pipelines/b4.yaml` must agree with (the test
//! `b4_rules_agree` in `tests/cli/b4.rs` includes this file and feeds
//! hand-written edge cases through both).
//!
//! A line is checked in this order:
//!
//! * `parse_error`: not a JSON object of the event shape. The shape: `id`
//!   and `ts` are integers in `0..2^64` (an integral float such as `5.0`
//!   counts, as JSON numbers do), `user` and `kind` strings, `amount` a
//!   number, `tags` an array of strings; each may be absent or null. A key
//!   given twice counts once, with its last value (as jq reads objects);
//!   other keys are ignored.
//! * `missing_field`: one of id, user, ts, kind, amount absent or null.
//! * `negative_amount`: amount < 0.
//!
//! A valid event gets `kind` lowercased and `cents = round(amount * 100)`
//! (f64 rounding half away from zero).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A valid, transformed event.
#[allow(dead_code)] // id, ts and kind are carried, not aggregated.
pub struct Clean {
    pub id: u64,
    /// Shared, so that the aggregate's key clones are reference counts,
    /// not allocations.
    pub user: Arc<str>,
    pub ts: u64,
    pub kind: String,
    pub cents: i64,
}

/// Why a line is rejected; the `Display` text is the dead-letter reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    ParseError,
    MissingField,
    NegativeAmount,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reject::ParseError => "parse_error",
            Reject::MissingField => "missing_field",
            Reject::NegativeAmount => "negative_amount",
        })
    }
}

impl std::error::Error for Reject {}

/// One field's value as read, before its type is checked: checking after
/// the whole object is read is what makes a repeated key count with its
/// last value only. Strings borrow from the line when they have no escapes.
enum Field<'a> {
    Null,
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    /// An array, and whether all its elements are strings.
    Array(bool),
    Other,
}

impl<'a> Field<'a> {
    fn count(&self) -> Result<Option<u64>, Reject> {
        match *self {
            Field::Null => Ok(None),
            Field::Uint(u) => Ok(Some(u)),
            Field::Float(f) if f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0 => {
                Ok(Some(f as u64))
            }
            _ => Err(Reject::ParseError),
        }
    }

    fn text(self) -> Result<Option<Cow<'a, str>>, Reject> {
        match self {
            Field::Null => Ok(None),
            Field::Str(s) => Ok(Some(s)),
            _ => Err(Reject::ParseError),
        }
    }

    fn number(&self) -> Result<Option<f64>, Reject> {
        match *self {
            Field::Null => Ok(None),
            Field::Uint(u) => Ok(Some(u as f64)),
            Field::Int(i) => Ok(Some(i as f64)),
            Field::Float(f) => Ok(Some(f)),
            _ => Err(Reject::ParseError),
        }
    }

    fn tags(&self) -> Result<(), Reject> {
        match self {
            Field::Null | Field::Array(true) => Ok(()),
            _ => Err(Reject::ParseError),
        }
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }
    fn visit_none<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Field<'de>, E> {
        Ok(Field::Other)
    }
    fn visit_u64<E>(self, v: u64) -> Result<Field<'de>, E> {
        Ok(Field::Uint(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Field<'de>, E> {
        Ok(if v >= 0 {
            Field::Uint(v as u64)
        } else {
            Field::Int(v)
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Field<'de>, E> {
        Ok(Field::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'de>, A::Error> {
        let mut all_strings = true;
        while let Some(x) = seq.next_element::<Field<'de>>()? {
            all_strings &= matches!(x, Field::Str(_));
        }
        Ok(Field::Array(all_strings))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }
}

/// The event's fields as read (last value of each key), or `None` when the
/// line is JSON but not an object.
#[derive(Default)]
struct Event<'a> {
    id: Option<Field<'a>>,
    user: Option<Field<'a>>,
    ts: Option<Field<'a>>,
    kind: Option<Field<'a>>,
    amount: Option<Field<'a>>,
    tags: Option<Field<'a>>,
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Field::deserialize(d)? {
            Field::Str(s) => Ok(Key(s)),
            _ => Err(de::Error::custom("object keys are strings")),
        }
    }
}

impl<'de> Deserialize<'de> for Event<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EventVisitor;
        impl<'de> Visitor<'de> for EventVisitor {
            type Value = Event<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event<'de>, A::Error> {
                let mut e = Event::default();
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let slot = match k.as_ref() {
                        "id" => &mut e.id,
                        "user" => &mut e.user,
                        "ts" => &mut e.ts,
                        "kind" => &mut e.kind,
                        "amount" => &mut e.amount,
                        "tags" => &mut e.tags,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<Field<'de>>()?);
                }
                Ok(e)
            }
        }
        d.deserialize_map(EventVisitor)
    }
}

fn field(f: Option<Field<'_>>) -> Field<'_> {
    f.unwrap_or(Field::Null)
}

/// Parse, check (in the order above), transform.
pub fn decode(line: &str) -> Result<Clean, Reject> {
    let e: Event<'_> = serde_json::from_str(line).map_err(|_| Reject::ParseError)?;
    let id = field(e.id).count()?;
    let ts = field(e.ts).count()?;
    let user = field(e.user).text()?;
    let kind = field(e.kind).text()?;
    let amount = field(e.amount).number()?;
    field(e.tags).tags()?;
    let (Some(id), Some(user), Some(ts), Some(kind), Some(amount)) = (id, user, ts, kind, amount)
    else {
        return Err(Reject::MissingField);
    };
    if amount < 0.0 {
        return Err(Reject::NegativeAmount);
    }
    Ok(Clean {
        id,
        user: Arc::from(user.as_ref()),
        ts,
        kind: kind.to_ascii_lowercase(),
        // f64::round rounds half away from zero.
        cents: (amount * 100.0).round() as i64,
    })
}
