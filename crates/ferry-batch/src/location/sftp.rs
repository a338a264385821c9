//! A directory on an SFTP server as a [`Location`], on `russh` and
//! `russh-sftp` (pure Rust).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use ferry_core::Failure;
use futures::future::BoxFuture;
use futures::StreamExt;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{base_name, check_name, parent, part_name, part_prefix, Entry, Location};

/// How long connecting and logging in may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one SFTP request may wait for its answer.
const REQUEST_TIMEOUT_SECS: u64 = 30;
/// Reads and writes in flight at once on one transfer; with the chunk
/// size this bounds a transfer's memory (about 2 MiB).
const IN_FLIGHT: usize = 32;

/// Ciphers in the order offered: AES-GCM first, which the CPU's AES
/// instructions make several times faster than ChaCha20-Poly1305 in pure
/// Rust (russh's first choice); the rest as russh orders them.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];
/// The chunk every server must accept (the SFTP draft's minimum).
const SAFE_CHUNK: u64 = 32 * 1024;
/// The largest chunk used when the server announces larger limits.
const MAX_CHUNK: u64 = 64 * 1024;

/// How an [`SftpLocation`] logs in.
#[derive(Clone)]
pub enum SftpAuth {
    /// A private key file (OpenSSH or PEM format), with the passphrase that
    /// decrypts it if any.
    PrivateKey {
        /// The key file.
        path: PathBuf,
        /// Its passphrase.
        passphrase: Option<String>,
    },
    /// A password.
    Password(String),
}

impl std::fmt::Debug for SftpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SftpAuth::PrivateKey { path, .. } => f
                .debug_struct("PrivateKey")
                .field("path", path)
                .finish_non_exhaustive(),
            SftpAuth::Password(_) => f.write_str("Password(<redacted>)"),
        }
    }
}

/// Where an [`SftpLocation`] connects and how it checks the server.
#[derive(Clone, Debug)]
pub struct SftpSettings {
    /// The server's host name or address.
    pub host: String,
    /// Its port (22 by default in URLs).
    pub port: u16,
    /// The user to log in as.
    pub user: String,
    /// How to log in.
    pub auth: SftpAuth,
    /// The `known_hosts` file the server's host key must be in (entries
    /// for `host`, or `[host]:port` when the port is not 22).
    pub known_hosts: PathBuf,
    /// Accepts a host with no entry in `known_hosts` and appends its key
    /// there (trust on first use). A changed key is refused all the same.
    pub accept_new_host_keys: bool,
    /// The folder names are relative to: absolute (`/srv/incoming`), or
    /// relative to the login folder (`""`: the login folder itself).
    pub root: String,
}

/// A folder on an SFTP server: name `a/b.csv` is `<root>/a/b.csv`.
///
/// One SSH session is kept and shared by all calls; when it has dropped,
/// the call that finds out fails with `Unavailable` and the next one
/// connects again. The server's host key must be in the `known_hosts` file
/// (an unknown or changed key is refused, naming the file and the key's
/// fingerprint). `put_file` streams the file in chunks (memory stays
/// bounded) to `.<basename>.part-<random>` beside the target, flushes it
/// (`fsync@openssh.com` when offered) and renames it over the target with
/// `posix-rename@openssh.com` when offered, else by removing the target
/// first.
pub struct SftpLocation {
    settings: SftpSettings,
    key: Option<Arc<PrivateKey>>,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl std::fmt::Debug for SftpLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpLocation")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

struct Connection {
    handle: russh::client::Handle<HostKeyCheck>,
    sftp: RawSftpSession,
    posix_rename: bool,
    fsync: bool,
    write_chunk: u64,
    read_chunk: u64,
}

impl SftpLocation {
    /// A location on `settings`: loads the private key (a missing or
    /// unreadable key file, or a missing `known_hosts` file without
    /// `accept_new_host_keys`, is a permanent failure); connects at the
    /// first call.
    pub fn new(settings: SftpSettings) -> Result<Self, Failure> {
        if settings.host.is_empty() {
            return Err(Failure::permanent(
                "sftp location: no host (give the url as sftp://user@host:port/path)",
            ));
        }
        if settings.user.is_empty() {
            return Err(Failure::permanent(
                "sftp location: no user (give the url as sftp://user@host:port/path)",
            ));
        }
        if !settings.accept_new_host_keys && !settings.known_hosts.is_file() {
            return Err(Failure::permanent(format!(
                "sftp location: the known_hosts file {} does not exist (add the server's key with \
                 `ssh-keyscan -p {} {} >> {}`, or set accept_new_host_keys)",
                settings.known_hosts.display(),
                settings.port,
                settings.host,
                settings.known_hosts.display()
            )));
        }
        let key = match &settings.auth {
            SftpAuth::PrivateKey { path, passphrase } => Some(Arc::new(
                russh::keys::load_secret_key(path, passphrase.as_deref()).map_err(|e| {
                    Failure::permanent(format!(
                        "sftp location: cannot load the private_key {} (an OpenSSH or PEM private key file; \
                         its passphrase if it has one)",
                        path.display()
                    ))
                    .with_source(e)
                })?,
            )),
            SftpAuth::Password(_) => None,
        };
        Ok(Self {
            settings,
            key,
            connection: tokio::sync::Mutex::new(None),
        })
    }

