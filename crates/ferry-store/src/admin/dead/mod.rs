//! One dead-letter view over the four kinds of failure: outbox messages
//! the relay gave up on, consumer dead letters (CDC captures write there
//! too), events forwarders stepped over, and executor task failures.
//!
//! Items are listed newest first by `(failed_at, id)`, paged with a
//! [`DeadCursor`]: each table is read with its own keyset query (`LIMIT`,
//! no `OFFSET`) and the four answers merged. Grouping by cause is one
//! `GROUP BY` per table on the stored `cause` column; rows written without
//! one (plain SQL, or before migration 0006) are fingerprinted with
//! [`cause_of`](crate::admin::cause_of) when read.
//!
//! Index-backed (migration 0006): the list with or without `name` and the
//! time bounds (`(time, key)` and `(name, time, key)` indexes of each
//! table; on PostgreSQL and SQLite partial indexes on the dead outbox rows
//! only); grouping and a cause filter (`(name, cause, time)`). A cause
//! filter also reads the rows without a stored cause, which are few. On
//! MariaDB the dead outbox rows are found through `(status, seq)` and
//! sorted: it has no partial indexes, and a whole-table index would cost
//! the relay on every insert.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::Pool;
use uuid::Uuid;

use crate::admin::outbox_browser::check_limit;
use crate::admin::PayloadView;
use crate::dialect::{with_pool, Dialect, Stmt};
use crate::event_store::{EventQuery, StoredEvent};
use crate::outbox::MessageRef;
use crate::{Database, DeadLetter, StoreError};

mod id;
mod tables;

pub use id::{DeadCursor, DeadId, DeadKey, DeadKind};
use tables::{Bound, Order};

/// The largest chunk of a bulk action.
pub const MAX_CHUNK: u32 = 10_000;

/// Which dead items to show or act on; every field set narrows them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeadFilter {
    /// Only these kinds; empty: all.
    pub kinds: Vec<DeadKind>,
    /// Only items of this name (exact): for the outbox the topic, for
    /// consumer dead letters the consumer, for forwarder failures the
    /// reader, for task failures the task name.
    pub name: Option<String>,
    /// Only items of this cause (a [`cause_of`](crate::admin::cause_of)
    /// fingerprint, as [`DeadItem::cause`] and [`CauseGroup::cause`] show).
    pub cause: Option<String>,
    /// Only items that failed at or after this time.
    pub failed_from: Option<DateTime<Utc>>,
    /// Only items that failed before this time.
    pub failed_to: Option<DateTime<Utc>>,
}

impl DeadFilter {
    /// The kinds the filter selects.
    pub fn selected_kinds(&self) -> Vec<DeadKind> {
        if self.kinds.is_empty() {
            return DeadKind::ALL.to_vec();
        }
        DeadKind::ALL
            .into_iter()
            .filter(|k| self.kinds.contains(k))
            .collect()
    }
}

/// A dead item, as the view lists it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeadItem {
    /// Its id.
    pub id: DeadId,
    /// Its kind.
    pub kind: DeadKind,
    /// The topic (outbox), consumer, reader (forwarder) or task name.
    pub name: String,
    /// The message's topic (outbox and consumer dead letters).
    pub topic: Option<String>,
    /// The message's ordering key (outbox and consumer dead letters).
    pub key: Option<String>,
    /// The message's (or, for a forwarder, the event's) id.
    pub message_id: Option<String>,
    /// The last error.
    pub error: String,
    /// The error's cause: its fingerprint.
    pub cause: String,
    /// Attempts made.
    pub attempts: i64,
    /// When it failed for good: an outbox message's death, a dead letter's
    /// `dead_at`, a forwarder failure's `failed_at`, a task's last failure.
    pub failed_at: DateTime<Utc>,
}

/// A page of the dead-letter view.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeadPage {
    /// The items, newest first.
    pub items: Vec<DeadItem>,
    /// Pass as `after` for the next (older) page; `None` on the last page.
    pub next: Option<DeadCursor>,
}

/// Dead items of one kind and name sharing a cause.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CauseGroup {
    /// Their kind.
    pub kind: DeadKind,
    /// Their name (topic, consumer, reader or task).
    pub name: String,
    /// The cause.
    pub cause: String,
    /// How many.
    pub count: u64,
    /// One of their errors, whole.
    pub example: String,
    /// When the latest of them failed.
    pub latest: DateTime<Utc>,
}

