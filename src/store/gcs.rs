//! Google Cloud Storage as a destination, through the JSON API's resumable uploads: the upload
//! begins by opening a session (carrying the object's metadata) whose URI is the session
//! blobway records; chunks are PUT in order with `Content-Range`, every one but the last a
//! multiple of 256 KiB; the last one names the total and finalizes the object, which appears
//! whole at that moment. A status query (`Content-Range: bytes */*`) tells how many bytes the
//! session holds, which is how a resumed or retried upload knows where to go on. Objects of
//! one chunk go up with one multipart upload carrying a CRC32C the server checks.
//!
//! Endpoint and credentials: `STORAGE_EMULATOR_HOST` (e.g. `localhost:9023`) talks to an
//! emulator without credentials, as Google's client libraries do; otherwise requests go to
//! `https://storage.googleapis.com` with an OAuth token from Application Default Credentials
//! (`GOOGLE_APPLICATION_CREDENTIALS`, `gcloud auth application-default login`, the metadata
//! server, or the `gcloud` CLI), refreshed before it expires — or, when set, the fixed token in
//! `GOOGLE_OAUTH_ACCESS_TOKEN`. New buckets are created in `GOOGLE_CLOUD_PROJECT`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::{
    BlockRef, Checksum, DestObject, ErrorClass, ObjectMeta, ObjectSink, PlannedBlock, SinkLimits,
    StoreError, StoreResult, StoreSettings, Upload,
};

const MIB: u64 = 1 << 20;

/// Every chunk but the last must be a multiple of this.
pub const GRANULARITY: u64 = 256 * 1024;

pub const LIMITS: SinkLimits = SinkLimits {
    max_block: 5 * 1024 * MIB,
    max_blocks: 100_000,
    min_block: GRANULARITY,
    granularity: GRANULARITY,
    max_single_put: 5 * 1024 * MIB,
    sequential: true,
    shared_blocks: false,
    max_object_size: 5 << 40, // GCS caps an object at 5 TiB
};

/// One GCS bucket.
#[derive(Clone)]
pub struct GcsStore {
    http: reqwest::Client,
    base: String,
    bucket: String,
    auth: Auth,
    project: String,
    settings: StoreSettings,
}

/// How requests are authorized.
#[derive(Clone)]
enum Auth {
    /// An emulator: no credentials.
    None,
    /// A fixed token from the environment.
    Fixed(String),
    /// Application Default Credentials: tokens fetched and refreshed by the provider.
    Provider(Arc<dyn gcp_auth::TokenProvider>),
}

/// The OAuth scope blobway asks for: reading and writing objects and buckets.
const SCOPES: &[&str] = &["https://www.googleapis.com/auth/devstorage.read_write"];

/// How much of an upload session the server holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    /// The first this many bytes.
    Holds(u64),
    /// The object is finalized, with the size the store reported (when it did).
    Complete(Option<u64>),
}

/// The size in the object resource a finalizing answer carries, when it carries one.
async fn final_size(response: reqwest::Response) -> Option<u64> {
    response
        .json::<ObjectResource>()
        .await
        .ok()
        .and_then(|o| o.size?.parse::<u64>().ok())
}

