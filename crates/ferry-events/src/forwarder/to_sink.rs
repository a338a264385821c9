//! A forwarder to a sink: stored events through the delivery engine
//! ([`ferry_delivery`]), the same waves, retries and probing as the relay.
//!
//! The forwarder keeps a *window* ([`Window`], the engine's) of events
//! read after its offset. Each round hands the engine the events that may
//! go now: per source, the first one not yet settled, and those after it,
//! unless it waits for a retry. So an event the sink refuses holds back its own source only;
//! the other sources go on at full speed, reading further pages, while it
//! waits for its backoff. The offset is the end of the settled prefix: it
//! never passes an event that is neither delivered nor given up on. The
//! window holds at most [`WINDOW_PAGES`] pages of events; when it is full
//! of events behind retries, the forwarder waits for the earliest retry.

use ferry_core::{ErrorKind, HandlerError, Sink};
use ferry_delivery::{deliver, probe_limit, AfterGiveUp, Attempt, OrderPolicy, Window};
use ferry_store::event_store::StoredEvent;
use tokio::time::Instant;

use super::{
    event_message, Forwarder, ForwarderError, ForwarderStats, OnFailure, Position, Run, Settled,
};

/// Most pages of events held past the offset while some wait for a retry:
/// what a crash can make the forwarder deliver again.
pub const WINDOW_PAGES: usize = 8;

/// Why the sink did not take an event, for the failure record and
/// [`ForwarderError::Stopped`]: its kind, and the sink's error as the cause.
pub(crate) fn sink_refusal(kind: ErrorKind, error: String) -> HandlerError {
    let message = if kind.is_retryable() {
        "the sink did not take the event"
    } else {
        "the sink refused the event"
    };
    HandlerError::new(kind, message).with_source(std::io::Error::other(error))
}

