//! The data plane, one unit of work at a time, stateless: an upload begins (the source's
//! metadata is read, pinned to the planned version, and the destination opens its session); a
//! chunk is one ranged read pinned to the planned version, checksummed (CRC-64/NVME for the
//! end-to-end record and, by default, as the transactional checksum the store verifies on
//! arrival; MD5 on request), and one block upload — or one whole-object put for an object that
//! fits in a chunk; a commit asks the destination which planned blocks it lacks, commits only
//! when it lacks none, and reads the object back (size, source version) before it counts. Bytes live in memory only between the read and the upload.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::buffers::BufferPool;
use super::verify::{self, ObjectCrc};
use crate::state::Verification;
use crate::state::lease::Lease;
use crate::store::copy::{self, Route, TransferMode};
use crate::store::rules::{InvalidMetadata, map_metadata};
use crate::store::{
    BlockRef, Checksum, ChecksumKind, CopyFrom, CopyOrigin, CopyWay, DestObject, ErrorClass,
    ObjectMeta, ObjectSink, ObjectSource, PlannedBlock, StoreError, StoreResult, Upload, meta_keys,
};

/// Where an object goes: the store, the key, and the upload session, if one was opened.
#[derive(Clone)]
pub struct Target {
    /// The destination store.
    pub sink: Arc<dyn ObjectSink>,
    /// Destination key.
    pub key: String,
    /// The session the destination opened for this upload.
    pub session: Option<String>,
    /// The commit must not replace an object already there (`--if-exists skip|fail`).
    pub create_only: bool,
    /// The access tier to commit to (`--access-tier`).
    pub tier: Option<crate::store::rules::AccessTier>,
    /// The storage class to write to (`--storage-class`).
    pub storage_class: Option<crate::store::rules::StorageClass>,
}

impl Target {
    fn upload(&self) -> Upload<'_> {
        Upload {
            key: &self.key,
            session: self.session.as_deref(),
            create_only: self.create_only,
            tier: self.tier,
            storage_class: self.storage_class,
        }
    }
}

/// One chunk to move.
#[derive(Clone)]
pub struct ChunkWork {
    /// Where from.
    pub source: Arc<dyn ObjectSource>,
    /// Where to.
    pub target: Target,
    /// Source key.
    pub key: String,
    /// The planned source version.
    pub etag: String,
    /// The store's ID of that version (a versioned S3 bucket), once the upload began: every
    /// copy from a URL or by name reads exactly it.
    pub version_id: Option<String>,
    /// Bytes of the source object this chunk covers.
    pub range: Range<u64>,
    /// Chunk index.
    pub index: u32,
    /// True for the object's last chunk.
    pub last: bool,
    /// Deterministic block ID.
    pub block_id: String,
    /// For an object that is a single chunk: blobway's metadata to put it with (the source's
    /// own metadata, read with the bytes, is added).
    pub whole: Option<ObjectMeta>,
    /// The transactional checksum the upload carries.
    pub checksum: ChecksumKind,
    /// Where the chunk's buffer comes from and goes back to.
    pub buffers: Arc<BufferPool>,
    /// What happens to metadata the destination cannot hold (an object of one chunk).
    pub invalid_metadata: InvalidMetadata,
    /// The source's tags go with an object of one chunk (`--copy-tags`).
    pub copy_tags: bool,
    /// The job's server-side copying, when its chunks go store to store.
    pub server: Option<Arc<ServerCopy>>,
}

/// What a moved chunk reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMoved {
    /// Bytes moved.
    pub bytes: u64,
    /// CRC-64/NVME of those bytes, when known (a chunk the stores copied themselves has one
    /// only where the destination reported it).
    pub crc64: Option<u64>,
    /// True when the destination reported `crc64` (the stores copied the bytes); false when
    /// blobway computed it over the bytes it read.
    pub crc_reported: bool,
    /// How a whole object written by this one chunk was verified (none for a block).
    pub verified: Option<Verification>,
}

/// A job's server-side copying ([`copy::choose_route`]): where its source is, whether a copy
/// the stores refuse falls back to the client, and the refusal that made the job fall back
/// for good.
#[derive(Debug)]
pub struct ServerCopy {
    origin: Option<CopyOrigin>,
    way: CopyWay,
    fallback: bool,
    refused: std::sync::OnceLock<String>,
    /// Chunks carried through blobway because their signed URL was too long (`auto`).
    through_client: std::sync::atomic::AtomicU64,
}

