//! Operator commands: enqueue, load, pause, resume, cancel, retry, concurrency and shutdown
//! — each a change of the scheduler's own state, recorded before it is announced.

use super::*;
use crate::state::index::Reopen;
use std::sync::atomic::{AtomicBool, Ordering};

impl Scheduler {
    pub(super) fn on_command(&mut self, command: Command) {
        if matches!(
            command,
            Command::Enqueue { .. } | Command::Load { .. } | Command::Cancel(_)
        ) {
            self.asked = true;
        }
        match command {
            Command::Enqueue {
                source,
                destination,
                options,
            } => self.enqueue(source, destination, options),
            Command::Load {
                job,
                include_paused,
            } => self.load(job, include_paused, Reopen::OnLoad),
            Command::Pause(job) => self.set_paused(job, true),
            Command::Resume(job) => self.set_paused(job, false),
            Command::SetConcurrency(limit) => {
                let change = self.controller.set_manual(limit);
                self.apply_change(change);
            }
            Command::StepConcurrency(step) => {
                let limit = i64::from(self.controller.limit()) + i64::from(step);
                let limit = u32::try_from(limit.max(1)).unwrap_or(u32::MAX);
                let change = self.controller.set_manual(limit);
                self.apply_change(change);
            }
            Command::SetAdaptive(adaptive) => {
                self.controller.set_adaptive(adaptive, Instant::now());
                let limit = self.controller.limit();
                let mode = if adaptive { "adaptive" } else { "manual" };
                self.apply_change(Change {
                    limit,
                    decision: crate::engine::control::Decision::Operator,
                    reason: format!("switched to {mode} by the operator at {limit}"),
                });
            }
            Command::SetBwLimit(bwlimit) => {
                let value = bwlimit.text().to_string();
                self.bwlimit = bwlimit;
                self.persist(vec![Write::Setting(BwLimit::SETTING, value)], Vec::new());
                self.follow_bwlimit(true);
            }
            Command::Watch { viewer, selection } => self.watch(viewer, selection),
            Command::Browse {
                request,
                location,
                token,
            } => crate::engine::browse::spawn(
                self.stores.clone(),
                self.events.clone(),
                request,
                location,
                token,
            ),
            Command::RetryFailed(id) => self.retry_failed(id),
            Command::Cancel(id) => {
                // A listing under way stops at its next page, loaded job or not.
                if let Some(listing) = self.listings.get(&id) {
                    listing.stop();
                }
                if let Some(job) = self.jobs.get_mut(&id)
                    && !job.record.state.is_finished()
                {
                    job.record.state = JobState::Cancelled;
                    job.record.updated_ms = now_ms();
                    job.clear_queue();
                    job.listing = false;
                    let record = job.record.clone();
                    let uploads: Vec<(String, String)> = job
                        .files
                        .values()
                        .filter_map(|f| f.record.open_upload())
                        .collect();
                    let held: BTreeSet<u32> = job.files.keys().copied().collect();
                    let mut after = vec![After::Emit(Event::JobStateChanged {
                        job: id,
                        state: JobState::Cancelled,
                    })];
                    // Given up once the cancellation is durable: a crash before it resumes
                    // the job with its sessions intact. The window's objects as held; the
                    // others' sessions as the state file records them.
                    if !uploads.is_empty() {
                        after.push(After::Abort(job.sink.clone(), uploads));
                    }
                    after.push(After::AbortRecorded(job.sink.clone(), id, held));
                    self.persist(vec![Write::Job(record)], after);
                    self.check_finished(id);
                } else if !self.jobs.contains_key(&id) {
                    self.cancel_unloaded(id);
                }
            }
            Command::Shutdown => {
                self.stopping = Some(Instant::now());
                // Listings stop at their next page; their positions are recorded.
                for listing in self.listings.values() {
                    listing.stop();
                }
            }
        }
    }

