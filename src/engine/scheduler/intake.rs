//! Intake: planning a route and loading a recorded job, on their own tasks, and taking their
//! results in (unplanned destinations recorded so `resume` tries them again).

use super::*;

impl Scheduler {
    pub(super) async fn on_ready(&mut self, ready: Ready) {
        match ready {
            Ready::Queued(event) => self.persist(Vec::new(), vec![After::Emit(event)]),
            Ready::LoaderDone => {
                self.loading = self.loading.saturating_sub(1);
                if self.loading == 0 {
                    for command in std::mem::take(&mut self.deferred) {
                        self.on_command(command);
                    }
                }
            }
            Ready::History(views) => {
                for view in views {
                    self.history.entry(view.id).or_insert(view);
                }
            }
            Ready::Watched(snapshot) => {
                let id = snapshot.job.id;
                if self.selections.values().any(|s| s.job == Some(id)) {
                    self.watched.insert(id, snapshot);
                }
            }
            Ready::Replan {
                source,
                destination,
                options,
            } => {
                // Two loaders (the daemon's start and a named resume) may both find it.
                let route = route_key(&source, &destination);
                let loaded = self
                    .jobs
                    .values()
                    .any(|j| route_key(&j.record.source, &j.record.destination) == route);
                if !loaded && !self.planning.contains_key(&route) {
                    self.enqueue(source, destination, options);
                }
            }
            Ready::Cancelled { job, result } => match result {
                Ok(true) => {
                    if let Some(view) = self.history.get_mut(&job) {
                        view.state = JobState::Cancelled;
                    }
                    self.emit(Event::JobStateChanged {
                        job,
                        state: JobState::Cancelled,
                    })
                    .await
                }
                Ok(false) => {}
                Err(error) => {
                    self.emit(Event::PlanFailed {
                        source: String::new(),
                        destination: String::new(),
                        error: format!("cannot cancel job {job}: {error}"),
                    })
                    .await
                }
            },
            Ready::Failed {
                source,
                destination,
                error,
                ends,
            } => {
                if let Ends::Plan(route) = ends {
                    self.planning.remove(&route);
                }
                // Through the writer, so it never overtakes the route's JobQueued.
                let failed = Event::PlanFailed {
                    source,
                    destination,
                    error,
                };
                self.persist(Vec::new(), vec![After::Emit(failed)]);
            }
            Ready::Job {
                snapshot,
                summary,
                source,
                sink,
                unpause,
            } => {
                if summary.is_some() {
                    let route = route_key(&snapshot.job.source, &snapshot.job.destination);
                    self.planning.remove(&route);
                }
                self.install(snapshot, summary, source, sink, unpause).await;
            }
        }
    }

    pub(super) async fn install(
        &mut self,
        snapshot: JobSnapshot,
        summary: Option<PlanSummary>,
        source: Arc<dyn ObjectSource>,
        sink: Arc<dyn ObjectSink>,
        unpause: bool,
    ) {
        let mut record = snapshot.job;
        let id = record.id;
        self.next_job_id = self.next_job_id.max(id + 1);
        if self.jobs.contains_key(&id) && summary.is_none() {
            // Loaded twice (the daemon's start and a named resume racing): the loaded copy
            // stays, and does what the second load was asked for.
            if unpause {
                self.set_paused(Some(id), false);
            }
            return;
        }
        if self.jobs.contains_key(&id) {
            self.emit(Event::PlanFailed {
                source: record.source,
                destination: record.destination,
                error: format!("job {id} is already running"),
            })
            .await;
            return;
        }
        let sequential = sink.limits().sequential;
        let files: Vec<ObjectRun> = snapshot
            .files
            .into_iter()
            .map(|(index, file, chunks)| ObjectRun::load(id, index, file, chunks, sequential))
            .collect();
        let mut writes = Vec::new();
        let resumes = matches!(record.state, JobState::Failed | JobState::Queued)
            || (unpause && record.state == JobState::Paused);
        if resumes {
            record.state = JobState::Running;
            record.error = None;
            writes.push(Write::Job(record.clone()));
        }
        let mut job = JobRun {
            record,
            source,
            sink,
            queued: vec![false; files.len()],
            files,
            queue: VecDeque::new(),
            in_flight: 0,
        };
        if summary.is_none() {
            // Loading a failed job: failed objects get another chance, except those whose
            // source changed (only a new `copy` can plan the new version).
            for file in &mut job.files {
                let changed = file
                    .record
                    .error
                    .as_ref()
                    .is_some_and(|e| e.class == ErrorClass::SourceChanged);
                if file.record.state == FileState::Failed && file.record.chunk_count > 0 && !changed
                {
                    writes.extend(file.reopen());
                }
            }
        }
        // Objects that cannot be copied as things stand are reported with the job, so every
        // summary names every failed object and why.
        let mut announcements: Vec<After> = job
            .files
            .iter()
            .filter(|f| f.record.state == FileState::Failed)
            .map(|f| After::Emit(failed_event(id, &f.record, f.index)))
            .collect();
        // A chunk that can never fit the memory budget would wait forever: say so instead.
        let budget = self.gate.budget();
        for object in &mut job.files {
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
                announcements.extend(step.events.into_iter().map(After::Emit));
            }
        }
        job.enqueue_all();
        let event = match summary {
            Some(summary) => Event::JobPlanned {
                job: id,
                source: job.record.source.clone(),
                destination: job.record.destination.clone(),
                summary,
            },
            None => Event::JobLoaded {
                job: id,
                source: job.record.source.clone(),
                destination: job.record.destination.clone(),
                state: job.record.state,
                progress: job.progress(),
            },
        };
        self.jobs.insert(id, job);
        announcements.insert(0, After::Emit(event));
        self.persist(writes, announcements);
        self.check_finished(id);
    }
}

/// Records `job` (FAILED, unplanned: its source or destination failed before it could be
/// planned) so
/// `resume` plans it again; returns the ID it is recorded under. A route that already has a
/// planned job keeps it as it is (its objects and progress stand); one still unplanned gets
/// the new error.
pub(super) async fn record_unplanned(
    db: &StateDb,
    job: crate::state::JobRecord,
) -> anyhow::Result<Option<JobId>> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let record = match db.job_for_route(&job.source, &job.destination)? {
            Some(existing) if existing.planned => return Ok(None),
            Some(existing) => crate::state::JobRecord {
                state: job.state,
                error: job.error,
                updated_ms: job.updated_ms,
                ..existing
            },
            None => job,
        };
        let id = record.id;
        db.apply(&[Write::Job(record)])?;
        Ok(Some(id))
    })
    .await?
}

pub(super) async fn load_snapshot(db: &StateDb, id: JobId) -> anyhow::Result<JobSnapshot> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.load_job(id))
        .await??
        .ok_or_else(|| anyhow::anyhow!("job {id} is not in the state file"))
}
