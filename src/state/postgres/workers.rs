//! Workers sharing one database: each engine joins as a worker with a lease row (name, host,
//! epoch, heartbeat judged by the database's `clock_timestamp()`), claims objects by writing
//! its epoch on them, renews its lease from a thread of its own, and gives back the claims
//! of every worker whose lease ran out. Every write transaction of a worker first checks
//! that its lease is still live (the fence): a worker stopped past its lease records
//! nothing more, whatever it still holds in memory.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Conn, PgState, PgTxn, Session, WRITE_LOCK, batch, host_name, index_of};
use crate::state::lease::{Lease, WorkerRecord};
use crate::state::{ChunkRecord, ChunkState, StateError, Write};

/// A worker's membership: its lease, and the thread that renews it and reaps the others'.
/// Dropping it (the last handle of the state) stops the thread and leaves the fleet, giving
/// its claims back.
pub(super) struct Worker {
    pub(super) lease: Arc<Lease>,
    beat: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The state without this worker (its own calls are not fenced), for leaving.
    state: PgState,
}

impl Drop for Worker {
    fn drop(&mut self) {
        {
            let (stop, wake) = &*self.beat;
            *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
            wake.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Err(e) = self.state.leave(&self.lease) {
            tracing::warn!(
                "worker {} could not leave cleanly ({e}); its claims return when its lease ends",
                self.lease.name
            );
        }
    }
}

/// This machine's boot and process namespace (`boot_id/pid:[inode]`): process IDs of two
/// workers mean the same only when these match. Empty where `/proc` does not tell.
fn machine() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if boot.trim().is_empty() || namespace.is_empty() {
        return String::new();
    }
    format!("{}/{namespace}", boot.trim())
}

/// The name a worker joins under: `BLOBWAY_WORKER_NAME`, else `host:pid`.
pub(super) fn default_name() -> String {
    match std::env::var("BLOBWAY_WORKER_NAME") {
        Ok(name) if !name.trim().is_empty() => name.trim().to_string(),
        _ => format!("{}:{}", host_name(), std::process::id()),
    }
}

