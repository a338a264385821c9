/// An error from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL cannot be used.
    #[error("invalid database url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, with any password removed.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A query or connection failed.
    #[error("database error")]
    Database(
        #[from]
        #[source]
        sqlx::Error,
    ),
    /// A migration failed. The schema is left at the previous version on
    /// PostgreSQL and SQLite; on MariaDB, whose DDL is not transactional,
    /// running the migrations again completes it.
    #[error("migration {version} ({name}) failed")]
    Migration {
        /// Migration number.
        version: i64,
        /// Migration name.
        name: &'static str,
        /// What the database said.
        #[source]
        source: sqlx::Error,
    },
    /// Another process held the migration lock for a day (MariaDB's
    /// `GET_LOCK` timed out or failed); it is stuck, so waiting more will
    /// not help.
    #[error("could not take the migration lock; another ferry migration holds it")]
    MigrationLock,
    /// Ferry's tables do not exist in the database yet.
    #[error("the database has no ferry schema yet; run the migrations")]
    SchemaMissing,
    /// The schema in the database is newer than this build knows.
    #[error(
        "database schema is at version {found}, newer than this ferry build (knows up to {known})"
    )]
    SchemaTooNew {
        /// Newest version applied in the database.
        found: i64,
        /// Newest version this build has.
        known: i64,
    },
    /// The schema in the database is older than this build needs (Ferry
    /// was upgraded and the new migrations were not run). Retrying will not
    /// help until `ferry migrate` (or [`crate::Database::migrate`]) ran.
    #[error(
        "database schema is at version {found}, older than this ferry build needs ({known}): run ferry migrate"
    )]
    SchemaTooOld {
        /// Newest version applied in the database.
        found: i64,
        /// Newest version this build has, which it needs.
        known: i64,
    },
    /// An admin command named a message that does not exist or is not dead.
    #[error("no dead message `{0}`")]
    NoSuchDeadMessage(String),
    /// An admin command's id is neither a sequence number nor a UUID.
    #[error("`{0}` is neither a sequence number nor a message id")]
    InvalidMessageRef(String),
    /// An event store page was asked with a limit of 0 or above the largest
    /// page ([`crate::event_store::MAX_PAGE`]); the same request will fail
    /// again.
    #[error("page limit {limit} is out of range (1 to {max})")]
    InvalidPageLimit {
        /// The limit asked for.
        limit: u32,
        /// The largest limit allowed.
        max: u32,
    },
    /// An event store offset was negative; the same request will fail
    /// again.
    #[error("offset {0} is negative")]
    NegativeOffset(i64),
    /// A value given to an admin query (a dead item id, a page cursor, an
    /// outbox status, a dead-letter kind) cannot be parsed; the same
    /// request will fail again.
    #[error("invalid {parameter} `{value}`: expected {expected}")]
    InvalidArgument {
        /// What the value was meant to be, e.g. `dead item id`.
        parameter: &'static str,
        /// The value given.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

impl StoreError {
    /// Whether connecting again later may succeed (the database is
    /// unreachable, starting up, full or busy). Meant for errors from
    /// [`crate::Database::connect`]; it does not judge errors of queries.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Database(db) => {
                    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                        return mysql_retryable(my.number());
                    }
                    db.code().is_some_and(|code| {
                        if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                            sqlite_retryable(&code)
                        } else {
                            postgres_retryable(&code)
                        }
                    })
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// PostgreSQL: connection exceptions (`08…`), shutdown or start-up
/// (`57P…`), too many connections (`53300`).
fn postgres_retryable(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || code == "53300"
}

/// MariaDB: too many connections (`1040`, `1203` per user), shutting down
/// (`1053`), connection killed (`1927`).
fn mysql_retryable(number: u16) -> bool {
    matches!(number, 1040 | 1203 | 1053 | 1927)
}

/// SQLite: busy or locked, with any extended code (whose low byte is the
/// primary code).
fn sqlite_retryable(code: &str) -> bool {
    code.parse::<i32>().is_ok_and(|c| matches!(c % 256, 5 | 6))
}

/// A store error in a handler is worth retrying (a lost connection, a
/// deadlock), so handlers can use `?` on store calls.
impl From<StoreError> for ferry_core::HandlerError {
    fn from(e: StoreError) -> Self {
        ferry_core::HandlerError::transient("store error").with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::{mysql_retryable, postgres_retryable, sqlite_retryable};

    #[test]
    fn retryable_codes() {
        for code in ["5", "6", "261", "262", "517", "773"] {
            assert!(sqlite_retryable(code), "{code}");
        }
        for code in ["1", "8", "14", "1038"] {
            assert!(!sqlite_retryable(code), "{code}");
        }
        for code in ["08006", "57P03", "53300"] {
            assert!(postgres_retryable(code), "{code}");
        }
        for code in ["28P01", "3D000", "42P01", "40001"] {
            assert!(!postgres_retryable(code), "{code}");
        }
        for number in [1040, 1203, 1053, 1927] {
            assert!(mysql_retryable(number), "{number}");
        }
        // access denied, unknown database, syntax error
        for number in [1045, 1049, 1064] {
            assert!(!mysql_retryable(number), "{number}");
        }
    }
}
