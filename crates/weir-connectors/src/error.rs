//! Errors of components: configuration problems (found before anything
//! runs, with a YAML location when there is one) and per-record processing
//! errors (which dead-letter the record).

use std::fmt;

/// A problem with a component's configuration, found by `weir check` or at
/// start-up: a jq program that does not compile, a schema that does not
/// load, a path that matches no file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// What is wrong, in a short lowercase sentence.
    pub message: String,
    /// 1-based line and column in the pipeline file, when known.
    pub at: Option<(u64, u64)>,
}

impl ConfigError {
    /// An error with no location.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
            at: None,
        }
    }

    /// An error at the location of a spanned YAML value.
    pub fn at<T>(message: impl Into<String>, span: &serde_saphyr::Spanned<T>) -> Self {
        let loc = span.referenced;
        ConfigError {
            message: message.into(),
            at: Some((loc.line(), loc.column())),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((l, c)) => write!(f, "{l}:{c}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why a processor rejected a record; the record goes to the dead-letter
/// output with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessError {
    /// A short machine-friendly reason (`parse_error`, `missing_field`,
    /// `schema`, `jq_error`, ...).
    pub reason: String,
    /// The details for a human: which field, what was expected.
    pub detail: String,
}

impl ProcessError {
    /// A rejection with `reason` and `detail`.
    pub fn new(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        ProcessError {
            reason: reason.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for ProcessError {}