impl PgState {
    /// Joins the fleet as worker `name`: a new epoch, a lease, and a thread that keeps it.
    /// The claims of a worker of the same name that is gone (its lease ended, or its process
    /// on this host is gone) come back first; a live one is refused.
    pub(super) fn join(&self, name: &str, duration: Duration) -> Result<Worker, StateError> {
        let asked = Instant::now();
        let host = host_name();
        let machine = machine();
        let pid = i64::from(std::process::id());
        let secs = duration.as_secs_f64();
        let epoch = self.transaction(|s| {
            reap(s)?;
            // A worker of this machine (and process namespace: a pid means the same only
            // within one) whose process is gone is not waited for: its claims come back now
            // rather than when its lease ends.
            if !machine.is_empty() {
                let rows = s.query(
                    "SELECT epoch, pid FROM blobway_workers WHERE state = 'running' \
                     AND machine = $1 AND pid <> $2",
                    &[&machine, &pid],
                )?;
                let gone: Vec<i64> = rows
                    .iter()
                    .filter(|row| !std::path::Path::new(&format!("/proc/{}", row.get::<_, i64>(1))).exists())
                    .map(|row| row.get(0))
                    .collect();
                if !gone.is_empty() {
                    s.execute(
                        "UPDATE blobway_workers SET state = 'expired', in_flight = 0 \
                         WHERE epoch = ANY($1)",
                        &[&gone],
                    )?;
                    give_back(s, &gone, None)?;
                }
            }
            // Workers gone for a week are forgotten.
            s.execute(
                "DELETE FROM blobway_workers WHERE state <> 'running' AND heartbeat_at < \
                 clock_timestamp() - interval '7 days' AND NOT EXISTS (SELECT 1 FROM \
                 blobway_objects o WHERE o.owner = blobway_workers.epoch)",
                &[],
            )?;
            let existing = s.query_opt(
                "SELECT epoch, host, pid, state = 'running' AND lease_until > clock_timestamp(), \
                 machine FROM blobway_workers WHERE name = $1 FOR UPDATE",
                &[&name],
            )?;
            if let Some(row) = &existing {
                let (old, old_host, old_pid, live, old_machine): (i64, String, i64, bool, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
                let gone_here = !machine.is_empty()
                    && old_machine == machine
                    && (old_pid == pid || !std::path::Path::new(&format!("/proc/{old_pid}")).exists());
                if live && !gone_here {
                    return Err(StateError::WorkerInUse {
                        url: self.location.clone(),
                        name: name.to_string(),
                        holder: format!("{old_host} (pid {old_pid})"),
                    });
                }
                give_back(s, &[old], None)?;
            }
            let epoch: i64 = s
                .query_opt("SELECT nextval('blobway_epochs')", &[])?
                .map_or(0, |row| row.get(0));
            s.execute(
                "INSERT INTO blobway_workers (name, epoch, host, pid, version, state, started_at, \
                 heartbeat_at, lease_until, machine) VALUES ($1, $2, $3, $4, $5, 'running', \
                 clock_timestamp(), clock_timestamp(), clock_timestamp() + make_interval(secs => $6), \
                 $7) ON CONFLICT (name) DO UPDATE SET epoch = EXCLUDED.epoch, host = EXCLUDED.host, \
                 machine = EXCLUDED.machine, pid = EXCLUDED.pid, version = EXCLUDED.version, state = 'running', \
                 started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, \
                 lease_until = EXCLUDED.lease_until, in_flight = 0, chunks_moved = 0, bytes_moved = 0",
                &[&name, &epoch, &host, &pid, &env!("CARGO_PKG_VERSION"), &secs, &machine],
            )?;
            Ok(epoch)
        })?;
        let lease = Arc::new(Lease::new(name.to_string(), epoch, duration, asked));
        let beat = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let (state, lease, beat) = (self.clone(), lease.clone(), beat.clone());
            std::thread::Builder::new()
                .name("blobway-lease".into())
                .spawn(move || heartbeat(&state, &lease, &beat))
                .map_err(|e| StateError::Database {
                    url: self.location.clone(),
                    detail: format!("no thread for the worker's heartbeat: {e}"),
                })?
        };
        Ok(Worker {
            lease,
            beat,
            thread: Some(thread),
            state: self.clone(),
        })
    }

