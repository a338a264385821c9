//! Handlers and transactional handlers: one page at a time, one event at a
//! time, in sequence order.

use ferry_core::error_chain;
use ferry_store::event_store::StoredEvent;

use super::transactional::{Batch, Transact};
use super::{
    guarded, EventHandler, Forwarder, ForwarderError, ForwarderStats, HandlerError, Position, Run,
    Settled, Target,
};

impl Forwarder {
    /// Handlers and transactional handlers: one page at a time, one event
    /// at a time, in sequence order.
    pub(super) async fn page_by_page(
        &self,
        run: &Run,
        at: &mut Position,
    ) -> Result<(), ForwarderError> {
        loop {
            if run.shutdown.is_cancelled() {
                return Ok(());
            }
            if let Some(pause) = run.store.pause_left() {
                run.sleep(pause).await;
                continue;
            }
            let page = match self.read_page(run, at.offset).await {
                None => continue,
                Some(Err(e)) => return Err(e),
                Some(Ok(page)) => page,
            };
            if page.events.is_empty() {
                at.offset = at.offset.max(page.next_offset);
                self.stats.set_offset(at.offset);
                at.saved = self.save(run, at.offset, at.saved).await;
                if run.shutdown.is_cancelled() {
                    continue;
                }
                self.idle(run, self.config.poll_interval).await;
                continue;
            }
            let end = match &self.target {
                Target::Handler(handler) => {
                    self.to_handler_page(run, &**handler, &page.events).await
                }
                Target::Transactional(tx) => {
                    self.to_transactional_page(run, &**tx, &page.events).await
                }
                Target::Sink(_) => unreachable!("sinks go through the delivery engine"),
            };
            if end.done > 0 {
                at.offset = at.offset.max(page.events[end.done - 1].seq);
            }
            if let Some(through) = end.saved {
                // What the store holds, even when another instance of this
                // name or a COMMIT whose answer we lost put it there.
                at.saved = at.saved.max(through);
                at.offset = at.offset.max(through);
            }
            if end.done == page.events.len() && matches!(end.how, How::Continue) {
                at.offset = at.offset.max(page.next_offset);
            }
            self.stats.set_offset(at.offset);
            at.saved = self.save(run, at.offset, at.saved).await;
            match end.how {
                How::Continue => {}
                How::Interrupted => return Ok(()),
                How::Stop {
                    at: i,
                    attempts,
                    error,
                } => return Err(self.stopped(&page.events[i], attempts, at.offset, error)),
            }
        }
    }

    async fn to_handler_page(
        &self,
        run: &Run,
        handler: &dyn EventHandler,
        events: &[StoredEvent],
    ) -> PageEnd {
        for (done, event) in events.iter().enumerate() {
            if run.shutdown.is_cancelled() {
                return PageEnd::interrupted(done);
            }
            if !handler.wants(event) {
                continue;
            }
            let settled = self
                .settle(run, event, 0, None, || {
                    Box::pin(async move { Ok(guarded(handler.handle(event)).await) })
                })
                .await;
            match settled {
                Settled::Delivered => ForwarderStats::add(&self.stats.delivered, 1),
                Settled::Skipped => {}
                Settled::Stop { attempts, error } => {
                    return PageEnd::stop(done, done, attempts, error)
                }
                Settled::Interrupted => return PageEnd::interrupted(done),
            }
        }
        PageEnd::all(events.len())
    }

    /// For each event: its work outside the transaction first, if any
    /// (settled like a handler's), then its transactional work, batched
    /// with the following events that have none outside.
    async fn to_transactional_page(
        &self,
        run: &Run,
        tx: &dyn Transact,
        events: &[StoredEvent],
    ) -> PageEnd {
        let name = self.config.name.as_str();
        let mut done = 0;
        let mut saved: Option<i64> = None;
        let note = |saved: &mut Option<i64>, seq: i64| {
            *saved = Some(saved.map_or(seq, |s| s.max(seq)));
        };
        // The event whose outside work succeeded.
        let mut outside_done = None;
        while done < events.len() {
            if run.shutdown.is_cancelled() {
                return PageEnd::interrupted(done).with_saved(saved);
            }
            if let Some(pause) = run.store.pause_left() {
                run.sleep(pause).await;
                continue;
            }
            let event = &events[done];
            if outside_done != Some(done) && tx.outside(event).is_some() {
                let settled = self
                    .settle(run, event, 0, None, || {
                        Box::pin(async move {
                            Ok(match tx.outside(event) {
                                Some(work) => guarded(work).await,
                                None => Ok(()),
                            })
                        })
                    })
                    .await;
                match settled {
                    Settled::Delivered => {
                        outside_done = Some(done);
                        if !tx.wants(event) {
                            ForwarderStats::add(&self.stats.delivered, 1);
                        }
                    }
                    Settled::Skipped => {
                        done += 1;
                        continue;
                    }
                    Settled::Stop { attempts, error } => {
                        return PageEnd::stop(done, done, attempts, error).with_saved(saved)
                    }
                    Settled::Interrupted => return PageEnd::interrupted(done).with_saved(saved),
                }
            }
            let mut end = done + 1;
            while end < events.len() && tx.outside(&events[end]).is_none() {
                end += 1;
            }
            let Some(batch) = run
                .within_grace(&self.config, tx.batch(name, &events[done..end]))
                .await
            else {
                return PageEnd::interrupted(done).with_saved(saved);
            };
            let Batch {
                handled,
                wanted,
                failure,
                stored,
            } = match batch {
                Ok(result) => {
                    run.store.succeeded();
                    result
                }
                Err(e) => {
                    run.store.failed(&format!(
                        "a transaction of the forwarder failed: {}",
                        error_chain(&e)
                    ));
                    continue;
                }
            };
            ForwarderStats::add(&self.stats.delivered, wanted as u64);
            done += handled;
            if let Some(stored) = stored {
                note(&mut saved, stored);
            }
            let Some(error) = failure else { continue };
            let event = &events[done];
            let settled = self
                .settle(run, event, 1, Some(error), || tx.single(name, event))
                .await;
            match settled {
                Settled::Delivered => {
                    ForwarderStats::add(&self.stats.delivered, 1);
                    note(&mut saved, event.seq);
                    done += 1;
                }
                Settled::Skipped => done += 1,
                Settled::Stop { attempts, error } => {
                    return PageEnd::stop(done, done, attempts, error).with_saved(saved)
                }
                Settled::Interrupted => return PageEnd::interrupted(done).with_saved(saved),
            }
        }
        PageEnd::all(done).with_saved(saved)
    }
}

/// How a page ended: `done` events (a prefix) are delivered or skipped;
/// `saved` is the offset a transactional target committed, if any.
struct PageEnd {
    done: usize,
    saved: Option<i64>,
    how: How,
}

enum How {
    Continue,
    Interrupted,
    /// Gave up on the page's event `at` (at or after `done`).
    Stop {
        at: usize,
        attempts: u32,
        error: HandlerError,
    },
}

impl PageEnd {
    fn all(done: usize) -> Self {
        Self {
            done,
            saved: None,
            how: How::Continue,
        }
    }
    /// The same end, with the offset a transactional target committed.
    fn with_saved(self, saved: Option<i64>) -> Self {
        Self { saved, ..self }
    }
    fn interrupted(done: usize) -> Self {
        Self {
            done,
            saved: None,
            how: How::Interrupted,
        }
    }
    fn stop(done: usize, at: usize, attempts: u32, error: HandlerError) -> Self {
        Self {
            done,
            saved: None,
            how: How::Stop {
                at,
                attempts,
                error,
            },
        }
    }
}
