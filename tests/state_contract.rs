//! One contract, every state backend: the embedded redb file and a PostgreSQL database (the
//! cluster `scripts/test.sh` starts once per run, a fresh database per test) must keep the
//! same records, transitions and invariants. Each test runs against both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use blobway::state::counts;
use blobway::state::index::Reopen;
use blobway::state::names::{Claim, NameIndex};
use blobway::state::{
    ChunkRecord, ChunkState, FileRecord, FileState, JobId, JobProgress, StateDb, StateError,
    UnderWay, Write,
};
use blobway::store::rules::Naming;
use common::job_record as job;
use common::postgres::fresh_database;

/// Each backend, freshly opened: (its name, the state, what keeps the redb file alive).
fn backends() -> Vec<(&'static str, StateDb, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let redb = StateDb::open(&dir.path().join("s.redb")).expect("open redb");
    let postgres = StateDb::open(&PathBuf::from(fresh_database())).expect("open postgres");
    vec![("redb", redb, Some(dir)), ("postgres", postgres, None)]
}

fn file(chunks: u32) -> FileRecord {
    FileRecord::new("p/a", "p/a", u64::from(chunks) * 8 - 3, "\"e\"", 8, chunks)
}

fn completed() -> ChunkRecord {
    let mut chunk = ChunkRecord::pending();
    chunk.state = ChunkState::Completed;
    chunk
}

#[test]
fn jobs_files_and_chunks_round_trip() {
    for (name, db, _dir) in backends() {
        assert_eq!(db.next_job_id().expect("id"), 1, "{name}");
        let mut writes = vec![Write::Job(job(1)), Write::File(1, 0, file(3))];
        for i in 0..3 {
            writes.push(Write::Chunk(1, 0, i, ChunkRecord::pending()));
        }
        db.apply(&writes).expect("apply");
        db.apply(&[Write::Chunk(1, 0, 1, completed())])
            .expect("apply");

        let snapshot = db.load_job(1).expect("load").expect("job");
        assert_eq!(snapshot.files.len(), 1, "{name}");
        assert_eq!(snapshot.files[0].2[1], completed(), "{name}");
        assert_eq!(
            db.job_for_route("s3://b/p1/", "az://c/p1/")
                .expect("route")
                .map(|j| j.id),
            Some(1),
            "{name}"
        );
        assert_eq!(db.jobs().expect("jobs").len(), 1, "{name}");
        assert_eq!(db.next_job_id().expect("id"), 2, "{name}");
        let p = db.progress(1).expect("progress");
        assert_eq!(
            (p.files_total, p.bytes_total, p.bytes_done),
            (1, 21, 8),
            "{name}"
        );
        assert_eq!(db.next_file_index(1).expect("next"), 1, "{name}");

        db.apply(&[Write::RemoveFile(1, 0)]).expect("remove");
        assert!(
            db.load_job(1).expect("load").expect("job").files.is_empty(),
            "{name}"
        );
        assert_eq!(db.chunk(1, 0, 1).expect("chunk"), None, "{name}");
        assert_eq!(db.progress(1).expect("progress"), JobProgress::default());
    }
}

