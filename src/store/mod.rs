//! The stores blobway reads from and writes to, behind two traits: [`ObjectSource`] (list,
//! stat, ranged read pinned to a version) and [`ObjectSink`] (stage a block, list what is
//! staged, commit atomically, put a whole small object, look at what is there).
//!
//! One adapter per backend: [`s3`], [`azure`], [`local`]. Every failure is a [`StoreError`]
//! with an [`ErrorClass`]; the class, not the text, decides what the engine does. This module
//! knows nothing of the engine.

pub mod azure;
pub mod azure_sas;
pub mod local;
pub mod s3;
pub mod simulated;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::location::{Location, Scheme};
use crate::redact::redact;

/// What kind of failure a store reported, which decides what happens next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorClass {
    /// The store asked us to slow down (429, 503 SlowDown / ServerBusy): retry, and tell the
    /// concurrency controller at once.
    Throttled,
    /// A passing fault (timeout, reset, 500, stalled or short body): retry with backoff.
    Transient,
    /// The source object is no longer the version that was planned (412): fail the file.
    SourceChanged,
    /// The bucket, container or object does not exist.
    NotFound,
    /// The credentials were rejected.
    Auth,
    /// The credentials are valid but not allowed to do this.
    Permission,
    /// The request can never succeed as made (bad name, too large, unsupported).
    Invalid,
    /// The destination ran out of space or quota.
    Capacity,
}

impl ErrorClass {
    /// True for the classes worth another attempt.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Throttled | ErrorClass::Transient)
    }

    /// True for the classes that will fail every other request of the job too, so the job
    /// stops at once instead of failing file by file.
    pub fn stops_job(self) -> bool {
        matches!(
            self,
            ErrorClass::Auth | ErrorClass::Permission | ErrorClass::Capacity
        )
    }

    /// Upper-case name used in summaries and the state database.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Throttled => "THROTTLED",
            ErrorClass::Transient => "TRANSIENT",
            ErrorClass::SourceChanged => "SOURCE_CHANGED",
            ErrorClass::NotFound => "NOT_FOUND",
            ErrorClass::Auth => "AUTH",
            ErrorClass::Permission => "PERMISSION",
            ErrorClass::Invalid => "INVALID",
            ErrorClass::Capacity => "CAPACITY",
        }
    }
}

/// A failure reported by a store, already stripped of secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreError {
    /// What kind of failure this is.
    pub class: ErrorClass,
    /// The HTTP status, when the store answered.
    pub status: Option<u16>,
    /// What happened and, for fatal classes, how to fix it. Never contains secrets.
    pub message: String,
    /// How long the store asked us to wait before trying again.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl StoreError {
    /// Makes an error; the message is redacted here, once, for every store.
    pub fn new(class: ErrorClass, status: Option<u16>, message: impl AsRef<str>) -> Self {
        Self {
            class,
            status,
            message: redact(message.as_ref()),
            retry_after: None,
        }
    }

    /// A transient failure without an HTTP status (connection reset, stall, short body).
    pub fn transient(message: impl AsRef<str>) -> Self {
        Self::new(ErrorClass::Transient, None, message)
    }

    /// Sets the delay the store asked for.
    pub fn with_retry_after(mut self, delay: Option<Duration>) -> Self {
        self.retry_after = delay;
        self
    }

    /// The message of a planned object that changed under us.
    pub fn source_changed(key: &str) -> Self {
        Self::new(
            ErrorClass::SourceChanged,
            Some(412),
            format!(
                "source changed since planning: `{key}` no longer matches the version recorded \
                 when the job was planned; run the same `blobway copy` again to copy the new \
                 version"
            ),
        )
    }

    /// How a failed read of a planned object reads: gone (404) or no longer matching its
    /// version (412) both mean the source changed since planning.
    pub fn on_read(self, key: &str) -> Self {
        match (self.class, self.status) {
            (ErrorClass::SourceChanged, _) | (ErrorClass::NotFound, _) | (_, Some(412)) => {
                Self::source_changed(key)
            }
            _ => self,
        }
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = redact(&format!("{what}: {}", self.message));
        self
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{} (HTTP {status}): {}", self.class.name(), self.message),
            None => write!(f, "{}: {}", self.class.name(), self.message),
        }
    }
}

impl std::error::Error for StoreError {}

