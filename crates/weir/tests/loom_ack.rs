//! Model-checks the ack primitive with loom: however forks are settled or
//! dropped across threads, the source callback runs exactly once, with the
//! worst outcome.
//!
//! Run: `cargo test -p weir --features loom --test loom_ack --release`
#![cfg(feature = "loom")]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::thread;
use weir::{Ack, AckOutcome};

fn probe() -> (
    Ack,
    Arc<AtomicUsize>,
    Arc<loom::sync::Mutex<Option<AckOutcome>>>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(loom::sync::Mutex::new(None));
    let (c, s) = (calls.clone(), seen.clone());
    let ack = Ack::new(move |o| {
        c.fetch_add(1, SeqCst);
        *s.lock().unwrap() = Some(o);
    });
    (ack, calls, seen)
}

#[test]
fn fires_once_when_forks_settle_on_different_threads() {
    loom::model(|| {
        let (ack, calls, seen) = probe();
        let a = ack.fork();
        let b = ack.fork();
        let t1 = thread::spawn(move || a.deliver());
        let t2 = thread::spawn(move || b.dead_letter("s", "bad"));
        ack.deliver();
        t1.join().unwrap();
        t2.join().unwrap();
        assert_eq!(calls.load(SeqCst), 1);
        assert_eq!(
            *seen.lock().unwrap(),
            Some(AckOutcome::DeadLettered {
                stage: "s".into(),
                reason: "bad".into()
            })
        );
    });
}

#[test]
fn a_fork_dropped_on_another_thread_fails_the_item() {
    loom::model(|| {
        let (ack, calls, seen) = probe();
        let a = ack.fork();
        let t = thread::spawn(move || drop(a));
        ack.deliver();
        t.join().unwrap();
        assert_eq!(calls.load(SeqCst), 1);
        assert!(matches!(
            *seen.lock().unwrap(),
            Some(AckOutcome::Failed { .. })
        ));
    });
}

#[test]
fn forking_while_another_thread_settles() {
    loom::model(|| {
        let (ack, calls, seen) = probe();
        let a = ack.fork();
        let t = thread::spawn(move || {
            let c = a.fork();
            a.deliver();
            c.deliver();
        });
        ack.deliver();
        t.join().unwrap();
        assert_eq!(calls.load(SeqCst), 1);
        assert_eq!(*seen.lock().unwrap(), Some(AckOutcome::Delivered));
    });
}
