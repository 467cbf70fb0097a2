//! The stores blobway reads from and writes to, behind two traits: [`ObjectSource`] (list,
//! stat, ranged read pinned to a version) and [`ObjectSink`] (stage a block, list what is
//! staged, commit atomically, put a whole small object, look at what is there).
//!
//! One adapter per backend: [`s3`] (with its sink side in `s3_sink`), [`azure`], [`gcs`]
//! (a destination only), [`local`]. Every failure is a [`StoreError`]
//! with an [`ErrorClass`]; the class, not the text, decides what the engine does. This module
//! knows nothing of the engine.

pub mod azure;
pub mod azure_sas;
pub mod blocking;
mod checksum;
pub mod copy;
mod error;
pub mod gcs;
pub mod local;
pub use local::sync_deferred;
pub mod rules;
pub mod s3;
mod s3_sink;
pub mod tags;

/// S3 multipart limits as a destination.
pub use s3_sink::LIMITS as S3_SINK_LIMITS;
pub mod simulated;

pub use checksum::{Checksum, ChecksumKind, crc64};
pub use copy::{CopyFrom, CopyOrigin, CopyWay};
pub use error::{ErrorClass, StoreError, StoreResult};

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::location::{Location, Scheme};

/// Which AWS credentials and endpoint one side of a route uses when it is not the
/// environment's default — so `s3://a/ → s3://b/` can span two accounts or two servers.
/// Names only, never secrets: the profile's keys stay in the AWS config files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Access {
    /// An AWS profile (`~/.aws/config`, `~/.aws/credentials`): its credentials and region are
    /// used instead of the environment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// An S3 endpoint URL used instead of `AWS_ENDPOINT_URL(_S3)` and the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

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

/// One block of a planned object: its index, deterministic ID and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedBlock {
    /// Zero-based chunk index.
    pub index: u32,
    /// Deterministic block ID (ASCII, equal length for every block of an object).
    pub id: String,
    /// Size in bytes.
    pub size: u64,
}

/// An upload in progress: the destination key, the session the store opened for it (S3:
/// the multipart upload ID; GCS: the resumable session), if it needs one, and whether its
/// commit must refuse to replace an object already there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Upload<'a> {
    /// Destination key.
    pub key: &'a str,
    /// The session recorded when the upload began.
    pub session: Option<&'a str>,
    /// The commit (or whole put) succeeds only if no object is there (`If-None-Match: *`,
    /// GCS `ifGenerationMatch=0`); otherwise it fails with [`ErrorClass::Exists`].
    pub create_only: bool,
    /// The access tier the object is committed to, when chosen (stores with tiers only:
    /// [`ObjectSink::access_tiers`]).
    pub tier: Option<rules::AccessTier>,
    /// The storage class the object is written to, when chosen (S3 destinations).
    pub storage_class: Option<rules::StorageClass>,
}

impl<'a> Upload<'a> {
    /// The recorded session, or the error that starts the upload over when none was recorded
    /// (`target` names the object in it).
    pub fn recorded_session(&self, target: impl std::fmt::Display) -> StoreResult<&'a str> {
        self.session.ok_or_else(|| {
            StoreError::new(
                ErrorClass::UploadLost,
                None,
                format!("no upload session was recorded for {target}; it starts over"),
            )
        })
    }
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
    /// The chunk's first byte in the object.
    pub offset: u64,
    /// True for the object's last chunk.
    pub last: bool,
}

/// An object's metadata: the standard headers a copy keeps, and key/value pairs — the
/// source's user metadata, and the `blobway_*` pairs blobway writes with every committed
/// object so a later run recognises an identical destination without reading it back.
/// Every field is written, even when empty: the state file stores it field by field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Content-Type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Content-Encoding.
    #[serde(default)]
    pub content_encoding: Option<String>,
    /// Cache-Control.
    #[serde(default)]
    pub cache_control: Option<String>,
    /// Key/value pairs (keys lowercase).
    #[serde(default)]
    pub pairs: BTreeMap<String, String>,
    /// Object tags to write (`--copy-tags`); not part of the stored layout (an object record
    /// keeps them after it, see `state::codec`).
    #[serde(skip)]
    pub tags: tags::Tags,
}

impl ObjectMeta {
    /// The source's metadata without the `blobway_*` pairs an earlier copy left in it.
    pub fn from_source(mut meta: ObjectMeta) -> Self {
        meta.pairs.retain(|k, _| !k.starts_with(meta_keys::PREFIX));
        meta
    }
}

