//! The executor's counters and gauges.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of an executor's metrics. Gauges are values at the time of
/// the snapshot; counters count since the executor was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecutorMetrics {
    /// Gauge: tasks waiting in the queue for a slot.
    pub queued: u64,
    /// Gauge: tasks running now, on a slot or in a submitter's own task
    /// (`run_in_caller`); a task waiting between two attempts counts as
    /// running.
    pub running: u64,
    /// Counter: tasks taken (queued or run in the caller).
    pub submitted: u64,
    /// Counter: tasks that succeeded, re-runs from the failure log included.
    pub done: u64,
    /// Counter: tasks whose retries were spent, handed to the failure log.
    pub failed: u64,
    /// Counter: attempts repeated after a failure.
    pub retried: u64,
    /// Counter: submissions refused (queue full under `reject`, or the
    /// executor shutting down).
    pub rejected: u64,
    /// Counter: tasks a shutdown cancelled at its deadline.
    pub cancelled: u64,
    /// Counter: tasks run by their submitter because the queue was full
    /// (`run_in_caller`).
    pub ran_in_caller: u64,
}

impl ExecutorMetrics {
    /// The metrics in the Prometheus text exposition format, labelled
    /// `executor="<name>"`: `ferry_executor_queued` and
    /// `ferry_executor_running` (gauges), `ferry_executor_submitted_total`,
    /// `…_done_total`, `…_failed_total`, `…_retried_total`,
    /// `…_rejected_total`, `…_cancelled_total` and `…_ran_in_caller_total`
    /// (counters).
    pub fn to_prometheus(&self, executor: &str) -> String {
        let label = escape_label(executor);
        let rows: [(&str, &str, &str, u64); 9] = [
            (
                "ferry_executor_queued",
                "gauge",
                "Tasks waiting in the queue for a slot.",
                self.queued,
            ),
            (
                "ferry_executor_running",
                "gauge",
                "Tasks running now, waits between attempts included.",
                self.running,
            ),
            (
                "ferry_executor_submitted_total",
                "counter",
                "Tasks taken.",
                self.submitted,
            ),
            (
                "ferry_executor_done_total",
                "counter",
                "Tasks that succeeded.",
                self.done,
            ),
            (
                "ferry_executor_failed_total",
                "counter",
                "Tasks whose retries were spent.",
                self.failed,
            ),
            (
                "ferry_executor_retried_total",
                "counter",
                "Attempts repeated after a failure.",
                self.retried,
            ),
            (
                "ferry_executor_rejected_total",
                "counter",
                "Submissions refused.",
                self.rejected,
            ),
            (
                "ferry_executor_cancelled_total",
                "counter",
                "Tasks cancelled at a shutdown's deadline.",
                self.cancelled,
            ),
            (
                "ferry_executor_ran_in_caller_total",
                "counter",
                "Tasks run by their submitter because the queue was full.",
                self.ran_in_caller,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{executor=\"{label}\"}} {value}");
        }
        out
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The live counters behind [`ExecutorMetrics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub queued: AtomicU64,
    pub running: AtomicU64,
    pub submitted: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub rejected: AtomicU64,
    pub cancelled: AtomicU64,
    pub ran_in_caller: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ExecutorMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExecutorMetrics {
            queued: get(&self.queued),
            running: get(&self.running),
            submitted: get(&self.submitted),
            done: get(&self.done),
            failed: get(&self.failed),
            retried: get(&self.retried),
            rejected: get(&self.rejected),
            cancelled: get(&self.cancelled),
            ran_in_caller: get(&self.ran_in_caller),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_lines_carry_values_and_escaped_labels() {
        let m = ExecutorMetrics {
            queued: 3,
            failed: 2,
            ..ExecutorMetrics::default()
        };
        let text = m.to_prometheus("mail \"a\"");
        for line in [
            "# TYPE ferry_executor_queued gauge\n",
            "ferry_executor_queued{executor=\"mail \\\"a\\\"\"} 3\n",
            "# TYPE ferry_executor_failed_total counter\n",
            "ferry_executor_failed_total{executor=\"mail \\\"a\\\"\"} 2\n",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
        assert_eq!(text.lines().count(), 27);
    }
}
