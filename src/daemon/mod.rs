//! The daemon (`blobway serve`): the engine as a service that outlives any terminal. It owns
//! the state file, resumes the unfinished jobs, and serves one HTTP API ([`api`]) on a private
//! Unix socket derived from the state file ([`socket`]) and, if asked, on TCP with a bearer
//! token (and TLS, [`tls`], required beyond loopback). The [`hub`] hands the engine's events to every attached client without ever making
//! the engine wait; [`metrics`] turns them into Prometheus text; [`client`] is the other end,
//! used by every command that finds a daemon running.
//!
//! SIGTERM, SIGINT and `POST /v1/stop` stop it: no new work is admitted, event streams end,
//! work in flight gets a moment and the rest returns to pending, and it exits 0.

pub mod api;
pub mod attach;
pub mod client;
pub mod hub;
pub mod metrics;
pub mod socket;
pub mod tls;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::engine::{Command, Engine, EngineConfig, StoreFactory};
use crate::state::StateLocation;
use api::Shared;

/// How long a stopping daemon waits for the engine before it exits anyway.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// How long a stopping daemon waits for its connections to close.
const CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// A daemon a command started stops once it has had no unfinished job and no attached client
/// for this long (one started with `blobway serve` runs until it is stopped).
const IDLE_EXIT: Duration = Duration::from_secs(60);

/// The shortest bearer token accepted from `BLOBWAY_TOKEN`.
const MIN_TOKEN: usize = 16;

/// How `blobway serve` runs.
pub struct ServeOptions {
    /// The state it serves (a file it owns, or a database it shares with other workers).
    pub state: StateLocation,
    /// Also serve the API on this TCP address (bearer token required).
    pub listen: Option<SocketAddr>,
    /// Serve TCP over TLS with this certificate and key (required beyond loopback).
    pub tls: Option<tls::TlsFiles>,
    /// The engine's settings.
    pub config: EngineConfig,
    /// The stores it opens.
    pub stores: Arc<dyn StoreFactory>,
    /// Started by a command in the background: leave the starter's session (no controlling
    /// terminal, so a closed terminal's SIGHUP never reaches it).
    pub detached: bool,
}

/// Runs the daemon in the foreground until it is stopped.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    if options.detached {
        let _ = nix::unistd::setsid();
    }
    // The socket, token and log of a database are found from a local path standing for it.
    let anchor = options.state.anchor();
    let socket_path = socket::socket_path(&anchor);
    if let Ok(running) = client::Client::at(&socket_path).version().await {
        anyhow::bail!(
            "blobway serve (pid {}) already serves {}; its socket is {}",
            running.pid,
            running.state,
            socket_path.display()
        );
    }
    // Everything an operator may have mistyped is checked before the state file is opened.
    let acceptor = options.tls.as_ref().map(tls::load).transpose()?;
    let db = options.state.open()?;
    let unix = socket::bind(&socket_path)
        .await
        .with_context(|| format!("cannot listen on {}", socket_path.display()))?;
    let tcp = match options.listen {
        Some(addr) => Some(listen_tcp(addr, &anchor, acceptor).await?),
        None => None,
    };
    let config = EngineConfig {
        exit_when_idle: false,
        ..options.config
    };
    let engine = Engine::start(db.clone(), config, options.stores)?;
    let Engine {
        handle,
        mut events,
        snapshots,
        task,
    } = engine;
    handle
        .send(Command::Load {
            job: None,
            include_paused: true,
        })
        .await?;
    // Serve once the engine has published where it stands.
    let mut first = snapshots.clone();
    let _ = tokio::time::timeout(Duration::from_secs(5), first.changed()).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Shared {
        engine: handle.clone(),
        db,
        hub: Arc::new(hub::Hub::new(hub::CLIENT_QUEUE)),
        metrics: Arc::new(metrics::Metrics::new()),
        snapshots,
        stopping: stop_rx.clone(),
        stop: Arc::new(stop_tx),
    };
    // The one reader of the engine's events: counted, logged, handed on without waiting.
    let (hub, counters) = (shared.hub.clone(), shared.metrics.clone());
    let fan_out = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            counters.observe(&event);
            log_event(&event);
            hub.publish(&event);
        }
    });
    tracing::info!(socket = %socket_path.display(), "serving {}", shared.db.path().display());
    eprintln!("blobway serve: socket {}", socket_path.display());
    let unix_server = axum::serve(
        socket::CheckedUnix(unix),
        api::router(shared.clone(), None).into_make_service_with_connect_info::<socket::PeerUid>(),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let tcp_server = tcp.map(|(listener, token)| -> Served {
        let router = api::router(shared.clone(), Some(Arc::new(token)));
        let stopping = stopped(stop_rx.clone());
        match listener {
            TcpListening::Plain(listener) => Box::pin(
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopping)
                    .into_future(),
            ),
            TcpListening::Tls(listener) => Box::pin(
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopping)
                    .into_future(),
            ),
        }
    });
    if options.detached {
        tokio::spawn(exit_when_idle(shared.clone()));
    }
    let stop = shared.stop.clone();
    let signals = tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!("{signal}: stopping");
        let _ = stop.send(true);
        // A second signal does not wait for anything.
        let signal = wait_for_signal().await;
        tracing::warn!("{signal} again: exiting at once");
        std::process::exit(130);
    });
    // The moment the daemon is asked to stop, the engine admits nothing new.
    let engine = handle.clone();
    let mut asked = stop_rx.clone();
    tokio::spawn(async move {
        let _ = asked.wait_for(|s| *s).await;
        let _ = engine.send(Command::Shutdown).await;
    });
    let servers = async {
        match tcp_server {
            Some(tcp) => {
                let (a, b) = tokio::join!(unix_server, tcp);
                a.and(b)
            }
            None => unix_server.await,
        }
    };
    // Connections that will not close (a client that stops reading, a request that never
    // ends) get a few seconds, then are dropped; an engine that ends stops the daemon.
    let grace = async {
        stopped(stop_rx.clone()).await;
        tokio::time::sleep(CONNECTION_GRACE).await;
    };
    tokio::pin!(servers, grace);
    let mut task = task;
    let mut engine_result = None;
    let served = loop {
        tokio::select! {
            served = &mut servers => break served,
            _ = &mut grace => break Ok(()),
            ended = &mut task, if engine_result.is_none() => {
                tracing::error!("the engine stopped; the daemon stops with it");
                engine_result = Some(ended);
                let _ = shared.stop.send(true);
            }
        }
    };
    let engine_result = match engine_result {
        Some(ended) => Ok(ended),
        None => tokio::time::timeout(STOP_WAIT, task).await,
    };
    signals.abort();
    fan_out.abort();
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("stopped");
    served.context("the API server failed")?;
    match engine_result {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Ok(()), // in-flight work is left to the next start, as after a crash
    }
}

