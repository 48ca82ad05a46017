//! The JSON of a dead letter, as the dead-letter file and the broker's
//! dead-letter stream both write it.

use serde_json::{Map, Value};

use crate::raw::{Raw, csv_line};
use crate::record::{Position, Record};

/// The JSON object for one dead letter.
pub fn letter_json(d: &weir::DeadLetter) -> Value {
    let (pos, record, raw): (Option<&Position>, Value, Value) = if let Some(r) = d.item::<Record>()
    {
        (Some(&r.pos), r.json(), Value::Null)
    } else if let Some(raw) = d.item::<Raw>() {
        match raw {
            Raw::Line { pos, text }
            | Raw::NotUtf8 { pos, text, .. }
            | Raw::Refused { pos, text, .. } => {
                (Some(pos), Value::Null, Value::String(text.clone()))
            }
            Raw::Row { pos, fields, .. } => {
                (Some(pos), Value::Null, Value::String(csv_line(fields)))
            }
            Raw::Record(r) => (Some(&r.pos), r.json(), Value::Null),
        }
    } else {
        (None, Value::Null, Value::Null)
    };
    let mut m = Map::with_capacity(7);
    m.insert("stage".into(), Value::String(d.stage.clone()));
    m.insert("error".into(), Value::String(d.error.clone()));
    m.insert("attempts".into(), Value::from(d.attempts));
    m.insert(
        "position".into(),
        pos.map_or(Value::Null, |p| Value::String(p.to_string())),
    );
    m.insert(
        "input".into(),
        pos.map_or(Value::Null, |p| Value::String(p.input.to_string())),
    );
    m.insert("record".into(), record);
    m.insert("raw".into(), raw);
    Value::Object(m)
}
