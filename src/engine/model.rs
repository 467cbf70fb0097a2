//! The scheduler's in-memory model of the loaded jobs: each object with its chunk records, the
//! queue of chunks ready to go, and the counters dispatch needs. Owned by the scheduler task
//! alone; mirrored to the state database through the writer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::plan;
use super::snapshot::JobView;
use crate::state::{
    ChunkRecord, ChunkState, FileRecord, FileState, JobId, JobProgress, JobRecord, JobSnapshot,
    Write, progress_of,
};
use crate::store::{ObjectSink, ObjectSource};

/// Tells apart successive in-memory lives of an object (loaded, reopened), so a timer or a
/// result meant for an earlier one is recognised and dropped.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Where the beginning of an object's upload stands: the source's metadata is read and the
/// destination opens its session before any chunk of a multi-chunk object moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Begin {
    /// Done, or not needed (an object of one chunk).
    Done,
    /// To do.
    Needed,
    /// A retry waits for its time.
    Waiting,
    /// In flight.
    Running,
}

/// One object of a loaded job.
pub(super) struct FileRun {
    pub(super) index: u32,
    pub(super) record: FileRecord,
    pub(super) chunks: Vec<ChunkRecord>,
    /// Attempts per chunk in this run; the retry budget. (`ChunkRecord::attempts` counts every
    /// attempt ever, for the operator.)
    pub(super) round: Vec<u32>,
    pub(super) ready: VecDeque<u32>,
    pub(super) completed: u32,
    pub(super) in_flight: u32,
    pub(super) commit_ready: bool,
    pub(super) queued: bool,
    pub(super) generation: u64,
    pub(super) begin: Begin,
    /// Attempts at beginning in this run.
    pub(super) begin_round: u32,
    /// The destination takes this object's chunks one after the other, in order.
    pub(super) sequential: bool,
    /// The upload session was lost: nothing new starts, and once nothing is in flight the
    /// upload starts over.
    pub(super) restart: bool,
    /// Times the upload started over in this run.
    pub(super) restarts: u32,
    /// A chunk found the session gone: once nothing is in flight, the destination is asked
    /// whether the object is there already (then it is done) before the upload starts over.
    pub(super) check_session: bool,
    /// The next (or running) verify-then-commit is a check this chunk asked for by failing
    /// twice (not every chunk is acknowledged): it spends no commit attempt, nothing else of
    /// the object goes while it runs, and its answer puts back what is missing — and this
    /// chunk in any case.
    pub(super) check: Option<u32>,
    /// Attempts at such checks in this run; their retry budget.
    pub(super) check_round: u32,
    /// A check in this life found the session alive (it listed what it holds).
    pub(super) session_alive: bool,
    /// A chunk of this life, out of retries in a live session, was given a fresh budget (once).
    pub(super) second_wind: bool,
}

impl FileRun {
    pub(super) fn new(
        index: u32,
        record: FileRecord,
        mut chunks: Vec<ChunkRecord>,
        sequential: bool,
    ) -> Self {
        let mut ready = VecDeque::new();
        let mut completed = 0;
        let active = matches!(
            record.state,
            FileState::Transferring | FileState::Committing
        );
        for (i, chunk) in chunks.iter_mut().enumerate() {
            match chunk.state {
                ChunkState::Completed => completed += 1,
                ChunkState::Pending | ChunkState::InProgress if active => {
                    chunk.state = ChunkState::Pending;
                    ready.push_back(i as u32);
                }
                _ => {}
            }
        }
        let commit_ready = active
            && !record.is_single_put()
            && completed == record.chunk_count
            && ready.is_empty();
        let begin = if active && !record.is_single_put() && record.meta.is_none() {
            Begin::Needed
        } else {
            Begin::Done
        };
        Self {
            index,
            record,
            round: vec![0; chunks.len()],
            chunks,
            ready,
            completed,
            in_flight: 0,
            commit_ready,
            queued: false,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            begin,
            begin_round: 0,
            sequential,
            restart: false,
            restarts: 0,
            check_session: false,
            check: None,
            check_round: 0,
            session_alive: false,
            second_wind: false,
        }
    }

    pub(super) fn active(&self) -> bool {
        matches!(
            self.record.state,
            FileState::Transferring | FileState::Committing
        )
    }

    pub(super) fn has_work(&self) -> bool {
        self.active()
            && !self.restart
            && match self.begin {
                Begin::Needed => true,
                Begin::Done => !self.ready.is_empty() || self.commit_ready,
                Begin::Waiting | Begin::Running => false,
            }
    }

