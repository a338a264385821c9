//! An S3 bucket (or any S3-compatible service) as a [`Location`], on the
//! `object_store` crate.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::Failure;
use futures::future::BoxFuture;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{check_name, Entry, Location};

/// The size of one part of a multipart upload; files up to this size go
/// in one PUT.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// How many parts of one upload are sent at once; with [`PART_SIZE`] this
/// bounds the memory one `put_file` holds (about 5 parts).
const PARTS_IN_FLIGHT: usize = 4;

/// How an [`S3Location`] reaches its bucket.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// The bucket.
    pub bucket: String,
    /// The key prefix every name is under (`""`: the bucket's root), without
    /// leading or trailing `/`.
    pub prefix: String,
    /// The region; else `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// The endpoint of an S3-compatible service (e.g.
    /// `http://127.0.0.1:19325`); else `AWS_ENDPOINT`, else Amazon's.
    pub endpoint: Option<String>,
    /// The access key; else `AWS_ACCESS_KEY_ID` (or the instance's role).
    pub access_key_id: Option<String>,
    /// The secret key; else `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// Allows a plain `http://` endpoint.
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Objects under a prefix of an S3 bucket: name `a/b.csv` is the key
/// `<prefix>/a/b.csv`.
///
/// `put_file` sends a file of up to [`PART_SIZE`] bytes in one PUT and a
/// larger one as a multipart upload of [`PART_SIZE`] parts read from the
/// file as they are sent (memory stays bounded); either way the object
/// appears only when complete. A failed multipart upload is aborted.
/// `rename` copies, then deletes the source. `list` skips names starting
/// with `.`, as the other locations do.
#[derive(Debug, Clone)]
pub struct S3Location {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
}

