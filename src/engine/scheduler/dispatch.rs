//! Dispatch and claims: timers that wake work, the gate that admits it, claims recorded
//! durably before any work starts, and the tasks that run begins, chunks and commits.

use super::*;
use crate::engine::verify::ObjectCrc;

/// How long a worker waits before it looks again for chunks to borrow, when none were lent.
const BORROW_EVERY: Duration = Duration::from_millis(500);

impl Scheduler {
    pub(super) fn dispatch(&mut self) {
        let now = Instant::now();
        self.paced_until = None;
        while let Some(timer) = self.timers.pop_due(now) {
            self.wake(timer.job, timer.file, timer.generation, timer.wake);
        }
        let mut ids: Vec<JobId> = self.jobs.keys().copied().collect();
        // Under a cap, jobs take turns at being first, so the cap's rate is shared.
        if self.pacer.rate().is_some() && !ids.is_empty() {
            let turn = self.paced_turn % ids.len();
            ids.rotate_left(turn);
        }
        for id in ids {
            // A job this worker stepped aside from is the other workers' for now.
            if self.jobs.get(&id).is_some_and(|j| j.quarantine.is_some()) {
                continue;
            }
            // Chunks borrowed already are claimed: they go before this worker's own.
            if self.shared && !self.start_borrowed(id, now, false) {
                return;
            }
            // A job that does not run reads only to learn whether anything is left (a paused
            // job with nothing left is over).
            if self
                .jobs
                .get(&id)
                .is_some_and(|j| j.record.state == JobState::Running || j.files.is_empty())
            {
                self.refill(id);
            }
            while let Some(job) = self.jobs.get_mut(&id) {
                if job.record.state != JobState::Running {
                    break;
                }
                let Some(&file) = job.queue.front() else {
                    break;
                };
                let Some(object) = job.files.get(&file) else {
                    job.dequeue_front();
                    continue;
                };
                // An object with nothing to start leaves the queue; the answer or timer it
                // waits for queues it again.
                let Some(work) = object.next_work() else {
                    job.dequeue_front();
                    continue;
                };
                let bytes = match work {
                    Work::Chunk(chunk) => object.chunk_len(chunk),
                    Work::Begin | Work::Commit => 0,
                };
                // The bandwidth cap admits bytes at its rate: a chunk waits (not in flight)
                // until those started before it are paid for. The other jobs' begins and
                // commits go on meanwhile.
                if bytes > 0
                    && let Some(at) = self.pacer.wait_until(now)
                {
                    self.paced_until = Some(at);
                    break;
                }
                let reserved = bytes;
                if !self.gate.try_admit(reserved) {
                    return;
                }
                if bytes > 0 && self.pacer.rate().is_some() {
                    self.pacer.take(bytes, now);
                    self.paced_turn = self.paced_turn.wrapping_add(1);
                }
                self.claim(id, file, work, reserved);
            }
            if self.shared && !self.start_borrowed(id, now, true) {
                return;
            }
        }
    }

    /// With a shared state, in a running job: starts the chunks borrowed from other workers'
    /// objects that wait, and — when `may_borrow` and nothing of this worker's own waits —
    /// borrows as many more as slots are free (looked for again only after [`BORROW_EVERY`]
    /// when none were lent). False once the gate is full.
    fn start_borrowed(&mut self, id: JobId, now: Instant, may_borrow: bool) -> bool {
        loop {
            let free = self.gate.limit().saturating_sub(self.gate.in_flight()) as usize;
            let Some(job) = self.jobs.get_mut(&id) else {
                return true;
            };
            if job.record.state != JobState::Running {
                return true;
            }
            if job.borrowed.is_empty() {
                if !may_borrow
                    || !job.queue.is_empty()
                    || free == 0
                    || job.borrow_at.is_some_and(|at| now < at)
                {
                    return true;
                }
                match self.db.borrow(id, free) {
                    Ok(found) => {
                        tracing::debug!(
                            job = id,
                            chunks = found.iter().map(|o| o.chunks.len()).sum::<usize>(),
                            "borrowed chunks other workers lent"
                        );
                        for object in found {
                            let record = Arc::new(object.record);
                            job.borrowed
                                .extend(object.chunks.into_iter().map(|(chunk, c)| {
                                    BorrowedChunk {
                                        file: object.file,
                                        chunk,
                                        object: record.clone(),
                                        record: c,
                                    }
                                }));
                        }
                    }
                    Err(e) => tracing::warn!("cannot borrow chunks of job {id}: {e}"),
                }
                if job.borrowed.is_empty() {
                    job.borrow_at = Some(now + BORROW_EVERY);
                    return true;
                }
            }
            let Some(front) = job.borrowed.front() else {
                return true;
            };
            let range = front.object.chunk_range(front.chunk);
            let bytes = range.end - range.start;
            if let Some(at) = self.pacer.wait_until(now) {
                self.paced_until = Some(at);
                return true;
            }
            if !self.gate.try_admit(bytes) {
                return false;
            }
            if self.pacer.rate().is_some() {
                self.pacer.take(bytes, now);
                self.paced_turn = self.paced_turn.wrapping_add(1);
            }
            let Some(borrowed) = job.borrowed.pop_front() else {
                return true;
            };
            job.in_flight += 1;
            let Some(job) = self.jobs.get(&id) else {
                return true;
            };
            let started = Event::ChunkStarted {
                job: id,
                key: borrowed.object.key.clone(),
                file: borrowed.file,
                chunk: borrowed.chunk,
                attempt: borrowed.record.attempts,
                bytes,
            };
            let task = ChunkTask {
                job: id,
                file: borrowed.file,
                chunk: borrowed.chunk,
                reserved: bytes,
                work: self.chunk_work(job, &borrowed.object, borrowed.chunk),
                borrowed: Some(Box::new(borrowed)),
            };
            // Its claim is durable already (the borrow wrote it).
            self.persist(
                Vec::new(),
                vec![After::Emit(started), After::StartChunk(Box::new(task))],
            );
        }
    }

