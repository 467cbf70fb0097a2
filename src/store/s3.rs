//! Amazon S3 (and S3-compatible servers) as a source: the client, error classes, paginated
//! listing, and ranged GETs pinned with If-Match to the ETag recorded at planning. (S3 as a
//! destination lives in [`super::s3_sink`].)
//!
//! Credentials, region and endpoint come from the AWS SDK's default chain
//! (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_PROFILE`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_S3`, SSO, instance roles). With a custom
//! endpoint, path-style addressing is used. The SDK's own retries are off: blobway's retry loop
//! owns retries, so that every attempt is counted, classified and shown.

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use bytes::{Bytes, BytesMut};

use std::collections::BTreeMap;

use super::{
    Access, Chunk, ErrorClass, Listed, ObjectInfo, ObjectMeta, ObjectSource, Page, StoreError,
    StoreResult,
};

/// One S3 bucket.
#[derive(Clone, Debug)]
pub struct S3Store {
    pub(super) client: Client,
    pub(super) bucket: String,
    pub(super) endpoint: String,
    pub(super) stall_timeout: Duration,
    /// When the credentials the client signs with expire: a signed URL lives no longer.
    expiry: CredentialsExpiry,
    /// What this bucket and these credentials were found to refuse.
    quirks: std::sync::Arc<Quirks>,
}

/// What an S3 source was found to refuse, learned once and kept for the run.
#[derive(Debug, Default)]
struct Quirks {
    /// A HEAD asking for the checksum was refused (SSE-KMS without `kms:Decrypt`).
    checksum_denied: std::sync::atomic::AtomicBool,
    /// Whether a read naming a version ID is allowed (`s3:GetObjectVersion`), once tried.
    versions_readable: std::sync::OnceLock<bool>,
}

/// When the credentials a client signs with expire, as its identity cache last fetched them
/// (none for keys that never expire, or before the first fetch).
#[derive(Clone, Debug, Default)]
pub struct CredentialsExpiry(std::sync::Arc<std::sync::Mutex<Option<std::time::SystemTime>>>);

impl CredentialsExpiry {
    fn set(&self, expiry: Option<std::time::SystemTime>) {
        match self.0.lock() {
            Ok(mut slot) => *slot = expiry,
            Err(poisoned) => *poisoned.into_inner() = expiry,
        }
    }

    fn get(&self) -> Option<std::time::SystemTime> {
        match self.0.lock() {
            Ok(slot) => *slot,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

/// The SDK's credentials provider, noting the expiry of every set of credentials it hands the
/// client's identity cache (which asks again only as they near their end).
#[derive(Debug)]
struct NotingExpiry {
    inner: aws_sdk_s3::config::SharedCredentialsProvider,
    expiry: CredentialsExpiry,
}

impl aws_sdk_s3::config::ProvideCredentials for NotingExpiry {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            let credentials = self.inner.provide_credentials().await?;
            self.expiry.set(credentials.expiry());
            Ok(credentials)
        })
    }

    fn fallback_on_interrupt(&self) -> Option<aws_sdk_s3::config::Credentials> {
        self.inner.fallback_on_interrupt()
    }
}

/// How long a URL signed at `now` may live: `longest`, cut to end a few seconds before the
/// credentials that sign it expire (a URL outlives nothing that signed it), and at least a
/// second (a copy reads its source as it starts; one that meets an expired URL is signed
/// again with the credentials that replaced them).
pub fn presign_lifetime(
    now: std::time::SystemTime,
    expiry: Option<std::time::SystemTime>,
    longest: Duration,
) -> Duration {
    const MARGIN: Duration = Duration::from_secs(5);
    let Some(expiry) = expiry else {
        return longest;
    };
    let left = expiry.duration_since(now).unwrap_or_default();
    left.saturating_sub(MARGIN)
        .clamp(Duration::from_secs(1), longest.max(Duration::from_secs(1)))
}

