//! What the mode tests share: a fresh database of each kind and running
//! SQL on it.
#![allow(dead_code)]

use ferry_store::Database;
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb};

/// The fresh database behind an [`Env`], dropped with it.
pub enum Fresh {
    Sqlite(#[allow(dead_code)] SqliteTestDb),
    Pg(#[allow(dead_code)] PgTestDb),
    Mysql(#[allow(dead_code)] MysqlTestDb),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Sqlite,
    Pg,
    Mysql,
}

/// A fresh database of one kind and a pool on it.
pub struct Env {
    pub kind: Kind,
    pub url: String,
    pub db: Database,
    _fresh: Fresh,
}

pub async fn env(kind: Kind) -> Env {
    let (url, fresh) = match kind {
        Kind::Sqlite => {
            let t = SqliteTestDb::create();
            (t.url.clone(), Fresh::Sqlite(t))
        }
        Kind::Pg => {
            let t = PgTestDb::create().await;
            (t.url.clone(), Fresh::Pg(t))
        }
        Kind::Mysql => {
            let t = MysqlTestDb::create().await;
            (t.url.clone(), Fresh::Mysql(t))
        }
    };
    Env {
        kind,
        db: Database::connect(&url).await.unwrap(),
        url,
        _fresh: fresh,
    }
}

impl Env {
    /// Runs `statements` in one transaction, committed or rolled back.
    pub async fn tx<S: AsRef<str>>(&self, statements: &[S], commit: bool) {
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.unwrap();
                for s in statements {
                    let s = s.as_ref();
                    sqlx::query(s)
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("{s}: {e}"));
                }
                if commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
            }};
        }
        match &self.db {
            Database::Sqlite(p) => run!(p),
            Database::Postgres(p) => run!(p),
            Database::Mysql(p) => run!(p),
        }
    }

    /// Runs one statement in a transaction of its own.
    pub async fn exec(&self, statement: &str) {
        self.tx(&[statement], true).await;
    }
}
