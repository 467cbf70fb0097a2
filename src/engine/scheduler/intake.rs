//! Intake: planning a route and loading a recorded job, on their own tasks, and taking their
//! results in (unplanned destinations recorded so `resume` tries them again).

use super::*;
use crate::state::index::Reopen;

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
            Ready::Watched(id, query, page) => {
                let again = self.watch_reading.remove(&(id, query.clone()));
                let wanted = self
                    .selections
                    .values()
                    .any(|s| s.job == Some(id) && s.objects == query);
                if let (true, Some(page)) = (wanted, page) {
                    self.watched.insert((id, query), page);
                }
                if wanted && again == Some(true) {
                    self.read_watched(id);
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
                let listed = self
                    .db
                    .job_for_route(&source, &destination)
                    .ok()
                    .flatten()
                    .is_some_and(|j| self.listings.contains_key(&j.id));
                if !loaded && !listed && !self.planning.contains_key(&route) {
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
                if let Ends::Plan(route) = ends
                    && let Some(view) = self.planning.remove(&route)
                {
                    self.listings.remove(&view.id);
                }
                // Through the writer, so it never overtakes the route's JobQueued.
                let failed = Event::PlanFailed {
                    source,
                    destination,
                    error,
                };
                self.persist(Vec::new(), vec![After::Emit(failed)]);
            }
            Ready::Job(arrival) => {
                if !matches!(arrival.how, How::Loaded { .. }) {
                    let route = route_key(&arrival.record.source, &arrival.record.destination);
                    self.planning.remove(&route);
                    self.listings.remove(&arrival.record.id);
                }
                self.install(*arrival).await;
            }
            Ready::Page { page, source, sink } => {
                let id = page.job;
                // Only the first page of a listing that was not stopped installs its job; a
                // page arriving after the job ended (cancelled, failed) does nothing.
                let Some(task) = self.listings.get_mut(&id) else {
                    return;
                };
                if task.stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let first = !task.installed;
                task.installed = true;
                if !first {
                    let Some(job) = self.jobs.get_mut(&id) else {
                        return;
                    };
                    // Listing until `Listed` says it is complete (announced before it ends).
                    job.listed(true);
                    let failed = page
                        .failed
                        .iter()
                        .map(|(index, file)| After::Emit(failed_event(id, file, *index)))
                        .collect();
                    self.persist(Vec::new(), failed);
                    return;
                }
                // The first page: the job starts while the rest is listed.
                let record = match self.db.job(id) {
                    Ok(Some(record)) => record,
                    _ => {
                        self.planning.retain(|_, view| view.id != id);
                        return;
                    }
                };
                let route = route_key(&record.source, &record.destination);
                self.planning.remove(&route);
                self.install(Arrival {
                    record,
                    failed: page.failed,
                    source,
                    sink,
                    how: How::Listing,
                })
                .await;
            }
            Ready::Listed { job: id, summary } => {
                self.listings.remove(&id);
                let Some(job) = self.jobs.get_mut(&id) else {
                    return;
                };
                job.listed(false);
                let planned = Event::JobPlanned {
                    job: id,
                    source: job.record.source.clone(),
                    destination: job.record.destination.clone(),
                    summary,
                };
                self.persist(Vec::new(), vec![After::Emit(planned)]);
            }
            Ready::ListingFailed { job: id, error } => {
                self.listings.remove(&id);
                let Some(job) = self.jobs.get_mut(&id) else {
                    return;
                };
                job.listing = false;
                if let Some(error) = error {
                    let mut writes = Vec::new();
                    stop(job, error, &mut writes);
                    self.persist(writes, Vec::new());
                }
                self.check_finished(id);
            }
        }
    }

    /// Takes a planned or loaded job in: recorded RUNNING when it resumes, announced with the
    /// objects that stay failed, and its window filled from the state file.
    pub(super) async fn install(&mut self, arrival: Arrival) {
        let Arrival {
            mut record,
            failed,
            source,
            sink,
            how,
        } = arrival;
        let (unpause, reopen) = match &how {
            How::Loaded { unpause, reopen } => (*unpause, *reopen),
            _ => (false, None),
        };
        let id = record.id;
        self.next_job_id = self.next_job_id.max(id + 1);
        let loaded = matches!(how, How::Loaded { .. });
        if self.jobs.contains_key(&id) && loaded {
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
            // A change of state the other workers of a shared state follow.
            record.updated_ms = now_ms().max(record.updated_ms + 1);
            writes.push(Write::Job(record.clone()));
        }
        let progress = self.db.progress(id).unwrap_or_default();
        let mut job = JobRun::new(record, source, sink, progress);
        let mut after_writes = Vec::new();
        if let Some(rule) = reopen {
            // Through the writer, behind every write already queued; the cursor starts over
            // once it is durable.
            writes.push(Write::ReopenFailed {
                job: id,
                keep: Vec::new(),
                rule,
            });
            job.rewinding += 1;
            after_writes.push(After::Rewind(id));
        }
        // Objects that cannot be copied as things stand are reported with the job, so every
        // summary names every failed object and why.
        let mut announcements: Vec<After> = failed
            .iter()
            .map(|(index, file)| After::Emit(failed_event(id, file, *index)))
            .collect();
        let event = match how {
            How::Planned(summary) => Some(Event::JobPlanned {
                job: id,
                source: job.record.source.clone(),
                destination: job.record.destination.clone(),
                summary,
            }),
            // Announced as planned once the listing is complete.
            How::Listing => {
                job.listing = true;
                None
            }
            How::Loaded { .. } => Some(Event::JobLoaded {
                job: id,
                source: job.record.source.clone(),
                destination: job.record.destination.clone(),
                state: job.record.state,
                progress,
            }),
        };
        self.jobs.insert(id, job);
        // A change recorded while it loaded is followed at the next tick.
        self.settings.changes = None;
        if let Some(event) = event {
            announcements.insert(0, After::Emit(event));
        }
        announcements.extend(after_writes);
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
            // A listing that began and failed: the job says so (its planned objects and
            // the listing's position stand; `resume` lists on).
            Some(existing) if existing.planned && db.listing(existing.id)?.is_some() => {
                crate::state::JobRecord {
                    state: job.state,
                    error: job.error,
                    updated_ms: job.updated_ms,
                    ..existing
                }
            }
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

/// A recorded job read to install (nothing is written here: the scheduler reopens what it
/// reopens through its writer): its record, and the failed objects `reopen` leaves failed
/// (all of them without a rule), to announce.
pub(super) async fn loaded_job(
    db: &StateDb,
    id: JobId,
    reopen: Option<Reopen>,
) -> anyhow::Result<(JobRecord, Vec<(u32, FileRecord)>)> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let record = db
            .job(id)?
            .ok_or_else(|| anyhow::anyhow!("job {id} is not in the state file"))?;
        let mut failed = Vec::new();
        db.each_object_in(id, &[FileState::Failed], &mut |index, file| {
            if !reopen.is_some_and(|rule| rule.admits(&file)) {
                failed.push((index, file));
            }
        })?;
        Ok((record, failed))
    })
    .await?
}
