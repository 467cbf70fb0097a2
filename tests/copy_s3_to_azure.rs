//! End-to-end copies from moto (S3) to Azurite (Azure Blob) through the real binary: edge
//! sizes, awkward keys, a prefix of 50 objects, a source changed mid-copy, and a second run that
//! moves nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead;
use std::process::Stdio;

use common::*;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn edge_sizes_and_awkward_keys_arrive_byte_identical() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    let objects: Vec<(String, Vec<u8>)> = vec![
        ("in/empty".into(), Vec::new()),
        ("in/one-byte".into(), vec![0x42]),
        (
            "in/exactly-four-chunks.bin".into(),
            random_bytes(4 * MIB, 1),
        ),
        (
            "in/four-chunks-plus-one.bin".into(),
            random_bytes(4 * MIB + 1, 2),
        ),
        ("in/one chunk exactly".into(), random_bytes(MIB, 3)),
        (
            "in/dir with spaces/naïve résumé 日本語.txt".into(),
            random_bytes(3000, 4),
        ),
    ];
    for (key, data) in &objects {
        put(&s3, &bucket, key, data).await;
    }
    let state = tempfile::tempdir().expect("state");
    let result = run(blobway(&state.path().join("s.redb")).args([
        "copy",
        &format!("s3://{bucket}/in/"),
        &format!("az://{container}/out/"),
        "--chunk-size",
        "1MiB",
        "--concurrency",
        "4",
    ]));
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);

    let copied = azure_contents(&container, "out/").await;
    assert_eq!(copied.len(), objects.len(), "{:?}", copied.keys());
    for (key, data) in &objects {
        let dest = key.replacen("in/", "out/", 1);
        let got = copied
            .get(&dest)
            .unwrap_or_else(|| panic!("{dest} missing"));
        assert_eq!(md5_hex(got), md5_hex(data), "{dest}");
    }
    // Nothing is left staged: every multi-block object was committed.
    for (key, size) in [
        ("exactly-four-chunks.bin", 4 * MIB),
        ("four-chunks-plus-one.bin", 4 * MIB + 1),
    ] {
        use blobway::store::{ObjectSink, PlannedBlock, Upload};
        let etag = s3
            .head_object()
            .bucket(&bucket)
            .key(format!("in/{key}"))
            .send()
            .await
            .expect("head source")
            .e_tag
            .expect("etag");
        let chunks = size.div_ceil(MIB) as u32;
        let blocks: Vec<PlannedBlock> = (0..chunks)
            .map(|index| PlannedBlock {
                index,
                id: blobway::engine::plan::block_id(&etag, size as u64, MIB as u64, index),
                size: (size - index as usize * MIB).min(MIB) as u64,
            })
            .collect();
        let dest = format!("out/{key}");
        let upload = Upload {
            key: &dest,
            ..Default::default()
        };
        let missing = azure(&container)
            .missing_blocks(upload, &blocks)
            .await
            .expect("block list");
        assert_eq!(
            missing.len(),
            blocks.len(),
            "{dest} still has uncommitted blocks staged"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_of_fifty_objects_arrives_and_a_second_copy_moves_nothing() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    let mut objects = Vec::new();
    for i in 0..50u64 {
        let size = [0, 1, 700, 64 * 1024, MIB + 3, 2 * MIB][i as usize % 6];
        let data = random_bytes(size, 100 + i);
        let key = format!("batch/{:02}/object-{i}.dat", i % 7);
        put(&s3, &bucket, &key, &data).await;
        objects.push((key, data));
    }
    let state = tempfile::tempdir().expect("state");
    let state_file = state.path().join("s.redb");
    let args = [
        "copy".to_string(),
        format!("s3://{bucket}/batch/"),
        format!("az://{container}/"),
        "--chunk-size".into(),
        "1MiB".into(),
        "--json".into(),
    ];
    let first = run(blobway(&state_file).args(&args));
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let summary = first.events_named("summary");
    assert_eq!(summary.len(), 1, "one final summary line");
    assert_eq!(summary[0]["ok"], true);
    assert_eq!(summary[0]["jobs"][0]["progress"]["files_done"], 50);

    let copied = azure_contents(&container, "").await;
    assert_eq!(copied.len(), 50);
    for (key, data) in &objects {
        let dest = key.strip_prefix("batch/").expect("prefix");
        assert_eq!(md5_hex(&copied[dest]), md5_hex(data), "{dest}");
    }

    // The same copy again: nothing is read or written, and it still succeeds.
    let second = run(blobway(&state_file).args(&args));
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    assert!(
        second.events_named("chunk_started").is_empty(),
        "no chunk was sent"
    );
    let summary = &second.events_named("summary")[0];
    assert_eq!(summary["bytes_moved"], 0);
    let planned = &second.events_named("job_planned")[0]["summary"];
    assert_eq!(planned["already_done"], 50);
    assert_eq!(planned["to_copy"], 0);

    // A fresh state file: the destination's blobway metadata proves the copies identical.
    let fresh = tempfile::tempdir().expect("fresh state");
    let third = run(blobway(&fresh.path().join("s.redb")).args(&args));
    assert_eq!(third.code, 0, "{}\n{}", third.stdout, third.stderr);
    assert!(third.events_named("chunk_started").is_empty());
    assert_eq!(
        third.events_named("job_planned")[0]["summary"]["identical"],
        50
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_overwritten_mid_copy_fails_that_object_only() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    let big = random_bytes(40 * MIB, 7);
    put(&s3, &bucket, "data/changing.bin", &big).await;
    for i in 0..3u64 {
        put(
            &s3,
            &bucket,
            &format!("data/steady-{i}.bin"),
            &random_bytes(3 * MIB, 20 + i),
        )
        .await;
    }
    let state = tempfile::tempdir().expect("state");
    let mut child = blobway(&state.path().join("s.redb"))
        .args([
            "copy",
            &format!("s3://{bucket}/data/"),
            &format!("az://{container}/data/"),
            "--chunk-size",
            "1MiB",
            "--concurrency",
            "2",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut captured = Vec::new();
    // Wait until the first chunk of the big object is acknowledged, then overwrite it.
    let mut overwritten = false;
    for line in lines.by_ref() {
        let line = line.expect("line");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        captured.push(line);
        if !overwritten && event["event"] == "chunk_completed" && event["file"] == 0 {
            put(
                &s3,
                &bucket,
                "data/changing.bin",
                &random_bytes(40 * MIB, 8),
            )
            .await;
            overwritten = true;
        }
    }
    let status = child.wait().expect("wait");
    assert!(overwritten, "the big object was being copied: {captured:?}");
    assert_eq!(status.code(), Some(1), "{captured:#?}");
    let failed: Vec<serde_json::Value> = captured
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "file_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{captured:#?}");
    assert_eq!(failed[0]["key"], "data/changing.bin");
    assert_eq!(failed[0]["error"]["class"], "SourceChanged");
    assert!(
        failed[0]["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("source changed since planning")
    );
    let copied = azure_contents(&container, "data/").await;
    assert!(
        !copied.contains_key("data/changing.bin"),
        "nothing of the changed object is visible"
    );
    assert_eq!(
        copied.len(),
        3,
        "the other objects completed: {:?}",
        copied.keys()
    );
}

/// The Storage CRC-64 of `data` by Microsoft's own implementation (the C extension of the
/// `azure-storage-extensions` package, installed by scripts/emulators.sh).
fn microsoft_crc64(data: &[u8]) -> u64 {
    use std::io::Write as _;
    let mut child = std::process::Command::new(test_env("BLOBWAY_TEST_PYTHON"))
        .args([
            "-c",
            "import sys; from azure.storage.extensions.checksums import crc64; \
             print(crc64.compute(sys.stdin.buffer.read(), 0))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write");
    let output = child.wait_with_output().expect("python");
    assert!(
        output.status.success(),
        "azure-storage-extensions is installed"
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("a CRC")
}

/// blobway pointed at Azurite through the copy-from-URL double.
fn through_double(
    state: &std::path::Path,
    double: &block_from_url::BlockFromUrl,
) -> std::process::Command {
    let mut cmd = blobway(state);
    cmd.env(
        "AZURE_STORAGE_CONNECTION_STRING",
        azurite_connection_string_at(&double.url),
    );
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_azure_server_side_puts_blocks_from_signed_urls() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    let objects: Vec<(String, Vec<u8>)> = vec![
        (
            "in/three-and-a-bit.bin".into(),
            random_bytes(3 * MIB + 17, 31),
        ),
        ("in/small.txt".into(), random_bytes(2000, 32)),
        ("in/empty".into(), Vec::new()),
        (
            "in/dir with spaces/naïve+résumé.txt".into(),
            random_bytes(700, 33),
        ),
    ];
    for (key, data) in &objects {
        put(&s3, &bucket, key, data).await;
    }
    let double = block_from_url::BlockFromUrl::start(&azurite_origin()).await;
    // The first copy meets an expired signature (signed again), the next two a throttled
    // source (retried).
    double
        .stats
        .expire_next
        .store(1, std::sync::atomic::Ordering::SeqCst);
    double
        .stats
        .throttle_next
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let state = tempfile::tempdir().expect("state");
    let result = run(through_double(&state.path().join("s.redb"), &double).args([
        "copy",
        &format!("s3://{bucket}/in/"),
        &format!("az://{container}/out/"),
        "--transfer",
        "server",
        "--chunk-size",
        "1MiB",
        "--max-concurrency",
        "4",
        "--json",
    ]));
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    let copied = azure_contents(&container, "out/").await;
    assert_eq!(copied.len(), objects.len(), "{:?}", copied.keys());
    let total: usize = objects.iter().map(|(_, d)| d.len()).sum();
    for (key, data) in &objects {
        let dest = key.replacen("in/", "out/", 1);
        assert_eq!(
            copied.get(&dest).map(|d| md5_hex(d)),
            Some(md5_hex(data)),
            "{dest}"
        );
        if !data.is_empty() {
            // The CRC-64 Azure reported for each block, combined, is the object's own, as
            // Microsoft's own implementation computes it over the committed blob.
            let meta = azure_meta(&container, &dest).await;
            let committed = copied.get(&dest).expect("copied");
            assert_eq!(
                meta.pairs.get("blobway_crc64nvme"),
                Some(&format!("{:016x}", microsoft_crc64(committed))),
                "{dest}"
            );
        }
    }
    let stats = &double.stats;
    let sent = stats.bytes_in.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent < (total / 8) as u64,
        "{sent} bytes went through blobway for {total} copied"
    );
    // 4 blocks + 2 one-block objects, and the three faulted attempts.
    assert!(stats.copies.load(std::sync::atomic::Ordering::SeqCst) >= 9);
    assert_eq!(
        stats.expire_next.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(
        stats
            .throttle_next
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let throttles = result
        .events_named("chunk_retry")
        .iter()
        .filter(|e| e["error"]["class"] == "Throttled")
        .count();
    assert_eq!(
        throttles, 2,
        "the throttled source reached the controller as throttles"
    );
    assert!(
        result
            .events_named("concurrency_changed")
            .iter()
            .any(|e| e["decision"] == "throttle_cut"),
        "and slowed it: {}",
        result.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_azure_auto_against_plain_azurite_falls_back_and_completes() {
    // Azurite 3.35 answers Put Block From URL with an empty 500 (its handler's 501 is never
    // reached): the route is refused, blobway carries the bytes.
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    let data = random_bytes(2 * MIB + 5, 41);
    put(&s3, &bucket, "in/a.bin", &data).await;
    put(&s3, &bucket, "in/b.txt", b"bee").await;
    let state = tempfile::tempdir().expect("state");
    let result = run(blobway(&state.path().join("s.redb")).args([
        "copy",
        &format!("s3://{bucket}/in/"),
        &format!("az://{container}/out/"),
        "--chunk-size",
        "1MiB",
        "--json",
    ]));
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    let copied = azure_contents(&container, "out/").await;
    assert_eq!(
        copied.get("out/a.bin").map(|d| md5_hex(d)),
        Some(md5_hex(&data))
    );
    assert_eq!(
        copied.get("out/b.txt").map(Vec::as_slice),
        Some(&b"bee"[..])
    );
    let log = std::fs::read_to_string(state.path().join("blobway.log")).unwrap_or_default();
    assert_eq!(
        log.matches("the stores refused a server-side copy").count(),
        1,
        "the fallback is said once:\n{log}"
    );
}

/// A server-side `copy` of `s3://{bucket}/in/` to `az://{container}/out/` through a double
/// that throttles every copy until `key` was overwritten with `overwrite` (once a copy was
/// tried), then lets them through; the finished run.
async fn copy_overwritten_mid_copy(
    bucket: &str,
    container: &str,
    state: &std::path::Path,
    key: &str,
    overwrite: &[u8],
) -> Run {
    use std::sync::atomic::Ordering::SeqCst;
    let double = block_from_url::BlockFromUrl::start(&azurite_origin()).await;
    double.stats.throttle_next.store(u32::MAX, SeqCst);
    let child = through_double(state, &double)
        .args([
            "copy",
            &format!("s3://{bucket}/in/"),
            &format!("az://{container}/out/"),
            "--transfer",
            "server",
            "--chunk-size",
            "1MiB",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while double.stats.copies.load(SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "no copy was tried");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    put(&s3_client(), bucket, key, overwrite).await;
    double.stats.throttle_next.store(0, SeqCst);
    Run::from(child.wait_with_output().expect("wait"))
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_azure_server_side_a_source_changed_before_the_commit_fails_that_object() {
    // A signed URL reads whatever the source holds: the version is checked before the commit.
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    put(&s3, &bucket, "in/changing.bin", &random_bytes(3 * MIB, 51)).await;
    let state = tempfile::tempdir().expect("state");
    let result = copy_overwritten_mid_copy(
        &bucket,
        &container,
        &state.path().join("s.redb"),
        "in/changing.bin",
        &random_bytes(3 * MIB, 52),
    )
    .await;
    assert_eq!(result.code, 1, "{}", result.stdout);
    let failed = result.events_named("file_failed");
    assert_eq!(failed.len(), 1, "{}", result.stdout);
    assert_eq!(
        failed[0]["error"]["class"], "SourceChanged",
        "{}",
        result.stdout
    );
    assert!(
        azure_contents(&container, "out/").await.is_empty(),
        "nothing of the changed object is visible"
    );
}

/// Puts `data` with S3's full-object CRC-64/NVME `crc` (moto keeps what it is sent, right or
/// wrong, and answers it to a HEAD that asks).
async fn put_with_crc(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, data: &[u8], crc: u64) {
    use base64::Engine as _;
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc64Nvme)
        .checksum_crc64_nvme(base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes()))
        .body(aws_sdk_s3::primitives::ByteStream::from(data.to_vec()))
        .send()
        .await
        .expect("put with a checksum");
}

/// How `blobway report --all` says each done object of job 1 was verified, by key.
fn verified_by_key(state: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let report = run(blobway(state).args(["report", "1", "--all", "--format", "json"]));
    assert_eq!(report.code, 0, "{}", report.stderr);
    let report: serde_json::Value = serde_json::from_str(&report.stdout).expect("json");
    report["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter_map(|o| {
            Some((
                o["key"].as_str()?.to_string(),
                o["verified"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_azure_server_side_is_proven_by_the_sources_own_checksum() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    let blocks = random_bytes(3 * MIB + 17, 61);
    let small = random_bytes(2000, 62);
    let lying = random_bytes(2 * MIB + 5, 63);
    put_with_crc(
        &s3,
        &bucket,
        "in/blocks.bin",
        &blocks,
        blobway::store::crc64(&blocks),
    )
    .await;
    put_with_crc(
        &s3,
        &bucket,
        "in/small.txt",
        &small,
        blobway::store::crc64(&small),
    )
    .await;
    // A source whose checksum does not match its bytes: what a copy damaged on the way, or a
    // rewrite under the same version, would look like.
    put_with_crc(
        &s3,
        &bucket,
        "in/lying.bin",
        &lying,
        blobway::store::crc64(&lying) ^ 1,
    )
    .await;
    put(&s3, &bucket, "in/plain.bin", &random_bytes(MIB + 9, 64)).await;
    let double = block_from_url::BlockFromUrl::start(&azurite_origin()).await;
    let state = tempfile::tempdir().expect("state");
    let state_file = state.path().join("s.redb");
    let result = run(through_double(&state_file, &double).args([
        "copy",
        &format!("s3://{bucket}/in/"),
        &format!("az://{container}/out/"),
        "--transfer",
        "server",
        "--chunk-size",
        "1MiB",
        "--max-attempts",
        "2",
        "--json",
    ]));
    assert_eq!(result.code, 1, "{}\n{}", result.stdout, result.stderr);
    let failed = result.events_named("file_failed");
    assert_eq!(failed.len(), 1, "{}", result.stdout);
    assert_eq!(failed[0]["key"], "in/lying.bin");
    assert_eq!(failed[0]["error"]["class"], "Damaged");
    let message = failed[0]["error"]["message"].as_str().expect("message");
    assert!(message.contains("the source's own checksum"), "{message}");
    // Copied again from the start before it was given up: a damaged copy is not final.
    assert!(
        !result.events_named("upload_restarted").is_empty(),
        "{}",
        result.stdout
    );
    let copied = azure_contents(&container, "out/").await;
    assert_eq!(
        copied.keys().collect::<Vec<_>>(),
        ["out/blocks.bin", "out/plain.bin", "out/small.txt"],
        "nothing of the object whose checksum disagreed is visible"
    );
    assert_eq!(md5_hex(&copied["out/blocks.bin"]), md5_hex(&blocks));
    assert_eq!(md5_hex(&copied["out/small.txt"]), md5_hex(&small));
    assert_eq!(
        verified_by_key(&state_file),
        [
            ("in/blocks.bin", "source checksum"),
            ("in/plain.bin", "size+etag"),
            ("in/small.txt", "source checksum"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
        "the stores copied the bytes: only a source checksum proves them"
    );

    // Through blobway, every chunk is checksummed by blobway and checked by Azure.
    let client_state = tempfile::tempdir().expect("state");
    let client_file = client_state.path().join("s.redb");
    let client = run(blobway(&client_file).args([
        "copy",
        &format!("s3://{bucket}/in/"),
        &format!("az://{container}-client/out/"),
        "--transfer",
        "client",
        "--include",
        "plain.bin",
        "--include",
        "small.txt",
        "--chunk-size",
        "1MiB",
    ]));
    assert_eq!(client.code, 0, "{}\n{}", client.stdout, client.stderr);
    assert_eq!(
        verified_by_key(&client_file),
        [
            ("in/plain.bin", "blobway crc"),
            ("in/small.txt", "blobway crc")
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into()
    );
}

/// In a versioned bucket every signed URL names the version the upload began with: a source
/// overwritten mid-copy still arrives whole, as that version, and is recorded as verified by
/// size and version ID (where an unversioned one fails as changed).
#[tokio::test(flavor = "multi_thread")]
async fn s3_to_azure_server_side_in_a_versioned_bucket_copies_the_version_it_began_with() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    enable_versioning(&s3, &bucket).await;
    let container = unique("dst");
    let first = random_bytes(3 * MIB + 17, 55);
    put(&s3, &bucket, "in/versioned.bin", &first).await;
    let state = tempfile::tempdir().expect("state");
    let state_file = state.path().join("s.redb");
    let result = copy_overwritten_mid_copy(
        &bucket,
        &container,
        &state_file,
        "in/versioned.bin",
        &random_bytes(3 * MIB + 17, 56),
    )
    .await;
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    let copied = azure_contents(&container, "out/").await;
    assert_eq!(
        copied.get("out/versioned.bin").map(|d| md5_hex(d)),
        Some(md5_hex(&first)),
        "the version the upload began with, whole"
    );
    assert_eq!(
        verified_by_key(&state_file),
        [(
            "in/versioned.bin".to_string(),
            "size+version id".to_string()
        )]
        .into()
    );
}

/// Credentials without `s3:GetObjectVersion` (a proxy refuses every read naming a version):
/// the objects of a versioned bucket are pinned by their ETag alone, said once in the log.
#[tokio::test(flavor = "multi_thread")]
async fn without_version_reads_a_versioned_bucket_is_pinned_by_etag() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    enable_versioning(&s3, &bucket).await;
    let data = random_bytes(2 * MIB + 3, 57);
    put(&s3, &bucket, "in/versioned.bin", &data).await;
    let proxy = proxy::Proxy::start(
        &test_env("BLOBWAY_TEST_S3"),
        proxy::FaultConfig {
            deny_version_reads: true,
            ..proxy::FaultConfig::none(proxy::Flavor::S3)
        },
    )
    .await;
    let double = block_from_url::BlockFromUrl::start(&azurite_origin()).await;
    let container = unique("dst");
    let state = tempfile::tempdir().expect("state");
    let state_file = state.path().join("s.redb");
    let result = run(through_double(&state_file, &double).args([
        "copy",
        &format!("s3://{bucket}/in/"),
        &format!("az://{container}/out/"),
        "--source-endpoint",
        &proxy.url,
        "--transfer",
        "server",
        "--chunk-size",
        "1MiB",
    ]));
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    let copied = azure_contents(&container, "out/").await;
    assert_eq!(
        copied.get("out/versioned.bin").map(|d| md5_hex(d)),
        Some(md5_hex(&data))
    );
    assert_eq!(
        verified_by_key(&state_file),
        [("in/versioned.bin".to_string(), "size+etag".to_string())].into()
    );
    let log = std::fs::read_to_string(state.path().join("blobway.log")).unwrap_or_default();
    assert_eq!(log.matches("s3:GetObjectVersion").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_whose_signed_url_is_too_long_goes_through_blobway_under_auto_only() {
    // Azure takes at most 2 KiB in x-ms-copy-source; a long non-ASCII key, percent-encoded
    // and signed, is longer.
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let long_key = format!("in/{}.bin", "é".repeat(400));
    let long = random_bytes(5000, 61);
    let short = random_bytes(4000, 62);
    put(&s3, &bucket, &long_key, &long).await;
    put(&s3, &bucket, "in/short.bin", &short).await;
    let double = block_from_url::BlockFromUrl::start(&azurite_origin()).await;
    let state = tempfile::tempdir().expect("state");
    let auto_container = unique("dst");
    let auto = run(
        through_double(&state.path().join("auto.redb"), &double).args([
            "copy",
            &format!("s3://{bucket}/in/"),
            &format!("az://{auto_container}/out/"),
            "--json",
        ]),
    );
    assert_eq!(auto.code, 0, "{}\n{}", auto.stdout, auto.stderr);
    let copied = azure_contents(&auto_container, "out/").await;
    let long_dest = long_key.replacen("in/", "out/", 1);
    assert_eq!(
        copied.get(&long_dest).map(|d| md5_hex(d)),
        Some(md5_hex(&long))
    );
    assert_eq!(
        copied.get("out/short.bin").map(|d| md5_hex(d)),
        Some(md5_hex(&short))
    );
    let sent = double
        .stats
        .bytes_in
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent >= long.len() as u64 && sent < (long.len() + short.len()) as u64,
        "only the long-named object went through blobway: {sent} bytes"
    );
    assert_eq!(
        auto.events_named("summary")[0]["jobs"][0]["carried"],
        "mixed",
        "the summary says some objects went through blobway"
    );

    let server_container = unique("dst");
    let server = run(
        through_double(&state.path().join("server.redb"), &double).args([
            "copy",
            &format!("s3://{bucket}/in/"),
            &format!("az://{server_container}/out/"),
            "--transfer",
            "server",
            "--json",
        ]),
    );
    assert_eq!(server.code, 1, "{}", server.stdout);
    let failed = server.events_named("file_failed");
    assert_eq!(failed.len(), 1, "{}", server.stdout);
    assert!(
        failed[0].to_string().contains("over the 2048"),
        "{failed:?}"
    );
    let copied = azure_contents(&server_container, "out/").await;
    assert_eq!(copied.keys().collect::<Vec<_>>(), vec!["out/short.bin"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_azure_server_side_survives_sigkill_and_resumes() {
    let seed: u64 = std::env::var("BLOBWAY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("s3 → azure server-side: seed {seed} (set BLOBWAY_CRASH_SEED to replay)");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    let mut sources = std::collections::BTreeMap::new();
    sources.insert("data/large.bin".to_string(), random_bytes(12 * MIB + 5, 71));
    sources.insert("data/small.txt".to_string(), random_bytes(900, 72));
    for (key, data) in &sources {
        put(&s3, &bucket, key, data).await;
    }
    let double = block_from_url::BlockFromUrl::start(&azurite_origin()).await;
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().join("s.redb");
    let args: Vec<String> = [
        "copy",
        &format!("s3://{bucket}/data/"),
        &format!("az://{container}/data/"),
        "--transfer",
        "server",
        "--chunk-size",
        "1MiB",
        "--concurrency",
        "2",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let crashes = common::crash::kill_then_resume(
        || through_double(&state, &double),
        &args,
        &state,
        1,
        0..50,
        &mut rng,
        async |_| {
            let visible = azure_contents(&container, "data/").await;
            assert_visible_are_complete("azure", &visible, &sources);
        },
    )
    .await;
    assert_eq!(
        crashes.resume.code, 0,
        "{}\n{}",
        crashes.resume.stdout, crashes.resume.stderr
    );
    assert!(crashes.kills >= 1, "no kill landed");
    let copied = azure_contents(&container, "data/").await;
    assert_same_objects("azure", &copied, &sources);
    let total: usize = sources.values().map(Vec::len).sum();
    let sent = double
        .stats
        .bytes_in
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent < (total / 8) as u64, "{sent} bytes through blobway");
    let meta = azure_meta(&container, "data/large.bin").await;
    assert_eq!(
        meta.pairs.get("blobway_crc64nvme"),
        Some(&format!(
            "{:016x}",
            blobway::store::crc64(&sources["data/large.bin"])
        )),
        "every block's CRC came from Azure, across the kill"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_are_written_to_the_chosen_access_tier() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    put(
        &s3,
        &bucket,
        "in/blocks.bin",
        &random_bytes(2 * MIB + 1, 81),
    )
    .await;
    put(&s3, &bucket, "in/whole.txt", b"one put").await;
    let state = tempfile::tempdir().expect("state");
    let result = run(blobway(&state.path().join("s.redb")).args([
        "copy",
        &format!("s3://{bucket}/in/"),
        &format!("az://{container}/out/"),
        "--chunk-size",
        "1MiB",
        "--access-tier",
        "cool",
    ]));
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    let store = azure(&container);
    for key in ["out/blocks.bin", "out/whole.txt"] {
        assert_eq!(
            store.access_tier(key).await.expect("tier").as_deref(),
            Some("Cool"),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_to_azure_server_side_reads_the_source_through_a_sas_url() {
    use blobway::store::ObjectSink as _;
    let source = unique("src");
    let store = azure(&source);
    store.prepare().await.expect("container");
    let objects: Vec<(String, Vec<u8>)> = vec![
        ("in/blocks.bin".into(), random_bytes(2 * MIB + 9, 91)),
        ("in/whole name ü.txt".into(), random_bytes(1500, 92)),
    ];
    for (key, data) in &objects {
        let checksum = blobway::store::Checksum::of(blobway::store::ChecksumKind::Md5, data);
        store
            .put_whole(
                blobway::store::Upload {
                    key,
                    ..Default::default()
                },
                bytes::Bytes::from(data.clone()),
                checksum,
                &blobway::store::ObjectMeta::default(),
            )
            .await
            .expect("seed Azure");
    }
    let double = block_from_url::BlockFromUrl::start(&azurite_origin()).await;
    let container = unique("dst");
    let state = tempfile::tempdir().expect("state");
    let result = run(through_double(&state.path().join("s.redb"), &double).args([
        "copy",
        &format!("az://{source}/in/"),
        &format!("az://{container}/out/"),
        "--transfer",
        "server",
        "--chunk-size",
        "1MiB",
        "--json",
    ]));
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    let copied = azure_contents(&container, "out/").await;
    for (key, data) in &objects {
        let dest = key.replacen("in/", "out/", 1);
        assert_eq!(
            copied.get(&dest).map(|d| md5_hex(d)),
            Some(md5_hex(data)),
            "{dest}"
        );
    }
    let total: usize = objects.iter().map(|(_, d)| d.len()).sum();
    let sent = double
        .stats
        .bytes_in
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent < (total / 8) as u64,
        "{sent} bytes went through blobway"
    );
    assert!(
        double
            .stats
            .bytes_fetched
            .load(std::sync::atomic::Ordering::SeqCst)
            >= total as u64
    );
}

/// A certificate authority and a certificate it signed for S3's host names, as PEM files in
/// `dir`: (bundle of the system's roots and that authority, certificate, key).
fn amazon_certificate(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let names: Vec<String> = ["", "us-east-1.", "dualstack.us-east-1."]
        .iter()
        .flat_map(|region| {
            [
                format!("s3.{region}amazonaws.com"),
                format!("*.s3.{region}amazonaws.com"),
            ]
        })
        .collect();
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let roots = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    let paths = (
        dir.join("bundle.pem"),
        dir.join("s3.pem"),
        dir.join("s3.key"),
    );
    std::fs::write(&paths.0, format!("{roots}\n{}", ca.pem())).unwrap();
    std::fs::write(&paths.1, certificate.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// A helper process, stopped when the test ends (or fails).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The double's happy path as a client nobody here wrote drives it: AzCopy copies S3 → Azure
/// server-side (Put Blob From URL for a one-chunk object, Put Block From URL per block and a
/// block list for a bigger one), reading moto through an HTTPS proxy that plays
/// `*.amazonaws.com`; the blobs arrive byte-identical without their bytes passing AzCopy.
#[tokio::test(flavor = "multi_thread")]
async fn azcopy_copies_s3_to_azure_server_side_through_the_double() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    let objects: Vec<(String, Vec<u8>)> = vec![
        ("in/small.bin".into(), random_bytes(100_000, 71)),
        ("in/sub/four-blocks.bin".into(), random_bytes(1_000_000, 72)),
    ];
    for (key, data) in &objects {
        put(&s3, &bucket, key, data).await;
    }
    let work = tempfile::tempdir().expect("work");
    let (bundle, cert, key) = amazon_certificate(work.path());
    let moto = test_env("BLOBWAY_TEST_S3");
    let mut proxy = KillOnDrop(
        std::process::Command::new(test_env("BLOBWAY_TEST_PYTHON"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/common/tls_connect_proxy.py"
            ))
            .args([&cert, &key])
            .arg(moto.trim_start_matches("http://"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("proxy"),
    );
    let mut port = String::new();
    std::io::BufReader::new(proxy.0.stdout.take().expect("stdout"))
        .read_line(&mut port)
        .expect("proxy port");
    let double =
        block_from_url::BlockFromUrl::start_for_amazon_hosts(&azurite_origin(), &moto).await;
    let sas = blobway::store::azure_sas::AccountSas::new(
        "devstoreaccount1".into(),
        blobway::store::azure::AZURITE_KEY,
        false,
    )
    .expect("sas")
    .token();
    let output = tokio::process::Command::new(test_env("BLOBWAY_TEST_AZCOPY"))
        .args([
            "copy",
            &format!("https://{bucket}.s3.amazonaws.com/in/"),
            &format!("{}/devstoreaccount1/{container}?{sas}", double.url),
            "--from-to",
            "S3Blob",
            "--recursive",
            "--block-size-mb",
            "0.25",
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{}", port.trim()))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("SSL_CERT_FILE", &bundle)
        .env("AZCOPY_LOG_LOCATION", work.path())
        .env("AZCOPY_JOB_PLAN_LOCATION", work.path())
        .env("HOME", work.path())
        .output()
        .await
        .expect("azcopy");
    drop(proxy);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let copied = azure_contents(&container, "").await;
    assert_eq!(copied.len(), objects.len(), "{:?}\n{stdout}", copied.keys());
    for (key, data) in &objects {
        assert_eq!(
            copied.get(key).map(|d| md5_hex(d)),
            Some(md5_hex(data)),
            "{key}"
        );
    }
    let stats = &double.stats;
    // One Put Blob From URL and four Put Block From URL, each read by the double.
    assert_eq!(stats.copies.load(std::sync::atomic::Ordering::SeqCst), 5);
    let total: usize = objects.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(
        stats
            .bytes_fetched
            .load(std::sync::atomic::Ordering::SeqCst),
        total as u64
    );
    assert!(
        stats.bytes_in.load(std::sync::atomic::Ordering::SeqCst) < 4096,
        "AzCopy sent only the block list"
    );
}
