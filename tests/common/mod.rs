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
    Emulators {
        s3: test_env("BLOBWAY_TEST_S3"),
        azurite: test_env("BLOBWAY_TEST_AZURITE"),
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
    // In-process engines, as scripts run them; tests/daemon.rs covers the daemon path.
    cmd.env("BLOBWAY_STATE", state)
        .env("BLOBWAY_NO_DAEMON", "1")
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
    Run::from(cmd.output().expect("run blobway"))
}

impl From<std::process::Output> for Run {
    /// A finished blobway (run here, or spawned and waited for).
    fn from(out: std::process::Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Turns versioning on for `bucket`.
pub async fn enable_versioning(s3: &aws_sdk_s3::Client, bucket: &str) {
    s3.put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("versioning");
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

/// A planned, running job of 8-byte chunks from `s3://b/p<id>/` to `az://c/p<id>/`, as a
/// state test records it.
pub fn job_record(id: blobway::state::JobId) -> blobway::state::JobRecord {
    blobway::state::JobRecord {
        id,
        source: format!("s3://b/p{id}/"),
        destination: format!("az://c/p{id}/"),
        options: blobway::state::JobOptions::with_chunk_size(8),
        state: blobway::state::JobState::Running,
        created_ms: 1,
        updated_ms: 1,
        error: None,
        planned: true,
    }
}

pub mod block_from_url;
pub mod crash;
pub mod postgres;
pub mod proxy;
pub mod tmux;

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

/// An environment variable `scripts/test.sh` exports; fails with the fix when it is missing.
pub fn test_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through scripts/test.sh, which installs and starts the emulators")
    })
}

/// s3s-fs's credentials (it checks SigV4 signatures, unlike moto).
pub const S3S_ACCESS_KEY: &str = "blobway-test";
/// s3s-fs's secret key.
pub const S3S_SECRET_KEY: &str = "blobway-test-secret";

/// An S3 client for s3s-fs, the second S3 endpoint.
pub fn s3s_client() -> aws_sdk_s3::Client {
    let credentials =
        aws_sdk_s3::config::Credentials::new(S3S_ACCESS_KEY, S3S_SECRET_KEY, None, None, "tests");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(test_env("BLOBWAY_TEST_S3S"))
        .force_path_style(true)
        .credentials_provider(credentials)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// An AWS config and credentials file pair with one profile, as `~/.aws/config` and
/// `~/.aws/credentials` would hold it; point AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE
/// at them.
pub struct AwsProfile {
    dir: tempfile::TempDir,
}

impl AwsProfile {
    /// Writes profile `name` with these keys, in us-east-1.
    pub fn new(name: &str, access_key: &str, secret_key: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = Self { dir };
        std::fs::write(
            profile.config_file(),
            format!("[profile {name}]\nregion = us-east-1\n"),
        )
        .expect("config");
        profile.set_keys(name, access_key, secret_key);
        profile
    }

    /// Rewrites the credentials of profile `name` (an operator fixing a wrong key).
    pub fn set_keys(&self, name: &str, access_key: &str, secret_key: &str) {
        std::fs::write(
            self.credentials_file(),
            format!(
                "[{name}]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"
            ),
        )
        .expect("credentials");
    }

    /// The config file.
    pub fn config_file(&self) -> std::path::PathBuf {
        self.dir.path().join("config")
    }

    /// The credentials file.
    pub fn credentials_file(&self) -> std::path::PathBuf {
        self.dir.path().join("credentials")
    }

    /// Points `cmd` at these files.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("AWS_CONFIG_FILE", self.config_file())
            .env("AWS_SHARED_CREDENTIALS_FILE", self.credentials_file());
    }

    /// The real binary (see [`blobway`]) with these files.
    pub fn blobway(&self, state: &Path) -> Command {
        let mut cmd = blobway(state);
        self.apply(&mut cmd);
        cmd
    }
}

/// The jobs `blobway jobs --json` lists, run as `cmd` (which names the state file).
pub fn recorded_jobs(mut cmd: Command) -> Vec<serde_json::Value> {
    run(cmd.args(["jobs", "--json"]))
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|line| line["job"].clone())
        .collect()
}

/// Every object under `prefix` in an S3 bucket with its bytes (empty when the bucket does not
/// exist yet).
pub async fn s3_contents(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let Ok(page) = page else {
            return out; // no bucket yet: nothing visible
        };
        for object in page.contents() {
            let key = object.key().expect("key").to_string();
            let body = client
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .expect("get")
                .body
                .collect()
                .await
                .expect("body")
                .into_bytes();
            out.insert(key, body.to_vec());
        }
    }
    out
}

