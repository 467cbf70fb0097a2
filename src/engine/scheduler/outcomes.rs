//! Outcomes: what a finished chunk, begin or commit means for its object — retried, checked,
//! started over, done, skipped or failed — recorded before it is announced.

use super::*;

impl Scheduler {
    pub(super) fn on_finished(&mut self, finished: Finished) {
        match finished {
            Finished::Chunk {
                job,
                pos,
                chunk,
                reserved,
                started_ms,
                latency_ms,
                result,
            } => {
                self.gate.release(reserved);
                self.observe(job, latency_ms, &result);
                self.chunk_finished(job, pos, chunk, started_ms, latency_ms, result);
                self.check_finished(job);
            }
            Finished::Commit { job, pos, result } => {
                self.gate.release(0);
                self.commit_finished(job, pos, result);
                self.check_finished(job);
            }
            Finished::Begin { job, pos, result } => {
                self.gate.release(0);
                self.begin_finished(job, pos, result);
                self.check_finished(job);
            }
        }
    }

    pub(super) fn chunk_finished(
        &mut self,
        id: JobId,
        pos: usize,
        index: u32,
        started_ms: i64,
        latency_ms: u64,
        result: StoreResult<ChunkMoved>,
    ) {
        let retry = self.config.retry;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.in_flight = job.in_flight.saturating_sub(1);
        let if_exists = job.record.options.if_exists;
        let Some(file) = job.files.get_mut(pos) else {
            return;
        };
        file.in_flight = file.in_flight.saturating_sub(1);
        let file_index = file.index;
        let generation = file.generation;
        let round = file.round.get(index as usize).copied().unwrap_or(u32::MAX);
        let mut writes = Vec::new();
        let mut after = Vec::new();
        let mut stop_job = None;
        let mut lost = false;
        let mut broken = None;
        let mut fresh_budget = false;
        let mut orphan = None;
        match result {
            Ok(moved) => {
                let chunk = &mut file.chunks[index as usize];
                if chunk.state != ChunkState::Completed {
                    file.completed += 1;
                }
                chunk.state = ChunkState::Completed;
                chunk.crc64 = Some(moved.crc64);
                chunk.record_attempt(AttemptRecord {
                    started_ms,
                    latency_ms,
                    bytes: moved.bytes,
                    error: None,
                });
                writes.push(Write::Chunk(id, file_index, index, chunk.clone()));
                after.push(After::Emit(Event::ChunkCompleted {
                    job: id,
                    file: file_index,
                    chunk: index,
                    bytes: moved.bytes,
                    latency_ms,
                }));
                if file.active() && file.record.is_single_put() {
                    file.record.state = FileState::Done;
                    writes.push(Write::File(id, file_index, file.record.clone()));
                    after.push(After::Emit(committed_event(id, &file.record, file_index)));
                } else if file.active() && file.completed == file.record.chunk_count {
                    file.record.state = FileState::Committing;
                    file.commit_ready = true;
                    writes.push(Write::File(id, file_index, file.record.clone()));
                }
            }
            Err(err) => {
                let error = ErrorRecord::from_store(&err);
                let active = file.active();
                let may_restart = file.restarts < retry.max_attempts;
                let first_session = file.restarts == 0 && file.record.session.is_some();
                let live_session = file.session_alive && !file.second_wind;
                let chunk = &mut file.chunks[index as usize];
                chunk.record_attempt(AttemptRecord {
                    started_ms,
                    latency_ms,
                    bytes: 0,
                    error: Some(error.clone()),
                });
                let attempt = chunk.attempts;
                if err.class.stops_job() {
                    chunk.state = ChunkState::Pending;
                    file.ready.push_front(index);
                    stop_job = Some(err.to_string());
                    after.push(After::Emit(Event::ChunkFailed {
                        job: id,
                        file: file_index,
                        chunk: index,
                        error,
                    }));
                } else if err.class == ErrorClass::UploadLost && active && may_restart {
                    // The session is gone: the upload was finished already (the last block
                    // finalizes it on some stores, and a crash may have come before its
                    // record) or it expired. A look at the destination tells which; the
                    // upload starts over only when the object is not there.
                    chunk.state = ChunkState::Pending;
                    lost = true;
                } else if (retry.should_retry(&err, round) && active)
                    || (active && live_session && err.class.is_retryable())
                {
                    // Out of retries in a session a check showed alive a moment ago: this
                    // chunk is failing, not the upload. It gets one fresh budget in the same
                    // session, and only it is sent again.
                    fresh_budget = !retry.should_retry(&err, round);
                    chunk.state = ChunkState::Pending;
                    let delay = retry.delay(round, err.retry_after);
                    self.timers.push(Reverse((
                        Instant::now() + delay,
                        id,
                        pos,
                        generation,
                        Wake::Chunk(index),
                    )));
                    after.push(After::Emit(Event::ChunkRetry {
                        job: id,
                        file: file_index,
                        chunk: index,
                        attempt,
                        delay_ms: delay.as_millis() as u64,
                        error,
                    }));
                } else if active && first_session && err.class.is_retryable() {
                    // Retries are spent on an upload session: the session itself may be
                    // broken (a completion cut short on some S3-compatible servers). The
                    // upload starts over once, with a fresh budget, before the object fails.
                    chunk.state = ChunkState::Pending;
                    broken = Some(error.clone());
                } else {
                    chunk.state = ChunkState::Failed;
                    after.push(After::Emit(Event::ChunkFailed {
                        job: id,
                        file: file_index,
                        chunk: index,
                        error: error.clone(),
                    }));
                    if active && leave_existing(&mut file.record, &err, if_exists) {
                        file.ready.clear();
                    } else if active {
                        let message = if err.class == ErrorClass::SourceChanged {
                            err.message.clone()
                        } else {
                            format!(
                                "chunk {index} failed after {attempt} attempt(s): {}",
                                err.message
                            )
                        };
                        file.record.state = FileState::Failed;
                        file.record.error = Some(ErrorRecord { message, ..error });
                        file.ready.clear();
                        file.commit_ready = false;
                        // A changed source can never finish this upload: give it up now
                        // rather than leave its parts stored (and billed) at the destination.
                        if err.class == ErrorClass::SourceChanged
                            && let Some(session) = file.record.session.take()
                        {
                            file.record.meta = None;
                            orphan = Some((file.record.dest_key.clone(), session));
                        }
                        after.push(After::Emit(failed_event(id, &file.record, file_index)));
                    }
                }
                writes.push(Write::Chunk(
                    id,
                    file_index,
                    index,
                    file.chunks[index as usize].clone(),
                ));
                if matches!(file.record.state, FileState::Failed | FileState::Skipped) {
                    writes.push(Write::File(id, file_index, file.record.clone()));
                }
            }
        }
        let file = &mut job.files[pos];
        if fresh_budget {
            file.second_wind = true;
            if let Some(round) = file.round.get_mut(index as usize) {
                *round = 0;
            }
        }
        if let Some(error) = broken {
            file.restart = true;
            file.ready.clear();
            file.commit_ready = false;
            after.push(After::Emit(Event::UploadRestarted {
                job: id,
                file: file_index,
                error,
            }));
        }
        if lost {
            file.ready.clear();
            file.check_session = true;
        }
        if file.check_session && file.in_flight == 0 && file.active() {
            file.check_session = false;
            file.commit_ready = true;
        }
        let abandoned = restart_when_idle(id, &mut job.files[pos], &mut writes);
        if job.files[pos].commit_ready {
            job.enqueue_first(pos);
        } else {
            job.enqueue(pos);
        }
        if let Some(reason) = stop_job {
            stop(job, reason, &mut writes);
        }
        let give_up: Vec<(String, String)> = orphan.into_iter().chain(abandoned).collect();
        if !give_up.is_empty() {
            let sink = job.sink.clone();
            self.abort_uploads(sink, give_up);
        }
        self.persist(writes, after);
    }

