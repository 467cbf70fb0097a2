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
                timing,
                result,
            } => {
                self.gate.release(reserved);
                self.observe(job, timing.latency_ms, &result);
                self.chunk_finished(job, pos, chunk, timing, result);
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

    /// What each transition of an object asks, applied: its timers set, the uploads it
    /// leaves given up, the job stopped if the error was fatal, the object queued again if it
    /// has work, and its records written before its events are announced.
    ///
    /// An object under way (`first`: after its begin, check, commit or a retry's timer — or
    /// whenever a begin, check or commit is due) goes ahead of objects not begun yet, so a
    /// job does not open every object's session before any chunk moves. Uploads are given up
    /// only once the writes that drop them are durable.
    fn apply(&mut self, id: JobId, pos: usize, step: Step, first: bool) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let object = &job.files[pos];
        let now = Instant::now();
        for (delay, wake) in step.timers {
            self.timers
                .set(now + delay, id, pos, object.generation, wake);
        }
        if first || object.urgent() {
            job.enqueue_first(pos);
        } else {
            job.enqueue(pos);
        }
        let mut writes = step.writes;
        if let Some(reason) = step.stop_job {
            stop(job, reason, &mut writes);
        }
        let mut after: Vec<After> = step.events.into_iter().map(After::Emit).collect();
        if !step.abort.is_empty() {
            after.push(After::Abort(job.sink.clone(), step.abort));
        }
        self.persist(writes, after);
    }

    /// The job and object a finished unit of work belongs to, its slot in flight given back.
    fn returned(&mut self, id: JobId, pos: usize) -> Option<(&mut ObjectRun, Rules, bool)> {
        let job = self.jobs.get_mut(&id)?;
        job.in_flight = job.in_flight.saturating_sub(1);
        let rules = Rules {
            retry: job.record.options.retry_or(self.config.retry),
            if_exists: job.record.options.if_exists,
        };
        let wanted = job.record.state != JobState::Cancelled;
        Some((job.files.get_mut(pos)?, rules, wanted))
    }

    fn chunk_finished(
        &mut self,
        id: JobId,
        pos: usize,
        index: u32,
        timing: Timing,
        result: StoreResult<ChunkMoved>,
    ) {
        let Some((object, rules, _)) = self.returned(id, pos) else {
            return;
        };
        let step = object.on_chunk(index, timing, result, &rules);
        self.apply(id, pos, step, false);
    }

    fn begin_finished(&mut self, id: JobId, pos: usize, result: StoreResult<Begun>) {
        let Some((object, rules, wanted)) = self.returned(id, pos) else {
            return;
        };
        let step = object.on_begin(result, wanted, &rules);
        self.apply(id, pos, step, true);
    }

    fn commit_finished(&mut self, id: JobId, pos: usize, result: StoreResult<CommitOutcome>) {
        let Some((object, rules, _)) = self.returned(id, pos) else {
            return;
        };
        let step = object.on_commit(result, &rules);
        self.apply(id, pos, step, true);
    }

    /// A timer went off: its object is woken (a timer of an earlier life does nothing).
    pub(super) fn wake(&mut self, id: JobId, pos: usize, generation: u64, wake: Wake) {
        let Some(object) = self.jobs.get_mut(&id).and_then(|j| j.files.get_mut(pos)) else {
            return;
        };
        let step = object.on_wake(generation, wake);
        self.apply(id, pos, step, true);
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
        self.timers.forget_job(id);
        if let Some(job) = self.jobs.remove(&id) {
            self.history.insert(id, job.view());
            if self.selections.values().any(|s| s.job == Some(id)) {
                self.watched.insert(id, job.into_snapshot());
            }
        }
        self.persist(vec![Write::Job(record)], vec![After::Emit(event)]);
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
