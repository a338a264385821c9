//! The event store as seen from inside a transaction, on each database
//! Ferry supports, so that units of work and transactional forwarders can
//! be generic over the database.

use ferry_core::BoxFuture;
use ferry_store::event_store::{mysql, postgres, sqlite, NewEvent};
use ferry_store::{Database, StoreError};

/// A database the event store lives in: PostgreSQL ([`sqlx::Postgres`]),
/// SQLite ([`sqlx::Sqlite`]) or MariaDB ([`sqlx::MySql`]).
pub trait EventDatabase: sqlx::Database {
    /// Appends `events` inside the transaction `conn` (see
    /// [`ferry_store::event_store::postgres::append`]); from then until the
    /// transaction ends, other transactions' appends wait.
    fn append<'a>(
        conn: &'a mut Self::Connection,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>>;

    /// Moves `reader`'s offset forward to `offset` inside the transaction
    /// `conn`; never moves it back. Returns the offset afterwards.
    fn save_offset<'a>(
        conn: &'a mut Self::Connection,
        reader: &'a str,
        offset: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// Takes `reader`'s offset row for the rest of the transaction `conn`
    /// (creating it at 0 when missing) and returns the stored offset.
    ///
    /// A no-op upsert: on PostgreSQL and MariaDB it write-locks the row
    /// until the transaction ends, so a second transaction of the same
    /// reader waits here and then sees what the first committed; on SQLite
    /// it makes the transaction the single writer. A transactional
    /// forwarder calls it first in each transaction and passes by the
    /// events at or below the result, which is what keeps its writes
    /// exactly once when its own view of the offset is stale (a COMMIT
    /// whose acknowledgement was lost, a second instance of one name).
    fn lock_offset<'a>(
        conn: &'a mut Self::Connection,
        reader: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Self::save_offset(conn, reader, 0)
    }

    /// `pool` as a [`Database`].
    fn database(pool: &sqlx::Pool<Self>) -> Database;
}

impl EventDatabase for sqlx::Postgres {
    fn append<'a>(
        conn: &'a mut Self::Connection,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        Box::pin(postgres::append(conn, events))
    }

    fn save_offset<'a>(
        conn: &'a mut Self::Connection,
        reader: &'a str,
        offset: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(postgres::save_offset(conn, reader, offset))
    }

    fn database(pool: &sqlx::Pool<Self>) -> Database {
        Database::Postgres(pool.clone())
    }
}

impl EventDatabase for sqlx::Sqlite {
    fn append<'a>(
        conn: &'a mut Self::Connection,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        Box::pin(sqlite::append(conn, events))
    }

    fn save_offset<'a>(
        conn: &'a mut Self::Connection,
        reader: &'a str,
        offset: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(sqlite::save_offset(conn, reader, offset))
    }

    fn database(pool: &sqlx::Pool<Self>) -> Database {
        Database::Sqlite(pool.clone())
    }
}

impl EventDatabase for sqlx::MySql {
    fn append<'a>(
        conn: &'a mut Self::Connection,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        Box::pin(mysql::append(conn, events))
    }

    fn save_offset<'a>(
        conn: &'a mut Self::Connection,
        reader: &'a str,
        offset: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(mysql::save_offset(conn, reader, offset))
    }

    fn database(pool: &sqlx::Pool<Self>) -> Database {
        Database::Mysql(pool.clone())
    }
}
