//! End-to-end acknowledgement: a source learns, exactly once, what became of
//! an item and of everything derived from it.
//!
//! A source attaches an [`Ack`] to an item. Every item the engine derives
//! from it (a `flat_map` output, a broadcast copy, an aggregate that absorbed
//! it) holds a fork of the same ack. Each holder settles its fork when its
//! item is done: committed by a sink, filtered out, dead-lettered, or lost.
//! When the last fork is gone, the source's callback runs once with the worst
//! outcome seen: [`AckOutcome::Failed`] beats [`AckOutcome::DeadLettered`]
//! beats [`AckOutcome::Delivered`].
//!
//! A fork that is dropped without being settled counts as `Failed`, so an item
//! lost to a panic or an abort can never be acknowledged by mistake. The cost
//! when no source attaches acks is one `None` per item.

use std::fmt;

#[cfg(feature = "loom")]
use loom::sync::{
    Arc, Mutex,
    atomic::{
        AtomicUsize,
        Ordering::{AcqRel, Acquire},
    },
};
#[cfg(not(feature = "loom"))]
use std::sync::{
    Arc, Mutex,
    atomic::{
        AtomicUsize,
        Ordering::{AcqRel, Acquire},
    },
};

/// What became of a source item and everything derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Every derived item was committed by a sink or filtered out on purpose.
    Delivered,
    /// At least one derived item went to the dead-letter output (and was
    /// committed there); none was lost.
    DeadLettered {
        /// The stage that dead-lettered the first such item.
        stage: String,
        /// Why, as the stage's error said it.
        reason: String,
    },
    /// At least one derived item was not committed anywhere: the pipeline
    /// aborted, a worker panicked, or a sink failed. The source should
    /// redeliver the item.
    Failed {
        /// Why the item was not committed.
        reason: String,
    },
}

impl AckOutcome {
    /// True when the item needs no redelivery (delivered or dead-lettered).
    pub fn is_handled(&self) -> bool {
        !matches!(self, AckOutcome::Failed { .. })
    }

    fn rank(&self) -> u8 {
        match self {
            AckOutcome::Delivered => 0,
            AckOutcome::DeadLettered { .. } => 1,
            AckOutcome::Failed { .. } => 2,
        }
    }
}

impl fmt::Display for AckOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AckOutcome::Delivered => f.write_str("delivered"),
            AckOutcome::DeadLettered { stage, reason } => {
                write!(f, "dead-lettered by {stage}: {reason}")
            }
            AckOutcome::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

type Callback = Box<dyn FnOnce(AckOutcome) + Send>;

struct State {
    /// Worst outcome recorded so far; `None` means all delivered so far.
    worst: Option<AckOutcome>,
    callback: Option<Callback>,
}

struct Shared {
    state: Mutex<State>,
    /// Forks made and forks settled. A fork dropped unsettled leaves
    /// `settled < forks` when the last one goes, which reads as a failure.
    /// Counting here instead of flagging each fork keeps an `Ack` one
    /// pointer wide, so `Option<Ack>` costs 8 bytes per item.
    forks: AtomicUsize,
    settled: AtomicUsize,
    /// Times the item went round a loop (see `feedback`): forks share it.
    hops: u32,
    /// The loop this ack counts the item in (an id of the loop's own), or
    /// 0 for an ack that is not a loop's.
    owner: usize,
    /// A loop's ack settles the ack the item had when it entered (see
    /// `Ack::in_loop`); kept here, not in the callback, so that the chain
    /// can be walked (hops per loop, leaving a loop).
    parent: Option<Ack>,
}

impl Shared {
    fn record(&self, outcome: AckOutcome) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let better = match &st.worst {
            None => outcome.rank() > 0,
            Some(w) => outcome.rank() > w.rank(),
        };
        if better {
            st.worst = Some(outcome);
        }
    }
}

