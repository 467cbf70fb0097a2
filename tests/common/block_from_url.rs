//! A test double of Azure's copy-from-URL calls, in front of Azurite (which answers them 501):
//! Put Block From URL (`comp=block` with `x-ms-copy-source`, honouring `x-ms-source-range`)
//! and Put Blob From URL (`x-ms-copy-source` without `comp`) fetch the source URL themselves
//! and pass the bytes on to Azurite as a plain Put Block / Put Blob; the answer carries
//! `x-ms-content-crc64` of what was read, as Azure's does. A source that fails is answered as
//! Azure answers it: `CannotVerifyCopySource` with the source's status and error code in
//! `x-ms-copy-source-status-code` / `x-ms-copy-source-error-code`. Every other request is
//! forwarded unchanged. Faults on demand: the first N copies answered as an expired
//! signature (source 403) or a throttled source (source 503 SlowDown). Source URLs on
//! `*.amazonaws.com` (AzCopy's signed URLs) can be read from a local S3 emulator instead,
//! with the original Host header, as S3 itself would be read.
//!
//! Assumptions about real Azure, from its REST reference: the failure status mirrors the
//! source's for 4xx, and is 503 for a throttled source.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the double did, and the faults it still owes.
#[derive(Default)]
pub struct DoubleStats {
    /// Copy requests answered (each attempt).
    pub copies: AtomicU64,
    /// Bytes of request bodies blobway sent (through the double, to Azurite).
    pub bytes_in: AtomicU64,
    /// Bytes the double read from source URLs.
    pub bytes_fetched: AtomicU64,
    /// The next this many copies are answered as an expired signature.
    pub expire_next: AtomicU32,
    /// The next this many copies are answered as a throttled source.
    pub throttle_next: AtomicU32,
}

/// A running double.
pub struct BlockFromUrl {
    /// The blob endpoint to give blobway (Azurite's, through the double).
    pub url: String,
    /// What it did.
    pub stats: Arc<DoubleStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BlockFromUrl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

struct Shared {
    upstream: String,
    /// Where `*.amazonaws.com` source URLs are read from (an S3 emulator's origin).
    s3_alias: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
    stats: Arc<DoubleStats>,
}

impl BlockFromUrl {
    /// Starts the double in front of Azurite at `upstream` (its origin).
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(upstream, None).await
    }

    /// Starts the double, reading source URLs on `*.amazonaws.com` from the S3 emulator at
    /// `s3_origin`.
    pub async fn start_for_amazon_hosts(upstream: &str, s3_origin: &str) -> Self {
        Self::start_with(upstream, Some(s3_origin.trim_end_matches('/').to_string())).await
    }

    async fn start_with(upstream: &str, s3_alias: Option<String>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stats = Arc::new(DoubleStats::default());
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            s3_alias,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stats: stats.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, stats, task }
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Azure's answer to a copy whose source failed.
fn source_failed(status: u16, source_code: &str) -> Response<Body> {
    let azure_status = if status == 429 || status >= 500 {
        503
    } else {
        status
    };
    let xml = format!(
        "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>CannotVerifyCopySource</Code><Message>{source_code}</Message></Error>"
    );
    Response::builder()
        .status(azure_status)
        .header("content-type", "application/xml")
        .header("x-ms-error-code", "CannotVerifyCopySource")
        .header("x-ms-copy-source-status-code", status.to_string())
        .header("x-ms-copy-source-error-code", source_code)
        .body(full(xml))
        .expect("response")
}

/// The `<Code>` of an S3 error body.
fn s3_code(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split("<Code>")
        .nth(1)
        .and_then(|rest| rest.split("</Code>").next())
        .unwrap_or("")
        .to_string()
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    shared
        .stats
        .bytes_in
        .fetch_add(body.len() as u64, Ordering::SeqCst);
    let source = parts
        .headers
        .get("x-ms-copy-source")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut fetched_crc = None;
    let body = match source {
        None => body,
        Some(source) => {
            shared.stats.copies.fetch_add(1, Ordering::SeqCst);
            if take(&shared.stats.expire_next) {
                return Ok(source_failed(403, "AccessDenied"));
            }
            if take(&shared.stats.throttle_next) {
                return Ok(source_failed(503, "SlowDown"));
            }
            let mut get = match (source.parse::<hyper::Uri>(), &shared.s3_alias) {
                (Ok(uri), Some(alias))
                    if uri.host().is_some_and(|h| h.ends_with(".amazonaws.com")) =>
                {
                    let path = uri.path_and_query().map_or("/", |p| p.as_str());
                    Request::get(format!("{alias}{path}"))
                        .header("host", uri.host().unwrap_or_default())
                }
                _ => Request::get(&source),
            };
            if let Some(range) = parts.headers.get("x-ms-source-range") {
                get = get.header("range", range);
            }
            let get = get
                .body(Full::new(Bytes::new()))
                .map_err(std::io::Error::other)?;
            let answer = match shared.client.request(get).await {
                Ok(answer) => answer,
                Err(_) => return Ok(source_failed(500, "ConnectionFailed")),
            };
            let status = answer.status().as_u16();
            let bytes = answer
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            if !(200..300).contains(&status) {
                return Ok(source_failed(status, &s3_code(&bytes)));
            }
            shared
                .stats
                .bytes_fetched
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
            fetched_crc = Some(blobway::store::crc64(&bytes));
            bytes
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut upstream = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{path}", shared.upstream));
    for (name, value) in &parts.headers {
        let name = name.as_str();
        let dropped = matches!(
            name,
            "connection" | "keep-alive" | "transfer-encoding" | "content-length"
        ) || name.starts_with("x-ms-copy-source")
            || name.starts_with("x-ms-source-");
        if !dropped {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = upstream
        .header("content-length", body.len().to_string())
        .body(Full::new(body))
        .map_err(std::io::Error::other)?;
    let response = shared
        .client
        .request(upstream)
        .await
        .map_err(std::io::Error::other)?;
    let (mut parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    if let Some(crc) = fetched_crc {
        let encoded = base64::engine::general_purpose::STANDARD.encode(crc.to_le_bytes());
        parts.headers.insert(
            "x-ms-content-crc64",
            encoded.parse().map_err(std::io::Error::other)?,
        );
    }
    Ok(Response::from_parts(parts, full(body)))
}