impl S3Location {
    /// A location on `settings`; nothing is contacted until the first call.
    pub fn new(settings: S3Settings) -> Result<Self, Failure> {
        if settings.bucket.is_empty() {
            return Err(Failure::permanent(
                "s3 location: no bucket (give the url as s3://bucket/prefix)",
            ));
        }
        let prefix = settings.prefix.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            check_name(&prefix)?;
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300)),
            )
            // A few quick retries of a request; the caller's backoff does
            // the long waits.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(60),
            });
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(key) = &settings.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if settings.allow_http {
            builder = builder.with_allow_http(true);
        }
        let store = builder.build().map_err(|e| {
            Failure::permanent(format!(
                "s3 location: invalid settings for bucket {}",
                settings.bucket
            ))
            .with_source(e)
        })?;
        Ok(Self {
            store: Arc::new(store),
            bucket: settings.bucket,
            prefix,
            endpoint: settings.endpoint,
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix names are under (`""`: none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, name: &str) -> Result<ObjectPath, Failure> {
        let key = if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        };
        ObjectPath::parse(&key).map_err(|e| {
            Failure::permanent(format!("s3 location: {name:?} is not a valid object name"))
                .with_source(e)
        })
    }

    async fn put(&self, local: &Path, name: &str) -> Result<(), Failure> {
        check_name(name)?;
        let key = self.key(name)?;
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| local_failure(e, format!("cannot open {} to upload", local.display())))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| local_failure(e, format!("cannot read {}", local.display())))?
            .len();
        if size <= PART_SIZE as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes)
                .await
                .map_err(|e| local_failure(e, format!("cannot read {}", local.display())))?;
            self.store
                .put(&key, PutPayload::from(bytes))
                .await
                .map_err(|e| self.failure(e, "cannot upload", name))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(|e| self.failure(e, "cannot start the multipart upload of", name))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buffer = vec![0; 1024 * 1024];
        let sent = async {
            loop {
                let n = file
                    .read(&mut buffer)
                    .await
                    .map_err(|e| local_failure(e, format!("cannot read {}", local.display())))?;
                if n == 0 {
                    return Ok(());
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.failure(e, "cannot upload a part of", name))?;
                writer.write(&buffer[..n]);
            }
        }
        .await;
        match sent {
            Ok(()) => writer
                .finish()
                .await
                .map(drop)
                .map_err(|e| self.failure(e, "cannot complete the multipart upload of", name)),
            Err(e) => {
                // Leaves no parts behind to be billed; the object never
                // appeared.
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    async fn list_folder(&self, folder: &str) -> Result<Vec<Entry>, Failure> {
        let prefix = if folder.is_empty() {
            if self.prefix.is_empty() {
                None
            } else {
                Some(ObjectPath::parse(&self.prefix).map_err(|e| {
                    Failure::permanent("s3 location: invalid prefix").with_source(e)
                })?)
            }
        } else {
            check_name(folder)?;
            Some(self.key(folder)?)
        };
        let listed = self
            .store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|e| self.failure(e, "cannot list", folder))?;
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut entries: Vec<Entry> = listed
            .objects
            .into_iter()
            .filter(|o| o.location.filename().is_some_and(|n| !n.starts_with('.')))
            .filter_map(|o| {
                let key = o.location.as_ref();
                key.get(strip..).map(|name| Entry {
                    name: name.to_owned(),
                    size: o.size,
                })
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    async fn get(&self, name: &str, local: &Path) -> Result<u64, Failure> {
        check_name(name)?;
        let key = self.key(name)?;
        let got = self
            .store
            .get(&key)
            .await
            .map_err(|e| self.failure(e, "cannot download", name))?;
        let mut out = tokio::fs::File::create(local)
            .await
            .map_err(|e| local_failure(e, format!("cannot create {}", local.display())))?;
        let mut stream = got.into_stream();
        let mut size = 0u64;
        let copied = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.failure(e, "cannot download", name))?;
                out.write_all(&chunk)
                    .await
                    .map_err(|e| local_failure(e, format!("cannot write {}", local.display())))?;
                size += chunk.len() as u64;
            }
            out.flush()
                .await
                .map_err(|e| local_failure(e, format!("cannot write {}", local.display())))
        }
        .await;
        if let Err(e) = copied {
            drop(out);
            let _ = tokio::fs::remove_file(local).await;
            return Err(e);
        }
        Ok(size)
    }

    async fn move_object(&self, from: &str, to: &str) -> Result<(), Failure> {
        check_name(from)?;
        check_name(to)?;
        let source = self.key(from)?;
        let target = self.key(to)?;
        self.store
            .copy(&source, &target)
            .await
            .map_err(|e| self.failure(e, "cannot copy", from))?;
        self.store
            .delete(&source)
            .await
            .map_err(|e| self.failure(e, "cannot delete the moved", from))
    }

    async fn remove(&self, name: &str) -> Result<(), Failure> {
        check_name(name)?;
        let key = self.key(name)?;
        match self.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failure(e, "cannot delete", name)),
        }
    }

    /// An `object_store` error as a [`Failure`]: a missing object, a
    /// refused permission or a bad request is permanent, a service that
    /// cannot be reached is unavailable, the rest (a 5xx after the
    /// client's retries) transient.
    fn failure(&self, e: object_store::Error, what: &str, name: &str) -> Failure {
        use object_store::Error as E;
        let place = format!("{} {name:?}", self.describe());
        match &e {
            E::NotFound { .. } => {
                Failure::permanent(format!("s3 location: no object {name:?} in {}", self.describe()))
            }
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => Failure::permanent(format!(
                "s3 location: {what} {place}: access refused (check access_key_id, secret_access_key and the bucket policy)"
            )),
            E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::UnknownConfigurationKey { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. } => {
                Failure::permanent(format!("s3 location: {what} {place}"))
            }
            _ if unreachable(&e) => Failure::unavailable(format!(
                "s3 location: {what} {place}: the service cannot be reached"
            )),
            _ if e.to_string().contains("NoSuchBucket") => Failure::permanent(format!(
                "s3 location: {what} {place}: there is no bucket {} (create it, or fix the url)",
                self.bucket
            )),
            _ => Failure::transient(format!("s3 location: {what} {place}")),
        }
        .with_source(e)
    }
}

/// Whether the chain of `e` holds a transport failure: no connection, a
/// timeout, a connection dropped mid-request.
fn unreachable(e: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(http) = c.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            );
        }
        cause = c.source();
    }
    false
}

/// A local file error: the local side is at fault, no retry helps unless
/// the disk recovers.
fn local_failure(e: std::io::Error, what: String) -> Failure {
    let failure = if e.kind() == std::io::ErrorKind::NotFound
        || e.kind() == std::io::ErrorKind::PermissionDenied
    {
        Failure::permanent(format!("s3 location: {what}"))
    } else {
        Failure::transient(format!("s3 location: {what}"))
    };
    failure.with_source(e)
}

impl Location for S3Location {
    fn describe(&self) -> String {
        let mut out = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            out.push('/');
            out.push_str(&self.prefix);
        }
        if let Some(endpoint) = &self.endpoint {
            out.push_str(&format!(" at {endpoint}"));
        }
        out
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
        Box::pin(self.move_object(from, to))
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(self.remove(name))
    }
}
