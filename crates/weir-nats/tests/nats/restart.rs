//! A broker restart in the middle of publishing: the client reconnects by
//! itself, the publisher retries the same ids, nothing is lost or doubled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use weir_nats::job::Fingerprint;

use futures::StreamExt;
use weir::CancellationToken;
use weir_nats::publish::{MessageLimits, Publisher, chunk};
use weir_nats::{EdgeSettings, Job, Status, codec, worker};

use crate::nats::util::{
    collect_out, connect, coordinator, double_job, doubler, n_of, numbers, pool, publish, server,
    settings, wait_until, within, worker_opts,
};

const N: i64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_across_a_broker_restart_stores_each_message_once() {
    within(async {
        let mut server = server().await;
        let settings = EdgeSettings {
            records_per_message: 10,
            ..Default::default()
        };
        let job = Job::open(connect(&server).await, "restart", settings)
            .await
            .unwrap();
        job.start(
            "p.yaml",
            &[pool("double"), coordinator("out")],
            &Fingerprint::default(),
            false,
        )
        .await
        .unwrap();
        let mut next = 0;
        let msgs = chunk(
            &numbers(0..1000),
            MessageLimits::records(10),
            &job.names.subject("double"),
            "src",
            &mut next,
        )
        .messages;
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
        let dups = second
            .await
            .unwrap()
            .expect("publish retries through the restart");
        // A publish whose ack was lost in the restart and that was sent
        // again is a duplicate the broker dropped: that is fine; being
        // stored twice is not.
        assert!(dups <= 50, "{dups}");
        let c = job.inbox_counts("double").await.unwrap();
        assert_eq!(
            (c.stored, c.last_seq),
            (100, 100),
            "each message stored once: {c:?}"
        );

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
                seen[n_of(&r.json()) as usize] += 1;
            }
            m.ack().await.unwrap();
            got += 1;
        }
        assert_eq!(got, 100);
        assert!(seen.iter().all(|c| *c == 1), "each record once");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_through_a_broker_crash_without_losing_a_record() {
    within(async {
        let mut server = server().await;
        let job = double_job(connect(&server).await, "through", settings()).await;
        let cancel = CancellationToken::new();
        // A stage slow enough that the restart falls in the middle.
        let stage = doubler(
            |n| {
                if n % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            },
            false,
        );
        let worker = tokio::spawn(worker::run(
            job.clone(),
            vec![stage],
            worker_opts("w"),
            cancel.clone(),
        ));
        let published = Arc::new(AtomicBool::new(false));
        assert_eq!(publish(&job, "double", "src", &numbers(0..N)).await, 50);
        published.store(true, Ordering::Release);
        let coordinator = {
            let job = job.clone();
            tokio::spawn(async move { collect_out(&job, published).await })
        };
        wait_until("some work done", || async {
            job.inbox_counts("double").await.unwrap().done() >= 10
        })
        .await;
        tokio::task::block_in_place(|| server.stop());
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| server.restart());

        let got = coordinator.await.unwrap();
        // A crash (SIGKILL) may make the broker forget that the coordinator
        // took or acknowledged a message: it is delivered again (at least
        // once; sinks are idempotent). Never may a record be lost.
        let counts = got.counts();
        let missing: Vec<i64> = (0..N)
            .map(|n| n * 2)
            .filter(|n| !counts.contains_key(n))
            .collect();
        assert!(missing.is_empty(), "lost records: {missing:?}");
        assert_eq!(counts.len(), N as usize, "only doubled values");
        let extra: usize = counts.values().map(|c| c - 1).sum();
        assert!(
            extra.is_multiple_of(100) && counts.values().all(|c| *c <= 2),
            "{extra} duplicates: only whole messages may be delivered again, once"
        );
        assert_eq!(got.swept, 0);
        cancel.cancel();
        let stats = worker
            .await
            .unwrap()
            .expect("the worker rides through the restart");
        assert!(stats.stages["double"].records_in >= N as u64);
        assert_eq!(job.dlq_count().await.unwrap(), 0);
    })
    .await;
}