/// How the stores of a run behave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StoreSettings {
    /// A request that moves no bytes for this long is abandoned (and retried).
    pub stall_timeout: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(60),
        }
    }
}

impl StoreSettings {
    /// The slowest upload rate not taken for a stall.
    pub const MIN_UPLOAD_RATE: f64 = 1024.0 * 1024.0;

    /// How long an upload of `bytes` may take before it counts as stalled: the stall timeout
    /// plus the time the bytes need at [`Self::MIN_UPLOAD_RATE`] (an upload body cannot be
    /// watched byte by byte through the SDK without copying it).
    pub fn upload_deadline(&self, bytes: u64) -> Duration {
        self.stall_timeout + Duration::from_secs_f64(bytes as f64 / Self::MIN_UPLOAD_RATE)
    }
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// One object as listed at the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Full key inside the container.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The version token every ranged read is pinned to (the ETag, as the store returns it).
    pub etag: String,
    /// Last modification, seconds since the Unix epoch, when known.
    pub modified: Option<i64>,
}

/// One level of a listing: the sub-prefixes ("directories") and objects directly under a
/// prefix, and where the next page starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Full prefixes one level down, each ending in `/`.
    pub dirs: Vec<String>,
    /// Objects directly under the prefix.
    pub objects: Vec<ObjectInfo>,
    /// Continuation token of the next page, if there is one.
    pub next: Option<String>,
}

/// One block the destination holds staged (uncommitted) for an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedBlock {
    /// The block ID, as given to [`ObjectSink::put_block`].
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Which transactional checksum uploads carry, for the store to check on arrival.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
pub enum ChecksumKind {
    /// CRC-64/NVME (`x-ms-content-crc64`): cheap (tens of GB/s); Azure checks it.
    #[default]
    Crc64,
    /// MD5 (`Content-MD5`): ~0.5 GB/s per core; Azure and Azurite check it.
    Md5,
}

/// The transactional checksum of one upload's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// CRC-64/NVME.
    Crc64(u64),
    /// MD5.
    Md5([u8; 16]),
}

impl Checksum {
    /// The checksum of `kind` over `data`.
    pub fn of(kind: ChecksumKind, data: &[u8]) -> Self {
        match kind {
            ChecksumKind::Crc64 => Checksum::Crc64(crc64(data)),
            ChecksumKind::Md5 => {
                use md5::Digest;
                Checksum::Md5(md5::Md5::digest(data).into())
            }
        }
    }

    /// True when `data` has this checksum.
    pub fn matches(&self, data: &[u8]) -> bool {
        match self {
            Checksum::Crc64(crc) => crc64(data) == *crc,
            Checksum::Md5(_) => Checksum::of(ChecksumKind::Md5, data) == *self,
        }
    }
}

/// CRC-64/NVME of `data`, the CRC Azure (`x-ms-content-crc64`, little-endian) and S3
/// (`x-amz-checksum-crc64nvme`) use.
pub fn crc64(data: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data)
}

/// A block to stage: its index in the object, its deterministic ID and the checksum of its
/// bytes, which the store checks on arrival.
#[derive(Clone, Copy, Debug)]
pub struct BlockRef<'a> {
    /// Zero-based chunk index.
    pub index: u32,
    /// Deterministic block ID (ASCII, equal length for every block of an object).
    pub id: &'a str,
    /// The transactional checksum of the block's bytes.
    pub checksum: Checksum,
}

/// Metadata blobway writes with every committed object so that a later run can recognise an
/// identical destination without reading it back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key/value pairs stored with the object (keys are lowercase identifiers).
    pub pairs: BTreeMap<String, String>,
}

/// Metadata keys blobway writes.
pub mod meta_keys {
    /// The source ETag the object was copied from.
    pub const SOURCE_ETAG: &str = "blobway_source_etag";
    /// The object size in bytes.
    pub const SIZE: &str = "blobway_size";
    /// The whole-object CRC-64/NVME, hex.
    pub const CRC64NVME: &str = "blobway_crc64nvme";
}

/// What the destination holds under a key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestObject {
    /// Size in bytes.
    pub size: u64,
    /// Metadata stored with it.
    pub meta: BTreeMap<String, String>,
}

/// The hard limits of a destination that the planner must respect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkLimits {
    /// Largest block (chunk) the store accepts.
    pub max_block: u64,
    /// Most blocks one object may be committed from.
    pub max_blocks: u64,
    /// Smallest block except the last one (S3 parts: 5 MiB); 0 when there is none.
    pub min_block: u64,
    /// Largest object a single whole-object put accepts.
    pub max_single_put: u64,
}

