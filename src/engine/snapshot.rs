//! The periodic picture of the engine that a view draws from: the gate, the rate, every job
//! with its progress, the rolling series, and the details of what the view is looking at (a
//! job's objects, one object's chunks, one chunk's history). Plain, serialisable data, built
//! by the scheduler a few times a second and published on a `watch` channel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::metrics::Series;
use super::plan;
use crate::state::{ChunkRecord, ChunkState, FileRecord, FileState, JobId, JobProgress, JobState};

/// The objects of a job a view lists at once: a page of those its [`ObjectQuery`] asks for,
/// read from the state file (a job may hold millions), with those under way drawn over them.
/// The view pages on from the last one it got.
pub const LISTED_OBJECTS: usize = 1_000;

/// Which of a job's objects a view lists, in index order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ObjectFilter {
    /// Every object.
    #[default]
    All,
    /// Failed objects.
    Failed,
    /// Objects still moving or committing.
    UnderWay,
    /// Objects done or skipped.
    Done,
}

impl ObjectFilter {
    /// The states it lists (all when `None`).
    pub fn states(self) -> Option<&'static [FileState]> {
        match self {
            ObjectFilter::All => None,
            ObjectFilter::Failed => Some(&[FileState::Failed]),
            ObjectFilter::UnderWay => Some(&[FileState::Transferring, FileState::Committing]),
            ObjectFilter::Done => Some(&[FileState::Done, FileState::Skipped]),
        }
    }

    /// The next filter in turn (failed first, where the trouble is).
    pub fn next(self) -> Self {
        match self {
            ObjectFilter::All => ObjectFilter::Failed,
            ObjectFilter::Failed => ObjectFilter::UnderWay,
            ObjectFilter::UnderWay => ObjectFilter::Done,
            ObjectFilter::Done => ObjectFilter::All,
        }
    }

    /// As the operator reads it.
    pub fn name(self) -> &'static str {
        match self {
            ObjectFilter::All => "all",
            ObjectFilter::Failed => "failed",
            ObjectFilter::UnderWay => "under way",
            ObjectFilter::Done => "done",
        }
    }

    /// How many of a job's objects it lists, from the job's counters.
    pub fn count(self, p: &JobProgress) -> u64 {
        let finished = p.files_done + p.files_skipped;
        match self {
            ObjectFilter::All => p.files_total,
            ObjectFilter::Failed => p.files_failed,
            ObjectFilter::UnderWay => p.files_total.saturating_sub(finished + p.files_failed),
            ObjectFilter::Done => finished,
        }
    }
}

/// The page of a job's objects a view asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectQuery {
    /// Which states.
    #[serde(default)]
    pub filter: ObjectFilter,
    /// Only objects whose source key contains this (all when empty).
    #[serde(default)]
    pub search: String,
    /// The first object index listed.
    #[serde(default)]
    pub from: u32,
}

impl ObjectQuery {
    /// True when object `index` with `record` belongs to this query's listing.
    pub fn admits(&self, index: u32, record: &FileRecord) -> bool {
        index >= self.from
            && self
                .filter
                .states()
                .is_none_or(|s| s.contains(&record.state))
            && record.key.contains(&self.search)
    }
}

/// Who looks: every view has its own selection and gets its own details.
pub type ViewerId = u64;

/// The view of the process the engine runs in (the in-process TUI).
pub const LOCAL_VIEWER: ViewerId = 0;

/// What a view is looking at; the snapshot carries details for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// The job whose objects are listed.
    pub job: Option<JobId>,
    /// Which of its objects.
    #[serde(default)]
    pub objects: ObjectQuery,
    /// The object whose chunks are shown.
    pub file: Option<u32>,
    /// The chunk being inspected.
    pub chunk: Option<u32>,
}

