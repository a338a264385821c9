//! The four tables of the dead-letter view, as one shape: what each
//! calls its name, time, error and key, and the queries over them, written
//! once for every dialect.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{DeadFilter, DeadId, DeadItem, DeadKey, DeadKind};
use crate::admin::cause_of;
use crate::dialect::{select_text, sql, Dialect, Read, Stmt};
use crate::{DatabaseKind, StoreError};

/// The time an outbox message died: `dead_at`, or for rows made dead by
/// plain SQL the time of their last attempt. The partial indexes of
/// migration 0006 are on this very expression.
pub(crate) const OUTBOX_DIED_AT: &str = "COALESCE(dead_at, next_attempt_at)";

/// One table of the view.
pub(crate) struct Table {
    pub(crate) table: &'static str,
    /// What every row of the view satisfies (`status = 'dead'`).
    base: Option<&'static str>,
    /// The column [`DeadFilter::name`] matches.
    pub(crate) name: &'static str,
    /// The failure time.
    pub(crate) at: &'static str,
    /// The error.
    error: &'static str,
}

pub(crate) fn table(kind: DeadKind) -> &'static Table {
    static OUTBOX: Table = Table {
        table: "ferry_outbox",
        base: Some("status = 'dead'"),
        name: "topic",
        at: OUTBOX_DIED_AT,
        error: "COALESCE(last_error, '')",
    };
    static CONSUMER: Table = Table {
        table: "ferry_dead_letters",
        base: None,
        name: "consumer",
        at: "dead_at",
        error: "error",
    };
    static FORWARDER: Table = Table {
        table: "ferry_event_failures",
        base: None,
        name: "reader",
        at: "failed_at",
        error: "last_error",
    };
    static TASK: Table = Table {
        table: "ferry_task_failures",
        base: None,
        name: "task",
        at: "last_failed_at",
        error: "error",
    };
    match kind {
        DeadKind::Outbox => &OUTBOX,
        DeadKind::Consumer => &CONSUMER,
        DeadKind::Forwarder => &FORWARDER,
        DeadKind::Task => &TASK,
    }
}

/// Which way a scan goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Newest first (the view's pages).
    Desc,
    /// Oldest first (bulk actions).
    Asc,
}

/// Where a scan of one table starts (exclusive).
#[derive(Clone)]
pub(crate) enum Bound {
    /// Past the item of this table at this time and key.
    Key(DateTime<Utc>, DeadId),
    /// Past this time; `inclusive`: items at exactly this time too.
    Time(DateTime<Utc>, bool),
}

/// A SQL text with its parameters numbered as they are added.
struct Query<'a, DB: Dialect> {
    conditions: Vec<String>,
    n: usize,
    binds: Vec<Value<'a>>,
    _db: std::marker::PhantomData<DB>,
}

/// A value to bind.
enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Id(Uuid),
    Time(DateTime<Utc>),
}

impl<'a, DB: Dialect> Query<'a, DB> {
    fn new() -> Self {
        Self {
            conditions: Vec::new(),
            n: 1,
            binds: Vec::new(),
            _db: std::marker::PhantomData,
        }
    }

    fn param(&mut self, value: Value<'a>) -> String {
        let mut p = format!("${}", self.n);
        if matches!(value, Value::Time(_)) && DB::KIND == DatabaseKind::Mysql {
            // A time bound as a value compares with microseconds lost on
            // MariaDB (`=` fails for a time just read back); as text cast
            // to DATETIME(6) it keeps them.
            p = format!("CAST({p} AS DATETIME(6))");
        }
        self.n += 1;
        self.binds.push(value);
        p
    }

    fn and(&mut self, condition: String) {
        self.conditions.push(condition);
    }

    fn where_clause(&self) -> String {
        match self.conditions.is_empty() {
            true => String::new(),
            false => format!("WHERE {}", self.conditions.join(" AND ")),
        }
    }

