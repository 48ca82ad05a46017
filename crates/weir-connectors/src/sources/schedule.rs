//! The `schedule` source: one record per tick of a cron expression or a
//! fixed interval, `{name, scheduled_at, fired_at}`.
//!
//! # Design
//!
//! * **Ticks.** `cron:` ticks are croner's occurrences in `timezone`
//!   (seconds optional: `*/5 * * * * *` is every five seconds); `every:`
//!   ticks are the multiples of the interval since the Unix epoch, so that
//!   every run (and every restart) agrees on which instants are ticks
//!   (`every: 5m` fires at :00, :05, ...). Both are strictly increasing;
//!   the tick computation is pure ([`Schedule`], [`plan`]) and tested with
//!   fixed times.
//! * **Records.** `scheduled_at` is the tick's nominal time, `fired_at`
//!   when it was emitted, both RFC 3339 in UTC with milliseconds
//!   (`2026-12-01T17:00:00.000Z`: one format, so they sort as text). The
//!   position is `INPUT#<scheduled_at in Unix milliseconds>`: it names the
//!   tick, so that a tick emitted twice (see below) can be deduplicated or
//!   upserted downstream (`key: scheduled_at`).
//! * **Acks and state.** Each tick carries an engine [`Ack`]. The *last
//!   handled tick* (every tick up to it committed by the outputs or
//!   dead-lettered) is kept in SQLite, `schedule.db` beside the checkpoint
//!   database (`.weir/` beside the pipeline file, or `--state-dir`), saved
//!   when it moves (at most every [`SAVE_EVERY`], and when the run ends).
//!   In distributed mode it is kept in the job's key-value bucket on the
//!   broker instead (`State::Shared`), where whichever coordinator holds
//!   the job next reads it; inputs run in the coordinator only, and one
//!   coordinator holds the job's lease, so one process fires. A run
//!   without state (`weir check`, `--no-checkpoint`) neither reads nor
//!   writes it. A saved tick that cannot be read fails a `catch_up` run
//!   (starting from now would lose the missed ticks); `skip` logs it,
//!   starts from now and replaces it.
//! * **Restarts.** On start, with `missed: skip` the first tick is the next
//!   one after now; with `missed: catch_up` every tick after the last
//!   handled one up to now is emitted first, at most `catch_up_limit` of
//!   them (the most recent; how many were dropped is logged), then the
//!   schedule goes on. With `catch_up`, a tick emitted but not handled
//!   before a crash (or a `kill -9`) is emitted again: delivery is at
//!   least once per tick (with `skip`, such a tick is not emitted again).
//!   Ticks never go back when the wall clock was set back a little (at
//!   most [`CLOCK_TOLERANCE`], or one interval if longer): the first tick
//!   is after the last handled one in both modes. A last handled tick
//!   further after now (saved while the clock was ahead) is ignored with
//!   a warning: the schedule starts from now rather than fall silent
//!   until the clock reaches it.
//! * **Late ticks during a run.** A tick is emitted when its time comes,
//!   or late when the pipeline was backed up (the source is not polled
//!   while its output is full). When several ticks came due meanwhile,
//!   `skip` emits only the latest of them and `catch_up` all of them (at
//!   most `catch_up_limit`, the most recent).
//! * **Memory** is a few bytes per tick in flight (emitted, not yet
//!   handled), which the pipeline's bounded channels bound; a catch-up is
//!   never a list: an `every` schedule's is computed, a `cron` schedule's
//!   is walked tick by tick, so its work at start is bounded by
//!   `catch_up_limit` (at most [`MAX_CRON_CATCH_UP_LIMIT`]) plus
//!   [`COUNT_CAP`] steps to count what it dropped. One exception: a tick
//!   whose records were lost (an aborted stage; the run usually fails
//!   with it) holds the saved tick back for the rest of the run, and the
//!   ticks handled after it are remembered until the run ends.
//! * **Stopping.** The source runs until the run stops (SIGINT or SIGTERM:
//!   the engine drops its stream, so a tick due during the drain is not
//!   emitted) or `count` ticks were emitted (then the run ends normally).
//!   The clock is read again at least every second while waiting, so a
//!   wall clock that jumps is followed within a second: forward, the
//!   ticks it jumped over are late ticks (above); backward, the schedule
//!   waits until the clock reaches its next tick again.
//! * **Daylight saving time** follows croner: in a spring-forward gap a
//!   fixed-time job (`0 30 2 * * *`) runs at the first valid time after the
//!   gap, and interval jobs (`*/15 * * * *`) skip the ticks inside it; in a
//!   repeated hour a fixed-time job runs once (the first pass) and interval
//!   jobs run in both passes (their `scheduled_at`s, in UTC, differ).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use croner::Cron;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use rusqlite::{Connection, OptionalExtension as _};
use serde_saphyr::Spanned;
use weir::Ack;

use crate::error::ConfigError;
use crate::record::{Position, Record};
use crate::sources::decode::Decoder;
use crate::sources::{BuildContext, Raw, State, StateDir, StateStore};
use crate::value;

/// Missed ticks emitted at most after a downtime (or a stall), when
/// `catch_up_limit` is not set: a night's ticks at one a minute (16
/// hours), and a burst of records of about 100 bytes each that any
/// pipeline takes in a moment. A schedule that must never lose a tick
/// sets it to what its longest downtime can miss.
pub const DEFAULT_CATCH_UP_LIMIT: u64 = 1000;

/// How often the last handled tick is written to the database at most
/// (and when the run ends). What was handled since the last save is saved
/// when the next tick settles or, while the source waits for its next
/// tick, within this long: a crash re-emits the ticks handled within
/// about this long before it.
pub const SAVE_EVERY: Duration = Duration::from_millis(200);

/// The longest single wait: the wall clock is read again after it.
const MAX_NAP: Duration = Duration::from_secs(1);

/// Missed ticks counted at most (for the log line) when a cron schedule's
/// catch-up is cut by `catch_up_limit`; past it the count says "more
/// than". Counting walks the ticks one by one (interval schedules count
/// by arithmetic), so this bounds the work at start after a long downtime.
pub const COUNT_CAP: u64 = 100_000;

/// The largest `catch_up_limit` of a `cron` schedule: its catch-up is
/// found by walking the ticks one by one, at start, so this bounds that
/// work (a fraction of a second). An `every` schedule computes its
/// catch-up and takes any limit.
pub const MAX_CRON_CATCH_UP_LIMIT: u64 = 100_000;

/// How far after now a saved last handled tick may be and still hold the
/// schedule back (a wall clock set back a little: the schedule waits for
/// the tick after it). An `every` schedule allows one interval if longer.
/// Further ahead, the saved tick is taken for the mark of a clock that
/// was wrong: it is ignored (with a warning) and the schedule starts from
/// now, as with no saved tick.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(60);

/// A schedule must have a tick within this many years from now (at check
/// time and at start): one that never fires is a configuration error.
pub const HORIZON_YEARS: i64 = 100;

/// What a restarted (or stalled) schedule does with the ticks it missed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Forget them: the next tick is the next one from now.
    #[default]
    Skip,
    /// Emit every tick after the last handled one (at most
    /// `catch_up_limit`, the most recent), then go on.
    CatchUp,
}

/// Emit a record per tick of a cron expression or a fixed interval.
///
/// Records are `{"name", "scheduled_at", "fired_at"}`: `scheduled_at` is the tick's nominal time and `fired_at` when it was
/// emitted, RFC 3339 in UTC with milliseconds. Positions are
/// `INPUT#<scheduled_at in Unix milliseconds>`. Each tick is delivered at
/// least once: a tick emitted but not committed before a crash is emitted
/// again after a restart with `missed: catch_up`, so give the output a key
/// (`key: scheduled_at`). The last handled tick is kept in `schedule.db`
/// beside the checkpoint database. Runs until stopped (SIGINT or SIGTERM),
/// or until `count` ticks were emitted.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSource {
    /// A cron expression: 5 fields (minute hour day-of-month month
    /// day-of-week), or 6 with seconds first (`*/10 * * * * *`: every ten
    /// seconds), optionally a year last, or a nickname (`@hourly`,
    /// `@daily`, ...). As in Vixie cron, a day matches when it matches the
    /// day of the month or the day of the week (when both are restricted).
    /// Evaluated in `timezone`. Exactly one of `cron` and `every` is
    /// required, with a tick in the next 100 years.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub cron: Option<Spanned<String>>,
    /// A fixed interval: a number and a unit (`ms`, `s`, `m`, `h`, `d`),
    /// or several (`1h30m`). Ticks are the multiples of the interval since
    /// the Unix epoch (`every: 5m` fires at :00, :05, ... UTC), the same
    /// instants in every run.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub every: Option<Spanned<String>>,
    /// The IANA time zone `cron` is evaluated in (`Europe/Paris`), read
    /// from the system's time zone database. Daylight saving time follows
    /// croner: a fixed time inside a spring-forward gap runs right after
    /// it, interval ticks inside it are skipped; in a repeated hour a fixed
    /// time runs once, interval ticks run in both passes. Only with `cron`.
    /// Default: `UTC`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timezone: Option<Spanned<String>>,
    /// The `name` field of the records. Default: the input's name.
    #[serde(default)]
    pub name: Option<String>,
    /// `skip` or `catch_up`: what a start does with the ticks missed since
    /// the last handled one (while the pipeline was stopped), and what a
    /// run does when several ticks came due while its pipeline was backed
    /// up (`skip` emits the latest only). Default: `skip`.
    #[serde(default)]
    pub missed: Missed,
    /// With `missed: catch_up`, the most missed ticks emitted at once (the
    /// most recent ones); how many were dropped beyond it is logged. It
    /// bounds what a long downtime makes the pipeline do at start.
    /// Default: 1000; at most 100000 with `cron`; an error with `skip`.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub catch_up_limit: Option<Spanned<u64>>,
    /// Ticks to emit in this run, caught-up ticks included; then the input
    /// ends and the run finishes as with a file input. Default: no bound
    /// (the run goes on until stopped).
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub count: Option<Spanned<u64>>,
}