/// Builds an S3 client from the SDK's default configuration chain, or from `access` where it
/// names a profile (whose credentials and region are then used instead of the environment's)
/// or an endpoint; returns it with the endpoint it talks to, for messages, and the expiry of
/// the credentials it signs with.
pub async fn client_for(access: &Access) -> anyhow::Result<(Client, String, CredentialsExpiry)> {
    if let Ok(secret) = std::env::var("AWS_SECRET_ACCESS_KEY") {
        crate::redact::register_secret(&secret);
    }
    if let Ok(token) = std::env::var("AWS_SESSION_TOKEN") {
        crate::redact::register_secret(&token);
    }
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .build(),
        );
    if let Some(profile) = &access.profile {
        loader = loader
            .profile_name(profile)
            .credentials_provider(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .profile_name(profile)
                    .build(),
            )
            .region(
                aws_config::profile::ProfileFileRegionProvider::builder()
                    .profile_name(profile)
                    .build(),
            );
    }
    if let Some(endpoint) = &access.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let shared = loader.load().await;
    if let Some(profile) = &access.profile {
        // A profile that gives no credentials is named now, with where it was looked for; its
        // keys are as secret as the environment's: kept out of every text.
        use aws_sdk_s3::config::ProvideCredentials as _;
        if let Some(provider) = shared.credentials_provider() {
            let credentials = provider.provide_credentials().await.map_err(|e| {
                let config =
                    std::env::var("AWS_CONFIG_FILE").unwrap_or_else(|_| "~/.aws/config".into());
                let keys = std::env::var("AWS_SHARED_CREDENTIALS_FILE")
                    .unwrap_or_else(|_| "~/.aws/credentials".into());
                anyhow::anyhow!(
                    "the AWS profile `{profile}` gives no credentials ({e}); check that it is \
                     defined in {config} or {keys}, and its keys"
                )
            })?;
            crate::redact::register_secret(credentials.secret_access_key());
            if let Some(token) = credentials.session_token() {
                crate::redact::register_secret(token);
            }
        }
    }
    let mut config = aws_sdk_s3::config::Builder::from(&shared)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if shared.region().is_none() {
        config = config.region(Region::new("us-east-1"));
    }
    // Expiring credentials are renewed a minute before their end, not seconds: a URL signed
    // with them (valid no longer than they are) has most of a minute to be used. (Longer
    // would have the cache reload credentials that providers hand out with a few minutes
    // left, such as IMDS, on every request.)
    config = config.identity_cache(
        aws_sdk_s3::config::IdentityCache::lazy()
            .buffer_time(Duration::from_secs(60))
            .build(),
    );
    let expiry = CredentialsExpiry::default();
    if let Some(inner) = shared.credentials_provider() {
        config = config.credentials_provider(NotingExpiry {
            inner,
            expiry: expiry.clone(),
        });
    }
    let custom = access
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
        .or_else(|| shared.endpoint_url().map(str::to_string));
    if let Some(endpoint) = &custom {
        config = config.endpoint_url(endpoint).force_path_style(true);
    }
    let region = shared
        .region()
        .map_or_else(|| "us-east-1".to_string(), |r| r.to_string());
    let endpoint = custom.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    Ok((Client::from_conf(config.build()), endpoint, expiry))
}

/// The buckets the credentials can see.
pub async fn list_buckets() -> StoreResult<Vec<String>> {
    let (client, endpoint, _) = client_for(&Access::default())
        .await
        .map_err(|e| StoreError::new(ErrorClass::Auth, None, format!("{e:#}")))?;
    let store = S3Store::with_client(
        client,
        "",
        &endpoint,
        crate::store::StoreSettings::default(),
    );
    let out = store
        .client
        .list_buckets()
        .send()
        .await
        .map_err(|e| store.error(e, "LIST buckets of", ""))?;
    Ok(out
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_string))
        .collect())
}