    fn remote(&self, name: &str) -> String {
        let root = self.settings.root.trim_end_matches('/');
        match (root.is_empty(), self.settings.root.starts_with('/')) {
            (true, true) => format!("/{name}"),
            (true, false) => name.to_owned(),
            (false, _) => format!("{root}/{name}"),
        }
    }

    fn remote_folder(&self, folder: &str) -> String {
        if folder.is_empty() {
            let root = self.settings.root.trim_end_matches('/');
            match (root.is_empty(), self.settings.root.starts_with('/')) {
                (true, true) => "/".to_owned(),
                (true, false) => ".".to_owned(),
                (false, _) => root.to_owned(),
            }
        } else {
            self.remote(folder)
        }
    }

    fn server(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    /// The live connection, made (again) when there is none or it dropped.
    async fn connection(&self) -> Result<Arc<Connection>, Failure> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.handle.is_closed() {
                return Ok(conn.clone());
            }
            tracing::info!(server = %self.server(), "sftp location: the connection dropped; connecting again");
        }
        *slot = None;
        let conn = Arc::new(
            tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
                .await
                .map_err(|_| {
                    Failure::unavailable(format!(
                        "sftp location: connecting to {} took longer than {} s",
                        self.server(),
                        CONNECT_TIMEOUT.as_secs()
                    ))
                })??,
        );
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets `conn` when the connection is still the current one: the
    /// next call connects again.
    async fn forget(&self, conn: &Arc<Connection>) {
        let mut slot = self.connection.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
        }
    }