#[test]
fn settings_listings_and_keys_are_kept_in_key_order() {
    for (name, db, _dir) in backends() {
        assert_eq!(db.setting("bwlimit").expect("setting"), None, "{name}");
        db.apply(&[Write::Setting("bwlimit", "\"20MiB/s\"".into())])
            .expect("apply");
        assert_eq!(
            db.setting("bwlimit").expect("setting").as_deref(),
            Some("\"20MiB/s\""),
            "{name}"
        );
        let listing = blobway::state::index::Listing {
            after: Some("k/ü".into()),
            fresh: true,
            summary: serde_json::json!({"objects": 3}),
        };
        let mut writes = vec![Write::Job(job(1)), Write::Listing(1, Some(listing.clone()))];
        // Keys as real buckets hold them: unicode, `./`, `//`, spaces, and bytes that sort
        // differently in a locale than by their bytes.
        let keys = ["a//b", "a/./c", "B", "a b", "é", "z", "ü/ä", "_x"];
        for (i, key) in keys.iter().enumerate() {
            let mut record = file(1);
            record.key = (*key).into();
            writes.push(Write::File(1, i as u32, record));
            writes.push(Write::Chunk(1, i as u32, 0, ChunkRecord::pending()));
        }
        db.apply(&writes).expect("apply");
        assert_eq!(db.listing(1).expect("listing"), Some(listing), "{name}");
        let mut sorted: Vec<&str> = keys.to_vec();
        sorted.sort_unstable();
        let all: Vec<String> = db
            .keys_between(1, None, None)
            .expect("keys")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(all, sorted, "{name}: by their bytes");
        let between: Vec<String> = db
            .keys_between(1, Some("a b"), Some("é"))
            .expect("keys")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(between, ["a/./c", "a//b", "z", "é"], "{name}");
        let recorded = db.recorded(1, &["z", "missing", "a//b"]).expect("recorded");
        assert_eq!(
            recorded
                .iter()
                .map(|(i, f, c)| (*i, f.key.as_str(), c.len()))
                .collect::<Vec<_>>(),
            [(5, "z", 1), (0, "a//b", 1)],
            "{name}: in the order asked"
        );
        assert_eq!(
            db.objects_at(1, &[6, 99, 1])
                .expect("at")
                .iter()
                .map(|(i, _)| *i)
                .collect::<Vec<_>>(),
            [6, 1],
            "{name}"
        );
        db.apply(&[Write::Listing(1, None)]).expect("apply");
        assert_eq!(db.listing(1).expect("listing"), None, "{name}");
    }
}

#[test]
fn a_view_pages_through_a_jobs_objects_by_state_and_by_key() {
    for (name, db, _dir) in backends() {
        let mut writes = vec![Write::Job(job(1))];
        for i in 0..3_000u32 {
            let mut record = file(1);
            record.key = format!("k/{i:05}");
            record.state = if i % 300 == 7 {
                FileState::Failed
            } else {
                FileState::Done
            };
            writes.push(Write::File(1, i, record));
            writes.push(Write::Chunk(1, i, 0, ChunkRecord::pending()));
        }
        db.apply(&writes).expect("apply");
        let page = |states: Option<&[FileState]>, search: &str, from: u32, opened: &[u32]| {
            let opened: BTreeSet<u32> = opened.iter().copied().collect();
            db.objects_page(1, states, search, from, 4, Some(&opened))
                .expect("page")
                .expect("job")
                .files
                .into_iter()
                .map(|(i, _, chunks)| (i, chunks.len()))
                .collect::<Vec<_>>()
        };
        let failed: &[FileState] = &[FileState::Failed];
        assert_eq!(
            page(Some(failed), "", 0, &[]),
            [(7, 0), (307, 0), (607, 0), (907, 0)],
            "{name}"
        );
        assert_eq!(
            page(Some(failed), "", 908, &[1207]),
            [(1207, 1), (1507, 0), (1807, 0), (2107, 0)],
            "{name}"
        );
        assert_eq!(
            page(None, "", 2998, &[2999]),
            [(2998, 0), (2999, 1)],
            "{name}"
        );
        assert_eq!(page(None, "/0299", 0, &[]).len(), 4, "{name}");
        assert_eq!(page(Some(failed), "k/027", 0, &[]), [(2707, 0)], "{name}");
        assert!(page(None, "nothing like it", 0, &[]).is_empty(), "{name}");
        // A search for what a pattern language would read as a wildcard finds it literally.
        assert!(page(None, "%", 0, &[]).is_empty(), "{name}");
        assert!(page(None, "k/_", 0, &[]).is_empty(), "{name}");
        assert!(
            db.objects_page(2, None, "", 0, 4, None)
                .expect("page")
                .is_none(),
            "{name}"
        );
    }
}

