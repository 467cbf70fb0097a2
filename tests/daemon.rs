//! The daemon (`blobway serve`) as operators and programs use it: the HTTP API with its
//! token, every endpoint and every refusal; commands that find it (or start it) through its
//! socket; SIGTERM, kill -9 and a hung-up terminal in the middle of a copy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{Fault, FaultConfig, Flavor, Proxy};
use common::*;

const TOKEN: &str = "tok-3f1c9a0be7d24c55a8e1f0d2c4b6a987";

/// A daemon this test started (`serve --listen 127.0.0.1:0`), killed when dropped.
struct Daemon {
    child: Child,
    url: String,
}

impl Daemon {
    fn start(state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = blobway(state);
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("BLOBWAY_TOKEN", TOKEN)
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the daemon printed its address");
            if let Some(at) = line.find("http://").or_else(|| line.find("https://")) {
                break line[at..].split_whitespace().next().unwrap().to_string();
            }
        };
        Daemon { child, url }
    }

    fn api(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.api()
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.api()
            .post(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn job(&self, id: u64) -> serde_json::Value {
        self.get(&format!("/v1/jobs/{id}"))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Hands the daemon a copy of `source` to `destination` (both locations as text); it is
    /// accepted (202) and its job ID returned.
    async fn copy(&self, source: String, destination: String) -> u64 {
        let created = self
            .post(
                "/v1/jobs",
                serde_json::json!({ "source": source, "destinations": [destination] }),
            )
            .await;
        assert_eq!(created.status(), 202);
        let accepted: Vec<serde_json::Value> = created.json().await.unwrap();
        accepted[0]["job"].as_u64().unwrap()
    }

    /// Waits until job `id` is in `state`.
    async fn wait_for(&self, id: u64, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = self.job(id).await;
            if job["state"] == state {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} never {state}: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops whatever daemon serves `state` when dropped (one a command started in the
/// background).
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = run(blobway(&self.0).arg("stop"));
    }
}

fn same_tree(a: &Path, b: &Path, names: &[&str]) {
    for name in names {
        let left = std::fs::read(a.join(name)).unwrap();
        let right = std::fs::read(b.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(left == right, "{name} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_every_endpoint_and_refuses_what_it_must() {
    let names = ["a.bin", "sub/b.bin", "ünï code.txt", "empty"];
    let source = local_files(&[
        (names[0], 3 << 20),
        (names[1], 700_000),
        (names[2], 10),
        (names[3], 0),
    ]);
    let destination = tempfile::tempdir().unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("s.redb");
    let daemon = Daemon::start(&state, &[], &[]);
    let api = daemon.api();

    // The token guards every endpoint, /metrics included.
    for path in ["/v1/jobs", "/metrics", "/v1/version"] {
        let none = api
            .get(format!("{}{path}", daemon.url))
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 401, "{path}");
        let wrong = api
            .get(format!("{}{path}", daemon.url))
            .bearer_auth("tok-wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
    }

    // Bad input: the CLI's words, with the right status.
    let bad = daemon
        .post(
            "/v1/jobs",
            serde_json::json!({"source": "az:/x", "destinations": ["/tmp/y/"]}),
        )
        .await;
    assert_eq!(bad.status(), 400);
    let cli = run(blobway(&state_dir.path().join("other.redb")).args(["copy", "az:/x", "/tmp/y/"]));
    let message = bad.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        cli.stderr.contains(&message),
        "API: {message}\nCLI: {}",
        cli.stderr
    );
    let huge = "x".repeat((1 << 20) + 1);
    let too_big = daemon
        .post(
            "/v1/jobs",
            serde_json::json!({"source": huge, "destinations": ["/tmp/y/"]}),
        )
        .await;
    assert_eq!(too_big.status(), 413);
    let relative = daemon
        .post(
            "/v1/jobs",
            serde_json::json!({"source": "data/", "destinations": ["/tmp/y/"]}),
        )
        .await;
    assert_eq!(relative.status(), 400);
    let message = relative.json::<serde_json::Value>().await.unwrap()["error"].to_string();
    assert!(message.contains("relative path"), "{message}");
    assert_eq!(daemon.get("/v1/jobs/77").await.status(), 404);
    assert_eq!(
        daemon
            .post("/v1/jobs/77/pause", serde_json::json!({}))
            .await
            .status(),
        404
    );
    assert_eq!(daemon.get("/v1/jobs/77/report").await.status(), 404);

    // A copy, handed over and followed.
    let created = daemon
        .post(
            "/v1/jobs",
            serde_json::json!({
                "source": format!("{}/", source.path().display()),
                "destinations": [format!("{}/", destination.path().display())],
                "options": {"chunk_size": 1 << 20},
            }),
        )
        .await;
    assert_eq!(created.status(), 202);
    let accepted: Vec<serde_json::Value> = created.json().await.unwrap();
    let id = accepted[0]["job"].as_u64().unwrap();
    let job = daemon.wait_for(id, "DONE").await;
    assert_eq!(job["progress"]["files_done"], 4);
    same_tree(source.path(), destination.path(), &names);

    let page: serde_json::Value = daemon
        .get("/v1/jobs?offset=0&limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 1);
    assert_eq!(page["jobs"][0]["id"], id);
    let empty: serde_json::Value = daemon.get("/v1/jobs?offset=1").await.json().await.unwrap();
    assert_eq!(empty["jobs"].as_array().unwrap().len(), 0);

    for action in ["pause", "resume", "retry-failed"] {
        let answer = daemon
            .post(&format!("/v1/jobs/{id}/{action}"), serde_json::json!({}))
            .await;
        assert_eq!(answer.status(), 202, "{action}");
    }
    assert_eq!(
        daemon
            .post(&format!("/v1/jobs/{id}/explode"), serde_json::json!({}))
            .await
            .status(),
        404
    );
    let report: serde_json::Value = daemon
        .get(&format!("/v1/jobs/{id}/report?format=json"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["totals"]["files_done"], 4);
    let csv = daemon
        .get(&format!("/v1/jobs/{id}/report?format=csv"))
        .await;
    assert_eq!(csv.status(), 200);
    assert!(
        csv.text()
            .await
            .unwrap()
            .starts_with("key,dest_key,size,state")
    );

    let put = |body: serde_json::Value| {
        api.put(format!("{}/v1/concurrency", daemon.url))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    assert_eq!(
        put(serde_json::json!({"limit": 3})).await.unwrap().status(),
        202
    );
    assert_eq!(
        put(serde_json::json!({"limit": 0})).await.unwrap().status(),
        400
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let metrics = daemon.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("blobway_concurrency_limit 3"), "{metrics}");
    assert!(metrics.contains("blobway_concurrency_adaptive 0"));
    assert_eq!(
        put(serde_json::json!({"auto": true}))
            .await
            .unwrap()
            .status(),
        202
    );

    // /metrics, read by the Prometheus project's own parser.
    let python = test_env("BLOBWAY_TEST_PYTHON");
    let parsed = std::process::Command::new(python)
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
             names = sorted(f.name for f in p(sys.stdin.read()))\nprint(' '.join(names))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(metrics.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let families = String::from_utf8_lossy(&parsed.stdout).to_string();
    for family in [
        "blobway_objects",
        "blobway_bytes",
        "blobway_chunks_in_flight",
        "blobway_concurrency_limit",
        "blobway_throughput_bytes_per_second",
        "blobway_chunk_latency_seconds",
        "blobway_errors",
        "blobway_throttles",
        "blobway_controller_decisions",
        "blobway_clients",
        "blobway_client_resyncs",
        "blobway_transferred_bytes",
    ] {
        assert!(
            families.split(' ').any(|f| f.trim() == family),
            "{family} not in {families}"
        );
    }

    // The event stream: a hello, then events; it ends when the daemon stops, and the daemon
    // does not wait for it.
    let mut stream = api
        .get(format!("{}/v1/events", daemon.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let first = String::from_utf8_lossy(&stream.chunk().await.unwrap().unwrap()).to_string();
    assert!(first.contains("event: hello"), "{first}");
    let stopped = daemon.post("/v1/stop", serde_json::json!({})).await;
    assert_eq!(stopped.status(), 202);
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream ended with the daemon");

    // The token is in no log and not in the state file.
    let mut daemon = daemon;
    let status = tokio::task::spawn_blocking(move || {
        let status = daemon.child.wait().unwrap();
        (status, daemon)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{:?}", status.0);
    let log = std::fs::read(state_dir.path().join("blobway.log")).unwrap_or_default();
    let db = std::fs::read(&state).unwrap();
    assert_no_secrets(&[("the log", &log), ("the state file", &db)], &[TOKEN]);
    assert!(
        String::from_utf8_lossy(&log).contains("operator: stop the daemon"),
        "the audit trail names the stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_file_is_refused_and_names_the_first() {
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("s.redb");
    let first = Daemon::start(&state, &[], &[]);
    let pid = first.child.id();
    let second = run_async({
        let mut cmd = blobway(&state);
        cmd.arg("serve");
        cmd
    })
    .await;
    assert_eq!(second.code, 3, "{}", second.stderr);
    assert!(
        second.stderr.contains("already serves") && second.stderr.contains(&pid.to_string()),
        "{}",
        second.stderr
    );
    // An in-process engine is refused too, with what to do instead.
    let tui_like = run(blobway(&state)
        .args(["demo", "--headless", "--dir"])
        .arg(state_dir.path().join("demo")));
    assert_eq!(tui_like.code, 3, "{}", tui_like.stderr);
    assert!(
        tui_like.stderr.contains("blobway stop"),
        "{}",
        tui_like.stderr
    );
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_api_and_files_that_do_not_load_stop_serve_with_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let state = dir.path().join("s.redb");
    let tls = |cert: &Path, key: &Path| {
        vec![
            "--tls-cert".to_string(),
            cert.display().to_string(),
            "--tls-key".to_string(),
            key.display().to_string(),
        ]
    };

    // Files that do not load: named, with why, and nothing is started.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    for (args, words) in [
        (
            tls(&dir.path().join("missing.pem"), &key),
            "missing.pem: cannot read",
        ),
        (tls(&garbage, &key), "no certificate"),
        (tls(&cert, &garbage), "no private key"),
    ] {
        let out = run_async({
            let mut cmd = blobway(&state);
            cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(&args);
            cmd
        })
        .await;
        assert_ne!(out.code, 0, "{args:?}");
        assert!(out.stderr.contains(words), "{args:?}: {}", out.stderr);
        assert!(!state.exists(), "the state file is not even opened");
    }
    // Beyond loopback, TLS is required.
    let out = run_async({
        let mut cmd = blobway(&state);
        cmd.args(["serve", "--listen", "0.0.0.0:0"]);
        cmd
    })
    .await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("--tls-cert"), "{}", out.stderr);

    // With TLS: https with the token, and nothing in clear text.
    let daemon = Daemon::start(
        &state,
        &tls(&cert, &key)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[],
    );
    assert!(daemon.url.starts_with("https://"), "{}", daemon.url);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(made.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = daemon.url.replace("127.0.0.1", "localhost");
    let version = client
        .get(format!("{url}/v1/version"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(version.status(), 200);
    let without = client.get(format!("{url}/v1/jobs")).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let clear = reqwest::Client::new()
        .get(format!(
            "{}/v1/version",
            daemon.url.replace("https://", "http://")
        ))
        .bearer_auth(TOKEN)
        .send()
        .await;
    assert!(
        clear.map(|r| !r.status().is_success()).unwrap_or(true),
        "no answer in clear text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_never_holds_up_the_copy_and_is_resynced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("s.redb");
    let source = work.path().join("src");
    for i in 0..6000 {
        let dir = source.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), [(i % 251) as u8]).unwrap();
    }
    let daemon = Daemon::start(&state, &[], &[]);
    // A watcher on the socket that reads nothing: the socket's buffer fills (Unix sockets do
    // not grow theirs), then the daemon's queue for this client.
    let socket = blobway::daemon::socket::socket_path(&state);
    let mut silent = blobway::daemon::socket::connect(&socket).await.unwrap();
    silent
        .write_all(b"GET /v1/events?snapshots=true HTTP/1.1\r\nHost: blobway\r\n\r\n")
        .await
        .unwrap();
    daemon
        .copy(
            format!("{}/", source.display()),
            format!("{}/", work.path().join("dst").display()),
        )
        .await;
    // The copy runs to the end while the watcher reads nothing.
    let done = daemon.wait_for(1, "DONE").await;
    assert_eq!(done["progress"]["files_done"], 6000, "{done}");
    let metrics = daemon.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("blobway_clients 1"),
        "the watcher is still attached:\n{metrics}"
    );

    // Once it reads again, it is told it missed events and given the picture afresh.
    let mut seen = Vec::new();
    let resynced = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = silent.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the stream ended before a resync");
            seen.extend_from_slice(&buffer[..n]);
            if String::from_utf8_lossy(&seen).contains("event: resync") {
                return;
            }
        }
    })
    .await;
    assert!(resynced.is_ok(), "no resync after {} bytes", seen.len());
    let metrics = daemon.get("/metrics").await.text().await.unwrap();
    let resyncs: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("blobway_client_resyncs "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(resyncs >= 1.0, "{metrics}");
}

/// A slow S3 source: every request to moto waits 150 ms in a proxy.
async fn slow_source(objects: usize) -> (Proxy, String, Vec<(String, Vec<u8>)>) {
    let s3 = s3_client();
    let bucket = new_bucket(&s3).await;
    let mut data = Vec::new();
    for i in 0..objects {
        let key = format!("slow/o-{i:02}.bin");
        let bytes = random_bytes(300_000 + i * 1000, 70 + i as u64);
        put(&s3, &bucket, &key, &bytes).await;
        data.push((key, bytes));
    }
    let proxy = Proxy::start(
        &emulators().s3,
        FaultConfig {
            rate: 1.0,
            mix: vec![(Fault::Latency, 1)],
            latency: Duration::from_millis(150),
            ..FaultConfig::none(Flavor::S3)
        },
    )
    .await;
    (proxy, bucket, data)
}

fn same_objects(destination: &Path, data: &[(String, Vec<u8>)]) {
    for (key, bytes) in data {
        let name = key.trim_start_matches("slow/");
        let copied =
            std::fs::read(destination.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(&copied == bytes, "{name} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_copy_stops_promptly_and_the_copy_resumes_to_identical_bytes() {
    let (proxy, bucket, data) = slow_source(30).await;
    let destination = tempfile::tempdir().unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("s.redb");
    let mut daemon = Daemon::start(
        &state,
        &["--concurrency", "2"],
        &[("AWS_ENDPOINT_URL", proxy.url.as_str())],
    );
    daemon
        .copy(
            format!("s3://{bucket}/slow/"),
            format!("{}/", destination.path().display()),
        )
        .await;
    daemon.wait_for(1, "RUNNING").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let job = daemon.job(1).await;
    assert!(
        job["progress"]["files_done"].as_u64().unwrap() < 30,
        "still copying: {job}"
    );

    let at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || daemon.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        at.elapsed() < Duration::from_secs(30),
        "took {:?}",
        at.elapsed()
    );

    let mut resume = blobway(&state);
    resume.env("AWS_ENDPOINT_URL", &proxy.url).arg("resume");
    let resumed = run_async(resume).await;
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    same_objects(destination.path(), &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_find_or_start_the_daemon_and_a_killed_daemon_is_started_again() {
    let (proxy, bucket, data) = slow_source(24).await;
    let destination = tempfile::tempdir().unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("s.redb");
    let _stop = StopOnDrop(state.clone());
    let copy = |extra: &[&str]| {
        let mut cmd = blobway(&state);
        cmd.env("AWS_ENDPOINT_URL", &proxy.url)
            .args([
                "copy",
                "--detach",
                "--concurrency",
                "2",
                &format!("s3://{bucket}/slow/"),
                &format!("{}/", destination.path().display()),
            ])
            .args(extra);
        cmd
    };
    // Started from a shell session that then hangs up: the daemon lives on.
    let mut shell = std::process::Command::new("setsid");
    let copy_line = {
        let cmd = copy(&[]);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect();
        format!(
            "{} {} ; sleep 30",
            cmd.get_program().to_string_lossy(),
            args.join(" ")
        )
    };
    let envs: Vec<(String, String)> = copy(&[])
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_string_lossy().into(), v?.to_string_lossy().into())))
        .collect();
    shell
        .args(["bash", "-c", &copy_line])
        .envs(envs)
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    let mut session = shell.spawn().expect("setsid bash");
    let mut out = BufReader::new(session.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("job 1:"), "{line}");
    // The session ends: SIGHUP to every process of its group.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(session.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let _ = session.wait();

    let jobs = run(blobway(&state).arg("jobs"));
    assert_eq!(jobs.code, 0, "{}", jobs.stderr);
    // The daemon lives on: it shows the job (QUEUED while planned), and runs it.
    assert!(
        jobs.stdout.contains("QUEUED") || jobs.stdout.contains("RUNNING"),
        "{}",
        jobs.stdout
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run(blobway(&state).arg("jobs")).stdout.contains("RUNNING") {
        assert!(Instant::now() < deadline, "never RUNNING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let paused = run(blobway(&state).args(["pause", "1"]));
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    // The audit trail names the action, the channel and who asked (its log is written by a
    // thread of its own, a moment after the answer).
    let me = nix::unistd::getuid().as_raw();
    let audited = |log: &str| {
        log.lines().any(|l| {
            l.contains("operator: pause job 1") && l.contains(&format!("socket (uid {me})"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(state_dir.path().join("blobway.log")).unwrap_or_default();
        if audited(&log) {
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retuned = run(blobway(&state).args(["set-concurrency", "3"]));
    assert_eq!(retuned.code, 0, "{}", retuned.stderr);
    let bad = run(blobway(&state).args(["set-concurrency", "lots"]));
    assert_eq!(bad.code, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let jobs = run(blobway(&state).args(["jobs", "--json"]));
    assert!(jobs.stdout.contains("\"PAUSED\""), "{}", jobs.stdout);
    // Copying the paused route again goes on with its job (as without a daemon); the
    // concurrency asked for now is the running daemon's.
    let again = run_async(copy(&[])).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.starts_with("job 1:"), "{}", again.stdout);
    assert!(
        again.stderr.contains("now keeps 2 in flight"),
        "{}",
        again.stderr
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run(blobway(&state).arg("jobs")).stdout.contains("RUNNING") {
        assert!(
            Instant::now() < deadline,
            "copying again never resumed the job"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let paused = run(blobway(&state).args(["pause", "1"]));
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    // `resume` follows the job until it is done, across the daemon's death below.
    let mut resumed = blobway(&state)
        .args(["resume", "1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let resumed_out = resumed.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(resumed_out).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // It follows the job before the daemon dies.
    let mut followed = vec![
        lines
            .recv_timeout(Duration::from_secs(20))
            .expect("following"),
    ];

    // kill -9: the next command starts a daemon again, which finishes the job.
    let pid = daemon_pid(&state).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = run_async(copy(&[])).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_ne!(daemon_pid(&state).await, pid, "a new daemon");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let jobs = run(blobway(&state).args(["jobs", "--json"]));
        if jobs.stdout.contains("\"DONE\"") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", jobs.stdout);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    same_objects(destination.path(), &data);
    let resumed = tokio::task::spawn_blocking(move || resumed.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    // Every line, up to the end of its output.
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        followed.push(line);
    }
    let stdout = followed.join("\n");
    assert!(resumed.status.success(), "{stderr}");
    assert!(
        stdout.contains("reconnecting"),
        "the follower says it: {stdout}"
    );
    assert!(stdout.contains("job_finished"), "{stdout}");
    let report = run(blobway(&state).args(["report", "1", "--format", "json"]));
    assert_eq!(report.code, 0, "{}", report.stderr);
    assert!(
        report.stdout.contains("\"files_done\": 24") || report.stdout.contains("\"files_done\":24"),
        "{}",
        report.stdout
    );
    let stop = run(blobway(&state).arg("stop"));
    assert_eq!(stop.code, 0, "{}", stop.stderr);
    assert!(stop.stdout.contains("stopped"));
}

/// The pid of the daemon serving `state`, from its socket.
async fn daemon_pid(state: &Path) -> u32 {
    let socket = blobway::daemon::socket::socket_path(state);
    blobway::daemon::client::Client::at(&socket)
        .version()
        .await
        .unwrap()
        .pid
}

/// The binary as a shell command in a terminal, on `state`, echoing its exit status.
fn tui_command(state: &Path) -> String {
    format!(
        "env BLOBWAY_STATE='{}' '{}'; echo BLOBWAY-EXIT-$?; sleep 30",
        state.display(),
        env!("CARGO_BIN_EXE_blobway")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_terminals_attach_to_one_daemon_and_see_each_others_commands() {
    use common::tmux::{Tmux, status_line};
    let (proxy, bucket, data) = slow_source(80).await;
    let destination = tempfile::tempdir().unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("s.redb");
    let env = [("AWS_ENDPOINT_URL", proxy.url.as_str())];
    let daemon = Daemon::start(&state, &["--concurrency", "1"], &env);
    daemon
        .copy(
            format!("s3://{bucket}/slow/"),
            format!("{}/", destination.path().display()),
        )
        .await;
    daemon.wait_for(1, "RUNNING").await;
    let running = |s: &str| s.contains("RUNNING") && s.contains("s3://");
    let wait = Duration::from_secs(20);

    // A terminal attaches, shows the job running, and is killed.
    let first = Tmux::start(&tui_command(&state), 140, 40);
    first.wait_for("the job, running", wait, running);
    drop(first);
    let before = daemon.job(1).await["progress"]["bytes_done"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = daemon.job(1).await["progress"]["bytes_done"]
        .as_u64()
        .unwrap();
    assert!(after > before, "the copy goes on without its terminal");

    // Two more attach; what one asks, both show.
    let second = Tmux::start(&tui_command(&state), 140, 40);
    let third = Tmux::start(&tui_command(&state), 140, 40);
    second.wait_for("the job, running", wait, running);
    third.wait_for("the job, running", wait, running);
    second.send("P");
    third.wait_for("PAUSED in the other terminal", wait, |s| {
        status_line(s).contains("PAUSED")
    });
    assert_eq!(daemon.job(1).await["state"], "PAUSED");
    third.send("R");
    second.wait_for("RUNNING again in the first", wait, |s| {
        status_line(s).contains("RUNNING")
    });

    // The daemon dies; the terminals say so, and attach to the next one.
    let mut daemon = daemon;
    daemon.child.kill().unwrap();
    let _ = daemon.child.wait();
    second.wait_for("reconnecting", wait, |s| s.contains("reconnecting"));
    let daemon = Daemon::start(&state, &["--concurrency", "4"], &env);
    second.wait_for("reconnected", wait, |s| s.contains("reconnected"));
    third.wait_for("reconnected", wait, |s| s.contains("reconnected"));
    daemon.wait_for(1, "DONE").await;
    same_objects(destination.path(), &data);

    // `q` detaches: the daemon stays.
    second.send("q");
    let screen = second.wait_for("the terminal to detach", wait, |s| {
        s.contains("BLOBWAY-EXIT-")
    });
    assert!(screen.contains("BLOBWAY-EXIT-0"), "{screen}");
    assert!(screen.contains("detached"), "{screen}");
    assert_eq!(daemon.get("/v1/version").await.status(), 200);

    // `Q` stops the daemon, once confirmed.
    third.send("Q");
    third.wait_for("the stop confirmation", wait, |s| {
        s.contains("Stop the daemon?")
    });
    third.send("y");
    let screen = third.wait_for("the daemon to stop", wait, |s| s.contains("BLOBWAY-EXIT-"));
    assert!(screen.contains("BLOBWAY-EXIT-0"), "{screen}");
    assert!(screen.contains("the daemon stopped"), "{screen}");
    let mut daemon = daemon;
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the daemon never exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_run_while_a_daemon_serves_is_handed_to_it_and_followed_until_done() {
    let parent = tempfile::tempdir().unwrap();
    let names = ["one.bin", "deep/two.bin"];
    std::fs::create_dir_all(parent.path().join("src/deep")).unwrap();
    for (i, name) in names.iter().enumerate() {
        std::fs::write(
            parent.path().join("src").join(name),
            random_bytes(900_000, 40 + i as u64),
        )
        .unwrap();
    }
    let destination = tempfile::tempdir().unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("s.redb");
    let daemon = Daemon::start(&state, &[], &[]);
    // A relative source means this shell's folder, wherever the daemon runs.
    let mut copy = blobway(&state);
    copy.env_remove("BLOBWAY_NO_DAEMON")
        .current_dir(parent.path())
        .args(["copy", "src/"])
        .arg(format!("{}/", destination.path().display()))
        .args(["--chunk-size", "256KiB", "--json"]);
    let followed = run_async(copy).await;
    assert_eq!(followed.code, 0, "{}\n{}", followed.stdout, followed.stderr);
    let finished = followed.events_named("job_finished");
    assert_eq!(finished.len(), 1, "{}", followed.stdout);
    assert_eq!(finished[0]["state"], "DONE");
    let chunks = followed.events_named("chunk_completed");
    assert!(!chunks.is_empty());
    // Every line says when; chunk events name their object.
    assert!(
        followed
            .events()
            .iter()
            .all(|e| e["ts"].as_str().is_some_and(|t| t.ends_with('Z')))
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["key"].as_str().is_some_and(|k| names.contains(&k)))
    );
    same_tree(&parent.path().join("src"), destination.path(), &names);
    assert_eq!(
        daemon.get("/v1/version").await.status(),
        200,
        "the daemon stays"
    );

    // Ctrl-C stops following, not copying.
    let (proxy, bucket, data) = slow_source(30).await;
    let slow_destination = tempfile::tempdir().unwrap();
    drop(daemon);
    let daemon = Daemon::start(
        &state,
        &["--concurrency", "2"],
        &[("AWS_ENDPOINT_URL", proxy.url.as_str())],
    );
    let mut copy = blobway(&state);
    copy.env_remove("BLOBWAY_NO_DAEMON")
        .args(["copy", &format!("s3://{bucket}/slow/")])
        .arg(format!("{}/", slow_destination.path().display()))
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = copy.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("chunk_completed"));
    assert!(started.is_some(), "the copy is followed");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stopped following"), "{stderr}");
    let job = daemon.wait_for(2, "DONE").await;
    assert_eq!(job["progress"]["files_done"], 30);
    same_objects(slow_destination.path(), &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_starts_a_daemon_when_none_runs_which_stops_once_idle() {
    let source = local_files(&[("a.bin", 2 << 20), ("b/c.txt", 100)]);
    let destination = tempfile::tempdir().unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("s.redb");
    let _stop = StopOnDrop(state.clone());
    let mut copy = blobway(&state);
    copy.env_remove("BLOBWAY_NO_DAEMON")
        .env("BLOBWAY_IDLE_EXIT_SECS", "3")
        .args(["copy", &format!("{}/", source.path().display())])
        .arg(format!("{}/", destination.path().display()))
        .arg("--json");
    let copied = run_async(copy).await;
    assert_eq!(copied.code, 0, "{}\n{}", copied.stdout, copied.stderr);
    assert_eq!(copied.events_named("job_finished")[0]["state"], "DONE");
    same_tree(source.path(), destination.path(), &["a.bin", "b/c.txt"]);
    let pid = daemon_pid(&state).await;
    assert_ne!(pid, std::process::id());
    // Nothing to do, nobody attached: it stops by itself.
    let socket = blobway::daemon::socket::socket_path(&state);
    let deadline = Instant::now() + Duration::from_secs(30);
    while blobway::daemon::client::Client::at(&socket)
        .version()
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "the idle daemon never stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let jobs = run(blobway(&state).args(["jobs", "--json"]));
    assert!(jobs.stdout.contains("\"DONE\""), "{}", jobs.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_concurrency_choice_survives_a_restart() {
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("s.redb");
    let limit_of = |metrics: &str| -> (String, String) {
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")).map(String::from))
                .unwrap_or_default()
        };
        (
            value("blobway_concurrency_limit"),
            value("blobway_concurrency_adaptive"),
        )
    };
    let set = |daemon: &Daemon, body: serde_json::Value| {
        daemon
            .api()
            .put(format!("{}/v1/concurrency", daemon.url))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    let daemon = Daemon::start(&state, &[], &[]);
    assert_eq!(
        set(&daemon, serde_json::json!({"limit": 7}))
            .await
            .unwrap()
            .status(),
        202
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(daemon); // killed
    let daemon = Daemon::start(&state, &[], &[]);
    let metrics = daemon.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        limit_of(&metrics),
        ("7".into(), "0".into()),
        "kept across the restart"
    );
    assert_eq!(
        set(&daemon, serde_json::json!({"auto": true}))
            .await
            .unwrap()
            .status(),
        202
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(daemon);
    let daemon = Daemon::start(&state, &[], &[]);
    let metrics = daemon.get("/metrics").await.text().await.unwrap();
    assert_eq!(limit_of(&metrics).1, "1", "adaptive again");
    drop(daemon);
    // A --concurrency of the run itself wins over what was recorded.
    let daemon = Daemon::start(&state, &["--concurrency", "3"], &[]);
    let metrics = daemon.get("/metrics").await.text().await.unwrap();
    assert_eq!(limit_of(&metrics), ("3".into(), "0".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bandwidth_cap_is_set_live_through_the_cli_and_the_api_and_survives_a_restart() {
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("s.redb");
    let cap_of = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("blobway_bwlimit_bytes_per_second "))
            .map(String::from)
            .unwrap_or_default()
    };
    // Without a state file there is nothing to set it in (a mistyped --state is not created).
    let nowhere = run(blobway(&state).args(["set-bwlimit", "3MiB/s"]));
    assert_eq!(nowhere.code, 2, "{}", nowhere.stderr);
    assert!(
        nowhere.stderr.contains("no state file"),
        "{}",
        nowhere.stderr
    );
    assert!(!state.exists());
    drop(Daemon::start(&state, &[], &[]));
    // Without a daemon, the cap is recorded for the next run.
    let recorded = run(blobway(&state).args(["set-bwlimit", "3MiB/s"]));
    assert_eq!(recorded.code, 0, "{}", recorded.stderr);
    assert!(
        recorded.stdout.contains("the next run uses it"),
        "{}",
        recorded.stdout
    );
    let daemon = Daemon::start(&state, &[], &[]);
    let metrics = daemon.get("/metrics").await.text().await.unwrap();
    assert_eq!(cap_of(&metrics), (3u64 << 20).to_string());
    // A timetable that does not parse is refused with what is wrong, and changes nothing.
    let refused = daemon
        .api()
        .put(format!("{}/v1/bwlimit", daemon.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"bwlimit": "Mon-Fri 25:00,1M"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let why = refused.text().await.unwrap();
    assert!(why.contains("`25:00` is not a time of day"), "{why}");
    let metrics = daemon.get("/metrics").await.text().await.unwrap();
    assert_eq!(cap_of(&metrics), (3u64 << 20).to_string(), "unchanged");
    let bad = run(blobway(&state).args(["set-bwlimit", "fast"]));
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("not a size"), "{}", bad.stderr);
    // The CLI reaches the running daemon: in force within two seconds of its answer.
    let set = run(blobway(&state).args(["set-bwlimit", "40MiB/s"]));
    assert_eq!(set.code, 0, "{}", set.stderr);
    let asked = Instant::now();
    loop {
        let metrics = daemon.get("/metrics").await.text().await.unwrap();
        if cap_of(&metrics) == (40u64 << 20).to_string() {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "not in force: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The API sets it too.
    let set = daemon
        .api()
        .put(format!("{}/v1/bwlimit", daemon.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"bwlimit": "Mon-Sun 00:00,7MiB/s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 202);
    // Stopped (what was set is durable by then) and started again: kept.
    let stopped = run(blobway(&state).arg("stop"));
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    drop(daemon);
    let daemon = Daemon::start(&state, &[], &[]);
    let metrics = daemon.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        cap_of(&metrics),
        (7u64 << 20).to_string(),
        "kept across the restart"
    );
    drop(daemon);
    // A --bwlimit of the run itself wins over what was recorded.
    let daemon = Daemon::start(&state, &["--bwlimit", "5MiB/s"], &[]);
    let metrics = daemon.get("/metrics").await.text().await.unwrap();
    assert_eq!(cap_of(&metrics), (5u64 << 20).to_string());
}
