//! `blobway report`: a job whose multi-chunk objects fail (a proxy answers every Azure Put
//! Block with 500) is reported object by object, as CSV and as JSON, from the state file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::proxy::{Fault, FaultConfig, Flavor, Proxy};
use common::*;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_names_every_failed_object_with_its_class_status_and_attempts() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let container = unique("rep");
    let small = ["a.txt", "b.txt", "empty"];
    for (i, key) in small.iter().enumerate() {
        put(
            &s3,
            &bucket,
            &format!("r/{key}"),
            &random_bytes(i * 100, i as u64),
        )
        .await;
    }
    let big = ["big, one.bin", "ünï/big \"two\".bin"];
    for (i, key) in big.iter().enumerate() {
        put(
            &s3,
            &bucket,
            &format!("r/{key}"),
            &random_bytes(3 * MIB, 9 + i as u64),
        )
        .await;
    }
    // Every staged block is refused with a 500; whole-object puts go through.
    let proxy = Proxy::start(
        &azurite_origin(),
        FaultConfig {
            rate: 1.0,
            mix: vec![(Fault::ServerError, 1)],
            only: Some("comp=block".into()),
            read_body_first: true,
            ..FaultConfig::none(Flavor::Azure)
        },
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let state = state.path().join("s.redb");
    let mut cmd = blobway(&state);
    cmd.env(
        "AZURE_STORAGE_CONNECTION_STRING",
        azurite_connection_string_at(&proxy.url),
    )
    .args([
        "copy",
        &format!("s3://{bucket}/r/"),
        &format!("az://{container}/r/"),
        "--chunk-size",
        "1MiB",
        "--max-attempts",
        "2",
        // The faults are dealt to blobway's own Put Block: the bytes go through it.
        "--transfer",
        "client",
        "--json",
    ]);
    let copy = run_async(cmd).await;
    assert_eq!(copy.code, 1, "{}\n{}", copy.stdout, copy.stderr);

    let csv_run = run(blobway(&state).args(["report", "1", "--format", "csv"]));
    assert_eq!(csv_run.code, 0, "{}", csv_run.stderr);
    let mut reader = csv::Reader::from_reader(csv_run.stdout.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let mut keys: Vec<&str> = rows.iter().map(|r| &r[column("key")]).collect();
    keys.sort();
    assert_eq!(keys, big.map(|k| format!("r/{k}")));
    for row in &rows {
        assert_eq!(&row[column("state")], "FAILED");
        assert_eq!(&row[column("error_class")], "TRANSIENT");
        assert_eq!(&row[column("http_status")], "500");
        assert_eq!(&row[column("chunks")], "3");
        assert!(row[column("attempts")].parse::<u64>().unwrap() >= 2);
        assert!(row[column("last_attempt_ms")].parse::<i64>().unwrap() > 0);
        assert!(!row[column("message")].is_empty());
    }

    let json_run = run(blobway(&state).args(["report", "1", "--format", "json"]));
    assert_eq!(json_run.code, 0, "{}", json_run.stderr);
    let report: serde_json::Value = serde_json::from_str(&json_run.stdout).unwrap();
    assert_eq!(report["state"], "FAILED");
    assert_eq!(report["totals"]["files_total"], 5);
    assert_eq!(report["totals"]["files_done"], 3);
    assert_eq!(report["totals"]["files_failed"], 2);
    assert_eq!(report["objects"].as_array().unwrap().len(), 2);

    let unknown = run(blobway(&state).args(["report", "42"]));
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("there is no job 42"),
        "{}",
        unknown.stderr
    );
}
