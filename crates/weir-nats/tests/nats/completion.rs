//! Completion: a message that no worker ever finished (every delivery died
//! with its worker) is swept into the dead-letter stream, and only then.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_workers_all_died_is_swept_into_the_dead_letters() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "sweep", lost_settings()).await.unwrap();
        job.start("p.yaml", &[pool("double")]).await.unwrap();
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
        assert!(!watching.is_finished(), "swept while the last delivery was in flight");

        // After the last ack_wait, nothing will deliver it again.
        let swept = watching.await.unwrap().expect("completion");
        assert_eq!(swept, 5);
        let c = job.inbox_counts("double").await.unwrap();
        assert_eq!((c.stored, c.pending, c.ack_pending), (0, 0, 0), "{c:?}");

        let entries = dlq::list(&job).await.unwrap();
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
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stops_with_an_error_when_cancelled() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "cancel", lost_settings()).await.unwrap();
        job.start("p.yaml", &[pool("double")]).await.unwrap();
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
