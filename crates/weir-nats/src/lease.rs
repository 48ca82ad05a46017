//! One coordinator per job: a lease in the job state bucket.
//!
//! Two coordinators on one job would each recreate the other's consumers
//! and overwrite each other's state (the bucket is last-writer-wins), and
//! a `weir dlq replay` racing a coordinator could strand a record. So
//! whoever changes a job (a coordinator for its whole run, a replay for its
//! moves) holds the job's lease: the key `<job>.lease`, written with
//! revision checks only (create when absent, update at the revision last
//! seen), renewed every [`RENEW_EVERY`].
//!
//! A lease is live while its revision keeps changing. Clocks of other
//! machines are not trusted: a newcomer that finds the lease held watches
//! it for two renewal periods; if it was renewed, the newcomer refuses; if
//! not, the holder is gone (killed) and the newcomer takes the lease over
//! with a revision-checked update, so of two newcomers only one wins. A
//! holder on the same host whose process no longer exists is taken over at
//! once. A holder whose renewal finds another revision has lost the lease
//! and is told ([`Lease::lost`]): it must stop changing the job.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use serde::{Deserialize, Serialize};
use weir::CancellationToken;

use crate::broker::BrokerError;
use crate::job::{Job, now_ms};

/// How often a holder renews its lease. A newcomer waits twice this (plus
/// a margin) before it takes over a lease that is not renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Who holds a lease, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// What it is doing (`weir run --broker`, `weir dlq replay`).
    pub what: String,
    /// When it last renewed, by its own clock (shown, never compared).
    pub renewed_ms: u64,
    /// Which process this is, beyond host and pid: the kernel's boot id
    /// and pid namespace (a pid means the same process only within one
    /// namespace of one boot: containers share host names), and a nonce.
    #[serde(default)]
    pub instance: String,
}

impl Holder {
    fn me(what: &str) -> Self {
        Holder {
            host: hostname(),
            pid: std::process::id(),
            what: what.to_string(),
            renewed_ms: now_ms(),
            instance: format!("{}/{}", pid_space(), nonce()),
        }
    }

    /// Whether `self` was a process of this boot and pid namespace (so its
    /// pid can be looked up here).
    fn same_pid_space(&self, me: &Holder) -> bool {
        self.host == me.host
            && !self.instance.is_empty()
            && self.instance.rsplit_once('/').map(|(space, _)| space)
                == me.instance.rsplit_once('/').map(|(space, _)| space)
    }

    fn body(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("a holder serializes")
            .into()
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {} on {})", self.what, self.pid, self.host)
    }
}

/// This machine's name (`/etc/hostname`, else `$HOSTNAME`).
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// This kernel boot and pid namespace, as `<boot id>:<pid ns>`; empty
/// parts when unknown (then pids are never compared).
pub fn pid_space() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if boot.is_empty() || ns.is_empty() {
        format!("unknown-{}", nonce())
    } else {
        format!("{boot}:{ns}")
    }
}

/// A value no other process will pick: time and pid mixed.
fn nonce() -> String {
    format!("{:x}{:x}", now_ms(), std::process::id())
}