    async fn connect(&self) -> Result<Connection, Failure> {
        let s = &self.settings;
        let verdict = Arc::new(StdMutex::new(None));
        let checker = HostKeyCheck {
            host: s.host.clone(),
            port: s.port,
            known_hosts: s.known_hosts.clone(),
            accept_new: s.accept_new_host_keys,
            refusal: verdict.clone(),
        };
        let config = russh::client::Config {
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            // A bigger window keeps 32 writes in flight without waiting
            // for the server's window adjustments.
            window_size: 16 * 1024 * 1024,
            nodelay: true,
            preferred: russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(CIPHERS),
                ..russh::Preferred::DEFAULT
            },
            ..Default::default()
        };
        let connected =
            russh::client::connect(Arc::new(config), (s.host.as_str(), s.port), checker).await;
        let mut handle = match connected {
            Ok(handle) => handle,
            Err(e) => {
                let refused = verdict.lock().ok().and_then(|mut v| v.take());
                return Err(match refused {
                    Some(reason) => Failure::permanent(reason).with_source(e),
                    None => Failure::unavailable(format!(
                        "sftp location: cannot connect to {}",
                        self.server()
                    ))
                    .with_source(e),
                });
            }
        };
        let lost = |e: russh::Error| {
            Failure::unavailable(format!(
                "sftp location: the connection to {} dropped while logging in",
                self.server()
            ))
            .with_source(e)
        };
        let accepted = match (&s.auth, &self.key) {
            (SftpAuth::Password(password), _) => handle
                .authenticate_password(&s.user, password)
                .await
                .map_err(lost)?
                .success(),
            (SftpAuth::PrivateKey { .. }, Some(key)) => {
                let hash = handle
                    .best_supported_rsa_hash()
                    .await
                    .map_err(lost)?
                    .flatten();
                handle
                    .authenticate_publickey(&s.user, PrivateKeyWithHashAlg::new(key.clone(), hash))
                    .await
                    .map_err(lost)?
                    .success()
            }
            (SftpAuth::PrivateKey { path, .. }, None) => {
                return Err(Failure::permanent(format!(
                    "sftp location: the private_key {} was not loaded",
                    path.display()
                )))
            }
        };
        if !accepted {
            let how = match &s.auth {
                SftpAuth::Password(_) => "the password".to_owned(),
                SftpAuth::PrivateKey { path, .. } => format!("the private_key {}", path.display()),
            };
            return Err(Failure::permanent(format!(
                "sftp location: {} refused user {:?} with {how} (check the user, the password or that the key's \
                 public half is in the user's authorized_keys)",
                self.server(),
                s.user
            )));
        }
        let channel = handle.channel_open_session().await.map_err(lost)?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(lost)?;
        let mut sftp = RawSftpSession::new(channel.into_stream());
        sftp.set_timeout(REQUEST_TIMEOUT_SECS);
        let version = sftp.init().await.map_err(|e| {
            Failure::unavailable(format!(
                "sftp location: {} did not start its SFTP subsystem",
                self.server()
            ))
            .with_source(e)
        })?;
        let offered = |name: &str| version.extensions.contains_key(name);
        let (mut write_chunk, mut read_chunk) = (SAFE_CHUNK, SAFE_CHUNK);
        if offered(russh_sftp::extensions::LIMITS) {
            if let Ok(limits) = sftp.limits().await {
                if limits.max_write_len > 0 {
                    write_chunk = limits.max_write_len.min(MAX_CHUNK);
                }
                if limits.max_read_len > 0 {
                    read_chunk = limits.max_read_len.min(MAX_CHUNK);
                }
                sftp.set_limits(limits.into());
            }
        }
        Ok(Connection {
            posix_rename: offered(POSIX_RENAME),
            fsync: offered(russh_sftp::extensions::FSYNC),
            handle,
            sftp,
            write_chunk,
            read_chunk,
        })
    }

    /// Runs `op` on the connection; a failure that shows the connection
    /// dropped makes the next call connect again.
    async fn with_connection<'a, T, F, Fut>(&'a self, op: F) -> Result<T, Failure>
    where
        F: FnOnce(Arc<Connection>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>> + 'a,
    {
        let conn = self.connection().await?;
        let result = op(conn.clone()).await;
        if let Err(e) = &result {
            if e.kind == ferry_core::ErrorKind::Unavailable || conn.handle.is_closed() {
                self.forget(&conn).await;
            }
        }
        result.map_err(|mut e| {
            if conn.handle.is_closed() && e.kind != ferry_core::ErrorKind::Unavailable {
                e.kind = ferry_core::ErrorKind::Unavailable;
            }
            e
        })
    }

    async fn put(&self, local: &Path, name: &str) -> Result<(), Failure> {
        check_name(name)?;
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| local_failure(e, format!("cannot open {} to upload", local.display())))?;
        let base = base_name(name);
        let folder = parent(name);
        let dir = self.remote_folder(folder);
        let part = if folder.is_empty() {
            self.remote(&part_name(base))
        } else {
            self.remote(&format!("{folder}/{}", part_name(base)))
        };
        let target = self.remote(name);
        self.with_connection(|conn| async move {
            self.make_folders(&conn, folder).await?;
            let handle = conn
                .sftp
                .open(
                    &part,
                    OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
                    FileAttributes::default(),
                )
                .await
                .map_err(|e| self.failure(e, "cannot create", &part))?
                .handle;
            let written = async {
                send_file(&conn, &handle, file, local)
                    .await
                    .map_err(|e| match e {
                        Transfer::Local(f) => f,
                        Transfer::Remote(e) => self.failure(e, "cannot write", &part),
                    })?;
                if conn.fsync {
                    conn.sftp
                        .fsync(handle.as_str())
                        .await
                        .map_err(|e| self.failure(e, "cannot flush", &part))?;
                }
                Ok::<(), Failure>(())
            }
            .await;
            let closed = conn.sftp.close(handle.as_str()).await;
            let renamed = match (written, closed) {
                (Err(e), _) => Err(e),
                (Ok(()), Err(e)) => Err(self.failure(e, "cannot close", &part)),
                (Ok(()), Ok(_)) => self.replace(&conn, &part, &target).await,
            };
            if let Err(e) = renamed {
                if !conn.handle.is_closed() {
                    let _ = conn.sftp.remove(part.as_str()).await;
                }
                return Err(e);
            }
            self.remove_stale_parts(&conn, &dir, base).await;
            Ok(())
        })
        .await
    }

    /// Makes `folder` (relative to the root) and its parents, and the root.
    async fn make_folders(&self, conn: &Connection, folder: &str) -> Result<(), Failure> {
        let dir = self.remote_folder(folder);
        if is_dir(conn, &dir).await {
            return Ok(());
        }
        let mut path = String::new();
        for (i, part) in dir.split('/').enumerate() {
            if i > 0 || dir.starts_with('/') {
                path.push('/');
            }
            path.push_str(part);
            if part.is_empty() || part == "." {
                continue;
            }
            // Fails when it exists (or was just made by another call).
            let _ = conn
                .sftp
                .mkdir(path.as_str(), FileAttributes::default())
                .await;
        }
        if conn.handle.is_closed() {
            return Err(Failure::unavailable(format!(
                "sftp location: the connection to {} dropped",
                self.server()
            )));
        }
        if is_dir(conn, &dir).await {
            Ok(())
        } else {
            Err(Failure::permanent(format!(
                "sftp location: cannot make the folder {dir} on {}",
                self.server()
            )))
        }
    }

    /// Renames `from` over `to`.
    async fn replace(&self, conn: &Connection, from: &str, to: &str) -> Result<(), Failure> {
        if conn.posix_rename {
            let mut data = Vec::with_capacity(8 + from.len() + to.len());
            for s in [from, to] {
                data.extend_from_slice(&(s.len() as u32).to_be_bytes());
                data.extend_from_slice(s.as_bytes());
            }
            return match conn.sftp.extended(POSIX_RENAME, data).await {
                Ok(Packet::Status(status)) if status.status_code == StatusCode::Ok => Ok(()),
                Ok(Packet::Status(status)) => Err(self.failure(
                    SftpError::Status(status),
                    "cannot rename",
                    &format!("{from} to {to}"),
                )),
                Ok(_) => Err(self.failure(
                    SftpError::UnexpectedPacket,
                    "cannot rename",
                    &format!("{from} to {to}"),
                )),
                Err(e) => Err(self.failure(e, "cannot rename", &format!("{from} to {to}"))),
            };
        }
        // Plain SFTP rename refuses an existing target: remove it first
        // (after checking the source is there, so a bad call loses nothing).
        conn.sftp
            .stat(from)
            .await
            .map_err(|e| self.failure(e, "cannot rename", from))?;
        match conn.sftp.remove(to).await {
            Ok(_) => {}
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {}
            Err(e) => return Err(self.failure(e, "cannot replace", to)),
        }
        conn.sftp
            .rename(from, to)
            .await
            .map(drop)
            .map_err(|e| self.failure(e, "cannot rename", &format!("{from} to {to}")))
    }

    /// Removes the temporary files earlier failed puts of `base` left in
    /// `dir` (best effort).
    async fn remove_stale_parts(&self, conn: &Connection, dir: &str, base: &str) {
        let prefix = part_prefix(base);
        let Ok(names) = read_dir(conn, dir).await else {
            return;
        };
        for (file_name, _) in names {
            if file_name.starts_with(&prefix) {
                let _ = conn.sftp.remove(format!("{dir}/{file_name}")).await;
            }
        }
    }

    async fn list_folder(&self, folder: &str) -> Result<Vec<Entry>, Failure> {
        if !folder.is_empty() {
            check_name(folder)?;
        }
        let dir = self.remote_folder(folder);
        self.with_connection(|conn| async move {
            let found = match read_dir(&conn, &dir).await {
                Ok(found) => found,
                Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {
                    return Ok(Vec::new())
                }
                Err(e) => return Err(self.failure(e, "cannot list", &dir)),
            };
            let mut entries = Vec::new();
            for (file_name, attrs) in found {
                if file_name.starts_with('.') {
                    continue;
                }
                let attrs = if attrs.is_symlink() {
                    // A link is listed as what it points to.
                    match conn.sftp.stat(format!("{dir}/{file_name}")).await {
                        Ok(a) => a.attrs,
                        Err(_) => continue,
                    }
                } else {
                    attrs
                };
                if !attrs.is_regular() {
                    continue;
                }
                let name = if folder.is_empty() {
                    file_name
                } else {
                    format!("{folder}/{file_name}")
                };
                entries.push(Entry {
                    name,
                    size: attrs.size.unwrap_or(0),
                });
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        })
        .await
    }

    async fn get(&self, name: &str, local: &Path) -> Result<u64, Failure> {
        check_name(name)?;
        let remote = self.remote(name);
        self.with_connection(|conn| async move {
            let handle = match conn
                .sftp
                .open(&remote, OpenFlags::READ, FileAttributes::default())
                .await
            {
                Ok(h) => h.handle,
                Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {
                    return Err(Failure::permanent(format!(
                        "sftp location: no file {name:?} in {}",
                        self.describe()
                    ))
                    .with_source(SftpError::Status(s)))
                }
                Err(e) => return Err(self.failure(e, "cannot open", &remote)),
            };
            let fetched = async {
                let size = conn
                    .sftp
                    .fstat(handle.as_str())
                    .await
                    .map_err(|e| self.failure(e, "cannot read the size of", &remote))?
                    .attrs
                    .size
                    .unwrap_or(0);
                let mut out = tokio::fs::File::create(local)
                    .await
                    .map_err(|e| local_failure(e, format!("cannot create {}", local.display())))?;
                let copied = receive_file(&conn, &handle, size, &mut out, local).await;
                match copied {
                    Ok(n) => Ok(n),
                    Err(e) => {
                        drop(out);
                        let _ = tokio::fs::remove_file(local).await;
                        Err(match e {
                            Transfer::Local(f) => f,
                            Transfer::Remote(e) => self.failure(e, "cannot read", &remote),
                        })
                    }
                }
            }
            .await;
            let _ = conn.sftp.close(handle.as_str()).await;
            fetched
        })
        .await
    }

    async fn move_file(&self, from: &str, to: &str) -> Result<(), Failure> {
        check_name(from)?;
        check_name(to)?;
        let source = self.remote(from);
        let target = self.remote(to);
        self.with_connection(|conn| async move {
            // Checked first, so a missing source is told apart from a
            // failed rename (and no folder is made for nothing).
            match conn.sftp.stat(source.as_str()).await {
                Ok(_) => {}
                Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {
                    return Err(Failure::permanent(format!(
                        "sftp location: no file {from:?} in {} to move",
                        self.describe()
                    )))
                }
                Err(e) => return Err(self.failure(e, "cannot move", &source)),
            }
            self.make_folders(&conn, parent(to)).await?;
            self.replace(&conn, &source, &target).await
        })
        .await
    }

    async fn remove(&self, name: &str) -> Result<(), Failure> {
        check_name(name)?;
        let remote = self.remote(name);
        self.with_connection(|conn| async move {
            match conn.sftp.remove(remote.as_str()).await {
                Ok(_) => Ok(()),
                Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => Ok(()),
                Err(e) => Err(self.failure(e, "cannot delete", &remote)),
            }
        })
        .await
    }

    /// An SFTP error as a [`Failure`]: a missing file or a refused
    /// permission is permanent, a lost connection or a request without an
    /// answer unavailable, a server's generic failure transient.
    fn failure(&self, e: SftpError, what: &str, path: &str) -> Failure {
        let message = format!("sftp location: {what} {path} on {}", self.server());
        match &e {
            SftpError::Status(s) => match s.status_code {
                StatusCode::NoSuchFile
                | StatusCode::PermissionDenied
                | StatusCode::BadMessage
                | StatusCode::OpUnsupported => Failure::permanent(message),
                StatusCode::NoConnection | StatusCode::ConnectionLost => {
                    Failure::unavailable(message)
                }
                _ => Failure::transient(message),
            },
            SftpError::Limited(_) => Failure::permanent(message),
            _ => Failure::unavailable(message),
        }
        .with_source(e)
    }
}

