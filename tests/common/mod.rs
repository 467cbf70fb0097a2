//! Shared helpers of the end-to-end tests: the emulators started by `scripts/test.sh`
//! (Azurite for Azure, moto for S3), clients for seeding and checking them, and a way to run
//! the real `blobway` binary against them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use blobway::store::azure::{AZURITE_ACCOUNT, AZURITE_KEY, AzureAccount, AzureStore};
use blobway::store::{ObjectSink, ObjectSource};
use md5::{Digest, Md5};

/// The emulators' coordinates.
pub struct Emulators {
    /// moto's endpoint.
    pub s3: String,
    /// Azurite's blob endpoint, account path included.
    pub azurite: String,
}

/// Reads the coordinates `scripts/test.sh` exports; fails with the fix when they are missing.
pub fn emulators() -> Emulators {
    let get = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the end-to-end tests through scripts/test.sh, which installs and starts the emulators")
        })
    };
    Emulators {
        s3: get("BLOBWAY_TEST_S3"),
        azurite: get("BLOBWAY_TEST_AZURITE"),
    }
}

/// A name no other test uses (buckets and containers are shared by the emulators).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Azurite's connection string.
pub fn azurite_connection_string() -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={}",
        emulators().azurite
    )
}

/// An S3 client for moto.
pub fn s3_client() -> aws_sdk_s3::Client {
    let credentials = aws_sdk_s3::config::Credentials::new("test", "test", None, None, "tests");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(emulators().s3)
        .force_path_style(true)
        .credentials_provider(credentials)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Creates a bucket and returns its name.
pub async fn new_bucket(s3: &aws_sdk_s3::Client) -> String {
    let bucket = unique("src");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    bucket
}

/// Puts an object (multipart above 64 MiB, so large test objects stay cheap for moto).
pub async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, data: &[u8]) {
    const PART: usize = 64 << 20;
    if data.len() <= PART {
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(data.to_vec()))
            .send()
            .await
            .expect("put object");
        return;
    }
    let upload = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("create multipart");
    let id = upload.upload_id().expect("upload id");
    let mut parts = Vec::new();
    for (i, part) in data.chunks(PART).enumerate() {
        let number = i as i32 + 1;
        let out = s3
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .part_number(number)
            .body(ByteStream::from(part.to_vec()))
            .send()
            .await
            .expect("upload part");
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .e_tag(out.e_tag().unwrap_or_default())
                .build(),
        );
    }
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete multipart");
}

/// Azurite's container, through blobway's own Azure adapter (reads are a different code path
/// from the writes under test).
pub fn azure(container: &str) -> Arc<AzureStore> {
    let account =
        AzureAccount::from_connection_string(&azurite_connection_string()).expect("account");
    Arc::new(AzureStore::with_account(account, container, Default::default()).expect("store"))
}

/// Every committed blob under `prefix` with its bytes.
pub async fn azure_contents(container: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let store = azure(container);
    let existing = store.list_existing(prefix).await.expect("list destination");
    let mut out = BTreeMap::new();
    for key in existing.keys() {
        let info = store.list(key, true).await.expect("stat")[0].clone();
        let data = store
            .read_range(key, &info.etag, 0..info.size, bytes::BytesMut::new())
            .await
            .expect("read back");
        out.insert(key.clone(), data.data.to_vec());
    }
    out
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Hex MD5.
pub fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The real binary, with credentials for the emulators and its own state file.
pub fn blobway(state: &Path) -> Command {
    let e = emulators();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blobway"));
    cmd.env("BLOBWAY_STATE", state)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &e.s3)
        .env_remove("AWS_PROFILE")
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            azurite_connection_string(),
        )
        .stdin(Stdio::null());
    cmd
}

/// Output of a finished run.
pub struct Run {
    /// Exit status code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// The JSON lines on stdout.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The events of one kind.
    pub fn events_named(&self, name: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }
}

/// Runs the binary to completion.
pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run blobway");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// MD5 of a blob, read back in 64 MiB ranges so a large blob never sits in memory whole.
pub async fn azure_md5(container: &str, key: &str) -> Option<String> {
    let store = azure(container);
    let info = store.list(key, true).await.ok()?.pop()?;
    let mut hasher = Md5::new();
    let mut offset = 0;
    while offset < info.size {
        let end = (offset + (64 << 20)).min(info.size);
        let data = store
            .read_range(key, &info.etag, offset..end, bytes::BytesMut::new())
            .await
            .expect("read back");
        hasher.update(&data.data);
        offset = end;
    }
    Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Peak resident set size in KiB of a command run under `/usr/bin/time -v`, with its output.
pub fn run_measuring_rss(cmd: &Command) -> (Run, u64) {
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-v").arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => timed.env(key, value),
            None => timed.env_remove(key),
        };
    }
    let result = run(&mut timed);
    let peak = result
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS figure in: {}", result.stderr));
    (result, peak)
}

pub mod proxy;

/// Azurite's connection string with its blob endpoint at `endpoint` (e.g. a proxy's URL).
pub fn azurite_connection_string_at(endpoint: &str) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={}/{AZURITE_ACCOUNT}",
        endpoint.trim_end_matches('/')
    )
}

/// Azurite's origin (scheme, host and port), for a proxy to forward to.
pub fn azurite_origin() -> String {
    let url = emulators().azurite;
    url.trim_end_matches(&format!("/{AZURITE_ACCOUNT}"))
        .to_string()
}

/// Writes `files` of pseudo-random bytes under a new temporary directory.
pub fn local_files(files: &[(&str, usize)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (name, size)) in files.iter().enumerate() {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, random_bytes(*size, 1000 + i as u64)).expect("write");
    }
    dir
}

/// Fails when any of `secrets` appears in any of `places` (name, bytes).
pub fn assert_no_secrets(places: &[(&str, &[u8])], secrets: &[&str]) {
    for (place, bytes) in places {
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret ({}…) appears in {place}",
                &secret[..4.min(secret.len())]
            );
        }
    }
}

/// Runs a command on a blocking thread, so proxies in this process keep serving meanwhile.
pub async fn run_async(mut cmd: Command) -> Run {
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .expect("run")
}
