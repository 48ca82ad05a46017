//! Edges: the bounded channels between stages, and the output side of a
//! stage that routes each item to one or more of them.
//!
//! Items cross edges in batches of [`Envelope`]s so the channel cost is paid
//! once per batch. Every edge is bounded (in batches); a full edge makes its
//! producer wait, which is how backpressure travels upstream.
//!
//! While a pipeline is built, a stage's output is a [`Slot`]: a place that the
//! downstream side fills in later with a channel or a fan-out policy. At run
//! time each worker resolves its slot into a [`Router`] (which leaf or leaves
//! an item goes to) and an [`Emitter`] with one buffer per leaf.
//!
//! The bound of an edge is in batches, so it bounds memory only if batches
//! are bounded too: the [`Emitter`] never sends more than `batch_size` items
//! at once, however many a stage hands it (a `flat_map` that yields a
//! thousand items per input, an aggregate that flushes every group).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;

use crate::ack::Ack;
use crate::error::BoxError;
use crate::metrics::StageMetrics;

/// An item and its ack fork (if its source attached one).
pub(crate) struct Envelope<T> {
    pub value: T,
    pub ack: Option<Ack>,
}

impl<T> Envelope<T> {
    pub fn new(value: T) -> Self {
        Envelope { value, ack: None }
    }

    /// The item is done on purpose (filtered, or committed by a sink).
    pub fn deliver(self) {
        if let Some(a) = self.ack {
            a.deliver();
        }
    }
}

/// What crosses an edge.
pub(crate) type Batch<T> = Vec<Envelope<T>>;
pub(crate) type Tx<T> = async_channel::Sender<Batch<T>>;
pub(crate) type Rx<T> = async_channel::Receiver<Batch<T>>;

/// Closes one edge when the run aborts. Holds only a weak handle, so it does
/// not keep the edge open when its real ends are gone.
pub(crate) type Closer = Box<dyn Fn() + Send + Sync>;

/// Creates a bounded edge of `cap` batches, registering its closer.
pub(crate) fn edge<T: Send + 'static>(cap: usize, closers: &mut Vec<Closer>) -> (Tx<T>, Rx<T>) {
    let (tx, rx) = async_channel::bounded(cap.max(1));
    let weak = rx.downgrade();
    closers.push(Box::new(move || {
        if let Some(r) = weak.upgrade() {
            r.close();
        }
    }));
    (tx, rx)
}

type CloneFn<T> = Arc<dyn Fn(&T) -> T + Send + Sync>;
type HashFn<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;
type PredFn<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// A stage output waiting to be connected.
pub(crate) type Slot<T> = Arc<Mutex<Option<PortSpec<T>>>>;

pub(crate) fn new_slot<T>() -> Slot<T> {
    Arc::new(Mutex::new(None))
}

pub(crate) fn fill<T>(slot: &Slot<T>, spec: PortSpec<T>) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(spec);
}

/// Why a stage stopped early.
pub(crate) enum Halt {
    /// An edge closed: the run is aborting.
    Stopped,
    /// A stage failed (fused stages' errors arrive already attributed).
    Failed(BoxError),
}

/// A stage fused into its upstream: instead of a channel, the upstream
/// worker hands it each batch directly, on its own thread. See
/// ARCHITECTURE.md, "Fusion".
pub(crate) trait Downstream<T>: Send {
    /// Processes one batch to completion (including the stage's own output).
    fn consume(&mut self, batch: Batch<T>) -> BoxFuture<'_, Result<(), Halt>>;
    /// End of input: flush and finish.
    fn finish(&mut self) -> BoxFuture<'_, Result<(), Halt>>;
    /// The producer has nothing more ready and sent what it held: send on
    /// what this stage holds too, down its own fused consumers, so a
    /// partial batch does not wait inside a fused chain for more input.
    fn flush(&mut self) -> BoxFuture<'_, Result<(), Halt>>;
}

/// Where a fused consumer leaves itself for its producer to pick up: one
/// instance per producer worker (each worker of a fused pool runs its own
/// copy of the chain).
pub(crate) type DirectCell<T> = Arc<Mutex<Vec<Box<dyn Downstream<T>>>>>;

/// The consuming end of an edge as a stage sees it when it is built.
pub(crate) struct Input<T> {
    pub rx: Rx<T>,
    pub direct: DirectCell<T>,
}

