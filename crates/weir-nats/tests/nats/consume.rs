//! The coordinator's inbox reader: every stored message is read, also
//! those the broker delivered into a connection that broke.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use weir_nats::job::Fingerprint;

use futures::StreamExt;
use weir::Pipeline;
use weir_nats::Job;
use weir_nats::consume::InboxReader;

use crate::nats::util::{
    Collected, connect, coordinator, numbers, publish, server, settings, wait_until, within,
};

/// A broker restart can leave messages "delivered" to a connection that
/// died with them in transit. The coordinator's consumers wait a day
/// before redelivering (they hold messages for whole-input aggregates), so
/// before the fix the reader ended without them: a broker restart lost
/// 60 rows of the events job (faults.rs, `Publishing`). Here the lost
/// delivery is a pull by another client that never acknowledges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_lost_in_transit_are_delivered_again() {
    within(async {
        let server = server().await;
        let broker = connect(&server).await;
        let job = Job::open(broker, "stranded", settings()).await.unwrap();
        job.start(
            "test.yaml",
            &[coordinator("out")],
            &Fingerprint::default(),
            false,
        )
        .await
        .unwrap();
        assert_eq!(publish(&job, "out", "p", &numbers(0..1000)).await, 10);

        let rogue = job.consumer("out").await.unwrap();
        let mut lost = rogue.fetch().max_messages(3).messages().await.unwrap();
        let mut n = 0;
        while let Some(m) = lost.next().await {
            m.unwrap();
            n += 1;
        }
        assert_eq!(n, 3, "the rogue pull took three messages");

        let reader = InboxReader::new(&job, "out", Arc::new(AtomicBool::new(true)));
        let p = Pipeline::new();
        let got = p
            .source("out", reader.source())
            .sink("collect", weir::collect());
        p.run().await.expect("reader pipeline");
        Collected {
            records: got.take().expect("collected"),
            swept: 0,
        }
        .assert_exactly(0..1000);
        wait_until("every message of 'out' acknowledged", || async {
            job.inbox_counts("out").await.unwrap().stored == 0
        })
        .await;
    })
    .await;
}