impl ScheduleSource {
    /// A minimal configuration.
    pub const EXAMPLE: &str = "cron: '0 */5 * * * *'\ntimezone: Europe/Paris\nmissed: catch_up\n";

    /// The schedule the options describe.
    ///
    /// # Errors
    /// At the option: neither or both of `cron` and `every`, an expression
    /// or interval that does not parse, an unknown time zone, `timezone`
    /// with `every`, a schedule with no tick within [`HORIZON_YEARS`]
    /// from now (`0 0 30 2 *`, `every: 100000000d`).
    pub fn schedule(&self) -> Result<Schedule, ConfigError> {
        let schedule = self.parse()?;
        let now = Timestamp::now();
        let horizon = jiff::SignedDuration::from_hours(HORIZON_YEARS * 8766);
        let fires = schedule
            .next_after(now)
            .is_some_and(|next| now.checked_add(horizon).is_ok_and(|h| next <= h));
        if fires {
            return Ok(schedule);
        }
        let (what, at) = match (&self.cron, &self.every) {
            (Some(cron), _) => (format!("cron '{}'", cron.value), cron),
            (_, Some(every)) => (format!("every '{}'", every.value), every),
            (None, None) => unreachable!("parse requires one"),
        };
        Err(ConfigError::at(
            format!(
                "schedule source: {what} has no tick in the next {HORIZON_YEARS} years: it would never fire"
            ),
            at,
        ))
    }

    /// [`schedule`](Self::schedule), whether it fires or not.
    fn parse(&self) -> Result<Schedule, ConfigError> {
        match (&self.cron, &self.every) {
            (Some(_), Some(every)) => Err(ConfigError::at(
                "schedule source: set either 'cron' or 'every', not both",
                every,
            )),
            (None, None) => Err(ConfigError::new(
                "schedule source: set 'cron' (a cron expression) or 'every' (an interval such as 10s)",
            )),
            (None, Some(every)) => {
                if let Some(tz) = &self.timezone {
                    return Err(ConfigError::at(
                        "schedule source: 'timezone' applies to 'cron' only ('every' ticks at multiples of the interval since the Unix epoch)",
                        tz,
                    ));
                }
                let ms = parse_interval(&every.value)
                    .map_err(|e| ConfigError::at(format!("schedule source: every: {e}"), every))?;
                Ok(Schedule::Every { ms })
            }
            (Some(cron), None) => {
                let tz = match &self.timezone {
                    None => TimeZone::UTC,
                    Some(name) => TimeZone::get(&name.value).map_err(|e| {
                        ConfigError::at(
                            format!(
                                "schedule source: unknown time zone '{}' (an IANA name such as Europe/Paris): {e}",
                                name.value
                            ),
                            name,
                        )
                    })?,
                };
                let parsed = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Optional)
                    .build()
                    .parse(&cron.value)
                    .map_err(|e| {
                        ConfigError::at(
                            format!("schedule source: cron '{}': {e}", cron.value),
                            cron,
                        )
                    })?;
                Ok(Schedule::Cron {
                    cron: Box::new(parsed),
                    tz,
                })
            }
        }
    }

    /// `catch_up_limit`, or its default.
    ///
    /// # Errors
    /// At the option: with `missed: skip` (it would do nothing), above
    /// [`MAX_CRON_CATCH_UP_LIMIT`] with `cron`.
    pub fn limit(&self, schedule: &Schedule) -> Result<u64, ConfigError> {
        let Some(limit) = &self.catch_up_limit else {
            return Ok(DEFAULT_CATCH_UP_LIMIT);
        };
        if self.missed == Missed::Skip {
            return Err(ConfigError::at(
                "schedule source: catch_up_limit applies to 'missed: catch_up' only ('skip' emits no missed tick)",
                limit,
            ));
        }
        if matches!(schedule, Schedule::Cron { .. }) && limit.value > MAX_CRON_CATCH_UP_LIMIT {
            return Err(ConfigError::at(
                format!(
                    "schedule source: catch_up_limit is at most {MAX_CRON_CATCH_UP_LIMIT} with 'cron' (its missed ticks are found one by one at start)"
                ),
                limit,
            ));
        }
        Ok(limit.value)
    }

    /// The source and its decoder (ticks are ready records).
    ///
    /// # Errors
    /// Bad options (see [`schedule`](Self::schedule)), a state database
    /// that cannot be opened.
    pub fn build(&self, ctx: &BuildContext) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        let schedule = self.schedule()?;
        let limit = self.limit(&schedule)?;
        let store = match &ctx.state {
            Some(State::Dir(dir)) => Some(Store::Sqlite(TickStore::open(dir, &ctx.input)?)),
            Some(State::Shared(shared)) => Some(Store::Shared {
                store: shared.clone(),
                key: format!("schedule.{}", ctx.input),
                input: ctx.input.clone(),
            }),
            None => None,
        };
        let ticker = Ticker {
            schedule,
            missed: self.missed,
            limit,
            count: self.count.as_ref().map(|c| c.value),
            emitted: 0,
            next: None,
            started: false,
            bounded_through: None,
            name: value::string(self.name.clone().unwrap_or_else(|| ctx.input.to_string())),
            input: ctx.input.clone(),
            progress: Arc::new(Progress::new(store)),
        };
        let stream = futures::stream::unfold(ticker, |mut t| async move {
            let item = t.next_tick().await?;
            Some((item, t))
        });
        Ok((weir::from_try_acked_stream(stream), Decoder::jsonl()))
    }
}

/// `10s`, `250ms`, `1h30m` as milliseconds (more than zero).
pub fn parse_interval(text: &str) -> Result<i64, String> {
    let bad = || format!("'{text}' is not an interval such as 250ms, 10s, 5m, 1h30m or 1d");
    let s = text.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let per: i64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("'{text}' is too long an interval"))?;
    }
    if total == 0 {
        return Err(format!(
            "'{text}' is zero; an interval must be at least 1ms"
        ));
    }
    Ok(total)
}

/// When ticks are.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every `ms` milliseconds since the Unix epoch.
    Every {
        /// The interval, more than zero.
        ms: i64,
    },
    /// A cron expression's occurrences in a time zone.
    Cron {
        /// The expression.
        cron: Box<Cron>,
        /// Where its wall clock is.
        tz: TimeZone,
    },
}

impl Schedule {
    /// The first tick strictly after `t`; `None` when there is none (a
    /// cron expression with no more occurrences, or past year 5000).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Every { ms } => {
                let k = t.as_millisecond().div_euclid(*ms);
                // `t` may hold nanoseconds past its millisecond: the next
                // multiple is still after it.
                Timestamp::from_millisecond(k.checked_add(1)?.checked_mul(*ms)?).ok()
            }
            Schedule::Cron { cron, tz } => cron
                .find_next_occurrence(&t.to_zoned(tz.clone()), false)
                .ok()
                .map(|z| z.timestamp()),
        }
    }

    /// The last tick at or before `t`.
    pub fn at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Every { ms } => {
                let k = t.as_millisecond().div_euclid(*ms);
                Timestamp::from_millisecond(k.checked_mul(*ms)?).ok()
            }
            Schedule::Cron { cron, tz } => cron
                .find_previous_occurrence(&t.to_zoned(tz.clone()), true)
                .ok()
                .map(|z| z.timestamp()),
        }
    }

    /// The last tick strictly before the tick `t`.
    fn before(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Every { ms } => {
                Timestamp::from_millisecond(t.as_millisecond().checked_sub(*ms)?).ok()
            }
            Schedule::Cron { cron, tz } => cron
                .find_previous_occurrence(&t.to_zoned(tz.clone()), false)
                .ok()
                .map(|z| z.timestamp()),
        }
    }

    /// Ticks in `(after, upto)`, counted up to `cap`: `Err(cap)` when there
    /// are more.
    fn count_between(&self, after: Timestamp, upto: Timestamp, cap: u64) -> Result<u64, u64> {
        if let Schedule::Every { ms } = self {
            let first = self
                .next_after(after)
                .map_or(i64::MAX, |t| t.as_millisecond());
            let end = upto.as_millisecond();
            return Ok(if first >= end {
                0
            } else {
                ((end - 1 - first) / ms + 1).unsigned_abs()
            });
        }
        let mut n = 0;
        let mut t = after;
        while let Some(next) = self.next_after(t).filter(|n| *n < upto) {
            n += 1;
            if n > cap {
                return Err(cap);
            }
            t = next;
        }
        Ok(n)
    }
}

