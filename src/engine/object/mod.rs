//! The life of one object as an explicit state machine: its [`Phase`], its chunk records and
//! ready queue, and the pure transitions that move it on. Every transition (a claim, a chunk's,
//! begin's or commit's outcome, a timer) returns a [`Step`] — the records to write, the events
//! to announce once they are durable, the timers to set, the uploads to give up — which the
//! scheduler only applies. Nothing here touches the network, the clock or the state file, so
//! every rule that decides an object's fate is reachable from unit and property tests.

mod lending;
mod outcomes;

pub(crate) use lending::borrowed_back;
pub(crate) use outcomes::Timing;
#[cfg(test)]
mod properties;

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Event;
use super::retry::RetryPolicy;
use crate::state::{
    ChunkRecord, ChunkState, ErrorRecord, FileRecord, FileState, JobId, Verification, Write,
};
use crate::store::rules::IfExists;

/// Tells apart successive in-memory lives of an object (loaded, reopened, started over), so a
/// timer meant for an earlier one is recognised and dropped.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Where an object stands. The durable [`FileState`] is coarser; this is rebuilt from the
/// records on load ([`ObjectRun::load`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The source's metadata is read and the destination opens its upload session, before
    /// any chunk of a multi-chunk object moves.
    Beginning(Turn),
    /// Chunks move: those in the ready queue may go.
    Transferring,
    /// Nothing new starts; once the chunks in flight are back, `Then` happens.
    Draining(Then),
    /// The destination is asked how the upload stands (verify, and commit if every block is
    /// there) without spending a commit attempt: a chunk failed twice (`asked_by`) or found
    /// the session gone (`None`). Its answer puts back what the store lacks.
    Checking { asked_by: Option<u32>, turn: Turn },
    /// Every chunk is acknowledged: verify the staged blocks, commit, read the object back.
    Committing(Turn),
    /// Done, skipped or failed: [`FileRecord::state`] says which.
    Ended,
}

/// Where a begin, check or commit stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// May go now.
    Due,
    /// A retry waits for its timer.
    Waiting,
    /// In flight.
    Running,
}

/// What a draining object does once nothing of it is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Then {
    /// Ask the destination how the upload stands.
    Check(Option<u32>),
    /// Give the session up and begin the upload again.
    StartOver,
}

/// A unit of work an object asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Work {
    Begin,
    Chunk(u32),
    /// Verify and commit — a commit, or a check when the phase is [`Phase::Checking`].
    Commit,
}

/// What a timer wakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Wake {
    Chunk(u32),
    Commit,
    Begin,
}

/// The rules a job's objects live by.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    pub retry: RetryPolicy,
    pub if_exists: IfExists,
}

/// What a transition asks the scheduler to do.
#[derive(Debug, Default)]
pub(crate) struct Step {
    /// Records to make durable, in order.
    pub writes: Vec<Write>,
    /// Announced once the writes are durable.
    pub events: Vec<Event>,
    /// Timers to set (delay, what they wake), for this object's current generation.
    pub timers: Vec<(Duration, Wake)>,
    /// Uploads to give up at the destination, best effort: (destination key, session).
    pub abort: Vec<(String, String)>,
    /// A fatal error (credentials, permissions, full disk) stops the whole job.
    pub stop_job: Option<String>,
}

/// One object of a loaded job.
pub(crate) struct ObjectRun {
    pub(crate) job: JobId,
    pub(crate) index: u32,
    pub(crate) record: FileRecord,
    pub(crate) chunks: Vec<ChunkRecord>,
    pub(crate) phase: Phase,
    /// Attempts per chunk in this life; the retry budget. (`ChunkRecord::attempts` counts
    /// every attempt ever, for the operator.)
    pub(crate) round: Vec<u32>,
    /// Chunks that may go, in order.
    pub(crate) ready: VecDeque<u32>,
    /// Chunks whose retry waits for a timer.
    pub(crate) waiting: Vec<u32>,
    pub(crate) completed: u32,
    pub(crate) in_flight: u32,
    pub(crate) generation: u64,
    /// Attempts at beginning, and at checks, in this life; their retry budgets.
    pub(crate) begin_round: u32,
    pub(crate) check_round: u32,
    /// The destination takes this object's chunks one after the other, in order.
    pub(crate) sequential: bool,
    /// Times the upload started over in this run.
    pub(crate) restarts: u32,
    /// A check in this life found the session alive (it listed what it holds).
    pub(crate) session_alive: bool,
    /// A chunk of this life, out of retries in a live session, was given a fresh budget (once).
    pub(crate) second_wind: bool,
    /// The operator asked to retry this failed object while chunks of it were in flight: it
    /// is reopened once they are back.
    pub(crate) reopen_when_back: bool,
    /// Chunks lent to the other workers of a shared state: out of the ready queue until they
    /// come back, moved or given back ([`ObjectRun::on_lent`]).
    pub(crate) lent: BTreeSet<u32>,
    /// Chunks were lent in this life (lent once: what comes back stays).
    pub(crate) lent_before: bool,
    /// The lending is not recorded yet: how lent chunks stand cannot be read.
    pub(crate) lend_pending: bool,
}

