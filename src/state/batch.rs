//! How a batch of writes changes the state: the records, the index of objects by state and by
//! key, and each job's counters. The one rule every backend applies, each over its own write
//! transaction ([`Txn`]), so the embedded file and a shared database keep the same invariants:
//! the counters and the index always equal a fresh count of the records.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{
    ChunkRecord, FileRecord, FileState, JobId, JobProgress, JobRecord, StateError, Write, counts,
    index, route_key,
};

/// In the settings: the highest job ID ever removed, so no ID is given twice.
pub(super) const LAST_JOB_ID: &str = "last_removed_job_id";

/// One write transaction of a backend, as the batch sees it: reads see the batch's own writes.
pub(super) trait Txn {
    /// Object `index` of `job`.
    fn file(&mut self, job: JobId, index: u32) -> Result<Option<FileRecord>, StateError>;
    /// Its chunk records, in order.
    fn chunks(&mut self, job: JobId, index: u32) -> Result<Vec<ChunkRecord>, StateError>;
    /// Bytes of the completed chunks of object `index` of `job` (`file`), by chunk index
    /// ([`counts::chunk_bytes`]).
    fn completed_bytes(
        &mut self,
        job: JobId,
        index: u32,
        file: &FileRecord,
    ) -> Result<u64, StateError>;
    /// Records object `index` of `job`.
    fn put_file(&mut self, job: JobId, index: u32, file: &FileRecord) -> Result<(), StateError>;
    /// Removes object `index` of `job` and its chunks.
    fn remove_file(&mut self, job: JobId, index: u32) -> Result<(), StateError>;
    /// Enters object `index` under `state` in the index by state (`present`), or takes it out.
    fn index_state(
        &mut self,
        job: JobId,
        state: FileState,
        index: u32,
        present: bool,
    ) -> Result<(), StateError>;
    /// The object that holds source `key` in the index by key.
    fn key_holder(&mut self, job: JobId, key: &str) -> Result<Option<u32>, StateError>;
    /// Gives source `key` to object `index` (`Some`) in the index by key, or takes it out.
    fn set_key(&mut self, job: JobId, key: &str, index: Option<u32>) -> Result<(), StateError>;
    /// Records a chunk; the record it replaced.
    fn put_chunk(
        &mut self,
        job: JobId,
        file: u32,
        index: u32,
        chunk: &ChunkRecord,
    ) -> Result<Option<ChunkRecord>, StateError>;
    /// Every failed object of `job`, ascending.
    fn failed(&mut self, job: JobId) -> Result<Vec<u32>, StateError>;
    /// Job `id`.
    fn job(&mut self, id: JobId) -> Result<Option<JobRecord>, StateError>;
    /// Records a job (`Some`), or removes job `id` with its counters.
    fn set_job(&mut self, id: JobId, job: Option<&JobRecord>) -> Result<(), StateError>;
    /// The job that holds a route.
    fn route(&mut self, route: &str) -> Result<Option<JobId>, StateError>;
    /// Gives a route to a job (`Some`), or takes it out.
    fn set_route(&mut self, route: &str, job: Option<JobId>) -> Result<(), StateError>;
    /// A setting.
    fn meta(&mut self, name: &str) -> Result<Option<String>, StateError>;
    /// Records a setting.
    fn set_meta(&mut self, name: &str, value: &str) -> Result<(), StateError>;
    /// Records where a job's listing stands (`None`: it is complete).
    fn set_listing(
        &mut self,
        job: JobId,
        listing: Option<&index::Listing>,
    ) -> Result<(), StateError>;
    /// Gives back what this worker claimed of a job (a shared state; nothing for a file).
    fn let_go(&mut self, _job: JobId) -> Result<(), StateError> {
        Ok(())
    }
    /// Lends pending chunks of an object to the other workers (a shared state; nothing for
    /// a file).
    fn lend(&mut self, _job: JobId, _file: u32, _chunks: &[u32]) -> Result<(), StateError> {
        Ok(())
    }
    /// Records a chunk this worker borrowed, if it is still lent to it; the record it
    /// replaced (`None`: nothing was written).
    fn put_borrowed(
        &mut self,
        _job: JobId,
        _file: u32,
        _index: u32,
        _chunk: &ChunkRecord,
    ) -> Result<Option<ChunkRecord>, StateError> {
        Ok(None)
    }
    /// A job's counters as recorded.
    fn counts(&mut self, job: JobId) -> Result<JobProgress, StateError>;
    /// Records a job's counters.
    fn set_counts(&mut self, job: JobId, progress: &JobProgress) -> Result<(), StateError>;
}

