//! `validate`: check each record against a JSON Schema.
//!
//! The schema (draft 2020-12, `format` checked) is compiled once when the
//! pipeline starts. A valid record passes unchanged; an invalid one is
//! rejected with reason `schema` and a detail listing every violation as
//! `<instance path>: <message>`, for example
//! `/amount: -3 is less than the minimum of 0; (root): "id" is a required property`.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use super::Processor;
use super::ProcessorContext;
use super::schema_json::ValJson;
use crate::error::{ConfigError, ProcessError};
use crate::record::Record;

/// At most this many violations are listed in a rejection's detail; the
/// rest are counted.
pub const MAX_LISTED_ERRORS: usize = 20;

/// Check each record against a JSON Schema (draft 2020-12, with `format`
/// validation).
///
/// Give exactly one of `schema` (a file) and `inline`. An invalid record is
/// rejected with reason `schema` (or the `reason` given); the detail lists every violation (up to
/// 20) as `<instance path>: <message>`, joined by `; `. References (`$ref`)
/// may point inside the schema only: remote and file references are not
/// fetched and fail at start-up.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Path of a JSON Schema file (`.json`, or `.yaml`/`.yml`), relative to
    /// the pipeline file's directory.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub schema: Option<Spanned<String>>,
    /// The schema itself, written in the pipeline file as a YAML mapping
    /// (an alternative to `schema`).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub inline: Option<Spanned<Value>>,
    /// The dead-letter reason of a record that does not match (default
    /// `schema`), for example `parse_error` when the schema is the shape
    /// the input must have to be read at all.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub reason: Option<Spanned<String>>,
}

/// A minimal `validate` configuration.
pub const EXAMPLE: &str = "\
inline:
  type: object
  required: [id, amount]
  properties:
    id: {type: integer}
    amount: {type: number, minimum: 0}
";

impl ValidateConfig {
    /// Loads and compiles the schema.
    ///
    /// # Errors
    /// Neither or both of `schema` and `inline`; the file cannot be read or
    /// parsed; the schema is invalid or has an unresolvable `$ref`.
    pub fn build(&self, ctx: &ProcessorContext) -> Result<Validate, ConfigError> {
        let (schema, at): (Value, &dyn Fn(String) -> ConfigError) =
            match (&self.schema, &self.inline) {
                (Some(path), None) => (load_schema(&ctx.base_dir, path)?, &|msg| {
                    ConfigError::at(format!("schema file '{}' {msg}", path.value), path)
                }),
                (None, Some(inline)) => (inline.value.clone(), &|msg| {
                    ConfigError::at(format!("inline schema {msg}"), inline)
                }),
                (Some(path), Some(_)) => {
                    return Err(ConfigError::at(
                        "give either `schema` or `inline`, not both",
                        path,
                    ));
                }
                (None, None) => {
                    return Err(ConfigError::new(
                        "validate needs a `schema` file or an `inline` schema",
                    ));
                }
            };
        let validator = jsonschema::options_for::<ValJson>()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| at(format!("does not compile: {e}")))?;
        let reason = match &self.reason {
            None => "schema",
            Some(r) if r.value.trim().is_empty() => {
                return Err(ConfigError::at("`reason` must not be empty", r));
            }
            Some(r) => r.value.as_str(),
        };
        Ok(Validate {
            validator,
            reason: reason.to_owned(),
        })
    }
}

fn load_schema(base_dir: &Path, path: &Spanned<String>) -> Result<Value, ConfigError> {
    let file = base_dir.join(&path.value);
    let text = std::fs::read_to_string(&file).map_err(|e| {
        ConfigError::at(
            format!("cannot read schema file '{}': {e}", file.display()),
            path,
        )
    })?;
    let yaml = matches!(
        file.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let parsed = if yaml {
        // YAML 1.2 booleans only: `n` and `no` stay strings (a `required:
        // [id, n]` list must not turn into `false`).
        let options = serde_saphyr::options! { strict_booleans: true };
        serde_saphyr::from_str_with_options::<Value>(&text, options).map_err(|e| e.to_string())
    } else {
        serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| {
        ConfigError::at(
            format!("schema file '{}' does not parse: {e}", file.display()),
            path,
        )
    })
}

/// The `validate` processor: see [`ValidateConfig`].
pub struct Validate {
    validator: jsonschema::Validator<ValJson>,
    reason: String,
}

impl std::fmt::Debug for Validate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validate").finish_non_exhaustive()
    }
}