impl<T> Input<T> {
    /// Offers one instance of this stage to its producer as a fused
    /// consumer; the producer's workers take one each.
    pub fn fuse(&self, d: Box<dyn Downstream<T>>) {
        self.direct
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(d);
    }
}

/// Where a stage's output goes, as the builder recorded it.
pub(crate) enum PortSpec<T> {
    /// One edge (or, when its consumer is fused, a direct call).
    Chan(Tx<T>, DirectCell<T>),
    /// Every branch gets a copy.
    Broadcast(CloneFn<T>, Vec<Slot<T>>),
    /// Branch `hash(key) % n`.
    Partition(HashFn<T>, Vec<Slot<T>>),
    /// First branch when the predicate holds, second otherwise.
    Route(PredFn<T>, Slot<T>, Slot<T>),
}

/// The routing tree of one stage output, resolved to leaf indices.
pub(crate) enum Router<T> {
    Leaf(usize),
    Broadcast(CloneFn<T>, Vec<Router<T>>),
    Partition(HashFn<T>, Vec<Router<T>>),
    Route(PredFn<T>, Box<Router<T>>, Box<Router<T>>),
}

/// Where a leaf's items go.
pub(crate) enum LeafOut<T> {
    Chan(Tx<T>),
    Direct(Box<dyn Downstream<T>>),
}

/// A resolved output: the routing tree and what is at its leaves.
pub(crate) struct Port<T> {
    pub router: Router<T>,
    pub leaves: Vec<LeafOut<T>>,
}

/// Checks that a slot is connected all the way down; `Err` names what is
/// not.
pub(crate) fn check<T>(slot: &Slot<T>, what: &str) -> Result<(), String> {
    walk(slot, what, &mut Vec::new(), false).map(|_| ())
}

/// Resolves a slot into a port for one worker. Each worker takes one
/// instance of a fused consumer (a fused consumer offers as many as its
/// producer has workers).
pub(crate) fn resolve<T>(slot: &Slot<T>, what: &str) -> Result<Port<T>, String> {
    let mut leaves = Vec::new();
    let router = walk(slot, what, &mut leaves, true)?;
    Ok(Port { router, leaves })
}

fn walk<T>(
    slot: &Slot<T>,
    what: &str,
    leaves: &mut Vec<LeafOut<T>>,
    take: bool,
) -> Result<Router<T>, String> {
    let guard = slot.lock().unwrap_or_else(|p| p.into_inner());
    let mut many = |slots: &Vec<Slot<T>>| -> Result<Vec<Router<T>>, String> {
        slots
            .iter()
            .enumerate()
            .map(|(i, s)| walk(s, &format!("{what}, branch {i}"), leaves, take))
            .collect()
    };
    let router = match guard.as_ref() {
        None => {
            return Err(format!(
                "{what} is not connected to anything (add a stage or a sink)"
            ));
        }
        Some(PortSpec::Chan(tx, direct)) => {
            let fused = if take {
                direct.lock().unwrap_or_else(|p| p.into_inner()).pop()
            } else {
                None
            };
            leaves.push(match fused {
                Some(d) => LeafOut::Direct(d),
                None => LeafOut::Chan(tx.clone()),
            });
            Router::Leaf(leaves.len() - 1)
        }
        Some(PortSpec::Broadcast(c, slots)) => Router::Broadcast(c.clone(), many(slots)?),
        Some(PortSpec::Partition(h, slots)) => Router::Partition(h.clone(), many(slots)?),
        Some(PortSpec::Route(p, a, b)) => {
            let yes = walk(a, &format!("{what}, matching branch"), leaves, take)?;
            let no = walk(b, &format!("{what}, other branch"), leaves, take)?;
            Router::Route(p.clone(), Box::new(yes), Box::new(no))
        }
    };
    Ok(router)
}

struct Leaf<T> {
    out: LeafOut<T>,
    buf: Batch<T>,
}

/// One worker's output: routes items to per-leaf buffers and sends a buffer
/// when it holds a batch (or when asked to flush everything). A fused leaf
/// gets every buffer at once: handing over costs a call, not a wake-up.
pub(crate) struct Emitter<T> {
    router: Router<T>,
    leaves: Vec<Leaf<T>>,
    batch_size: usize,
    metrics: Arc<StageMetrics>,
    /// A fused consumer was given items since the last `flush(true)`: it
    /// may hold some of them (its own partial batch) until told to flush.
    direct_fed: bool,
}

