//! The transitions an answer or a timer makes: what a chunk's, begin's or commit's outcome
//! means for its object — retried, checked, started over, done, skipped or failed.

use super::*;
use crate::engine::transfer::{Begun, ChunkMoved, CommitOutcome};
use crate::state::AttemptRecord;
use crate::store::{ErrorClass, StoreError, StoreResult};

/// A chunk's attempt moved it: completed, with its checksum, in its history.
pub(super) fn record_moved(chunk: &mut ChunkRecord, timing: Timing, moved: &ChunkMoved) {
    chunk.state = ChunkState::Completed;
    chunk.crc64 = moved.crc64;
    chunk.crc_reported = moved.crc_reported;
    chunk.record_attempt(AttemptRecord {
        started_ms: timing.started_ms,
        latency_ms: timing.latency_ms,
        bytes: moved.bytes,
        error: None,
    });
}

/// A chunk's attempt failed with `error`: in its history (its state is the caller's).
pub(super) fn record_failed(chunk: &mut ChunkRecord, timing: Timing, error: ErrorRecord) {
    chunk.record_attempt(AttemptRecord {
        started_ms: timing.started_ms,
        latency_ms: timing.latency_ms,
        bytes: 0,
        error: Some(error),
    });
}

/// When a chunk's attempt ran, for its history.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub started_ms: i64,
    pub latency_ms: u64,
}

impl ObjectRun {
    /// A chunk came back.
    pub(crate) fn on_chunk(
        &mut self,
        index: u32,
        timing: Timing,
        result: StoreResult<ChunkMoved>,
        rules: &Rules,
    ) -> Step {
        let mut step = Step::default();
        self.in_flight = self.in_flight.saturating_sub(1);
        match result {
            Ok(moved) => self.chunk_moved(index, timing, moved, &mut step),
            Err(err) => self.chunk_failed(index, timing, err, rules, &mut step),
        }
        self.settle(&mut step);
        step
    }

    fn chunk_moved(&mut self, index: u32, timing: Timing, moved: ChunkMoved, step: &mut Step) {
        let chunk = &mut self.chunks[index as usize];
        if chunk.state != ChunkState::Completed {
            self.completed += 1;
        }
        record_moved(chunk, timing, &moved);
        step.writes.push(self.chunk_write(index));
        step.events.push(Event::ChunkCompleted {
            job: self.job,
            key: self.record.key.clone(),
            file: self.index,
            chunk: index,
            bytes: moved.bytes,
            latency_ms: timing.latency_ms,
        });
        if self.active() && self.record.is_single_put() {
            // A whole-object put is its own commit, read back before it answered.
            self.done(moved.verified, step);
        }
    }

    fn chunk_failed(
        &mut self,
        index: u32,
        timing: Timing,
        err: StoreError,
        rules: &Rules,
        step: &mut Step,
    ) {
        let error = ErrorRecord::from_store(&err);
        let chunk = &mut self.chunks[index as usize];
        record_failed(chunk, timing, error.clone());
        let attempt = chunk.attempts;
        let round = self.round[index as usize];
        let retry = &rules.retry;
        let active = self.active();
        // Out of retries in a session a check showed alive a moment ago: this chunk is
        // failing, not the upload. It gets one fresh budget in the same session.
        let second_wind = active
            && self.session_alive
            && !self.second_wind
            && err.class.is_retryable()
            && !retry.should_retry(&err, round);
        let chunk_failed = Event::ChunkFailed {
            job: self.job,
            key: self.record.key.clone(),
            file: self.index,
            chunk: index,
            error: error.clone(),
        };
        if err.class.stops_job() {
            self.chunks[index as usize].state = ChunkState::Pending;
            self.ready.push_front(index);
            step.stop_job = Some(err.to_string());
            step.events.push(chunk_failed);
        } else if active
            && err.class == ErrorClass::UploadLost
            && self.restarts < retry.max_attempts
        {
            // The session is gone: the upload was finished already (the last block finalizes
            // it on some stores, and a crash may have come before its record) or it expired.
            // A look at the destination tells which; the upload starts over only when the
            // object is not there. A store that calls gone a session a check of this life
            // found alive is not asked again (it could go on contradicting itself forever):
            // the upload starts over, within its budget of restarts.
            self.chunks[index as usize].state = ChunkState::Pending;
            if self.session_alive {
                self.drain(Then::StartOver);
                step.events.push(Event::UploadRestarted {
                    job: self.job,
                    file: self.index,
                    error: error.clone(),
                });
            } else {
                self.drain(Then::Check(None));
            }
        } else if active && (retry.should_retry(&err, round) || second_wind) {
            if second_wind {
                self.second_wind = true;
                self.round[index as usize] = 0;
            }
            self.chunks[index as usize].state = ChunkState::Pending;
            self.waiting.push(index);
            let delay = retry.delay(round, err.retry_after);
            step.timers.push((delay, Wake::Chunk(index)));
            step.events.push(Event::ChunkRetry {
                job: self.job,
                key: self.record.key.clone(),
                file: self.index,
                chunk: index,
                attempt,
                delay_ms: delay.as_millis() as u64,
                error,
            });
        } else if active
            && err.class.is_retryable()
            && self.restarts == 0
            && self.record.session.is_some()
        {
            // Retries are spent in an upload session: the session itself may be broken (a
            // completion cut short on some S3-compatible servers). The upload starts over
            // once, with a fresh budget, before the object fails.
            self.chunks[index as usize].state = ChunkState::Pending;
            self.drain(Then::StartOver);
            step.events.push(Event::UploadRestarted {
                job: self.job,
                file: self.index,
                error,
            });
        } else {
            self.chunks[index as usize].state = ChunkState::Failed;
            step.events.push(chunk_failed);
            if !active {
                // The object ended while this chunk was in flight.
            } else if let Some(note) = left_as_it_is(&err, rules.if_exists) {
                self.skip(note, step);
            } else {
                let message = if err.class == ErrorClass::SourceChanged {
                    // A changed source can never finish this upload: give it up now rather
                    // than leave its parts stored (and billed) at the destination.
                    self.give_up_session(step);
                    err.message.clone()
                } else {
                    format!(
                        "chunk {index} failed after {attempt} attempt(s): {}",
                        err.message
                    )
                };
                self.fail(ErrorRecord { message, ..error }, step);
            }
        }
        step.writes.push(self.chunk_write(index));
    }

