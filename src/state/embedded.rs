//! The embedded backend: one redb file holds every job, object and chunk of one machine. This
//! is the only module that opens redb (with the redb tables of [`super::counts`],
//! [`super::index`] and [`super::names`]).
//!
//! Each batch of writes is one durable transaction, so tens of thousands of chunk transitions
//! per second cost a few hundred commits. The file is readable by its owner only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::batch::{self, LAST_JOB_ID};
use super::codec::{self, Stored};
use super::names::{self, Claim, NameClash};
use super::{
    Backend, ChunkRecord, ChunkState, FileRecord, FileState, JobId, JobProgress, JobRecord,
    JobSnapshot, StateError, TableUsage, UnderWay, Write, counts, index, route_key,
};
use crate::store::rules::Naming;

/// The schema this blobway writes. Version 1 (no job counters) and version 2 (no index of
/// objects by state) are upgraded on open; so is version 3 (object and chunk records in JSON
/// only, which are read as they are and rewritten compactly as they change ([`codec`]); name
/// claims holding whole keys, which are moved into their compact table). Version 4 lacks
/// only what version 5 may append to a record (how an object was verified, its tags and
/// source version ID; a chunk CRC the destination reported): its records read as they are,
/// and an older blobway refuses a version-5 file instead of misreading it.
const SCHEMA_VERSION: &str = "5";

pub(super) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const ROUTES: TableDefinition<&str, u64> = TableDefinition::new("routes");
const FILES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("files");
const CHUNKS: TableDefinition<(u64, u32, u32), &[u8]> = TableDefinition::new("chunks");

/// The redb state file; cheap to clone.
#[derive(Clone)]
pub struct RedbState {
    pub(super) db: Arc<Database>,
    path: PathBuf,
}

fn encode<T: Stored>(value: &T) -> Vec<u8> {
    value.encode()
}

/// redb's page cache: set, not left to redb's default (up to 1 GiB), so the memory a long
/// migration holds is known. Small on purpose: the operating system's page cache holds the
/// file's pages anyway, and measured on a million objects (`benches/scale.rs`), 64 MiB of
/// redb cache cost about 200 MiB of resident memory for a few percent of speed.
const CACHE_BYTES: usize = 4 << 20;

fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(CACHE_BYTES);
    builder
}

/// Opens (or creates) the redb file at `path` readable by its owner only, from its first byte:
/// it holds resumable-upload sessions (a GCS session URI lets its holder upload to that one
/// object for a week). A file made by an older blobway with a wider mode is narrowed.
fn create_private(path: &Path) -> Result<Database, redb::DatabaseError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0
            && let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))
        {
            // A filesystem without modes (vfat, CIFS) or a file of another owner: say so.
            tracing::warn!(path = %path.display(), "cannot make the state file private: {e}");
        }
        builder().create_with_backend(redb::backends::FileBackend::new(file)?)
    }
    #[cfg(not(unix))]
    {
        let file = options.open(path)?;
        builder().create_with_backend(redb::backends::FileBackend::new(file)?)
    }
}