#[test]
fn objects_under_way_are_read_a_window_at_a_time_after_the_cursor() {
    for (name, db, _dir) in backends() {
        let mut writes = vec![Write::Job(job(1))];
        for i in 0..10u32 {
            let mut record = file(2);
            record.state = match i % 3 {
                0 => FileState::Transferring,
                1 => FileState::Committing,
                _ => FileState::Done,
            };
            writes.push(Write::File(1, i, record));
            writes.push(Write::Chunk(1, i, 0, ChunkRecord::pending()));
            writes.push(Write::Chunk(1, i, 1, ChunkRecord::pending()));
        }
        db.apply(&writes).expect("apply");
        let indexes = |w: &UnderWay| w.objects.iter().map(|o| o.0).collect::<Vec<_>>();
        let first = db
            .next_under_way(1, None, 3, 100, &|_| false)
            .expect("read");
        assert_eq!(indexes(&first), [0, 1, 3], "{name}");
        assert_eq!((first.last, first.exhausted), (Some(3), false), "{name}");
        let second = db
            .next_under_way(1, first.last, 3, 100, &|i| i == 4)
            .expect("read");
        assert_eq!(indexes(&second), [6, 7], "{name}");
        assert_eq!((second.last, second.exhausted), (Some(7), false), "{name}");
        let budgeted = db
            .next_under_way(1, first.last, 5, 1, &|_| false)
            .expect("read");
        assert_eq!(indexes(&budgeted), [4], "{name}");
        assert_eq!(
            (budgeted.last, budgeted.exhausted),
            (Some(4), false),
            "{name}"
        );
        let last = db
            .next_under_way(1, second.last, 5, 100, &|_| false)
            .expect("read");
        assert_eq!(indexes(&last), [9], "{name}");
        assert!(last.exhausted, "{name}");
        assert!(
            db.next_under_way(2, None, 5, 100, &|_| false)
                .expect("read")
                .objects
                .is_empty(),
            "{name}"
        );
    }
}

#[test]
fn a_removed_unplanned_jobs_id_is_never_given_again() {
    for (name, db, _dir) in backends() {
        let mut unplanned = job(1);
        unplanned.planned = false;
        db.apply(&[Write::Job(unplanned)]).expect("apply");
        assert_eq!(db.next_job_id().expect("id"), 2, "{name}");
        db.apply(&[Write::RemoveUnplannedJob(1)]).expect("remove");
        assert!(db.job(1).expect("read").is_none(), "{name}");
        assert!(
            db.job_for_route("s3://b/p1/", "az://c/p1/")
                .expect("route")
                .is_none(),
            "{name}"
        );
        assert_eq!(db.next_job_id().expect("id"), 2, "{name}: 1 stays used");
        // A planned job is never removed.
        db.apply(&[Write::Job(job(2)), Write::RemoveUnplannedJob(2)])
            .expect("apply");
        assert!(db.job(2).expect("read").is_some(), "{name}");
    }
}

#[test]
fn recovery_returns_claimed_chunks_to_pending() {
    for (name, db, _dir) in backends() {
        let mut claimed = ChunkRecord::pending();
        claimed.state = ChunkState::InProgress;
        claimed.attempts = 1;
        db.apply(&[
            Write::Job(job(1)),
            Write::File(1, 0, file(3)),
            Write::Chunk(1, 0, 0, claimed.clone()),
            Write::Chunk(1, 0, 1, ChunkRecord::pending()),
            // In flight once, then done: not in flight any more.
            Write::Chunk(1, 0, 2, claimed),
        ])
        .expect("apply");
        db.apply(&[Write::Chunk(1, 0, 2, completed())])
            .expect("apply");
        assert_eq!(db.recover_in_progress().expect("recover"), 1, "{name}");
        assert_eq!(
            db.chunk(1, 0, 2).expect("read").expect("chunk").state,
            ChunkState::Completed,
            "{name}"
        );
        assert_eq!(db.recover_in_progress().expect("again"), 0, "{name}");
        let chunk = db.chunk(1, 0, 0).expect("read").expect("chunk");
        assert_eq!(
            (chunk.state, chunk.attempts),
            (ChunkState::Pending, 1),
            "{name}"
        );
    }
}

#[test]
fn failed_objects_reopen_in_the_batch_that_asks() {
    for (name, db, _dir) in backends() {
        let mut failed = file(2);
        failed.state = FileState::Failed;
        let mut failed_chunk = ChunkRecord::pending();
        failed_chunk.state = ChunkState::Failed;
        db.apply(&[
            Write::Job(job(1)),
            Write::File(1, 0, failed.clone()),
            Write::Chunk(1, 0, 0, completed()),
            Write::Chunk(1, 0, 1, failed_chunk.clone()),
            Write::File(1, 1, failed),
            Write::Chunk(1, 1, 0, failed_chunk.clone()),
            Write::Chunk(1, 1, 1, failed_chunk),
        ])
        .expect("apply");
        assert_eq!(db.progress(1).expect("progress").files_failed, 2, "{name}");
        db.apply(&[Write::ReopenFailed {
            job: 1,
            keep: vec![1],
            rule: Reopen::Retry,
        }])
        .expect("reopen");
        let under_way = db
            .objects_in(1, &blobway::state::index::UNDER_WAY, None, 10)
            .expect("under way");
        assert_eq!(
            under_way.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [0],
            "{name}: the kept one stays failed"
        );
        let chunk = db.chunk(1, 0, 1).expect("read").expect("chunk");
        assert_eq!(chunk.state, ChunkState::Pending, "{name}");
        assert_eq!(
            db.chunk(1, 0, 0).expect("read").expect("chunk").state,
            ChunkState::Completed,
            "{name}: what was done stays done"
        );
        assert_eq!(db.progress(1).expect("progress").files_failed, 1, "{name}");
    }
}

