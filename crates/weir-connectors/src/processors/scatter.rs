//! `scatter`: several named calls per record, in parallel, gathered into
//! one result (scatter-gather to services: prices from three vendors, a
//! profile from several backends).
//!
//! Each request is an `http` processor's call (its own URL, retries,
//! deadline, hedging, per-host limits); the gather policy says how many
//! must answer. `all` and `at_least` wait for every request (each bounded
//! by its own deadline or tries) unless the record can no longer get
//! enough answers, when the others are dropped at once; `first` keeps the
//! first answer and drops the rest (named in `missed` as cancelled). The
//! record gets, at `into`,
//! `{answers: {name: {status, url, body}}, missed: {name: "reason: why"}}`,
//! so a later stage can use partial results and name what was missing.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::ProcessorContext;
use super::http::{Caller, HttpConfig, parse_path, set_path};
use crate::error::{ConfigError, ProcessError};
use crate::record::Record;
use crate::value::{self, Val};

/// Call several services per record in parallel and gather their answers.
///
/// A record that gets fewer answers than `gather` needs is dead-lettered
/// with reason `scatter_gather`, naming each request that missed and why.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScatterConfig {
    /// The requests, by name. Each takes the `http` processor's options
    /// (`url`, `method`, `headers`, `body`, `timeout_ms`, `attempts`,
    /// `deadline_ms`, `hedge_after_ms`, `accept`, `per_host`, ...), except
    /// `into` and `concurrency`, which are the scatter's.
    pub requests: BTreeMap<String, HttpConfig>,
    /// How many requests must answer: `all` (the default), `first` (the
    /// first answer is kept, the other requests dropped), or `{at_least:
    /// N}`.
    #[serde(default)]
    pub gather: Gather,
    /// Where the result goes in the record: a field name or a dotted path.
    /// Default: `scatter`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub into: Option<Spanned<String>>,
    /// Records whose requests are in flight at once. Default: 16.
    #[serde(default)]
    pub concurrency: Option<usize>,
}

/// How many requests of a scatter must answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Gather {
    /// Every request.
    #[default]
    All,
    /// One; the first answer ends the scatter.
    First,
    /// At least this many.
    AtLeast(usize),
}

/// A minimal `scatter` configuration.
pub const EXAMPLE: &str = "\
requests:
  a: { url: '\"http://localhost:8081/price/\\(.id)\"', deadline_ms: 500 }
  b: { url: '\"http://localhost:8082/price/\\(.id)\"', hedge_after_ms: 50 }
gather: { at_least: 1 }
into: prices
";

impl ScatterConfig {
    /// Builds every request's call.
    ///
    /// # Errors
    /// No request, a request that sets `into` or `concurrency`, a gather
    /// that needs more answers than there are requests, or a request's own
    /// error.
    pub fn build(&self, ctx: &ProcessorContext) -> Result<Scatter, ConfigError> {
        if self.requests.is_empty() {
            return Err(ConfigError::new("scatter: at least one request is needed"));
        }
        let concurrency = self.concurrency.unwrap_or(16);
        if concurrency == 0 {
            return Err(ConfigError::new("scatter: concurrency must be at least 1"));
        }
        let needed = match self.gather {
            Gather::All => self.requests.len(),
            Gather::First => 1,
            Gather::AtLeast(n) if n >= 1 && n <= self.requests.len() => n,
            Gather::AtLeast(n) => {
                return Err(ConfigError::new(format!(
                    "scatter: gather at_least {n} needs between 1 and {} (the number of requests)",
                    self.requests.len()
                )));
            }
        };
        let mut requests = Vec::new();
        for (name, r) in &self.requests {
            if let Some(i) = &r.into {
                return Err(ConfigError::at(
                    format!("scatter request '{name}': `into` is the scatter's, not a request's"),
                    i,
                ));
            }
            if r.concurrency.is_some() {
                return Err(ConfigError::new(format!(
                    "scatter request '{name}': `concurrency` is the scatter's, not a request's"
                )));
            }
            let what = format!("scatter request '{name}'");
            requests.push((name.clone(), Arc::new(r.caller(ctx, &what, concurrency)?)));
        }
        let into = match &self.into {
            None => vec!["scatter".to_string()],
            Some(i) => parse_path(&i.value).ok_or_else(|| {
                ConfigError::at(
                    "scatter: `into` must be a field name or a dotted path of field names",
                    i,
                )
            })?,
        };
        Ok(Scatter {
            requests: Arc::new(requests),
            needed,
            first: self.gather == Gather::First,
            into,
            concurrency,
        })
    }
}

