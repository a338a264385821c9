//! Window math: cron in a time zone across daylight-saving changes, fixed
//! periods, and the catch-up policies.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Europe::Berlin;
use ferry_batch::schedule::{CatchUp, Schedule, TimeWindow};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Every window from the one holding `from` until `to`, checked to be
/// contiguous, non-empty and strictly increasing.
fn windows(s: &Schedule, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<TimeWindow> {
    let mut out: Vec<TimeWindow> = Vec::new();
    let mut w = s.window_containing(from).unwrap();
    while w.start < to {
        assert!(w.end > w.start, "empty window {w:?}");
        if let Some(prev) = out.last() {
            assert_eq!(prev.end, w.start, "gap or overlap after {prev:?}");
        }
        assert_eq!(s.window_ending_at(w.end).unwrap(), w, "window_ending_at");
        out.push(w);
        w = TimeWindow {
            start: w.end,
            end: s.next_tick(w.end).unwrap(),
        };
    }
    out
}

#[test]
fn daily_cron_in_berlin_across_the_march_change() {
    // 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
    let s = Schedule::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
    let ws = windows(&s, t("2026-03-26T12:00:00Z"), t("2026-04-01T00:00:00Z"));
    // One tick per local day, the skipped day's tick included once.
    let days: Vec<String> = ws
        .iter()
        .map(|w| w.end.with_timezone(&Berlin).format("%m-%d").to_string())
        .collect();
    assert_eq!(days, ["03-27", "03-28", "03-29", "03-30", "03-31", "04-01"]);
    assert_eq!(ws[0].end, t("2026-03-27T01:30:00Z")); // 02:30 CET
    assert_eq!(ws[3].end, t("2026-03-30T00:30:00Z")); // 02:30 CEST
                                                      // The skipped 02:30 ticks once, at the first time after the gap
                                                      // (03:00 CEST): the windows on either side are 23.5 hours, not empty.
    assert_eq!(ws[2].end, t("2026-03-29T01:00:00Z"));
    let half = chrono::Duration::minutes(23 * 60 + 30);
    assert_eq!(ws[2].length(), half);
    assert_eq!(ws[3].length(), half);
    assert_eq!(ws[4].length(), chrono::Duration::hours(24));
}

#[test]
fn daily_cron_in_berlin_across_the_october_change() {
    // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    let s = Schedule::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
    let ws = windows(&s, t("2026-10-22T12:00:00Z"), t("2026-10-28T00:00:00Z"));
    let days: Vec<String> = ws
        .iter()
        .map(|w| w.end.with_timezone(&Berlin).format("%m-%d").to_string())
        .collect();
    assert_eq!(days, ["10-23", "10-24", "10-25", "10-26", "10-27", "10-28"]);
    assert_eq!(ws[1].end, t("2026-10-24T00:30:00Z")); // 02:30 CEST
    assert_eq!(ws[3].end, t("2026-10-26T01:30:00Z")); // 02:30 CET
    let across = ws[2];
    assert!(across.length() >= chrono::Duration::hours(24), "{across:?}");
    assert!(across.length() <= chrono::Duration::hours(25), "{across:?}");
}

#[test]
fn hourly_cron_in_berlin_never_repeats_or_empties_a_window() {
    let s = Schedule::cron("0 * * * *", Some("Europe/Berlin")).unwrap();
    for (from, to) in [
        ("2026-03-28T20:00:00Z", "2026-03-29T06:00:00Z"),
        ("2026-10-24T20:00:00Z", "2026-10-25T06:00:00Z"),
    ] {
        let ws = windows(&s, t(from), t(to));
        // Every window at most two hours, none empty, none twice
        // (checked by `windows`); together they cover the span.
        assert!(ws.iter().all(|w| w.length() <= chrono::Duration::hours(2)));
        assert!(ws.first().unwrap().start <= t(from));
        assert!(ws.last().unwrap().end >= t(to));
    }
    // In March the local hour 02:00 does not exist: 01:00Z is 03:00 CEST.
    let march = windows(&s, t("2026-03-29T00:30:00Z"), t("2026-03-29T01:30:00Z"));
    assert_eq!(march[0].start, t("2026-03-29T00:00:00Z")); // 01:00 CET
    assert_eq!(march.last().unwrap().end, t("2026-03-29T02:00:00Z"));
}

#[test]
fn every_windows_are_epoch_aligned_periods() {
    let s = Schedule::every(Duration::from_secs(15 * 60)).unwrap();
    let ws = windows(&s, t("2026-12-07T01:07:00Z"), t("2026-12-07T02:00:00Z"));
    assert_eq!(ws.len(), 4);
    assert_eq!(ws[0].start, t("2026-12-07T01:00:00Z"));
    assert!(ws
        .iter()
        .all(|w| w.length() == chrono::Duration::minutes(15)));
    assert_eq!(s.describe(), "every 15m");
}

fn hourly() -> Schedule {
    Schedule::every(Duration::from_secs(3600)).unwrap()
}

#[test]
fn catch_up_all_runs_every_missed_window_in_order() {
    let s = hourly();
    let now = t("2026-12-07T05:10:00Z");
    let due = s
        .due_windows(
            Some(t("2026-12-07T02:00:00Z")),
            now,
            t("2026-01-01T00:00:00Z"),
            CatchUp::All,
        )
        .unwrap();
    let starts: Vec<_> = due.iter().map(|w| w.start).collect();
    assert_eq!(
        starts,
        [
            t("2026-12-07T02:00:00Z"),
            t("2026-12-07T03:00:00Z"),
            t("2026-12-07T04:00:00Z")
        ]
    );
    // Nothing done yet: from `first_start`, rounded up to a tick.
    let due = s
        .due_windows(None, now, t("2026-12-07T03:30:00Z"), CatchUp::All)
        .unwrap();
    assert_eq!(
        due,
        [TimeWindow {
            start: t("2026-12-07T04:00:00Z"),
            end: t("2026-12-07T05:00:00Z")
        }]
    );
    // Everything done.
    assert!(s
        .due_windows(Some(t("2026-12-07T05:00:00Z")), now, now, CatchUp::All)
        .unwrap()
        .is_empty());
}

#[test]
fn catch_up_latest_runs_only_the_newest() {
    let s = hourly();
    let due = s
        .due_windows(
            Some(t("2026-12-07T02:00:00Z")),
            t("2026-12-07T05:10:00Z"),
            t("2026-01-01T00:00:00Z"),
            CatchUp::Latest,
        )
        .unwrap();
    assert_eq!(
        due,
        [TimeWindow {
            start: t("2026-12-07T04:00:00Z"),
            end: t("2026-12-07T05:00:00Z")
        }]
    );
}

#[test]
fn catch_up_none_runs_only_a_window_on_time() {
    let s = hourly();
    let last = Some(t("2026-12-07T02:00:00Z"));
    let first = t("2026-01-01T00:00:00Z");
    // Woken at the tick: the window runs.
    let due = s
        .due_windows(last, t("2026-12-07T05:00:01Z"), first, CatchUp::None)
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].end, t("2026-12-07T05:00:00Z"));
    // Started ten minutes after it: nothing is caught up.
    assert!(s
        .due_windows(last, t("2026-12-07T05:10:00Z"), first, CatchUp::None)
        .unwrap()
        .is_empty());
}

