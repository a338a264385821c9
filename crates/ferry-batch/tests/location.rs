//! One conformance suite for every batch [`Location`]: the same checks run
//! against a local folder, a real OpenSSH server over SFTP and moto's S3,
//! one `mod` per location, one test per check. Location-specific faults
//! (an unknown host key, a server stopped mid-upload, wrong credentials)
//! follow the suite.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_batch::location::{Entry, FolderLocation, Location};
use ferry_core::{ErrorKind, Failure};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// A location under test, its local scratch folder and whatever keeps its
/// server alive.
struct Fixture {
    location: Arc<dyn Location>,
    scratch: TempDir,
    _keep: Vec<Box<dyn std::any::Any + Send>>,
}

impl Fixture {
    /// A local file named `name` in the scratch folder holding `bytes`.
    fn local(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.scratch.path().join(name);
        std::fs::write(&path, bytes).expect("write a local file");
        path
    }

    /// A fresh path in the scratch folder, not yet written.
    fn fresh(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    async fn put(&self, name: &str, bytes: &[u8]) {
        let local = self.local(&format!("put-{}", uuid::Uuid::now_v7().simple()), bytes);
        self.location
            .put_file(&local, name)
            .await
            .unwrap_or_else(|e| panic!("put {name}: {}", e.describe()));
    }

    async fn get(&self, name: &str) -> Vec<u8> {
        let local = self.fresh(&format!("get-{}", uuid::Uuid::now_v7().simple()));
        let size = self
            .location
            .get_file(name, &local)
            .await
            .unwrap_or_else(|e| panic!("get {name}: {}", e.describe()));
        let bytes = std::fs::read(&local).expect("read the fetched file");
        assert_eq!(size, bytes.len() as u64, "get_file's size of {name}");
        bytes
    }

    async fn list(&self, folder: &str) -> Vec<Entry> {
        self.location
            .list(folder)
            .await
            .unwrap_or_else(|e| panic!("list {folder:?}: {}", e.describe()))
    }

    async fn names(&self, folder: &str) -> Vec<String> {
        self.list(folder)
            .await
            .into_iter()
            .map(|e| e.name)
            .collect()
    }
}

fn scratch() -> TempDir {
    tempfile::tempdir().expect("make a scratch folder")
}

fn entry(name: &str, size: usize) -> Entry {
    Entry {
        name: name.to_owned(),
        size: size as u64,
    }
}

fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).expect("open for hashing");
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).expect("hash the file");
    hex::encode(hasher.finalize())
}

/// `len` bytes that do not repeat in any short period (xorshift), so a
/// part written twice or out of order changes the hash.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[track_caller]
fn assert_kind(
    result: Result<impl std::fmt::Debug, Failure>,
    kind: ErrorKind,
    what: &str,
) -> Failure {
    match result {
        Ok(v) => panic!(
            "{what}: expected a {} failure, got Ok({v:?})",
            kind.as_str()
        ),
        Err(e) => {
            assert_eq!(e.kind, kind, "{what}: {}", e.describe());
            e
        }
    }
}

// ---------------------------------------------------------------------
// The suite: every check takes a fresh, empty location.

mod checks {
    use super::*;

    /// Bytes that trip careless text handling: CRLF, NUL, non-ASCII.
    const AWKWARD: &[u8] = "id,name\r\n1,\"Zoë, \"\"quoted\"\"\"\n2,\u{0}日本\n".as_bytes();

    pub async fn put_then_get_round_trip(f: Fixture) {
        f.put("orders.csv", AWKWARD).await;
        assert_eq!(f.list("").await, vec![entry("orders.csv", AWKWARD.len())]);
        assert_eq!(f.get("orders.csv").await, AWKWARD);

        f.put("in/2026/orders.csv", b"nested").await;
        assert_eq!(
            f.list("in/2026").await,
            vec![entry("in/2026/orders.csv", 6)]
        );
        // Not recursive: the root shows only its own files.
        assert_eq!(f.names("").await, vec!["orders.csv"]);
        assert_eq!(f.get("in/2026/orders.csv").await, b"nested");
        // An empty file is a file too.
        f.put("empty.csv", b"").await;
        assert_eq!(f.get("empty.csv").await, b"");
        assert!(f.list("").await.contains(&entry("empty.csv", 0)));
    }

