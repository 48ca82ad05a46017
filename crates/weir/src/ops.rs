//! The per-item functions of sync stages (`map`, `filter`, `flat_map` and
//! their fallible `try_` forms), applied a batch at a time.
//!
//! Each op is monomorphised over the user's closure, so the inner loop over a
//! batch compiles to a plain loop; the worker calls it through one virtual
//! call per batch. Fallible functions borrow their input, so a failed item is
//! still there to retry or to dead-letter; a failure remembers where its
//! outputs belong, so a retry that succeeds later does not reorder the batch.
//!
//! `flat_map` can yield any number of outputs per input, so its worker
//! applies it a slice of the batch at a time ([`ItemOp::apply_some`]) and
//! sends each slice's outputs before it makes more: a stage holds about one
//! batch of outputs, not a batch's worth of expansions.

use std::marker::PhantomData;
use std::vec;

use crate::ack::Ack;
use crate::channel::{Batch, Envelope};
use crate::error::BoxError;

/// Tallies of one batch, added to the stage's metrics once per batch.
#[derive(Default)]
pub(crate) struct Tally {
    pub ok: usize,
    pub filtered: usize,
}

/// An attempt that failed: the item back, and the error.
pub(crate) type Attempt<I> = Result<(), (Envelope<I>, BoxError)>;

/// An item whose function failed.
pub(crate) struct Failure<I> {
    pub item: Envelope<I>,
    pub error: BoxError,
    /// Where its outputs belong if a retry succeeds: the length of the
    /// output batch when it failed (the outputs of the items before it).
    pub at: usize,
}

/// A sync stage function over batches.
pub(crate) trait ItemOp<I, O>: Send + Sync + 'static {
    /// Applies the function to every item of `batch`: outputs go to `out`,
    /// failures to `failed`.
    fn apply(
        &self,
        batch: Batch<I>,
        out: &mut Batch<O>,
        failed: &mut Vec<Failure<I>>,
        t: &mut Tally,
    );

    /// True when one input may yield many outputs: the worker then applies
    /// the op with [`apply_some`](Self::apply_some).
    fn expands(&self) -> bool {
        false
    }

    /// Applies the function to items of `input` until `out` holds at least
    /// `limit` items or `input` is empty; the rest stays in `input`.
    fn apply_some(
        &self,
        input: &mut vec::IntoIter<Envelope<I>>,
        out: &mut Batch<O>,
        failed: &mut Vec<Failure<I>>,
        t: &mut Tally,
        limit: usize,
    ) {
        let _ = limit;
        self.apply(std::mem::take(input).collect(), out, failed, t);
    }

    /// One more attempt at a failed item (only fallible ops fail).
    fn retry(&self, e: Envelope<I>, out: &mut Batch<O>, t: &mut Tally) -> Attempt<I> {
        let _ = (out, t);
        Err((e, "this stage cannot retry".into()))
    }
}

/// Records a failed attempt made while filling `out`.
#[inline]
fn failed_at<I, O>(attempt: Attempt<I>, out: &Batch<O>, failed: &mut Vec<Failure<I>>) {
    if let Err((item, error)) = attempt {
        failed.push(Failure {
            item,
            error,
            at: out.len(),
        });
    }
}

/// Pushes the outputs of one input, forking its ack per output.
#[inline]
fn push_derived<O>(
    outs: impl IntoIterator<Item = O>,
    ack: Option<Ack>,
    out: &mut Batch<O>,
    t: &mut Tally,
) {
    let before = out.len();
    match ack {
        None => out.extend(outs.into_iter().map(Envelope::new)),
        Some(ack) => {
            out.extend(outs.into_iter().map(|value| Envelope {
                value,
                ack: Some(ack.fork()),
            }));
            ack.deliver();
        }
    }
    if out.len() == before {
        t.filtered += 1;
    } else {
        t.ok += 1;
    }
}

pub(crate) struct Map<F, I, O>(pub F, PhantomData<fn(I) -> O>);
pub(crate) struct Filter<F, I>(pub F, PhantomData<fn(I)>);
pub(crate) struct FlatMap<F, I, O>(pub F, PhantomData<fn(I) -> O>);
pub(crate) struct TryFilter<F, I>(pub F, PhantomData<fn(I)>);
pub(crate) struct TryFlatMap<F, I, O>(pub F, PhantomData<fn(I) -> O>);

impl<F, I, O> Map<F, I, O> {
    pub fn new(f: F) -> Self {
        Map(f, PhantomData)
    }
}
impl<F, I> Filter<F, I> {
    pub fn new(f: F) -> Self {
        Filter(f, PhantomData)
    }
}
impl<F, I, O> FlatMap<F, I, O> {
    pub fn new(f: F) -> Self {
        FlatMap(f, PhantomData)
    }
}
impl<F, I> TryFilter<F, I> {
    pub fn new(f: F) -> Self {
        TryFilter(f, PhantomData)
    }
}
impl<F, I, O> TryFlatMap<F, I, O> {
    pub fn new(f: F) -> Self {
        TryFlatMap(f, PhantomData)
    }
}

