//! The scheduler task: the single owner of the loaded jobs, their in-memory chunk states and the
//! gate. It claims work, hands each claim to the state writer, starts the work only once the
//! claim is durable, and records each outcome the same way before announcing it. Planning,
//! loading and the data plane run on their own tasks and report back by message; nothing here
//! waits on the network.
//!
//! This module holds the task's state and its loop; the rest is split by concern:
//! [`commands`] (what the operator asks), [`intake`] (planning and loading), [`dispatch`]
//! (timers, the gate, durable claims, starting work), [`outcomes`] (what a finished unit of
//! work means for its object) and [`observe`] (controller ticks, metrics, snapshots).

mod commands;
mod dispatch;
mod fleet;
mod intake;
mod observe;
mod outcomes;
mod timers;

use commands::{route_key, stop};
use intake::{loaded_job, record_unplanned};
use outcomes::failed_event;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::buffers::BufferPool;
use super::bwlimit::{BwLimit, Pacer};
use super::control::{Change, Controller, Outcome};
use super::gate::Gate;
use super::metrics::Metrics;
use super::model::{BorrowedChunk, JobRun};
use super::object::{ObjectRun, Rules, Step, Timing, Wake, Work};
use super::plan::{self, PlanRequest, PlanSummary};
use super::snapshot::{
    self, JobView, LOCAL_VIEWER, ObjectQuery, Selection, Snapshot, ViewDetails, ViewerId,
};
use super::transfer::{
    self, BeginWork, Begun, ChunkMoved, ChunkWork, CommitOutcome, CommitWork, Target,
};
use super::{Command, EngineConfig, Event, StoreFactory};
use crate::location::parse_route;
use crate::redact::redact;
use crate::state::writer::{self, Committed, WriteRequest};
use crate::state::{
    ErrorRecord, FileRecord, FileState, JobId, JobRecord, JobSnapshot, JobState, StateDb, Write,
    now_ms,
};
use crate::store::{ErrorClass, ObjectMeta, ObjectSink, ObjectSource, StoreResult, meta_keys};
use timers::Timers;

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
    /// Give up these uploads (destination key, session) at the store, best effort.
    Abort(Arc<dyn ObjectSink>, Vec<(String, String)>),
    /// An ended object's last write is durable: it leaves its job's window (if it is still
    /// in the life, its generation, that ended).
    Release(JobId, u32, u64),
    /// Give up the upload sessions the state file records for a job's objects, except those
    /// the window holds (given up as held).
    AbortRecorded(Arc<dyn ObjectSink>, JobId, BTreeSet<u32>),
    /// Failed objects of a job were reopened in the state file: its cursor starts over.
    Rewind(JobId),
    /// What an object (in its life `u64`) lent is recorded: how it stands may be read.
    LendDurable(JobId, u32, u64),
    /// A quarantined job's claims went back: its time away starts.
    LetGoDurable(JobId),
    /// A job ended: announced with its counters as the state file holds them.
    Finished(JobId, JobState, Option<String>),
}

struct ChunkTask {
    job: JobId,
    file: u32,
    chunk: u32,
    reserved: u64,
    work: ChunkWork,
    /// Set for a chunk borrowed from another worker's object.
    borrowed: Option<Box<BorrowedChunk>>,
}

struct CommitTask {
    job: JobId,
    file: u32,
    work: CommitWork,
}

struct BeginTask {
    job: JobId,
    file: u32,
    work: BeginWork,
}

/// A finished unit of work.
enum Finished {
    Chunk {
        job: JobId,
        file: u32,
        chunk: u32,
        reserved: u64,
        timing: Timing,
        result: StoreResult<ChunkMoved>,
        borrowed: Option<Box<BorrowedChunk>>,
    },
    Commit {
        job: JobId,
        file: u32,
        result: StoreResult<CommitOutcome>,
    },
    Begin {
        job: JobId,
        file: u32,
        result: StoreResult<Begun>,
    },
}