impl ServerCopy {
    /// How a job with `mode` copies between `source` and `sink`: None through the client.
    /// A route that cannot copy store to store under `--transfer server` (planned when it
    /// could; the stores changed since) fails every chunk with the reason.
    pub fn for_job(
        mode: TransferMode,
        source: &dyn ObjectSource,
        sink: &dyn ObjectSink,
    ) -> Option<Arc<Self>> {
        let (origin, fallback, refused) = match copy::route_between(mode, source, sink) {
            Ok(Route::Client) => return None,
            Ok(Route::Server { fallback }) => (source.copy_origin(), fallback, None),
            Err(reason) => {
                tracing::warn!("{reason}");
                (None, false, Some(reason))
            }
        };
        let way = origin
            .as_ref()
            .and_then(|origin| sink.copies_from(origin))
            .unwrap_or(CopyWay::Native);
        let server = Self {
            origin,
            way,
            fallback,
            refused: std::sync::OnceLock::new(),
            through_client: Default::default(),
        };
        if let Some(reason) = refused {
            let _ = server.refused.set(reason);
        }
        Some(Arc::new(server))
    }

    /// The origin to copy from, unless the stores refused (or there is none).
    fn usable(&self) -> Option<&CopyOrigin> {
        self.origin
            .as_ref()
            .filter(|_| self.refused.get().is_none())
    }

    /// Records the first refusal (said once, in the log): the job's later chunks go through
    /// the client.
    fn refuse(&self, error: &StoreError) {
        if self.refused.set(error.message.clone()).is_ok() {
            tracing::warn!(
                "the stores refused a server-side copy ({}); this job's bytes go through \
                 blobway from now on",
                error.message
            );
        }
    }

    /// Whether the job's bytes go store to store (no refusal yet).
    pub fn active(&self) -> bool {
        self.usable().is_some()
    }

    /// Whether a `--transfer server` job (which never falls back).
    pub fn strict(&self) -> bool {
        !self.fallback
    }

    /// Whether some chunks went through blobway while the route stood (signed URLs too long).
    pub fn some_through_client(&self) -> bool {
        self.through_client
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    }

    /// Whether an object's source must be checked before its commit: blocks copied from a
    /// signed URL are not pinned to a version by the store.
    pub fn pins_before_commit(&self) -> bool {
        self.way == CopyWay::Url
    }
}

/// Moves one chunk: store to store where the job copies that way (falling back to the client
/// as [`ServerCopy`] allows), else read, checksummed and written here.
pub async fn move_chunk(work: &ChunkWork) -> StoreResult<ChunkMoved> {
    if let Some(server) = work.server.as_deref() {
        let empty = work.range.is_empty();
        match server.usable() {
            // Nothing to read: an empty object is written as a client-side copy would.
            Some(_) if empty && server.way == CopyWay::Url => {}
            Some(origin) => {
                // A URL too long for the destination (a session token and a long key): this
                // chunk goes through blobway, or fails under `server`.
                let sign = || async {
                    let url = match server.way {
                        CopyWay::Url => Some(
                            work.source
                                .presign_get(&work.key, work.version_id.as_deref())
                                .await?,
                        ),
                        CopyWay::Native => None,
                    };
                    Ok::<_, StoreError>(match url.as_ref().map_or(0, String::len) {
                        len if len > copy::MAX_COPY_SOURCE_URL => Err(len),
                        _ => Ok(url),
                    })
                };
                let through_client = |len: usize| async move {
                    let too_long = StoreError::new(
                        ErrorClass::Invalid,
                        None,
                        format!(
                            "the signed URL of `{}` is {len} bytes, over the {} the destination \
                             takes as a copy source; --transfer auto copies such objects \
                             through blobway",
                            work.key,
                            copy::MAX_COPY_SOURCE_URL
                        ),
                    );
                    if !server.fallback {
                        return Err(too_long);
                    }
                    if server
                        .through_client
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        == 0
                    {
                        tracing::warn!("{}: such chunks go through blobway", too_long.message);
                    }
                    move_through_client(work).await
                };
                let url = match sign().await? {
                    Ok(url) => url,
                    Err(len) => return through_client(len).await,
                };
                let mut copied = copy_chunk(work, origin, server.way, url.as_deref()).await;
                if server.way == CopyWay::Url && matches!(&copied, Err(e) if e.copy_refused) {
                    // An expired (or refused) signature: signed again, once.
                    copied = match sign().await? {
                        Ok(url) => copy_chunk(work, origin, server.way, url.as_deref()).await,
                        Err(len) => return through_client(len).await,
                    };
                }
                match copied {
                    Err(e) if copy::refuses_route(&e) && server.fallback => server.refuse(&e),
                    Err(e) if copy::refuses_route(&e) => return Err(copy::refused(&e)),
                    moved => return moved,
                }
            }
            None if !server.fallback => {
                let reason = server.refused.get().cloned().unwrap_or_default();
                return Err(StoreError::new(ErrorClass::Invalid, None, reason));
            }
            None => {}
        }
    }
    move_through_client(work).await
}

