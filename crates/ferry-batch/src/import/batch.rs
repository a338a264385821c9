//! One batch on its way in: fetched to a private folder, checked against
//! its manifest, identified by its key, then archived or refused.

use std::io::Read;
use std::path::{Path, PathBuf};

use ferry_core::{ErrorKind, Failure};
use sha2::{Digest, Sha256};

use super::config::ImportJob;
use crate::location::Entry;
use crate::{FileEntry, Location, Manifest};

/// Why a batch was not loaded.
#[derive(Debug)]
pub(crate) enum Problem {
    /// The batch itself is wrong (malformed manifest, a file missing or
    /// not matching, a malformed row, columns the table lacks): it goes
    /// to `error/` with this reason and later batches go on.
    Refused(String),
    /// Something outside the batch failed (the location or the database
    /// is unavailable, a constraint refused a row, the job's settings):
    /// the batch stays where it is and is tried again at the next poll.
    Retry(Failure),
}

impl From<Failure> for Problem {
    fn from(f: Failure) -> Self {
        Problem::Retry(f)
    }
}

/// A batch fetched and verified, ready to load.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The batch's name (its manifest's name without the suffix).
    pub name: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// SHA-256 of the manifest's bytes, lower-case hex.
    pub manifest_sha256: String,
    /// The ledger key: see [`batch_key`].
    pub key: String,
    /// Each data file beside its local copy, in manifest order.
    pub files: Vec<(FileEntry, PathBuf)>,
    _dir: ScratchDir,
}

