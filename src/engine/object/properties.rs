//! Property tests of the object state machine: random sequences of outcomes — success,
//! transient and throttled errors, lost answers, lost sessions, blocks the store drops,
//! refusals, job-stopping errors, crashes and restarts at any point — played against a model
//! store that takes blocks in any order (Azure, S3) or in order only (GCS), asserting after
//! every step that
//! - the object is never stranded: it has ended, or has work to start, in flight or timed;
//! - it is DONE only once the store holds it committed (commit and read-back succeeded);
//! - a chunk acknowledged in the current session is sent again only when the store reported
//!   it missing (a chunk in flight at a crash was never acknowledged);
//! - what the state file holds is what the object holds (nothing changes unrecorded);
//! - a store that takes blocks in order never gets one out of order;
//! - with lending (a shared state): the owner never sends a chunk a borrower holds, and what
//!   a borrower records counts only while the chunk is still lent to it;
//!
//! and that, once the faults stop, every object ends. With lending, another worker borrows
//! lent chunks, answers them (with the same faults) or dies holding them, and the owner
//! looks at what it lent, taking back some of what nobody borrowed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::engine::transfer::{Begun, ChunkMoved, CommitOutcome};
use crate::state::{ChunkRecord, FileRecord, Verification};
use crate::store::{ErrorClass, ObjectMeta, StoreError, StoreResult};

/// What the next answer does.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    /// 503 / timeout: nothing happened.
    Transient,
    /// 429: nothing happened.
    Throttled,
    /// The store did it, but the answer was lost (a timeout after the fact).
    AnswerLost,
    /// The store forgot the upload session before answering.
    SessionLost,
    /// The store calls the session gone but keeps it (an eventually consistent server).
    Contradicts,
    /// The store dropped the blocks it had staged (any-order stores only).
    BlocksDropped,
    /// A refusal that can never succeed (the object fails).
    Refused,
    /// The source changed since planning (the object fails and its upload is given up).
    SourceChanged,
    /// Another writer's object holds the name (a conditional write is refused).
    Exists,
    /// Credentials revoked: the job stops; the operator resumes it later.
    StopsJob,
    /// The process dies here; what was in flight may or may not have reached the store.
    Crash,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        12 => Just(Fault::None),
        6 => Just(Fault::Transient),
        2 => Just(Fault::Throttled),
        4 => Just(Fault::AnswerLost),
        2 => Just(Fault::SessionLost),
        2 => Just(Fault::Contradicts),
        2 => Just(Fault::BlocksDropped),
        1 => Just(Fault::Refused),
        1 => Just(Fault::SourceChanged),
        1 => Just(Fault::Exists),
        2 => Just(Fault::StopsJob),
        2 => Just(Fault::Crash),
    ]
}

/// The key under which a store without sessions (Azure) stages an object's blocks.
const STAGED: &str = "";

/// The destination as a store sees it.
#[derive(Default)]
struct Store {
    sequential: bool,
    /// The store opens an upload session per object (S3, GCS); without (Azure), blocks are
    /// staged on the object's name.
    sessions_kept: bool,
    chunks: u32,
    /// Open sessions and the blocks each holds (in-order stores: blocks 0..n).
    sessions: BTreeMap<String, BTreeSet<u32>>,
    opened: u32,
    /// The object is visible, complete.
    committed: bool,
}

impl Store {
    fn error(class: ErrorClass) -> StoreError {
        StoreError::new(class, None, format!("{class:?} (model)"))
    }

    /// Applies `fault` before the request reaches the store.
    fn before(&mut self, fault: Fault, session: Option<&str>) -> Option<StoreError> {
        match fault {
            Fault::Transient => Some(Self::error(ErrorClass::Transient)),
            Fault::Throttled => Some(Self::error(ErrorClass::Throttled)),
            Fault::Refused => Some(Self::error(ErrorClass::Invalid)),
            Fault::SourceChanged => Some(Self::error(ErrorClass::SourceChanged)),
            Fault::StopsJob => Some(Self::error(ErrorClass::Permission)),
            Fault::SessionLost => {
                if let Some(s) = session {
                    self.sessions.remove(s);
                }
                None
            }
            Fault::BlocksDropped if !self.sequential => {
                if let Some(blocks) = session.and_then(|s| self.sessions.get_mut(s)) {
                    blocks.clear();
                }
                None
            }
            _ => None,
        }
    }

