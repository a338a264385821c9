//! Schedules and windows: cron expressions with a time zone, or every N
//! minutes; which windows are due, and catching up missed ones.
//!
//! A schedule is a series of **ticks**, instants strictly increasing. The
//! **window** of a tick `T` is `[previous tick, T)`: a run at `T` exports
//! what happened since the tick before. Windows are therefore contiguous,
//! never empty and never overlap, whatever the time zone does: a cron
//! time that a daylight-saving change skips or repeats gives at most one
//! tick (the window across the change is simply longer or shorter in
//! absolute time), never a zero-length or duplicate window.
//!
//! * `cron`: a 5-field expression (`minute hour day-of-month month
//!   day-of-week`, or 6 fields with seconds first) read in an IANA time
//!   zone (`UTC` unless named), parsed by [`croner`].
//! * `every`: a fixed period, its ticks the multiples of the period since
//!   the Unix epoch (`every = "15m"` ticks at :00, :15, :30, :45 UTC), so
//!   a restart finds the same windows.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use ferry_core::Failure;
use serde::{Deserialize, Serialize};

/// At most this many windows are listed by one [`Schedule::due_windows`]
/// (a job down for a year on a one-minute schedule asks for half a
/// million: that is refused with the fix, not attempted).
pub const MAX_DUE_WINDOWS: usize = 100_000;

/// How long after its tick a window still counts as on time for
/// [`CatchUp::None`].
pub const ON_TIME: std::time::Duration = std::time::Duration::from_secs(60);

/// When a job's ticks happen.
#[derive(Clone, Debug)]
pub struct Schedule {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Cron {
        cron: Box<Cron>,
        tz: Tz,
        text: String,
    },
    Every(chrono::Duration),
}

/// A scheduled window: `[start, end)`, `end` being its tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeWindow {
    /// Inclusive start (the tick before `end`).
    pub start: DateTime<Utc>,
    /// Exclusive end: the tick whose run exports this window.
    pub end: DateTime<Utc>,
}

impl TimeWindow {
    /// The window as a manifest writes it: RFC 3339 UTC times.
    pub fn to_manifest(&self) -> crate::Window {
        crate::Window {
            start: format_time(self.start),
            end: format_time(self.end),
        }
    }

    /// Its length.
    pub fn length(&self) -> chrono::Duration {
        self.end - self.start
    }
}

/// A window time as written in manifests and the run history:
/// `2026-12-06T00:00:00Z` (sub-second digits only when there are some).
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Which missed windows a job runs when it finds them (at start, or after
/// a long run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Every window not yet exported, oldest first.
    #[default]
    All,
    /// Only the latest complete window; older missed ones are skipped.
    Latest,
    /// No catching up: only the latest complete window, and only while
    /// its tick is on time, less than [`ON_TIME`] ago (or less than the
    /// window's length, when that is shorter). A running exporter wakes
    /// at each tick and runs it; after an outage nothing missed is run
    /// and the job waits for its next tick. A window that fails is not
    /// tried again either.
    None,
}

