//! The daemon's HTTP API (axum), the same on the Unix socket and on TCP: jobs, operator
//! actions, reports, the event stream (server-sent events) and `/metrics`. On TCP every
//! request needs the bearer token. Every operator action is logged with its channel and who
//! asked (the audit trail). Described in the README ("The daemon and its API").

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::hub::{Attached, Hub};
use super::metrics::Metrics;
use crate::engine::{Command, EngineHandle, Event, Selection, Snapshot, ViewerId};
use crate::state::report::Report;
use crate::state::{JobId, JobOptions, JobState, StateDb};

/// The protocol's version: a client and a daemon that differ say so instead of misreading
/// each other.
pub const PROTOCOL: u32 = 2;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// How long `POST /v1/jobs` waits for the engine to accept a route.
const ACCEPT_WAIT: Duration = Duration::from_secs(30);

/// What every handler shares.
#[derive(Clone)]
pub struct Shared {
    pub engine: EngineHandle,
    pub db: StateDb,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Set when the daemon stops: every event stream ends.
    pub stopping: watch::Receiver<bool>,
    /// Asks the daemon to stop.
    pub stop: Arc<watch::Sender<bool>>,
}

/// Which listener a request came in on, and who sent it, for the audit trail.
#[derive(Clone, Copy, Debug)]
pub enum Channel {
    /// The Unix socket (same user or root, checked by `SO_PEERCRED`), from this user.
    Socket { uid: Option<u32> },
    /// TCP, with the bearer token.
    Tcp,
}

impl Channel {
    fn name(self) -> String {
        match self {
            Channel::Socket { uid: Some(uid) } => format!("socket (uid {uid})"),
            Channel::Socket { uid: None } => "socket".into(),
            Channel::Tcp => "tcp (bearer token)".into(),
        }
    }
}

/// Marks a request from the socket with the uid of the process that sent it.
async fn stamp_peer(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<super::socket::PeerUid>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut().insert(Channel::Socket { uid: peer.0 });
    next.run(req).await
}

/// The service: on the socket without `token` (who connects is checked there), on TCP with
/// it.
pub fn router(shared: Shared, token: Option<Arc<String>>) -> Router {
    let routes = Router::new()
        .route("/v1/version", get(version))
        .route("/v1/jobs", get(list_jobs).post(create_jobs))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/report", get(report))
        .route("/v1/jobs/{id}/{action}", post(act))
        .route("/v1/concurrency", put(concurrency))
        .route("/v1/bwlimit", put(bwlimit))
        .route("/v1/watch", post(watch_selection))
        .route("/v1/command", post(command))
        .route("/v1/events", get(events))
        .route("/v1/stop", post(stop))
        .route("/v1/workers", get(workers))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared);
    match token {
        Some(token) => routes
            .layer(axum::Extension(Channel::Tcp))
            .layer(middleware::from_fn(move |req, next| {
                require_token(token.clone(), req, next)
            })),
        None => routes.layer(middleware::from_fn(stamp_peer)),
    }
}

/// 401 unless the request carries the bearer token (compared in constant time; never
/// logged).
async fn require_token(token: Arc<String>, req: Request, next: Next) -> Response {
    use subtle::ConstantTimeEq;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        next.run(req).await
    } else {
        failure(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required: `Authorization: Bearer $BLOBWAY_TOKEN` (the token \
             `blobway serve` printed the file of)",
        )
    }
}

fn failure(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn audit(channel: Channel, action: &str) {
    tracing::info!(channel = channel.name(), "operator: {action}");
}

/// `GET /v1/version`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Version {
    pub protocol: u32,
    pub version: String,
    pub pid: u32,
    pub state: String,
}