/// The GCS emulator's endpoint.
pub fn gcs_endpoint() -> String {
    test_env("BLOBWAY_TEST_GCS")
}

/// Percent-encodes a GCS object name for a URL path segment.
pub fn gcs_encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The JSON resources of every object under `prefix` in a GCS bucket (empty when the bucket
/// does not exist yet).
pub async fn gcs_objects(bucket: &str, prefix: &str) -> Vec<serde_json::Value> {
    let url = format!(
        "{}/storage/v1/b/{bucket}/o?prefix={}",
        gcs_endpoint(),
        gcs_encode(prefix)
    );
    let response = reqwest::get(&url).await.expect("list GCS");
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Vec::new();
    }
    let listing: serde_json::Value = response.json().await.expect("listing JSON");
    listing["items"].as_array().cloned().unwrap_or_default()
}

/// Every object under `prefix` in a GCS bucket with its bytes.
pub async fn gcs_contents(bucket: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for object in gcs_objects(bucket, prefix).await {
        let name = object["name"].as_str().expect("name").to_string();
        let url = format!(
            "{}/download/storage/v1/b/{bucket}/o/{}?alt=media",
            gcs_endpoint(),
            gcs_encode(&name)
        );
        let response = reqwest::get(&url).await.expect("download");
        assert!(
            response.status().is_success(),
            "GET {name}: {}",
            response.status()
        );
        out.insert(name, response.bytes().await.expect("body").to_vec());
    }
    out
}

/// Fails unless `got` holds exactly `expected` (compared by MD5, so a failure stays short).
pub fn assert_same_objects(
    place: &str,
    got: &BTreeMap<String, Vec<u8>>,
    expected: &BTreeMap<String, Vec<u8>>,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the objects in {place}"
    );
    for (key, data) in expected {
        assert_eq!(md5_hex(&got[key]), md5_hex(data), "{place}: {key}");
    }
}

/// Fails unless every object in `visible` is byte-identical to its source in `expected` (an
/// interrupted copy may show fewer objects, never a partial or different one).
pub fn assert_visible_are_complete(
    place: &str,
    visible: &BTreeMap<String, Vec<u8>>,
    expected: &BTreeMap<String, Vec<u8>>,
) {
    for (key, data) in visible {
        let source = expected
            .get(key)
            .unwrap_or_else(|| panic!("{place}: unexpected object {key}"));
        assert_eq!(
            md5_hex(data),
            md5_hex(source),
            "{place}: {key} is visible but not identical"
        );
    }
}

/// Every committed file under a local directory with its bytes and metadata, read through
/// blobway's local store (which leaves out its staging area).
pub async fn local_objects(dir: &Path) -> BTreeMap<String, (Vec<u8>, blobway::store::ObjectMeta)> {
    let store = blobway::store::local::LocalStore::new(dir);
    let mut out = BTreeMap::new();
    let Ok(listing) = store.list("", false).await else {
        return out;
    };
    for info in listing {
        let chunk = store
            .read_range(&info.key, &info.etag, 0..info.size, bytes::BytesMut::new())
            .await
            .expect("read back");
        out.insert(info.key.clone(), (chunk.data.to_vec(), chunk.meta));
    }
    out
}

/// Every committed file under a local directory with its bytes.
pub async fn local_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    local_objects(dir)
        .await
        .into_iter()
        .map(|(key, (data, _))| (key, data))
        .collect()
}

/// One Azure blob's metadata, read through blobway's Azure adapter.
pub async fn azure_meta(container: &str, key: &str) -> blobway::store::ObjectMeta {
    let store = azure(container);
    let info = store.list(key, true).await.expect("stat")[0].clone();
    store
        .read_range(key, &info.etag, 0..info.size.min(1), bytes::BytesMut::new())
        .await
        .expect("read")
        .meta
}

/// Whether s3s-fs still holds the multipart upload `upload_id` (neither completed nor
/// aborted): s3s-fs keeps one `.upload-<id>.json` per live upload in its data folder.
pub fn s3s_upload_alive(upload_id: &str) -> bool {
    Path::new(&test_env("BLOBWAY_TEST_S3S_DATA"))
        .join(format!(".upload-{upload_id}.json"))
        .exists()
}

/// The upload sessions recorded in a state file (no blobway may hold it open).
pub fn recorded_sessions(state: &Path) -> Vec<String> {
    let db = blobway::state::StateDb::open(state).expect("state file");
    let mut out = Vec::new();
    for job in db.jobs().expect("jobs") {
        let snapshot = db.load_job(job.id).expect("load").expect("job");
        out.extend(snapshot.files.into_iter().filter_map(|(_, f, _)| f.session));
    }
    out
}
