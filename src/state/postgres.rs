//! The shared backend: one PostgreSQL database holds the state of a migration, the same
//! records, transitions and invariants as the embedded file ([`super::batch`] applies every
//! batch for both). Records are stored as the file stores them ([`super::codec`]); an object's
//! state and source key are columns too, which index them.
//!
//! The engine's state calls are synchronous (redb is); each runs its statements on one of a
//! few pooled connections with `futures::executor::block_on`, while the connections' I/O is
//! driven by a runtime of their own on one thread — so a call works from any thread, inside
//! the engine's runtime or not. A closed connection is opened again on its next use.
//!
//! The URL's password never leaves this module: every message names the database by its
//! URL with the password taken out ([`redacted`]).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::executor::block_on;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use super::batch::{self, LAST_JOB_ID};
use super::codec::Stored;
use super::names::{self, Claim, NameClash};
use super::sealed::{self, SessionKey};
mod changes;
mod workers;

use super::lease::{Lease, WorkerRecord};
use super::{
    Backend, ChunkRecord, ChunkState, FileRecord, FileState, JobId, JobProgress, JobRecord,
    JobSnapshot, StateError, TableUsage, UnderWay, Write, counts, index, route_key,
};
use crate::store::rules::Naming;

/// The schema this blobway writes in a database. A database with a newer one is refused, so
/// an older blobway never misreads what a newer one wrote.
pub const SCHEMA_VERSION: i64 = 3;

/// Connections per process: the writer, the scheduler's reads and a view's at once.
const CONNECTIONS: usize = 4;

/// Tells schema changes of several workers starting at once apart (`pg_advisory_xact_lock`).
const SCHEMA_LOCK: i64 = 0x626c_6f62_7761_7901;

/// Serialises the write transactions of a database (`pg_advisory_xact_lock`): a batch reads
/// records and writes what follows from them (counters, key holders, name claims), as one
/// redb write transaction at a time does.
const WRITE_LOCK: i64 = 0x626c_6f62_7761_7902;

