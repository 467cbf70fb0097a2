//! The records kept in the state database: jobs, files, chunks and their attempts. Plain data,
//! serialisable, shared by the engine, the headless output and the TUI.

use serde::{Deserialize, Serialize};

use crate::engine::RetryPolicy;
use crate::store::copy::TransferMode;
use crate::store::rules::{IfExists, InvalidMetadata};
use crate::store::{Access, ChecksumKind, ErrorClass, ObjectMeta, StoreError};

/// Identifies a job in the state database.
pub type JobId = u64;

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Planned, waiting to run.
    Queued,
    /// Chunks are moving.
    Running,
    /// The operator paused it: no new chunk starts. Survives restarts.
    Paused,
    /// Every object is committed (or was already identical at the destination).
    Done,
    /// Finished with at least one object failed.
    Failed,
    /// Cancelled by the operator.
    Cancelled,
}

impl JobState {
    /// Upper-case name, as shown to the operator.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "QUEUED",
            JobState::Running => "RUNNING",
            JobState::Paused => "PAUSED",
            JobState::Done => "DONE",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }

    /// True when the job will not move again without the operator.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Where one object of a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FileState {
    /// Planned; chunks are pending or moving.
    Transferring,
    /// All chunks are staged; the staged block list is being checked and committed.
    Committing,
    /// Committed and verified.
    Done,
    /// Already identical at the destination; nothing was sent.
    Skipped,
    /// Failed; see the error.
    Failed,
}

impl FileState {
    /// Upper-case name, as shown to the operator.
    pub fn name(self) -> &'static str {
        match self {
            FileState::Transferring => "TRANSFERRING",
            FileState::Committing => "COMMITTING",
            FileState::Done => "DONE",
            FileState::Skipped => "SKIPPED",
            FileState::Failed => "FAILED",
        }
    }

    /// True for the states a finished object ends in.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            FileState::Done | FileState::Skipped | FileState::Failed
        )
    }
}

/// Where one chunk stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChunkState {
    /// Waiting to be sent.
    Pending,
    /// Claimed by a worker: being read or written.
    InProgress,
    /// The destination acknowledged the block.
    Completed,
    /// Gave up after the attempt limit or a fatal error.
    Failed,
}

impl ChunkState {
    /// Upper-case name, as shown to the operator.
    pub fn name(self) -> &'static str {
        match self {
            ChunkState::Pending => "PENDING",
            ChunkState::InProgress => "IN_PROGRESS",
            ChunkState::Completed => "COMPLETED",
            ChunkState::Failed => "FAILED",
        }
    }
}

/// A failure as recorded: class, HTTP status, redacted message and time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// What kind of failure.
    pub class: ErrorClass,
    /// HTTP status, when the store answered.
    pub status: Option<u16>,
    /// What happened (no secrets).
    pub message: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

impl ErrorRecord {
    /// Records a store error now.
    pub fn from_store(err: &StoreError) -> Self {
        Self {
            class: err.class,
            status: err.status,
            message: err.message.clone(),
            at_ms: now_ms(),
        }
    }
}

/// One attempt at a chunk (or a commit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Start, milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// How long it took, milliseconds.
    pub latency_ms: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// The failure, if it failed.
    pub error: Option<ErrorRecord>,
}

/// How many attempts each chunk keeps in its history.
pub const ATTEMPT_HISTORY: usize = 16;

/// One chunk of one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Current state.
    pub state: ChunkState,
    /// Attempts started so far (counted when claimed).
    pub attempts: u32,
    /// CRC-64/NVME of the chunk's bytes, once completed.
    pub crc64: Option<u64>,
    /// True when `crc64` is what the destination reported for bytes the stores copied
    /// themselves; false when blobway computed it over the bytes it read.
    #[serde(default)]
    pub crc_reported: bool,
    /// The most recent attempts, oldest first.
    pub history: Vec<AttemptRecord>,
}

impl ChunkRecord {
    /// A chunk nobody has tried yet.
    pub fn pending() -> Self {
        Self {
            state: ChunkState::Pending,
            attempts: 0,
            crc64: None,
            crc_reported: false,
            history: Vec::new(),
        }
    }

