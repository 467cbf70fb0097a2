//! The scheduler's in-memory model of a loaded job: a bounded window of its objects under way
//! (each an [`ObjectRun`](super::object::ObjectRun)), refilled from the state database by a
//! cursor over its index of objects under way, the queue of objects with work, and the count
//! of work in flight. Owned by the scheduler task alone; mirrored to the state database
//! through the writer.
//!
//! The window's one invariant: an object outside it has no write waiting for the state
//! database. Objects enter it from the database and leave it only once their last write is
//! durable, so a read of the database is never older than the scheduler's own view of an
//! object it does not hold.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use super::object::ObjectRun;
use super::snapshot::{Carried, JobView};
use super::transfer::ServerCopy;
use crate::state::{JobProgress, JobRecord, JobState};
use crate::store::{ObjectSink, ObjectSource};

/// Objects a window holds for each unit of concurrency (so the queue never runs dry while a
/// refill is read), and its bounds.
const OBJECTS_PER_SLOT: usize = 4;
const MIN_OBJECTS: usize = 64;
const MAX_OBJECTS: usize = 4096;

/// Chunk records a window holds at most before it stops reading more objects (one object is
/// always read, however many chunks it has).
pub(super) const MAX_CHUNKS: usize = 16_384;

/// How often a drained job whose objects other workers hold is read again.
pub(super) const RESCAN: std::time::Duration = std::time::Duration::from_secs(1);

/// How a drained job ends (nothing of it in the window, nothing under way unclaimed), from its
/// counters: done when no object failed, failed otherwise — unless the state is `shared`
/// and some objects have not ended (other workers hold them): then it goes on (`None`).
pub(super) fn drained_end(progress: &JobProgress, shared: bool) -> Option<JobState> {
    let ended = progress.files_done + progress.files_skipped + progress.files_failed;
    if shared && ended < progress.files_total {
        return None;
    }
    Some(if progress.files_failed == 0 {
        JobState::Done
    } else {
        JobState::Failed
    })
}

/// How many objects a worker of a shared state claims with `free` slots free: none while what
/// it holds has work to start (`has_work`), nothing is left to claim, or its window holds half
/// its chunk budget; else one per free slot.
pub(super) fn claim_size(free: u32, has_work: bool, exhausted: bool, chunks_held: usize) -> usize {
    if has_work || exhausted || chunks_held >= MAX_CHUNKS / 2 {
        return 0;
    }
    (free as usize).min(MAX_OBJECTS)
}

/// A loaded job.
pub(super) struct JobRun {
    pub(super) record: JobRecord,
    pub(super) source: Arc<dyn ObjectSource>,
    pub(super) sink: Arc<dyn ObjectSink>,
    /// How its chunks go store to store, when they do.
    pub(super) server: Option<Arc<ServerCopy>>,
    /// The window: the objects under way held in memory, by index.
    pub(super) files: BTreeMap<u32, ObjectRun>,
    /// Chunk records held by the window.
    pub(super) chunks_held: usize,
    /// Objects with work, in the order they get it; `queued` says who is in it.
    pub(super) queue: VecDeque<u32>,
    pub(super) queued: HashSet<u32>,
    pub(super) in_flight: u32,
    /// The next read of objects under way starts after this index.
    pub(super) cursor: Option<u32>,
    /// No object under way was left beyond the cursor at the last read.
    pub(super) exhausted: bool,
    /// Reopens of failed objects on their way to the state file: the cursor starts over once
    /// each is durable.
    pub(super) rewinding: u32,
    /// The job's counters as last read from the state file.
    pub(super) progress: JobProgress,
    /// Its listing goes on: pages of objects may still arrive.
    pub(super) listing: bool,
    /// With a shared state, when a drained job whose objects other workers still hold is
    /// read again from its start (objects given back by a worker that went are claimed so).
    pub(super) rescan_at: Option<std::time::Instant>,
    /// With a shared state: chunks borrowed from other workers' objects, waiting for a slot.
    pub(super) borrowed: VecDeque<BorrowedChunk>,
    /// When lent chunks may next be looked for (none were found, or the look failed).
    pub(super) borrow_at: Option<tokio::time::Instant>,
    /// With a shared state: this worker stepped aside from the job (its own credentials or
    /// network failed); the other workers go on with it.
    pub(super) quarantine: Option<Quarantine>,
    /// It ended on another worker (recorded there): ended here without writing it again.
    pub(super) followed_end: bool,
}

/// A worker stepped aside from a job for a while ([`crate::engine::health`]).
pub(super) struct Quarantine {
    /// Why, as said to the operator.
    pub(super) reason: String,
    pub(super) stage: Stage,
}

/// Where a quarantine stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Work of the job is still in flight here.
    Draining,
    /// Nothing is in flight: the give-back of its claims is on its way to the state.
    LettingGo,
    /// Its claims are back with the others: it tries the job again at this time.
    Away(tokio::time::Instant),
}

