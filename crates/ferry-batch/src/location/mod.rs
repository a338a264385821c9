//! Where batch files are handed over: a local folder, an SFTP directory or
//! an S3 prefix, behind one small trait.
//!
//! # Contract
//!
//! * **Names** are relative to the location's root, `/`-separated
//!   (`orders-20261206-1.csv`, `archive/orders-20261206-1.csv`); never
//!   absolute, never with `..` ([`check_name`]).
//! * **`put_file` is atomic**: `name` appears complete or not at all. A
//!   folder and SFTP write a temporary name beside it
//!   (`.<basename>.part-<random>`) and rename it when complete;
//!   S3 makes an object visible only when its PUT or multipart upload
//!   completes. A `put_file` that fails leaves no `name` behind (at most a
//!   temporary file, removed when the next attempt at the same name
//!   succeeds, or by the operator).
//! * **Overwrites** are allowed: a re-run of a window puts the same names
//!   again, with the same bytes.
//! * **Errors** are [`Failure`]s that say whether trying again helps:
//!   a refused connection or a timeout is `Unavailable`, a missing file or
//!   a permission refused is `Permanent`.
//! * **`list`** returns the files directly under a folder of the location
//!   (not recursively), with their sizes, in name order; it skips names
//!   starting with `.` (temporary files among them) on every location.
//! * **`rename`** moves a file within the location, replacing the target
//!   (S3: copy, then delete the source; not atomic, but the receiver moves
//!   a batch's manifest last, so a batch is never half in two places for
//!   longer than that).

mod config;
mod folder;
mod s3;
mod sftp;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_core::Failure;
use futures::future::BoxFuture;

pub use config::LocationConfig;
pub use folder::FolderLocation;
pub use s3::{S3Location, S3Settings, PART_SIZE};
pub use sftp::{SftpAuth, SftpLocation, SftpSettings};

/// A file found by [`Location::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its name, relative to the location's root (with the listed folder).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A place files are put, listed, fetched and moved; see the [module
/// docs](self) for the contract every implementation keeps.
pub trait Location: Send + Sync + 'static {
    /// The location as an operator would name it in logs, secrets redacted
    /// (e.g. `sftp://ferry@127.0.0.1:2222/incoming`).
    fn describe(&self) -> String;

    /// Copies the local file `local` to `name`, atomically.
    fn put_file<'a>(&'a self, local: &'a Path, name: &'a str)
        -> BoxFuture<'a, Result<(), Failure>>;

    /// The files directly under `folder` (`""`: the root), in name order;
    /// empty when the folder does not exist.
    fn list<'a>(&'a self, folder: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, Failure>>;

    /// Copies `name` to the local file `local` (replaced), returning its
    /// size.
    fn get_file<'a>(
        &'a self,
        name: &'a str,
        local: &'a Path,
    ) -> BoxFuture<'a, Result<u64, Failure>>;

    /// Moves `from` to `to`, replacing `to`; folders are made as needed.
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<(), Failure>>;

    /// Deletes `name`; deleting what is not there succeeds.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Failure>>;
}

/// The URL forms [`open`] accepts, for error messages.
const ACCEPTED: &str =
    "file:///abs/path or a plain path, sftp://user@host:port/path, s3://bucket/prefix";

/// Makes the location `config` names: checks the URL and the settings its
/// scheme needs, loads key files; connects to nothing (the first call
/// does).
///
/// An unknown scheme, a missing or contradictory setting, a setting that
/// does not apply to the scheme, or an unreadable key file is a
/// `Permanent` failure naming the setting and the accepted forms.
pub async fn open(config: &LocationConfig) -> Result<Arc<dyn Location>, Failure> {
    Ok(match settings(config)? {
        Settings::Folder(path) => Arc::new(FolderLocation::new(path)),
        Settings::Sftp(s) => Arc::new(SftpLocation::new(s)?),
        Settings::S3(s) => Arc::new(S3Location::new(s)?),
    })
}

impl LocationConfig {
    /// What [`open`] would refuse but for the files it reads (an SFTP key
    /// and `known_hosts` are read when the location is opened): the URL,
    /// the settings its scheme needs and those it does not take. For a
    /// configuration file's check, on any machine.
    pub fn check(&self) -> Result<(), Failure> {
        settings(self).map(drop)
    }
}

/// A location's settings, checked.
enum Settings {
    Folder(std::path::PathBuf),
    Sftp(SftpSettings),
    S3(S3Settings),
}