    pub(super) fn enqueue(
        &mut self,
        source: String,
        destination: String,
        options: crate::state::JobOptions,
    ) {
        if self.loading > 0 {
            self.deferred.push(Command::Enqueue {
                source,
                destination,
                options,
            });
            return;
        }
        let (src, dst) = match parse_route(&source, &destination) {
            Ok(route) => route,
            Err(e) => {
                let _ = self.ready_tx.send(Ready::Failed {
                    source,
                    destination,
                    error: e.to_string(),
                    ends: Ends::Nothing,
                });
                return;
            }
        };
        let route = route_key(&src.to_string(), &dst.to_string());
        let loaded = self
            .jobs
            .values()
            .any(|j| route_key(&j.record.source, &j.record.destination) == route);
        // A job's planning task may outlive its loading (a cancelled job's listing stops at
        // its next page): one at a time.
        let existing = self
            .db
            .job_for_route(&src.to_string(), &dst.to_string())
            .ok()
            .flatten();
        let listed = existing
            .as_ref()
            .is_some_and(|e| self.listings.contains_key(&e.id));
        if loaded || listed || self.planning.contains_key(&route) {
            // Named as recorded, so a caller can tell which of its routes this is.
            let _ = self.ready_tx.send(Ready::Failed {
                source: src.to_string(),
                destination: dst.to_string(),
                error: "a job for this route is already being planned or running; pause or \
                        cancel it first"
                    .into(),
                ends: Ends::Nothing,
            });
            return;
        }
        // A route that has a job keeps its ID (planning resumes it). A new one's ID is taken
        // from a shared state, so two workers asked at once never give the same.
        let (src_text, dst_text) = (src.to_string(), dst.to_string());
        let job = match existing.as_ref() {
            Some(existing) => existing.id,
            None if self.shared => match self.db.take_job_id() {
                Ok(id) => id,
                Err(e) => {
                    let _ = self.ready_tx.send(Ready::Failed {
                        source: src_text,
                        destination: dst_text,
                        error: format!("no job ID could be taken: {e}"),
                        ends: Ends::Nothing,
                    });
                    return;
                }
            },
            None => {
                self.next_job_id += 1;
                self.next_job_id - 1
            }
        };
        let new_job_id = job;
        // A new route is recorded (QUEUED, unplanned) before its ID is announced, so the ID
        // a caller was given survives a crash or stop during a long listing: the next start
        // plans it again. Recorded by the planning task itself, before it plans, so the
        // record can never land after the plan's own.
        let mut first_record = None;
        if existing.is_none() {
            let now = now_ms();
            first_record = Some(crate::state::JobRecord {
                id: new_job_id,
                source: src_text.clone(),
                destination: dst_text.clone(),
                options: options.clone(),
                state: JobState::Queued,
                created_ms: now,
                updated_ms: now,
                error: None,
                planned: false,
            });
        }
        // Shown QUEUED while it is planned.
        self.planning.insert(
            route.clone(),
            JobView {
                id: job,
                source: src_text.clone(),
                destination: dst_text.clone(),
                state: JobState::Queued,
                progress: Default::default(),
                rate: 0.0,
                eta_secs: None,
                error: None,
                carried: Default::default(),
                in_flight: 0,
            },
        );
        let queued = Event::JobQueued {
            job,
            source: src_text,
            destination: dst_text,
        };
        let (db, stores, tx) = (self.db.clone(), self.stores.clone(), self.ready_tx.clone());
        let max_memory = self.config.max_memory;
        let retry = options.retry_or(self.config.retry);
        let stopped = Arc::new(AtomicBool::new(false));
        self.listings.insert(
            job,
            ListingTask {
                stop: stopped.clone(),
                installed: false,
            },
        );
        self.background.spawn(async move {
            if let Some(record) = first_record {
                let db = db.clone();
                // Its listing is recorded as starting with it, this engine's: another worker
                // of a shared state that finds the job before its first page leaves it to
                // this one (`Backend::take_listing`) instead of planning it too.
                let listing = crate::state::index::Listing {
                    after: None,
                    fresh: true,
                    summary: serde_json::Value::Null,
                };
                let writes = [Write::Job(record), Write::Listing(job, Some(listing))];
                let recorded = tokio::task::spawn_blocking(move || db.apply(&writes)).await;
                let failure = match recorded {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(format!("recording the job failed: {e}")),
                };
                if let Some(error) = failure {
                    let _ = tx.send(Ready::Failed {
                        source,
                        destination,
                        error,
                        ends: Ends::Plan(route),
                    });
                    return;
                }
            }
            // Announced once recorded, before anything planning reports.
            let _ = tx.send(Ready::Queued(queued));
            let recorded_options = options.clone();
            // Set once a page of a new job was handed over: the job runs while it is listed.
            let installed = Arc::new(AtomicBool::new(false));
            let result = async {
                let source_store = stores.source(&src, &options.source_access).await?;
                let sink = stores.sink(&dst, &options.dest_access).await?;
                let request = PlanRequest {
                    new_job_id,
                    source: &src,
                    destination: &dst,
                    options,
                    max_memory,
                    retry,
                    dry_run: false,
                };
                let mut on_page = |page: plan::PagePlanned| {
                    if stopped.load(Ordering::Relaxed) {
                        return false;
                    }
                    if page.fresh {
                        installed.store(true, Ordering::Relaxed);
                        let _ = tx.send(Ready::Page {
                            page,
                            source: source_store.clone(),
                            sink: sink.clone(),
                        });
                    }
                    true
                };
                let plan = plan::plan_job_paged(
                    Some(&db),
                    request,
                    source_store.as_ref(),
                    sink.as_ref(),
                    &mut on_page,
                )
                .await?;
                if installed.load(Ordering::Relaxed) {
                    return Ok(Ready::Listed {
                        job: plan.job.id,
                        summary: plan.summary,
                    });
                }
                let (record, failed) = loaded_job(&db, plan.job.id, None).await?;
                Ok::<_, plan::PlanError>(Ready::Job(Box::new(Arrival {
                    record,
                    failed,
                    source: source_store,
                    sink,
                    how: How::Planned(plan.summary),
                })))
            }
            .await;
            let ready = match result {
                Ok(ready) => ready,
                // The job runs already: it stops with the reason (its listing's position
                // stands, so `resume` lists on from there).
                Err(e) if installed.load(Ordering::Relaxed) => Ready::ListingFailed {
                    job,
                    error: match e {
                        plan::PlanError::Stopped => None,
                        e => Some(redact(&e.to_string())),
                    },
                },
                Err(e) => {
                    let mut error = redact(&e.to_string());
                    match e {
                        // A store that failed is worth another try: kept, FAILED.
                        plan::PlanError::Destination(_) | plan::PlanError::Source(_) => {
                            let now = now_ms();
                            let job = crate::state::JobRecord {
                                id: new_job_id,
                                source: src.to_string(),
                                destination: dst.to_string(),
                                options: recorded_options,
                                state: JobState::Failed,
                                created_ms: now,
                                updated_ms: now,
                                error: Some(error.clone()),
                                planned: false,
                            };
                            match record_unplanned(&db, job).await {
                                Ok(Some(id)) => error.push_str(&format!(
                                    " (recorded as job {id}: `blobway resume` tries again)"
                                )),
                                Ok(None) => {}
                                Err(e) => tracing::warn!("cannot record the failed plan: {e:#}"),
                            }
                        }
                        // Options or access that cannot work (a wrong profile, a filter that
                        // does not parse) are the caller's to fix: the route's record, if it
                        // was never planned (queued now, or before a crash), is forgotten.
                        _ => {
                            let forget = [Write::RemoveUnplannedJob(job)];
                            let db = db.clone();
                            let forgotten =
                                tokio::task::spawn_blocking(move || db.apply(&forget)).await;
                            if !matches!(forgotten, Ok(Ok(()))) {
                                tracing::warn!("cannot forget the refused job {job}");
                            }
                        }
                    }
                    Ready::Failed {
                        source,
                        destination,
                        error,
                        ends: Ends::Plan(route),
                    }
                }
            };
            let _ = tx.send(ready);
        });
    }

