//! One coordinator (or replay) per job: the lease. Before issue 8 a second
//! `weir run --broker` on a running job deleted the live coordinator's
//! consumers and both wrote the job's state.

use std::time::{Duration, Instant};

use weir::CancellationToken;
use weir_nats::job::{Fingerprint, StagePrint};
use weir_nats::lease::{Holder, Lease, RENEW_EVERY};
use weir_nats::{BrokerError, EdgeSettings, Job, worker};

use crate::nats::util::{connect, coordinator, doubler, pool, server, within, worker_opts};

async fn open(server: &weir_testkit::NatsServer, name: &str) -> Job {
    Job::open(connect(server).await, name, EdgeSettings::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_lease_refuses_a_second_holder_and_a_released_one_does_not() {
    within(async {
        let server = server().await;
        let job = open(&server, "leased").await;
        let first = Lease::acquire(&job, "weir run --broker").await.unwrap();
        let other = open(&server, "leased").await;
        let t = Instant::now();
        let err = match Lease::acquire(&other, "weir run --broker").await {
            Ok(_) => panic!("a second holder got a live lease"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("job 'leased' is in use by weir run --broker (pid"),
            "{err}"
        );
        assert!(t.elapsed() < RENEW_EVERY * 4, "{:?}", t.elapsed());
        assert!(first.held().await, "the first holder keeps it");
        first.release().await;
        let t = Instant::now();
        let second = Lease::acquire(&other, "weir dlq replay").await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        second.release().await;
    })
    .await;
}

/// A holder that stopped renewing (killed) is taken over: at once when it
/// was a process of this host that no longer exists, after two renewal
/// periods otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_is_taken_over() {
    within(async {
        let server = server().await;
        let job = open(&server, "dead").await;
        let put = |holder: Holder| {
            let job = job.clone();
            async move {
                job.kv
                    .put("dead.lease", serde_json::to_vec(&holder).unwrap().into())
                    .await
                    .unwrap();
            }
        };
        // A pid of this host that does not exist.
        put(Holder {
            host: weir_nats::lease::hostname(),
            pid: 4_000_000,
            what: "weir run --broker".into(),
            renewed_ms: 0,
            instance: format!("{}/x", weir_nats::lease::pid_space()),
        })
        .await;
        let t = Instant::now();
        let lease = Lease::acquire(&job, "weir run --broker").await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        lease.release().await;

        // The same host name in another pid namespace (a container): its
        // pid means nothing here, so only silence tells.
        put(Holder {
            host: weir_nats::lease::hostname(),
            pid: 4_000_000,
            what: "weir run --broker".into(),
            renewed_ms: 0,
            instance: "other-boot:pid:[1]/x".into(),
        })
        .await;
        let t = Instant::now();
        let lease = Lease::acquire(&job, "weir run --broker").await.unwrap();
        assert!(t.elapsed() >= RENEW_EVERY * 2, "{:?}", t.elapsed());
        lease.release().await;

        // Another host: only silence tells.
        put(Holder {
            host: "elsewhere".into(),
            pid: 1,
            what: "weir run --broker".into(),
            renewed_ms: 0,
            instance: String::new(),
        })
        .await;
        let t = Instant::now();
        let lease = Lease::acquire(&job, "weir run --broker").await.unwrap();
        assert!(t.elapsed() >= RENEW_EVERY * 2, "{:?}", t.elapsed());
        assert!(lease.held().await);
        lease.release().await;
    })
    .await;
}

/// A holder whose lease was taken over learns it at its next renewal, and
/// no longer holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_learns_that_its_lease_was_taken() {
    within(async {
        let server = server().await;
        let job = open(&server, "taken").await;
        let lease = Lease::acquire(&job, "weir run --broker").await.unwrap();
        let lost = lease.lost();
        // Someone else writes the lease (as a takeover would).
        job.kv
            .put("taken.lease", b"{}".to_vec().into())
            .await
            .unwrap();
        tokio::time::timeout(RENEW_EVERY * 3, lost.cancelled())
            .await
            .expect("the holder is told within a renewal period");
        assert!(!lease.held().await);
        lease.release().await;
        assert!(
            job.kv.get("taken.lease").await.unwrap().is_some(),
            "a lost lease is not removed by its former holder"
        );
    })
    .await;
}

/// A worker started on another version of the pipeline refuses the job
/// (before issue 8 it joined, and the table came out wrong with exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_another_fingerprint_refuses_the_job() {
    within(async {
        let server = server().await;
        let job = open(&server, "print").await;
        let print = |config: &str| Fingerprint {
            stages: [(
                "double".to_string(),
                StagePrint {
                    config: config.to_string(),
                    files: [("schemas/x.json".to_string(), "h1".to_string())].into(),
                },
            )]
            .into(),
            ..Default::default()
        };
        job.start(
            "p.yaml",
            &[pool("double"), coordinator("out")],
            &print("v1"),
            false,
        )
        .await
        .unwrap();
        let mut opts = worker_opts("w");
        opts.fingerprint = Some(print("v2"));
        let t = Instant::now();
        let err = worker::run(
            job.clone(),
            vec![doubler(|_| Ok(()), false)],
            opts,
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(matches!(err, BrokerError::Mismatch(_)), "{err}");
        assert!(
            err.to_string()
                .contains("stage 'double': its configuration (or where its outputs go) differs"),
            "{err}"
        );
        // The same fingerprint joins (and stops when told).
        let mut opts = worker_opts("w2");
        opts.fingerprint = Some(print("v1"));
        let cancel = CancellationToken::new();
        let w = tokio::spawn(worker::run(
            job.clone(),
            vec![doubler(|_| Ok(()), false)],
            opts,
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
        w.await.unwrap().expect("a matching worker runs");

        // A finished job's fingerprint is what ran, not what will: a worker
        // of the next version, started before the next run's coordinator,
        // waits instead of refusing.
        let mut state = job.state().await.unwrap().unwrap();
        state.status = weir_nats::job::Status::Done;
        job.put_state(&state).await.unwrap();
        let mut opts = worker_opts("w3");
        opts.fingerprint = Some(print("v2"));
        let cancel = CancellationToken::new();
        let w = tokio::spawn(worker::run(
            job.clone(),
            vec![doubler(|_| Ok(()), false)],
            opts,
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!w.is_finished(), "a worker refused a finished job");
        cancel.cancel();
        w.await
            .unwrap()
            .expect("a worker of the next version waits for its run");
    })
    .await;
}