/// Stops the daemon once nothing is left to do and nobody watches, for [`IDLE_EXIT`].
async fn exit_when_idle(shared: Shared) {
    // BLOBWAY_IDLE_EXIT_SECS shortens or lengthens the wait (scripts, tests).
    let idle_exit = std::env::var("BLOBWAY_IDLE_EXIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(IDLE_EXIT);
    let mut idle_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let busy = shared
            .snapshots
            .borrow()
            .jobs
            .iter()
            .any(|j| !j.state.is_finished());
        if busy || shared.hub.clients() > 0 {
            idle_since = tokio::time::Instant::now();
        } else if idle_since.elapsed() >= idle_exit {
            tracing::info!("nothing to do and nobody attached for {idle_exit:?}: stopping");
            let _ = shared.stop.send(true);
            return;
        }
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// A server running until it is stopped.
type Served = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// The TCP listener, with or without TLS.
enum TcpListening {
    Plain(tokio::net::TcpListener),
    Tls(tls::TlsListener),
}

/// Binds TCP. Beyond loopback, TLS is required: a bearer token in clear text is anyone's on
/// the path. The token comes from `BLOBWAY_TOKEN`, or is generated into a file only the user
/// can read, next to the state file, whose path is printed.
async fn listen_tcp(
    addr: SocketAddr,
    state: &Path,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<(TcpListening, String)> {
    if !addr.ip().is_loopback() && tls.is_none() {
        anyhow::bail!(
            "--listen {addr}: listening beyond loopback needs TLS; pass --tls-cert FILE and \
             --tls-key FILE (PEM), or listen on 127.0.0.1"
        );
    }
    let token = match std::env::var("BLOBWAY_TOKEN") {
        Ok(token) if token.len() >= MIN_TOKEN => token,
        Ok(token) if !token.is_empty() => anyhow::bail!(
            "BLOBWAY_TOKEN has {} characters; use at least {MIN_TOKEN} (e.g. `openssl rand -hex \
             32`)",
            token.len()
        ),
        _ => {
            let path = state.with_extension("token");
            let token = read_or_make_token(&path)?;
            eprintln!("blobway serve: the API token is in {}", path.display());
            token
        }
    };
    // Whatever text might carry it (an error quoting a request) shows it redacted.
    crate::redact::register_secret(&token);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let listening = match tls {
        Some(acceptor) => {
            eprintln!("blobway serve: https://{local} (bearer token required)");
            TcpListening::Tls(tls::TlsListener::new(listener, acceptor)?)
        }
        None => {
            eprintln!("blobway serve: http://{local} (bearer token required)");
            TcpListening::Plain(listener)
        }
    };
    Ok((listening, token))
}

/// The token in `path`, made (32 random bytes, hex) with mode 0600 if there is none.
fn read_or_make_token(path: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    if let Ok(meta) = std::fs::metadata(path)
        && (meta.mode() & 0o077 != 0 || meta.uid() != nix::unistd::getuid().as_raw())
    {
        anyhow::bail!(
            "the token file {} must be yours and readable by you alone (chmod 600)",
            path.display()
        );
    }
    if let Ok(token) = std::fs::read_to_string(path) {
        let token = token.trim().to_string();
        if token.len() >= MIN_TOKEN {
            return Ok(token);
        }
        if !token.is_empty() {
            anyhow::bail!(
                "the token file {} holds {} characters; use at least {MIN_TOKEN}, or delete it \
                 and a new token is made",
                path.display(),
                token.len()
            );
        }
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write the token file {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    Ok(token)
}

/// The audit trail's share of the engine's events: job lifecycle and failed objects.
fn log_event(event: &crate::engine::Event) {
    use crate::engine::Event;
    match event {
        Event::JobQueued {
            job,
            source,
            destination,
        } => tracing::info!(job, "job queued: {source} → {destination}"),
        Event::JobPlanned { job, summary, .. } => {
            tracing::info!(job, objects = summary.files, "job planned")
        }
        Event::JobStateChanged { job, state } => {
            tracing::info!(job, "job {}", state.name())
        }
        Event::JobFinished { job, state, .. } => {
            tracing::info!(job, "job finished: {}", state.name())
        }
        Event::ObjectFailed {
            job, key, error, ..
        } => {
            tracing::info!(
                job,
                key,
                class = error.class.name(),
                "object failed: {}",
                error.message
            )
        }
        Event::PlanFailed {
            source,
            destination,
            error,
        } => tracing::info!("plan failed: {source} → {destination}: {error}"),
        _ => {}
    }
}