/// The OpenSSH extension that renames over an existing target.
const POSIX_RENAME: &str = "posix-rename@openssh.com";

/// A transfer's failure: on the local side (already a [`Failure`]) or the
/// server's.
enum Transfer {
    Local(Failure),
    Remote(SftpError),
}

/// Writes `file` to the open remote `handle` in chunks, at most
/// [`IN_FLIGHT`] at once.
async fn send_file(
    conn: &Connection,
    handle: &str,
    mut file: tokio::fs::File,
    local: &Path,
) -> Result<(), Transfer> {
    let chunk = conn.write_chunk as usize;
    let mut in_flight: futures::stream::FuturesUnordered<BoxFuture<'_, Result<_, SftpError>>> =
        futures::stream::FuturesUnordered::new();
    let mut offset = 0u64;
    loop {
        let mut data = vec![0; chunk];
        let mut filled = 0;
        while filled < chunk {
            let n = file.read(&mut data[filled..]).await.map_err(|e| {
                Transfer::Local(local_failure(e, format!("cannot read {}", local.display())))
            })?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        data.truncate(filled);
        if in_flight.len() >= IN_FLIGHT {
            if let Some(written) = in_flight.next().await {
                written.map_err(Transfer::Remote)?;
            }
        }
        in_flight.push(Box::pin(conn.sftp.write(handle, offset, data)));
        offset += filled as u64;
    }
    while let Some(written) = in_flight.next().await {
        written.map_err(Transfer::Remote)?;
    }
    Ok(())
}

/// Copies the open remote `handle` of `size` bytes to `out`, reading
/// [`IN_FLIGHT`] chunks ahead; returns the bytes copied.
async fn receive_file(
    conn: &Connection,
    handle: &str,
    size: u64,
    out: &mut tokio::fs::File,
    local: &Path,
) -> Result<u64, Transfer> {
    let chunk = conn.read_chunk;
    let write_failed = |e: std::io::Error| {
        Transfer::Local(local_failure(
            e,
            format!("cannot write {}", local.display()),
        ))
    };
    let mut in_flight = futures::stream::FuturesOrdered::new();
    let mut next = 0u64;
    let mut copied = 0u64;
    loop {
        while next < size && in_flight.len() < IN_FLIGHT {
            in_flight.push_back(read_chunk(
                conn,
                handle,
                next,
                chunk.min(size - next) as u32,
            ));
            next += chunk;
        }
        let Some(data) = in_flight.next().await else {
            break;
        };
        let data = data?;
        out.write_all(&data).await.map_err(write_failed)?;
        copied += data.len() as u64;
    }
    // Whatever was appended since the size was read.
    loop {
        let data = read_chunk(conn, handle, copied, chunk as u32).await?;
        if data.is_empty() {
            break;
        }
        out.write_all(&data).await.map_err(write_failed)?;
        copied += data.len() as u64;
    }
    out.flush().await.map_err(write_failed)?;
    Ok(copied)
}

/// Reads `len` bytes at `offset` (fewer at the end of the file), asking
/// again when the server answers with less.
async fn read_chunk(
    conn: &Connection,
    handle: &str,
    offset: u64,
    len: u32,
) -> Result<Vec<u8>, Transfer> {
    let mut data: Vec<u8> = Vec::with_capacity(len as usize);
    while data.len() < len as usize {
        let at = offset + data.len() as u64;
        let want = len - data.len() as u32;
        match conn.sftp.read(handle, at, want).await {
            Ok(got) if got.data.is_empty() => break,
            Ok(got) => data.extend_from_slice(&got.data),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break,
            Err(e) => return Err(Transfer::Remote(e)),
        }
    }
    Ok(data)
}

/// The names and attributes in the remote folder `dir`, without `.` and
/// `..`.
async fn read_dir(
    conn: &Connection,
    dir: &str,
) -> Result<Vec<(String, FileAttributes)>, SftpError> {
    let handle = conn.sftp.opendir(dir).await?.handle;
    let mut found = Vec::new();
    let result = loop {
        match conn.sftp.readdir(handle.as_str()).await {
            Ok(name) => found.extend(
                name.files
                    .into_iter()
                    .filter(|f| f.filename != "." && f.filename != "..")
                    .map(|f| (f.filename, f.attrs)),
            ),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break Ok(found),
            Err(e) => break Err(e),
        }
    };
    let _ = conn.sftp.close(handle.as_str()).await;
    result
}

async fn is_dir(conn: &Connection, dir: &str) -> bool {
    conn.sftp.stat(dir).await.is_ok_and(|a| a.attrs.is_dir())
}

fn local_failure(e: std::io::Error, what: String) -> Failure {
    let failure = if e.kind() == std::io::ErrorKind::NotFound
        || e.kind() == std::io::ErrorKind::PermissionDenied
    {
        Failure::permanent(format!("sftp location: {what}"))
    } else {
        Failure::transient(format!("sftp location: {what}"))
    };
    failure.with_source(e)
}

/// Checks the server's host key against the `known_hosts` file; says why
/// it refused in `refusal`.
struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    refusal: Arc<StdMutex<Option<String>>>,
}