/// Has the stores copy one chunk themselves, pinned to the planned version: a block of a
/// multi-block upload, or a whole object of one chunk (its source metadata read first, as the
/// client path reads it with the bytes, and the result read back). From a signed URL, a whole
/// object is staged as its one block, its source checked, then committed.
async fn copy_chunk(
    work: &ChunkWork,
    origin: &CopyOrigin,
    way: CopyWay,
    url: Option<&str>,
) -> StoreResult<ChunkMoved> {
    let from = CopyFrom {
        origin,
        key: &work.key,
        etag: &work.etag,
        version: work.version_id.as_deref(),
        range: &work.range,
        url,
    };
    let bytes = work.range.end - work.range.start;
    let sink = work.target.sink.as_ref();
    let (crc64, verified) = match &work.whole {
        Some(blobway) if way == CopyWay::Url => {
            // Tags the destination cannot hold fail the object before anything is staged.
            let tags = whole_with_tags(work, ObjectMeta::default()).await?.tags;
            let crc = sink
                .copy_block(work.target.upload(), work.index, &work.block_id, from)
                .await?;
            let (mut source_meta, source_crc) = SourcePin::of(work).check().await?;
            source_meta.tags = tags;
            let object = crc.map(|value| ObjectCrc { value, read: false });
            let pinned = work.version_id.is_some();
            let verified = verify::verification(&work.key, object, source_crc, pinned)?;
            let mut meta =
                meta_for_destination(&work.target, source_meta, blobway, work.invalid_metadata)?;
            if let Some(crc) = crc {
                meta.pairs
                    .insert(meta_keys::CRC64NVME.into(), format!("{crc:016x}"));
            }
            let source_etag = meta.pairs.get(meta_keys::SOURCE_ETAG).cloned();
            let block = PlannedBlock {
                index: work.index,
                id: work.block_id.clone(),
                size: bytes,
            };
            let put = sink
                .commit(work.target.upload(), std::slice::from_ref(&block), &meta)
                .await;
            confirm_write(put, sink, &work.target.key, bytes, source_etag.as_deref()).await?;
            (crc, Some(verified))
        }
        Some(blobway) => {
            let (source_meta, _) = SourcePin::of(work).check().await?;
            let source_meta = whole_with_tags(work, source_meta).await?;
            let meta =
                meta_for_destination(&work.target, source_meta, blobway, work.invalid_metadata)?;
            let source_etag = meta.pairs.get(meta_keys::SOURCE_ETAG).cloned();
            let put = sink.copy_whole(work.target.upload(), from, &meta).await;
            confirm_write(put, sink, &work.target.key, bytes, source_etag.as_deref()).await?;
            // S3 copied it by name within itself, pinned to the planned version.
            let pinned = work.version_id.is_some();
            (
                None,
                Some(verify::verification(&work.key, None, None, pinned)?),
            )
        }
        None => (
            sink.copy_block(work.target.upload(), work.index, &work.block_id, from)
                .await?,
            None,
        ),
    };
    Ok(ChunkMoved {
        bytes,
        crc64,
        crc_reported: true,
        verified,
    })
}

/// Reads, checksums and writes one chunk.
async fn move_through_client(work: &ChunkWork) -> StoreResult<ChunkMoved> {
    let expected = work.range.end - work.range.start;
    let buffer = work.buffers.take(expected as usize);
    let chunk = work
        .source
        .read_version_range(
            &work.key,
            &work.etag,
            work.version_id.as_deref(),
            work.range.clone(),
            buffer,
        )
        .await?;
    let data = chunk.data.clone();
    let moved = send_chunk(work, chunk.data, chunk.meta, expected).await;
    work.buffers.give_back(data, expected as usize);
    moved
}

/// Moves one chunk between two stores whose every call is blocking filesystem work
/// ([`ObjectSource::blocking_io`]): on one blocking thread, with their calls made there.
pub async fn move_chunk_on_one_thread(work: ChunkWork) -> StoreResult<ChunkMoved> {
    let runtime = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || {
        crate::store::blocking::inline(|| runtime.block_on(move_chunk(&work)))
    })
    .await
    {
        Ok(moved) => moved,
        // A panic stops the run, as it does on the async path.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::transient(format!("chunk task failed: {e}"))),
    }
}