    /// Reads the next objects under way of a job into its window when it runs low, and
    /// finishes the job when nothing is left. Objects whose chunks can never fit the memory
    /// budget fail at once with the fix, instead of waiting forever.
    pub(super) fn refill(&mut self, id: JobId) {
        let limit = self.gate.limit();
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        // With a shared state, objects are claimed for the free slots only: as many chunks as
        // slots are free (always at least one object), and never more objects held than
        // slots (a held object whose begin is in flight has no work to show, yet is taken).
        let held = u32::try_from(job.files.len()).unwrap_or(u32::MAX);
        let free = limit
            .saturating_sub(self.gate.in_flight())
            .min(limit.saturating_sub(held));
        let wanted = if self.shared {
            job.wants_claim(free)
        } else {
            job.wants(limit)
        };
        if wanted == 0 {
            return;
        }
        let mut room = crate::engine::model::MAX_CHUNKS.saturating_sub(job.chunks_held);
        if self.shared {
            room = room.min(free as usize);
        }
        let held = |file: u32| job.files.contains_key(&file);
        let read = match self.db.next_under_way(id, job.cursor, wanted, room, &held) {
            Ok(read) => read,
            Err(e) if self.shared => {
                // This worker cannot read the shared state now: it steps aside for a while
                // (the job goes on with the others).
                self.quarantine(id, format!("cannot read the job's objects: {e}"), false);
                return;
            }
            Err(e) => {
                // The state file cannot be read: the job stops with the reason (its
                // records stand; `resume` goes on from them).
                let mut writes = Vec::new();
                stop(
                    job,
                    format!("cannot read the job's objects: {e}"),
                    &mut writes,
                );
                self.persist(writes, Vec::new());
                self.check_finished(id);
                return;
            }
        };
        job.cursor = read.last;
        job.exhausted = read.exhausted;
        let sequential = job.sink.limits().sequential;
        let budget = self.gate.budget();
        let mut writes = Vec::new();
        let mut after = Vec::new();
        let lends = self.shared && job.sink.limits().shared_blocks;
        let mut lent: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (file, chunk) in read.lent {
            lent.entry(file).or_default().push(chunk);
        }
        for (index, record, chunks) in read.objects {
            let mut object = ObjectRun::load(id, index, record, chunks, sequential);
            object.still_lent(lent.remove(&index).unwrap_or_default());
            let largest = object.record.chunk_size.min(object.record.size);
            if object.active() && largest > budget {
                let error = ErrorRecord {
                    class: ErrorClass::Invalid,
                    status: None,
                    message: format!(
                        "its chunks of {} do not fit in --max-memory {}; run again with \
                         --max-memory {} or more",
                        crate::size::human(largest),
                        crate::size::human(budget),
                        crate::size::human(largest)
                    ),
                    at_ms: now_ms(),
                };
                let mut step = Step::default();
                object.fail(error, &mut step);
                writes.extend(step.writes);
                after.extend(step.events.into_iter().map(After::Emit));
                after.push(After::Release(id, index, object.generation));
            }
            if lends {
                let lent = object.lend(outcomes::lend_keep(limit));
                if !lent.writes.is_empty() {
                    after.push(After::LendDurable(id, index, object.generation));
                }
                writes.extend(lent.writes);
            }
            if job.hold(object) {
                job.enqueue(index);
            }
        }
        let drained = job.drained();
        self.held_peak = self.held_peak.max(self.objects_held());
        if !writes.is_empty() || !after.is_empty() {
            self.persist(writes, after);
        }
        if drained {
            self.check_finished(id);
        }
    }