impl<F, I, O> ItemOp<I, O> for Map<F, I, O>
where
    F: Fn(I) -> O + Send + Sync + 'static,
    I: 'static,
    O: 'static,
{
    fn apply(&self, batch: Batch<I>, out: &mut Batch<O>, _: &mut Vec<Failure<I>>, t: &mut Tally) {
        t.ok += batch.len();
        let f = &self.0;
        let mapped = batch.into_iter().map(|e| Envelope {
            value: f(e.value),
            ack: e.ack,
        });
        if out.is_empty() {
            // Collecting reuses the input's allocation when the layouts match.
            *out = mapped.collect();
        } else {
            out.extend(mapped);
        }
    }
}

impl<F, I> ItemOp<I, I> for Filter<F, I>
where
    F: Fn(&I) -> bool + Send + Sync + 'static,
    I: 'static,
{
    fn apply(
        &self,
        mut batch: Batch<I>,
        out: &mut Batch<I>,
        _: &mut Vec<Failure<I>>,
        t: &mut Tally,
    ) {
        let f = &self.0;
        let n = batch.len();
        // In place: no allocation, no copy of the kept items.
        batch.retain_mut(|e| {
            let keep = f(&e.value);
            if !keep && let Some(a) = e.ack.take() {
                a.deliver();
            }
            keep
        });
        t.ok += batch.len();
        t.filtered += n - batch.len();
        if out.is_empty() {
            *out = batch;
        } else {
            out.append(&mut batch);
        }
    }
}

impl<F, I, O, It> ItemOp<I, O> for FlatMap<F, I, O>
where
    F: Fn(I) -> It + Send + Sync + 'static,
    It: IntoIterator<Item = O>,
    I: 'static,
    O: 'static,
{
    fn apply(&self, batch: Batch<I>, out: &mut Batch<O>, _: &mut Vec<Failure<I>>, t: &mut Tally) {
        for e in batch {
            push_derived((self.0)(e.value), e.ack, out, t);
        }
    }

    fn expands(&self) -> bool {
        true
    }

    fn apply_some(
        &self,
        input: &mut vec::IntoIter<Envelope<I>>,
        out: &mut Batch<O>,
        _: &mut Vec<Failure<I>>,
        t: &mut Tally,
        limit: usize,
    ) {
        for e in input.by_ref() {
            push_derived((self.0)(e.value), e.ack, out, t);
            if out.len() >= limit {
                break;
            }
        }
    }
}

impl<F, I, E> ItemOp<I, I> for TryFilter<F, I>
where
    F: Fn(&I) -> Result<bool, E> + Send + Sync + 'static,
    E: Into<BoxError>,
    I: 'static,
{
    fn apply(
        &self,
        batch: Batch<I>,
        out: &mut Batch<I>,
        failed: &mut Vec<Failure<I>>,
        t: &mut Tally,
    ) {
        for e in batch {
            let attempt = self.retry(e, out, t);
            failed_at(attempt, out, failed);
        }
    }

    fn retry(&self, e: Envelope<I>, out: &mut Batch<I>, t: &mut Tally) -> Attempt<I> {
        match (self.0)(&e.value) {
            Ok(true) => {
                t.ok += 1;
                out.push(e);
                Ok(())
            }
            Ok(false) => {
                t.filtered += 1;
                e.deliver();
                Ok(())
            }
            Err(err) => Err((e, err.into())),
        }
    }
}

impl<F, I, O, It, E> ItemOp<I, O> for TryFlatMap<F, I, O>
where
    F: Fn(&I) -> Result<It, E> + Send + Sync + 'static,
    It: IntoIterator<Item = O>,
    E: Into<BoxError>,
    I: 'static,
    O: 'static,
{
    fn apply(
        &self,
        batch: Batch<I>,
        out: &mut Batch<O>,
        failed: &mut Vec<Failure<I>>,
        t: &mut Tally,
    ) {
        for e in batch {
            let attempt = self.retry(e, out, t);
            failed_at(attempt, out, failed);
        }
    }

    fn expands(&self) -> bool {
        true
    }

    fn apply_some(
        &self,
        input: &mut vec::IntoIter<Envelope<I>>,
        out: &mut Batch<O>,
        failed: &mut Vec<Failure<I>>,
        t: &mut Tally,
        limit: usize,
    ) {
        for e in input.by_ref() {
            let attempt = self.retry(e, out, t);
            failed_at(attempt, out, failed);
            if out.len() >= limit {
                break;
            }
        }
    }

    fn retry(&self, e: Envelope<I>, out: &mut Batch<O>, t: &mut Tally) -> Attempt<I> {
        match (self.0)(&e.value) {
            Ok(outs) => {
                push_derived(outs, e.ack, out, t);
                Ok(())
            }
            Err(err) => Err((e, err.into())),
        }
    }
}