/// What object `index` of `job` adds to its job's counters, its chunks read from `t`.
pub(super) fn share(
    t: &mut impl Txn,
    job: JobId,
    index: u32,
    file: &FileRecord,
) -> Result<JobProgress, StateError> {
    counts::try_share(file, || t.completed_bytes(job, index, file))
}

/// The writes that give failed object `index` of `job` another chance, if `rule` admits it
/// (none otherwise).
fn reopened(
    t: &mut impl Txn,
    job: JobId,
    index: u32,
    rule: index::Reopen,
) -> Result<Vec<Write>, StateError> {
    let Some(mut file) = t.file(job, index)? else {
        return Ok(Vec::new());
    };
    if !rule.admits(&file) {
        return Ok(Vec::new());
    }
    let mut records = t.chunks(job, index)?;
    index::reopen(&mut file, &mut records);
    let mut writes = vec![Write::File(job, index, file)];
    writes.extend(
        records
            .into_iter()
            .enumerate()
            .map(|(i, c)| Write::Chunk(job, index, i as u32, c)),
    );
    Ok(writes)
}

/// The record of object `file` of `job` a chunk write counts against: only while it is there
/// and under way (otherwise the object's own write counts its chunks). Read once per batch.
fn counted_owner(
    t: &mut impl Txn,
    owners: &mut HashMap<(JobId, u32), Option<FileRecord>>,
    job: JobId,
    file: u32,
) -> Result<Option<FileRecord>, StateError> {
    let owner = match owners.get(&(job, file)) {
        Some(known) => known.clone(),
        None => {
            let found = t.file(job, file)?;
            owners.insert((job, file), found.clone());
            found
        }
    };
    Ok(owner.filter(counts::chunks_count))
}

/// What replacing chunk `index`'s record `old` by `chunk` adds to its job's bytes done.
fn count_chunk(
    deltas: &mut BTreeMap<JobId, counts::Delta>,
    job: JobId,
    owner: Option<FileRecord>,
    index: u32,
    old: Option<&ChunkRecord>,
    chunk: &ChunkRecord,
) {
    if let Some(owner) = owner {
        let before = old.map_or(0, |old| counts::chunk_bytes(&owner, index, old));
        let after = counts::chunk_bytes(&owner, index, chunk);
        deltas
            .entry(job)
            .or_default()
            .add_bytes_done(i128::from(after) - i128::from(before));
    }
}

