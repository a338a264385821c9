//! Throwaway databases: every measurement gets a fresh, migrated one.
//!
//! * PostgreSQL: `CREATE DATABASE ferry_bench_<random>` on the server the
//!   given URL points at, dropped (`WITH (FORCE)`) afterwards.
//! * SQLite: a file `ferry_bench_<random>.db` in the system's temp dir (or
//!   the directory the URL names), removed with its `-wal`/`-shm` files.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context};
use ferry_relay::RelayConfig;
use ferry_store::{redact, ConnectOptions, Database, DatabaseKind};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection, Executor, PgConnection};

/// Prefix of every scratch database's name.
pub const PREFIX: &str = "ferry_bench_";

/// Where scratch databases are made.
#[derive(Clone, Debug)]
pub enum Server {
    /// A PostgreSQL server, reached through `admin` (any database on it).
    Postgres {
        /// The URL given on the command line.
        admin: String,
    },
    /// SQLite files in `dir`.
    Sqlite {
        /// The directory.
        dir: PathBuf,
    },
}

impl Server {
    /// `postgres://user@host:port/db` (a server; `db` is only used to
    /// connect), or `sqlite://` (temp dir), or `sqlite:///some/dir`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        match DatabaseKind::of(url)? {
            DatabaseKind::Mysql => anyhow::bail!("the benchmark does not run on MariaDB yet"),
            DatabaseKind::Postgres => Ok(Server::Postgres {
                admin: url.to_owned(),
            }),
            DatabaseKind::Sqlite => {
                let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
                let rest = rest.split('?').next().unwrap_or_default();
                let dir = if rest.is_empty() {
                    std::env::temp_dir()
                } else {
                    PathBuf::from(rest)
                };
                if dir.extension().is_some_and(|e| e == "db") {
                    bail!("give a directory for the scratch SQLite files (or just `sqlite://`), not a file: {}", dir.display());
                }
                Ok(Server::Sqlite { dir })
            }
        }
    }

    /// `postgres` or `sqlite`.
    pub fn label(&self) -> &'static str {
        match self {
            Server::Postgres { .. } => "postgres",
            Server::Sqlite { .. } => "sqlite",
        }
    }

    /// What the figures were measured on, e.g. `PostgreSQL 15.20 at
    /// 127.0.0.1:5432` or `SQLite 3.46.0 in /tmp`.
    pub async fn describe(&self) -> anyhow::Result<String> {
        match self {
            Server::Postgres { admin } => {
                let mut conn = connect_admin(admin).await?;
                let version: String = sqlx::query_scalar("SHOW server_version")
                    .fetch_one(&mut conn)
                    .await?;
                let url = url::Url::parse(admin)?;
                let _ = conn.close().await;
                Ok(format!(
                    "PostgreSQL {version} at {}:{}",
                    url.host_str().unwrap_or("localhost"),
                    url.port().unwrap_or(5432)
                ))
            }
            Server::Sqlite { dir } => {
                let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite::memory:")?
                    .connect()
                    .await?;
                let version: String = sqlx::query_scalar("SELECT sqlite_version()")
                    .fetch_one(&mut conn)
                    .await?;
                Ok(format!(
                    "SQLite {version} (WAL) in {} (files on that filesystem)",
                    dir.display()
                ))
            }
        }
    }

    /// A fresh, empty database (not migrated yet).
    pub async fn create(&self) -> anyhow::Result<Scratch> {
        let name = format!("{PREFIX}{:016x}", rand::random::<u64>());
        match self {
            Server::Postgres { admin } => {
                let mut conn = connect_admin(admin).await?;
                conn.execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .with_context(|| format!("cannot create database {name}"))?;
                let _ = conn.close().await;
                let mut url = url::Url::parse(admin)?;
                url.set_path(&format!("/{name}"));
                Ok(Scratch {
                    url: url.to_string(),
                    place: Place::Postgres {
                        admin: admin.clone(),
                        name,
                    },
                })
            }
            Server::Sqlite { dir } => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let path = dir.join(format!("{name}.db"));
                Ok(Scratch {
                    url: format!("sqlite://{}", path.display()),
                    place: Place::Sqlite { path },
                })
            }
        }
    }

    /// Runs `body` on a fresh, migrated database of `max_connections`
    /// connections (given its URL and the open pool), then closes the pool
    /// and removes the database, whatever `body` returned.
    pub async fn with_fresh<T, F, Fut>(&self, max_connections: u32, body: F) -> anyhow::Result<T>
    where
        F: FnOnce(String, Database) -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let scratch = self.create().await?;
        let result = async {
            let db = scratch.open(max_connections).await?;
            let result = body(scratch.url.clone(), db.clone()).await;
            db.close().await;
            result
        }
        .await;
        scratch.remove().await;
        result
    }

    /// Drops scratch databases left behind by interrupted runs; returns
    /// their names.
    pub async fn clean(&self) -> anyhow::Result<Vec<String>> {
        let mut gone = Vec::new();
        match self {
            Server::Postgres { admin } => {
                let mut conn = connect_admin(admin).await?;
                let names: Vec<String> =
                    sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
                        .bind(format!("{PREFIX}%"))
                        .fetch_all(&mut conn)
                        .await?;
                for name in names {
                    conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await?;
                    gone.push(name);
                }
                let _ = conn.close().await;
            }
            Server::Sqlite { dir } => {
                for entry in std::fs::read_dir(dir)? {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with(PREFIX) {
                        std::fs::remove_file(entry.path())?;
                        gone.push(name);
                    }
                }
            }
        }
        Ok(gone)
    }
}