    /// Loads recorded jobs (`only` one, or every unfinished one), their failed objects that
    /// `reopen` admits given another chance.
    pub(super) fn load(&mut self, only: Option<JobId>, include_paused: bool, reopen: Reopen) {
        self.load_jobs(only, include_paused, Some(reopen));
    }

    /// Loads the jobs other workers of a shared state run and this one does not: running and
    /// listed whole (a listing under way is its planner's), nothing reopened.
    pub(super) fn discover(&mut self) {
        self.load_jobs(None, false, None);
    }

    /// [`Scheduler::load`], or [`Scheduler::discover`] when `reopen` is `None`.
    fn load_jobs(&mut self, only: Option<JobId>, include_paused: bool, reopen: Option<Reopen>) {
        if let Some(id) = only
            && self.unloading.contains(&id)
        {
            // Its end is not durable yet: loaded once it is, so nothing is read stale.
            if let Some(reopen) = reopen {
                self.reload_after_unload.insert(id, reopen);
            }
            return;
        }
        let loaded: Vec<JobId> = self
            .jobs
            .keys()
            .chain(self.unloading.iter())
            .copied()
            .collect();
        let planning: BTreeSet<String> = self.planning.keys().cloned().collect();
        let (db, stores, tx) = (self.db.clone(), self.stores.clone(), self.ready_tx.clone());
        let refused = self.discovery_refused.clone();
        self.loading += 1;
        self.background.spawn(async move {
            let jobs = match db.jobs() {
                Ok(jobs) => jobs,
                Err(e) => {
                    let _ = tx.send(Ready::Failed {
                        source: String::new(),
                        destination: String::new(),
                        error: e.to_string(),
                        ends: Ends::Nothing,
                    });
                    let _ = tx.send(Ready::LoaderDone);
                    return;
                }
            };
            for job in jobs {
                let named = only == Some(job.id);
                let wanted = match job.state {
                    JobState::Done | JobState::Cancelled => named,
                    JobState::Paused => named || include_paused,
                    JobState::Queued | JobState::Running | JobState::Failed => true,
                };
                let being_planned = planning.contains(&route_key(&job.source, &job.destination));
                let discovering = reopen.is_none();
                if (only.is_some() && !named)
                    || !wanted
                    || (discovering && job.state != JobState::Running)
                    || loaded.contains(&job.id)
                    || being_planned
                {
                    continue;
                }
                // Never planned (its destination failed), or stopped while it was listed:
                // planned again, its listing going on from where it stood.
                // A listing another live worker goes on with is left to it; one whose worker
                // is gone is taken over (discovery included), by one worker only.
                let listing = matches!(db.listing(job.id), Ok(Some(_)));
                if (discovering && !job.planned)
                    || (listing && !db.take_listing(job.id).unwrap_or(false))
                {
                    continue;
                }
                if !job.planned || listing {
                    let _ = tx.send(Ready::Replan {
                        source: job.source.clone(),
                        destination: job.destination.clone(),
                        options: job.options.clone(),
                    });
                    continue;
                }
                let result = async {
                    let (src, dst) = parse_route(&job.source, &job.destination)?;
                    let source = stores.source(&src, &job.options.source_access).await?;
                    let sink = stores.sink(&dst, &job.options.dest_access).await?;
                    if let Some(why) = crate::state::sealed::refusal(&db, sink.bearer_sessions()) {
                        anyhow::bail!(why);
                    }
                    let (record, failed) = loaded_job(&db, job.id, reopen).await?;
                    anyhow::Ok(Ready::Job(Box::new(Arrival {
                        record,
                        failed,
                        source,
                        sink,
                        how: How::Loaded {
                            unpause: named,
                            reopen,
                        },
                    })))
                }
                .await;
                // A job discovery cannot open here (this worker's credentials) is said once,
                // not at every look.
                if result.is_err()
                    && discovering
                    && !refused
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(job.id)
                {
                    continue;
                }
                let _ = tx.send(result.unwrap_or_else(|e| Ready::Failed {
                    source: job.source.clone(),
                    destination: job.destination.clone(),
                    error: redact(&format!("{e:#}")),
                    ends: Ends::Nothing,
                }));
            }
            let _ = tx.send(Ready::LoaderDone);
        });
    }

