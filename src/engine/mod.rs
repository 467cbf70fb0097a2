//! The engine: control plane and scheduler. It owns the jobs loaded from the state database,
//! admits work through one [`gate::Gate`], runs the data plane ([`transfer`]) on tokio tasks,
//! records every transition through the state writer, and reports what happens as [`Event`]s.
//!
//! Callers — the headless `copy`, the TUI, tests — hold an [`EngineHandle`] that sends
//! [`Command`]s over a bounded channel, and read [`Event`]s. Both are plain serialisable data.
//! The engine never imports the TUI.

mod browse;
pub mod buffers;
pub mod bwlimit;
pub mod check;
pub mod control;
pub mod filter;
pub mod gate;
mod health;
pub mod metrics;
mod model;
mod object;
pub mod plan;
pub mod retry;
mod scheduler;
pub mod snapshot;
pub mod transfer;
pub mod verify;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::location::{Location, Scheme};
use crate::state::{ErrorRecord, JobId, JobOptions, JobProgress, JobState, StateDb};
use crate::store::{Access, ChecksumKind, ObjectSink, ObjectSource, Page, StoreSettings};
pub use control::{ControllerConfig, Decision};
pub use plan::PlanSummary;
pub use retry::RetryPolicy;
pub use snapshot::{LOCAL_VIEWER, Selection, Snapshot, ViewerId};

/// Settings of one engine run.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The concurrency controller's start, bounds and tuning.
    pub concurrency: ControllerConfig,
    /// True: the controller moves the limit; false: it stays where it is set.
    pub adaptive: bool,
    /// Bytes of chunk buffers in flight at once.
    pub max_memory: u64,
    /// Retry rules.
    pub retry: RetryPolicy,
    /// The transactional checksum uploads carry.
    pub checksum: ChecksumKind,
    /// Stop once every loaded job has finished and nothing is being planned (headless runs).
    pub exit_when_idle: bool,
    /// The bandwidth cap of this run; none: the one the operator last set stands (or none).
    pub bwlimit: Option<bwlimit::BwLimit>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            concurrency: ControllerConfig::default(),
            adaptive: true,
            max_memory: 1 << 30,
            retry: RetryPolicy::default(),
            checksum: ChecksumKind::default(),
            exit_when_idle: true,
            bwlimit: None,
        }
    }
}

/// Opens the stores locations live in.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// The store to read `location` from, with `access` (AWS profile, endpoint) for it.
    async fn source(
        &self,
        location: &Location,
        access: &Access,
    ) -> anyhow::Result<Arc<dyn ObjectSource>>;
    /// The store to write `location` to, with `access` (AWS profile, endpoint) for it.
    async fn sink(
        &self,
        location: &Location,
        access: &Access,
    ) -> anyhow::Result<Arc<dyn ObjectSink>>;
    /// The buckets or containers of a cloud store, for browsing.
    async fn containers(&self, scheme: Scheme) -> anyhow::Result<Vec<String>> {
        Ok(crate::store::list_containers(scheme).await?)
    }
}

/// Opens real stores from the environment's credentials.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultStores {
    /// How the stores behave.
    pub settings: StoreSettings,
}

#[async_trait]
impl StoreFactory for DefaultStores {
    async fn source(
        &self,
        location: &Location,
        access: &Access,
    ) -> anyhow::Result<Arc<dyn ObjectSource>> {
        crate::store::open_source(location, access, self.settings).await
    }

    async fn sink(
        &self,
        location: &Location,
        access: &Access,
    ) -> anyhow::Result<Arc<dyn ObjectSink>> {
        crate::store::open_sink(location, access, self.settings).await
    }
}

/// What callers ask of the engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Plan `source` → `destination` (or re-plan the job of that route) and run it.
    Enqueue {
        /// Source location.
        source: String,
        /// Destination location.
        destination: String,
        /// Job settings.
        options: JobOptions,
    },
    /// Load unfinished jobs from the state database and run them: one job, or all of them.
    /// Paused jobs are loaded (and stay paused) only when `include_paused` is set or the job
    /// is named.
    Load {
        /// The job, or every unfinished job.
        job: Option<JobId>,
        /// Also load paused jobs.
        include_paused: bool,
    },
    /// Pause one job or every job: no new chunk starts; chunks in flight finish.
    Pause(Option<JobId>),
    /// Resume one job or every job.
    Resume(Option<JobId>),
    /// Set the concurrency limit (and switch to manual).
    SetConcurrency(u32),
    /// Raise (positive) or lower the concurrency limit by this many from the limit the engine
    /// has (and switch to manual): steps sent faster than snapshots arrive all count.
    StepConcurrency(i32),
    /// Switch between the adaptive controller and a manual limit.
    SetAdaptive(bool),
    /// Set the bandwidth cap (a rate, off, or a timetable); it is kept in the state file.
    SetBwLimit(bwlimit::BwLimit),
    /// Tell the engine what a view looks at, so snapshots carry its details (an empty
    /// selection forgets the viewer). The in-process view is [`LOCAL_VIEWER`]; the daemon
    /// gives every attached client its own.
    Watch {
        /// Whose view.
        viewer: ViewerId,
        /// What it looks at.
        selection: Selection,
    },
    /// List one level of a location (`s3://` or `az://` alone lists buckets or containers);
    /// answered by [`Event::Listing`].
    Browse {
        /// Echoed in the answer.
        request: u64,
        /// What to list, e.g. `s3://bucket/prefix/`.
        location: String,
        /// Continuation token from the previous page.
        token: Option<String>,
    },
    /// Give the failed objects of a job another chance.
    RetryFailed(JobId),
    /// Cancel a job: nothing more is sent; staged blocks are left to expire.
    Cancel(JobId),
    /// Stop: no new work; in-flight work gets a moment to finish, the rest returns to
    /// pending on the next start.
    Shutdown,
}

