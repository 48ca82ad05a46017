//! Starting, resuming and restarting a job: streams, consumers, state.

use std::time::Duration;
use weir_nats::job::{Fingerprint, StagePrint};

use async_nats::jetstream::{consumer, stream};
use futures::StreamExt;
use weir_nats::job::Start;
use weir_nats::{EdgeSettings, Job, Status};

use crate::nats::util::{connect, coordinator, numbers, pool, publish, server, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_creates_inboxes_and_resumes_a_running_job() {
    within(async {
        let server = server().await;
        let settings = EdgeSettings {
            records_per_message: 100,
            edge_capacity: 77,
            ack_wait: Duration::from_secs(7),
            max_deliver: 4,
            max_ack_pending: 9,
            ..Default::default()
        };
        let job = Job::open(connect(&server).await, "orders 2024", settings.clone())
            .await
            .unwrap();
        assert_eq!(job.names.job(), "orders_2024", "names are sanitized");
        assert!(
            job.state().await.unwrap().is_none(),
            "no state before start"
        );
        let inboxes = [pool("double"), coordinator("out")];
        assert_eq!(
            job.start("p.yaml", &inboxes, &Fingerprint::default(), false)
                .await
                .unwrap(),
            Start::Fresh
        );

        // Inbox streams: work queue, bounded, refusing new messages when full.
        for name in ["double", "out"] {
            let mut s = job.inbox(name).await.unwrap();
            let info = s.info().await.unwrap();
            assert_eq!(info.config.name, format!("WEIR_orders_2024_{name}"));
            assert_eq!(
                info.config.subjects,
                vec![format!("weir.orders_2024.{name}")]
            );
            assert_eq!(info.config.retention, stream::RetentionPolicy::WorkQueue);
            assert_eq!(info.config.discard, stream::DiscardPolicy::New);
            assert_eq!(info.config.max_messages, 77);
            assert_eq!(info.state.messages, 0);
        }
        // The pool consumer carries the edge settings; the coordinator's
        // holds messages for as long as it likes.
        let mut c = job.consumer("double").await.unwrap();
        let cfg = c.info().await.unwrap().config.clone();
        assert_eq!(cfg.durable_name.as_deref(), Some("double"));
        assert_eq!(cfg.ack_policy, consumer::AckPolicy::Explicit);
        assert_eq!(cfg.ack_wait, Duration::from_secs(7));
        assert_eq!(cfg.max_deliver, 4);
        assert_eq!(cfg.max_ack_pending, 9);
        let mut c = job.consumer("out").await.unwrap();
        let cfg = c.info().await.unwrap().config.clone();
        assert_eq!(cfg.ack_policy, consumer::AckPolicy::Explicit);
        assert_eq!(cfg.max_deliver, -1);
        assert_eq!(cfg.max_ack_pending, -1);
        assert!(
            cfg.ack_wait >= Duration::from_secs(3600),
            "{:?}",
            cfg.ack_wait
        );
        assert_eq!(
            job.dlq_count().await.unwrap(),
            0,
            "dead-letter stream exists, empty"
        );

        let state = job.state().await.unwrap().expect("state written");
        assert_eq!(state.status, Status::Running);
        assert!(!state.sources_done);
        assert_eq!(state.pipeline, "p.yaml");
        assert_eq!(state.inboxes, inboxes.to_vec());
        assert!(state.started_ms > 0 && state.updated_ms >= state.started_ms);

        // Starting again while running resumes, keeping the backlog.
        publish(&job, "double", "src", &numbers(0..250)).await;
        assert_eq!(job.inbox_counts("double").await.unwrap().stored, 3);
        assert_eq!(
            job.start("p.yaml", &inboxes, &Fingerprint::default(), false)
                .await
                .unwrap(),
            Start::Resumed {
                sources_done: false
            }
        );
        assert_eq!(
            job.inbox_counts("double").await.unwrap().stored,
            3,
            "backlog kept"
        );
        let resumed = job.state().await.unwrap().unwrap();
        assert_eq!(
            resumed.started_ms, state.started_ms,
            "a resumed job keeps its start time"
        );

        // Once the sources are done, a restarted coordinator learns it.
        let mut s = resumed.clone();
        s.sources_done = true;
        job.put_state(&s).await.unwrap();
        assert_eq!(
            job.start("p.yaml", &inboxes, &Fingerprint::default(), false)
                .await
                .unwrap(),
            Start::Resumed { sources_done: true }
        );
        assert!(job.state().await.unwrap().unwrap().sources_done);

        // Other stages while running: refused, naming the running ones.
        let err = job
            .start(
                "p.yaml",
                &[pool("triple"), coordinator("out")],
                &Fingerprint::default(),
                false,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("job 'orders_2024' is unfinished with other stages (double, out)"),
            "{err}"
        );
        // The same names with another pool/coordinator split differ too.
        assert!(
            job.start(
                "p.yaml",
                &[pool("double"), pool("out")],
                &Fingerprint::default(),
                false
            )
            .await
            .is_err()
        );
        assert_eq!(
            job.state().await.unwrap().unwrap().inboxes,
            inboxes.to_vec(),
            "state untouched"
        );

        let jobs = Job::list(&job.broker).await.unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].0, "orders_2024");
        assert_eq!(jobs[0].1.status, Status::Running);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_starts_afresh_without_its_old_backlog() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "j", EdgeSettings::default())
            .await
            .unwrap();
        let inboxes = [pool("double"), coordinator("out")];
        job.start("p.yaml", &inboxes, &Fingerprint::default(), false)
            .await
            .unwrap();
        publish(&job, "double", "src", &numbers(0..10)).await;
        assert_eq!(job.inbox_counts("double").await.unwrap().stored, 1);
        let mut s = job.state().await.unwrap().unwrap();
        s.status = Status::Done;
        s.summary = Some("10 records".into());
        job.put_state(&s).await.unwrap();

        // Stale worker statistics of the old run go too.
        job.put_worker(&weir_nats::job::WorkerStats {
            worker: "old".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(job.workers().await.unwrap().len(), 1);

        // A finished job of the same name, even with other stages, is
        // replaced.
        let other = [pool("double"), pool("triple"), coordinator("out")];
        assert_eq!(
            job.start("p.yaml", &other, &Fingerprint::default(), false)
                .await
                .unwrap(),
            Start::Fresh
        );
        let c = job.inbox_counts("double").await.unwrap();
        assert_eq!((c.stored, c.last_seq), (0, 0), "a fresh stream: {c:?}");
        assert!(
            job.workers().await.unwrap().is_empty(),
            "stale worker stats purged"
        );
        let s = job.state().await.unwrap().unwrap();
        assert_eq!(
            (s.status, s.sources_done, s.summary),
            (Status::Running, false, None)
        );
        assert_eq!(s.inboxes, other.to_vec());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_redelivers_what_the_old_coordinator_held_at_once() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "j", EdgeSettings::default())
            .await
            .unwrap();
        let inboxes = [pool("double"), coordinator("out")];
        job.start("p.yaml", &inboxes, &Fingerprint::default(), false)
            .await
            .unwrap();
        publish(&job, "out", "w", &numbers(0..1)).await;

        // The old coordinator takes the message and dies holding it.
        let held = job.consumer("out").await.unwrap();
        let mut batch = held
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let first = batch.next().await.expect("a message").unwrap();
        assert_eq!(first.info().unwrap().delivered, 1);
        assert_eq!(job.inbox_counts("out").await.unwrap().ack_pending, 1);

        // Its 24 h ack wait would hold the message; a restarted
        // coordinator gets it now.
        assert_eq!(
            job.start("p.yaml", &inboxes, &Fingerprint::default(), false)
                .await
                .unwrap(),
            Start::Resumed {
                sources_done: false
            }
        );
        let again = job.consumer("out").await.unwrap();
        let mut batch = again
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let m = batch.next().await.expect("the held message again").unwrap();
        assert_eq!(m.payload, first.payload);
        m.double_ack().await.unwrap();
        assert_eq!(job.inbox_counts("out").await.unwrap().stored, 0);
    })
    .await;
}

