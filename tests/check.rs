//! `blobway check` as an operator uses it after a copy: identical trees pass; a missing, an
//! extra, a resized and a same-size-corrupted object are each named (the last only with
//! `--download`); against a local folder, Azurite and moto (S3 listings carry no metadata, so
//! the recorded source version is read per object).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use blobway::store::{Checksum, ChecksumKind, ObjectMeta, ObjectSink, Upload};
use common::*;

fn check(state: &Path, args: &[&str]) -> Run {
    run(blobway(state).arg("check").args(args))
}

/// The line `check` printed for `path`.
fn line<'a>(run: &'a Run, path: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| {
            l.get(2..)
                .is_some_and(|rest| rest.split("  ").next() == Some(path))
        })
        .unwrap_or_else(|| panic!("no line for {path}:\n{}", run.stdout))
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_trees_pass_and_each_difference_is_named() {
    let source = local_files(&[
        ("a.bin", 300_000),
        ("b/c.bin", 2000),
        ("d.bin", 3000),
        ("e.bin", 4000),
        ("f g/ünï code.txt", 10),
        ("empty.txt", 0),
    ]);
    let work = tempfile::tempdir().unwrap();
    let (state, dst) = (work.path().join("s.redb"), work.path().join("dst"));
    let (src_arg, dst_arg) = (
        format!("{}/", source.path().display()),
        format!("{}/", dst.display()),
    );
    let copied = run(blobway(&state).args(["copy", &src_arg, &dst_arg, "--json"]));
    assert_eq!(copied.code, 0, "{}", copied.stderr);

    let same = check(&state, &[&src_arg, &dst_arg]);
    assert_eq!(same.code, 0, "{}\n{}", same.stdout, same.stderr);
    for path in [
        "a.bin",
        "b/c.bin",
        "d.bin",
        "e.bin",
        "f g/ünï code.txt",
        "empty.txt",
    ] {
        let l = line(&same, path);
        assert!(l.starts_with("= ") && l.contains("(size+version)"), "{l}");
    }
    assert!(same.stderr.contains("6 identical"), "{}", same.stderr);
    let json = check(&state, &[&src_arg, &dst_arg, "--json", "--download"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let lines = json.events();
    assert_eq!(lines.len(), 7, "{}", json.stdout);
    assert!(
        lines[..6]
            .iter()
            .all(|l| l["result"] == "identical" && l["verified"] == "bytes")
    );
    assert_eq!(lines[6]["summary"]["identical_bytes"], 6);
    assert_eq!(lines[6]["all_match"], true);

    // The destination drifts: one gone, one added, one cut short, one corrupted in place.
    std::fs::remove_file(dst.join("d.bin")).unwrap();
    std::fs::write(dst.join("extra.txt"), b"not from the source").unwrap();
    let c = dst.join("b/c.bin");
    let bytes = std::fs::read(&c).unwrap();
    std::fs::write(&c, &bytes[..1999]).unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut a = std::fs::OpenOptions::new()
            .write(true)
            .open(dst.join("a.bin"))
            .unwrap();
        a.seek(SeekFrom::Start(200_000)).unwrap();
        let original = std::fs::read(source.path().join("a.bin")).unwrap()[200_000];
        a.write_all(&[original ^ 0xff]).unwrap();
    }

    let drifted = check(&state, &[&src_arg, &dst_arg]);
    assert_eq!(drifted.code, 1, "{}\n{}", drifted.stdout, drifted.stderr);
    assert!(line(&drifted, "d.bin").starts_with("- "));
    assert!(line(&drifted, "extra.txt").starts_with("+ "));
    let resized = line(&drifted, "b/c.bin");
    assert!(
        resized.starts_with("* ") && resized.contains("2000 bytes at the source, 1999"),
        "{resized}"
    );
    assert!(
        line(&drifted, "a.bin").starts_with("= "),
        "the listings cannot see a same-size corruption"
    );
    assert!(
        drifted.stderr.contains("1 missing")
            && drifted.stderr.contains("1 extra")
            && drifted.stderr.contains("1 differ"),
        "{}",
        drifted.stderr
    );

    let read = check(&state, &[&src_arg, &dst_arg, "--download"]);
    assert_eq!(read.code, 1);
    let corrupted = line(&read, "a.bin");
    assert!(
        corrupted.starts_with("* ") && corrupted.contains("offset 200000"),
        "{corrupted}"
    );
    assert!(line(&read, "e.bin").contains("(bytes)"));
    assert!(read.stderr.contains("2 differ"), "{}", read.stderr);

    // Filters apply to both sides: the drifted names left out, the rest match.
    let filtered = check(
        &state,
        &[
            &src_arg,
            &dst_arg,
            "--download",
            "--include",
            "e.bin",
            "--include",
            "*.txt",
            "--exclude",
            "extra.txt",
        ],
    );
    assert_eq!(filtered.code, 0, "{}\n{}", filtered.stdout, filtered.stderr);
    assert!(
        filtered.stderr.contains("3 identical"),
        "{}",
        filtered.stderr
    );

    // Bad input: exit 2 with the reason.
    let nowhere = check(&state, &[&src_arg, "s3:/broken"]);
    assert_eq!(nowhere.code, 2, "{}", nowhere.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_azure_and_local_to_s3_are_checked_by_version_and_by_bytes() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("chk");
    let objects = [
        ("in/zero.dat", 0usize),
        ("in/ünïcode ✓.dat", 700),
        ("in/deep/x.dat", 70_000),
    ];
    for (i, (key, size)) in objects.iter().enumerate() {
        put(&s3, &bucket, key, &random_bytes(*size, 500 + i as u64)).await;
    }
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("s.redb");
    let (src_arg, dst_arg) = (
        format!("s3://{bucket}/in/"),
        format!("az://{container}/out/"),
    );
    let copied = run(blobway(&state).args(["copy", &src_arg, &dst_arg]));
    assert_eq!(copied.code, 0, "{}", copied.stderr);
    let same = check(&state, &[&src_arg, &dst_arg, "--download"]);
    assert_eq!(same.code, 0, "{}\n{}", same.stdout, same.stderr);
    assert!(line(&same, "ünïcode ✓.dat").contains("(bytes)"));

    // Another tool rewrites one blob at the same size: no recorded version, so the listings
    // can vouch for its size only; the bytes tell.
    let key = "out/deep/x.dat";
    let other = random_bytes(70_000, 9);
    azure(&container)
        .put_whole(
            Upload {
                key,
                ..Default::default()
            },
            other.clone().into(),
            Checksum::of(ChecksumKind::Md5, &other),
            &ObjectMeta::default(),
        )
        .await
        .unwrap();
    let by_listing = check(&state, &[&src_arg, &dst_arg]);
    assert_eq!(by_listing.code, 0, "{}", by_listing.stdout);
    assert!(line(&by_listing, "deep/x.dat").contains("(size)"));
    assert!(line(&by_listing, "zero.dat").contains("(size+version)"));
    let by_bytes = check(&state, &[&src_arg, &dst_arg, "--download"]);
    assert_eq!(by_bytes.code, 1);
    assert!(
        line(&by_bytes, "deep/x.dat").starts_with("* "),
        "{}",
        by_bytes.stdout
    );

    // An S3 destination: its listing has no metadata; the version is read per object.
    let source = local_files(&[("one.bin", 5000), ("two/three.bin", 0)]);
    let s3_dst = format!("s3://{bucket}/mirror/");
    let local_src = format!("{}/", source.path().display());
    let copied = run(blobway(&state).args(["copy", &local_src, &s3_dst]));
    assert_eq!(copied.code, 0, "{}", copied.stderr);
    let mirrored = check(&state, &[&local_src, &s3_dst]);
    assert_eq!(mirrored.code, 0, "{}\n{}", mirrored.stdout, mirrored.stderr);
    assert!(
        line(&mirrored, "one.bin").contains("(size+version)"),
        "{}",
        mirrored.stdout
    );
    s3.delete_object()
        .bucket(&bucket)
        .key("mirror/one.bin")
        .send()
        .await
        .unwrap();
    let gone = check(&state, &[&local_src, &s3_dst, "--download"]);
    assert_eq!(gone.code, 1);
    assert!(line(&gone, "one.bin").starts_with("- "));
    assert!(line(&gone, "two/three.bin").contains("(bytes)"));

    // A bucket that is not there: exit 2, named.
    let missing = check(&state, &["s3://blobway-no-such-bucket/x/", &dst_arg]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("blobway-no-such-bucket"),
        "{}",
        missing.stderr
    );
}
