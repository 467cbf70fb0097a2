//! Dispatch and claims: timers that wake work, the gate that admits it, claims recorded
//! durably before any work starts, and the tasks that run begins, chunks and commits.

use super::*;

impl Scheduler {
    pub(super) fn dispatch(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id, pos, generation, wake))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            // A timer set for an earlier life of the object, or whose chunk moved on, is void.
            let Some(file) = job
                .files
                .get_mut(pos)
                .filter(|f| f.generation == generation)
            else {
                continue;
            };
            if !file.active() {
                continue;
            }
            match wake {
                Wake::Chunk(chunk) => {
                    let waiting = file
                        .chunks
                        .get(chunk as usize)
                        .is_some_and(|c| c.state == ChunkState::Pending);
                    if !waiting || file.ready.contains(&chunk) {
                        continue;
                    }
                    // A chunk of a session upload failing a second time: first ask the
                    // destination how the upload stands (it may have been completed by a run
                    // that died before recording it, or be gone); the answer puts back what
                    // is missing.
                    let round = file.round.get(chunk as usize).copied().unwrap_or(0);
                    if round == 2 && file.record.session.is_some() && file.in_flight == 0 {
                        // The check's answer (what the store lacks) puts this chunk back.
                        file.check = Some(chunk);
                        file.commit_ready = true;
                    } else {
                        file.ready.push_front(chunk);
                    }
                }
                Wake::Commit => {
                    let all_in = file.completed == file.record.chunk_count && file.ready.is_empty();
                    if !(all_in || file.check.is_some()) {
                        continue;
                    }
                    file.commit_ready = true;
                }
                Wake::Begin => {
                    if file.begin != Begin::Waiting {
                        continue;
                    }
                    file.begin = Begin::Needed;
                }
            }
            job.enqueue_first(pos);
        }
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            while let Some(job) = self.jobs.get_mut(&id) {
                if job.record.state != JobState::Running {
                    break;
                }
                let Some(&pos) = job.queue.front() else { break };
                let file = &mut job.files[pos];
                if !file.has_work() {
                    file.queued = false;
                    job.queue.pop_front();
                    continue;
                }
                if file.begin == Begin::Needed {
                    if !self.gate.try_admit(0) {
                        return;
                    }
                    self.claim_begin(id, pos);
                } else if file.commit_ready {
                    // A commit, or a check a failing chunk asked for, goes before any chunk;
                    // it waits for what is in flight, whose result queues the object again.
                    if file.in_flight > 0 {
                        file.queued = false;
                        job.queue.pop_front();
                        continue;
                    }
                    if !self.gate.try_admit(0) {
                        return;
                    }
                    self.claim_commit(id, pos);
                } else if file.check.is_some() {
                    // A check runs or waits to be tried again: nothing else of the object goes
                    // until it answers (its answer queues the object again).
                    file.queued = false;
                    job.queue.pop_front();
                } else if let Some(chunk) = file.next_chunk() {
                    let reserved = file.chunk_len(chunk);
                    if !self.gate.try_admit(reserved) {
                        return;
                    }
                    file.take_chunk(chunk);
                    self.claim_chunk(id, pos, chunk, reserved);
                } else {
                    // Its next chunk waits for the one ahead of it; that one's result queues
                    // the object again.
                    file.queued = false;
                    job.queue.pop_front();
                }
            }
        }
    }

    pub(super) fn claim_chunk(&mut self, id: JobId, pos: usize, index: u32, reserved: u64) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.in_flight += 1;
        let (source, sink) = (job.source.clone(), job.sink.clone());
        let checksum = sink.checksum_kind(self.config.checksum);
        let file = &mut job.files[pos];
        file.in_flight += 1;
        let chunk = &mut file.chunks[index as usize];
        chunk.state = ChunkState::InProgress;
        chunk.attempts += 1;
        let attempt = chunk.attempts;
        file.round[index as usize] += 1;
        let record = &file.record;
        let whole = record
            .is_single_put()
            .then(|| destination_meta(record, None));
        let work = ChunkWork {
            source,
            target: Target {
                sink,
                key: record.dest_key.clone(),
                session: record.session.clone(),
                create_only: job.record.options.if_exists.create_only(),
            },
            key: record.key.clone(),
            etag: record.etag.clone(),
            range: record.chunk_range(index),
            index,
            last: index + 1 == record.chunk_count,
            block_id: plan::block_id(&record.etag, record.size, record.chunk_size, index),
            whole,
            checksum,
            buffers: self.buffers.clone(),
            invalid_metadata: job.record.options.invalid_metadata,
        };
        let writes = vec![Write::Chunk(
            id,
            file.index,
            index,
            file.chunks[index as usize].clone(),
        )];
        let event = Event::ChunkStarted {
            job: id,
            file: file.index,
            chunk: index,
            attempt,
            bytes: reserved,
        };
        let task = ChunkTask {
            job: id,
            pos,
            chunk: index,
            reserved,
            work,
        };
        self.persist(
            writes,
            vec![After::Emit(event), After::StartChunk(Box::new(task))],
        );
    }

    pub(super) fn claim_commit(&mut self, id: JobId, pos: usize) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.in_flight += 1;
        let sink = job.sink.clone();
        let file = &mut job.files[pos];
        file.in_flight += 1;
        file.commit_ready = false;
        if file.check.is_some() {
            // A check of a session whose chunks are not all acknowledged: no commit attempt.
            file.check_round += 1;
        } else {
            file.record.state = FileState::Committing;
            file.record.commit_attempts += 1;
        }
        let record = &file.record;
        let blocks = plan::planned_blocks(record);
        let crcs: Option<Vec<(u64, u64)>> = file
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let range = record.chunk_range(i as u32);
                c.crc64.map(|crc| (crc, range.end - range.start))
            })
            .collect();
        let blobway = destination_meta(record, crcs.map(transfer::combine_crc64));
        let work = CommitWork {
            target: Target {
                sink,
                key: record.dest_key.clone(),
                session: record.session.clone(),
                create_only: job.record.options.if_exists.create_only(),
            },
            blocks,
            source_meta: record.meta.clone().unwrap_or_default(),
            blobway,
            invalid_metadata: job.record.options.invalid_metadata,
        };
        let task = CommitTask { job: id, pos, work };
        let writes = vec![Write::File(id, file.index, file.record.clone())];
        self.persist(writes, vec![After::StartCommit(Box::new(task))]);
    }

    pub(super) fn claim_begin(&mut self, id: JobId, pos: usize) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.in_flight += 1;
        let (source, sink) = (job.source.clone(), job.sink.clone());
        let file = &mut job.files[pos];
        file.in_flight += 1;
        file.begin = Begin::Running;
        file.begin_round += 1;
        // An earlier begin whose session was never recorded (a crash came between) may have
        // left an upload at the store; this begin is recorded before it is sent.
        let unrecorded_since_ms = file
            .record
            .session
            .is_none()
            .then_some(file.record.begun_ms)
            .flatten();
        file.record.begun_ms = Some(now_ms());
        let record = &file.record;
        let work = BeginWork {
            source,
            target: Target {
                sink,
                key: record.dest_key.clone(),
                session: None,
                create_only: job.record.options.if_exists.create_only(),
            },
            key: record.key.clone(),
            etag: record.etag.clone(),
            blobway: destination_meta(record, None),
            invalid_metadata: job.record.options.invalid_metadata,
            unrecorded_since_ms,
        };
        let writes = vec![Write::File(id, file.index, file.record.clone())];
        self.persist(
            writes,
            vec![After::StartBegin(Box::new(BeginTask {
                job: id,
                pos,
                work,
            }))],
        );
    }

    /// Gives up uploads that will not be committed, in the background.
    pub(super) fn abort_uploads(
        &mut self,
        sink: Arc<dyn ObjectSink>,
        uploads: Vec<(String, String)>,
    ) {
        self.background += 1;
        let tx = self.ready_tx.clone();
        tokio::spawn(async move {
            transfer::give_up_uploads(sink.as_ref(), uploads).await;
            let _ = tx.send(Ready::Aborted);
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
            }
        }
        Ok(())
    }

    pub(super) fn start_chunk(&self, task: ChunkTask) {
        let tx = self.finished_tx.clone();
        tokio::spawn(async move {
            let started_ms = now_ms();
            let start = Instant::now();
            let result = transfer::move_chunk(&task.work).await;
            let _ = tx.send(Finished::Chunk {
                job: task.job,
                pos: task.pos,
                chunk: task.chunk,
                reserved: task.reserved,
                started_ms,
                latency_ms: start.elapsed().as_millis() as u64,
                result,
            });
        });
    }

    pub(super) fn start_begin(&self, task: BeginTask) {
        let tx = self.finished_tx.clone();
        tokio::spawn(async move {
            let result = transfer::begin_upload(&task.work).await;
            let _ = tx.send(Finished::Begin {
                job: task.job,
                pos: task.pos,
                result,
            });
        });
    }

    pub(super) fn start_commit(&self, task: CommitTask) {
        let tx = self.finished_tx.clone();
        tokio::spawn(async move {
            let result = transfer::verify_and_commit(&task.work).await;
            let _ = tx.send(Finished::Commit {
                job: task.job,
                pos: task.pos,
                result,
            });
        });
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
