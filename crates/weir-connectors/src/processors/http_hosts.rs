//! Per-host limits of the `http` processor: a request rate, a cap on
//! requests in flight, and a circuit breaker.
//!
//! The rate is [governor]'s keyed GCRA limiter. The circuit breaker is
//! written here (a few dozen lines; the crates that offer one wrap calls in
//! their own future types and retry policies, which the processor already
//! has): after `failures` tries in a row that got no answer worth keeping
//! (no connection, timeout, 408, 429, 5xx), the host's circuit opens for
//! `open_ms`: tries fail at once, without a request, and count as tries of
//! their record. Then one try goes through (half-open): an answer closes the
//! circuit, a failure opens it again; answers to tries sent before the
//! circuit opened do not close it. A probe whose try is abandoned (a hedge
//! lost, a deadline passed, the run stopped) gives its turn back when it
//! is dropped, so a lost probe cannot keep a circuit half-open.
//!
//! Hosts come from record data (a crawler meets many): at most
//! [`MAX_HOSTS`] are tracked; past that, hosts with nothing in flight are
//! forgotten (their breaker and rate state start over if they come back).
//!
//! [governor]: https://docs.rs/governor

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{Quota, RateLimiter, clock::DefaultClock, state::keyed::HashMapStateStore};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ConfigError;

/// Limits that apply to each host (`name:port`) on its own.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostLimits {
    /// Requests per second to one host at most, tries included; below 1
    /// for politeness (`0.5`: one request every 2 s). Absent: no limit.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Requests that may go at once above `rate` after a quiet spell.
    /// Default: 1.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Requests in flight to one host at most. Absent: only the stage's
    /// `concurrency` bounds them.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// The circuit breaker.
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
}

/// When a host's circuit opens, and for how long.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failed tries in a row that open the circuit; 0 turns the breaker
    /// off. Default: 5.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Milliseconds the circuit stays open before one probe may go.
    /// Default: 5000.
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: default_failures(),
            open_ms: default_open_ms(),
        }
    }
}

fn default_failures() -> u32 {
    5
}
fn default_open_ms() -> u64 {
    5000
}

type Limiter = RateLimiter<String, HashMapStateStore<String>, DefaultClock>;

/// Hosts tracked at most before idle ones are forgotten.
pub const MAX_HOSTS: usize = 10_000;

/// The hosts a stage has called, each with its state.
pub(crate) struct Hosts {
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    rate: Option<Limiter>,
    concurrency: Option<usize>,
    threshold: u32,
    open_for: Duration,
}

impl Hosts {
    /// From the options; `timeout` is the requests' own.
    ///
    /// # Errors
    /// A rate that is not a positive number, a burst or concurrency of 0.
    pub(crate) fn new(cfg: &HostLimits) -> Result<Hosts, ConfigError> {
        let rate = match cfg.rate {
            None => None,
            Some(r) if r.is_finite() && r > 0.0 && r <= 1e9 => {
                let burst = NonZeroU32::new(cfg.burst.unwrap_or(1)).ok_or_else(|| {
                    ConfigError::new("http processor: per_host.burst must be at least 1")
                })?;
                let quota = Quota::with_period(Duration::from_secs_f64(1.0 / r))
                    .expect("a positive period")
                    .allow_burst(burst);
                Some(RateLimiter::hashmap(quota))
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "http processor: per_host.rate must be a number of requests per second above 0",
                ));
            }
        };
        if cfg.concurrency == Some(0) {
            return Err(ConfigError::new(
                "http processor: per_host.concurrency must be at least 1",
            ));
        }
        Ok(Hosts {
            hosts: Mutex::new(HashMap::new()),
            rate,
            concurrency: cfg.concurrency,
            threshold: cfg.circuit_breaker.failures,
            open_for: Duration::from_millis(cfg.circuit_breaker.open_ms),
        })
    }

    /// The state of `host`.
    pub(crate) fn get(&self, host: &str) -> Arc<Host> {
        let mut hosts = self.hosts.lock().expect("hosts lock");
        if let Some(h) = hosts.get(host) {
            return h.clone();
        }
        if hosts.len() >= MAX_HOSTS {
            // Forget the hosts nothing holds now (no call in flight).
            hosts.retain(|_, h| Arc::strong_count(h) > 1);
            if let Some(r) = &self.rate {
                r.retain_recent();
            }
        }
        let h = Arc::new(Host {
            breaker: Mutex::new(Breaker::default()),
            slots: self.concurrency.map(|n| Arc::new(Semaphore::new(n))),
            threshold: self.threshold,
            open_for: self.open_for,
        });
        hosts.insert(host.to_string(), h.clone());
        h
    }

    /// Waits until `host`'s rate allows one more request.
    pub(crate) async fn pace(&self, host: &str) {
        if let Some(r) = &self.rate {
            r.until_key_ready(&host.to_string()).await;
        }
    }
}

/// One host's breaker and slots.
pub(crate) struct Host {
    breaker: Mutex<Breaker>,
    slots: Option<Arc<Semaphore>>,
    threshold: u32,
    open_for: Duration,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// A probe is out (the circuit is half-open).
    probing: bool,
}

/// Whether a try may go.
pub(crate) enum Admit<'h> {
    /// It may; report how it went with the ticket.
    Go(Ticket<'h>),
    /// The circuit is open for about this long still (or a probe is out).
    Open(Duration),
}