#[test]
fn two_keys_never_get_one_destination_name() {
    for (name, db, _dir) in backends() {
        let mut index = NameIndex::Db(&db, 7);
        let claim = |index: &mut NameIndex<'_>, pairs: &[(&str, &str)]| {
            let claims: Vec<Claim<'_>> = pairs
                .iter()
                .map(|(name, source)| Claim { name, source })
                .collect();
            index
                .claim(Naming::Azure, &claims)
                .expect("claim")
                .into_iter()
                .map(|c| c.map(|c| c.holder))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            claim(&mut index, &[("a/b", "src/a/b"), ("a/c", "src/a/c")]),
            [None, None],
            "{name}"
        );
        assert_eq!(
            claim(&mut index, &[("a/b", "other/a/b")]),
            [Some("src/a/b".to_string())],
            "{name}"
        );
        assert_eq!(
            claim(&mut index, &[("a/b", "src/a/b")]),
            [None],
            "{name}: its holder claims it again"
        );
        index.clear().expect("clear");
        assert_eq!(claim(&mut index, &[("a/b", "other/a/b")]), [None], "{name}");
    }
}

#[test]
fn a_newer_schema_is_refused_and_the_password_never_shown() {
    let url = fresh_database();
    drop(StateDb::open(&PathBuf::from(&url)).expect("create"));
    common::postgres::execute(
        &url,
        "UPDATE blobway_meta SET value = '99' WHERE name = 'schema'",
    );
    let err = StateDb::open(&PathBuf::from(&url)).err().expect("refused");
    assert!(matches!(err, StateError::DatabaseSchema { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("version 99") && text.contains("upgrade blobway"),
        "{text}"
    );
    let password = url::Url::parse(&url)
        .expect("url")
        .password()
        .expect("the test cluster has a password")
        .to_string();
    assert!(!text.contains(&password), "{text}");
    assert!(text.contains("***"), "{text}");

    let mut wrong = url::Url::parse(&url).expect("url");
    wrong.set_password(Some("not-the-password")).expect("set");
    let err = StateDb::open(&PathBuf::from(wrong.as_str()))
        .err()
        .expect("refused");
    assert!(matches!(err, StateError::Refused { .. }), "{err}");
    assert!(!err.to_string().contains("not-the-password"), "{err}");

    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut nowhere = url::Url::parse(&url).expect("url");
    nowhere.set_port(Some(port)).expect("port");
    let err = StateDb::open(&PathBuf::from(nowhere.as_str()))
        .err()
        .expect("unreachable");
    assert!(matches!(err, StateError::Unreachable { .. }), "{err}");
    assert!(!err.to_string().contains(&password), "{err}");
}

/// One random change to a small job of three objects (two jobs share the state).
#[derive(Clone, Debug)]
enum Change {
    File {
        job: u64,
        index: u32,
        chunks: u32,
        state: u8,
        short: u64,
        wide: bool,
    },
    Chunk {
        job: u64,
        index: u32,
        chunk: u32,
        state: u8,
    },
    Remove {
        job: u64,
        index: u32,
    },
    Reopen {
        job: u64,
        keep: Option<u32>,
    },
}

const FILE_STATES: [FileState; 5] = [
    FileState::Transferring,
    FileState::Committing,
    FileState::Done,
    FileState::Skipped,
    FileState::Failed,
];

fn change() -> impl proptest::strategy::Strategy<Value = Change> {
    use proptest::prelude::*;
    prop_oneof![
        (1..3u64, 0..3u32, 1..4u32, 0..5u8, 0..8u64, any::<bool>()).prop_map(
            |(job, index, chunks, state, short, wide)| Change::File {
                job,
                index,
                chunks,
                state,
                short,
                wide,
            }
        ),
        (1..3u64, 0..3u32, 0..4u32, 0..4u8).prop_map(|(job, index, chunk, state)| {
            Change::Chunk {
                job,
                index,
                chunk,
                state,
            }
        }),
        (1..3u64, 0..3u32).prop_map(|(job, index)| Change::Remove { job, index }),
        (1..3u64, proptest::option::of(0..3u32))
            .prop_map(|(job, keep)| Change::Reopen { job, keep }),
    ]
}

/// The write of `change`, its jobs numbered from `base`.
fn write_of(change: &Change, base: u64) -> Write {
    const CHUNKS: [ChunkState; 4] = [
        ChunkState::Pending,
        ChunkState::InProgress,
        ChunkState::Completed,
        ChunkState::Failed,
    ];
    match *change {
        Change::File {
            job,
            index,
            chunks,
            state,
            short,
            wide,
        } => {
            // Sizes and chunk sizes change too (a re-plan with other settings).
            let mut record = file(chunks);
            record.chunk_size = if wide { 16 } else { 8 };
            record.size = u64::from(chunks) * record.chunk_size - short;
            record.state = FILE_STATES[state as usize];
            Write::File(base + job, index, record)
        }
        Change::Chunk {
            job,
            index,
            chunk,
            state,
        } => {
            let mut record = ChunkRecord::pending();
            record.state = CHUNKS[state as usize];
            Write::Chunk(base + job, index, chunk, record)
        }
        Change::Remove { job, index } => Write::RemoveFile(base + job, index),
        Change::Reopen { job, keep } => Write::ReopenFailed {
            job: base + job,
            keep: keep.into_iter().collect(),
            rule: Reopen::Retry,
        },
    }
}

/// A job's counters counted afresh from its records (chunks with no object, or beyond its
/// count, are no part of them), and its objects by state as the records say.
fn fresh_count(db: &StateDb, id: JobId) -> (JobProgress, Vec<(u32, FileState)>) {
    let records = db
        .objects_page(id, None, "", 0, usize::MAX, Some(&BTreeSet::new()))
        .expect("page")
        .expect("job")
        .files;
    let progress = records
        .iter()
        .map(|(index, record, _)| {
            counts::share(record, || {
                (0..8)
                    .filter_map(|i| {
                        let chunk = db.chunk(id, *index, i).expect("chunk")?;
                        Some(counts::chunk_bytes(record, i, &chunk))
                    })
                    .sum()
            })
        })
        .sum();
    let states = records.iter().map(|(i, r, _)| (*i, r.state)).collect();
    (progress, states)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// Whatever is written, in whatever order and batches, each job's recorded counters are
    /// what counting its records afresh gives, and its index by state holds each object
    /// once, under the state its record has — on every backend.
    #[test]
    fn recorded_counters_and_index_always_equal_a_fresh_count(
        batches in proptest::collection::vec(proptest::collection::vec(change(), 1..6), 1..16),
    ) {
        // One database for every case: each case's jobs are numbered apart.
        static BASE: AtomicU64 = AtomicU64::new(0);
        static SHARED: std::sync::OnceLock<Vec<(&'static str, StateDb, Option<tempfile::TempDir>)>> =
            std::sync::OnceLock::new();
        let base = BASE.fetch_add(10, Ordering::SeqCst);
        for (name, db, _dir) in SHARED.get_or_init(backends) {
            db.apply(&[Write::Job(job(base + 1)), Write::Job(job(base + 2))]).expect("jobs");
            for batch in &batches {
                let writes: Vec<Write> = batch.iter().map(|c| write_of(c, base)).collect();
                db.apply(&writes).expect("apply");
                for id in [base + 1, base + 2] {
                    let (expected, states) = fresh_count(db, id);
                    proptest::prop_assert_eq!(db.progress(id).expect("progress"), expected, "{}", name);
                    let mut indexed: Vec<(u32, FileState)> = Vec::new();
                    for state in FILE_STATES {
                        for (index, _) in db.objects_in(id, &[state], None, 100).expect("in") {
                            indexed.push((index, state));
                        }
                    }
                    indexed.sort_by_key(|(i, _)| *i);
                    proptest::prop_assert_eq!(&indexed, &states, "{}", name);
                }
            }
        }
    }
}

/// Batches applied at once from several threads (the writer, the planner) leave the counters
/// and the index what counting the records afresh gives, as one batch at a time would.
#[test]
fn batches_applied_at_once_keep_the_counters_true() {
    for (name, db, _dir) in backends() {
        db.apply(&[Write::Job(job(1))]).expect("job");
        std::thread::scope(|scope| {
            for thread in 0..4u32 {
                let db = db.clone();
                scope.spawn(move || {
                    for round in 0..40u32 {
                        // Every thread writes the same three objects and their chunks.
                        let index = (thread + round) % 3;
                        let mut record = file(3);
                        record.state = FILE_STATES[(round % 5) as usize];
                        let mut writes = vec![Write::File(1, index, record)];
                        for chunk in 0..3 {
                            let state = if (round + chunk) % 2 == 0 {
                                ChunkState::Completed
                            } else {
                                ChunkState::Pending
                            };
                            let mut c = ChunkRecord::pending();
                            c.state = state;
                            writes.push(Write::Chunk(1, index, chunk, c));
                        }
                        db.apply(&writes).expect("apply at once");
                    }
                });
            }
        });
        let (expected, states) = fresh_count(&db, 1);
        assert_eq!(db.progress(1).expect("progress"), expected, "{name}");
        assert_eq!(states.len(), 3, "{name}");
    }
}

/// A GCS session URI is a bearer secret: a shared database holds it only sealed with
/// `BLOBWAY_STATE_KEY`, reads it back whole, and without a key refuses it (nothing recorded).
#[test]
fn bearer_sessions_reach_a_shared_database_only_sealed() {
    use blobway::state::postgres::PgState;
    use blobway::state::sealed::SessionKey;
    let url = fresh_database();
    let key = || SessionKey::parse(&"5a1b".repeat(16)).expect("key");
    let session = "https://storage.googleapis.com/upload/storage/v1/b/x/o?upload_id=BEARER-SECRET";
    let mut record = file(2);
    record.session = Some(session.into());
    let mut s3 = file(2);
    s3.key = "p/b".into();
    s3.session = Some("2~s3-upload-id".into());
    {
        let db = StateDb::new(PgState::open_with(&url, None).expect("open"));
        let err = db
            .apply(&[Write::Job(job(1)), Write::File(1, 0, record.clone())])
            .expect_err("refused without a key");
        assert!(err.to_string().contains("BLOBWAY_STATE_KEY"), "{err}");
        assert!(!err.to_string().contains("BEARER-SECRET"), "{err}");
        assert!(
            db.job(1).expect("read").is_none(),
            "the whole batch was refused"
        );
    }
    let db = StateDb::new(PgState::open_with(&url, Some(key())).expect("open"));
    db.apply(&[
        Write::Job(job(1)),
        Write::File(1, 0, record.clone()),
        Write::File(1, 1, s3.clone()),
    ])
    .expect("sealed");
    assert_eq!(
        common::postgres::number(
            &url,
            "SELECT count(*) FROM blobway_objects \
             WHERE position('BEARER-SECRET' in encode(record, 'escape')) > 0"
        ),
        0,
        "never in the clear"
    );
    let read = db.objects_at(1, &[0, 1]).expect("read");
    assert_eq!(read[0].1.session.as_deref(), Some(session));
    assert_eq!(read[1].1.session.as_deref(), Some("2~s3-upload-id"));
    assert_eq!(
        db.open_uploads(1).expect("uploads").len(),
        2,
        "both open uploads are known"
    );
    drop(db);
    // A reader without the key (`jobs`, `report`) sees it still sealed, and needs nothing more.
    let reader = StateDb::new(PgState::open_reader(&url).expect("reader"));
    let seen = reader.objects_at(1, &[0]).expect("read without the key");
    assert!(
        seen[0]
            .1
            .session
            .as_deref()
            .is_some_and(|s| s.starts_with("blobway-sealed:")),
        "{seen:?}"
    );
    drop(reader);
    // Another key cannot open it, and says which variable to set.
    let other = SessionKey::parse(&"a51b".repeat(16)).expect("key");
    let db = StateDb::new(PgState::open_with(&url, Some(other)).expect("open"));
    let err = db.objects_at(1, &[0]).expect_err("wrong key");
    assert!(err.to_string().contains("BLOBWAY_STATE_KEY"), "{err}");
}