/// Whether a finalized size (when known) is the planned total; the size found when it is not.
fn final_size_matches(size: Option<u64>, total: u64) -> Result<(), u64> {
    match size {
        Some(size) if size != total => Err(size),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
struct ObjectResource {
    name: String,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct ObjectList {
    #[serde(default)]
    items: Vec<ObjectResource>,
    #[serde(default, rename = "nextPageToken")]
    next_page_token: Option<String>,
}

impl ObjectResource {
    fn dest(self) -> (String, DestObject) {
        let size = self.size.and_then(|s| s.parse().ok()).unwrap_or(0);
        let meta = self
            .metadata
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        (self.name, DestObject { size, meta })
    }
}

/// Everything but RFC 3986's unreserved characters, which stay as they are (some servers,
/// the emulator among them, match bucket names before decoding).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a path segment or query value.
fn encode(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

impl GcsStore {
    /// Connects to `bucket` with the environment's endpoint and credentials. Nothing is sent
    /// to the bucket yet.
    pub async fn connect(
        bucket: &str,
        access: &super::Access,
        settings: StoreSettings,
    ) -> anyhow::Result<Self> {
        let emulator = std::env::var("STORAGE_EMULATOR_HOST")
            .ok()
            .filter(|h| !h.is_empty());
        let token = std::env::var("GOOGLE_OAUTH_ACCESS_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        // An endpoint named for this side (a private or restricted Google endpoint, or a
        // test server) is used with the usual credentials; an emulator needs none.
        let base = match (&access.endpoint, &emulator) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, Some(host)) if host.starts_with("http://") || host.starts_with("https://") => {
                host.trim_end_matches('/').to_string()
            }
            (None, Some(host)) => format!("http://{}", host.trim_end_matches('/')),
            (None, None) => "https://storage.googleapis.com".to_string(),
        };
        let auth = match (&emulator, token) {
            (Some(_), _) => Auth::None,
            (None, Some(token)) => {
                crate::redact::register_secret(&token);
                Auth::Fixed(token)
            }
            (None, None) => Auth::Provider(gcp_auth::provider().await.map_err(|e| {
                anyhow::anyhow!(
                    "no Google Cloud Storage credentials ({e}): set \
                     GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run `gcloud \
                     auth application-default login`, or set GOOGLE_OAUTH_ACCESS_TOKEN; \
                     STORAGE_EMULATOR_HOST for an emulator"
                )
            })?),
        };
        Self::with_auth(base, bucket, auth, settings)
    }

    /// A store talking to an emulator at `base` (e.g. `http://127.0.0.1:9023`), without
    /// credentials — what `STORAGE_EMULATOR_HOST` selects.
    pub fn emulator(base: &str, bucket: &str, settings: StoreSettings) -> anyhow::Result<Self> {
        Self::with_auth(
            base.trim_end_matches('/').to_string(),
            bucket,
            Auth::None,
            settings,
        )
    }

    fn with_auth(
        base: String,
        bucket: &str,
        auth: Auth,
        settings: StoreSettings,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            base,
            bucket: bucket.to_string(),
            auth,
            project: std::env::var("GOOGLE_CLOUD_PROJECT").unwrap_or_else(|_| "blobway".into()),
            settings,
        })
    }

    /// A request to the JSON API, with a current token.
    async fn request(&self, method: Method, url: &str) -> StoreResult<reqwest::RequestBuilder> {
        let request = self.http.request(method, url);
        Ok(match &self.auth {
            Auth::None => request,
            Auth::Fixed(token) => request.bearer_auth(token),
            Auth::Provider(provider) => {
                let token = provider.token(SCOPES).await.map_err(|e| {
                    StoreError::new(
                        ErrorClass::Auth,
                        None,
                        format!(
                            "cannot get a Google Cloud token: {e} — check \
                             GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth \
                             application-default login`"
                        ),
                    )
                })?;
                crate::redact::register_secret(token.as_str());
                request.bearer_auth(token.as_str())
            }
        })
    }

    /// A request to a resumable session: its URI is its authorization, so no token goes
    /// with it.
    fn session_request(&self, method: Method, session: &str) -> reqwest::RequestBuilder {
        self.http.request(method, session)
    }

    fn object_url(&self, key: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.base,
            encode(&self.bucket),
            encode(key)
        )
    }

    fn target(&self, key: &str) -> String {
        if key.is_empty() {
            format!("gs://{}", self.bucket)
        } else {
            format!("gs://{}/{key}", self.bucket)
        }
    }

    /// Sends a request within `deadline`, mapping transport failures to store errors.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        deadline: Duration,
        what: &str,
        key: &str,
    ) -> StoreResult<reqwest::Response> {
        match tokio::time::timeout(deadline, request.send()).await {
            Err(_) => Err(StoreError::transient(format!(
                "{what} {} stalled: no answer within {deadline:.0?}",
                self.target(key)
            ))),
            Ok(Err(e)) => {
                let hint = if e.is_connect() {
                    format!(
                        " — cannot reach {}; check STORAGE_EMULATOR_HOST and the network",
                        self.base
                    )
                } else {
                    String::new()
                };
                // Without the URL: a session URI lets its holder write to the object.
                let e = e.without_url();
                Err(StoreError::transient(format!(
                    "{what} {} failed: {e}{hint}",
                    self.target(key)
                )))
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// The error an unexpected answer stands for.
    async fn error(&self, response: reqwest::Response, what: &str, key: &str) -> StoreError {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(Duration::from_secs_f64);
        let body = response.text().await.unwrap_or_default();
        let detail: String = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(body)
            .chars()
            .take(300)
            .collect();
        let (class, hint) = match status.as_u16() {
            401 => (
                ErrorClass::Auth,
                "the credentials were rejected; refresh GOOGLE_OAUTH_ACCESS_TOKEN",
            ),
            403 => (
                ErrorClass::Permission,
                "access denied; the credentials need storage.objects.create on the bucket",
            ),
            404 if key.is_empty() => (ErrorClass::NotFound, "the bucket does not exist"),
            404 => (ErrorClass::NotFound, ""),
            408 => (ErrorClass::Transient, ""),
            429 | 503 => (ErrorClass::Throttled, ""),
            s if s >= 500 => (ErrorClass::Transient, ""),
            _ => (ErrorClass::Invalid, ""),
        };
        let mut message = format!(
            "{what} {} failed: HTTP {}",
            self.target(key),
            status.as_u16()
        );
        if !detail.trim().is_empty() {
            message.push_str(&format!(": {}", detail.trim()));
        }
        if !hint.is_empty() {
            message.push_str(&format!(" — {hint}"));
        }
        StoreError::new(class, Some(status.as_u16()), message).with_retry_after(retry_after)
    }

    /// The resumable session URI recorded for `upload`.
    fn session<'a>(&self, upload: Upload<'a>) -> StoreResult<&'a str> {
        upload.recorded_session(self.target(upload.key))
    }

    fn lost(&self, key: &str) -> StoreError {
        StoreError::new(
            ErrorClass::UploadLost,
            Some(404),
            format!(
                "the upload session of {} expired or was cancelled; it starts over",
                self.target(key)
            ),
        )
    }

    /// How much the session holds, from a 308's `Range: bytes=0-N` (none: nothing yet). Real
    /// servers persist whole 256 KiB units; a count off that grid (an emulator answers
    /// `bytes=0-0` for an empty session) is taken down to it.
    fn held(response: &reqwest::Response) -> u64 {
        let end = response
            .headers()
            .get(reqwest::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("bytes=0-"))
            .and_then(|n| n.parse::<u64>().ok());
        match end {
            Some(end) => (end + 1) / GRANULARITY * GRANULARITY,
            None => 0,
        }
    }

    /// Asks the session how much it holds.
    async fn progress(&self, key: &str, session: &str) -> StoreResult<Progress> {
        let request = self
            .session_request(Method::PUT, session)
            .header(reqwest::header::CONTENT_RANGE, "bytes */*")
            .header(reqwest::header::CONTENT_LENGTH, 0);
        let response = self
            .send(
                request,
                self.settings.stall_timeout,
                "upload status of",
                key,
            )
            .await?;
        match response.status().as_u16() {
            200 | 201 => Ok(Progress::Complete(final_size(response).await)),
            308 => Ok(Progress::Holds(Self::held(&response))),
            404 | 410 => Err(self.lost(key)),
            _ => Err(self.error(response, "upload status of", key).await),
        }
    }

    /// A finalized object must be exactly as long as planned: a session another writer (or an
    /// earlier life of this upload) finalized at another size is lost, and the upload starts
    /// over. A size the answer did not carry is checked by the engine's read-back after commit.
    fn check_final_size(&self, key: &str, size: Option<u64>, total: u64) -> StoreResult<()> {
        final_size_matches(size, total).map_err(|size| {
            StoreError::new(
                ErrorClass::UploadLost,
                None,
                format!(
                    "{} was finalized with {size} bytes instead of {total}; it starts over",
                    self.target(key)
                ),
            )
        })
    }

    /// PUTs `data` as the bytes from `offset` on; `total` finalizes the object.
    async fn put_range(
        &self,
        key: &str,
        session: &str,
        offset: u64,
        data: Bytes,
        total: Option<u64>,
    ) -> StoreResult<Result<Progress, StoreError>> {
        let len = data.len() as u64;
        let range = match total {
            Some(total) => format!("bytes {offset}-{}/{total}", offset + len - 1),
            None => format!("bytes {offset}-{}/*", offset + len - 1),
        };
        let request = self
            .session_request(Method::PUT, session)
            .header(reqwest::header::CONTENT_RANGE, range)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(data);
        let response = self
            .send(
                request,
                self.settings.upload_deadline(len),
                "upload to",
                key,
            )
            .await?;
        match response.status().as_u16() {
            200 | 201 => Ok(Ok(Progress::Complete(final_size(response).await))),
            308 => Ok(Ok(Progress::Holds(Self::held(&response)))),
            404 | 410 => Err(self.lost(key)),
            // Only a session opened with ifGenerationMatch=0 is refused this way.
            412 => Err(StoreError::exists(self.target(key))),
            // Either the server disagrees about where the upload stands (an earlier answer
            // was lost) or the request is wrong: the caller asks where it stands to tell.
            400 | 416 => Ok(Err(self.error(response, "upload to", key).await)),
            _ => Err(self.error(response, "upload to", key).await),
        }
    }
}

