//! The control plane's single source of truth: every job, file and chunk with its state,
//! attempts and errors, behind one contract ([`Backend`]) that each state backend keeps — the
//! embedded redb file ([`embedded`]) on one machine.
//!
//! Writes arrive in batches ([`Backend::apply`]) from one writer thread ([`writer`]), each
//! batch one durable transaction, so tens of thousands of chunk transitions per second cost a
//! few hundred commits. Nothing secret is ever stored: records hold keys, sizes, ETags, states
//! and redacted error texts only.

mod batch;
mod codec;
pub mod counts;
pub mod embedded;
pub mod index;
pub mod lease;
pub mod location;
pub mod names;
pub mod postgres;
pub mod records;
pub mod report;
pub mod sealed;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use embedded::RedbState;
pub use location::StateLocation;
pub use records::*;
/// How long [`StateDb::open_file`] waits for a file another blobway holds to be let go.
pub const HELD_FILE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Why the state database could not be used; every message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the file.
    #[error(
        "the state file {0} is in use by another running blobway; wait for it to finish (see \
         `blobway jobs` from that session), or give this run its own file with --state"
    )]
    AlreadyOpen(PathBuf),
    /// The file is not a readable blobway database.
    #[error(
        "the state file {path} is damaged or not a blobway state file ({detail}); move it aside \
         and run the copy again — objects already identical at the destination are skipped, \
         so nothing is copied twice"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb said.
        detail: String,
    },
    /// The file was written by a newer blobway.
    #[error(
        "the state file {path} has schema version {found}; this blobway reads version {reads}; upgrade blobway"
    )]
    Schema {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: String,
        /// The version this blobway writes.
        reads: &'static str,
    },
    /// The state database does not answer.
    #[error(
        "the state database {url} does not answer ({detail}); check its host and port, that PostgreSQL runs there, and the network between"
    )]
    Unreachable {
        /// Its URL, without the password.
        url: String,
        /// What the connection said.
        detail: String,
    },
    /// The state database refused the login.
    #[error(
        "the state database {url} refused the login ({detail}); check the user and password in the URL given with --state or BLOBWAY_STATE"
    )]
    Refused {
        /// Its URL, without the password.
        url: String,
        /// What the server said.
        detail: String,
    },
    /// The state database was written by a newer blobway.
    #[error(
        "the state database {url} has schema version {found}; this blobway reads version {reads}; upgrade blobway on every worker"
    )]
    DatabaseSchema {
        /// Its URL, without the password.
        url: String,
        /// The version found.
        found: String,
        /// The version this blobway writes.
        reads: i64,
    },
    /// A live worker of the same name works on the state database.
    #[error(
        "a worker named {name} already works on the state database {url} ({holder}); give this one a name of its own with BLOBWAY_WORKER_NAME, or stop that one first"
    )]
    WorkerInUse {
        /// Its URL, without the password.
        url: String,
        /// The worker's name.
        name: String,
        /// Where it runs (host, process).
        holder: String,
    },
    /// This worker's lease ran out: the other workers took its claims back.
    #[error(
        "worker {name}'s lease on the state database {url} ran out (it was stopped or cut off for longer than {lease} s); the other workers took its claims back, and it records nothing more; start it again to rejoin"
    )]
    Fenced {
        /// Its URL, without the password.
        url: String,
        /// The worker's name.
        name: String,
        /// How long its lease lasted, in seconds.
        lease: u64,
    },
    /// The state database answered with an error.
    #[error("the state database {url}: {detail}")]
    Database {
        /// Its URL, without the password.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// Reading or writing failed.
    #[error("the state file {path} could not be {what}: {detail}")]
    Io {
        /// The file.
        path: PathBuf,
        /// "read" or "written".
        what: &'static str,
        /// What went wrong, with the fix when known.
        detail: String,
    },
    /// What was about to be recorded could not be made durable at the destination first.
    #[error(
        "{0}; nothing more is recorded — check the disk, then run `blobway resume` (they are \
         copied again)"
    )]
    Unsynced(String),
}

