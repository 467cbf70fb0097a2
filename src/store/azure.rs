//! Azure Blob Storage (block blobs) through the official `azure_storage_blob` crate: Put Block
//! with a transactional Content-MD5, Get Block List (uncommitted), Put Block List, single Put
//! Blob, blob properties, container creation, listing and ranged reads. Every Azure call of
//! blobway lives in this file.
//!
//! Credentials follow the Azure CLI's conventions, first match wins:
//! `AZURE_STORAGE_CONNECTION_STRING` (including Azurite's `UseDevelopmentStorage=true` and
//! `BlobEndpoint=` forms), then `AZURE_STORAGE_ACCOUNT` with `AZURE_STORAGE_KEY` or
//! `AZURE_STORAGE_SAS_TOKEN`, then Entra ID (service principal from `AZURE_CLIENT_ID`/
//! `AZURE_TENANT_ID`/`AZURE_CLIENT_SECRET`, else the developer tools' login).
//! `AZURE_STORAGE_BLOB_ENDPOINT` overrides the endpoint.
//!
//! The crate has no shared-key auth: with an account key, blobway signs a short-lived account
//! SAS locally ([`super::azure_sas`]) and renews it well before it expires, so a multi-day run
//! never fails on an expired signature. The SDK's retry policy is off (blobway's retry loop
//! owns retries) and the service version is pinned to one Azurite also speaks.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    ClientMethodOptions, ClientOptions, Context, Etag, HttpClientOptions, Request, RequestContent,
    RetryOptions, Transport, Url, new_http_client,
};
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders,
    BlobContainerClientListBlobsOptions, BlockBlobClientCommitBlockListOptions,
    BlockBlobClientStageBlockFromUrlOptions, BlockBlobClientStageBlockFromUrlResultHeaders,
    BlockBlobClientStageBlockOptions, BlockBlobClientUploadOptions, BlockListType, BlockLookupList,
    HttpRange, ListBlobsIncludeItem,
};
use azure_storage_blob::{
    BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions,
    BlobServiceClient, BlobServiceClientOptions,
};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::azure_sas::{AccountSas, SasSource};
use super::{
    BlockRef, Checksum, Chunk, CopyFrom, CopyOrigin, CopyWay, DestObject, ErrorClass, ObjectInfo,
    ObjectMeta, ObjectSink, ObjectSource, Page, PlannedBlock, SinkLimits, StoreError, StoreResult,
    StoreSettings, Upload,
};

/// The service version blobway speaks: recent, and accepted by Azurite 3.35.
pub const SERVICE_VERSION: &str = "2025-11-05";

/// Azurite's published development account and key.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (public, not a secret).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How blobway authenticates to the account.
#[derive(Clone)]
pub enum AzureAuth {
    /// An account key: blobway signs short-lived account SAS tokens with it.
    Key {
        /// Storage account name.
        account: String,
        /// Base64 account key.
        key: String,
    },
    /// A SAS token given by the operator (query string without the leading `?`).
    Sas(String),
    /// Entra ID tokens.
    Entra(Arc<dyn TokenCredential>),
}

impl std::fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AzureAuth::Key { account, .. } => {
                write!(f, "Key {{ account: {account}, key: REDACTED }}")
            }
            AzureAuth::Sas(_) => write!(f, "Sas(REDACTED)"),
            AzureAuth::Entra(_) => write!(f, "Entra"),
        }
    }
}

/// Where the account lives and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct AzureAccount {
    /// Blob service endpoint, e.g. `https://acct.blob.core.windows.net` or
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: Url,
    /// Credentials.
    pub auth: AzureAuth,
}

impl AzureAccount {
    /// Reads the account from the environment (see the module documentation).
    pub fn from_env() -> anyhow::Result<Self> {
        let endpoint_override = std::env::var("AZURE_STORAGE_BLOB_ENDPOINT").ok();
        let mut account = if let Ok(cs) = std::env::var("AZURE_STORAGE_CONNECTION_STRING") {
            Self::from_connection_string(&cs)?
        } else if let Ok(name) = std::env::var("AZURE_STORAGE_ACCOUNT") {
            let endpoint = endpoint_override
                .clone()
                .unwrap_or_else(|| format!("https://{name}.blob.core.windows.net"));
            let auth = if let Ok(key) = std::env::var("AZURE_STORAGE_KEY") {
                AzureAuth::Key { account: name, key }
            } else if let Ok(sas) = std::env::var("AZURE_STORAGE_SAS_TOKEN") {
                AzureAuth::Sas(sas.trim_start_matches('?').to_string())
            } else {
                AzureAuth::Entra(entra_credential()?)
            };
            Self {
                endpoint: parse_endpoint(&endpoint)?,
                auth,
            }
        } else {
            anyhow::bail!(
                "no Azure account configured: set AZURE_STORAGE_CONNECTION_STRING, or \
                 AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN or an \
                 Entra ID login (az login / AZURE_CLIENT_ID+AZURE_TENANT_ID+AZURE_CLIENT_SECRET)"
            );
        };
        if let Some(endpoint) = endpoint_override {
            account.endpoint = parse_endpoint(&endpoint)?;
        }
        match &account.auth {
            AzureAuth::Key { key, .. } => crate::redact::register_secret(key),
            AzureAuth::Sas(sas) => crate::redact::register_secret(sas),
            AzureAuth::Entra(_) => {}
        }
        Ok(account)
    }