/// What the engine reports. Chunk and object events are sent only after the state database
/// recorded them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A route was accepted and is being planned under this job ID (a route that has a job
    /// keeps its ID); [`Event::JobPlanned`] or [`Event::PlanFailed`] follows.
    JobQueued {
        /// The job.
        job: JobId,
        /// Source location.
        source: String,
        /// Destination location.
        destination: String,
    },
    /// A job was planned (or re-planned) and starts.
    JobPlanned {
        /// The job.
        job: JobId,
        /// Source location.
        source: String,
        /// Destination location.
        destination: String,
        /// What the plan amounts to.
        summary: PlanSummary,
    },
    /// A job was loaded from the state database.
    JobLoaded {
        /// The job.
        job: JobId,
        /// Source location.
        source: String,
        /// Destination location.
        destination: String,
        /// Its state.
        state: JobState,
        /// Its counts so far.
        progress: JobProgress,
    },
    /// Planning or loading failed; nothing was copied for this route.
    PlanFailed {
        /// Source location as given.
        source: String,
        /// Destination location as given.
        destination: String,
        /// Why, and how to fix it.
        error: String,
    },
    /// A job changed state (paused, resumed, cancelled).
    JobStateChanged {
        /// The job.
        job: JobId,
        /// The new state.
        state: JobState,
    },
    /// A chunk was claimed and starts moving.
    ChunkStarted {
        /// The job.
        job: JobId,
        /// The object's key at the source (so a log line names what it is about).
        key: String,
        /// The object's index in the job.
        file: u32,
        /// The chunk's index in the object.
        chunk: u32,
        /// Which attempt this is (1 = first).
        attempt: u32,
        /// The chunk's size.
        bytes: u64,
    },
    /// The destination acknowledged a chunk.
    ChunkCompleted {
        /// The job.
        job: JobId,
        /// The object's key at the source (so a log line names what it is about).
        key: String,
        /// The object's index.
        file: u32,
        /// The chunk's index.
        chunk: u32,
        /// Bytes moved.
        bytes: u64,
        /// Read-to-acknowledge time.
        latency_ms: u64,
    },
    /// A chunk failed and will be tried again.
    ChunkRetry {
        /// The job.
        job: JobId,
        /// The object's key at the source (so a log line names what it is about).
        key: String,
        /// The object's index.
        file: u32,
        /// The chunk's index.
        chunk: u32,
        /// The attempt that failed.
        attempt: u32,
        /// Wait before the next attempt.
        delay_ms: u64,
        /// What went wrong.
        error: ErrorRecord,
    },
    /// A chunk failed for good.
    ChunkFailed {
        /// The job.
        job: JobId,
        /// The object's key at the source (so a log line names what it is about).
        key: String,
        /// The object's index.
        file: u32,
        /// The chunk's index.
        chunk: u32,
        /// What went wrong.
        error: ErrorRecord,
    },
    /// Verification before commit found blocks missing at the destination; they are sent
    /// again.
    BlocksMissing {
        /// The job.
        job: JobId,
        /// The object's index.
        file: u32,
        /// The missing chunks.
        chunks: Vec<u32>,
    },
    /// An object's upload starts over with a new session: the destination lost the old one
    /// (expired or aborted), or what was staged disagreed with the source's checksum.
    UploadRestarted {
        /// The job.
        job: JobId,
        /// The object's index.
        file: u32,
        /// What the destination said.
        error: ErrorRecord,
    },
    /// An object is committed and verified. (JSON: `file_committed`, the name scripts know.)
    #[serde(rename = "file_committed")]
    ObjectCommitted {
        /// The job.
        job: JobId,
        /// The object's index.
        file: u32,
        /// Source key.
        key: String,
        /// Destination key.
        dest_key: String,
        /// Its size.
        bytes: u64,
    },
    /// An object failed; nothing of it is visible at the destination. (JSON: `file_failed`.)
    #[serde(rename = "file_failed")]
    ObjectFailed {
        /// The job.
        job: JobId,
        /// The object's index.
        file: u32,
        /// Source key.
        key: String,
        /// Why.
        error: ErrorRecord,
    },
    /// A job finished (done, failed or cancelled).
    JobFinished {
        /// The job.
        job: JobId,
        /// How it ended.
        state: JobState,
        /// Final counts.
        progress: JobProgress,
        /// Why the whole job stopped, if it did.
        error: Option<String>,
        /// How its bytes travelled (server-side, or through blobway after the stores refused).
        #[serde(default)]
        carried: snapshot::Carried,
    },
    /// The bandwidth cap or the rate in force changed.
    BwLimitChanged {
        /// The cap as written (`off` for none).
        bwlimit: String,
        /// Bytes per second in force now; none: no cap now.
        rate: Option<u64>,
        /// Why: the operator set it, or the timetable moved on.
        reason: String,
    },
    /// The concurrency limit changed.
    ConcurrencyChanged {
        /// The new limit.
        limit: u32,
        /// Whether the controller moves it.
        adaptive: bool,
        /// What kind of change.
        decision: Decision,
        /// Why, in words.
        reason: String,
    },
    /// One page of a [`Command::Browse`].
    Listing {
        /// The request this answers.
        request: u64,
        /// What was listed.
        location: String,
        /// The page, or why it could not be listed.
        page: Result<Page, String>,
    },
    /// Something the operator should know that is not about a job (e.g. an attached view
    /// lost its daemon and is reconnecting).
    Notice {
        /// What happened.
        message: String,
    },
    /// The engine cannot go on (the state database cannot be written).
    Fatal {
        /// Why, and how to fix it.
        error: String,
    },
}