impl HostKeyCheck {
    fn refuse(&self, reason: String) -> Result<bool, russh::Error> {
        if let Ok(mut slot) = self.refusal.lock() {
            *slot = Some(reason);
        }
        Ok(false)
    }
}

impl russh::client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                return self.refuse(format!(
                    "sftp location: {}:{} offered a host certificate; only host keys listed in the known_hosts file {} are accepted",
                    self.host,
                    self.port,
                    self.known_hosts.display()
                ))
            }
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let entry = if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        };
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => Ok(true),
            Ok(false) if self.accept_new => {
                match russh::keys::known_hosts::learn_known_hosts_path(
                    &self.host,
                    self.port,
                    key,
                    &self.known_hosts,
                ) {
                    Ok(()) => {
                        tracing::warn!(
                            server = %entry,
                            %fingerprint,
                            known_hosts = %self.known_hosts.display(),
                            "sftp location: accepted a new host key and added it to known_hosts"
                        );
                        Ok(true)
                    }
                    Err(e) => self.refuse(format!(
                        "sftp location: cannot add the host key {fingerprint} of {entry} to the known_hosts file {}: {e}",
                        self.known_hosts.display()
                    )),
                }
            }
            Ok(false) => self.refuse(format!(
                "sftp location: the host key {fingerprint} of {entry} is not in the known_hosts file {} \
                 (check the fingerprint with the server's operator, then add it, e.g. `ssh-keyscan -p {} {} >> {}`)",
                self.known_hosts.display(),
                self.port,
                self.host,
                self.known_hosts.display()
            )),
            Err(russh::keys::Error::KeyChanged { line }) => self.refuse(format!(
                "sftp location: the host key of {entry} changed: the server offers {fingerprint}, line {line} of the \
                 known_hosts file {} holds another key (someone may be intercepting the connection; if the server's \
                 key really changed, replace that line)",
                self.known_hosts.display()
            )),
            Err(e) => self.refuse(format!(
                "sftp location: cannot read the known_hosts file {} to check the host key {fingerprint} of {entry}: {e}",
                self.known_hosts.display()
            )),
        }
    }
}

impl Location for SftpLocation {
    fn describe(&self) -> String {
        let s = &self.settings;
        let root = if s.root.starts_with('/') || s.root.is_empty() {
            s.root.clone()
        } else {
            format!("/~/{}", s.root)
        };
        format!("sftp://{}@{}:{}{}", s.user, s.host, s.port, root)
    }

    fn put_file<'a>(
        &'a self,
        local: &'a Path,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(self.put(local, name))
    }

    fn list<'a>(&'a self, folder: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, Failure>> {
        Box::pin(self.list_folder(folder))
    }

    fn get_file<'a>(
        &'a self,
        name: &'a str,
        local: &'a Path,
    ) -> BoxFuture<'a, Result<u64, Failure>> {
        Box::pin(self.get(name, local))
    }

    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(self.move_file(from, to))
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(self.remove(name))
    }
}