impl Schedule {
    /// A cron schedule read in time zone `timezone` (an IANA name such as
    /// `Europe/Berlin`; `UTC` when `None`).
    ///
    /// A bad expression or zone is a permanent failure naming the key
    /// (`schedule` or `timezone`) and the value.
    pub fn cron(expression: &str, timezone: Option<&str>) -> Result<Self, Failure> {
        let tz_name = timezone.unwrap_or("UTC");
        let tz = Tz::from_str(tz_name).map_err(|e| {
            Failure::permanent(format!(
                "timezone = {tz_name:?} is not an IANA time zone name (such as \"UTC\" or \"Europe/Berlin\"): {e}"
            ))
        })?;
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) || expression.contains('@') {
            return Err(Failure::permanent(format!(
                "schedule = {expression:?} is not a cron expression: expected 5 fields \
                 (minute hour day-of-month month day-of-week), or 6 with seconds first, got {fields}"
            )));
        }
        let cron = Cron::from_str(expression).map_err(|e| {
            Failure::permanent(format!(
                "schedule = {expression:?} is not a cron expression: {e}"
            ))
            .with_source(e)
        })?;
        let schedule = Self {
            kind: Kind::Cron {
                cron: Box::new(cron),
                tz,
                text: expression.to_owned(),
            },
        };
        // An expression that never matches (`0 0 31 2 *`) has no ticks.
        schedule.next_tick(Utc::now()).map_err(|_| {
            Failure::permanent(format!(
                "schedule = {expression:?} never matches a time: no window can end"
            ))
        })?;
        Ok(schedule)
    }

    /// A schedule ticking every `period`, at the multiples of `period`
    /// since the Unix epoch; `period` at least one second, whole seconds.
    pub fn every(period: Duration) -> Result<Self, Failure> {
        let text = humantime::format_duration(period).to_string();
        if period < Duration::from_secs(1) || period.subsec_nanos() != 0 {
            return Err(Failure::permanent(format!(
                "every = {text:?} must be a whole number of seconds, at least 1s"
            )));
        }
        let period = chrono::Duration::from_std(period)
            .map_err(|e| Failure::permanent(format!("every = {text:?} is too long: {e}")))?;
        Ok(Self {
            kind: Kind::Every(period),
        })
    }

    /// The schedule as configured, for logs (`cron "0 2 * * *" in
    /// Europe/Berlin`, `every 15m`).
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Cron { tz, text, .. } => format!("cron {text:?} in {tz}"),
            Kind::Every(p) => match p.to_std() {
                Ok(p) => format!("every {}", humantime::format_duration(p)),
                Err(_) => "every ?".to_owned(),
            },
        }
    }

    /// The first tick strictly after `t`.
    pub fn next_tick(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, Failure> {
        match &self.kind {
            Kind::Every(p) => {
                let secs = p.num_seconds();
                let n = t.timestamp().div_euclid(secs) + 1;
                from_timestamp(n * secs)
            }
            Kind::Cron { cron, tz, text } => {
                let local = t.with_timezone(tz);
                let next = cron
                    .find_next_occurrence(&local, false)
                    .map_err(|e| no_tick(text, "after", t, e))?
                    .with_timezone(&Utc);
                if next <= t {
                    // Never go back or stand still (a repeated hour read
                    // twice): step past `t` and look again.
                    let later = (t + chrono::Duration::seconds(1)).with_timezone(tz);
                    return cron
                        .find_next_occurrence(&later, true)
                        .map(|n| n.with_timezone(&Utc))
                        .map_err(|e| no_tick(text, "after", t, e));
                }
                Ok(next)
            }
        }
    }

    /// The last tick at or before `t`.
    pub fn tick_at_or_before(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, Failure> {
        match &self.kind {
            Kind::Every(p) => {
                let secs = p.num_seconds();
                from_timestamp(t.timestamp().div_euclid(secs) * secs)
            }
            Kind::Cron { cron, tz, text } => {
                let local = t.with_timezone(tz);
                let prev = cron
                    .find_previous_occurrence(&local, true)
                    .map_err(|e| no_tick(text, "before", t, e))?
                    .with_timezone(&Utc);
                if prev > t {
                    let earlier = (t - chrono::Duration::seconds(1)).with_timezone(tz);
                    return cron
                        .find_previous_occurrence(&earlier, true)
                        .map(|n| n.with_timezone(&Utc))
                        .map_err(|e| no_tick(text, "before", t, e));
                }
                Ok(prev)
            }
        }
    }

    /// The window whose tick is `tick` (which must be a tick):
    /// `[the tick before, tick)`.
    pub fn window_ending_at(&self, tick: DateTime<Utc>) -> Result<TimeWindow, Failure> {
        let start = self.tick_at_or_before(tick - chrono::Duration::seconds(1))?;
        let start = if start >= tick {
            self.tick_at_or_before(start - chrono::Duration::seconds(1))?
        } else {
            start
        };
        Ok(TimeWindow { start, end: tick })
    }

    /// The window holding `t`: `[last tick at or before t, next tick)`.
    pub fn window_containing(&self, t: DateTime<Utc>) -> Result<TimeWindow, Failure> {
        let start = self.tick_at_or_before(t)?;
        let end = self.next_tick(start)?;
        Ok(TimeWindow { start, end })
    }

    /// The latest window complete at `now` (its tick at or before `now`).
    pub fn latest_complete(&self, now: DateTime<Utc>) -> Result<TimeWindow, Failure> {
        self.window_ending_at(self.tick_at_or_before(now)?)
    }

    /// The windows due at `now`, oldest first, per `policy`.
    ///
    /// The candidates are the complete windows (tick at or before `now`)
    /// starting at or after `last_done_end` (the end of the last exported
    /// window) or, with nothing exported yet, at or after `first_start`;
    /// the first candidate starts at the first tick at or after that
    /// time. [`CatchUp::All`] returns them all, [`CatchUp::Latest`] the
    /// newest, [`CatchUp::None`] the newest when its tick is less than
    /// [`ON_TIME`] (or its length, if shorter) before `now`. Windows
    /// before `last_done_end` that failed are not this function's
    /// business: the exporter adds them from its run history.
    pub fn due_windows(
        &self,
        last_done_end: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        first_start: DateTime<Utc>,
        policy: CatchUp,
    ) -> Result<Vec<TimeWindow>, Failure> {
        let from = last_done_end.unwrap_or(first_start);
        let latest = self.latest_complete(now)?;
        if latest.start < from {
            return Ok(Vec::new());
        }
        match policy {
            CatchUp::Latest => return Ok(vec![latest]),
            CatchUp::None => {
                let on_time = chrono::Duration::from_std(ON_TIME)
                    .unwrap_or_default()
                    .min(latest.length());
                return Ok(if now - latest.end < on_time {
                    vec![latest]
                } else {
                    Vec::new()
                });
            }
            CatchUp::All => {}
        }
        // The first tick at or after `from` starts the first window.
        let mut start = self.tick_at_or_before(from)?;
        if start < from {
            start = self.next_tick(start)?;
        }
        let mut out = Vec::new();
        while start < latest.end {
            let end = self.next_tick(start)?;
            out.push(TimeWindow { start, end });
            if out.len() > MAX_DUE_WINDOWS {
                return Err(Failure::permanent(format!(
                    "more than {MAX_DUE_WINDOWS} windows are due since {}: set catch_up = \"latest\" \
                     or a later start_at",
                    format_time(from)
                )));
            }
            start = end;
        }
        Ok(out)
    }
}

fn from_timestamp(secs: i64) -> Result<DateTime<Utc>, Failure> {
    Utc.timestamp_opt(secs, 0)
        .single()
        .ok_or_else(|| Failure::permanent(format!("schedule: no time at {secs}s since the epoch")))
}

fn no_tick(text: &str, direction: &str, t: DateTime<Utc>, e: croner::errors::CronError) -> Failure {
    Failure::permanent(format!(
        "schedule = {text:?} has no time {direction} {}",
        format_time(t)
    ))
    .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_ticks_on_multiples_of_the_period() {
        let s = Schedule::every(Duration::from_secs(900)).unwrap();
        assert_eq!(
            s.next_tick(t("2026-12-07T02:07:00Z")).unwrap(),
            t("2026-12-07T02:15:00Z")
        );
        assert_eq!(
            s.next_tick(t("2026-12-07T02:15:00Z")).unwrap(),
            t("2026-12-07T02:30:00Z")
        );
        assert_eq!(
            s.window_containing(t("2026-12-07T02:15:00Z")).unwrap(),
            TimeWindow {
                start: t("2026-12-07T02:15:00Z"),
                end: t("2026-12-07T02:30:00Z")
            }
        );
        assert!(Schedule::every(Duration::from_millis(1500)).is_err());
        assert!(Schedule::every(Duration::ZERO).is_err());
    }

    #[test]
    fn bad_cron_and_zone_name_the_key_and_value() {
        let e = Schedule::cron("0 25 * * *", None).unwrap_err();
        assert!(
            e.message.contains("schedule = \"0 25 * * *\""),
            "{}",
            e.message
        );
        assert_eq!(e.kind, ferry_core::ErrorKind::Permanent);
        let e = Schedule::cron("0 2 * *", None).unwrap_err();
        assert!(e.message.contains("5 fields"), "{}", e.message);
        let e = Schedule::cron("0 2 * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(
            e.message.contains("timezone = \"Mars/Olympus\""),
            "{}",
            e.message
        );
    }
}
