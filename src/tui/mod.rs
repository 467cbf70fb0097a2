//! The operator's terminal UI (ratatui + crossterm on tokio): jobs, a job's objects with the
//! chunk heat-map and graphs, the chunk inspector, the bucket browser, and the keys to pause,
//! resume and retune. It holds an [`EngineHandle`](crate::engine::EngineHandle) and reads
//! events and snapshots; it never touches a store or the state file itself.
//!
//! One loop: keys, engine events and snapshots only change the [`app::App`]; a frame tick
//! draws at most 30 times a second, and only when something changed. Commands are sent
//! without waiting, so the key handler never blocks on the engine.

pub mod app;
#[doc(hidden)]
pub mod fixtures;
pub mod heatmap;
pub mod keys;
pub mod theme;
pub mod view;

use std::collections::VecDeque;
use std::time::Duration;

use futures::StreamExt;
use ratatui::crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};

use crate::engine::{Command, Engine};
use app::{App, AppOptions};

/// Frames per second at most.
const FPS: u64 = 30;

/// How long quitting waits for the engine to settle.
const QUIT_WAIT: Duration = Duration::from_secs(4);

/// How the operator left the TUI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `q`: quit (attached to a daemon: detach; its jobs keep running).
    Quit,
    /// `Q`, confirmed: stop the daemon too.
    Stop,
}

/// Runs the TUI over `engine` until the operator quits; `start` is sent first (e.g. load the
/// unfinished jobs, or queue the demo). The terminal is restored on return, error or panic.
pub async fn run(engine: Engine, options: AppOptions, start: Vec<Command>) -> anyhow::Result<Exit> {
    let (mut app, initial) = App::new(options);
    let mut terminal = ratatui::init();
    let result = event_loop(
        &mut terminal,
        engine,
        &mut app,
        start.into_iter().chain(initial),
    )
    .await;
    ratatui::restore();
    result?;
    Ok(if app.stop { Exit::Stop } else { Exit::Quit })
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    engine: Engine,
    app: &mut App,
    start: impl Iterator<Item = Command>,
) -> anyhow::Result<()> {
    let Engine {
        handle,
        mut events,
        mut snapshots,
        mut task,
    } = engine;
    let mut pending: VecDeque<Command> = start.collect();
    let mut terminal_events = EventStream::new();
    let mut frames = tokio::time::interval(Duration::from_millis(1000 / FPS));
    frames.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut dirty = true;
    let mut watching = None;
    let mut engine_running = true;
    loop {
        // Hand over what is queued without waiting; a full channel keeps the rest for later.
        while let Some(command) = pending.pop_front() {
            if !handle.try_send(command.clone()) {
                pending.push_front(command);
                break;
            }
        }
        let selection = app.selection();
        if watching.as_ref() != Some(&selection) {
            let watch = Command::Watch {
                viewer: crate::engine::LOCAL_VIEWER,
                selection: selection.clone(),
            };
            if handle.try_send(watch) {
                watching = Some(selection);
            }
        }
        if app.quit {
            break;
        }
        tokio::select! {
            input = terminal_events.next() => match input {
                Some(Ok(TermEvent::Key(key))) if key.kind == KeyEventKind::Press => {
                    pending.extend(app.handle_key(key));
                    dirty = true;
                }
                Some(Ok(TermEvent::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
            event = events.recv(), if engine_running => match event {
                Some(event) => {
                    pending.extend(app.on_event(event));
                    while let Ok(event) = events.try_recv() {
                        pending.extend(app.on_event(event));
                    }
                    dirty = true;
                }
                None => engine_running = false,
            },
            changed = snapshots.changed(), if engine_running => {
                if changed.is_ok() {
                    let latest = snapshots.borrow_and_update().clone();
                    app.on_snapshot(latest);
                    dirty = true;
                }
            }
            _ = frames.tick() => {
                if dirty {
                    terminal.draw(|frame| view::draw(frame, app))?;
                    dirty = false;
                }
            }
        }
    }
    // Quitting: the engine takes no new work; chunks in flight get a moment, the rest goes
    // back to pending on the next start. Events are drained meanwhile so it never blocks.
    let _ = tokio::time::timeout(Duration::from_secs(1), handle.send(Command::Shutdown)).await;
    let deadline = tokio::time::sleep(QUIT_WAIT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut task => break,
            event = events.recv(), if engine_running => engine_running = event.is_some(),
            _ = &mut deadline => break,
        }
    }
    Ok(())
}