/// A try let through; a probe when the circuit is half-open. A probe's
/// ticket dropped unreported (its try abandoned) lets the next probe go.
pub(crate) struct Ticket<'h> {
    host: &'h Host,
    probe: bool,
    reported: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.host.breaker.lock().expect("breaker lock").probing = false;
        }
    }
}

impl Host {
    /// Failures in a row that open the circuit.
    pub(crate) fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Lets a try through, or not.
    pub(crate) fn admit(&self) -> Admit<'_> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Admit<'_> {
        let ticket = |probe| {
            Admit::Go(Ticket {
                host: self,
                probe,
                reported: false,
            })
        };
        if self.threshold == 0 {
            return ticket(false);
        }
        let mut b = self.breaker.lock().expect("breaker lock");
        let Some(until) = b.open_until else {
            return ticket(false);
        };
        if now < until {
            return Admit::Open(until - now);
        }
        if b.probing {
            // Half-open, its probe still out: wait as long again.
            return Admit::Open(self.open_for);
        }
        b.probing = true;
        ticket(true)
    }

    /// The try got an answer: a probe's closes the circuit, and any
    /// answer while it is closed starts the failure count over. An answer
    /// to a try sent before the circuit opened does not close it.
    pub(crate) fn succeeded(&self, mut ticket: Ticket<'_>) {
        ticket.reported = true;
        let mut b = self.breaker.lock().expect("breaker lock");
        if ticket.probe || b.open_until.is_none() {
            *b = Breaker::default();
        }
    }

    /// The try failed: count it; a failed probe, or the threshold reached,
    /// opens the circuit.
    pub(crate) fn failed(&self, ticket: Ticket<'_>) {
        self.failed_at(ticket, Instant::now());
    }

    fn failed_at(&self, mut ticket: Ticket<'_>, now: Instant) {
        ticket.reported = true;
        if self.threshold == 0 {
            return;
        }
        let mut b = self.breaker.lock().expect("breaker lock");
        b.failures = b.failures.saturating_add(1);
        if ticket.probe || (b.open_until.is_none() && b.failures >= self.threshold) {
            b.open_until = Some(now + self.open_for);
            b.probing = false;
        }
    }

    /// A slot among the host's requests in flight (none to take when the
    /// host has no cap).
    pub(crate) async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        match &self.slots {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(threshold: u32) -> Host {
        Host {
            breaker: Mutex::new(Breaker::default()),
            slots: None,
            threshold,
            open_for: Duration::from_secs(5),
        }
    }

    fn go(a: Admit<'_>) -> Ticket<'_> {
        match a {
            Admit::Go(t) => t,
            Admit::Open(d) => panic!("open for {d:?}"),
        }
    }

    #[test]
    fn opens_after_failures_in_a_row_and_half_opens_with_one_probe() {
        let h = host(3);
        let t0 = Instant::now();
        // Two failures, a success: the count starts over.
        h.failed_at(go(h.admit_at(t0)), t0);
        h.failed_at(go(h.admit_at(t0)), t0);
        h.succeeded(go(h.admit_at(t0)));
        for _ in 0..2 {
            h.failed_at(go(h.admit_at(t0)), t0);
        }
        // A try let through before the circuit opens...
        let straggler = go(h.admit_at(t0));
        h.failed_at(go(h.admit_at(t0)), t0);
        // ...does not close it by answering late.
        h.succeeded(straggler);
        match h.admit_at(t0 + Duration::from_secs(2)) {
            Admit::Open(d) => assert_eq!(d, Duration::from_secs(3)),
            Admit::Go(_) => panic!("should be open"),
        }
        // Half-open: one probe, no second one while it is out.
        let t1 = t0 + Duration::from_secs(5);
        let probe = go(h.admit_at(t1));
        assert!(probe.probe);
        assert!(matches!(h.admit_at(t1), Admit::Open(_)));
        // A failed probe opens it again for open_ms.
        h.failed_at(probe, t1);
        assert!(matches!(
            h.admit_at(t1 + Duration::from_millis(4999)),
            Admit::Open(_)
        ));
        // A probe that answers closes it.
        let t2 = t1 + Duration::from_secs(5);
        h.succeeded(go(h.admit_at(t2)));
        assert!(!go(h.admit_at(t2)).probe);
    }

    #[test]
    fn an_abandoned_probe_gives_its_turn_back() {
        let h = host(1);
        let t0 = Instant::now();
        h.failed_at(go(h.admit_at(t0)), t0);
        let t1 = t0 + Duration::from_secs(5);
        let lost = go(h.admit_at(t1));
        assert!(matches!(h.admit_at(t1), Admit::Open(_)));
        drop(lost);
        assert!(go(h.admit_at(t1)).probe);
    }

    #[test]
    fn failures_zero_turns_it_off() {
        let h = host(0);
        let t0 = Instant::now();
        for _ in 0..100 {
            h.failed_at(go(h.admit_at(t0)), t0);
        }
        assert!(matches!(h.admit_at(t0), Admit::Go(_)));
    }

    #[test]
    fn idle_hosts_are_forgotten_past_the_bound() {
        let hosts = Hosts::new(&HostLimits {
            rate: Some(100.0),
            ..HostLimits::default()
        })
        .unwrap();
        let held = hosts.get("kept:80");
        for i in 0..MAX_HOSTS + 10 {
            hosts.get(&format!("h{i}:80"));
        }
        let n = hosts.hosts.lock().unwrap().len();
        assert!(n < MAX_HOSTS, "{n}");
        assert!(
            Arc::ptr_eq(&held, &hosts.get("kept:80")),
            "one in use stays"
        );
    }
}
