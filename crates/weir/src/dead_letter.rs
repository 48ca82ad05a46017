//! Dead letters: items a stage could not process, kept with why and where.
//!
//! Every stage of a pipeline shares one dead-letter output. Items of any type
//! travel there, so the item is kept as `Box<dyn Any>`; a sink that knows the
//! pipeline's types gets it back with [`DeadLetter::item`]. Without a
//! dead-letter sink the run keeps them in [`Report::dead_letters`]
//! (up to [`PipelineOptions::dead_letter_limit`]; one more fails the run
//! rather than drop it).
//!
//! [`Report::dead_letters`]: crate::Report::dead_letters
//! [`PipelineOptions::dead_letter_limit`]: crate::PipelineOptions::dead_letter_limit

use std::any::Any;
use std::fmt;

use crate::error::{BoxError, WriteError};
use crate::sink::Sink;

/// An item a stage gave up on, with the error, the stage and the attempts.
pub struct DeadLetter {
    /// The stage that gave up.
    pub stage: String,
    /// The last error, with its causes joined by ": ".
    pub error: String,
    /// Attempts made (more than 1 under a retry policy).
    pub attempts: u32,
    item: Box<dyn Any + Send>,
}

impl DeadLetter {
    pub(crate) fn new<T: Send + 'static>(
        stage: &str,
        error: &BoxError,
        attempts: u32,
        item: T,
    ) -> Self {
        DeadLetter {
            stage: stage.to_string(),
            error: error_chain(error.as_ref()),
            attempts,
            item: Box::new(item),
        }
    }

    /// The item, if it is a `T`.
    pub fn item<T: 'static>(&self) -> Option<&T> {
        self.item.downcast_ref()
    }

    /// The item, if it is a `T`; the dead letter back otherwise.
    pub fn into_item<T: 'static>(self) -> Result<T, Self> {
        match self.item.downcast::<T>() {
            Ok(b) => Ok(*b),
            Err(item) => Err(DeadLetter { item, ..self }),
        }
    }
}

impl fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("stage", &self.stage)
            .field("error", &self.error)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// "outer: inner: root" for an error and its sources: how dead letters
/// state their reason (the broker transport words its reasons the same way).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The built-in dead-letter sink: keeps dead letters for the report, up to a
/// limit.
/// The dead letters live behind a lock shared with the runner, so the report
/// has them even when the run fails.
pub(crate) struct Collector {
    pub limit: usize,
    pub kept: std::sync::Arc<std::sync::Mutex<Vec<DeadLetter>>>,
}

impl Sink<DeadLetter> for Collector {
    type Output = ();

    async fn write(&mut self, items: Vec<DeadLetter>) -> Result<(), WriteError<DeadLetter>> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.limit.saturating_sub(kept.len());
        if items.len() > room {
            let mut items = items;
            let rest = items.split_off(room);
            kept.extend(items);
            let msg = format!(
                "more than {} dead letters and no dead-letter sink: set one with Pipeline::dead_letter_sink or raise PipelineOptions::dead_letter_limit",
                self.limit
            );
            return Err(WriteError::all(rest, msg));
        }
        kept.extend(items);
        Ok(())
    }

    async fn finish(self) -> Result<(), BoxError> {
        Ok(())
    }
}