#[async_trait]
impl ObjectSink for GcsStore {
    fn limits(&self) -> SinkLimits {
        LIMITS
    }

    fn bearer_sessions(&self) -> bool {
        true
    }

    fn naming(&self) -> super::rules::Naming {
        super::rules::Naming::Gcs
    }

    fn meta_rules(&self) -> super::rules::MetaRules {
        super::rules::MetaRules::GCS
    }

    async fn prepare(&self) -> StoreResult<()> {
        let url = format!("{}/storage/v1/b/{}", self.base, encode(&self.bucket));
        let response = self
            .send(
                self.request(Method::GET, &url).await?,
                self.settings.stall_timeout,
                "GET bucket",
                "",
            )
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        // Object-level roles (storage.objectAdmin) may not read the bucket itself: a 403 here
        // leaves the objects' requests to tell whether access suffices.
        if response.status() == StatusCode::FORBIDDEN {
            return Ok(());
        }
        if response.status() != StatusCode::NOT_FOUND {
            return Err(self.error(response, "GET bucket", "").await);
        }
        let url = format!(
            "{}/storage/v1/b?project={}",
            self.base,
            encode(&self.project)
        );
        let request = self
            .request(Method::POST, &url)
            .await?
            .json(&serde_json::json!({ "name": self.bucket }));
        let response = self
            .send(request, self.settings.stall_timeout, "create bucket", "")
            .await?;
        match response.status().as_u16() {
            200 | 201 | 409 => Ok(()),
            _ => Err(self.error(response, "create bucket", "").await),
        }
    }

