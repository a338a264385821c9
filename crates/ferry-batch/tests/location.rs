//! One conformance suite for every batch [`Location`]: the same checks run
//! against a local folder, a real OpenSSH server over SFTP and moto's S3,
//! one `mod` per location, one test per check. Location-specific faults
//! (an unknown host key, a server stopped mid-upload, wrong credentials)
//! follow the suite.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_batch::location::{open, Entry, FolderLocation, Location, LocationConfig};
use ferry_core::{ErrorKind, Failure};
use ferry_testkit::s3::S3TestBucket;
use ferry_testkit::sftp::PrivateSshd;
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
        // Spares the server's memory (moto keeps objects in memory).
        f.location
            .delete("big/large.bin")
            .await
            .expect("delete large");
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
    let url = root.path().join("root").display().to_string();
    let location = open(&LocationConfig::new(url))
        .await
        .expect("open a folder");
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

#[tokio::test]
async fn folder_urls_open_the_same_folder() {
    let root = scratch();
    let by_url = open(&LocationConfig::new(format!(
        "file://{}",
        root.path().display()
    )))
    .await
    .expect("open file://");
    let by_path = open(&LocationConfig::new(root.path().display().to_string()))
        .await
        .expect("open a plain path");
    let s = scratch();
    let local = s.path().join("x");
    std::fs::write(&local, b"same").expect("write");
    by_url.put_file(&local, "x.csv").await.expect("put");
    assert_eq!(
        by_path.list("").await.expect("list"),
        vec![entry("x.csv", 4)]
    );
    assert_eq!(
        by_url.describe(),
        format!("file://{}", root.path().display())
    );
}

// ---------------------------------------------------------------------
// SFTP, against a private OpenSSH server.

fn sftp_config(sshd: &PrivateSshd) -> LocationConfig {
    LocationConfig {
        private_key: Some(sshd.client_key()),
        known_hosts: Some(sshd.known_hosts()),
        ..LocationConfig::new(format!(
            "sftp://{}@{}:{}{}",
            sshd.user(),
            sshd.host(),
            sshd.port(),
            sshd.root().join("incoming").display()
        ))
    }
}

async fn sftp_fixture() -> Fixture {
    let sshd = PrivateSshd::start();
    let location = open(&sftp_config(&sshd)).await.expect("open sftp");
    Fixture {
        location,
        scratch: scratch(),
        _keep: vec![Box::new(sshd)],
    }
}

conformance!(sftp, sftp_fixture);

#[tokio::test]
async fn sftp_refuses_an_unknown_host_key() {
    let sshd = PrivateSshd::start();
    let empty = sshd.dir().join("empty_known_hosts");
    std::fs::write(&empty, "").expect("write an empty known_hosts");
    let config = LocationConfig {
        known_hosts: Some(empty.clone()),
        ..sftp_config(&sshd)
    };
    let location = open(&config).await.expect("open");
    let e = assert_kind(
        location.list("").await,
        ErrorKind::Permanent,
        "unknown host key",
    );
    let text = e.describe();
    assert!(text.contains(&empty.display().to_string()), "{text}");
    assert!(text.contains(&sshd.host_key_fingerprint()), "{text}");
    assert!(text.contains("not in the known_hosts file"), "{text}");
    // Still refused on the next call: nothing was learnt.
    assert_kind(
        location.list("").await,
        ErrorKind::Permanent,
        "unknown host key again",
    );
    assert_eq!(std::fs::read_to_string(&empty).expect("read"), "");
}

#[tokio::test]
async fn sftp_refuses_a_changed_host_key() {
    let sshd = PrivateSshd::start();
    let wrong = sshd.dir().join("wrong_known_hosts");
    // Another key recorded for this very host and port.
    std::fs::write(
        &wrong,
        format!(
            "[{}]:{} {}\n",
            sshd.host(),
            sshd.port(),
            sshd.stranger_public_key()
        ),
    )
    .expect("write known_hosts");
    let config = LocationConfig {
        known_hosts: Some(wrong.clone()),
        accept_new_host_keys: true,
        ..sftp_config(&sshd)
    };
    let location = open(&config).await.expect("open");
    let e = assert_kind(
        location.list("").await,
        ErrorKind::Permanent,
        "changed host key",
    );
    let text = e.describe();
    assert!(text.contains("changed"), "{text}");
    assert!(text.contains(&wrong.display().to_string()), "{text}");
    assert!(text.contains(&sshd.host_key_fingerprint()), "{text}");
}

