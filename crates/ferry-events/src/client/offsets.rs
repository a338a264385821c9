//! Where an [`EventsClient`](super::EventsClient) keeps its offset between
//! runs.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_store::{Database, StoreError};

/// Durable storage for one reader's offset: the `seq` up to which every
/// event has been handled.
///
/// Contract: once `save(n)` returns `Ok`, a `load` in this process or any
/// later one (after a crash, a power cut included, as far as the storage
/// keeps its promise of durability) returns at least `n`. The offset only
/// moves forward: an [`EventsClient`](super::EventsClient) never saves a
/// lower offset than it loaded or saved, and an implementation may ignore
/// one. A store serves one reader in one process at a time.
pub trait OffsetStore: Send + Sync {
    /// The stored offset; 0 when nothing was stored yet.
    fn load(&self) -> impl Future<Output = Result<i64, OffsetError>> + Send;

    /// Stores `offset` durably before returning.
    fn save(&self, offset: i64) -> impl Future<Output = Result<(), OffsetError>> + Send;
}

/// An offset that cannot be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    /// Reading or writing the file failed (full disk, permissions); a
    /// retry helps only once that is fixed.
    #[error("cannot {action} the offset file {}", path.display())]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a non-negative number. It is left as it is:
    /// starting over from 0 silently would hand every event out again.
    #[error("the offset file {} does not hold an offset: `{content}`", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it holds (its first 64 characters).
        content: String,
    },
    /// The database failed; a retry may help when it is reachable again
    /// ([`StoreError::is_retryable`]).
    #[error("cannot {action} the offset of reader `{reader}` in the database")]
    Store {
        /// `load` or `save`.
        action: &'static str,
        /// The reader's name.
        reader: String,
        /// Why.
        #[source]
        source: StoreError,
    },
}

/// The offset in a file of its own, holding the number in decimal.
///
/// A save writes a temporary file beside it, flushes it to disk (`fsync`),
/// renames it over the old one (atomic on POSIX file systems) and flushes
/// the directory: after a crash the file holds the old offset or the new
/// one, never a torn write. A missing file reads as 0.
#[derive(Clone, Debug)]
pub struct FileOffsetStore {
    path: PathBuf,
    // Saves of one store take turns on the one temporary file. The turn
    // is held by the blocking write itself, so a save whose future is
    // dropped mid-write keeps it until the write is over.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl FileOffsetStore {
    /// A store in `path` (created on the first save; its directory must
    /// exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            lock: Arc::default(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn temporary(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        self.path.with_file_name(name)
    }
}

impl OffsetStore for FileOffsetStore {
    async fn load(&self) -> Result<i64, OffsetError> {
        let path = self.path.clone();
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(OffsetError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        match text.trim().parse::<i64>() {
            Ok(offset) if offset >= 0 => Ok(offset),
            _ => Err(OffsetError::Corrupt {
                path,
                content: text.chars().take(64).collect(),
            }),
        }
    }

    async fn save(&self, offset: i64) -> Result<(), OffsetError> {
        let turn = self.lock.clone().lock_owned().await;
        let (path, temporary) = (self.path.clone(), self.temporary());
        let written = tokio::task::spawn_blocking({
            let path = path.clone();
            move || {
                let written = write_durably(&path, &temporary, offset);
                drop(turn);
                written
            }
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        written.map_err(|source| OffsetError::Io {
            action: "write",
            path,
            source,
        })
    }
}

fn write_durably(path: &Path, temporary: &Path, offset: i64) -> std::io::Result<()> {
    let mut file = std::fs::File::create(temporary)?;
    writeln!(file, "{offset}")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(temporary, path)?;
    // The rename itself is durable once the directory is flushed.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// The offset in the database's `ferry_event_offsets` table, under a
/// reader name ([`Database::load_offset`], [`Database::save_offset`]). The
/// database needs Ferry's migrations; it may be the client's own database,
/// not the one behind the API. The table keeps offsets forward only.
#[derive(Clone, Debug)]
pub struct DatabaseOffsetStore {
    db: Database,
    reader: String,
}

impl DatabaseOffsetStore {
    /// The offset of `reader` in `db`. Forwarders keep theirs in the same
    /// table: give the client a name of its own.
    pub fn new(db: Database, reader: impl Into<String>) -> Self {
        Self {
            db,
            reader: reader.into(),
        }
    }

    /// The reader's name.
    pub fn reader(&self) -> &str {
        &self.reader
    }
}

impl OffsetStore for DatabaseOffsetStore {
    async fn load(&self) -> Result<i64, OffsetError> {
        self.db
            .load_offset(&self.reader)
            .await
            .map_err(|source| OffsetError::Store {
                action: "load",
                reader: self.reader.clone(),
                source,
            })
    }

    async fn save(&self, offset: i64) -> Result<(), OffsetError> {
        self.db
            .save_offset(&self.reader, offset)
            .await
            .map(drop)
            .map_err(|source| OffsetError::Store {
                action: "save",
                reader: self.reader.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_keeps_the_offset_and_refuses_garbage() {
        let dir = std::env::temp_dir().join(format!("ferry-offsets-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = FileOffsetStore::new(dir.join("reader.offset"));
        assert_eq!(store.load().await.unwrap(), 0);
        store.save(41).await.unwrap();
        store.save(42).await.unwrap();
        assert_eq!(FileOffsetStore::new(store.path()).load().await.unwrap(), 42);
        assert_eq!(std::fs::read_to_string(store.path()).unwrap(), "42\n");
        assert!(!store.temporary().exists());
        std::fs::write(store.path(), "forty-two").unwrap();
        let e = store.load().await.unwrap_err();
        assert!(matches!(e, OffsetError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("forty-two"));
        let missing = FileOffsetStore::new(dir.join("no/such/dir/offset"));
        assert!(matches!(
            missing.save(1).await,
            Err(OffsetError::Io {
                action: "write",
                ..
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_save_dropped_mid_write_does_not_race_the_next_one() {
        use futures::FutureExt;
        let dir = std::env::temp_dir().join(format!("ferry-offsets-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = FileOffsetStore::new(dir.join("reader.offset"));
        let mut dropped = 0;
        for n in (0..200).step_by(2) {
            // Polled once: the blocking write has started, then the future
            // is dropped (a caller's timeout, a cancelled task). On a busy
            // machine the write may now and then be over within that one
            // poll; most of the 100 are dropped mid-write.
            if store.save(n).now_or_never().is_none() {
                dropped += 1;
            }
            store.save(n + 1).await.unwrap();
            assert_eq!(store.load().await.unwrap(), n + 1);
        }
        assert!(
            dropped >= 10,
            "only {dropped} of 100 saves were dropped mid-write"
        );
        // The dropped write's turn is given back when it is over.
        let _turn = store.lock.lock().await;
        assert!(!store.temporary().exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
