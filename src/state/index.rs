//! Which objects of a job are in which state: an index kept beside the object records and
//! changed by the same writes, so "the next objects under way after this one" (the
//! scheduler's bounded window), "the failed objects" (announcements, retries) and "the
//! sessions still open" (cancel) are range reads over the objects concerned, never walks over
//! a job of millions.
//!
//! Readers never hold a read transaction across a long walk (it pins old pages and the file
//! grows): each call is one short transaction that re-seeks by key, and callers page with the
//! index they last saw.

use redb::{ReadableTable, TableDefinition};

use super::{ChunkRecord, FileRecord, FileState, JobId};

/// (job, state code, object index) → nothing: one entry per object, under its current state.
pub(super) const STATES: TableDefinition<(u64, u8, u32), ()> =
    TableDefinition::new("object_states");

/// (job, source key) → object index: a planning page finds what earlier runs recorded for its
/// keys, and the keys recorded between two listed ones (gone from the source), by key.
pub(super) const KEYS: TableDefinition<(u64, &str), u32> = TableDefinition::new("object_keys");

/// Job → where its listing stands (JSON [`Listing`]), while a listing is under way.
pub(super) const LISTINGS: TableDefinition<u64, &[u8]> = TableDefinition::new("listings");

/// Where a job's listing stands: recorded with each planned page, in the page's own
/// transaction, so a listing stopped at any moment resumes after the last key recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listing {
    /// The last source key planned (listing resumes after it; for S3, its `StartAfter`).
    pub after: Option<String>,
    /// The job had no objects when this listing began: its objects may start while it lists.
    pub fresh: bool,
    /// The plan's summary so far (the engine's `PlanSummary`, as JSON).
    pub summary: serde_json::Value,
}

/// The index's code for a state (stable: it is stored).
pub(super) fn code(state: FileState) -> u8 {
    match state {
        FileState::Transferring => 0,
        FileState::Committing => 1,
        FileState::Done => 2,
        FileState::Skipped => 3,
        FileState::Failed => 4,
    }
}

/// The states of objects still under way: what the scheduler claims work from.
pub const UNDER_WAY: [FileState; 2] = [FileState::Transferring, FileState::Committing];

/// Which failed objects get another chance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reopen {
    /// A job is loaded again: every failed object that was planned, except those whose
    /// source changed (only a new `copy` can plan the new version).
    OnLoad,
    /// The operator asked to retry: every failed object that was planned.
    Retry,
}

impl Reopen {
    /// True when `file` gets another chance under this rule.
    pub fn admits(self, file: &FileRecord) -> bool {
        let planned = file.state == FileState::Failed && file.chunk_count > 0;
        let changed = file
            .error
            .as_ref()
            .is_some_and(|e| e.class == crate::store::ErrorClass::SourceChanged);
        match self {
            Reopen::OnLoad => planned && !changed,
            Reopen::Retry => planned,
        }
    }
}

/// Gives a failed object another chance: failed and claimed chunks go back to pending (their
/// attempt counts and histories stay), completed ones are kept.
pub fn reopen(file: &mut FileRecord, chunks: &mut [ChunkRecord]) {
    use super::ChunkState;
    for chunk in chunks.iter_mut() {
        if matches!(chunk.state, ChunkState::Failed | ChunkState::InProgress) {
            chunk.state = ChunkState::Pending;
        }
    }
    file.state = FileState::Transferring;
    file.error = None;
    file.commit_attempts = 0;
}

/// The indexes of `job`'s objects in `state` after `after`, ascending, at most `limit`.
pub(super) fn indexes_in<T: ReadableTable<(u64, u8, u32), ()>>(
    table: &T,
    job: JobId,
    state: FileState,
    after: Option<u32>,
    limit: usize,
) -> Result<Vec<u32>, redb::StorageError> {
    let state = code(state);
    let start = match after {
        Some(u32::MAX) => return Ok(Vec::new()),
        Some(after) => after + 1,
        None => 0,
    };
    let mut out = Vec::new();
    for entry in table.range((job, state, start)..=(job, state, u32::MAX))? {
        if out.len() >= limit {
            break;
        }
        out.push(entry?.0.value().2);
    }
    Ok(out)
}

/// The first `limit` indexes after `after` over several states, ascending (each state's
/// range read, then merged).
pub(super) fn indexes_over<T: ReadableTable<(u64, u8, u32), ()>>(
    table: &T,
    job: JobId,
    states: &[FileState],
    after: Option<u32>,
    limit: usize,
) -> Result<Vec<u32>, redb::StorageError> {
    let mut all = Vec::new();
    for state in states {
        all.extend(indexes_in(table, job, *state, after, limit)?);
    }
    all.sort_unstable();
    all.truncate(limit);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ErrorRecord, FileRecord};
    use crate::store::ErrorClass;

    fn failed(chunks: u32, class: ErrorClass) -> FileRecord {
        FileRecord {
            state: FileState::Failed,
            commit_attempts: 2,
            error: Some(ErrorRecord {
                class,
                status: None,
                message: "x".into(),
                at_ms: 0,
            }),
            ..FileRecord::new("k", "k", 10, "e", 10, chunks)
        }
    }

    #[test]
    fn a_load_reopens_planned_failures_but_not_a_changed_source_and_a_retry_reopens_both() {
        let transient = failed(1, ErrorClass::Transient);
        let changed = failed(1, ErrorClass::SourceChanged);
        let unplanned = failed(0, ErrorClass::Invalid);
        assert!(Reopen::OnLoad.admits(&transient));
        assert!(!Reopen::OnLoad.admits(&changed));
        assert!(!Reopen::OnLoad.admits(&unplanned));
        assert!(Reopen::Retry.admits(&transient));
        assert!(Reopen::Retry.admits(&changed));
        assert!(!Reopen::Retry.admits(&unplanned));
        let mut done = failed(1, ErrorClass::Transient);
        done.state = FileState::Done;
        assert!(!Reopen::Retry.admits(&done));
    }

    #[test]
    fn state_codes_are_distinct() {
        let all = [
            FileState::Transferring,
            FileState::Committing,
            FileState::Done,
            FileState::Skipped,
            FileState::Failed,
        ];
        let codes: std::collections::BTreeSet<u8> = all.iter().map(|s| code(*s)).collect();
        assert_eq!(codes.len(), all.len());
    }
}
