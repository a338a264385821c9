//! Test helpers: configs with unique names, and a private RabbitMQ node that
//! a test may restart or disconnect without disturbing the shared server.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_amqp::AmqpConfig;
use ferry_core::{MessageStream, Received};
use ferry_testkit::broker::next_within;
pub use ferry_testkit::broker::{expect_nothing, unique};

/// The shared RabbitMQ every test may use.
pub const SHARED: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Settings for the server at `url`, with an exchange of the test's own.
pub fn config(url: &str) -> AmqpConfig {
    let mut config = AmqpConfig::from_url(url).unwrap();
    config.exchange = unique("ferry-test");
    config
}

/// The next item of `stream`, failing the test after 15 s.
pub async fn next(stream: &mut MessageStream) -> Received {
    next_within(stream, Duration::from_secs(15)).await
}

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// A RabbitMQ node of the test's own, on free loopback ports, with its data
/// in a temporary directory; stopped and removed when dropped.
///
/// Runs the server's own start script as the current user (root here), so
/// its Erlang cookie is `~/.erlang.cookie`; the shared node keeps its own.
pub struct RabbitNode {
    name: String,
    port: u16,
    dir: PathBuf,
    /// The start script, reaped after a kill.
    child: Mutex<Option<Child>>,
}

impl RabbitNode {
    /// Starts the node and waits until it accepts AMQP connections.
    pub async fn start() -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let dir = std::env::temp_dir().join(format!("ferry-rabbit-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        let node = Self {
            name: format!("ferry-{id}@localhost"),
            port,
            dir,
            child: Mutex::new(None),
        };
        node.launch(free_port()).await;
        node
    }

    /// The node's AMQP URL.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the node and starts it again on the same data.
    pub async fn restart(&self) {
        self.ctl(&["stop"]);
        self.kill();
        self.launch(free_port()).await;
    }

    /// Kills the node with SIGKILL, as a crash would (only what the broker
    /// wrote to disk survives), and starts it again on the same data.
    ///
    /// RabbitMQ 3.10 loses a quorum queue created shortly before such a
    /// crash (its Ra member registry is written to disk lazily, and the
    /// queue never elects a leader again), so tests crash nodes with
    /// classic queues only.
    pub async fn crash_and_restart(&self) {
        self.kill();
        self.launch(free_port()).await;
    }

    fn kill(&self) {
        let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) else {
            return;
        };
        let pid = pid.trim();
        let _ = Command::new("kill").args(["-9", pid]).status();
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }

    /// The last lines of the node's logs, for a failure message.
    pub fn log_tail(&self) -> String {
        let mut tail = String::new();
        let logs = std::fs::read_dir(self.dir.join("log"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .chain([self.dir.join("server.log")]);
        for path in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(60);
            tail.push_str(&format!("--- {}\n", path.display()));
            for line in &lines[from..] {
                tail.push_str(line);
                tail.push('\n');
            }
        }
        tail
    }

    /// Closes every client connection, as a network failure would.
    pub fn close_all_connections(&self) {
        self.ctl(&["close_all_connections", "ferry test"]);
    }

    async fn launch(&self, dist_port: u16) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(SERVER)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server starts");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private rabbitmq did not start; see {}",
                self.dir.join("server.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn ctl(&self, args: &[&str]) {
        let status = Command::new(CTL)
            .args(["-n", &self.name])
            .args(args)
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl {args:?} failed");
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new(CTL)
            .args(["-n", &self.name, "stop"])
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether process `pid` runs (a zombie does not).
fn is_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
