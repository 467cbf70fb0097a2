//! Observation: the concurrency controller's ticks, rolling metrics and the snapshots views
//! read.

use super::*;
use crate::engine::control::ChosenConcurrency;

/// How often a running job a view looks at is read again from the state file.
const WATCH_READ_EVERY: Duration = Duration::from_secs(1);

/// How often a worker of a shared state looks at the chunks it lent.
const LENT_READ_EVERY: Duration = Duration::from_millis(500);

/// How often a worker of a shared state looks for jobs other workers planned.
const DISCOVER_EVERY: Duration = Duration::from_secs(2);

impl Scheduler {
    /// Feeds a chunk's outcome to the controller and the metrics.
    pub(super) fn observe(
        &mut self,
        job: JobId,
        latency_ms: u64,
        result: &StoreResult<ChunkMoved>,
    ) {
        let now = Instant::now();
        let (bytes, error) = match result {
            Ok(moved) => {
                self.metrics.chunk_done(now, job, moved.bytes, latency_ms);
                self.moved.report(moved.bytes);
                (moved.bytes, None)
            }
            // Only the stores' health steers the controller, not a changed source or a bad key.
            // Only the stores' health steers the controller: a damaged copy is not a fault.
            Err(e) if e.class.is_retryable() && e.class != ErrorClass::Damaged => {
                (0, Some(e.class))
            }
            Err(_) => return,
        };
        let outcome = Outcome {
            bytes,
            latency: Duration::from_millis(latency_ms),
            error,
        };
        if let Some(change) = self.controller.observe(now, outcome) {
            self.apply_change(change);
        }
    }

    pub(super) fn apply_change(&mut self, change: Change) {
        self.apply_change_recorded(change, true);
    }

    /// [`Scheduler::apply_change`]; an operator's choice is recorded only when `record` (one
    /// followed from another worker is recorded already).
    pub(super) fn apply_change_recorded(&mut self, change: Change, record: bool) {
        self.gate.set_limit(self.capped(change.limit));
        // The operator's choices outlive the process; the controller's own moves do not.
        let mut writes = Vec::new();
        if record && change.decision == crate::engine::control::Decision::Operator {
            let chosen = self.controller.chosen();
            if let Ok(value) = serde_json::to_string(&chosen) {
                writes.push(Write::Setting(ChosenConcurrency::SETTING, value));
            }
        }
        self.metrics.decision(Instant::now(), change.decision);
        tracing::info!(limit = change.limit, "concurrency: {}", change.reason);
        let event = Event::ConcurrencyChanged {
            limit: change.limit,
            adaptive: self.controller.adaptive(),
            decision: change.decision,
            reason: change.reason,
        };
        self.persist(writes, vec![After::Emit(event)]);
    }

    /// Paces at the cap's rate in force now (a timetable moves on by itself); says so when
    /// it changed, or when the operator set the cap (`set`).
    pub(super) fn follow_bwlimit(&mut self, set: bool) {
        let now = Instant::now();
        let rate = self.bwlimit.rate_now();
        if rate == self.pacer.rate() && !set {
            return;
        }
        self.pacer.set_rate(rate, now);
        let shown = rate.map_or("no cap".into(), |r| format!("{}/s", crate::size::human(r)));
        let reason = if set {
            format!(
                "bandwidth cap set to {} by the operator: {shown} now",
                self.bwlimit
            )
        } else {
            format!("bandwidth cap {}: {shown} from now", self.bwlimit)
        };
        tracing::info!("{reason}");
        let event = Event::BwLimitChanged {
            bwlimit: self.bwlimit.text().to_string(),
            rate,
            reason,
        };
        self.persist(Vec::new(), vec![After::Emit(event)]);
        self.publish();
    }

    /// Objects the loaded jobs' windows hold now.
    pub(super) fn objects_held(&self) -> u64 {
        self.jobs.values().map(|j| j.files.len() as u64).sum()
    }

    pub(super) async fn on_tick(&mut self) {
        let now = Instant::now();
        let mut drained = Vec::new();
        for (id, job) in &mut self.jobs {
            if let Ok(progress) = self.db.progress(*id) {
                job.progress = progress;
            }
            if job.drained() {
                drained.push(*id);
            }
        }
        // A job whose end could not be decided (its counters unreadable) is tried again.
        for id in drained {
            self.check_finished(id);
        }
        // A running job a view looks at is read again now and then (its window is fresher
        // and drawn over it).
        let stale: BTreeSet<JobId> = self
            .selections
            .values()
            .filter_map(|s| s.job)
            .filter(|id| self.jobs.contains_key(id))
            .filter(|id| {
                self.watch_reads
                    .get(id)
                    .is_none_or(|at| now.duration_since(*at) >= WATCH_READ_EVERY)
            })
            .collect();
        for id in stale {
            self.read_watched(id);
        }
        // The cap holds chunks back while the gate has room: the limit is not what decides,
        // so nothing judges it (a cap that only trails a full gate holds nothing).
        let capped = self.paced_until.is_some() && self.gate.in_flight() + 1 < self.gate.limit();
        if capped {
            self.controller.hold(now);
        } else if let Some(change) = self.controller.tick(now, self.gate.in_flight()) {
            self.apply_change(change);
        }
        self.follow_bwlimit(false);
        self.follow_fleet(now);
        self.metrics
            .roll(now, self.gate.limit(), self.gate.in_flight());
        self.publish();
    }