    /// The answer the client gets: a lost answer turns success into a timeout.
    fn after<T>(fault: Fault, result: StoreResult<T>) -> StoreResult<T> {
        match (fault, result) {
            (Fault::AnswerLost, Ok(_)) => Err(Self::error(ErrorClass::Transient)),
            (_, result) => result,
        }
    }

    fn begin(&mut self, fault: Fault) -> StoreResult<Begun> {
        if let Some(err) = self.before(fault, None) {
            return Err(err);
        }
        if !self.sessions_kept {
            self.sessions.entry(STAGED.into()).or_default();
            return Store::after(
                fault,
                Ok(Begun {
                    meta: ObjectMeta::default(),
                    version_id: None,
                    session: None,
                }),
            );
        }
        self.opened += 1;
        let session = format!("s{}", self.opened);
        self.sessions.insert(session.clone(), BTreeSet::new());
        Store::after(
            fault,
            Ok(Begun {
                meta: ObjectMeta::default(),
                version_id: None,
                session: Some(session),
            }),
        )
    }

    fn put(&mut self, fault: Fault, session: Option<&str>, index: u32) -> StoreResult<ChunkMoved> {
        if let Some(err) = self.before(fault, session) {
            return Err(err);
        }
        let moved = ChunkMoved {
            bytes: 1,
            crc64: Some(u64::from(index)),
            crc_reported: false,
            verified: (self.chunks == 1).then_some(Verification::BlobwayCrc),
        };
        if self.chunks == 1 {
            // A whole-object put: it is its own commit, read back before it answers.
            if let Fault::Exists = fault {
                return Err(Self::error(ErrorClass::Exists));
            }
            self.committed = true;
            return Store::after(fault, Ok(moved));
        }
        let blocks = if self.sessions_kept {
            if let Fault::Contradicts = fault {
                return Err(Self::error(ErrorClass::UploadLost));
            }
            let Some(blocks) = session.and_then(|s| self.sessions.get_mut(s)) else {
                return Err(Self::error(ErrorClass::UploadLost));
            };
            blocks
        } else {
            // Blocks are staged on the object's name, whenever they come.
            self.sessions.entry(STAGED.into()).or_default()
        };
        if self.sequential {
            let held = blocks.len() as u32;
            assert!(index <= held, "block {index} sent before block {held}");
            blocks.insert(index);
            if blocks.len() as u32 == self.chunks {
                // The last block finalizes the object.
                self.sessions.remove(session.unwrap_or(STAGED));
                self.committed = true;
            }
        } else {
            blocks.insert(index);
        }
        Store::after(fault, Ok(moved))
    }

    /// Verify, then commit if every block is staged (`transfer::verify_and_commit`).
    fn commit(&mut self, fault: Fault, session: Option<&str>) -> StoreResult<CommitOutcome> {
        let session = session.unwrap_or(STAGED);
        if let Some(err) = self.before(fault, Some(session)) {
            return Err(err);
        }
        let held = match self.sessions.get(session) {
            Some(blocks) => Some(blocks.clone()),
            None if !self.sessions_kept => Some(BTreeSet::new()),
            None => None,
        };
        let missing = held.as_ref().map(|blocks| {
            let missing: Vec<u32> = (0..self.chunks).filter(|i| !blocks.contains(i)).collect();
            if self.sequential && !missing.is_empty() {
                // An unfinalized in-order session lacks at least its last block.
                (blocks.len() as u32..self.chunks).collect()
            } else {
                missing
            }
        });
        match missing {
            // As `verify_and_commit` does: when anything is missing or the session is gone,
            // an object of this very version already there means the commit happened.
            _ if self.committed && missing.as_ref().is_none_or(|m| !m.is_empty()) => {
                Ok(CommitOutcome::Committed(Verification::BlobwayCrc))
            }
            None => Err(Self::error(ErrorClass::UploadLost)),
            Some(missing) if !missing.is_empty() => {
                Store::after(fault, Ok(CommitOutcome::Missing(missing)))
            }
            Some(_) if matches!(fault, Fault::Exists) => Err(Self::error(ErrorClass::Exists)),
            Some(_) => {
                self.sessions.remove(session);
                self.committed = true;
                Store::after(
                    fault,
                    Ok(CommitOutcome::Committed(Verification::BlobwayCrc)),
                )
            }
        }
    }

