//! A private OpenSSH server for SFTP tests: its own host key, client keys,
//! `sshd_config` and loopback port, run as a child process of the test.
//!
//! Needs Debian's `openssh-server` (`/usr/sbin/sshd`; `scripts/services.sh`
//! installs it) and `ssh-keygen`. A missing `sshd` is a panic with the
//! command that installs it, never a skipped test.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `openssh-server` puts the server.
pub const SSHD: &str = "/usr/sbin/sshd";

/// An OpenSSH server on `127.0.0.1` serving SFTP (`internal-sftp`) to the
/// current user, who logs in with [`client_key`](Self::client_key).
/// [`stop`](Self::stop) ends it and every session it serves (as a crash
/// or a reboot would); [`resume`](Self::resume) starts it again on the
/// same port with the same keys. Killed, and its folder removed, on drop.
pub struct PrivateSshd {
    dir: PathBuf,
    port: u16,
    user: String,
    child: Option<Child>,
}

impl PrivateSshd {
    /// Generates the keys, writes the config and the client's
    /// `known_hosts`, starts `sshd` on a free port and waits until it
    /// accepts connections.
    ///
    /// # Panics
    ///
    /// When `sshd` or `ssh-keygen` is missing or the server does not come
    /// up (with its log).
    pub fn start() -> Self {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install Debian's OpenSSH server with \
             `apt-get install -y openssh-server` (scripts/services.sh does)"
        );
        let dir =
            std::env::temp_dir().join(format!("ferry-sshd-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(dir.join("root")).expect("make the sshd folder");
        let user = current_user();
        keygen(&dir.join("host_ed25519"), "ferry-test-host");
        keygen(&dir.join("client_ed25519"), "ferry-test-client");
        keygen(&dir.join("stranger_ed25519"), "ferry-test-stranger");
        std::fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys"))
            .expect("write authorized_keys");
        // Privilege separation needs this folder when sshd starts as root.
        if is_root() {
            std::fs::create_dir_all("/run/sshd").expect("make /run/sshd");
        }
        let port = free_port();
        let config = format!(
            "ListenAddress 127.0.0.1\n\
             Port {port}\n\
             HostKey {dir}/host_ed25519\n\
             PidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             AllowUsers {user}\n\
             StrictModes no\n\
             UsePAM no\n\
             MaxStartups 100\n\
             MaxSessions 100\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).expect("write sshd_config");
        let host_key =
            std::fs::read_to_string(dir.join("host_ed25519.pub")).expect("read the host key");
        std::fs::write(
            dir.join("known_hosts"),
            format!("[127.0.0.1]:{port} {}", host_key.trim_end()) + "\n",
        )
        .expect("write known_hosts");
        let mut sshd = Self {
            dir,
            port,
            user,
            child: None,
        };
        sshd.resume();
        sshd
    }

    /// Starts the server again after [`stop`](Self::stop), on the same
    /// port with the same keys, and waits until it accepts connections
    /// (nothing when it runs).
    pub fn resume(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the sshd log");
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {SSHD}: {e}"));
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                panic!(
                    "sshd exited ({status}) before accepting connections:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "sshd did not accept connections on {addr} within 15 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server and every session it serves (SIGKILL): open
    /// connections drop at once, new ones are refused until
    /// [`resume`](Self::resume).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Per-connection processes start sessions of their own, so killing
        // the listener's process group would miss them: kill the tree.
        let mut pids = descendants(child.id());
        pids.push(child.id());
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the server runs (between [`resume`](Self::resume) and
    /// [`stop`](Self::stop)).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user that may log in: the one running the tests.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The client's private key (OpenSSH format, no passphrase).
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_ed25519")
    }

    /// Another private key, which the server does not accept.
    pub fn stranger_key(&self) -> PathBuf {
        self.dir.join("stranger_ed25519")
    }

    /// The public half of [`stranger_key`](Self::stranger_key), in OpenSSH
    /// format (`ssh-ed25519 AAAA… comment`).
    pub fn stranger_public_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("stranger_ed25519.pub"))
            .expect("read the stranger's public key")
            .trim_end()
            .to_owned()
    }

    /// A `known_hosts` file holding the server's host key for
    /// `[127.0.0.1]:port`.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The host key's SHA-256 fingerprint as OpenSSH prints it
    /// (`SHA256:…`).
    pub fn host_key_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-l")
            .arg("-E")
            .arg("sha256")
            .arg("-f")
            .arg(self.dir.join("host_ed25519.pub"))
            .output()
            .expect("run ssh-keygen -l");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .expect("ssh-keygen -l prints a fingerprint")
            .to_owned()
    }

    /// An empty folder of the local file system, for the test to use as
    /// the SFTP root (an absolute path, as the server sees it too).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// A scratch folder beside the server's files, removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for PrivateSshd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn keygen(path: &Path, comment: &str) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run ssh-keygen ({e}): install it with `apt-get install -y openssh-client`"
            )
        });
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    let user = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!user.is_empty(), "id -un printed no user name");
    user
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// Every process descending from `pid`, found through `/proc`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(read) = std::fs::read_dir("/proc") {
        for entry in read.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((child, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(child, ppid) in &parents {
            if ppid == p && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}