/// Everything a view needs, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Concurrency limit.
    pub limit: u32,
    /// True when the controller moves the limit.
    pub adaptive: bool,
    /// The bandwidth cap as written (empty or `off`: none).
    #[serde(default)]
    pub bwlimit: String,
    /// Bytes per second the cap allows now; none: no cap now.
    #[serde(default)]
    pub bw_rate: Option<u64>,
    /// Units of work in flight.
    pub in_flight: u32,
    /// Chunk buffer bytes in flight.
    pub bytes_in_flight: u64,
    /// The memory budget.
    pub memory_budget: u64,
    /// Objects held in memory (the loaded jobs' windows), now and at most since the start:
    /// bounded by the concurrency, not by the size of the jobs.
    #[serde(default)]
    pub objects_held: u64,
    #[serde(default)]
    pub objects_held_peak: u64,
    /// Bytes per second over the last seconds.
    pub rate: f64,
    /// Every job known, oldest first.
    pub jobs: Vec<JobView>,
    /// The last minutes of measurements.
    pub series: Series,
    /// The objects of the selected job.
    pub job_detail: Option<JobDetail>,
    /// The chunks of the selected object.
    pub file_chunks: Option<FileChunks>,
    /// The selected chunk.
    pub chunk_detail: Option<ChunkDetail>,
    /// With a shared state: the workers of the migration as last read (every second).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<crate::state::lease::WorkerRecord>,
    /// The details other viewers than [`LOCAL_VIEWER`] asked for; [`Snapshot::for_viewer`]
    /// gives each its own in the fields above.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub viewers: BTreeMap<ViewerId, ViewDetails>,
}

/// The details one viewer's selection asks for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ViewDetails {
    pub job_detail: Option<JobDetail>,
    pub file_chunks: Option<FileChunks>,
    pub chunk_detail: Option<ChunkDetail>,
}

impl Snapshot {
    /// The snapshot as `viewer` sees it: its own details in place, nobody else's.
    pub fn for_viewer(&self, viewer: ViewerId) -> Snapshot {
        let details = self.viewers.get(&viewer).cloned().unwrap_or_default();
        Snapshot {
            job_detail: details.job_detail,
            file_chunks: details.file_chunks,
            chunk_detail: details.chunk_detail,
            viewers: BTreeMap::new(),
            jobs: self.jobs.clone(),
            series: self.series.clone(),
            bwlimit: self.bwlimit.clone(),
            workers: self.workers.clone(),
            ..*self
        }
    }

    /// The bandwidth cap as a status line shows it: `cap 50.00 MiB/s`, with `(timetable)`
    /// when a timetable sets it (`cap off (timetable)` while it sets none); none without a
    /// cap.
    pub fn cap(&self) -> Option<String> {
        let timetable = self.bwlimit.contains(',');
        let rate = self.bw_rate.map(|r| format!("{}/s", crate::size::human(r)));
        match (rate, timetable) {
            (Some(rate), false) => Some(format!("cap {rate}")),
            (Some(rate), true) => Some(format!("cap {rate} (timetable)")),
            (None, true) => Some("cap off (timetable)".into()),
            (None, false) => None,
        }
    }

    /// What the engine as a whole is doing, for the status bar: running while a job runs or
    /// is queued; otherwise pausing or cancelling while paused or cancelled jobs drain their
    /// chunks in flight; then paused while a paused job waits; else idle.
    pub fn activity(&self) -> Activity {
        let draining = |state: JobState| -> u32 {
            self.jobs
                .iter()
                .filter(|j| j.state == state)
                .map(|j| j.in_flight)
                .sum()
        };
        let running = self
            .jobs
            .iter()
            .any(|j| matches!(j.state, JobState::Running | JobState::Queued));
        let paused = self.jobs.iter().any(|j| j.state == JobState::Paused);
        match (draining(JobState::Paused), draining(JobState::Cancelled)) {
            _ if running => Activity::Running,
            (0, 0) if paused => Activity::Paused,
            (0, 0) => Activity::Idle,
            (0, n) => Activity::Cancelling(n),
            (n, _) => Activity::Pausing(n),
        }
    }

    /// How the running jobs' bytes travel, for the status bar: none when every one goes
    /// through blobway (or nothing runs); "mixed" when they differ.
    pub fn running_carried(&self) -> Option<&'static str> {
        let mut labels = self
            .jobs
            .iter()
            .filter(|j| j.state == JobState::Running && j.carried != Carried::Client)
            .map(|j| j.carried.label());
        let first = labels.next()?;
        Some(if labels.all(|l| l == first) {
            first
        } else {
            "mixed"
        })
    }
}

/// What the engine as a whole is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Nothing to do: no job runs, is queued or drains.
    Idle,
    /// Jobs run.
    Running,
    /// Every unfinished job is paused; this many chunks in flight still drain.
    Pausing(u32),
    /// No job runs; the cancelled jobs still drain this many chunks in flight.
    Cancelling(u32),
    /// Every unfinished job is paused and nothing is in flight.
    Paused,
}

