//! Workers end to end: a coordinator publishes into a pool inbox, workers
//! process it and publish into the coordinator's inbox, completion is
//! counted on the broker, and the result is exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use weir_nats::job::Fingerprint;

use weir::{CancellationToken, Pipeline, from_iter};
use weir_nats::completion;
use weir_nats::job::WorkerStats;
use weir_nats::publish::EdgeSink;
use weir_nats::{EdgeSettings, Job, worker};

use crate::nats::completion::{double_node, lost_settings, take_and_die};

use crate::nats::util::{
    collect_out, connect, coordinator, double_job, doubler, numbers, pool, publish, server,
    settings, wait_until, within, worker_opts,
};

const N: i64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_doubles_every_record_exactly_once() {
    within(async {
        let server = server().await;
        let job = double_job(connect(&server).await, "one", settings()).await;
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(worker::run(
            job.clone(),
            vec![doubler(|_| Ok(()), false)],
            worker_opts("w-1"),
            cancel.clone(),
        ));

        // The coordinator's source flow ends in an edge sink; its producer
        // is done once the sink has finished.
        let published = Arc::new(AtomicBool::new(false));
        let source = {
            let p = Pipeline::new();
            let flag = published.clone();
            let out = p.source("numbers", from_iter(numbers(0..N))).sink(
                "to-double",
                EdgeSink::new(&job, "double", "numbers", true, move |_| {
                    flag.store(true, Ordering::Release);
                }),
            );
            async move {
                p.run().await.expect("source flow");
                out.take().expect("published count")
            }
        };
        let (published_records, got) = tokio::join!(source, collect_out(&job, published));
        assert_eq!(published_records, N as u64);
        got.assert_exactly((0..N).map(|i| i * 2));
        assert_eq!(got.swept, 0);
        // Positions survive the round trip through the worker.
        let r = got
            .records
            .iter()
            .find(|r| r.json()["n"] == 2 * 4321)
            .unwrap();
        assert_eq!(r.pos.to_string(), "numbers#4322");

        let c = job.inbox_counts("double").await.unwrap();
        assert_eq!(
            (c.stored, c.last_seq),
            (0, 100),
            "100 messages, all committed"
        );
        assert_eq!(c.done(), 100);
        assert_eq!(
            job.inbox_counts("out").await.unwrap().last_seq,
            100,
            "one output message per input"
        );
        assert_eq!(job.dlq_count().await.unwrap(), 0);

        cancel.cancel();
        let stats = worker.await.unwrap().expect("worker stops cleanly");
        assert_eq!(stats.worker, "w-1");
        assert!(stats.stopped);
        assert_eq!(stats.concurrency, 2);
        let s = &stats.stages["double"];
        assert_eq!((s.records_in, s.records_out), (N as u64, N as u64));
        assert_eq!(
            (s.messages, s.dead, s.retried, s.redelivered),
            (100, 0, 0, 0)
        );
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.last_error, None);

        // The final report is in the job's bucket for `weir status`.
        let workers = job.workers().await.unwrap();
        assert_eq!(workers.len(), 1);
        assert!(workers[0].stopped);
        assert_eq!(workers[0].stages["double"].records_in, N as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_the_pool_and_the_result_is_exact() {
    within(async {
        let server = server().await;
        let job = double_job(connect(&server).await, "three", settings()).await;
        let cancel = CancellationToken::new();
        let mut workers = Vec::new();
        for w in 0..3 {
            // Each worker has its own connection, as on its own machine.
            let job = weir_nats::Job::open(connect(&server).await, "three", settings())
                .await
                .unwrap();
            // A little work per record, so that no worker can take it all.
            let stage = doubler(
                |n| {
                    if n % 100 == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Ok(())
                },
                false,
            );
            workers.push(tokio::spawn(worker::run(
                job,
                vec![stage],
                worker_opts(&format!("w-{w}")),
                cancel.clone(),
            )));
        }
        // Wait until the three are pulling.
        wait_until("three workers waiting", || async {
            job.inbox_counts("double").await.unwrap().waiting >= 3
        })
        .await;

        let published = Arc::new(AtomicBool::new(false));
        assert_eq!(
            publish(&job, "double", "numbers>double", &numbers(0..N)).await,
            100
        );
        published.store(true, Ordering::Release);
        let got = collect_out(&job, published).await;
        got.assert_exactly((0..N).map(|i| i * 2));

        cancel.cancel();
        let mut stats: Vec<WorkerStats> = Vec::new();
        for w in workers {
            stats.push(w.await.unwrap().expect("worker"));
        }
        let per: Vec<u64> = stats
            .iter()
            .map(|s| s.stages["double"].records_in)
            .collect();
        assert_eq!(per.iter().sum::<u64>(), N as u64, "{per:?}");
        assert!(
            per.iter().all(|n| *n > 0),
            "every worker did some work: {per:?}"
        );
        let out: u64 = stats.iter().map(|s| s.stages["double"].records_out).sum();
        assert_eq!(out, N as u64);
        let messages: u64 = stats.iter().map(|s| s.stages["double"].messages).sum();
        assert_eq!(messages, 100, "no message processed twice");

        let mut reported = job.workers().await.unwrap();
        reported.sort_by(|a, b| a.worker.cmp(&b.worker));
        let ids: Vec<&str> = reported.iter().map(|w| w.worker.as_str()).collect();
        assert_eq!(ids, ["w-0", "w-1", "w-2"]);
        assert!(reported.iter().all(|w| w.stopped));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_the_job_waits_for_it_and_stops_when_told() {
    within(async {
        let server = server().await;
        let broker = connect(&server).await;
        let job = weir_nats::Job::open(broker.clone(), "early", settings())
            .await
            .unwrap();
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(worker::run(
            job.clone(),
            vec![doubler(|_| Ok(()), false)],
            worker_opts("early"),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!worker.is_finished());
        let job = double_job(broker, "early", settings()).await;
        let published = Arc::new(AtomicBool::new(false));
        publish(&job, "double", "src", &numbers(0..500)).await;
        published.store(true, Ordering::Release);
        collect_out(&job, published)
            .await
            .assert_exactly((0..500).map(|i| i * 2));
        let stopping = Instant::now();
        cancel.cancel();
        let stats = worker.await.unwrap().unwrap();
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "stopping took {:?}",
            stopping.elapsed()
        );
        assert_eq!(stats.stages["double"].records_in, 500);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_workers_final_rate_is_plausible() {
    within(async {
        let server = server().await;
        let job = double_job(connect(&server).await, "rate", settings()).await;
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(worker::run(
            job.clone(),
            vec![doubler(|_| Ok(()), false)],
            worker_opts("w"),
            cancel.clone(),
        ));
        let started = Instant::now();
        publish(&job, "double", "src", &numbers(0..1000)).await;
        wait_until("the pool inbox drained", || async {
            job.inbox_counts("double").await.unwrap().stored == 0
        })
        .await;
        cancel.cancel();
        let stats = worker.await.unwrap().unwrap();
        let ran = started.elapsed().as_secs_f64();
        let s = &stats.stages["double"];
        assert_eq!(s.records_in, 1000);
        // 1000 records took milliseconds at least: a rate above a million
        // records per second is an artefact, not a measurement.
        assert!(
            s.rate.is_finite() && s.rate <= 1e6,
            "final rate {} records/s for 1000 records in {ran:.2} s",
            s.rate
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_worker_finishes_what_it_took_and_holds_nothing() {
    within(async {
        let server = server().await;
        let s = EdgeSettings {
            records_per_message: 10,
            ..Default::default()
        };
        let job = double_job(connect(&server).await, "drain", s).await;
        let published = Arc::new(AtomicBool::new(false));
        assert_eq!(publish(&job, "double", "src", &numbers(0..2000)).await, 200);
        published.store(true, Ordering::Release);

        // A slow worker, stopped in the middle.
        let slow = doubler(
            |_| {
                std::thread::sleep(Duration::from_millis(1));
                Ok(())
            },
            false,
        );
        let cancel = CancellationToken::new();
        let first = tokio::spawn(worker::run(
            job.clone(),
            vec![slow],
            worker_opts("first"),
            cancel.clone(),
        ));
        wait_until("a fifth of the work done", || async {
            job.inbox_counts("double").await.unwrap().done() >= 40
        })
        .await;
        cancel.cancel();
        let first = first
            .await
            .unwrap()
            .expect("the first worker stops cleanly");
        // Its last acks may still be on their way to the consumer; what it
        // held must be released well within ack_wait (30 s).
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let c = job.inbox_counts("double").await.unwrap();
            if c.ack_pending == 0 {
                break;
            }
            let s = &first.stages["double"];
            assert!(
                Instant::now() < deadline,
                "a stopped worker left messages taken and unacknowledged (they wait out ack_wait): \
                 {c:?}; the worker pulled {} messages and settled {} records",
                s.messages,
                s.records_in
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let done_by_first = first.stages["double"].records_in;
        assert!((400..2000).contains(&done_by_first), "{done_by_first}");
        assert_eq!(first.stages["double"].in_flight, 0);

        // A second worker does the rest, at once.
        let cancel = CancellationToken::new();
        let second = tokio::spawn(worker::run(
            job.clone(),
            vec![doubler(|_| Ok(()), false)],
            worker_opts("second"),
            cancel.clone(),
        ));
        let started = Instant::now();
        let got = collect_out(&job, published).await;
        got.assert_exactly((0..2000).map(|i| i * 2));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the rest took {:?}",
            started.elapsed()
        );
        cancel.cancel();
        let second = second.await.unwrap().unwrap();
        assert_eq!(done_by_first + second.stages["double"].records_in, 2000);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_lets_the_sweep_take_a_message_past_max_deliver() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "idle", lost_settings())
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
        publish(&job, "double", "src", &numbers(0..5)).await;
        // Two workers took the message and died.
        assert_eq!(take_and_die(&job, "double").await, 1);
        assert_eq!(take_and_die(&job, "double").await, 2);
        // A third, alive, hosts the stage and waits for work.
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(worker::run(
            job.clone(),
            vec![doubler(|_| Ok(()), false)],
            worker_opts("idle"),
            cancel.clone(),
        ));
        let nodes = double_node();
        let watching = completion::watch(&job, &nodes, Duration::from_millis(20), &cancel);
        let swept = match tokio::time::timeout(Duration::from_secs(15), watching).await {
            Ok(r) => r.expect("completion"),
            Err(_) => {
                let c = job.inbox_counts("double").await.unwrap();
                panic!("the sweep never ran with a live idle worker: {c:?}");
            }
        };
        assert_eq!(swept, 5);
        assert_eq!(job.dlq_count().await.unwrap(), 5);
        cancel.cancel();
        let stats = worker.await.unwrap().unwrap();
        assert_eq!(
            stats.stages["double"].messages, 0,
            "a message past max_deliver was delivered"
        );
    })
    .await;
}

/// A task longer than `ack_wait` is not redelivered to another worker: the
/// worker holding it sends in-progress acks, and pulls no more than it can
/// start, so nothing waits in its queue past `ack_wait` either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_longer_than_ack_wait_are_not_redelivered() {
    within(async {
        let server = server().await;
        let job = double_job(
            connect(&server).await,
            "slow",
            EdgeSettings {
                records_per_message: 1,
                ack_wait: Duration::from_secs(1),
                ..Default::default()
            },
        )
        .await;
        // Two workers, so a redelivery would have somewhere to go.
        let cancel = CancellationToken::new();
        let workers: Vec<_> = ["slow-1", "slow-2"]
            .into_iter()
            .map(|id| {
                tokio::spawn(worker::run(
                    job.clone(),
                    vec![doubler(
                        |_| {
                            std::thread::sleep(Duration::from_millis(2_500));
                            Ok(())
                        },
                        false,
                    )],
                    worker_opts(id),
                    cancel.clone(),
                ))
            })
            .collect();
        publish(&job, "double", "src", &numbers(0..8)).await;
        let published = Arc::new(AtomicBool::new(true));
        let got = collect_out(&job, published).await;
        got.assert_exactly((0..8).map(|i| i * 2));
        cancel.cancel();
        let mut redelivered = 0;
        for w in workers {
            let stats = w.await.unwrap().unwrap();
            redelivered += stats.stages["double"].redelivered;
        }
        assert_eq!(redelivered, 0, "a slow task was redelivered");
        assert_eq!(job.inbox_counts("double").await.unwrap().redelivered, 0);
    })
    .await;
}
