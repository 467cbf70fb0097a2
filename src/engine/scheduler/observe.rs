//! Observation: the concurrency controller's ticks, rolling metrics and the snapshots views
//! read.

use super::*;

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
                (moved.bytes, None)
            }
            // Only the stores' health steers the controller, not a changed source or a bad key.
            Err(e) if e.class.is_retryable() => (0, Some(e.class)),
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
        self.gate.set_limit(change.limit);
        self.metrics.decision(Instant::now(), change.decision);
        tracing::info!(limit = change.limit, "concurrency: {}", change.reason);
        let event = Event::ConcurrencyChanged {
            limit: change.limit,
            adaptive: self.controller.adaptive(),
            decision: change.decision,
            reason: change.reason,
        };
        self.persist(Vec::new(), vec![After::Emit(event)]);
    }

    pub(super) async fn on_tick(&mut self) {
        let now = Instant::now();
        if let Some(change) = self.controller.tick(now, self.gate.in_flight()) {
            self.apply_change(change);
        }
        self.metrics
            .roll(now, self.gate.limit(), self.gate.in_flight());
        if self.snapshots.receiver_count() > 0 {
            let snapshot = self.snapshot(now);
            self.snapshots.send_replace(Arc::new(snapshot));
        }
    }

    pub(super) fn snapshot(&self, now: Instant) -> Snapshot {
        let (rate, per_job) = self.metrics.rates(now);
        let mut jobs = self.history.clone();
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
        let selection = self.selection;
        let (job_detail, file_chunks, chunk_detail) = match selection.job {
            Some(id) => match (self.jobs.get(&id), &self.watched) {
                (Some(job), _) => snapshot::details(
                    id,
                    job.files
                        .iter()
                        .map(|f| (f.index, &f.record, f.chunks.as_slice())),
                    selection,
                ),
                (None, Some(watched)) if watched.job.id == id => snapshot::details(
                    id,
                    watched.files.iter().map(|(i, f, c)| (*i, f, c.as_slice())),
                    selection,
                ),
                _ => (None, None, None),
            },
            None => (None, None, None),
        };
        Snapshot {
            limit: self.gate.limit(),
            adaptive: self.controller.adaptive(),
            in_flight: self.gate.in_flight(),
            bytes_in_flight: self.gate.bytes(),
            memory_budget: self.gate.budget(),
            rate,
            jobs,
            series: self.metrics.series(),
            job_detail,
            file_chunks,
            chunk_detail,
        }
    }

    /// Follows what a view looks at; a job that is not loaded is read from the state file.
    pub(super) fn watch(&mut self, selection: Selection) {
        self.selection = selection;
        let Some(id) = selection.job else { return };
        let cached = self.watched.as_ref().is_some_and(|w| w.job.id == id);
        if self.jobs.contains_key(&id) || cached {
            return;
        }
        let (db, tx) = (self.db.clone(), self.ready_tx.clone());
        tokio::spawn(async move {
            if let Ok(snapshot) = load_snapshot(&db, id).await {
                let _ = tx.send(Ready::Watched(snapshot));
            }
        });
    }

    /// Reads the summaries of every job in the state file, for views.
    pub(super) fn read_history(&self) {
        let (db, tx) = (self.db.clone(), self.ready_tx.clone());
        tokio::task::spawn_blocking(move || {
            let Ok(jobs) = db.jobs() else { return };
            let views = jobs
                .into_iter()
                .map(|job| JobView {
                    progress: db.progress(job.id).unwrap_or_default(),
                    id: job.id,
                    source: job.source,
                    destination: job.destination,
                    state: job.state,
                    rate: 0.0,
                    eta_secs: None,
                    error: job.error,
                })
                .collect();
            let _ = tx.send(Ready::History(views));
        });
    }
}