/// The ledger's key of a batch: SHA-256 over the window and the data
/// files' SHA-256 list, lower-case hex.
///
/// Not the manifest's own checksum: a sender that runs the same window
/// again writes the same data files under a manifest with another
/// `run_id` and `created_at`. Keyed this way, such a re-send is
/// recognised as the batch already imported; a re-run whose data changed
/// (rows added since) has other file checksums, so it is a new batch.
pub fn batch_key(manifest: &Manifest) -> String {
    let mut h = Sha256::new();
    h.update(b"ferry-batch-key-v1\n");
    h.update(manifest.window.start.as_bytes());
    h.update(b"\n");
    h.update(manifest.window.end.as_bytes());
    h.update(b"\n");
    for f in &manifest.files {
        h.update(f.sha256.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// A private local folder removed on drop.
#[derive(Debug)]
pub(crate) struct ScratchDir(pub PathBuf);

impl ScratchDir {
    fn new() -> Result<Self, Failure> {
        let path =
            std::env::temp_dir().join(format!("ferry-import-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&path).map_err(|e| {
            Failure::unavailable(format!(
                "cannot create a scratch folder under {} (check the temp dir's space and permissions)",
                std::env::temp_dir().display()
            ))
            .with_source(e)
        })?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A location failure while fetching: a file that is not there is the
/// batch's fault, anything else is tried again later.
fn fetch_problem(name: &str, e: Failure) -> Problem {
    match e.kind {
        ErrorKind::Permanent => Problem::Refused(format!("cannot fetch {name}: {}", e.describe())),
        _ => Problem::Retry(e),
    }
}

/// Fetches the manifest of batch `batch` of `job`
/// (`<folder>/<batch>.manifest.json`) and reads it; the batch's files are
/// fetched by [`fetch_files`].
pub(crate) async fn fetch_manifest(
    job: &ImportJob,
    location: &dyn Location,
    batch: &str,
) -> Result<Batch, Problem> {
    let dir = ScratchDir::new()?;
    let manifest_name = job.path(&Manifest::file_name(batch));
    let local = dir.0.join("manifest.json");
    location
        .get_file(&manifest_name, &local)
        .await
        .map_err(|e| fetch_problem(&manifest_name, e))?;
    let bytes = tokio::fs::read(&local).await.map_err(|e| {
        Failure::unavailable(format!("cannot read the local copy of {manifest_name}"))
            .with_source(e)
    })?;
    let manifest_sha256 = hex::encode(Sha256::digest(&bytes));
    let manifest =
        Manifest::parse(&bytes).map_err(|e| Problem::Refused(format!("{manifest_name}: {e}")))?;
    if manifest.files.is_empty() {
        return Err(Problem::Refused(format!(
            "{manifest_name}: the manifest lists no data files"
        )));
    }
    if manifest.columns.is_empty() {
        return Err(Problem::Refused(format!(
            "{manifest_name}: the manifest lists no columns"
        )));
    }
    for entry in &manifest.files {
        if entry.name.contains('/') || crate::location::check_name(&entry.name).is_err() {
            return Err(Problem::Refused(format!(
                "{manifest_name}: file name {:?} is not a plain file name beside the manifest",
                entry.name
            )));
        }
    }
    Ok(Batch {
        name: batch.to_owned(),
        key: batch_key(&manifest),
        manifest,
        manifest_sha256,
        files: Vec::new(),
        _dir: dir,
    })
}

/// Fetches the data files of `batch` (`listed`: what the job's folder
/// holds) and checks each one's size and SHA-256 against the manifest.
pub(crate) async fn fetch_files(
    job: &ImportJob,
    location: &dyn Location,
    batch: &mut Batch,
    listed: &[Entry],
) -> Result<(), Problem> {
    let mut files = Vec::with_capacity(batch.manifest.files.len());
    for (i, entry) in batch.manifest.files.iter().enumerate() {
        let name = job.path(&entry.name);
        let Some(found) = listed.iter().find(|e| e.name == name) else {
            return Err(Problem::Refused(format!(
                "file {name} named by the manifest is missing"
            )));
        };
        if found.size != entry.bytes {
            return Err(Problem::Refused(format!(
                "file {name} has {} bytes, the manifest says {}",
                found.size, entry.bytes
            )));
        }
        let local = batch._dir.0.join(format!("part-{i}"));
        location
            .get_file(&name, &local)
            .await
            .map_err(|e| fetch_problem(&name, e))?;
        let path = local.clone();
        let (size, sha) = tokio::task::spawn_blocking(move || hash_file(&path))
            .await
            .map_err(|e| Failure::transient("checksum task failed").with_source(e))?
            .map_err(|e| {
                Failure::unavailable(format!("cannot read the local copy of {name}")).with_source(e)
            })?;
        if size != entry.bytes {
            return Err(Problem::Refused(format!(
                "file {name} has {size} bytes, the manifest says {}",
                entry.bytes
            )));
        }
        if !sha.eq_ignore_ascii_case(&entry.sha256) {
            return Err(Problem::Refused(format!(
                "file {name} has SHA-256 {sha}, the manifest says {}",
                entry.sha256
            )));
        }
        files.push((entry.clone(), local));
    }
    batch.files = files;
    Ok(())
}

fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex::encode(h.finalize())))
}

/// The data files a manifest names, if it can be read at all.
async fn files_named(location: &dyn Location, manifest_name: &str) -> Vec<String> {
    let Ok(dir) = ScratchDir::new() else {
        return Vec::new();
    };
    let local = dir.0.join("manifest.json");
    if location.get_file(manifest_name, &local).await.is_err() {
        return Vec::new();
    }
    let Ok(bytes) = tokio::fs::read(&local).await else {
        return Vec::new();
    };
    // A manifest of another version may still name its files.
    #[derive(serde::Deserialize)]
    struct Files {
        files: Vec<Named>,
    }
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
    }
    serde_json::from_slice::<Files>(&bytes)
        .map(|f| {
            f.files
                .into_iter()
                .map(|n| n.name)
                .filter(|n| !n.contains('/') && crate::location::check_name(n).is_ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Moves the batch's data files, then its manifest, to the archive:
/// `<archive>/<batch>/<file>` and `<archive>/<batch>.manifest.json`.
pub(crate) async fn archive(
    job: &ImportJob,
    location: &dyn Location,
    batch: &str,
    files: &[String],
    listed: &[Entry],
) -> Result<(), Failure> {
    let archive = job.path(&job.archive);
    for file in files {
        let from = job.path(file);
        // Moved already by an archive that stopped half-way.
        if !listed.iter().any(|e| e.name == from) {
            continue;
        }
        move_unless_gone(location, &from, &format!("{archive}/{batch}/{file}")).await?;
    }
    let manifest = Manifest::file_name(batch);
    move_unless_gone(
        location,
        &job.path(&manifest),
        &format!("{archive}/{manifest}"),
    )
    .await
}

/// Whether batch `batch`'s manifest has left `job`'s folder since the pass
/// listed it: another importer took the batch (archived or refused it)
/// while this one was fetching it. A listing that fails says no.
pub(crate) async fn taken_by_another(
    job: &ImportJob,
    location: &dyn Location,
    batch: &str,
) -> bool {
    let manifest = job.path(&Manifest::file_name(batch));
    let folder = crate::location::parent(&manifest);
    match location.list(folder).await {
        Ok(entries) => !entries.iter().any(|entry| entry.name == manifest),
        Err(_) => false,
    }
}

/// Moves `from` to `to`; a `from` that is no longer there when the move
/// fails was moved by someone else (another importer archiving the same
/// batch, which it loaded or skipped): done, not a failure.
async fn move_unless_gone(location: &dyn Location, from: &str, to: &str) -> Result<(), Failure> {
    match location.rename(from, to).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let folder = crate::location::parent(from);
            match location.list(folder).await {
                Ok(entries) if !entries.iter().any(|entry| entry.name == from) => Ok(()),
                _ => Err(e),
            }
        }
    }
}

/// Moves a refused batch to the error folder: `<batch>.reason.txt` first,
/// then the data files its manifest names (those present), the manifest
/// last, all directly under `<error>/`.
pub(crate) async fn refuse(
    job: &ImportJob,
    location: &dyn Location,
    batch: &str,
    reason: &str,
    listed: &[Entry],
) -> Result<(), Failure> {
    let error = job.path(&job.error);
    let manifest = job.path(&Manifest::file_name(batch));
    let dir = ScratchDir::new()?;
    let local = dir.0.join("reason.txt");
    tokio::fs::write(&local, format!("{reason}\n"))
        .await
        .map_err(|e| Failure::unavailable("cannot write the reason file locally").with_source(e))?;
    location
        .put_file(&local, &format!("{error}/{batch}.reason.txt"))
        .await?;
    for file in files_named(location, &manifest).await {
        let from = job.path(&file);
        if listed.iter().any(|e| e.name == from) {
            location.rename(&from, &format!("{error}/{file}")).await?;
        }
    }
    location
        .rename(
            &manifest,
            &format!("{error}/{}", Manifest::file_name(batch)),
        )
        .await
}

/// Deletes archived batches whose manifest was written longer than
/// `keep` ago: their data files first, the manifest last. Returns how
/// many batches were deleted.
pub(crate) async fn expire(
    job: &ImportJob,
    location: &dyn Location,
    keep: std::time::Duration,
) -> Result<usize, Failure> {
    let archive = job.path(&job.archive);
    // A retention longer than the calendar reaches keeps everything.
    let Some(cutoff) = chrono::Duration::from_std(keep)
        .ok()
        .and_then(|keep| chrono::Utc::now().checked_sub_signed(keep))
    else {
        return Ok(0);
    };
    let mut deleted = 0;
    for entry in location.list(&archive).await? {
        let base = crate::location::base_name(&entry.name);
        let Some(batch) = Manifest::batch_of(base) else {
            continue;
        };
        let dir = ScratchDir::new()?;
        let local = dir.0.join("manifest.json");
        location.get_file(&entry.name, &local).await?;
        let Ok(bytes) = tokio::fs::read(&local).await else {
            continue;
        };
        // An archived manifest Ferry cannot read is left for the operator.
        let Ok(manifest) = Manifest::parse(&bytes) else {
            continue;
        };
        if manifest.created_at >= cutoff {
            continue;
        }
        for file in &manifest.files {
            if crate::location::check_name(&file.name).is_ok() {
                location
                    .delete(&format!("{archive}/{batch}/{}", file.name))
                    .await?;
            }
        }
        location.delete(&entry.name).await?;
        deleted += 1;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Column, FileFormat, ValueKind, Window};

    fn manifest(run: &str, sha: &str) -> Manifest {
        Manifest {
            format_version: crate::manifest::FORMAT_VERSION,
            job: "j".into(),
            window: Window {
                start: "a".into(),
                end: "b".into(),
            },
            run_id: run.into(),
            format: FileFormat::Csv,
            gzip: false,
            columns: vec![Column {
                name: "id".into(),
                db_type: "int8".into(),
                kind: ValueKind::Integer,
            }],
            files: vec![FileEntry {
                name: "f.csv".into(),
                part: 1,
                rows: 1,
                bytes: 1,
                sha256: sha.into(),
            }],
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_key_ignores_the_run_but_not_the_data_or_window() {
        let a = batch_key(&manifest("r1", "aa"));
        assert_eq!(a, batch_key(&manifest("r2", "aa")));
        assert_ne!(a, batch_key(&manifest("r1", "ab")));
        let mut other_window = manifest("r1", "aa");
        other_window.window.end = "c".into();
        assert_ne!(a, batch_key(&other_window));
    }
}
