//! How workers learn that a job or a setting changed: every write transaction that records a
//! job or a setting bumps one counter row (`changes` in `blobway_meta`) and sends a
//! `NOTIFY` that PostgreSQL delivers on commit. A worker listens on a connection of its own
//! and wakes at once; the counter, cheap to poll, is the fallback that misses nothing while
//! that connection is re-made (or through PgBouncer in transaction mode, which passes no
//! notifications).

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use super::Session;
use crate::state::StateError;

/// How long a listener waits before connecting again after its connection ended.
const RECONNECT: Duration = Duration::from_secs(1);

/// Records, in the transaction of `session`, that a job or a setting changed (notified on the
/// channel `blobway_changes`).
pub(super) fn bump(session: &mut Session<'_>) -> Result<(), StateError> {
    session.execute(
        "INSERT INTO blobway_meta (name, value) VALUES ('changes', '1') ON CONFLICT (name) \
         DO UPDATE SET value = (blobway_meta.value::bigint + 1)::text",
        &[],
    )?;
    session.execute("SELECT pg_notify('blobway_changes', '')", &[])?;
    Ok(())
}

/// How many changes were recorded so far.
pub(super) fn count(session: &mut Session<'_>) -> Result<u64, StateError> {
    let row = session.query_opt("SELECT value FROM blobway_meta WHERE name = 'changes'", &[])?;
    Ok(row
        .and_then(|row| row.get::<_, String>(0).parse().ok())
        .unwrap_or(0))
}

/// Listens for changes on a connection of its own, driven by `runtime`, connecting again
/// whenever it ends; the signal is given for each change heard. It stops once the signal is
/// dropped.
pub(super) fn listen(
    config: Arc<tokio_postgres::Config>,
    runtime: &tokio::runtime::Handle,
    location: String,
) -> Arc<Notify> {
    let signal = Arc::new(Notify::new());
    let heard = Arc::downgrade(&signal);
    runtime.spawn(async move {
        while heard.strong_count() > 0 {
            if let Err(e) = listen_once(&config, &heard).await {
                tracing::debug!(database = %location, "not listening for changes: {e}");
            }
            // Changes made while not listening are found by polling the counter.
            tokio::time::sleep(RECONNECT).await;
        }
    });
    signal
}

/// One connection's life: `LISTEN`, then every notification gives the signal.
async fn listen_once(
    config: &tokio_postgres::Config,
    heard: &Weak<Notify>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listening = client.batch_execute("LISTEN blobway_changes");
    tokio::pin!(listening);
    // The connection is driven while LISTEN is under way.
    loop {
        tokio::select! {
            done = &mut listening => {
                done?;
                break;
            }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
    while let Some(message) = messages.next().await {
        if let AsyncMessage::Notification(_) = message? {
            match heard.upgrade() {
                Some(signal) => signal.notify_one(),
                None => return Ok(()),
            }
        }
    }
    Ok(())
}
