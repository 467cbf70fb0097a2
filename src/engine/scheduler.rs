//! The scheduler task: the single owner of the loaded jobs, their in-memory chunk states and the
//! gate. It claims work, hands each claim to the state writer, starts the work only once the
//! claim is durable, and records each outcome the same way before announcing it. Planning,
//! loading and the data plane run on their own tasks and report back by message; nothing here
//! waits on the network.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::buffers::BufferPool;
use super::control::{Change, Controller, Outcome};
use super::gate::Gate;
use super::metrics::Metrics;
use super::model::{Begin, FileRun, JobRun};
use super::plan::{self, PlanRequest, PlanSummary};
use super::snapshot::{self, JobView, Selection, Snapshot};
use super::transfer::{
    self, BeginWork, Begun, ChunkMoved, ChunkWork, CommitOutcome, CommitWork, Target,
};
use super::{Command, EngineConfig, Event, StoreFactory};
use crate::location::parse_route;
use crate::redact::redact;
use crate::state::writer::{self, Committed, WriteRequest};
use crate::state::{
    AttemptRecord, ChunkState, ErrorRecord, FileRecord, FileState, JobId, JobSnapshot, JobState,
    StateDb, Write, now_ms,
};
use crate::store::rules::IfExists;
use crate::store::{
    ErrorClass, ObjectMeta, ObjectSink, ObjectSource, StoreError, StoreResult, meta_keys,
};

/// How long a shutdown waits for work in flight before leaving it to the next start.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How often the controller is consulted and a snapshot is published.
const TICK: Duration = Duration::from_millis(200);

/// What to do once a batch of writes is durable.
enum After {
    Emit(Event),
    StartChunk(Box<ChunkTask>),
    StartCommit(Box<CommitTask>),
    StartBegin(Box<BeginTask>),
}

struct ChunkTask {
    job: JobId,
    pos: usize,
    chunk: u32,
    reserved: u64,
    work: ChunkWork,
}

struct CommitTask {
    job: JobId,
    pos: usize,
    work: CommitWork,
}

struct BeginTask {
    job: JobId,
    pos: usize,
    work: BeginWork,
}

/// A finished unit of work.
enum Finished {
    Chunk {
        job: JobId,
        pos: usize,
        chunk: u32,
        reserved: u64,
        started_ms: i64,
        latency_ms: u64,
        result: StoreResult<ChunkMoved>,
    },
    Commit {
        job: JobId,
        pos: usize,
        result: StoreResult<CommitOutcome>,
    },
    Begin {
        job: JobId,
        pos: usize,
        result: StoreResult<Begun>,
    },
}

/// A job ready to run, from planning or loading.
enum Ready {
    Job {
        snapshot: JobSnapshot,
        summary: Option<PlanSummary>,
        source: Arc<dyn ObjectSource>,
        sink: Arc<dyn ObjectSink>,
        /// The operator named this paused job to resume it.
        unpause: bool,
    },
    Failed {
        source: String,
        destination: String,
        error: String,
        /// How this failure ends background work.
        ends: Ends,
    },
    /// The loader went through every job.
    LoaderDone,
    /// Summaries of the jobs in the state file, read at start.
    History(Vec<JobView>),
    /// A job that is not loaded, read for the view that selected it.
    Watched(JobSnapshot),
    /// The uploads of a cancelled job were given up.
    Aborted,
    /// A job that was not loaded was cancelled (`Ok(false)`: it had ended already).
    Cancelled {
        job: JobId,
        result: Result<bool, String>,
    },
    /// A recorded job that was never planned (its destination failed): plan it now.
    Replan {
        source: String,
        destination: String,
        options: crate::state::JobOptions,
    },
}

/// What a timer wakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Wake {
    Chunk(u32),
    Commit,
    Begin,
}

/// A retry waiting for its time: when, which job, which object (position and generation).
type Timer = (Instant, JobId, usize, u64, Wake);

/// What a failed plan or load ends.
#[derive(Debug)]
enum Ends {
    /// A planning task for this route.
    Plan(String),
    /// A route refused before any task started.
    Refusal,
    /// Nothing: the loader goes on.
    Nothing,
}

struct Scheduler {
    db: StateDb,
    config: EngineConfig,
    stores: Arc<dyn StoreFactory>,
    events: mpsc::Sender<Event>,
    writes: Option<mpsc::UnboundedSender<WriteRequest<Vec<After>>>>,
    unacknowledged: usize,
    finished_tx: mpsc::UnboundedSender<Finished>,
    ready_tx: mpsc::UnboundedSender<Ready>,
    background: usize,
    jobs: BTreeMap<JobId, JobRun>,
    timers: BinaryHeap<Reverse<Timer>>,
    gate: Gate,
    next_job_id: JobId,
    stopping: Option<Instant>,
    controller: Controller,
    metrics: Metrics,
    snapshots: watch::Sender<Arc<Snapshot>>,
    selection: Selection,
    watched: Option<JobSnapshot>,
    history: BTreeMap<JobId, JobView>,
    /// Set once a job was asked for: an idle engine exits (headless) only after that.
    asked: bool,
    /// Routes being planned right now.
    planning: BTreeSet<String>,
    /// Loaders running; planning waits for them, so a job is never planned and loaded at once.
    loading: usize,
    /// Enqueue commands waiting for the loaders.
    deferred: Vec<Command>,
    /// Chunk buffers, reused.
    buffers: Arc<BufferPool>,
}

