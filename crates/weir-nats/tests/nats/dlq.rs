//! The dead-letter stream: listing and replaying entries into the inbox of
//! the stage that rejected them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use weir_nats::job::Fingerprint;

use serde_json::json;
use weir::CancellationToken;
use weir_nats::codec::DlqEntry;
use weir_nats::completion;
use weir_nats::job::Start;
use weir_nats::publish::{Outgoing, Publisher};
use weir_nats::{Job, Status, dlq};

use crate::nats::completion::{double_node, idle_worker, lost_settings, take_and_die};
use crate::nats::errors::run_over_1000;
use crate::nats::util::{
    collect_out, connect, coordinator, double_job, doubler, numbers, pool, publish, server,
    settings, within, worker_opts,
};

/// Puts a hand-made entry into the job's dead-letter stream.
async fn put_entry(job: &Job, e: &DlqEntry, id: &str) {
    let out = Outgoing {
        subject: job.names.dlq_subject(),
        id: id.to_string(),
        body: serde_json::to_vec(e).unwrap().into(),
    };
    Publisher::new(job.clone())
        .publish_all(&[out])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_puts_a_dead_letter_back_into_its_inbox_and_resumes_the_job() {
    within(async {
        let server = server().await;
        let job = double_job(connect(&server).await, "replay", settings()).await;
        // A stage that rejects 13 (no retry: dead-lettered at once).
        let bad = doubler(
            |n| {
                if n == 13 {
                    Err("unlucky 13".into())
                } else {
                    Ok(())
                }
            },
            false,
        );
        let (got, _) = run_over_1000(&job, bad).await;
        assert_eq!(got.records.len(), 999);
        // Entries replay cannot use: a line that never decoded, and a stage
        // that has no inbox.
        let garbage = DlqEntry {
            stage: "out".into(),
            error: "bad line".into(),
            attempts: 1,
            position: None,
            input: None,
            file: None,
            line: None,
            record: serde_json::Value::Null,
            raw: json!("{not json"),
            truncated: None,
        };
        put_entry(&job, &garbage, "g").await;
        let decode = DlqEntry {
            stage: "decode".into(),
            record: json!({"n": 99}),
            ..garbage.clone()
        };
        put_entry(&job, &decode, "d").await;
        let entries = dlq::list(&job).await.unwrap();
        let seqs: Vec<u64> = entries.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(entries[0].1.record, json!({"n": 13}));

        // The coordinator finished the job.
        let mut state = job.state().await.unwrap().unwrap();
        state.status = Status::Done;
        state.sources_done = true;
        job.put_state(&state).await.unwrap();
        let before = job.inbox_counts("double").await.unwrap();
        assert_eq!(before.stored, 0);

        // Replaying only the garbage entry does nothing but say why.
        let r = dlq::replay(&job, &[2]).await.unwrap();
        assert_eq!(r.replayed, 0);
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0].0, 2);
        assert!(r.skipped[0].1.contains("no record"), "{:?}", r.skipped);
        assert_eq!(
            job.state().await.unwrap().unwrap().status,
            Status::Done,
            "nothing replayed"
        );

        // Replaying everything: 13 goes back, the others stay.
        let r = dlq::replay(&job, &[]).await.unwrap();
        assert_eq!(r.replayed, 1);
        let skipped: Vec<u64> = r.skipped.iter().map(|(s, _)| *s).collect();
        assert_eq!(skipped, vec![2, 3]);
        assert!(
            r.skipped[1].1.contains("stage 'decode' has no inbox"),
            "{:?}",
            r.skipped
        );
        let after = job.inbox_counts("double").await.unwrap();
        assert_eq!((after.stored, after.last_seq), (1, before.last_seq + 1));
        let left: Vec<u64> = dlq::list(&job)
            .await
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(left, vec![2, 3], "the replayed entry is removed");
        let state = job.state().await.unwrap().unwrap();
        assert_eq!((state.status, state.sources_done), (Status::Running, true));

        // The next coordinator resumes the job without reading the sources.
        let again = job
            .start(
                "test.yaml",
                &[pool("double"), coordinator("out")],
                &Fingerprint::default(),
                false,
            )
            .await
            .unwrap();
        assert_eq!(again, Start::Resumed { sources_done: true });
        assert_eq!(
            job.inbox_counts("double").await.unwrap().stored,
            1,
            "backlog kept"
        );

        // A fixed stage processes the replayed record.
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(weir_nats::worker::run(
            job.clone(),
            vec![doubler(|_| Ok(()), false)],
            worker_opts("fixed"),
            cancel.clone(),
        ));
        let got = collect_out(&job, Arc::new(AtomicBool::new(true))).await;
        got.assert_exactly([26]);
        assert_eq!(
            got.records[0].pos.to_string(),
            "numbers#14",
            "replayed at its position"
        );
        cancel.cancel();
        let stats = worker.await.unwrap().unwrap();
        assert_eq!(stats.stages["double"].records_in, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_an_unknown_job_is_an_error() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "nope", settings())
            .await
            .unwrap();
        let err = dlq::replay(&job, &[]).await.unwrap_err().to_string();
        assert!(err.contains("no job 'nope'"), "{err}");
        let err = dlq::list(&job).await.unwrap_err().to_string();
        assert!(
            err.contains("job 'nope' has no dead-letter stream"),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_record_lost_again_is_dead_lettered_again() {
    within(async {
        let server = server().await;
        let job = Job::open(connect(&server).await, "again", lost_settings())
            .await
            .unwrap();
        job.start("p.yaml", &[pool("double")], &Fingerprint::default(), false)
            .await
            .unwrap();
        publish(&job, "double", "src", &numbers(7..8)).await;
        let cancel = CancellationToken::new();
        for round in 0..2 {
            assert_eq!(take_and_die(&job, "double").await, 1);
            assert_eq!(take_and_die(&job, "double").await, 2);
            let stop = CancellationToken::new();
            let idle = idle_worker(&job, stop.clone());
            let swept = completion::watch(&job, &double_node(), Duration::from_millis(20), &cancel)
                .await
                .unwrap();
            stop.cancel();
            assert_eq!(idle.await.unwrap(), 0);
            assert_eq!(swept, 1, "round {round}");
            assert_eq!(job.inbox_counts("double").await.unwrap().stored, 0);
            let entries = dlq::list(&job).await.unwrap();
            assert_eq!(
                entries.len(),
                1,
                "round {round}: the swept record must be in the dead-letter stream"
            );
            assert_eq!(entries[0].1.record, json!({"n": 7}));
            if round == 0 {
                assert_eq!(dlq::replay(&job, &[]).await.unwrap().replayed, 1);
                assert!(dlq::list(&job).await.unwrap().is_empty());
                assert_eq!(job.inbox_counts("double").await.unwrap().stored, 1);
            }
        }
    })
    .await;
}