    pub(super) fn begin_finished(&mut self, id: JobId, pos: usize, result: StoreResult<Begun>) {
        let retry = self.config.retry;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.in_flight = job.in_flight.saturating_sub(1);
        let sink = job.sink.clone();
        let cancelled = job.record.state == JobState::Cancelled;
        let Some(file) = job.files.get_mut(pos) else {
            return;
        };
        file.in_flight = file.in_flight.saturating_sub(1);
        let file_index = file.index;
        let mut writes = Vec::new();
        let mut after = Vec::new();
        let mut stop_job = None;
        let mut orphan = None;
        match result {
            Ok(begun) => {
                if file.active() && file.begin == Begin::Running && !cancelled {
                    file.record.meta = Some(begun.meta);
                    file.record.session = begun.session;
                    // Recorded: nothing of this begin is left to look for after a crash.
                    file.record.begun_ms = None;
                    file.begin = Begin::Done;
                    writes.push(Write::File(id, file_index, file.record.clone()));
                } else if let Some(session) = begun.session {
                    orphan = Some((file.record.dest_key.clone(), session));
                }
            }
            Err(err) => {
                file.begin = Begin::Needed;
                if err.class.stops_job() {
                    stop_job = Some(err.to_string());
                } else if retry.should_retry(&err, file.begin_round) && file.active() {
                    file.begin = Begin::Waiting;
                    let delay = retry.delay(file.begin_round, err.retry_after);
                    self.timers.push(Reverse((
                        Instant::now() + delay,
                        id,
                        pos,
                        file.generation,
                        Wake::Begin,
                    )));
                } else if file.active() {
                    let message = if err.class == ErrorClass::SourceChanged {
                        err.message.clone()
                    } else {
                        format!("the upload could not begin: {}", err.message)
                    };
                    file.record.state = FileState::Failed;
                    file.record.error = Some(ErrorRecord {
                        message,
                        ..ErrorRecord::from_store(&err)
                    });
                    file.ready.clear();
                    file.commit_ready = false;
                    writes.push(Write::File(id, file_index, file.record.clone()));
                    after.push(After::Emit(failed_event(id, &file.record, file_index)));
                }
            }
        }
        job.enqueue_first(pos);
        if let Some(reason) = stop_job {
            stop(job, reason, &mut writes);
        }
        if let Some(upload) = orphan {
            self.abort_uploads(sink, vec![upload]);
        }
        self.persist(writes, after);
    }