impl<T> Emitter<T> {
    pub fn new(port: Port<T>, batch_size: usize, metrics: Arc<StageMetrics>) -> Self {
        Emitter {
            router: port.router,
            leaves: port
                .leaves
                .into_iter()
                .map(|out| Leaf {
                    out,
                    buf: Vec::new(),
                })
                .collect(),
            batch_size: batch_size.max(1),
            metrics,
            direct_fed: false,
        }
    }

    /// Routes one item.
    pub fn push(&mut self, e: Envelope<T>) {
        route(&self.router, &mut self.leaves, e);
    }

    /// Routes a whole batch; a plain edge takes it without copying.
    pub fn push_batch(&mut self, mut batch: Batch<T>) {
        if let Router::Leaf(i) = self.router {
            let buf = &mut self.leaves[i].buf;
            if buf.is_empty() {
                *buf = batch;
            } else {
                buf.append(&mut batch);
            }
        } else {
            for e in batch {
                route(&self.router, &mut self.leaves, e);
            }
        }
    }

    fn ready(&self, leaf: &Leaf<T>, all: bool) -> bool {
        !leaf.buf.is_empty()
            && (all || matches!(leaf.out, LeafOut::Direct(_)) || leaf.buf.len() >= self.batch_size)
    }

    /// True when some buffer should be sent now.
    pub fn has_full(&self) -> bool {
        self.leaves.iter().any(|l| self.ready(l, false))
    }

    /// Sends full buffers, or every non-empty one when `all`, in batches of
    /// at most `batch_size` items (a remainder smaller than a batch stays
    /// for later unless `all`). With `all`, fused consumers are told to
    /// send on what they hold as well ([`Downstream::flush`]). Waits while
    /// an edge is full (backpressure); that wait is counted as output wait.
    ///
    /// # Errors
    /// [`Halt::Stopped`] when an edge was closed because the run is
    /// aborting (the items not sent are dropped, so their acks fail);
    /// [`Halt::Failed`] when a fused consumer failed.
    ///
    /// # Cancel safety
    /// Not cancel safe: a batch being sent is lost if the future is dropped.
    /// No caller polls it inside a `select!`.
    pub async fn flush(&mut self, all: bool) -> Result<(), Halt> {
        let size = self.batch_size;
        for i in 0..self.leaves.len() {
            if !self.ready(&self.leaves[i], all) {
                continue;
            }
            let leaf = &mut self.leaves[i];
            // A fused consumer takes everything now: it has no queue to fill.
            let direct = matches!(leaf.out, LeafOut::Direct(_));
            self.direct_fed |= direct;
            let every = all || direct;
            let buf = std::mem::take(&mut leaf.buf);
            if buf.len() <= size {
                // The common case: one batch, sent as it is, without a copy.
                send(&mut leaf.out, buf, &self.metrics).await?;
                continue;
            }
            let mut rest = buf.into_iter();
            while rest.len() >= size || (every && rest.len() > 0) {
                let chunk: Batch<T> = rest.by_ref().take(size).collect();
                send(&mut leaf.out, chunk, &self.metrics).await?;
            }
            leaf.buf = rest.collect();
        }
        if all && self.direct_fed {
            self.direct_fed = false;
            for leaf in &mut self.leaves {
                if let LeafOut::Direct(d) = &mut leaf.out {
                    d.flush().await?;
                }
            }
        }
        Ok(())
    }

    /// Something would move on if the worker flushed now: items of its own
    /// not yet sent, or items a fused consumer may hold. Workers check it
    /// before they wait for input.
    pub fn holds_items(&self) -> bool {
        self.direct_fed || self.pending() > 0
    }

    /// End of this worker's output: sends what is left and finishes fused
    /// consumers. (Edges close by themselves when their last sender drops.)
    pub async fn close(&mut self) -> Result<(), Halt> {
        self.flush(true).await?;
        for leaf in &mut self.leaves {
            if let LeafOut::Direct(d) = &mut leaf.out {
                d.finish().await?;
            }
        }
        Ok(())
    }

    /// Items buffered but not yet sent.
    pub fn pending(&self) -> usize {
        self.leaves.iter().map(|l| l.buf.len()).sum()
    }
}