    /// Gives up an upload.
    fn abort(&mut self, session: &str) {
        self.sessions.remove(session);
    }
}

/// Who may send a chunk, as a shared state records it (`blobway_chunks.hand`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hand {
    Owner,
    Offered,
    Borrowed,
}

/// One run of one object: the object, its records as the state file holds them, the work in
/// flight, the timers set, and the store.
struct World {
    object: ObjectRun,
    file: FileRecord,
    chunks: Vec<ChunkRecord>,
    flying: Vec<(Work, Option<String>)>,
    timers: Vec<(u64, Wake)>,
    store: Store,
    rules: Rules,
    /// The job was stopped by a fatal error: nothing starts until it is resumed.
    stopped: bool,
    /// Chunks acknowledged in the current session and not reported missing since.
    acknowledged: BTreeSet<u32>,
    sequential: bool,
    /// The object lends chunks (keeping one) to a borrower, as on a shared state.
    lending: bool,
    hands: Vec<Hand>,
    /// Chunks the borrower moves: index, record as borrowed, session as borrowed.
    borrowed: Vec<(u32, ChunkRecord, Option<String>)>,
}

impl World {
    fn new(chunk_count: u32, sequential: bool, sessions_kept: bool, if_exists: IfExists) -> Self {
        let file = FileRecord::new("k", "k", u64::from(chunk_count), "e", 1, chunk_count);
        let chunks = vec![ChunkRecord::pending(); chunk_count as usize];
        let object = ObjectRun::load(1, 0, file.clone(), chunks.clone(), sequential);
        World {
            object,
            file,
            chunks,
            flying: Vec::new(),
            timers: Vec::new(),
            store: Store {
                sequential,
                sessions_kept,
                chunks: chunk_count,
                ..Store::default()
            },
            rules: Rules {
                retry: RetryPolicy {
                    max_attempts: 3,
                    base: Duration::ZERO,
                    cap: Duration::ZERO,
                },
                if_exists,
            },
            stopped: false,
            acknowledged: BTreeSet::new(),
            sequential,
            lending: false,
            hands: vec![Hand::Owner; chunk_count as usize],
            borrowed: Vec::new(),
        }
    }

    /// Applies a step as the scheduler does: its writes reach the state file, its timers are
    /// set; a fatal error stops the job.
    fn apply(&mut self, step: Step) {
        for write in step.writes {
            match write {
                Write::File(_, _, record) => self.file = record,
                Write::Chunk(_, _, index, record) => {
                    // The owner's write takes the chunk back from whoever held it.
                    self.chunks[index as usize] = record;
                    self.hands[index as usize] = Hand::Owner;
                }
                Write::Lend(_, _, chunks) => {
                    // Durable at once here: how lent chunks stand may be read from now on.
                    self.object.lend_pending = false;
                    for c in chunks {
                        let c = c as usize;
                        if self.hands[c] == Hand::Owner
                            && self.chunks[c].state != ChunkState::InProgress
                        {
                            self.hands[c] = Hand::Offered;
                        }
                    }
                }
                other => panic!("an object wrote {other:?}"),
            }
        }
        let generation = self.object.generation;
        self.timers
            .extend(step.timers.into_iter().map(|(_, wake)| (generation, wake)));
        if step.stop_job.is_some() {
            self.stopped = true;
        }
        for (_, session) in &step.abort {
            assert_ne!(
                Some(session),
                self.object.record.session.as_ref(),
                "gave up the session the object still uploads to"
            );
            self.store.abort(session);
        }
        for event in &step.events {
            if let Event::BlocksMissing { chunks, .. } = event {
                for chunk in chunks {
                    self.acknowledged.remove(chunk);
                }
            }
        }
        self.lend();
    }