/// Sends commands to a running engine.
impl Event {
    /// The job the event is about, if it is about one.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Event::JobQueued { job, .. }
            | Event::JobPlanned { job, .. }
            | Event::JobLoaded { job, .. }
            | Event::JobStateChanged { job, .. }
            | Event::ChunkStarted { job, .. }
            | Event::ChunkCompleted { job, .. }
            | Event::ChunkRetry { job, .. }
            | Event::ChunkFailed { job, .. }
            | Event::BlocksMissing { job, .. }
            | Event::UploadRestarted { job, .. }
            | Event::ObjectCommitted { job, .. }
            | Event::ObjectFailed { job, .. }
            | Event::JobFinished { job, .. } => Some(*job),
            Event::PlanFailed { .. }
            | Event::ConcurrencyChanged { .. }
            | Event::BwLimitChanged { .. }
            | Event::Listing { .. }
            | Event::Notice { .. }
            | Event::Fatal { .. } => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
}

impl EngineHandle {
    /// A handle that sends into `commands` (an engine elsewhere, reached through a bridge).
    pub fn new(commands: mpsc::Sender<Command>) -> Self {
        Self { commands }
    }

    /// Sends a command, waiting for room in the channel.
    pub async fn send(&self, command: Command) -> anyhow::Result<()> {
        self.commands
            .send(command)
            .await
            .map_err(|_| anyhow::anyhow!("the engine has stopped"))
    }

    /// Sends a command without waiting; false when the channel is full or the engine stopped.
    pub fn try_send(&self, command: Command) -> bool {
        self.commands.try_send(command).is_ok()
    }
}

/// A running engine.
pub struct Engine {
    /// Where commands go.
    pub handle: EngineHandle,
    /// What happens, in order.
    pub events: mpsc::Receiver<Event>,
    /// The latest picture of the engine, a few times a second.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Ends when the engine stops; an error means it could not go on.
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Engine {
    /// Starts the engine on `db`: chunks left IN_PROGRESS by a previous run return to
    /// PENDING, then commands are served.
    pub fn start(
        db: StateDb,
        config: EngineConfig,
        stores: Arc<dyn StoreFactory>,
    ) -> anyhow::Result<Self> {
        db.recover_in_progress()?;
        let (commands_tx, commands_rx) = mpsc::channel(256);
        let (events_tx, events_rx) = mpsc::channel(8192);
        let (snapshots_tx, snapshots_rx) = watch::channel(Arc::new(Snapshot::default()));
        let task = tokio::spawn(scheduler::run(
            db,
            config,
            stores,
            commands_rx,
            events_tx,
            snapshots_tx,
        ));
        Ok(Self {
            handle: EngineHandle {
                commands: commands_tx,
            },
            events: events_rx,
            snapshots: snapshots_rx,
            task,
        })
    }
}
