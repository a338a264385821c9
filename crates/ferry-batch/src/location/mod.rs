//! Where batch files are handed over: a local folder, an SFTP directory or
//! an S3 prefix, behind one small trait.
//!
//! # Contract
//!
//! * **Names** are relative to the location's root, `/`-separated
//!   (`orders-20261206-1.csv`, `archive/orders-20261206-1.csv`); never
//!   absolute, never with `..` ([`check_name`]).
//! * **`put_file` is atomic**: `name` appears complete or not at all. A
//!   folder and SFTP write a temporary name beside it (`.<name>.part-…`,
//!   which [`Location::list`] never returns) and rename it when complete;
//!   S3 makes an object visible only when its PUT or multipart upload
//!   completes. A `put_file` that fails leaves no `name` behind (at most a
//!   temporary file, removed when the next attempt at the same name
//!   succeeds, or by the operator).
//! * **Overwrites** are allowed: a re-run of a window puts the same names
//!   again, with the same bytes.
//! * **Errors** are [`Failure`]s that say whether trying again helps:
//!   a refused connection or a timeout is `Unavailable`, a missing file or
//!   a permission refused is `Permanent`.
//! * **`list`** returns the files directly under a folder of the location
//!   (not recursively), with their sizes, in name order.
//! * **`rename`** moves a file within the location, replacing the target
//!   (S3: copy, then delete the source; not atomic, but the receiver moves
//!   a batch's manifest last, so a batch is never half in two places for
//!   longer than that).

mod folder;

use std::path::Path;

use ferry_core::Failure;
use futures::future::BoxFuture;

pub use folder::FolderLocation;

/// A file found by [`Location::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its name, relative to the location's root (with the listed folder).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A place files are put, listed, fetched and moved; see the [module
/// docs](self) for the contract every implementation keeps.
pub trait Location: Send + Sync + 'static {
    /// The location as an operator would name it in logs, secrets redacted
    /// (e.g. `sftp://ferry@127.0.0.1:2222/incoming`).
    fn describe(&self) -> String;

    /// Copies the local file `local` to `name`, atomically.
    fn put_file<'a>(&'a self, local: &'a Path, name: &'a str)
        -> BoxFuture<'a, Result<(), Failure>>;

    /// The files directly under `folder` (`""`: the root), in name order;
    /// empty when the folder does not exist.
    fn list<'a>(&'a self, folder: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, Failure>>;

    /// Copies `name` to the local file `local` (replaced), returning its
    /// size.
    fn get_file<'a>(
        &'a self,
        name: &'a str,
        local: &'a Path,
    ) -> BoxFuture<'a, Result<u64, Failure>>;

    /// Moves `from` to `to`, replacing `to`; folders are made as needed.
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<(), Failure>>;

    /// Deletes `name`; deleting what is not there succeeds.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Failure>>;
}

/// Refuses a name that is empty, absolute, or climbs out of the root.
pub fn check_name(name: &str) -> Result<(), Failure> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(Failure::permanent(format!(
            "batch location: {name:?} is not a relative file name (no leading /, no empty, . or .. parts)"
        )));
    }
    Ok(())
}

/// The folder part of `name` (`""` at the root).
pub fn parent(name: &str) -> &str {
    name.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// The last part of `name` (the whole name at the root).
pub fn base_name(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(_, base)| base)
}

/// The start of every temporary name a put of `base` writes:
/// `.<base>.part-`.
pub(crate) fn part_prefix(base: &str) -> String {
    format!(".{base}.part-")
}

/// A fresh temporary name for a put of `base`: `.<base>.part-<random>`.
pub(crate) fn part_name(base: &str) -> String {
    format!("{}{}", part_prefix(base), uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_root() {
        for good in ["a.csv", "archive/a.csv", "x/y/z.manifest.json"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "/a", "../a", "a/../b", "a//b", "a/", "./a", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parent("archive/a.csv"), "archive");
        assert_eq!(parent("a.csv"), "");
        assert_eq!(base_name("archive/a.csv"), "a.csv");
        assert_eq!(base_name("a.csv"), "a.csv");
        assert!(part_name("a.csv").starts_with(".a.csv.part-"));
        assert_ne!(part_name("a.csv"), part_name("a.csv"));
    }
}