/// The settings `config` names, checked; nothing read or connected.
fn settings(config: &LocationConfig) -> Result<Settings, Failure> {
    let url = config.url.trim();
    if url.is_empty() {
        return Err(Failure::permanent(format!(
            "batch location: `url` is empty (accepted: {ACCEPTED})"
        )));
    }
    let Some((scheme, _)) = url.split_once("://") else {
        only_for(config, "a folder", &[])?;
        return Ok(Settings::Folder(url.into()));
    };
    let parsed = url::Url::parse(url).map_err(|e| {
        Failure::permanent(format!(
            "batch location: `url` {url:?} is not a valid URL (accepted: {ACCEPTED})"
        ))
        .with_source(e)
    })?;
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            only_for(config, "a folder", &[])?;
            let path = parsed.to_file_path().map_err(|()| {
                Failure::permanent(format!(
                    "batch location: `url` {url:?} is not a local absolute path (write file:///abs/path)"
                ))
            })?;
            Ok(Settings::Folder(path))
        }
        "sftp" => {
            only_for(
                config,
                "sftp",
                &[
                    "private_key",
                    "password",
                    "known_hosts",
                    "accept_new_host_keys",
                ],
            )?;
            Ok(Settings::Sftp(sftp_settings(config, &parsed)?))
        }
        "s3" => {
            only_for(
                config,
                "s3",
                &[
                    "region",
                    "endpoint",
                    "access_key_id",
                    "secret_access_key",
                    "allow_http",
                ],
            )?;
            Ok(Settings::S3(s3_settings(config, &parsed)?))
        }
        other => Err(Failure::permanent(format!(
            "batch location: `url` has the unknown scheme {other:?} (accepted: {ACCEPTED})"
        ))),
    }
}

/// Refuses settings given that do not apply to the URL's scheme: a
/// `region` on an SFTP URL is a mistake worth saying.
fn only_for(config: &LocationConfig, scheme: &str, allowed: &[&str]) -> Result<(), Failure> {
    let given = [
        ("private_key", config.private_key.is_some()),
        ("password", config.password.is_some()),
        ("known_hosts", config.known_hosts.is_some()),
        ("accept_new_host_keys", config.accept_new_host_keys),
        ("region", config.region.is_some()),
        ("endpoint", config.endpoint.is_some()),
        ("access_key_id", config.access_key_id.is_some()),
        ("secret_access_key", config.secret_access_key.is_some()),
        ("allow_http", config.allow_http),
    ];
    match given
        .iter()
        .find(|(name, set)| *set && !allowed.contains(name))
    {
        Some((name, _)) => Err(Failure::permanent(format!(
            "batch location: `{name}` does not apply to {scheme} urls (remove it, or fix `url`; accepted: {ACCEPTED})"
        ))),
        None => Ok(()),
    }
}

fn sftp_settings(config: &LocationConfig, url: &url::Url) -> Result<SftpSettings, Failure> {
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            Failure::permanent(format!(
                "batch location: `url` names no host (write sftp://user@host:port/path; accepted: {ACCEPTED})"
            ))
        })?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let user = percent_decode(url.username());
    if user.is_empty() {
        return Err(Failure::permanent(
            "batch location: the sftp `url` names no user (write sftp://user@host:port/path)",
        ));
    }
    if url.password().is_some() {
        return Err(Failure::permanent(
            "batch location: the sftp `url` holds a password: put it in the `password` setting instead, \
             so that it never shows in logs",
        ));
    }
    let path = percent_decode(url.path());
    let root = match path.strip_prefix("/~") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            rest.trim_start_matches('/').to_owned()
        }
        _ => path,
    };
    let auth = match (&config.private_key, &config.password) {
        (Some(path), None) => SftpAuth::PrivateKey {
            path: path.clone(),
            passphrase: None,
        },
        (None, Some(password)) => SftpAuth::Password(password.clone()),
        (None, None) => {
            return Err(Failure::permanent(
                "batch location: sftp needs `private_key` (a private key file) or `password`; neither is set",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(Failure::permanent(
                "batch location: sftp takes `private_key` or `password`, not both",
            ))
        }
    };
    let known_hosts = match &config.known_hosts {
        Some(path) => path.clone(),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".ssh").join("known_hosts"))
            .ok_or_else(|| {
                Failure::permanent(
                    "batch location: sftp needs `known_hosts` (no HOME to find ~/.ssh/known_hosts)",
                )
            })?,
    };
    Ok(SftpSettings {
        host,
        port: url.port().unwrap_or(22),
        user,
        auth,
        known_hosts,
        accept_new_host_keys: config.accept_new_host_keys,
        root,
    })
}

