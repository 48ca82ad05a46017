//! Sources read as they arrive (standard input, a followed file): a thread
//! reads lines and sends them in chunks into a bounded channel, a chunk as
//! soon as no whole line is left buffered (so a burst goes in chunks of up
//! to [`CHUNK`] lines, a lone line at once), and the source is a stream
//! over it, so the engine sends on whatever is ready. The thread starts at
//! the first poll, so `weir check` reads nothing; it blocks when the
//! channel is full, which bounds memory; a stopped run stops waiting for it
//! at once (the stream is dropped), and the thread ends at its next line,
//! or, for readers that wait by polling, at their next poll.

use std::io;

#[cfg(doc)]
use crate::sources::Raw;

/// Lines the thread sends at once, at most.
pub(crate) const CHUNK: usize = 1024;

/// Chunks read ahead by the thread, at most.
const READ_AHEAD: usize = 4;

/// Lines as items (a [`Raw`], or a [`Raw`] with its ack), read by a
/// thread that may wait.
pub(crate) trait Lines: Send + 'static {
    /// What a line becomes.
    type Item: Send + 'static;
    /// The next line: `None` at the end of the input, `Some(None)` for a
    /// line that is skipped (a blank line of JSON Lines). A reader that
    /// waits for more by polling calls `quit` between polls and ends
    /// (`None`) when it says so: nobody reads any more.
    fn next(&mut self, quit: &dyn Fn() -> bool) -> Option<Option<io::Result<Self::Item>>>;
    /// False when the next line may need a read that waits (no whole line
    /// is buffered).
    fn ready(&self) -> bool;
}

/// The items of `lines` as a stream, read on a thread of their own
/// (started at the first poll) named after `what`. At most [`READ_AHEAD`]
/// chunks wait in the channel.
pub(crate) fn stream<L: Lines>(
    lines: L,
    what: &'static str,
) -> impl futures::Stream<Item = io::Result<L::Item>> + Send + 'static {
    use futures::StreamExt;
    enum State<L, T> {
        NotStarted(L),
        Reading(tokio::sync::mpsc::Receiver<Vec<io::Result<T>>>),
        Done,
    }
    let chunks = futures::stream::unfold(State::NotStarted(lines), move |state| async move {
        let mut rx = match state {
            State::Reading(rx) => rx,
            State::Done => return None,
            State::NotStarted(lines) => {
                let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
                let spawned = std::thread::Builder::new()
                    .name("weir-live".into())
                    .spawn(move || read_chunks(lines, &tx));
                if let Err(e) = spawned {
                    let err =
                        io::Error::other(format!("cannot start the thread that reads {what}: {e}"));
                    return Some((vec![Err(err)], State::Done));
                }
                rx
            }
        };
        let chunk = rx.recv().await?;
        Some((chunk, State::Reading(rx)))
    });
    chunks.flat_map(futures::stream::iter)
}

/// The reading thread: chunks of lines into `tx` until the end of the
/// input, a read error (sent as the last item), or the run's end (the
/// receiver is gone).
fn read_chunks<L: Lines>(mut lines: L, tx: &tokio::sync::mpsc::Sender<Vec<io::Result<L::Item>>>) {
    let mut chunk = Vec::with_capacity(CHUNK);
    let quit = || tx.is_closed();
    loop {
        let (item, last) = match lines.next(&quit) {
            None => (None, true),
            Some(None) => (None, false),
            Some(Some(Ok(raw))) => (Some(Ok(raw)), false),
            Some(Some(Err(e))) => (Some(Err(e)), true),
        };
        chunk.extend(item);
        if (last || chunk.len() >= CHUNK || !lines.ready())
            && !chunk.is_empty()
            && tx
                .blocking_send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))
                .is_err()
        {
            return;
        }
        if last {
            return;
        }
    }
}