    /// Parses a storage connection string.
    pub fn from_connection_string(cs: &str) -> anyhow::Result<Self> {
        let mut fields = HashMap::new();
        for part in cs.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                anyhow::bail!(
                    "AZURE_STORAGE_CONNECTION_STRING is malformed: expected Name=value pairs \
                     separated by `;`"
                );
            };
            fields.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
        if fields
            .get("usedevelopmentstorage")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            let proxy = fields
                .get("developmentstorageproxyuri")
                .cloned()
                .unwrap_or_else(|| "http://127.0.0.1".to_string());
            let endpoint = format!("{}:10000/{AZURITE_ACCOUNT}", proxy.trim_end_matches('/'));
            return Ok(Self {
                endpoint: parse_endpoint(&endpoint)?,
                auth: AzureAuth::Key {
                    account: AZURITE_ACCOUNT.to_string(),
                    key: AZURITE_KEY.to_string(),
                },
            });
        }
        let account = fields.get("accountname").cloned();
        let endpoint = match (fields.get("blobendpoint"), &account) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, Some(name)) => {
                let protocol = fields
                    .get("defaultendpointsprotocol")
                    .map_or("https", String::as_str);
                let suffix = fields
                    .get("endpointsuffix")
                    .map_or("core.windows.net", String::as_str);
                format!("{protocol}://{name}.blob.{suffix}")
            }
            (None, None) => anyhow::bail!(
                "AZURE_STORAGE_CONNECTION_STRING names neither AccountName nor BlobEndpoint"
            ),
        };
        let auth = if let Some(key) = fields.get("accountkey") {
            let Some(account) = account else {
                anyhow::bail!(
                    "AZURE_STORAGE_CONNECTION_STRING has an AccountKey but no AccountName"
                );
            };
            AzureAuth::Key {
                account,
                key: key.clone(),
            }
        } else if let Some(sas) = fields.get("sharedaccesssignature") {
            AzureAuth::Sas(sas.trim_start_matches('?').to_string())
        } else {
            AzureAuth::Entra(entra_credential()?)
        };
        Ok(Self {
            endpoint: parse_endpoint(&endpoint)?,
            auth,
        })
    }
}

fn parse_endpoint(text: &str) -> anyhow::Result<Url> {
    let url = Url::parse(text.trim_end_matches('/')).map_err(|e| {
        anyhow::anyhow!("the Azure blob endpoint `{text}` is not a URL ({e}); write e.g. https://acct.blob.core.windows.net")
    })?;
    if url.cannot_be_a_base() || !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("the Azure blob endpoint `{text}` must be an http(s) URL");
    }
    Ok(url)
}

fn entra_credential() -> anyhow::Result<Arc<dyn TokenCredential>> {
    let service_principal = (
        std::env::var("AZURE_TENANT_ID"),
        std::env::var("AZURE_CLIENT_ID"),
        std::env::var("AZURE_CLIENT_SECRET"),
    );
    if let (Ok(tenant), Ok(client), Ok(secret)) = service_principal {
        crate::redact::register_secret(&secret);
        let credential =
            azure_identity::ClientSecretCredential::new(&tenant, client, secret.into(), None)
                .map_err(|e| anyhow::anyhow!("cannot use the Entra ID service principal: {e}"))?;
        return Ok(credential);
    }
    let credential = azure_identity::DeveloperToolsCredential::new(None)
        .map_err(|e| anyhow::anyhow!("cannot use an Entra ID login: {e}"))?;
    Ok(credential)
}

/// Adds the current SAS token to every request and, when the call's context carries one, the
/// transactional `Content-MD5` of a whole-blob upload (the SDK's `upload` offers no field for
/// it).
#[derive(Debug)]
struct BlobwayPolicy {
    sas: Option<SasSource>,
}

/// The transactional checksum of a whole-blob upload, carried to [`BlobwayPolicy`] in the
/// call's context.
#[derive(Clone, Copy, Debug)]
struct WholeBlobChecksum(Checksum);

#[async_trait]
impl Policy for BlobwayPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        if let Some(sas) = &self.sas {
            let token = sas.token();
            let url = request.url_mut();
            let query = match url.query() {
                Some(existing) if !existing.is_empty() => format!("{existing}&{token}"),
                _ => token,
            };
            url.set_query(Some(&query));
        }
        if let Some(WholeBlobChecksum(checksum)) = ctx.value::<WholeBlobChecksum>() {
            use base64::Engine;
            let (name, bytes) = transactional_header(checksum);
            request.insert_header(
                name,
                base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        }
        match next.split_first() {
            Some((head, rest)) => head.send(ctx, request, rest).await,
            None => Err(azure_core::Error::with_message(
                ErrorKind::Other,
                "the HTTP pipeline has no transport",
            )),
        }
    }
}

/// Azure block blob limits: blocks up to 4000 MiB, 50,000 of them per blob, and one Put Blob
/// up to 5000 MiB.
pub const LIMITS: SinkLimits = SinkLimits {
    max_block: 4000 << 20,
    max_blocks: 50_000,
    min_block: 0,
    granularity: 1,
    max_single_put: 5000 << 20,
    sequential: false,
    shared_blocks: true,
    max_object_size: u64::MAX,
};