impl Activity {
    /// As the status bar reads it.
    pub fn label(self) -> String {
        match self {
            Activity::Idle => "IDLE".into(),
            Activity::Running => "RUNNING".into(),
            Activity::Pausing(n) => format!("PAUSING — {n} in flight"),
            Activity::Cancelling(n) => format!("CANCELLING — {n} in flight"),
            Activity::Paused => "PAUSED".into(),
        }
    }
}

/// One job, summarised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The job.
    pub id: JobId,
    /// Source location.
    pub source: String,
    /// Destination location.
    pub destination: String,
    /// State.
    pub state: JobState,
    /// Counts.
    pub progress: JobProgress,
    /// Bytes per second lately.
    pub rate: f64,
    /// Seconds left at the current rate.
    pub eta_secs: Option<u64>,
    /// Why it stopped, if it did.
    pub error: Option<String>,
    /// How its bytes travel.
    #[serde(default)]
    pub carried: Carried,
    /// Its chunks (and server-side copies) in flight: a paused or cancelled job still
    /// drains them.
    #[serde(default)]
    pub in_flight: u32,
}

/// How a job's bytes travel (`--transfer`), as views show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Carried {
    /// Through blobway.
    #[default]
    Client,
    /// Store to store.
    Server,
    /// Store to store until the stores refused; through blobway since.
    FellBack,
    /// Store to store, but some objects through blobway (their signed URLs were too long).
    Mixed,
    /// Store to store where the route allows (`auto`; the job is not running).
    Auto,
}

impl Carried {
    /// The words a view shows for it; empty for the ordinary client-side copy.
    pub fn label(self) -> &'static str {
        match self {
            Carried::Client => "",
            Carried::Server => "server-side",
            Carried::FellBack => "client-side (server-side refused)",
            Carried::Mixed => "server-side (some objects through blobway)",
            Carried::Auto => "auto",
        }
    }
}

impl JobView {
    /// A job as its record and counts in the state file show it (nothing moving).
    pub fn recorded(job: crate::state::JobRecord, progress: JobProgress) -> Self {
        JobView {
            id: job.id,
            source: job.source,
            destination: job.destination,
            state: job.state,
            progress,
            rate: 0.0,
            eta_secs: None,
            carried: match job.options.transfer {
                crate::store::copy::TransferMode::Client => Carried::Client,
                crate::store::copy::TransferMode::Server => Carried::Server,
                crate::store::copy::TransferMode::Auto => Carried::Auto,
            },
            error: job.error,
            in_flight: 0,
        }
    }

    /// True while the job moves or will: it runs or is queued, or it still drains chunks.
    pub fn busy(&self) -> bool {
        matches!(self.state, JobState::Running | JobState::Queued) || self.in_flight > 0
    }

    /// Its state as views name it: a paused or cancelled job that still drains chunks in
    /// flight is PAUSING or CANCELLING until they are done.
    pub fn phase(&self) -> &'static str {
        match self.state {
            JobState::Paused if self.in_flight > 0 => "PAUSING",
            JobState::Cancelled if self.in_flight > 0 => "CANCELLING",
            state => state.name(),
        }
    }

    /// Fills in the rate and the estimated time left from `rate`; a finished job has neither.
    pub fn with_rate(mut self, rate: f64) -> Self {
        // Nothing moves for a finished job, nor for a paused one that has drained.
        self.rate = if self.busy() { rate } else { 0.0 };
        let left = self
            .progress
            .bytes_total
            .saturating_sub(self.progress.bytes_done);
        let goes_on = matches!(self.state, JobState::Running | JobState::Queued);
        self.eta_secs = (rate > 0.0 && goes_on).then(|| (left as f64 / rate) as u64);
        self
    }
}

/// One object of the selected job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileView {
    /// Its index in the job.
    pub index: u32,
    /// Source key.
    pub key: String,
    /// Size.
    pub size: u64,
    /// State.
    pub state: FileState,
    /// Chunks acknowledged (known when `chunks_read`, or the object is done).
    pub chunks_done: u32,
    /// False when a page listed the object without reading its chunks (a failed one not
    /// under way): its chunks done are not known, and views say so rather than show 0.
    #[serde(default = "known")]
    pub chunks_read: bool,
    /// Chunks in all.
    pub chunk_count: u32,
    /// Chunks that needed more than one attempt.
    pub retried: u32,
    /// Why it failed.
    pub error: Option<String>,
}