#[tokio::test]
async fn sftp_accepts_a_new_host_key_only_when_asked_and_remembers_it() {
    let sshd = PrivateSshd::start();
    let learnt = sshd.dir().join("learnt_known_hosts");
    let config = LocationConfig {
        known_hosts: Some(learnt.clone()),
        accept_new_host_keys: true,
        ..sftp_config(&sshd)
    };
    let location = open(&config).await.expect("open");
    assert_eq!(location.list("").await.expect("list"), vec![]);
    // Now known: a location that does not accept new keys gets in.
    let strict = open(&LocationConfig {
        known_hosts: Some(learnt),
        ..sftp_config(&sshd)
    })
    .await
    .expect("open strict");
    assert_eq!(
        strict.list("").await.expect("list with the learnt key"),
        vec![]
    );
}

#[tokio::test]
async fn sftp_wrong_credentials_are_permanent_with_a_clear_message() {
    let sshd = PrivateSshd::start();
    let stranger = open(&LocationConfig {
        private_key: Some(sshd.stranger_key()),
        ..sftp_config(&sshd)
    })
    .await
    .expect("open with a key the server does not know");
    let e = assert_kind(
        stranger.list("").await,
        ErrorKind::Permanent,
        "unknown client key",
    );
    assert!(e.message.contains("refused user"), "{}", e.describe());
    assert!(e.message.contains(sshd.user()), "{}", e.describe());
    assert!(
        e.message
            .contains(&sshd.stranger_key().display().to_string()),
        "{}",
        e.describe()
    );

    let password = open(&LocationConfig {
        private_key: None,
        password: Some("not-the-password".to_owned()),
        ..sftp_config(&sshd)
    })
    .await
    .expect("open with a password");
    let e = assert_kind(
        password.list("").await,
        ErrorKind::Permanent,
        "wrong password",
    );
    assert!(e.message.contains("the password"), "{}", e.describe());
    assert!(
        !e.describe().contains("not-the-password"),
        "{}",
        e.describe()
    );

    let missing = open(&LocationConfig {
        private_key: Some(sshd.dir().join("no-such-key")),
        ..sftp_config(&sshd)
    })
    .await;
    let e = assert_kind(
        missing.map(|_| ()),
        ErrorKind::Permanent,
        "missing key file",
    );
    assert!(e.message.contains("private_key"), "{}", e.describe());
}

#[tokio::test]
async fn sftp_reconnects_after_the_server_restarts() {
    let mut sshd = PrivateSshd::start();
    let location = open(&sftp_config(&sshd)).await.expect("open");
    let s = scratch();
    let local = s.path().join("a");
    std::fs::write(&local, b"before").expect("write");
    location
        .put_file(&local, "a.csv")
        .await
        .expect("put before");

    sshd.stop();
    assert_kind(
        location.list("").await,
        ErrorKind::Unavailable,
        "list while stopped",
    );
    sshd.resume();
    assert_eq!(
        location.list("").await.expect("list after the restart"),
        vec![entry("a.csv", 6)]
    );
}

#[tokio::test]
async fn sftp_server_stopped_mid_upload_leaves_no_file_and_the_next_put_succeeds() {
    let mut sshd = PrivateSshd::start();
    let location = open(&sftp_config(&sshd)).await.expect("open");
    let incoming = sshd.root().join("incoming");
    let s = scratch();
    // The file to upload is a pipe this test writes: the upload cannot
    // finish before the server is stopped, whatever the machine's speed.
    let pipe = s.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .expect("run mkfifo");
    assert!(made.success());

    let upload = {
        let location = location.clone();
        let pipe = pipe.clone();
        tokio::spawn(async move { location.put_file(&pipe, "big.bin").await })
    };
    let feeder = {
        let pipe = pipe.clone();
        let incoming = incoming.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut writer = std::fs::OpenOptions::new()
                .write(true)
                .open(&pipe)
                .expect("open the pipe");
            let block = pseudo_random(1024 * 1024, 7);
            for _ in 0..4 {
                writer.write_all(&block).expect("feed the upload");
            }
            // Wait until the server has written part of the temporary file.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let written: u64 = std::fs::read_dir(&incoming)
                    .map(|d| {
                        d.flatten()
                            .filter(|e| {
                                e.file_name()
                                    .to_string_lossy()
                                    .starts_with(".big.bin.part-")
                            })
                            .filter_map(|e| e.metadata().ok())
                            .map(|m| m.len())
                            .sum()
                    })
                    .unwrap_or(0);
                if written >= 1024 * 1024 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the upload never started"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            writer
        })
    };
    let mut writer = feeder.await.expect("feeder");
    sshd.stop();
    // More data, then the end of the file: the upload goes on and finds
    // the server gone. (Writes fail once the upload gave up and closed
    // the pipe.)
    let rest = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let block = pseudo_random(1024 * 1024, 8);
        for _ in 0..4 {
            if writer.write_all(&block).is_err() {
                break;
            }
        }
    });
    let result = upload.await.expect("upload task");
    rest.await.expect("feeder");
    let e = assert_kind(result, ErrorKind::Unavailable, "put while the server stops");
    assert!(!e.message.is_empty());
    assert!(
        !incoming.join("big.bin").exists(),
        "a partial big.bin appeared"
    );

    sshd.resume();
    assert_eq!(
        location.list("").await.expect("list after the restart"),
        vec![]
    );
    let bytes = pseudo_random(3 * 1024 * 1024 + 5, 9);
    let local = s.path().join("retry");
    std::fs::write(&local, &bytes).expect("write");
    location
        .put_file(&local, "big.bin")
        .await
        .expect("put after the restart");
    assert_eq!(
        std::fs::read(incoming.join("big.bin")).expect("read"),
        bytes
    );
    // The failed attempt's temporary file went with the successful one.
    let left: Vec<String> = std::fs::read_dir(&incoming)
        .expect("read incoming")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["big.bin"]);
}