/// Where a schedule starts: its first tick, and how many missed ticks were
/// dropped beyond the catch-up limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The first tick to emit (`None`: the schedule has no more ticks).
    pub first: Option<Timestamp>,
    /// Missed ticks emitted before the schedule reaches `now` (the ticks
    /// from `first` up to `now`).
    pub caught_up: u64,
    /// Missed ticks not emitted: `Ok(n)`, or `Err(n)` for "more than n".
    pub dropped: Result<u64, u64>,
    /// The last handled tick, when it was ignored for being after now by
    /// more than [`CLOCK_TOLERANCE`].
    pub ignored_last: Option<Timestamp>,
}

/// Where a schedule starts at `now` when the last handled tick is `last`
/// (`None`: no run handled any): the start policy, as a pure function.
///
/// Nothing at or before `last` is emitted again when the clock was set
/// back by at most [`CLOCK_TOLERANCE`] (the schedule waits); a `last`
/// further after `now` is ignored (see [`Plan::ignored_last`]). With
/// `skip`, or nothing handled yet, the first tick is the next one after
/// now. With `catch_up`, the ticks in `(last, now]` come first, at most
/// `limit`, the most recent ones.
pub fn plan(
    schedule: &Schedule,
    missed: Missed,
    last: Option<Timestamp>,
    now: Timestamp,
    limit: u64,
) -> Plan {
    let from_now = |after: Timestamp| Plan {
        first: schedule.next_after(after),
        caught_up: 0,
        dropped: Ok(0),
        ignored_last: None,
    };
    let tolerance = match schedule {
        Schedule::Every { ms } => jiff::SignedDuration::from_millis(*ms)
            .max(CLOCK_TOLERANCE.try_into().unwrap_or_default()),
        Schedule::Cron { .. } => CLOCK_TOLERANCE.try_into().unwrap_or_default(),
    };
    if let Some(l) = last
        && now.checked_add(tolerance).is_ok_and(|limit| l > limit)
    {
        return Plan {
            ignored_last: Some(l),
            ..from_now(now)
        };
    }
    let last = match (missed, last) {
        (Missed::CatchUp, Some(last)) if last < now => last,
        (_, Some(last)) => return from_now(last.max(now)),
        (_, None) => return from_now(now),
    };
    if let Schedule::Every { ms } = schedule {
        return plan_every(*ms, last, now, limit);
    }
    // Forward from `last`, `limit` ticks at most: when `now` is reached,
    // nothing is dropped.
    let mut t = last;
    let mut caught_up = 0;
    let mut first = None;
    loop {
        match schedule.next_after(t) {
            Some(next) if next <= now => {
                if caught_up == limit {
                    break;
                }
                first.get_or_insert(next);
                caught_up += 1;
                t = next;
            }
            Some(_) => {
                return Plan {
                    first: first.or_else(|| schedule.next_after(last)),
                    caught_up,
                    dropped: Ok(0),
                    ignored_last: None,
                };
            }
            None => {
                return Plan {
                    first,
                    caught_up,
                    dropped: Ok(0),
                    ignored_last: None,
                };
            }
        }
    }
    // More than `limit` are due: keep the `limit` most recent, found
    // backwards from now.
    if limit == 0 {
        return Plan {
            first: schedule.next_after(now),
            caught_up: 0,
            // The ticks in `(last, now]`.
            dropped: schedule.count_between(
                last,
                schedule.next_after(now).unwrap_or(Timestamp::MAX),
                COUNT_CAP,
            ),
            ignored_last: None,
        };
    }
    let mut first = schedule
        .at_or_before(now)
        .expect("a tick after last is due");
    for _ in 1..limit {
        match schedule.before(first) {
            Some(b) if b > last => first = b,
            _ => break,
        }
    }
    Plan {
        first: Some(first),
        caught_up: limit,
        dropped: schedule.count_between(last, first, COUNT_CAP),
        ignored_last: None,
    }
}

/// [`plan`]'s catch-up for `every: ms` (`last < now`), by arithmetic:
/// its work does not depend on the downtime nor on `limit`.
fn plan_every(ms: i64, last: Timestamp, now: Timestamp, limit: u64) -> Plan {
    let tick = |k: i64| {
        k.checked_mul(ms)
            .and_then(|t| Timestamp::from_millisecond(t).ok())
    };
    // Ticks are the multiples of `ms`; `as_millisecond` truncates, and
    // ticks are whole milliseconds, so a tick `k * ms` is after `last`
    // when `k > last_k` and at or before `now` when `k <= now_k`.
    let last_k = last.as_millisecond().div_euclid(ms);
    let now_k = now.as_millisecond().div_euclid(ms);
    let due = (now_k - last_k).unsigned_abs();
    if due <= limit {
        return Plan {
            first: tick(last_k + 1),
            caught_up: due,
            dropped: Ok(0),
            ignored_last: None,
        };
    }
    // `limit < due`, so it fits in an i64.
    let kept = i64::try_from(limit).unwrap_or(i64::MAX);
    Plan {
        first: tick(now_k - kept + 1),
        caught_up: limit,
        dropped: Ok(due - limit),
        ignored_last: None,
    }
}

/// `t` as RFC 3339 in UTC with milliseconds.
fn rfc3339(t: Timestamp) -> String {
    format!("{t:.3}")
}

/// The ticks of one run, as a stream's state.
struct Ticker {
    schedule: Schedule,
    missed: Missed,
    limit: u64,
    count: Option<u64>,
    emitted: u64,
    /// The next tick to emit; `None` before the start or after the end.
    next: Option<Timestamp>,
    started: bool,
    /// Ticks up to this instant were already cut down to the policy (a
    /// burst of due ticks is looked at once).
    bounded_through: Option<Timestamp>,
    name: value::Val,
    input: Arc<str>,
    progress: Arc<Progress>,
}

impl Ticker {
    /// The next tick's record, when its time comes; `None` at the end;
    /// an error (then the end) when the start cannot read its state.
    ///
    /// # Cancel safety
    /// Dropping the future while it waits emits nothing and loses nothing
    /// (the tick was not emitted: a later run's policy decides about it).
    async fn next_tick(&mut self) -> Option<Result<(Raw, Ack), String>> {
        if self.count.is_some_and(|c| self.emitted >= c) {
            return None;
        }
        if !self.started
            && let Err(e) = self.start()
        {
            // The stream ends after the error.
            self.next = None;
            return Some(Err(e));
        }
        loop {
            let tick = self.next?;
            let now = Timestamp::now();
            if let Some(tick) = self.due(now) {
                self.emitted += 1;
                return Some(Ok(self.record(tick)));
            }
            let tick = self.next.unwrap_or(tick);
            // Handled ticks not yet saved (a burst handled within
            // SAVE_EVERY of the last save) are saved while waiting.
            let nap = if self.progress.flush_due() {
                SAVE_EVERY
            } else {
                MAX_NAP
            };
            let wait = now.duration_until(tick).unsigned_abs();
            tokio::time::sleep(wait.min(nap)).await;
        }
    }

    /// The tick to emit at `now`, if one is due (under the policy, when
    /// several are); then `next` is the one after it. Never a tick after
    /// `now`: when the policy drops every due tick (`catch_up_limit: 0`),
    /// `next` is the first tick after now, to wait for.
    fn due(&mut self, now: Timestamp) -> Option<Timestamp> {
        let tick = self.next.filter(|t| *t <= now)?;
        let tick = self.bound_burst(tick, now);
        if tick > now {
            self.next = Some(tick);
            return None;
        }
        self.next = self.schedule.next_after(tick);
        Some(tick)
    }