/// Whether process `pid` of this host is gone (or a zombie).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// A held lease. Renewed on a task of its own until released or lost.
pub struct Lease {
    kv: kv::Store,
    key: String,
    /// [`Holder::instance`] of this process.
    instance: String,
    revision: Arc<AtomicU64>,
    lost: CancellationToken,
    stop: CancellationToken,
    renewal: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Takes the lease of `job` for `what`; spawns its renewal on the
    /// current runtime.
    ///
    /// # Errors
    /// When another live process holds it (the message names it), or the
    /// bucket cannot be used.
    pub async fn acquire(job: &Job, what: &str) -> Result<Lease, BrokerError> {
        let key = format!("{}.lease", job.names.job());
        let me = Holder::me(what);
        let mut attempts = 0;
        let revision = loop {
            attempts += 1;
            if attempts > 5 {
                return Err(BrokerError::Request(format!(
                    "job '{}': could not take its lease (contended)",
                    job.names.job()
                )));
            }
            let entry = job
                .kv
                .entry(&key)
                .await
                .map_err(|e| BrokerError::request("read the job's lease", e))?;
            let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
                match job.kv.create(&key, me.body()).await {
                    Ok(rev) => break rev,
                    Err(_) => continue, // someone created it meanwhile
                }
            };
            let holder: Option<Holder> = serde_json::from_slice(&entry.value).ok();
            let gone = holder
                .as_ref()
                .is_some_and(|h| h.same_pid_space(&me) && h.pid != me.pid && process_gone(h.pid));
            if !gone {
                // Live while renewed: watch it for two renewal periods.
                tokio::time::sleep(RENEW_EVERY * 2 + Duration::from_millis(500)).await;
                let now = job
                    .kv
                    .entry(&key)
                    .await
                    .map_err(|e| BrokerError::request("read the job's lease", e))?;
                if let Some(now) = now
                    && now.revision != entry.revision
                {
                    if now.operation != Operation::Put {
                        continue; // released meanwhile: try again
                    }
                    let by = serde_json::from_slice::<Holder>(&now.value)
                        .map_or_else(|_| "another process".to_string(), |h| h.to_string());
                    return Err(BrokerError::Request(format!(
                        "job '{}' is in use by {by}; wait for it to finish (or stop it) and try again",
                        job.names.job()
                    )));
                }
            }
            match job.kv.update(&key, me.body(), entry.revision).await {
                Ok(rev) => {
                    if let Some(h) = holder {
                        tracing::warn!(
                            "job '{}': took over the lease of {h}, which stopped renewing it",
                            job.names.job()
                        );
                    }
                    break rev;
                }
                Err(_) => continue, // another newcomer won: look again
            }
        };
        let revision = Arc::new(AtomicU64::new(revision));
        let instance = me.instance.clone();
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let renewal = tokio::spawn(renew(
            job.kv.clone(),
            key.clone(),
            me,
            revision.clone(),
            lost.clone(),
            stop.clone(),
        ));
        Ok(Lease {
            kv: job.kv.clone(),
            key,
            instance,
            revision,
            lost,
            stop,
            renewal,
        })
    }

    /// Fired when another process took the lease over: stop changing the
    /// job.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Whether the lease is still ours right now (checked on the broker).
    /// A broker that cannot be read is asked again for a few seconds; if
    /// it still cannot say, the answer is no (another process may have
    /// taken the lease meanwhile: only what is known to be ours counts).
    pub async fn held(&self) -> bool {
        for attempt in 0..4 {
            if self.lost.is_cancelled() {
                return false;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if let Ok(yes) = ours(&self.kv, &self.key, &self.instance, &self.revision).await {
                return yes;
            }
        }
        false
    }

    /// Stops renewing and removes the lease (if still ours), so the next
    /// process need not wait.
    pub async fn release(self) {
        self.stop.cancel();
        let _ = self.renewal.await;
        if !self.lost.is_cancelled()
            && ours(&self.kv, &self.key, &self.instance, &self.revision)
                .await
                .unwrap_or(false)
        {
            let _ = self
                .kv
                .purge_expect_revision(&self.key, Some(self.revision.load(Ordering::Acquire)))
                .await;
        }
    }
}

/// Whether the lease entry names this process (`instance`): at the
/// revision it last wrote, or at a later one written by a renewal of its
/// own whose answer was lost (a broker restart); then `revision` learns it.
async fn ours(
    kv: &kv::Store,
    key: &str,
    instance: &str,
    revision: &AtomicU64,
) -> Result<bool, kv::EntryError> {
    let Some(entry) = kv.entry(key).await? else {
        return Ok(false);
    };
    if entry.revision == revision.load(Ordering::Acquire) {
        return Ok(true);
    }
    let mine = entry.operation == Operation::Put
        && serde_json::from_slice::<Holder>(&entry.value).is_ok_and(|h| h.instance == instance);
    if mine {
        revision.store(entry.revision, Ordering::Release);
    }
    Ok(mine)
}

async fn renew(
    kv: kv::Store,
    key: String,
    mut me: Holder,
    revision: Arc<AtomicU64>,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    // After a renewal whose answer was lost, renew again at once: watchers
    // must see the revision move every period.
    let mut again = false;
    loop {
        let wait = if std::mem::take(&mut again) {
            Duration::ZERO
        } else {
            RENEW_EVERY
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        me.renewed_ms = now_ms();
        match kv
            .update(&key, me.body(), revision.load(Ordering::Acquire))
            .await
        {
            Ok(rev) => revision.store(rev, Ordering::Release),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Maybe our own renewal, applied, whose answer was lost (a
                // broker restart): then the lease still names us.
                match ours(&kv, &key, &me.instance, &revision).await {
                    Ok(true) => {
                        again = true;
                        continue;
                    }
                    Ok(false) => {}
                    // Cannot tell yet: ask again at the next period.
                    Err(e) => {
                        tracing::warn!("could not read the lease '{key}': {e}");
                        continue;
                    }
                }
                tracing::error!("lost the lease of '{key}': another process took it over");
                lost.cancel();
                return;
            }
            // The broker unreachable: try again at the next period.
            Err(e) => tracing::warn!("could not renew the lease '{key}': {e}"),
        }
    }
}