impl Validate {
    /// The violations of `value`, as `<instance path>: <message>` (the root
    /// path is written `(root)`); empty when it is valid.
    pub fn errors(&self, value: &crate::Val) -> Vec<String> {
        self.validator
            .iter_errors(value)
            .map(|e| {
                let path = e.instance_path().to_string();
                let path = if path.is_empty() { "(root)" } else { &path };
                format!("{path}: {e}")
            })
            .collect()
    }
}

impl Processor for Validate {
    fn process(&self, record: &Record, out: &mut Vec<Record>) -> Result<(), ProcessError> {
        if self.validator.is_valid(&record.value) {
            out.push(record.clone());
            return Ok(());
        }
        let mut errors = self.errors(&record.value);
        let more = errors.len().saturating_sub(MAX_LISTED_ERRORS);
        errors.truncate(MAX_LISTED_ERRORS);
        let mut detail = errors.join("; ");
        if more > 0 {
            detail.push_str(&format!("; and {more} more"));
        }
        Err(ProcessError::new(self.reason.as_str(), detail))
    }
}

impl crate::registry::Documented for ValidateConfig {
    const EXAMPLE: &'static str = EXAMPLE;
}

impl crate::registry::ProcessorComponent for ValidateConfig {
    fn scope(&self) -> crate::registry::Scope {
        crate::registry::Scope::PerRecord
    }

    fn build(&self, ctx: &ProcessorContext) -> Result<crate::registry::Stage, ConfigError> {
        Ok(crate::registry::Stage::Records(std::sync::Arc::new(
            ValidateConfig::build(self, ctx)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn example_parses_and_builds() {
        let cfg: ValidateConfig = serde_saphyr::from_str(EXAMPLE).unwrap();
        let v = cfg.build(&ProcessorContext::default()).unwrap();
        let val = |j| crate::value::from_json(&j);
        assert!(v.errors(&val(json!({"id": 1, "amount": 2.5}))).is_empty());
        assert_eq!(
            v.errors(&val(json!({"id": 1, "amount": -3}))),
            vec!["/amount: -3 is less than the minimum of 0"]
        );
    }

    #[test]
    fn reason_is_configurable() {
        let pos = std::sync::Arc::new(crate::Position {
            input: "in".into(),
            file: None,
            line: 1,
        });
        let bad = Record::from_json(&json!({"id": "x", "amount": 1}), pos);
        let mut out = Vec::new();
        let cfg: ValidateConfig = serde_saphyr::from_str(EXAMPLE).unwrap();
        let e = cfg.build(&ProcessorContext::default()).unwrap();
        assert_eq!(e.process(&bad, &mut out).unwrap_err().reason, "schema");
        let cfg: ValidateConfig =
            serde_saphyr::from_str(&format!("{EXAMPLE}reason: parse_error\n")).unwrap();
        let e = cfg.build(&ProcessorContext::default()).unwrap();
        let err = e.process(&bad, &mut out).unwrap_err();
        assert_eq!(err.reason, "parse_error");
        assert!(err.detail.contains("/id"), "{}", err.detail);
        assert!(out.is_empty());
        let cfg: ValidateConfig =
            serde_saphyr::from_str(&format!("{EXAMPLE}reason: ' '\n")).unwrap();
        assert!(cfg.build(&ProcessorContext::default()).is_err());
    }

    #[test]
    fn validate_is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Validate>();
    }
}