fn known() -> bool {
    true
}

impl FileView {
    /// Summarises an object and its chunks (read for objects under way and the one a view
    /// opened; a done object read without them has every chunk done).
    pub fn of(index: u32, record: &FileRecord, chunks: &[ChunkRecord]) -> Self {
        let chunks_done = if chunks.is_empty() && record.state == FileState::Done {
            record.chunk_count
        } else {
            chunks
                .iter()
                .filter(|c| c.state == ChunkState::Completed)
                .count() as u32
        };
        Self {
            index,
            key: record.key.clone(),
            size: record.size,
            state: record.state,
            chunks_done,
            chunks_read: !chunks.is_empty() || record.state == FileState::Done,
            chunk_count: record.chunk_count,
            retried: chunks.iter().filter(|c| c.attempts > 1).count() as u32,
            error: record.error.as_ref().map(|e| e.message.clone()),
        }
    }
}

/// The objects of one job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    /// The job.
    pub job: JobId,
    /// The page of its objects asked for, in index order.
    pub files: Vec<FileView>,
    /// What was asked for.
    #[serde(default)]
    pub query: ObjectQuery,
    /// How many objects pass the query's filter in all (from the job's counters; unknown
    /// with a search).
    #[serde(default)]
    pub matching: Option<u64>,
    /// True while the page asked for is being read: the objects under way that pass the
    /// query stand in for it.
    #[serde(default)]
    pub loading: bool,
}

/// One chunk, as a heat-map cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkCell {
    /// State.
    pub state: ChunkState,
    /// Attempts so far.
    pub attempts: u32,
}

/// The chunks of one object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileChunks {
    /// The job.
    pub job: JobId,
    /// The object's index.
    pub file: u32,
    /// Source key.
    pub key: String,
    /// Size.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u64,
    /// One cell per chunk.
    pub cells: Vec<ChunkCell>,
}

impl FileChunks {
    /// The cells of an object.
    pub fn of(job: JobId, file: u32, record: &FileRecord, chunks: &[ChunkRecord]) -> Self {
        Self {
            job,
            file,
            key: record.key.clone(),
            size: record.size,
            chunk_size: record.chunk_size,
            cells: chunks
                .iter()
                .map(|c| ChunkCell {
                    state: c.state,
                    attempts: c.attempts,
                })
                .collect(),
        }
    }
}

/// One chunk in full: range, block ID and every recorded attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkDetail {
    /// The job.
    pub job: JobId,
    /// The object's index.
    pub file: u32,
    /// The chunk's index.
    pub chunk: u32,
    /// Source key.
    pub key: String,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The block ID it is staged under.
    pub block_id: String,
    /// Its record: state, attempts, history.
    pub record: ChunkRecord,
}

impl ChunkDetail {
    /// The detail of chunk `chunk` of an object.
    pub fn of(
        job: JobId,
        file: u32,
        chunk: u32,
        record: &FileRecord,
        chunks: &[ChunkRecord],
    ) -> Option<Self> {
        let state = chunks.get(chunk as usize)?;
        let range = record.chunk_range(chunk);
        Some(Self {
            job,
            file,
            chunk,
            key: record.key.clone(),
            start: range.start,
            end: range.end,
            block_id: plan::block_id(&record.etag, record.size, record.chunk_size, chunk),
            record: state.clone(),
        })
    }
}