    pub(super) fn commit_finished(
        &mut self,
        id: JobId,
        pos: usize,
        result: StoreResult<CommitOutcome>,
    ) {
        let retry = self.config.retry;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.in_flight = job.in_flight.saturating_sub(1);
        let if_exists = job.record.options.if_exists;
        let Some(file) = job.files.get_mut(pos) else {
            return;
        };
        file.in_flight = file.in_flight.saturating_sub(1);
        let file_index = file.index;
        let mut writes = Vec::new();
        let mut after = Vec::new();
        let mut stop_job = None;
        let mut abandoned = None;
        // Was this a check a failing chunk asked for, rather than a commit?
        let asked_by = file.check;
        let checked = asked_by.is_some();
        let attempts = if checked {
            file.check_round
        } else {
            file.record.commit_attempts
        };
        if !matches!(&result, Err(e) if e.class.is_retryable()) {
            file.check = None;
        }
        if checked && result.is_ok() {
            file.check_round = 0;
        }
        match result {
            Ok(CommitOutcome::Committed) => {
                file.record.state = FileState::Done;
                file.record.error = None;
                // Found committed after its session was lost: every chunk arrived.
                for (index, chunk) in file.chunks.iter_mut().enumerate() {
                    if chunk.state != ChunkState::Completed {
                        chunk.state = ChunkState::Completed;
                        file.completed += 1;
                        writes.push(Write::Chunk(id, file_index, index as u32, chunk.clone()));
                    }
                }
                after.push(After::Emit(committed_event(id, &file.record, file_index)));
            }
            Ok(CommitOutcome::Missing(missing))
                if checked || file.record.commit_attempts < retry.max_attempts =>
            {
                if checked {
                    // The session answered: what it lacks is sent again in it.
                    file.session_alive = true;
                }
                // Not every block is there: a commit asked for meanwhile (a stale timer) waits
                // for the re-sends.
                file.commit_ready = false;
                // The chunk that asked for the check goes again even if the store holds it
                // (its last answer was lost; sending it again overwrites the same block).
                let asking = asked_by.filter(|c| !missing.contains(c));
                for &chunk in missing.iter().chain(asking.iter()) {
                    let record = &mut file.chunks[chunk as usize];
                    if record.state == ChunkState::InProgress {
                        continue; // its own result decides
                    }
                    if record.state == ChunkState::Completed {
                        file.completed -= 1;
                    }
                    record.state = ChunkState::Pending;
                    writes.push(Write::Chunk(id, file_index, chunk, record.clone()));
                    // Chunks still waiting to go are queued once.
                    if !file.ready.contains(&chunk) {
                        file.ready.push_back(chunk);
                    }
                }
                file.record.state = FileState::Transferring;
                after.push(After::Emit(Event::BlocksMissing {
                    job: id,
                    file: file_index,
                    chunks: missing,
                }));
            }
            Ok(CommitOutcome::Missing(missing)) => {
                let err = StoreError::new(
                    ErrorClass::Transient,
                    None,
                    format!(
                        "the destination keeps losing staged blocks ({} missing after {} checks)",
                        missing.len(),
                        file.record.commit_attempts
                    ),
                );
                file.record.state = FileState::Failed;
                file.record.error = Some(ErrorRecord::from_store(&err));
                after.push(After::Emit(failed_event(id, &file.record, file_index)));
            }
            Err(err)
                if err.class == ErrorClass::UploadLost && file.restarts < retry.max_attempts =>
            {
                file.restart = true;
                after.push(After::Emit(Event::UploadRestarted {
                    job: id,
                    file: file_index,
                    error: ErrorRecord::from_store(&err),
                }));
            }
            Err(err) => {
                if err.class.stops_job() {
                    file.commit_ready = true;
                    stop_job = Some(err.to_string());
                } else if retry.should_retry(&err, attempts) {
                    // A check keeps asking for itself (`check` stays set) until it is answered.
                    let delay = retry.delay(attempts, err.retry_after);
                    let at = Instant::now() + delay;
                    self.timers
                        .push(Reverse((at, id, pos, file.generation, Wake::Commit)));
                } else if leave_existing(&mut file.record, &err, if_exists) {
                    // The upload is not needed any more: give it up (billed parts otherwise).
                    if let Some(session) = file.record.session.take() {
                        file.record.meta = None;
                        abandoned = Some((file.record.dest_key.clone(), session));
                    }
                } else {
                    file.record.state = FileState::Failed;
                    file.record.error = Some(ErrorRecord::from_store(&err.context("commit")));
                    after.push(After::Emit(failed_event(id, &file.record, file_index)));
                }
            }
        }
        writes.push(Write::File(id, file_index, file.record.clone()));
        let restarted = restart_when_idle(id, file, &mut writes);
        job.enqueue_first(pos);
        if let Some(reason) = stop_job {
            stop(job, reason, &mut writes);
        }
        let give_up: Vec<(String, String)> = abandoned.into_iter().chain(restarted).collect();
        if !give_up.is_empty() {
            let sink = job.sink.clone();
            self.abort_uploads(sink, give_up);
        }
        self.persist(writes, after);
    }