    /// As the scheduler does after every transition on a shared state.
    fn lend(&mut self) {
        if self.lending {
            let lent = self.object.lend(1);
            if !lent.writes.is_empty() {
                self.apply(lent);
            }
        }
    }

    /// The borrower takes the lowest chunk lent and borrowed by nobody, of an object whose
    /// chunks move (as `Backend::borrow` does).
    fn borrow(&mut self) {
        let Some(c) = (0..self.hands.len()).find(|c| self.hands[*c] == Hand::Offered) else {
            return;
        };
        let mut record = self.chunks[c].clone();
        record.state = ChunkState::InProgress;
        record.attempts += 1;
        self.chunks[c] = record.clone();
        self.hands[c] = Hand::Borrowed;
        self.borrowed
            .push((c as u32, record, self.file.session.clone()));
    }

    /// A borrowed chunk comes back: recorded only while still lent to the borrower.
    fn borrower_answers(&mut self, at: usize, fault: Fault) {
        let (index, record, session) = self.borrowed.remove(at);
        let result = self.store.put(fault, session.as_deref(), index);
        let timing = Timing {
            started_ms: 0,
            latency_ms: 1,
        };
        let record = borrowed_back(record, timing, &result);
        if self.hands[index as usize] == Hand::Borrowed {
            if result.is_ok() {
                self.acknowledged.insert(index);
            }
            self.chunks[index as usize] = record;
            self.hands[index as usize] = Hand::Owner;
        }
    }

    /// The borrower dies: its puts reach the store or not; once its lease is reaped, what
    /// it held is the owner's again, pending.
    fn borrower_dies(&mut self, reached: bool) {
        for (index, _, session) in std::mem::take(&mut self.borrowed) {
            if reached {
                let _ = self.store.put(Fault::AnswerLost, session.as_deref(), index);
            }
            let c = index as usize;
            if self.hands[c] == Hand::Borrowed {
                self.hands[c] = Hand::Owner;
                self.chunks[c].state = ChunkState::Pending;
            }
        }
    }

    /// The owner looks at what it lent, taking back up to `take_back` chunks nobody
    /// borrowed, the highest first (as `Backend::lent` does).
    fn owner_reads_lent(&mut self, take_back: usize) {
        assert!(
            !self.object.lend_pending,
            "read before the lending was recorded"
        );
        let lent: Vec<u32> = self.object.lent.iter().copied().collect();
        let mut left = take_back;
        for &c in lent.iter().rev() {
            if left > 0 && self.hands[c as usize] == Hand::Offered {
                self.hands[c as usize] = Hand::Owner;
                left -= 1;
            }
        }
        let answers = lent
            .iter()
            .map(|&c| crate::state::LentChunk {
                chunk: c,
                record: Some(self.chunks[c as usize].clone()),
                out: self.hands[c as usize] != Hand::Owner,
            })
            .collect();
        let step = self.object.on_lent(answers);
        self.apply(step);
    }