/// Checks, checksums and uploads the bytes of one chunk.
async fn send_chunk(
    work: &ChunkWork,
    data: Bytes,
    source_meta: ObjectMeta,
    expected: u64,
) -> StoreResult<ChunkMoved> {
    if data.len() as u64 != expected {
        return Err(StoreError::transient(format!(
            "read {} bytes of `{}` where {expected} were planned",
            data.len(),
            work.key
        )));
    }
    let (checksum, crc64) = checksums(data.clone(), work.checksum).await?;
    let verified = match &work.whole {
        Some(blobway) => {
            let source_meta = whole_with_tags(work, source_meta).await?;
            let mut meta =
                meta_for_destination(&work.target, source_meta, blobway, work.invalid_metadata)?;
            meta.pairs
                .insert(meta_keys::CRC64NVME.into(), format!("{crc64:016x}"));
            let source_etag = meta.pairs.get(meta_keys::SOURCE_ETAG).cloned();
            let put = work
                .target
                .sink
                .put_whole(work.target.upload(), data, checksum, &meta)
                .await;
            confirm_write(
                put,
                work.target.sink.as_ref(),
                &work.target.key,
                expected,
                source_etag.as_deref(),
            )
            .await?;
            let object = ObjectCrc {
                value: crc64,
                read: true,
            };
            Some(verify::verification(&work.key, Some(object), None, false)?)
        }
        None => {
            let block = BlockRef {
                index: work.index,
                id: &work.block_id,
                checksum,
                offset: work.range.start,
                last: work.last,
            };
            work.target
                .sink
                .put_block(work.target.upload(), block, data)
                .await?;
            None
        }
    };
    Ok(ChunkMoved {
        bytes: expected,
        crc64: Some(crc64),
        crc_reported: false,
        verified,
    })
}

/// The source's metadata with the object's tags when they are copied (`--copy-tags`): read
/// with one request, and refused — the object fails, before it is written — when the
/// destination cannot hold them ([`crate::store::tags::TagRules`]).
async fn with_tags(
    copy: bool,
    source: &dyn ObjectSource,
    key: &str,
    target: &Target,
    mut meta: ObjectMeta,
) -> StoreResult<ObjectMeta> {
    if !copy {
        return Ok(meta);
    }
    let tags = source.tags(key).await?;
    if let Some(rules) = target.sink.tag_rules() {
        rules.check(&tags).map_err(|why| {
            StoreError::new(
                ErrorClass::Invalid,
                None,
                format!("`{key}`: {why}; fix the source's tags, or copy it without --copy-tags"),
            )
        })?;
    }
    meta.tags = tags;
    Ok(meta)
}

/// [`with_tags`] for an object of one chunk.
async fn whole_with_tags(work: &ChunkWork, meta: ObjectMeta) -> StoreResult<ObjectMeta> {
    with_tags(work.copy_tags, &*work.source, &work.key, &work.target, meta).await
}

