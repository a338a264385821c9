//! A fresh S3 bucket per test on moto's server (`scripts/sqs.sh` starts it
//! on `127.0.0.1:19325`; moto serves S3 and SQS on one port and accepts
//! any credentials).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// moto's endpoint: `FERRY_TEST_S3` when set, else `http://127.0.0.1:19325`.
pub fn s3_endpoint() -> String {
    std::env::var("FERRY_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:19325".to_owned())
}

/// An empty bucket of its own for one test, on [`s3_endpoint`].
pub struct S3TestBucket {
    /// The bucket's name (`ferry-t-…`).
    pub bucket: String,
    /// The endpoint, e.g. `http://127.0.0.1:19325`.
    pub endpoint: String,
}

impl S3TestBucket {
    /// Makes sure moto answers (running `scripts/sqs.sh` when it does not)
    /// and creates a fresh bucket.
    ///
    /// # Panics
    ///
    /// When moto cannot be started or refuses to create the bucket.
    pub async fn create() -> Self {
        let endpoint = s3_endpoint();
        let authority = endpoint
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("{endpoint}: the test S3 endpoint must be http://host:port"))
            .trim_end_matches('/')
            .to_owned();
        if TcpStream::connect(&authority).await.is_err() {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/sqs.sh");
            let status = tokio::process::Command::new("bash")
                .arg(script)
                .status()
                .await
                .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
            assert!(
                status.success(),
                "{script} could not start moto on {authority}"
            );
        }
        let bucket = format!("ferry-t-{}", uuid::Uuid::now_v7().simple());
        let status = request(&authority, "PUT", &format!("/{bucket}")).await;
        assert!(
            (200..300).contains(&status),
            "moto at {endpoint} answered {status} to creating bucket {bucket}"
        );
        Self { bucket, endpoint }
    }
}

/// Sends one unsigned, bodiless HTTP/1.1 request and returns the status
/// code (moto does not check signatures).
async fn request(authority: &str, method: &str, path: &str) -> u16 {
    let mut stream = TcpStream::connect(authority)
        .await
        .unwrap_or_else(|e| panic!("connect to moto at {authority}: {e}"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the request to moto");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .expect("read moto's answer");
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("moto answered no HTTP status: {text}"))
}