    /// Appends an attempt, keeping the history bounded.
    pub fn record_attempt(&mut self, attempt: AttemptRecord) {
        if self.history.len() >= ATTEMPT_HISTORY {
            self.history.remove(0);
        }
        self.history.push(attempt);
    }

    /// The most recent error, if the last attempt failed.
    pub fn last_error(&self) -> Option<&ErrorRecord> {
        self.history.last().and_then(|a| a.error.as_ref())
    }
}

/// One object of a job, as planned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Key at the source.
    pub key: String,
    /// Key at the destination.
    pub dest_key: String,
    /// Size in bytes at planning.
    pub size: u64,
    /// Source ETag at planning; every read is pinned to it.
    pub etag: String,
    /// Chunk size used for this object.
    pub chunk_size: u64,
    /// Number of chunks (at least one; one means a single whole-object put).
    pub chunk_count: u32,
    /// Current state.
    pub state: FileState,
    /// Commit attempts so far.
    pub commit_attempts: u32,
    /// Why it failed.
    pub error: Option<ErrorRecord>,
    /// Why it was skipped, or other operator-facing remarks.
    pub note: Option<String>,
    /// The upload session the destination opened (S3: the multipart upload ID; GCS: the
    /// resumable session URI), kept so a resumed job continues the same upload.
    #[serde(default)]
    pub session: Option<String>,
    /// The source's metadata (content type, encoding, cache control, user pairs) as read when
    /// the upload began, for the commit.
    #[serde(default)]
    pub meta: Option<ObjectMeta>,
    /// When an upload was last begun (ms since the epoch), written before the request: a
    /// crash before its session was recorded leaves a session the store may still hold,
    /// which the next begin looks for and gives up.
    #[serde(default)]
    pub begun_ms: Option<i64>,
    /// How the committed object was shown to equal its source (none before it is done, and
    /// for objects done before this was recorded). Stored after the rest of the record
    /// (`codec`), so records without it keep their layout.
    #[serde(skip)]
    pub verified: Option<Verification>,
    /// The source's version ID (a versioned S3 bucket), read when the upload began: every
    /// later read and copy of the object names it. Stored after the record, as `verified`.
    #[serde(skip)]
    pub version_id: Option<String>,
}

/// How a committed object was shown to equal its source, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// Its chunks' CRC-64s, combined in order, equal the source's own full-object
    /// CRC-64/NVME (S3's `x-amz-checksum-crc64nvme`).
    SourceChecksum,
    /// blobway read every byte and checksummed every chunk, and the destination checked each
    /// chunk against that checksum as it arrived.
    BlobwayCrc,
    /// The stores copied the bytes themselves and the source offered no checksum: the size
    /// and the source's ETag were checked, so a rewrite that kept the ETag (A → B → A) would
    /// go unseen.
    SizeAndEtag,
    /// The stores copied the bytes themselves, every read pinned to the source's version ID
    /// (a versioned S3 bucket), and the source offered no checksum: the size and that exact
    /// version, which no rewrite changes.
    SizeAndVersionId,
}

impl Verification {
    /// Every kind, strongest first.
    pub const ALL: [Verification; 4] = [
        Verification::SourceChecksum,
        Verification::BlobwayCrc,
        Verification::SizeAndVersionId,
        Verification::SizeAndEtag,
    ];

    /// How the operator reads it.
    pub fn label(self) -> &'static str {
        match self {
            Verification::SourceChecksum => "source checksum",
            Verification::BlobwayCrc => "blobway crc",
            Verification::SizeAndEtag => "size+etag",
            Verification::SizeAndVersionId => "size+version id",
        }
    }
}

impl FileRecord {
    /// An object as planned: transferring, nothing tried yet.
    pub fn new(
        key: impl Into<String>,
        dest_key: impl Into<String>,
        size: u64,
        etag: impl Into<String>,
        chunk_size: u64,
        chunk_count: u32,
    ) -> Self {
        Self {
            key: key.into(),
            dest_key: dest_key.into(),
            size,
            etag: etag.into(),
            chunk_size,
            chunk_count,
            state: FileState::Transferring,
            commit_attempts: 0,
            error: None,
            note: None,
            session: None,
            meta: None,
            begun_ms: None,
            verified: None,
            version_id: None,
        }
    }