// ---------------------------------------------------------------------
// S3, against moto.

fn s3_config(bucket: &S3TestBucket, prefix: &str) -> LocationConfig {
    LocationConfig {
        endpoint: Some(bucket.endpoint.clone()),
        allow_http: true,
        region: Some("us-east-1".to_owned()),
        access_key_id: Some("ferry-test".to_owned()),
        secret_access_key: Some("ferry-test-secret".to_owned()),
        ..LocationConfig::new(format!("s3://{}/{prefix}", bucket.bucket))
    }
}

async fn s3_fixture() -> Fixture {
    let bucket = S3TestBucket::create().await;
    let location = open(&s3_config(&bucket, "batches/in"))
        .await
        .expect("open s3");
    Fixture {
        location,
        scratch: scratch(),
        _keep: vec![Box::new(bucket)],
    }
}

conformance!(s3, s3_fixture);

/// The raw bucket, to look at what the location made.
fn raw_bucket(bucket: &S3TestBucket) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&bucket.bucket)
        .with_endpoint(&bucket.endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("ferry-test")
        .with_secret_access_key("ferry-test-secret")
        .build()
        .expect("raw bucket client")
}

#[tokio::test]
async fn s3_large_files_go_in_parts_small_ones_in_one_put_under_the_prefix() {
    use object_store::ObjectStoreExt;
    let bucket = S3TestBucket::create().await;
    let location = open(&s3_config(&bucket, "batches/in")).await.expect("open");
    let s = scratch();
    let big = s.path().join("big");
    std::fs::write(&big, pseudo_random(20 * 1024 * 1024, 3)).expect("write");
    let small = s.path().join("small");
    std::fs::write(&small, b"small").expect("write");
    location.put_file(&big, "big.bin").await.expect("put big");
    location
        .put_file(&small, "small.csv")
        .await
        .expect("put small");

    let raw = raw_bucket(&bucket);
    let head = raw
        .head(&"batches/in/big.bin".into())
        .await
        .expect("head big");
    // A multipart object's ETag ends in -<parts>: 20 MiB in 8 MiB parts.
    let etag = head.e_tag.expect("etag");
    assert!(etag.trim_matches('"').ends_with("-3"), "{etag}");
    let head = raw
        .head(&"batches/in/small.csv".into())
        .await
        .expect("head small");
    assert!(!head.e_tag.expect("etag").contains('-'));
}

#[tokio::test]
async fn s3_lists_only_its_prefix() {
    let bucket = S3TestBucket::create().await;
    let inside = open(&s3_config(&bucket, "a")).await.expect("open a");
    let beside = open(&s3_config(&bucket, "ab")).await.expect("open ab");
    let root = open(&s3_config(&bucket, "")).await.expect("open root");
    let s = scratch();
    let local = s.path().join("x");
    std::fs::write(&local, b"x").expect("write");
    inside.put_file(&local, "x.csv").await.expect("put");
    beside.put_file(&local, "y.csv").await.expect("put");
    assert_eq!(
        inside.list("").await.expect("list"),
        vec![entry("x.csv", 1)]
    );
    assert_eq!(
        beside.list("").await.expect("list"),
        vec![entry("y.csv", 1)]
    );
    assert_eq!(root.list("").await.expect("list"), vec![]);
    assert_eq!(
        root.list("a").await.expect("list"),
        vec![entry("a/x.csv", 1)]
    );
}

