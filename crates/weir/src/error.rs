//! Errors: what stage code returns, and what a run returns.

use std::fmt;

use crate::metrics::Report;

/// The error type stage functions and sinks return: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a pipeline could not be built or did not finish.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The graph is not runnable (an output connected to nothing, a
    /// duplicate stage name, an option out of range). Lists every problem.
    Build(Vec<String>),
    /// A stage failed fatally; the pipeline was cancelled.
    Stage {
        /// The stage's name.
        stage: String,
        /// Its error.
        source: BoxError,
    },
    /// A worker of a stage panicked; the pipeline was cancelled.
    Panic {
        /// The stage's name.
        stage: String,
        /// The panic message, when it was a string.
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Build(problems) => {
                write!(f, "invalid pipeline: {}", problems.join("; "))
            }
            Error::Stage { stage, source } => write!(f, "stage '{stage}' failed: {source}"),
            Error::Panic { stage, message } => {
                write!(f, "stage '{stage}' panicked: {message}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Stage { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// A failed run: the error that stopped it, and the report of what had
/// happened by then (counts, dead letters), so nothing goes unaccounted.
#[derive(Debug)]
pub struct RunError {
    /// What stopped the run.
    pub error: Error,
    /// Per-stage counts at the moment the run ended.
    pub report: Box<Report>,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// A sink's failed write: the items it did not write are given back, so the
/// engine can retry or dead-letter them instead of losing them.
///
/// Two kinds of failure call for different handling, so the sink says which:
/// the destination failed ([`WriteError::all`], [`WriteError::partial`]: the
/// stage's policy applies: fail, or retry the unwritten items and then
/// dead-letter them), or one item cannot be written at all
/// ([`WriteError::bad_item`]: dead-letter that item alone, under any policy,
/// and write the rest). A destination that refuses the sink altogether
/// ([`WriteError::fatal`]) fails the run under any policy.
#[derive(Debug)]
#[non_exhaustive]
pub struct WriteError<T> {
    /// The items not written, in order: a suffix of the batch that was passed
    /// to `write` (the whole batch when nothing was written).
    pub unwritten: Vec<T>,
    /// Why.
    pub error: BoxError,
    /// The first unwritten item is itself the problem (a value that does not
    /// fit a column, say); the items after it were not tried.
    pub first_is_bad: bool,
    /// The destination cannot be written at all (refused credentials, a
    /// server that stayed away longer than the sink waits): the run fails
    /// under every policy, since retrying or dead-lettering would only move
    /// every item to the dead letters.
    pub fatal: bool,
}

impl<T> WriteError<T> {
    /// Nothing of `items` was written.
    pub fn all(items: Vec<T>, error: impl Into<BoxError>) -> Self {
        WriteError {
            unwritten: items,
            error: error.into(),
            first_is_bad: false,
            fatal: false,
        }
    }

    /// Nothing of `items` was written, and nothing will be: the destination
    /// refuses this sink (wrong credentials, say). The engine fails the run
    /// under every error policy, counting `items` as dropped.
    pub fn fatal(items: Vec<T>, error: impl Into<BoxError>) -> Self {
        WriteError {
            unwritten: items,
            error: error.into(),
            first_is_bad: false,
            fatal: true,
        }
    }

    /// A prefix was written; `unwritten` (a suffix) was not, because the
    /// destination failed.
    pub fn partial(unwritten: Vec<T>, error: impl Into<BoxError>) -> Self {
        WriteError::all(unwritten, error)
    }

    /// A prefix was written; `unwritten[0]` cannot be written (`error` says
    /// why) and the rest was not tried. The engine dead-letters that item
    /// under every error policy (`Fail` included: the record is bad, the
    /// destination is fine) and writes the rest.
    pub fn bad_item(unwritten: Vec<T>, error: impl Into<BoxError>) -> Self {
        WriteError {
            unwritten,
            error: error.into(),
            first_is_bad: true,
            fatal: false,
        }
    }
}

/// Turns a panic payload into a message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// A failure inside a fused stage, carried up through the worker that runs
/// it so the run can name the right stage.
#[derive(Debug)]
pub(crate) struct StageFailure {
    pub stage: String,
    /// `Some(message)` when the stage panicked.
    pub panic: Option<String>,
    pub error: BoxError,
}

impl fmt::Display for StageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stage '{}' failed: {}", self.stage, self.error)
    }
}

impl std::error::Error for StageFailure {}

impl StageFailure {
    /// Attributes `error` to `stage`, unless a deeper fused stage already
    /// claimed it.
    pub fn attribute(stage: &str, error: BoxError) -> BoxError {
        if error.is::<StageFailure>() {
            error
        } else {
            Box::new(StageFailure {
                stage: stage.to_string(),
                panic: None,
                error,
            })
        }
    }

    /// Turns a task's error into the run's error, naming `default_stage`
    /// unless the error names a fused stage.
    pub fn into_error(error: BoxError, default_stage: &str) -> Error {
        match error.downcast::<StageFailure>() {
            Ok(f) => match f.panic {
                Some(message) => Error::Panic {
                    stage: f.stage,
                    message,
                },
                None => Error::Stage {
                    stage: f.stage,
                    source: f.error,
                },
            },
            Err(source) => Error::Stage {
                stage: default_stage.to_string(),
                source,
            },
        }
    }
}

/// A stage found its downstream edge closed before the run aborted: a
/// symptom of another stage's failure, reported only if nothing else was.
#[derive(Debug)]
pub(crate) struct EdgeClosed;

impl fmt::Display for EdgeClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("downstream edge closed while the pipeline was running")
    }
}

impl std::error::Error for EdgeClosed {}
