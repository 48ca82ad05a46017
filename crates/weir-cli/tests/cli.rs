//! Behaviour of the `weir` binary, end to end: each test writes a pipeline
//! and its inputs into a temporary directory, runs `weir` there (bounded in
//! time) and checks what it printed, its exit code and the files it wrote.
//!
//! * [`b4`]: B4's typed rules and `examples/pipelines/b4.yaml` agree;
//! * [`check`]: `weir check` diagnostics, pinned to the exact text;
//! * [`run`]: every component in a real run, outputs and report counts;
//! * [`dead_letter`]: what reaches the dead-letter file, and its count;
//! * [`example`]: the bundled `examples/pipelines/orders.yaml`;
//! * [`commands`]: `weir list`, `weir explain`, `--report json` on failure;
//! * [`fuzz`]: mutated pipeline files never crash `weir check`;
//! * [`http`]: the `http` sink against a service on loopback;
//! * [`http_server`]: clients POSTing into a running pipeline, and its drain;
//! * [`schedule`]: ticks in real time, caught up after a restart, SIGINT;
//! * [`nats`]: the `nats` source and sink against a real nats-server,
//!   through a bad message, a `kill -9` and a broker restart;
//! * [`options`]: numeric options out of range, reported at their line;
//! * [`paths`]: outputs that would write over an input are refused;
//! * [`postgres`]: the `postgres` sink against real PostgreSQL servers;
//! * [`sql_examples`]: the `sql` source examples (database to database,
//!   scheduled snapshots) against real PostgreSQL servers;
//! * [`records`]: hostile records (no key, invalid UTF-8) are dead-lettered;
//! * [`jq_limits`]: records that drive jq into deep recursion, huge
//!   outputs or endless loops, and jq reading the environment.

#[path = "cli/util.rs"]
mod util;

#[path = "../benches/b4/rules.rs"]
mod b4_rules;

#[path = "cli/b4.rs"]
mod b4;
#[path = "cli/check.rs"]
mod check;
#[path = "cli/commands.rs"]
mod commands;
#[path = "cli/dead_letter.rs"]
mod dead_letter;
#[path = "cli/example.rs"]
mod example;
#[path = "cli/follow.rs"]
mod follow;
#[path = "cli/fuzz.rs"]
mod fuzz;
#[path = "cli/http.rs"]
mod http;
#[path = "cli/http_server.rs"]
mod http_server;
#[path = "cli/jq_limits.rs"]
mod jq_limits;
#[path = "cli/loops.rs"]
mod loops;
#[path = "cli/nats.rs"]
mod nats;
#[path = "cli/options.rs"]
mod options;
#[path = "cli/paths.rs"]
mod paths;
#[path = "cli/postgres.rs"]
mod postgres;
#[path = "cli/records.rs"]
mod records;
#[path = "cli/run.rs"]
mod run;
#[path = "cli/schedule.rs"]
mod schedule;
#[path = "cli/service_examples.rs"]
mod service_examples;
#[path = "cli/sql.rs"]
mod sql;
#[path = "cli/sql_examples.rs"]
mod sql_examples;
