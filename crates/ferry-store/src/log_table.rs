//! Tables of records kept for an operator to list, look at, take and
//! delete: consumer dead letters ([`crate::dead_letters`]) and the
//! executor's task failures ([`crate::task_failures`]). Each row is keyed
//! by a UUID `id`; lists are oldest first and may be narrowed by one text
//! column. The SQL is written here once for every dialect.

use sqlx::Pool;
use uuid::Uuid;

use crate::dialect::{select_text, sql, Dialect, PerDialect, Stmt};
use crate::StoreError;

/// One such table.
pub(crate) struct LogTable {
    pub(crate) table: &'static str,
    /// Every column, in the order [`Record::bind`] binds them.
    pub(crate) columns: &'static [&'static str],
    /// Of those, the columns read as they are; the others are text or
    /// UUIDs, read through [`Dialect::text`].
    pub(crate) plain: &'static [&'static str],
    /// The column a list may be narrowed by.
    pub(crate) filter: &'static str,
    /// The order of a list.
    pub(crate) order: &'static str,
    /// The columns recording a row again replaces; none: it changes nothing.
    pub(crate) replace: &'static [&'static str],
    pub(crate) statements: PerDialect<Statements>,
}

pub(crate) struct Statements {
    /// The columns, as selected for [`Record::read`].
    select: String,
    insert: String,
    list: String,
    get: String,
    /// `DELETE … RETURNING` where the dialect keeps aliases; otherwise a
    /// `SELECT … FOR UPDATE`, followed by `delete`.
    take: String,
    delete: String,
}

/// A row of a [`LogTable`].
pub(crate) trait Record: Sized {
    /// Its table.
    fn table() -> &'static LogTable;

    /// Binds every column, in [`LogTable`]'s order.
    fn bind<'q, DB: Dialect>(&'q self, stmt: Stmt<'q, DB>) -> Stmt<'q, DB>;

    /// Reads a row selected from the table.
    fn read<DB: Dialect>(row: &DB::Row) -> Result<Self, StoreError>;
}

impl LogTable {
    fn statements<DB: Dialect>(&self) -> &Statements {
        self.statements.get::<DB>(|| {
            let table = self.table;
            let select = self
                .columns
                .iter()
                .map(|&c| match self.plain.contains(&c) {
                    true => c.to_owned(),
                    false => select_text::<DB>(c, c),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let params = (1..=self.columns.len())
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let conflict = if self.replace.is_empty() {
                DB::on_conflict_do_nothing("id")
            } else {
                let set = self
                    .replace
                    .iter()
                    .map(|c| format!("{c} = {}", DB::excluded(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                DB::on_conflict("id", &set)
            };
            let (filter, order) = (self.filter, self.order);
            let take = if DB::DELETE_RETURNING {
                format!("DELETE FROM {table} WHERE id = $1 RETURNING {select}")
            } else {
                format!("SELECT {select} FROM {table} WHERE id = $1 FOR UPDATE")
            };
            Statements {
                select: select.clone(),
                insert: sql::<DB>(&format!(
                    "INSERT INTO {table} ({}) VALUES ({params}) {conflict}",
                    self.columns.join(", ")
                )),
                list: sql::<DB>(&format!(
                    "SELECT {select} FROM {table} WHERE {filter} = COALESCE($1, {filter})
                     ORDER BY {order} LIMIT $2"
                )),
                get: sql::<DB>(&format!("SELECT {select} FROM {table} WHERE id = $1")),
                take: sql::<DB>(&take),
                delete: sql::<DB>(&format!("DELETE FROM {table} WHERE id = $1")),
            }
        })
    }
}

/// Stores `record`, in a transaction of its own.
pub(crate) async fn insert<DB: Dialect, R: Record>(
    pool: &Pool<DB>,
    record: &R,
) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    record
        .bind(Stmt::<DB>::new(&R::table().statements::<DB>().insert))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Records oldest first, at most `limit`: those whose filter column is
/// `filter`, or all (`None`).
pub(crate) async fn list<DB: Dialect, R: Record>(
    pool: &Pool<DB>,
    filter: Option<&str>,
    limit: u32,
) -> Result<Vec<R>, StoreError> {
    let mut conn = pool.acquire().await?;
    let rows = Stmt::<DB>::new(&R::table().statements::<DB>().list)
        .bind(filter)
        .bind(i64::from(limit))
        .fetch_all(&mut conn)
        .await?;
    rows.iter().map(R::read::<DB>).collect()
}

/// One record by id.
pub(crate) async fn get<DB: Dialect, R: Record>(
    pool: &Pool<DB>,
    id: Uuid,
) -> Result<Option<R>, StoreError> {
    let mut conn = pool.acquire().await?;
    let row = Stmt::<DB>::new(&R::table().statements::<DB>().get)
        .bind(DB::id(id))
        .fetch_optional(&mut conn)
        .await?;
    row.as_ref().map(R::read::<DB>).transpose()
}

/// The records `ids` that exist, in the order of `ids`.
pub(crate) async fn get_many<DB: Dialect, R: Record + Keyed>(
    pool: &Pool<DB>,
    ids: &[Uuid],
) -> Result<Vec<R>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let statements = R::table().statements::<DB>();
    let params = (1..=ids.len())
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = sql::<DB>(&format!(
        "SELECT {} FROM {} WHERE id IN ({params})",
        statements.select,
        R::table().table
    ));
    let mut stmt = Stmt::<DB>::new(&text);
    for id in ids {
        stmt = stmt.bind(DB::id(*id));
    }
    let rows = stmt.fetch_all(&mut *pool.acquire().await?).await?;
    let mut records = rows
        .iter()
        .map(R::read::<DB>)
        .collect::<Result<Vec<R>, _>>()?;
    records.sort_by_key(|r| ids.iter().position(|id| *id == r.id()));
    Ok(records)
}

/// A record that knows its id.
pub(crate) trait Keyed {
    /// Its `id` column.
    fn id(&self) -> Uuid;
}

/// Deletes one record and returns it.
pub(crate) async fn take<DB: Dialect, R: Record>(
    pool: &Pool<DB>,
    id: Uuid,
) -> Result<Option<R>, StoreError> {
    let statements = R::table().statements::<DB>();
    let take = Stmt::<DB>::new(&statements.take).bind(DB::id(id));
    let row = if DB::DELETE_RETURNING {
        take.fetch_optional(&mut *pool.acquire().await?).await?
    } else {
        let mut tx = pool.begin().await?;
        let row = take.fetch_optional(&mut tx).await?;
        Stmt::<DB>::new(&statements.delete)
            .bind(DB::id(id))
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        row
    };
    row.as_ref().map(R::read::<DB>).transpose()
}

/// Deletes one record; says whether there was one.
pub(crate) async fn delete<DB: Dialect, R: Record>(
    pool: &Pool<DB>,
    id: Uuid,
) -> Result<bool, StoreError> {
    let mut conn = pool.acquire().await?;
    let done = Stmt::<DB>::new(&R::table().statements::<DB>().delete)
        .bind(DB::id(id))
        .execute(&mut conn)
        .await?;
    Ok(done > 0)
}
