//! Outcomes: what a finished chunk, begin or commit means for its object — retried, checked,
//! started over, done, skipped or failed — recorded before it is announced.

use super::*;
use crate::engine::model::drained_end;

/// Ready chunks an owner keeps for itself when it lends the rest: enough to fill its slots
/// twice over until it next looks at what it lent.
pub(super) fn lend_keep(limit: u32) -> usize {
    (2 * limit as usize).max(2)
}

impl Scheduler {
    pub(super) fn on_finished(&mut self, finished: Finished) {
        if self.shared {
            let (job, error) = match &finished {
                Finished::Chunk { job, result, .. } => (*job, result.as_ref().err()),
                Finished::Commit { job, result, .. } => (*job, result.as_ref().err()),
                Finished::Begin { job, result, .. } => (*job, result.as_ref().err()),
            };
            let fatal = error.is_some_and(|e| e.class.stops_job());
            if let Some(reason) = self.health.observe(error) {
                self.quarantine(job, reason, fatal);
            }
        }
        match finished {
            Finished::Chunk {
                job,
                file,
                chunk,
                reserved,
                timing,
                result,
                borrowed,
            } => {
                self.gate.release(reserved);
                self.observe(job, timing.latency_ms, &result);
                match borrowed {
                    Some(borrowed) => self.borrowed_finished(job, *borrowed, timing, result),
                    None => self.chunk_finished(job, file, chunk, timing, result),
                }
                self.check_finished(job);
            }
            Finished::Commit { job, file, result } => {
                self.gate.release(0);
                self.commit_finished(job, file, result);
                self.check_finished(job);
            }
            Finished::Begin { job, file, result } => {
                self.gate.release(0);
                self.begin_finished(job, file, result);
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
    pub(super) fn apply(&mut self, id: JobId, file: u32, mut step: Step, first: bool) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let Some(object) = job.files.get_mut(&file) else {
            return;
        };
        if object.reopen_when_back && object.in_flight == 0 {
            object.reopen_when_back = false;
            if object.record.state == FileState::Failed {
                step.timers.clear();
                step.writes.extend(object.reopen());
            }
        }
        let mut lent_now = false;
        if self.shared && job.sink.limits().shared_blocks {
            let lent = object.lend(lend_keep(self.gate.limit()));
            lent_now = !lent.writes.is_empty();
            step.writes.extend(lent.writes);
        }
        let generation = object.generation;
        let now = Instant::now();
        for (delay, wake) in step.timers {
            self.timers
                .set(now + delay, id, file, object.generation, wake);
        }
        let ended = (!object.active() && object.in_flight == 0).then_some(object.generation);
        if first || object.urgent() {
            job.enqueue_first(file);
        } else {
            job.enqueue(file);
        }
        let mut writes = step.writes;
        // A worker of a shared state steps aside instead ([`Scheduler::quarantine`]): the
        // job goes on with the others.
        if let Some(reason) = step.stop_job
            && !self.shared
        {
            stop(job, reason, &mut writes);
        }
        let mut after: Vec<After> = step.events.into_iter().map(After::Emit).collect();
        if !step.abort.is_empty() {
            after.push(After::Abort(job.sink.clone(), step.abort));
        }
        if let Some(generation) = ended {
            after.push(After::Release(id, file, generation));
        }
        if lent_now {
            after.push(After::LendDurable(id, file, generation));
        }
        self.persist(writes, after);
    }

    /// With a shared state: this worker steps aside from job `id` for
    /// [`QUARANTINE`](crate::engine::health::QUARANTINE) (or `BLOBWAY_WORKER_QUARANTINE`), its own credentials, disk or
    /// network having failed. Nothing new of the job starts here; once nothing of it is in
    /// flight its claims go back to the other workers ([`Scheduler::follow_quarantines`]),
    /// and no object spends an attempt meanwhile.
    pub(super) fn quarantine(&mut self, id: JobId, reason: String, fatal: bool) {
        if self
            .jobs
            .get(&id)
            .is_none_or(|j| j.quarantine.is_some() || j.record.state != JobState::Running)
        {
            return;
        }
        // A fatal error (credentials, permissions, a full disk) with no other worker left to
        // go on (a single worker, or every other one stepped aside too, as the workers were
        // last read) stops the job with the reason, as a blobway of its own does. A network
        // that reaches nothing never stops it: the worker tries again.
        let me = self.db.lease().map(|l| l.name.clone());
        let workers = &self.settings.workers;
        let others = workers.is_empty()
            || workers
                .iter()
                .any(|w| Some(&w.name) != me.as_ref() && w.state == "running");
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if fatal && !others {
            let mut writes = Vec::new();
            stop(job, reason, &mut writes);
            self.persist(writes, Vec::new());
            return;
        }
        let message = format!(
            "this worker steps aside from job {id} for {} s and leaves it to the other \
             workers: {reason}",
            crate::engine::health::quarantine().as_secs()
        );
        tracing::warn!("{message}");
        job.clear_queue();
        job.quarantine = Some(crate::engine::model::Quarantine {
            reason,
            stage: crate::engine::model::Stage::Draining,
        });
        self.persist(Vec::new(), vec![After::Emit(Event::Notice { message })]);
    }

    /// The job and object a finished unit of work belongs to, its slot in flight given back.
    fn returned(&mut self, id: JobId, file: u32) -> Option<(&mut ObjectRun, Rules, bool)> {
        let job = self.jobs.get_mut(&id)?;
        job.in_flight = job.in_flight.saturating_sub(1);
        let rules = Rules {
            retry: job.record.options.retry_or(self.config.retry),
            if_exists: job.record.options.if_exists,
        };
        let wanted = job.record.state != JobState::Cancelled;
        Some((job.files.get_mut(&file)?, rules, wanted))
    }

    fn chunk_finished(
        &mut self,
        id: JobId,
        file: u32,
        index: u32,
        timing: Timing,
        result: StoreResult<ChunkMoved>,
    ) {
        let Some((object, rules, _)) = self.returned(id, file) else {
            return;
        };
        let step = object.on_chunk(index, timing, result, &rules);
        self.apply(id, file, step, false);
    }

    /// A chunk borrowed from another worker's object came back: given back recorded, moved
    /// or with its error for its owner to retry.
    fn borrowed_finished(
        &mut self,
        id: JobId,
        borrowed: BorrowedChunk,
        timing: Timing,
        result: StoreResult<ChunkMoved>,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.in_flight = job.in_flight.saturating_sub(1);
        let mut after = Vec::new();
        match &result {
            Ok(moved) => after.push(After::Emit(Event::ChunkCompleted {
                job: id,
                key: borrowed.object.key.clone(),
                file: borrowed.file,
                chunk: borrowed.chunk,
                bytes: moved.bytes,
                latency_ms: timing.latency_ms,
            })),
            Err(err) => {
                tracing::warn!(
                    key = %borrowed.object.key,
                    chunk = borrowed.chunk,
                    "a borrowed chunk goes back to its owner: {err}"
                );
            }
        }
        let record = crate::engine::object::borrowed_back(borrowed.record, timing, &result);
        self.persist(
            vec![Write::Borrowed(id, borrowed.file, borrowed.chunk, record)],
            after,
        );
    }

    fn begin_finished(&mut self, id: JobId, file: u32, result: StoreResult<Begun>) {
        let Some((object, rules, wanted)) = self.returned(id, file) else {
            return;
        };
        let step = object.on_begin(result, wanted, &rules);
        self.apply(id, file, step, true);
    }

    fn commit_finished(&mut self, id: JobId, file: u32, result: StoreResult<CommitOutcome>) {
        let Some((object, rules, _)) = self.returned(id, file) else {
            return;
        };
        let step = object.on_commit(result, &rules);
        self.apply(id, file, step, true);
    }

    /// A timer went off: its object is woken (a timer of an earlier life does nothing).
    pub(super) fn wake(&mut self, id: JobId, file: u32, generation: u64, wake: Wake) {
        let Some(object) = self.jobs.get_mut(&id).and_then(|j| j.files.get_mut(&file)) else {
            return;
        };
        let step = object.on_wake(generation, wake);
        self.apply(id, file, step, true);
    }

    /// Finishes a job once nothing of it is in flight and nothing is left to do (or it was
    /// stopped or cancelled), and unloads it. It is announced once its record is durable,
    /// with the counters the state file holds then.
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
            // Every object of a drained job has its last write durable: the counters are
            // exact.
            _ if job.drained() => match self.db.progress(id) {
                Ok(progress) => match drained_end(&progress, self.shared) {
                    Some(state) => state,
                    // Other workers hold some of its objects: read again in a while.
                    None => {
                        job.rescan(Instant::now().into_std());
                        return;
                    }
                },
                // Decided on a later tick, from counters that can be read.
                Err(e) => {
                    tracing::warn!("cannot read job {id}'s counters: {e}");
                    return;
                }
            },
            _ => return,
        };
        job.record.state = state;
        job.record.updated_ms = now_ms();
        // Shown ended with the counters as recorded now (exact for a drained job: every
        // write of it is durable), never with the last tick's.
        if let Ok(progress) = self.db.progress(id) {
            job.progress = progress;
        }
        let record = job.record.clone();
        let followed = job.followed_end;
        self.timers.forget_job(id);
        // A listing still under way stops at its next page (its position stays recorded).
        if let Some(listing) = self.listings.get(&id) {
            listing.stop();
        }
        if let Some(job) = self.jobs.remove(&id) {
            self.history.insert(id, job.view());
        }
        self.unloading.insert(id);
        let finished = After::Finished(id, state, record.error.clone());
        // Nothing of it is in flight here: what this worker claimed of it goes back. An end
        // followed from another worker is recorded there (a retry asked since must stand).
        let mut writes = vec![Write::LetGo(id)];
        if !followed {
            writes.insert(0, Write::Job(record));
        }
        self.persist(writes, vec![finished]);
    }

    /// Announces a job that ended, its record durable: with the counters the state file
    /// holds, and read again for a view that looks at it.
    pub(super) async fn announce_finished(
        &mut self,
        id: JobId,
        state: JobState,
        error: Option<String>,
    ) {
        self.unloading.remove(&id);
        let progress = self.db.progress(id).unwrap_or_default();
        if let Some(view) = self.history.get_mut(&id) {
            view.progress = progress;
            view.state = state;
        }
        if self.selections.values().any(|s| s.job == Some(id)) {
            self.read_watched(id);
        }
        let carried = self
            .history
            .get(&id)
            .map(|view| view.carried)
            .unwrap_or_default();
        self.emit(Event::JobFinished {
            job: id,
            state,
            progress,
            error,
            carried,
        })
        .await;
        if let Some(reopen) = self.reload_after_unload.remove(&id) {
            self.load(Some(id), true, reopen);
        }
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