/// A chunk of another worker's object, borrowed to move and give back
/// ([`crate::state::Backend::borrow`]).
pub(super) struct BorrowedChunk {
    pub(super) file: u32,
    pub(super) chunk: u32,
    /// Its object's record, shared by the chunks borrowed of it together.
    pub(super) object: Arc<crate::state::FileRecord>,
    /// Its record as borrowed (in progress, this attempt counted).
    pub(super) record: crate::state::ChunkRecord,
}

impl JobRun {
    pub(super) fn new(
        record: JobRecord,
        source: Arc<dyn ObjectSource>,
        sink: Arc<dyn ObjectSink>,
        progress: JobProgress,
    ) -> Self {
        let server = ServerCopy::for_job(record.options.transfer, source.as_ref(), sink.as_ref());
        Self {
            record,
            source,
            sink,
            server,
            files: BTreeMap::new(),
            chunks_held: 0,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            in_flight: 0,
            cursor: None,
            exhausted: false,
            rewinding: 0,
            progress,
            listing: false,
            rescan_at: None,
            borrowed: VecDeque::new(),
            borrow_at: None,
            quarantine: None,
            followed_end: false,
        }
    }

    /// How many objects to read into the window now (zero when it holds enough, or nothing
    /// more is under way), for a concurrency `limit`.
    pub(super) fn wants(&self, limit: u32) -> usize {
        // Past half the chunk budget, more is read only once nothing held has work.
        if self.exhausted || (self.chunks_held >= MAX_CHUNKS / 2 && !self.queue.is_empty()) {
            return 0;
        }
        let target = (limit as usize * OBJECTS_PER_SLOT).clamp(MIN_OBJECTS, MAX_OBJECTS);
        if self.files.len() >= target / 2 {
            return 0;
        }
        target - self.files.len()
    }

    /// How many objects to claim now with a shared state, `free` slots being free: what is
    /// read is taken from the other workers, so only once nothing held has work to start,
    /// and no more than the free slots — a worker never sits on objects it cannot start while
    /// the others run dry.
    pub(super) fn wants_claim(&self, free: u32) -> usize {
        claim_size(
            free,
            !self.queue.is_empty(),
            self.exhausted,
            self.chunks_held,
        )
    }

    /// Takes an object read from the state file into the window (one already held is left).
    pub(super) fn hold(&mut self, object: ObjectRun) -> bool {
        if self.files.contains_key(&object.index) {
            return false;
        }
        self.chunks_held += object.chunks.len();
        self.files.insert(object.index, object);
        true
    }

    /// Lets an ended object go from the window: its last write in life `generation` is
    /// durable (an object reopened since lives on).
    pub(super) fn release(&mut self, file: u32, generation: u64) {
        let ended = self
            .files
            .get(&file)
            .is_some_and(|o| !o.active() && o.in_flight == 0 && o.generation == generation);
        if ended && let Some(object) = self.files.remove(&file) {
            self.chunks_held = self.chunks_held.saturating_sub(object.chunks.len());
            if self.queued.remove(&file) {
                self.queue.retain(|f| *f != file);
            }
        }
    }

    /// Forgets every object of the window and every chunk borrowed, once nothing of the job is
    /// in flight and a [`crate::state::Write::LetGo`] of it is on its way: they are the
    /// other workers' now, and are read (claimed) afresh from the state later.
    pub(super) fn forget_claims(&mut self) {
        self.files.clear();
        self.chunks_held = 0;
        self.clear_queue();
        self.borrowed.clear();
        self.cursor = None;
        self.exhausted = false;
    }

    /// Starts the cursor over (failed objects were reopened behind it).
    pub(super) fn rewind(&mut self) {
        self.rewinding = self.rewinding.saturating_sub(1);
        self.cursor = None;
        self.exhausted = false;
    }

    /// Reads the job again from its first object, at most once per [`RESCAN`]: it drained,
    /// but other workers still hold some of its objects (given back, they are claimed so).
    pub(super) fn rescan(&mut self, now: std::time::Instant) {
        if self.rescan_at.is_none_or(|at| at <= now) {
            self.cursor = None;
            self.exhausted = false;
            self.rescan_at = Some(now + RESCAN);
        }
    }

    /// True when nothing of the job is left: the window is empty and no object under way is
    /// left in the state file.
    pub(super) fn drained(&self) -> bool {
        self.files.is_empty() && self.exhausted && self.rewinding == 0 && !self.listing
    }

    /// A page of objects was recorded (or the listing ended): read the cursor on.
    pub(super) fn listed(&mut self, more: bool) {
        self.exhausted = false;
        self.listing = more;
    }

    /// Queues an object that has work, behind the others.
    pub(super) fn enqueue(&mut self, file: u32) {
        let has_work = self
            .files
            .get(&file)
            .is_some_and(|o| o.next_work().is_some());
        if has_work && self.queued.insert(file) {
            self.queue.push_back(file);
        }
    }

