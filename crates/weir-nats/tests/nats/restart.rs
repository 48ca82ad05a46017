//! A broker restart in the middle of publishing: the client reconnects by
//! itself, the publisher retries the same ids, nothing is lost or doubled.

use std::time::Duration;

use futures::StreamExt;
use weir_nats::publish::{Publisher, chunk};
use weir_nats::{EdgeSettings, Job, Status, codec};

use crate::nats::util::{connect, coordinator, n_of, numbers, pool, server, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_across_a_broker_restart_stores_each_message_once() {
    within(async {
        let mut server = server().await;
        let settings = EdgeSettings {
            records_per_message: 10,
            ..Default::default()
        };
        let job = Job::open(connect(&server).await, "restart", settings).await.unwrap();
        job.start("p.yaml", &[pool("double"), coordinator("out")])
            .await
            .unwrap();
        let mut next = 0;
        let msgs = chunk(&numbers(0..1000), 10, &job.names.subject("double"), "src", &mut next);
        assert_eq!(msgs.len(), 100);
        let publisher = Publisher::new(job.clone());
        assert_eq!(publisher.publish_all(&msgs[..50]).await.unwrap(), 0);
        assert_eq!(job.inbox_counts("double").await.unwrap().stored, 50);

        // The broker goes down; the second half is published while it is
        // down and must get through once it is back.
        tokio::task::block_in_place(|| server.stop());
        let second = {
            let publisher = publisher.clone();
            let msgs = msgs[50..].to_vec();
            tokio::spawn(async move { publisher.publish_all(&msgs).await })
        };
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!second.is_finished(), "published into a stopped broker?");
        tokio::task::block_in_place(|| server.restart());
        let dups = second.await.unwrap().expect("publish retries through the restart");
        // A publish whose ack was lost in the restart and that was sent
        // again is a duplicate the broker dropped: that is fine; being
        // stored twice is not.
        assert!(dups <= 50, "{dups}");
        let c = job.inbox_counts("double").await.unwrap();
        assert_eq!((c.stored, c.last_seq), (100, 100), "each message stored once: {c:?}");

        // The duplicate window survived the restart: everything again is
        // dropped.
        assert_eq!(publisher.publish_all(&msgs).await.unwrap(), 100);
        assert_eq!(job.inbox_counts("double").await.unwrap().stored, 100);
        assert_eq!(job.state().await.unwrap().unwrap().status, Status::Running);

        // And the records are all there, once.
        let consumer = job.consumer("double").await.unwrap();
        let mut seen = vec![0u32; 1000];
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            for r in codec::decode(&m.payload).unwrap() {
                seen[n_of(&r.value) as usize] += 1;
            }
            m.ack().await.unwrap();
            got += 1;
        }
        assert_eq!(got, 100);
        assert!(seen.iter().all(|c| *c == 1), "each record once");
    })
    .await;
}
