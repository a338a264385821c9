//! What a run showed, the checks it must pass, and how it reads.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::cancels::CancelLog;
use crate::consumer::ConsumerLog;
use crate::orders::{Order, Status};
use crate::payment::PaymentLedger;
use crate::{tally, Latency, Millis, Options};

/// One SIGKILL of the shop, and what had happened by then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crash {
    /// Since the start of the run.
    pub after: Duration,
    /// How the process ended.
    pub status: String,
    /// `order.cancelled` events committed (the event store's head).
    pub events_committed: i64,
    /// Orders the payment service had refunded.
    pub orders_refunded: usize,
    /// Calls the payment service had received.
    pub refund_calls: u64,
    /// The forwarder's saved offset: it resumes after it.
    pub forwarder_offset: i64,
}

/// The payment service's side of the run.
#[derive(Clone, Debug, Default)]
pub struct PaymentSummary {
    /// Its time per call, as it saw it.
    pub latency: Latency,
    /// Calls received: every refund attempt.
    pub calls: u64,
    /// Calls not answered 2xx.
    pub failed_calls: u64,
    /// Of those, calls that failed before refunding.
    pub failed_before: u64,
    /// Of those, calls that refunded, then answered 500.
    pub lost_responses: u64,
    /// Repeated idempotency keys answered without a refund.
    pub duplicates_suppressed: u64,
    /// Malformed calls; 0 in a healthy run.
    pub rejected: u64,
}

/// The external consumer's side of the run.
#[derive(Clone, Debug, Default)]
pub struct ConsumerSummary {
    /// Events handed to it.
    pub events_seen: usize,
    /// Whether it saw exactly the store's `order.cancelled` events, each
    /// once, in sequence order.
    pub each_once_in_order: bool,
    /// Whether the orders in what it saw are exactly the cancelled ones.
    pub orders_match: bool,
    /// Pages it read.
    pub pages: u64,
    /// Offsets it resumed from, read from its file, after the shop went
    /// away.
    pub resumed_from: Vec<i64>,
    /// Its offset in the file at the end.
    pub committed: i64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// The outcome of [`run`](crate::run).
#[derive(Clone, Debug)]
pub struct Report {
    /// Where the data lived, for the header line.
    pub database: String,
    /// Seed of the orders and crash moments.
    pub seed: u64,
    /// Seed of the payment service's latencies and failures.
    pub payment_seed: u64,
    /// Orders in the shop.
    pub orders: usize,
    /// Open orders the customers meant to cancel.
    pub planned_cancels: usize,
    /// Of those, cancelled before the first crash.
    pub cancels_before_crash: usize,
    /// Shipped orders the customers also tried to cancel.
    pub shipped: usize,
    /// Crashes meant to happen, the first one included.
    pub planned_crashes: usize,
    /// Cancel latency as the customers saw it (answered requests).
    pub cancel_latency: Latency,
    /// Orders answered `cancelled`.
    pub cancelled: usize,
    /// Orders answered `already_cancelled` (their first answer was lost in
    /// a crash).
    pub already_cancelled: usize,
    /// Orders refused (409).
    pub refused: usize,
    /// Requests cut off by a crash and sent again.
    pub cut_off: u64,
    /// Requests that failed otherwise.
    pub cancel_failures: usize,
    /// The first such failure.
    pub first_cancel_error: Option<String>,
    /// The payment service's side.
    pub payment: PaymentSummary,
    /// The crashes, in order; the first is the one before any refund.
    pub crashes: Vec<Crash>,
    /// Set if the shop exited on its own (its forwarder gave up, say).
    pub shop_died: Option<String>,
    /// Set if the shop did not shut down cleanly at the end.
    pub stop_error: Option<String>,
    /// Orders cancelled in the database.
    pub orders_cancelled: usize,
    /// Whether those are exactly the orders the customers meant to cancel.
    pub cancelled_as_planned: bool,
    /// Shipped orders still shipped.
    pub shipped_untouched: usize,
    /// `order.cancelled` events in the store.
    pub events: usize,
    /// Cancelled orders with exactly one `order.cancelled` event.
    pub orders_with_one_event: usize,
    /// Events about orders that are not cancelled (or about no order).
    pub stray_events: usize,
    /// Refunds made in all.
    pub refunds_made: u64,
    /// Cancelled orders with exactly one refund, of the order's amount.
    pub orders_refunded_once: usize,
    /// Cancelled orders refunded more than once.
    pub orders_refunded_twice: usize,
    /// Cancelled orders without a refund.
    pub cancelled_without_refund: usize,
    /// Refunds of another amount than the order's.
    pub wrong_amounts: usize,
    /// Refunds for orders that are not cancelled.
    pub refunds_for_other_orders: u64,
    /// The forwarder's saved offset at the end.
    pub forwarder_offset: i64,
    /// The event store's head at the end.
    pub head: i64,
    /// Events the forwarder recorded as failed.
    pub event_failures: u64,
    /// The external consumer's side.
    pub consumer: ConsumerSummary,
    /// From the first restart until every cancelled order was refunded and
    /// the forwarder's offset reached the head; `None` if that never
    /// happened.
    pub refunds_complete_after: Option<Duration>,
    /// The whole run.
    pub elapsed: Duration,
    /// How long the run was willing to take.
    pub timeout: Duration,
}

/// An `order.cancelled` event as stored.
#[derive(Clone, Debug)]
pub(crate) struct StoredCancel {
    pub seq: i64,
    pub id: uuid::Uuid,
    pub order_id: Option<i64>,
}

/// What [`build`] makes a report of.
pub(crate) struct Inputs<'a> {
    pub options: &'a Options,
    pub database: String,
    pub to_cancel: &'a BTreeSet<i64>,
    pub shipped: &'a BTreeSet<i64>,
    pub cancels: CancelLog,
    pub ledger: PaymentLedger,
    pub crashes: Vec<Crash>,
    pub shop_died: Option<String>,
    pub stop_error: Option<String>,
    pub final_orders: Vec<Order>,
    pub events: Vec<StoredCancel>,
    pub head: i64,
    pub forwarder_offset: i64,
    pub event_failures: u64,
    pub consumer: ConsumerLog,
    pub refunds_complete_after: Option<Duration>,
    pub elapsed: Duration,
}