    /// Runs `f` on the heartbeat's own connection (opened again when it closed), never one of
    /// the pool's: a renewal must not wait behind writes queued for the write lock.
    fn on_own<T>(
        &self,
        own: &mut Option<Conn>,
        f: impl FnOnce(&mut Session<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        if own.as_ref().is_none_or(|c| c.client.is_closed()) {
            *own = Some(self.connect()?);
        }
        self.on(own, f)
    }

    /// Gives back the claims of workers whose leases ran out, unless the write lock is busy
    /// (the next heartbeat tries again): a heartbeat never waits on other workers' writes.
    fn reap_if_free(&self, own: &mut Option<Conn>) -> Result<usize, StateError> {
        self.on_own(own, |s| {
            s.between("BEGIN", |s| {
                let free = s
                    .query_opt("SELECT pg_try_advisory_xact_lock($1)", &[&WRITE_LOCK])?
                    .is_some_and(|row| row.get::<_, bool>(0));
                if free { reap(s) } else { Ok(0) }
            })
        })
    }

    /// Renews `lease` (with what the engine reports) on the heartbeat's own connection; false
    /// when the database refused it (it ran out, or another worker of its name took over).
    fn renew(&self, own: &mut Option<Conn>, lease: &Lease) -> Result<bool, StateError> {
        let asked = Instant::now();
        let activity = lease.activity();
        let renewed = self.on_own(own, |s| {
            s.execute(
                "UPDATE blobway_workers SET heartbeat_at = clock_timestamp(), \
                 lease_until = clock_timestamp() + make_interval(secs => $2), in_flight = $3, \
                 chunks_moved = $4, bytes_moved = $5, quarantine = $6 \
                 WHERE epoch = $1 AND state = 'running' AND lease_until > clock_timestamp()",
                &[
                    &lease.epoch,
                    &lease.duration.as_secs_f64(),
                    &clamp(activity.in_flight),
                    &clamp(activity.chunks_moved),
                    &clamp(activity.bytes_moved),
                    &lease.quarantined(),
                ],
            )
        })? == 1;
        if renewed {
            lease.renewed(asked);
        }
        Ok(renewed)
    }

    /// Leaves the fleet: this worker's claims go back, its chunks in flight to pending. A
    /// worker whose lease was taken back has nothing left to give (and stays `expired`).
    fn leave(&self, lease: &Lease) -> Result<(), StateError> {
        self.transaction(|s| {
            let ours = s
                .query_opt(
                    "UPDATE blobway_workers SET state = 'left', lease_until = clock_timestamp(), \
                     in_flight = 0 WHERE epoch = $1 AND state = 'running' RETURNING epoch",
                    &[&lease.epoch],
                )?
                .is_some();
            if ours {
                give_back(s, &[lease.epoch], None)?;
            }
            Ok(())
        })
    }

    /// Fails unless `lease` is live by the database's clock (called first in each write
    /// transaction of a worker, after the write lock: nothing can give its claims away
    /// before the transaction ends).
    pub(super) fn fence(&self, s: &mut Session<'_>, lease: &Lease) -> Result<(), StateError> {
        let live = s
            .query_opt(
                "SELECT 1 FROM blobway_workers WHERE epoch = $1 AND state = 'running' \
                 AND lease_until > clock_timestamp()",
                &[&lease.epoch],
            )?
            .is_some();
        if live {
            return Ok(());
        }
        lease.fence();
        Err(StateError::Fenced {
            url: self.location.clone(),
            name: lease.name.clone(),
            lease: lease.duration.as_secs(),
        })
    }

    /// The fleet as the workers table holds it, live ones first.
    pub(super) fn list_workers(&self) -> Result<Vec<WorkerRecord>, StateError> {
        self.with(|s| {
            let rows = s.query(
                "SELECT w.name, w.host, w.pid, w.version, w.epoch, \
                 CASE WHEN w.state = 'running' AND w.lease_until <= clock_timestamp() \
                 THEN 'expired' WHEN w.state = 'running' AND w.quarantine IS NOT NULL \
                 THEN 'quarantined' ELSE w.state END, \
                 to_char(w.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                 to_char(w.heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                 EXTRACT(EPOCH FROM clock_timestamp() - w.heartbeat_at)::float8, \
                 w.in_flight, w.chunks_moved, w.bytes_moved, \
                 (SELECT count(*) FROM blobway_objects o WHERE o.owner = w.epoch \
                 AND o.state = ANY($1)), w.quarantine \
                 FROM blobway_workers w \
                 ORDER BY (w.state = 'running' AND w.lease_until > clock_timestamp()) DESC, w.name",
                &[&super::codes(&crate::state::index::UNDER_WAY)],
            )?;
            Ok(rows
                .iter()
                .map(|row| WorkerRecord {
                    name: row.get(0),
                    host: row.get(1),
                    pid: row.get(2),
                    version: row.get(3),
                    epoch: row.get(4),
                    state: row.get(5),
                    started: row.get(6),
                    heartbeat: row.get(7),
                    heartbeat_age_s: row.get(8),
                    in_flight: row.get(9),
                    chunks_moved: row.get(10),
                    bytes_moved: row.get(11),
                    claimed: row.get(12),
                    quarantine: row
                        .get::<_, Option<String>>(13)
                        .filter(|_| row.get::<_, String>(5) == "quarantined"),
                })
                .collect())
        })
    }
}

/// Renews the lease every third of it, and reaps the workers whose leases ran out, until told
/// to stop or the lease is refused.
fn heartbeat(state: &PgState, lease: &Lease, beat: &(Mutex<bool>, Condvar)) {
    let every = lease.duration / 3;
    let (stop, wake) = beat;
    let mut own = None;
    loop {
        {
            let stopped = stop.lock().unwrap_or_else(|p| p.into_inner());
            let (stopped, _) = wake
                .wait_timeout_while(stopped, every, |stopped| !*stopped)
                .unwrap_or_else(|p| p.into_inner());
            if *stopped {
                return;
            }
        }
        match state.renew(&mut own, lease) {
            Ok(true) => {}
            Ok(false) => {
                lease.fence();
                tracing::error!(
                    "worker {}'s lease ran out (it was stopped or cut off for longer than {} s); \
                     its claims went to the other workers, and it records nothing more",
                    lease.name,
                    lease.duration.as_secs()
                );
                return;
            }
            Err(e) => tracing::warn!("worker {} could not renew its lease: {e}", lease.name),
        }
        if let Err(e) = state.reap_if_free(&mut own) {
            tracing::warn!("could not give back the claims of gone workers: {e}");
        }
    }
}

/// Marks every worker whose lease ran out as expired and gives its claims back.
pub(super) fn reap(s: &mut Session<'_>) -> Result<usize, StateError> {
    let rows = s.query(
        "UPDATE blobway_workers SET state = 'expired', in_flight = 0 \
         WHERE state = 'running' AND lease_until <= clock_timestamp() RETURNING epoch, name",
        &[],
    )?;
    let epochs: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
    for row in &rows {
        tracing::info!(
            "worker {} stopped renewing its lease: its claims go back",
            row.get::<_, String>(1)
        );
    }
    if !epochs.is_empty() {
        give_back(s, &epochs, None)?;
    }
    Ok(epochs.len())
}

/// Gives back the objects the workers of `epochs` claimed (in job `job` only, when given: a
/// worker that ended it there): their chunks in flight return to pending (through the batch
/// rule, so every index stays true) and nobody owns them. Chunks they borrowed go back to
/// their objects' owners; chunks other workers borrowed of their objects stay with those
/// workers. Returns how many objects.
pub(super) fn give_back(
    s: &mut Session<'_>,
    epochs: &[i64],
    job: Option<crate::state::JobId>,
) -> Result<usize, StateError> {
    let job = job.map(|j| i64::try_from(j).unwrap_or(i64::MAX));
    let rows = s.query(
        "SELECT c.job, c.obj, c.idx, c.record FROM blobway_chunks c JOIN blobway_objects o \
         ON o.job = c.job AND o.idx = c.obj WHERE c.in_flight \
         AND ((c.hand IS NULL AND o.owner = ANY($1)) OR c.hand = ANY($1)) \
         AND ($2::bigint IS NULL OR o.job = $2)",
        &[&epochs, &job],
    )?;
    let resets = in_flight_to_pending(s, &rows)?;
    batch::apply(&mut PgTxn { session: s }, &resets)?;
    let given = s.execute(
        "UPDATE blobway_objects SET owner = NULL WHERE owner = ANY($1) \
         AND ($2::bigint IS NULL OR job = $2)",
        &[&epochs, &job],
    )?;
    Ok(usize::try_from(given).unwrap_or(usize::MAX))
}

/// The writes that return the chunks in `rows` (job, object, index, record) that are in
/// flight to pending.
pub(super) fn in_flight_to_pending(
    s: &Session<'_>,
    rows: &[tokio_postgres::Row],
) -> Result<Vec<Write>, StateError> {
    let mut resets = Vec::new();
    for row in rows {
        let mut chunk: ChunkRecord = s.record(row, 3)?;
        if chunk.state == ChunkState::InProgress {
            chunk.state = ChunkState::Pending;
            resets.push(Write::Chunk(
                row.get::<_, i64>(0).unsigned_abs(),
                index_of(row, 1),
                index_of(row, 2),
                chunk,
            ));
        }
    }
    Ok(resets)
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