impl ObjectRun {
    /// The object as its records leave it: an active object goes on where it stood (a chunk
    /// claimed when the process died is sent again), a finished one stays finished.
    pub(crate) fn load(
        job: JobId,
        index: u32,
        record: FileRecord,
        mut chunks: Vec<ChunkRecord>,
        sequential: bool,
    ) -> Self {
        let active = matches!(
            record.state,
            FileState::Transferring | FileState::Committing
        );
        let mut ready = VecDeque::new();
        let mut completed = 0;
        for (i, chunk) in chunks.iter_mut().enumerate() {
            // Nothing is in flight in a life that just began.
            if chunk.state == ChunkState::InProgress {
                chunk.state = ChunkState::Pending;
            }
            match chunk.state {
                ChunkState::Completed => completed += 1,
                ChunkState::Pending if active => ready.push_back(i as u32),
                _ => {}
            }
        }
        let phase = if !active {
            Phase::Ended
        } else if !record.is_single_put() && record.meta.is_none() {
            Phase::Beginning(Turn::Due)
        } else {
            Phase::Transferring
        };
        let mut object = Self {
            job,
            index,
            round: vec![0; chunks.len()],
            record,
            chunks,
            phase,
            ready,
            waiting: Vec::new(),
            completed,
            in_flight: 0,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            begin_round: 0,
            check_round: 0,
            sequential,
            restarts: 0,
            session_alive: false,
            second_wind: false,
            reopen_when_back: false,
            lent: BTreeSet::new(),
            lent_before: false,
            lend_pending: false,
        };
        // Nothing is written on load: an object whose chunks are all acknowledged (the last
        // one by a worker it lent it to, say) is recorded committing by its commit's claim.
        let recorded = object.record.state;
        object.settle(&mut Step::default());
        object.record.state = recorded;
        object
    }

    pub(crate) fn active(&self) -> bool {
        self.phase != Phase::Ended
    }

    /// The work this object may start now, if any.
    pub(crate) fn next_work(&self) -> Option<Work> {
        match self.phase {
            Phase::Beginning(Turn::Due) => Some(Work::Begin),
            Phase::Transferring => self.next_chunk().map(Work::Chunk),
            Phase::Checking {
                turn: Turn::Due, ..
            }
            | Phase::Committing(Turn::Due) => (self.in_flight == 0).then_some(Work::Commit),
            _ => None,
        }
    }

    /// True while a begin, check or commit is due: it goes ahead of other objects' chunks.
    pub(crate) fn urgent(&self) -> bool {
        matches!(
            self.phase,
            Phase::Beginning(Turn::Due)
                | Phase::Checking {
                    turn: Turn::Due,
                    ..
                }
                | Phase::Committing(Turn::Due)
        )
    }