/// One change to the database.
#[derive(Clone, Debug)]
pub enum Write {
    /// Insert or replace a job.
    Job(JobRecord),
    /// Insert or replace a file of a job.
    File(JobId, u32, FileRecord),
    /// Insert or replace a chunk of a file.
    Chunk(JobId, u32, u32, ChunkRecord),
    /// Remove a file and its chunks.
    RemoveFile(JobId, u32),
    /// Remove a job that was recorded when it was queued but never planned (its route was
    /// refused before anything was listed); a planned job is never removed.
    RemoveUnplannedJob(JobId),
    /// Record an engine-wide setting the operator chose (name, JSON value).
    Setting(&'static str, String),
    /// Give the failed objects of a job that `rule` admits another chance (see
    /// [`index::reopen`]), except those in `keep` (the scheduler holds them and decides
    /// itself). Read and written in the batch's own transaction, so it sees every write
    /// queued before it.
    ReopenFailed {
        job: JobId,
        keep: Vec<u32>,
        rule: index::Reopen,
    },
    /// Record where a job's listing stands (`None`: it is complete).
    Listing(JobId, Option<index::Listing>),
    /// This engine ended the job and has nothing of it in flight: with a shared state, what
    /// it claimed of the job goes back to the other workers (nothing for a file).
    LetGo(JobId),
    /// The owner of an object lends these pending chunks of it to the other workers of a
    /// shared state, to move alongside it (nothing for a file). See [`Backend::borrow`].
    Lend(JobId, u32, Vec<u32>),
    /// A chunk this worker borrowed came back (moved, or given back with its error):
    /// recorded only while it is still lent to this worker, and then its object's owner's
    /// again.
    Borrowed(JobId, u32, u32, ChunkRecord),
}

/// Counts that summarise a job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobProgress {
    /// Objects in the job.
    pub files_total: u64,
    /// Objects committed.
    pub files_done: u64,
    /// Objects already identical at the destination.
    pub files_skipped: u64,
    /// Objects failed.
    pub files_failed: u64,
    /// Bytes in the job, skipped objects excluded.
    pub bytes_total: u64,
    /// Bytes acknowledged by the destination, skipped objects excluded.
    pub bytes_done: u64,
}

/// A loaded job with all its files and chunks.
#[derive(Clone, Debug)]
pub struct JobSnapshot {
    /// The job.
    pub job: JobRecord,
    /// Its files in index order, each with its chunks.
    pub files: Vec<(u32, FileRecord, Vec<ChunkRecord>)>,
}

/// The next objects under way of a job, read for the scheduler's window.
#[derive(Debug, Default)]
pub struct UnderWay {
    /// Each object's index, record and chunks, ascending.
    pub objects: Vec<(u32, FileRecord, Vec<ChunkRecord>)>,
    /// The last index looked at (held or returned): where the next read starts after.
    pub last: Option<u32>,
    /// True when no object under way was left after `last` at the time of the read.
    pub exhausted: bool,
    /// Chunks of the objects read that other workers hold lent (object, chunk): they come
    /// back through [`Backend::lent`], never sent by the reader meanwhile.
    pub lent: Vec<(u32, u32)>,
}

/// Chunks of one object another worker owns, borrowed to move (see [`Backend::borrow`]).
#[derive(Clone, Debug)]
pub struct Borrowed {
    /// The object's index.
    pub file: u32,
    /// Its record: key, ETag, upload session.
    pub record: FileRecord,
    /// Each borrowed chunk's index and record (claimed: in progress, its attempt counted).
    pub chunks: Vec<(u32, ChunkRecord)>,
}

/// Where a chunk an owner lent stands (see [`Backend::lent`]).
#[derive(Clone, Debug)]
pub struct LentChunk {
    /// The chunk's index.
    pub chunk: u32,
    /// Its record now (`None`: there is none).
    pub record: Option<ChunkRecord>,
    /// Still lent: another worker may hold it. Otherwise it is the owner's again, completed
    /// or to send.
    pub out: bool,
}

