//! `filter`: keep the records for which a jq condition holds.
//!
//! The condition's first output decides, with jq's truthiness: anything but
//! `false` and `null` keeps the record; `false`, `null` or no output at all
//! drops it. By default a dropped record is simply filtered (counted, not
//! dead-lettered); with `drop_reason` it is rejected instead, so it reaches
//! the dead-letter output with that reason.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::jq::{EnvConfig, JqError, JqProgram, RecordBudget, StageLimits};
use super::{Processor, ProcessorContext};
use crate::error::{ConfigError, ProcessError};
use crate::limits::LimitsConfig;
use crate::record::Record;

/// Keep the records for which a jq condition is true.
///
/// The condition's first output decides: anything but `false` and `null`
/// keeps the record; `false`, `null` or no output drops it. A runtime error
/// in the condition rejects the record with reason `jq_error`, a record over
/// one of the `limits` with reason `jq_limit`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// A jq expression evaluated on each record, for example
    /// `.amount >= 0` or `.status == "paid" and .country != null`.
    #[schemars(with = "String")]
    pub condition: Spanned<String>,
    /// What happens to a record that fails the condition. Absent (the
    /// default): it is dropped silently and counted as filtered. Set to a
    /// reason such as `negative_amount`: it is rejected with that reason and
    /// goes to the dead-letter output, so bad records can be inspected
    /// instead of lost.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub drop_reason: Option<Spanned<String>>,
    /// Per-record limits of the condition's evaluation (`max_outputs`,
    /// `timeout_ms`; see `weir explain jq`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The environment variables the condition may read with `env` or
    /// `$ENV` (default: none; see `weir explain jq`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub env: EnvConfig,
}

/// A minimal `filter` configuration.
pub const EXAMPLE: &str = "condition: .amount >= 0\ndrop_reason: negative_amount\n";

impl FilterConfig {
    /// Compiles the condition.
    ///
    /// # Errors
    /// The condition does not compile, `drop_reason` is empty, or a limit
    /// is 0.
    pub fn build(&self, ctx: &ProcessorContext) -> Result<Filter, ConfigError> {
        let condition = JqProgram::compile_spanned(&self.condition, "condition", &self.env)?;
        if let Some(reason) = &self.drop_reason
            && reason.value.trim().is_empty()
        {
            return Err(ConfigError::at("drop_reason must not be empty", reason));
        }
        Ok(Filter {
            condition,
            drop_reason: self.drop_reason.as_ref().map(|r| r.value.clone()),
            limits: StageLimits::new(ctx, &self.limits)?,
        })
    }
}

/// The `filter` processor: see [`FilterConfig`].
#[derive(Debug)]
pub struct Filter {
    condition: JqProgram,
    drop_reason: Option<String>,
    limits: StageLimits,
}

impl Processor for Filter {
    fn process(&self, record: &Record, out: &mut Vec<Record>) -> Result<(), ProcessError> {
        let mut budget = RecordBudget::new(&self.limits, record);
        if self
            .condition
            .record_truthy(record, &mut budget)
            .map_err(JqError::into_process_error)?
        {
            out.push(record.clone());
            return Ok(());
        }
        match &self.drop_reason {
            None => Ok(()),
            Some(reason) => Err(ProcessError::new(
                reason.clone(),
                format!("condition `{}` is not true", self.condition.source()),
            )),
        }
    }
}

impl crate::registry::Documented for FilterConfig {
    const EXAMPLE: &'static str = EXAMPLE;
}

impl crate::registry::ProcessorComponent for FilterConfig {
    fn scope(&self) -> crate::registry::Scope {
        crate::registry::Scope::PerRecord
    }

    fn build(&self, ctx: &ProcessorContext) -> Result<crate::registry::Stage, ConfigError> {
        Ok(crate::registry::Stage::Records(std::sync::Arc::new(
            FilterConfig::build(self, ctx)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_builds() {
        let cfg: FilterConfig = serde_saphyr::from_str(EXAMPLE).unwrap();
        cfg.build(&ProcessorContext::default()).unwrap();
        assert_eq!(cfg.drop_reason.unwrap().value, "negative_amount");
    }
}