/// Metadata keys blobway writes.
pub mod meta_keys {
    /// What every key blobway writes starts with.
    pub const PREFIX: &str = "blobway_";
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
    /// Metadata pairs stored with it.
    pub meta: BTreeMap<String, String>,
}

/// Bytes read from a source, with the object's metadata as the read reported it.
#[derive(Clone, Debug, Default)]
pub struct Chunk {
    /// The bytes.
    pub data: Bytes,
    /// The object's metadata (empty when the store keeps none).
    pub meta: ObjectMeta,
    /// The object's own full-object CRC-64/NVME, where the store keeps one and answered it
    /// (S3, to the look at an empty range).
    pub source_crc64: Option<u64>,
    /// The store's ID of the version read, where it keeps versions (a versioned S3 bucket).
    pub version_id: Option<String>,
}

/// The hard limits and the upload protocol of a destination, which the planner and the
/// scheduler respect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkLimits {
    /// Largest block (chunk) the store accepts.
    pub max_block: u64,
    /// Most blocks one object may be committed from.
    pub max_blocks: u64,
    /// Smallest block except the last one (S3 parts: 5 MiB); 0 when there is none.
    pub min_block: u64,
    /// Every block but the last must be a multiple of this (GCS resumable: 256 KiB).
    pub granularity: u64,
    /// Largest object a single whole-object put accepts.
    pub max_single_put: u64,
    /// Blocks of one object must arrive one after the other, in order (GCS resumable).
    pub sequential: bool,
    /// Blocks staged from one machine are seen from every other (Azure blocks, S3 parts), so
    /// several workers may move one object's chunks at once. Not for a session bound to its
    /// sender's order (GCS) nor blocks staged on the sender's own disk.
    pub shared_blocks: bool,
    /// The store's own cap on one object's size, below blocks × block size (GCS: 5 TiB);
    /// `u64::MAX` when there is none.
    pub max_object_size: u64,
}

impl SinkLimits {
    /// The largest object the store can hold.
    pub fn max_object(&self) -> u64 {
        self.max_block
            .saturating_mul(self.max_blocks)
            .min(self.max_object_size)
    }
}

/// A place objects are read from.
#[async_trait]
pub trait ObjectSource: Send + Sync {
    /// Whether every call of this store is blocking filesystem work, done on a blocking
    /// thread: a chunk between two such stores runs on one blocking thread with its calls
    /// made there ([`blocking::inline`]), one hand-off per chunk instead of one per call.
    fn blocking_io(&self) -> bool {
        false
    }

    /// How a destination names this store in a server-side copy; None when it cannot be read
    /// that way.
    fn copy_origin(&self) -> Option<CopyOrigin> {
        None
    }

    /// A GET of `key` (of its version `version`, where given) signed with the store's
    /// current credentials, for a destination that copies from a URL ([`CopyWay::Url`]);
    /// valid for a while, never past the credentials' own expiry. A bearer secret: never
    /// logged or shown.
    async fn presign_get(&self, key: &str, version: Option<&str>) -> StoreResult<String> {
        let _ = (key, version);
        Err(copy::unsupported(
            "this source cannot be read from a signed URL",
        ))
    }

    /// The metadata of `key` without its bytes, failing with [`ErrorClass::SourceChanged`]
    /// unless it is still the version `etag` — the store's version `version`, where given.
    async fn look_at(&self, key: &str, etag: &str, version: Option<&str>) -> StoreResult<Chunk> {
        let _ = version;
        self.read_range(key, etag, 0..0, BytesMut::new()).await
    }

    /// Whether objects here carry tags [`ObjectSource::tags`] reads (`--copy-tags`).
    fn has_tags(&self) -> bool {
        false
    }

    /// The tags of `key` (one request).
    async fn tags(&self, key: &str) -> StoreResult<tags::Tags> {
        let _ = key;
        Err(StoreError::new(
            ErrorClass::Invalid,
            None,
            "--copy-tags: this source keeps no object tags",
        ))
    }

    /// Every object under `prefix` (recursively), or the single object `prefix` names when
    /// `single` is set.
    async fn list(&self, prefix: &str, single: bool) -> StoreResult<Vec<ObjectInfo>>;

    /// Reads `range` of `key` into `buffer` (empty; reused from earlier chunks when it has the
    /// room), failing with [`ErrorClass::SourceChanged`] unless the object is still the version
    /// `etag`. An empty range checks the version and reads the metadata only.
    async fn read_range(
        &self,
        key: &str,
        etag: &str,
        range: Range<u64>,
        buffer: BytesMut,
    ) -> StoreResult<Chunk>;