#[tokio::test]
async fn s3_that_cannot_be_reached_is_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let location = open(&LocationConfig {
        endpoint: Some(format!("http://{closed}")),
        allow_http: true,
        region: Some("us-east-1".to_owned()),
        access_key_id: Some("k".to_owned()),
        secret_access_key: Some("s".to_owned()),
        ..LocationConfig::new("s3://nowhere/p")
    })
    .await
    .expect("open");
    let s = scratch();
    let local = s.path().join("x");
    std::fs::write(&local, b"x").expect("write");
    assert_kind(
        location.put_file(&local, "x.csv").await,
        ErrorKind::Unavailable,
        "put",
    );
    assert_kind(location.list("").await, ErrorKind::Unavailable, "list");
}

// ---------------------------------------------------------------------
// Config.

#[tokio::test]
async fn bad_configs_are_permanent_and_name_the_setting() {
    async fn refused(config: LocationConfig, needle: &str) {
        match open(&config).await {
            Ok(l) => panic!("{config:?} opened {}", l.describe()),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::Permanent, "{}", e.describe());
                assert!(
                    e.message.contains(needle),
                    "{needle:?} not in {:?}",
                    e.message
                );
            }
        }
    }
    refused(
        LocationConfig::new("ftp://host/x"),
        "sftp://user@host:port/path",
    )
    .await;
    refused(LocationConfig::new("ftp://host/x"), "unknown scheme").await;
    refused(LocationConfig::new(""), "`url`").await;
    refused(LocationConfig::new("sftp://host/x"), "no user").await;
    refused(LocationConfig::new("sftp://u@host/x"), "`private_key`").await;
    refused(
        LocationConfig {
            password: Some("p".into()),
            ..LocationConfig::new("sftp://u:secret@host/x")
        },
        "`password`",
    )
    .await;
    refused(
        LocationConfig {
            password: Some("p".into()),
            known_hosts: Some("/no/such/known_hosts".into()),
            ..LocationConfig::new("sftp://u@host/x")
        },
        "/no/such/known_hosts",
    )
    .await;
    refused(
        LocationConfig {
            region: Some("eu-west-1".into()),
            ..LocationConfig::new("sftp://u@host/x")
        },
        "`region`",
    )
    .await;
    refused(
        LocationConfig {
            password: Some("p".into()),
            ..LocationConfig::new("/srv/out")
        },
        "`password`",
    )
    .await;
    refused(
        LocationConfig {
            access_key_id: Some("k".into()),
            ..LocationConfig::new("s3://bucket/p")
        },
        "`secret_access_key`",
    )
    .await;
    refused(
        LocationConfig {
            endpoint: Some("http://127.0.0.1:1".into()),
            ..LocationConfig::new("s3://bucket/p")
        },
        "`allow_http`",
    )
    .await;
    refused(LocationConfig::new("s3:///p"), "no bucket").await;
}

#[test]
fn location_config_refuses_unknown_fields_and_reads_every_setting() {
    let config: LocationConfig = serde_json::from_value(serde_json::json!({
        "url": "s3://b/p",
        "region": "eu-west-1",
        "endpoint": "http://127.0.0.1:19325",
        "access_key_id": "k",
        "secret_access_key": "s",
        "allow_http": true
    }))
    .expect("a valid config");
    assert_eq!(config.region.as_deref(), Some("eu-west-1"));
    assert!(config.allow_http);
    let e = serde_json::from_value::<LocationConfig>(serde_json::json!({
        "url": "s3://b/p",
        "secret_key": "s"
    }))
    .expect_err("an unknown field");
    assert!(e.to_string().contains("secret_key"), "{e}");
}

#[tokio::test]
async fn secrets_never_show() {
    let sshd = PrivateSshd::start();
    let sftp = LocationConfig {
        private_key: None,
        password: Some("hunter2-pw".into()),
        ..sftp_config(&sshd)
    };
    let location = open(&sftp).await.expect("open sftp");
    let shown = format!("{} {sftp:?}", location.describe());
    assert!(!shown.contains("hunter2-pw"), "{shown}");
    assert!(
        shown.contains(&format!("{}@127.0.0.1:{}", sshd.user(), sshd.port())),
        "{shown}"
    );

    let s3 = LocationConfig {
        access_key_id: Some("AKIDEXAMPLE".into()),
        secret_access_key: Some("wJalrXUtnFEMI-secret".into()),
        ..LocationConfig::new("s3://bucket/prefix")
    };
    let location = open(&s3).await.expect("open s3");
    let shown = format!("{} {s3:?}", location.describe());
    assert!(!shown.contains("wJalrXUtnFEMI-secret"), "{shown}");
    assert!(shown.contains("s3://bucket/prefix"), "{shown}");
}