/// The metadata the destination will hold: the source's (without `blobway_*` pairs an earlier
/// copy left) with blobway's own, every pair the destination cannot hold renamed, left out or
/// refused as `policy` says ([`map_metadata`]). A refusal fails the object before any of its
/// bytes reach the destination.
pub fn meta_for_destination(
    target: &Target,
    source: ObjectMeta,
    blobway: &ObjectMeta,
    policy: InvalidMetadata,
) -> StoreResult<ObjectMeta> {
    let mut meta = ObjectMeta::from_source(source);
    meta.pairs
        .extend(blobway.pairs.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Room for the whole-object CRC pair whether or not it is known yet, so the begin, a
    // whole put and the commit all decide alike.
    let placeholder = !meta.pairs.contains_key(meta_keys::CRC64NVME);
    if placeholder {
        meta.pairs
            .insert(meta_keys::CRC64NVME.into(), format!("{:016x}", 0));
    }
    let mapped = map_metadata(&meta.pairs, &target.sink.meta_rules(), policy).map_err(|why| {
        StoreError::new(
            ErrorClass::Invalid,
            None,
            format!("`{}`: {why}", target.key),
        )
    })?;
    if !mapped.renamed.is_empty() || !mapped.excluded.is_empty() {
        tracing::debug!(key = %target.key, renamed = ?mapped.renamed, excluded = ?mapped.excluded,
            "metadata the destination cannot hold as it is");
    }
    meta.pairs = mapped.pairs;
    if placeholder {
        meta.pairs.remove(meta_keys::CRC64NVME);
    }
    Ok(meta)
}

/// Chunks up to this size are checksummed on the async thread (tens of microseconds); larger
/// ones off it.
const CHECKSUM_INLINE: usize = 16 * 1024;

/// The transactional checksum of `kind` and the CRC-64/NVME of `data` (one pass when they are
/// the same), computed off the async threads unless `data` is small.
async fn checksums(data: Bytes, kind: ChecksumKind) -> StoreResult<(Checksum, u64)> {
    let inline = data.len() <= CHECKSUM_INLINE || crate::store::blocking::inline_here();
    let compute = move || {
        let crc = crate::store::crc64(&data);
        let transactional = match kind {
            ChecksumKind::Crc64 => Checksum::Crc64(crc),
            ChecksumKind::Md5 => Checksum::of(ChecksumKind::Md5, &data),
        };
        (transactional, crc)
    };
    if inline {
        return Ok(compute());
    }
    tokio::task::spawn_blocking(compute)
        .await
        .map_err(|e| StoreError::transient(format!("checksum task failed: {e}")))
}

/// An upload to begin: the source's metadata is read (pinned to the planned version) and the
/// destination opens its session with it.
#[derive(Clone)]
pub struct BeginWork {
    /// Where from.
    pub source: Arc<dyn ObjectSource>,
    /// Where to.
    pub target: Target,
    /// Source key.
    pub key: String,
    /// The planned source version.
    pub etag: String,
    /// blobway's metadata pairs for the destination.
    pub blobway: ObjectMeta,
    /// What happens to metadata the destination cannot hold.
    pub invalid_metadata: InvalidMetadata,
    /// The source's tags go with the object (`--copy-tags`).
    pub copy_tags: bool,
    /// An earlier begin of this object whose session was never recorded (a crash came
    /// between): uploads the store opened since then are looked for and given up first.
    pub unrecorded_since_ms: Option<i64>,
}

/// An upload that began: the source's metadata and the session to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begun {
    /// The source's metadata.
    pub meta: ObjectMeta,
    /// The source's version ID, where it keeps versions.
    pub version_id: Option<String>,
    /// The destination's session, if it keeps one.
    pub session: Option<String>,
}

/// Begins an upload.
pub async fn begin_upload(work: &BeginWork) -> StoreResult<Begun> {
    let chunk = work.source.look_at(&work.key, &work.etag, None).await?;
    let meta = ObjectMeta::from_source(chunk.meta);
    let meta = with_tags(work.copy_tags, &*work.source, &work.key, &work.target, meta).await?;
    let full = meta_for_destination(
        &work.target,
        meta.clone(),
        &work.blobway,
        work.invalid_metadata,
    )?;
    if let Some(since) = work.unrecorded_since_ms {
        give_up_unrecorded(work.target.sink.as_ref(), &work.target.key, since).await;
    }
    let session = work.target.sink.begin(work.target.upload(), &full).await?;
    Ok(Begun {
        meta,
        version_id: chunk.version_id,
        session,
    })
}

/// How far from an unrecorded begin an upload the store lists may have been opened and still
/// be that begin's: the store's clock and this machine's may disagree, and the request may
/// have taken its time.
const BEGIN_WINDOW_MS: i64 = 5 * 60 * 1000;

/// Gives up the uploads of `key` the store opened around an earlier begin whose session was
/// never recorded (uploads long before or after it are somebody else's) — best effort: a store that cannot list them (or refuses) is logged, and
/// a lifecycle rule (`AbortIncompleteMultipartUpload`) stays the safety net.
async fn give_up_unrecorded(sink: &dyn ObjectSink, key: &str, since_ms: i64) {
    let window = since_ms - BEGIN_WINDOW_MS..since_ms + BEGIN_WINDOW_MS;
    match sink.uploads_between(key, window).await {
        Ok(found) => {
            if !found.is_empty() {
                tracing::info!(%key, uploads = found.len(),
                    "giving up uploads a crashed run opened but never recorded");
            }
            let uploads = found.into_iter().map(|s| (key.to_string(), s)).collect();
            give_up_uploads(sink, uploads, None).await;
        }
        Err(e) => tracing::warn!(%key, "cannot look for uploads a crashed run left: {e}"),
    }
}