/// Runs the scheduler until it is idle (headless), told to shut down, or cannot go on.
pub(super) async fn run(
    db: StateDb,
    config: EngineConfig,
    stores: Arc<dyn StoreFactory>,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    snapshots: watch::Sender<Arc<Snapshot>>,
) -> anyhow::Result<()> {
    let (writes_tx, writes_rx) = mpsc::unbounded_channel();
    let (committed_tx, mut committed_rx) = mpsc::unbounded_channel();
    let writer = writer::spawn(db.clone(), unbounded_bridge(writes_rx), committed_tx);
    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let next_job_id = db.next_job_id()?;
    let now = Instant::now();
    let controller = Controller::new(config.concurrency, config.adaptive, now);
    let gate = Gate::new(controller.limit(), config.max_memory);
    let buffers = Arc::new(BufferPool::new(config.max_memory));
    let mut s = Scheduler {
        db,
        config,
        stores,
        events,
        writes: Some(writes_tx),
        unacknowledged: 0,
        finished_tx,
        ready_tx,
        background: 0,
        jobs: BTreeMap::new(),
        timers: BinaryHeap::new(),
        gate,
        next_job_id,
        stopping: None,
        controller,
        metrics: Metrics::new(now),
        snapshots,
        selection: Selection::default(),
        watched: None,
        history: BTreeMap::new(),
        asked: false,
        planning: BTreeSet::new(),
        loading: 0,
        deferred: Vec::new(),
        buffers,
    };
    s.read_history();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commands_open = true;
    let result = loop {
        if s.stopping.is_none() {
            s.dispatch();
        }
        // Commands already sent (the destinations of a fan-out) count as asked for.
        if s.done() && commands.is_empty() {
            break Ok(());
        }
        let next_timer = s.timers.peek().map(|Reverse((at, ..))| *at);
        let deadline = s.stopping.map(|at| at + SHUTDOWN_GRACE);
        tokio::select! {
            command = commands.recv(), if commands_open => match command {
                Some(command) => s.on_command(command),
                None => commands_open = false,
            },
            Some(finished) = finished_rx.recv() => s.on_finished(finished),
            Some(ready) = ready_rx.recv() => s.on_ready(ready).await,
            Some(committed) = committed_rx.recv() => {
                if let Err(e) = s.on_committed(committed).await {
                    break Err(e);
                }
            }
            _ = sleep_until(next_timer), if next_timer.is_some() => {}
            _ = ticks.tick() => s.on_tick().await,
            _ = sleep_until(deadline), if deadline.is_some() => break Ok(()),
        }
    };
    // Let the writer finish what is queued, then stop it.
    s.writes = None;
    while s.unacknowledged > 0 {
        match committed_rx.recv().await {
            Some(Ok(tags)) => {
                s.unacknowledged -= tags.len();
                for after in tags.into_iter().flatten() {
                    if let After::Emit(event) = after {
                        let _ = s.events.send(event).await;
                    }
                }
            }
            _ => break,
        }
    }
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    if let Err(e) = &result {
        let _ = s
            .events
            .send(Event::Fatal {
                error: redact(&format!("{e:#}")),
            })
            .await;
    }
    result
}