    fn check(&self) {
        let object = &self.object;
        assert_eq!(self.file, object.record, "the state file lags the object");
        // A chunk recorded in flight that is not (the process died under it) is pending.
        // A chunk lent is the borrower's to record until the owner looks at it again.
        let not_lent = |i: &usize| !object.lent.contains(&(*i as u32));
        let recorded: Vec<ChunkRecord> = (0..self.chunks.len())
            .filter(not_lent)
            .map(|i| {
                let mut chunk = self.chunks[i].clone();
                let flying = self.flying.iter().any(|(w, _)| *w == Work::Chunk(i as u32));
                if chunk.state == ChunkState::InProgress && !flying {
                    chunk.state = ChunkState::Pending;
                }
                chunk
            })
            .collect();
        let held: Vec<ChunkRecord> = (0..object.chunks.len())
            .filter(not_lent)
            .map(|i| object.chunks[i].clone())
            .collect();
        assert_eq!(recorded, held, "the state file lags the chunks");
        for c in &object.ready {
            assert!(!object.lent.contains(c), "chunk {c} both ready and lent");
            assert_ne!(
                self.hands[*c as usize],
                Hand::Borrowed,
                "chunk {c} is ready at its owner while a borrower holds it"
            );
        }
        assert_eq!(object.in_flight as usize, self.flying.len());
        if object.record.state == FileState::Done {
            assert!(
                self.store.committed,
                "DONE before the store holds the object"
            );
        }
        let timed = self
            .timers
            .iter()
            .any(|(generation, _)| *generation == object.generation);
        let stranded = object.active()
            && !self.stopped
            && object.next_work().is_none()
            && self.flying.is_empty()
            && object.lent.is_empty()
            && !timed;
        assert!(
            !stranded,
            "stranded in {:?}: {:?}",
            object.phase,
            self.summary()
        );
        if self.sequential {
            assert!(
                object.in_flight <= 1,
                "an in-order store got two chunks at once"
            );
        }
    }

    fn summary(&self) -> String {
        let states: Vec<_> = self.object.chunks.iter().map(|c| c.state).collect();
        format!(
            "chunks {states:?}, ready {:?}, waiting {:?}, rounds {:?}",
            self.object.ready, self.object.waiting, self.object.round
        )
    }

    /// Starts the work the object offers.
    fn dispatch(&mut self) {
        let work = self.object.next_work().expect("offered");
        if let Work::Chunk(index) = work {
            assert!(
                !self.acknowledged.contains(&index),
                "chunk {index} sent again though acknowledged and never reported missing"
            );
            assert_ne!(
                self.hands[index as usize],
                Hand::Borrowed,
                "the owner sent chunk {index}, which a borrower holds"
            );
        }
        let step = self.object.claim(work, 0);
        self.apply(step);
        self.flying.push((work, self.object.record.session.clone()));
    }

    /// Answers the work in flight at `at`.
    fn answer(&mut self, at: usize, fault: Fault) {
        let (work, session) = self.flying.remove(at);
        let session = session.as_deref();
        let step = match work {
            Work::Begin => {
                let result = self.store.begin(fault);
                if matches!(result, Ok(Begun { .. })) {
                    // A new session holds nothing.
                    self.acknowledged.clear();
                }
                self.object.on_begin(result, true, &self.rules)
            }
            Work::Chunk(index) => {
                let result = self.store.put(fault, session, index);
                if result.is_ok() {
                    self.acknowledged.insert(index);
                }
                let timing = Timing {
                    started_ms: 0,
                    latency_ms: 1,
                };
                self.object.on_chunk(index, timing, result, &self.rules)
            }
            Work::Commit => {
                let result = self.store.commit(fault, session);
                self.object.on_commit(result, &self.rules)
            }
        };
        self.apply(step);
    }

    fn fire(&mut self, at: usize) {
        let (generation, wake) = self.timers.remove(at);
        let step = self.object.on_wake(generation, wake);
        self.apply(step);
    }