    /// Publishes a snapshot now, if anyone reads them (every tick, and right after an
    /// operator's command, so what was asked shows at once).
    pub(super) fn publish(&mut self) {
        if self.snapshots.receiver_count() > 0 {
            let snapshot = self.snapshot(Instant::now());
            self.snapshots.send_replace(Arc::new(snapshot));
        }
    }

    pub(super) fn snapshot(&self, now: Instant) -> Snapshot {
        let (rate, per_job) = self.metrics.rates(now);
        let mut jobs = self.history.clone();
        for view in self.planning.values() {
            jobs.insert(view.id, view.clone());
        }
        for (id, job) in &self.jobs {
            jobs.insert(*id, job.view());
        }
        let jobs = jobs
            .into_values()
            .map(|v| {
                let rate = per_job.get(&v.id).copied().unwrap_or(0.0);
                v.with_rate(rate)
            })
            .collect();
        let mut viewers: BTreeMap<ViewerId, ViewDetails> = self
            .selections
            .iter()
            .map(|(viewer, selection)| (*viewer, self.details(selection)))
            .collect();
        let local = viewers.remove(&LOCAL_VIEWER).unwrap_or_default();
        Snapshot {
            limit: self.gate.limit(),
            adaptive: self.controller.adaptive(),
            bwlimit: self.bwlimit.text().to_string(),
            bw_rate: self.pacer.rate(),
            in_flight: self.gate.in_flight(),
            bytes_in_flight: self.gate.bytes(),
            memory_budget: self.gate.budget(),
            objects_held: self.objects_held(),
            objects_held_peak: self.held_peak,
            rate,
            jobs,
            series: self.metrics.series(),
            job_detail: local.job_detail,
            file_chunks: local.file_chunks,
            chunk_detail: local.chunk_detail,
            workers: self.settings.workers.clone(),
            viewers,
        }
    }

    /// The details `selection` asks for: the page of objects read for it from the state file,
    /// with a loaded job's window drawn over it (fresher); before the first read, the window's
    /// objects that pass the query.
    fn details(&self, selection: &Selection) -> ViewDetails {
        let Some(id) = selection.job else {
            return ViewDetails::default();
        };
        let query = &selection.objects;
        let job = self.jobs.get(&id);
        let page = self.watched.get(&(id, query.clone()));
        if job.is_none() && page.is_none() {
            return ViewDetails::default();
        }
        let mut files: BTreeMap<u32, (&FileRecord, &[crate::state::ChunkRecord])> = page
            .map(|p| {
                p.snapshot
                    .files
                    .iter()
                    .map(|(i, f, c)| (*i, (f, c.as_slice())))
                    .collect()
            })
            .unwrap_or_default();
        for object in job.into_iter().flat_map(|j| j.files.values()) {
            let listed = match page {
                Some(_) => files.contains_key(&object.index),
                None => query.admits(object.index, &object.record),
            };
            if listed {
                files.insert(object.index, (&object.record, object.chunks.as_slice()));
            }
        }
        // Until the page asked for is read, the window's objects that pass the query stand
        // in for it, marked as such: a view does not page on from them.
        let loading = page.is_none();
        let matching = if query.search.is_empty() {
            job.map(|j| j.progress)
                .or_else(|| self.history.get(&id).map(|v| v.progress))
                .or(page.map(|p| p.progress))
                .map(|p| query.filter.count(&p))
        } else {
            None
        };
        snapshot::details(
            id,
            files
                .into_iter()
                .take(snapshot::LISTED_OBJECTS)
                .map(|(i, (f, c))| (i, f, c)),
            selection,
            matching,
            loading,
        )
    }