/// How long a statement may run (`statement_timeout`) before the server gives up on it; with
/// `idle_in_transaction_session_timeout`, TCP keepalives and `tcp_user_timeout`, a database
/// that drops off the network fails calls within about a minute instead of hanging them.
const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The tables, created (or found) at open. Keys and routes sort by their bytes (`COLLATE
/// "C"`), as the embedded file sorts them.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS blobway_meta (
    name text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS blobway_jobs (
    id bigint PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS blobway_routes (
    route text COLLATE "C" PRIMARY KEY,
    job bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS blobway_objects (
    job bigint NOT NULL,
    idx bigint NOT NULL,
    state smallint NOT NULL,
    key text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (job, idx)
);
CREATE INDEX IF NOT EXISTS blobway_objects_by_state ON blobway_objects (job, state, idx);
CREATE TABLE IF NOT EXISTS blobway_keys (
    job bigint NOT NULL,
    key text COLLATE "C" NOT NULL,
    idx bigint NOT NULL,
    PRIMARY KEY (job, key)
);
CREATE TABLE IF NOT EXISTS blobway_chunks (
    job bigint NOT NULL,
    obj bigint NOT NULL,
    idx bigint NOT NULL,
    in_flight boolean NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (job, obj, idx)
);
CREATE INDEX IF NOT EXISTS blobway_chunks_in_flight ON blobway_chunks (job, obj, idx)
    WHERE in_flight;
CREATE TABLE IF NOT EXISTS blobway_counts (
    job bigint PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS blobway_listings (
    job bigint PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS blobway_names (
    job bigint NOT NULL,
    claim text COLLATE "C" NOT NULL,
    holder text NOT NULL,
    PRIMARY KEY (job, claim)
);
CREATE SEQUENCE IF NOT EXISTS blobway_epochs;
CREATE TABLE IF NOT EXISTS blobway_workers (
    name text COLLATE "C" PRIMARY KEY,
    epoch bigint NOT NULL UNIQUE,
    host text NOT NULL,
    machine text NOT NULL,
    pid bigint NOT NULL,
    version text NOT NULL,
    state text NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    lease_until timestamptz NOT NULL,
    in_flight bigint NOT NULL DEFAULT 0,
    chunks_moved bigint NOT NULL DEFAULT 0,
    bytes_moved bigint NOT NULL DEFAULT 0
);
ALTER TABLE blobway_objects ADD COLUMN IF NOT EXISTS owner bigint;
ALTER TABLE blobway_listings ADD COLUMN IF NOT EXISTS owner bigint;
CREATE INDEX IF NOT EXISTS blobway_objects_by_owner ON blobway_objects (owner)
    WHERE owner IS NOT NULL;
ALTER TABLE blobway_chunks ADD COLUMN IF NOT EXISTS hand bigint;
ALTER TABLE blobway_workers ADD COLUMN IF NOT EXISTS quarantine text;
CREATE INDEX IF NOT EXISTS blobway_chunks_lent ON blobway_chunks (job, obj, idx)
    WHERE hand IS NOT NULL;
"#;

/// True when `location` names a PostgreSQL database rather than a file: a `postgres://` or
/// `postgresql://` URL (any case), or libpq's `key=value` form (`host=… dbname=…`).
pub fn is_url(location: &str) -> bool {
    let lower = location.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://")
        || lower.starts_with("postgresql://")
        || (lower.contains('=')
            && lower
                .split_whitespace()
                .any(|pair| pair.starts_with("host=") || pair.starts_with("dbname=")))
}

/// `url` without its password (and without any `password=` parameter): how messages name it.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            let query: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| {
                    let secret = k.eq_ignore_ascii_case("password");
                    (
                        k.into_owned(),
                        if secret { "***".into() } else { v.into_owned() },
                    )
                })
                .collect();
            if !query.is_empty() {
                parsed.query_pairs_mut().clear().extend_pairs(query);
            }
            parsed.to_string()
        }
        // libpq's `key=value` form (or a URL the parser refuses): every password value masked.
        Err(_) => url
            .split_whitespace()
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ if pair.contains('@') => "…@…".to_string(),
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The local path standing for the database at `url` (redacted or not: the same path):
/// `<data folder>/blobway/postgres/<hash of its redacted URL>/state`.
pub fn anchor(url: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    // What names the database, however the URL spells it (scheme, default port, parameters
    // in another order, another password): user, hosts, ports and database.
    let identity = match url.parse::<tokio_postgres::Config>() {
        Ok(config) => format!(
            "{:?}|{:?}|{:?}|{:?}",
            config.get_user(),
            config.get_hosts(),
            if config.get_ports().is_empty() {
                &[5432][..]
            } else {
                config.get_ports()
            },
            config.get_dbname()
        ),
        Err(_) => redacted(url),
    };
    let digest = Sha256::digest(identity.as_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    super::StateDb::default_path()
        .with_file_name("postgres")
        .join(name)
        .join("state")
}

/// A pool slot whose holder panicked, its connection dropped (it may be mid-transaction).
fn fresh<'a>(
    poisoned: std::sync::PoisonError<MutexGuard<'a, Option<Conn>>>,
) -> MutexGuard<'a, Option<Conn>> {
    let mut guard = poisoned.into_inner();
    *guard = None;
    guard
}

/// One pooled connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

/// The PostgreSQL state; cheap to clone.
#[derive(Clone)]
pub struct PgState {
    /// The URL without its password.
    location: String,
    /// The same, as a path (what [`Backend::path`] gives for messages).
    shown: PathBuf,
    config: Arc<tokio_postgres::Config>,
    pool: Arc<Vec<Mutex<Option<Conn>>>>,
    /// Seals upload sessions that are bearer secrets ([`super::sealed`]); none: they are
    /// refused.
    key: Option<Arc<SessionKey>>,
    /// This database's own ID (in its settings), bound into every sealed session so that one
    /// copied from another database does not open here.
    database_id: Arc<std::sync::OnceLock<String>>,
    /// Opened to read only ([`PgState::open_reader`]): sealed sessions stay sealed without
    /// a key (no view needs them).
    reader: bool,
    /// This engine's membership of the fleet ([`workers`]): its writes are fenced by its
    /// lease, and it claims the objects it works on. It leaves when the last handle goes.
    worker: Option<Arc<workers::Worker>>,
    /// Given when another worker recorded a change of a job or a setting ([`changes`]).
    changed: Option<Arc<tokio::sync::Notify>>,
    /// Drives the connections' I/O.
    runtime: Arc<Driver>,
}

/// The runtime the connections' I/O runs on; dropped without waiting (the last handle may
/// go inside the engine's runtime, where waiting is not allowed).
struct Driver(Option<tokio::runtime::Runtime>);

impl Driver {
    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl PgState {
    /// Connects to the database at `url`, creating or checking blobway's tables; bearer
    /// sessions are sealed with the key in `BLOBWAY_STATE_KEY`, if one is set.
    pub fn open(url: &str) -> Result<Self, StateError> {
        let key = SessionKey::from_env().map_err(|detail| StateError::Database {
            url: redacted(url),
            detail,
        })?;
        Self::open_with(url, key)
    }

    /// [`PgState::open`] with the key given (none: bearer sessions are refused), joining
    /// the fleet under `BLOBWAY_WORKER_NAME` (else `host:pid`).
    pub fn open_with(url: &str, key: Option<SessionKey>) -> Result<Self, StateError> {
        Self::open_worker(
            url,
            key,
            &workers::default_name(),
            Lease::duration_from_env(),
        )
    }

    /// Connects as worker `name` with leases of `lease`: every write it makes is fenced by
    /// its lease, and it claims the objects it works on.
    pub fn open_worker(
        url: &str,
        key: Option<SessionKey>,
        name: &str,
        lease: std::time::Duration,
    ) -> Result<Self, StateError> {
        let mut state = Self::connect_to(url, key, false)?;
        state.worker = Some(Arc::new(state.join(name, lease)?));
        // Behind a pooler that passes no notifications (PgBouncer in transaction mode) the
        // operator may turn listening off: the count of changes is then all that is read.
        let listen = std::env::var("BLOBWAY_STATE_LISTEN").unwrap_or_default();
        if !matches!(
            listen.trim().to_ascii_lowercase().as_str(),
            "off" | "0" | "false" | "no"
        ) {
            state.changed = Some(changes::listen(
                state.config.clone(),
                &state.runtime.handle(),
                state.location.clone(),
            ));
        }
        Ok(state)
    }

    /// Connects to read what the database holds (`jobs`, `report`) while another blobway may
    /// serve it: no lock is taken, and every read sees one committed snapshot.
    /// It writes nothing (its sessions are read-only, and it creates no tables) and needs no
    /// key (sealed sessions stay sealed).
    pub fn open_reader(url: &str) -> Result<Self, StateError> {
        Self::connect_to(url, None, true)
    }

    /// Connects, creating or checking blobway's tables (a `reader` only checks them).
    fn connect_to(url: &str, key: Option<SessionKey>, reader: bool) -> Result<Self, StateError> {
        let location = redacted(url);
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| StateError::Database {
                url: location.clone(),
                detail: format!(
                    "the URL does not parse ({}); write it as postgres://user:password@host:port/database",
                    clean(&e.to_string(), url)
                ),
            })?;
        if let Some(password) = config.get_password() {
            crate::redact::register_secret(&String::from_utf8_lossy(password));
        }
        config
            .keepalives_idle(std::time::Duration::from_secs(15))
            .keepalives_interval(std::time::Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(std::time::Duration::from_secs(30))
            .options(format!(
                "-c statement_timeout={} -c idle_in_transaction_session_timeout=5000{}",
                STATEMENT_TIMEOUT.as_millis(),
                if reader {
                    " -c default_transaction_read_only=on"
                } else {
                    ""
                }
            ));
        // Who is connected, as `pg_stat_activity` shows it (and a second blobway is told).
        config.application_name(format!(
            "blobway {} pid {} on {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            host_name()
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("blobway-postgres")
            .enable_all()
            .build()
            .map_err(|e| StateError::Database {
                url: location.clone(),
                detail: format!("no thread for its connections: {e}"),
            })?;
        let state = Self {
            shown: PathBuf::from(&location),
            location,
            config: Arc::new(config),
            pool: Arc::new((0..CONNECTIONS).map(|_| Mutex::new(None)).collect()),
            runtime: Arc::new(Driver(Some(runtime))),
            key: key.map(Arc::new),
            database_id: Arc::new(std::sync::OnceLock::new()),
            reader,
            worker: None,
            changed: None,
        };
        state.init_schema()?;
        let id = state.with(|s| {
            Ok(s.query_opt(
                "SELECT value FROM blobway_meta WHERE name = 'database_id'",
                &[],
            )?
            .map(|row| row.get::<_, String>(0))
            .unwrap_or_default())
        })?;
        let _ = state.database_id.set(id);
        Ok(state)
    }

    /// This worker's fencing epoch (`None`: not a worker).
    fn epoch(&self) -> Option<i64> {
        self.worker.as_ref().map(|w| w.lease.epoch)
    }

    /// The URL without its password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// A new connection, its I/O driven by the state's own runtime.
    fn connect(&self) -> Result<Conn, StateError> {
        let config = self.config.clone();
        let runtime = self.runtime.handle();
        let (client, connection) = block_on(runtime.spawn(async move {
            let connect = config.connect(NoTls);
            match tokio::time::timeout(std::time::Duration::from_secs(10), connect).await {
                Ok(result) => result.map_err(Some),
                Err(_) => Err(None),
            }
        }))
        .map_err(|e| StateError::Database {
            url: self.location.clone(),
            detail: format!("its connection task ended: {e}"),
        })?
        .map_err(|e| match e {
            Some(e) => self.error("connected to", &e),
            None => StateError::Unreachable {
                url: self.location.clone(),
                detail: "no answer within 10 s".into(),
            },
        })?;
        let location = self.location.clone();
        runtime.spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(database = %location, "a state database connection ended: {e}");
            }
        });
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    /// A pooled connection, open: a free one if there is one, else the next in turn.
    fn conn(&self) -> Result<MutexGuard<'_, Option<Conn>>, StateError> {
        // A slot whose holder panicked may hold a connection inside a transaction: it is
        // closed and opened again, never reused.
        let mut guard = None;
        for slot in self.pool.iter() {
            match slot.try_lock() {
                Ok(held) => guard = Some(held),
                Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                    slot.clear_poison();
                    guard = Some(fresh(poisoned));
                }
                Err(std::sync::TryLockError::WouldBlock) => continue,
            }
            break;
        }
        let mut guard = match guard {
            Some(guard) => guard,
            None => {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.pool.len();
                let slot = &self.pool[i];
                slot.lock().unwrap_or_else(|poisoned| {
                    slot.clear_poison();
                    fresh(poisoned)
                })
            }
        };
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *guard = Some(self.connect()?);
        }
        Ok(guard)
    }

    /// Runs `f` on a pooled connection.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Session<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let mut guard = self.conn()?;
        self.on(&mut guard, f)
    }

    /// Runs `f` on the connection in `slot`; one whose transaction could not be ended is
    /// dropped, never used again.
    fn on<T>(
        &self,
        slot: &mut Option<Conn>,
        f: impl FnOnce(&mut Session<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let Some(conn) = slot.as_mut() else {
            return Err(StateError::Unreachable {
                url: self.location.clone(),
                detail: "no connection".into(),
            });
        };
        let mut session = Session {
            state: self,
            client: &conn.client,
            statements: &mut conn.statements,
            broken: false,
        };
        let result = f(&mut session);
        if session.broken {
            *slot = None;
        }
        result
    }

    /// Runs `f` in one write transaction on a pooled connection, committed (durably, and one
    /// write transaction of the database at a time) when it returns `Ok`.
    fn transaction<T>(
        &self,
        f: impl FnOnce(&mut Session<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.within("BEGIN", |session| {
            session.batch("SET LOCAL synchronous_commit = on")?;
            session.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
            if let Some(worker) = &self.worker {
                self.fence(session, &worker.lease)?;
            }
            f(session)
        })
    }

    /// Runs `f` in one read-only transaction that sees one snapshot (an object and its chunks
    /// as one commit left them).
    fn snapshot<T>(
        &self,
        f: impl FnOnce(&mut Session<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.within("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", f)
    }

    /// Runs `f` between `begin` and COMMIT (ROLLBACK when it fails); a connection whose
    /// transaction could not be ended is closed.
    fn within<T>(
        &self,
        begin: &'static str,
        f: impl FnOnce(&mut Session<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.with(|session| session.between(begin, f))
    }

    fn init_schema(&self) -> Result<(), StateError> {
        // A database already at this schema is only read: no DDL (it needs the CREATE privilege
        // and locks tables) for a command that reads it.
        let current = self.with(|s| {
            let encoding: String = s
                .query_opt("SHOW server_encoding", &[])?
                .map(|row| row.get(0))
                .unwrap_or_default();
            if !encoding.eq_ignore_ascii_case("UTF8") {
                return Err(StateError::Database {
                    url: self.location.clone(),
                    detail: format!(
                        "its encoding is {encoding}; object keys need UTF8: create the \
                         database with ENCODING 'UTF8'"
                    ),
                });
            }
            let found = s
                .query_opt("SELECT value FROM blobway_meta WHERE name = 'schema'", &[])
                // No table yet: it is created below.
                .ok()
                .flatten()
                .map(|row| row.get::<_, String>(0));
            Ok(found)
        });
        match current? {
            Some(v) if v == SCHEMA_VERSION.to_string() => return Ok(()),
            Some(found) if self.reader && older(&found) => {
                return Err(StateError::Database {
                    url: self.location.clone(),
                    detail: format!(
                        "it holds schema version {found} from an older blobway; start a worker \
                         of this version once (`blobway serve --state …`) to upgrade it"
                    ),
                });
            }
            Some(found) if self.reader => {
                return Err(StateError::DatabaseSchema {
                    url: self.location.clone(),
                    found,
                    reads: SCHEMA_VERSION,
                });
            }
            None if self.reader => {
                return Err(StateError::Database {
                    url: self.location.clone(),
                    detail: "it holds no blobway state yet (no blobway_meta table); check the \
                             database name"
                        .into(),
                });
            }
            _ => {}
        }
        self.transaction(|s| {
            s.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
            s.batch(SCHEMA)?;
            let found = s
                .query_opt("SELECT value FROM blobway_meta WHERE name = 'schema'", &[])?
                .map(|row| row.get::<_, String>(0));
            match found {
                None => {
                    s.execute(
                        "INSERT INTO blobway_meta (name, value) VALUES ('schema', $1)",
                        &[&SCHEMA_VERSION.to_string()],
                    )?;
                    let id: [u8; 16] = rand::random();
                    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
                    s.execute(
                        "INSERT INTO blobway_meta (name, value) VALUES ('database_id', $1) \
                         ON CONFLICT (name) DO NOTHING",
                        &[&id],
                    )?;
                }
                Some(v) if v == SCHEMA_VERSION.to_string() => {}
                // The tables were brought up to date above (every statement of the schema
                // is idempotent); the version says so.
                Some(found) if older(&found) => {
                    s.execute(
                        "UPDATE blobway_meta SET value = $1 WHERE name = 'schema'",
                        &[&SCHEMA_VERSION.to_string()],
                    )?;
                }
                Some(found) => {
                    return Err(StateError::DatabaseSchema {
                        url: self.location.clone(),
                        found,
                        reads: SCHEMA_VERSION,
                    });
                }
            }
            Ok(())
        })
    }

    /// What went wrong with the database, in words that name the fix (never the password).
    fn error(&self, what: &'static str, e: &tokio_postgres::Error) -> StateError {
        let detail = self.detail(e);
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            if code == &SqlState::INVALID_PASSWORD
                || code == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            {
                return StateError::Refused {
                    url: self.location.clone(),
                    detail,
                };
            }
        }
        if e.is_closed()
            || std::error::Error::source(e)
                .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
        {
            return StateError::Unreachable {
                url: self.location.clone(),
                detail,
            };
        }
        StateError::Database {
            url: self.location.clone(),
            detail: format!("it could not be {what}: {detail}"),
        }
    }

    /// The error's own words with its cause, the password taken out if it was there.
    fn detail(&self, e: &tokio_postgres::Error) -> String {
        let text = match (e.as_db_error(), std::error::Error::source(e)) {
            (Some(db), _) => db.message().to_string(),
            (None, Some(source)) => format!("{e}: {source}"),
            (None, None) => e.to_string(),
        };
        match self.config.get_password() {
            Some(password) => clean(&text, &String::from_utf8_lossy(password)),
            None => text,
        }
    }

    /// What a sealed session of object `index` of `job` is bound to: this database, the
    /// object's row and its destination.
    fn owner(&self, job: JobId, index: u32, file: &FileRecord) -> String {
        let database = self.database_id.get().map_or("", String::as_str);
        format!("{database}/{job}/{index}/{}", file.dest_key)
    }

    /// The bytes stored for object `index` of `job`: its record with its session sealed when
    /// there is a key; without one, a bearer session is refused (never stored in the clear).
    fn object_bytes(
        &self,
        job: JobId,
        index: u32,
        file: &FileRecord,
    ) -> Result<Vec<u8>, StateError> {
        let Some(session) = file.session.as_deref() else {
            return Ok(file.encode());
        };
        let Some(key) = &self.key else {
            if sealed::is_bearer(session) {
                return Err(StateError::Database {
                    url: self.location.clone(),
                    detail: format!(
                        "`{}` has an upload session that is a bearer secret (GCS), which a \
                         shared database holds only encrypted: set {} on every worker (32 \
                         bytes, e.g. `openssl rand -hex 32`), or keep this migration's state in \
                         a file",
                        file.key,
                        sealed::KEY_VARIABLE
                    ),
                });
            }
            return Ok(file.encode());
        };
        let mut stored = file.clone();
        let sealed = key
            .seal(session, &self.owner(job, index, file))
            .map_err(|detail| StateError::Database {
                url: self.location.clone(),
                detail,
            })?;
        stored.session = Some(sealed);
        Ok(stored.encode())
    }

    /// Object `index` of `job` from its stored bytes, its sealed session opened (left sealed
    /// for a reader without the key: no view uses it).
    fn object(&self, job: JobId, index: u32, bytes: &[u8]) -> Result<FileRecord, StateError> {
        let mut file: FileRecord = self.decode(bytes)?;
        let Some(session) = file.session.as_deref().filter(|s| sealed::is_sealed(s)) else {
            return Ok(file);
        };
        let Some(key) = &self.key else {
            if self.reader {
                return Ok(file);
            }
            return Err(StateError::Database {
                url: self.location.clone(),
                detail: format!(
                    "its upload sessions are sealed: set {} to the key they were sealed with",
                    sealed::KEY_VARIABLE
                ),
            });
        };
        let opened = key
            .open(session, &self.owner(job, index, &file))
            .map_err(|detail| StateError::Database {
                url: self.location.clone(),
                detail,
            })?;
        file.session = Some(opened);
        Ok(file)
    }

    fn decode<T: Stored>(&self, bytes: &[u8]) -> Result<T, StateError> {
        T::decode(bytes).map_err(|e| StateError::Corrupt {
            path: self.shown.clone(),
            detail: format!("a record does not decode: {e}"),
        })
    }
}

/// True when `found` is a schema version older than this blobway's (upgraded in place).
fn older(found: &str) -> bool {
    found
        .parse::<i64>()
        .is_ok_and(|v| (1..SCHEMA_VERSION).contains(&v))
}

/// This machine's name, for `pg_stat_activity` (empty when unknown).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}

/// `text` with `secret` taken out (when it is there at all).
fn clean(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "***")
    }
}