impl Drop for Shared {
    // The last fork is gone: this runs exactly once, by Arc's guarantee.
    fn drop(&mut self) {
        if self.settled.load(Acquire) < self.forks.load(Acquire) {
            self.record(AckOutcome::Failed {
                reason: "item dropped before it was committed".into(),
            });
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = st.worst.take().unwrap_or(AckOutcome::Delivered);
        let callback = st.callback.take();
        drop(st);
        if let Some(p) = self.parent.take() {
            settle_chained(p, outcome.clone());
        }
        if let Some(cb) = callback {
            cb(outcome);
        }
    }
}

/// One outstanding obligation to tell a source what became of its item.
///
/// Created by a source with [`Ack::new`]; the engine forks it as items are
/// derived and settles each fork. Custom components rarely touch it: the
/// engine settles acks around every stage and sink.
pub struct Ack {
    shared: Arc<Shared>,
}

impl Ack {
    /// Creates an ack whose `callback` runs exactly once, on the thread that
    /// settles the last fork, after every derived item is settled.
    ///
    /// # Examples
    /// ```
    /// use weir::{Ack, AckOutcome};
    /// use std::sync::{Arc, Mutex};
    /// let seen = Arc::new(Mutex::new(None));
    /// let s = seen.clone();
    /// let ack = Ack::new(move |o| *s.lock().unwrap() = Some(o));
    /// let copy = ack.fork();
    /// ack.deliver();
    /// assert_eq!(*seen.lock().unwrap(), None); // one fork still out
    /// copy.deliver();
    /// assert_eq!(*seen.lock().unwrap(), Some(AckOutcome::Delivered));
    /// ```
    pub fn new(callback: impl FnOnce(AckOutcome) + Send + 'static) -> Ack {
        Ack {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    worst: None,
                    callback: Some(Box::new(callback)),
                }),
                forks: AtomicUsize::new(1),
                settled: AtomicUsize::new(0),
                hops: 0,
                owner: 0,
                parent: None,
            }),
        }
    }

    /// An ack for an item entering the loop `owner` (`hops` passes so
    /// far): it settles `parent` with its own outcome, then runs `done`.
    /// The loop counts what is inside it this way.
    ///
    /// An item that goes round many times makes a chain of such acks; the
    /// chain settles iteratively ([`settle_chained`]), so its length is
    /// bounded by memory, not by the stack.
    pub(crate) fn in_loop(
        parent: Option<Ack>,
        owner: usize,
        hops: u32,
        done: impl FnOnce() + Send + 'static,
    ) -> Ack {
        Ack {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    worst: None,
                    callback: Some(Box::new(move |_| done())),
                }),
                forks: AtomicUsize::new(1),
                settled: AtomicUsize::new(0),
                hops,
                owner,
                parent,
            }),
        }
    }

    /// Times this item went round the loop `owner`: the hop count of the
    /// nearest ack of that loop up its chain (0 when it has none).
    pub(crate) fn hops_in(&self, owner: usize) -> u32 {
        let mut a = self;
        loop {
            if a.shared.owner == owner {
                return a.shared.hops;
            }
            match &a.shared.parent {
                Some(p) => a = p,
                None => return 0,
            }
        }
    }

    /// The item leaves the loop `owner`: this fork is settled (the loop no
    /// longer counts the item) and the item goes on with a fork of the
    /// nearest ack up its chain that is not that loop's (the source's, or
    /// an outer loop's), which still learns how it ends. `None` when there
    /// is none (a source without acks).
    pub(crate) fn leave_loop(self, owner: usize) -> Option<Ack> {
        let mut a = &self;
        let outer = loop {
            if a.shared.owner != owner {
                break Some(a.fork());
            }
            match &a.shared.parent {
                Some(p) => a = p,
                None => break None,
            }
        };
        self.deliver();
        outer
    }

    /// Counts one more pass of the loop `owner` in place, when this is the
    /// only fork of an ack of that loop (an item that came back alone, as
    /// in `x -> x`): the loop then needs no new ack, and an item that goes
    /// round for ever costs no memory per pass. False otherwise.
    pub(crate) fn next_pass(&mut self, owner: usize) -> bool {
        if self.shared.owner != owner {
            return false;
        }
        match Arc::get_mut(&mut self.shared) {
            Some(s) => {
                s.hops = s.hops.saturating_add(1);
                true
            }
            None => false,
        }
    }

    /// An ack that settles all `parents` with its own outcome: what an
    /// aggregate carries for the items it absorbed.
    pub fn merge(parents: Vec<Ack>) -> Ack {
        Ack::new(move |outcome| {
            for p in parents {
                p.settle(outcome.clone());
            }
        })
    }

    /// A new fork for an item derived from this one. The source callback
    /// waits for it too.
    pub fn fork(&self) -> Ack {
        self.shared.forks.fetch_add(1, AcqRel);
        Ack {
            shared: self.shared.clone(),
        }
    }

    /// Folds `other` into this fork when both are forks of the same ack
    /// (they then settle as one); gives `other` back otherwise.
    ///
    /// A stage that holds many items' acks at once (an aggregate over its
    /// whole input) keeps one per source ack instead of one per item this
    /// way: sources that share one ack among a batch of items cost memory
    /// per batch, not per item.
    pub fn coalesce(&self, other: Ack) -> Option<Ack> {
        if Arc::ptr_eq(&self.shared, &other.shared) {
            // Two outstanding forks become one: nothing was settled.
            self.shared.forks.fetch_sub(1, AcqRel);
            drop(other);
            None
        } else {
            Some(other)
        }
    }

    /// This fork's item was committed by a sink (or filtered on purpose).
    pub fn deliver(self) {
        self.settle(AckOutcome::Delivered)
    }

    /// This fork's item went to the dead-letter output.
    pub fn dead_letter(self, stage: impl Into<String>, reason: impl Into<String>) {
        self.settle(AckOutcome::DeadLettered {
            stage: stage.into(),
            reason: reason.into(),
        })
    }

    /// This fork's item was not committed anywhere.
    pub fn fail(self, reason: impl Into<String>) {
        self.settle(AckOutcome::Failed {
            reason: reason.into(),
        })
    }

    /// Settles this fork with `outcome`.
    pub fn settle(self, outcome: AckOutcome) {
        self.shared.record(outcome);
        self.shared.settled.fetch_add(1, AcqRel);
    }

    /// Records `outcome` without settling this fork: used when the item
    /// travels on (to the dead-letter sink) and is settled there.
    pub(crate) fn mark(&self, outcome: AckOutcome) {
        self.shared.record(outcome);
    }
}