/// Builds the selection's details from a job's objects.
pub fn details<'a>(
    job: JobId,
    files: impl Iterator<Item = (u32, &'a FileRecord, &'a [ChunkRecord])>,
    selection: &Selection,
    matching: Option<u64>,
    loading: bool,
) -> ViewDetails {
    let mut views = Vec::new();
    let (mut chunks_out, mut detail_out) = (None, None);
    for (index, record, chunks) in files {
        views.push(FileView::of(index, record, chunks));
        if selection.file == Some(index) {
            chunks_out = Some(FileChunks::of(job, index, record, chunks));
            if let Some(chunk) = selection.chunk {
                detail_out = ChunkDetail::of(job, index, chunk, record, chunks);
            }
        }
    }
    ViewDetails {
        job_detail: Some(JobDetail {
            job,
            files: views,
            query: selection.objects.clone(),
            matching,
            loading,
        }),
        file_chunks: chunks_out,
        chunk_detail: detail_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{JobOptions, JobRecord};

    fn view(id: JobId, state: JobState, carried: Carried) -> JobView {
        let record = JobRecord {
            id,
            source: "s3://a/".into(),
            destination: "az://b/".into(),
            options: JobOptions::default(),
            state,
            created_ms: 0,
            updated_ms: 0,
            error: None,
            planned: true,
        };
        JobView {
            carried,
            ..JobView::recorded(record, JobProgress::default())
        }
    }

    #[test]
    fn the_status_bar_reads_idle_running_pausing_then_paused() {
        let with = |jobs: Vec<JobView>, in_flight: u32| Snapshot {
            jobs,
            in_flight,
            ..Snapshot::default()
        };
        let draining = |id, state, in_flight| JobView {
            in_flight,
            ..view(id, state, Carried::Client)
        };
        assert_eq!(with(vec![], 0).activity(), Activity::Idle);
        let done = view(1, JobState::Done, Carried::Client);
        assert_eq!(with(vec![done.clone()], 0).activity(), Activity::Idle);
        let running = view(2, JobState::Running, Carried::Client);
        assert_eq!(
            with(vec![done.clone(), running], 0).activity(),
            Activity::Running
        );
        let queued = view(3, JobState::Queued, Carried::Client);
        assert_eq!(with(vec![queued], 0).activity(), Activity::Running);
        let pausing = draining(4, JobState::Paused, 5);
        assert_eq!(
            with(vec![done.clone(), pausing], 5).activity(),
            Activity::Pausing(5)
        );
        assert_eq!(Activity::Pausing(5).label(), "PAUSING — 5 in flight");
        let paused = view(4, JobState::Paused, Carried::Client);
        assert_eq!(with(vec![done, paused], 0).activity(), Activity::Paused);
        let cancelling = draining(5, JobState::Cancelled, 2);
        assert_eq!(
            with(vec![cancelling.clone()], 2).activity(),
            Activity::Cancelling(2)
        );
        let paused = view(6, JobState::Paused, Carried::Client);
        assert_eq!(
            with(vec![cancelling, paused], 2).activity(),
            Activity::Cancelling(2),
            "a cancelled job's chunks are not a pause's"
        );
    }

    #[test]
    fn a_job_that_drains_is_pausing_or_cancelling_and_a_finished_one_has_no_rate() {
        let job = |state, in_flight| JobView {
            in_flight,
            ..view(1, state, Carried::Client)
        };
        assert_eq!(job(JobState::Paused, 3).phase(), "PAUSING");
        assert_eq!(job(JobState::Paused, 0).phase(), "PAUSED");
        assert_eq!(job(JobState::Cancelled, 1).phase(), "CANCELLING");
        assert_eq!(job(JobState::Cancelled, 0).phase(), "CANCELLED");
        assert_eq!(job(JobState::Running, 9).phase(), "RUNNING");
        let done = job(JobState::Done, 0).with_rate(1e6);
        assert_eq!((done.rate, done.eta_secs), (0.0, None));
        let running = job(JobState::Running, 4).with_rate(1e6);
        assert_eq!(running.rate, 1e6);
        assert_eq!(job(JobState::Paused, 0).with_rate(1e6).rate, 0.0);
        assert_eq!(
            job(JobState::Paused, 2).with_rate(1e6).rate,
            1e6,
            "draining"
        );
    }

    #[test]
    fn the_status_bar_names_how_the_running_jobs_bytes_travel() {
        let with = |jobs: Vec<JobView>| Snapshot {
            jobs,
            ..Snapshot::default()
        };
        assert_eq!(with(vec![]).running_carried(), None);
        let client = view(1, JobState::Running, Carried::Client);
        assert_eq!(with(vec![client.clone()]).running_carried(), None);
        let server = view(2, JobState::Running, Carried::Server);
        let paused = view(3, JobState::Paused, Carried::FellBack);
        assert_eq!(
            with(vec![client.clone(), server.clone(), paused]).running_carried(),
            Some("server-side"),
            "only running jobs count"
        );
        let fell_back = view(4, JobState::Running, Carried::FellBack);
        assert_eq!(
            with(vec![client, server, fell_back]).running_carried(),
            Some("mixed")
        );
    }
}