/// A connection in use: statements prepared once per connection and run to completion.
struct Session<'a> {
    state: &'a PgState,
    client: &'a Client,
    statements: &'a mut HashMap<&'static str, Statement>,
    /// True while a transaction is open that nothing has ended yet (the connection is then
    /// closed rather than reused).
    broken: bool,
}

impl Session<'_> {
    /// Runs `f` between `begin` and COMMIT (ROLLBACK when it fails); until one of them
    /// answers, the session counts as broken (a panic or an error leaves it mid-transaction).
    fn between<T>(
        &mut self,
        begin: &'static str,
        f: impl FnOnce(&mut Self) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.batch(begin)?;
        self.broken = true;
        let result = f(self);
        let ended = match &result {
            Ok(_) => self.batch("COMMIT"),
            Err(_) => self.batch("ROLLBACK"),
        };
        self.broken = ended.is_err();
        let value = result?;
        ended?;
        Ok(value)
    }

    fn statement(&mut self, sql: &'static str) -> Result<Statement, StateError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement =
            block_on(self.client.prepare(sql)).map_err(|e| self.state.error("read", &e))?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    fn batch(&mut self, sql: &'static str) -> Result<(), StateError> {
        block_on(self.client.batch_execute(sql)).map_err(|e| self.state.error("written", &e))
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StateError> {
        let statement = self.statement(sql)?;
        block_on(self.client.execute(&statement, params))
            .map_err(|e| self.state.error("written", &e))
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StateError> {
        let statement = self.statement(sql)?;
        block_on(self.client.query(&statement, params)).map_err(|e| self.state.error("read", &e))
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StateError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Object `index` of `job` in `row`'s `column`.
    fn object(
        &self,
        job: JobId,
        index: u32,
        row: &tokio_postgres::Row,
        column: usize,
    ) -> Result<FileRecord, StateError> {
        self.state.object(job, index, row.get::<_, &[u8]>(column))
    }

    fn record<T: Stored>(&self, row: &tokio_postgres::Row, column: usize) -> Result<T, StateError> {
        self.state.decode(row.get::<_, &[u8]>(column))
    }

    /// Object `index` of `job`'s chunk records, in order, checked against its count.
    fn chunks_of(
        &mut self,
        job: JobId,
        index: u32,
        file: Option<&FileRecord>,
    ) -> Result<Vec<ChunkRecord>, StateError> {
        let rows = self.query(
            "SELECT record FROM blobway_chunks WHERE job = $1 AND obj = $2 ORDER BY idx",
            &[&id(job), &i64::from(index)],
        )?;
        let chunks = rows
            .iter()
            .map(|row| self.record(row, 0))
            .collect::<Result<Vec<ChunkRecord>, _>>()?;
        if let Some(file) = file
            && chunks.len() != file.chunk_count as usize
        {
            return Err(StateError::Corrupt {
                path: self.state.shown.clone(),
                detail: format!(
                    "job {job} file {index} has {} chunk records, expected {}",
                    chunks.len(),
                    file.chunk_count
                ),
            });
        }
        Ok(chunks)
    }

    /// Records of job `job`'s objects in one of `states` after `after`, at most `limit`.
    fn objects_in(
        &mut self,
        job: JobId,
        states: &[FileState],
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<(u32, FileRecord)>, StateError> {
        let codes = codes(states);
        let rows = self.query(
            "SELECT idx, record FROM blobway_objects WHERE job = $1 AND state = ANY($2) \
             AND idx > $3 ORDER BY idx LIMIT $4",
            &[&id(job), &codes, &after_index(after), &count(limit)],
        )?;
        rows.iter()
            .map(|row| {
                let index = index_of(row, 0);
                Ok((index, self.object(job, index, row, 1)?))
            })
            .collect()
    }
}

fn id(job: JobId) -> i64 {
    i64::try_from(job).unwrap_or(i64::MAX)
}

fn count(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn after_index(after: Option<u32>) -> i64 {
    after.map_or(-1, i64::from)
}

fn index_of(row: &tokio_postgres::Row, column: usize) -> u32 {
    u32::try_from(row.get::<_, i64>(column)).unwrap_or(u32::MAX)
}

fn codes(states: &[FileState]) -> Vec<i16> {
    states.iter().map(|s| i16::from(index::code(*s))).collect()
}

/// One transaction, as a batch writes it.
struct PgTxn<'s, 'a> {
    session: &'s mut Session<'a>,
}

impl batch::Txn for PgTxn<'_, '_> {
    fn file(&mut self, job: JobId, index: u32) -> Result<Option<FileRecord>, StateError> {
        let row = self.session.query_opt(
            "SELECT record FROM blobway_objects WHERE job = $1 AND idx = $2",
            &[&id(job), &i64::from(index)],
        )?;
        row.map(|row| self.session.object(job, index, &row, 0))
            .transpose()
    }

    fn chunks(&mut self, job: JobId, index: u32) -> Result<Vec<ChunkRecord>, StateError> {
        self.session.chunks_of(job, index, None)
    }

    fn completed_bytes(
        &mut self,
        job: JobId,
        index: u32,
        file: &FileRecord,
    ) -> Result<u64, StateError> {
        let rows = self.session.query(
            "SELECT idx, record FROM blobway_chunks WHERE job = $1 AND obj = $2",
            &[&id(job), &i64::from(index)],
        )?;
        let mut bytes = 0;
        for row in &rows {
            let chunk: ChunkRecord = self.session.record(row, 1)?;
            bytes += counts::chunk_bytes(file, index_of(row, 0), &chunk);
        }
        Ok(bytes)
    }

    fn put_file(&mut self, job: JobId, index: u32, file: &FileRecord) -> Result<(), StateError> {
        // A claim stays while the object is under way or failed (its worker may still have
        // chunks of it in flight, and reopen it); one done or skipped is nobody's, so what a
        // worker gives back never grows with what it finished.
        self.session.execute(
            "INSERT INTO blobway_objects (job, idx, state, key, record) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (job, idx) DO UPDATE SET state = EXCLUDED.state, key = EXCLUDED.key, \
             record = EXCLUDED.record, owner = CASE WHEN EXCLUDED.state = ANY($6) THEN NULL \
             ELSE blobway_objects.owner END",
            &[
                &id(job),
                &i64::from(index),
                &i16::from(index::code(file.state)),
                &file.key,
                &self.session.state.object_bytes(job, index, file)?,
                &codes(&[FileState::Done, FileState::Skipped]),
            ],
        )?;
        Ok(())
    }

    fn remove_file(&mut self, job: JobId, index: u32) -> Result<(), StateError> {
        self.session.execute(
            "DELETE FROM blobway_objects WHERE job = $1 AND idx = $2",
            &[&id(job), &i64::from(index)],
        )?;
        self.session.execute(
            "DELETE FROM blobway_chunks WHERE job = $1 AND obj = $2",
            &[&id(job), &i64::from(index)],
        )?;
        Ok(())
    }

    fn index_state(
        &mut self,
        _job: JobId,
        _state: FileState,
        _index: u32,
        _present: bool,
    ) -> Result<(), StateError> {
        // The state is a column of the object's row, indexed with it.
        Ok(())
    }

    fn key_holder(&mut self, job: JobId, key: &str) -> Result<Option<u32>, StateError> {
        let row = self.session.query_opt(
            "SELECT idx FROM blobway_keys WHERE job = $1 AND key = $2",
            &[&id(job), &key],
        )?;
        Ok(row.map(|row| index_of(&row, 0)))
    }

    fn set_key(&mut self, job: JobId, key: &str, index: Option<u32>) -> Result<(), StateError> {
        match index {
            Some(index) => self.session.execute(
                "INSERT INTO blobway_keys (job, key, idx) VALUES ($1, $2, $3) \
                 ON CONFLICT (job, key) DO UPDATE SET idx = EXCLUDED.idx",
                &[&id(job), &key, &i64::from(index)],
            ),
            None => self.session.execute(
                "DELETE FROM blobway_keys WHERE job = $1 AND key = $2",
                &[&id(job), &key],
            ),
        }?;
        Ok(())
    }

    fn put_chunk(
        &mut self,
        job: JobId,
        file: u32,
        index: u32,
        chunk: &ChunkRecord,
    ) -> Result<Option<ChunkRecord>, StateError> {
        // The row as it was, read in the statement that replaces it.
        let old = self.session.query_opt(
            "WITH old AS (SELECT record FROM blobway_chunks WHERE job = $1 AND obj = $2 AND idx = $3), \
             new AS (INSERT INTO blobway_chunks (job, obj, idx, in_flight, record) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job, obj, idx) \
             DO UPDATE SET in_flight = EXCLUDED.in_flight, record = EXCLUDED.record, hand = NULL) \
             SELECT record FROM old",
            &[
                &id(job),
                &i64::from(file),
                &i64::from(index),
                &(chunk.state == ChunkState::InProgress),
                &chunk.encode(),
            ],
        )?;
        let old: Option<ChunkRecord> = old.map(|row| self.session.record(&row, 0)).transpose()?;
        // Attempts never go down (an owner's record may lag a borrow's): each borrow of a
        // chunk then counts an attempt no earlier borrow had, which `put_borrowed` checks.
        if let Some(old) = &old
            && old.attempts > chunk.attempts
        {
            let kept = ChunkRecord {
                attempts: old.attempts,
                ..chunk.clone()
            };
            self.session.execute(
                "UPDATE blobway_chunks SET record = $4 WHERE job = $1 AND obj = $2 AND idx = $3",
                &[
                    &id(job),
                    &i64::from(file),
                    &i64::from(index),
                    &kept.encode(),
                ],
            )?;
        }
        Ok(old)
    }

    fn lend(&mut self, job: JobId, file: u32, chunks: &[u32]) -> Result<(), StateError> {
        // Only chunks nobody holds: the owner's pending ones.
        let wanted: Vec<i64> = chunks.iter().map(|c| i64::from(*c)).collect();
        self.session.execute(
            "UPDATE blobway_chunks SET hand = 0 WHERE job = $1 AND obj = $2 AND idx = ANY($3) \
             AND hand IS NULL AND NOT in_flight",
            &[&id(job), &i64::from(file), &wanted],
        )?;
        Ok(())
    }

    fn put_borrowed(
        &mut self,
        job: JobId,
        file: u32,
        index: u32,
        chunk: &ChunkRecord,
    ) -> Result<Option<ChunkRecord>, StateError> {
        // Written only while lent to this worker in this very borrow (its attempt count is
        // the one the borrow wrote: a borrow taken back and lent again has another); then it
        // is the owner's again.
        let held = self.session.query_opt(
            "SELECT record FROM blobway_chunks WHERE job = $1 AND obj = $2 AND idx = $3 \
             AND hand = $4 FOR UPDATE",
            &[
                &id(job),
                &i64::from(file),
                &i64::from(index),
                &self.session.state.epoch(),
            ],
        )?;
        let Some(held) = held else {
            return Ok(None);
        };
        let old: ChunkRecord = self.session.record(&held, 0)?;
        if old.attempts != chunk.attempts || old.state != ChunkState::InProgress {
            return Ok(None);
        }
        self.session.execute(
            "UPDATE blobway_chunks SET in_flight = false, record = $4, hand = NULL \
             WHERE job = $1 AND obj = $2 AND idx = $3",
            &[
                &id(job),
                &i64::from(file),
                &i64::from(index),
                &chunk.encode(),
            ],
        )?;
        Ok(Some(old))
    }

    fn failed(&mut self, job: JobId) -> Result<Vec<u32>, StateError> {
        // Another worker's failed objects are its own to reopen (it may hold them still).
        let rows = self.session.query(
            "SELECT idx FROM blobway_objects WHERE job = $1 AND state = $2 \
             AND (owner IS NULL OR owner = $3) ORDER BY idx",
            &[
                &id(job),
                &i16::from(index::code(FileState::Failed)),
                &self.session.state.epoch(),
            ],
        )?;
        Ok(rows.iter().map(|row| index_of(row, 0)).collect())
    }

    fn job(&mut self, job: JobId) -> Result<Option<JobRecord>, StateError> {
        let row = self
            .session
            .query_opt("SELECT record FROM blobway_jobs WHERE id = $1", &[&id(job)])?;
        row.map(|row| self.session.record(&row, 0)).transpose()
    }

    fn set_job(&mut self, job: JobId, record: Option<&JobRecord>) -> Result<(), StateError> {
        changes::bump(self.session)?;
        match record {
            Some(record) => {
                self.session.execute(
                    "INSERT INTO blobway_jobs (id, record) VALUES ($1, $2) \
                     ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                    &[&id(job), &record.encode()],
                )?;
            }
            None => {
                self.session
                    .execute("DELETE FROM blobway_jobs WHERE id = $1", &[&id(job)])?;
                self.session
                    .execute("DELETE FROM blobway_counts WHERE job = $1", &[&id(job)])?;
            }
        }
        Ok(())
    }

    fn route(&mut self, route: &str) -> Result<Option<JobId>, StateError> {
        let row = self
            .session
            .query_opt("SELECT job FROM blobway_routes WHERE route = $1", &[&route])?;
        Ok(row.map(|row| row.get::<_, i64>(0).unsigned_abs()))
    }

    fn set_route(&mut self, route: &str, job: Option<JobId>) -> Result<(), StateError> {
        match job {
            Some(job) => self.session.execute(
                "INSERT INTO blobway_routes (route, job) VALUES ($1, $2) \
                 ON CONFLICT (route) DO UPDATE SET job = EXCLUDED.job",
                &[&route, &id(job)],
            ),
            None => self
                .session
                .execute("DELETE FROM blobway_routes WHERE route = $1", &[&route]),
        }?;
        Ok(())
    }

    fn meta(&mut self, name: &str) -> Result<Option<String>, StateError> {
        let row = self
            .session
            .query_opt("SELECT value FROM blobway_meta WHERE name = $1", &[&name])?;
        Ok(row.map(|row| row.get(0)))
    }

    fn set_meta(&mut self, name: &str, value: &str) -> Result<(), StateError> {
        if name.starts_with("setting.") {
            changes::bump(self.session)?;
        }
        self.session.execute(
            "INSERT INTO blobway_meta (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            &[&name, &value],
        )?;
        Ok(())
    }

    fn let_go(&mut self, job: JobId) -> Result<(), StateError> {
        match self.session.state.epoch() {
            Some(epoch) => workers::give_back(self.session, &[epoch], Some(job)).map(|_| ()),
            None => Ok(()),
        }
    }

    fn set_listing(
        &mut self,
        job: JobId,
        listing: Option<&index::Listing>,
    ) -> Result<(), StateError> {
        match listing {
            // The worker listing it owns it: the others leave it while that one lives.
            Some(listing) => self.session.execute(
                "INSERT INTO blobway_listings (job, record, owner) VALUES ($1, $2, $3) \
                 ON CONFLICT (job) DO UPDATE SET record = EXCLUDED.record, owner = EXCLUDED.owner",
                &[&id(job), &listing.encode(), &self.session.state.epoch()],
            ),
            None => self
                .session
                .execute("DELETE FROM blobway_listings WHERE job = $1", &[&id(job)]),
        }?;
        Ok(())
    }

    fn counts(&mut self, job: JobId) -> Result<JobProgress, StateError> {
        // Locked until the batch commits: batches of several workers count one after another.
        let row = self.session.query_opt(
            "SELECT record FROM blobway_counts WHERE job = $1 FOR UPDATE",
            &[&id(job)],
        )?;
        match row {
            Some(row) => self.session.record(&row, 0),
            None => Ok(JobProgress::default()),
        }
    }

    fn set_counts(&mut self, job: JobId, progress: &JobProgress) -> Result<(), StateError> {
        self.session.execute(
            "INSERT INTO blobway_counts (job, record) VALUES ($1, $2) \
             ON CONFLICT (job) DO UPDATE SET record = EXCLUDED.record",
            &[&id(job), &progress.encode()],
        )?;
        Ok(())
    }
}

impl Backend for PgState {
    fn path(&self) -> &Path {
        &self.shown
    }

    fn refuses_bearer_sessions(&self) -> bool {
        self.key.is_none()
    }

    fn anchor(&self) -> PathBuf {
        anchor(&self.location)
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StateError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.transaction(|session| batch::apply(&mut PgTxn { session }, writes))
    }

    fn setting(&self, name: &str) -> Result<Option<String>, StateError> {
        let name = format!("setting.{name}");
        self.with(|s| {
            let row = s.query_opt("SELECT value FROM blobway_meta WHERE name = $1", &[&name])?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn next_job_id(&self) -> Result<JobId, StateError> {
        self.with(|s| {
            let last = s
                .query_opt("SELECT COALESCE(MAX(id), 0) FROM blobway_jobs", &[])?
                .map_or(0, |row| row.get::<_, i64>(0));
            let removed = s
                .query_opt(
                    "SELECT value FROM blobway_meta WHERE name = $1",
                    &[&LAST_JOB_ID],
                )?
                .and_then(|row| row.get::<_, String>(0).parse::<i64>().ok())
                .unwrap_or(0);
            let taken = s
                .query_opt(
                    "SELECT value FROM blobway_meta WHERE name = 'taken_job_id'",
                    &[],
                )?
                .and_then(|row| row.get::<_, String>(0).parse::<i64>().ok())
                .unwrap_or(0);
            Ok(last.max(removed).max(taken).unsigned_abs() + 1)
        })
    }

    fn take_job_id(&self) -> Result<JobId, StateError> {
        // Under the write lock: two workers asked for a copy at once get two IDs.
        self.transaction(|s| {
            let last = s
                .query_opt(
                    "SELECT GREATEST((SELECT COALESCE(MAX(id), 0) FROM blobway_jobs), \
                     (SELECT COALESCE(MAX(value::bigint), 0) FROM blobway_meta \
                     WHERE name IN ('last_removed_job_id', 'taken_job_id')))",
                    &[],
                )?
                .map_or(0, |row| row.get::<_, i64>(0));
            let taken = last + 1;
            s.execute(
                "INSERT INTO blobway_meta (name, value) VALUES ('taken_job_id', $1) \
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[&taken.to_string()],
            )?;
            Ok(taken.unsigned_abs())
        })
    }

    fn jobs(&self) -> Result<Vec<JobRecord>, StateError> {
        self.with(|s| {
            let rows = s.query("SELECT record FROM blobway_jobs ORDER BY id", &[])?;
            rows.iter().map(|row| s.record(row, 0)).collect()
        })
    }

    fn job(&self, job: JobId) -> Result<Option<JobRecord>, StateError> {
        self.with(|s| {
            let row = s.query_opt("SELECT record FROM blobway_jobs WHERE id = $1", &[&id(job)])?;
            row.map(|row| s.record(&row, 0)).transpose()
        })
    }

    fn job_for_route(
        &self,
        source: &str,
        destination: &str,
    ) -> Result<Option<JobRecord>, StateError> {
        let route = route_key(source, destination);
        self.with(|s| {
            let row = s.query_opt(
                "SELECT j.record FROM blobway_routes r JOIN blobway_jobs j ON j.id = r.job \
                 WHERE r.route = $1",
                &[&route],
            )?;
            row.map(|row| s.record(&row, 0)).transpose()
        })
    }

    fn objects_page(
        &self,
        job: JobId,
        states: Option<&[FileState]>,
        search: &str,
        from: u32,
        limit: usize,
        chunks_of: Option<&BTreeSet<u32>>,
    ) -> Result<Option<JobSnapshot>, StateError> {
        self.snapshot(|s| {
            let Some(row) =
                s.query_opt("SELECT record FROM blobway_jobs WHERE id = $1", &[&id(job)])?
            else {
                return Ok(None);
            };
            let record: JobRecord = s.record(&row, 0)?;
            let all = codes(&[
                FileState::Transferring,
                FileState::Committing,
                FileState::Done,
                FileState::Skipped,
                FileState::Failed,
            ]);
            let codes = states.map_or(all, codes);
            let rows = s.query(
                "SELECT idx, record FROM blobway_objects WHERE job = $1 AND idx >= $2 \
                 AND state = ANY($3) AND strpos(key, $4) > 0 ORDER BY idx LIMIT $5",
                &[&id(job), &i64::from(from), &codes, &search, &count(limit)],
            )?;
            let mut files = Vec::with_capacity(rows.len());
            for row in &rows {
                let index = index_of(row, 0);
                let file = s.object(job, index, row, 1)?;
                let chunks = if chunks_of.is_some_and(|only| !only.contains(&index)) {
                    Vec::new()
                } else {
                    s.chunks_of(job, index, Some(&file))?
                };
                files.push((index, file, chunks));
            }
            Ok(Some(JobSnapshot { job: record, files }))
        })
    }

    fn next_under_way(
        &self,
        job: JobId,
        after: Option<u32>,
        max_objects: usize,
        max_chunks: usize,
        held: &dyn Fn(u32) -> bool,
    ) -> Result<UnderWay, StateError> {
        let read = |s: &mut Session<'_>, owner: Option<i64>| {
            let limit = max_objects.max(1);
            // One more than asked, so the end is known exactly. A worker reads only what
            // nobody else claimed, and locks it until its claim is written.
            let rows = match owner {
                None => s.query(
                    "SELECT idx FROM blobway_objects WHERE job = $1 AND state = ANY($2) \
                     AND idx > $3 ORDER BY idx LIMIT $4",
                    &[
                        &id(job),
                        &codes(&index::UNDER_WAY),
                        &after_index(after),
                        &count(limit + 1),
                    ],
                )?,
                Some(epoch) => s.query(
                    "SELECT idx FROM blobway_objects WHERE job = $1 AND state = ANY($2) \
                     AND idx > $3 AND (owner IS NULL OR owner = $5 OR owner IN (SELECT epoch \
                     FROM blobway_workers WHERE lease_until <= clock_timestamp())) \
                     ORDER BY idx LIMIT $4 FOR UPDATE OF blobway_objects SKIP LOCKED",
                    &[
                        &id(job),
                        &codes(&index::UNDER_WAY),
                        &after_index(after),
                        &count(limit + 1),
                        &epoch,
                    ],
                )?,
            };
            let mut indexes: Vec<u32> = rows.iter().map(|row| index_of(row, 0)).collect();
            let exhausted = indexes.len() <= limit;
            indexes.truncate(limit);
            let mut out = UnderWay {
                objects: Vec::new(),
                last: after,
                exhausted,
                lent: Vec::new(),
            };
            let mut chunk_count = 0usize;
            for file_index in indexes {
                if !out.objects.is_empty() && chunk_count >= max_chunks {
                    out.exhausted = false;
                    break;
                }
                out.last = Some(file_index);
                if held(file_index) {
                    continue;
                }
                let Some(row) = s.query_opt(
                    "SELECT record FROM blobway_objects WHERE job = $1 AND idx = $2",
                    &[&id(job), &i64::from(file_index)],
                )?
                else {
                    continue;
                };
                let file = s.object(job, file_index, &row, 0)?;
                let chunks = s.chunks_of(job, file_index, None)?;
                // Chunks not recorded yet count too: the window holds them all once loaded.
                chunk_count += chunks.len().max(file.chunk_count as usize);
                out.objects.push((file_index, file, chunks));
            }
            if let Some(epoch) = owner {
                let claimed: Vec<i64> = out.objects.iter().map(|(i, _, _)| i64::from(*i)).collect();
                s.execute(
                    "UPDATE blobway_objects SET owner = $3 WHERE job = $1 AND idx = ANY($2)",
                    &[&id(job), &claimed, &epoch],
                )?;
                // Their chunks lent by an owner before and borrowed by nobody are the new
                // owner's; those a worker borrowed stay lent until they come back.
                s.execute(
                    "UPDATE blobway_chunks SET hand = NULL WHERE job = $1 AND obj = ANY($2) \
                     AND hand = 0",
                    &[&id(job), &claimed],
                )?;
                let rows = s.query(
                    "SELECT obj, idx FROM blobway_chunks WHERE job = $1 AND obj = ANY($2) \
                     AND hand IS NOT NULL",
                    &[&id(job), &claimed],
                )?;
                out.lent = rows
                    .iter()
                    .map(|row| (index_of(row, 0), index_of(row, 1)))
                    .collect();
            }
            Ok(out)
        };
        match &self.worker {
            // Claimed in a write transaction, fenced by the worker's lease.
            Some(worker) => self.transaction(|s| read(s, Some(worker.lease.epoch))),
            None => self.snapshot(|s| read(s, None)),
        }
    }

    fn objects_in(
        &self,
        job: JobId,
        states: &[FileState],
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<(u32, FileRecord)>, StateError> {
        self.with(|s| s.objects_in(job, states, after, limit))
    }

    fn objects_at(
        &self,
        job: JobId,
        indexes: &[u32],
    ) -> Result<Vec<(u32, FileRecord)>, StateError> {
        let wanted: Vec<i64> = indexes.iter().map(|i| i64::from(*i)).collect();
        self.with(|s| {
            let rows = s.query(
                "SELECT idx, record FROM blobway_objects WHERE job = $1 AND idx = ANY($2)",
                &[&id(job), &wanted],
            )?;
            let mut found = HashMap::with_capacity(rows.len());
            for row in &rows {
                let index = index_of(row, 0);
                found.insert(index, s.object(job, index, row, 1)?);
            }
            // In the order asked, as the embedded file answers.
            Ok(indexes
                .iter()
                .filter_map(|i| found.get(i).map(|f| (*i, f.clone())))
                .collect())
        })
    }

    fn listing(&self, job: JobId) -> Result<Option<index::Listing>, StateError> {
        self.with(|s| {
            let row = s.query_opt(
                "SELECT record FROM blobway_listings WHERE job = $1",
                &[&id(job)],
            )?;
            row.map(|row| s.record(&row, 0)).transpose()
        })
    }

    fn next_file_index(&self, job: JobId) -> Result<u32, StateError> {
        self.with(|s| {
            let row = s.query_opt(
                "SELECT MAX(idx) FROM blobway_objects WHERE job = $1",
                &[&id(job)],
            )?;
            let last = row.and_then(|row| row.get::<_, Option<i64>>(0));
            Ok(last.map_or(0, |l| {
                u32::try_from(l).unwrap_or(u32::MAX).saturating_add(1)
            }))
        })
    }

    fn recorded(
        &self,
        job: JobId,
        keys: &[&str],
    ) -> Result<Vec<(u32, FileRecord, Vec<ChunkRecord>)>, StateError> {
        let wanted: Vec<&str> = keys.to_vec();
        self.snapshot(|s| {
            let rows = s.query(
                "SELECT k.key, o.idx, o.record FROM blobway_keys k \
                 JOIN blobway_objects o ON o.job = k.job AND o.idx = k.idx \
                 WHERE k.job = $1 AND k.key = ANY($2)",
                &[&id(job), &wanted],
            )?;
            let mut found = HashMap::with_capacity(rows.len());
            for row in &rows {
                let key: String = row.get(0);
                let index = index_of(row, 1);
                found.insert(key, (index, s.object(job, index, row, 2)?));
            }
            let mut out = Vec::new();
            for key in keys {
                if let Some((index, file)) = found.remove(*key) {
                    let chunks = s.chunks_of(job, index, None)?;
                    out.push((index, file, chunks));
                }
            }
            Ok(out)
        })
    }

    fn keys_between(
        &self,
        job: JobId,
        after: Option<&str>,
        upto: Option<&str>,
    ) -> Result<Vec<(String, u32)>, StateError> {
        self.with(|s| {
            let rows = s.query(
                "SELECT key, idx FROM blobway_keys WHERE job = $1 \
                 AND ($2::text IS NULL OR key > $2) AND ($3::text IS NULL OR key <= $3) \
                 ORDER BY key",
                &[&id(job), &after, &upto],
            )?;
            Ok(rows
                .iter()
                .map(|row| (row.get::<_, String>(0), index_of(row, 1)))
                .collect())
        })
    }

    fn chunk(&self, job: JobId, file: u32, index: u32) -> Result<Option<ChunkRecord>, StateError> {
        self.with(|s| {
            let row = s.query_opt(
                "SELECT record FROM blobway_chunks WHERE job = $1 AND obj = $2 AND idx = $3",
                &[&id(job), &i64::from(file), &i64::from(index)],
            )?;
            row.map(|row| s.record(&row, 0)).transpose()
        })
    }

    fn usage(&self) -> Result<Vec<TableUsage>, StateError> {
        self.with(|s| {
            let rows = s.query(
                "SELECT c.relname::text, c.reltuples::bigint, pg_relation_size(c.oid), \
                 pg_total_relation_size(c.oid) - pg_relation_size(c.oid) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' AND c.relname LIKE 'blobway\\_%' \
                 AND n.nspname = current_schema()",
                &[],
            )?;
            let mut out: Vec<TableUsage> = rows
                .iter()
                .map(|row| TableUsage {
                    name: row.get(0),
                    entries: row.get::<_, i64>(1).max(0).unsigned_abs(),
                    stored: row.get::<_, i64>(2).unsigned_abs(),
                    overhead: row.get::<_, i64>(3).unsigned_abs(),
                })
                .collect();
            out.sort_by_key(|t| std::cmp::Reverse(t.stored + t.overhead));
            Ok(out)
        })
    }

    fn progress(&self, job: JobId) -> Result<JobProgress, StateError> {
        self.with(|s| {
            let row = s.query_opt(
                "SELECT record FROM blobway_counts WHERE job = $1",
                &[&id(job)],
            )?;
            match row {
                Some(row) => s.record(&row, 0),
                None => Ok(JobProgress::default()),
            }
        })
    }

    fn recover_in_progress(&self) -> Result<usize, StateError> {
        self.transaction(|s| {
            // Workers gone give their claims back; chunks left in flight by nobody's claim
            // (a blobway that stopped without leaving) return to pending. Only the chunks in
            // flight are read (a partial index holds them), not every chunk of every job;
            // those of live workers stay theirs.
            workers::reap(s)?;
            let rows = s.query(
                "SELECT c.job, c.obj, c.idx, c.record FROM blobway_chunks c JOIN blobway_objects o \
                 ON o.job = c.job AND o.idx = c.obj WHERE c.in_flight AND o.owner IS NULL \
                 AND c.hand IS NULL",
                &[],
            )?;
            let resets = workers::in_flight_to_pending(s, &rows)?;
            batch::apply(&mut PgTxn { session: s }, &resets)?;
            Ok(resets.len())
        })
    }

    fn lease(&self) -> Option<Arc<Lease>> {
        self.worker.as_ref().map(|w| w.lease.clone())
    }

    fn changes(&self) -> Result<Option<u64>, StateError> {
        self.with(changes::count).map(Some)
    }

    fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.changed.clone()
    }

    fn confirm_lease(&self) -> Result<(), StateError> {
        match &self.worker {
            Some(worker) => self.with(|s| self.fence(s, &worker.lease)),
            None => Ok(()),
        }
    }

    fn borrow(&self, job: JobId, max_chunks: usize) -> Result<Vec<super::Borrowed>, StateError> {
        let Some(epoch) = self.epoch() else {
            return Ok(Vec::new());
        };
        self.transaction(|s| {
            // Chunks lent and borrowed by nobody, of objects still moving their chunks.
            let rows = s.query(
                "SELECT c.obj, c.idx, c.record FROM blobway_chunks c JOIN blobway_objects o \
                 ON o.job = c.job AND o.idx = c.obj WHERE c.job = $1 AND c.hand = 0 \
                 AND NOT c.in_flight AND o.state = $2 ORDER BY c.obj, c.idx LIMIT $3 \
                 FOR UPDATE OF c SKIP LOCKED",
                &[
                    &id(job),
                    &i16::from(index::code(FileState::Transferring)),
                    &count(max_chunks),
                ],
            )?;
            let mut borrowed: Vec<super::Borrowed> = Vec::new();
            for row in &rows {
                let (file, chunk) = (index_of(row, 0), index_of(row, 1));
                let mut record: ChunkRecord = s.record(row, 2)?;
                // Only a pending chunk is lent (a worker of an older schema may have sent it):
                // another goes back to its owner.
                if record.state != ChunkState::Pending {
                    s.execute(
                        "UPDATE blobway_chunks SET hand = NULL WHERE job = $1 AND obj = $2 \
                         AND idx = $3",
                        &[&id(job), &i64::from(file), &i64::from(chunk)],
                    )?;
                    continue;
                }
                record.state = ChunkState::InProgress;
                record.attempts += 1;
                s.execute(
                    "UPDATE blobway_chunks SET hand = $4, in_flight = true, record = $5 \
                     WHERE job = $1 AND obj = $2 AND idx = $3",
                    &[
                        &id(job),
                        &i64::from(file),
                        &i64::from(chunk),
                        &epoch,
                        &record.encode(),
                    ],
                )?;
                match borrowed.last_mut() {
                    Some(last) if last.file == file => last.chunks.push((chunk, record)),
                    _ => {
                        let Some(object) = s.query_opt(
                            "SELECT record FROM blobway_objects WHERE job = $1 AND idx = $2",
                            &[&id(job), &i64::from(file)],
                        )?
                        else {
                            continue;
                        };
                        borrowed.push(super::Borrowed {
                            file,
                            record: s.object(job, file, &object, 0)?,
                            chunks: vec![(chunk, record)],
                        });
                    }
                }
            }
            Ok(borrowed)
        })
    }

    fn lent(
        &self,
        job: JobId,
        file: u32,
        chunks: &[u32],
        take_back: usize,
    ) -> Result<Vec<super::LentChunk>, StateError> {
        let wanted: Vec<i64> = chunks.iter().map(|c| i64::from(*c)).collect();
        self.transaction(|s| {
            if take_back > 0 {
                s.execute(
                    "UPDATE blobway_chunks SET hand = NULL WHERE job = $1 AND obj = $2 \
                     AND idx IN (SELECT idx FROM blobway_chunks WHERE job = $1 AND obj = $2 \
                     AND idx = ANY($3) AND hand = 0 ORDER BY idx DESC LIMIT $4 \
                     FOR UPDATE SKIP LOCKED)",
                    &[&id(job), &i64::from(file), &wanted, &count(take_back)],
                )?;
            }
            let rows = s.query(
                "SELECT idx, hand IS NOT NULL, record FROM blobway_chunks WHERE job = $1 \
                 AND obj = $2 AND idx = ANY($3)",
                &[&id(job), &i64::from(file), &wanted],
            )?;
            let mut found: HashMap<u32, (bool, ChunkRecord)> = HashMap::with_capacity(rows.len());
            for row in &rows {
                found.insert(index_of(row, 0), (row.get(1), s.record(row, 2)?));
            }
            Ok(chunks
                .iter()
                .map(|&chunk| match found.remove(&chunk) {
                    Some((out, record)) => super::LentChunk {
                        chunk,
                        record: Some(record),
                        out,
                    },
                    None => super::LentChunk {
                        chunk,
                        record: None,
                        out: false,
                    },
                })
                .collect())
        })
    }

    fn take_listing(&self, job: JobId) -> Result<bool, StateError> {
        self.transaction(|s| {
            Ok(s.query_opt(
                "UPDATE blobway_listings SET owner = $2 WHERE job = $1 AND (owner IS NULL \
                 OR owner = $2 OR owner NOT IN (SELECT epoch FROM blobway_workers \
                 WHERE state = 'running' AND lease_until > clock_timestamp())) RETURNING 1",
                &[&id(job), &self.epoch()],
            )?
            .is_some())
        })
    }

    fn workers(&self) -> Result<Option<Vec<WorkerRecord>>, StateError> {
        self.list_workers().map(Some)
    }

    fn clear_names(&self, job: JobId) -> Result<(), StateError> {
        self.transaction(|s| {
            s.execute("DELETE FROM blobway_names WHERE job = $1", &[&id(job)])?;
            Ok(())
        })
    }

    fn claim_names(
        &self,
        job: JobId,
        naming: Naming,
        claims: &[Claim<'_>],
    ) -> Result<Vec<Option<NameClash>>, StateError> {
        self.transaction(|s| {
            let session = std::cell::RefCell::new(s);
            let mut out = Vec::with_capacity(claims.len());
            for claim in claims {
                out.push(names::claim_one(
                    naming,
                    claim,
                    |k| {
                        let row = session.borrow_mut().query_opt(
                            "SELECT holder FROM blobway_names WHERE job = $1 AND claim = $2",
                            &[&id(job), &k],
                        )?;
                        Ok(row.map(|row| row.get(0)))
                    },
                    |k, v| {
                        session.borrow_mut().execute(
                            "INSERT INTO blobway_names (job, claim, holder) VALUES ($1, $2, $3) \
                             ON CONFLICT (job, claim) DO UPDATE SET holder = EXCLUDED.holder",
                            &[&id(job), &k, &v],
                        )?;
                        Ok(())
                    },
                )?);
            }
            Ok(out)
        })
    }
}
