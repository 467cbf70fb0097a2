//! The client end of the daemon's API over its Unix socket (HTTP/1 on hyper): what every
//! command uses when a daemon serves its state file, and how a daemon is started in the
//! background when a command needs one and none runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::{PROTOCOL, Version};

/// How long a command waits for a daemon it started to answer.
const START_WAIT: Duration = Duration::from_secs(15);

/// A connection to the daemon at a socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

/// What the daemon answered.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON, or the daemon's error as an error.
    pub fn json<T: DeserializeOwned>(self) -> anyhow::Result<T> {
        self.ok()?;
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// An error carrying the daemon's message unless the status is a success.
    pub fn ok(&self) -> anyhow::Result<()> {
        if self.status.is_success() {
            return Ok(());
        }
        let message = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
        anyhow::bail!("{message}")
    }
}

impl Client {
    /// The daemon at `socket` (which may not be running).
    pub fn at(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    /// The daemon serving `state`, if one runs and speaks this protocol.
    pub async fn find(state: &Path) -> anyhow::Result<Option<Client>> {
        let client = Client::at(&super::socket::socket_path(state));
        match client.version().await {
            Ok(v) if v.protocol == PROTOCOL => Ok(Some(client)),
            Ok(v) => anyhow::bail!(
                "the daemon serving this state file (pid {}) is blobway {} speaking protocol \
                 {}, this is blobway {} speaking protocol {PROTOCOL}; stop it (`blobway stop`) \
                 and run the same version",
                v.pid,
                v.version,
                v.protocol,
                env!("CARGO_PKG_VERSION")
            ),
            Err(_) => Ok(None),
        }
    }

    /// The daemon serving `state`, started in the background if none runs: detached from the
    /// terminal (a session of its own, no controlling terminal, output to the log), so it
    /// survives the shell that started it.
    pub async fn find_or_start(
        location: &crate::state::StateLocation,
        serve_args: &[String],
    ) -> anyhow::Result<Client> {
        let state = &location.anchor();
        if let Some(client) = Client::find(state).await? {
            return Ok(client);
        }
        let exe = std::env::current_exe().context("cannot find the blobway binary")?;
        let mut command = std::process::Command::new(exe);
        // A database's URL (with its password) goes through the environment only.
        let (arg, env) = location.for_child();
        if let Some(path) = arg {
            command.arg("--state").arg(path);
        }
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        command
            .arg("serve")
            .arg("--detached")
            .args(serve_args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = command.spawn().context("cannot start the daemon")?;
        let deadline = tokio::time::Instant::now() + START_WAIT;
        let mut exited = None;
        loop {
            // Another command may have started one at the same moment (ours then exits,
            // finding the state file taken): whichever answers serves.
            if let Some(client) = Client::find(state).await? {
                return Ok(client);
            }
            if exited.is_none() {
                exited = child.try_wait().ok().flatten();
            }
            if tokio::time::Instant::now() > deadline {
                match exited {
                    Some(status) => anyhow::bail!(
                        "the daemon exited ({status}); run `blobway serve` to see why"
                    ),
                    None => anyhow::bail!("the daemon did not answer within {START_WAIT:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The socket it talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn version(&self) -> anyhow::Result<Version> {
        self.request(Method::GET, "/v1/version", None::<&()>)
            .await?
            .json()
    }

    /// Sends one request; `body` goes as JSON.
    pub async fn request<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<Answer> {
        let stream = super::socket::connect(&self.socket)
            .await
            .with_context(|| format!("cannot reach the daemon at {}", self.socket.display()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let body = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body)?),
            None => Bytes::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "blobway")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer { status, body })
    }
}