    async fn begin(&self, upload: Upload<'_>, meta: &ObjectMeta) -> StoreResult<Option<String>> {
        let key = upload.key;
        // ifGenerationMatch=0: the session finalizes only if no live object has the name.
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=resumable&name={}{}",
            self.base,
            encode(&self.bucket),
            encode(key),
            if upload.create_only {
                "&ifGenerationMatch=0"
            } else {
                ""
            }
        );
        let mut request = self
            .request(Method::POST, &url)
            .await?
            .json(&resource(key, meta, None));
        if let Some(content_type) = &meta.content_type {
            request = request.header("X-Upload-Content-Type", content_type);
        }
        let response = self
            .send(request, self.settings.stall_timeout, "open upload of", key)
            .await?;
        if !response.status().is_success() {
            return Err(self.error(response, "open upload of", key).await);
        }
        let session = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                StoreError::transient(format!(
                    "open upload of {} answered without a session URI",
                    self.target(key)
                ))
            })?;
        Ok(Some(session.to_string()))
    }

    async fn put_block(
        &self,
        upload: Upload<'_>,
        block: BlockRef<'_>,
        data: Bytes,
    ) -> StoreResult<()> {
        let session = self.session(upload)?;
        let key = upload.key;
        let (start, end) = (block.offset, block.offset + data.len() as u64);
        let total = block.last.then_some(end);
        let mut offset = start;
        // A few rounds at most: each one either finishes or learns where the session stands.
        for _ in 0..4 {
            let piece = data.slice((offset - start) as usize..);
            let answer = self.put_range(key, session, offset, piece, total).await?;
            let progress = match answer {
                Ok(progress) => progress,
                Err(refused) => match self.progress(key, session).await? {
                    // The session stands where this request started: the request itself was
                    // wrong.
                    Progress::Holds(held) if held == offset => {
                        return Err(StoreError::new(
                            ErrorClass::Invalid,
                            refused.status,
                            refused.message,
                        ));
                    }
                    progress => progress,
                },
            };
            match progress {
                Progress::Complete(size) if block.last => {
                    return self.check_final_size(key, size, end);
                }
                Progress::Complete(_) => {
                    return Err(StoreError::new(
                        ErrorClass::UploadLost,
                        None,
                        format!(
                            "the upload of {} was finalized before its last chunk; it starts over",
                            self.target(key)
                        ),
                    ));
                }
                Progress::Holds(held) if held >= end && !block.last => return Ok(()),
                Progress::Holds(held) if held >= start && held < end => offset = held,
                Progress::Holds(held) if held >= end => {
                    // Every byte is there but the object is not finalized: finalize it.
                    offset = end;
                    if let Some(total) = total {
                        let request = self
                            .session_request(Method::PUT, session)
                            .header(reqwest::header::CONTENT_RANGE, format!("bytes */{total}"))
                            .header(reqwest::header::CONTENT_LENGTH, 0);
                        let response = self
                            .send(request, self.settings.stall_timeout, "finalize", key)
                            .await?;
                        if response.status().is_success() {
                            let size = final_size(response).await;
                            return self.check_final_size(key, size, total);
                        }
                        return Err(self.error(response, "finalize", key).await);
                    }
                }
                Progress::Holds(held) => {
                    return Err(StoreError::new(
                        ErrorClass::UploadLost,
                        None,
                        format!(
                            "the upload session of {} holds {held} bytes, short of this chunk's \
                             start at {start}; it starts over",
                            self.target(key)
                        ),
                    ));
                }
            }
        }
        Err(StoreError::transient(format!(
            "the upload of {} did not take chunk {} after several rounds",
            self.target(key),
            block.index
        )))
    }

    async fn missing_blocks(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
    ) -> StoreResult<Vec<u32>> {
        let session = self.session(upload)?;
        let held = match self.progress(upload.key, session).await? {
            Progress::Complete(size) => {
                let total: u64 = blocks.iter().map(|b| b.size).sum();
                self.check_final_size(upload.key, size, total)?;
                return Ok(Vec::new());
            }
            Progress::Holds(held) => held,
        };
        let total: u64 = blocks.iter().map(|b| b.size).sum();
        let mut offset = 0;
        let mut missing = Vec::new();
        for block in blocks {
            offset += block.size;
            // The last block finalizes the object, so an unfinalized session lacks it.
            if offset > held || offset == total {
                missing.push(block.index);
            }
        }
        Ok(missing)
    }

    async fn commit(
        &self,
        _upload: Upload<'_>,
        _blocks: &[PlannedBlock],
        _meta: &ObjectMeta,
    ) -> StoreResult<()> {
        // The last chunk finalized the object (the check before this found nothing missing).
        Ok(())
    }

    async fn abort(&self, upload: Upload<'_>) -> StoreResult<()> {
        let Some(session) = upload.session else {
            return Ok(());
        };
        // GCS answers 499 to a cancelled session; a session already gone is as good.
        let _ = self
            .send(
                self.session_request(Method::DELETE, session),
                self.settings.stall_timeout,
                "cancel upload of",
                upload.key,
            )
            .await?;
        Ok(())
    }

    async fn put_whole(
        &self,
        upload: Upload<'_>,
        data: Bytes,
        _checksum: Checksum,
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        let key = upload.key;
        let crc32c = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &data) as u32;
        let json = serde_json::to_vec(&resource(key, meta, Some(crc32c)))
            .map_err(|e| StoreError::new(ErrorClass::Invalid, None, e.to_string()))?;
        // A fresh random boundary, so no object's bytes can contain it by design.
        let boundary = format!("blobway-{:032x}", rand::random::<u128>());
        let content_type = meta
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let mut head = BytesMut::with_capacity(json.len() + 256);
        head.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n")
                .as_bytes(),
        );
        head.extend_from_slice(&json);
        head.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n").as_bytes(),
        );
        let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        // ifGenerationMatch=0: only if no live object has the name (--if-exists skip|fail).
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=multipart&name={}{}",
            self.base,
            encode(&self.bucket),
            encode(key),
            if upload.create_only {
                "&ifGenerationMatch=0"
            } else {
                ""
            }
        );
        let len = (head.len() + data.len() + tail.len()) as u64;
        // The object's bytes go out as they are, between the two parts of the envelope: the
        // chunk buffer is never copied (the memory budget counts it once).
        let parts: [Result<Bytes, std::io::Error>; 3] = [Ok(head.freeze()), Ok(data), Ok(tail)];
        let request = self
            .request(Method::POST, &url)
            .await?
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/related; boundary={boundary}"),
            )
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(futures::stream::iter(parts)));
        let response = self
            .send(
                request,
                self.settings.upload_deadline(len),
                "upload of",
                key,
            )
            .await?;
        if response.status().is_success() {
            Ok(())
        } else if upload.create_only && response.status() == StatusCode::PRECONDITION_FAILED {
            Err(StoreError::exists(self.target(key)))
        } else {
            Err(self.error(response, "upload of", key).await)
        }
    }

    async fn head(&self, key: &str) -> StoreResult<Option<DestObject>> {
        let response = self
            .send(
                self.request(Method::GET, &self.object_url(key)).await?,
                self.settings.stall_timeout,
                "GET",
                key,
            )
            .await?;
        match response.status().as_u16() {
            404 => Ok(None),
            200 => {
                let object: ObjectResource = response.json().await.map_err(|e| {
                    StoreError::transient(format!(
                        "GET {}: unreadable answer: {e}",
                        self.target(key)
                    ))
                })?;
                Ok(Some(object.dest().1))
            }
            _ => Err(self.error(response, "GET", key).await),
        }
    }

    async fn list_existing(&self, prefix: &str) -> StoreResult<BTreeMap<String, DestObject>> {
        let mut out = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let (page, next) = self.list_existing_page(prefix, token.clone()).await?;
            out.extend(page);
            match next {
                Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn list_existing_page(
        &self,
        prefix: &str,
        token: Option<String>,
    ) -> StoreResult<(Vec<(String, DestObject)>, Option<String>)> {
        let mut url = format!(
            "{}/storage/v1/b/{}/o?prefix={}",
            self.base,
            encode(&self.bucket),
            encode(prefix)
        );
        if let Some(token) = &token {
            url.push_str(&format!("&pageToken={}", encode(token)));
        }
        let response = self
            .send(
                self.request(Method::GET, &url).await?,
                self.settings.stall_timeout,
                "LIST",
                prefix,
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.error(response, "LIST", prefix).await);
        }
        let page: ObjectList = response.json().await.map_err(|e| {
            StoreError::transient(format!(
                "LIST {}: unreadable answer: {e}",
                self.target(prefix)
            ))
        })?;
        // A server that hands back the token it was given has nothing more.
        let next = page
            .next_page_token
            .filter(|next| token.as_deref() != Some(next.as_str()));
        Ok((
            page.items.into_iter().map(ObjectResource::dest).collect(),
            next,
        ))
    }
}