pub(crate) fn build(i: Inputs<'_>) -> Report {
    let cancelled_ids: BTreeSet<i64> = i
        .final_orders
        .iter()
        .filter(|o| o.status == Status::Cancelled)
        .map(|o| o.id)
        .collect();
    let shipped_untouched = i
        .final_orders
        .iter()
        .filter(|o| o.status == Status::Shipped && i.shipped.contains(&o.id))
        .count();
    let events_per_order = tally(i.events.iter().filter_map(|e| e.order_id));
    let orders_with_one_event = cancelled_ids
        .iter()
        .filter(|id| events_per_order.get(id) == Some(&1))
        .count();
    let stray_events = i
        .events
        .iter()
        .filter(|e| e.order_id.is_none_or(|id| !cancelled_ids.contains(&id)))
        .count();

    let mut orders_refunded_once = 0;
    let mut orders_refunded_twice = 0;
    let mut cancelled_without_refund = 0;
    let mut wrong_amounts = 0;
    let mut refunds_for_other_orders = 0;
    for order in &i.final_orders {
        let refunds = i.ledger.refunds.get(&order.id).map_or(&[][..], |r| &r[..]);
        let wrong = refunds
            .iter()
            .filter(|r| r.amount_cents != order.amount_cents)
            .count();
        wrong_amounts += wrong;
        if order.status != Status::Cancelled {
            refunds_for_other_orders += refunds.len() as u64;
            continue;
        }
        match refunds.len() {
            0 => cancelled_without_refund += 1,
            1 if wrong == 0 => orders_refunded_once += 1,
            1 => {}
            _ => orders_refunded_twice += 1,
        }
    }
    // Refunds for ids that are not orders at all.
    refunds_for_other_orders += i
        .ledger
        .refunds
        .iter()
        .filter(|(id, _)| !i.final_orders.iter().any(|o| o.id == **id))
        .map(|(_, r)| r.len() as u64)
        .sum::<u64>();

    let stored: Vec<(i64, uuid::Uuid)> = i.events.iter().map(|e| (e.seq, e.id)).collect();
    let seen: Vec<(i64, uuid::Uuid)> = i.consumer.seen.iter().map(|s| (s.seq, s.id)).collect();
    let seen_orders: BTreeSet<i64> = i.consumer.seen.iter().filter_map(|s| s.order_id).collect();
    let consumer = ConsumerSummary {
        events_seen: seen.len(),
        each_once_in_order: !stored.is_empty() && seen == stored,
        orders_match: seen_orders == cancelled_ids
            && i.consumer.seen.iter().all(|s| s.order_id.is_some()),
        pages: i.consumer.pages,
        resumed_from: i.consumer.resumed_from.clone(),
        committed: i.consumer.committed,
        error: i.consumer.error.clone(),
    };

    let ledger = &i.ledger;
    Report {
        database: i.database,
        seed: i.options.seed,
        payment_seed: i.options.payment.seed,
        orders: i.options.orders,
        planned_cancels: i.options.cancels,
        cancels_before_crash: i.options.cancels_before_crash,
        shipped: i.options.shipped,
        planned_crashes: 1 + i.options.crashes,
        cancel_latency: Latency::of(i.cancels.latencies.clone()),
        cancelled: i.cancels.cancelled.len(),
        already_cancelled: i.cancels.already_cancelled.len(),
        refused: i.cancels.refused.len(),
        cut_off: i.cancels.cut_off,
        cancel_failures: i.cancels.failed.len(),
        first_cancel_error: i.cancels.first_error.clone(),
        payment: PaymentSummary {
            latency: Latency::of(ledger.call_latencies.clone()),
            calls: ledger.calls(),
            failed_calls: ledger.failed_calls(),
            failed_before: ledger.failed_before,
            lost_responses: ledger.lost_responses,
            duplicates_suppressed: ledger.duplicates_suppressed,
            rejected: ledger.rejected,
        },
        crashes: i.crashes,
        shop_died: i.shop_died,
        stop_error: i.stop_error,
        orders_cancelled: cancelled_ids.len(),
        cancelled_as_planned: &cancelled_ids == i.to_cancel,
        shipped_untouched,
        events: i.events.len(),
        orders_with_one_event,
        stray_events,
        refunds_made: ledger.refunds_made(),
        orders_refunded_once,
        orders_refunded_twice,
        cancelled_without_refund,
        wrong_amounts,
        refunds_for_other_orders,
        forwarder_offset: i.forwarder_offset,
        head: i.head,
        event_failures: i.event_failures,
        consumer,
        refunds_complete_after: i.refunds_complete_after,
        elapsed: i.elapsed,
        timeout: i.options.timeout,
    }
}

