//! Distributed mode, end to end: every test starts its own real
//! nats-server (`weir_testkit::NatsServer`), runs `weir run --broker`
//! (the coordinator) and `weir worker` processes in a temporary directory,
//! and compares what they wrote with a local run of the same pipeline.
//!
//! Every test bounds its own time ([`util::Deadline`]); every child process
//! is killed on drop ([`util::Proc`]), so a failure never leaves a hang or
//! stray processes behind. Each test uses its own `--job` name.
//!
//! * [`orders`]: the bundled orders example on three workers equals a local
//!   run, table by table and dead letter by dead letter;
//! * [`faults`]: workers killed with SIGKILL, and a broker restart, in the
//!   middle of a job: the table is still exact;
//! * [`pool`]: workers joining and leaving (SIGTERM drains) mid-job;
//! * [`dead_letters`]: a poison record retried and dead-lettered, `weir
//!   status`, `weir dlq list` and `weir dlq replay`;
//! * [`schedule`]: a schedule's last handled tick kept on the broker;
//! * [`stats`]: the remote statistics in the coordinator's report and in
//!   `weir status`;
//! * [`errors`]: an unreachable broker, a stateful stage marked `remote`;
//! * [`aborted`]: a failed coordinator run, resumed, stores each record
//!   once;
//! * [`trust`]: issue 8's defects: records too large for a message, a
//!   worker on another pipeline version, a coordinator killed in a merging
//!   job, two coordinators on one job, dead letters after a restart;
//! * [`jobs`]: the background-jobs example (a `nats` stream, a remote jq
//!   pool, PostgreSQL) through a worker killed with SIGKILL and a replay;
//! * [`versions`]: an unfinished job resumed with changed inputs or another
//!   pipeline file is refused; names that would share an inbox too.

#[path = "distributed/util.rs"]
mod util;

#[path = "distributed/aborted.rs"]
mod aborted;
#[path = "distributed/dead_letters.rs"]
mod dead_letters;
#[path = "distributed/errors.rs"]
mod errors;
#[path = "distributed/faults.rs"]
mod faults;
#[path = "distributed/jobs.rs"]
mod jobs;
#[path = "distributed/orders.rs"]
mod orders;
#[path = "distributed/pool.rs"]
mod pool;
#[path = "distributed/schedule.rs"]
mod schedule;
#[path = "distributed/stats.rs"]
mod stats;
#[path = "distributed/trust.rs"]
mod trust;
#[path = "distributed/versions.rs"]
mod versions;
