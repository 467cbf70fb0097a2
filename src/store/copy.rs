//! Server-side copy: how a chunk may go store to store without passing through blobway. A
//! source offers a [`CopyOrigin`] (how a destination names it), a destination says whether it
//! copies from that origin, and [`choose_route`] decides from the job's [`TransferMode`] how
//! the job's chunks travel — the one rule for it, pure, so it is tested on its own.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::{ErrorClass, StoreError};

/// How a job's bytes travel (`--transfer`), recorded with the job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TransferMode {
    /// Store to store where the route allows, else through blobway; a copy the stores refuse
    /// (a bucket policy, a server that cannot) falls back to blobway for the rest of the job.
    #[default]
    Auto,
    /// Always through blobway: read from the source, written to the destination.
    Client,
    /// Store to store only: a route that cannot is refused at planning, and an object whose
    /// copy the stores refuse fails with the reason.
    Server,
}

impl TransferMode {
    /// The mode of a job recorded before the mode was kept: its bytes went through blobway.
    pub fn recorded_before() -> Self {
        TransferMode::Client
    }
}

/// A source store as a destination names it in a server-side copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyOrigin {
    /// An S3 bucket on an endpoint (the destination reads it with its own credentials).
    S3 {
        /// The endpoint the source talks to.
        endpoint: String,
        /// The source bucket.
        bucket: String,
    },
    /// An Azure storage account (read through a SAS-signed URL).
    Azure {
        /// The account's blob endpoint.
        endpoint: String,
    },
}

/// How a destination copies from an origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyWay {
    /// By naming the source object (S3 → S3 on one endpoint: `x-amz-copy-source`), pinned to
    /// its version by the store itself.
    Native,
    /// By reading a URL blobway signs for each attempt ([`super::ObjectSource::presign_get`];
    /// Azure's Put Block From URL). The store cannot pin the version: blobway checks it before
    /// the commit.
    Url,
}

/// One range of a source object to copy store to store, pinned to the planned version.
#[derive(Clone, Copy)]
pub struct CopyFrom<'a> {
    /// Where the object lives.
    pub origin: &'a CopyOrigin,
    /// Its key.
    pub key: &'a str,
    /// The version every copy is pinned to (ETag, If-Match).
    pub etag: &'a str,
    /// The store's ID of that version, where it keeps versions: the copy reads exactly it.
    pub version: Option<&'a str>,
    /// The bytes this copy covers.
    pub range: &'a Range<u64>,
    /// A signed GET of the object for [`CopyWay::Url`]: a bearer secret, never shown.
    pub url: Option<&'a str>,
}

impl std::fmt::Debug for CopyFrom<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyFrom")
            .field("origin", self.origin)
            .field("key", &self.key)
            .field("etag", &self.etag)
            .field("version", &self.version)
            .field("range", self.range)
            .field("url", &self.url.map(|_| "<signed>"))
            .finish()
    }
}

/// The longest copy-source URL a destination takes (Azure: `x-ms-copy-source`, 2 KiB).
pub const MAX_COPY_SOURCE_URL: usize = 2048;

/// How a job's chunks travel, as [`choose_route`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Through blobway.
    Client,
    /// Store to store; `fallback`: a copy the stores refuse goes through blobway instead.
    Server {
        /// Whether a refused copy falls back to blobway (`auto`) or fails (`server`).
        fallback: bool,
    },
}

/// Decides how a job's chunks travel: `offered` is what the source offers for a server-side
/// copy (None: it cannot be read that way), `accepted` whether the destination copies from
/// it. `--transfer server` on a route that cannot is refused with the reason.
pub fn choose_route(
    mode: TransferMode,
    offered: Option<&CopyOrigin>,
    accepted: bool,
) -> Result<Route, String> {
    let possible = offered.is_some() && accepted;
    match mode {
        TransferMode::Client => Ok(Route::Client),
        TransferMode::Auto if possible => Ok(Route::Server { fallback: true }),
        TransferMode::Auto => Ok(Route::Client),
        TransferMode::Server if possible => Ok(Route::Server { fallback: false }),
        TransferMode::Server => Err(match offered {
            None => "--transfer server: this source cannot be copied store to store (S3 can: \
                     to Azure, or to S3 on the same endpoint; Azure with an account key or \
                     SAS can, to Azure); use --transfer auto or client"
                .to_string(),
            Some(CopyOrigin::Azure { .. }) => "--transfer server: only an Azure destination \
                                               copies from an Azure source; use --transfer \
                                               auto or client"
                .to_string(),
            Some(CopyOrigin::S3 { .. }) => "--transfer server: this destination cannot copy \
                                            from this S3 source (an S3 destination on the same \
                                            endpoint can); use --transfer auto or client"
                .to_string(),
        }),
    }
}