    /// Queues an object ahead of the others: its commit, a retry or a re-send finishes an
    /// object that is already under way.
    pub(super) fn enqueue_first(&mut self, file: u32) {
        let has_work = self
            .files
            .get(&file)
            .is_some_and(|o| o.next_work().is_some());
        if !has_work {
            return;
        }
        if !self.queued.insert(file) {
            self.queue.retain(|f| *f != file);
        }
        self.queue.push_front(file);
    }

    /// Queues every object that has work and is not queued yet.
    pub(super) fn enqueue_all(&mut self) {
        let files: Vec<u32> = self.files.keys().copied().collect();
        for file in files {
            self.enqueue(file);
        }
    }

    /// Takes the object at the head of the queue off it.
    pub(super) fn dequeue_front(&mut self) {
        if let Some(file) = self.queue.pop_front() {
            self.queued.remove(&file);
        }
    }

    /// Takes every object off the queue (the job stopped).
    pub(super) fn clear_queue(&mut self) {
        self.queue.clear();
        self.queued.clear();
    }

    /// The job as a view shows it.
    pub(super) fn view(&self) -> JobView {
        JobView {
            id: self.record.id,
            source: self.record.source.clone(),
            destination: self.record.destination.clone(),
            state: self.record.state,
            progress: self.progress,
            rate: 0.0,
            eta_secs: None,
            error: self.record.error.clone(),
            in_flight: self.in_flight,
            carried: match &self.server {
                None => Carried::Client,
                // `--transfer server` never falls back: objects it cannot copy fail.
                Some(server) if server.strict() => Carried::Server,
                Some(server) if server.active() && server.some_through_client() => Carried::Mixed,
                Some(server) if server.active() => Carried::Server,
                Some(_) => Carried::FellBack,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(total: u64, done: u64, skipped: u64, failed: u64) -> JobProgress {
        JobProgress {
            files_total: total,
            files_done: done,
            files_skipped: skipped,
            files_failed: failed,
            ..JobProgress::default()
        }
    }

    #[test]
    fn a_drained_job_ends_by_its_counters_unless_others_hold_objects() {
        assert_eq!(
            drained_end(&counts(3, 2, 1, 0), false),
            Some(JobState::Done)
        );
        assert_eq!(
            drained_end(&counts(3, 1, 1, 1), false),
            Some(JobState::Failed)
        );
        assert_eq!(
            drained_end(&counts(3, 1, 1, 1), true),
            Some(JobState::Failed)
        );
        assert_eq!(drained_end(&counts(3, 3, 0, 0), true), Some(JobState::Done));
        // Shared: one object is still under way at another worker.
        assert_eq!(drained_end(&counts(3, 2, 0, 0), true), None);
        assert_eq!(drained_end(&counts(3, 1, 0, 1), true), None);
        // One engine: drained proves nothing is left, whatever the counters.
        assert_eq!(
            drained_end(&counts(3, 2, 0, 0), false),
            Some(JobState::Done)
        );
        assert_eq!(
            drained_end(&JobProgress::default(), true),
            Some(JobState::Done)
        );
    }

    #[test]
    fn a_worker_claims_for_its_free_slots_only_when_it_has_nothing_to_start() {
        assert_eq!(claim_size(8, false, false, 0), 8);
        assert_eq!(claim_size(8, true, false, 0), 0, "work held comes first");
        assert_eq!(claim_size(8, false, true, 0), 0, "nothing left to claim");
        assert_eq!(claim_size(0, false, false, 0), 0, "no free slot");
        assert_eq!(claim_size(8, false, false, MAX_CHUNKS / 2), 0);
        assert_eq!(claim_size(u32::MAX, false, false, 0), MAX_OBJECTS);
    }

    proptest! {
        #[test]
        fn a_claim_never_exceeds_the_free_slots(
            free in 0u32..10_000, has_work: bool, exhausted: bool, held in 0usize..20_000,
        ) {
            let n = claim_size(free, has_work, exhausted, held);
            prop_assert!(n <= free as usize && n <= MAX_OBJECTS);
            prop_assert_eq!(n == 0, has_work || exhausted || free == 0 || held >= MAX_CHUNKS / 2);
        }

        #[test]
        fn a_shared_job_ends_exactly_when_every_object_ended(
            total in 0u64..50, done in 0u64..50, skipped in 0u64..50, failed in 0u64..50,
        ) {
            let progress = counts(total, done, skipped, failed);
            let ended = done + skipped + failed >= total;
            let shared = drained_end(&progress, true);
            prop_assert_eq!(shared.is_some(), ended);
            if let Some(state) = shared {
                prop_assert_eq!(state == JobState::Failed, failed > 0);
                prop_assert_eq!(Some(state), drained_end(&progress, false));
            }
        }
    }
}