    /// Reads (again) the pages of a job its views look at, in the background: one read per
    /// distinct query, with the chunks of the objects the views opened.
    pub(super) fn read_watched(&mut self, id: JobId) {
        self.watch_reads.insert(id, Instant::now());
        let mut queries: BTreeMap<ObjectQuery, BTreeSet<u32>> = BTreeMap::new();
        for selection in self.selections.values().filter(|s| s.job == Some(id)) {
            let opened = queries.entry(selection.objects.clone()).or_default();
            opened.extend(selection.file);
        }
        for (query, opened) in queries {
            // One read per page at a time (a search over millions of records takes seconds):
            // asked again meanwhile, it is read once more when it is back.
            match self.watch_reading.get_mut(&(id, query.clone())) {
                Some(again) => {
                    *again = true;
                    continue;
                }
                None => {
                    self.watch_reading.insert((id, query.clone()), false);
                }
            }
            let (db, tx) = (self.db.clone(), self.ready_tx.clone());
            tokio::task::spawn_blocking(move || {
                let page = db.objects_page(
                    id,
                    query.filter.states(),
                    &query.search,
                    query.from,
                    snapshot::LISTED_OBJECTS,
                    Some(&opened),
                );
                let page = match page {
                    Ok(Some(snapshot)) => Some(Watched {
                        snapshot,
                        progress: db.progress(id).unwrap_or_default(),
                    }),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!("cannot read job {id}'s objects for a view: {e}");
                        None
                    }
                };
                let _ = tx.send(Ready::Watched(id, query, page));
            });
        }
    }

    /// Follows what a view looks at (an empty selection forgets the viewer); a job that is
    /// not loaded is read from the state file, and kept while someone looks at it.
    pub(super) fn watch(&mut self, viewer: ViewerId, selection: Selection) {
        let job = selection.job;
        if selection == Selection::default() {
            self.selections.remove(&viewer);
        } else {
            self.selections.insert(viewer, selection);
        }
        let looked_at: BTreeSet<(JobId, ObjectQuery)> = self
            .selections
            .values()
            .filter_map(|s| Some((s.job?, s.objects.clone())))
            .collect();
        self.watched.retain(|key, _| looked_at.contains(key));
        self.watch_reads
            .retain(|id, _| looked_at.iter().any(|(job, _)| job == id));
        // Read for the new selection (the chunks of the object it opened come with it).
        if let Some(id) = job {
            self.read_watched(id);
        }
    }

    /// Reads the summaries of every job in the state file, for views.
    /// With a shared state: reports this worker's activity for its heartbeat and, serving,
    /// loads now and then the running jobs other workers planned, so every worker works on
    /// every job.
    fn follow_fleet(&mut self, now: Instant) {
        let Some(lease) = self.db.lease() else {
            return;
        };
        lease.report(crate::state::lease::Activity {
            in_flight: u64::from(self.gate.in_flight()),
            chunks_moved: self.moved.chunks,
            bytes_moved: self.moved.bytes,
        });
        self.follow_changes(now);
        self.follow_quarantines(now, &lease);
        self.follow_workers(now, &lease);
        self.follow_lent(now);
        let due = self
            .discovered_at
            .is_none_or(|at| now.duration_since(at) >= DISCOVER_EVERY);
        if due && !self.config.exit_when_idle && self.stopping.is_none() && self.loading == 0 {
            self.discovered_at = Some(now);
            self.discover();
        }
    }

    /// Jobs this worker stepped aside from: once nothing of one is in flight here its claims
    /// go back (and the window forgets them); once its time is up it is tried again. The
    /// lease says why, for `blobway workers`.
    fn follow_quarantines(&mut self, now: Instant, lease: &crate::state::lease::Lease) {
        let mut writes = Vec::new();
        let mut after = Vec::new();
        let mut reasons = Vec::new();
        for (id, job) in &mut self.jobs {
            let Some(quarantine) = &mut job.quarantine else {
                continue;
            };
            use crate::engine::model::Stage;
            if quarantine.stage == Stage::Draining && job.in_flight == 0 {
                // Its last writes go first, then the give-back; the job is read again only
                // once that is durable (the window's invariant holds).
                quarantine.stage = Stage::LettingGo;
                writes.push(Write::LetGo(*id));
                after.push(After::LetGoDurable(*id));
                job.forget_claims();
            } else if matches!(quarantine.stage, Stage::Away(until) if now >= until) {
                job.quarantine = None;
                let message = format!("this worker tries job {id} again");
                tracing::info!("{message}");
                after.push(After::Emit(Event::Notice { message }));
                continue;
            }
            if let Some(q) = &job.quarantine {
                reasons.push(format!("job {id}: {}", q.reason));
            }
        }
        lease.quarantine((!reasons.is_empty()).then(|| reasons.join("; ")));
        if !writes.is_empty() || !after.is_empty() {
            self.persist(writes, after);
        }
    }

    /// With a shared state, every [`LENT_READ_EVERY`]: learns how the chunks this worker lent
    /// stand (moved ones count as acknowledged, given-back ones are sent here), and takes
    /// back as many as slots are free of those nobody borrowed, for an object with nothing
    /// else ready.
    fn follow_lent(&mut self, now: Instant) {
        if self
            .lent_read_at
            .is_some_and(|at| now.duration_since(at) < LENT_READ_EVERY)
        {
            return;
        }
        self.lent_read_at = Some(now);
        let mut free = self.gate.limit().saturating_sub(self.gate.in_flight()) as usize;
        let mut asks = Vec::new();
        for (id, job) in self.jobs.iter().filter(|(_, j)| j.quarantine.is_none()) {
            for (file, object) in &job.files {
                // Read once the lending is recorded (before, every chunk would seem back).
                if object.lent.is_empty() || object.lend_pending || !object.active() {
                    continue;
                }
                let take_back = if object.ready.is_empty() {
                    let take = free.min(object.lent.len());
                    free -= take;
                    take
                } else {
                    0
                };
                let chunks: Vec<u32> = object.lent.iter().copied().collect();
                asks.push((*id, *file, chunks, take_back));
            }
        }
        for (id, file, chunks, take_back) in asks {
            let answers = match self.db.lent(id, file, &chunks, take_back) {
                Ok(answers) => answers,
                Err(e) => {
                    tracing::warn!("cannot read the chunks job {id} lent: {e}");
                    return;
                }
            };
            let Some(object) = self.jobs.get_mut(&id).and_then(|j| j.files.get_mut(&file)) else {
                continue;
            };
            let step = object.on_lent(answers);
            self.apply(id, file, step, false);
        }
    }

    /// With a shared state, when another worker's change is heard, and each tick: once the
    /// state's count of changes moved, the jobs' states and the settings are read and
    /// followed (the count, one row, is what each tick reads: it works through any pooler,
    /// and nothing is missed while the listening connection is re-made).
    pub(super) fn follow_changes(&mut self, now: Instant) {
        let count = match self.db.changes() {
            Ok(count) => count,
            Err(e) => {
                tracing::warn!("cannot read the shared state's changes: {e}");
                return;
            }
        };
        // A blobway older than the count changes jobs without moving it: read anyway now and
        // then.
        let stale = self
            .settings
            .followed_at
            .is_none_or(|at| now.duration_since(at) >= fleet::FOLLOW_ANYWAY);
        if !stale && count.is_some() && count == self.settings.changes {
            return;
        }
        if self.follow_job_states() && self.follow_settings(now) {
            self.settings.changes = count;
            self.settings.followed_at = Some(now);
        }
    }

    /// A job another worker paused, resumed or cancelled is paused, resumed or cancelled here
    /// too. False when the jobs could not be read.
    fn follow_job_states(&mut self) -> bool {
        let recorded = match self.db.jobs() {
            Ok(recorded) => recorded,
            Err(e) => {
                tracing::warn!("cannot read the jobs of the shared state: {e}");
                return false;
            }
        };
        for record in recorded {
            // Only a change newer than this worker's own last one (which may not be durable
            // yet) is followed.
            let Some(job) = self
                .jobs
                .get(&record.id)
                .filter(|job| record.updated_ms > job.record.updated_ms)
            else {
                continue;
            };
            match (record.state, job.record.state) {
                (JobState::Paused, JobState::Running) => {
                    self.pause_or_follow(Some(record.id), true, false)
                }
                (JobState::Running, JobState::Paused) => {
                    self.pause_or_follow(Some(record.id), false, false)
                }
                (JobState::Cancelled, local) if !local.is_finished() => {
                    self.on_command(Command::Cancel(record.id))
                }
                // Stopped by another worker (no worker could go on with it): it ends here too,
                // once what is in flight is back.
                (JobState::Failed, local) if !local.is_finished() => {
                    if let Some(job) = self.jobs.get_mut(&record.id) {
                        job.record.state = JobState::Failed;
                        job.record.error = record.error.clone();
                        job.quarantine = None;
                        job.followed_end = true;
                        job.clear_queue();
                    }
                    self.check_finished(record.id);
                }
                _ => continue,
            }
            if let Some(job) = self.jobs.get_mut(&record.id) {
                job.record.updated_ms = record.updated_ms;
            }
        }
        true
    }

    pub(super) fn read_history(&self) {
        let (db, tx) = (self.db.clone(), self.ready_tx.clone());
        tokio::task::spawn_blocking(move || {
            let Ok(jobs) = db.jobs() else { return };
            let views = jobs
                .into_iter()
                .map(|job| {
                    let progress = db.progress(job.id).unwrap_or_default();
                    JobView::recorded(job, progress)
                })
                .collect();
            let _ = tx.send(Ready::History(views));
        });
    }
}