/// One object whose chunks are all staged, ready for verify-then-commit.
#[derive(Clone)]
pub struct CommitWork {
    /// Where to.
    pub target: Target,
    /// Every block in order.
    pub blocks: Vec<PlannedBlock>,
    /// The source's metadata, as read when the upload began.
    pub source_meta: ObjectMeta,
    /// blobway's metadata pairs for the destination.
    pub blobway: ObjectMeta,
    /// The chunks' CRCs combined, when every one is known.
    pub crc: Option<ObjectCrc>,
    /// The source's version ID every copy of the object named (a versioned S3 bucket).
    pub version_id: Option<String>,
    /// What happens to metadata the destination cannot hold.
    pub invalid_metadata: InvalidMetadata,
    /// The source to look at before the commit (same version as planned, else the object
    /// fails): set where blocks were copied from a signed URL, which no store pins.
    pub pin: Option<SourcePin>,
    /// The worker's lease when the state is shared: no commit is sent once it lapsed (the
    /// object is another worker's by then).
    pub lease: Option<Arc<Lease>>,
}

/// A source object as planned, checked before a commit.
#[derive(Clone)]
pub struct SourcePin {
    /// Where from.
    pub source: Arc<dyn ObjectSource>,
    /// Source key.
    pub key: String,
    /// The planned version.
    pub etag: String,
    /// The store's ID of that version, where it keeps versions.
    pub version_id: Option<String>,
}

impl SourcePin {
    /// The source object a chunk reads.
    fn of(work: &ChunkWork) -> Self {
        Self {
            source: work.source.clone(),
            key: work.key.clone(),
            etag: work.etag.clone(),
            version_id: work.version_id.clone(),
        }
    }

    /// Fails with [`ErrorClass::SourceChanged`] unless the source still holds the planned
    /// version (as its current one, or as the version ID every copy named); answers its
    /// metadata and its own full-object CRC-64/NVME, if it keeps one.
    async fn check(&self) -> StoreResult<(ObjectMeta, Option<u64>)> {
        let looked = self
            .source
            .look_at(&self.key, &self.etag, self.version_id.as_deref())
            .await?;
        Ok((looked.meta, looked.source_crc64))
    }
}

/// How a commit ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The object is visible and complete, verified as said.
    Committed(Verification),
    /// These chunks are not (or no longer) staged as planned; they must be sent again.
    Missing(Vec<u32>),
}

/// Gives up upload sessions (destination key, session) at the destination; a failure is
/// only logged (stores expire abandoned sessions in the end).
pub async fn give_up_uploads(
    sink: &dyn ObjectSink,
    uploads: Vec<(String, String)>,
    lease: Option<&Lease>,
) {
    for (key, session) in uploads {
        // A worker whose lease lapsed gives up nothing: the uploads are another's by now.
        if let Some(why) = lapsed(lease) {
            tracing::warn!("not giving up the upload of {key}: {why}");
            return;
        }
        let upload = crate::store::Upload {
            key: &key,
            session: Some(&session),
            create_only: false,
            tier: None,
            storage_class: None,
        };
        if let Err(e) = sink.abort(upload).await {
            tracing::warn!("could not give up the upload of {key}: {e}");
        }
    }
}

/// Asks the destination which planned blocks it lacks (IDs and sizes), and commits only when
/// it lacks none and the chunks' combined CRC does not contradict the source's own checksum
/// ([`verify::verification`]; the source is looked at first where it must be pinned).
pub async fn verify_and_commit(work: &CommitWork) -> StoreResult<CommitOutcome> {
    let target = &work.target;
    let source_etag = work.blobway.pairs.get(meta_keys::SOURCE_ETAG);
    let total: u64 = work.blocks.iter().map(|b| b.size).sum();
    let missing = target
        .sink
        .missing_blocks(target.upload(), &work.blocks)
        .await;
    if !matches!(&missing, Ok(m) if m.is_empty()) {
        // A crash between the commit and its record leaves nothing staged and no session
        // (S3 answers NoSuchUpload, some S3-compatible stores AccessDenied): if the
        // destination already holds this very version, committed by blobway, the commit
        // happened. Otherwise the original answer stands.
        let found = match target.sink.head(&target.key).await {
            Ok(found) => found,
            // A destination that may not be looked at (write-only credentials) leaves the
            // store's first answer standing.
            Err(_) => return missing.map(CommitOutcome::Missing),
        };
        let Some(found) =
            found.filter(|d| d.size == total && d.meta.get(meta_keys::SOURCE_ETAG) == source_etag)
        else {
            return missing.map(CommitOutcome::Missing);
        };
        // The CRC it was committed with vouches as it would have at the commit.
        let recorded = found.meta.get(meta_keys::CRC64NVME);
        let crc = work
            .crc
            .filter(|crc| recorded == Some(&format!("{:016x}", crc.value)));
        // Found by its size and source ETag, whatever its reads named.
        return Ok(CommitOutcome::Committed(verify::verification(
            &target.key,
            crc,
            None,
            false,
        )?));
    }
    missing?;
    let source_crc = match &work.pin {
        Some(pin) => pin.check().await?.1,
        None => None,
    };
    let verified =
        verify::verification(&target.key, work.crc, source_crc, work.version_id.is_some())?;
    let meta = meta_for_destination(
        target,
        work.source_meta.clone(),
        &work.blobway,
        work.invalid_metadata,
    )?;
    if let Some(why) = lapsed(work.lease.as_deref()) {
        return Err(why);
    }
    let committed = target
        .sink
        .commit(target.upload(), &work.blocks, &meta)
        .await;
    confirm_write(
        committed,
        target.sink.as_ref(),
        &target.key,
        total,
        source_etag.map(String::as_str),
    )
    .await?;
    Ok(CommitOutcome::Committed(verified))
}

