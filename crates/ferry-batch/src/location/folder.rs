//! A local folder as a [`Location`].

use std::io;
use std::path::{Path, PathBuf};

use ferry_core::Failure;
use futures::future::BoxFuture;

use super::{check_name, part_name, Entry, Location};

/// A folder of the local file system (or of a mounted share): names are
/// paths under `root`.
///
/// `put_file` copies to `.<basename>.part-<random>` in the target folder,
/// flushes it to disk (`fsync`) and renames it to its name, so the name
/// appears complete or not at all; folders are made as needed.
#[derive(Clone, Debug)]
pub struct FolderLocation {
    root: PathBuf,
}

impl FolderLocation {
    /// The folder `root`; it need not exist yet (`put_file` and `rename`
    /// make it, `list` finds it empty).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder names are relative to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    async fn put(&self, local: &Path, name: &str) -> Result<(), Failure> {
        check_name(name)?;
        let target = self.path(name);
        let dir = target
            .parent()
            .map_or_else(|| self.root.clone(), Path::to_path_buf);
        let base = super::base_name(name);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_failure(e, format!("cannot make the folder {}", dir.display())))?;
        let part = dir.join(part_name(base));
        let written = async {
            tokio::fs::copy(local, &part).await.map_err(|e| {
                io_failure(
                    e,
                    format!("cannot copy {} to {}", local.display(), part.display()),
                )
            })?;
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&part)
                .await
                .map_err(|e| io_failure(e, format!("cannot reopen {}", part.display())))?;
            file.sync_all()
                .await
                .map_err(|e| io_failure(e, format!("cannot flush {} to disk", part.display())))?;
            drop(file);
            tokio::fs::rename(&part, &target).await.map_err(|e| {
                io_failure(
                    e,
                    format!("cannot rename {} to {}", part.display(), target.display()),
                )
            })
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
        // The rename is durable once the folder's entry is: best effort, as
        // some file systems refuse to open a folder for syncing.
        if let Ok(folder) = tokio::fs::File::open(&dir).await {
            let _ = folder.sync_all().await;
        }
        remove_stale_parts(&dir, base).await;
        Ok(())
    }

    async fn list_folder(&self, folder: &str) -> Result<Vec<Entry>, Failure> {
        if !folder.is_empty() {
            check_name(folder)?;
        }
        let dir = self.path(folder);
        let mut read = match tokio::fs::read_dir(&dir).await {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(io_failure(
                    e,
                    format!("cannot list the folder {}", dir.display()),
                ))
            }
        };
        let mut entries = Vec::new();
        loop {
            let next = read
                .next_entry()
                .await
                .map_err(|e| io_failure(e, format!("cannot list the folder {}", dir.display())))?;
            let Some(found) = next else { break };
            let Some(file_name) = found.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(folder = %dir.display(), "batch location: skipping a file whose name is not UTF-8");
                continue;
            };
            if file_name.starts_with('.') {
                continue;
            }
            // Follows symbolic links: a linked file is listed as a file.
            let meta = match tokio::fs::metadata(found.path()).await {
                Ok(meta) => meta,
                // Removed between the listing and now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(io_failure(
                        e,
                        format!("cannot read {}", found.path().display()),
                    ))
                }
            };
            if !meta.is_file() {
                continue;
            }
            let name = if folder.is_empty() {
                file_name
            } else {
                format!("{folder}/{file_name}")
            };
            entries.push(Entry {
                name,
                size: meta.len(),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    async fn get(&self, name: &str, local: &Path) -> Result<u64, Failure> {
        check_name(name)?;
        let source = self.path(name);
        tokio::fs::copy(&source, local).await.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound && !source.exists() {
                Failure::permanent(format!(
                    "batch location: no file {name:?} in {}",
                    self.root.display()
                ))
                .with_source(e)
            } else {
                io_failure(
                    e,
                    format!("cannot copy {} to {}", source.display(), local.display()),
                )
            }
        })
    }

    async fn move_file(&self, from: &str, to: &str) -> Result<(), Failure> {
        check_name(from)?;
        check_name(to)?;
        let source = self.path(from);
        let target = self.path(to);
        if let Some(dir) = target.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io_failure(e, format!("cannot make the folder {}", dir.display())))?;
        }
        tokio::fs::rename(&source, &target).await.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound && !source.exists() {
                Failure::permanent(format!(
                    "batch location: no file {from:?} in {} to move",
                    self.root.display()
                ))
                .with_source(e)
            } else {
                io_failure(
                    e,
                    format!("cannot rename {} to {}", source.display(), target.display()),
                )
            }
        })
    }

    async fn remove(&self, name: &str) -> Result<(), Failure> {
        check_name(name)?;
        let path = self.path(name);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_failure(e, format!("cannot delete {}", path.display()))),
        }
    }
}

impl Location for FolderLocation {
    fn describe(&self) -> String {
        match std::path::absolute(&self.root) {
            Ok(abs) => format!("file://{}", abs.display()),
            Err(_) => self.root.display().to_string(),
        }
    }

    fn put_file<'a>(
        &'a self,
        local: &'a Path,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(self.put(local, name))
    }

    fn list<'a>(&'a self, folder: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, Failure>> {
        Box::pin(self.list_folder(folder))
    }

    fn get_file<'a>(
        &'a self,
        name: &'a str,
        local: &'a Path,
    ) -> BoxFuture<'a, Result<u64, Failure>> {
        Box::pin(self.get(name, local))
    }

    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(self.move_file(from, to))
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(self.remove(name))
    }
}

/// Removes the temporary files earlier failed puts of `base` left in `dir`.
async fn remove_stale_parts(dir: &Path, base: &str) {
    let prefix = super::part_prefix(base);
    let Ok(mut read) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(found)) = read.next_entry().await {
        if found
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix))
        {
            let _ = tokio::fs::remove_file(found.path()).await;
        }
    }
}

/// A file-system error as a [`Failure`]: what no retry fixes (a missing
/// file, a permission refused, a bad name) is permanent, the rest (a full
/// disk, an I/O error on a share) transient.
fn io_failure(e: io::Error, what: String) -> Failure {
    use io::ErrorKind as K;
    let message = format!("batch location: {what}");
    let failure = match e.kind() {
        K::NotFound
        | K::PermissionDenied
        | K::InvalidInput
        | K::InvalidFilename
        | K::AlreadyExists
        | K::IsADirectory
        | K::NotADirectory
        | K::ReadOnlyFilesystem
        | K::Unsupported => Failure::permanent(message),
        _ => Failure::transient(message),
    };
    failure.with_source(e)
}
