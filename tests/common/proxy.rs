//! A fault-injecting HTTP reverse proxy for the tests, on hyper/tokio: it stands between
//! blobway and an emulator and, for a seeded share of requests, answers 503 with the store's
//! own throttling body (S3 `SlowDown`, Azure `ServerBusy`), 429 with Retry-After, or 500;
//! resets the connection before forwarding or in the middle of a response body; stalls a
//! body; or adds latency. In throttle mode it answers 503 whenever more than K requests are in
//! flight. It can shape what it forwards through a simulated link (bandwidth, latency, a cap
//! per request), as the controller benchmark's real socket path does. Every fault is counted
//! with its time, for the assertions.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which store's error bodies to imitate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// S3 XML errors (`SlowDown`, `InternalError`).
    S3,
    /// Azure XML errors with `x-ms-error-code` (`ServerBusy`, `InternalError`).
    Azure,
}

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// 503 with the store's throttling body.
    Throttle,
    /// 429 with `Retry-After: 1`.
    TooManyRequests,
    /// 500 with the store's internal-error body.
    ServerError,
    /// The connection is closed before anything is forwarded.
    ResetBefore,
    /// The response starts, then the connection breaks off half-way.
    ResetMidBody,
    /// The response starts, then no byte arrives for a long time.
    Stall,
    /// The request is forwarded late.
    Latency,
}

/// How the proxy misbehaves.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// Seed of the fault dice.
    pub seed: u64,
    /// Share of requests that get a fault.
    pub rate: f64,
    /// The faults and their weights.
    pub mix: Vec<(Fault, u32)>,
    /// Throttle mode: 503 whenever more than this many requests are in flight.
    pub throttle_above: Option<u32>,
    /// Error bodies to imitate.
    pub flavor: Flavor,
    /// How long a stall lasts.
    pub stall: Duration,
    /// How much latency a latency fault adds.
    pub latency: Duration,
    /// Only requests whose path and query contain this get faults (e.g. `partNumber=`).
    pub only: Option<String>,
    /// Read the whole request body before answering an error (otherwise the answer may race
    /// the upload and the client sees a broken connection instead).
    pub read_body_first: bool,
    /// Answer every server-side copy (a request naming `x-amz-copy-source`) 403 AccessDenied,
    /// as a bucket policy that refuses outside reads does.
    pub deny_copies: bool,
    /// Answer a server-side copy whose source no longer has the ETag its
    /// `x-amz-copy-source-if-match` names 412 PreconditionFailed, as S3 does (moto ignores
    /// the header).
    pub enforce_copy_if_match: bool,
    /// Answer every request naming a version ID 403 AccessDenied, as S3 does to credentials
    /// without `s3:GetObjectVersion`.
    pub deny_version_reads: bool,
    /// Every request's body crosses this link before it is forwarded (a link's 503 is
    /// answered as the store's throttling).
    pub shape: Option<Arc<blobway::store::simulated::Link>>,
}

impl FaultConfig {
    /// No faults: a plain forwarding proxy.
    pub fn none(flavor: Flavor) -> Self {
        Self {
            seed: 1,
            rate: 0.0,
            mix: Vec::new(),
            throttle_above: None,
            flavor,
            stall: Duration::from_secs(10),
            latency: Duration::from_millis(300),
            only: None,
            read_body_first: false,
            deny_copies: false,
            enforce_copy_if_match: false,
            deny_version_reads: false,
            shape: None,
        }
    }

    /// The mixed faults of the resilience tests at `rate`.
    pub fn mixed(flavor: Flavor, rate: f64, seed: u64) -> Self {
        Self {
            seed,
            rate,
            mix: vec![
                (Fault::Throttle, 3),
                (Fault::TooManyRequests, 2),
                (Fault::ServerError, 2),
                (Fault::ResetBefore, 2),
                (Fault::ResetMidBody, 2),
                (Fault::Stall, 1),
                (Fault::Latency, 2),
            ],
            ..Self::none(flavor)
        }
    }
}

/// What the proxy did.
#[derive(Default)]
pub struct Stats {
    /// Requests seen.
    pub requests: AtomicU64,
    /// Faults injected, with when.
    pub faults: Mutex<Vec<(Instant, Fault)>>,
    /// Bytes of request bodies forwarded upstream successfully.
    pub bytes_up: AtomicU64,
    /// Bytes of response bodies passed back to the client.
    pub bytes_down: AtomicU64,
    /// Each request forwarded upstream (path and query) with the status the upstream
    /// answered, in order.
    pub answered: Mutex<Vec<(String, u16)>>,
    in_flight: AtomicU32,
}

