//! A location as configured: one URL and the settings its scheme needs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where batch files go (or come from), as written in Ferry's config:
///
/// ```toml
/// url = "sftp://ferry@files.example.com:22/incoming"
/// private_key = "/etc/ferry/id_ed25519"
/// known_hosts = "/etc/ferry/known_hosts"
/// ```
///
/// [`open`](super::open) checks it and makes the [`Location`](super::Location).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationConfig {
    /// The location: a local folder as `file:///abs/path` or a plain path
    /// (`/srv/batches`, `./out`); an SFTP folder as
    /// `sftp://user@host[:port]/abs/path` (port 22 by default;
    /// `sftp://user@host/~/path` is relative to the user's login folder);
    /// or an S3 prefix as `s3://bucket[/prefix]`.
    pub url: String,

    /// SFTP: the private key file to log in with (OpenSSH or PEM format,
    /// without a passphrase). Give this or `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PathBuf>,

    /// SFTP: the password to log in with. Give this or `private_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,

    /// SFTP: the `known_hosts` file the server's host key must be listed
    /// in (as `host` for port 22, else `[host]:port`); default
    /// `~/.ssh/known_hosts`. An unknown or changed key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,

    /// SFTP: accept a server whose host key is not yet in `known_hosts`,
    /// and add it there (trust on first use); a changed key is refused all
    /// the same. Default `false`.
    #[serde(default)]
    pub accept_new_host_keys: bool,

    /// S3: the bucket's region; default `AWS_REGION` / `AWS_DEFAULT_REGION`
    /// from the environment, else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,

    /// S3: the endpoint of an S3-compatible service (MinIO, moto, Ceph…),
    /// e.g. `http://127.0.0.1:19325`; default `AWS_ENDPOINT`, else Amazon
    /// S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// S3: the access key id; default `AWS_ACCESS_KEY_ID` (or the
    /// credentials of the instance's or task's role). Give it together
    /// with `secret_access_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,

    /// S3: the secret access key; default `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,

    /// S3: allow a plain `http://` endpoint (a local test server). Default
    /// `false`.
    #[serde(default)]
    pub allow_http: bool,
}

impl LocationConfig {
    /// A config with only `url` set.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

/// Shows everything but the password and the secret key.
impl std::fmt::Debug for LocationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("LocationConfig")
            .field("url", &self.url)
            .field("private_key", &self.private_key)
            .field("password", &redacted(&self.password))
            .field("known_hosts", &self.known_hosts)
            .field("accept_new_host_keys", &self.accept_new_host_keys)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("allow_http", &self.allow_http)
            .finish()
    }
}