/// What one table of the state file holds.
#[derive(Clone, Debug)]
pub struct TableUsage {
    /// The table's name.
    pub name: String,
    /// Its entries.
    pub entries: u64,
    /// Bytes of keys and values.
    pub stored: u64,
    /// Bytes of branch pages, per-entry metadata and unused space in its pages.
    pub overhead: u64,
}

/// What every state backend keeps: the records, their transitions and the invariants the
/// engine relies on (a batch is applied whole or not at all; the counters and the index by
/// state always equal a fresh count of the records; a job ID is never given twice).
pub trait Backend: Send + Sync {
    /// Where the state lives, for messages (a file path, or a database's URL without its
    /// password).
    fn path(&self) -> &Path;

    /// A local path that stands for the state ([`StateLocation::anchor`]): its log is kept
    /// beside it.
    fn anchor(&self) -> PathBuf {
        self.path().to_path_buf()
    }

    /// True when a bearer upload session ([`sealed`]) cannot be recorded here: a shared
    /// database without a key to seal it.
    fn refuses_bearer_sessions(&self) -> bool {
        false
    }

    /// Applies a batch of writes in one durable transaction.
    fn apply(&self, writes: &[Write]) -> Result<(), StateError>;

    /// An engine-wide setting the operator chose, as recorded (JSON), if any.
    fn setting(&self, name: &str) -> Result<Option<String>, StateError>;

    /// A new job id, never used before in this state (not even by a job removed since).
    fn next_job_id(&self) -> Result<JobId, StateError>;

    /// A new job id, taken for this caller alone: another engine sharing the state is never
    /// given it (the file has one engine: [`Backend::next_job_id`]).
    fn take_job_id(&self) -> Result<JobId, StateError> {
        self.next_job_id()
    }

    /// Every job, oldest first.
    fn jobs(&self) -> Result<Vec<JobRecord>, StateError>;

    /// One job.
    fn job(&self, id: JobId) -> Result<Option<JobRecord>, StateError>;

    /// The job that copies `source` to `destination`, if one was planned before.
    fn job_for_route(
        &self,
        source: &str,
        destination: &str,
    ) -> Result<Option<JobRecord>, StateError>;

    /// A page of job `id`'s objects for a view, in index order from index `from`: those in
    /// one of `states` (all when `None`) whose source key contains `search`, at most `limit`,
    /// each with its chunks when `chunks_of` holds its index or is `None` (an empty list
    /// otherwise; read chunks must be as many as the object has, or the state is damaged).
    fn objects_page(
        &self,
        id: JobId,
        states: Option<&[FileState]>,
        search: &str,
        from: u32,
        limit: usize,
        chunks_of: Option<&std::collections::BTreeSet<u32>>,
    ) -> Result<Option<JobSnapshot>, StateError>;

    /// The next objects under way of job `id` after index `after`, with their chunks, for the
    /// scheduler's window: at most `max_objects`, and no more once objects of `max_chunks`
    /// chunks (recorded or not yet) are read (always at least one object). Objects `held` answers true for (the caller
    /// holds them already) are passed over.
    fn next_under_way(
        &self,
        id: JobId,
        after: Option<u32>,
        max_objects: usize,
        max_chunks: usize,
        held: &dyn Fn(u32) -> bool,
    ) -> Result<UnderWay, StateError>;