    /// Cancels a job that is not loaded (ended, failed, or left by an earlier run): gives up
    /// its objects' upload sessions at the destination, then records it CANCELLED.
    pub(super) fn cancel_unloaded(&mut self, id: JobId) {
        let (db, stores, tx) = (self.db.clone(), self.stores.clone(), self.ready_tx.clone());
        self.background.spawn(async move {
            let result = async {
                let reader = db.clone();
                let (mut job, uploads) = tokio::task::spawn_blocking(move || {
                    let job = reader
                        .job(id)?
                        .ok_or_else(|| anyhow::anyhow!("job {id} is not in the state file"))?;
                    anyhow::Ok((job, reader.open_uploads(id)?))
                })
                .await??;
                if job.state == JobState::Done {
                    return anyhow::Ok(false);
                }
                let ended = job.state == JobState::Cancelled;
                if !uploads.is_empty() {
                    let (_, dst) = parse_route(&job.source, &job.destination)?;
                    let sink = stores.sink(&dst, &job.options.dest_access).await?;
                    // Nothing recorded precedes these aborts: the database fences them first.
                    let asked = db.clone();
                    tokio::task::spawn_blocking(move || asked.confirm_lease()).await??;
                    transfer::give_up_uploads(sink.as_ref(), uploads, db.lease().as_deref()).await;
                }
                // Cancelled already (a crash may have come before its sessions were given
                // up, so they were given up again above): nothing more to record.
                if ended {
                    return Ok(false);
                }
                job.state = JobState::Cancelled;
                job.updated_ms = now_ms();
                let db = db.clone();
                tokio::task::spawn_blocking(move || db.apply(&[Write::Job(job)])).await??;
                Ok(true)
            }
            .await;
            let _ = tx.send(Ready::Cancelled {
                job: id,
                result: result.map_err(|e| redact(&format!("{e:#}"))),
            });
        });
    }