    /// Reads the last handled tick and plans the start.
    ///
    /// # Errors
    /// With `catch_up`, when a last handled tick was saved but cannot be
    /// read: starting from now would lose the ticks missed since.
    fn start(&mut self) -> Result<(), String> {
        self.started = true;
        if self.progress.store.is_none() && self.missed == Missed::CatchUp {
            tracing::warn!(
                "schedule '{}': this run keeps no state (--no-checkpoint): ticks missed before it are not caught up, and its own are not remembered",
                self.input
            );
        }
        let last = match self.progress.load() {
            Ok(last) => last,
            Err(e) if self.missed == Missed::CatchUp => {
                return Err(format!(
                    "schedule '{}': cannot read the last handled tick ({e}); with 'missed: catch_up' the run stops rather than start from now and lose the ticks missed since (to start from now, {})",
                    self.input,
                    self.progress
                        .store
                        .as_ref()
                        .map_or("", Store::how_to_forget)
                ));
            }
            Err(e) => {
                tracing::warn!(
                    "schedule '{}': cannot read the last handled tick ({e}); starting from now ('missed: skip'), and replacing it",
                    self.input
                );
                self.progress.forget_saved();
                None
            }
        };
        let now = Timestamp::now();
        let p = plan(&self.schedule, self.missed, last, now, self.limit);
        self.bounded_through = Some(now);
        if let Some(last) = p.ignored_last {
            self.progress.forget_saved();
            tracing::warn!(
                "schedule '{}': the last handled tick saved, {}, is after now ({}): the clock was ahead when it was saved, or is behind now; ignoring it and starting from now",
                self.input,
                rfc3339(last),
                rfc3339(now)
            );
        }
        if p.caught_up > 0 {
            tracing::info!(
                "schedule '{}': catching up {} missed tick(s) from {}",
                self.input,
                p.caught_up,
                p.first.map(rfc3339).unwrap_or_default()
            );
        }
        match p.dropped {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                "schedule '{}': {n} missed tick(s) dropped beyond catch_up_limit ({})",
                self.input,
                self.limit
            ),
            Err(n) => tracing::warn!(
                "schedule '{}': more than {n} missed ticks dropped beyond catch_up_limit ({})",
                self.input,
                self.limit
            ),
        }
        if p.first.is_none() {
            tracing::warn!("schedule '{}': the schedule has no more ticks", self.input);
        }
        self.next = p.first;
        Ok(())
    }

    /// `tick` is due at `now`: when more ticks came due after it (the
    /// pipeline was backed up), the one to emit under the policy: after
    /// `now` when the policy drops every due tick (`catch_up_limit: 0`).
    fn bound_burst(&mut self, tick: Timestamp, now: Timestamp) -> Timestamp {
        if self.bounded_through.is_some_and(|b| tick <= b) {
            return tick;
        }
        self.bounded_through = Some(now);
        if self.schedule.next_after(tick).is_none_or(|n| n > now) {
            return tick;
        }
        let first = match self.missed {
            // The latest tick due: the ones before it are skipped.
            Missed::Skip => self.schedule.at_or_before(now),
            Missed::CatchUp => {
                let before = tick.checked_sub(jiff::SignedDuration::from_nanos(1)).ok();
                plan(&self.schedule, self.missed, before, now, self.limit).first
            }
        };
        let Some(first) = first.filter(|f| *f >= tick) else {
            return tick;
        };
        let skipped = self.schedule.count_between(tick, first, COUNT_CAP);
        let skipped = match skipped {
            Ok(n) => n + u64::from(first > tick),
            Err(n) => n,
        };
        if skipped > 0 {
            tracing::warn!(
                "schedule '{}': {skipped} tick(s) came due at once (the pipeline was backed up, or the clock jumped) and were skipped ({})",
                self.input,
                match self.missed {
                    Missed::Skip => "missed: skip".to_string(),
                    Missed::CatchUp => format!("beyond catch_up_limit {}", self.limit),
                }
            );
        }
        first
    }

    fn record(&self, tick: Timestamp) -> (Raw, Ack) {
        let ms = tick.as_millisecond();
        let v = value::object([
            ("name", self.name.clone()),
            ("scheduled_at", value::string(rfc3339(tick))),
            ("fired_at", value::string(rfc3339(Timestamp::now()))),
        ]);
        let pos = Arc::new(Position {
            input: self.input.clone(),
            file: None,
            line: u64::try_from(ms).unwrap_or(0),
        });
        self.progress.emitted(ms);
        let progress = self.progress.clone();
        let ack = Ack::new(move |outcome| progress.settled(ms, outcome.is_handled()));
        (Raw::Record(Record::new(v, pos)), ack)
    }
}

/// Ticks emitted and not yet handled, and the last handled tick as saved.
struct Progress {
    track: Mutex<Track>,
    store: Option<Store>,
}

#[derive(Debug, Default)]
struct Track {
    /// Emitted, not handled (a failed tick stays here, so the watermark
    /// never passes it: a later run emits it again).
    pending: BTreeSet<i64>,
    /// Handled, above the first pending one.
    handled: BTreeSet<i64>,
    /// Every emitted tick up to this one is handled.
    water: Option<i64>,
    saved: Option<i64>,
    /// The saved tick was ignored (far in the future): the next save
    /// replaces it instead of keeping the later of the two.
    overwrite: bool,
    last_save: Option<Instant>,
}

impl Track {
    fn settled(&mut self, tick: i64, handled: bool) {
        if !handled {
            return;
        }
        self.pending.remove(&tick);
        self.handled.insert(tick);
        let bound = self.pending.first().copied();
        while let Some(&h) = self.handled.first() {
            if bound.is_some_and(|b| h > b) {
                break;
            }
            self.water = Some(h);
            self.handled.pop_first();
        }
    }
}

impl Progress {
    fn new(store: Option<Store>) -> Self {
        Progress {
            track: Mutex::new(Track::default()),
            store,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Track> {
        self.track.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last handled tick of earlier runs (`None`: none was saved).
    ///
    /// # Errors
    /// When one was saved but cannot be read.
    fn load(&self) -> Result<Option<Timestamp>, String> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let Some(ms) = store.load()? else {
            return Ok(None);
        };
        let t = Timestamp::from_millisecond(ms)
            .map_err(|e| format!("{ms} is not a time in milliseconds: {e}"))?;
        self.lock().saved = Some(ms);
        Ok(Some(t))
    }

    /// The saved tick was ignored: the next save replaces it.
    fn forget_saved(&self) {
        let mut t = self.lock();
        t.saved = None;
        t.overwrite = true;
    }

    fn emitted(&self, tick: i64) {
        if self.store.is_some() {
            self.lock().pending.insert(tick);
        }
    }

    fn settled(&self, tick: i64, handled: bool) {
        let Some(store) = &self.store else { return };
        let mut t = self.lock();
        t.settled(tick, handled);
        if t.water > t.saved && t.last_save.is_none_or(|s| s.elapsed() >= SAVE_EVERY) {
            Self::save(store, &mut t);
        }
    }

    /// Saves the watermark when it moved and the last save is old enough;
    /// true when a later call has something to save.
    fn flush_due(&self) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let mut t = self.lock();
        if t.water <= t.saved {
            return false;
        }
        if t.last_save.is_none_or(|s| s.elapsed() >= SAVE_EVERY) {
            Self::save(store, &mut t);
        }
        t.water > t.saved
    }

    fn save(store: &Store, t: &mut Track) {
        let Some(water) = t.water.filter(|w| Some(*w) > t.saved) else {
            return;
        };
        match store.save(water, t.overwrite) {
            Ok(()) => {
                t.overwrite = false;
                t.saved = Some(water);
                t.last_save = Some(Instant::now());
            }
            Err(e) => tracing::warn!(
                "schedule '{}': cannot save the last handled tick: {e}",
                store.input()
            ),
        }
    }
}

impl Drop for Progress {
    // The stream and every tick's ack are gone: the run is over.
    fn drop(&mut self) {
        if let Some(store) = &self.store {
            let t = self.track.get_mut().unwrap_or_else(|p| p.into_inner());
            Self::save(store, t);
        }
    }
}

/// Where the last handled tick of one input is kept.
enum Store {
    /// In `schedule.db` in the state directory.
    Sqlite(TickStore),
    /// Under `key` in a store the runner provides.
    Shared {
        store: Arc<dyn StateStore>,
        key: String,
        input: Arc<str>,
    },
}

impl Store {
    fn load(&self) -> Result<Option<i64>, String> {
        match self {
            Store::Sqlite(s) => s.load().map_err(|e| e.to_string()),
            Store::Shared { store, key, .. } => store
                .get(key)?
                .map(|text| {
                    text.parse().map_err(|_| {
                        let shown: String = text.chars().take(40).collect();
                        format!("'{key}' on the broker is not a number: '{shown}'")
                    })
                })
                .transpose(),
        }
    }

