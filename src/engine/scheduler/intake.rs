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
                record,
                failed,
                summary,
                source,
                sink,
                unpause,
            } => {
                if summary.is_some() {
                    let route = route_key(&record.source, &record.destination);
                    self.planning.remove(&route);
                }
                self.install(record, failed, summary, source, sink, unpause)
                    .await;
            }
        }
    }

    /// Takes a planned or loaded job in: recorded RUNNING when it resumes, announced with the
    /// objects that stay failed, and its window filled from the state file.
    pub(super) async fn install(
        &mut self,
        mut record: JobRecord,
        failed: Vec<(u32, FileRecord)>,
        summary: Option<PlanSummary>,
        source: Arc<dyn ObjectSource>,
        sink: Arc<dyn ObjectSink>,
        unpause: bool,
    ) {
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
        let mut writes = Vec::new();
        let resumes = matches!(record.state, JobState::Failed | JobState::Queued)
            || (unpause && record.state == JobState::Paused);
        if resumes {
            record.state = JobState::Running;
            record.error = None;
            writes.push(Write::Job(record.clone()));
        }
        let progress = self.db.progress(id).unwrap_or_default();
        let job = JobRun::new(record, source, sink, progress);
        // Objects that cannot be copied as things stand are reported with the job, so every
        // summary names every failed object and why.
        let mut announcements: Vec<After> = failed
            .iter()
            .map(|(index, file)| After::Emit(failed_event(id, file, *index)))
            .collect();
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
                progress,
            },
        };
        self.jobs.insert(id, job);
        announcements.insert(0, After::Emit(event));
        self.persist(writes, announcements);
        // Read at once whatever the job's state, so a job with nothing left finishes now.
        self.refill(id);
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

/// A recorded job made ready to install: its failed objects that `reopen` admits are given
/// another chance in the state file, and those that stay failed are returned to announce.
pub(super) async fn loaded_job(
    db: &StateDb,
    id: JobId,
    reopen: Option<crate::state::index::Reopen>,
) -> anyhow::Result<(JobRecord, Vec<(u32, FileRecord)>)> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let record = db
            .job(id)?
            .ok_or_else(|| anyhow::anyhow!("job {id} is not in the state file"))?;
        if let Some(rule) = reopen {
            db.apply(&[Write::ReopenFailed {
                job: id,
                keep: Vec::new(),
                rule,
            }])?;
        }
        const PAGE: usize = 4096;
        let (mut failed, mut after) = (Vec::new(), None);
        loop {
            let page = db.objects_in(id, &[FileState::Failed], after, PAGE)?;
            after = page.last().map(|(i, _)| *i);
            let full = page.len() == PAGE;
            failed.extend(page);
            if !full {
                return Ok((record, failed));
            }
        }
    })
    .await?
}
