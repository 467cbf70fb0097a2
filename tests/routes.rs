//! Every route through the real binary against the emulators: S3 → S3 across two endpoints
//! and credentials (moto → s3s-fs, multipart), S3 → GCS (resumable sessions), local → Azure,
//! Azure → local, and S3 → {Azure, S3} fan-out. Each is SIGKILLed mid-copy and resumed, and
//! ends byte-identical; metadata travels; a destination that fails is re-synced by `resume`
//! without copying again to the one that succeeded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use aws_sdk_s3::primitives::ByteStream;
use blobway::store::{ObjectSink, Upload};
use common::crash::kill_then_resume;
use common::proxy::{Fault, FaultConfig, Flavor, Proxy};
use common::*;
use rand::SeedableRng;

const MIB: usize = 1 << 20;

/// The object every route carries metadata on.
const META_KEY: &str = "data/meta.json";

/// A seeded generator, printed so a failure can be replayed.
fn rng(test: &str) -> rand::rngs::StdRng {
    let seed: u64 = std::env::var("BLOBWAY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{test}: seed {seed} (set BLOBWAY_CRASH_SEED to replay)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Source objects under `data/`: one of `large` bytes, one just over a chunk boundary, small
/// and empty ones, and the metadata carrier.
fn objects(large: usize, chunk: usize) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    out.insert("data/large.bin".to_string(), random_bytes(large, 1));
    out.insert("data/over-a-chunk.bin".into(), random_bytes(chunk + 3, 2));
    out.insert("data/deep/small.txt".into(), random_bytes(700, 3));
    out.insert("data/empty".into(), Vec::new());
    out.insert(META_KEY.into(), br#"{"hello":"metadata"}"#.to_vec());
    out
}

/// Puts `objects` into a moto bucket, the metadata carrier with content-type,
/// cache-control and one user key.
async fn seed_s3(objects: &BTreeMap<String, Vec<u8>>) -> String {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    for (key, data) in objects {
        if key == META_KEY {
            s3.put_object()
                .bucket(&bucket)
                .key(key)
                .content_type("application/json")
                .cache_control("max-age=60")
                .metadata("owner", "data-platform")
                .body(ByteStream::from(data.clone()))
                .send()
                .await
                .expect("put with metadata");
        } else {
            put(&s3, &bucket, key, data).await;
        }
    }
    bucket
}

/// The `archive` AWS profile, holding s3s-fs's keys: the second set of S3 credentials.
fn archive_profile() -> AwsProfile {
    AwsProfile::new("archive", S3S_ACCESS_KEY, S3S_SECRET_KEY)
}

/// A proxy in front of s3s-fs that answers every part upload with a server error, until its
/// `faulty` switch is cleared.
async fn failing_part_uploads() -> Proxy {
    Proxy::start(
        &test_env("BLOBWAY_TEST_S3S"),
        FaultConfig {
            rate: 1.0,
            mix: vec![(Fault::ServerError, 1)],
            only: Some("partNumber=".into()),
            ..FaultConfig::none(Flavor::S3)
        },
    )
    .await
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_s3_across_two_endpoints_and_credentials_survives_sigkill() {
    let mut rng = rng("s3 → s3");
    let sources = objects(30 * MIB, 5 * MIB);
    let bucket = seed_s3(&sources).await;
    let dest_bucket = unique("dst");
    // The destination's credentials come from a profile, as an operator keeps them in
    // ~/.aws/credentials; the source's from the environment.
    let profile = archive_profile();
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
    let make = || profile.blobway(&state);
    let s3s = s3s_client();
    let crashes = kill_then_resume(
        make,
        &args(&[
            "copy",
            &format!("s3://{bucket}/data/"),
            &format!("s3://{dest_bucket}/data/"),
            "--dest-profile",
            "archive",
            "--dest-endpoint",
            &test_env("BLOBWAY_TEST_S3S"),
            "--chunk-size",
            "5MiB",
            "--concurrency",
            "2",
            "--json",
        ]),
        &state,
        2,
        0..100,
        &mut rng,
        async |_| {
            let visible = s3_contents(&s3s, &dest_bucket, "data/").await;
            assert_visible_are_complete("the S3 destination", &visible, &sources);
        },
    )
    .await;
    assert!(crashes.kills >= 1, "no kill landed");
    let copied = s3_contents(&s3s, &dest_bucket, "data/").await;
    assert_same_objects("the S3 destination", &copied, &sources);

    let head = s3s
        .head_object()
        .bucket(&dest_bucket)
        .key(META_KEY)
        .send()
        .await
        .expect("head");
    assert_eq!(head.content_type(), Some("application/json"));
    assert_eq!(head.cache_control(), Some("max-age=60"));
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("owner"))
            .map(String::as_str),
        Some("data-platform")
    );
    // The multi-part objects arrived through multipart uploads, every one of them completed:
    // none is left pending at the destination.
    let sessions = recorded_sessions(&state);
    assert!(
        !sessions.is_empty(),
        "the multipart upload IDs are recorded"
    );
    for session in &sessions {
        assert!(!s3s_upload_alive(session), "upload {session} left pending");
    }
    // A fresh state file finds every object identical at the destination (the S3 listing
    // has no metadata: the planner looks at the objects of matching size).
    let fresh = state_dir.path().join("fresh.redb");
    let again = run(profile.blobway(&fresh).args([
        "copy",
        &format!("s3://{bucket}/data/"),
        &format!("s3://{dest_bucket}/data/"),
        "--dest-profile",
        "archive",
        "--dest-endpoint",
        &test_env("BLOBWAY_TEST_S3S"),
        "--chunk-size",
        "5MiB",
        "--dry-run",
        "--json",
    ]));
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    let summary = &again.events_named("dry_run")[0]["summary"];
    assert_eq!(summary["identical"], sources.len() as u64, "{summary}");
    assert_eq!(summary["to_copy"], 0, "{summary}");
    // The profile's secret reached neither the state file nor the log nor the output.
    let state_bytes = std::fs::read(&state).expect("state file");
    let log = std::fs::read(state_dir.path().join("blobway.log")).unwrap_or_default();
    assert_no_secrets(
        &[
            ("the state file", &state_bytes),
            ("the log", &log),
            ("the output", crashes.resume.stdout.as_bytes()),
        ],
        &[S3S_SECRET_KEY],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_s3_with_moto_as_the_destination_survives_sigkill() {
    // The second S3 implementation as a destination (s3s-fs is the first): moto's multipart
    // answers, ListParts among them, must read as S3's.
    let mut rng = rng("s3 → s3 (moto)");
    let sources = objects(12 * MIB, 5 * MIB);
    let bucket = seed_s3(&sources).await;
    let dest_bucket = unique("dst");
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
    let s3 = s3_client();
    let crashes = kill_then_resume(
        || blobway(&state),
        &args(&[
            "copy",
            &format!("s3://{bucket}/data/"),
            &format!("s3://{dest_bucket}/data/"),
            "--chunk-size",
            "5MiB",
            "--concurrency",
            "2",
            "--json",
        ]),
        &state,
        1,
        0..100,
        &mut rng,
        async |_| {
            let visible = s3_contents(&s3, &dest_bucket, "data/").await;
            assert_visible_are_complete("moto", &visible, &sources);
        },
    )
    .await;
    assert_eq!(
        crashes.resume.code, 0,
        "{}\n{}",
        crashes.resume.stdout, crashes.resume.stderr
    );
    let copied = s3_contents(&s3, &dest_bucket, "data/").await;
    assert_same_objects("moto", &copied, &sources);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_s3_server_side_moves_no_bytes_through_blobway_and_survives_sigkill() {
    // Both sides through one counting proxy in front of moto (one endpoint, so the stores
    // copy themselves): what passes back through the proxy is what blobway downloaded.
    let mut rng = rng("s3 → s3 server-side");
    let mut sources = objects(23 * MIB, 5 * MIB);
    sources.insert("data/ünï côde+x.txt".into(), random_bytes(300, 4));
    let bucket = seed_s3(&sources).await;
    let dest_bucket = unique("dst");
    let proxy = Proxy::start(&emulators().s3, FaultConfig::none(Flavor::S3)).await;
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
    let s3 = s3_client();
    let copy_args = args(&[
        "copy",
        &format!("s3://{bucket}/data/"),
        &format!("s3://{dest_bucket}/data/"),
        "--source-endpoint",
        &proxy.url,
        "--dest-endpoint",
        &proxy.url,
        "--transfer",
        "server",
        "--chunk-size",
        "5MiB",
        "--concurrency",
        "2",
        "--json",
    ]);
    let crashes = kill_then_resume(
        || blobway(&state),
        &copy_args,
        &state,
        1,
        0..50,
        &mut rng,
        async |_| {
            let visible = s3_contents(&s3, &dest_bucket, "data/").await;
            assert_visible_are_complete("moto", &visible, &sources);
        },
    )
    .await;
    assert_eq!(
        crashes.resume.code, 0,
        "{}\n{}",
        crashes.resume.stdout, crashes.resume.stderr
    );
    let copied = s3_contents(&s3, &dest_bucket, "data/").await;
    assert_same_objects("moto", &copied, &sources);
    let total: usize = sources.values().map(Vec::len).sum();
    let down = proxy
        .stats
        .bytes_down
        .load(std::sync::atomic::Ordering::SeqCst);
    println!("{down} bytes came back through blobway for {total} copied");
    assert!(crashes.kills >= 1, "no kill landed");
    assert!(
        down < (total / 8) as u64,
        "{down} bytes came back through blobway for {total} copied"
    );
    let head = s3
        .head_object()
        .bucket(&dest_bucket)
        .key(META_KEY)
        .send()
        .await
        .expect("head");
    assert_eq!(head.content_type(), Some("application/json"));
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("owner"))
            .map(String::as_str),
        Some("data-platform")
    );
}

/// moto ignores `x-amz-copy-source-if-match`; a proxy holds it to the precondition as S3
/// does: a source overwritten while its parts are copied fails that object (nothing of it
/// visible), and the rest of the job is copied.
#[tokio::test(flavor = "multi_thread")]
async fn s3_to_s3_server_side_a_source_changed_mid_copy_fails_that_object_only() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let dest_bucket = unique("dst");
    put(&s3, &bucket, "data/big.bin", &random_bytes(12 * MIB, 61)).await;
    let small = random_bytes(3000, 62);
    put(&s3, &bucket, "data/small.txt", &small).await;
    // Every part copy is throttled until the source was overwritten.
    let proxy = Proxy::start(
        &emulators().s3,
        FaultConfig {
            rate: 1.0,
            mix: vec![(Fault::Throttle, 1)],
            only: Some("partNumber=".into()),
            enforce_copy_if_match: true,
            ..FaultConfig::none(Flavor::S3)
        },
    )
    .await;
    let state = tempfile::tempdir().expect("state");
    let child = blobway(&state.path().join("s.redb"))
        .args([
            "copy",
            &format!("s3://{bucket}/data/"),
            &format!("s3://{dest_bucket}/data/"),
            "--source-endpoint",
            &proxy.url,
            "--dest-endpoint",
            &proxy.url,
            "--transfer",
            "server",
            "--chunk-size",
            "5MiB",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while proxy.stats.count(Fault::Throttle) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no part copy was tried"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    put(&s3, &bucket, "data/big.bin", &random_bytes(12 * MIB, 63)).await;
    proxy
        .faulty
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let result = Run::from(child.wait_with_output().expect("wait"));
    assert_eq!(result.code, 1, "{}", result.stdout);
    let failed = result.events_named("file_failed");
    assert_eq!(failed.len(), 1, "{}", result.stdout);
    assert_eq!(failed[0]["key"], "data/big.bin");
    assert_eq!(
        failed[0]["error"]["class"], "SourceChanged",
        "{}",
        result.stdout
    );
    let copied = s3_contents(&s3, &dest_bucket, "data/").await;
    assert_eq!(
        copied.keys().collect::<Vec<_>>(),
        ["data/small.txt"],
        "nothing of the changed object is visible"
    );
    assert_eq!(md5_hex(&copied["data/small.txt"]), md5_hex(&small));
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_s3_client_side_copy_counts_its_bytes_at_the_proxy() {
    // The control for the test above: the same proxy sees every byte when blobway carries
    // them, so a small count there means the stores copied.
    let sources = objects(6 * MIB, 5 * MIB);
    let bucket = seed_s3(&sources).await;
    let dest_bucket = unique("dst");
    let proxy = Proxy::start(&emulators().s3, FaultConfig::none(Flavor::S3)).await;
    let state_dir = tempfile::tempdir().expect("state");
    let run = run(blobway(&state_dir.path().join("s.redb")).args([
        "copy",
        &format!("s3://{bucket}/data/"),
        &format!("s3://{dest_bucket}/data/"),
        "--source-endpoint",
        &proxy.url,
        "--dest-endpoint",
        &proxy.url,
        "--transfer",
        "client",
        "--chunk-size",
        "5MiB",
        "--json",
    ]));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let total: usize = sources.values().map(Vec::len).sum();
    let down = proxy
        .stats
        .bytes_down
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(down >= total as u64, "{down} bytes down for {total} copied");
    let copied = s3_contents(&s3_client(), &dest_bucket, "data/").await;
    assert_same_objects("moto", &copied, &sources);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_side_copies_the_stores_refuse_fall_back_under_auto_and_fail_under_server() {
    // A proxy that refuses every copy as a bucket policy would (403 AccessDenied).
    let sources = objects(6 * MIB, 5 * MIB);
    let bucket = seed_s3(&sources).await;
    let proxy = Proxy::start(
        &emulators().s3,
        FaultConfig {
            deny_copies: true,
            ..FaultConfig::none(Flavor::S3)
        },
    )
    .await;
    let copy = |dest_bucket: &str, state: &std::path::Path, how: &str| {
        run(blobway(state).args([
            "copy",
            &format!("s3://{bucket}/data/"),
            &format!("s3://{dest_bucket}/data/"),
            "--source-endpoint",
            &proxy.url,
            "--dest-endpoint",
            &proxy.url,
            "--transfer",
            how,
            "--chunk-size",
            "5MiB",
            "--json",
        ]))
    };
    let state_dir = tempfile::tempdir().expect("state");

    let auto_bucket = unique("dst");
    let auto = copy(&auto_bucket, &state_dir.path().join("auto.redb"), "auto");
    assert_eq!(auto.code, 0, "{}\n{}", auto.stdout, auto.stderr);
    let copied = s3_contents(&s3_client(), &auto_bucket, "data/").await;
    assert_same_objects("auto", &copied, &sources);
    let log = std::fs::read_to_string(state_dir.path().join("blobway.log")).unwrap_or_default();
    assert_eq!(
        log.matches("the stores refused a server-side copy").count(),
        1,
        "the fallback is said once:\n{log}"
    );
    assert_eq!(
        auto.events_named("summary")[0]["jobs"][0]["carried"],
        "fell_back",
        "and in the summary"
    );

    let server_bucket = unique("dst");
    let server = copy(
        &server_bucket,
        &state_dir.path().join("server.redb"),
        "server",
    );
    assert_ne!(server.code, 0, "{}", server.stdout);
    let failed = server.events_named("file_failed");
    assert_eq!(failed.len(), sources.len(), "{}", server.stdout);
    assert!(
        failed.iter().all(|e| e
            .to_string()
            .contains("--transfer server does not fall back")),
        "{failed:?}"
    );
    assert!(
        s3_contents(&s3_client(), &server_bucket, "data/")
            .await
            .is_empty(),
        "nothing copied through blobway under --transfer server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_gcs_through_resumable_sessions_survives_sigkill() {
    let mut rng = rng("s3 → gcs");
    let sources = objects(12 * MIB, MIB);
    let bucket = seed_s3(&sources).await;
    let dest_bucket = unique("gcs");
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
    let make = || {
        let mut cmd = blobway(&state);
        cmd.env("STORAGE_EMULATOR_HOST", gcs_endpoint());
        cmd
    };
    let crashes = kill_then_resume(
        make,
        &args(&[
            "copy",
            &format!("s3://{bucket}/data/"),
            &format!("gs://{dest_bucket}/data/"),
            "--chunk-size",
            "1MiB",
            "--concurrency",
            "2",
            "--json",
        ]),
        &state,
        2,
        0..100,
        &mut rng,
        async |_| {
            let visible = gcs_contents(&dest_bucket, "data/").await;
            assert_visible_are_complete("the GCS destination", &visible, &sources);
        },
    )
    .await;
    assert!(crashes.kills >= 1, "no kill landed");
    let copied = gcs_contents(&dest_bucket, "data/").await;
    assert_same_objects("the GCS destination", &copied, &sources);

    let resource = gcs_objects(&dest_bucket, META_KEY)
        .await
        .into_iter()
        .find(|o| o["name"] == META_KEY)
        .expect("metadata carrier");
    assert_eq!(resource["contentType"], "application/json");
    assert_eq!(resource["cacheControl"], "max-age=60");
    assert_eq!(resource["metadata"]["owner"], "data-platform");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_to_azure_survives_sigkill() {
    let mut rng = rng("local → azure");
    let sources = objects(24 * MIB, MIB);
    let dir = tempfile::tempdir().expect("source dir");
    for (key, data) in &sources {
        let path = dir.path().join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, data).expect("write");
    }
    let container = unique("dst");
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
    let crashes = kill_then_resume(
        || blobway(&state),
        &args(&[
            "copy",
            &format!("{}/", dir.path().display()),
            &format!("az://{container}/"),
            "--chunk-size",
            "1MiB",
            "--concurrency",
            "2",
            "--json",
        ]),
        &state,
        2,
        0..100,
        &mut rng,
        async |_| {
            let visible = azure_contents(&container, "").await;
            assert_visible_are_complete("the Azure destination", &visible, &sources);
            // The killed run's job reads as stopped, not as running.
            let jobs = run(blobway(&state).arg("jobs"));
            assert!(jobs.stdout.contains("STOPPED"), "{}", jobs.stdout);
        },
    )
    .await;
    assert!(crashes.kills >= 1, "no kill landed");
    assert_same_objects(
        "the Azure destination",
        &azure_contents(&container, "").await,
        &sources,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_to_local_survives_sigkill_and_keeps_metadata() {
    let mut rng = rng("azure → local");
    let sources = objects(24 * MIB, MIB);
    let container = unique("src");
    let store = azure(&container);
    store.prepare().await.expect("container");
    for (key, data) in &sources {
        let mut meta = blobway::store::ObjectMeta::default();
        if key == META_KEY {
            meta.content_type = Some("application/json".into());
            meta.pairs.insert("owner".into(), "data-platform".into());
        }
        let checksum = blobway::store::Checksum::of(blobway::store::ChecksumKind::Md5, data);
        store
            .put_whole(
                Upload {
                    key,
                    ..Default::default()
                },
                bytes::Bytes::from(data.clone()),
                checksum,
                &meta,
            )
            .await
            .expect("seed Azure");
    }
    let out = tempfile::tempdir().expect("destination dir");
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
    let crashes = kill_then_resume(
        || blobway(&state),
        &args(&[
            "copy",
            &format!("az://{container}/"),
            &format!("{}/", out.path().display()),
            "--chunk-size",
            "1MiB",
            "--concurrency",
            "2",
            "--json",
        ]),
        &state,
        2,
        0..100,
        &mut rng,
        async |_| {
            let visible = local_contents(out.path()).await;
            assert_visible_are_complete("the local destination", &visible, &sources);
        },
    )
    .await;
    assert!(crashes.kills >= 1, "no kill landed");
    let copied = local_objects(out.path()).await;
    let contents = copied
        .iter()
        .map(|(k, (data, _))| (k.clone(), data.clone()))
        .collect();
    assert_same_objects("the local destination", &contents, &sources);
    let meta = &copied[META_KEY].1;
    assert_eq!(meta.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        meta.pairs.get("owner").map(String::as_str),
        Some("data-platform")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_to_azure_and_s3_survives_sigkill() {
    let mut rng = rng("fan-out");
    let sources = objects(30 * MIB, 5 * MIB);
    let bucket = seed_s3(&sources).await;
    let container = unique("dst");
    let dest_bucket = unique("dst");
    let profile = archive_profile();
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
    let make = || profile.blobway(&state);
    let s3s = s3s_client();
    let crashes = kill_then_resume(
        make,
        &args(&[
            "copy",
            &format!("s3://{bucket}/data/"),
            "--to",
            &format!("az://{container}/data/"),
            "--to",
            &format!("s3://{dest_bucket}/data/"),
            "--dest-profile",
            "archive",
            "--dest-endpoint",
            &test_env("BLOBWAY_TEST_S3S"),
            "--chunk-size",
            "5MiB",
            "--concurrency",
            "3",
            "--json",
        ]),
        &state,
        2,
        0..150,
        &mut rng,
        async |_| {
            let on_azure = azure_contents(&container, "data/").await;
            assert_visible_are_complete("the Azure destination", &on_azure, &sources);
            let on_s3 = s3_contents(&s3s, &dest_bucket, "data/").await;
            assert_visible_are_complete("the S3 destination", &on_s3, &sources);
        },
    )
    .await;
    assert!(crashes.kills >= 1, "no kill landed");
    assert_same_objects(
        "the Azure destination",
        &azure_contents(&container, "data/").await,
        &sources,
    );
    assert_same_objects(
        "the S3 destination",
        &s3_contents(&s3s, &dest_bucket, "data/").await,
        &sources,
    );
    let meta = azure_meta(&container, META_KEY).await;
    assert_eq!(meta.content_type.as_deref(), Some("application/json"));
    assert_eq!(meta.cache_control.as_deref(), Some("max-age=60"));
    assert_eq!(
        meta.pairs.get("owner").map(String::as_str),
        Some("data-platform")
    );
    let jobs = recorded_jobs(make());
    let done = jobs.iter().filter(|job| job["state"] == "DONE").count();
    assert_eq!(done, 2, "both destinations done: {jobs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_destination_is_resynced_by_resume_without_copying_again_to_the_other() {
    let sources = objects(12 * MIB, 5 * MIB);
    let bucket = seed_s3(&sources).await;
    let container = unique("dst");
    let dest_bucket = unique("dst");
    let profile = archive_profile();
    let broken = failing_part_uploads().await;
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
    let make = || profile.blobway(&state);
    let mut first = make();
    first.args([
        "copy",
        &format!("s3://{bucket}/data/"),
        &format!("az://{container}/data/"),
        "--to",
        &format!("s3://{dest_bucket}/data/"),
        "--dest-profile",
        "archive",
        "--dest-endpoint",
        &broken.url,
        "--chunk-size",
        "5MiB",
        "--concurrency",
        "2",
        "--max-attempts",
        "2",
        "--json",
    ]);
    let first = run_async(first).await;
    assert_ne!(first.code, 0, "a destination failed: {}", first.stdout);
    assert!(broken.stats.count(Fault::ServerError) > 0);
    assert_same_objects(
        "the Azure destination",
        &azure_contents(&container, "data/").await,
        &sources,
    );
    let jobs = recorded_jobs(make());
    let job_for = |scheme: &str| {
        jobs.iter()
            .find(|j| j["destination"].as_str().unwrap_or("").starts_with(scheme))
            .unwrap_or_else(|| panic!("no {scheme} job in {jobs:?}"))
            .clone()
    };
    let (azure_job, s3_job) = (job_for("az://"), job_for("s3://"));
    assert_eq!(azure_job["state"], "DONE", "{azure_job}");
    assert_eq!(s3_job["state"], "FAILED", "{s3_job}");
    let visible = s3_contents(&s3s_client(), &dest_bucket, "data/").await;
    assert!(
        !visible.contains_key("data/large.bin"),
        "a failed upload is not visible"
    );

    // The operator fixes the destination and resumes: only the failed job runs.
    broken
        .faulty
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let resume = run_async({
        let mut cmd = make();
        cmd.args(["resume", "--json"]);
        cmd
    })
    .await;
    assert_eq!(resume.code, 0, "{}\n{}", resume.stdout, resume.stderr);
    let loaded: Vec<u64> = resume
        .events_named("job_loaded")
        .iter()
        .filter_map(|e| e["job"].as_u64())
        .collect();
    assert_eq!(loaded, vec![s3_job["id"].as_u64().expect("id")]);
    for event in resume.events_named("chunk_completed") {
        assert_eq!(event["job"], s3_job["id"], "copied again: {event}");
    }
    assert_same_objects(
        "the S3 destination",
        &s3_contents(&s3s_client(), &dest_bucket, "data/").await,
        &sources,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_choose_the_objects_and_a_dry_run_writes_nothing() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let all: BTreeMap<String, Vec<u8>> = [
        ("in/a.parquet", 3 * MIB + 1),
        ("in/b.csv", 100),
        ("in/logs/x.gz", 2000),
        ("in/logs/deep/y.gz", MIB),
        ("in/tmp/z.parquet", 5000),
        ("in/tmp/w.gz", 10),
    ]
    .iter()
    .enumerate()
    .map(|(i, (k, size))| (k.to_string(), random_bytes(*size, 50 + i as u64)))
    .collect();
    for (key, data) in &all {
        put(&s3, &bucket, key, data).await;
    }
    let wanted: BTreeMap<String, Vec<u8>> = all
        .iter()
        .filter(|(k, _)| {
            ["in/a.parquet", "in/logs/x.gz", "in/logs/deep/y.gz"].contains(&k.as_str())
        })
        .map(|(k, v)| (k.replacen("in/", "out/", 1), v.clone()))
        .collect();
    let container = unique("dst");
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
    let copy = |extra: &[&str]| {
        let mut cmd: Command = blobway(&state);
        cmd.args([
            "copy",
            &format!("s3://{bucket}/in/"),
            &format!("az://{container}/out/"),
            "--include",
            "*.parquet",
            "--include",
            "logs/**/*.gz",
            "--exclude",
            "tmp/**",
            "--chunk-size",
            "1MiB",
        ])
        .args(extra);
        cmd
    };

    // The plan, as JSON: the filtered objects, their bytes and chunks; nothing anywhere.
    let dry = run(&mut copy(&["--dry-run", "--json"]));
    assert_eq!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    let plan = &dry.events_named("dry_run")[0];
    let planned: Vec<&str> = plan["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| o["dest_key"].as_str().expect("dest_key"))
        .collect();
    assert_eq!(
        planned,
        wanted.keys().map(String::as_str).collect::<Vec<_>>()
    );
    let bytes: usize = wanted.values().map(Vec::len).sum();
    let chunks: usize = wanted.values().map(|d| d.len().div_ceil(MIB).max(1)).sum();
    assert_eq!(plan["summary"]["files"], 3);
    assert_eq!(plan["summary"]["to_copy"], 3);
    assert_eq!(plan["summary"]["to_copy_bytes"], bytes as u64);
    assert_eq!(plan["summary"]["chunks"], chunks as u64);
    assert_eq!(plan["summary"]["filtered"], 3);
    assert!(plan["summary"]["requests"].as_u64().expect("requests") >= chunks as u64);
    assert!(!state.exists(), "a dry run created the state file");
    assert!(
        !azure(&container)
            .containers()
            .await
            .expect("containers")
            .contains(&container),
        "a dry run created the destination container"
    );
    // The same plan as a table for a person.
    let table = run(&mut copy(&["--dry-run"]));
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.contains("dry run"), "{}", table.stdout);
    assert!(table.stdout.contains("logs/deep/y.gz"), "{}", table.stdout);
    assert!(!table.stdout.contains("b.csv"), "{}", table.stdout);
    assert!(
        table.stdout.contains("3 left out by filters"),
        "{}",
        table.stdout
    );

    // The real copy moves exactly the filtered objects.
    let real = run(&mut copy(&[]));
    assert_eq!(real.code, 0, "{}\n{}", real.stdout, real.stderr);
    assert_same_objects(
        "the Azure destination",
        &azure_contents(&container, "out/").await,
        &wanted,
    );
    // A dry run now finds everything done.
    let again = run(&mut copy(&["--dry-run", "--json"]));
    let summary = &again.events_named("dry_run")[0]["summary"];
    assert_eq!(summary["to_copy"], 0, "{summary}");
    assert_eq!(summary["chunks"], 0, "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_refused_at_planning_is_recorded_and_planned_by_resume() {
    let sources = objects(6 * MIB, 5 * MIB);
    let bucket = seed_s3(&sources).await;
    let container = unique("dst");
    let dest_bucket = unique("dst");
    // The archive profile holds a wrong secret: the S3 destination refuses the first request.
    let profile = AwsProfile::new("archive", S3S_ACCESS_KEY, "not-the-secret");
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
    let make = || profile.blobway(&state);
    let first = run(make().args([
        "copy",
        &format!("s3://{bucket}/data/"),
        &format!("az://{container}/data/"),
        "--to",
        &format!("s3://{dest_bucket}/data/"),
        "--dest-profile",
        "archive",
        "--dest-endpoint",
        &test_env("BLOBWAY_TEST_S3S"),
        "--chunk-size",
        "5MiB",
    ]));
    assert_ne!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let all = format!("{}{}", first.stdout, first.stderr);
    assert!(all.contains("blobway resume"), "{all}");
    assert!(
        !all.contains("not-the-secret"),
        "the secret is not echoed: {all}"
    );
    assert_same_objects(
        "the Azure destination",
        &azure_contents(&container, "data/").await,
        &sources,
    );
    let jobs = recorded_jobs(make());
    let s3_job = jobs
        .iter()
        .find(|j| j["destination"].as_str().unwrap_or("").starts_with("s3://"))
        .unwrap_or_else(|| panic!("the refused destination is recorded: {jobs:?}"))
        .clone();
    assert_eq!(s3_job["state"], "FAILED", "{s3_job}");
    assert_eq!(s3_job["planned"], false, "{s3_job}");

    // The operator fixes the key; resume plans and copies the S3 destination only.
    profile.set_keys("archive", S3S_ACCESS_KEY, S3S_SECRET_KEY);
    let resume = run(make().args(["resume", "--json"]));
    assert_eq!(resume.code, 0, "{}\n{}", resume.stdout, resume.stderr);
    let chunks = resume.events_named("chunk_completed");
    assert!(!chunks.is_empty(), "{}", resume.stdout);
    for event in chunks {
        assert_eq!(event["job"], s3_job["id"], "copied again: {event}");
    }
    assert_same_objects(
        "the S3 destination",
        &s3_contents(&s3s_client(), &dest_bucket, "data/").await,
        &sources,
    );
}

/// An OAuth token endpoint standing in for Google's: answers every request with `token` and
/// counts the requests.
async fn token_server(
    token: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/token", listener.local_addr().expect("addr"));
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = format!(
                        r#"{{"access_token":"{token}","expires_in":3600,"token_type":"Bearer"}}"#
                    );
                    async move {
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(bytes::Bytes::from(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread")]
async fn gcs_credentials_come_from_a_service_account_key_and_never_show() {
    const TOKEN: &str = "ya29.blobway-test-token-7f3a9c";
    let (token_uri, hits) = token_server(TOKEN).await;
    let dir = tempfile::tempdir().expect("dir");
    // A service-account key as Google issues it, with a throwaway RSA key and the token
    // endpoint above.
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "blobway-test",
        "private_key_id": "0123456789abcdef",
        "private_key": include_str!("fixtures/throwaway-service-account-key.pem"),
        "client_email": "blobway-test@blobway-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    });
    let key_file = dir.path().join("key.json");
    std::fs::write(&key_file, key.to_string()).expect("key file");
    let source = local_files(&[("a.bin", 3 * MIB + 5), ("b.txt", 100)]);
    let bucket = unique("gcs");
    let state = dir.path().join("s.redb");
    let result = run(blobway(&state)
        .env_remove("STORAGE_EMULATOR_HOST")
        .env_remove("GOOGLE_OAUTH_ACCESS_TOKEN")
        .env("GOOGLE_APPLICATION_CREDENTIALS", &key_file)
        .args([
            "copy",
            &format!("{}/", source.path().display()),
            &format!("gs://{bucket}/in/"),
            "--dest-endpoint",
            &gcs_endpoint(),
            "--chunk-size",
            "1MiB",
        ]));
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    assert!(
        hits.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the token came from the service account's token endpoint"
    );
    let expected: BTreeMap<String, Vec<u8>> = local_contents(source.path())
        .await
        .into_iter()
        .map(|(k, v)| (format!("in/{k}"), v))
        .collect();
    assert_same_objects(
        "the GCS destination",
        &gcs_contents(&bucket, "in/").await,
        &expected,
    );
    let log = std::fs::read(dir.path().join("blobway.log")).unwrap_or_default();
    assert_no_secrets(
        &[
            ("the state file", &std::fs::read(&state).expect("state")),
            ("the log", &log),
            ("stdout", result.stdout.as_bytes()),
            ("stderr", result.stderr.as_bytes()),
        ],
        &[TOKEN],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_failed_job_gives_up_its_multipart_uploads() {
    let sources = objects(12 * MIB, 5 * MIB);
    let bucket = seed_s3(&sources).await;
    let dest_bucket = unique("dst");
    let profile = archive_profile();
    let broken = failing_part_uploads().await;
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
    let make = || profile.blobway(&state);
    let mut first = make();
    first.args([
        "copy",
        &format!("s3://{bucket}/data/"),
        &format!("s3://{dest_bucket}/data/"),
        "--dest-profile",
        "archive",
        "--dest-endpoint",
        &broken.url,
        "--chunk-size",
        "5MiB",
        "--max-attempts",
        "1",
    ]);
    let first = run_async(first).await;
    assert_ne!(first.code, 0, "{}", first.stdout);
    let sessions = recorded_sessions(&state);
    assert!(
        !sessions.is_empty(),
        "the failed objects' uploads are recorded"
    );
    for session in &sessions {
        assert!(
            s3s_upload_alive(session),
            "upload {session} kept for a retry"
        );
    }

    let cancel = run_async({
        let mut cmd = make();
        cmd.args(["cancel", "1"]);
        cmd
    })
    .await;
    assert_eq!(cancel.code, 0, "{}\n{}", cancel.stdout, cancel.stderr);
    assert!(cancel.stdout.contains("cancelled") || cancel.stderr.contains("cancelled"));
    for session in &sessions {
        assert!(!s3s_upload_alive(session), "upload {session} still pending");
    }
    let jobs = run(make().arg("jobs"));
    assert!(jobs.stdout.contains("CANCELLED"), "{}", jobs.stdout);
    let resume = run(make().args(["resume", "--json"]));
    assert_eq!(resume.code, 0, "{}", resume.stderr);
    assert!(
        resume.events_named("job_loaded").is_empty(),
        "{}",
        resume.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_are_written_to_the_chosen_storage_class_both_ways() {
    let sources = objects(6 * MIB, 5 * MIB);
    let bucket = seed_s3(&sources).await;
    let s3 = s3_client();
    for how in ["server", "client"] {
        let dest_bucket = unique("dst");
        let state_dir = tempfile::tempdir().expect("state");
        let run = run(blobway(&state_dir.path().join("s.redb")).args([
            "copy",
            &format!("s3://{bucket}/data/"),
            &format!("s3://{dest_bucket}/data/"),
            "--transfer",
            how,
            "--storage-class",
            "standard-ia",
            "--chunk-size",
            "5MiB",
        ]));
        assert_eq!(run.code, 0, "{how}: {}\n{}", run.stdout, run.stderr);
        for key in ["data/large.bin", "data/deep/small.txt"] {
            let head = s3
                .head_object()
                .bucket(&dest_bucket)
                .key(key)
                .send()
                .await
                .expect("head");
            assert_eq!(
                head.storage_class(),
                Some(&aws_sdk_s3::types::StorageClass::StandardIa),
                "{how}: {key}"
            );
        }
    }
}