impl Stats {
    /// How many faults of `kind` were injected.
    pub fn count(&self, kind: Fault) -> usize {
        self.faults
            .lock()
            .map(|f| f.iter().filter(|(_, k)| *k == kind).count())
            .unwrap_or(0)
    }

    /// Every fault's time and kind.
    pub fn timeline(&self) -> Vec<(Instant, Fault)> {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

/// A running proxy.
pub struct Proxy {
    /// Where to send requests, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// What it did.
    pub stats: Arc<Stats>,
    /// Faults are dealt while this is true; clear it to heal the link at run time.
    pub faulty: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

struct Shared {
    upstream: String,
    config: FaultConfig,
    rng: Mutex<StdRng>,
    stats: Arc<Stats>,
    client: Client<HttpConnector, Full<Bytes>>,
    turn: std::sync::atomic::AtomicUsize,
    faulty: Arc<AtomicBool>,
}

/// Decrements the in-flight count when the response is fully sent (or dropped).
struct InFlight(Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (e.g. `http://127.0.0.1:10000`).
    pub async fn start(upstream: &str, config: FaultConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stats = Arc::new(Stats::default());
        let faulty = Arc::new(AtomicBool::new(true));
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            config,
            stats: stats.clone(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            turn: std::sync::atomic::AtomicUsize::new(0),
            faulty: faulty.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url,
            stats,
            faulty,
            task,
        }
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn error_response(flavor: Flavor, status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let xml = match flavor {
        Flavor::S3 => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>proxy</RequestId></Error>"
        ),
        Flavor::Azure => format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ),
    };
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/xml");
    if flavor == Flavor::Azure {
        builder = builder.header("x-ms-error-code", code);
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        builder = builder.header("retry-after", "1");
    }
    builder.body(full(xml)).expect("response")
}

fn throttled(flavor: Flavor) -> Response<Body> {
    match flavor {
        Flavor::S3 => error_response(
            flavor,
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate.",
        ),
        Flavor::Azure => error_response(
            flavor,
            StatusCode::SERVICE_UNAVAILABLE,
            "ServerBusy",
            "The server is currently unable to receive requests. Please retry your request.",
        ),
    }
}

/// Whether this request gets a fault (the seeded dice), and which: the kinds take turns in
/// proportion to their weights, so every kind shows up once a handful of faults were dealt.
fn choose(shared: &Shared) -> Option<Fault> {
    let config = &shared.config;
    let turns: Vec<Fault> = config
        .mix
        .iter()
        .flat_map(|(fault, weight)| std::iter::repeat_n(*fault, *weight as usize))
        .collect();
    if turns.is_empty() || config.rate <= 0.0 {
        return None;
    }
    let mut rng = shared.rng.lock().ok()?;
    if rng.random::<f64>() >= config.rate {
        return None;
    }
    let turn = shared.turn.fetch_add(1, Ordering::SeqCst);
    // Spread each kind's turns over the cycle rather than bunching them.
    Some(turns[(turn * 5) % turns.len()])
}

/// Whether a request's copy source still has the ETag its `x-amz-copy-source-if-match`
/// names (true for any other request), as the upstream answers a HEAD of it now.
async fn copy_source_matches(shared: &Shared, request: &Request<Incoming>) -> bool {
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (Some(source), Some(wanted)) = (
        header("x-amz-copy-source"),
        header("x-amz-copy-source-if-match"),
    ) else {
        return true;
    };
    // Under the copy's own credentials (moto checks that there are some, not the signature).
    let mut head = Request::head(format!(
        "{}/{}",
        shared.upstream,
        source.trim_start_matches('/')
    ));
    for name in ["authorization", "x-amz-date", "x-amz-security-token"] {
        if let Some(value) = request.headers().get(name) {
            head = head.header(name, value);
        }
    }
    let Ok(head) = head.body(Full::new(Bytes::new())) else {
        return false;
    };
    match shared.client.request(head).await {
        Ok(answer) => answer
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|etag| etag == wanted),
        Err(_) => false,
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let stats = shared.stats.clone();
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let in_flight = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let guard = InFlight(stats.clone());
    let flavor = shared.config.flavor;
    let record = |fault: Fault| {
        if let Ok(mut faults) = stats.faults.lock() {
            faults.push((Instant::now(), fault));
        }
    };
    let targeted = match &shared.config.only {
        Some(only) => request
            .uri()
            .path_and_query()
            .is_some_and(|p| p.as_str().contains(only.as_str())),
        None => true,
    };
    let fault = match shared.config.throttle_above {
        _ if !targeted || !shared.faulty.load(Ordering::SeqCst) => None,
        Some(limit) if in_flight > limit => Some(Fault::Throttle),
        _ => choose(&shared),
    };
    if let Some(fault) = fault {
        record(fault);
    }
    // Answers `status`/`code` once the request's body is read, as a store that refuses it.
    let refuse = |request: Request<Incoming>, status, code: &str, message: &str| {
        let answer = error_response(flavor, status, code, message);
        async move {
            let (_, body) = request.into_parts();
            let _ = body.collect().await;
            Ok(answer)
        }
    };
    if shared.config.enforce_copy_if_match && !copy_source_matches(&shared, &request).await {
        return refuse(
            request,
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        )
        .await;
    }
    let names_version = request
        .uri()
        .query()
        .is_some_and(|q| q.contains("versionId="));
    let denied = (shared.config.deny_version_reads && names_version)
        || (shared.config.deny_copies && request.headers().contains_key("x-amz-copy-source"));
    if denied {
        return refuse(
            request,
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Access Denied",
        )
        .await;
    }
    // A store that answers an error after reading the whole request (as Azure and S3 do for
    // a 500 on an upload): the client then reads the answer instead of a broken connection.
    if shared.config.read_body_first
        && matches!(
            fault,
            Some(Fault::Throttle | Fault::TooManyRequests | Fault::ServerError)
        )
    {
        let (_, body) = request.into_parts();
        let _ = body.collect().await;
        return Ok(match fault {
            Some(Fault::Throttle) => throttled(flavor),
            Some(Fault::TooManyRequests) => error_response(
                flavor,
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests.",
            ),
            _ => error_response(
                flavor,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            ),
        });
    }
    match fault {
        Some(Fault::Throttle) => return Ok(throttled(flavor)),
        Some(Fault::TooManyRequests) => {
            return Ok(error_response(
                flavor,
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests.",
            ));
        }
        Some(Fault::ServerError) => {
            return Ok(error_response(
                flavor,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            ));
        }
        Some(Fault::ResetBefore) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected reset",
            ));
        }
        Some(Fault::Latency) => tokio::time::sleep(shared.config.latency).await,
        _ => {}
    }

