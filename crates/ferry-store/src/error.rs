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
    /// A migration failed; the schema is left at the previous version.
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
    /// An admin command named a message that does not exist or is not dead.
    #[error("no dead message `{0}`")]
    NoSuchDeadMessage(String),
    /// An admin command's id is neither a sequence number nor a UUID.
    #[error("`{0}` is neither a sequence number nor a message id")]
    InvalidMessageRef(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed (the database
    /// was unreachable, a connection broke, the pool was exhausted).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                        | sqlx::Error::Protocol(_)
                ) || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| {
                    // connection failures, admin shutdown, serialization/deadlock, SQLite busy/locked
                    c.starts_with("08") || c.starts_with("57P") || c == "40001" || c == "40P01" || c == "5" || c == "6" || c == "517"
                }))
            }
            _ => false,
        }
    }
}