/// The `scatter` processor: see [`ScatterConfig`].
#[derive(Debug)]
pub struct Scatter {
    requests: Arc<Vec<(String, Arc<Caller>)>>,
    needed: usize,
    first: bool,
    into: Vec<String>,
    concurrency: usize,
}

impl super::CallProcessor for Scatter {
    fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn call(&self, record: Record) -> BoxFuture<'static, Result<Record, ProcessError>> {
        let mut pending: FuturesUnordered<_> = self
            .requests
            .iter()
            .map(|(name, caller)| {
                let call = Caller::call(caller, &record);
                let name = name.clone();
                async move { (name, call.await) }
            })
            .collect();
        let (needed, first, into) = (self.needed, self.first, self.into.clone());
        let names: Vec<String> = self.requests.iter().map(|(n, _)| n.clone()).collect();
        let total = pending.len();
        Box::pin(async move {
            let mut answers: Vec<(String, Val)> = Vec::new();
            let mut missed: Vec<(String, ProcessError)> = Vec::new();
            while let Some((name, result)) = pending.next().await {
                match result {
                    Ok(v) => answers.push((name, v)),
                    Err(e) => missed.push((name, e)),
                }
                if (first && !answers.is_empty()) || total - missed.len() < needed {
                    break;
                }
            }
            // Whatever is still in flight is dropped (its connection
            // closed): the record's outcome is decided. Named as missed.
            drop(pending);
            for name in names.iter() {
                if !answers.iter().any(|(n, _)| n == name) && !missed.iter().any(|(n, _)| n == name)
                {
                    let why = if first && !answers.is_empty() {
                        "another request answered first (gather: first)"
                    } else {
                        "the record could no longer get enough answers"
                    };
                    missed.push((name.clone(), ProcessError::new("cancelled", why)));
                }
            }
            answers.sort_by(|a, b| a.0.cmp(&b.0));
            missed.sort_by(|a, b| a.0.cmp(&b.0));
            if answers.len() < needed {
                let why: Vec<String> = missed.iter().map(|(n, e)| format!("'{n}': {e}")).collect();
                return Err(ProcessError::new(
                    "scatter_gather",
                    format!(
                        "{} of {needed} required requests answered; {}",
                        answers.len(),
                        why.join("; ")
                    ),
                ));
            }
            let result = value::object([
                ("answers", value::object(answers)),
                (
                    "missed",
                    value::object(
                        missed
                            .into_iter()
                            .map(|(n, e)| (n, value::string(e.to_string()))),
                    ),
                ),
            ]);
            let v = set_path(&record.value, &into, result)?;
            Ok(record.derive(v))
        })
    }
}

impl crate::registry::Documented for ScatterConfig {
    const EXAMPLE: &'static str = EXAMPLE;
}

impl crate::registry::ProcessorComponent for ScatterConfig {
    fn scope(&self) -> crate::registry::Scope {
        crate::registry::Scope::Call
    }

    fn build(&self, ctx: &ProcessorContext) -> Result<crate::registry::Stage, ConfigError> {
        Ok(crate::registry::Stage::Call(Arc::new(
            ScatterConfig::build(self, ctx)?,
        )))
    }
}