    pub(super) fn set_paused(&mut self, only: Option<JobId>, paused: bool) {
        self.pause_or_follow(only, paused, true);
    }

    /// Pauses or resumes jobs (`only` one, or all); `record`: the change is the operator's and
    /// is written, else it follows what another worker of a shared state recorded (writing it
    /// again could undo a newer change of the operator's there).
    pub(super) fn pause_or_follow(&mut self, only: Option<JobId>, paused: bool, record: bool) {
        let ids: Vec<JobId> = self
            .jobs
            .keys()
            .copied()
            .filter(|id| only.is_none_or(|o| o == *id))
            .collect();
        for id in ids {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            let state = match (paused, job.record.state) {
                (true, JobState::Running | JobState::Queued) => JobState::Paused,
                (false, JobState::Paused) => JobState::Running,
                _ => continue,
            };
            job.record.state = state;
            // Later than what it replaces even on a clock behind the last writer's, so the
            // other workers of a shared state follow it.
            job.record.updated_ms = now_ms().max(job.record.updated_ms + 1);
            job.enqueue_all();
            let writes = if record {
                vec![Write::Job(job.record.clone())]
            } else {
                Vec::new()
            };
            self.persist(
                writes,
                vec![After::Emit(Event::JobStateChanged { job: id, state })],
            );
            self.check_finished(id);
        }
    }

    pub(super) fn retry_failed(&mut self, id: JobId) {
        let Some(job) = self.jobs.get_mut(&id) else {
            // A finished job is no longer loaded: loading it gives its failed objects another
            // chance.
            self.load(Some(id), true, Reopen::Retry);
            return;
        };
        let mut writes = Vec::new();
        for object in job.files.values_mut() {
            if !Reopen::Retry.admits(&object.record) {
                continue;
            }
            if object.in_flight > 0 {
                // Still finishing chunks of its failed round: reopening it under them would
                // send them twice, so it is reopened once they are back.
                object.reopen_when_back = true;
                continue;
            }
            writes.extend(object.reopen());
        }
        // The failed objects the window does not hold are reopened in the state file; the
        // cursor starts over once that is durable.
        writes.push(Write::ReopenFailed {
            job: id,
            keep: job.files.keys().copied().collect(),
            rule: Reopen::Retry,
        });
        job.rewinding += 1;
        // A job stopped by a fatal error emptied its queue: every object with work goes back.
        job.enqueue_all();
        if job.record.state == JobState::Failed {
            job.record.state = JobState::Running;
            job.record.error = None;
            job.record.updated_ms = now_ms().max(job.record.updated_ms + 1);
        }
        writes.push(Write::Job(job.record.clone()));
        self.persist(writes, vec![After::Rewind(id)]);
    }
}

/// Stops a job after a fatal error (credentials, permissions, full disk): nothing new starts,
/// work in flight finishes, and the job is recorded FAILED with the reason.
pub(super) fn stop(job: &mut JobRun, reason: String, writes: &mut Vec<Write>) {
    if job.record.state == JobState::Failed {
        return;
    }
    job.record.state = JobState::Failed;
    job.record.error = Some(reason);
    // Later than any change recorded before, whatever this machine's clock says: the other
    // workers follow it.
    job.record.updated_ms = now_ms().max(job.record.updated_ms + 1);
    job.clear_queue();
    writes.push(Write::Job(job.record.clone()));
}

/// One string per route, to recognise a route however it was written.
pub(super) fn route_key(source: &str, destination: &str) -> String {
    format!("{source}\n{destination}")
}