    /// Claims `work` for an object: the claim is durable before the work starts.
    fn claim(&mut self, id: JobId, file: u32, work: Work, reserved: u64) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let Some(object) = job.files.get_mut(&file) else {
            return;
        };
        job.in_flight += 1;
        // An earlier begin whose session was never recorded (a crash came between) may have
        // left an upload at the store; this begin is recorded before it is sent.
        let unrecorded_since_ms = object
            .record
            .session
            .is_none()
            .then_some(object.record.begun_ms)
            .flatten();
        let step = object.claim(work, now_ms());
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let Some(object) = job.files.get(&file) else {
            return;
        };
        let record = &object.record;
        let options = &job.record.options;
        let target = target(job, record);
        let start = match work {
            Work::Chunk(index) => After::StartChunk(Box::new(ChunkTask {
                job: id,
                file,
                chunk: index,
                reserved,
                work: self.chunk_work(job, record, index),
                borrowed: None,
            })),
            Work::Commit => {
                let crc = ObjectCrc::of(
                    object
                        .chunks
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.crc64, c.crc_reported, object.chunk_len(i as u32))),
                );
                After::StartCommit(Box::new(CommitTask {
                    job: id,
                    file,
                    work: CommitWork {
                        target,
                        blocks: plan::planned_blocks(record),
                        source_meta: record.meta.clone().unwrap_or_default(),
                        blobway: destination_meta(record, crc.map(|crc| crc.value)),
                        crc,
                        version_id: record.version_id.clone(),
                        invalid_metadata: options.invalid_metadata,
                        pin: job
                            .server
                            .as_ref()
                            .is_some_and(|s| s.pins_before_commit())
                            .then(|| transfer::SourcePin {
                                source: job.source.clone(),
                                key: record.key.clone(),
                                etag: record.etag.clone(),
                                version_id: record.version_id.clone(),
                            }),
                        lease: self.db.lease(),
                    },
                }))
            }
            Work::Begin => After::StartBegin(Box::new(BeginTask {
                job: id,
                file,
                work: BeginWork {
                    source: job.source.clone(),
                    target: Target {
                        session: None,
                        ..target
                    },
                    key: record.key.clone(),
                    etag: record.etag.clone(),
                    blobway: destination_meta(record, None),
                    invalid_metadata: options.invalid_metadata,
                    copy_tags: options.copy_tags,
                    unrecorded_since_ms,
                },
            })),
        };
        let mut after: Vec<After> = step.events.into_iter().map(After::Emit).collect();
        after.push(start);
        self.persist(step.writes, after);
    }

    /// What moving chunk `index` of object `record` of `job` takes, whoever owns the object.
    fn chunk_work(&self, job: &JobRun, record: &FileRecord, index: u32) -> ChunkWork {
        let options = &job.record.options;
        ChunkWork {
            source: job.source.clone(),
            checksum: job
                .sink
                .checksum_kind(options.checksum_or(self.config.checksum)),
            target: target(job, record),
            key: record.key.clone(),
            etag: record.etag.clone(),
            version_id: record.version_id.clone(),
            range: record.chunk_range(index),
            index,
            last: index + 1 == record.chunk_count,
            block_id: plan::block_id(&record.etag, record.size, record.chunk_size, index),
            whole: record
                .is_single_put()
                .then(|| destination_meta(record, None)),
            buffers: self.buffers.clone(),
            invalid_metadata: options.invalid_metadata,
            copy_tags: options.copy_tags,
            server: job.server.clone(),
        }
    }

    /// Gives up uploads that will not be committed, in the background.
    fn abort_uploads(&mut self, sink: Arc<dyn ObjectSink>, uploads: Vec<(String, String)>) {
        let lease = self.db.lease();
        self.background.spawn(async move {
            transfer::give_up_uploads(sink.as_ref(), uploads, lease.as_deref()).await;
        });
    }

    /// Gives up the upload sessions the state file records for a job's objects outside the
    /// window, in the background.
    fn abort_recorded(&mut self, sink: Arc<dyn ObjectSink>, id: JobId, held: BTreeSet<u32>) {
        let db = self.db.clone();
        let lease = db.lease();
        self.background.spawn(async move {
            let read = tokio::task::spawn_blocking(move || db.open_uploads_except(id, &held));
            match read.await {
                Ok(Ok(uploads)) => {
                    transfer::give_up_uploads(sink.as_ref(), uploads, lease.as_deref()).await
                }
                Ok(Err(e)) => tracing::warn!("cannot read job {id}'s open uploads: {e}"),
                Err(e) => tracing::warn!("cannot read job {id}'s open uploads: {e}"),
            }
        });
    }

    pub(super) async fn on_committed(
        &mut self,
        committed: Committed<Vec<After>>,
    ) -> anyhow::Result<()> {
        let tags = committed.map_err(|e| anyhow::anyhow!("{e}"))?;
        self.unacknowledged -= tags.len();
        for after in tags.into_iter().flatten() {
            match after {
                After::Emit(event) => self.emit(event).await,
                After::StartChunk(task) => self.start_chunk(*task),
                After::StartCommit(task) => self.start_commit(*task),
                After::StartBegin(task) => self.start_begin(*task),
                After::Abort(sink, uploads) => self.abort_uploads(sink, uploads),
                After::AbortRecorded(sink, id, held) => self.abort_recorded(sink, id, held),
                After::Release(id, file, generation) => {
                    if let Some(job) = self.jobs.get_mut(&id) {
                        job.release(file, generation);
                        if job.drained() {
                            self.check_finished(id);
                        }
                    }
                }
                After::Rewind(id) => {
                    if let Some(job) = self.jobs.get_mut(&id) {
                        job.rewind();
                    }
                }
                After::LendDurable(id, file, generation) => {
                    if let Some(object) =
                        self.jobs.get_mut(&id).and_then(|j| j.files.get_mut(&file))
                        && object.generation == generation
                    {
                        object.lend_pending = false;
                    }
                }
                After::LetGoDurable(id) => {
                    if let Some(q) = self.jobs.get_mut(&id).and_then(|j| j.quarantine.as_mut()) {
                        // Its time away counts from when its claims are back.
                        let until = Instant::now() + crate::engine::health::quarantine();
                        q.stage = crate::engine::model::Stage::Away(until);
                    }
                }
                After::Finished(id, state, error) => self.announce_finished(id, state, error).await,
            }
        }
        Ok(())
    }

    fn start_chunk(&mut self, task: ChunkTask) {
        let ChunkTask {
            job,
            file,
            chunk,
            reserved,
            work,
            borrowed,
        } = task;
        let one_thread = work.source.blocking_io() && work.target.sink.blocking_io();
        self.work.spawn(async move {
            let started_ms = now_ms();
            let start = Instant::now();
            let result = if one_thread {
                transfer::move_chunk_on_one_thread(work).await
            } else {
                transfer::move_chunk(&work).await
            };
            Finished::Chunk {
                job,
                file,
                chunk,
                reserved,
                timing: Timing {
                    started_ms,
                    latency_ms: start.elapsed().as_millis() as u64,
                },
                result,
                borrowed,
            }
        });
    }

    fn start_begin(&mut self, task: BeginTask) {
        self.work.spawn(async move {
            let result = transfer::begin_upload(&task.work).await;
            Finished::Begin {
                job: task.job,
                file: task.file,
                result,
            }
        });
    }

    fn start_commit(&mut self, task: CommitTask) {
        self.work.spawn(async move {
            let result = transfer::verify_and_commit(&task.work).await;
            Finished::Commit {
                job: task.job,
                file: task.file,
                result,
            }
        });
    }
}

/// Where object `record` of `job` goes, and how.
fn target(job: &JobRun, record: &FileRecord) -> Target {
    let options = &job.record.options;
    Target {
        sink: job.sink.clone(),
        key: record.dest_key.clone(),
        session: record.session.clone(),
        create_only: options.if_exists.create_only(),
        tier: options.access_tier,
        storage_class: options.storage_class,
    }
}

/// The metadata a committed object carries: its source version, size and (when known) its
/// whole-object CRC-64/NVME.
pub(super) fn destination_meta(record: &FileRecord, crc64: Option<u64>) -> ObjectMeta {
    let mut meta = ObjectMeta::default();
    meta.pairs
        .insert(meta_keys::SOURCE_ETAG.into(), record.etag.clone());
    meta.pairs
        .insert(meta_keys::SIZE.into(), record.size.to_string());
    if let Some(crc) = crc64 {
        meta.pairs
            .insert(meta_keys::CRC64NVME.into(), format!("{crc:016x}"));
    }
    meta
}
