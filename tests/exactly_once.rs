//! Exactly once, under the name the plan shows, with the metadata the destination can hold —
//! on the main route (moto → Azurite) with the data real buckets hold: hyphenated metadata,
//! keys with `./` that a URL layer folds onto another key, and objects already at the
//! destination that blobway did not write. (That every sink's conditional write refuses an
//! object already there is in `sink_contract.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use aws_sdk_s3::primitives::ByteStream;
use common::*;

const MIB: usize = 1 << 20;

/// Puts `data` under `key` with user metadata `original-name`.
async fn put_named(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, data: Vec<u8>) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .metadata("original-name", "Hello World.txt")
        .metadata("owner", "ops")
        .body(ByteStream::from(data))
        .send()
        .await
        .expect("put with metadata");
}

fn copy(state: &std::path::Path, src: &str, dst: &str, extra: &[&str]) -> Run {
    let mut cmd = blobway(state);
    cmd.args(["copy", src, dst, "--chunk-size", "1MiB", "--json"]);
    cmd.args(extra);
    run(&mut cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn hyphenated_s3_metadata_is_renamed_for_azure_and_kept_reversibly() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let small = random_bytes(100, 1);
    let big = random_bytes(3 * MIB, 2);
    put_named(&s3, &bucket, "m/small.txt", small.clone()).await;
    put_named(&s3, &bucket, "m/big.bin", big.clone()).await;
    let container = unique("meta");
    let state = tempfile::tempdir().expect("state");

    // The dry run reads each object's metadata and shows what Azure will hold of it.
    let dry = copy(
        &state.path().join("dry.redb"),
        &format!("s3://{bucket}/m/"),
        &format!("az://{container}/m/"),
        &["--dry-run"],
    );
    assert_eq!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    let plan = &dry.events_named("dry_run")[0];
    for object in plan["objects"].as_array().expect("objects") {
        assert_eq!(
            object["action"], "copy; metadata original-name → rename_original_name",
            "{plan}"
        );
    }
    assert_eq!(plan["summary"]["metadata_changed"], 2, "{plan}");
    let dry_fail = copy(
        &state.path().join("dry.redb"),
        &format!("s3://{bucket}/m/"),
        &format!("az://{container}/m/"),
        &["--dry-run", "--invalid-metadata", "fail"],
    );
    assert_eq!(
        dry_fail.events_named("dry_run")[0]["summary"]["metadata_refused"],
        2,
        "{}",
        dry_fail.stdout
    );

    // `fail` refuses both before any byte reaches Azure, naming the pair and the fix.
    let failed = copy(
        &state.path().join("fail.redb"),
        &format!("s3://{bucket}/m/"),
        &format!("az://{container}/m/"),
        &["--invalid-metadata", "fail"],
    );
    assert_ne!(failed.code, 0, "{}", failed.stdout);
    assert!(
        failed.stdout.contains("original-name") && failed.stdout.contains("--invalid-metadata"),
        "{}",
        failed.stdout
    );
    assert!(
        azure_contents(&container, "m/").await.is_empty(),
        "nothing written"
    );

    // The default renames: every object arrives, the original name kept beside the value.
    let copied = copy(
        &state.path().join("s.redb"),
        &format!("s3://{bucket}/m/"),
        &format!("az://{container}/m/"),
        &[],
    );
    assert_eq!(copied.code, 0, "{}\n{}", copied.stdout, copied.stderr);
    let contents = azure_contents(&container, "m/").await;
    assert_eq!(contents.get("m/small.txt"), Some(&small));
    assert_eq!(contents.get("m/big.bin"), Some(&big));
    for key in ["m/small.txt", "m/big.bin"] {
        let meta = azure_meta(&container, key).await;
        assert_eq!(
            meta.pairs.get("rename_original_name").map(String::as_str),
            Some("Hello%20World.txt"),
            "{key}: {:?}",
            meta.pairs
        );
        assert_eq!(
            meta.pairs
                .get("rename_key_original_name")
                .map(String::as_str),
            Some("original-name"),
            "{key}"
        );
        assert_eq!(meta.pairs.get("owner").map(String::as_str), Some("ops"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_keys_one_blob_name_never_overwrite_each_other() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    put(&s3, &bucket, "k/x/a.txt", b"AAAA").await;
    put(&s3, &bucket, "k/x/./a.txt", b"BBBB").await;
    put(&s3, &bucket, "k/y.txt", b"fine").await;
    let container = unique("names");
    let state = tempfile::tempdir().expect("state");
    let src = format!("s3://{bucket}/k/");
    let dst = format!("az://{container}/k/");

    // The dry run already shows the refusal, with both keys.
    let dry = copy(&state.path().join("s.redb"), &src, &dst, &["--dry-run"]);
    assert_eq!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout.contains("`k/x/./a.txt` and `k/x/a.txt`"),
        "{}",
        dry.stdout
    );

    let copied = copy(&state.path().join("s.redb"), &src, &dst, &[]);
    assert_ne!(copied.code, 0, "a refused object fails the job");
    assert!(
        copied.stdout.contains("k/x/./a.txt") && copied.stdout.contains("k/x/a.txt"),
        "{}",
        copied.stdout
    );
    let contents = azure_contents(&container, "k/").await;
    assert_eq!(
        contents.get("k/x/a.txt").map(Vec::as_slice),
        Some(&b"AAAA"[..])
    );
    assert_eq!(
        contents.get("k/y.txt").map(Vec::as_slice),
        Some(&b"fine"[..])
    );
    assert_eq!(contents.len(), 2, "{:?}", contents.keys());
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_already_at_the_destination_are_replaced_left_or_refused_as_asked() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    put(&s3, &bucket, "e/x.txt", b"NEW").await;
    put(&s3, &bucket, "e/big.bin", &random_bytes(2 * MIB + 5, 3)).await;
    let container = unique("exists");
    let store = azure(&container);
    use blobway::store::ObjectSink as _;
    store.prepare().await.expect("container");
    for key in ["e/x.txt", "e/big.bin"] {
        store
            .put_whole(
                blobway::store::Upload {
                    key,
                    ..Default::default()
                },
                bytes::Bytes::from_static(b"OLD"),
                blobway::store::Checksum::of(blobway::store::ChecksumKind::Md5, b"OLD"),
                &Default::default(),
            )
            .await
            .expect("someone else's object");
    }
    let state = tempfile::tempdir().expect("state");
    let src = format!("s3://{bucket}/e/");
    let dst = format!("az://{container}/e/");
    let old = |contents: &std::collections::BTreeMap<String, Vec<u8>>| {
        contents.values().all(|v| v.as_slice() == b"OLD")
    };

    let failed = copy(
        &state.path().join("fail.redb"),
        &src,
        &dst,
        &["--if-exists", "fail"],
    );
    assert_ne!(failed.code, 0, "{}", failed.stdout);
    assert!(failed.stdout.contains("--if-exists"), "{}", failed.stdout);
    assert!(
        old(&azure_contents(&container, "e/").await),
        "nothing replaced"
    );

    let skipped = copy(
        &state.path().join("skip.redb"),
        &src,
        &dst,
        &["--if-exists", "skip"],
    );
    assert_eq!(skipped.code, 0, "{}\n{}", skipped.stdout, skipped.stderr);
    assert!(
        old(&azure_contents(&container, "e/").await),
        "nothing replaced"
    );

    let replaced = copy(&state.path().join("s.redb"), &src, &dst, &[]);
    assert_eq!(replaced.code, 0, "{}\n{}", replaced.stdout, replaced.stderr);
    let planned = &replaced.events_named("job_planned")[0]["summary"];
    assert_eq!(planned["replaced"], 2, "{planned}");
    let contents = azure_contents(&container, "e/").await;
    assert_eq!(
        contents.get("e/x.txt").map(Vec::as_slice),
        Some(&b"NEW"[..])
    );
}
