//! `switch`: route each record to one of several named branches by jq
//! conditions (valid/invalid, by region, by size...).
//!
//! Cases are tried in order; a record goes to the first case whose
//! condition holds (jq truthiness, as in `filter`), else to `default`. With
//! no `default`, a record that matches no case is filtered (counted, not
//! lost). Downstream entries read a branch as `<switch name>/<case name>`.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::ProcessorContext;
use super::jq::{EnvConfig, JqError, JqProgram, RecordBudget, StageLimits};
use crate::error::{ConfigError, ProcessError};
use crate::limits::LimitsConfig;
use crate::record::Record;

/// Route records to named branches by jq conditions, first match wins.
///
/// Downstream entries read a branch with `from: <switch>/<case>`. A runtime
/// error in a condition rejects the record with reason `jq_error`, a record
/// over one of the `limits` with reason `jq_limit`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// The cases, tried in order.
    pub cases: Vec<SwitchCase>,
    /// The branch for records that match no case. Absent: such records are
    /// filtered (counted as filtered, not dead-lettered).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub default: Option<Spanned<String>>,
    /// Per-record limits of the conditions' evaluation, all cases of one
    /// record together (`max_outputs`, `timeout_ms`; see `weir explain
    /// jq`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The environment variables the conditions may read with `env` or
    /// `$ENV` (default: none; see `weir explain jq`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub env: EnvConfig,
}

/// One case of a `switch`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchCase {
    /// The branch name (read downstream as `<switch>/<name>`).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// A jq condition, for example `.amount > 1000`.
    #[schemars(with = "String")]
    pub when: Spanned<String>,
}

/// A minimal `switch` configuration.
pub const EXAMPLE: &str = "cases:\n  - name: large\n    when: .amount > 1000\ndefault: small\n";

impl SwitchConfig {
    /// Compiles the conditions and checks the branch names.
    ///
    /// # Errors
    /// A condition that does not compile, an empty, duplicate or `/`-holding
    /// branch name, or no case at all.
    pub fn build(&self, ctx: &ProcessorContext) -> Result<Switch, ConfigError> {
        if self.cases.is_empty() {
            return Err(ConfigError::new("switch: at least one case is needed"));
        }
        let mut names: Vec<String> = Vec::new();
        let mut check = |n: &Spanned<String>| -> Result<(), ConfigError> {
            let v = n.value.as_str();
            if v.is_empty() || v.contains('/') {
                return Err(ConfigError::at(
                    format!("switch: branch name '{v}' must be non-empty and without '/'"),
                    n,
                ));
            }
            if names.iter().any(|x| x == v) {
                return Err(ConfigError::at(
                    format!("switch: branch '{v}' is named twice"),
                    n,
                ));
            }
            names.push(v.to_string());
            Ok(())
        };
        let mut cases = Vec::new();
        for c in &self.cases {
            check(&c.name)?;
            cases.push(JqProgram::compile_spanned(
                &c.when,
                "switch condition",
                &self.env,
            )?);
        }
        if let Some(d) = &self.default {
            check(d)?;
        }
        Ok(Switch {
            cases,
            branches: names,
            limits: StageLimits::new(ctx, &self.limits)?,
        })
    }

    /// The branch names, cases first, then the default.
    pub fn branches(&self) -> Vec<String> {
        self.cases
            .iter()
            .map(|c| c.name.value.clone())
            .chain(self.default.iter().map(|d| d.value.clone()))
            .collect()
    }
}

/// A compiled `switch`.
#[derive(Debug)]
pub struct Switch {
    cases: Vec<JqProgram>,
    branches: Vec<String>,
    limits: StageLimits,
}

impl Switch {
    /// The branch names, cases first, then the default.
    pub fn branches(&self) -> &[String] {
        &self.branches
    }

    /// The index (into [`branches`](Self::branches)) of the branch `record`
    /// goes to; `None` when it matches nothing and there is no default.
    ///
    /// # Errors
    /// A condition failed at run time, or went over a limit.
    pub fn route(&self, record: &Record) -> Result<Option<usize>, ProcessError> {
        let mut budget = RecordBudget::new(&self.limits, record);
        for (i, c) in self.cases.iter().enumerate() {
            if c.record_truthy(record, &mut budget)
                .map_err(JqError::into_process_error)?
            {
                return Ok(Some(i));
            }
        }
        Ok((self.branches.len() > self.cases.len()).then_some(self.cases.len()))
    }
}

impl crate::registry::Documented for SwitchConfig {
    const EXAMPLE: &'static str = EXAMPLE;
}

impl crate::registry::ProcessorComponent for SwitchConfig {
    fn scope(&self) -> crate::registry::Scope {
        crate::registry::Scope::PerRecord
    }

    fn build(&self, ctx: &ProcessorContext) -> Result<crate::registry::Stage, ConfigError> {
        Ok(crate::registry::Stage::Switch(std::sync::Arc::new(
            SwitchConfig::build(self, ctx)?,
        )))
    }

    fn branches(&self) -> Vec<String> {
        SwitchConfig::branches(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn example_builds_and_routes() {
        let cfg: SwitchConfig = serde_saphyr::from_str(EXAMPLE).unwrap();
        let sw = cfg.build(&ProcessorContext::default()).unwrap();
        assert_eq!(sw.branches(), ["large", "small"]);
        let pos = Arc::new(crate::record::Position {
            input: "i".into(),
            file: None,
            line: 1,
        });
        let r = |v: serde_json::Value| Record::from_json(&v, pos.clone());
        assert_eq!(
            sw.route(&r(serde_json::json!({"amount": 5000}))).unwrap(),
            Some(0)
        );
        assert_eq!(
            sw.route(&r(serde_json::json!({"amount": 5}))).unwrap(),
            Some(1)
        );
        let cfg: SwitchConfig =
            serde_saphyr::from_str("cases:\n  - name: a\n    when: .x\n").unwrap();
        let sw = cfg.build(&ProcessorContext::default()).unwrap();
        assert_eq!(sw.route(&r(serde_json::json!({"x": null}))).unwrap(), None);
    }
}