/// A job whose coordinator failed is unfinished: the next run resumes it
/// (before issue 8 it deleted its streams, backlog and dead letters);
/// `--fresh` starts it over on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_resumed_and_fresh_starts_it_over() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "failed", EdgeSettings::default())
            .await
            .unwrap();
        let inboxes = [pool("double"), coordinator("out")];
        let print = Fingerprint::default();
        job.start("p.yaml", &inboxes, &print, false).await.unwrap();
        publish(&job, "double", "src", &numbers(0..10)).await;
        let mut s = job.state().await.unwrap().unwrap();
        s.status = Status::Failed;
        job.put_state(&s).await.unwrap();

        assert_eq!(
            job.start("p.yaml", &inboxes, &print, false).await.unwrap(),
            Start::Resumed {
                sources_done: false
            }
        );
        assert_eq!(
            job.inbox_counts("double").await.unwrap().stored,
            1,
            "backlog kept"
        );
        assert_eq!(job.state().await.unwrap().unwrap().status, Status::Running);

        assert_eq!(
            job.start("p.yaml", &inboxes, &print, true).await.unwrap(),
            Start::Fresh
        );
        let c = job.inbox_counts("double").await.unwrap();
        assert_eq!((c.stored, c.last_seq), (0, 0), "started over: {c:?}");
    })
    .await;
}