/// One Azure container, used as destination (and as source for reads and listings).
#[derive(Clone)]
pub struct AzureStore {
    container: String,
    endpoint: Url,
    container_url: Url,
    credential: Option<Arc<dyn TokenCredential>>,
    /// The SAS every request carries (none with Entra ID): also what signs a URL another
    /// Azure account reads a blob from in a server-side copy.
    sas: Option<SasSource>,
    options: ClientOptions,
    settings: StoreSettings,
}

impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AzureStore({})", self.container_url)
    }
}

impl AzureStore {
    /// Connects to `container` with the account configured in the environment.
    pub fn connect(container: &str, settings: StoreSettings) -> anyhow::Result<Self> {
        Self::with_account(AzureAccount::from_env()?, container, settings)
    }

    /// Connects to `container` of `account`. Nothing is sent yet.
    pub fn with_account(
        account: AzureAccount,
        container: &str,
        settings: StoreSettings,
    ) -> anyhow::Result<Self> {
        let mut container_url = account.endpoint.clone();
        if !container.is_empty() {
            container_url
                .path_segments_mut()
                .map_err(|()| anyhow::anyhow!("the Azure endpoint cannot hold a path"))?
                .pop_if_empty()
                .push(container);
        }
        let (sas, credential) = match account.auth {
            AzureAuth::Key { account, key } => {
                let https_only = account_is_https(&container_url);
                (
                    Some(SasSource::Signed(Arc::new(AccountSas::new(
                        account, &key, https_only,
                    )?))),
                    None,
                )
            }
            AzureAuth::Sas(token) => (Some(SasSource::Static(token)), None),
            AzureAuth::Entra(credential) => (None, Some(credential)),
        };
        let transport = Transport::new(new_http_client(Some(HttpClientOptions {
            automatic_decompression: false,
        })));
        let options = ClientOptions {
            per_try_policies: vec![Arc::new(BlobwayPolicy { sas: sas.clone() })],
            retry: RetryOptions::none(),
            transport: Some(transport),
            ..Default::default()
        };
        Ok(Self {
            container: container.to_string(),
            endpoint: account.endpoint,
            container_url,
            credential,
            sas,
            options,
            settings,
        })
    }

    /// The containers of the account.
    /// The access tier a blob is in (`Hot`, `Cool`, …), as Azure reports it.
    pub async fn access_tier(&self, key: &str) -> StoreResult<Option<String>> {
        let client = self.blob_client(key)?;
        let response = self
            .within("get properties of", key, client.get_properties(None))
            .await?;
        Ok(response.access_tier().ok().flatten())
    }