impl SinkLimits {
    /// The largest object the store can hold.
    pub fn max_object(&self) -> u64 {
        self.max_block.saturating_mul(self.max_blocks)
    }
}

/// A place objects are read from.
#[async_trait]
pub trait ObjectSource: Send + Sync {
    /// Every object under `prefix` (recursively), or the single object `prefix` names when
    /// `single` is set.
    async fn list(&self, prefix: &str, single: bool) -> StoreResult<Vec<ObjectInfo>>;

    /// Reads `range` of `key` into `buffer` (empty; reused from earlier chunks when it has the
    /// room), failing with [`ErrorClass::SourceChanged`] unless the object is still the version
    /// `etag`. An empty range checks the version only.
    async fn read_range(
        &self,
        key: &str,
        etag: &str,
        range: Range<u64>,
        buffer: BytesMut,
    ) -> StoreResult<Bytes>;

    /// One page of what lies directly under `prefix` (delimiter `/`), for browsing.
    async fn list_page(&self, prefix: &str, token: Option<String>) -> StoreResult<Page>;
}

/// A place objects are written to, block by block, made visible only by one commit.
#[async_trait]
pub trait ObjectSink: Send + Sync {
    /// The store's hard limits.
    fn limits(&self) -> SinkLimits;

    /// Makes sure the destination container exists and the credentials may write to it.
    async fn prepare(&self) -> StoreResult<()>;

    /// Stages one block of `key`. Staging the same ID again overwrites it.
    async fn put_block(&self, key: &str, block: BlockRef<'_>, data: Bytes) -> StoreResult<()>;

    /// The blocks staged (uncommitted) for `key`.
    async fn staged_blocks(&self, key: &str) -> StoreResult<Vec<StagedBlock>>;

    /// Makes `key` visible, atomically, as the concatenation of `block_ids`.
    async fn commit(&self, key: &str, block_ids: &[String], meta: &ObjectMeta) -> StoreResult<()>;

    /// Writes a whole (small) object in one request, verified by `checksum`.
    async fn put_whole(
        &self,
        key: &str,
        data: Bytes,
        checksum: Checksum,
        meta: &ObjectMeta,
    ) -> StoreResult<()>;

    /// What the destination holds under `key`, if anything.
    async fn head(&self, key: &str) -> StoreResult<Option<DestObject>>;

    /// Every committed object under `prefix`, by key, with its size and metadata.
    async fn list_existing(&self, prefix: &str) -> StoreResult<BTreeMap<String, DestObject>>;
}

/// Opens the source store a location lives in.
pub async fn open_source(
    location: &Location,
    settings: StoreSettings,
) -> anyhow::Result<Arc<dyn ObjectSource>> {
    Ok(match location.scheme {
        Scheme::S3 => Arc::new(s3::S3Store::connect(&location.container, settings).await?),
        Scheme::Azure => Arc::new(azure::AzureStore::connect(&location.container, settings)?),
        Scheme::Local => Arc::new(local::LocalStore::new(&location.container)),
    })
}

/// The buckets (S3) or containers (Azure) the environment's credentials can see.
pub async fn list_containers(scheme: Scheme) -> StoreResult<Vec<String>> {
    match scheme {
        Scheme::S3 => s3::list_buckets().await,
        Scheme::Azure => {
            let store = azure::AzureStore::connect("", StoreSettings::default())
                .map_err(|e| StoreError::new(ErrorClass::Auth, None, format!("{e:#}")))?;
            store.containers().await
        }
        Scheme::Local => Err(StoreError::new(
            ErrorClass::Invalid,
            None,
            "a local path has no containers; browse a directory instead",
        )),
    }
}

/// Opens the destination store a location lives in.
pub async fn open_sink(
    location: &Location,
    settings: StoreSettings,
) -> anyhow::Result<Arc<dyn ObjectSink>> {
    Ok(match location.scheme {
        Scheme::Azure => Arc::new(azure::AzureStore::connect(&location.container, settings)?),
        Scheme::Local => Arc::new(local::LocalStore::new(&location.container)),
        Scheme::S3 => anyhow::bail!(
            "S3 as a destination is not supported yet; copy to az://container/path or a local \
             path"
        ),
    })
}