    /// Nothing new starts until what is in flight is back; then `then`. Starting over wins
    /// over a check.
    fn drain(&mut self, then: Then) {
        self.ready.clear();
        self.phase = match (self.phase, then) {
            (Phase::Draining(Then::StartOver), _) => Phase::Draining(Then::StartOver),
            _ => Phase::Draining(then),
        };
    }

    /// The begin came back. `wanted` is false when the job was cancelled meanwhile.
    pub(crate) fn on_begin(
        &mut self,
        result: StoreResult<Begun>,
        wanted: bool,
        rules: &Rules,
    ) -> Step {
        let mut step = Step::default();
        self.in_flight = self.in_flight.saturating_sub(1);
        let running = self.phase == Phase::Beginning(Turn::Running);
        match result {
            Ok(begun) if running && wanted => {
                self.record.meta = Some(begun.meta);
                self.record.version_id = begun.version_id;
                self.record.session = begun.session;
                // Recorded: nothing of this begin is left to look for after a crash.
                self.record.begun_ms = None;
                self.phase = Phase::Transferring;
                step.writes.push(self.file_write());
            }
            Ok(begun) => {
                if let Some(session) = begun.session {
                    step.abort.push((self.record.dest_key.clone(), session));
                }
            }
            Err(_) if !running => {}
            Err(err) if err.class.stops_job() => {
                self.phase = Phase::Beginning(Turn::Due);
                step.stop_job = Some(err.to_string());
            }
            Err(err) if rules.retry.should_retry(&err, self.begin_round) => {
                self.phase = Phase::Beginning(Turn::Waiting);
                let delay = rules.retry.delay(self.begin_round, err.retry_after);
                step.timers.push((delay, Wake::Begin));
            }
            Err(err) => {
                let message = if err.class == ErrorClass::SourceChanged {
                    err.message.clone()
                } else {
                    format!("the upload could not begin: {}", err.message)
                };
                let error = ErrorRecord {
                    message,
                    ..ErrorRecord::from_store(&err)
                };
                self.fail(error, &mut step);
            }
        }
        self.settle(&mut step);
        step
    }