/// An unfinished job started from another version of the pipeline is not
/// resumed with this one: its remote stages' fingerprints must match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_job_refuses_another_pipeline_version() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "versions", EdgeSettings::default())
            .await
            .unwrap();
        let inboxes = [pool("double"), coordinator("out")];
        let print = |config: &str| Fingerprint {
            stages: [(
                "double".to_string(),
                StagePrint {
                    config: config.to_string(),
                    files: Default::default(),
                },
            )]
            .into(),
            ..Default::default()
        };
        job.start("p.yaml", &inboxes, &print("v1"), false)
            .await
            .unwrap();
        let err = job
            .start("p.yaml", &inboxes, &print("v2"), false)
            .await
            .unwrap_err();
        assert!(matches!(err, weir_nats::BrokerError::Mismatch(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("stage 'double': its configuration") && msg.contains("--fresh"),
            "{msg}"
        );
        assert_eq!(
            job.start("p.yaml", &inboxes, &print("v1"), false)
                .await
                .unwrap(),
            Start::Resumed {
                sources_done: false
            }
        );

        // The coordinator's part: the whole file and its inputs. A job
        // resumed on changed inputs or with other coordinator-side stages
        // would mix two runs' results.
        let whole = |pipeline: &str, input: &str| Fingerprint {
            pipeline: pipeline.to_string(),
            inputs: [("input file in.jsonl".to_string(), input.to_string())].into(),
            ..print("v1")
        };
        job.start("p.yaml", &inboxes, &whole("p1", "i1"), true)
            .await
            .unwrap();
        for (other, why) in [
            (whole("p2", "i1"), "the pipeline file differs"),
            (whole("p1", "i2"), "input file in.jsonl changed (i1 -> i2)"),
        ] {
            let msg = job
                .start("p.yaml", &inboxes, &other, false)
                .await
                .unwrap_err()
                .to_string();
            assert!(msg.contains(why) && msg.contains("--fresh"), "{msg}");
        }
        assert!(matches!(
            job.start("p.yaml", &inboxes, &whole("p1", "i1"), false)
                .await
                .unwrap(),
            Start::Resumed { .. }
        ));
        // --fresh starts over with the new version.
        assert_eq!(
            job.start("p.yaml", &inboxes, &whole("p2", "i2"), true)
                .await
                .unwrap(),
            Start::Fresh
        );
    })
    .await;
}
