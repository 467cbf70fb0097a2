//! What a store reports when something fails: an [`ErrorClass`] that decides what happens next,
//! and a [`StoreError`] whose message names the fix and never carries a secret.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::redact::redact;

/// What kind of failure a store reported, which decides what happens next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorClass {
    /// The store asked us to slow down (429, 503 SlowDown / ServerBusy): retry, and tell the
    /// concurrency controller at once.
    Throttled,
    /// A passing fault (timeout, reset, 500, stalled or short body): retry with backoff.
    Transient,
    /// The source object is no longer the version that was planned (412): fail the file.
    SourceChanged,
    /// The bucket, container or object does not exist.
    NotFound,
    /// The credentials were rejected.
    Auth,
    /// The credentials are valid but not allowed to do this.
    Permission,
    /// The request can never succeed as made (bad name, too large, unsupported).
    Invalid,
    /// The destination ran out of space or quota.
    Capacity,
    /// The destination no longer knows the upload session (expired or aborted): the object's
    /// upload starts over with a new one.
    UploadLost,
    /// The destination already holds an object under this name and the commit was made on
    /// condition that it does not (`--if-exists skip|fail`): 412 / 409 to `If-None-Match: *`.
    Exists,
    /// The bytes copied disagree with the source's own checksum (its full-object
    /// CRC-64/NVME): nothing was committed; the object is copied again from the start.
    Damaged,
}

impl ErrorClass {
    /// True for the classes worth another attempt.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Throttled | ErrorClass::Transient | ErrorClass::Damaged
        )
    }

    /// True for the classes that will fail every other request of the job too, so the job
    /// stops at once instead of failing file by file.
    pub fn stops_job(self) -> bool {
        matches!(
            self,
            ErrorClass::Auth | ErrorClass::Permission | ErrorClass::Capacity
        )
    }

    /// Upper-case name used in summaries and the state database.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Throttled => "THROTTLED",
            ErrorClass::Transient => "TRANSIENT",
            ErrorClass::SourceChanged => "SOURCE_CHANGED",
            ErrorClass::NotFound => "NOT_FOUND",
            ErrorClass::Auth => "AUTH",
            ErrorClass::Permission => "PERMISSION",
            ErrorClass::Invalid => "INVALID",
            ErrorClass::Capacity => "CAPACITY",
            ErrorClass::UploadLost => "UPLOAD_LOST",
            ErrorClass::Exists => "EXISTS",
            ErrorClass::Damaged => "DAMAGED",
        }
    }
}

/// A failure reported by a store, already stripped of secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreError {
    /// What kind of failure this is.
    pub class: ErrorClass,
    /// The HTTP status, when the store answered.
    pub status: Option<u16>,
    /// What happened and, for fatal classes, how to fix it. Never contains secrets.
    pub message: String,
    /// How long the store asked us to wait before trying again.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// A server-side copy request the stores refused as such (the source denied the
    /// destination's read, the server has no such call): the route, not this object, failed.
    #[serde(skip)]
    pub copy_refused: bool,
}

impl StoreError {
    /// Makes an error; the message is redacted here, once, for every store.
    pub fn new(class: ErrorClass, status: Option<u16>, message: impl AsRef<str>) -> Self {
        Self {
            class,
            status,
            message: redact(message.as_ref()),
            retry_after: None,
            copy_refused: false,
        }
    }

    /// Marks the answer to a server-side copy request as a refusal of the route.
    pub fn refusing_copy(mut self) -> Self {
        self.copy_refused = true;
        self
    }

    /// A transient failure without an HTTP status (connection reset, stall, short body).
    pub fn transient(message: impl AsRef<str>) -> Self {
        Self::new(ErrorClass::Transient, None, message)
    }

    /// Sets the delay the store asked for.
    pub fn with_retry_after(mut self, delay: Option<Duration>) -> Self {
        self.retry_after = delay;
        self
    }

    /// A conditional write (`--if-exists skip|fail`) refused because an object is there.
    pub fn exists(target: impl fmt::Display) -> Self {
        Self::new(
            ErrorClass::Exists,
            Some(412),
            format!(
                "{target} is already at the destination and this copy may not replace it \
                 (--if-exists skip|fail)"
            ),
        )
    }

    /// The message of a planned object that changed under us.
    pub fn source_changed(key: &str) -> Self {
        Self::new(
            ErrorClass::SourceChanged,
            Some(412),
            format!(
                "source changed since planning: `{key}` no longer matches the version recorded \
                 when the job was planned; run the same `blobway copy` again to copy the new \
                 version"
            ),
        )
    }

    /// How a failed read of a planned object reads: gone (404) or no longer matching its
    /// version (412) both mean the source changed since planning.
    pub fn on_read(self, key: &str) -> Self {
        match (self.class, self.status) {
            (ErrorClass::SourceChanged, _) | (ErrorClass::NotFound, _) | (_, Some(412)) => {
                Self::source_changed(key)
            }
            _ => self,
        }
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = redact(&format!("{what}: {}", self.message));
        self
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{} (HTTP {status}): {}", self.class.name(), self.message),
            None => write!(f, "{}: {}", self.class.name(), self.message),
        }
    }
}

impl std::error::Error for StoreError {}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;
