//! Bad input gets a clear message that names the fix, a non-zero exit status, and loses
//! nothing. One test per row of the README's table; each runs the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use blobway::store::ObjectSink;
use common::*;

const MIB: usize = 1 << 20;

/// Runs `args` with a fresh state file; returns the run and the state directory.
fn copy(args: &[&str], env: &[(&str, &str)]) -> (Run, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("state");
    let mut cmd = blobway(&state.path().join("s.redb"));
    for (key, value) in env {
        cmd.env(key, value);
    }
    (run(cmd.args(args)), state)
}

fn assert_fails(run: &Run, code: i32, message: &str) {
    let all = format!("{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.code, code, "{all}");
    assert!(all.contains(message), "expected `{message}` in:\n{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_bucket() {
    let (result, _) = copy(
        &[
            "copy",
            "s3://no-such-bucket-blobway/x/",
            "/tmp/blobway-never/",
        ],
        &[],
    );
    assert_fails(
        &result,
        2,
        "the bucket does not exist; check the name and AWS_REGION",
    );
    let all = format!("{}\n{}", result.stdout, result.stderr);
    assert_eq!(
        result.stderr.matches("the bucket does not exist").count(),
        1,
        "said once as it came (the summary on a piped stdout lists it for scripts; on a \
         terminal it is not said twice, tests/tui_tmux.rs):\n{all}"
    );
    // What to do leads; the store's own words follow.
    let hint = all.find("the bucket does not exist").unwrap_or_default();
    let code = all.find("NoSuchBucket").unwrap_or_default();
    assert!(hint < code, "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_aws_credentials_lead_with_the_hint() {
    let state = tempfile::tempdir().expect("state");
    let home = tempfile::tempdir().expect("home");
    let mut cmd = blobway(&state.path().join("s.redb"));
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_CONFIG_FILE")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_ROLE_ARN")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let result = run(cmd.args(["copy", "s3://any-bucket/x/", "/tmp/blobway-never/"]));
    let hint = "no usable AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY";
    assert_fails(&result, 2, hint);
    // The hint comes before the SDK's account of the provider chain (a thousand characters).
    let line = result
        .stdout
        .lines()
        .find(|l| l.contains(hint))
        .unwrap_or_default();
    let at = line.find(hint).unwrap_or(usize::MAX);
    assert!(at < 200, "the hint is {at} characters in: {line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_key() {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    put(&s3, &bucket, "dir/present.bin", b"data").await;
    let (result, _) = copy(
        &["copy", &format!("s3://{bucket}/dir"), "/tmp/blobway-never/"],
        &[],
    );
    assert_fails(&result, 2, "no such object; check the key");
    assert_fails(&result, 2, "end the location with `/`");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_aws_credentials() {
    let endpoint = std::env::var("BLOBWAY_TEST_S3S").expect("s3s-fs runs under scripts/test.sh");
    let data = std::env::var("BLOBWAY_TEST_S3S_DATA").expect("s3s-fs data");
    std::fs::create_dir_all(Path::new(&data).join("signed")).expect("bucket");
    std::fs::write(
        Path::new(&data).join("signed/file.bin"),
        random_bytes(3000, 1),
    )
    .expect("object");
    let target = tempfile::tempdir().expect("target");
    let dest = format!("{}/", target.path().display());
    let env = |secret: &'static str| {
        [
            ("AWS_ENDPOINT_URL", endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "blobway-test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ]
    };
    let wrong = env("not-the-secret");
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (result, _) = copy(&["copy", "s3://signed/", &dest], &wrong);
    assert_fails(&result, 2, "the AWS credentials were rejected");
    assert!(!format!("{}{}", result.stdout, result.stderr).contains("not-the-secret"));

    // The same copy with the right secret works: the server really checks signatures.
    let right = env("blobway-test-secret");
    let right: Vec<(&str, &str)> = right.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (result, _) = copy(&["copy", "s3://signed/", &dest], &right);
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    assert_eq!(
        std::fs::read(target.path().join("file.bin")).expect("copied"),
        random_bytes(3000, 1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_azure_key() {
    let source = local_files(&[("a.bin", 1000)]);
    let wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let cs = azurite_connection_string().replace(blobway::store::azure::AZURITE_KEY, wrong_key);
    let (result, _) = copy(
        &[
            "copy",
            &format!("{}/", source.path().display()),
            &format!("az://{}/x/", unique("bad")),
        ],
        &[("AZURE_STORAGE_CONNECTION_STRING", &cs)],
    );
    assert_fails(&result, 2, "the Azure credentials were rejected");
    assert!(!format!("{}{}", result.stdout, result.stderr).contains(wrong_key));
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_s3_endpoint() {
    let (result, _) = copy(
        &["copy", "s3://some-bucket/x/", "/tmp/blobway-never/"],
        &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")],
    );
    assert_fails(&result, 2, "cannot reach the S3 endpoint");
    assert_fails(&result, 2, "http://127.0.0.1:9");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_azure_endpoint() {
    let source = local_files(&[("a.bin", 1000)]);
    let (result, _) = copy(
        &[
            "copy",
            &format!("{}/", source.path().display()),
            "az://somewhere/x/",
        ],
        &[(
            "AZURE_STORAGE_CONNECTION_STRING",
            &azurite_connection_string_at("http://127.0.0.1:9"),
        )],
    );
    assert_fails(
        &result,
        2,
        "cannot reach the Azure endpoint http://127.0.0.1:9",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_locations() {
    for (source, message) in [
        ("gs2://bucket/key", "unknown scheme `gs2://`"),
        ("s3://Not_A_Bucket/key", "is not a valid S3 bucket name"),
        ("file://relative/path", "needs an absolute path"),
        ("az:/container/x/", "`az:` needs two slashes"),
    ] {
        let (result, _) = copy(&["copy", source, "az://container/x/"], &[]);
        assert_fails(&result, 2, message);
    }
    let (result, _) = copy(&["copy", "/tmp/", "az://UPPER/x/"], &[]);
    assert_fails(&result, 2, "is not a valid Azure container name");
}

#[tokio::test(flavor = "multi_thread")]
async fn chunk_size_zero_or_over_the_store_maximum() {
    let source = local_files(&[("a.bin", 1000)]);
    let src = format!("{}/", source.path().display());
    let target = tempfile::tempdir().expect("target");
    let dst = format!("{}/", target.path().display());
    let (result, _) = copy(&["copy", &src, &dst, "--chunk-size", "0"], &[]);
    assert_fails(&result, 2, "--chunk-size must be at least 1 byte");
    let (result, _) = copy(
        &[
            "copy",
            &src,
            &dst,
            "--chunk-size",
            "5000MiB",
            "--max-memory",
            "8GiB",
        ],
        &[],
    );
    assert_fails(
        &result,
        2,
        "over the destination's largest block (3.91 GiB)",
    );
    let (result, _) = copy(&["copy", &src, &dst, "--chunk-size", "lots"], &[]);
    assert_fails(&result, 2, "is not a size; write e.g. 64MiB");
    assert!(
        std::fs::read_dir(target.path())
            .expect("dir")
            .next()
            .is_none(),
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_side_copy_on_a_route_that_cannot() {
    let source = local_files(&[("a.bin", 1000)]);
    let src = format!("{}/", source.path().display());
    let container = unique("never");
    let dst = format!("az://{container}/");
    let (result, _) = copy(&["copy", &src, &dst, "--transfer", "server"], &[]);
    assert_fails(
        &result,
        2,
        "--transfer server: this source cannot be copied store to store",
    );
    assert!(
        azure(&container)
            .list_existing("")
            .await
            .unwrap_or_default()
            .is_empty(),
        "nothing was written"
    );
    let (result, _) = copy(&["copy", &src, &dst, "--transfer", "sideways"], &[]);
    assert_fails(
        &result,
        2,
        "invalid value 'sideways' for '--transfer <HOW>'",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_access_tier_that_does_not_exist_or_cannot_apply() {
    let source = local_files(&[("a.bin", 1000)]);
    let src = format!("{}/", source.path().display());
    let container = unique("never");
    let (result, _) = copy(
        &[
            "copy",
            &src,
            &format!("az://{container}/"),
            "--access-tier",
            "lukewarm",
        ],
        &[],
    );
    assert_fails(
        &result,
        2,
        "invalid value 'lukewarm' for '--access-tier <TIER>'",
    );
    let target = tempfile::tempdir().expect("target");
    let dst = format!("{}/", target.path().display());
    let (result, _) = copy(&["copy", &src, &dst, "--access-tier", "cool"], &[]);
    assert_fails(
        &result,
        2,
        "--access-tier: only an Azure destination has access tiers",
    );
    let (result, _) = copy(&["copy", &src, &dst, "--storage-class", "standard-ia"], &[]);
    assert_fails(
        &result,
        2,
        "--storage-class: only an S3 destination has storage classes",
    );
    let (result, _) = copy(&["copy", &src, &dst, "--storage-class", "frozen"], &[]);
    assert_fails(
        &result,
        2,
        "invalid value 'frozen' for '--storage-class <CLASS>'",
    );
    assert!(
        std::fs::read_dir(target.path())
            .expect("dir")
            .next()
            .is_none(),
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_state_file() {
    let state = tempfile::tempdir().expect("state");
    let path = state.path().join("s.redb");
    std::fs::write(&path, random_bytes(64 * 1024, 3)).expect("garbage");
    let result = run(blobway(&path).args(["jobs"]));
    assert_fails(&result, 3, "is damaged or not a blobway state file");
    assert_fails(&result, 3, "move it aside");
    assert_eq!(
        std::fs::read(&path).expect("kept"),
        random_bytes(64 * 1024, 3),
        "the file is left as it was"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn state_file_held_by_another_blobway() {
    let state = tempfile::tempdir().expect("state");
    let path = state.path().join("s.redb");
    let _held = blobway::state::StateDb::open(&path).expect("hold it");
    let source = local_files(&[("a.bin", 1000)]);
    let result = run(blobway(&path).args([
        "copy",
        &format!("{}/", source.path().display()),
        &format!("{}/out/", state.path().display()),
    ]));
    assert_fails(&result, 3, "is in use by another running blobway");
}

/// Runs a shell script in a private mount namespace where `dir` is a small tmpfs.
fn with_small_disk(dir: &Path, size: &str, script: &str) -> Run {
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size={size} tmpfs '{}' && {script}",
            dir.display()
        ));
    let state = tempfile::tempdir().expect("state");
    for (key, value) in blobway(&state.path().join("s.redb")).get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    run(&mut cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn destination_disk_full() {
    let source = local_files(&[("big.bin", 20 * MIB), ("small.bin", 100)]);
    let disk = tempfile::tempdir().expect("disk");
    let state = tempfile::tempdir().expect("state");
    let script = format!(
        "'{}' --no-daemon --state '{}/s.redb' copy '{}/' '{}/out/' --chunk-size 1MiB; code=$?; \
         ls -a '{}/out' > '{}/listing'; exit $code",
        env!("CARGO_BIN_EXE_blobway"),
        state.path().display(),
        source.path().display(),
        disk.path().display(),
        disk.path().display(),
        state.path().display(),
    );
    let result = with_small_disk(disk.path(), "8m", &script);
    assert_fails(&result, 1, "the destination disk is full");
    assert_fails(&result, 1, "blobway resume");
    let listing = std::fs::read_to_string(state.path().join("listing")).expect("listing");
    assert!(
        !listing.contains("big.bin"),
        "nothing half-written is visible: {listing}"
    );
    assert_eq!(
        std::fs::metadata(source.path().join("big.bin"))
            .expect("source")
            .len(),
        20 * MIB as u64
    );
    let jobs = run(blobway(&state.path().join("s.redb")).arg("jobs"));
    assert!(
        jobs.stdout.contains("FAILED"),
        "the job is recorded, ready to resume: {}",
        jobs.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn object_too_big_for_the_store() {
    let disk = tempfile::tempdir().expect("disk");
    let state = tempfile::tempdir().expect("state");
    let script = format!(
        "truncate -s 200T '{}/huge.bin' && echo tiny > '{}/tiny.txt' && \
         '{}' --no-daemon --state '{}/s.redb' copy '{}/' '{}/out/'",
        disk.path().display(),
        disk.path().display(),
        env!("CARGO_BIN_EXE_blobway"),
        state.path().display(),
        disk.path().display(),
        state.path().display(),
    );
    let result = with_small_disk(disk.path(), "4m", &script);
    assert_fails(
        &result,
        1,
        "the object is 200 TiB but the destination holds at most",
    );
    assert_eq!(
        std::fs::read_to_string(state.path().join("out/tiny.txt"))
            .expect("the other object is copied"),
        "tiny\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_aws_profile() {
    let profile = AwsProfile::new("archive", S3S_ACCESS_KEY, S3S_SECRET_KEY);
    let source = local_files(&[("a.bin", 1000)]);
    let config = profile.config_file();
    let credentials = profile.credentials_file();
    let (result, state) = copy(
        &[
            "copy",
            &format!("{}/", source.path().display()),
            "s3://blobway-never/x/",
            "--dest-profile",
            "archiv",
            "--dest-endpoint",
            &test_env("BLOBWAY_TEST_S3S"),
        ],
        &[
            ("AWS_CONFIG_FILE", config.to_str().expect("utf8")),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                credentials.to_str().expect("utf8"),
            ),
        ],
    );
    assert_fails(&result, 2, "the AWS profile `archiv` gives no credentials");
    assert_fails(&result, 2, &config.display().to_string());
    let jobs = run(blobway(&state.path().join("s.redb")).arg("jobs"));
    assert!(
        !jobs.stdout.contains("FAILED"),
        "a wrong profile name is not recorded as a job: {}",
        jobs.stdout
    );
}

/// A shared state database that does not answer, refuses the login, or was written by a newer
/// blobway: each said in its own words, exit 3, the password never shown — whether the
/// command runs the engine itself or would start a daemon.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_database_that_does_not_answer_refuses_the_login_or_is_newer() {
    let url = common::postgres::fresh_database();
    let parsed = url::Url::parse(&url).expect("url");
    let password = parsed.password().expect("a password").to_string();
    let source = tempfile::tempdir().expect("source");
    std::fs::write(source.path().join("a.txt"), b"kept").expect("write");
    let destination = tempfile::tempdir().expect("destination");
    let from = format!("{}/", source.path().display());
    let to = format!("{}/", destination.path().display());
    let mut nowhere = parsed.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    nowhere.set_port(Some(port)).expect("port");
    let mut wrong = parsed.clone();
    wrong
        .set_password(Some("not-the-password"))
        .expect("password");
    for (state, message) in [
        (nowhere.as_str(), "does not answer"),
        (wrong.as_str(), "refused the login"),
    ] {
        for daemon in [false, true] {
            for args in [vec!["jobs"], vec!["copy", &from, &to]] {
                let mut cmd = blobway(Path::new(state));
                if daemon {
                    cmd.env_remove("BLOBWAY_NO_DAEMON");
                }
                let result = run(cmd.args(&args));
                assert_fails(&result, 3, message);
                let all = format!("{}\n{}", result.stdout, result.stderr);
                assert!(!all.contains(&password), "{all}");
                assert!(!all.contains("not-the-password"), "{all}");
            }
        }
    }
    assert!(
        std::fs::read_dir(destination.path())
            .expect("dir")
            .next()
            .is_none(),
        "nothing copied without its state"
    );

    // A schema from a newer blobway: refused, and what it holds is left as it is.
    let result = run(blobway(Path::new(&url)).args(["copy", &from, &to]));
    assert_eq!(result.code, 0, "{}", result.stderr);
    common::postgres::execute(
        &url,
        "UPDATE blobway_meta SET value = '99' WHERE name = 'schema'",
    );
    let result = run(blobway(Path::new(&url)).args(["jobs"]));
    assert_fails(&result, 3, "has schema version 99");
    assert_fails(&result, 3, "upgrade blobway");
    assert!(!result.stderr.contains(&password), "{}", result.stderr);
    common::postgres::execute(
        &url,
        &format!(
            "UPDATE blobway_meta SET value = '{}' WHERE name = 'schema'",
            blobway::state::postgres::SCHEMA_VERSION
        ),
    );
    let jobs = recorded_jobs(blobway(Path::new(&url)));
    assert_eq!(jobs.len(), 1, "the job recorded before is still there");
}

/// While one blobway serves a database, another machine's `jobs` and `report` read it (one
/// committed snapshot, no lock); a second engine joins as a worker of its own, but one under
/// the name of a live worker is refused with where that one runs, exit 3.
#[tokio::test(flavor = "multi_thread")]
async fn a_served_state_database_is_read_by_jobs_and_report_and_a_live_workers_name_is_refused() {
    use blobway::state::{FileRecord, StateDb, Write};
    let url = common::postgres::fresh_database();
    let holder = StateDb::new(
        blobway::state::postgres::PgState::open_worker(
            &url,
            None,
            "the-worker",
            std::time::Duration::from_secs(60),
        )
        .expect("the serving blobway"),
    );
    holder
        .apply(&[
            Write::Job(job_record(1)),
            Write::File(1, 0, FileRecord::new("p/a", "p/a", 5, "\"e\"", 8, 1)),
            Write::Chunk(1, 0, 0, blobway::state::ChunkRecord::pending()),
        ])
        .expect("record");
    let jobs = run(blobway(Path::new(&url)).arg("jobs"));
    assert_eq!(jobs.code, 0, "{}", jobs.stderr);
    assert!(jobs.stdout.contains("s3://b/p1/"), "{}", jobs.stdout);
    assert!(
        jobs.stdout.contains("RUNNING") && !jobs.stdout.contains("STOPPED"),
        "as its holder recorded it: {}",
        jobs.stdout
    );
    // A reader writes nothing: a database without blobway's tables gets none.
    let empty = common::postgres::fresh_database();
    let nothing = run(blobway(Path::new(&empty)).arg("jobs"));
    assert_fails(&nothing, 3, "holds no blobway state yet");
    assert_eq!(
        common::postgres::number(
            &empty,
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'blobway%'"
        ),
        0
    );
    let report = run(blobway(Path::new(&url)).args(["report", "1", "--all"]));
    assert_eq!(report.code, 0, "{}", report.stderr);
    assert!(report.stdout.contains("p/a"), "{}", report.stdout);
    let source = tempfile::tempdir().expect("source");
    let destination = tempfile::tempdir().expect("destination");
    let route = [
        "copy".to_string(),
        format!("{}/", source.path().display()),
        format!("{}/", destination.path().display()),
    ];
    let second = run(blobway(Path::new(&url))
        .env("BLOBWAY_WORKER_NAME", "the-worker")
        .args(&route));
    assert_fails(&second, 3, "a worker named the-worker already works on");
    assert_fails(&second, 3, &format!("pid {}", std::process::id()));
    assert_fails(&second, 3, "BLOBWAY_WORKER_NAME");
    let own = run(blobway(Path::new(&url))
        .env("BLOBWAY_WORKER_NAME", "another")
        .args(&route));
    assert_eq!(own.code, 0, "a worker of its own joins: {}", own.stderr);
    drop(holder);
}

/// A GCS destination's upload sessions are bearer secrets: with the state in a shared database
/// and no BLOBWAY_STATE_KEY, the route is refused at planning, before any byte moves.
#[tokio::test(flavor = "multi_thread")]
async fn a_gcs_destination_with_a_shared_state_and_no_key_is_refused_at_planning() {
    let url = common::postgres::fresh_database();
    let source = tempfile::tempdir().expect("source");
    std::fs::write(source.path().join("a.bin"), vec![7u8; 1000]).expect("write");
    let bucket = unique("sealed");
    let mut cmd = blobway(Path::new(&url));
    cmd.env("STORAGE_EMULATOR_HOST", gcs_endpoint())
        .env_remove("BLOBWAY_STATE_KEY");
    let result = run(cmd.args([
        "copy",
        &format!("{}/", source.path().display()),
        &format!("gs://{bucket}/in/"),
    ]));
    assert_ne!(result.code, 0, "{}", result.stdout);
    let all = format!("{}\n{}", result.stdout, result.stderr);
    assert!(all.contains("BLOBWAY_STATE_KEY"), "{all}");
    assert!(gcs_objects(&bucket, "").await.is_empty(), "nothing copied");
}
