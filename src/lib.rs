//! blobway moves very large objects between object stores — Amazon S3 to Azure Blob Storage
//! first — chunk by chunk, exactly once and resumably, while an operator watches and steers.
//!
//! # Layout
//!
//! ```text
//! location   s3://bucket/key · az://container/path · file:///path → Location
//! store      ObjectSource / ObjectSink traits, one adapter per backend (s3, azure, local)
//! state      redb: jobs, files, chunks, attempts; the batching writer thread
//! engine     planning, the gate, the scheduler, retries, the data plane
//! headless   the `copy`/`resume` consumer of engine events: progress bar or JSON lines
//! tui        the operator's screens over engine commands, events and snapshots
//! demo       sample data and a simulated link for a first run without a cloud account
//! ```
//!
//! Arrows point one way: `{tui, headless} → engine → {state, store}`; `store` knows nothing of
//! the engine, and the engine knows nothing of any screen.
//!
//! # The life of a chunk
//!
//! ```text
//! PENDING ──claim──▶ IN_PROGRESS ──block acknowledged──▶ COMPLETED
//!    ▲                    │
//!    └──retryable error───┤ (backoff, attempt += 1)
//!                         └──attempts exhausted / fatal──▶ FAILED
//! ```
//!
//! A chunk is claimed (recorded IN_PROGRESS, attempt counted) before any byte moves; it is
//! read with one ranged GET pinned to the planned ETag (If-Match), checksummed, and staged
//! with one Put Block whose ID is derived from (source version, chunk size, index). Only after
//! the store acknowledges it is the chunk recorded COMPLETED. When every chunk of an object is
//! completed, the staged block list is compared with the plan and the object is made visible
//! by one Put Block List; an object no larger than one chunk goes up in one Put Blob.
//!
//! # Invariants
//!
//! 1. Atomic visibility: a destination object exists only after its commit.
//! 2. Deterministic, version-bound, equal-length block IDs.
//! 3. Every read is pinned to the planned version; a changed source fails that object.
//! 4. Record after acknowledge: COMPLETED and DONE are written only after the store confirmed.
//! 5. Trust but verify on resume: IN_PROGRESS returns to PENDING, staged blocks are checked.
//! 6. Bounded memory: chunk buffers in flight never exceed the budget.
//! 7. No secrets at rest: nothing secret reaches the database, logs, screen or errors.

pub mod daemon;
pub mod demo;
pub mod engine;
pub mod headless;
pub mod location;
pub mod redact;
pub mod size;
pub mod state;
pub mod store;
pub mod tui;
