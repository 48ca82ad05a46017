//! Scatter-gather: for each item, several async calls at once, joined into
//! one result.
//!
//! Every branch gets the item by reference and returns a future; each runs
//! under its own timeout; `join` receives the item and one result per
//! branch, in branch order. The [`Gather`] policy says when partial results
//! are good enough; when they are not, the item fails and the stage's
//! [`ErrorPolicy`](crate::ErrorPolicy) decides (retry the whole scatter, or
//! dead-letter the item). [`workers`](crate::Flow::workers) bounds how many
//! items are scattered at once.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::BoxError;
use crate::pipeline::Flow;
use crate::pool::{AsyncFn, BoxFut};

type BranchCall<T, V> = Arc<dyn Fn(&T) -> BoxFut<Result<V, BoxError>> + Send + Sync>;

/// One branch of a scatter: a call made for each item.
pub struct Branch<T, V> {
    name: String,
    call: BranchCall<T, V>,
}

impl<T, V> Clone for Branch<T, V> {
    fn clone(&self) -> Self {
        Branch {
            name: self.name.clone(),
            call: self.call.clone(),
        }
    }
}

/// A branch named `name` calling `f`. `f` borrows the item and returns a
/// future that owns what it needs (clone the fields it uses).
pub fn branch<T, V, E, Fut, F>(name: &str, f: F) -> Branch<T, V>
where
    V: Send + 'static,
    E: Into<BoxError>,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    F: Fn(&T) -> Fut + Send + Sync + 'static,
{
    Branch {
        name: name.to_string(),
        call: Arc::new(move |x: &T| -> BoxFut<Result<V, BoxError>> {
            let fut = f(x);
            Box::pin(async move { fut.await.map_err(Into::into) })
        }),
    }
}

/// How many branches must succeed for an item to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gather {
    /// All of them; any failure or timeout fails the item.
    All,
    /// At least this many; `join` sees the failures of the others.
    AtLeast(usize),
}

/// Why one branch gave no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchError {
    /// It did not answer within the timeout.
    Timeout {
        /// The branch.
        branch: String,
        /// The timeout it exceeded.
        after: Duration,
    },
    /// It returned an error.
    Failed {
        /// The branch.
        branch: String,
        /// The error, as text.
        error: String,
    },
}

impl fmt::Display for BranchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BranchError::Timeout { branch, after } => {
                write!(f, "branch '{branch}' timed out after {after:?}")
            }
            BranchError::Failed { branch, error } => write!(f, "branch '{branch}' failed: {error}"),
        }
    }
}

impl std::error::Error for BranchError {}

impl<T: Clone + Send + Sync + 'static> Flow<T> {
    /// Scatters each item to `branches` concurrently, each bounded by
    /// `timeout`, and gathers the results with `join`.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), weir::RunError> {
    /// use std::time::Duration;
    /// use weir::{Gather, Pipeline, branch, collect, from_iter};
    /// let price = branch("price", |x: &u32| { let x = *x; async move { Ok::<_, String>(x * 10) } });
    /// let stock = branch("stock", |_: &u32| async { Err::<u32, _>("down") });
    /// let p = Pipeline::new();
    /// let out = p
    ///     .source("ids", from_iter(1..=2u32))
    ///     .scatter_gather("enrich", vec![price, stock], Duration::from_secs(1), Gather::AtLeast(1),
    ///         |id, results| (id, results[0].clone().ok(), results[1].is_err()))
    ///     .sink("out", collect());
    /// p.run().await?;
    /// assert_eq!(out.take().unwrap(), vec![(1, Some(10), true), (2, Some(20), true)]);
    /// # Ok(()) }
    /// ```
    pub fn scatter_gather<V, U, J>(
        self,
        name: &str,
        branches: Vec<Branch<T, V>>,
        timeout: Duration,
        policy: Gather,
        join: J,
    ) -> Flow<U>
    where
        V: Send + 'static,
        U: Send + 'static,
        J: Fn(T, Vec<Result<V, BranchError>>) -> U + Send + Sync + 'static,
    {
        let needed = match policy {
            Gather::All => branches.len(),
            Gather::AtLeast(n) => n.min(branches.len()),
        };
        let branches = Arc::new(branches);
        let join = Arc::new(join);
        let call = Box::new(move |item: T| -> BoxFut<Result<U, BoxError>> {
            let calls: Vec<_> = branches
                .iter()
                .map(|b| {
                    let fut = (b.call)(&item);
                    let name = b.name.clone();
                    async move {
                        match tokio::time::timeout(timeout, fut).await {
                            Ok(Ok(v)) => Ok(v),
                            Ok(Err(e)) => Err(BranchError::Failed {
                                branch: name,
                                error: crate::dead_letter::error_chain(e.as_ref()),
                            }),
                            Err(_) => Err(BranchError::Timeout {
                                branch: name,
                                after: timeout,
                            }),
                        }
                    }
                })
                .collect();
            let join = join.clone();
            Box::pin(async move {
                let results = futures::future::join_all(calls).await;
                let ok = results.iter().filter(|r| r.is_ok()).count();
                if ok < needed {
                    let why: Vec<String> = results
                        .iter()
                        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
                        .collect();
                    return Err(format!(
                        "{ok} of {needed} required branches answered: {}",
                        why.join("; ")
                    )
                    .into());
                }
                Ok(join(item, results))
            })
        });
        self.async_stage(
            name,
            "scatter_gather",
            AsyncFn {
                call,
                clone: Some(T::clone),
            },
        )
    }
}