std::thread_local! {
    /// Parents waiting to be settled by the outermost [`settle_chained`]
    /// on this thread; `None` when none is running.
    static CHAIN: std::cell::RefCell<Option<Vec<(Ack, AckOutcome)>>> =
        const { std::cell::RefCell::new(None) };
}

/// Settles `parent`, whose settling may settle its own parent, and so on up
/// a chain of loop acks: iteratively (a trampoline), so that a chain
/// thousands of passes long does not overflow the stack.
fn settle_chained(parent: Ack, outcome: AckOutcome) {
    let outermost = CHAIN.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_some() {
            false
        } else {
            *c = Some(Vec::new());
            true
        }
    });
    if !outermost {
        // Settled by the outermost call, once this one has returned.
        CHAIN.with(|c| {
            if let Some(queue) = c.borrow_mut().as_mut() {
                queue.push((parent, outcome));
            }
        });
        return;
    }
    /// Ends the outermost call: a callback that panics must not leave the
    /// thread's queue in place (every later settle would only queue).
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            let rest = CHAIN.with(|c| c.borrow_mut().take());
            // What a panic left queued is dropped unsettled: a failure.
            drop(rest);
        }
    }
    let _done = Done;
    let mut next = Some((parent, outcome));
    while let Some((p, o)) = next {
        p.settle(o);
        next = CHAIN.with(|c| c.borrow_mut().as_mut().and_then(Vec::pop));
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ack").finish_non_exhaustive()
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    fn probe() -> (Ack, Arc<StdMutex<Vec<AckOutcome>>>) {
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let s = seen.clone();
        (Ack::new(move |o| s.lock().unwrap().push(o)), seen)
    }

    #[test]
    fn worst_outcome_wins_and_fires_once() {
        let (ack, seen) = probe();
        let a = ack.fork();
        let b = ack.fork();
        a.dead_letter("v", "bad");
        ack.deliver();
        assert!(seen.lock().unwrap().is_empty());
        b.deliver();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![AckOutcome::DeadLettered {
                stage: "v".into(),
                reason: "bad".into()
            }]
        );
    }

    #[test]
    fn dropped_fork_is_a_failure() {
        let (ack, seen) = probe();
        let a = ack.fork();
        ack.deliver();
        drop(a);
        assert!(matches!(seen.lock().unwrap()[0], AckOutcome::Failed { .. }));
    }

    #[test]
    fn coalesced_forks_settle_once_as_one() {
        let (ack, seen) = probe();
        let a = ack.fork();
        let b = ack.fork();
        assert!(a.coalesce(b).is_none());
        ack.deliver();
        assert!(seen.lock().unwrap().is_empty());
        a.deliver();
        assert_eq!(*seen.lock().unwrap(), vec![AckOutcome::Delivered]);
        let (x, _) = probe();
        let (y, _) = probe();
        let y = x.coalesce(y).expect("different acks stay apart");
        x.deliver();
        y.deliver();
    }

    /// A chain of loop acks as long as an item going round 200,000 times
    /// settles without recursion: the source's callback fires once, with
    /// the worst outcome, and the loop's count returns to zero.
    #[test]
    fn a_long_loop_chain_settles_without_overflowing_the_stack() {
        let (root, seen) = probe();
        let inside = Arc::new(AtomicUsize::new(0));
        let mut ack = root;
        for hop in 0..200_000u32 {
            inside.fetch_add(1, AcqRel);
            let i = inside.clone();
            // A sibling dead-lettered at the first pass makes the outcome.
            if hop == 1 {
                ack.fork().dead_letter("loop", "bad");
            }
            ack = Ack::in_loop(Some(ack), 1, hop, move || {
                i.fetch_sub(1, AcqRel);
            });
        }
        // On a small stack, as a worker's would be.
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || ack.deliver())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(inside.load(Acquire), 0);
        assert!(matches!(
            seen.lock().unwrap().as_slice(),
            [AckOutcome::DeadLettered { .. }]
        ));
    }

    #[test]
    fn next_pass_counts_in_place_only_for_a_lone_fork_of_its_loop() {
        let mut a = Ack::in_loop(None, 7, 2, || {});
        assert!(!a.next_pass(8), "another loop's ack");
        let b = a.fork();
        assert!(!a.next_pass(7), "a sibling shares it");
        b.deliver();
        assert!(a.next_pass(7));
        assert_eq!(a.hops_in(7), 3);
        assert_eq!(a.hops_in(8), 0);
        a.deliver();
    }

    #[test]
    fn leaving_a_loop_hands_the_item_its_outer_ack() {
        let (root, seen) = probe();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let outer = Ack::in_loop(Some(root), 1, 0, move || {
            d.fetch_add(1, AcqRel);
        });
        // Two passes of the inner loop 2, chained.
        let inner = Ack::in_loop(Some(outer.fork()), 2, 0, || {});
        let inner = Ack::in_loop(Some(inner), 2, 1, || {});
        outer.deliver();
        assert_eq!(inner.hops_in(2), 1);
        assert_eq!(inner.hops_in(1), 0);
        let left = inner.leave_loop(2).expect("the outer loop's ack");
        assert_eq!(left.hops_in(1), 0);
        assert_eq!(left.hops_in(2), 0, "no longer in loop 2");
        assert!(seen.lock().unwrap().is_empty(), "the item is not done");
        left.leave_loop(1)
            .expect("the source's ack")
            .dead_letter("s", "bad");
        assert_eq!(done.load(Acquire), 1);
        assert!(matches!(
            seen.lock().unwrap().as_slice(),
            [AckOutcome::DeadLettered { .. }]
        ));
    }

    #[test]
    fn a_panicking_callback_does_not_wedge_later_chains() {
        let r = std::panic::catch_unwind(|| {
            let bomb = Ack::new(|_| panic!("callback"));
            Ack::in_loop(Some(bomb), 1, 0, || {}).deliver();
        });
        assert!(r.is_err());
        let (root, seen) = probe();
        Ack::in_loop(Some(root), 1, 0, || {}).deliver();
        assert_eq!(*seen.lock().unwrap(), vec![AckOutcome::Delivered]);
    }

    #[test]
    fn merge_settles_parents_with_child_outcome() {
        let (p1, s1) = probe();
        let (p2, s2) = probe();
        let child = Ack::merge(vec![p1, p2]);
        child.deliver();
        assert_eq!(*s1.lock().unwrap(), vec![AckOutcome::Delivered]);
        assert_eq!(*s2.lock().unwrap(), vec![AckOutcome::Delivered]);
    }
}
