//! `--copy-tags` through the real binary: S3 object tags arrive as Azure blob index tags (the
//! bytes through blobway, and store to store through the copy-from-URL double) and as S3 tags
//! (store to store on moto, one-request and multipart copies); a tag the destination cannot
//! hold fails only its object, before any of its bytes are written, and the dry run says so
//! first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use aws_sdk_s3::primitives::ByteStream;
use blobway::store::ObjectSource;
use blobway::store::tags::Tags;
use common::*;

const MIB: usize = 1 << 20;

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Puts `data` under `key` with `tagged` as its S3 tags.
async fn put_tagged(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, data: &[u8], tagged: &Tags) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .set_tagging(blobway::store::tags::encode(tagged))
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .expect("put tagged");
}

async fn s3_tags(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Tags {
    s3.get_object_tagging()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("tags")
        .tag_set()
        .iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect()
}

/// A source of four objects: two tagged as Azure holds, one untagged, one whose tag only S3
/// holds (`@`). Returns the bucket and the objects with their tags.
async fn tagged_source() -> (String, Vec<(&'static str, Vec<u8>, Tags)>) {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let objects = vec![
        (
            "in/small.txt",
            random_bytes(2000, 81),
            tags(&[("project", "blue"), ("cost centre", "a/b:c=d+e_f.g-h")]),
        ),
        (
            "in/blocks.bin",
            random_bytes(3 * MIB + 5, 82),
            tags(&[("tier", "gold")]),
        ),
        ("in/plain.bin", random_bytes(700, 83), Tags::new()),
        (
            "in/at-sign.txt",
            random_bytes(900, 84),
            tags(&[("owner", "ops@example.com")]),
        ),
    ];
    for (key, data, tagged) in &objects {
        put_tagged(&s3, &bucket, key, data, tagged).await;
    }
    (bucket, objects)
}

/// Checks what a copy of [`tagged_source`] to Azure left: every object but the one with `@`,
/// byte-identical and with its tags; that one failed with the reason.
async fn assert_tags_arrived(
    run: &Run,
    container: &str,
    objects: &[(&'static str, Vec<u8>, Tags)],
) {
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let failed = run.events_named("file_failed");
    assert_eq!(failed.len(), 1, "{}", run.stdout);
    assert_eq!(failed[0]["key"], "in/at-sign.txt");
    let why = failed[0]["error"]["message"].as_str().expect("message");
    assert!(why.contains("`@`") && why.contains("--copy-tags"), "{why}");
    let store = azure(container);
    let copied = azure_contents(container, "out/").await;
    assert_eq!(copied.len(), 3, "{:?}", copied.keys());
    for (key, data, tagged) in objects.iter().filter(|(k, _, _)| *k != "in/at-sign.txt") {
        let dest = key.replacen("in/", "out/", 1);
        assert_eq!(
            copied.get(&dest).map(|d| md5_hex(d)),
            Some(md5_hex(data)),
            "{dest}"
        );
        assert_eq!(&store.tags(&dest).await.expect("tags"), tagged, "{dest}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_tags_arrive_as_blob_index_tags_and_a_tag_azure_cannot_hold_fails_its_object_only() {
    let (bucket, objects) = tagged_source().await;
    let container = unique("dst");
    let state = tempfile::tempdir().expect("state");
    let state_file = state.path().join("s.redb");
    let args = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "copy",
            &format!("s3://{bucket}/in/"),
            &format!("az://{container}/out/"),
            "--copy-tags",
            "--transfer",
            "client",
            "--chunk-size",
            "1MiB",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    // The dry run reads every object's tags, counts those requests, and names the object
    // whose tags Azure cannot hold.
    let dry = run(blobway(&state_file).args(args(&["--dry-run"])));
    assert_eq!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout
            .contains("tags: 1 object(s) with tags the destination cannot hold"),
        "{}",
        dry.stdout
    );
    let refused = dry
        .stdout
        .lines()
        .find(|l| l.contains("in/at-sign.txt"))
        .expect("the object is listed");
    assert!(
        refused.contains("cannot copy") && refused.contains("`@`"),
        "{refused}"
    );
    let without = run(blobway(&state_file).args(
        args(&["--dry-run"])
            .into_iter()
            .filter(|a| a != "--copy-tags"),
    ));
    let requests = |text: &str| -> u64 {
        let at = text.find(" requests").expect("requests");
        text[..at]
            .rsplit(' ')
            .next()
            .expect("n")
            .parse()
            .expect("number")
    };
    assert_eq!(
        requests(&dry.stdout),
        requests(&without.stdout) + 4,
        "one tag request per object\n{}\n{}",
        dry.stdout,
        without.stdout
    );

    let copied = run(blobway(&state_file).args(args(&["--json"])));
    assert_tags_arrived(&copied, &container, &objects).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_tags_arrive_on_azure_copied_store_to_store() {
    let (bucket, objects) = tagged_source().await;
    let container = unique("dst");
    let double = block_from_url::BlockFromUrl::start(&azurite_origin()).await;
    let state = tempfile::tempdir().expect("state");
    let mut cmd = blobway(&state.path().join("s.redb"));
    cmd.env(
        "AZURE_STORAGE_CONNECTION_STRING",
        azurite_connection_string_at(&double.url),
    );
    let copied = run(cmd.args([
        "copy",
        &format!("s3://{bucket}/in/"),
        &format!("az://{container}/out/"),
        "--copy-tags",
        "--transfer",
        "server",
        "--chunk-size",
        "1MiB",
        "--json",
    ]));
    assert_tags_arrived(&copied, &container, &objects).await;
    assert!(
        double
            .stats
            .copies
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 5,
        "the bytes went store to store"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_tags_arrive_on_s3_copied_store_to_store_in_one_request_and_in_parts() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let dest = new_bucket(&s3).await;
    let objects = [
        (
            "in/small.txt",
            random_bytes(3000, 91),
            tags(&[("owner", "ops@example.com"), ("é", "ü")]),
        ),
        (
            "in/parts.bin",
            random_bytes(11 * MIB, 92),
            tags(&[("tier", "gold")]),
        ),
        ("in/plain.bin", random_bytes(10, 93), Tags::new()),
    ];
    for (key, data, tagged) in &objects {
        put_tagged(&s3, &bucket, key, data, tagged).await;
    }
    let state = tempfile::tempdir().expect("state");
    let copied = run(blobway(&state.path().join("s.redb")).args([
        "copy",
        &format!("s3://{bucket}/in/"),
        &format!("s3://{dest}/out/"),
        "--copy-tags",
        "--transfer",
        "server",
        "--chunk-size",
        "5MiB",
    ]));
    assert_eq!(copied.code, 0, "{}\n{}", copied.stdout, copied.stderr);
    let contents = s3_contents(&s3, &dest, "out/").await;
    for (key, data, tagged) in &objects {
        let out = key.replacen("in/", "out/", 1);
        assert_eq!(
            contents.get(&out).map(|d| md5_hex(d)),
            Some(md5_hex(data)),
            "{out}"
        );
        assert_eq!(&s3_tags(&s3, &dest, &out).await, tagged, "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_tags_from_or_to_a_store_without_tags_is_refused_before_anything_moves() {
    let files = local_files(&[("a.txt", 10)]);
    let state = tempfile::tempdir().expect("state");
    let container = unique("dst");
    let from_local = run(blobway(&state.path().join("s.redb")).args([
        "copy",
        &format!("{}/", files.path().display()),
        &format!("az://{container}/"),
        "--copy-tags",
    ]));
    assert_eq!(from_local.code, 2, "{}", from_local.stderr);
    assert!(
        from_local
            .stderr
            .contains("--copy-tags: only S3 and Azure sources"),
        "{}",
        from_local.stderr
    );
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    put(&s3, &bucket, "a.txt", b"x").await;
    let out = tempfile::tempdir().expect("out");
    let to_local = run(blobway(&state.path().join("s.redb")).args([
        "copy",
        &format!("s3://{bucket}/"),
        &format!("{}/", out.path().display()),
        "--copy-tags",
    ]));
    assert_eq!(to_local.code, 2, "{}", to_local.stderr);
    assert!(
        to_local
            .stderr
            .contains("only an S3 or Azure destination holds object tags"),
        "{}",
        to_local.stderr
    );
    assert!(azure_contents(&container, "").await.is_empty());
    assert_eq!(std::fs::read_dir(out.path()).expect("out").count(), 0);
}
