//! Test helpers: configs with unique stream names, and a private persistent
//! Redis that a test may kill and restart without disturbing the shared one.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_core::{MessageStream, Received};
use ferry_redis::RedisConfig;
use ferry_testkit::broker::next_within;
pub use ferry_testkit::broker::{expect_nothing, unique};

/// The shared Redis (no persistence) every test may use.
pub const SHARED: &str = "redis://127.0.0.1:6379/0";

/// Settings for the server at `url`, with a stream prefix of the test's
/// own and a short claim idle time.
pub fn config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::from_url(url).unwrap();
    config.stream_prefix = format!("{}.", unique("ferry-test"));
    config.claim_idle = Duration::from_secs(1);
    config
}

/// The next item of `stream`, failing the test after 15 s.
pub async fn next(stream: &mut MessageStream) -> Received {
    next_within(stream, Duration::from_secs(15)).await
}

/// A `redis-server` of the test's own on a free loopback port, writing an
/// append-only file synced on every write into a temporary directory;
/// killed and removed when dropped.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts the server and waits until it answers.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("ferry-redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Self {
            port,
            dir,
            child: Mutex::new(None),
        };
        server.launch().await;
        server
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server with SIGKILL, as a crash would (only what reached
    /// the append-only file survives), and starts it again on the same
    /// directory.
    pub async fn crash_and_restart(&self) {
        self.kill();
        self.launch().await;
    }

    fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn launch(&self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        *self.child.lock().unwrap() = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "private redis did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