async fn version(State(s): State<Shared>) -> Json<Version> {
    Json(Version {
        protocol: PROTOCOL,
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        state: s.db.path().display().to_string(),
    })
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

async fn list_jobs(State(s): State<Shared>, Query(page): Query<Page>) -> Response {
    let snapshot = s.snapshots.borrow().clone();
    let total = snapshot.jobs.len();
    let limit = page.limit.unwrap_or(100).min(1000);
    let jobs: Vec<_> = snapshot
        .jobs
        .iter()
        .skip(page.offset)
        .take(limit)
        .cloned()
        .collect();
    Json(serde_json::json!({ "total": total, "offset": page.offset, "jobs": jobs })).into_response()
}

fn known(s: &Shared, id: JobId) -> bool {
    // The snapshot is let go before the state file is read: the engine waits for no reader.
    let loaded = s.snapshots.borrow().jobs.iter().any(|j| j.id == id);
    loaded || matches!(s.db.job(id), Ok(Some(_)))
}

fn unknown(id: JobId) -> Response {
    failure(
        StatusCode::NOT_FOUND,
        format!("there is no job {id}; `GET /v1/jobs` lists them"),
    )
}

async fn job(State(s): State<Shared>, Path(id): Path<JobId>) -> Response {
    let snapshot = s.snapshots.borrow().clone();
    if let Some(view) = snapshot.jobs.iter().find(|j| j.id == id) {
        return Json(view).into_response();
    }
    // Recorded but not among the engine's (e.g. a destination refused at planning).
    match s.db.job(id) {
        Ok(Some(job)) => {
            let progress = s.db.progress(id).unwrap_or_default();
            Json(crate::engine::snapshot::JobView::recorded(job, progress)).into_response()
        }
        _ => unknown(id),
    }
}

/// `POST /v1/jobs`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewJobs {
    pub source: String,
    pub destinations: Vec<String>,
    /// The job's settings; 16 MiB chunks and nothing else by default.
    #[serde(default)]
    pub options: Option<JobOptions>,
}

/// A route accepted: the job it runs as.
#[derive(Debug, Serialize, Deserialize)]
pub struct Accepted {
    pub job: JobId,
    pub source: String,
    pub destination: String,
}

