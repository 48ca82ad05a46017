//! Connecting: an unreachable broker is an error at once, never a hang.

use std::time::{Duration, Instant};

use weir_nats::{Broker, BrokerError};
use weir_testkit::free_port;

use crate::nats::util::{connect, server, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_a_connect_error_naming_the_url() {
    within(async {
        let url = format!("nats://127.0.0.1:{}", free_port());
        let started = Instant::now();
        let err = match Broker::connect(&url, Duration::from_secs(2)).await {
            Ok(_) => panic!("connected to {url}, where nothing listens"),
            Err(e) => e,
        };
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "took {took:?} to fail");
        match &err {
            BrokerError::Connect { url: tried, .. } => assert_eq!(tried, &url),
            other => panic!("want BrokerError::Connect, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&url), "message does not name the url: {msg}");
        assert!(msg.contains("cannot reach the broker"), "{msg}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_server_is_accepted_with_its_version() {
    within(async {
        let server = server().await;
        let broker = connect(&server).await;
        assert!(
            broker.server_version.starts_with("2."),
            "version {}",
            broker.server_version
        );
        weir_nats::broker::check_version(&broker.server_version)
            .expect("the pinned server is new enough");
    })
    .await;
}