impl RedbState {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| StateError::Io {
                path: path.to_path_buf(),
                what: "created",
                detail: e.to_string(),
            })?;
        }
        let db = create_private(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StateError::AlreadyOpen(path.to_path_buf()),
            redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
                if io.kind() == std::io::ErrorKind::InvalidData {
                    StateError::Corrupt {
                        path: path.to_path_buf(),
                        detail: io.to_string(),
                    }
                } else {
                    io_error(path, "opened", &io)
                }
            }
            other => StateError::Corrupt {
                path: path.to_path_buf(),
                detail: other.to_string(),
            },
        })?;
        let state = Self {
            db: Arc::new(db),
            path: path.to_path_buf(),
        };
        state.init_schema()?;
        Ok(state)
    }

    fn err(&self, what: &'static str, e: impl Into<redb::Error>) -> StateError {
        match e.into() {
            redb::Error::Io(io) => io_error(&self.path, what, &io),
            redb::Error::Corrupted(detail) => StateError::Corrupt {
                path: self.path.clone(),
                detail,
            },
            other => StateError::Io {
                path: self.path.clone(),
                what,
                detail: other.to_string(),
            },
        }
    }

    fn decode<T: Stored>(&self, bytes: &[u8]) -> Result<T, StateError> {
        T::decode(bytes).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            detail: format!("a record does not decode: {e}"),
        })
    }

    fn init_schema(&self) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(|e| self.err("written", e))?;
        let mut upgrade = None;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err("written", e))?;
            let found = meta
                .get("schema")
                .map_err(|e| self.err("read", e))?
                .map(|v| v.value().to_string());
            match found {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)
                        .map_err(|e| self.err("written", e))?;
                }
                Some(v) if v == SCHEMA_VERSION => {}
                Some(v) if v == "4" => {
                    meta.insert("schema", SCHEMA_VERSION)
                        .map_err(|e| self.err("written", e))?;
                }
                Some(v) if v == "3" => {
                    self.move_names(&txn)?;
                    meta.insert("schema", SCHEMA_VERSION)
                        .map_err(|e| self.err("written", e))?;
                }
                Some(v) if v == "1" || v == "2" => upgrade = Some(v),
                Some(found) => {
                    return Err(StateError::Schema {
                        path: self.path.clone(),
                        found,
                        reads: SCHEMA_VERSION,
                    });
                }
            }
            txn.open_table(counts::COUNTS)
                .map_err(|e| self.err("written", e))?;
            txn.open_table(index::STATES)
                .map_err(|e| self.err("written", e))?;
            txn.open_table(index::KEYS)
                .map_err(|e| self.err("written", e))?;
            txn.open_table(index::LISTINGS)
                .map_err(|e| self.err("written", e))?;
            txn.open_table(JOBS).map_err(|e| self.err("written", e))?;
            txn.open_table(ROUTES).map_err(|e| self.err("written", e))?;
            txn.open_table(FILES).map_err(|e| self.err("written", e))?;
            txn.open_table(CHUNKS).map_err(|e| self.err("written", e))?;
            txn.open_table(names::NAMES)
                .map_err(|e| self.err("written", e))?;
        }
        txn.commit().map_err(|e| self.err("written", e))?;
        if let Some(from) = upgrade {
            self.upgrade(from == "1")?;
        }
        Ok(())
    }

    /// Upgrades an older file: every object entered in the index by state and, from version
    /// 1, every job's counters counted once from its records (read as they are, one object at
    /// a time), and the schema version, in one transaction.
    fn upgrade(&self, count: bool) -> Result<(), StateError> {
        tracing::info!(path = %self.path.display(), "upgrading the state file: indexing each job's objects once");
        let txn = self.db.begin_write().map_err(|e| self.err("written", e))?;
        {
            let ids: Vec<JobId> = self.jobs()?.into_iter().map(|j| j.id).collect();
            let files = txn.open_table(FILES).map_err(|e| self.err("read", e))?;
            let chunks = txn.open_table(CHUNKS).map_err(|e| self.err("read", e))?;
            let mut counts = txn
                .open_table(counts::COUNTS)
                .map_err(|e| self.err("written", e))?;
            let mut states = txn
                .open_table(index::STATES)
                .map_err(|e| self.err("written", e))?;
            let mut keys = txn
                .open_table(index::KEYS)
                .map_err(|e| self.err("written", e))?;
            for id in ids {
                let mut total = counts::Delta::default();
                for entry in files
                    .range((id, 0)..=(id, u32::MAX))
                    .map_err(|e| self.err("read", e))?
                {
                    let (key, value) = entry.map_err(|e| self.err("read", e))?;
                    let file: FileRecord = self.decode(value.value())?;
                    let index = key.value().1;
                    states
                        .insert((id, index::code(file.state), index), ())
                        .map_err(|e| self.err("written", e))?;
                    keys.insert((id, file.key.as_str()), index)
                        .map_err(|e| self.err("written", e))?;
                    if count {
                        total.add(&self.share_in(&chunks, id, index, &file)?, 1);
                    }
                }
                if count {
                    let progress = total.applied_to(JobProgress::default());
                    counts
                        .insert(id, encode(&progress).as_slice())
                        .map_err(|e| self.err("written", e))?;
                }
            }
            let mut meta = txn.open_table(META).map_err(|e| self.err("written", e))?;
            meta.insert("schema", SCHEMA_VERSION)
                .map_err(|e| self.err("written", e))?;
        }
        // With the schema's version, so no older blobway ever reads a half-upgraded file.
        self.move_names(&txn)?;
        txn.commit().map_err(|e| self.err("written", e))
    }

    /// The chunk records of object `index` of `job` in `chunks`, in order.
    fn chunks_in<T: ReadableTable<(u64, u32, u32), &'static [u8]>>(
        &self,
        chunks: &T,
        job: JobId,
        index: u32,
    ) -> Result<Vec<ChunkRecord>, StateError> {
        let mut out = Vec::new();
        for entry in chunks
            .range((job, index, 0)..=(job, index, u32::MAX))
            .map_err(|e| self.err("read", e))?
        {
            let (_, value) = entry.map_err(|e| self.err("read", e))?;
            out.push(self.decode(value.value())?);
        }
        Ok(out)
    }

    /// The record of object `index` of `job` in `files`, if there is one.
    fn file_in<T: ReadableTable<(u64, u32), &'static [u8]>>(
        &self,
        files: &T,
        job: JobId,
        index: u32,
    ) -> Result<Option<FileRecord>, StateError> {
        files
            .get((job, index))
            .map_err(|e| self.err("read", e))?
            .map(|v| self.decode(v.value()))
            .transpose()
    }

    /// Bytes of the completed chunks of object `index` of `job`, read from `chunks`.
    fn share_bytes<T: ReadableTable<(u64, u32, u32), &'static [u8]>>(
        &self,
        chunks: &T,
        job: JobId,
        index: u32,
        file: &FileRecord,
    ) -> Result<u64, StateError> {
        counts::completed_bytes(chunks, job, index, file, |bytes| self.decode(bytes))
            .map_err(|e| self.count_err(e))
    }

    /// What object `index` of `job` adds to the job's counters, its chunks read from `chunks`.
    fn share_in<T: ReadableTable<(u64, u32, u32), &'static [u8]>>(
        &self,
        chunks: &T,
        job: JobId,
        index: u32,
        file: &FileRecord,
    ) -> Result<JobProgress, StateError> {
        counts::try_share(file, || self.share_bytes(chunks, job, index, file))
    }

    fn count_err(&self, e: counts::CountError) -> StateError {
        match e {
            counts::CountError::Storage(e) => self.err("read", e),
            counts::CountError::State(e) => e,
        }
    }

    /// Moves the claims of a file from before schema 4 into their compact table, inside the
    /// transaction that upgrades it.
    fn move_names(&self, txn: &redb::WriteTransaction) -> Result<(), StateError> {
        tracing::info!(path = %self.path.display(), "upgrading the state file: moving the name claims into their compact table");
        let mut names = txn
            .open_table(names::NAMES)
            .map_err(|e| self.err("written", e))?;
        {
            let old = txn
                .open_table(names::WHOLE_KEY_NAMES)
                .map_err(|e| self.err("read", e))?;
            for entry in old.iter().map_err(|e| self.err("read", e))? {
                let (key, holder) = entry.map_err(|e| self.err("read", e))?;
                let (job, claim) = key.value();
                let (shared, head) = codec::against(claim, holder.value());
                names
                    .insert((job, claim), (shared, head))
                    .map_err(|e| self.err("written", e))?;
            }
        }
        txn.delete_table(names::WHOLE_KEY_NAMES)
            .map_err(|e| self.err("written", e))?;
        Ok(())
    }
}

