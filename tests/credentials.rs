//! Credentials by the ecosystem's conventions, against Azurite and moto: an account with a key
//! (blobway signs its own SAS), an account with a SAS token, and the clear failures of a wrong
//! key and a missing bucket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use blobway::store::azure::{AZURITE_ACCOUNT, AZURITE_KEY};
use blobway::store::azure_sas::AccountSas;
use common::*;

fn local_source(files: &[(&str, usize)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("source");
    for (i, (name, size)) in files.iter().enumerate() {
        std::fs::write(dir.path().join(name), random_bytes(*size, i as u64)).expect("write");
    }
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_key_or_a_sas_token_from_the_environment_both_work() {
    let source = local_source(&[("a.bin", 3 << 20), ("b.txt", 10)]);
    let sas = AccountSas::new(AZURITE_ACCOUNT.into(), AZURITE_KEY, false)
        .expect("signer")
        .token();
    let sig = sas.rsplit("sig=").next().expect("sig").to_string();
    for (name, secret_var, secret) in [
        ("key", "AZURE_STORAGE_KEY", AZURITE_KEY.to_string()),
        ("sas", "AZURE_STORAGE_SAS_TOKEN", sas.clone()),
    ] {
        let container = unique(name);
        let state = tempfile::tempdir().expect("state");
        let result = run(blobway(&state.path().join("s.redb"))
            .env_remove("AZURE_STORAGE_CONNECTION_STRING")
            .env("AZURE_STORAGE_ACCOUNT", AZURITE_ACCOUNT)
            .env("AZURE_STORAGE_BLOB_ENDPOINT", emulators().azurite)
            .env(secret_var, &secret)
            .args([
                "copy",
                &format!("{}/", source.path().display()),
                &format!("az://{container}/in/"),
                "--chunk-size",
                "1MiB",
                "--json",
            ]));
        assert_eq!(
            result.code, 0,
            "{name}: {}\n{}",
            result.stdout, result.stderr
        );
        let copied = azure_contents(&container, "in/").await;
        assert_eq!(copied.len(), 2, "{name}");
        assert_eq!(
            md5_hex(&copied["in/a.bin"]),
            md5_hex(&std::fs::read(source.path().join("a.bin")).expect("read"))
        );
        // The secret never reaches the output, the log or the state file.
        let log = std::fs::read(state.path().join("blobway.log")).unwrap_or_default();
        let db = std::fs::read(state.path().join("s.redb")).expect("state file");
        for haystack in [
            result.stdout.as_bytes(),
            result.stderr.as_bytes(),
            &log,
            &db,
        ] {
            for needle in [secret.as_str(), sig.as_str()] {
                assert!(
                    !haystack
                        .windows(needle.len())
                        .any(|w| w == needle.as_bytes()),
                    "{name}: a secret leaked"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_account_key_is_reported_with_the_fix() {
    let source = local_source(&[("a.bin", 1000)]);
    let state = tempfile::tempdir().expect("state");
    let wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let result = run(blobway(&state.path().join("s.redb"))
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            format!(
                "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={wrong_key};BlobEndpoint={}",
                emulators().azurite
            ),
        )
        .args([
            "copy",
            &format!("{}/", source.path().display()),
            &format!("az://{}/x/", unique("bad")),
        ]));
    assert_eq!(result.code, 2, "{}\n{}", result.stdout, result.stderr);
    let all = format!("{}{}", result.stdout, result.stderr);
    assert!(all.contains("credentials were rejected"), "{all}");
    assert!(!all.contains(wrong_key), "the key is not echoed: {all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_is_reported_with_the_fix_and_nothing_is_copied() {
    let container = unique("dst");
    let state = tempfile::tempdir().expect("state");
    let result = run(blobway(&state.path().join("s.redb")).args([
        "copy",
        "s3://no-such-bucket-blobway/x/",
        &format!("az://{container}/x/"),
    ]));
    assert_eq!(result.code, 2, "{}\n{}", result.stdout, result.stderr);
    let all = format!("{}{}", result.stdout, result.stderr);
    assert!(all.contains("bucket does not exist"), "{all}");
    assert!(azure_contents(&container, "").await.is_empty());
}
