//! The one thread that writes the state database. It takes every request queued since its last
//! commit, applies them in one durable transaction, and only then hands their tags back — so
//! whatever the caller does on a tag (announce a completed chunk, start a claimed one) happens
//! strictly after the record is on disk ("record after acknowledge, act after record"). Before
//! each commit it runs the caller's `before_commit` (the destinations' deferred syncs), so what
//! a record says was written is durable before the record is.

use tokio::sync::mpsc;

use super::{StateDb, StateError, Write};

/// Most requests folded into one transaction.
const MAX_BATCH: usize = 4096;

/// Writes to apply, and a tag returned once they are durable.
#[derive(Debug)]
pub struct WriteRequest<T> {
    /// The changes.
    pub writes: Vec<Write>,
    /// Handed back after the commit.
    pub tag: T,
}

/// What the writer reports after each transaction.
pub type Committed<T> = Result<Vec<T>, StateError>;

/// Starts the writer thread. It stops when every sender of `requests` is dropped, after
/// writing what was queued. After a failed commit, or a failed `before_commit`, it reports
/// the error and stops.
pub fn spawn<T: Send + 'static>(
    db: StateDb,
    mut requests: mpsc::Receiver<WriteRequest<T>>,
    committed: mpsc::UnboundedSender<Committed<T>>,
    before_commit: impl Fn() -> Result<(), String> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("blobway-state".into())
        .spawn(move || {
            let mut writes = Vec::new();
            let mut tags = Vec::new();
            while let Some(first) = requests.blocking_recv() {
                writes.extend(first.writes);
                tags.push(first.tag);
                while tags.len() < MAX_BATCH {
                    match requests.try_recv() {
                        Ok(next) => {
                            writes.extend(next.writes);
                            tags.push(next.tag);
                        }
                        Err(_) => break,
                    }
                }
                if let Err(e) = before_commit() {
                    let _ = committed.send(Err(StateError::Unsynced(e)));
                    return;
                }
                match db.apply(&writes) {
                    Ok(()) => {
                        writes.clear();
                        if committed.send(Ok(std::mem::take(&mut tags))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = committed.send(Err(e));
                        return;
                    }
                }
            }
        })
        .unwrap_or_else(|e| panic!("cannot start the state writer thread: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{JobOptions, JobRecord, JobState};

    fn job(id: u64) -> JobRecord {
        JobRecord {
            id,
            source: format!("s{id}"),
            destination: "d".into(),
            options: JobOptions::with_chunk_size(1),
            state: JobState::Queued,
            created_ms: 0,
            updated_ms: 0,
            error: None,
            planned: true,
        }
    }

    #[tokio::test]
    async fn tags_come_back_after_the_writes_are_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(&dir.path().join("s.redb")).expect("open");
        let (tx, rx) = mpsc::channel(16);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let handle = spawn(db.clone(), rx, done_tx, || Ok(()));
        for id in 1..=5u64 {
            tx.send(WriteRequest {
                writes: vec![Write::Job(job(id))],
                tag: id,
            })
            .await
            .expect("send");
        }
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let tags = done_rx.recv().await.expect("batch").expect("committed");
            for tag in tags {
                assert!(
                    db.job(tag).expect("read").is_some(),
                    "job {tag} is durable when its tag returns"
                );
                seen.push(tag);
            }
        }
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        drop(tx);
        handle.join().expect("writer stops");
    }

    #[tokio::test]
    async fn nothing_is_recorded_when_the_destination_cannot_be_synced_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(&dir.path().join("s.redb")).expect("open");
        let (tx, rx) = mpsc::channel(16);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let handle = spawn(db.clone(), rx, done_tx, || {
            Err("the local destination under /x could not be synced to disk: EIO".into())
        });
        tx.send(WriteRequest {
            writes: vec![Write::Job(job(1))],
            tag: 1u64,
        })
        .await
        .expect("send");
        let error = done_rx.recv().await.expect("answer").expect_err("refused");
        let shown = error.to_string();
        assert!(
            shown.contains("could not be synced") && shown.contains("blobway resume"),
            "{shown}"
        );
        assert!(db.job(1).expect("read").is_none(), "nothing was recorded");
        handle.join().expect("writer stops");
    }
}