    fn stmt<'q>(&'q self, text: &'q str) -> Stmt<'q, DB> {
        let mut stmt = Stmt::<DB>::new(text);
        for value in &self.binds {
            stmt = match *value {
                Value::Str(s) => stmt.bind(s),
                Value::Int(i) => stmt.bind(i),
                Value::Id(id) => stmt.bind(DB::id(id)),
                Value::Time(t) if DB::KIND == DatabaseKind::Mysql => {
                    stmt.bind(t.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
                }
                Value::Time(t) => stmt.bind(DB::time(t)),
            };
        }
        stmt
    }

    /// The filter's conditions on `t` (the cause: stored, or NULL to be
    /// fingerprinted and checked in Rust).
    fn filter(&mut self, t: &Table, filter: &'a DeadFilter) {
        if let Some(base) = t.base {
            self.and(base.to_owned());
        }
        if let Some(name) = &filter.name {
            let p = self.param(Value::Str(name));
            self.and(format!("{} = {p}", t.name));
        }
        if let Some(from) = filter.failed_from {
            let p = self.param(Value::Time(from));
            self.and(format!("{} >= {p}", t.at));
        }
        if let Some(to) = filter.failed_to {
            let p = self.param(Value::Time(to));
            self.and(format!("{} < {p}", t.at));
        }
        if let Some(cause) = &filter.cause {
            let p = self.param(Value::Str(cause));
            self.and(format!("(cause = {p} OR cause IS NULL)"));
        }
    }

    /// The condition "`key` of `kind` is before (`Desc`: below; `Asc`:
    /// above) `id`".
    fn key_beyond(&mut self, id: &'a DeadId, order: Order) -> String {
        let op = if order == Order::Desc { "<" } else { ">" };
        match &id.0 {
            DeadKey::Outbox { seq } => format!("seq {op} {}", self.param(Value::Int(*seq))),
            DeadKey::Consumer { id } | DeadKey::Task { id } => {
                format!("id {op} {}", self.param(Value::Id(*id)))
            }
            DeadKey::Forwarder { reader, seq } => {
                let r1 = self.param(Value::Str(reader));
                let r2 = self.param(Value::Str(reader));
                let s = self.param(Value::Int(*seq));
                format!(
                    "({} {op} {r1} OR (reader = {r2} AND seq {op} {s}))",
                    DB::binary("reader")
                )
            }
        }
    }

    /// Items strictly beyond `bound` in `order`.
    fn bound(&mut self, t: &Table, bound: &'a Bound, order: Order) {
        let (lt, le) = match order {
            Order::Desc => ("<", "<="),
            Order::Asc => (">", ">="),
        };
        let at = t.at;
        match bound {
            Bound::Time(time, inclusive) => {
                let p = self.param(Value::Time(*time));
                self.and(format!("{at} {} {p}", if *inclusive { le } else { lt }));
            }
            Bound::Key(time, id) => {
                // The first condition alone bounds the index range.
                let p1 = self.param(Value::Time(*time));
                let p2 = self.param(Value::Time(*time));
                let p3 = self.param(Value::Time(*time));
                let key = self.key_beyond(id, order);
                self.and(format!(
                    "{at} {le} {p1} AND ({at} {lt} {p2} OR ({at} = {p3} AND {key}))"
                ));
            }
        }
    }
}

/// The key columns of `kind`'s items, in the view's order.
fn key_order<DB: Dialect>(kind: DeadKind, dir: &str) -> String {
    match kind {
        DeadKind::Outbox => format!("seq {dir}"),
        DeadKind::Consumer | DeadKind::Task => format!("id {dir}"),
        DeadKind::Forwarder => format!("{} {dir}, seq {dir}", DB::binary("reader")),
    }
}

/// The columns of a [`DeadItem`] of `kind`.
fn item_columns<DB: Dialect>(kind: DeadKind) -> String {
    let t = table(kind);
    let common = format!(
        "{} AS name, {} AS error, {}, {} AS failed_at",
        DB::text(t.name),
        DB::text(t.error),
        select_text::<DB>("cause", "cause"),
        t.at,
    );
    match kind {
        DeadKind::Outbox => format!(
            "seq, {common}, {}, {}, {} AS message_id, {} AS attempts",
            select_text::<DB>("topic", "topic"),
            select_text::<DB>("message_key", "message_key"),
            DB::cast_text("message_id"),
            DB::cast_bigint("attempts"),
        ),
        DeadKind::Consumer => format!(
            "{}, {common}, {}, {}, {} AS message_id, {} AS attempts",
            select_text::<DB>("id", "id"),
            select_text::<DB>("topic", "topic"),
            select_text::<DB>("message_key", "message_key"),
            DB::cast_text("message_id"),
            DB::cast_bigint("attempts"),
        ),
        DeadKind::Forwarder => format!(
            "{}, seq, {common}, {} AS message_id, {} AS attempts",
            select_text::<DB>("reader", "reader"),
            DB::cast_text("event_id"),
            DB::cast_bigint("attempts"),
        ),
        DeadKind::Task => format!(
            "{}, {common}, {} AS attempts",
            select_text::<DB>("id", "id"),
            DB::cast_bigint("attempts"),
        ),
    }
}

/// The [`DeadItem`] of `kind` in `row`.
fn read_item<DB: Dialect>(kind: DeadKind, r: &DB::Row) -> Result<DeadItem, sqlx::Error> {
    let (id, topic, key, message_id) = match kind {
        DeadKind::Outbox => (
            DeadId::outbox(r.read("seq")?),
            r.read("topic")?,
            r.read("message_key")?,
            Some(r.read("message_id")?),
        ),
        DeadKind::Consumer => (
            DeadId::consumer(DB::read_uuid(r, "id")?),
            r.read("topic")?,
            r.read("message_key")?,
            Some(r.read("message_id")?),
        ),
        DeadKind::Forwarder => (
            DeadId::forwarder(Read::<String>::read(r, "reader")?, r.read("seq")?),
            None,
            None,
            Some(r.read("message_id")?),
        ),
        DeadKind::Task => (DeadId::task(DB::read_uuid(r, "id")?), None, None, None),
    };
    let error: String = r.read("error")?;
    let cause: Option<String> = r.read("cause")?;
    Ok(DeadItem {
        id,
        kind,
        name: r.read("name")?,
        topic,
        key,
        message_id,
        cause: cause.unwrap_or_else(|| cause_of(&error)),
        error,
        attempts: r.read("attempts")?,
        failed_at: DB::read_time(r, "failed_at")?,
    })
}

/// Up to `limit` items of `kind` matching `filter`, beyond `bound`, in
/// `order`. The SQL reads `limit` rows at a time; rows without a stored
/// cause are fingerprinted here, and read past when the filter names
/// another cause.
pub(crate) async fn scan<DB: Dialect>(
    conn: &mut DB::Connection,
    kind: DeadKind,
    filter: &DeadFilter,
    mut bound: Option<Bound>,
    order: Order,
    limit: usize,
) -> Result<Vec<DeadItem>, StoreError> {
    let t = table(kind);
    let dir = if order == Order::Desc { "DESC" } else { "ASC" };
    let mut items = Vec::new();
    while items.len() < limit {
        let mut q = Query::<DB>::new();
        q.filter(t, filter);
        if let Some(b) = &bound {
            q.bound(t, b, order);
        }
        let want = limit - items.len();
        let limit_param = q.param(Value::Int(want as i64));
        let text = sql::<DB>(&format!(
            "SELECT {} FROM {} {} ORDER BY {} {dir}, {} LIMIT {limit_param}",
            item_columns::<DB>(kind),
            t.table,
            q.where_clause(),
            t.at,
            key_order::<DB>(kind, dir),
        ));
        let rows = q.stmt(&text).fetch_all(conn).await?;
        let read = rows.len();
        let mut last = None;
        for row in &rows {
            let item = read_item::<DB>(kind, row)?;
            last = Some((item.failed_at, item.id.clone()));
            if filter.cause.as_ref().is_none_or(|c| *c == item.cause) {
                items.push(item);
            }
        }
        match last {
            Some((at, id)) if read == want => bound = Some(Bound::Key(at, id)),
            _ => break,
        }
    }
    Ok(items)
}

/// The item `id`, if it is there (and, in the outbox, dead).
pub(crate) async fn one<DB: Dialect>(
    conn: &mut DB::Connection,
    id: &DeadId,
) -> Result<Option<DeadItem>, StoreError> {
    let kind = id.kind();
    let t = table(kind);
    let mut q = Query::<DB>::new();
    if let Some(base) = t.base {
        q.and(base.to_owned());
    }
    match &id.0 {
        DeadKey::Outbox { seq } => {
            let p = q.param(Value::Int(*seq));
            q.and(format!("seq = {p}"));
        }
        DeadKey::Consumer { id } | DeadKey::Task { id } => {
            let p = q.param(Value::Id(*id));
            q.and(format!("id = {p}"));
        }
        DeadKey::Forwarder { reader, seq } => {
            let r = q.param(Value::Str(reader));
            let s = q.param(Value::Int(*seq));
            q.and(format!("reader = {r} AND seq = {s}"));
        }
    }
    let text = sql::<DB>(&format!(
        "SELECT {} FROM {} {}",
        item_columns::<DB>(kind),
        t.table,
        q.where_clause()
    ));
    let row = q.stmt(&text).fetch_optional(conn).await?;
    Ok(row.map(|r| read_item::<DB>(kind, &r)).transpose()?)
}

/// Deletes the items `ids`, all of `kind` (outbox: only dead ones);
/// returns how many.
pub(crate) async fn delete<DB: Dialect>(
    conn: &mut DB::Connection,
    kind: DeadKind,
    ids: &[&DeadId],
) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let t = table(kind);
    let mut q = Query::<DB>::new();
    if let Some(base) = t.base {
        q.and(base.to_owned());
    }
    let keys = keys_in(&mut q, ids);
    q.and(keys);
    let text = sql::<DB>(&format!("DELETE FROM {} {}", t.table, q.where_clause()));
    Ok(q.stmt(&text).execute(conn).await?)
}

