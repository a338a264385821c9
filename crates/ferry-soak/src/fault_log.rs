//! The fault log: every fault the schedule carried out, with its kind,
//! target, start and end (wall-clock UTC with milliseconds and seconds
//! since the run started), appended to `faults.log` in the run's directory
//! as each fault ends, so a run that dies still leaves it. The checker
//! looks a violation's transaction time up in it ([`near`]) to show the
//! faults around it.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// One fault carried out.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRecord {
    /// What was done: `kill`, `restart`, `blackhole`, `delay 120ms`,
    /// `reset`, `stall`, `500`…
    pub kind: String,
    /// What it was done to: a process, `postgres`, a link, `webhook`.
    pub target: String,
    /// When it started, from the start of the run.
    pub start: Duration,
    /// When it was undone, from the start of the run.
    pub end: Duration,
    /// Why it could not be carried out, if it could not.
    pub error: Option<String>,
}

/// The run's clock and its fault log file.
pub struct FaultLog {
    wall: SystemTime,
    started: Instant,
    file: Mutex<File>,
    records: Mutex<Vec<FaultRecord>>,
}

impl FaultLog {
    /// Creates `path` (header line), the run starting at `started`.
    pub fn create(path: &Path, started: Instant) -> std::io::Result<Self> {
        let mut file = File::create(path)?;
        writeln!(
            file,
            "# start_utc\tstart_s\tend_utc\tend_s\tkind\ttarget\terror"
        )?;
        Ok(Self {
            wall: SystemTime::now() - started.elapsed(),
            started,
            file: Mutex::new(file),
            records: Mutex::new(Vec::new()),
        })
    }

    /// Time since the start of the run.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// `at` (wall-clock time) from the start of the run; `None` before it.
    pub fn since_start(&self, at: SystemTime) -> Option<Duration> {
        at.duration_since(self.wall).ok()
    }

    /// Wall-clock UTC with milliseconds of `at` (from the start of the run).
    pub fn utc(&self, at: Duration) -> String {
        humantime::format_rfc3339_millis(self.wall + at).to_string()
    }

    /// Records `r` and appends it to the file (a write error is printed
    /// once per fault, not fatal: the run goes on).
    pub fn record(&self, r: FaultRecord) {
        let line = self.line(&r);
        if let Err(e) = writeln!(self.file.lock().unwrap(), "{line}") {
            eprintln!("ferry-soak: cannot append to the fault log: {e}");
        }
        self.records.lock().unwrap().push(r);
    }

    /// One record as a line of the file.
    pub fn line(&self, r: &FaultRecord) -> String {
        format!(
            "{}\t{:.3}\t{}\t{:.3}\t{}\t{}\t{}",
            self.utc(r.start),
            r.start.as_secs_f64(),
            self.utc(r.end),
            r.end.as_secs_f64(),
            r.kind,
            r.target,
            r.error.as_deref().unwrap_or("-")
        )
    }

    /// Every record so far, in the order the faults ended.
    pub fn records(&self) -> Vec<FaultRecord> {
        self.records.lock().unwrap().clone()
    }
}

/// The faults of `records` active at some time within `window` before or
/// after `at` (a fault that started before `at - window` and was still on
/// then counts), by start time.
pub fn near(records: &[FaultRecord], at: Duration, window: Duration) -> Vec<&FaultRecord> {
    let from = at.saturating_sub(window);
    let to = at + window;
    let mut out: Vec<&FaultRecord> = records
        .iter()
        .filter(|r| r.start <= to && r.end >= from)
        .collect();
    out.sort_by_key(|r| r.start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(start_ms: u64, end_ms: u64) -> FaultRecord {
        FaultRecord {
            kind: "kill".into(),
            target: format!("p{start_ms}"),
            start: Duration::from_millis(start_ms),
            end: Duration::from_millis(end_ms),
            error: None,
        }
    }

    fn targets(v: Vec<&FaultRecord>) -> Vec<String> {
        v.into_iter().map(|r| r.target.clone()).collect()
    }

    #[test]
    fn the_window_holds_what_overlaps_it_and_nothing_else() {
        let w = Duration::from_secs(30);
        let at = Duration::from_secs(100);
        let records = vec![
            fault(131_000, 132_000), // starts after the window
            fault(130_000, 131_000), // starts at its last instant
            fault(50_000, 69_999),   // ended just before it
            fault(60_000, 70_000),   // ends at its first instant
            fault(20_000, 200_000),  // spans it
            fault(99_000, 101_000),  // around `at`
        ];
        assert_eq!(
            targets(near(&records, at, w)),
            ["p20000", "p60000", "p99000", "p130000"]
        );
    }

    #[test]
    fn a_window_reaching_before_the_start_is_cut_at_zero() {
        let records = vec![fault(0, 500), fault(40_001, 41_000)];
        assert_eq!(
            targets(near(
                &records,
                Duration::from_secs(10),
                Duration::from_secs(30)
            )),
            ["p0"]
        );
    }

    #[test]
    fn lines_carry_utc_and_run_seconds() {
        let dir = std::env::temp_dir().join(format!("fault-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("faults.log");
        let log = FaultLog::create(&path, Instant::now()).unwrap();
        log.record(FaultRecord {
            error: Some("boom".into()),
            ..fault(1_500, 2_250)
        });
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let line = text.lines().nth(1).unwrap();
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols[1], "1.500");
        assert_eq!(cols[3..], ["2.250", "kill", "p1500", "boom"]);
        assert!(cols[0].ends_with('Z') && cols[0].len() == 24, "{line}");
        let start: SystemTime = humantime::parse_rfc3339(cols[0]).unwrap();
        let end: SystemTime = humantime::parse_rfc3339(cols[2]).unwrap();
        assert_eq!(
            end.duration_since(start).unwrap(),
            Duration::from_millis(750)
        );
        assert_eq!(log.records().len(), 1);
    }
}