    /// The chunk to send next, if one may go now: the first ready one; for a destination that
    /// takes chunks in order, the lowest ready one, and only once every chunk before it is
    /// acknowledged and nothing else of the object is in flight.
    pub(super) fn next_chunk(&self) -> Option<u32> {
        if !self.sequential {
            return self.ready.front().copied();
        }
        let lowest = self.ready.iter().copied().min()?;
        let in_order = self.in_flight == 0
            && self.chunks[..lowest as usize]
                .iter()
                .all(|c| c.state == ChunkState::Completed);
        in_order.then_some(lowest)
    }

    /// Takes `chunk` off the ready queue.
    pub(super) fn take_chunk(&mut self, chunk: u32) {
        if let Some(at) = self.ready.iter().position(|c| *c == chunk) {
            self.ready.remove(at);
        }
    }

    /// The upload starts over with a new session: every chunk is sent again (their attempt
    /// histories stay). Returns the writes that record it.
    pub(super) fn start_over(&mut self, job: JobId) -> Vec<Write> {
        let mut record = self.record.clone();
        record.session = None;
        record.meta = None;
        record.commit_attempts = 0;
        let mut chunks = std::mem::take(&mut self.chunks);
        for chunk in &mut chunks {
            chunk.state = ChunkState::Pending;
        }
        let restarts = self.restarts + 1;
        *self = FileRun::new(self.index, record, chunks, self.sequential);
        self.restarts = restarts;
        self.all_writes(job)
    }

    fn all_writes(&self, job: JobId) -> Vec<Write> {
        let mut writes = vec![Write::File(job, self.index, self.record.clone())];
        writes.extend(
            self.chunks
                .iter()
                .enumerate()
                .map(|(i, c)| Write::Chunk(job, self.index, i as u32, c.clone())),
        );
        writes
    }

    pub(super) fn chunk_len(&self, chunk: u32) -> u64 {
        let range = self.record.chunk_range(chunk);
        range.end - range.start
    }
}

/// A loaded job.
pub(super) struct JobRun {
    pub(super) record: JobRecord,
    pub(super) source: Arc<dyn ObjectSource>,
    pub(super) sink: Arc<dyn ObjectSink>,
    pub(super) files: Vec<FileRun>,
    pub(super) queue: VecDeque<usize>,
    pub(super) in_flight: u32,
}

impl JobRun {
    /// Queues an object that has work, behind the others.
    pub(super) fn enqueue(&mut self, pos: usize) {
        let file = &mut self.files[pos];
        if !file.queued && file.has_work() {
            file.queued = true;
            self.queue.push_back(pos);
        }
    }

    /// Queues an object ahead of the others: its commit, a retry or a re-send finishes an
    /// object that is already under way.
    pub(super) fn enqueue_first(&mut self, pos: usize) {
        let file = &mut self.files[pos];
        if !file.has_work() {
            return;
        }
        if file.queued {
            self.queue.retain(|p| *p != pos);
        }
        file.queued = true;
        self.queue.push_front(pos);
    }

    pub(super) fn progress(&self) -> JobProgress {
        progress_of(self.files.iter().map(|f| (&f.record, f.chunks.as_slice())))
    }

    pub(super) fn all_finished(&self) -> bool {
        self.files.iter().all(|f| f.record.state.is_finished())
    }
}

impl FileRun {
    /// Gives a failed object another chance (failed and claimed chunks back to pending,
    /// completed ones kept); returns the writes that record it.
    pub(super) fn reopen(&mut self, job: JobId) -> Vec<Write> {
        let mut record = self.record.clone();
        let mut chunks = std::mem::take(&mut self.chunks);
        plan::reopen(&mut record, &mut chunks);
        *self = FileRun::new(self.index, record, chunks, self.sequential);
        self.all_writes(job)
    }
}

impl JobRun {
    /// The job's records, for a view that keeps looking at it after it is unloaded.
    pub(super) fn into_snapshot(self) -> JobSnapshot {
        JobSnapshot {
            job: self.record,
            files: self
                .files
                .into_iter()
                .map(|f| (f.index, f.record, f.chunks))
                .collect(),
        }
    }

    /// The job as a view shows it.
    pub(super) fn view(&self) -> JobView {
        JobView {
            id: self.record.id,
            source: self.record.source.clone(),
            destination: self.record.destination.clone(),
            state: self.record.state,
            progress: self.progress(),
            rate: 0.0,
            eta_secs: None,
            error: self.record.error.clone(),
        }
    }
}
