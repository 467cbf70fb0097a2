//! A job's counters (objects and bytes by state), kept in the state database and changed by
//! every write that touches one of its objects, so reading them never walks the job: `jobs`,
//! the job list and the API answer in O(jobs) however many objects a job has.
//!
//! What an object adds to its job's counters is [`share`], a pure function of its record and
//! the bytes of its completed chunks; a write adds the difference between the object's share
//! after and before it. The chunks of an object are read only when its own record changes
//! while it is under way (a begin, a commit, a failure), never on a chunk's write.

use redb::{ReadableTable, TableDefinition};

use super::{ChunkRecord, ChunkState, FileRecord, FileState, JobId, JobProgress};

/// Each job's counters (JSON [`JobProgress`]).
pub(super) const COUNTS: TableDefinition<u64, &[u8]> = TableDefinition::new("job_counts");

/// What one object adds to its job's counters; `completed` is the bytes of its completed
/// chunks (asked for only while the object is under way).
pub fn share(file: &FileRecord, completed: impl FnOnce() -> u64) -> JobProgress {
    let mut p = JobProgress {
        files_total: 1,
        ..JobProgress::default()
    };
    match file.state {
        FileState::Skipped => {
            p.files_skipped = 1;
            return p;
        }
        FileState::Done => p.files_done = 1,
        FileState::Failed => p.files_failed = 1,
        FileState::Transferring | FileState::Committing => {}
    }
    p.bytes_total = file.size;
    p.bytes_done = if file.state == FileState::Done {
        file.size
    } else {
        completed()
    };
    p
}

/// [`share`], the bytes of the completed chunks read by `completed`, which may fail.
pub(super) fn try_share(
    file: &FileRecord,
    completed: impl FnOnce() -> Result<u64, super::StateError>,
) -> Result<JobProgress, super::StateError> {
    let mut failed = None;
    let share = share(file, || {
        completed().unwrap_or_else(|e| {
            failed = Some(e);
            0
        })
    });
    failed.map_or(Ok(share), Err)
}

/// Counters added up (over [`Delta`]'s one list of them).
impl std::iter::Sum for JobProgress {
    fn sum<I: Iterator<Item = JobProgress>>(iter: I) -> JobProgress {
        let mut total = Delta::default();
        for p in iter {
            total.add(&p, 1);
        }
        total.applied_to(JobProgress::default())
    }
}

/// True while an object's chunks count towards its job's bytes done (it is neither done nor
/// skipped).
pub fn chunks_count(file: &FileRecord) -> bool {
    !matches!(file.state, FileState::Done | FileState::Skipped)
}

/// The bytes chunk `index` adds to its object's bytes done in `chunk`'s state.
pub fn chunk_bytes(file: &FileRecord, index: u32, chunk: &ChunkRecord) -> u64 {
    if chunk.state == ChunkState::Completed {
        // A chunk beyond the object's end (left by an older plan) holds no bytes of it.
        let range = file.chunk_range(index);
        range.end.saturating_sub(range.start)
    } else {
        0
    }
}

/// A change to a job's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Delta([i128; 6]);

impl Delta {
    /// Where bytes done sits in [`Delta::fields`].
    const BYTES_DONE: usize = 5;

    /// The counters in one order, for arithmetic over all of them (the one list of them).
    fn fields(p: &mut JobProgress) -> [&mut u64; 6] {
        [
            &mut p.files_total,
            &mut p.files_done,
            &mut p.files_skipped,
            &mut p.files_failed,
            &mut p.bytes_total,
            &mut p.bytes_done,
        ]
    }

    /// Adds `p` (or takes it away, with `sign` -1).
    pub(super) fn add(&mut self, p: &JobProgress, sign: i128) {
        let mut p = *p;
        for (total, value) in self.0.iter_mut().zip(Self::fields(&mut p)) {
            *total += sign * i128::from(*value);
        }
    }

    /// Adds bytes done.
    pub(super) fn add_bytes_done(&mut self, bytes: i128) {
        self.0[Self::BYTES_DONE] += bytes;
    }

    /// `p` changed by this delta (never below zero).
    pub(super) fn applied_to(&self, mut p: JobProgress) -> JobProgress {
        for (value, change) in Self::fields(&mut p).into_iter().zip(self.0) {
            let changed = i128::from(*value) + change;
            if changed < 0 {
                // Never with records written through `apply`; said, not hidden, if it happens.
                tracing::warn!("a job counter would fall below zero ({changed}); kept at 0");
            }
            *value = changed.clamp(0, i128::from(u64::MAX)) as u64;
        }
        p
    }
}

/// Bytes of the completed chunks of object `index` of `job`, as the table holds them now.
pub(super) fn completed_bytes<T: ReadableTable<(u64, u32, u32), &'static [u8]>>(
    chunks: &T,
    job: JobId,
    index: u32,
    file: &FileRecord,
    decode: impl Fn(&[u8]) -> Result<ChunkRecord, super::StateError>,
) -> Result<u64, CountError> {
    let mut bytes = 0;
    for entry in chunks.range((job, index, 0)..=(job, index, u32::MAX))? {
        let (key, value) = entry?;
        let (_, _, chunk) = key.value();
        bytes += chunk_bytes(file, chunk, &decode(value.value())?);
    }
    Ok(bytes)
}

/// Why the counters could not be read or written.
#[derive(Debug)]
pub(super) enum CountError {
    Storage(redb::StorageError),
    State(super::StateError),
}

impl From<redb::StorageError> for CountError {
    fn from(e: redb::StorageError) -> Self {
        CountError::Storage(e)
    }
}

impl From<super::StateError> for CountError {
    fn from(e: super::StateError) -> Self {
        CountError::State(e)
    }
}