    pub async fn containers(&self) -> StoreResult<Vec<String>> {
        let client = BlobServiceClient::new(
            self.endpoint.clone(),
            self.credential.clone(),
            Some(BlobServiceClientOptions {
                client_options: self.options.clone(),
                version: SERVICE_VERSION.to_string(),
            }),
        )
        .map_err(|e| self.error(e, "connect to", ""))?;
        let mut items = client
            .list_containers(None)
            .map_err(|e| self.error(e, "list the containers of", ""))?;
        let mut out = Vec::new();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| self.error(e, "list the containers of", ""))?;
            out.extend(item.name);
        }
        Ok(out)
    }

    fn container_client(&self) -> StoreResult<BlobContainerClient> {
        BlobContainerClient::new(
            self.container_url.clone(),
            self.credential.clone(),
            Some(BlobContainerClientOptions {
                client_options: self.options.clone(),
                version: SERVICE_VERSION.to_string(),
            }),
        )
        .map_err(|e| self.error(e, "connect to", ""))
    }

    /// The URL of blob `key` (its path segments escaped, its `/` kept).
    fn blob_url(&self, key: &str) -> Url {
        let mut url = self.container_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(key.split('/'));
        }
        url
    }

    fn blob_client(&self, key: &str) -> StoreResult<BlobClient> {
        BlobClient::new(
            self.blob_url(key),
            self.credential.clone(),
            Some(BlobClientOptions {
                client_options: self.options.clone(),
                version: SERVICE_VERSION.to_string(),
            }),
        )
        .map_err(|e| self.error(e, "connect to", key))
    }

    fn target(&self, key: &str) -> String {
        if key.is_empty() {
            format!("az://{}", self.container)
        } else {
            format!("az://{}/{key}", self.container)
        }
    }

    /// Maps an SDK error to a classified store error with the fix in its message.
    fn error(&self, err: azure_core::Error, what: &str, key: &str) -> StoreError {
        let target = self.target(key);
        match err.kind() {
            ErrorKind::HttpResponse {
                status,
                error_code,
                raw_response,
            } => {
                let status = u16::from(*status);
                let code = error_code.clone().unwrap_or_default();
                let header = |name| response_header(raw_response.as_deref(), name);
                let retry_after = header("retry-after")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .map(Duration::from_secs_f64);
                // Put Block From URL: the source's own answer, passed on by Azure.
                if let Some(source_status) = header("x-ms-copy-source-status-code")
                    .and_then(|v| v.trim().parse::<u16>().ok())
                {
                    let source_code = header("x-ms-copy-source-error-code").unwrap_or_default();
                    let class = match (source_status, source_code.as_str()) {
                        (429 | 503, _) => ErrorClass::Throttled,
                        // An expired signature (S3 says 400 ExpiredToken for a session
                        // token's): signed again, then taken as a refusal.
                        // An archived object (Glacier) must be restored first: this
                        // object fails, the route stands.
                        (403, "InvalidObjectState") => ErrorClass::Invalid,
                        (403 | 401, _) | (400, "ExpiredToken" | "TokenRefreshRequired") => {
                            ErrorClass::Permission
                        }
                        (404 | 412 | 416, _) => ErrorClass::SourceChanged,
                        (500..=599, _) => ErrorClass::Transient,
                        _ => ErrorClass::Invalid,
                    };
                    let hint = match class {
                        ErrorClass::Permission => {
                            " — the source refused Azure's signed read (a bucket policy that \
                             denies presigned or outside access, an expired signature, or an \
                             SSE-C object)"
                        }
                        ErrorClass::SourceChanged => {
                            " — the source object changed or vanished since it was planned"
                        }
                        _ => "",
                    };
                    return StoreError::new(
                        class,
                        Some(status),
                        format!(
                            "{what} {target} failed: {code}: the source answered \
                             {source_status} {source_code}{hint}"
                        ),
                    )
                    .with_retry_after(retry_after);
                }
                let (class, hint) = match (status, code.as_str()) {
                    (412, _) => (
                        ErrorClass::Invalid,
                        "a condition on the blob failed (is it leased?); break the lease or \
                         remove the condition",
                    ),
                    (429, _) | (503, _) => (ErrorClass::Throttled, ""),
                    (500..=599, _) => (ErrorClass::Transient, ""),
                    (400, "Md5Mismatch" | "Crc64Mismatch") => (
                        ErrorClass::Transient,
                        "the bytes were damaged on the way; they will be sent again",
                    ),
                    (403, "AuthenticationFailed" | "AuthorizationFailure") | (401, _) => (
                        ErrorClass::Auth,
                        "the Azure credentials were rejected (or do not allow this); check the \
                         account key or SAS in AZURE_STORAGE_CONNECTION_STRING / \
                         AZURE_STORAGE_KEY / AZURE_STORAGE_SAS_TOKEN",
                    ),
                    (403, _) => (
                        ErrorClass::Permission,
                        "not allowed; the SAS or role needs read, write, create and list on \
                         this container (and tag, with --copy-tags)",
                    ),
                    (404, "ContainerNotFound") => (
                        ErrorClass::NotFound,
                        "the container does not exist; check its name",
                    ),
                    (404, _) => (ErrorClass::NotFound, "no such blob"),
                    (409, "ContainerBeingDeleted") => (ErrorClass::Transient, ""),
                    (409, "BlobAlreadyExists") => (
                        ErrorClass::Exists,
                        "the blob is already there and this copy may not replace it \
                         (--if-exists skip|fail)",
                    ),
                    (413, _) | (400, "RequestBodyTooLarge" | "BlockCountExceedsLimit") => (
                        ErrorClass::Invalid,
                        "the object exceeds Azure's block limits",
                    ),
                    (400, "InvalidBlockList") => (
                        ErrorClass::Transient,
                        "a staged block is missing; it will be staged again",
                    ),
                    _ => (ErrorClass::Invalid, ""),
                };
                let mut message = format!("{what} {target} failed: {code}");
                if !hint.is_empty() {
                    message.push_str(&format!(" — {hint}"));
                }
                StoreError::new(class, Some(status), message).with_retry_after(retry_after)
            }
            ErrorKind::Credential => StoreError::new(
                ErrorClass::Auth,
                None,
                format!(
                    "{what} {target} failed: no Entra ID token; run `az login` or set \
                     AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_KEY ({err})"
                ),
            ),
            ErrorKind::Connection | ErrorKind::Io => StoreError::transient(format!(
                "{what} {target} failed: cannot reach the Azure endpoint {} ({err}); check the \
                 endpoint and the network",
                self.container_url.origin().ascii_serialization()
            )),
            _ => StoreError::transient(format!("{what} {target} failed: {err}")),
        }
    }

    fn stalled(&self, what: &str, key: &str, waited: Duration) -> StoreError {
        StoreError::transient(format!(
            "{what} {} stalled: no answer for {:.0?}",
            self.target(key),
            waited
        ))
    }

    /// Runs a call that sends no body, abandoning it after the stall timeout.
    async fn within<T>(
        &self,
        what: &str,
        key: &str,
        call: impl Future<Output = azure_core::Result<T>>,
    ) -> StoreResult<T> {
        self.within_for(self.settings.stall_timeout, what, key, call)
            .await
    }

    /// Runs a call, abandoning it after `deadline`.
    async fn within_for<T>(
        &self,
        deadline: Duration,
        what: &str,
        key: &str,
        call: impl Future<Output = azure_core::Result<T>>,
    ) -> StoreResult<T> {
        tokio::time::timeout(deadline, call)
            .await
            .map_err(|_| self.stalled(what, key, deadline))?
            .map_err(|e| self.error(e, what, key))
    }
}