impl Report {
    /// Every check the run failed, in words; empty when it passed.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                p.push(problem);
            }
        };
        check(
            self.cancel_failures == 0,
            format!(
                "{} cancel requests failed (first: {})",
                self.cancel_failures,
                self.first_cancel_error.as_deref().unwrap_or("?")
            ),
        );
        check(
            self.cancelled + self.already_cancelled == self.planned_cancels,
            format!(
                "{} of {} cancellations were answered as done",
                self.cancelled + self.already_cancelled,
                self.planned_cancels
            ),
        );
        check(
            self.refused == self.shipped && self.shipped_untouched == self.shipped,
            format!(
                "{} of {} cancellations of shipped orders were refused, {} shipped orders untouched",
                self.refused, self.shipped, self.shipped_untouched
            ),
        );
        check(
            self.cancelled_as_planned,
            format!(
                "the database holds {} cancelled orders, not the {} asked for",
                self.orders_cancelled, self.planned_cancels
            ),
        );
        check(
            self.events == self.orders_cancelled
                && self.orders_with_one_event == self.orders_cancelled
                && self.stray_events == 0,
            format!(
                "{} order.cancelled events for {} cancelled orders ({} with exactly one, {} about other orders)",
                self.events, self.orders_cancelled, self.orders_with_one_event, self.stray_events
            ),
        );
        if let Some(first) = self.crashes.first() {
            check(
                first.refund_calls == 0,
                format!(
                    "the payment service was called {} times before the first crash",
                    first.refund_calls
                ),
            );
            check(
                first.events_committed == self.cancels_before_crash as i64,
                format!(
                    "{} events were committed before the first crash, not {}",
                    first.events_committed, self.cancels_before_crash
                ),
            );
        }
        check(
            self.crashes.len() == self.planned_crashes,
            format!(
                "the shop was killed {} times, not {}",
                self.crashes.len(),
                self.planned_crashes
            ),
        );
        check(
            self.orders_refunded_twice == 0,
            format!(
                "DOUBLE REFUND: {} orders refunded more than once",
                self.orders_refunded_twice
            ),
        );
        check(
            self.cancelled_without_refund == 0,
            format!(
                "{} cancelled orders were never refunded",
                self.cancelled_without_refund
            ),
        );
        check(
            self.wrong_amounts == 0,
            format!("{} refunds of the wrong amount", self.wrong_amounts),
        );
        check(
            self.refunds_for_other_orders == 0,
            format!(
                "{} refunds for orders that are not cancelled",
                self.refunds_for_other_orders
            ),
        );
        check(
            self.orders_refunded_once == self.orders_cancelled,
            format!(
                "{} of {} cancelled orders have exactly one refund",
                self.orders_refunded_once, self.orders_cancelled
            ),
        );
        check(
            self.forwarder_offset >= self.head && self.event_failures == 0,
            format!(
                "the forwarder stopped at offset {} of {} with {} failed events",
                self.forwarder_offset, self.head, self.event_failures
            ),
        );
        check(
            self.consumer.each_once_in_order && self.consumer.orders_match,
            format!(
                "the consumer saw {} events, not the store's {} each once in sequence order",
                self.consumer.events_seen, self.events
            ),
        );
        if let Some(e) = &self.consumer.error {
            check(false, format!("the consumer failed: {e}"));
        }
        if let Some(status) = &self.shop_died {
            check(false, format!("the shop exited on its own ({status})"));
        }
        if let Some(e) = &self.stop_error {
            check(false, e.clone());
        }
        check(
            self.refunds_complete_after.is_some(),
            format!("refunds not complete within {}", seconds(self.timeout)),
        );
        p
    }

    /// Whether every check passed.
    pub fn success(&self) -> bool {
        self.problems().is_empty()
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.cancel_latency;
        let p = &self.payment;
        writeln!(
            f,
            "order-refund demo: {} orders, {} to cancel, {} shipped, on {} (seed {}, payment seed {})",
            self.orders, self.planned_cancels, self.shipped, self.database, self.seed, self.payment_seed
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "shop (order status + order.cancelled event in one transaction, no refund call)"
        )?;
        writeln!(
            f,
            "  {} cancel requests answered: {} cancelled, {} already cancelled, {} refused (shipped)",
            c.count, self.cancelled, self.already_cancelled, self.refused
        )?;
        writeln!(
            f,
            "  latency p50 {}, p95 {}, p99 {}, max {}",
            Millis(c.p50),
            Millis(c.p95),
            Millis(c.p99),
            Millis(c.max),
        )?;
        if self.cut_off > 0 {
            writeln!(
                f,
                "  {} attempts got no answer (the shop was down) and were sent again",
                self.cut_off
            )?;
        }
        if let Some(e) = &self.first_cancel_error {
            writeln!(f, "  first failure: {e}")?;
        }
        writeln!(
            f,
            "payment service (called only by the forwarder, after commit)"
        )?;
        writeln!(
            f,
            "  {} refund calls; latency p50 {}, p99 {}; {} failed ({:.0}%): {} before refunding, {} after",
            p.calls,
            Millis(p.latency.p50),
            Millis(p.latency.p99),
            p.failed_calls,
            percent(p.failed_calls, p.calls),
            p.failed_before,
            p.lost_responses
        )?;
        writeln!(
            f,
            "  called inside the cancel, it would add {} (p99 {}) to every cancel and fail {:.0}% of them",
            Millis(p.latency.p50),
            Millis(p.latency.p99),
            percent(p.failed_calls, p.calls)
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "crashes (SIGKILL of the shop process, restarted at once)"
        )?;
        for (n, crash) in self.crashes.iter().enumerate() {
            let when = if n == 0 {
                "right after the first cancellations committed, forwarder not started"
            } else if crash.forwarder_offset < crash.events_committed {
                "mid-stream"
            } else {
                "with the refunds caught up"
            };
            writeln!(
                f,
                "  {}. at {}, {when}: {} events committed, {} orders refunded ({} calls), forwarder offset {}",
                n + 1,
                seconds(crash.after),
                crash.events_committed,
                crash.orders_refunded,
                crash.refund_calls,
                crash.forwarder_offset
            )?;
        }
        if let Some(status) = &self.shop_died {
            writeln!(f, "  the shop exited on its own: {status}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  cancelled orders              {:>6}",
            self.orders_cancelled
        )?;
        writeln!(f, "  order.cancelled events        {:>6}", self.events)?;
        writeln!(
            f,
            "  refunds made                  {:>6}",
            self.refunds_made
        )?;
        writeln!(
            f,
            "  orders refunded exactly once  {:>6}",
            self.orders_refunded_once
        )?;
        if self.orders_refunded_twice > 0 {
            writeln!(
                f,
                "  orders refunded twice or more {:>6}  DOUBLE REFUNDS",
                self.orders_refunded_twice
            )?;
        }
        if self.cancelled_without_refund > 0 {
            writeln!(
                f,
                "  cancelled, never refunded     {:>6}",
                self.cancelled_without_refund
            )?;
        }
        writeln!(
            f,
            "  refunds for other orders      {:>6}  ({} open or shipped orders)",
            self.refunds_for_other_orders,
            self.orders - self.orders_cancelled
        )?;
        writeln!(
            f,
            "  duplicates suppressed         {:>6}  (redeliveries after a lost response or a crash, by Idempotency-Key)",
            p.duplicates_suppressed
        )?;
        writeln!(
            f,
            "  forwarder offset              {:>6}  (head {}, {} failed events)",
            self.forwarder_offset, self.head, self.event_failures
        )?;
        match self.refunds_complete_after {
            Some(d) => writeln!(
                f,
                "  every cancelled order refunded {} after the first restart",
                seconds(d)
            )?,
            None => writeln!(
                f,
                "  refunds NOT complete when the run stopped ({} after the start)",
                seconds(self.elapsed)
            )?,
        }
        writeln!(f)?;
        let k = &self.consumer;
        writeln!(
            f,
            "external consumer (EventsClient over GET /v1/events, offset in a file)"
        )?;
        writeln!(
            f,
            "  {} order.cancelled events seen in {} pages: {}",
            k.events_seen,
            k.pages,
            if k.each_once_in_order && k.orders_match {
                format!("each once, in sequence order (seq 1..{})", self.head)
            } else {
                "NOT the store's events each once in order".to_owned()
            }
        )?;
        if k.resumed_from.is_empty() {
            writeln!(
                f,
                "  no request failed, so it never restarted from its offset file; offset now {}",
                k.committed
            )?;
        } else {
            let resumed: Vec<String> = k.resumed_from.iter().map(i64::to_string).collect();
            writeln!(
                f,
                "  {} requests failed while the shop was down; each time it started over from its offset file (at {}); offset now {}",
                k.resumed_from.len(),
                resumed.join(", "),
                k.committed
            )?;
        }
        if let Some(e) = &k.error {
            writeln!(f, "  stopped early: {e}")?;
        }
        writeln!(f)?;
        let problems = self.problems();
        if problems.is_empty() {
            write!(
                f,
                "OK: every cancelled order was refunded exactly once, none other was, \
                 and the consumer saw every cancellation once, in order ({})",
                seconds(self.elapsed)
            )
        } else {
            writeln!(f, "FAILED:")?;
            for (n, problem) in problems.iter().enumerate() {
                if n > 0 {
                    writeln!(f)?;
                }
                write!(f, "  - {problem}")?;
            }
            Ok(())
        }
    }
}
