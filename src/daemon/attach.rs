//! Attaching to a daemon: an [`Engine`] whose commands, events and snapshots travel over the
//! daemon's socket, so the TUI (and anything else written against `Engine`) runs the same on
//! an engine in this process or in a daemon. The bridge follows `GET /v1/events?snapshots=true`
//! (server-sent events), forwards commands to `POST /v1/command`, and when the daemon goes
//! away says so and attaches again to whichever daemon serves the state file next.
//!
//! `Command::Shutdown` from the attached side means "detach": the daemon keeps running.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};

use super::api::Accepted;
use super::client::Client;
use crate::engine::{Command, Engine, EngineHandle, Event, Snapshot, ViewerId};
use crate::state::JobId;

/// How often a lost daemon is looked for again.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// An engine that is the daemon behind `client`.
pub fn attach(client: Client) -> Engine {
    let (commands_tx, commands_rx) = mpsc::channel(256);
    let (events_tx, events_rx) = mpsc::channel(8192);
    let (snapshots_tx, snapshots_rx) = watch::channel(Arc::new(Snapshot::default()));
    let task = tokio::spawn(bridge(client, commands_rx, events_tx, snapshots_tx));
    Engine {
        handle: EngineHandle::new(commands_tx),
        events: events_rx,
        snapshots: snapshots_rx,
        task,
    }
}

/// How long a followed job may show as finished in snapshots before its missing
/// `JobFinished` (dropped while the client lagged, or sent while it was reconnecting) is
/// taken as read.
const FINISH_GRACE: Duration = Duration::from_secs(2);

/// Follows `jobs` on an attached engine: only their events, and the events end once each
/// has finished (or failed to plan); then the bridge detaches. For `copy` run while a daemon
/// serves the state file. A job whose end was missed (a resync, a reconnect) is ended from
/// the snapshots, once it has been seen under way and then finished for [`FINISH_GRACE`].
pub fn follow(engine: Engine, jobs: &[Accepted]) -> Engine {
    let Engine {
        handle,
        mut events,
        snapshots,
        task,
    } = engine;
    let mut open: BTreeMap<JobId, (String, String)> = jobs
        .iter()
        .map(|a| (a.job, (a.source.clone(), a.destination.clone())))
        .collect();
    let (tx, rx) = mpsc::channel(8192);
    let bridge = handle.clone();
    let mut watching = snapshots.clone();
    let follower = tokio::spawn(async move {
        let mut under_way: BTreeSet<JobId> = BTreeSet::new();
        let mut seen_finished: BTreeMap<JobId, (Instant, Event)> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut snapshots_open = true;
        while !open.is_empty() {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { break };
                    let mine = match &event {
                        Event::JobFinished { job, .. } => open.remove(job).is_some(),
                        Event::PlanFailed {
                            source,
                            destination,
                            ..
                        } => {
                            let before = open.len();
                            open.retain(|_, (s, d)| {
                                (s.as_str(), d.as_str()) != (source.as_str(), destination.as_str())
                            });
                            open.len() < before
                        }
                        other => other.job().is_none_or(|job| open.contains_key(&job)),
                    };
                    if mine && tx.send(event).await.is_err() {
                        break;
                    }
                }
                changed = watching.changed(), if snapshots_open => {
                    if changed.is_err() {
                        snapshots_open = false;
                        continue;
                    }
                    let latest = watching.borrow_and_update().clone();
                    for view in latest.jobs.iter().filter(|v| open.contains_key(&v.id)) {
                        if !view.state.is_finished() {
                            under_way.insert(view.id);
                            seen_finished.remove(&view.id);
                        } else if under_way.contains(&view.id) {
                            seen_finished.entry(view.id).or_insert_with(|| {
                                (Instant::now(), Event::JobFinished {
                                    job: view.id,
                                    state: view.state,
                                    progress: view.progress,
                                    error: view.error.clone(),
                                    carried: view.carried,
                                })
                            });
                        }
                    }
                }
                _ = tick.tick() => {
                    let due: Vec<JobId> = seen_finished
                        .iter()
                        .filter(|(_, (at, _))| at.elapsed() >= FINISH_GRACE)
                        .map(|(job, _)| *job)
                        .collect();
                    for job in due {
                        if let Some((_, finished)) = seen_finished.remove(&job)
                            && open.remove(&job).is_some()
                            && tx.send(finished).await.is_err()
                        {
                            break;
                        }
                    }
                }
            }
        }
        drop(events);
        let _ = bridge.send(Command::Shutdown).await;
        task.await?
    });
    Engine {
        handle,
        events: rx,
        snapshots,
        task: follower,
    }
}

/// What the stream said.
enum Said {
    Hello(ViewerId),
    Event(Box<Event>),
    Snapshot(Box<Snapshot>),
}

