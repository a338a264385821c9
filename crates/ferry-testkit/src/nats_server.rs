//! A private NATS server with JetStream, for tests that restart or kill
//! their broker without disturbing the shared one on 4222.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::TempDir;

/// A `nats-server -js` on a free loopback port, storing in a directory of
/// its own; killed on drop.
pub struct NatsServer {
    /// The port it listens on.
    pub port: u16,
    dir: TempDir,
    child: Mutex<Option<Child>>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub async fn start() -> Self {
        let port = free_port();
        let server = Self {
            port,
            dir: TempDir::new(),
            child: Mutex::new(None),
        };
        server.spawn().await;
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&self) {
        let spawn = |program: &str| {
            Command::new(program)
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(&self.dir.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        };
        let child = spawn("nats-server")
            .or_else(|_| spawn("/usr/sbin/nats-server"))
            .expect("start nats-server");
        *self.child.lock().unwrap() = Some(child);
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server (SIGKILL: nothing flushed that JetStream had not
    /// already written), keeping its storage.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and storage.
    pub async fn restart(&self) {
        self.kill();
        self.spawn().await;
    }
}

impl ferry_conformance::Server for NatsServer {
    async fn restart(&self) {
        NatsServer::restart(self).await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
