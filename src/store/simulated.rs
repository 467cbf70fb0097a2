//! A simulated network link in front of a destination, for `blobway demo`: every block and
//! small object crosses one shared link of a given bandwidth with a base latency, so a local
//! copy moves at a watchable pace and latency grows with concurrency as on a real link. With
//! chaos, a share of uploads fails (HTTP 500) and uploads beyond a number in flight are
//! throttled (503 ServerBusy) — so retries, failures and the concurrency controller can be seen
//! without a cloud account.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{
    BlockRef, Checksum, DestObject, ErrorClass, ObjectMeta, ObjectSink, PlannedBlock, SinkLimits,
    StoreError, StoreResult, Upload,
};

/// How the link behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkSettings {
    /// Bytes per second through the link, shared by every upload.
    pub bandwidth: f64,
    /// Added to every upload.
    pub latency: Duration,
    /// Share (0–1) of uploads that fail.
    pub chaos: f64,
    /// With chaos, uploads beyond this many in flight are throttled.
    pub throttle_above: u32,
}

/// A sink behind a simulated link.
pub struct SimulatedLink {
    inner: Arc<dyn ObjectSink>,
    settings: LinkSettings,
    next_free: Mutex<Instant>,
    in_flight: AtomicU32,
}

impl SimulatedLink {
    /// Puts `inner` behind a link with `settings`.
    pub fn new(inner: Arc<dyn ObjectSink>, settings: LinkSettings) -> Self {
        Self {
            inner,
            settings,
            next_free: Mutex::new(Instant::now()),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Sends `bytes` across the link: waits for its share of the bandwidth, or fails as chaos
    /// decides.
    async fn cross(&self, bytes: u64) -> StoreResult<()> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let result = self.cross_inner(bytes, in_flight).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn cross_inner(&self, bytes: u64, in_flight: u32) -> StoreResult<()> {
        let s = self.settings;
        if s.chaos > 0.0 {
            // Like a real store: it throttles when pushed too hard, and now and then an
            // upload fails on its own.
            if in_flight > s.throttle_above {
                tokio::time::sleep(s.latency).await;
                return Err(StoreError::new(
                    ErrorClass::Throttled,
                    Some(503),
                    "ServerBusy: the simulated link is overloaded (demo chaos)",
                )
                .with_retry_after(Some(Duration::from_millis(500))));
            }
            if rand::random::<f64>() < s.chaos {
                tokio::time::sleep(s.latency).await;
                return Err(StoreError::new(
                    ErrorClass::Transient,
                    Some(500),
                    "InternalError: the simulated link dropped the upload (demo chaos)",
                ));
            }
        }
        let transfer = Duration::from_secs_f64(bytes as f64 / s.bandwidth.max(1.0));
        let done = {
            let mut next = self.next_free.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + transfer;
            *next
        };
        tokio::time::sleep_until(done + s.latency).await;
        Ok(())
    }
}

#[async_trait]
impl ObjectSink for SimulatedLink {
    fn limits(&self) -> SinkLimits {
        self.inner.limits()
    }

    fn naming(&self) -> super::rules::Naming {
        self.inner.naming()
    }

    fn meta_rules(&self) -> super::rules::MetaRules {
        self.inner.meta_rules()
    }

    async fn prepare(&self) -> StoreResult<()> {
        self.inner.prepare().await
    }

    async fn begin(&self, upload: Upload<'_>, meta: &ObjectMeta) -> StoreResult<Option<String>> {
        self.inner.begin(upload, meta).await
    }

    async fn put_block(
        &self,
        upload: Upload<'_>,
        block: BlockRef<'_>,
        data: Bytes,
    ) -> StoreResult<()> {
        self.cross(data.len() as u64).await?;
        self.inner.put_block(upload, block, data).await
    }

    async fn missing_blocks(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
    ) -> StoreResult<Vec<u32>> {
        self.inner.missing_blocks(upload, blocks).await
    }

    async fn commit(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        tokio::time::sleep(self.settings.latency).await;
        self.inner.commit(upload, blocks, meta).await
    }

    async fn abort(&self, upload: Upload<'_>) -> StoreResult<()> {
        self.inner.abort(upload).await
    }

    async fn put_whole(
        &self,
        upload: Upload<'_>,
        data: Bytes,
        checksum: Checksum,
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        self.cross(data.len() as u64).await?;
        self.inner.put_whole(upload, data, checksum, meta).await
    }

    async fn head(&self, key: &str) -> StoreResult<Option<DestObject>> {
        self.inner.head(key).await
    }

    async fn list_existing(&self, prefix: &str) -> StoreResult<BTreeMap<String, DestObject>> {
        self.inner.list_existing(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    fn link(chaos: f64) -> (tempfile::TempDir, SimulatedLink) {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner: Arc<dyn ObjectSink> = Arc::new(LocalStore::new(dir.path()));
        let settings = LinkSettings {
            bandwidth: 1_000_000.0,
            latency: Duration::from_millis(10),
            chaos,
            throttle_above: 8,
        };
        (dir, SimulatedLink::new(inner, settings))
    }

    #[tokio::test(start_paused = true)]
    async fn uploads_share_the_bandwidth() {
        let (_dir, link) = link(0.0);
        let start = Instant::now();
        let (a, b) = tokio::join!(link.cross(500_000), link.cross(500_000));
        assert!(a.is_ok() && b.is_ok());
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1000),
            "two halves of a second each, one after the other: {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn chaos_fails_a_share_of_uploads_and_throttles_a_crowd() {
        let (_dir, link) = link(0.5);
        let mut failed = 0;
        for _ in 0..400 {
            if let Err(e) = link.cross(10).await {
                assert_eq!(e.class, ErrorClass::Transient);
                failed += 1;
            }
        }
        assert!((150..250).contains(&failed), "about half fail: {failed}");
        let crowd = link.settings.throttle_above as usize + 20;
        let results = futures::future::join_all((0..crowd).map(|_| link.cross(10))).await;
        let throttled = results
            .iter()
            .filter(|r| r.as_ref().is_err_and(|e| e.class == ErrorClass::Throttled))
            .count();
        assert!(throttled >= 20, "{throttled} of {crowd} throttled");
    }
}