    pub async fn overwrite_replaces_the_file(f: Fixture) {
        f.put("a.csv", b"first version, longer than the second")
            .await;
        f.put("a.csv", b"second").await;
        assert_eq!(f.get("a.csv").await, b"second");
        assert_eq!(f.list("").await, vec![entry("a.csv", 6)]);
    }

    pub async fn list_is_sorted_with_sizes_and_skips_temporary_files(f: Fixture) {
        f.put("c.csv", b"ccc").await;
        f.put("a.csv", b"a").await;
        f.put("b.manifest.json", b"{}").await;
        // What a put interrupted half-way leaves behind.
        f.put(".a.csv.part-0190aabbccdd", b"partial").await;
        f.put("sub/.x.csv.part-1", b"partial").await;
        assert_eq!(
            f.list("").await,
            vec![
                entry("a.csv", 1),
                entry("b.manifest.json", 2),
                entry("c.csv", 3)
            ]
        );
        assert_eq!(f.list("sub").await, vec![]);
        assert_eq!(f.list("no/such/folder").await, vec![]);
    }

    pub async fn get_of_a_missing_name_is_permanent(f: Fixture) {
        let local = f.fresh("missing");
        let e = assert_kind(
            f.location.get_file("nope.csv", &local).await,
            ErrorKind::Permanent,
            "get_file of a missing name",
        );
        assert!(e.message.contains("nope.csv"), "{}", e.describe());
        assert_kind(
            f.location.get_file("no/such/dir/nope.csv", &local).await,
            ErrorKind::Permanent,
            "get_file in a missing folder",
        );
    }

    pub async fn rename_makes_folders_and_replaces_the_target(f: Fixture) {
        f.put("batch.csv", b"rows").await;
        f.location
            .rename("batch.csv", "archive/2026-12-07/batch.csv")
            .await
            .expect("rename into a new folder");
        assert_eq!(f.list("").await, vec![]);
        assert_eq!(
            f.list("archive/2026-12-07").await,
            vec![entry("archive/2026-12-07/batch.csv", 4)]
        );
        assert_eq!(f.get("archive/2026-12-07/batch.csv").await, b"rows");

        f.put("again.csv", b"newer rows").await;
        f.location
            .rename("again.csv", "archive/2026-12-07/batch.csv")
            .await
            .expect("rename over an existing file");
        assert_eq!(f.get("archive/2026-12-07/batch.csv").await, b"newer rows");
        assert_eq!(f.list("").await, vec![]);

        assert_kind(
            f.location.rename("gone.csv", "archive/gone.csv").await,
            ErrorKind::Permanent,
            "rename of a missing name",
        );
    }

    pub async fn delete_is_idempotent(f: Fixture) {
        f.put("x.csv", b"x").await;
        f.put("y.csv", b"y").await;
        f.location.delete("x.csv").await.expect("delete");
        assert_eq!(f.names("").await, vec!["y.csv"]);
        f.location.delete("x.csv").await.expect("delete again");
        f.location
            .delete("never/was.csv")
            .await
            .expect("delete what never was");
        assert_eq!(f.names("").await, vec!["y.csv"]);
    }

    pub async fn bad_names_are_refused(f: Fixture) {
        let local = f.local("ok.csv", b"fine");
        for bad in [
            "",
            "/etc/passwd",
            "../escape.csv",
            "a/../../b.csv",
            "a//b.csv",
            "dir/",
        ] {
            assert_kind(
                f.location.put_file(&local, bad).await,
                ErrorKind::Permanent,
                bad,
            );
            assert_kind(
                f.location.get_file(bad, &f.fresh("x")).await,
                ErrorKind::Permanent,
                bad,
            );
            assert_kind(
                f.location.rename("ok.csv", bad).await,
                ErrorKind::Permanent,
                bad,
            );
            assert_kind(
                f.location.rename(bad, "ok.csv").await,
                ErrorKind::Permanent,
                bad,
            );
            assert_kind(f.location.delete(bad).await, ErrorKind::Permanent, bad);
            if !bad.is_empty() {
                assert_kind(f.location.list(bad).await, ErrorKind::Permanent, bad);
            }
        }
        assert_eq!(f.list("").await, vec![]);
    }