/// The header and bytes of a transactional checksum: `Content-MD5`, or `x-ms-content-crc64`
/// with the CRC-64/NVME in little-endian order (as Azure returns it).
fn transactional_header(checksum: &Checksum) -> (&'static str, Vec<u8>) {
    match checksum {
        Checksum::Md5(md5) => ("content-md5", md5.to_vec()),
        Checksum::Crc64(crc) => ("x-ms-content-crc64", crc.to_le_bytes().to_vec()),
    }
}

fn account_is_https(url: &Url) -> bool {
    url.scheme() == "https"
}

/// A header of an error's response, as text.
fn response_header(
    response: Option<&azure_core::http::RawResponse>,
    name: &'static str,
) -> Option<String> {
    response?
        .headers()
        .get_optional_str(&HeaderName::from_static(name))
        .map(str::to_string)
}

fn azure_tier(tier: super::rules::AccessTier) -> azure_storage_blob::models::AccessTier {
    use super::rules::AccessTier as Tier;
    use azure_storage_blob::models::AccessTier as Azure;
    match tier {
        Tier::Hot => Azure::Hot,
        Tier::Cool => Azure::Cool,
        Tier::Cold => Azure::Cold,
        Tier::Archive => Azure::Archive,
    }
}

fn to_metadata(meta: &ObjectMeta) -> Option<HashMap<String, String>> {
    (!meta.pairs.is_empty()).then(|| meta.pairs.clone().into_iter().collect())
}

#[async_trait]
impl ObjectSink for AzureStore {
    fn naming(&self) -> super::rules::Naming {
        super::rules::Naming::Azure
    }

    fn meta_rules(&self) -> super::rules::MetaRules {
        super::rules::MetaRules::AZURE
    }

    fn limits(&self) -> SinkLimits {
        LIMITS
    }