impl Backend for RedbState {
    /// The file this database lives in.
    fn path(&self) -> &Path {
        &self.path
    }

    /// Applies a batch of writes in one durable transaction ([`batch::apply`]).
    fn apply(&self, writes: &[Write]) -> Result<(), StateError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(|e| self.err("written", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StateError::Io {
                path: self.path.clone(),
                what: "written",
                detail: e.to_string(),
            })?;
        {
            let mut tables = Tables::open(self, &txn)?;
            batch::apply(&mut tables, writes)?;
        }
        txn.commit().map_err(|e| self.err("written", e))
    }

    fn setting(&self, name: &str) -> Result<Option<String>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let meta = txn.open_table(META).map_err(|e| self.err("read", e))?;
        let value = meta
            .get(format!("setting.{name}").as_str())
            .map_err(|e| self.err("read", e))?
            .map(|v| v.value().to_string());
        Ok(value)
    }

    /// A new job id, never used before in this database (not even by a job removed since).
    fn next_job_id(&self) -> Result<JobId, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let jobs = txn.open_table(JOBS).map_err(|e| self.err("read", e))?;
        let last = jobs
            .last()
            .map_err(|e| self.err("read", e))?
            .map_or(0, |(k, _)| k.value());
        let meta = txn.open_table(META).map_err(|e| self.err("read", e))?;
        let removed = meta
            .get(LAST_JOB_ID)
            .map_err(|e| self.err("read", e))?
            .and_then(|v| v.value().parse::<JobId>().ok())
            .unwrap_or(0);
        Ok(last.max(removed) + 1)
    }

    fn jobs(&self) -> Result<Vec<JobRecord>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let jobs = txn.open_table(JOBS).map_err(|e| self.err("read", e))?;
        let mut out = Vec::new();
        for entry in jobs.iter().map_err(|e| self.err("read", e))? {
            let (_, value) = entry.map_err(|e| self.err("read", e))?;
            out.push(self.decode(value.value())?);
        }
        Ok(out)
    }

    fn job(&self, id: JobId) -> Result<Option<JobRecord>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let jobs = txn.open_table(JOBS).map_err(|e| self.err("read", e))?;
        match jobs.get(id).map_err(|e| self.err("read", e))? {
            Some(value) => Ok(Some(self.decode(value.value())?)),
            None => Ok(None),
        }
    }

    fn job_for_route(
        &self,
        source: &str,
        destination: &str,
    ) -> Result<Option<JobRecord>, StateError> {
        let id = {
            let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
            let routes = txn.open_table(ROUTES).map_err(|e| self.err("read", e))?;
            routes
                .get(route_key(source, destination).as_str())
                .map_err(|e| self.err("read", e))?
                .map(|v| v.value())
        };
        match id {
            Some(id) => self.job(id),
            None => Ok(None),
        }
    }

    /// A page of job `id`'s objects for a view, in index order from index `from`: those in
    /// one of `states` (all when `None`) whose source key contains `search`, at most `limit`,
    /// each with its chunks when `chunks_of` holds its index or is `None` (an empty list
    /// otherwise; read chunks must be as many as the object has, or the file is damaged). One
    /// read transaction, over the index by state when there is one: a filtered page of a job
    /// of millions costs what its rows cost; a search reads records until its page is full.
    fn objects_page(
        &self,
        id: JobId,
        states: Option<&[FileState]>,
        search: &str,
        from: u32,
        limit: usize,
        chunks_of: Option<&std::collections::BTreeSet<u32>>,
    ) -> Result<Option<JobSnapshot>, StateError> {
        const BATCH: usize = 4096;
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let jobs = txn.open_table(JOBS).map_err(|e| self.err("read", e))?;
        let Some(job) = jobs.get(id).map_err(|e| self.err("read", e))? else {
            return Ok(None);
        };
        let job: JobRecord = self.decode(job.value())?;
        let files_table = txn.open_table(FILES).map_err(|e| self.err("read", e))?;
        let chunks_table = txn.open_table(CHUNKS).map_err(|e| self.err("read", e))?;
        let mut files = Vec::new();
        let mut take = |index: u32, file: FileRecord| -> Result<bool, StateError> {
            if file.key.contains(search) {
                if chunks_of.is_some_and(|only| !only.contains(&index)) {
                    files.push((index, file, Vec::new()));
                    return Ok(files.len() < limit);
                }
                let chunks = self.chunks_in(&chunks_table, id, index)?;
                if chunks.len() != file.chunk_count as usize {
                    return Err(StateError::Corrupt {
                        path: self.path.clone(),
                        detail: format!(
                            "job {id} file {index} has {} chunk records, expected {}",
                            chunks.len(),
                            file.chunk_count
                        ),
                    });
                }
                files.push((index, file, chunks));
            }
            Ok(files.len() < limit)
        };
        match states {
            None => {
                for entry in files_table
                    .range((id, from)..=(id, u32::MAX))
                    .map_err(|e| self.err("read", e))?
                {
                    let (key, value) = entry.map_err(|e| self.err("read", e))?;
                    if !take(key.value().1, self.decode(value.value())?)? {
                        break;
                    }
                }
            }
            Some(states) => {
                let table = txn
                    .open_table(index::STATES)
                    .map_err(|e| self.err("read", e))?;
                let mut after = from.checked_sub(1);
                'batches: loop {
                    let indexes = index::indexes_over(&table, id, states, after, BATCH)
                        .map_err(|e| self.err("read", e))?;
                    for index in &indexes {
                        if let Some(file) = self.file_in(&files_table, id, *index)?
                            && !take(*index, file)?
                        {
                            break 'batches;
                        }
                    }
                    if indexes.len() < BATCH {
                        break;
                    }
                    after = indexes.last().copied();
                }
            }
        }
        Ok(Some(JobSnapshot { job, files }))
    }

    /// One short read transaction.
    fn next_under_way(
        &self,
        id: JobId,
        after: Option<u32>,
        max_objects: usize,
        max_chunks: usize,
        held: &dyn Fn(u32) -> bool,
    ) -> Result<UnderWay, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let states = txn
            .open_table(index::STATES)
            .map_err(|e| self.err("read", e))?;
        let files = txn.open_table(FILES).map_err(|e| self.err("read", e))?;
        let chunks_table = txn.open_table(CHUNKS).map_err(|e| self.err("read", e))?;
        let limit = max_objects.max(1);
        // One more than asked, so the end is known exactly.
        let mut indexes = index::indexes_over(&states, id, &index::UNDER_WAY, after, limit + 1)
            .map_err(|e| self.err("read", e))?;
        let exhausted = indexes.len() <= limit;
        indexes.truncate(limit);
        let mut out = UnderWay {
            objects: Vec::new(),
            last: after,
            exhausted,
            lent: Vec::new(),
        };
        let mut chunk_count = 0usize;
        for file_index in indexes.iter().copied() {
            if !out.objects.is_empty() && chunk_count >= max_chunks {
                out.exhausted = false;
                break;
            }
            out.last = Some(file_index);
            if held(file_index) {
                continue;
            }
            let Some(file) = self.file_in(&files, id, file_index)? else {
                continue;
            };
            let chunks = self.chunks_in(&chunks_table, id, file_index)?;
            // Chunks not recorded yet count too: the window holds them all once loaded.
            chunk_count += chunks.len().max(file.chunk_count as usize);
            out.objects.push((file_index, file, chunks));
        }
        Ok(out)
    }

    /// Job `id`'s objects in one of `states` after index `after`, ascending, at most `limit`
    /// (their records only). One short read transaction; page with the last index returned.
    fn objects_in(
        &self,
        id: JobId,
        states: &[FileState],
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<(u32, FileRecord)>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let table = txn
            .open_table(index::STATES)
            .map_err(|e| self.err("read", e))?;
        let files = txn.open_table(FILES).map_err(|e| self.err("read", e))?;
        let indexes = index::indexes_over(&table, id, states, after, limit)
            .map_err(|e| self.err("read", e))?;
        let mut out = Vec::with_capacity(indexes.len());
        for file_index in indexes {
            if let Some(file) = self.file_in(&files, id, file_index)? {
                out.push((file_index, file));
            }
        }
        Ok(out)
    }

    fn objects_at(&self, id: JobId, indexes: &[u32]) -> Result<Vec<(u32, FileRecord)>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let files = txn.open_table(FILES).map_err(|e| self.err("read", e))?;
        let mut out = Vec::with_capacity(indexes.len());
        for index in indexes {
            if let Some(file) = self.file_in(&files, id, *index)? {
                out.push((*index, file));
            }
        }
        Ok(out)
    }

    fn listing(&self, id: JobId) -> Result<Option<index::Listing>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let table = txn
            .open_table(index::LISTINGS)
            .map_err(|e| self.err("read", e))?;
        match table.get(id).map_err(|e| self.err("read", e))? {
            Some(value) => Ok(Some(self.decode(value.value())?)),
            None => Ok(None),
        }
    }

    fn next_file_index(&self, id: JobId) -> Result<u32, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let files = txn.open_table(FILES).map_err(|e| self.err("read", e))?;
        let last = files
            .range((id, 0)..=(id, u32::MAX))
            .map_err(|e| self.err("read", e))?
            .next_back()
            .transpose()
            .map_err(|e| self.err("read", e))?
            .map(|(k, _)| k.value().1);
        Ok(last.map_or(0, |l| l.saturating_add(1)))
    }

    fn recorded(
        &self,
        id: JobId,
        keys: &[&str],
    ) -> Result<Vec<(u32, FileRecord, Vec<ChunkRecord>)>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let key_table = txn
            .open_table(index::KEYS)
            .map_err(|e| self.err("read", e))?;
        let files = txn.open_table(FILES).map_err(|e| self.err("read", e))?;
        let chunks_table = txn.open_table(CHUNKS).map_err(|e| self.err("read", e))?;
        let mut out = Vec::new();
        for key in keys {
            let Some(file_index) = key_table
                .get((id, *key))
                .map_err(|e| self.err("read", e))?
                .map(|v| v.value())
            else {
                continue;
            };
            let Some(file) = self.file_in(&files, id, file_index)? else {
                continue;
            };
            let chunks = self.chunks_in(&chunks_table, id, file_index)?;
            out.push((file_index, file, chunks));
        }
        Ok(out)
    }

    fn keys_between(
        &self,
        id: JobId,
        after: Option<&str>,
        upto: Option<&str>,
    ) -> Result<Vec<(String, u32)>, StateError> {
        use std::ops::Bound;
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let table = txn
            .open_table(index::KEYS)
            .map_err(|e| self.err("read", e))?;
        let start = match after {
            Some(after) => Bound::Excluded((id, after)),
            None => Bound::Included((id, "")),
        };
        let mut out = Vec::new();
        for entry in table
            .range::<(u64, &str)>((start, Bound::Unbounded))
            .map_err(|e| self.err("read", e))?
        {
            let (key, value) = entry.map_err(|e| self.err("read", e))?;
            let (job, source_key) = key.value();
            if job != id || upto.is_some_and(|upto| source_key > upto) {
                break;
            }
            out.push((source_key.to_string(), value.value()));
        }
        Ok(out)
    }

    fn chunk(&self, job: JobId, file: u32, index: u32) -> Result<Option<ChunkRecord>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let chunks = txn.open_table(CHUNKS).map_err(|e| self.err("read", e))?;
        match chunks
            .get((job, file, index))
            .map_err(|e| self.err("read", e))?
        {
            Some(value) => Ok(Some(self.decode(value.value())?)),
            None => Ok(None),
        }
    }

    /// What each table of the file holds: entries and bytes (the benchmark reports them per
    /// object), largest first.
    fn usage(&self) -> Result<Vec<TableUsage>, StateError> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let mut out = Vec::new();
        macro_rules! measure {
            ($($table:expr),*) => {$({
                let table = txn.open_table($table).map_err(|e| self.err("read", e))?;
                let stats = table.stats().map_err(|e| self.err("read", e))?;
                out.push(TableUsage {
                    name: redb::TableHandle::name(&$table).to_string(),
                    entries: table.len().map_err(|e| self.err("read", e))?,
                    stored: stats.stored_bytes(),
                    overhead: stats.metadata_bytes() + stats.fragmented_bytes(),
                });
            })*};
        }
        measure!(
            FILES,
            CHUNKS,
            names::NAMES,
            index::KEYS,
            index::STATES,
            JOBS,
            counts::COUNTS,
            index::LISTINGS
        );
        out.sort_by_key(|t| std::cmp::Reverse(t.stored + t.overhead));
        Ok(out)
    }

    fn progress(&self, id: JobId) -> Result<JobProgress, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let counts = txn
            .open_table(counts::COUNTS)
            .map_err(|e| self.err("read", e))?;
        match counts.get(id).map_err(|e| self.err("read", e))? {
            Some(value) => self.decode(value.value()),
            None => Ok(JobProgress::default()),
        }
    }

    fn recover_in_progress(&self) -> Result<usize, StateError> {
        let mut resets = Vec::new();
        {
            let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
            let chunks = txn.open_table(CHUNKS).map_err(|e| self.err("read", e))?;
            for entry in chunks.iter().map_err(|e| self.err("read", e))? {
                let (key, value) = entry.map_err(|e| self.err("read", e))?;
                let mut chunk: ChunkRecord = self.decode(value.value())?;
                if chunk.state == ChunkState::InProgress {
                    chunk.state = ChunkState::Pending;
                    let (job, file, index) = key.value();
                    resets.push(Write::Chunk(job, file, index, chunk));
                }
            }
        }
        self.apply(&resets)?;
        Ok(resets.len())
    }

    /// Forgets every name of `job`, a batch per transaction: one transaction over a job of
    /// millions would hold all its changed pages in memory at once.
    fn clear_names(&self, job: JobId) -> Result<(), StateError> {
        const BATCH: usize = 10_000;
        loop {
            let txn = self.db.begin_write().map_err(|e| self.err("written", e))?;
            let cleared = {
                let mut names = txn
                    .open_table(names::NAMES)
                    .map_err(|e| self.err("written", e))?;
                let claims: Vec<String> = names
                    .range((job, "")..(job + 1, ""))
                    .map_err(|e| self.err("read", e))?
                    .take(BATCH)
                    .map(|entry| entry.map(|(k, _)| k.value().1.to_string()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| self.err("read", e))?;
                for claim in &claims {
                    names
                        .remove((job, claim.as_str()))
                        .map_err(|e| self.err("written", e))?;
                }
                claims.len() < BATCH
            };
            txn.commit().map_err(|e| self.err("written", e))?;
            if cleared {
                return Ok(());
            }
        }
    }

    fn claim_names(
        &self,
        job: JobId,
        naming: Naming,
        claims: &[Claim<'_>],
    ) -> Result<Vec<Option<NameClash>>, StateError> {
        let txn = self.db.begin_write().map_err(|e| self.err("written", e))?;
        let mut out = Vec::with_capacity(claims.len());
        {
            let names = std::cell::RefCell::new(
                txn.open_table(names::NAMES)
                    .map_err(|e| self.err("written", e))?,
            );
            for claim in claims {
                out.push(names::claim_one(
                    naming,
                    claim,
                    |k| {
                        let table = names.borrow();
                        let held = table.get((job, k)).map_err(|e| self.err("read", e))?;
                        held.map(|v| {
                            let (shared, head) = v.value();
                            codec::joined(k, shared, head).ok_or_else(|| StateError::Corrupt {
                                path: self.path.clone(),
                                detail: format!("the claim on `{k}` does not decode"),
                            })
                        })
                        .transpose()
                    },
                    |k, v| {
                        names
                            .borrow_mut()
                            .insert((job, k), codec::against(k, v))
                            .map_err(|e| self.err("written", e))?;
                        Ok(())
                    },
                )?);
            }
        }
        txn.commit().map_err(|e| self.err("written", e))?;
        Ok(out)
    }
}

/// The tables of one redb write transaction, as a batch writes them.
struct Tables<'t> {
    state: &'t RedbState,
    jobs: redb::Table<'t, u64, &'static [u8]>,
    routes: redb::Table<'t, &'static str, u64>,
    files: redb::Table<'t, (u64, u32), &'static [u8]>,
    chunks: redb::Table<'t, (u64, u32, u32), &'static [u8]>,
    meta: redb::Table<'t, &'static str, &'static str>,
    counts: redb::Table<'t, u64, &'static [u8]>,
    states: redb::Table<'t, (u64, u8, u32), ()>,
    keys: redb::Table<'t, (u64, &'static str), u32>,
    listings: redb::Table<'t, u64, &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(state: &'t RedbState, txn: &'t redb::WriteTransaction) -> Result<Self, StateError> {
        let w = |e| state.err("written", e);
        Ok(Self {
            state,
            jobs: txn.open_table(JOBS).map_err(w)?,
            routes: txn.open_table(ROUTES).map_err(w)?,
            files: txn.open_table(FILES).map_err(w)?,
            chunks: txn.open_table(CHUNKS).map_err(w)?,
            meta: txn.open_table(META).map_err(w)?,
            counts: txn.open_table(counts::COUNTS).map_err(w)?,
            states: txn.open_table(index::STATES).map_err(w)?,
            keys: txn.open_table(index::KEYS).map_err(w)?,
            listings: txn.open_table(index::LISTINGS).map_err(w)?,
        })
    }

    fn read(&self, e: impl Into<redb::Error>) -> StateError {
        self.state.err("read", e)
    }

    fn written(&self, e: impl Into<redb::Error>) -> StateError {
        self.state.err("written", e)
    }
}

