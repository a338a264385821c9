//! A private, throwaway PostgreSQL cluster, for tests that stop, crash or
//! misconfigure their server without disturbing the shared one on 5432.
//!
//! The cluster is made with `initdb` in a temporary directory, listens on
//! a free loopback port with trust authentication (replication included),
//! and is stopped and removed on drop. The binaries are the ones
//! `pg_config --bindir` names. `initdb` and `postgres` refuse to run as
//! root: as root, they run as the OS user `postgres` (`runuser`), which
//! owns the directory.
//!
//! The methods block (they wait for `pg_ctl`): a start takes a fraction
//! of a second, crash recovery included.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::nats_server::free_port;

/// The OS user the server runs as when the tests run as root.
const OS_USER: &str = "postgres";

/// Settings every private cluster starts with; settings given to
/// [`PrivatePg::start_with`] come after them, so they win.
const SETTINGS: &[&str] = &[
    "listen_addresses = '127.0.0.1'",
    "wal_level = logical",
    "max_replication_slots = 10",
    "max_wal_senders = 10",
    "max_connections = 50",
    "shared_buffers = '32MB'",
    "fsync = off",
    "full_page_writes = off",
];

/// Trust for every local and loopback connection, replication included.
const HBA: &str = "\
local all all trust
host all all 127.0.0.1/32 trust
local replication all trust
host replication all 127.0.0.1/32 trust
";

/// How [`PrivatePg::stop`] stops the server (`pg_ctl stop -m …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Clients are disconnected, a shutdown checkpoint is written.
    Fast,
    /// Every process quits at once, as in a crash; the next start
    /// recovers from the WAL.
    Immediate,
}

impl Stop {
    fn as_arg(self) -> &'static str {
        match self {
            Stop::Fast => "fast",
            Stop::Immediate => "immediate",
        }
    }
}

/// A PostgreSQL cluster of its own on `127.0.0.1:<port>`; stopped
/// (immediately) and deleted on drop, passed or not.
pub struct PrivatePg {
    /// The port it listens on, the same across restarts.
    pub port: u16,
    /// Owned by the server's OS user; holds `data/` and `server.log`.
    dir: PathBuf,
    bin: PathBuf,
    as_os_user: bool,
}

impl PrivatePg {
    /// A new cluster with `wal_level = logical`, started.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A new cluster started with `settings` (`postgresql.conf` lines such
    /// as `"wal_level = replica"`) after the defaults.
    pub fn start_with(settings: &[&str]) -> Self {
        let bin = bindir();
        let as_os_user = running_as_root();
        let dir = std::env::temp_dir().join(format!(
            "ferry-pg-{}",
            &uuid::Uuid::now_v7().simple().to_string()[16..]
        ));
        let mut pg = Self {
            port: 0,
            dir,
            bin,
            as_os_user,
        };
        // From here on, drop removes whatever was made.
        pg.make_dir();
        let data = pg.data();
        let init = pg.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        assert!(init.status.success(), "initdb failed: {}", text(&init));
        let mut conf = String::from("\n# ferry-testkit private cluster\n");
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            path_str(&pg.dir)
        ));
        for line in SETTINGS.iter().chain(settings) {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(data.join("pg_hba.conf"), HBA).expect("write pg_hba.conf");
        // A free port may be taken between looking and binding: try others.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            match pg.try_start() {
                Ok(()) => return pg,
                Err(e) => last = e,
            }
        }
        panic!("the private PostgreSQL did not start: {last}");
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of database `name` on this cluster.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server; its data stays for [`start_again`](Self::start_again).
    pub fn stop(&self, how: Stop) {
        let out = self.pg_ctl(&["stop", "-m", how.as_arg()]);
        assert!(
            out.status.success(),
            "pg_ctl stop -m {}: {}",
            how.as_arg(),
            text(&out)
        );
    }

    /// Starts the stopped server again, on the same port and data, and
    /// waits until it accepts connections (after crash recovery, if it
    /// crashed).
    pub fn start_again(&self) {
        if let Err(e) = self.try_start() {
            panic!("the private PostgreSQL did not start again: {e}");
        }
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again).
    pub fn restart(&self, how: Stop) {
        self.stop(how);
        self.start_again();
    }

    /// The server's own log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn try_start(&self) -> Result<(), String> {
        let log = self.dir.join("server.log");
        let options = format!("-c port={}", self.port);
        let out = self.pg_ctl(&["start", "-l", path_str(&log), "-o", &options]);
        if out.status.success() {
            return Ok(());
        }
        // A failed start may leave a postmaster behind (it timed out).
        self.kill();
        Err(format!(
            "port {}: {}\n--- server log (end) ---\n{}",
            self.port,
            text(&out),
            tail(&self.server_log(), 30)
        ))
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data();
        let mut all = vec!["-D", path_str(&data), "-w", "-t", "60"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    /// Runs one of the server's binaries, as the server's OS user when we
    /// are root.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program);
        let mut command = if self.as_os_user {
            let mut c = Command::new("runuser");
            c.args(["-u", OS_USER, "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
    }

    /// Creates the directory, owned by the server's OS user.
    fn make_dir(&self) {
        if self.as_os_user {
            let out = Command::new("runuser")
                .args(["-u", OS_USER, "--", "mkdir", "-m", "700"])
                .arg(&self.dir)
                .output()
                .expect("run runuser");
            assert!(
                out.status.success(),
                "create {} as {OS_USER}: {}",
                self.dir.display(),
                text(&out)
            );
        } else {
            std::fs::create_dir_all(&self.dir).expect("create the cluster's directory");
        }
    }

    /// Stops the server at once, whatever state it is in: `pg_ctl stop
    /// -m immediate`, else SIGKILL to the postmaster its pid file names.
    fn kill(&self) {
        let data = self.data();
        let pid_file = data.join("postmaster.pid");
        if !pid_file.exists() {
            return;
        }
        let out = self.pg_ctl(&["stop", "-m", "immediate"]);
        if out.status.success() || !pid_file.exists() {
            return;
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next().map(str::trim).map(str::to_owned))
            .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `pg_config --bindir`, else PostgreSQL 15's Debian location.
fn bindir() -> PathBuf {
    Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// Whether this process runs as root (uid 0).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