/// A job ready to run, from planning or loading.
struct Arrival {
    record: JobRecord,
    /// Objects that stay failed as things stand, announced with the job.
    failed: Vec<(u32, FileRecord)>,
    source: Arc<dyn ObjectSource>,
    sink: Arc<dyn ObjectSink>,
    how: How,
}

/// How a job arrives.
enum How {
    /// Planned: its listing is complete.
    Planned(PlanSummary),
    /// The first page of a new job's listing is planned: it runs while the rest is listed
    /// ([`Ready::Listed`] follows).
    Listing,
    /// Loaded from the state file; the failed objects `reopen` admits get another chance
    /// (none: found running at another worker of a shared state).
    Loaded {
        /// The operator named this paused job to resume it.
        unpause: bool,
        reopen: Option<crate::state::index::Reopen>,
    },
}

/// A page of a job's objects read for views, with the job's counters at the time.
pub(super) struct Watched {
    snapshot: JobSnapshot,
    progress: crate::state::JobProgress,
}

/// What a background task reports.
enum Ready {
    Job(Box<Arrival>),
    Failed {
        source: String,
        destination: String,
        error: String,
        /// How this failure ends background work.
        ends: Ends,
    },
    /// A page of a new job's listing is recorded: the job is installed with the first, and
    /// reads on with each.
    Page {
        page: plan::PagePlanned,
        source: Arc<dyn ObjectSource>,
        sink: Arc<dyn ObjectSink>,
    },
    /// A new job's listing is complete.
    Listed {
        job: JobId,
        summary: PlanSummary,
    },
    /// A running job's listing failed (`None`: it was stopped).
    ListingFailed {
        job: JobId,
        error: Option<String>,
    },
    /// A route's job is recorded: announce it (in order with what follows, through the
    /// writer, like every event).
    Queued(Event),
    /// The loader went through every job.
    LoaderDone,
    /// Summaries of the jobs in the state file, read at start.
    History(Vec<JobView>),
    /// A page of a job's objects, read for the views that ask for it.
    Watched(JobId, ObjectQuery, Option<Watched>),
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

/// A planning task under way.
struct ListingTask {
    /// Set to stop its listing at the next page.
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Its job was installed from its first page.
    installed: bool,
}

impl ListingTask {
    fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a failed plan or load ends.
#[derive(Debug)]
enum Ends {
    /// A planning task for this route.
    Plan(String),
    /// Nothing: a route refused before any task started, or the loader goes on.
    Nothing,
}

struct Scheduler {
    db: StateDb,
    config: EngineConfig,
    stores: Arc<dyn StoreFactory>,
    events: mpsc::Sender<Event>,
    writes: Option<mpsc::UnboundedSender<WriteRequest<Vec<After>>>>,
    unacknowledged: usize,
    /// Begins, chunks and commits in flight; each reports how it finished.
    work: JoinSet<Finished>,
    ready_tx: mpsc::UnboundedSender<Ready>,
    /// Planning, loading, cancelling and giving up uploads; they report through `ready_tx`.
    background: JoinSet<()>,
    jobs: BTreeMap<JobId, JobRun>,
    timers: Timers,
    gate: Gate,
    next_job_id: JobId,
    stopping: Option<Instant>,
    controller: Controller,
    /// The bandwidth cap, and the pacer admitting chunks at its rate in force.
    bwlimit: BwLimit,
    pacer: Pacer,
    /// When the pacer lets the next chunk start, while one waits for it.
    paced_until: Option<Instant>,
    /// Chunks the pacer admitted: which job is first in the next dispatch.
    paced_turn: usize,
    metrics: Metrics,
    snapshots: watch::Sender<Arc<Snapshot>>,
    /// What each view looks at.
    selections: BTreeMap<ViewerId, Selection>,
    /// The pages of jobs' objects views look at, read from the state file (for a loaded job,
    /// its window is drawn over them).
    watched: BTreeMap<(JobId, ObjectQuery), Watched>,
    /// When each watched job was last read.
    watch_reads: BTreeMap<JobId, Instant>,
    /// The pages being read; true when asked for again meanwhile.
    watch_reading: BTreeMap<(JobId, ObjectQuery), bool>,
    history: BTreeMap<JobId, JobView>,
    /// Set once a job was asked for: an idle engine exits (headless) only after that.
    asked: bool,
    /// Routes being planned right now.
    planning: BTreeMap<String, JobView>,
    /// Loaders running; planning waits for them, so a job is never planned and loaded at once.
    loading: usize,
    /// Enqueue commands waiting for the loaders.
    deferred: Vec<Command>,
    /// Chunk buffers, reused.
    buffers: Arc<BufferPool>,
    /// The most objects the windows held at once.
    held_peak: u64,
    /// Jobs unloaded whose end is not durable yet: not loaded again until it is.
    unloading: BTreeSet<JobId>,
    /// The planning tasks under way (at most one per job), by job.
    listings: BTreeMap<JobId, ListingTask>,
    /// Jobs to load again (with this reopen rule) once their end is durable.
    reload_after_unload: BTreeMap<JobId, crate::state::index::Reopen>,
    /// What this engine moved, reported with its lease's heartbeat when the state is shared.
    moved: Moved,
    /// With a shared state: whether this worker's failures are its own.
    health: super::health::Health,
    /// With a shared state: the fleet's settings as last read.
    settings: fleet::SeenSettings,
    /// When the shared state was last looked at for jobs other workers run.
    discovered_at: Option<Instant>,
    /// With a shared state: when the chunks this worker lent were last looked at.
    lent_read_at: Option<Instant>,
    /// The state is shared with other workers: this engine claims what it works on.
    shared: bool,
    /// Jobs of other workers this one could not open (said once).
    discovery_refused: Arc<std::sync::Mutex<BTreeSet<JobId>>>,
}

/// Chunks and bytes an engine moved since it started.
#[derive(Default)]
struct Moved {
    chunks: u64,
    bytes: u64,
}

impl Moved {
    fn report(&mut self, bytes: u64) {
        self.chunks += 1;
        self.bytes += bytes;
    }
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
    let writer = writer::spawn(
        db.clone(),
        unbounded_bridge(writes_rx),
        committed_tx,
        crate::store::sync_deferred,
    );
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let next_job_id = db.next_job_id()?;
    let now = Instant::now();
    let mut controller = Controller::new(config.concurrency, config.adaptive, now);
    // Without a --concurrency of this run, the operator's last choice stands.
    if config.adaptive
        && let Ok(Some(recorded)) = db.setting(super::control::ChosenConcurrency::SETTING)
        && let Ok(chosen) = serde_json::from_str(&recorded)
    {
        controller.restore(chosen, now);
    }
    // The same for the bandwidth cap.
    let mut unread_cap = None;
    let bwlimit = match &config.bwlimit {
        Some(asked) => asked.clone(),
        None => match db.setting(BwLimit::SETTING) {
            Ok(None) => BwLimit::off(),
            Ok(Some(recorded)) => BwLimit::parse(&recorded).unwrap_or_else(|why| {
                unread_cap = Some(format!("the recorded bandwidth cap is not understood ({why}): none applies; set one with set-bwlimit"));
                BwLimit::off()
            }),
            Err(e) => {
                unread_cap = Some(format!(
                    "the recorded bandwidth cap could not be read ({e}): none applies; set one with set-bwlimit"
                ));
                BwLimit::off()
            }
        },
    };
    let pacer = Pacer::new(bwlimit.rate_now(), now);
    let gate = Gate::new(controller.limit(), config.max_memory);
    let buffers = Arc::new(BufferPool::new(config.max_memory));
    let shared = db.lease().is_some();
    let mut s = Scheduler {
        db,
        config,
        stores,
        events,
        writes: Some(writes_tx),
        unacknowledged: 0,
        work: JoinSet::new(),
        ready_tx,
        background: JoinSet::new(),
        jobs: BTreeMap::new(),
        timers: Timers::default(),
        gate,
        next_job_id,
        stopping: None,
        controller,
        bwlimit,
        pacer,
        paced_until: None,
        paced_turn: 0,
        metrics: Metrics::new(now),
        snapshots,
        selections: BTreeMap::new(),
        watched: BTreeMap::new(),
        watch_reads: BTreeMap::new(),
        watch_reading: BTreeMap::new(),
        history: BTreeMap::new(),
        asked: false,
        planning: BTreeMap::new(),
        loading: 0,
        deferred: Vec::new(),
        buffers,
        held_peak: 0,
        unloading: BTreeSet::new(),
        listings: BTreeMap::new(),
        reload_after_unload: BTreeMap::new(),
        moved: Moved::default(),
        health: Default::default(),
        settings: Default::default(),
        discovered_at: None,
        lent_read_at: None,
        shared,
        discovery_refused: Arc::default(),
    };
    s.read_history();
    if s.shared {
        s.start_following_settings();
    }
    if let Some(message) = unread_cap {
        tracing::warn!("{message}");
        let _ = s.events.send(Event::Notice { message }).await;
    }
    let change_signal = s.db.change_signal();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commands_open = true;
    let result = loop {
        if s.stopping.is_none() {
            s.dispatch();
        }
        // Commands already sent (the destinations of a fan-out) count as asked for.
        if s.done() && commands.is_empty() && ready_rx.is_empty() {
            break Ok(());
        }
        // Nothing is dispatched while stopping: no timer wakes the loop then.
        let next_timer = match s.stopping {
            Some(_) => None,
            None => s.timers.next().into_iter().chain(s.paced_until).min(),
        };
        let deadline = s.stopping.map(|at| at + SHUTDOWN_GRACE);
        tokio::select! {
            command = commands.recv(), if commands_open => match command {
                Some(command) => {
                    s.on_command(command);
                    s.publish();
                }
                None => commands_open = false,
            },
            Some(finished) = s.work.join_next(), if !s.work.is_empty() => match finished {
                Ok(finished) => s.on_finished(finished),
                Err(e) => break Err(anyhow::anyhow!("a transfer task died: {e}")),
            },
            Some(ended) = s.background.join_next(), if !s.background.is_empty() => {
                if let Err(e) = ended {
                    tracing::error!("a background task died: {e}");
                }
            }
            Some(ready) = ready_rx.recv() => s.on_ready(ready).await,
            Some(committed) = committed_rx.recv() => {
                if let Err(e) = s.on_committed(committed).await {
                    break Err(e);
                }
            }
            _ = heard(&change_signal), if change_signal.is_some() => {
                s.follow_changes(Instant::now());
                s.publish();
            }
            _ = sleep_until(next_timer), if next_timer.is_some() => {}
            _ = ticks.tick() => {
                // A worker whose lease the database refused records nothing more: it stops
                // (its claims are the other workers' now; started again, it rejoins).
                if let Some(lease) = s.db.lease().filter(|l| l.is_fenced()) {
                    break Err(anyhow::anyhow!(
                        "worker {}'s lease on the shared state ran out (it was stopped or cut off \
                         for longer than {} s); the other workers took its claims back; start it \
                         again to rejoin",
                        lease.name,
                        lease.duration.as_secs()
                    ));
                }
                s.on_tick().await
            }
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

/// Waits until another engine sharing the state records a change (never, without a signal).
async fn heard(signal: &Option<Arc<tokio::sync::Notify>>) {
    match signal {
        Some(signal) => signal.notified().await,
        None => std::future::pending().await,
    }
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
        if self.unacknowledged > 0 || !self.background.is_empty() {
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
}