    /// [`ObjectSource::read_range`] of the store's version `version` of `key`, where given
    /// (a versioned S3 bucket): the bytes of exactly that version.
    async fn read_version_range(
        &self,
        key: &str,
        etag: &str,
        version: Option<&str>,
        range: Range<u64>,
        buffer: BytesMut,
    ) -> StoreResult<Chunk> {
        let _ = version;
        self.read_range(key, etag, range, buffer).await
    }

    /// One page of what lies directly under `prefix` (delimiter `/`), for browsing.
    async fn list_page(&self, prefix: &str, token: Option<String>) -> StoreResult<Page>;

    /// The objects under `prefix` (recursively) whose keys come after `after`, in key
    /// (byte) order, a page of about `limit` at a time: planning lists this way, recording
    /// the last key of each page it plans, so a stopped listing resumes where it was. A store
    /// that cannot list from a key answers everything after `after` in one page.
    async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Listed> {
        let _ = limit;
        let mut objects = self.list(prefix, false).await?;
        objects.retain(|o| after.is_none_or(|after| o.key.as_str() > after));
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Listed {
            objects,
            next: None,
        })
    }
}

/// A page of a listing in key order.
#[derive(Clone, Debug, Default)]
pub struct Listed {
    /// The objects, keys increasing.
    pub objects: Vec<ObjectInfo>,
    /// The last key this page covered when more may follow (the next page starts after it);
    /// `None` at the end of the listing.
    pub next: Option<String>,
}

/// A place objects are written to, block by block, made visible only by one commit.
#[async_trait]
pub trait ObjectSink: Send + Sync {
    /// As [`ObjectSource::blocking_io`].
    fn blocking_io(&self) -> bool {
        false
    }

    /// The store's hard limits and protocol.
    fn limits(&self) -> SinkLimits;

    /// The transactional checksum this store's uploads carry when `requested` is asked for
    /// (a store that checks only another kind says which).
    fn checksum_kind(&self, requested: ChecksumKind) -> ChecksumKind {
        requested
    }

    /// Whether a put or commit that succeeds has itself made sure the destination now holds
    /// exactly what was written (a local file checked by its inode), so it is not read back.
    fn confirms_writes(&self) -> bool {
        false
    }

    /// Whether [`ObjectSink::list_existing`] returns each object's metadata. When it does not
    /// (S3 listings carry none), the planner asks [`ObjectSink::head`] for the objects whose
    /// size could make them identical.
    fn listing_has_metadata(&self) -> bool {
        true
    }

    /// How this store names objects: what a key becomes there and which names collide.
    fn naming(&self) -> rules::Naming {
        rules::Naming::S3
    }

    /// Which metadata this store accepts.
    fn meta_rules(&self) -> rules::MetaRules {
        rules::MetaRules::ANY
    }

    /// Whether objects can be written to a chosen access tier here (`--access-tier`).
    fn access_tiers(&self) -> bool {
        false
    }

    /// Whether an upload session here is a bearer secret (a GCS session URI lets whoever holds
    /// it write the object), which a shared state database holds only sealed.
    fn bearer_sessions(&self) -> bool {
        false
    }

    /// Whether objects can be written to a chosen storage class here (`--storage-class`).
    fn storage_classes(&self) -> bool {
        false
    }

    /// Which object tags this store holds (`--copy-tags`, from [`ObjectMeta::tags`]); none
    /// when it holds none.
    fn tag_rules(&self) -> Option<tags::TagRules> {
        None
    }

    /// How this store copies from `origin` itself ([`ObjectSink::copy_block`],
    /// [`ObjectSink::copy_whole`]), if it can.
    fn copies_from(&self, origin: &CopyOrigin) -> Option<CopyWay> {
        let _ = origin;
        None
    }

    /// Stages block `index` (ID `id`) by having the store copy `from` itself; returns the
    /// block's CRC-64/NVME when the store reported one. Copying the same block again
    /// overwrites it.
    async fn copy_block(
        &self,
        upload: Upload<'_>,
        index: u32,
        id: &str,
        from: CopyFrom<'_>,
    ) -> StoreResult<Option<u64>> {
        let _ = (upload, index, id, from);
        Err(copy::unsupported(
            "this destination cannot copy store to store",
        ))
    }