/// The object resource a new upload carries.
fn resource(key: &str, meta: &ObjectMeta, crc32c: Option<u32>) -> serde_json::Value {
    let mut resource = serde_json::json!({ "name": key });
    if let Some(v) = &meta.content_type {
        resource["contentType"] = v.clone().into();
    }
    if let Some(v) = &meta.content_encoding {
        resource["contentEncoding"] = v.clone().into();
    }
    if let Some(v) = &meta.cache_control {
        resource["cacheControl"] = v.clone().into();
    }
    if !meta.pairs.is_empty() {
        resource["metadata"] = serde_json::to_value(&meta.pairs).unwrap_or_default();
    }
    if let Some(crc) = crc32c {
        resource["crc32c"] = BASE64.encode(crc.to_be_bytes()).into();
    }
    resource
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_finalized_at_another_size_is_refused_on_every_path() {
        assert_eq!(final_size_matches(Some(10), 10), Ok(()));
        assert_eq!(final_size_matches(Some(5), 10), Err(5));
        assert_eq!(
            final_size_matches(None, 10),
            Ok(()),
            "unknown: the read-back after commit decides"
        );
        let store =
            GcsStore::emulator("http://127.0.0.1:1", "b", StoreSettings::default()).expect("store");
        let refused = store
            .check_final_size("k", Some(5), 10)
            .expect_err("wrong size");
        assert_eq!(refused.class, ErrorClass::UploadLost);
        assert!(
            refused.message.contains("5 bytes instead of 10"),
            "{refused}"
        );
    }

    #[test]
    fn names_keep_unreserved_characters_and_encode_the_rest() {
        assert_eq!(
            encode("gcs-0a.b_c~d/e f+ü"),
            "gcs-0a.b_c~d%2Fe%20f%2B%C3%BC"
        );
    }

    #[test]
    fn the_resource_carries_headers_and_pairs() {
        let mut meta = ObjectMeta {
            content_type: Some("text/plain".into()),
            cache_control: Some("no-cache".into()),
            ..ObjectMeta::default()
        };
        meta.pairs.insert("owner".into(), "ops".into());
        let r = resource("a b/c.txt", &meta, Some(0xE306_9283));
        assert_eq!(r["name"], "a b/c.txt");
        assert_eq!(r["contentType"], "text/plain");
        assert_eq!(r["cacheControl"], "no-cache");
        assert_eq!(r["metadata"]["owner"], "ops");
        assert_eq!(r["crc32c"], "4waSgw==");
        assert!(r.get("contentEncoding").is_none());
    }

    #[test]
    fn crc32c_is_the_castagnoli_crc() {
        // The CRC-32C check value.
        assert_eq!(
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, b"123456789") as u32,
            0xE306_9283
        );
    }
}