/// User metadata with lowercase keys.
pub(super) fn lowercase(
    meta: Option<&std::collections::HashMap<String, String>>,
) -> BTreeMap<String, String> {
    meta.into_iter()
        .flatten()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

fn object_info(object: &aws_sdk_s3::types::Object) -> Option<ObjectInfo> {
    let key = object.key()?;
    Some(ObjectInfo {
        key: key.to_string(),
        size: object.size().unwrap_or(0).max(0) as u64,
        etag: object.e_tag().unwrap_or_default().to_string(),
        modified: object.last_modified().map(|t| t.secs()),
    })
}

impl S3Store {
    /// Connects to `bucket` with the default credential chain (or `access`). Nothing is sent
    /// yet.
    pub async fn connect(
        bucket: &str,
        access: &Access,
        settings: crate::store::StoreSettings,
    ) -> anyhow::Result<Self> {
        let (client, endpoint, expiry) = client_for(access).await?;
        Ok(Self {
            expiry,
            ..Self::with_client(client, bucket, &endpoint, settings)
        })
    }

    /// Wraps an existing client talking to `endpoint`.
    pub fn with_client(
        client: Client,
        bucket: &str,
        endpoint: &str,
        settings: crate::store::StoreSettings,
    ) -> Self {
        Self {
            client,
            bucket: bucket.to_string(),
            endpoint: endpoint.to_string(),
            stall_timeout: settings.stall_timeout,
            expiry: CredentialsExpiry::default(),
            quirks: Default::default(),
        }
    }

    /// Whether reads may name version IDs (`s3:GetObjectVersion`, which `s3:GetObject` alone
    /// does not grant): tried once, with a look at `found` of `key`. Where they may not,
    /// objects are pinned by their ETag alone, as in an unversioned bucket.
    async fn versions_readable(&self, key: &str, etag: &str, found: &str) -> bool {
        if let Some(known) = self.quirks.versions_readable.get() {
            return *known;
        }
        let readable = match self.stat(key, Some(etag), Some(found), false).await {
            Err(e) if e.class == ErrorClass::Permission => {
                tracing::warn!(
                    "reading a version of s3://{}/{key} was refused (s3:GetObjectVersion): \
                     objects are pinned by their ETag alone",
                    self.bucket
                );
                false
            }
            _ => true,
        };
        *self.quirks.versions_readable.get_or_init(|| readable)
    }

    pub(super) fn error<E>(
        &self,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
        what: &str,
        key: &str,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let target = if key.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{key}", self.bucket)
        };
        let status = err.raw_response().map(|r| r.status().as_u16());
        let retry_after = err
            .raw_response()
            .and_then(|r| r.headers().get("retry-after"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(Duration::from_secs_f64);
        let code = err.code().unwrap_or_default().to_string();
        // The service's own message when it gave one; otherwise the SDK's reason, the whole
        // error chain (an answer the SDK could not read says why here, e.g. "invalid XML
        // root").
        let detail = match err.message() {
            Some(message) => message.to_string(),
            None => DisplayErrorContext(&err).to_string(),
        };
        let (class, hint) = match (&err, status) {
            (SdkError::ConstructionFailure(_), _) => {
                let text = DisplayErrorContext(&err).to_string();
                if text.contains("credential") {
                    (
                        ErrorClass::Auth,
                        "no AWS credentials were found; set AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
                    )
                } else {
                    (ErrorClass::Invalid, "")
                }
            }
            (SdkError::TimeoutError(_), _) => (ErrorClass::Transient, "the request timed out"),
            (SdkError::DispatchFailure(d), _) => {
                let text = DisplayErrorContext(&err).to_string();
                if text.contains("credential") {
                    (
                        ErrorClass::Auth,
                        "no usable AWS credentials; set AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
                    )
                } else if d.is_io() || d.is_timeout() {
                    (
                        ErrorClass::Transient,
                        "cannot reach the S3 endpoint; check it (AWS_ENDPOINT_URL, the \
                         profile's endpoint_url, or --source-endpoint/--dest-endpoint), \
                         AWS_REGION and the network",
                    )
                } else {
                    (ErrorClass::Transient, "")
                }
            }
            (_, Some(412)) => return StoreError::source_changed(key),
            (_, Some(429)) => (ErrorClass::Throttled, ""),
            (_, Some(503)) if code == "SlowDown" || code.is_empty() => (ErrorClass::Throttled, ""),
            // A copy S3 answered 200 with an `<Error>` body (the SDK makes it an error).
            (_, _) if code == "SlowDown" => (ErrorClass::Throttled, ""),
            (_, Some(404)) if code == "NoSuchUpload" => (
                ErrorClass::UploadLost,
                "the multipart upload expired or was aborted; it starts over",
            ),
            (_, Some(404)) => (
                ErrorClass::NotFound,
                match code.as_str() {
                    "NoSuchBucket" => "the bucket does not exist; check the name and AWS_REGION",
                    _ => "no such object; check the key",
                },
            ),
            (_, Some(400 | 401 | 403))
                if matches!(
                    code.as_str(),
                    "InvalidAccessKeyId"
                        | "SignatureDoesNotMatch"
                        | "ExpiredToken"
                        | "InvalidToken"
                        | "TokenRefreshRequired"
                        | "AuthorizationHeaderMalformed"
                ) =>
            {
                (
                    ErrorClass::Auth,
                    "the AWS credentials were rejected; check AWS_ACCESS_KEY_ID, \
                     AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (or AWS_PROFILE)",
                )
            }
            (_, Some(401)) => (
                ErrorClass::Auth,
                "the AWS credentials were rejected; check AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
            ),
            (_, Some(403)) if code.is_empty() => (
                ErrorClass::Permission,
                "access denied, or the credentials were rejected (this answer carries no \
                 reason); check the keys or profile, and that a source bucket allows \
                 s3:ListBucket and s3:GetObject, a destination bucket also s3:PutObject and \
                 s3:AbortMultipartUpload",
            ),
            (_, Some(403)) => (
                ErrorClass::Permission,
                "access denied; a source bucket needs s3:ListBucket and s3:GetObject, a \
                 destination bucket also s3:PutObject and s3:AbortMultipartUpload",
            ),
            (_, Some(400)) if code == "InvalidRange" => (ErrorClass::SourceChanged, ""),
            (_, Some(400 | 405 | 411 | 413 | 416)) => (ErrorClass::Invalid, ""),
            (_, Some(s)) if s >= 500 => (ErrorClass::Transient, ""),
            _ => (ErrorClass::Transient, ""),
        };
        // The hint leads: what to do comes before the SDK's account of what happened (which
        // can run to a thousand characters).
        let mut cause = code.clone();
        if !detail.is_empty() && detail != code {
            if !cause.is_empty() {
                cause.push_str(": ");
            }
            cause.push_str(&detail);
        }
        let mut message = format!("{what} {target} failed");
        match (hint.is_empty(), cause.is_empty()) {
            (true, true) => {}
            (true, false) => message.push_str(&format!(": {cause}")),
            (false, true) => message.push_str(&format!(": {hint}")),
            (false, false) => message.push_str(&format!(": {hint} ({cause})")),
        }
        if status.is_none() {
            // No answer at all: say where blobway was trying to go.
            message.push_str(&format!(" (endpoint {})", self.endpoint));
        }
        StoreError::new(class, status, message).with_retry_after(retry_after)
    }

    /// HEAD (of version `version`, where given): the object, its metadata, its version ID in
    /// a versioned bucket and, asked for with `checksum`, its own full-object CRC-64/NVME
    /// when S3 keeps one (asking needs `kms:Decrypt` on an SSE-KMS object).
    async fn stat(
        &self,
        key: &str,
        etag: Option<&str>,
        version: Option<&str>,
        checksum: bool,
    ) -> StoreResult<(ObjectInfo, Chunk)> {
        let mut head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .set_checksum_mode(checksum.then_some(aws_sdk_s3::types::ChecksumMode::Enabled));
        if let Some(etag) = etag {
            head = head.if_match(etag);
        }
        let out = tokio::time::timeout(self.stall_timeout, head.send())
            .await
            .map_err(|_| self.stalled("HEAD", key))?
            .map_err(|e| self.error(e, "HEAD", key))?;
        let info = ObjectInfo {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out.e_tag().unwrap_or_default().to_string(),
            modified: out.last_modified().map(|t| t.secs()),
        };
        let meta = ObjectMeta {
            content_type: out.content_type().map(str::to_string),
            content_encoding: out.content_encoding().map(str::to_string),
            cache_control: out.cache_control().map(str::to_string),
            pairs: lowercase(out.metadata()),
            tags: Default::default(),
        };
        let looked = Chunk {
            data: Bytes::new(),
            meta,
            // CRC-64/NVME is a full-object checksum by definition; a store that says
            // otherwise is not believed.
            source_crc64: crc64_of(out.checksum_crc64_nvme()).filter(|_| {
                !matches!(
                    out.checksum_type(),
                    Some(aws_sdk_s3::types::ChecksumType::Composite)
                )
            }),
            version_id: out.version_id().map(str::to_string),
        };
        Ok((info, looked))
    }

    pub(super) fn stalled(&self, what: &str, key: &str) -> StoreError {
        StoreError::transient(format!(
            "{what} s3://{}/{key} stalled: no bytes for {:.0?}",
            self.bucket, self.stall_timeout
        ))
    }
}

/// A CRC-64/NVME as S3 writes it (`x-amz-checksum-crc64nvme`: its eight bytes big-endian,
/// in base64); none when absent or malformed.
fn crc64_of(header: Option<&str>) -> Option<u64> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(header?)
        .ok()?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

impl S3Store {
    /// A GET of `key` (of its version `version`) signed to be valid for `lifetime`.
    async fn presign(
        &self,
        key: &str,
        version: Option<&str>,
        lifetime: Duration,
    ) -> StoreResult<String> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(lifetime)
            .map_err(|e| StoreError::new(ErrorClass::Invalid, None, e.to_string()))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .presigned(config)
            .await
            .map_err(|e| self.error(e, "sign a GET of", key))?;
        Ok(request.uri().to_string())
    }
}

#[async_trait]
impl ObjectSource for S3Store {
    fn copy_origin(&self) -> Option<crate::store::CopyOrigin> {
        Some(crate::store::CopyOrigin::S3 {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
        })
    }

    fn has_tags(&self) -> bool {
        true
    }

    async fn tags(&self, key: &str) -> StoreResult<crate::store::tags::Tags> {
        let call = self
            .client
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .send();
        let out = tokio::time::timeout(self.stall_timeout, call)
            .await
            .map_err(|_| self.stalled("GetObjectTagging", key))?
            .map_err(|e| {
                let unsupported = e.code() == Some("NotImplemented")
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 501);
                let mut err = self.error(e, "GetObjectTagging", key).on_read(key);
                if unsupported {
                    err.class = ErrorClass::Invalid;
                    err.message = format!(
                        "{}; this S3 store keeps no object tags: copy without --copy-tags",
                        err.message
                    );
                } else if err.class == ErrorClass::Permission {
                    err.message = format!(
                        "{} (--copy-tags reads tags with s3:GetObjectTagging)",
                        err.message
                    );
                }
                err
            })?;
        Ok(out
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect())
    }

    async fn look_at(&self, key: &str, etag: &str, version: Option<&str>) -> StoreResult<Chunk> {
        use std::sync::atomic::Ordering::Relaxed;
        let checksum = !self.quirks.checksum_denied.load(Relaxed);
        let looked = match self.stat(key, Some(etag), version, checksum).await {
            // An SSE-KMS object answers a HEAD that asks for its checksum only with
            // kms:Decrypt: without, it (and every later one) is looked at without asking.
            Err(e) if checksum && e.class == ErrorClass::Permission => {
                let again = self.stat(key, Some(etag), version, false).await;
                if again.is_ok() {
                    self.quirks.checksum_denied.store(true, Relaxed);
                }
                again
            }
            looked => looked,
        };
        let mut looked = looked.map_err(|e| e.on_read(key))?.1;
        // "null" names the one unversioned object, which a write replaces in place.
        looked.version_id = looked.version_id.filter(|v| v != "null");
        if version.is_none()
            && let Some(found) = looked.version_id.clone()
            && !self.versions_readable(key, etag, &found).await
        {
            looked.version_id = None;
        }
        Ok(looked)
    }

    async fn presign_get(&self, key: &str, version: Option<&str>) -> StoreResult<String> {
        // Signed for each attempt with the credentials the SDK holds now (refreshed as they
        // expire), valid for a short while (the copy that uses it starts at once) and never
        // past those credentials' end: their expiry is known once signing fetched them, so a
        // URL that would outlive them is signed again, shorter, with the same ones.
        const VALID_FOR: Duration = Duration::from_secs(15 * 60);
        let url = self.presign(key, version, VALID_FOR).await?;
        match presign_lifetime(std::time::SystemTime::now(), self.expiry.get(), VALID_FOR) {
            lifetime if lifetime < VALID_FOR => self.presign(key, version, lifetime).await,
            _ => Ok(url),
        }
    }

    async fn list(&self, prefix: &str, single: bool) -> StoreResult<Vec<ObjectInfo>> {
        if single {
            return Ok(vec![self.stat(prefix, None, None, false).await?.0]);
        }
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(e, "LIST", prefix))?;
            for object in page.contents().iter().filter_map(object_info) {
                if object.key.ends_with('/') && object.size == 0 {
                    continue; // a "folder" marker, not data
                }
                out.push(object);
            }
        }
        Ok(out)
    }

    async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Listed> {
        // StartAfter, not the opaque continuation token: the position survives a restart.
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(limit.clamp(1, 1000) as i32)
            .set_start_after(after.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.error(e, "LIST", prefix))?;
        let listed: Vec<ObjectInfo> = out.contents().iter().filter_map(object_info).collect();
        let next = match listed.last() {
            Some(last) if out.is_truncated().unwrap_or(false) => Some(last.key.clone()),
            _ => None,
        };
        Ok(Listed {
            objects: listed
                .into_iter()
                // A "folder" marker, not data.
                .filter(|o| !(o.key.ends_with('/') && o.size == 0))
                .collect(),
            next,
        })
    }

    async fn list_page(&self, prefix: &str, token: Option<String>) -> StoreResult<Page> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .delimiter("/")
            .max_keys(1000)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| self.error(e, "LIST", prefix))?;
        Ok(Page {
            dirs: out
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_string))
                .collect(),
            objects: out
                .contents()
                .iter()
                .filter_map(object_info)
                .filter(|o| o.key != prefix)
                .collect(),
            next: out
                .is_truncated()
                .unwrap_or(false)
                .then(|| out.next_continuation_token().map(str::to_string))
                .flatten(),
        })
    }

    async fn read_range(
        &self,
        key: &str,
        etag: &str,
        range: Range<u64>,
        buffer: BytesMut,
    ) -> StoreResult<Chunk> {
        self.read_version_range(key, etag, None, range, buffer)
            .await
    }

    async fn read_version_range(
        &self,
        key: &str,
        etag: &str,
        version: Option<&str>,
        range: Range<u64>,
        buffer: BytesMut,
    ) -> StoreResult<Chunk> {
        if range.is_empty() {
            return self.look_at(key, etag, version).await;
        }
        let expected = usize::try_from(range.end - range.start)
            .map_err(|_| StoreError::new(ErrorClass::Invalid, None, "range too large"))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .if_match(etag)
            .set_version_id(version.map(str::to_string))
            .send();
        let out = tokio::time::timeout(self.stall_timeout, request)
            .await
            .map_err(|_| self.stalled("GET", key))?
            .map_err(|e| self.error(e, "GET", key).on_read(key))?;
        let meta = ObjectMeta {
            content_type: out.content_type().map(str::to_string),
            content_encoding: out.content_encoding().map(str::to_string),
            cache_control: out.cache_control().map(str::to_string),
            pairs: lowercase(out.metadata()),
            tags: Default::default(),
        };
        let mut body = out.body;
        let mut buf = buffer;
        buf.reserve(expected);
        loop {
            match tokio::time::timeout(self.stall_timeout, body.next()).await {
                Err(_) => return Err(self.stalled("GET", key)),
                Ok(None) => break,
                Ok(Some(Ok(piece))) => {
                    if buf.len() + piece.len() > expected {
                        return Err(StoreError::transient(format!(
                            "GET s3://{}/{key}: the server sent more bytes than the range asked for",
                            self.bucket
                        )));
                    }
                    buf.extend_from_slice(&piece);
                }
                Ok(Some(Err(e))) => {
                    return Err(StoreError::transient(format!(
                        "GET s3://{}/{key}: the body broke off after {} of {expected} bytes: {}",
                        self.bucket,
                        buf.len(),
                        DisplayErrorContext(&e)
                    )));
                }
            }
        }
        if buf.len() != expected {
            return Err(StoreError::transient(format!(
                "GET s3://{}/{key}: short body, {} of {expected} bytes",
                self.bucket,
                buf.len()
            )));
        }
        Ok(Chunk {
            data: buf.freeze(),
            meta,
            source_crc64: None,
            version_id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::config::http::HttpResponse;

    #[test]
    fn a_signed_url_ends_before_its_credentials_do() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let longest = Duration::from_secs(900);
        let at = |secs| Some(now + Duration::from_secs(secs));
        assert_eq!(
            presign_lifetime(now, None, longest),
            longest,
            "keys that never expire"
        );
        assert_eq!(presign_lifetime(now, at(3600), longest), longest);
        assert_eq!(
            presign_lifetime(now, at(600), longest),
            Duration::from_secs(595)
        );
        assert_eq!(
            presign_lifetime(now, at(3), longest),
            Duration::from_secs(1)
        );
        let expired = Some(now - Duration::from_secs(60));
        assert_eq!(
            presign_lifetime(now, expired, longest),
            Duration::from_secs(1)
        );
    }

    /// A client whose credentials (static here; STS, SSO or IMDS ones in use) end `ends`.
    fn store_with_credentials_ending(ends: Option<std::time::SystemTime>) -> S3Store {
        let expiry = CredentialsExpiry::default();
        let credentials = aws_sdk_s3::config::Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            Some("token".into()),
            ends,
            "test",
        );
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:1")
            .force_path_style(true)
            .credentials_provider(NotingExpiry {
                inner: aws_sdk_s3::config::SharedCredentialsProvider::new(credentials),
                expiry: expiry.clone(),
            })
            .build();
        S3Store {
            expiry,
            ..S3Store::with_client(
                Client::from_conf(config),
                "b",
                "http://127.0.0.1:1",
                Default::default(),
            )
        }
    }

    fn expires_in(url: &str) -> u64 {
        url.split("X-Amz-Expires=")
            .nth(1)
            .and_then(|rest| rest.split('&').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no X-Amz-Expires in {url}"))
    }

    #[tokio::test]
    async fn a_signed_url_never_outlives_the_credentials_that_signed_it() {
        let soon = std::time::SystemTime::now() + Duration::from_secs(100);
        let url = store_with_credentials_ending(Some(soon))
            .presign_get("k", None)
            .await
            .expect("signed");
        assert!((90..=95).contains(&expires_in(&url)), "{url}");
        let url = store_with_credentials_ending(None)
            .presign_get("k", None)
            .await
            .expect("signed");
        assert_eq!(expires_in(&url), 900, "keys that never expire: 15 minutes");
    }

    #[test]
    fn a_full_object_crc64nvme_reads_as_s3_writes_it() {
        // The CRC-64/NVME of "123456789", as `x-amz-checksum-crc64nvme` carries it.
        assert_eq!(crc64_of(Some("rosUhgp5mIg=")), Some(0xae8b_1486_0a79_9888));
        assert_eq!(crc64_of(None), None);
        assert_eq!(crc64_of(Some("AAAA")), None, "three bytes are no CRC-64");
        assert_eq!(crc64_of(Some("not base64!")), None);
    }
    use aws_sdk_s3::operation::list_parts::ListPartsError;
    use aws_sdk_s3::primitives::SdkBody;

    #[test]
    fn an_answer_the_sdk_could_not_read_is_explained_by_the_sdk_reason() {
        let client = Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .build(),
        );
        let store = S3Store::with_client(client, "b", "http://127.0.0.1:1", Default::default());
        // What moto 5.2 made the SDK say of its ListParts answer: a 200 without a code or a
        // message, whose reason is only in the error chain.
        let raw = HttpResponse::new(
            200.try_into().expect("status"),
            SdkBody::from("<ListPartsResponse/>"),
        );
        let err = SdkError::service_error(
            ListPartsError::unhandled(
                "invalid XML root: expected ListPartsResult but got ListPartsResponse",
            ),
            raw,
        );
        let error = store.error(err, "ListParts", "big.bin");
        assert!(
            error.message.contains("expected ListPartsResult"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("s3://b/big.bin"),
            "{}",
            error.message
        );
    }
}