#[test]
fn too_many_due_windows_are_refused_with_the_fix() {
    let s = Schedule::every(Duration::from_secs(1)).unwrap();
    let e = s
        .due_windows(
            None,
            t("2026-12-07T00:00:00Z"),
            t("2026-11-01T00:00:00Z"),
            CatchUp::All,
        )
        .unwrap_err();
    assert!(e.message.contains("catch_up = \"latest\""), "{}", e.message);
}

#[test]
fn cron_windows_in_utc_by_default() {
    let s = Schedule::cron("0 2 * * *", None).unwrap();
    let w = s
        .window_containing(Utc.with_ymd_and_hms(2026, 12, 7, 1, 0, 0).unwrap())
        .unwrap();
    assert_eq!(
        w,
        TimeWindow {
            start: t("2026-12-06T02:00:00Z"),
            end: t("2026-12-07T02:00:00Z")
        }
    );
}

#[test]
fn catching_up_across_a_dst_change_gives_each_local_day_once() {
    // Down from before the March change until after the October one's
    // week: every daily window once, contiguous, none empty.
    let s = Schedule::cron("0 1 * * *", Some("Europe/Berlin")).unwrap();
    for (last_done, now, days) in [
        ("2026-03-26T00:00:00Z", "2026-04-01T12:00:00Z", 6),
        ("2026-10-22T23:00:00Z", "2026-10-29T12:00:00Z", 6),
    ] {
        let due = s
            .due_windows(Some(t(last_done)), t(now), t(last_done), CatchUp::All)
            .unwrap();
        assert_eq!(due.len(), days, "{due:?}");
        for pair in due.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        let local_days: std::collections::BTreeSet<String> = due
            .iter()
            .map(|w| w.end.with_timezone(&Berlin).format("%F %H:%M").to_string())
            .collect();
        assert_eq!(local_days.len(), days);
        assert!(
            local_days.iter().all(|d| d.ends_with(" 01:00")),
            "{local_days:?}"
        );
    }
}