/// Makes the dead outbox messages `ids` pending again with a fresh attempt
/// budget; returns how many.
pub(crate) async fn replay_outbox<DB: Dialect>(
    conn: &mut DB::Connection,
    ids: &[&DeadId],
) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut q = Query::<DB>::new();
    q.and("status = 'dead'".to_owned());
    let keys = keys_in(&mut q, ids);
    q.and(keys);
    let text = sql::<DB>(&format!(
        "UPDATE ferry_outbox SET status = 'pending', attempts = 0, next_attempt_at = {} {}",
        DB::NOW,
        q.where_clause()
    ));
    Ok(q.stmt(&text).execute(conn).await?)
}

/// The condition "the key is one of `ids`" (all of one kind).
fn keys_in<'a, DB: Dialect>(q: &mut Query<'a, DB>, ids: &[&'a DeadId]) -> String {
    let one_column = |column: &str, q: &mut Query<'a, DB>, values: Vec<Value<'a>>| {
        let params: Vec<String> = values.into_iter().map(|v| q.param(v)).collect();
        format!("{column} IN ({})", params.join(", "))
    };
    match ids.first().map(|id| id.kind()) {
        Some(DeadKind::Outbox) => {
            let values = ids
                .iter()
                .filter_map(|id| match id.0 {
                    DeadKey::Outbox { seq } => Some(Value::Int(seq)),
                    _ => None,
                })
                .collect();
            one_column("seq", q, values)
        }
        Some(DeadKind::Consumer | DeadKind::Task) => {
            let values = ids
                .iter()
                .filter_map(|id| match id.0 {
                    DeadKey::Consumer { id } | DeadKey::Task { id } => Some(Value::Id(id)),
                    _ => None,
                })
                .collect();
            one_column("id", q, values)
        }
        Some(DeadKind::Forwarder) => {
            let pairs: Vec<String> = ids
                .iter()
                .filter_map(|id| match &id.0 {
                    DeadKey::Forwarder { reader, seq } => {
                        let r = q.param(Value::Str(reader));
                        let s = q.param(Value::Int(*seq));
                        Some(format!("(reader = {r} AND seq = {s})"))
                    }
                    _ => None,
                })
                .collect();
            format!("({})", pairs.join(" OR "))
        }
        None => "1 = 0".to_owned(),
    }
}

