//! What the operations console and admin API read and change (issue 12):
//!
//! * [`outbox_browser`]: outbox messages by status, topic, key, id and
//!   time, newest first, keyset-paged; one message whole.
//! * [`dead`]: one dead-letter view over outbox dead messages, consumer
//!   dead letters, forwarder failures and executor task failures: list,
//!   filter, group by cause ([`cause_of`]), detail, and replay or discard
//!   one item or everything matching a filter in bounded chunks.
//! * [`audit`]: the log of every change made through the console.
//! * [`pauses`]: pipelines paused by an operator, polled by every
//!   instance's relays.
//!
//! Lists answer from indexes without `OFFSET` or `COUNT(*)`; each module
//! says which of its filters an index backs.

pub mod audit;
mod cause;
pub mod dead;
pub mod outbox_browser;
pub mod pauses;
mod payload;

pub use audit::{AuditEntry, AuditRecord};
pub use cause::{cause_of, MAX_CAUSE_CHARS};
pub use dead::{
    CauseGroup, DeadCursor, DeadDetail, DeadFilter, DeadId, DeadItem, DeadKey, DeadKind, DeadPage,
    MAX_CHUNK,
};
pub use outbox_browser::{
    OutboxFilter, OutboxMessage, OutboxPage, OutboxRow, OutboxStatus, MAX_ADMIN_PAGE,
};
pub use pauses::Pause;
pub use payload::PayloadView;