    /// The process dies: work in flight reaches the store or not (`reached`), every answer
    /// and timer is lost, and the next run loads the object from the state file. The same
    /// for a job stopped by a fatal error, resumed once its work in flight is back.
    fn restart(&mut self, reached: bool) {
        for (work, session) in std::mem::take(&mut self.flying) {
            if reached {
                let fault = Fault::AnswerLost;
                let _ = match work {
                    Work::Begin => self.store.begin(fault).map(|_| ()),
                    Work::Chunk(index) => {
                        self.store.put(fault, session.as_deref(), index).map(|_| ())
                    }
                    Work::Commit => self.store.commit(fault, session.as_deref()).map(|_| ()),
                };
            }
        }
        self.timers.clear();
        self.stopped = false;
        // Claimed again: what it lent and nobody borrowed is its own; what a borrower holds
        // stays lent (as `next_under_way` claims for a worker).
        for hand in &mut self.hands {
            if *hand == Hand::Offered {
                *hand = Hand::Owner;
            }
        }
        self.object = ObjectRun::load(
            1,
            0,
            self.file.clone(),
            self.chunks.clone(),
            self.sequential,
        );
        let borrowed: Vec<u32> = (0..self.hands.len() as u32)
            .filter(|c| self.hands[*c as usize] == Hand::Borrowed)
            .collect();
        self.object.still_lent(borrowed);
        // The chunks the state file does not show acknowledged are sent again; those it does
        // are not.
        let completed: BTreeSet<u32> = (0..self.chunks.len() as u32)
            .filter(|i| self.chunks[*i as usize].state == ChunkState::Completed)
            .collect();
        self.acknowledged.retain(|i| completed.contains(i));
        self.lend();
    }

    /// One move chosen by `pick` among what can happen now, its answer shaped by `fault`.
    fn step(&mut self, pick: usize, fault: Fault) {
        if let Fault::Crash = fault {
            if pick % 4 == 3 && !self.borrowed.is_empty() {
                return self.borrower_dies(pick % 8 == 7);
            }
            return self.restart(pick.is_multiple_of(2));
        }
        if self.stopped && self.flying.is_empty() {
            return self.restart(false);
        }
        let can_dispatch = !self.stopped && self.object.next_work().is_some();
        let can_borrow = self.lending
            && self.file.state == FileState::Transferring
            && self.hands.contains(&Hand::Offered);
        let can_read = !self.object.lent.is_empty();
        let moves = usize::from(can_dispatch)
            + usize::from(can_borrow)
            + usize::from(can_read)
            + self.flying.len()
            + self.borrowed.len()
            + self.timers.len();
        if moves == 0 {
            return;
        }
        let mut pick = pick % moves;
        if can_dispatch {
            if pick == 0 {
                return self.dispatch();
            }
            pick -= 1;
        }
        if can_borrow {
            if pick == 0 {
                return self.borrow();
            }
            pick -= 1;
        }
        if can_read {
            if pick == 0 {
                let take_back = usize::from(matches!(fault, Fault::None | Fault::Transient));
                return self.owner_reads_lent(take_back);
            }
            pick -= 1;
        }
        if pick < self.flying.len() {
            return self.answer(pick, fault);
        }
        pick -= self.flying.len();
        if pick < self.borrowed.len() {
            return self.borrower_answers(pick, fault);
        }
        self.fire(pick - self.borrowed.len());
    }

    /// Once the faults stop: everything is answered well until the object ends.
    fn finish(&mut self) {
        for _ in 0..10_000 {
            if !self.object.active() {
                return;
            }
            if self.stopped && self.flying.is_empty() {
                self.restart(false);
            } else if !self.stopped && self.object.next_work().is_some() {
                self.dispatch();
            } else if !self.flying.is_empty() {
                self.answer(0, Fault::None);
            } else if !self.borrowed.is_empty() {
                self.borrower_answers(0, Fault::None);
            } else if !self.object.lent.is_empty() {
                self.owner_reads_lent(usize::MAX);
            } else if !self.timers.is_empty() {
                self.fire(0);
            }
            self.check();
        }
        panic!("never ended: {:?} {}", self.object.phase, self.summary());
    }
}

/// The stores modelled.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Blocks in any order within an upload session (S3).
    Sessions,
    /// Blocks in any order staged on the object's name (Azure).
    NoSessions,
    /// Blocks in order within a session whose last block finalizes the object (GCS).
    InOrder,
}