/// Counts the items of `kind` matching `filter`, which names no cause.
pub(crate) async fn count<DB: Dialect>(
    conn: &mut DB::Connection,
    kind: DeadKind,
    filter: &DeadFilter,
) -> Result<u64, StoreError> {
    debug_assert!(filter.cause.is_none());
    let t = table(kind);
    let mut q = Query::<DB>::new();
    q.filter(t, filter);
    let text = sql::<DB>(&format!(
        "SELECT COUNT(*) AS n FROM {} {}",
        t.table,
        q.where_clause()
    ));
    let row = q.stmt(&text).fetch_one(conn).await?;
    let n: i64 = row.read("n")?;
    Ok(n.max(0) as u64)
}

/// A group of `kind`'s items as the database groups them: by name and
/// stored cause, or (no cause stored) by the raw error.
pub(crate) struct RawGroup {
    pub(crate) name: String,
    /// The stored cause, or the fingerprint of the raw error.
    pub(crate) cause: String,
    pub(crate) count: u64,
    pub(crate) example: String,
    pub(crate) latest: DateTime<Utc>,
}

/// `kind`'s items matching `filter`, grouped by name and cause in one
/// `GROUP BY`; rows without a stored cause are grouped by their error and
/// fingerprinted here (the caller merges the groups).
pub(crate) async fn groups<DB: Dialect>(
    conn: &mut DB::Connection,
    kind: DeadKind,
    filter: &DeadFilter,
) -> Result<Vec<RawGroup>, StoreError> {
    let t = table(kind);
    let mut groups = Vec::new();
    // Rows with a stored cause: one GROUP BY answered from the (name,
    // cause, time) index alone, and the newest error of each group by an
    // indexed LIMIT 1 in the same statement (reading every row's error
    // would visit them all). The outbox's index orders a cause's rows by
    // dead_at, which the relay sets with the cause.
    let newest = if kind == DeadKind::Outbox {
        "dead_at"
    } else {
        t.at
    };
    let mut q = Query::<DB>::new();
    q.filter(t, filter);
    q.and("cause IS NOT NULL".to_owned());
    let text = sql::<DB>(&format!(
        "SELECT {} AS name, {} AS cause, g.n AS n, g.latest AS latest,
                (SELECT {} FROM {table} e
                 WHERE {}e.{name} = g.name AND e.cause = g.cause AND e.{newest} IS NOT NULL
                 ORDER BY e.{newest} DESC LIMIT 1) AS example
         FROM (SELECT {name} AS name, cause, COUNT(*) AS n, MAX({}) AS latest
               FROM {table} {} GROUP BY {name}, cause) g",
        DB::text("g.name"),
        DB::text("g.cause"),
        DB::text(t.error),
        t.base.map(|b| format!("e.{b} AND ")).unwrap_or_default(),
        t.at,
        q.where_clause(),
        table = t.table,
        name = t.name,
    ));
    for r in &q.stmt(&text).fetch_all(&mut *conn).await? {
        let cause: String = r.read("cause")?;
        let example: Option<String> = r.read("example")?;
        let n: i64 = r.read("n")?;
        groups.push(RawGroup {
            name: r.read("name")?,
            example: example.unwrap_or_else(|| cause.clone()),
            cause,
            count: n.max(0) as u64,
            latest: DB::read_time(r, "latest")?,
        });
    }
    // Rows without one (plain SQL, or written before causes were stored):
    // grouped by their error, fingerprinted here; few, over the
    // `cause IS NULL` indexes.
    let mut q = Query::<DB>::new();
    q.filter(t, filter);
    q.and("cause IS NULL".to_owned());
    let text = sql::<DB>(&format!(
        "SELECT {} AS name, {} AS raw, COUNT(*) AS n, MAX({}) AS latest
         FROM {} {} GROUP BY 1, 2",
        DB::text(t.name),
        DB::text(t.error),
        t.at,
        t.table,
        q.where_clause(),
    ));
    for r in &q.stmt(&text).fetch_all(&mut *conn).await? {
        let raw: Option<String> = r.read("raw")?;
        let raw = raw.unwrap_or_default();
        let n: i64 = r.read("n")?;
        groups.push(RawGroup {
            name: r.read("name")?,
            cause: cause_of(&raw),
            count: n.max(0) as u64,
            example: raw,
            latest: DB::read_time(r, "latest")?,
        });
    }
    Ok(groups)
}