    /// Writes a whole (small) object by having the store copy `from` itself, with `meta`.
    async fn copy_whole(
        &self,
        upload: Upload<'_>,
        from: CopyFrom<'_>,
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        let _ = (upload, from, meta);
        Err(copy::unsupported(
            "this destination cannot copy store to store",
        ))
    }

    /// Makes sure the destination container exists and the credentials may write to it.
    async fn prepare(&self) -> StoreResult<()>;

    /// Begins a multi-block upload of `upload.key` carrying `meta` (on condition that nothing
    /// is there at its end, when `upload.create_only` and the condition belongs to the
    /// session); returns the session to record, when the store keeps one.
    async fn begin(&self, upload: Upload<'_>, meta: &ObjectMeta) -> StoreResult<Option<String>> {
        let _ = (upload, meta);
        Ok(None)
    }

    /// Stages one block. Staging the same block again overwrites it.
    async fn put_block(
        &self,
        upload: Upload<'_>,
        block: BlockRef<'_>,
        data: Bytes,
    ) -> StoreResult<()>;

    /// Which of `blocks` the store does not hold staged as planned (index and size).
    async fn missing_blocks(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
    ) -> StoreResult<Vec<u32>>;

    /// Makes the object visible, atomically, as the concatenation of `blocks`, with `meta`.
    async fn commit(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
        meta: &ObjectMeta,
    ) -> StoreResult<()>;

    /// Sessions of uploads of `key` the store still holds that were begun within `window`
    /// (ms since the epoch) — found again after a crash came between opening one and
    /// recording it. Empty where the store cannot list them.
    async fn uploads_between(
        &self,
        key: &str,
        window: std::ops::Range<i64>,
    ) -> StoreResult<Vec<String>> {
        let _ = (key, window);
        Ok(Vec::new())
    }

    /// Gives up an upload that will not be committed (a cancelled job).
    async fn abort(&self, upload: Upload<'_>) -> StoreResult<()> {
        let _ = upload;
        Ok(())
    }

    /// Writes a whole (small) object in one request, verified by `checksum`.
    async fn put_whole(
        &self,
        upload: Upload<'_>,
        data: Bytes,
        checksum: Checksum,
        meta: &ObjectMeta,
    ) -> StoreResult<()>;

    /// What the destination holds under `key`, if anything.
    async fn head(&self, key: &str) -> StoreResult<Option<DestObject>>;

    /// Every committed object under `prefix`, by key, with its size and metadata.
    async fn list_existing(&self, prefix: &str) -> StoreResult<BTreeMap<String, DestObject>>;

    /// One page of [`ObjectSink::list_existing`], keys increasing, and the token of the next
    /// page: planning merges it with the source's listing without holding it whole. A store
    /// that cannot page answers everything in one page.
    async fn list_existing_page(
        &self,
        prefix: &str,
        token: Option<String>,
    ) -> StoreResult<(Vec<(String, DestObject)>, Option<String>)> {
        if token.is_some() {
            return Ok((Vec::new(), None));
        }
        Ok((
            self.list_existing(prefix).await?.into_iter().collect(),
            None,
        ))
    }
}

/// Opens the source store a location lives in.
pub async fn open_source(
    location: &Location,
    access: &Access,
    settings: StoreSettings,
) -> anyhow::Result<Arc<dyn ObjectSource>> {
    Ok(match location.scheme {
        Scheme::S3 => Arc::new(s3::S3Store::connect(&location.container, access, settings).await?),
        Scheme::Azure => Arc::new(azure::AzureStore::connect(&location.container, settings)?),
        Scheme::Local => Arc::new(local::LocalStore::new(&location.container)),
        Scheme::Gcs => anyhow::bail!(
            "Google Cloud Storage is supported as a destination only; copy from s3://, az:// \
             or a local path"
        ),
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
        Scheme::Gcs => Err(StoreError::new(
            ErrorClass::Invalid,
            None,
            "Google Cloud Storage is a destination only; it cannot be browsed",
        )),
    }
}

/// Opens the destination store a location lives in.
pub async fn open_sink(
    location: &Location,
    access: &Access,
    settings: StoreSettings,
) -> anyhow::Result<Arc<dyn ObjectSink>> {
    Ok(match location.scheme {
        Scheme::Azure => Arc::new(azure::AzureStore::connect(&location.container, settings)?),
        Scheme::Local => Arc::new(local::LocalStore::new(&location.container)),
        Scheme::S3 => Arc::new(s3::S3Store::connect(&location.container, access, settings).await?),
        Scheme::Gcs => {
            Arc::new(gcs::GcsStore::connect(&location.container, access, settings).await?)
        }
    })
}