fn s3_settings(config: &LocationConfig, url: &url::Url) -> Result<S3Settings, Failure> {
    let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
        Failure::permanent(format!(
            "batch location: the s3 `url` names no bucket (write s3://bucket/prefix; accepted: {ACCEPTED})"
        ))
    })?;
    match (&config.access_key_id, &config.secret_access_key) {
        (Some(_), None) => {
            return Err(Failure::permanent(
                "batch location: `access_key_id` is set but `secret_access_key` is not: give both, or neither \
                 (then AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or the instance's role are used)",
            ))
        }
        (None, Some(_)) => {
            return Err(Failure::permanent(
                "batch location: `secret_access_key` is set but `access_key_id` is not: give both, or neither",
            ))
        }
        _ => {}
    }
    if let Some(endpoint) = &config.endpoint {
        if endpoint.starts_with("http://") && !config.allow_http {
            return Err(Failure::permanent(format!(
                "batch location: `endpoint` {endpoint} is plain http: set `allow_http` to true to allow it"
            )));
        }
    }
    Ok(S3Settings {
        bucket: bucket.to_owned(),
        prefix: percent_decode(url.path()).trim_matches('/').to_owned(),
        region: config.region.clone(),
        endpoint: config.endpoint.clone(),
        access_key_id: config.access_key_id.clone(),
        secret_access_key: config.secret_access_key.clone(),
        allow_http: config.allow_http,
    })
}

/// Decodes `%XX` escapes of a URL part (invalid escapes stay as written).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuses a name that is empty, absolute, or climbs out of the root.
pub fn check_name(name: &str) -> Result<(), Failure> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(Failure::permanent(format!(
            "batch location: {name:?} is not a relative file name (no leading /, no empty, . or .. parts)"
        )));
    }
    Ok(())
}

/// The folder part of `name` (`""` at the root).
pub fn parent(name: &str) -> &str {
    name.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// The last part of `name` (the whole name at the root).
pub fn base_name(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(_, base)| base)
}

/// The start of every temporary name a put of `base` writes:
/// `.<base>.part-`.
pub(crate) fn part_prefix(base: &str) -> String {
    format!(".{base}.part-")
}

/// A fresh temporary name for a put of `base`: `.<base>.part-<random>`.
pub(crate) fn part_name(base: &str) -> String {
    format!("{}{}", part_prefix(base), uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_root() {
        for good in ["a.csv", "archive/a.csv", "x/y/z.manifest.json"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "/a", "../a", "a/../b", "a//b", "a/", "./a", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parent("archive/a.csv"), "archive");
        assert_eq!(parent("a.csv"), "");
        assert_eq!(base_name("archive/a.csv"), "a.csv");
        assert_eq!(base_name("a.csv"), "a.csv");
        assert!(part_name("a.csv").starts_with(".a.csv.part-"));
        assert_ne!(part_name("a.csv"), part_name("a.csv"));
    }

    fn sftp(url: &str) -> SftpSettings {
        let config = LocationConfig {
            password: Some("p".into()),
            known_hosts: Some("/k".into()),
            ..LocationConfig::new(url)
        };
        sftp_settings(&config, &url::Url::parse(url).expect("url")).expect("settings")
    }

    #[test]
    fn sftp_urls_give_host_port_user_and_root() {
        let s = sftp("sftp://ferry@files.example.com/srv/in%20box");
        assert_eq!(
            (s.host.as_str(), s.port, s.user.as_str(), s.root.as_str()),
            ("files.example.com", 22, "ferry", "/srv/in box")
        );
        let s = sftp("sftp://ferry@[::1]:2222/~/incoming");
        assert_eq!(
            (s.host.as_str(), s.port, s.root.as_str()),
            ("::1", 2222, "incoming")
        );
        assert_eq!(sftp("sftp://u%40corp@h/~").root, "");
        assert_eq!(sftp("sftp://u%40corp@h/~").user, "u@corp");
        assert_eq!(sftp("sftp://u@h").root, "");
        assert!(!s.accept_new_host_keys);
    }

    #[test]
    fn s3_urls_give_bucket_and_prefix() {
        let url = "s3://my-bucket/exports/daily/";
        let s = s3_settings(
            &LocationConfig::new(url),
            &url::Url::parse(url).expect("url"),
        )
        .expect("settings");
        assert_eq!(
            (s.bucket.as_str(), s.prefix.as_str()),
            ("my-bucket", "exports/daily")
        );
    }

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(percent_decode("a%20b%2Fc%zz%4"), "a b/c%zz%4");
        assert_eq!(percent_decode("%C3%A9t%C3%A9"), "été");
    }
}
