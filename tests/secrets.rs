//! Secrets never reach the state file, the log, the JSON output or error texts: a run with
//! known AWS and Azure secrets, through faulty proxies so that errors and retries are logged,
//! with debug logging on, is searched for every one of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use blobway::store::azure::{AZURITE_ACCOUNT, AZURITE_KEY};
use blobway::store::azure_sas::AccountSas;
use common::proxy::{FaultConfig, Flavor, Proxy};
use common::*;

const AWS_SECRET: &str = "blobway-test-aws-secret-0123456789abcdef";
const AWS_TOKEN: &str = "blobway-test-session-token-FwoGZXIvYXdzEJr";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_reaches_the_state_file_the_log_or_the_output() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    for i in 0..8u64 {
        put(
            &s3,
            &bucket,
            &format!("secret/obj-{i}.bin"),
            &random_bytes(3 << 20, 70 + i),
        )
        .await;
    }
    let s3_proxy = Proxy::start(&emulators().s3, FaultConfig::mixed(Flavor::S3, 0.2, 31)).await;
    let az_proxy = Proxy::start(
        &azurite_origin(),
        FaultConfig::mixed(Flavor::Azure, 0.2, 32),
    )
    .await;
    let sas = AccountSas::new(AZURITE_ACCOUNT.into(), AZURITE_KEY, false)
        .expect("signer")
        .token();
    let sig = percent_encoding::percent_decode_str(sas.rsplit("sig=").next().expect("sig"))
        .decode_utf8()
        .expect("utf8")
        .into_owned();
    let sig_encoded = sas.rsplit("sig=").next().expect("sig").to_string();

    for (name, azure_env) in [
        (
            "account key",
            vec![("AZURE_STORAGE_KEY", AZURITE_KEY.to_string())],
        ),
        ("SAS token", vec![("AZURE_STORAGE_SAS_TOKEN", sas.clone())]),
    ] {
        let state = tempfile::tempdir().expect("state");
        let mut cmd = blobway(&state.path().join("s.redb"));
        cmd.env("AWS_ENDPOINT_URL", &s3_proxy.url)
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
            .env("AWS_SESSION_TOKEN", AWS_TOKEN)
            .env_remove("AZURE_STORAGE_CONNECTION_STRING")
            .env("AZURE_STORAGE_ACCOUNT", AZURITE_ACCOUNT)
            .env(
                "AZURE_STORAGE_BLOB_ENDPOINT",
                format!("{}/{AZURITE_ACCOUNT}", az_proxy.url),
            )
            .env("BLOBWAY_LOG", "debug")
            .args([
                "copy",
                &format!("s3://{bucket}/secret/"),
                &format!("az://{}/secret/", unique("sec")),
                "--chunk-size",
                "1MiB",
                "--stall-timeout",
                "2",
                "--json",
            ]);
        for (key, value) in &azure_env {
            cmd.env(key, value);
        }
        let result = run_async(cmd).await;
        assert_eq!(
            result.code, 0,
            "{name}: {}\n{}",
            result.stdout, result.stderr
        );
        assert!(
            !result.events_named("chunk_retry").is_empty(),
            "{name}: errors were reported"
        );
        let log = std::fs::read(state.path().join("blobway.log")).expect("log");
        assert!(log.len() > 1000, "{name}: debug logging wrote something");
        let db = std::fs::read(state.path().join("s.redb")).expect("state");
        assert_no_secrets(
            &[
                ("stdout", result.stdout.as_bytes()),
                ("stderr", result.stderr.as_bytes()),
                ("log", &log),
                ("state file", &db),
            ],
            &[AWS_SECRET, AWS_TOKEN, AZURITE_KEY, &sig, &sig_encoded],
        );
        // Signatures blobway made itself are unknown here: any `sig=` must be masked.
        for (place, text) in [
            ("stdout", result.stdout.clone()),
            ("log", String::from_utf8_lossy(&log).into_owned()),
        ] {
            for (i, _) in text.match_indices("sig=") {
                assert!(
                    text[i + 4..].starts_with("REDACTED"),
                    "{name}: an unmasked signature in {place}"
                );
            }
        }
    }
}