async fn bridge(
    client: Client,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    snapshots: watch::Sender<Arc<Snapshot>>,
) -> anyhow::Result<()> {
    let mut viewer: Option<ViewerId> = None;
    let mut selection = None;
    let mut connected_once = false;
    loop {
        let stream = match open_stream(&client).await {
            Ok(stream) => stream,
            Err(_) => {
                // Waiting for a daemon; commands meanwhile are kept only as the selection.
                tokio::select! {
                    command = commands.recv() => match command {
                        None | Some(Command::Shutdown) => return Ok(()),
                        Some(Command::Watch { selection: s, .. }) => selection = Some(s),
                        Some(_) => notice(&events, "not connected to the daemon; try again in a moment").await,
                    },
                    _ = tokio::time::sleep(RECONNECT_EVERY) => {}
                }
                continue;
            }
        };
        if connected_once {
            notice(&events, "reconnected to the daemon").await;
        }
        connected_once = true;
        let mut stream = std::pin::pin!(stream);
        let lost = loop {
            tokio::select! {
                said = stream.next_said() => match said {
                    Some(Said::Hello(id)) => {
                        viewer = Some(id);
                        if let Some(selection) = selection.clone() {
                            let _ = forward(&client, id, Command::Watch { viewer: id, selection }).await;
                        }
                    }
                    Some(Said::Event(event)) => {
                        if let Some(event) = for_viewer(*event, viewer) {
                            let _ = events.send(event).await;
                        }
                    }
                    Some(Said::Snapshot(snapshot)) => {
                        snapshots.send_replace(Arc::new(*snapshot));
                    }
                    None => break true,
                },
                // Commands wait for the daemon's hello, which names this viewer.
                command = commands.recv(), if viewer.is_some() => match command {
                    None | Some(Command::Shutdown) => return Ok(()),
                    Some(command) => {
                        if let Command::Watch { selection: s, .. } = &command {
                            selection = Some(s.clone());
                        }
                        if let Some(id) = viewer
                            && let Err(e) = forward(&client, id, command).await
                        {
                            notice(&events, &format!("the daemon refused: {e:#}")).await;
                        }
                    }
                },
            }
        };
        if lost {
            viewer = None;
            notice(&events, "the daemon went away; reconnecting…").await;
            tokio::time::sleep(RECONNECT_EVERY).await;
        }
    }
}

async fn notice(events: &mpsc::Sender<Event>, message: &str) {
    let _ = events
        .send(Event::Notice {
            message: message.into(),
        })
        .await;
}

/// Sends a command as this viewer: its view and its listing requests are its own.
async fn forward(client: &Client, viewer: ViewerId, command: Command) -> anyhow::Result<()> {
    let command = match command {
        Command::Watch { selection, .. } => Command::Watch { viewer, selection },
        Command::Browse {
            request,
            location,
            token,
        } => Command::Browse {
            request: (viewer << 32) | (request & 0xffff_ffff),
            location,
            token,
        },
        other => other,
    };
    client
        .request(hyper::Method::POST, "/v1/command", Some(&command))
        .await?
        .ok()
}

/// An event as this viewer sees it: listings answer only its own requests.
fn for_viewer(event: Event, viewer: Option<ViewerId>) -> Option<Event> {
    match event {
        Event::Listing {
            request,
            location,
            page,
        } => {
            let mine = viewer.is_some_and(|v| request >> 32 == v);
            mine.then_some(Event::Listing {
                request: request & 0xffff_ffff,
                location,
                page,
            })
        }
        other => Some(other),
    }
}

/// The daemon's event stream, read as server-sent events.
struct SseStream {
    body: hyper::body::Incoming,
    buffer: BytesMut,
}

async fn open_stream(client: &Client) -> anyhow::Result<SseStream> {
    let stream = super::socket::connect(client.socket()).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::get("/v1/events?snapshots=true")
        .header(header::HOST, "blobway")
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "the daemon answered {}",
        response.status()
    );
    Ok(SseStream {
        body: response.into_body(),
        buffer: BytesMut::new(),
    })
}

impl SseStream {
    /// The next message the stream says; `None` when it ends.
    async fn next_said(&mut self) -> Option<Said> {
        loop {
            if let Some(block) = self.take_block() {
                if let Some(said) = parse(&block) {
                    return Some(said);
                }
                continue;
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }

    /// One message (up to a blank line) out of the buffer.
    fn take_block(&mut self) -> Option<String> {
        let text = &self.buffer[..];
        let end = text.windows(2).position(|w| w == b"\n\n")?;
        let block = String::from_utf8_lossy(&text[..end]).into_owned();
        let _ = self.buffer.split_to(end + 2);
        Some(block)
    }
}

/// One server-sent event: `event:` names it, `data:` lines carry JSON.
fn parse(block: &str) -> Option<Said> {
    let mut name = "message";
    let mut data = String::new();
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            name = value.trim();
        } else if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    match name {
        "hello" => {
            let hello: serde_json::Value = serde_json::from_str(&data).ok()?;
            hello["viewer"].as_u64().map(Said::Hello)
        }
        "event" => serde_json::from_str(&data)
            .ok()
            .map(|e| Said::Event(Box::new(e))),
        "snapshot" | "resync" => serde_json::from_str(&data)
            .ok()
            .map(|s| Said::Snapshot(Box::new(s))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_read_across_lines() {
        let hello = parse("event: hello\ndata: {\"viewer\":7,\"protocol\":1}");
        assert!(matches!(hello, Some(Said::Hello(7))));
        let event = parse("event: event\ndata: {\"event\":\"notice\",\"message\":\"hi\"}");
        assert!(
            matches!(event, Some(Said::Event(e)) if *e == Event::Notice { message: "hi".into() })
        );
        assert!(parse(": keep-alive").is_none());
    }

    #[test]
    fn each_viewer_sees_only_the_listings_it_asked_for() {
        let listing = |request| Event::Listing {
            request,
            location: "s3://".into(),
            page: Err("x".into()),
        };
        let mine = for_viewer(listing((3 << 32) | 5), Some(3));
        assert!(matches!(mine, Some(Event::Listing { request: 5, .. })));
        assert!(for_viewer(listing((4 << 32) | 5), Some(3)).is_none());
    }
}