/// Why nothing more may be sent on a claim of this worker, when its lease on the shared
/// state lapsed (by this process's clock, or refused by the database).
fn lapsed(lease: Option<&Lease>) -> Option<StoreError> {
    lease.filter(|l| !l.holds()).map(|l| {
        StoreError::transient(format!(
            "worker {}'s lease on the shared state lapsed: nothing is sent for objects it claimed \
             (another worker takes them over)",
            l.name
        ))
    })
}

/// What a commit or whole put answered, confirmed by reading the object back once
/// ([`read_back`]). A conditional write refused because an object is there
/// ([`ErrorClass::Exists`]) may have been refused by blobway's own earlier write of this very
/// object (a retry after a timeout, or after a crash before the write was recorded): when the
/// destination holds this size from this source version, the write is done; otherwise the
/// refusal stands.
async fn confirm_write(
    answer: StoreResult<()>,
    sink: &dyn ObjectSink,
    key: &str,
    size: u64,
    source_etag: Option<&str>,
) -> StoreResult<()> {
    match answer {
        Ok(()) if sink.confirms_writes() => Ok(()),
        Ok(()) => read_back(sink, key, size, source_etag).await,
        // Refused because an object is there: it counts only if it is seen to be this very
        // copy (one that cannot be looked at is someone else's until shown otherwise).
        Err(e) if e.class == ErrorClass::Exists && source_etag.is_some() => {
            match sink.head(key).await {
                Ok(Some(found)) => vouch(key, &found, size, source_etag).map_err(|_| e),
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// After a commit, before the object is recorded done: the destination must show it at its
/// planned size and, where blobway recorded one, from the planned source version. Not visible
/// is transient (the commit is tried again); another size or version means another writer
/// replaced it, and the object fails with that reason. A destination the credentials may not
/// look at (write-only) is taken at its word, with a warning.
pub async fn read_back(
    sink: &dyn ObjectSink,
    key: &str,
    size: u64,
    source_etag: Option<&str>,
) -> StoreResult<()> {
    let found = match sink.head(key).await {
        Ok(found) => found,
        Err(e) if e.class == ErrorClass::Permission => {
            tracing::warn!(%key, "cannot read the object back after its commit: {e}");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let Some(found) = found else {
        return Err(StoreError::transient(format!(
            "`{key}` is not visible at the destination after its commit; it is committed again"
        )));
    };
    vouch(key, &found, size, source_etag)
}

/// Whether `found` at the destination is this very copy: `size` bytes from `source_etag`
/// (when blobway recorded one); otherwise another writer replaced it.
fn vouch(key: &str, found: &DestObject, size: u64, source_etag: Option<&str>) -> StoreResult<()> {
    let version = found.meta.get(meta_keys::SOURCE_ETAG).map(String::as_str);
    if found.size == size && (source_etag.is_none() || version == source_etag) {
        return Ok(());
    }
    Err(StoreError::new(
        ErrorClass::Invalid,
        None,
        format!(
            "after its commit the destination holds `{key}` with {} bytes from source version \
             {}, not {size} bytes from {}: another writer replaced it meanwhile; `blobway \
             resume` copies it again",
            found.size,
            version.unwrap_or("(not recorded)"),
            source_etag.unwrap_or("(not recorded)"),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    const SIZE: u64 = 10_000;
    const CHUNK: u64 = 4_000;

    fn target(sink: &Arc<dyn ObjectSink>) -> Target {
        Target {
            sink: sink.clone(),
            key: "out/f.bin".into(),
            session: None,
            create_only: false,
            tier: None,
            storage_class: None,
        }
    }

    fn chunk_work(
        source: &Arc<dyn ObjectSource>,
        sink: &Arc<dyn ObjectSink>,
        etag: &str,
        ids: &[String],
        i: u32,
    ) -> ChunkWork {
        let range = u64::from(i) * CHUNK..(u64::from(i + 1) * CHUNK).min(SIZE);
        ChunkWork {
            source: source.clone(),
            target: target(sink),
            key: "f.bin".into(),
            etag: etag.to_string(),
            version_id: None,
            last: range.end == SIZE,
            range,
            index: i,
            block_id: ids[i as usize].clone(),
            whole: None,
            checksum: ChecksumKind::Md5,
            buffers: Arc::new(BufferPool::new(1 << 20)),
            invalid_metadata: InvalidMetadata::Rename,
            copy_tags: false,
            server: None,
        }
    }

    #[tokio::test]
    async fn moves_chunks_then_commits_only_when_all_are_staged() {
        let src = tempfile::tempdir().expect("src");
        let dst = tempfile::tempdir().expect("dst");
        let data: Vec<u8> = (0..SIZE as u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(src.path().join("f.bin"), &data).expect("write");
        let source: Arc<dyn ObjectSource> = Arc::new(LocalStore::new(src.path()));
        let sink: Arc<dyn ObjectSink> = Arc::new(LocalStore::new(dst.path()));
        sink.prepare().await.expect("prepare");
        let etag = source.list("", false).await.expect("list")[0].etag.clone();
        let ids: Vec<String> = (0..3)
            .map(|i| crate::engine::plan::block_id(&etag, SIZE, CHUNK, i))
            .collect();
        let commit = CommitWork {
            target: target(&sink),
            blocks: ids
                .iter()
                .enumerate()
                .map(|(i, id)| PlannedBlock {
                    index: i as u32,
                    id: id.clone(),
                    size: CHUNK.min(SIZE - i as u64 * CHUNK),
                })
                .collect(),
            source_meta: ObjectMeta::default(),
            blobway: ObjectMeta::default(),
            crc: None,
            version_id: None,
            invalid_metadata: InvalidMetadata::Rename,
            pin: None,
            lease: None,
        };
        for i in [0u32, 2] {
            move_chunk(&chunk_work(&source, &sink, &etag, &ids, i))
                .await
                .expect("moved");
        }
        assert_eq!(
            verify_and_commit(&commit).await,
            Ok(CommitOutcome::Missing(vec![1]))
        );
        assert!(
            !dst.path().join("out/f.bin").exists(),
            "nothing visible before the commit"
        );
        move_chunk(&chunk_work(&source, &sink, &etag, &ids, 1))
            .await
            .expect("moved");
        assert_eq!(
            verify_and_commit(&commit).await,
            Ok(CommitOutcome::Committed(Verification::SizeAndEtag)),
            "no CRC known for its chunks"
        );
        assert_eq!(
            std::fs::read(dst.path().join("out/f.bin")).expect("read"),
            data
        );

        // A crash right after that commit, before it was recorded: the next attempt finds
        // nothing staged but recognises its own commit, and sends nothing again.
        let mut recorded = commit.clone();
        recorded
            .blobway
            .pairs
            .insert(meta_keys::SOURCE_ETAG.into(), etag.clone());
        let whole = crate::store::crc64(&data);
        recorded
            .blobway
            .pairs
            .insert(meta_keys::CRC64NVME.into(), format!("{whole:016x}"));
        recorded.crc = Some(ObjectCrc {
            value: whole,
            read: true,
        });
        assert_eq!(
            verify_and_commit(&recorded).await,
            Ok(CommitOutcome::Missing(vec![0, 1, 2])),
            "the first commit carried no version, so it is not recognised"
        );
        for i in 0..3 {
            move_chunk(&chunk_work(&source, &sink, &etag, &ids, i))
                .await
                .expect("moved");
        }
        assert_eq!(
            verify_and_commit(&recorded).await,
            Ok(CommitOutcome::Committed(Verification::BlobwayCrc))
        );
        assert_eq!(
            verify_and_commit(&recorded).await,
            Ok(CommitOutcome::Committed(Verification::BlobwayCrc)),
            "recognised after the fact, by the CRC it was committed with"
        );
        let mut other_version = recorded.clone();
        other_version
            .blobway
            .pairs
            .insert(meta_keys::SOURCE_ETAG.into(), "\"other\"".into());
        assert_eq!(
            verify_and_commit(&other_version).await,
            Ok(CommitOutcome::Missing(vec![0, 1, 2])),
            "another version's commit does not count"
        );
    }
}