    pub async fn failed_put_leaves_no_name(f: Fixture) {
        let missing = f.fresh("does-not-exist.csv");
        let e = f
            .location
            .put_file(&missing, "target.csv")
            .await
            .expect_err("put of a missing local file");
        assert!(!e.message.is_empty());
        assert_eq!(f.list("").await, vec![]);
    }

    pub async fn large_file_round_trip(f: Fixture) {
        // 20 MiB and a bit: several multipart parts on S3, many SFTP writes.
        let bytes = pseudo_random(20 * 1024 * 1024 + 12_345, 0x5eed);
        let local = f.local("large.bin", &bytes);
        drop(bytes);
        let expected = sha256_file(&local);
        f.location
            .put_file(&local, "big/large.bin")
            .await
            .unwrap_or_else(|e| panic!("put large: {}", e.describe()));
        assert_eq!(
            f.list("big").await,
            vec![entry("big/large.bin", 20 * 1024 * 1024 + 12_345)]
        );
        let back = f.fresh("large.back");
        let size = f
            .location
            .get_file("big/large.bin", &back)
            .await
            .unwrap_or_else(|e| panic!("get large: {}", e.describe()));
        assert_eq!(size, 20 * 1024 * 1024 + 12_345);
        assert_eq!(sha256_file(&back), expected);
    }
}

/// One test per check of the suite, against the location `$make` returns.
macro_rules! conformance {
    ($backend:ident, $make:path) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn put_then_get_round_trip() {
                checks::put_then_get_round_trip($make().await).await;
            }
            #[tokio::test]
            async fn overwrite_replaces_the_file() {
                checks::overwrite_replaces_the_file($make().await).await;
            }
            #[tokio::test]
            async fn list_is_sorted_with_sizes_and_skips_temporary_files() {
                checks::list_is_sorted_with_sizes_and_skips_temporary_files($make().await).await;
            }
            #[tokio::test]
            async fn get_of_a_missing_name_is_permanent() {
                checks::get_of_a_missing_name_is_permanent($make().await).await;
            }
            #[tokio::test]
            async fn rename_makes_folders_and_replaces_the_target() {
                checks::rename_makes_folders_and_replaces_the_target($make().await).await;
            }
            #[tokio::test]
            async fn delete_is_idempotent() {
                checks::delete_is_idempotent($make().await).await;
            }
            #[tokio::test]
            async fn bad_names_are_refused() {
                checks::bad_names_are_refused($make().await).await;
            }
            #[tokio::test]
            async fn failed_put_leaves_no_name() {
                checks::failed_put_leaves_no_name($make().await).await;
            }
            #[tokio::test]
            async fn large_file_round_trip() {
                checks::large_file_round_trip($make().await).await;
            }
        }
    };
}

// ---------------------------------------------------------------------
// Folder.

async fn folder_fixture() -> Fixture {
    let root = scratch();
    let location = Arc::new(FolderLocation::new(root.path().join("root")));
    Fixture {
        location,
        scratch: scratch(),
        _keep: vec![Box::new(root)],
    }
}

conformance!(folder, folder_fixture);

#[tokio::test]
async fn folder_put_leaves_no_temporary_file_and_clears_stale_ones() {
    let f = folder_fixture().await;
    let root = f.scratch.path().join("stale-root");
    let location = FolderLocation::new(&root);
    std::fs::create_dir_all(&root).expect("make root");
    // What an earlier, interrupted put of the same name left.
    std::fs::write(root.join(".a.csv.part-old"), b"half").expect("plant a stale part");
    std::fs::write(root.join(".b.csv.part-old"), b"other").expect("plant another");
    let local = f.local("a.csv", b"complete");
    location.put_file(&local, "a.csv").await.expect("put");
    let mut on_disk: Vec<String> = std::fs::read_dir(&root)
        .expect("read root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, vec![".b.csv.part-old", "a.csv"]);
    assert_eq!(
        std::fs::read(root.join("a.csv")).expect("read"),
        b"complete"
    );
}