/// A dead item with what there is to see of it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeadDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub item: DeadItem,
    /// The message's headers (outbox, consumer); for a forwarder failure
    /// the event's `event_type`, `source_type` and `source_id` when the
    /// event is still stored.
    pub headers: BTreeMap<String, String>,
    /// The payload's MIME type, when there is a payload.
    pub content_type: Option<String>,
    /// The message's or event's payload (`None` for a task, or an event no
    /// longer stored).
    pub payload: Option<PayloadView>,
    /// A task's input (`None` for other kinds, and for ad-hoc tasks).
    pub input: Option<serde_json::Value>,
}

impl Database {
    /// A page of dead items matching `filter`, newest first, after
    /// `after` (`None`: from the newest), at most `limit` (1 to
    /// [`MAX_ADMIN_PAGE`](crate::admin::MAX_ADMIN_PAGE)).
    pub async fn dead_items(
        &self,
        filter: &DeadFilter,
        after: Option<&DeadCursor>,
        limit: u32,
    ) -> Result<DeadPage, StoreError> {
        check_limit(limit)?;
        with_pool!(self, |pool| dead_items(pool, filter, after, limit).await)
    }

    /// The dead items matching `filter` grouped by kind, name and cause,
    /// largest group first (then the most recent).
    pub async fn dead_causes(&self, filter: &DeadFilter) -> Result<Vec<CauseGroup>, StoreError> {
        with_pool!(self, |pool| dead_causes(pool, filter).await)
    }

    /// How many dead items match `filter` (to show before a bulk action).
    pub async fn count_dead(&self, filter: &DeadFilter) -> Result<u64, StoreError> {
        if filter.cause.is_some() {
            let groups = self.dead_causes(filter).await?;
            return Ok(groups.iter().map(|g| g.count).sum());
        }
        with_pool!(self, |pool| count(pool, filter).await)
    }

    /// One dead item with its headers, payload or input, or `None`.
    pub async fn dead_detail(&self, id: &DeadId) -> Result<Option<DeadDetail>, StoreError> {
        let item = with_pool!(self, |pool| one(pool, id).await)?;
        let Some(item) = item else {
            return Ok(None);
        };
        let mut detail = DeadDetail {
            item,
            headers: BTreeMap::new(),
            content_type: None,
            payload: None,
            input: None,
        };
        match &id.0 {
            DeadKey::Outbox { seq } => {
                if let Some(m) = self.outbox_message(&MessageRef::Seq(*seq)).await? {
                    detail.headers = m.headers;
                    detail.content_type = Some(m.content_type);
                    detail.payload = Some(m.payload);
                }
            }
            DeadKey::Consumer { id } => {
                if let Some(d) = self.dead_letter(*id).await? {
                    detail.headers = d.message.headers;
                    detail.content_type = Some(d.message.content_type);
                    detail.payload = Some(PayloadView::of(d.message.payload.to_vec()));
                }
            }
            DeadKey::Forwarder { reader, seq } => {
                if let Some(e) = self.event_failure_event(reader, *seq).await? {
                    detail.headers = BTreeMap::from([
                        ("event_type".to_owned(), e.event_type),
                        ("source_type".to_owned(), e.source_type),
                        ("source_id".to_owned(), e.source_id),
                    ]);
                    detail.content_type = Some(e.content_type);
                    detail.payload = Some(PayloadView::of(e.payload));
                }
            }
            DeadKey::Task { id } => {
                if let Some(t) = self.task_failure(*id).await? {
                    detail.input = t.input;
                }
            }
        }
        Ok(Some(detail))
    }

    /// Deletes one dead item for good; says whether there was one (an
    /// outbox message only while it is dead).
    pub async fn discard_dead_item(&self, id: &DeadId) -> Result<bool, StoreError> {
        with_pool!(self, |pool| discard_one(pool, id).await)
    }

    /// Deletes at most `chunk` (1 to [`MAX_CHUNK`]) dead items matching
    /// `filter`, oldest first, in one transaction; returns how many. Call
    /// it again until it returns 0.
    pub async fn discard_dead_chunk(
        &self,
        filter: &DeadFilter,
        chunk: u32,
    ) -> Result<u64, StoreError> {
        check_chunk(chunk)?;
        with_pool!(self, |pool| discard_chunk(pool, filter, chunk).await)
    }