    /// The chunk to send next, if one may go now: the first ready one; for a destination that
    /// takes chunks in order, the lowest ready one, and only once every chunk before it is
    /// acknowledged and nothing else of the object is in flight.
    fn next_chunk(&self) -> Option<u32> {
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

    /// Starts `work` (which [`ObjectRun::next_work`] offered): the claim is recorded before the
    /// work goes, so a crash leaves it visible.
    pub(crate) fn claim(&mut self, work: Work, now_ms: i64) -> Step {
        let mut step = Step::default();
        self.in_flight += 1;
        match work {
            Work::Chunk(index) => {
                if let Some(at) = self.ready.iter().position(|c| *c == index) {
                    self.ready.remove(at);
                }
                let chunk = &mut self.chunks[index as usize];
                chunk.state = ChunkState::InProgress;
                chunk.attempts += 1;
                let attempt = chunk.attempts;
                self.round[index as usize] += 1;
                step.writes.push(self.chunk_write(index));
                step.events.push(Event::ChunkStarted {
                    job: self.job,
                    key: self.record.key.clone(),
                    file: self.index,
                    chunk: index,
                    attempt,
                    bytes: self.chunk_len(index),
                });
            }
            Work::Begin => {
                self.phase = Phase::Beginning(Turn::Running);
                self.begin_round += 1;
                self.record.begun_ms = Some(now_ms);
                step.writes.push(self.file_write());
            }
            Work::Commit => {
                self.phase = match self.phase {
                    Phase::Checking { asked_by, .. } => {
                        self.check_round += 1;
                        Phase::Checking {
                            asked_by,
                            turn: Turn::Running,
                        }
                    }
                    _ => {
                        self.record.state = FileState::Committing;
                        self.record.commit_attempts += 1;
                        Phase::Committing(Turn::Running)
                    }
                };
                step.writes.push(self.file_write());
            }
        }
        step
    }

    /// The one way an object fails: recorded with its reason and announced; nothing of it
    /// starts again in this run (work in flight still reports back).
    pub(crate) fn fail(&mut self, error: ErrorRecord, step: &mut Step) {
        self.record.state = FileState::Failed;
        self.record.error = Some(error);
        self.end(step);
        step.events.push(Event::ObjectFailed {
            job: self.job,
            file: self.index,
            key: self.record.key.clone(),
            error: self.record.error.clone().expect("just set"),
        });
    }

    /// Done: committed and read back, verified as said.
    fn done(&mut self, verified: Option<Verification>, step: &mut Step) {
        self.record.state = FileState::Done;
        self.record.error = None;
        self.record.verified = verified;
        self.end(step);
        step.events.push(Event::ObjectCommitted {
            job: self.job,
            file: self.index,
            key: self.record.key.clone(),
            dest_key: self.record.dest_key.clone(),
            bytes: self.record.size,
        });
    }

    /// Left as the destination holds it (`--if-exists skip`), with the reason.
    fn skip(&mut self, note: String, step: &mut Step) {
        tracing::info!(key = %self.record.key, dest = %self.record.dest_key, "{note}");
        self.record.state = FileState::Skipped;
        self.record.note = Some(note);
        self.end(step);
    }

    fn end(&mut self, step: &mut Step) {
        self.phase = Phase::Ended;
        self.ready.clear();
        self.waiting.clear();
        step.writes.push(self.file_write());
    }

    /// Gives up the recorded upload session (a changed source or an object left as the
    /// destination holds it will never commit it; its parts are billed otherwise).
    fn give_up_session(&mut self, step: &mut Step) {
        if let Some(session) = self.record.session.take() {
            self.record.meta = None;
            self.record.version_id = None;
            step.abort.push((self.record.dest_key.clone(), session));
        }
    }

    /// Moves on from a phase whose condition is met: a drained object checks or starts over;
    /// a multi-chunk object with every chunk acknowledged commits. Every transition ends here.
    fn settle(&mut self, step: &mut Step) {
        match self.phase {
            Phase::Draining(then) if self.in_flight == 0 => match then {
                Then::Check(asked_by) => {
                    self.phase = Phase::Checking {
                        asked_by,
                        turn: Turn::Due,
                    }
                }
                Then::StartOver => self.start_over(step),
            },
            Phase::Transferring
                if !self.record.is_single_put() && self.completed == self.record.chunk_count =>
            {
                self.phase = Phase::Committing(Turn::Due);
                if self.record.state != FileState::Committing {
                    self.record.state = FileState::Committing;
                    step.writes.push(self.file_write());
                }
            }
            _ => {}
        }
    }

    /// The upload starts over with a new session, once nothing of it is in flight: every
    /// chunk is sent again (their attempt histories stay), and the session it leaves is given
    /// up at the store — best effort: a session the store only seemed to lose would keep its
    /// parts (and their bill) otherwise.
    fn start_over(&mut self, step: &mut Step) {
        tracing::info!(key = %self.record.key, "starting the upload over");
        // Timers set in this step belong to the life that ends here.
        step.timers.clear();
        if let Some(session) = self.record.session.take() {
            step.abort.push((self.record.dest_key.clone(), session));
        }
        let mut record = self.record.clone();
        record.meta = None;
        record.version_id = None;
        record.commit_attempts = 0;
        record.state = FileState::Transferring;
        let mut chunks = std::mem::take(&mut self.chunks);
        for chunk in &mut chunks {
            chunk.state = ChunkState::Pending;
        }
        let restarts = self.restarts + 1;
        *self = ObjectRun::load(self.job, self.index, record, chunks, self.sequential);
        self.restarts = restarts;
        step.writes.extend(self.all_writes());
    }

    /// Gives a failed object another chance (failed and claimed chunks back to pending,
    /// completed ones kept); returns the writes that record it.
    pub(crate) fn reopen(&mut self) -> Vec<Write> {
        let mut record = self.record.clone();
        let mut chunks = std::mem::take(&mut self.chunks);
        crate::state::index::reopen(&mut record, &mut chunks);
        *self = ObjectRun::load(self.job, self.index, record, chunks, self.sequential);
        self.all_writes()
    }

    fn all_writes(&self) -> Vec<Write> {
        let mut writes = vec![self.file_write()];
        writes.extend((0..self.chunks.len() as u32).map(|i| self.chunk_write(i)));
        writes
    }

    pub(crate) fn file_write(&self) -> Write {
        Write::File(self.job, self.index, self.record.clone())
    }

    fn chunk_write(&self, index: u32) -> Write {
        Write::Chunk(
            self.job,
            self.index,
            index,
            self.chunks[index as usize].clone(),
        )
    }

    pub(crate) fn chunk_len(&self, chunk: u32) -> u64 {
        let range = self.record.chunk_range(chunk);
        range.end - range.start
    }
}