impl batch::Txn for Tables<'_> {
    fn file(&mut self, job: JobId, index: u32) -> Result<Option<FileRecord>, StateError> {
        self.state.file_in(&self.files, job, index)
    }

    fn chunks(&mut self, job: JobId, index: u32) -> Result<Vec<ChunkRecord>, StateError> {
        self.state.chunks_in(&self.chunks, job, index)
    }

    fn completed_bytes(
        &mut self,
        job: JobId,
        index: u32,
        file: &FileRecord,
    ) -> Result<u64, StateError> {
        self.state.share_bytes(&self.chunks, job, index, file)
    }

    fn put_file(&mut self, job: JobId, index: u32, file: &FileRecord) -> Result<(), StateError> {
        self.files
            .insert((job, index), encode(file).as_slice())
            .map_err(|e| self.state.err("written", e))?;
        Ok(())
    }

    fn remove_file(&mut self, job: JobId, index: u32) -> Result<(), StateError> {
        self.files
            .remove((job, index))
            .map_err(|e| self.state.err("written", e))?;
        self.chunks
            .retain_in((job, index, 0)..=(job, index, u32::MAX), |_, _| false)
            .map_err(|e| self.state.err("written", e))
    }

    fn index_state(
        &mut self,
        job: JobId,
        state: FileState,
        index: u32,
        present: bool,
    ) -> Result<(), StateError> {
        let key = (job, index::code(state), index);
        if present {
            self.states
                .insert(key, ())
                .map_err(|e| self.state.err("written", e))?;
        } else {
            self.states
                .remove(key)
                .map_err(|e| self.state.err("written", e))?;
        }
        Ok(())
    }

    fn key_holder(&mut self, job: JobId, key: &str) -> Result<Option<u32>, StateError> {
        let held = self.keys.get((job, key)).map_err(|e| self.read(e))?;
        Ok(held.map(|v| v.value()))
    }

    fn set_key(&mut self, job: JobId, key: &str, index: Option<u32>) -> Result<(), StateError> {
        match index {
            Some(index) => self.keys.insert((job, key), index).map(|_| ()),
            None => self.keys.remove((job, key)).map(|_| ()),
        }
        .map_err(|e| self.written(e))
    }

    fn put_chunk(
        &mut self,
        job: JobId,
        file: u32,
        index: u32,
        chunk: &ChunkRecord,
    ) -> Result<Option<ChunkRecord>, StateError> {
        let old = self
            .chunks
            .insert((job, file, index), encode(chunk).as_slice())
            .map_err(|e| self.state.err("written", e))?;
        old.map(|v| self.state.decode::<ChunkRecord>(v.value()))
            .transpose()
    }

    fn failed(&mut self, job: JobId) -> Result<Vec<u32>, StateError> {
        index::indexes_in(&self.states, job, FileState::Failed, None, usize::MAX)
            .map_err(|e| self.read(e))
    }

    fn job(&mut self, id: JobId) -> Result<Option<JobRecord>, StateError> {
        let found = self.jobs.get(id).map_err(|e| self.read(e))?;
        found.map(|v| self.state.decode(v.value())).transpose()
    }

    fn set_job(&mut self, id: JobId, job: Option<&JobRecord>) -> Result<(), StateError> {
        match job {
            Some(job) => {
                self.jobs
                    .insert(id, encode(job).as_slice())
                    .map_err(|e| self.state.err("written", e))?;
            }
            None => {
                self.jobs
                    .remove(id)
                    .map_err(|e| self.state.err("written", e))?;
                self.counts
                    .remove(id)
                    .map_err(|e| self.state.err("written", e))?;
            }
        }
        Ok(())
    }

    fn route(&mut self, route: &str) -> Result<Option<JobId>, StateError> {
        let held = self.routes.get(route).map_err(|e| self.read(e))?;
        Ok(held.map(|v| v.value()))
    }

    fn set_route(&mut self, route: &str, job: Option<JobId>) -> Result<(), StateError> {
        match job {
            Some(job) => self.routes.insert(route, job).map(|_| ()),
            None => self.routes.remove(route).map(|_| ()),
        }
        .map_err(|e| self.written(e))
    }

    fn meta(&mut self, name: &str) -> Result<Option<String>, StateError> {
        let value = self.meta.get(name).map_err(|e| self.read(e))?;
        Ok(value.map(|v| v.value().to_string()))
    }

    fn set_meta(&mut self, name: &str, value: &str) -> Result<(), StateError> {
        self.meta
            .insert(name, value)
            .map_err(|e| self.state.err("written", e))?;
        Ok(())
    }

    fn set_listing(
        &mut self,
        job: JobId,
        listing: Option<&index::Listing>,
    ) -> Result<(), StateError> {
        match listing {
            Some(listing) => self
                .listings
                .insert(job, encode(listing).as_slice())
                .map(|_| ()),
            None => self.listings.remove(job).map(|_| ()),
        }
        .map_err(|e| self.written(e))
    }

    fn counts(&mut self, job: JobId) -> Result<JobProgress, StateError> {
        let found = self.counts.get(job).map_err(|e| self.read(e))?;
        match found {
            Some(v) => self.state.decode(v.value()),
            None => Ok(JobProgress::default()),
        }
    }

    fn set_counts(&mut self, job: JobId, progress: &JobProgress) -> Result<(), StateError> {
        self.counts
            .insert(job, encode(progress).as_slice())
            .map_err(|e| self.state.err("written", e))?;
        Ok(())
    }
}