    /// A check or commit came back.
    pub(crate) fn on_commit(&mut self, result: StoreResult<CommitOutcome>, rules: &Rules) -> Step {
        let mut step = Step::default();
        self.in_flight = self.in_flight.saturating_sub(1);
        let retry = &rules.retry;
        let (checked, attempts) = match self.phase {
            Phase::Checking {
                turn: Turn::Running,
                ..
            } => (true, self.check_round),
            Phase::Committing(Turn::Running) => (false, self.record.commit_attempts),
            _ => return step,
        };
        let due = if checked {
            let Phase::Checking { asked_by, .. } = self.phase else {
                unreachable!()
            };
            Phase::Checking {
                asked_by,
                turn: Turn::Due,
            }
        } else {
            Phase::Committing(Turn::Due)
        };
        match result {
            Ok(CommitOutcome::Committed(verified)) => {
                // Found committed after its session was lost: every chunk arrived.
                for index in 0..self.chunks.len() as u32 {
                    if self.chunks[index as usize].state != ChunkState::Completed {
                        self.chunks[index as usize].state = ChunkState::Completed;
                        self.completed += 1;
                        step.writes.push(self.chunk_write(index));
                    }
                }
                self.done(Some(verified), &mut step);
            }
            Ok(CommitOutcome::Missing(missing)) if checked || attempts < retry.max_attempts => {
                if checked {
                    // The session answered: what it lacks is sent again in it.
                    self.check_round = 0;
                    self.session_alive = true;
                }
                self.send_again(&missing, &mut step);
                step.events.push(Event::BlocksMissing {
                    job: self.job,
                    file: self.index,
                    chunks: missing,
                });
            }
            Ok(CommitOutcome::Missing(missing)) => {
                let message = format!(
                    "the destination keeps losing staged blocks ({} missing after {} checks)",
                    missing.len(),
                    attempts
                );
                let err = StoreError::new(ErrorClass::Transient, None, message);
                self.fail(ErrorRecord::from_store(&err), &mut step);
            }
            Err(err)
                if matches!(err.class, ErrorClass::UploadLost | ErrorClass::Damaged)
                    && self.restarts < retry.max_attempts =>
            {
                step.events.push(Event::UploadRestarted {
                    job: self.job,
                    file: self.index,
                    error: ErrorRecord::from_store(&err),
                });
                self.phase = Phase::Draining(Then::StartOver);
            }
            Err(err) if err.class.stops_job() => {
                self.phase = due;
                step.stop_job = Some(err.to_string());
            }
            // Started over as often as allowed: checking the same blocks again cannot help.
            Err(err) if err.class == ErrorClass::Damaged => {
                self.fail(ErrorRecord::from_store(&err.context("commit")), &mut step);
            }
            Err(err) if retry.should_retry(&err, attempts) => {
                self.phase = match due {
                    Phase::Checking { asked_by, .. } => Phase::Checking {
                        asked_by,
                        turn: Turn::Waiting,
                    },
                    _ => Phase::Committing(Turn::Waiting),
                };
                step.timers
                    .push((retry.delay(attempts, err.retry_after), Wake::Commit));
            }
            Err(err) => {
                if let Some(note) = left_as_it_is(&err, rules.if_exists) {
                    // The upload is not needed any more: give it up (billed parts otherwise).
                    self.give_up_session(&mut step);
                    self.skip(note, &mut step);
                } else {
                    let error = ErrorRecord::from_store(&err.context("commit"));
                    self.fail(error, &mut step);
                }
            }
        }
        self.settle(&mut step);
        step
    }

    /// The store's answer to a check or commit: what it lacks is sent again, and so is every
    /// chunk not acknowledged that waits for nothing (the chunk that asked for the check among
    /// them: its last answer may have been lost, and sending it again overwrites the same
    /// block).
    fn send_again(&mut self, missing: &[u32], step: &mut Step) {
        for &index in missing {
            let Some(chunk) = self.chunks.get_mut(index as usize) else {
                continue;
            };
            if chunk.state == ChunkState::Completed {
                self.completed -= 1;
                chunk.state = ChunkState::Pending;
                step.writes.push(self.chunk_write(index));
            }
        }
        self.ready = (0..self.chunks.len() as u32)
            .filter(|i| {
                self.chunks[*i as usize].state == ChunkState::Pending
                    && !self.waiting.contains(i)
                    && !self.lent.contains(i)
            })
            .collect();
        self.phase = Phase::Transferring;
        if self.record.state != FileState::Transferring {
            self.record.state = FileState::Transferring;
            step.writes.push(self.file_write());
        }
    }

    /// A timer this object set went off. `generation` is the life it was set in: a timer of
    /// an earlier life is void.
    pub(crate) fn on_wake(&mut self, generation: u64, wake: Wake) -> Step {
        let step = Step::default();
        if generation != self.generation || !self.active() {
            return step;
        }
        match wake {
            Wake::Chunk(index) => {
                let Some(at) = self.waiting.iter().position(|c| *c == index) else {
                    return step;
                };
                self.waiting.swap_remove(at);
                if self.chunks[index as usize].state != ChunkState::Pending
                    || self.ready.contains(&index)
                {
                    return step;
                }
                // A chunk of a session upload failing a second time, alone in flight: first
                // ask the destination how the upload stands (it may have been completed by a
                // run that died before recording it, or be gone); the answer puts back what
                // is missing, and this chunk.
                let second = self.round[index as usize] == 2;
                if self.phase == Phase::Transferring
                    && second
                    && self.record.session.is_some()
                    && self.in_flight == 0
                {
                    self.phase = Phase::Checking {
                        asked_by: Some(index),
                        turn: Turn::Due,
                    };
                } else {
                    self.ready.push_front(index);
                }
            }
            Wake::Commit => {
                self.phase = match self.phase {
                    Phase::Checking {
                        asked_by,
                        turn: Turn::Waiting,
                    } => Phase::Checking {
                        asked_by,
                        turn: Turn::Due,
                    },
                    Phase::Committing(Turn::Waiting) => Phase::Committing(Turn::Due),
                    other => other,
                }
            }
            Wake::Begin => {
                if self.phase == Phase::Beginning(Turn::Waiting) {
                    self.phase = Phase::Beginning(Turn::Due);
                }
            }
        }
        step
    }
}

/// An object whose conditional write found another object under its name: under
/// `--if-exists skip` it is left as the destination holds it (the note says why); otherwise
/// it fails as any refusal does.
pub(crate) fn left_as_it_is(err: &StoreError, if_exists: IfExists) -> Option<String> {
    (err.class == ErrorClass::Exists && if_exists == IfExists::Skip).then(|| {
        format!(
            "already at the destination; left as it is (--if-exists skip): {}",
            err.message
        )
    })
}