impl Forwarder {
    /// Delivers events to `sink` until shutdown or a stop.
    pub(super) async fn deliver_to_sink(
        &self,
        run: &Run,
        sink: &dyn Sink,
        at: &mut Position,
    ) -> Result<(), ForwarderError> {
        let batch = self.config.batch_size as usize;
        let mut window: Window<StoredEvent> = Window::new(batch.saturating_mul(WINDOW_PAGES));
        // Read up to here; the next page starts after it.
        let mut read_to = at.offset;
        // The last page read was not full: wait for a wake-up or the poll
        // interval before reading again.
        let mut at_head = false;
        // A row after the window cannot be decoded: stop once the window
        // is settled.
        let mut undecodable: Option<ForwarderError> = None;
        // Under Stop nothing goes out after the event the forwarder stops
        // at, not even later events of its source in the same call.
        let after_give_up = match self.config.on_failure {
            OnFailure::Stop => AfterGiveUp::Stop,
            OnFailure::Skip => AfterGiveUp::Continue,
        };
        loop {
            if run.shutdown.is_cancelled() {
                return Ok(());
            }
            if let Some(pause) = run.sink.pause_left().or_else(|| run.store.pause_left()) {
                run.sleep(pause).await;
                continue;
            }
            if !at_head && undecodable.is_none() && !window.is_full() {
                match self.read_page(run, read_to).await {
                    None => continue,
                    Some(Err(e)) => undecodable = Some(e),
                    Some(Ok(page)) => {
                        at_head = page.events.len() < batch;
                        read_to = read_to.max(page.next_offset);
                        for event in page.events {
                            let message = event_message(&event);
                            window.push(event.seq, event, message);
                        }
                    }
                }
            }

            // This round: per source, the first unsettled event and those
            // after it, up to the first that waits for a retry; while the
            // sink is down, a probe of one event per source.
            let now = Instant::now();
            let failures = run.sink.failures();
            let limit = probe_limit(failures, self.config.batch_size) as usize;
            let round = window.round(now, limit, failures > 0);

            if round.is_empty() {
                if let Some(e) = undecodable.take() {
                    if window.all_settled() {
                        self.advance(run, &mut window, at, read_to).await;
                        return Err(e);
                    }
                    undecodable = Some(e);
                }
                if !at_head && undecodable.is_none() && !window.is_full() {
                    // Everything read waits behind retries: read on, other
                    // sources may follow.
                    continue;
                }
                let longest = match round.next_due() {
                    Some(due) => due.saturating_duration_since(now),
                    None => self.config.poll_interval,
                };
                if !window.is_empty() && window.is_full() {
                    // Full of events behind retries: wait for the first.
                    run.sleep(longest).await;
                } else {
                    self.idle(run, longest).await;
                    at_head = false;
                }
                continue;
            }

            let entries = window.entries(&round);
            let spans = super::trace::delivery_spans(&self.config.name, &entries);
            let Some(result) = run
                .within_grace(
                    &self.config,
                    deliver(
                        sink,
                        &entries,
                        OrderPolicy::Ordered,
                        after_give_up,
                        &self.config.retry,
                        None,
                    ),
                )
                .await
            else {
                return Ok(());
            };
            drop(entries);
            super::trace::record_outcomes(spans, &result);
            match &result.unavailable {
                Some(error) => {
                    ForwarderStats::add(&self.stats.sink_unavailable, 1);
                    run.sink.failed(error);
                }
                None if result.sink_answered => run.sink.succeeded(),
                None => {}
            }
            for attempt in window.apply(&round, result) {
                let (failure, retrying) = match attempt {
                    Attempt::Delivered { .. } => {
                        ForwarderStats::add(&self.stats.delivered, 1);
                        continue;
                    }
                    Attempt::Retrying(f) => (f, true),
                    Attempt::GivenUp(f) => (f, false),
                };
                ForwarderStats::add(&self.stats.failed, 1);
                let error = sink_refusal(failure.kind, failure.error);
                let event = &window.get(failure.index).item;
                if retrying {
                    self.log_attempt(event, failure.attempts, &error);
                    continue;
                }
                match self.give_up(run, event, failure.attempts, error).await {
                    Settled::Skipped => window.settle(failure.index),
                    Settled::Stop { attempts, error } => {
                        let event = event.clone();
                        self.advance(run, &mut window, at, read_to).await;
                        return Err(self.stopped(&event, attempts, at.offset, error));
                    }
                    Settled::Interrupted | Settled::Delivered => {
                        self.advance(run, &mut window, at, read_to).await;
                        return Ok(());
                    }
                }
            }
            self.advance(run, &mut window, at, read_to).await;
        }
    }

    /// Drops the settled prefix of `window`, moves the offset to its end
    /// (to `read_to` when everything read is settled) and saves it.
    async fn advance(
        &self,
        run: &Run,
        window: &mut Window<StoredEvent>,
        at: &mut Position,
        read_to: i64,
    ) {
        for settled in window.pop_settled() {
            at.offset = at.offset.max(settled.seq);
        }
        if window.is_empty() {
            at.offset = at.offset.max(read_to);
        }
        self.stats.set_offset(at.offset);
        at.saved = self.save(run, at.offset, at.saved).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_its_kind_and_the_sinks_error() {
        let e = sink_refusal(ErrorKind::Permanent, "http 400: bad".to_owned());
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert_eq!(e.describe(), "the sink refused the event: http 400: bad");
        let e = sink_refusal(ErrorKind::Unavailable, "connection refused".to_owned());
        assert!(e.is_transient());
        let bad: Result<u8, _> = serde_json::from_str("{");
        assert_eq!(
            HandlerError::from(bad.unwrap_err()).kind,
            ErrorKind::Permanent
        );
        assert!(HandlerError::from(sqlx::Error::PoolTimedOut).is_transient());
        let store = ferry_store::StoreError::Database(sqlx::Error::PoolTimedOut);
        assert!(HandlerError::from(store).is_transient());
    }
}