    /// Finishes a job once nothing of it is in flight and nothing is left to do (or it was
    /// stopped or cancelled), and unloads it.
    pub(super) fn check_finished(&mut self, id: JobId) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.in_flight > 0 {
            return;
        }
        let state = match job.record.state {
            JobState::Cancelled => JobState::Cancelled,
            JobState::Failed => JobState::Failed, // stopped by a fatal error
            // Whatever the operator last said (even paused), a job with nothing left is over.
            _ if job.all_finished() => {
                if job
                    .files
                    .iter()
                    .any(|f| f.record.state == FileState::Failed)
                {
                    JobState::Failed
                } else {
                    JobState::Done
                }
            }
            _ => return,
        };
        job.record.state = state;
        job.record.updated_ms = now_ms();
        let progress = job.progress();
        let record = job.record.clone();
        let event = Event::JobFinished {
            job: id,
            state,
            progress,
            error: record.error.clone(),
        };
        self.timers.retain(|Reverse((_, job, ..))| *job != id);
        if let Some(job) = self.jobs.remove(&id) {
            self.history.insert(id, job.view());
            if self.selection.job == Some(id) {
                self.watched = Some(job.into_snapshot());
            }
        }
        self.persist(vec![Write::Job(record)], vec![After::Emit(event)]);
    }
}

/// Starts an object's upload over once its session was lost and nothing of it is in flight.
/// Starts the upload over once nothing of it is in flight, if it must; returns the session
/// it abandons (destination key, session), to give up at the store — best effort: a session
/// the store only seemed to lose would keep its parts (and their bill) otherwise.
pub(super) fn restart_when_idle(
    job: JobId,
    file: &mut FileRun,
    writes: &mut Vec<Write>,
) -> Option<(String, String)> {
    if file.restart && file.in_flight == 0 && file.active() {
        tracing::info!(key = %file.record.key, "the upload session was lost; starting over");
        let abandoned = file
            .record
            .session
            .clone()
            .map(|session| (file.record.dest_key.clone(), session));
        writes.extend(file.start_over(job));
        return abandoned;
    }
    None
}

pub(super) fn committed_event(job: JobId, record: &FileRecord, file: u32) -> Event {
    Event::ObjectCommitted {
        job,
        file,
        key: record.key.clone(),
        dest_key: record.dest_key.clone(),
        bytes: record.size,
    }
}

pub(super) fn failed_event(job: JobId, record: &FileRecord, file: u32) -> Event {
    Event::ObjectFailed {
        job,
        file,
        key: record.key.clone(),
        error: record.error.clone().unwrap_or_else(|| ErrorRecord {
            class: ErrorClass::Transient,
            status: None,
            message: "failed".into(),
            at_ms: now_ms(),
        }),
    }
}

/// An object whose conditional commit found another object under its name: under
/// `--if-exists skip` it is left as the destination holds it (recorded skipped, with the
/// reason) and this returns true; otherwise it fails as any refusal does.
pub(super) fn leave_existing(
    record: &mut FileRecord,
    err: &StoreError,
    if_exists: IfExists,
) -> bool {
    if err.class != ErrorClass::Exists || if_exists != IfExists::Skip {
        return false;
    }
    tracing::info!(key = %record.key, dest = %record.dest_key,
        "left as the destination holds it (--if-exists skip)");
    record.state = FileState::Skipped;
    record.note = Some(format!(
        "already at the destination; left as it is (--if-exists skip): {}",
        err.message
    ));
    true
}