    /// Saves `ms`; without `overwrite`, a later tick saved stays.
    fn save(&self, ms: i64, overwrite: bool) -> Result<(), String> {
        match self {
            Store::Sqlite(s) => s.save(ms, overwrite).map_err(|e| e.to_string()),
            Store::Shared { store, key, .. } => store.put(key, ms.to_string()),
        }
    }

    /// How to forget a saved tick that cannot be read.
    fn how_to_forget(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => {
                "run once with 'missed: skip', or delete schedule.db in the state directory"
            }
            Store::Shared { .. } => "run once with 'missed: skip', or with --fresh",
        }
    }

    fn input(&self) -> &str {
        match self {
            Store::Sqlite(s) => &s.input,
            Store::Shared { input, .. } => input,
        }
    }
}

/// The last handled tick of one input, in `schedule.db`.
struct TickStore {
    conn: Mutex<Connection>,
    pipeline: String,
    input: Arc<str>,
}

impl TickStore {
    /// The database file in a state directory.
    const FILE: &'static str = "schedule.db";

    fn open(state: &StateDir, input: &Arc<str>) -> Result<Self, ConfigError> {
        let conn = state
            .open_db(
                Self::FILE,
                "CREATE TABLE IF NOT EXISTS schedule_ticks (
                   pipeline TEXT NOT NULL, input TEXT NOT NULL,
                   last_handled_ms INTEGER NOT NULL,
                   PRIMARY KEY (pipeline, input))",
            )
            .map_err(|e| {
                ConfigError::new(format!(
                    "schedule state database {}: {e}",
                    state.dir.join(Self::FILE).display()
                ))
            })?;
        Ok(TickStore {
            conn: Mutex::new(conn),
            pipeline: state.pipeline.clone(),
            input: input.clone(),
        })
    }

    fn load(&self) -> rusqlite::Result<Option<i64>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row(
            "SELECT last_handled_ms FROM schedule_ticks WHERE pipeline = ?1 AND input = ?2",
            (&self.pipeline, &*self.input),
            |r| r.get(0),
        )
        .optional()
    }

    /// Records `ms` as handled; never moves the record back, unless
    /// `overwrite` (the record was ignored, being far in the future).
    fn save(&self, ms: i64, overwrite: bool) -> rusqlite::Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO schedule_ticks (pipeline, input, last_handled_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (pipeline, input) DO UPDATE
             SET last_handled_ms = CASE WHEN ?4 THEN excluded.last_handled_ms
                                   ELSE MAX(last_handled_ms, excluded.last_handled_ms) END",
            (&self.pipeline, &*self.input, ms, overwrite),
        )
        .map(|_| ())
    }
}

impl crate::registry::Documented for ScheduleSource {
    const EXAMPLE: &'static str = ScheduleSource::EXAMPLE;
}

impl crate::registry::SourceComponent for ScheduleSource {
    fn build(
        &self,
        ctx: &BuildContext,
        _checkpoint: Option<Arc<crate::checkpoint::Checkpoint>>,
    ) -> Result<(weir::Source<Raw>, Decoder), ConfigError> {
        ScheduleSource::build(self, ctx)
    }

    /// Ticks in order.
    fn default_decode_workers(&self) -> usize {
        1
    }

