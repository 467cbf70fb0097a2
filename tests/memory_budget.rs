//! A 1 GiB copy under `--max-memory 256MiB` keeps the process's peak resident memory under
//! 320 MiB: chunk buffers in flight never exceed the budget, and nothing else grows with the
//! object's size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_one_gib_copy_stays_within_the_memory_budget() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("dst");
    let data = random_bytes(1 << 30, 99);
    let expected = md5_hex(&data);
    put(&s3, &bucket, "big/one-gib.bin", &data).await;
    drop(data);

    let state = tempfile::tempdir().expect("state");
    let mut cmd = blobway(&state.path().join("s.redb"));
    cmd.args([
        "copy",
        &format!("s3://{bucket}/big/one-gib.bin"),
        &format!("az://{container}/one-gib.bin"),
        "--max-memory",
        "256MiB",
        "--concurrency",
        "16",
    ]);
    let (result, peak_kib) = run_measuring_rss(&cmd);
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    let peak_mib = peak_kib / 1024;
    println!("peak RSS of a 1 GiB copy with --max-memory 256MiB: {peak_mib} MiB");
    assert!(peak_mib < 320, "peak RSS {peak_mib} MiB is over 320 MiB");
    assert_eq!(azure_md5(&container, "one-gib.bin").await, Some(expected));
}

/// Buffers kept for reuse count against the budget too: sixteen 15 MiB files leave sixteen
/// buffers that fit no 16 MiB chunk of the 1 GiB file after them.
#[test]
fn buffers_kept_for_reuse_count_against_the_budget() {
    let src = tempfile::tempdir().expect("src");
    for i in 0..16 {
        std::fs::write(
            src.path().join(format!("a-{i:02}.bin")),
            random_bytes(15 << 20, i),
        )
        .expect("write");
    }
    {
        use std::io::Write as _;
        let mut big = std::fs::File::create(src.path().join("z-big.bin")).expect("create");
        for i in 0..64 {
            big.write_all(&random_bytes(16 << 20, 100 + i))
                .expect("write");
        }
    }
    let dst = tempfile::tempdir().expect("dst");
    let state = tempfile::tempdir().expect("state");
    let mut cmd = blobway(&state.path().join("s.redb"));
    cmd.args([
        "copy",
        &format!("{}/", src.path().display()),
        &format!("{}/", dst.path().display()),
        "--max-memory",
        "256MiB",
        "--concurrency",
        "16",
    ]);
    let (result, peak_kib) = run_measuring_rss(&cmd);
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    let peak_mib = peak_kib / 1024;
    println!("peak RSS of 16 × 15 MiB then 1 GiB with --max-memory 256MiB: {peak_mib} MiB");
    assert!(peak_mib < 320, "peak RSS {peak_mib} MiB is over 320 MiB");
    let copied = std::fs::metadata(dst.path().join("z-big.bin")).expect("copied");
    assert_eq!(copied.len(), 1 << 30);
}