    /// The upload session still open at the destination for this object, as (destination
    /// key, session): none once the object is done (its upload was completed).
    pub fn open_upload(&self) -> Option<(String, String)> {
        if matches!(self.state, FileState::Done | FileState::Skipped) {
            return None;
        }
        Some((self.dest_key.clone(), self.session.clone()?))
    }

    /// True when the object goes up in one whole-object put instead of staged blocks.
    pub fn is_single_put(&self) -> bool {
        self.chunk_count == 1
    }

    /// Byte range of chunk `index`.
    pub fn chunk_range(&self, index: u32) -> std::ops::Range<u64> {
        let start = u64::from(index) * self.chunk_size;
        start..(start + self.chunk_size).min(self.size)
    }
}

/// Settings a job was planned with; a resumed job keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOptions {
    /// Requested chunk size (raised per object when a store limit requires it).
    pub chunk_size: u64,
    /// Only objects matching one of these globs are copied (all when empty). A pattern
    /// without `/` matches an object's base name; one with `/` its path under the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Objects matching one of these globs are left out (this wins over `include`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Which AWS profile and endpoint the source uses, when not the environment's.
    #[serde(default)]
    pub source_access: Access,
    /// Which AWS profile and endpoint the destination uses, when not the environment's.
    #[serde(default)]
    pub dest_access: Access,
    /// What happens to a metadata pair the destination cannot hold.
    #[serde(default)]
    pub invalid_metadata: InvalidMetadata,
    /// What happens to an object the destination already holds under the same name.
    #[serde(default)]
    pub if_exists: IfExists,
    /// The checksum this job's uploads carry; the engine's when not chosen (jobs recorded
    /// before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<ChecksumKind>,
    /// Attempts per chunk before it is given up; the engine's when not chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The access tier objects are written to (Azure destinations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_tier: Option<crate::store::rules::AccessTier>,
    /// The storage class objects are written to (S3 destinations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<crate::store::rules::StorageClass>,
    /// How the bytes travel: store to store where the route allows, or through blobway.
    /// Jobs recorded before it was kept went through blobway, and still do.
    #[serde(default = "TransferMode::recorded_before")]
    pub transfer: TransferMode,
    /// Source object tags are written to the destination (S3 tags → Azure blob index tags or
    /// S3 tags).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy_tags: bool,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            chunk_size: 16 << 20,
            include: Vec::new(),
            exclude: Vec::new(),
            source_access: Access::default(),
            dest_access: Access::default(),
            invalid_metadata: InvalidMetadata::default(),
            if_exists: IfExists::default(),
            checksum: None,
            max_attempts: None,
            transfer: TransferMode::default(),
            access_tier: None,
            storage_class: None,
            copy_tags: false,
        }
    }
}

impl JobOptions {
    /// Default options with this chunk size.
    pub fn with_chunk_size(chunk_size: u64) -> Self {
        Self {
            chunk_size,
            ..Self::default()
        }
    }

    /// The checksum this job's uploads carry: its own, else the engine's.
    pub fn checksum_or(&self, engine: ChecksumKind) -> ChecksumKind {
        self.checksum.unwrap_or(engine)
    }

    /// The retry rules of this job: the engine's, with the job's own attempt limit.
    pub fn retry_or(&self, engine: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(engine.max_attempts),
            ..engine
        }
    }
}

/// One copy job: a source location to a destination location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Identifier.
    pub id: JobId,
    /// Source location as given.
    pub source: String,
    /// Destination location as given.
    pub destination: String,
    /// Settings.
    pub options: JobOptions,
    /// Current state.
    pub state: JobState,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Last change, milliseconds since the Unix epoch.
    pub updated_ms: i64,
    /// Why the whole job stopped, if it did.
    pub error: Option<String>,
    /// False while the job could not be planned yet (its destination failed before a single
    /// object was listed for it): `resume` plans it then.
    #[serde(default = "planned_by_default")]
    pub planned: bool,
}

fn planned_by_default() -> bool {
    true
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