    /// Job `id`'s objects in one of `states` after index `after`, ascending, at most `limit`
    /// (their records only); page with the last index returned.
    fn objects_in(
        &self,
        id: JobId,
        states: &[FileState],
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<(u32, FileRecord)>, StateError>;

    /// The records of job `id`'s objects at `indexes` (those recorded).
    fn objects_at(&self, id: JobId, indexes: &[u32]) -> Result<Vec<(u32, FileRecord)>, StateError>;

    /// Where job `id`'s listing stands, if one is under way.
    fn listing(&self, id: JobId) -> Result<Option<index::Listing>, StateError>;

    /// The index the next new object of job `id` gets (one past the highest recorded).
    fn next_file_index(&self, id: JobId) -> Result<u32, StateError>;

    /// What job `id` recorded for each of `keys` (source keys) that it has, with chunks.
    fn recorded(
        &self,
        id: JobId,
        keys: &[&str],
    ) -> Result<Vec<(u32, FileRecord, Vec<ChunkRecord>)>, StateError>;

    /// Job `id`'s recorded source keys after `after` up to and including `upto` (to the end
    /// when `None`), in key order, with their object indexes.
    fn keys_between(
        &self,
        id: JobId,
        after: Option<&str>,
        upto: Option<&str>,
    ) -> Result<Vec<(String, u32)>, StateError>;

    /// One chunk.
    fn chunk(&self, job: JobId, file: u32, index: u32) -> Result<Option<ChunkRecord>, StateError>;

    /// What each table holds: entries and bytes, largest first.
    fn usage(&self) -> Result<Vec<TableUsage>, StateError>;

    /// Counts files and bytes of a job.
    fn progress(&self, id: JobId) -> Result<JobProgress, StateError>;

    /// Returns every IN_PROGRESS chunk to PENDING: after a crash nobody is working on them.
    /// Returns how many were reset.
    fn recover_in_progress(&self) -> Result<usize, StateError>;

    /// This engine's lease when it is one worker of several sharing the state (`None` for a
    /// state of its own): what it claims is fenced by it.
    fn lease(&self) -> Option<Arc<lease::Lease>> {
        None
    }

    /// How many changes of jobs and settings the state has recorded, when other engines share
    /// it (`None` for a state of its own): a change of the count says something is to follow.
    fn changes(&self) -> Result<Option<u64>, StateError> {
        Ok(None)
    }

    /// Given at once when another engine sharing the state records a change of a job or a
    /// setting (notifications may be lost: [`Backend::changes`] is the fallback).
    fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// Fails ([`StateError::Fenced`]) unless this engine's lease is live by the database's
    /// clock, when it is one worker of several: asked before it sends what no fenced write of
    /// its own precedes (giving up the uploads of a job cancelled while not loaded). Commits
    /// and other aborts follow a durable write the database fenced already.
    fn confirm_lease(&self) -> Result<(), StateError> {
        Ok(())
    }

    /// Takes job `id`'s listing under way for this engine: true when it is now this engine's
    /// to go on with, false when another live worker of a shared state lists it (taken in
    /// one write, so two workers never both take a gone worker's listing).
    fn take_listing(&self, _id: JobId) -> Result<bool, StateError> {
        Ok(true)
    }

    /// The workers sharing the state, as recorded (`None`: the state is not shared).
    fn workers(&self) -> Result<Option<Vec<lease::WorkerRecord>>, StateError> {
        Ok(None)
    }

    /// Borrows up to `max_chunks` chunks other workers lent of job `id`'s objects under way,
    /// claimed for this worker in one write (each chunk goes to one borrower). Nothing for a
    /// state of its own.
    fn borrow(&self, _id: JobId, _max_chunks: usize) -> Result<Vec<Borrowed>, StateError> {
        Ok(Vec::new())
    }

    /// How the `chunks` object `file` of job `id`'s owner lent stand now, after taking back
    /// up to `take_back` of them that no worker borrowed (the highest first).
    fn lent(
        &self,
        _id: JobId,
        _file: u32,
        _chunks: &[u32],
        _take_back: usize,
    ) -> Result<Vec<LentChunk>, StateError> {
        Ok(Vec::new())
    }

    /// Forgets every destination-name claim of `job` (a plan starts over from its listing).
    fn clear_names(&self, job: JobId) -> Result<(), StateError>;

    /// Claims each destination name for its source key, in order, in one transaction; for
    /// each, the clash when the name is held by another key (see [`names`]).
    fn claim_names(
        &self,
        job: JobId,
        naming: crate::store::rules::Naming,
        claims: &[names::Claim<'_>],
    ) -> Result<Vec<Option<names::NameClash>>, StateError>;

    /// A job with all its files and chunks.
    fn load_job(&self, id: JobId) -> Result<Option<JobSnapshot>, StateError> {
        self.objects_page(id, None, "", 0, usize::MAX, None)
    }

    /// Calls `f` with each of job `id`'s objects in one of `states`, in index order, read a
    /// page per short transaction.
    fn each_object_in(
        &self,
        id: JobId,
        states: &[FileState],
        f: &mut dyn FnMut(u32, FileRecord),
    ) -> Result<(), StateError> {
        const PAGE: usize = 4096;
        let mut after = None;
        loop {
            let page = self.objects_in(id, states, after, PAGE)?;
            after = page.last().map(|(i, _)| *i);
            let full = page.len() == PAGE;
            for (index, file) in page {
                f(index, file);
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Every upload session job `id` holds open at its destination, as (destination key,
    /// session), read a page at a time.
    fn open_uploads(&self, id: JobId) -> Result<Vec<(String, String)>, StateError> {
        self.open_uploads_except(id, &std::collections::BTreeSet::new())
    }

    /// [`Backend::open_uploads`], passing over the objects in `except`.
    fn open_uploads_except(
        &self,
        id: JobId,
        except: &std::collections::BTreeSet<u32>,
    ) -> Result<Vec<(String, String)>, StateError> {
        let states = [
            FileState::Transferring,
            FileState::Committing,
            FileState::Failed,
        ];
        let mut uploads = Vec::new();
        self.each_object_in(id, &states, &mut |index, file| {
            if !except.contains(&index) {
                uploads.extend(file.open_upload());
            }
        })?;
        Ok(uploads)
    }
}

/// Handle to the state; cheap to clone. It dereferences to its [`Backend`].
#[derive(Clone)]
pub struct StateDb(Arc<dyn Backend>);

impl StateDb {
    /// The default location: `$BLOBWAY_STATE`, else `$XDG_DATA_HOME/blobway/state.redb`.
    pub fn default_path() -> PathBuf {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("blobway")
            .join("state.redb")
    }

    /// A handle to `backend`.
    pub fn new(backend: impl Backend + 'static) -> Self {
        Self(Arc::new(backend))
    }

    /// Opens the state `given` names ([`StateLocation::parse`]): a PostgreSQL database when it
    /// is a `postgres://` URL, else the redb file at that path (created if missing).
    pub fn open(given: &Path) -> Result<Self, StateError> {
        StateLocation::parse(given).open()
    }

    /// Opens (or creates) the redb state file at `path`. A blobway that is stopping (a daemon
    /// gone idle, a copy ending) still holds the file for a moment after its socket went quiet,
    /// so a held file is tried again for [`HELD_FILE_WAIT`] before it is refused.
    pub fn open_file(path: &Path) -> Result<Self, StateError> {
        let deadline = std::time::Instant::now() + HELD_FILE_WAIT;
        loop {
            match RedbState::open(path) {
                Err(StateError::AlreadyOpen(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                opened => return Ok(Self::new(opened?)),
            }
        }
    }
}

impl std::ops::Deref for StateDb {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// Counts files and bytes over a job's objects and their chunks (what the recorded counters
/// hold, computed afresh).
pub fn progress_of<'a>(
    files: impl Iterator<Item = (&'a FileRecord, &'a [ChunkRecord])>,
) -> JobProgress {
    files
        .map(|(file, chunks)| {
            counts::share(file, || {
                chunks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| counts::chunk_bytes(file, i as u32, c))
                    .sum()
            })
        })
        .sum()
}

pub(crate) fn route_key(source: &str, destination: &str) -> String {
    format!("{source}\n{destination}")
}