    /// Makes at most `chunk` (1 to [`MAX_CHUNK`]) dead outbox messages
    /// matching `filter` pending again with a fresh attempt budget, oldest
    /// first, and tells the relays (as [`Database::replay_dead`] does);
    /// returns how many. Only the outbox kind is replayed here: a filter
    /// whose `kinds` leave it out matches nothing. Call it again until it
    /// returns 0.
    pub async fn replay_outbox_dead_chunk(
        &self,
        filter: &DeadFilter,
        chunk: u32,
    ) -> Result<u64, StoreError> {
        check_chunk(chunk)?;
        if !filter.selected_kinds().contains(&DeadKind::Outbox) {
            return Ok(0);
        }
        with_pool!(self, |pool| replay_outbox_chunk(pool, filter, chunk).await)
    }

    /// Makes one dead outbox message pending again; says whether it was
    /// dead.
    pub async fn replay_outbox_dead_item(&self, seq: i64) -> Result<bool, StoreError> {
        match self.replay_dead(Some(&MessageRef::Seq(seq))).await {
            Ok(n) => Ok(n > 0),
            Err(StoreError::NoSuchDeadMessage(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads (does not delete) at most `chunk` (1 to [`MAX_CHUNK`])
    /// consumer dead letters matching `filter` (its `kinds` are not
    /// consulted: consumer dead letters only), oldest first. The caller
    /// publishes each and then deletes it ([`Database::delete_dead_letter`]):
    /// a crash in between publishes it again, with the same message id.
    pub async fn take_dead_chunk(
        &self,
        filter: &DeadFilter,
        chunk: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        check_chunk(chunk)?;
        let items = with_pool!(self, |pool| oldest_consumer(pool, filter, chunk).await)?;
        let ids: Vec<Uuid> = items
            .iter()
            .filter_map(|i| match i.id.0 {
                DeadKey::Consumer { id } => Some(id),
                _ => None,
            })
            .collect();
        self.dead_letters_by_id(&ids).await
    }

    /// The event a forwarder failure `(reader, seq)` is about, to deliver
    /// it again through the forwarder's sink (and then
    /// [`Database::discard_event_failure`]); `None` when there is no such
    /// failure or the event is no longer stored.
    pub async fn event_failure_event(
        &self,
        reader: &str,
        seq: i64,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let failure = with_pool!(self, |pool| one(pool, &DeadId::forwarder(reader, seq))
            .await)?;
        if failure.is_none() || seq < 1 {
            return Ok(None);
        }
        let page = self
            .read_events(&EventQuery {
                offset: seq - 1,
                limit: 1,
                ..EventQuery::default()
            })
            .await?;
        Ok(page.events.into_iter().find(|e| e.seq == seq))
    }
}

async fn count<DB: Dialect>(pool: &Pool<DB>, filter: &DeadFilter) -> Result<u64, StoreError> {
    let mut conn = pool.acquire().await?;
    let mut n = 0;
    for kind in filter.selected_kinds() {
        n += tables::count::<DB>(&mut conn, kind, filter).await?;
    }
    Ok(n)
}

async fn one<DB: Dialect>(pool: &Pool<DB>, id: &DeadId) -> Result<Option<DeadItem>, StoreError> {
    tables::one::<DB>(&mut *pool.acquire().await?, id).await
}

async fn discard_one<DB: Dialect>(pool: &Pool<DB>, id: &DeadId) -> Result<bool, StoreError> {
    let n = tables::delete::<DB>(&mut *pool.acquire().await?, id.kind(), &[id]).await?;
    Ok(n > 0)
}

async fn oldest_consumer<DB: Dialect>(
    pool: &Pool<DB>,
    filter: &DeadFilter,
    chunk: u32,
) -> Result<Vec<DeadItem>, StoreError> {
    let mut conn = pool.acquire().await?;
    tables::scan::<DB>(
        &mut conn,
        DeadKind::Consumer,
        filter,
        None,
        Order::Asc,
        chunk as usize,
    )
    .await
}

fn check_chunk(chunk: u32) -> Result<(), StoreError> {
    if chunk == 0 || chunk > MAX_CHUNK {
        return Err(StoreError::InvalidArgument {
            parameter: "chunk",
            value: chunk.to_string(),
            expected: "1 to 10000",
        });
    }
    Ok(())
}

/// The bound of `kind`'s table for the page after `cursor` (newest first,
/// by time, then kind, then key).
fn bound_after(kind: DeadKind, cursor: &DeadCursor) -> Bound {
    let cursor_kind = cursor.id.kind();
    match kind.cmp(&cursor_kind) {
        std::cmp::Ordering::Less => Bound::Time(cursor.at, true),
        std::cmp::Ordering::Greater => Bound::Time(cursor.at, false),
        std::cmp::Ordering::Equal => Bound::Key(cursor.at, cursor.id.clone()),
    }
}

async fn dead_items<DB: Dialect>(
    pool: &Pool<DB>,
    filter: &DeadFilter,
    after: Option<&DeadCursor>,
    limit: u32,
) -> Result<DeadPage, StoreError> {
    let mut conn = pool.acquire().await?;
    let limit = limit as usize;
    let mut items = Vec::new();
    for kind in filter.selected_kinds() {
        let bound = after.map(|c| bound_after(kind, c));
        items.extend(
            tables::scan::<DB>(&mut conn, kind, filter, bound, Order::Desc, limit + 1).await?,
        );
    }
    items.sort_by(|a, b| (b.failed_at, &b.id).cmp(&(a.failed_at, &a.id)));
    let next = if items.len() > limit {
        items.truncate(limit);
        items
            .last()
            .map(|i| DeadCursor::new(i.failed_at, i.id.clone()))
    } else {
        None
    };
    Ok(DeadPage { items, next })
}

async fn dead_causes<DB: Dialect>(
    pool: &Pool<DB>,
    filter: &DeadFilter,
) -> Result<Vec<CauseGroup>, StoreError> {
    // Each kind on a connection of its own, at the same time.
    let per_kind =
        futures::future::try_join_all(filter.selected_kinds().into_iter().map(|kind| async move {
            let mut conn = pool.acquire().await?;
            let groups = tables::groups::<DB>(&mut conn, kind, filter).await?;
            Ok::<_, StoreError>((kind, groups))
        }))
        .await?;
    let mut merged: HashMap<(DeadKind, String, String), CauseGroup> = HashMap::new();
    for (kind, groups) in per_kind {
        for g in groups {
            if filter.cause.as_ref().is_some_and(|c| *c != g.cause) {
                continue;
            }
            let key = (kind, g.name.clone(), g.cause.clone());
            match merged.get_mut(&key) {
                Some(m) => {
                    m.count += g.count;
                    if g.latest > m.latest {
                        m.latest = g.latest;
                        m.example = g.example;
                    }
                }
                None => {
                    merged.insert(
                        key,
                        CauseGroup {
                            kind,
                            name: g.name,
                            cause: g.cause,
                            count: g.count,
                            example: g.example,
                            latest: g.latest,
                        },
                    );
                }
            }
        }
    }
    let mut groups: Vec<CauseGroup> = merged.into_values().collect();
    groups.sort_by(|a, b| {
        (b.count, b.latest)
            .cmp(&(a.count, a.latest))
            .then_with(|| (a.kind, &a.name, &a.cause).cmp(&(b.kind, &b.name, &b.cause)))
    });
    Ok(groups)
}

/// The oldest `chunk` items matching `filter` over `kinds`.
async fn oldest<DB: Dialect>(
    conn: &mut DB::Connection,
    kinds: &[DeadKind],
    filter: &DeadFilter,
    chunk: u32,
) -> Result<Vec<DeadItem>, StoreError> {
    let mut items = Vec::new();
    for &kind in kinds {
        items.extend(
            tables::scan::<DB>(&mut *conn, kind, filter, None, Order::Asc, chunk as usize).await?,
        );
    }
    items.sort_by(|a, b| (a.failed_at, &a.id).cmp(&(b.failed_at, &b.id)));
    items.truncate(chunk as usize);
    Ok(items)
}

async fn discard_chunk<DB: Dialect>(
    pool: &Pool<DB>,
    filter: &DeadFilter,
    chunk: u32,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let items = oldest::<DB>(&mut tx, &filter.selected_kinds(), filter, chunk).await?;
    let mut n = 0;
    for kind in DeadKind::ALL {
        let ids: Vec<&DeadId> = items
            .iter()
            .filter(|i| i.kind == kind)
            .map(|i| &i.id)
            .collect();
        n += tables::delete::<DB>(&mut tx, kind, &ids).await?;
    }
    tx.commit().await?;
    Ok(n)
}

async fn replay_outbox_chunk<DB: Dialect>(
    pool: &Pool<DB>,
    filter: &DeadFilter,
    chunk: u32,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let items = oldest::<DB>(&mut tx, &[DeadKind::Outbox], filter, chunk).await?;
    let ids: Vec<&DeadId> = items.iter().map(|i| &i.id).collect();
    let n = tables::replay_outbox::<DB>(&mut tx, &ids).await?;
    if let (Some(notify), true) = (DB::NOTIFY_OUTBOX, n > 0) {
        Stmt::<DB>::new(notify).execute(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(n)
}