async fn connect_admin(admin: &str) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::from_str(admin)
        .with_context(|| format!("invalid database url {}", redact(admin)))?;
    options
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", redact(admin)))
}

#[derive(Debug)]
enum Place {
    Postgres { admin: String, name: String },
    Sqlite { path: PathBuf },
}

/// A scratch database; call [`Scratch::remove`] when done.
#[derive(Debug)]
pub struct Scratch {
    /// Its URL, for [`Database::connect_with`].
    pub url: String,
    place: Place,
}

impl Scratch {
    /// Connects a pool of `max_connections` (on PostgreSQL with the relay's
    /// default lease, as the `ferry` binary uses) and applies Ferry's
    /// migrations.
    pub async fn open(&self, max_connections: u32) -> anyhow::Result<Database> {
        let db = Database::connect_with(
            &self.url,
            &ConnectOptions {
                max_connections,
                lease: Some(RelayConfig::default().lease),
            },
        )
        .await
        .with_context(|| format!("cannot open {}", redact(&self.url)))?;
        db.migrate().await.context("migration failed")?;
        Ok(db)
    }

    /// Drops the database or deletes the file. Failures are printed, not
    /// returned: they must not hide the measurement's own error.
    pub async fn remove(self) {
        match self.place {
            Place::Postgres { admin, name } => {
                let result = async {
                    let mut conn = connect_admin(&admin).await?;
                    conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await?;
                    let _ = conn.close().await;
                    anyhow::Ok(())
                }
                .await;
                if let Err(e) = result {
                    eprintln!("warning: could not drop scratch database {name}: {e:#} (`ferry-bench clean` drops leftovers)");
                }
            }
            Place::Sqlite { path } => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers() {
        match Server::parse("sqlite://").unwrap() {
            Server::Sqlite { dir } => assert_eq!(dir, std::env::temp_dir()),
            other => panic!("{other:?}"),
        }
        match Server::parse("sqlite:///var/tmp").unwrap() {
            Server::Sqlite { dir } => assert_eq!(dir, PathBuf::from("/var/tmp")),
            other => panic!("{other:?}"),
        }
        assert!(Server::parse("sqlite:///tmp/x.db").is_err());
        assert_eq!(
            Server::parse("postgresql://postgres@127.0.0.1:5432/postgres")
                .unwrap()
                .label(),
            "postgres"
        );
        assert!(Server::parse("redis://x").is_err());
    }
}