/// The writer thread takes a bounded receiver; the scheduler must never wait on it, so an
/// unbounded channel feeds it through a small forwarding task.
fn unbounded_bridge<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<WriteRequest<T>>,
) -> mpsc::Receiver<WriteRequest<T>> {
    let (tx, bounded) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(request) = rx.recv().await {
            if tx.send(request).await.is_err() {
                break;
            }
        }
    });
    bounded
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Scheduler {
    fn done(&self) -> bool {
        if self.unacknowledged > 0 || self.background > 0 {
            return false;
        }
        let in_flight: u32 = self.jobs.values().map(|j| j.in_flight).sum();
        if self.stopping.is_some() {
            return in_flight == 0;
        }
        self.config.exit_when_idle && self.asked && self.jobs.is_empty()
    }

    /// Hands writes to the writer; `after` runs once they are durable.
    fn persist(&mut self, writes: Vec<Write>, after: Vec<After>) {
        if let Some(tx) = &self.writes
            && tx.send(WriteRequest { writes, tag: after }).is_ok()
        {
            self.unacknowledged += 1;
        }
    }

    async fn emit(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    // ---- commands ------------------------------------------------------------------------

    fn on_command(&mut self, command: Command) {
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
            } => self.load(job, include_paused),
            Command::Pause(job) => self.set_paused(job, true),
            Command::Resume(job) => self.set_paused(job, false),
            Command::SetConcurrency(limit) => {
                let change = self.controller.set_manual(limit);
                self.apply_change(change);
            }
            Command::SetAdaptive(adaptive) => {
                self.controller.set_adaptive(adaptive, Instant::now());
                let limit = self.controller.limit();
                let mode = if adaptive { "adaptive" } else { "manual" };
                self.apply_change(Change {
                    limit,
                    decision: super::control::Decision::Operator,
                    reason: format!("switched to {mode} by the operator at {limit}"),
                });
            }
            Command::Watch(selection) => self.watch(selection),
            Command::Browse {
                request,
                location,
                token,
            } => super::browse::spawn(
                self.stores.clone(),
                self.events.clone(),
                request,
                location,
                token,
            ),
            Command::RetryFailed(id) => self.retry_failed(id),
            Command::Cancel(id) => {
                if let Some(job) = self.jobs.get_mut(&id)
                    && !job.record.state.is_finished()
                {
                    job.record.state = JobState::Cancelled;
                    job.record.updated_ms = now_ms();
                    job.queue.clear();
                    let record = job.record.clone();
                    let uploads: Vec<(String, String)> = job
                        .files
                        .iter()
                        .filter_map(|f| f.record.open_upload())
                        .collect();
                    let sink = job.sink.clone();
                    self.persist(
                        vec![Write::Job(record)],
                        vec![After::Emit(Event::JobStateChanged {
                            job: id,
                            state: JobState::Cancelled,
                        })],
                    );
                    if !uploads.is_empty() {
                        self.abort_uploads(sink, uploads);
                    }
                    self.check_finished(id);
                } else if !self.jobs.contains_key(&id) {
                    self.cancel_unloaded(id);
                }
            }
            Command::Shutdown => {
                self.stopping = Some(Instant::now());
            }
        }
    }

    fn enqueue(&mut self, source: String, destination: String, options: crate::state::JobOptions) {
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
                self.background += 1;
                let _ = self.ready_tx.send(Ready::Failed {
                    source,
                    destination,
                    error: e.to_string(),
                    ends: Ends::Refusal,
                });
                return;
            }
        };
        let route = route_key(&src.to_string(), &dst.to_string());
        let loaded = self
            .jobs
            .values()
            .any(|j| route_key(&j.record.source, &j.record.destination) == route);
        if loaded || self.planning.contains(&route) {
            self.background += 1;
            let _ = self.ready_tx.send(Ready::Failed {
                source,
                destination,
                error: "a job for this route is already being planned or running; pause or \
                        cancel it first"
                    .into(),
                ends: Ends::Refusal,
            });
            return;
        }
        self.planning.insert(route.clone());
        let new_job_id = self.next_job_id;
        self.next_job_id += 1;
        let (db, stores, tx) = (self.db.clone(), self.stores.clone(), self.ready_tx.clone());
        let (max_memory, retry) = (self.config.max_memory, self.config.retry);
        self.background += 1;
        tokio::spawn(async move {
            let recorded_options = options.clone();
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
                let plan = plan::plan_job(Some(&db), request, source_store.as_ref(), sink.as_ref())
                    .await?;
                let snapshot = load_snapshot(&db, plan.job.id).await?;
                anyhow::Ok(Ready::Job {
                    snapshot,
                    summary: Some(plan.summary),
                    source: source_store,
                    sink,
                    unpause: false,
                })
            }
            .await;
            let ready = match result {
                Ok(ready) => ready,
                Err(e) => {
                    let mut error = redact(&format!("{e:#}"));
                    if e.downcast_ref::<plan::DestinationFailed>().is_some() {
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
                                " (recorded as job {id}: `blobway resume` tries this \
                                 destination again)"
                            )),
                            Ok(None) => {}
                            Err(e) => tracing::warn!("cannot record the failed plan: {e:#}"),
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

    fn load(&mut self, only: Option<JobId>, include_paused: bool) {
        let loaded: Vec<JobId> = self.jobs.keys().copied().collect();
        let planning = self.planning.clone();
        let (db, stores, tx) = (self.db.clone(), self.stores.clone(), self.ready_tx.clone());
        self.background += 1;
        self.loading += 1;
        tokio::spawn(async move {
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
                if (only.is_some() && !named)
                    || !wanted
                    || loaded.contains(&job.id)
                    || being_planned
                {
                    continue;
                }
                if !job.planned {
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
                    let snapshot = load_snapshot(&db, job.id).await?;
                    anyhow::Ok(Ready::Job {
                        snapshot,
                        summary: None,
                        source,
                        sink,
                        unpause: named,
                    })
                }
                .await;
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
    fn cancel_unloaded(&mut self, id: JobId) {
        let (db, stores, tx) = (self.db.clone(), self.stores.clone(), self.ready_tx.clone());
        self.background += 1;
        tokio::spawn(async move {
            let result = async {
                let snapshot = load_snapshot(&db, id).await?;
                let mut job = snapshot.job;
                if matches!(job.state, JobState::Done | JobState::Cancelled) {
                    return anyhow::Ok(false);
                }
                let uploads: Vec<(String, String)> = snapshot
                    .files
                    .iter()
                    .filter_map(|(_, f, _)| f.open_upload())
                    .collect();
                if !uploads.is_empty() {
                    let (_, dst) = parse_route(&job.source, &job.destination)?;
                    let sink = stores.sink(&dst, &job.options.dest_access).await?;
                    transfer::give_up_uploads(sink.as_ref(), uploads).await;
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

    fn set_paused(&mut self, only: Option<JobId>, paused: bool) {
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
            job.record.updated_ms = now_ms();
            let record = job.record.clone();
            self.persist(
                vec![Write::Job(record)],
                vec![After::Emit(Event::JobStateChanged { job: id, state })],
            );
            self.check_finished(id);
        }
    }

    fn retry_failed(&mut self, id: JobId) {
        let Some(job) = self.jobs.get_mut(&id) else {
            // A finished job is no longer loaded: loading it gives its failed objects another
            // chance.
            self.load(Some(id), true);
            return;
        };
        let mut writes = Vec::new();
        for pos in 0..job.files.len() {
            let file = &mut job.files[pos];
            // An object still finishing chunks of its failed round is left alone until they
            // are back; reopening it under them would send them twice.
            if file.record.state != FileState::Failed
                || file.record.chunk_count == 0
                || file.in_flight > 0
            {
                continue;
            }
            writes.extend(file.reopen(id));
            job.enqueue(pos);
        }
        if job.record.state == JobState::Failed {
            job.record.state = JobState::Running;
            job.record.error = None;
        }
        writes.push(Write::Job(job.record.clone()));
        self.persist(writes, Vec::new());
    }

    // ---- planning and loading -------------------------------------------------------------

    async fn on_ready(&mut self, ready: Ready) {
        match ready {
            Ready::LoaderDone => {
                self.background = self.background.saturating_sub(1);
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
            Ready::Watched(snapshot) => self.watched = Some(snapshot),
            Ready::Aborted => self.background = self.background.saturating_sub(1),
            Ready::Replan {
                source,
                destination,
                options,
            } => self.enqueue(source, destination, options),
            Ready::Cancelled { job, result } => {
                self.background = self.background.saturating_sub(1);
                match result {
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
                }
            }
            Ready::Failed {
                source,
                destination,
                error,
                ends,
            } => {
                match ends {
                    Ends::Plan(route) => {
                        self.planning.remove(&route);
                        self.background = self.background.saturating_sub(1);
                    }
                    Ends::Refusal => self.background = self.background.saturating_sub(1),
                    Ends::Nothing => {}
                }
                self.emit(Event::PlanFailed {
                    source,
                    destination,
                    error,
                })
                .await;
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
                    self.background = self.background.saturating_sub(1);
                }
                self.install(snapshot, summary, source, sink, unpause).await;
            }
        }
    }

    async fn install(
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
        if self.jobs.contains_key(&id) {
            // Loaded twice (e.g. queued again while loading): the running copy stays.
            self.emit(Event::PlanFailed {
                source: record.source,
                destination: record.destination,
                error: format!("job {id} is already running"),
            })
            .await;
            return;
        }
        let sequential = sink.limits().sequential;
        let files: Vec<FileRun> = snapshot
            .files
            .into_iter()
            .map(|(index, file, chunks)| FileRun::new(index, file, chunks, sequential))
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
                    writes.extend(file.reopen(id));
                }
            }
        }
        // A chunk that can never fit the memory budget would wait forever: say so instead.
        let budget = self.gate.budget();
        let mut announcements = Vec::new();
        for file in &mut job.files {
            let largest = file.record.chunk_size.min(file.record.size);
            if file.active() && largest > budget {
                file.record.state = FileState::Failed;
                file.record.error = Some(ErrorRecord {
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
                });
                file.ready.clear();
                file.commit_ready = false;
                writes.push(Write::File(id, file.index, file.record.clone()));
            }
        }
        // Objects that cannot be copied as things stand are reported with the job, so every
        // summary names every failed object and why.
        for file in &job.files {
            if file.record.state == FileState::Failed {
                announcements.push(After::Emit(failed_event(id, &file.record, file.index)));
            }
        }
        for pos in 0..job.files.len() {
            job.enqueue(pos);
        }
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

    // ---- dispatch ---------------------------------------------------------------------------

    fn dispatch(&mut self) {
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

    fn claim_chunk(&mut self, id: JobId, pos: usize, index: u32, reserved: u64) {
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

    fn claim_commit(&mut self, id: JobId, pos: usize) {
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

    fn claim_begin(&mut self, id: JobId, pos: usize) {
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
    fn abort_uploads(&mut self, sink: Arc<dyn ObjectSink>, uploads: Vec<(String, String)>) {
        self.background += 1;
        let tx = self.ready_tx.clone();
        tokio::spawn(async move {
            transfer::give_up_uploads(sink.as_ref(), uploads).await;
            let _ = tx.send(Ready::Aborted);
        });
    }

    // ---- durable writes ---------------------------------------------------------------------

    async fn on_committed(&mut self, committed: Committed<Vec<After>>) -> anyhow::Result<()> {
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

    fn start_chunk(&self, task: ChunkTask) {
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

    fn start_begin(&self, task: BeginTask) {
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

    fn start_commit(&self, task: CommitTask) {
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

    // ---- outcomes ---------------------------------------------------------------------------

    fn on_finished(&mut self, finished: Finished) {
        match finished {
            Finished::Chunk {
                job,
                pos,
                chunk,
                reserved,
                started_ms,
                latency_ms,
                result,
            } => {
                self.gate.release(reserved);
                self.observe(job, latency_ms, &result);
                self.chunk_finished(job, pos, chunk, started_ms, latency_ms, result);
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

    fn chunk_finished(
        &mut self,
        id: JobId,
        pos: usize,
        index: u32,
        started_ms: i64,
        latency_ms: u64,
        result: StoreResult<ChunkMoved>,
    ) {
        let retry = self.config.retry;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.in_flight = job.in_flight.saturating_sub(1);
        let if_exists = job.record.options.if_exists;
        let Some(file) = job.files.get_mut(pos) else {
            return;
        };
        file.in_flight = file.in_flight.saturating_sub(1);
        let file_index = file.index;
        let generation = file.generation;
        let round = file.round.get(index as usize).copied().unwrap_or(u32::MAX);
        let mut writes = Vec::new();
        let mut after = Vec::new();
        let mut stop_job = None;
        let mut lost = false;
        let mut broken = None;
        let mut fresh_budget = false;
        let mut orphan = None;
        match result {
            Ok(moved) => {
                let chunk = &mut file.chunks[index as usize];
                if chunk.state != ChunkState::Completed {
                    file.completed += 1;
                }
                chunk.state = ChunkState::Completed;
                chunk.crc64 = Some(moved.crc64);
                chunk.record_attempt(AttemptRecord {
                    started_ms,
                    latency_ms,
                    bytes: moved.bytes,
                    error: None,
                });
                writes.push(Write::Chunk(id, file_index, index, chunk.clone()));
                after.push(After::Emit(Event::ChunkCompleted {
                    job: id,
                    file: file_index,
                    chunk: index,
                    bytes: moved.bytes,
                    latency_ms,
                }));
                if file.active() && file.record.is_single_put() {
                    file.record.state = FileState::Done;
                    writes.push(Write::File(id, file_index, file.record.clone()));
                    after.push(After::Emit(committed_event(id, &file.record, file_index)));
                } else if file.active() && file.completed == file.record.chunk_count {
                    file.record.state = FileState::Committing;
                    file.commit_ready = true;
                    writes.push(Write::File(id, file_index, file.record.clone()));
                }
            }
            Err(err) => {
                let error = ErrorRecord::from_store(&err);
                let active = file.active();
                let may_restart = file.restarts < retry.max_attempts;
                let first_session = file.restarts == 0 && file.record.session.is_some();
                let live_session = file.session_alive && !file.second_wind;
                let chunk = &mut file.chunks[index as usize];
                chunk.record_attempt(AttemptRecord {
                    started_ms,
                    latency_ms,
                    bytes: 0,
                    error: Some(error.clone()),
                });
                let attempt = chunk.attempts;
                if err.class.stops_job() {
                    chunk.state = ChunkState::Pending;
                    file.ready.push_front(index);
                    stop_job = Some(err.to_string());
                    after.push(After::Emit(Event::ChunkFailed {
                        job: id,
                        file: file_index,
                        chunk: index,
                        error,
                    }));
                } else if err.class == ErrorClass::UploadLost && active && may_restart {
                    // The session is gone: the upload was finished already (the last block
                    // finalizes it on some stores, and a crash may have come before its
                    // record) or it expired. A look at the destination tells which; the
                    // upload starts over only when the object is not there.
                    chunk.state = ChunkState::Pending;
                    lost = true;
                } else if (retry.should_retry(&err, round) && active)
                    || (active && live_session && err.class.is_retryable())
                {
                    // Out of retries in a session a check showed alive a moment ago: this
                    // chunk is failing, not the upload. It gets one fresh budget in the same
                    // session, and only it is sent again.
                    fresh_budget = !retry.should_retry(&err, round);
                    chunk.state = ChunkState::Pending;
                    let delay = retry.delay(round, err.retry_after);
                    self.timers.push(Reverse((
                        Instant::now() + delay,
                        id,
                        pos,
                        generation,
                        Wake::Chunk(index),
                    )));
                    after.push(After::Emit(Event::ChunkRetry {
                        job: id,
                        file: file_index,
                        chunk: index,
                        attempt,
                        delay_ms: delay.as_millis() as u64,
                        error,
                    }));
                } else if active && first_session && err.class.is_retryable() {
                    // Retries are spent on an upload session: the session itself may be
                    // broken (a completion cut short on some S3-compatible servers). The
                    // upload starts over once, with a fresh budget, before the object fails.
                    chunk.state = ChunkState::Pending;
                    broken = Some(error.clone());
                } else {
                    chunk.state = ChunkState::Failed;
                    after.push(After::Emit(Event::ChunkFailed {
                        job: id,
                        file: file_index,
                        chunk: index,
                        error: error.clone(),
                    }));
                    if active && leave_existing(&mut file.record, &err, if_exists) {
                        file.ready.clear();
                    } else if active {
                        let message = if err.class == ErrorClass::SourceChanged {
                            err.message.clone()
                        } else {
                            format!(
                                "chunk {index} failed after {attempt} attempt(s): {}",
                                err.message
                            )
                        };
                        file.record.state = FileState::Failed;
                        file.record.error = Some(ErrorRecord { message, ..error });
                        file.ready.clear();
                        file.commit_ready = false;
                        // A changed source can never finish this upload: give it up now
                        // rather than leave its parts stored (and billed) at the destination.
                        if err.class == ErrorClass::SourceChanged
                            && let Some(session) = file.record.session.take()
                        {
                            file.record.meta = None;
                            orphan = Some((file.record.dest_key.clone(), session));
                        }
                        after.push(After::Emit(failed_event(id, &file.record, file_index)));
                    }
                }
                writes.push(Write::Chunk(
                    id,
                    file_index,
                    index,
                    file.chunks[index as usize].clone(),
                ));
                if matches!(file.record.state, FileState::Failed | FileState::Skipped) {
                    writes.push(Write::File(id, file_index, file.record.clone()));
                }
            }
        }
        let file = &mut job.files[pos];
        if fresh_budget {
            file.second_wind = true;
            if let Some(round) = file.round.get_mut(index as usize) {
                *round = 0;
            }
        }
        if let Some(error) = broken {
            file.restart = true;
            file.ready.clear();
            file.commit_ready = false;
            after.push(After::Emit(Event::UploadRestarted {
                job: id,
                file: file_index,
                error,
            }));
        }
        if lost {
            file.ready.clear();
            file.check_session = true;
        }
        if file.check_session && file.in_flight == 0 && file.active() {
            file.check_session = false;
            file.commit_ready = true;
        }
        let abandoned = restart_when_idle(id, &mut job.files[pos], &mut writes);
        if job.files[pos].commit_ready {
            job.enqueue_first(pos);
        } else {
            job.enqueue(pos);
        }
        if let Some(reason) = stop_job {
            stop(job, reason, &mut writes);
        }
        let give_up: Vec<(String, String)> = orphan.into_iter().chain(abandoned).collect();
        if !give_up.is_empty() {
            let sink = job.sink.clone();
            self.abort_uploads(sink, give_up);
        }
        self.persist(writes, after);
    }

    fn begin_finished(&mut self, id: JobId, pos: usize, result: StoreResult<Begun>) {
        let retry = self.config.retry;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.in_flight = job.in_flight.saturating_sub(1);
        let sink = job.sink.clone();
        let cancelled = job.record.state == JobState::Cancelled;
        let Some(file) = job.files.get_mut(pos) else {
            return;
        };
        file.in_flight = file.in_flight.saturating_sub(1);
        let file_index = file.index;
        let mut writes = Vec::new();
        let mut after = Vec::new();
        let mut stop_job = None;
        let mut orphan = None;
        match result {
            Ok(begun) => {
                if file.active() && file.begin == Begin::Running && !cancelled {
                    file.record.meta = Some(begun.meta);
                    file.record.session = begun.session;
                    // Recorded: nothing of this begin is left to look for after a crash.
                    file.record.begun_ms = None;
                    file.begin = Begin::Done;
                    writes.push(Write::File(id, file_index, file.record.clone()));
                } else if let Some(session) = begun.session {
                    orphan = Some((file.record.dest_key.clone(), session));
                }
            }
            Err(err) => {
                file.begin = Begin::Needed;
                if err.class.stops_job() {
                    stop_job = Some(err.to_string());
                } else if retry.should_retry(&err, file.begin_round) && file.active() {
                    file.begin = Begin::Waiting;
                    let delay = retry.delay(file.begin_round, err.retry_after);
                    self.timers.push(Reverse((
                        Instant::now() + delay,
                        id,
                        pos,
                        file.generation,
                        Wake::Begin,
                    )));
                } else if file.active() {
                    let message = if err.class == ErrorClass::SourceChanged {
                        err.message.clone()
                    } else {
                        format!("the upload could not begin: {}", err.message)
                    };
                    file.record.state = FileState::Failed;
                    file.record.error = Some(ErrorRecord {
                        message,
                        ..ErrorRecord::from_store(&err)
                    });
                    file.ready.clear();
                    file.commit_ready = false;
                    writes.push(Write::File(id, file_index, file.record.clone()));
                    after.push(After::Emit(failed_event(id, &file.record, file_index)));
                }
            }
        }
        job.enqueue_first(pos);
        if let Some(reason) = stop_job {
            stop(job, reason, &mut writes);
        }
        if let Some(upload) = orphan {
            self.abort_uploads(sink, vec![upload]);
        }
        self.persist(writes, after);
    }

    fn commit_finished(&mut self, id: JobId, pos: usize, result: StoreResult<CommitOutcome>) {
        let retry = self.config.retry;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.in_flight = job.in_flight.saturating_sub(1);
        let if_exists = job.record.options.if_exists;
        let Some(file) = job.files.get_mut(pos) else {
            return;
        };
        file.in_flight = file.in_flight.saturating_sub(1);
        let file_index = file.index;
        let mut writes = Vec::new();
        let mut after = Vec::new();
        let mut stop_job = None;
        let mut abandoned = None;
        // Was this a check a failing chunk asked for, rather than a commit?
        let asked_by = file.check;
        let checked = asked_by.is_some();
        let attempts = if checked {
            file.check_round
        } else {
            file.record.commit_attempts
        };
        if !matches!(&result, Err(e) if e.class.is_retryable()) {
            file.check = None;
        }
        if checked && result.is_ok() {
            file.check_round = 0;
        }
        match result {
            Ok(CommitOutcome::Committed) => {
                file.record.state = FileState::Done;
                file.record.error = None;
                // Found committed after its session was lost: every chunk arrived.
                for (index, chunk) in file.chunks.iter_mut().enumerate() {
                    if chunk.state != ChunkState::Completed {
                        chunk.state = ChunkState::Completed;
                        file.completed += 1;
                        writes.push(Write::Chunk(id, file_index, index as u32, chunk.clone()));
                    }
                }
                after.push(After::Emit(committed_event(id, &file.record, file_index)));
            }
            Ok(CommitOutcome::Missing(missing))
                if checked || file.record.commit_attempts < retry.max_attempts =>
            {
                if checked {
                    // The session answered: what it lacks is sent again in it.
                    file.session_alive = true;
                }
                // Not every block is there: a commit asked for meanwhile (a stale timer) waits
                // for the re-sends.
                file.commit_ready = false;
                // The chunk that asked for the check goes again even if the store holds it
                // (its last answer was lost; sending it again overwrites the same block).
                let asking = asked_by.filter(|c| !missing.contains(c));
                for &chunk in missing.iter().chain(asking.iter()) {
                    let record = &mut file.chunks[chunk as usize];
                    if record.state == ChunkState::InProgress {
                        continue; // its own result decides
                    }
                    if record.state == ChunkState::Completed {
                        file.completed -= 1;
                    }
                    record.state = ChunkState::Pending;
                    writes.push(Write::Chunk(id, file_index, chunk, record.clone()));
                    // Chunks still waiting to go are queued once.
                    if !file.ready.contains(&chunk) {
                        file.ready.push_back(chunk);
                    }
                }
                file.record.state = FileState::Transferring;
                after.push(After::Emit(Event::BlocksMissing {
                    job: id,
                    file: file_index,
                    chunks: missing,
                }));
            }
            Ok(CommitOutcome::Missing(missing)) => {
                let err = StoreError::new(
                    ErrorClass::Transient,
                    None,
                    format!(
                        "the destination keeps losing staged blocks ({} missing after {} checks)",
                        missing.len(),
                        file.record.commit_attempts
                    ),
                );
                file.record.state = FileState::Failed;
                file.record.error = Some(ErrorRecord::from_store(&err));
                after.push(After::Emit(failed_event(id, &file.record, file_index)));
            }
            Err(err)
                if err.class == ErrorClass::UploadLost && file.restarts < retry.max_attempts =>
            {
                file.restart = true;
                after.push(After::Emit(Event::UploadRestarted {
                    job: id,
                    file: file_index,
                    error: ErrorRecord::from_store(&err),
                }));
            }
            Err(err) => {
                if err.class.stops_job() {
                    file.commit_ready = true;
                    stop_job = Some(err.to_string());
                } else if retry.should_retry(&err, attempts) {
                    // A check keeps asking for itself (`check` stays set) until it is answered.
                    let delay = retry.delay(attempts, err.retry_after);
                    let at = Instant::now() + delay;
                    self.timers
                        .push(Reverse((at, id, pos, file.generation, Wake::Commit)));
                } else if leave_existing(&mut file.record, &err, if_exists) {
                    // The upload is not needed any more: give it up (billed parts otherwise).
                    if let Some(session) = file.record.session.take() {
                        file.record.meta = None;
                        abandoned = Some((file.record.dest_key.clone(), session));
                    }
                } else {
                    file.record.state = FileState::Failed;
                    file.record.error = Some(ErrorRecord::from_store(&err.context("commit")));
                    after.push(After::Emit(failed_event(id, &file.record, file_index)));
                }
            }
        }
        writes.push(Write::File(id, file_index, file.record.clone()));
        let restarted = restart_when_idle(id, file, &mut writes);
        job.enqueue_first(pos);
        if let Some(reason) = stop_job {
            stop(job, reason, &mut writes);
        }
        let give_up: Vec<(String, String)> = abandoned.into_iter().chain(restarted).collect();
        if !give_up.is_empty() {
            let sink = job.sink.clone();
            self.abort_uploads(sink, give_up);
        }
        self.persist(writes, after);
    }

    /// Finishes a job once nothing of it is in flight and nothing is left to do (or it was
    /// stopped or cancelled), and unloads it.
    fn check_finished(&mut self, id: JobId) {
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
        self.timers.retain(|Reverse((_, job, ..))| *job != id);
        if let Some(job) = self.jobs.remove(&id) {
            self.history.insert(id, job.view());
            if self.selection.job == Some(id) {
                self.watched = Some(job.into_snapshot());
            }
        }
        self.persist(vec![Write::Job(record)], vec![After::Emit(event)]);
    }

    // ---- control, metrics and snapshots ------------------------------------------------------

    /// Feeds a chunk's outcome to the controller and the metrics.
    fn observe(&mut self, job: JobId, latency_ms: u64, result: &StoreResult<ChunkMoved>) {
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

    fn apply_change(&mut self, change: Change) {
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

    async fn on_tick(&mut self) {
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

    fn snapshot(&self, now: Instant) -> Snapshot {
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
    fn watch(&mut self, selection: Selection) {
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
    fn read_history(&self) {
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

/// Stops a job after a fatal error (credentials, permissions, full disk): nothing new starts,
/// work in flight finishes, and the job is recorded FAILED with the reason.
fn stop(job: &mut JobRun, reason: String, writes: &mut Vec<Write>) {
    if job.record.state == JobState::Failed {
        return;
    }
    job.record.state = JobState::Failed;
    job.record.error = Some(reason);
    job.record.updated_ms = now_ms();
    job.queue.clear();
    for file in &mut job.files {
        file.queued = false;
    }
    writes.push(Write::Job(job.record.clone()));
}

/// Records `job` (FAILED, unplanned: its destination failed before it could be planned) so
/// `resume` plans it again; returns the ID it is recorded under. A route that already has a
/// planned job keeps it as it is (its objects and progress stand); one still unplanned gets
/// the new error.
async fn record_unplanned(
    db: &StateDb,
    job: crate::state::JobRecord,
) -> anyhow::Result<Option<JobId>> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let record = match db.job_for_route(&job.source, &job.destination)? {
            Some(existing) if existing.planned => return Ok(None),
            Some(existing) => crate::state::JobRecord {
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

/// Starts an object's upload over once its session was lost and nothing of it is in flight.
/// Starts the upload over once nothing of it is in flight, if it must; returns the session
/// it abandons (destination key, session), to give up at the store — best effort: a session
/// the store only seemed to lose would keep its parts (and their bill) otherwise.
fn restart_when_idle(
    job: JobId,
    file: &mut FileRun,
    writes: &mut Vec<Write>,
) -> Option<(String, String)> {
    if file.restart && file.in_flight == 0 && file.active() {
        tracing::info!(key = %file.record.key, "the upload session was lost; starting over");
        let abandoned = file
            .record
            .session
            .clone()
            .map(|session| (file.record.dest_key.clone(), session));
        writes.extend(file.start_over(job));
        return abandoned;
    }
    None
}

/// The metadata a committed object carries: its source version, size and (when known) its
/// whole-object CRC-64/NVME.
fn destination_meta(record: &FileRecord, crc64: Option<u64>) -> ObjectMeta {
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

fn committed_event(job: JobId, record: &FileRecord, file: u32) -> Event {
    Event::FileCommitted {
        job,
        file,
        key: record.key.clone(),
        dest_key: record.dest_key.clone(),
        bytes: record.size,
    }
}

fn failed_event(job: JobId, record: &FileRecord, file: u32) -> Event {
    Event::FileFailed {
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

/// One string per route, to recognise a route however it was written.
fn route_key(source: &str, destination: &str) -> String {
    format!("{source}\n{destination}")
}

async fn load_snapshot(db: &StateDb, id: JobId) -> anyhow::Result<JobSnapshot> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.load_job(id))
        .await??
        .ok_or_else(|| anyhow::anyhow!("job {id} is not in the state file"))
}

/// An object whose conditional commit found another object under its name: under
/// `--if-exists skip` it is left as the destination holds it (recorded skipped, with the
/// reason) and this returns true; otherwise it fails as any refusal does.
fn leave_existing(record: &mut FileRecord, err: &StoreError, if_exists: IfExists) -> bool {
    if err.class != ErrorClass::Exists || if_exists != IfExists::Skip {
        return false;
    }
    tracing::info!(key = %record.key, dest = %record.dest_key,
        "left as the destination holds it (--if-exists skip)");
    record.state = FileState::Skipped;
    record.note = Some(format!(
        "already at the destination; left as it is (--if-exists skip): {}",
        err.message
    ));
    true
}