fn play(chunks: u32, kind: Kind, skip: bool, lending: bool, script: &[(usize, Fault)]) {
    let if_exists = if skip {
        IfExists::Skip
    } else {
        IfExists::Overwrite
    };
    let (sequential, sessions) = match kind {
        Kind::Sessions => (false, true),
        Kind::NoSessions => (false, false),
        Kind::InOrder => (true, true),
    };
    let mut world = World::new(chunks, sequential, sessions, if_exists);
    world.lending = lending;
    world.check();
    for &(pick, fault) in script {
        world.step(pick, fault);
        world.check();
    }
    world.finish();
    if world.object.record.state == FileState::Done {
        assert!(world.store.committed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 6_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn an_object_on_an_any_order_store_is_never_stranded_and_done_only_when_committed(
        chunks in 1u32..6,
        sessions in any::<bool>(),
        skip in any::<bool>(),
        script in prop::collection::vec((any::<usize>(), fault()), 0..80),
    ) {
        let kind = if sessions { Kind::Sessions } else { Kind::NoSessions };
        play(chunks, kind, skip, false, &script);
    }

    #[test]
    fn an_object_whose_chunks_other_workers_borrow_is_never_stranded_nor_sent_twice_at_once(
        chunks in 2u32..7,
        sessions in any::<bool>(),
        skip in any::<bool>(),
        script in prop::collection::vec((any::<usize>(), fault()), 0..100),
    ) {
        let kind = if sessions { Kind::Sessions } else { Kind::NoSessions };
        play(chunks, kind, skip, true, &script);
    }

    #[test]
    fn an_object_on_an_in_order_store_is_never_stranded_and_done_only_when_committed(
        chunks in 1u32..6,
        skip in any::<bool>(),
        script in prop::collection::vec((any::<usize>(), fault()), 0..80),
    ) {
        // Lending is asked too: an in-order destination never lends.
        play(chunks, Kind::InOrder, skip, true, &script);
    }
}

#[test]
fn a_chunk_failing_twice_alone_asks_for_a_check_and_goes_again_after_it() {
    let mut world = World::new(3, true, true, IfExists::Overwrite);
    // Chunk 0 fails twice; its second wake asks the destination how the upload stands.
    world.dispatch(); // begin
    world.answer(0, Fault::None);
    for _ in 0..2 {
        world.dispatch();
        world.answer(0, Fault::Transient);
        world.fire(0);
    }
    assert!(matches!(
        world.object.phase,
        Phase::Checking {
            asked_by: Some(0),
            turn: Turn::Due
        }
    ));
    world.dispatch();
    world.answer(0, Fault::None);
    assert_eq!(world.object.next_work(), Some(Work::Chunk(0)));
    world.finish();
    assert_eq!(world.object.record.state, FileState::Done);
    assert_eq!(
        world.object.check_round, 0,
        "an answered check resets its budget"
    );
    assert_eq!(
        world.file.commit_attempts, 1,
        "a check spends no commit attempt: only the last commit counts"
    );
}

#[test]
fn a_store_that_keeps_calling_a_live_session_gone_cannot_hold_an_object_forever() {
    let mut world = World::new(3, false, true, IfExists::Overwrite);
    for _ in 0..500 {
        if !world.object.active() {
            break;
        }
        if world.object.next_work().is_some() {
            world.dispatch();
        } else if let Some((work, _)) = world.flying.first() {
            // Every chunk is told the session is gone; checks find it alive.
            let fault = match work {
                Work::Chunk(_) => Fault::Contradicts,
                _ => Fault::None,
            };
            world.answer(0, fault);
        } else {
            world.fire(0);
        }
        world.check();
    }
    assert_eq!(world.object.record.state, FileState::Failed);
    assert_eq!(
        world.object.restarts, world.rules.retry.max_attempts,
        "it started over within its budget, then failed"
    );
}