/// Applies `writes` in order within `t` (the caller commits).
pub(super) fn apply(t: &mut impl Txn, writes: &[Write]) -> Result<(), StateError> {
    let mut deltas: BTreeMap<JobId, counts::Delta> = BTreeMap::new();
    // Object records this batch has read or written, for its chunk writes.
    let mut owners: HashMap<(JobId, u32), Option<FileRecord>> = HashMap::new();
    // Writes a reopen expands into, applied before the batch goes on (last first).
    let mut expanded: Vec<Write> = Vec::new();
    // Failed objects still to reopen: (job, rule, indexes), expanded one at a time.
    let mut reopening: VecDeque<(JobId, index::Reopen, VecDeque<u32>)> = VecDeque::new();
    let mut given = writes.iter();
    loop {
        if expanded.is_empty()
            && let Some((job, rule, indexes)) = reopening.front_mut()
        {
            let (job, rule) = (*job, *rule);
            match indexes.pop_front() {
                Some(file_index) => {
                    expanded = reopened(t, job, file_index, rule)?;
                    expanded.reverse();
                }
                None => {
                    reopening.pop_front();
                }
            }
            continue;
        }
        let owned;
        let write = match expanded.pop() {
            Some(write) => {
                owned = write;
                &owned
            }
            None => match given.next() {
                Some(write) => write,
                None => break,
            },
        };
        match write {
            Write::Listing(job, listing) => t.set_listing(*job, listing.as_ref())?,
            Write::LetGo(job) => t.let_go(*job)?,
            Write::ReopenFailed { job, keep, rule } => {
                let mut failed = t.failed(*job)?;
                let mut keep = keep.clone();
                keep.sort_unstable();
                failed.retain(|i| keep.binary_search(i).is_err());
                // Reopened one object at a time, ahead of the rest of the batch.
                reopening.push_back((*job, *rule, failed.into()));
            }
            Write::Setting(name, value) => t.set_meta(&format!("setting.{name}"), value)?,
            Write::Job(job) => {
                t.set_job(job.id, Some(job))?;
                t.set_route(&route_key(&job.source, &job.destination), Some(job.id))?;
            }
            Write::File(job, index, file) => {
                let before = t.file(*job, *index)?;
                let same_chunks = before.as_ref().is_some_and(|b| {
                    counts::chunks_count(b)
                        && counts::chunks_count(file)
                        && (b.size, b.chunk_size) == (file.size, file.chunk_size)
                });
                let delta = deltas.entry(*job).or_default();
                if let (true, Some(before)) = (same_chunks, &before) {
                    // Under way before and after, over the same chunks: their bytes cancel
                    // out, and are not read (a big object has thousands).
                    delta.add(&counts::share(before, || 0), -1);
                    delta.add(&counts::share(file, || 0), 1);
                } else {
                    if let Some(before) = &before {
                        delta.add(&share(t, *job, *index, before)?, -1);
                    }
                    delta.add(&share(t, *job, *index, file)?, 1);
                }
                if let Some(before) = &before {
                    t.index_state(*job, before.state, *index, false)?;
                    if before.key != file.key && t.key_holder(*job, &before.key)? == Some(*index) {
                        t.set_key(*job, &before.key, None)?;
                    }
                }
                t.set_key(*job, &file.key, Some(*index))?;
                t.index_state(*job, file.state, *index, true)?;
                t.put_file(*job, *index, file)?;
                owners.insert((*job, *index), Some(file.clone()));
            }
            Write::Lend(job, file, chunks) => t.lend(*job, *file, chunks)?,
            Write::Chunk(job, file, index, chunk) => {
                let owner = counted_owner(t, &mut owners, *job, *file)?;
                let old = t.put_chunk(*job, *file, *index, chunk)?;
                count_chunk(&mut deltas, *job, owner, *index, old.as_ref(), chunk);
            }
            Write::Borrowed(job, file, index, chunk) => {
                let owner = counted_owner(t, &mut owners, *job, *file)?;
                // Taken back meanwhile (by its owner, or given back as this worker's lease
                // ran out): what it did is not this worker's to record.
                if let Some(old) = t.put_borrowed(*job, *file, *index, chunk)? {
                    count_chunk(&mut deltas, *job, owner, *index, Some(&old), chunk);
                }
            }
            Write::RemoveUnplannedJob(id) => {
                if let Some(record) = t.job(*id)?.filter(|r| !r.planned) {
                    // Its ID is never given again (a client may still hold it).
                    let highest = t
                        .meta(LAST_JOB_ID)?
                        .and_then(|v| v.parse::<JobId>().ok())
                        .unwrap_or(0)
                        .max(*id);
                    t.set_meta(LAST_JOB_ID, &highest.to_string())?;
                    t.set_job(*id, None)?;
                    // Recorded as starting with the job; nothing is listed now.
                    t.set_listing(*id, None)?;
                    deltas.remove(id);
                    let route = route_key(&record.source, &record.destination);
                    if t.route(&route)? == Some(*id) {
                        t.set_route(&route, None)?;
                    }
                }
            }
            Write::RemoveFile(job, index) => {
                if let Some(before) = t.file(*job, *index)? {
                    let share = share(t, *job, *index, &before)?;
                    deltas.entry(*job).or_default().add(&share, -1);
                    t.index_state(*job, before.state, *index, false)?;
                    if t.key_holder(*job, &before.key)? == Some(*index) {
                        t.set_key(*job, &before.key, None)?;
                    }
                }
                owners.insert((*job, *index), None);
                t.remove_file(*job, *index)?;
            }
        }
    }
    for (job, delta) in &deltas {
        let before = t.counts(*job)?;
        t.set_counts(*job, &delta.applied_to(before))?;
    }
    Ok(())
}
