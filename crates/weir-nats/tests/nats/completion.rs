//! Completion: a message that no worker ever finished (every delivery died
//! with its worker) is swept into the dead-letter stream, and only then.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use weir_nats::job::Fingerprint;

use futures::StreamExt;
use weir::CancellationToken;
use weir_nats::completion::{self, Node, Producer};
use weir_nats::{EdgeSettings, Job, dlq};

use crate::nats::util::{connect, n_of, numbers, pool, publish, server, within};

/// Settings of the sweep tests: two deliveries, one second each.
pub fn lost_settings() -> EdgeSettings {
    EdgeSettings {
        max_deliver: 2,
        ack_wait: Duration::from_secs(1),
        ..Default::default()
    }
}

/// Takes the next message of `inbox` and drops it unacknowledged, as a
/// worker killed while processing it; returns its delivery count.
pub async fn take_and_die(job: &Job, inbox: &str) -> i64 {
    let consumer = job.consumer(inbox).await.unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let m = batch
        .next()
        .await
        .expect("a message to take")
        .expect("a message, not an error");
    m.info().unwrap().delivered
}

/// The pool inbox `double`, fed by a finished local flow.
pub fn double_node() -> Vec<Node> {
    vec![Node {
        inbox: "double".to_string(),
        pool: true,
        producers: vec![Producer::Local(Arc::new(AtomicBool::new(true)))],
        producers_done: Arc::default(),
    }]
}

/// A worker of the pool that is alive and idle: it keeps a pull request
/// open, as every running worker does, until `stop`. Returns the messages
/// it was given (none is expected: it only lets the broker notice that a
/// message has used up its deliveries, which nats-server does when it
/// serves a pull request).
pub fn idle_worker(job: &Job, stop: CancellationToken) -> tokio::task::JoinHandle<usize> {
    let job = job.clone();
    tokio::spawn(async move {
        let consumer = job.consumer("double").await.unwrap();
        let mut got = 0;
        while !stop.is_cancelled() {
            let mut batch = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_millis(200))
                .messages()
                .await
                .unwrap();
            while let Some(m) = batch.next().await {
                if m.is_ok() {
                    got += 1;
                }
            }
        }
        got
    })
}

/// Checks the dead letters of the records 0..5 of one swept message.
async fn assert_swept_0_to_5(job: &Job) {
    let entries = dlq::list(job).await.unwrap();
    let mut ns: Vec<i64> = entries.iter().map(|(_, e)| n_of(&e.record)).collect();
    ns.sort_unstable();
    assert_eq!(ns, vec![0, 1, 2, 3, 4]);
    for (_, e) in &entries {
        assert_eq!(e.stage, "double");
        assert_eq!(e.attempts, 2);
        assert!(
            e.error.starts_with("no result after 2 deliveries"),
            "{}",
            e.error
        );
    }
    let c = job.inbox_counts("double").await.unwrap();
    assert_eq!((c.stored, c.pending, c.ack_pending), (0, 0, 0), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_workers_all_died_is_swept_into_the_dead_letters() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "sweep", lost_settings())
            .await
            .unwrap();
        job.start("p.yaml", &[pool("double")], &Fingerprint::default(), false)
            .await
            .unwrap();
        publish(&job, "double", "src", &numbers(0..5)).await;

        // The coordinator watches from the start: it must not sweep a
        // message that can still be delivered.
        let nodes = double_node();
        let cancel = CancellationToken::new();
        let watching = {
            let job = job.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                completion::watch(&job, &nodes, Duration::from_millis(20), &cancel).await
            })
        };
        assert_eq!(take_and_die(&job, "double").await, 1);
        // Redelivered after ack_wait, and dropped again.
        assert_eq!(take_and_die(&job, "double").await, 2);
        assert!(
            !watching.is_finished(),
            "swept while the last delivery was in flight"
        );

        // Another worker of the pool is alive and idle: after the last
        // ack_wait nothing delivers the message again, and the sweep takes
        // it.
        let stop = CancellationToken::new();
        let idle = idle_worker(&job, stop.clone());
        let swept = watching.await.unwrap().expect("completion");
        stop.cancel();
        assert_eq!(
            idle.await.unwrap(),
            0,
            "a message past max_deliver was delivered again"
        );
        assert_eq!(swept, 5);
        assert_swept_0_to_5(&job).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_workers_all_died_is_swept_with_no_worker_left() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "sweep", lost_settings())
            .await
            .unwrap();
        job.start("p.yaml", &[pool("double")], &Fingerprint::default(), false)
            .await
            .unwrap();
        publish(&job, "double", "src", &numbers(0..5)).await;
        // Both workers of the pool took the message and were killed: no
        // worker is left, only the coordinator.
        assert_eq!(take_and_die(&job, "double").await, 1);
        assert_eq!(take_and_die(&job, "double").await, 2);
        let cancel = CancellationToken::new();
        let nodes = double_node();
        let watching = completion::watch(&job, &nodes, Duration::from_millis(20), &cancel);
        let swept = match tokio::time::timeout(Duration::from_secs(10), watching).await {
            Ok(r) => r.expect("completion"),
            Err(_) => {
                let c = job.inbox_counts("double").await.unwrap();
                panic!("the job never completes: the message stays in ack_pending: {c:?}");
            }
        };
        assert_eq!(swept, 5);
        assert_swept_0_to_5(&job).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stops_with_an_error_when_cancelled() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "cancel", lost_settings())
            .await
            .unwrap();
        job.start("p.yaml", &[pool("double")], &Fingerprint::default(), false)
            .await
            .unwrap();
        // A producer that never finishes.
        let nodes = vec![Node {
            inbox: "double".to_string(),
            pool: true,
            producers: vec![Producer::Local(Arc::default())],
            producers_done: Arc::default(),
        }];
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.cancel();
        });
        let err = completion::watch(&job, &nodes, Duration::from_millis(50), &cancel)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
    })
    .await;
}