fn io_error(path: &Path, what: &'static str, io: &std::io::Error) -> StateError {
    let detail = match io.kind() {
        std::io::ErrorKind::StorageFull => format!(
            "{io}: the disk holding the state file is full; free space there and run `blobway \
             resume` — progress recorded so far is kept"
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("{io}: check the file's owner and mode, or choose another path with --state")
        }
        _ => io.to_string(),
    };
    StateError::Io {
        path: path.to_path_buf(),
        what,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{JobOptions, JobState};

    #[cfg(unix)]
    #[test]
    fn the_state_file_is_never_readable_by_others_not_even_while_it_is_created() {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..20 {
            let path = dir.path().join(format!("s{i}.redb"));
            let stop = Arc::new(AtomicBool::new(false));
            let watcher = {
                let (path, stop) = (path.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut wider = None;
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(meta) = std::fs::metadata(&path) {
                            let mode = meta.permissions().mode() & 0o777;
                            if mode & 0o077 != 0 {
                                wider = Some(mode);
                            }
                        }
                    }
                    wider
                })
            };
            std::thread::sleep(std::time::Duration::from_millis(2));
            let db = RedbState::open(&path).expect("open");
            stop.store(true, Ordering::Relaxed);
            let wider = watcher.join().expect("watcher");
            assert_eq!(
                wider,
                None,
                "{} was readable by others while created",
                path.display()
            );
            drop(db);
        }
    }

    #[cfg(unix)]
    #[test]
    fn only_the_owner_may_read_the_state_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let _db = RedbState::open(&path).expect("open");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn job(id: JobId) -> JobRecord {
        JobRecord {
            id,
            source: "s3://b/p/".into(),
            destination: "az://c/p/".into(),
            options: JobOptions::with_chunk_size(8),
            state: JobState::Running,
            created_ms: 1,
            updated_ms: 1,
            error: None,
            planned: true,
        }
    }

    fn file(chunks: u32) -> FileRecord {
        FileRecord::new("p/a", "p/a", u64::from(chunks) * 8 - 3, "\"e\"", 8, chunks)
    }

    #[test]
    fn a_version_1_file_is_upgraded_with_its_counters_and_index_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        {
            let db = RedbState::open(&path).expect("open");
            let mut done = file(2);
            done.state = FileState::Done;
            let mut completed = ChunkRecord::pending();
            completed.state = ChunkState::Completed;
            db.apply(&[
                Write::Job(job(1)),
                Write::File(1, 0, done),
                Write::Chunk(1, 0, 0, completed.clone()),
                Write::Chunk(1, 0, 1, completed.clone()),
                Write::File(1, 1, file(3)),
                Write::Chunk(1, 1, 0, completed),
                Write::Chunk(1, 1, 1, ChunkRecord::pending()),
                Write::Chunk(1, 1, 2, ChunkRecord::pending()),
            ])
            .expect("apply");
            // As blobway 1 left it: no counters, no index by state.
            let txn = db.db.begin_write().expect("write");
            {
                let mut counts = txn.open_table(counts::COUNTS).expect("counts");
                counts.remove(1).expect("remove");
                let mut states = txn.open_table(index::STATES).expect("states");
                states.retain(|_, _| false).expect("emptied");
                let mut meta = txn.open_table(META).expect("meta");
                meta.insert("schema", "1").expect("schema");
            }
            txn.commit().expect("commit");
        }
        let db = RedbState::open(&path).expect("upgraded");
        let p = db.progress(1).expect("progress");
        assert_eq!(
            (p.files_total, p.files_done, p.bytes_total, p.bytes_done),
            (2, 1, 34, 21)
        );
        let under_way = db
            .objects_in(1, &index::UNDER_WAY, None, 10)
            .expect("under way");
        assert_eq!(under_way.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1]);
        let next = db
            .next_under_way(1, None, 10, 100, &|_| false)
            .expect("next");
        assert_eq!(next.objects.len(), 1);
        assert_eq!(next.objects[0].2.len(), 3, "with its chunks");
        assert!(next.exhausted);
        {
            let txn = db.db.begin_write().expect("write");
            txn.open_table(META)
                .expect("meta")
                .insert("schema", "6")
                .expect("schema");
            txn.commit().expect("commit");
        }
        drop(db);
        let err = RedbState::open(&path).err().expect("refused");
        assert!(err.to_string().contains("upgrade blobway"), "{err}");
    }

    #[test]
    fn a_second_open_says_the_file_is_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let _first = RedbState::open(&path).expect("open");
        let err = RedbState::open(&path).err().expect("second open fails");
        assert!(matches!(err, StateError::AlreadyOpen(_)), "{err}");
        assert!(
            err.to_string()
                .contains("in use by another running blobway")
        );
    }

    #[test]
    fn a_file_let_go_within_the_grace_is_opened_and_one_held_longer_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        // A blobway that is stopping: it lets go of the file a moment later.
        let stopping = RedbState::open(&path).expect("open");
        let letting_go = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            drop(stopping);
        });
        let started = std::time::Instant::now();
        crate::state::StateDb::open_file(&path).expect("opened once let go");
        assert!(started.elapsed() >= std::time::Duration::from_millis(400));
        letting_go.join().expect("joined");
        // One that keeps it is refused once the grace is over.
        let _keeping = RedbState::open(&path).expect("open again");
        let started = std::time::Instant::now();
        let err = crate::state::StateDb::open_file(&path)
            .err()
            .expect("refused");
        assert!(matches!(err, StateError::AlreadyOpen(_)), "{err}");
        assert!(started.elapsed() >= crate::state::HELD_FILE_WAIT);
    }

    #[test]
    fn a_garbage_file_is_reported_as_damaged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        std::fs::write(&path, vec![0x5a; 8192]).expect("write garbage");
        let err = RedbState::open(&path).err().expect("garbage fails");
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(
            std::fs::read(&path).expect("still there").len() == 8192,
            "the file is kept"
        );
    }
}