    /// Its `missed` policy applies on every run, `--resume` or not.
    fn resumes_itself(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn every(ms: i64) -> Schedule {
        Schedule::Every { ms }
    }

    fn cron(expr: &str, tz: &str) -> Schedule {
        let yaml = format!("cron: '{expr}'\ntimezone: {tz}\n");
        let cfg: ScheduleSource = serde_saphyr::from_str(&yaml).unwrap();
        cfg.schedule().unwrap()
    }

    fn config_error(yaml: &str) -> ConfigError {
        let cfg: ScheduleSource = serde_saphyr::from_str(yaml).unwrap();
        cfg.schedule().unwrap_err()
    }

    /// The ticks from `plan`'s first on, up to `n` of them.
    fn ticks(s: &Schedule, first: Timestamp, n: usize) -> Vec<String> {
        std::iter::successors(Some(first), |t| s.next_after(*t))
            .take(n)
            .map(rfc3339)
            .collect()
    }

    #[test]
    fn intervals_parse() {
        assert_eq!(parse_interval("250ms"), Ok(250));
        assert_eq!(parse_interval("10s"), Ok(10_000));
        assert_eq!(parse_interval("5m"), Ok(300_000));
        assert_eq!(parse_interval("1h30m"), Ok(5_400_000));
        assert_eq!(parse_interval("2d"), Ok(172_800_000));
        for bad in ["", "10", "s", "10 s", "1.5s", "10x", "-5s", "1h 30m"] {
            assert!(parse_interval(bad).is_err(), "{bad:?}");
        }
        assert!(parse_interval("0s").unwrap_err().contains("zero"));
        assert!(
            parse_interval("99999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
    }

    /// Options that do not describe one schedule are errors at the option
    /// concerned, with its YAML line.
    #[test]
    fn bad_options_are_errors_at_their_line() {
        let e = config_error("name: x\ncron: 'not a cron'\n");
        assert_eq!(e.at, Some((2, 7)), "{e}");
        assert!(e.message.contains("cron 'not a cron'"), "{e}");
        let e = config_error("cron: '* * * * *'\ntimezone: Mars/Olympus\n");
        assert_eq!(e.at, Some((2, 11)), "{e}");
        assert!(
            e.message.contains("unknown time zone 'Mars/Olympus'"),
            "{e}"
        );
        let e = config_error("every: 10 seconds\n");
        assert_eq!(e.at, Some((1, 8)), "{e}");
        let e = config_error("every: 10s\ntimezone: Europe/Paris\n");
        assert_eq!(e.at, Some((2, 11)), "{e}");
        assert!(e.message.contains("'cron' only"), "{e}");
        let e = config_error("cron: '* * * * *'\nevery: 10s\n");
        assert!(e.message.contains("not both"), "{e}");
        let e = config_error("missed: catch_up\n");
        assert_eq!(e.at, None);
        assert!(e.message.contains("set 'cron'"), "{e}");
        assert!(serde_saphyr::from_str::<ScheduleSource>("every: 1s\nmissed: later\n").is_err());
    }

    /// A cron schedule's catch-up is walked: its limit is bounded at
    /// check time, at its line; an interval's is computed, so any goes.
    #[test]
    fn a_cron_catch_up_limit_is_bounded() {
        let limit = |yaml: &str| {
            let cfg: ScheduleSource = serde_saphyr::from_str(yaml).unwrap();
            cfg.limit(&cfg.schedule().unwrap())
        };
        assert_eq!(
            limit("cron: '* * * * * *'\nmissed: catch_up\ncatch_up_limit: 100000\n").unwrap(),
            100_000
        );
        let e =
            limit("cron: '* * * * * *'\nmissed: catch_up\ncatch_up_limit: 100001\n").unwrap_err();
        assert_eq!(e.at, Some((3, 17)), "{e}");
        assert!(e.message.contains("at most 100000"), "{e}");
        assert_eq!(
            limit("every: 1ms\nmissed: catch_up\ncatch_up_limit: 18446744073709551615\n").unwrap(),
            u64::MAX
        );
        assert_eq!(
            limit("every: 1ms\nmissed: catch_up\n").unwrap(),
            DEFAULT_CATCH_UP_LIMIT
        );
    }

    /// A schedule that would never fire is an error at its line, and
    /// found quickly; so is a catch_up_limit that would do nothing.
    #[test]
    fn a_schedule_that_never_fires_is_an_error() {
        for (yaml, at) in [
            ("cron: '0 0 30 2 *'\n", (1, 7)),
            ("name: x\ncron: '0 0 0 1 1 * 2020'\n", (2, 7)),
            ("every: 100000000d\n", (1, 8)),
            ("every: 80000d\n", (1, 8)), // 2189: more than 100 years away
        ] {
            let t0 = Instant::now();
            let e = config_error(yaml);
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "{yaml}: {:?}",
                t0.elapsed()
            );
            assert_eq!(e.at, Some(at), "{e}");
            assert!(e.message.contains("never fire"), "{e}");
        }
        // The 29th of February does come.
        cron("0 0 29 2 *", "UTC");
        let cfg: ScheduleSource = serde_saphyr::from_str("every: 1s\ncatch_up_limit: 5\n").unwrap();
        let e = cfg.limit(&cfg.schedule().unwrap()).unwrap_err();
        assert_eq!(e.at, Some((2, 17)), "{e}");
        assert!(e.message.contains("'missed: catch_up' only"), "{e}");
    }

    #[test]
    fn the_example_describes_a_schedule() {
        let cfg: ScheduleSource = serde_saphyr::from_str(ScheduleSource::EXAMPLE).unwrap();
        let s = cfg.schedule().unwrap();
        // Every five minutes on the minute, in Paris (UTC+1 in winter).
        let next = s.next_after(ts("2026-12-01T17:03:10Z")).unwrap();
        assert_eq!(rfc3339(next), "2026-12-01T17:05:00.000Z");
    }

    #[test]
    fn interval_ticks_are_multiples_since_the_epoch() {
        let s = every(100);
        assert_eq!(
            s.next_after(ts("2026-12-01T17:00:00.050Z")),
            Some(ts("2026-12-01T17:00:00.100Z"))
        );
        // A tick is not after itself; nanoseconds past it do not round
        // back onto it.
        assert_eq!(
            s.next_after(ts("2026-12-01T17:00:00.100Z")),
            Some(ts("2026-12-01T17:00:00.200Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-12-01T17:00:00.100000001Z")),
            Some(ts("2026-12-01T17:00:00.200Z"))
        );
        assert_eq!(
            s.at_or_before(ts("2026-12-01T17:00:00.199Z")),
            Some(ts("2026-12-01T17:00:00.100Z"))
        );
        let s = every(5 * 60_000);
        assert_eq!(
            ticks(&s, s.next_after(ts("2026-12-01T16:58:00Z")).unwrap(), 3),
            [
                "2026-12-01T17:00:00.000Z",
                "2026-12-01T17:05:00.000Z",
                "2026-12-01T17:10:00.000Z"
            ]
        );
    }

    #[test]
    fn cron_with_seconds_and_without() {
        let s = cron("*/20 * * * * *", "UTC");
        assert_eq!(
            ticks(&s, s.next_after(ts("2026-12-01T17:00:05.5Z")).unwrap(), 3),
            [
                "2026-12-01T17:00:20.000Z",
                "2026-12-01T17:00:40.000Z",
                "2026-12-01T17:01:00.000Z"
            ]
        );
        // Day of month or day of week, as in Vixie cron: Friday 4
        // December comes before the 13th.
        let s = cron("0 0 12 13 * FRI", "UTC");
        assert_eq!(
            s.next_after(ts("2026-12-01T17:00:00Z")),
            Some(ts("2026-12-04T12:00:00Z"))
        );
        let s = cron("0 9 * * MON", "America/New_York");
        // Monday 7 December 2026, 09:00 in New York (UTC-5).
        assert_eq!(
            s.next_after(ts("2026-12-01T17:00:00Z")),
            Some(ts("2026-12-07T14:00:00Z"))
        );
    }

    /// Paris springs forward on 29 March 2026 (02:00 becomes 03:00): a
    /// fixed time inside the gap runs right after it, interval ticks
    /// inside it are skipped.
    #[test]
    fn daylight_saving_gap() {
        let s = cron("0 30 2 * * *", "Europe/Paris");
        let t = s.next_after(ts("2026-03-28T23:00:00Z")).unwrap();
        assert_eq!(rfc3339(t), "2026-03-29T01:00:00.000Z"); // 03:00+02:00
        assert_eq!(
            rfc3339(s.next_after(t).unwrap()),
            "2026-03-30T00:30:00.000Z" // 02:30+02:00 the next day
        );
        let s = cron("0 */30 * * * *", "Europe/Paris");
        let first = s.next_after(ts("2026-03-29T00:15:00Z")).unwrap();
        assert_eq!(
            ticks(&s, first, 3),
            [
                "2026-03-29T00:30:00.000Z", // 01:30+01:00
                "2026-03-29T01:00:00.000Z", // 03:00+02:00: 02:00, 02:30 never were
                "2026-03-29T01:30:00.000Z",
            ]
        );
    }

    /// Paris falls back on 25 October 2026 (03:00 becomes 02:00 again): a
    /// fixed time in the repeated hour runs once, interval ticks in both
    /// passes, so that in UTC they keep their pace.
    #[test]
    fn daylight_saving_repeated_hour() {
        let s = cron("0 30 2 * * *", "Europe/Paris");
        let t = s.next_after(ts("2026-10-24T23:00:00Z")).unwrap();
        assert_eq!(rfc3339(t), "2026-10-25T00:30:00.000Z"); // first pass, +02:00
        assert_eq!(
            rfc3339(s.next_after(t).unwrap()),
            "2026-10-26T01:30:00.000Z"
        );
        // Backwards (a catch-up cut by its limit), from the second pass or
        // after it, the same single tick.
        for at in ["2026-10-25T01:35:00Z", "2026-10-25T03:00:00Z"] {
            assert_eq!(s.at_or_before(ts(at)), Some(t), "{at}");
        }
        let s = cron("0 */30 * * * *", "Europe/Paris");
        let first = s.next_after(ts("2026-10-24T23:45:00Z")).unwrap();
        assert_eq!(
            ticks(&s, first, 5),
            [
                "2026-10-25T00:00:00.000Z", // 02:00+02:00
                "2026-10-25T00:30:00.000Z", // 02:30+02:00
                "2026-10-25T01:00:00.000Z", // 02:00+01:00
                "2026-10-25T01:30:00.000Z", // 02:30+01:00
                "2026-10-25T02:00:00.000Z", // 03:00+01:00
            ]
        );
        // Backwards over the same hour: the same ticks, so that a catch-up
        // cut by its limit finds them too.
        let mut back = vec![s.at_or_before(ts("2026-10-25T02:00:00Z")).unwrap()];
        for _ in 0..4 {
            back.push(s.before(*back.last().unwrap()).unwrap());
        }
        back.reverse();
        assert_eq!(
            back.into_iter().map(rfc3339).collect::<Vec<_>>(),
            ticks(&s, first, 5)
        );
    }

    #[test]
    fn skip_starts_at_the_next_tick_from_now() {
        let s = every(1000);
        let now = ts("2026-12-01T17:00:00.400Z");
        for last in [None, Some(ts("2026-12-01T16:00:00Z"))] {
            let p = plan(&s, Missed::Skip, last, now, 10);
            assert_eq!(p.first, Some(ts("2026-12-01T17:00:01Z")));
            assert_eq!((p.caught_up, p.dropped), (0, Ok(0)));
        }
        // Nothing handled yet: nothing to catch up either.
        let p = plan(&s, Missed::CatchUp, None, now, 10);
        assert_eq!(p.first, Some(ts("2026-12-01T17:00:01Z")));
    }

    #[test]
    fn catch_up_emits_every_tick_after_the_last_handled_one() {
        let s = every(1000);
        let last = ts("2026-12-01T16:59:57Z");
        let now = ts("2026-12-01T17:00:00.400Z");
        let p = plan(&s, Missed::CatchUp, Some(last), now, 10);
        assert_eq!(p.first, Some(ts("2026-12-01T16:59:58Z")));
        assert_eq!((p.caught_up, p.dropped), (3, Ok(0)));
        // A tick exactly at `now` is due.
        let p = plan(
            &s,
            Missed::CatchUp,
            Some(last),
            ts("2026-12-01T17:00:00Z"),
            10,
        );
        assert_eq!((p.caught_up, p.dropped), (3, Ok(0)));
        // Exactly `limit` due: none dropped.
        let p = plan(&s, Missed::CatchUp, Some(last), now, 3);
        assert_eq!(p.first, Some(ts("2026-12-01T16:59:58Z")));
        assert_eq!((p.caught_up, p.dropped), (3, Ok(0)));
        // Nothing missed: the next tick.
        let p = plan(
            &s,
            Missed::CatchUp,
            Some(ts("2026-12-01T17:00:00Z")),
            now,
            3,
        );
        assert_eq!(p.first, Some(ts("2026-12-01T17:00:01Z")));
        assert_eq!(p.caught_up, 0);
    }

    /// After a long downtime only the most recent `limit` ticks come, and
    /// the rest are counted; the work does not depend on the downtime.
    #[test]
    fn catch_up_is_bounded_by_its_limit() {
        let s = every(1000);
        let last = ts("2025-12-01T17:00:00Z");
        let now = ts("2026-12-01T17:00:00.400Z");
        let p = plan(&s, Missed::CatchUp, Some(last), now, 5);
        assert_eq!(p.first, Some(ts("2026-12-01T16:59:56Z")));
        assert_eq!(p.caught_up, 5);
        assert_eq!(p.dropped, Ok(365 * 86_400 - 5));
        let p = plan(&s, Missed::CatchUp, Some(last), now, 0);
        assert_eq!(p.first, Some(ts("2026-12-01T17:00:01Z")));
        assert_eq!((p.caught_up, p.dropped), (0, Ok(365 * 86_400)));
        // A cron schedule counts its dropped ticks up to a cap.
        let s = cron("*/15 * * * * *", "UTC");
        let p = plan(
            &s,
            Missed::CatchUp,
            Some(ts("2026-12-01T16:00:00Z")),
            now,
            4,
        );
        assert_eq!(p.first, Some(ts("2026-12-01T16:59:15Z")));
        assert_eq!((p.caught_up, p.dropped), (4, Ok(4 * 60 - 4)));
        let p = plan(
            &s,
            Missed::CatchUp,
            Some(ts("2025-01-01T00:00:00Z")),
            now,
            4,
        );
        assert_eq!(p.first, Some(ts("2026-12-01T16:59:15Z")));
        assert_eq!(p.dropped, Err(COUNT_CAP));
    }

    /// An interval schedule's catch-up is arithmetic: a huge limit after
    /// a long downtime costs nothing at start.
    #[test]
    fn interval_catch_up_is_computed_not_walked() {
        let s = every(1);
        let last = ts("2026-11-30T17:00:00Z");
        let now = ts("2026-12-01T17:00:00Z");
        let t0 = Instant::now();
        let p = plan(&s, Missed::CatchUp, Some(last), now, u64::MAX);
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(p.first, Some(ts("2026-11-30T17:00:00.001Z")));
        assert_eq!((p.caught_up, p.dropped), (86_400_000, Ok(0)));
        let p = plan(&s, Missed::CatchUp, Some(last), now, 86_399_999);
        assert_eq!(p.first, Some(ts("2026-11-30T17:00:00.002Z")));
        assert_eq!((p.caught_up, p.dropped), (86_399_999, Ok(1)));
        // A last tick between ticks (a burst: just before a tick).
        let s = every(1000);
        let before = ts("2026-12-01T16:59:58Z")
            .checked_sub(jiff::SignedDuration::from_nanos(1))
            .unwrap();
        let p = plan(
            &s,
            Missed::CatchUp,
            Some(before),
            ts("2026-12-01T17:00:00.5Z"),
            10,
        );
        assert_eq!(p.first, Some(ts("2026-12-01T16:59:58Z")));
        assert_eq!((p.caught_up, p.dropped), (3, Ok(0)));
    }

    /// A clock set back a little does not bring handled ticks back: the
    /// schedule waits for the first tick after the last handled one.
    #[test]
    fn ticks_never_go_back() {
        let s = every(1000);
        let last = ts("2026-12-01T17:00:00Z");
        let now = ts("2026-12-01T16:59:00Z");
        for missed in [Missed::Skip, Missed::CatchUp] {
            let p = plan(&s, missed, Some(last), now, 10);
            assert_eq!(p.first, Some(ts("2026-12-01T17:00:01Z")));
            assert_eq!((p.caught_up, p.ignored_last), (0, None));
        }
        // An interval allows one interval if longer.
        let s = every(3_600_000);
        let p = plan(
            &s,
            Missed::CatchUp,
            Some(last),
            ts("2026-12-01T16:00:00Z"),
            10,
        );
        assert_eq!(p.first, Some(ts("2026-12-01T18:00:00Z")));
        assert_eq!(p.ignored_last, None);
    }

    /// A saved tick far after now (saved while the clock was ahead, then
    /// corrected) is ignored: the schedule starts from now instead of
    /// waiting for the clock to reach it.
    #[test]
    fn a_saved_tick_far_in_the_future_is_ignored() {
        let now = ts("2026-12-01T17:00:00Z");
        let future = ts("2030-01-01T00:00:00Z");
        let s = every(60_000);
        for m in [Missed::Skip, Missed::CatchUp] {
            let p = plan(&s, m, Some(future), now, 1000);
            assert_eq!(p.first, Some(ts("2026-12-01T17:01:00Z")), "{m:?}");
            assert_eq!((p.caught_up, p.ignored_last), (0, Some(future)));
        }
        // Just past the tolerance: a minute and a millisecond ahead.
        let s = cron("0 * * * * *", "UTC");
        let ahead = ts("2026-12-01T17:01:00.001Z");
        let p = plan(&s, Missed::CatchUp, Some(ahead), now, 1000);
        assert_eq!(p.first, Some(ts("2026-12-01T17:01:00Z")));
        assert_eq!(p.ignored_last, Some(ahead));
        let p = plan(
            &s,
            Missed::CatchUp,
            Some(ts("2026-12-01T17:01:00Z")),
            now,
            1000,
        );
        assert_eq!(p.first, Some(ts("2026-12-01T17:02:00Z")));
        assert_eq!(p.ignored_last, None);
    }

    #[test]
    fn a_schedule_can_end() {
        // 1 January 2020 is past: no more ticks (a configuration error
        // at check time and at start, but an end the plan handles).
        let cfg: ScheduleSource = serde_saphyr::from_str("cron: '0 0 0 1 1 * 2020'\n").unwrap();
        let s = cfg.parse().unwrap();
        assert_eq!(s.next_after(ts("2026-12-01T00:00:00Z")), None);
        let p = plan(
            &s,
            Missed::CatchUp,
            Some(ts("2019-06-01T00:00:00Z")),
            ts("2026-12-01T00:00:00Z"),
            10,
        );
        assert_eq!(p.first, Some(ts("2020-01-01T00:00:00Z")));
        assert_eq!(p.caught_up, 1);
    }

    fn ticker(schedule: Schedule, missed: Missed, limit: u64) -> Ticker {
        Ticker {
            schedule,
            missed,
            limit,
            count: None,
            emitted: 0,
            next: None,
            started: true,
            bounded_through: None,
            name: value::string("t"),
            input: "t".into(),
            progress: Arc::new(Progress::new(None)),
        }
    }

    /// Ticks that came due while the pipeline was backed up: `skip` emits
    /// the latest, `catch_up` all of them up to its limit, and a burst is
    /// looked at once.
    #[test]
    fn late_ticks_follow_the_policy() {
        let now = ts("2026-12-01T17:00:10.500Z");
        let first = ts("2026-12-01T17:00:01Z");
        let mut t = ticker(every(1000), Missed::Skip, 3);
        assert_eq!(t.bound_burst(first, now), ts("2026-12-01T17:00:10Z"));
        let mut t = ticker(every(1000), Missed::CatchUp, 3);
        let got = t.bound_burst(first, now);
        assert_eq!(got, ts("2026-12-01T17:00:08Z"));
        // The rest of the burst goes out as it is.
        assert_eq!(
            t.bound_burst(ts("2026-12-01T17:00:09Z"), now),
            ts("2026-12-01T17:00:09Z")
        );
        let mut t = ticker(every(1000), Missed::CatchUp, 100);
        assert_eq!(t.bound_burst(first, now), first);
        // A tick that is merely late, with none after it due, goes out.
        let mut t = ticker(every(1000), Missed::Skip, 3);
        assert_eq!(
            t.bound_burst(ts("2026-12-01T17:00:10Z"), now),
            ts("2026-12-01T17:00:10Z")
        );
    }

    /// `catch_up_limit: 0` during a backed-up run drops the due ticks;
    /// the next one is emitted at its time, never before.
    #[test]
    fn a_burst_with_limit_zero_never_emits_a_future_tick() {
        let now = ts("2026-12-01T17:00:10.500Z");
        let mut t = ticker(every(1000), Missed::CatchUp, 0);
        t.next = Some(ts("2026-12-01T17:00:01Z"));
        assert_eq!(t.due(now), None);
        assert_eq!(t.next, Some(ts("2026-12-01T17:00:11Z")));
        assert_eq!(t.due(ts("2026-12-01T17:00:10.999Z")), None);
        let at = ts("2026-12-01T17:00:11Z");
        assert_eq!(t.due(at), Some(at));
        assert_eq!(t.next, Some(ts("2026-12-01T17:00:12Z")));
        // Other policies emit a due tick at once.
        for (missed, limit, got) in [
            (Missed::Skip, 0, "2026-12-01T17:00:10Z"),
            (Missed::CatchUp, 3, "2026-12-01T17:00:08Z"),
        ] {
            let mut t = ticker(every(1000), missed, limit);
            t.next = Some(ts("2026-12-01T17:00:01Z"));
            assert_eq!(t.due(now), Some(ts(got)), "{missed:?}");
        }
    }

    /// The watermark passes a tick only when it and every tick before it
    /// were handled; a failed tick holds it back.
    #[test]
    fn the_watermark_waits_for_every_earlier_tick() {
        let mut t = Track::default();
        for tick in 1..=5 {
            t.pending.insert(tick);
        }
        t.settled(2, true);
        assert_eq!(t.water, None);
        t.settled(1, true);
        assert_eq!(t.water, Some(2));
        t.settled(3, false);
        t.settled(4, true);
        t.settled(5, true);
        assert_eq!(t.water, Some(2));
        assert_eq!(t.handled.len(), 2);
    }

    #[test]
    fn the_store_keeps_the_latest_tick_per_pipeline_and_input() {
        let dir = tempfile::tempdir().unwrap();
        let state = |pipeline: &str| StateDir {
            dir: dir.path().join("state"),
            pipeline: pipeline.into(),
        };
        let a = TickStore::open(&state("p"), &"a".into()).unwrap();
        assert_eq!(a.load().unwrap(), None);
        a.save(2000, false).unwrap();
        a.save(1000, false).unwrap();
        assert_eq!(a.load().unwrap(), Some(2000));
        a.save(1500, true).unwrap();
        assert_eq!(a.load().unwrap(), Some(1500));
        let b = TickStore::open(&state("p"), &"b".into()).unwrap();
        assert_eq!(b.load().unwrap(), None);
        let other = TickStore::open(&state("q"), &"a".into()).unwrap();
        assert_eq!(other.load().unwrap(), None);
        assert!(dir.path().join("state").join(TickStore::FILE).exists());
    }

    /// A burst handled right after a save is saved while the source waits
    /// for its next tick, not only at the next tick or the end.
    #[test]
    fn a_burst_is_saved_soon_after() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir {
            dir: dir.path().to_path_buf(),
            pipeline: "p".into(),
        };
        let open = || TickStore::open(&state, &"t".into()).unwrap();
        let p = Progress::new(Some(Store::Sqlite(open())));
        for tick in 1..=3 {
            p.emitted(tick);
        }
        for tick in 1..=3 {
            p.settled(tick, true);
        }
        assert_eq!(open().load().unwrap(), Some(1), "the first save is at once");
        assert!(p.flush_due(), "too soon: still to save");
        std::thread::sleep(SAVE_EVERY + Duration::from_millis(50));
        assert!(!p.flush_due(), "saved, nothing left");
        assert_eq!(open().load().unwrap(), Some(3));
    }

    fn ctx(dir: &Path) -> BuildContext {
        BuildContext {
            input: "ticks".into(),
            base_dir: dir.to_path_buf(),
            state: Some(State::Dir(StateDir {
                dir: dir.to_path_buf(),
                pipeline: "p.yaml".into(),
            })),
        }
    }

    /// Runs a schedule in a pipeline that commits every record and returns
    /// the ticks' scheduled times, as Unix milliseconds.
    async fn run(dir: &Path, yaml: &str) -> Vec<Record> {
        let cfg: ScheduleSource = serde_saphyr::from_str(yaml).unwrap();
        let (source, decoder) = cfg.build(&ctx(dir)).unwrap();
        let p = weir::Pipeline::new();
        let out = p
            .source("ticks", source)
            .try_map("decode", move |r: &Raw| decoder.decode(r))
            .sink("all", weir::collect());
        p.run().await.unwrap();
        out.take().unwrap()
    }

    fn scheduled_ms(records: &[Record]) -> Vec<i64> {
        records
            .iter()
            .map(|r| {
                let s = value::as_str(value::get(&r.value, "scheduled_at").unwrap()).unwrap();
                let t: Timestamp = s.parse().unwrap();
                assert_eq!(
                    r.pos.line,
                    t.as_millisecond() as u64,
                    "the position names the tick"
                );
                t.as_millisecond()
            })
            .collect()
    }

    /// Real time, short intervals: every tick once, 100 ms apart, each
    /// fired at or after its time; a restart with `catch_up` after a gap
    /// emits the ticks missed during it, exactly once, then goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ticks_in_real_time_and_caught_up_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = run(
            dir.path(),
            "every: 100ms\ncount: 5\nmissed: catch_up\nname: job\n",
        )
        .await;
        let a = scheduled_ms(&first);
        assert_eq!(a.len(), 5);
        assert!(a.windows(2).all(|w| w[1] - w[0] == 100), "{a:?}");
        for r in &first {
            let get = |k| {
                value::as_str(value::get(&r.value, k).unwrap())
                    .unwrap()
                    .to_string()
            };
            assert_eq!(get("name"), "job");
            assert!(get("fired_at") >= get("scheduled_at"), "{r:?}");
        }
        let Some(State::Dir(state)) = ctx(dir.path()).state else {
            unreachable!()
        };
        let store = TickStore::open(&state, &"ticks".into()).unwrap();
        assert_eq!(
            store.load().unwrap(),
            Some(a[4]),
            "the last handled tick is saved"
        );
        drop(store);
        tokio::time::sleep(Duration::from_millis(450)).await;
        let second = run(dir.path(), "every: 100ms\ncount: 8\nmissed: catch_up\n").await;
        let b = scheduled_ms(&second);
        assert_eq!(b[0], a[4] + 100, "{a:?} then {b:?}");
        assert!(b.windows(2).all(|w| w[1] - w[0] == 100), "{b:?}");
        // The gap's ticks were emitted at once, not waited for.
        let fired: Vec<Timestamp> = second
            .iter()
            .map(|r| {
                value::as_str(value::get(&r.value, "fired_at").unwrap())
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        let late = fired[0].as_millisecond() - b[0];
        assert!(late >= 300, "the first caught-up tick is {late} ms late");
        // With `skip`, the next run starts from now.
        tokio::time::sleep(Duration::from_millis(450)).await;
        let before = Timestamp::now().as_millisecond();
        let third = run(dir.path(), "every: 100ms\ncount: 2\n").await;
        let c = scheduled_ms(&third);
        assert!(c[0] > before, "{c:?} starts after {before}");
    }

    /// A saved tick far in the future is ignored, and replaced by the
    /// ticks this run handles: the next run catches up from them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_saved_tick_far_in_the_future_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let Some(State::Dir(state)) = ctx(dir.path()).state else {
            unreachable!()
        };
        let future = ts("2030-01-01T00:00:00Z").as_millisecond();
        TickStore::open(&state, &"ticks".into())
            .unwrap()
            .save(future, false)
            .unwrap();
        let before = Timestamp::now().as_millisecond();
        let got = scheduled_ms(&run(dir.path(), "every: 50ms\ncount: 3\nmissed: catch_up\n").await);
        assert_eq!(got.len(), 3);
        assert!(got[0] > before, "{got:?} starts from now ({before})");
        let store = TickStore::open(&state, &"ticks".into()).unwrap();
        assert_eq!(store.load().unwrap(), Some(got[2]));
    }

    /// A saved tick that cannot be read fails a `catch_up` run (starting
    /// from now would lose the missed ticks); `skip` starts from now.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_saved_tick_fails_a_catch_up_run() {
        let dir = tempfile::tempdir().unwrap();
        let Some(State::Dir(state)) = ctx(dir.path()).state else {
            unreachable!()
        };
        drop(TickStore::open(&state, &"ticks".into()).unwrap());
        let conn = Connection::open(dir.path().join(TickStore::FILE)).unwrap();
        conn.execute(
            "INSERT INTO schedule_ticks VALUES (?1, 'ticks', 'not a tick')",
            [&state.pipeline],
        )
        .unwrap();
        drop(conn);
        let attempt = |yaml: &str| {
            let cfg: ScheduleSource = serde_saphyr::from_str(yaml).unwrap();
            let (source, decoder) = cfg.build(&ctx(dir.path())).unwrap();
            let p = weir::Pipeline::new();
            let out = p
                .source("ticks", source)
                .try_map("decode", move |r: &Raw| decoder.decode(r))
                .sink("all", weir::collect());
            async move { p.run().await.map(|_| out.take().unwrap().len()) }
        };
        let e = attempt("every: 50ms\ncount: 2\nmissed: catch_up\n")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the last handled tick"), "{e}");
        assert!(e.contains("missed: catch_up"), "{e}");
        assert!(e.contains("run once with 'missed: skip'"), "{e}");
        // `skip` starts from now, and replaces what it could not read.
        assert_eq!(attempt("every: 50ms\ncount: 2\n").await.unwrap(), 2);
        assert_eq!(
            attempt("every: 50ms\ncount: 2\nmissed: catch_up\n")
                .await
                .unwrap(),
            2
        );
    }

    /// Without state (a check, `--no-checkpoint`), nothing is read or
    /// written and the schedule starts from now.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_state_no_database() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: ScheduleSource =
            serde_saphyr::from_str("every: 50ms\ncount: 3\nmissed: catch_up\n").unwrap();
        let mut c = ctx(dir.path());
        c.state = None;
        let (source, decoder) = cfg.build(&c).unwrap();
        let p = weir::Pipeline::new();
        let out = p
            .source("ticks", source)
            .try_map("decode", move |r: &Raw| decoder.decode(r))
            .sink("all", weir::collect());
        p.run().await.unwrap();
        assert_eq!(out.take().unwrap().len(), 3);
        assert!(!dir.path().join(TickStore::FILE).exists());
    }
}
