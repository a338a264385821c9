//! Turning measurements into text: number formatting, medians, percentiles,
//! and the optional TSV file every figure is appended to.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;

/// `1234567.8` as `1,234,568`.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or_default())
        .collect();
    let sign = if n < 0 { "-" } else { "" };
    format!("{sign}{}", groups.join(","))
}

/// The median; `NaN` for no values.
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Percentile `p` (0–100) of `sorted`, interpolated between neighbours the
/// way bench-peers' `run_peer.py` does, so figures compare directly.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = (sorted.len() - 1) as f64 * p / 100.0;
    let f = k.floor() as usize;
    let c = (f + 1).min(sorted.len() - 1);
    sorted[f] + (sorted[c] - sorted[f]) * (k - f as f64)
}

/// `a / b` as `0.43`, or `-` when there is no baseline.
pub fn ratio(a: f64, b: f64) -> String {
    if b.is_finite() && b > 0.0 && a.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "-".to_owned()
    }
}

/// One figure, as one TSV line.
#[derive(Clone, Debug, Default)]
pub struct Figure {
    /// The sub-command that measured it: `drain`, `ceiling`, `latency`.
    pub command: &'static str,
    /// `postgres` or `sqlite`.
    pub database: String,
    /// What it ran on, e.g. `PostgreSQL 15.20 at 127.0.0.1:5432` (from
    /// `Server::describe`), so figures from different servers stay apart.
    pub server: String,
    /// The sink, for relay figures (`null`, `nats`, `http`).
    pub sink: String,
    /// What was measured, e.g. `relay_drain` or `insert_100_per_txn_x4`.
    pub figure: String,
    /// 1-based run number.
    pub run: usize,
    /// The value.
    pub value: f64,
    /// Its unit, e.g. `msg/s`, `rows/s`, `ms`.
    pub unit: &'static str,
    /// The figure it is compared with, measured in the same run.
    pub baseline: String,
    /// The baseline's value.
    pub baseline_value: Option<f64>,
    /// The settings, `k=v` separated by spaces.
    pub settings: String,
    /// Anything else worth keeping (counts, durations).
    pub notes: String,
}

/// Appends figures to a TSV file (header written when the file is new).
#[derive(Clone, Debug, Default)]
pub struct Tsv {
    path: Option<PathBuf>,
}

const HEADER: &str = "date\tversion\tcommand\tdatabase\tserver\tsink\tfigure\trun\tvalue\tunit\tbaseline\tbaseline_value\tratio\tsettings\tnotes\n";

impl Tsv {
    /// Figures go to `path`, or nowhere. A file written with other columns
    /// (by an older version) is refused here, before anything is measured,
    /// rather than mixed.
    pub fn new(path: Option<PathBuf>) -> anyhow::Result<Self> {
        if let Some(path) = &path {
            Self::header_of(path)?;
        }
        Ok(Self { path })
    }

    /// The file's header line (empty for no file or an empty one), checked.
    fn header_of(path: &std::path::Path) -> anyhow::Result<String> {
        let mut header = String::new();
        if path.exists() {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            std::io::BufReader::new(file).read_line(&mut header)?;
            anyhow::ensure!(
                header.is_empty() || header == HEADER,
                "{} has other columns (an older ferry-bench wrote it); give another --tsv file",
                path.display()
            );
        }
        Ok(header)
    }

    /// Appends one line.
    pub fn append(&self, f: &Figure) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let new = Self::header_of(path)?.is_empty();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if new {
            file.write_all(HEADER.as_bytes())?;
        }
        let clean = |s: &str| s.replace(['\t', '\n'], " ");
        let line = format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.2}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
            env!("CARGO_PKG_VERSION"),
            f.command,
            f.database,
            clean(&f.server),
            f.sink,
            clean(&f.figure),
            f.run,
            f.value,
            f.unit,
            clean(&f.baseline),
            f.baseline_value
                .map(|v| format!("{v:.2}"))
                .unwrap_or_default(),
            f.baseline_value
                .map(|b| ratio(f.value, b))
                .unwrap_or_default(),
            clean(&f.settings),
            clean(&f.notes),
        );
        file.write_all(line.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.8), "1,234,568");
        assert_eq!(thousands(-1000.0), "-1,000");
    }

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&s, 50.0), 3.0);
        assert_eq!(percentile(&s, 100.0), 5.0);
        assert!((percentile(&s, 99.0) - 4.96).abs() < 1e-9);
        assert_eq!(ratio(1.0, 0.0), "-");
        assert_eq!(ratio(1.0, 4.0), "0.25");
    }
}