    // Forward.
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut upstream = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{path}", shared.upstream));
    const HOP_BY_HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    ];
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            upstream = upstream.header(name, value);
        }
    }
    let length = body.len() as u64;
    if let Some(link) = &shared.config.shape
        && link.cross(length).await.is_err()
    {
        return Ok(throttled(flavor));
    }
    let upstream = upstream
        .body(Full::new(body))
        .map_err(std::io::Error::other)?;
    let response = shared
        .client
        .request(upstream)
        .await
        .map_err(std::io::Error::other)?;
    shared.stats.bytes_up.fetch_add(length, Ordering::SeqCst);
    if let Ok(mut answered) = shared.stats.answered.lock() {
        answered.push((path.to_string(), response.status().as_u16()));
    }
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();

    shared
        .stats
        .bytes_down
        .fetch_add(body.len() as u64, Ordering::SeqCst);
    let stall = shared.config.stall;
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = match fault {
        Some(Fault::ResetMidBody) if body.len() > 1 => vec![
            Ok(Frame::data(body.slice(..body.len() / 2))),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected reset mid-body",
            )),
        ],
        Some(Fault::ResetMidBody) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected reset after the store answered",
            ));
        }
        Some(Fault::Stall) if body.len() > 1 => {
            let half = body.len() / 2;
            let (first, rest) = (body.slice(..half), body.slice(half..));
            let stream = futures::stream::iter([Ok(Frame::data(first))]).chain(
                futures::stream::once(async move {
                    tokio::time::sleep(stall).await;
                    Ok(Frame::data(rest))
                }),
            );
            let body = StreamBody::new(stream.map(move |frame| {
                let _keep = &guard;
                frame
            }));
            return Ok(Response::from_parts(parts, BodyExt::boxed(body)));
        }
        Some(Fault::Stall) => {
            tokio::time::sleep(stall).await;
            vec![Ok(Frame::data(body))]
        }
        _ => vec![Ok(Frame::data(body))],
    };
    let stream = futures::stream::iter(frames).map(move |frame| {
        let _keep = &guard;
        frame
    });
    Ok(Response::from_parts(
        parts,
        BodyExt::boxed(StreamBody::new(stream)),
    ))
}