async fn create_jobs(
    State(s): State<Shared>,
    axum::Extension(channel): axum::Extension<Channel>,
    Json(new): Json<NewJobs>,
) -> Response {
    if new.destinations.is_empty() {
        return failure(StatusCode::BAD_REQUEST, "name at least one destination");
    }
    let mut routes = Vec::new();
    for destination in &new.destinations {
        match crate::location::parse_route(&new.source, destination) {
            Ok((src, dst)) => routes.push((src.to_string(), dst.to_string())),
            Err(e) => return failure(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    // The daemon runs in a folder of its own: a relative local path would name another place.
    for given in std::iter::once(&new.source).chain(&new.destinations) {
        let local = crate::location::Location::parse(given)
            .is_ok_and(|l| l.scheme == crate::location::Scheme::Local);
        if local && !given.starts_with('/') && !given.starts_with("file://") {
            return failure(
                StatusCode::BAD_REQUEST,
                format!(
                    "`{given}` is a relative path; the daemon runs in another folder, so give \
                     local paths from the root (/…)"
                ),
            );
        }
    }
    let options = new
        .options
        .unwrap_or_else(|| JobOptions::with_chunk_size(16 << 20));
    if let Err(e) = crate::engine::filter::Filter::new(&options.include, &options.exclude) {
        return failure(StatusCode::BAD_REQUEST, format!("{e:#}"));
    }
    if let Some(attempts) = options.max_attempts
        && !(1..=1000).contains(&attempts)
    {
        return failure(
            StatusCode::BAD_REQUEST,
            format!("max_attempts {attempts} is outside 1..=1000"),
        );
    }
    // A route whose job is under way (running, paused, queued) is answered with that job:
    // asking twice starts nothing twice.
    let mut accepted = Vec::new();
    let mut asked = Vec::new();
    for (source, destination) in routes {
        match under_way(&s, &source, &destination) {
            Some(record) => {
                let job = record.id;
                // Copying a paused route again means: go on (as it did without a daemon).
                if record.state == JobState::Paused {
                    audit(channel, &format!("resume job {job} (copied again)"));
                    for command in resume(job) {
                        if s.engine.send(command).await.is_err() {
                            return failure(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "the engine has stopped",
                            );
                        }
                    }
                }
                accepted.push(Accepted {
                    job,
                    source,
                    destination,
                })
            }
            None => asked.push((source, destination)),
        }
    }
    // Listen before asking, so the engine's answer cannot be missed.
    let mut answers = Listening(s.hub.attach(), s.hub.clone());
    for (source, destination) in &asked {
        audit(channel, &format!("copy {source} → {destination}"));
        let command = Command::Enqueue {
            source: source.clone(),
            destination: destination.clone(),
            options: options.clone(),
        };
        if s.engine.send(command).await.is_err() {
            return failure(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped");
        }
    }
    match accept(&s, &mut answers.0, &asked).await {
        Ok(jobs) => {
            accepted.extend(jobs);
            (StatusCode::ACCEPTED, Json(accepted)).into_response()
        }
        Err((status, e)) => failure(status, e),
    }
}

/// An attachment to the hub for one request's answers, let go however the request ends.
struct Listening(Attached, Arc<Hub>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.1.detach(self.0.id);
    }
}

/// The recorded job a route runs as, if it is under way (recorded unfinished, or loaded and
/// not finished — a failed job the daemon is loading again counts).
fn under_way(s: &Shared, source: &str, destination: &str) -> Option<crate::state::JobRecord> {
    let job = s.db.job_for_route(source, destination).ok()??;
    let loaded = s
        .snapshots
        .borrow()
        .jobs
        .iter()
        .any(|j| j.id == job.id && !j.state.is_finished());
    (loaded || !job.state.is_finished()).then_some(job)
}

/// Waits for the engine to accept (or refuse) each route. A route it refuses because its job
/// is already running (loaded meanwhile, e.g. as the daemon starts) is answered with that job.
async fn accept(
    s: &Shared,
    answers: &mut Attached,
    routes: &[(String, String)],
) -> Result<Vec<Accepted>, (StatusCode, String)> {
    let mut accepted = Vec::new();
    let deadline = tokio::time::Instant::now() + ACCEPT_WAIT;
    while accepted.len() < routes.len() {
        let event = tokio::time::timeout_at(deadline, answers.events.recv())
            .await
            .map_err(|_| {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    "the engine did not answer in time; `GET /v1/jobs` shows whether the job \
                     was queued"
                        .to_string(),
                )
            })?
            .ok_or((
                StatusCode::SERVICE_UNAVAILABLE,
                "the engine has stopped".to_string(),
            ))?;
        match event {
            Event::JobQueued {
                job,
                source,
                destination,
            } if routes.contains(&(source.clone(), destination.clone())) => {
                accepted.push(Accepted {
                    job,
                    source,
                    destination,
                })
            }
            Event::PlanFailed {
                source,
                destination,
                error,
            } if routes.contains(&(source.clone(), destination.clone())) => {
                match under_way(s, &source, &destination) {
                    Some(record) => accepted.push(Accepted {
                        job: record.id,
                        source,
                        destination,
                    }),
                    None => return Err((StatusCode::BAD_REQUEST, error)),
                }
            }
            _ => {}
        }
    }
    Ok(accepted)
}

async fn act(
    State(s): State<Shared>,
    axum::Extension(channel): axum::Extension<Channel>,
    Path((id, action)): Path<(JobId, String)>,
) -> Response {
    let commands = match action.as_str() {
        "pause" => vec![Command::Pause(Some(id))],
        "resume" => resume(id),
        "cancel" => vec![Command::Cancel(id)],
        "retry-failed" => vec![Command::RetryFailed(id)],
        other => {
            return failure(
                StatusCode::NOT_FOUND,
                format!("no action `{other}`: pause, resume, cancel or retry-failed"),
            );
        }
    };
    if !known(&s, id) {
        return unknown(id);
    }
    audit(channel, &format!("{action} job {id}"));
    for command in commands {
        if s.engine.send(command).await.is_err() {
            return failure(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped");
        }
    }
    StatusCode::ACCEPTED.into_response()
}

/// What resuming a job asks of the engine: a loaded paused job resumes; one not loaded is
/// loaded (and resumed).
fn resume(job: JobId) -> Vec<Command> {
    vec![
        Command::Resume(Some(job)),
        Command::Load {
            job: Some(job),
            include_paused: true,
        },
    ]
}

/// `PUT /v1/concurrency`: a fixed limit, or `"auto"`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Concurrency {
    Fixed { limit: u32 },
    Auto { auto: bool },
}

async fn concurrency(
    State(s): State<Shared>,
    axum::Extension(channel): axum::Extension<Channel>,
    Json(asked): Json<Concurrency>,
) -> Response {
    let command = match asked {
        Concurrency::Fixed { limit } if (1..=4096).contains(&limit) => {
            Command::SetConcurrency(limit)
        }
        Concurrency::Fixed { limit } => {
            return failure(
                StatusCode::BAD_REQUEST,
                format!("a limit of {limit} is outside 1..=4096"),
            );
        }
        Concurrency::Auto { auto } => Command::SetAdaptive(auto),
    };
    audit(channel, &format!("{command:?}"));
    match s.engine.send(command).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => failure(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped"),
    }
}

/// `PUT /v1/bwlimit`: `{"bwlimit": "50MiB/s"}` — a rate, `off`, or a timetable.
#[derive(Debug, Serialize, Deserialize)]
pub struct BwLimitAsked {
    /// The cap as the operator wrote it.
    pub bwlimit: crate::engine::bwlimit::BwLimit,
}

async fn bwlimit(
    State(s): State<Shared>,
    axum::Extension(channel): axum::Extension<Channel>,
    body: axum::body::Bytes,
) -> Response {
    // Read by hand, so a timetable that does not parse is answered with what is wrong.
    let asked: BwLimitAsked = match serde_json::from_slice(&body) {
        Ok(asked) => asked,
        Err(e) => return failure(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let command = Command::SetBwLimit(asked.bwlimit);
    audit(channel, &format!("{command:?}"));
    match s.engine.send(command).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => failure(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped"),
    }
}

#[derive(Deserialize)]
struct ReportQuery {
    format: Option<String>,
    /// Every object, not only those not done.
    #[serde(default)]
    all: bool,
}

async fn report(
    State(s): State<Shared>,
    Path(id): Path<JobId>,
    Query(q): Query<ReportQuery>,
) -> Response {
    let db = s.db.clone();
    let loaded = tokio::task::spawn_blocking(move || db.load_job(id)).await;
    let snapshot = match loaded {
        Ok(Ok(Some(snapshot))) => snapshot,
        Ok(Ok(None)) => return unknown(id),
        Ok(Err(e)) => return failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let report = Report::of(&snapshot, q.all);
    match q.format.as_deref().unwrap_or("json") {
        "json" => Json(report).into_response(),
        "csv" => match report.to_csv() {
            Ok(text) => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response(),
            Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        },
        other => failure(
            StatusCode::BAD_REQUEST,
            format!("format `{other}`: csv or json"),
        ),
    }
}

/// `POST /v1/watch`: what a client of the event stream looks at.
#[derive(Debug, Serialize, Deserialize)]
pub struct Watch {
    pub viewer: ViewerId,
    pub selection: Selection,
}

async fn watch_selection(State(s): State<Shared>, Json(w): Json<Watch>) -> Response {
    let command = Command::Watch {
        viewer: w.viewer,
        selection: w.selection,
    };
    match s.engine.send(command).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => failure(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped"),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Also send this client's snapshots (`event: snapshot`), as the TUI needs.
    #[serde(default)]
    snapshots: bool,
}

/// `GET /v1/events`: a `hello` naming the client's viewer ID and the protocol, then every
/// event (`event: event`, JSON data), snapshots if asked, and a `resync` with a snapshot
/// after events were dropped for a client that fell behind. Ends when the daemon stops.
async fn events(
    State(s): State<Shared>,
    Query(q): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let attached = s.hub.attach();
    let hello = serde_json::json!({ "viewer": attached.id, "protocol": PROTOCOL });
    let state = Streaming {
        shared: s,
        attached,
        snapshots: q.snapshots,
        hello: Some(hello),
        sent_first: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        let event = st.next().await?;
        Some((Ok(event), st))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

struct Streaming {
    shared: Shared,
    attached: Attached,
    snapshots: bool,
    hello: Option<serde_json::Value>,
    sent_first: bool,
}

impl Streaming {
    async fn next(&mut self) -> Option<SseEvent> {
        use std::sync::atomic::Ordering;
        if let Some(hello) = self.hello.take() {
            return Some(SseEvent::default().event("hello").data(hello.to_string()));
        }
        if self.snapshots && !self.sent_first {
            // Where things stand, before anything changes.
            self.sent_first = true;
            return Some(SseEvent::default().event("snapshot").data(self.snapshot()));
        }
        loop {
            if *self.shared.stopping.borrow() {
                return None;
            }
            if self.attached.lagging.load(Ordering::Acquire) && self.attached.events.is_empty() {
                self.shared.hub.resynced(&self.attached);
                let snapshot = self.snapshot();
                return Some(SseEvent::default().event("resync").data(snapshot));
            }
            tokio::select! {
                event = self.attached.events.recv() => {
                    let event = event?;
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    return Some(SseEvent::default().event("event").data(data));
                }
                changed = self.shared.snapshots.changed(), if self.snapshots => {
                    changed.ok()?;
                    return Some(SseEvent::default().event("snapshot").data(self.snapshot()));
                }
                _ = self.shared.stopping.changed() => {}
            }
        }
    }

    fn snapshot(&self) -> String {
        let latest = self.shared.snapshots.borrow().clone();
        let snapshot = latest.for_viewer(self.attached.id);
        serde_json::to_string(&snapshot).unwrap_or_default()
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.shared.hub.detach(self.attached.id);
        // Its view is forgotten with it.
        let (engine, viewer) = (self.shared.engine.clone(), self.attached.id);
        tokio::spawn(async move {
            let forget = Command::Watch {
                viewer,
                selection: Selection::default(),
            };
            let _ = engine.send(forget).await;
        });
    }
}

/// `POST /v1/command`: any engine command, as an attached view sends them (`Shutdown` is
/// refused: `POST /v1/stop` stops the daemon).
async fn command(
    State(s): State<Shared>,
    axum::Extension(channel): axum::Extension<Channel>,
    Json(command): Json<Command>,
) -> Response {
    match &command {
        Command::Shutdown => {
            return failure(
                StatusCode::BAD_REQUEST,
                "a view detaches by closing its stream; `POST /v1/stop` stops the daemon",
            );
        }
        Command::Watch { .. } | Command::Browse { .. } => {}
        other => audit(channel, &format!("{other:?}")),
    }
    match s.engine.send(command).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => failure(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped"),
    }
}

async fn stop(
    State(s): State<Shared>,
    axum::Extension(channel): axum::Extension<Channel>,
) -> Response {
    audit(channel, "stop the daemon");
    let _ = s.stop.send(true);
    StatusCode::ACCEPTED.into_response()
}

/// `GET /v1/workers`: the workers sharing the state, as last read (every second); empty for a
/// state of one machine.
async fn workers(State(s): State<Shared>) -> Json<Vec<crate::state::lease::WorkerRecord>> {
    Json(s.snapshots.borrow().workers.clone())
}

async fn metrics(State(s): State<Shared>) -> Response {
    let snapshot = s.snapshots.borrow().clone();
    let resyncs = s.hub.resyncs.load(std::sync::atomic::Ordering::Relaxed);
    let text = s.metrics.render(&snapshot, s.hub.clients(), resyncs);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