    async fn prepare(&self) -> StoreResult<()> {
        let client = self.container_client()?;
        match self
            .within("create container", "", client.create(None))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(409) => Ok(()), // ContainerAlreadyExists
            Err(e) => Err(e),
        }
    }

    async fn put_block(
        &self,
        upload: Upload<'_>,
        block: BlockRef<'_>,
        data: Bytes,
    ) -> StoreResult<()> {
        let key = upload.key;
        let client = self.blob_client(key)?.block_blob_client();
        let len = data.len() as u64;
        let options = BlockBlobClientStageBlockOptions {
            transactional_content_md5: match block.checksum {
                Checksum::Md5(md5) => Some(md5.to_vec()),
                Checksum::Crc64(_) => None,
            },
            transactional_content_crc64: match block.checksum {
                Checksum::Crc64(crc) => Some(crc.to_le_bytes().to_vec()),
                Checksum::Md5(_) => None,
            },
            ..Default::default()
        };
        let call = client.stage_block(block.id.as_bytes(), len, data.into(), Some(options));
        let deadline = self.settings.upload_deadline(len);
        self.within_for(deadline, "Put Block", key, call)
            .await
            .map(|_| ())
    }

    fn access_tiers(&self) -> bool {
        true
    }

    fn tag_rules(&self) -> Option<crate::store::tags::TagRules> {
        Some(crate::store::tags::TagRules::Azure)
    }

    fn copies_from(&self, origin: &CopyOrigin) -> Option<CopyWay> {
        match origin {
            CopyOrigin::S3 { .. } | CopyOrigin::Azure { .. } => Some(CopyWay::Url),
        }
    }

    async fn copy_block(
        &self,
        upload: Upload<'_>,
        _index: u32,
        id: &str,
        from: CopyFrom<'_>,
    ) -> StoreResult<Option<u64>> {
        let key = upload.key;
        let url = from.url.ok_or_else(|| {
            StoreError::new(
                ErrorClass::Invalid,
                None,
                "Put Block From URL needs a signed source URL",
            )
        })?;
        let len = from.range.end - from.range.start;
        let client = self.blob_client(key)?.block_blob_client();
        let options = BlockBlobClientStageBlockFromUrlOptions {
            source_range: Some(HttpRange::new(from.range.start, len)),
            ..Default::default()
        };
        let call = client.stage_block_from_url(id.as_bytes(), 0, url.to_string(), Some(options));
        let deadline = self.settings.upload_deadline(len);
        let what = "Put Block From URL";
        let response = match tokio::time::timeout(deadline, call).await {
            Err(_) => return Err(self.stalled(what, key, deadline)),
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                // The route is refused, not the object, when: the service has no such call
                // (501; Azurite 3.35 answers 500 with an empty body instead); Azure could not
                // reach the source at all (CannotVerifyCopySource with no answer of the
                // source's: a private endpoint); the source refused Azure's read.
                let refused = match err.kind() {
                    ErrorKind::HttpResponse {
                        status,
                        error_code,
                        raw_response,
                    } => {
                        let header = |name| response_header(raw_response.as_deref(), name);
                        let azurite = header("server").is_some_and(|s| s.starts_with("Azurite"));
                        // (A 500 CannotVerifyCopySource is Azure's timeout reading the
                        // source: a passing fault, retried.)
                        let unreached = error_code.as_deref() == Some("CannotVerifyCopySource")
                            && (400..500).contains(&u16::from(*status))
                            && header("x-ms-copy-source-status-code").is_none();
                        u16::from(*status) == 501
                            || (azurite && u16::from(*status) == 500)
                            || unreached
                    }
                    _ => false,
                };
                let error = self.error(err, what, key);
                return Err(if refused || error.class == ErrorClass::Permission {
                    error.refusing_copy()
                } else {
                    error
                });
            }
        };
        // The block's CRC-64 as Azure computed it from what it read (little-endian).
        Ok(response
            .content_crc64()
            .ok()
            .flatten()
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map(u64::from_le_bytes))
    }

    async fn missing_blocks(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
    ) -> StoreResult<Vec<u32>> {
        let key = upload.key;
        let client = self.blob_client(key)?.block_blob_client();
        let call = client.get_block_list(BlockListType::Uncommitted, None);
        let staged: HashMap<Vec<u8>, u64> = match self.within("Get Block List", key, call).await {
            Ok(response) => response
                .into_model()
                .map_err(|e| self.error(e, "read the block list of", key))?
                .uncommitted_blocks
                .unwrap_or_default()
                .into_iter()
                .filter_map(|b| Some((b.name?, b.size.unwrap_or(0).max(0) as u64)))
                .collect(),
            Err(e) if e.class == ErrorClass::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        Ok(blocks
            .iter()
            .filter(|b| staged.get(b.id.as_bytes()) != Some(&b.size))
            .map(|b| b.index)
            .collect())
    }

    async fn commit(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        let key = upload.key;
        let client = self.blob_client(key)?.block_blob_client();
        let list = BlockLookupList {
            latest: Some(blocks.iter().map(|b| b.id.as_bytes().to_vec()).collect()),
            ..Default::default()
        };
        let content: RequestContent<BlockLookupList, _> = list
            .try_into()
            .map_err(|e| self.error(e, "encode the block list of", key))?;
        let options = BlockBlobClientCommitBlockListOptions {
            metadata: to_metadata(meta),
            blob_content_type: meta.content_type.clone(),
            blob_content_encoding: meta.content_encoding.clone(),
            blob_cache_control: meta.cache_control.clone(),
            if_none_match: upload.create_only.then(|| "*".into()),
            tier: upload.tier.map(azure_tier),
            blob_tags_string: crate::store::tags::encode(&meta.tags),
            ..Default::default()
        };
        let call = client.commit_block_list(content, Some(options));
        self.within("Put Block List", key, call).await.map(|_| ())
    }

    async fn put_whole(
        &self,
        upload: Upload<'_>,
        data: Bytes,
        checksum: Checksum,
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        let key = upload.key;
        let client = self.blob_client(key)?.block_blob_client();
        let len = data.len() as u64;
        let single = std::num::NonZero::new(len.max(1))
            .ok_or_else(|| StoreError::new(ErrorClass::Invalid, None, "empty partition size"))?;
        let options = BlockBlobClientUploadOptions {
            metadata: to_metadata(meta),
            blob_content_type: meta.content_type.clone(),
            blob_content_encoding: meta.content_encoding.clone(),
            blob_cache_control: meta.cache_control.clone(),
            partition_size: Some(single),
            if_none_match: upload.create_only.then(|| "*".into()),
            tier: upload.tier.map(azure_tier),
            blob_tags_string: crate::store::tags::encode(&meta.tags),
            parallel: std::num::NonZero::new(1),
            method_options: ClientMethodOptions {
                context: Context::new().with_value(WholeBlobChecksum(checksum)),
            },
            ..Default::default()
        };
        let call = client.upload(data.into(), Some(options));
        let deadline = self.settings.upload_deadline(len);
        self.within_for(deadline, "Put Blob", key, call)
            .await
            .map(|_| ())
    }

    async fn head(&self, key: &str) -> StoreResult<Option<DestObject>> {
        let client = self.blob_client(key)?;
        match self
            .within("get properties of", key, client.get_properties(None))
            .await
        {
            Ok(response) => Ok(Some(DestObject {
                size: response.content_length().ok().flatten().unwrap_or(0),
                meta: response
                    .metadata()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect(),
            })),
            Err(e) if e.class == ErrorClass::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_existing(&self, prefix: &str) -> StoreResult<BTreeMap<String, DestObject>> {
        let (mut out, mut token) = (BTreeMap::new(), None);
        loop {
            let (page, next) = self.list_existing_page(prefix, token).await?;
            out.extend(page);
            match next {
                Some(next) => token = Some(next),
                None => return Ok(out),
            }
        }
    }

    async fn list_existing_page(
        &self,
        prefix: &str,
        token: Option<String>,
    ) -> StoreResult<(Vec<(String, DestObject)>, Option<String>)> {
        let client = self.container_client()?;
        let options = BlobContainerClientListBlobsOptions {
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
            include: Some(vec![ListBlobsIncludeItem::Metadata]),
            marker: token,
            maxresults: Some(5000),
            ..Default::default()
        };
        let mut pages = client
            .list_blobs(Some(options))
            .map_err(|e| self.error(e, "list", prefix))?
            .into_pages();
        let Some(response) = pages.next().await else {
            return Ok((Vec::new(), None));
        };
        let listing = match response.and_then(|r| r.into_model()) {
            Ok(listing) => listing,
            Err(e) => {
                let err = self.error(e, "list", prefix);
                if err.class == ErrorClass::NotFound {
                    return Ok((Vec::new(), None)); // no container yet: nothing exists
                }
                return Err(err);
            }
        };
        let objects = listing
            .blob_items
            .into_iter()
            .filter_map(existing_of)
            .collect();
        Ok((objects, listing.next_marker.filter(|m| !m.is_empty())))
    }
}

/// A listed blob as the planner compares it: its name, size and metadata (names lowercased).
fn existing_of(item: azure_storage_blob::models::BlobItem) -> Option<(String, DestObject)> {
    let name = item.name?;
    let size = item.properties.and_then(|p| p.content_length).unwrap_or(0);
    let meta = item
        .metadata
        .and_then(|m| m.values)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    Some((name, DestObject { size, meta }))
}

#[async_trait]
impl ObjectSource for AzureStore {
    /// Only with a SAS (an account key signs one): with Entra ID a URL would need a user
    /// delegation key, which blobway does not ask for; such sources copy through blobway.
    fn copy_origin(&self) -> Option<CopyOrigin> {
        self.sas.as_ref().map(|_| CopyOrigin::Azure {
            endpoint: self.endpoint.to_string(),
        })
    }

    fn has_tags(&self) -> bool {
        true
    }

    async fn tags(&self, key: &str) -> StoreResult<crate::store::tags::Tags> {
        let client = self.blob_client(key)?;
        let tags = self
            .within("get the tags of", key, client.get_tags(None))
            .await
            .map_err(|e| e.on_read(key))?
            .into_model()
            .map_err(|e| self.error(e, "read the tags of", key))?;
        Ok(std::collections::HashMap::from(tags).into_iter().collect())
    }

    /// Azure's blob versions are not offered as source versions: `version` is never given.
    async fn presign_get(&self, key: &str, _version: Option<&str>) -> StoreResult<String> {
        let sas = self.sas.as_ref().ok_or_else(|| {
            StoreError::new(
                ErrorClass::Invalid,
                None,
                "an Azure source signs URLs only with an account key or SAS",
            )
        })?;
        let mut url = self.blob_url(key);
        // With the account key: a SAS that reads this blob only, for a short while. A SAS
        // the operator gave goes as it is.
        let token = match sas {
            SasSource::Signed(signer) => {
                signer.blob_read(&self.container, key, Duration::from_secs(15 * 60))
            }
            SasSource::Static(token) => token.clone(),
        };
        url.set_query(Some(&token));
        Ok(url.to_string())
    }

    async fn list(&self, prefix: &str, single: bool) -> StoreResult<Vec<ObjectInfo>> {
        if single {
            let client = self.blob_client(prefix)?;
            let response = self
                .within("get properties of", prefix, client.get_properties(None))
                .await?;
            return Ok(vec![ObjectInfo {
                key: prefix.to_string(),
                size: response.content_length().ok().flatten().unwrap_or(0),
                etag: response
                    .etag()
                    .ok()
                    .flatten()
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
                modified: response
                    .last_modified()
                    .ok()
                    .flatten()
                    .map(|t| t.unix_timestamp()),
            }]);
        }
        let client = self.container_client()?;
        let options = BlobContainerClientListBlobsOptions {
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
            ..Default::default()
        };
        let mut items = client
            .list_blobs(Some(options))
            .map_err(|e| self.error(e, "list", prefix))?;
        let mut out = Vec::new();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| self.error(e, "list", prefix))?;
            let (Some(name), Some(props)) = (item.name, item.properties) else {
                continue;
            };
            out.push(ObjectInfo {
                key: name,
                size: props.content_length.unwrap_or(0),
                etag: props.etag.map(|e| e.to_string()).unwrap_or_default(),
                modified: props.last_modified.map(|t| t.unix_timestamp()),
            });
        }
        Ok(out)
    }

    async fn list_page(&self, prefix: &str, token: Option<String>) -> StoreResult<Page> {
        let client = self.container_client()?;
        let options = BlobContainerClientListBlobsOptions {
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
            marker: token,
            maxresults: Some(5000),
            ..Default::default()
        };
        let mut pages = client
            .list_blobs(Some(options))
            .map_err(|e| self.error(e, "list", prefix))?
            .into_pages();
        let Some(response) = pages.next().await else {
            return Ok(Page::default());
        };
        let listing = response
            .and_then(|r| r.into_model())
            .map_err(|e| self.error(e, "list", prefix))?;
        // The SDK lists flat; one level is folded out of it here.
        let mut page = Page::default();
        let mut dirs = std::collections::BTreeSet::new();
        for item in listing.blob_items {
            let Some(name) = item.name else { continue };
            let rest = name.strip_prefix(prefix).unwrap_or(&name);
            match rest.split_once('/') {
                Some((dir, _)) => {
                    dirs.insert(format!("{prefix}{dir}/"));
                }
                None => {
                    let props = item.properties.unwrap_or_default();
                    page.objects.push(ObjectInfo {
                        key: name.clone(),
                        size: props.content_length.unwrap_or(0),
                        etag: props.etag.map(|e| e.to_string()).unwrap_or_default(),
                        modified: props.last_modified.map(|t| t.unix_timestamp()),
                    });
                }
            }
        }
        page.dirs = dirs.into_iter().collect();
        page.next = listing.next_marker.filter(|m| !m.is_empty());
        Ok(page)
    }

    async fn read_range(
        &self,
        key: &str,
        etag: &str,
        range: Range<u64>,
        buffer: BytesMut,
    ) -> StoreResult<Chunk> {
        let client = self.blob_client(key)?;
        let expected = (range.end - range.start) as usize;
        if expected == 0 {
            let response = self
                .within("get properties of", key, client.get_properties(None))
                .await
                .map_err(|e| e.on_read(key))?;
            let current = response.etag().ok().flatten().map(|e| e.to_string());
            let unquoted = |e: &str| e.trim_matches('"').to_string();
            if current.as_deref().map(unquoted) != Some(unquoted(etag)) {
                return Err(StoreError::source_changed(key));
            }
            let meta = ObjectMeta {
                content_type: response.content_type().ok().flatten(),
                content_encoding: response.content_encoding().ok().flatten(),
                cache_control: response.cache_control().ok().flatten(),
                pairs: lowercase(response.metadata().unwrap_or_default()),
                tags: Default::default(),
            };
            return Ok(Chunk {
                data: Bytes::new(),
                meta,
                source_crc64: None,
                version_id: None,
            });
        }
        let options = BlobClientDownloadOptions {
            range: Some(range.clone().into()),
            if_match: Some(Etag::from(etag.to_string())),
            parallel: std::num::NonZero::new(1),
            partition_size: std::num::NonZero::new(expected.max(1)),
            ..Default::default()
        };
        let response = self
            .within("GET", key, client.download(Some(options)))
            .await
            .map_err(|e| e.on_read(key))?;
        let props = response.properties;
        let meta = ObjectMeta {
            content_type: props.content_type,
            content_encoding: props.content_encoding,
            cache_control: props.cache_control,
            pairs: lowercase(props.metadata),
            tags: Default::default(),
        };
        let mut body = response.body;
        let mut buf = buffer;
        buf.reserve(expected);
        loop {
            match tokio::time::timeout(self.settings.stall_timeout, body.next()).await {
                Err(_) => return Err(self.stalled("GET", key, self.settings.stall_timeout)),
                Ok(None) => break,
                Ok(Some(Ok(piece))) => buf.extend_from_slice(&piece),
                Ok(Some(Err(e))) => return Err(self.error(e, "GET", key)),
            }
        }
        if buf.len() != expected {
            return Err(StoreError::transient(format!(
                "GET {}: short body, {} of {expected} bytes",
                self.target(key),
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

/// Metadata with lowercase keys (Azure preserves the case it was given).
fn lowercase(meta: HashMap<String, String>) -> BTreeMap<String, String> {
    meta.into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_goes_out_little_endian_as_azure_returns_it() {
        // Azure answered a Put Blob of "Hello World" with x-ms-content-crc64: YeJLfssylmU=
        // (an azure-sdk-for-js recording of the real service).
        use base64::Engine;
        let (name, bytes) = transactional_header(&Checksum::of(
            crate::store::ChecksumKind::Crc64,
            b"Hello World",
        ));
        assert_eq!(name, "x-ms-content-crc64");
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(bytes),
            "YeJLfssylmU="
        );
    }

    #[test]
    fn reads_azurite_development_connection_strings() {
        let dev = AzureAccount::from_connection_string("UseDevelopmentStorage=true").expect("dev");
        assert_eq!(
            dev.endpoint.as_str(),
            "http://127.0.0.1:10000/devstoreaccount1"
        );
        assert!(
            matches!(dev.auth, AzureAuth::Key { ref account, .. } if account == AZURITE_ACCOUNT)
        );

        let cs = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};\
             BlobEndpoint=http://127.0.0.1:41234/devstoreaccount1;"
        );
        let acct = AzureAccount::from_connection_string(&cs).expect("azurite");
        assert_eq!(
            acct.endpoint.as_str(),
            "http://127.0.0.1:41234/devstoreaccount1"
        );
        assert!(matches!(acct.auth, AzureAuth::Key { ref key, .. } if key == AZURITE_KEY));
    }

    #[test]
    fn builds_the_public_endpoint_from_account_name() {
        let acct = AzureAccount::from_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=prod;SharedAccessSignature=sv=x&sig=y",
        )
        .expect("sas");
        assert_eq!(
            acct.endpoint.as_str(),
            "https://prod.blob.core.windows.net/"
        );
        assert!(matches!(acct.auth, AzureAuth::Sas(ref s) if s == "sv=x&sig=y"));
        assert!(format!("{:?}", acct.auth).contains("REDACTED"));
    }

    #[test]
    fn rejects_malformed_connection_strings() {
        let err = AzureAccount::from_connection_string("garbage").expect_err("bad");
        assert!(err.to_string().contains("Name=value"));
        let err = AzureAccount::from_connection_string("AccountKey=abc").expect_err("bad");
        assert!(
            err.to_string()
                .contains("neither AccountName nor BlobEndpoint")
        );
    }

    #[test]
    fn blob_urls_keep_slashes_and_escape_the_rest() {
        let account = AzureAccount {
            endpoint: Url::parse("http://127.0.0.1:10000/devstoreaccount1").expect("url"),
            auth: AzureAuth::Sas("sv=1&sig=2".into()),
        };
        let store =
            AzureStore::with_account(account, "dest", StoreSettings::default()).expect("store");
        let client = store.blob_client("dir/a b é.bin").expect("client");
        assert_eq!(
            client.url().as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/dest/dir/a%20b%20%C3%A9.bin"
        );
    }
}