/// Sends one batch (at most `batch_size` items) to one leaf.
async fn send<T>(
    out: &mut LeafOut<T>,
    batch: Batch<T>,
    metrics: &StageMetrics,
) -> Result<(), Halt> {
    let n = batch.len();
    match out {
        LeafOut::Direct(d) => d.consume(batch).await?,
        LeafOut::Chan(tx) => match tx.try_send(batch) {
            Ok(()) => {}
            Err(async_channel::TrySendError::Full(batch)) => {
                let _waiting = Waiting::start(&metrics.waiting_output_now, &metrics.wait_output_ns);
                tx.send(batch).await.map_err(|_| Halt::Stopped)?;
            }
            Err(async_channel::TrySendError::Closed(_)) => return Err(Halt::Stopped),
        },
    }
    StageMetrics::add(&metrics.emitted, n);
    Ok(())
}

/// Marks a worker as waiting (for input, or for room downstream) for as long
/// as it lives, and adds the time waited when it goes. A guard rather than a
/// decrement after the `.await`: a wait inside a `select!` is dropped when
/// another branch wins, and the mark must go with it.
struct Waiting<'a> {
    now: &'a AtomicU64,
    total_ns: &'a AtomicU64,
    since: Instant,
}

impl<'a> Waiting<'a> {
    fn start(now: &'a AtomicU64, total_ns: &'a AtomicU64) -> Self {
        now.fetch_add(1, Relaxed);
        Waiting {
            now,
            total_ns,
            since: Instant::now(),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.now.fetch_sub(1, Relaxed);
        StageMetrics::time(self.total_ns, self.since.elapsed());
    }
}

fn route<T>(router: &Router<T>, leaves: &mut [Leaf<T>], e: Envelope<T>) {
    match router {
        Router::Leaf(i) => leaves[*i].buf.push(e),
        Router::Broadcast(clone, branches) => {
            let (last, rest) = branches.split_last().expect("broadcast has branches");
            for b in rest {
                let copy = Envelope {
                    value: clone(&e.value),
                    ack: e.ack.as_ref().map(Ack::fork),
                };
                route(b, leaves, copy);
            }
            route(last, leaves, e);
        }
        Router::Partition(hash, branches) => {
            let i = (hash(&e.value) % branches.len() as u64) as usize;
            route(&branches[i], leaves, e);
        }
        Router::Route(pred, yes, no) => {
            if pred(&e.value) {
                route(yes, leaves, e)
            } else {
                route(no, leaves, e)
            }
        }
    }
}

/// Waits for the next batch, counting the wait and sampling the queue.
/// `None` when the edge is closed and empty.
///
/// # Cancel safety
/// Cancel safe: dropped before it returns, it has taken no batch (the
/// channel's `recv` is cancel safe) and it takes its waiting mark back.
pub(crate) async fn recv<T>(rx: &Rx<T>, metrics: &StageMetrics) -> Option<Batch<T>> {
    let batch = match rx.try_recv() {
        Ok(b) => b,
        Err(async_channel::TryRecvError::Closed) => return None,
        Err(async_channel::TryRecvError::Empty) => {
            let _waiting = Waiting::start(&metrics.waiting_input_now, &metrics.wait_input_ns);
            rx.recv().await.ok()?
        }
    };
    metrics.sample_queue(rx.len());
    StageMetrics::add(&metrics.received, batch.len());
    Some(batch)
}

/// Why an item was dropped in flight when the run aborted.
pub(crate) const ABORTED: &str = "pipeline aborted before the item was committed";

/// Abandons a batch because the run is aborting: the items are counted as
/// dropped and their acks fail.
pub(crate) fn abandon<T>(batch: Batch<T>, metrics: &StageMetrics) {
    drop_items(batch, metrics, ABORTED);
}

/// Counts items a stage received and will never finish as dropped, and
/// fails their acks with `reason`, so that the stage still balances
/// (`received = ok + filtered + dead_lettered + dropped`) and the source
/// learns why.
pub(crate) fn drop_items<T>(
    items: impl IntoIterator<Item = Envelope<T>>,
    metrics: &StageMetrics,
    reason: &str,
) {
    let mut n = 0;
    for e in items {
        n += 1;
        if let Some(a) = e.ack {
            a.fail(reason);
        }
    }
    StageMetrics::add(&metrics.dropped, n);
}