/// [`choose_route`] between two stores.
pub fn route_between(
    mode: TransferMode,
    source: &dyn super::ObjectSource,
    sink: &dyn super::ObjectSink,
) -> Result<Route, String> {
    let offered = source.copy_origin();
    let accepted = offered
        .as_ref()
        .is_some_and(|origin| sink.copies_from(origin).is_some());
    choose_route(mode, offered.as_ref(), accepted)
}

/// Whether a failed server-side copy means the stores will not copy this way at all: the
/// sink marked the copy request's own answer a refusal ([`StoreError::refusing_copy`]: access
/// denied to the read of the source, a call the server does not implement). Anything else —
/// a fault, a throttle, a changed source, metadata the destination refuses — is not.
pub fn refuses_route(error: &StoreError) -> bool {
    error.copy_refused
}

/// What a store answers when asked for a server-side copy it does not do.
pub fn unsupported(what: &str) -> StoreError {
    StoreError::new(ErrorClass::Invalid, None, what)
}

/// The error a `--transfer server` copy the stores refused fails its object with (not the
/// job: the rest may copy).
pub fn refused(error: &StoreError) -> StoreError {
    StoreError::new(
        ErrorClass::Invalid,
        error.status,
        format!(
            "the stores refused a server-side copy ({}); --transfer server does not fall back \
             to copying through blobway (--transfer auto does)",
            error.message
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3() -> CopyOrigin {
        CopyOrigin::S3 {
            endpoint: "http://127.0.0.1:9000".into(),
            bucket: "src".into(),
        }
    }

    #[test]
    fn client_mode_never_copies_server_side() {
        for (offered, accepted) in [(None, false), (Some(s3()), false), (Some(s3()), true)] {
            assert_eq!(
                choose_route(TransferMode::Client, offered.as_ref(), accepted),
                Ok(Route::Client)
            );
        }
    }

    #[test]
    fn auto_copies_server_side_only_where_both_ends_can_and_falls_back() {
        assert_eq!(
            choose_route(TransferMode::Auto, Some(&s3()), true),
            Ok(Route::Server { fallback: true })
        );
        assert_eq!(
            choose_route(TransferMode::Auto, Some(&s3()), false),
            Ok(Route::Client)
        );
        assert_eq!(
            choose_route(TransferMode::Auto, None, true),
            Ok(Route::Client)
        );
    }

    #[test]
    fn server_mode_is_refused_with_the_reason_where_the_route_cannot() {
        assert_eq!(
            choose_route(TransferMode::Server, Some(&s3()), true),
            Ok(Route::Server { fallback: false })
        );
        let no_source = choose_route(TransferMode::Server, None, true).expect_err("refused");
        assert!(no_source.contains("this source cannot"), "{no_source}");
        let no_sink = choose_route(TransferMode::Server, Some(&s3()), false).expect_err("refused");
        assert!(no_sink.contains("this destination cannot"), "{no_sink}");
        assert!(no_sink.contains("--transfer auto"), "{no_sink}");
    }

    #[test]
    fn refusals_are_told_from_faults_and_changed_sources() {
        let denied =
            StoreError::new(ErrorClass::Permission, Some(403), "AccessDenied").refusing_copy();
        let unimplemented =
            StoreError::new(ErrorClass::Transient, Some(501), "NotImplemented").refusing_copy();
        let bad_metadata = StoreError::new(ErrorClass::Invalid, None, "metadata refused");
        let destination_denied = StoreError::new(ErrorClass::Permission, Some(403), "HEAD");
        assert!(!refuses_route(&bad_metadata), "an object's own failure");
        assert!(!refuses_route(&destination_denied), "not the copy's answer");
        let slow = StoreError::new(ErrorClass::Throttled, Some(503), "SlowDown");
        let changed = StoreError::source_changed("k");
        let reset = StoreError::transient("connection reset");
        assert!(refuses_route(&denied));
        assert!(refuses_route(&unimplemented));
        assert!(!refuses_route(&slow));
        assert!(!refuses_route(&changed));
        assert!(!refuses_route(&reset));
        let failed = refused(&denied);
        assert_eq!(
            failed.class,
            ErrorClass::Invalid,
            "fails the object, not the job"
        );
        assert!(failed.message.contains("AccessDenied"));
    }
}
