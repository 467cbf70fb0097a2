//! A simulated network link in front of a destination, for `blobway demo`: every block and
//! small object crosses one shared link of a given bandwidth with a base latency, so a local
//! copy moves at a watchable pace and latency grows with concurrency as on a real link. With
//! chaos, a share of uploads fails (HTTP 500) and uploads beyond a number in flight are
//! throttled (503 ServerBusy) — so retries, failures and the concurrency controller can be seen
//! without a cloud account. The controller benchmark (`benches/controller.rs`) models its links
//! with it too: a cap per upload (a TCP window over its round trip), jitter from a seed, a
//! throttle without chaos, and a bandwidth that changes mid-run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{
    BlockRef, Checksum, DestObject, ErrorClass, ObjectMeta, ObjectSink, PlannedBlock, SinkLimits,
    StoreError, StoreResult, Upload,
};

/// The most of one upload the link carries before it carries a slice of another.
const SLICE: u64 = 1 << 20;

/// How the link behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkSettings {
    /// Bytes per second through the link, shared by every upload.
    pub bandwidth: f64,
    /// Added to every upload.
    pub latency: Duration,
    /// Bytes per second one upload gets at most (a TCP stream's window over its round
    /// trip); none: the whole link.
    pub per_upload: Option<f64>,
    /// Share (0–1) of uploads that fail.
    pub chaos: f64,
    /// Uploads beyond this many in flight are throttled.
    pub throttle_above: Option<u32>,
    /// Each upload's latency is longer by up to this share of it, at random.
    pub jitter: f64,
    /// Seeds the link's randomness (chaos and jitter), so a run can be repeated.
    pub seed: u64,
}

impl LinkSettings {
    /// A link of `bandwidth` bytes per second and `latency`, without caps, chaos or jitter.
    pub fn new(bandwidth: f64, latency: Duration) -> Self {
        Self {
            bandwidth,
            latency,
            per_upload: None,
            chaos: 0.0,
            throttle_above: None,
            jitter: 0.0,
            seed: 0,
        }
    }
}

/// A simulated link: what crosses it waits for its share of the bandwidth, or fails as chaos
/// or the throttle decide.
#[derive(Debug)]
pub struct Link {
    settings: LinkSettings,
    /// Bytes per second now (an `f64`'s bits): it may change mid-run.
    bandwidth: AtomicU64,
    next_free: Mutex<Instant>,
    in_flight: AtomicU32,
    carried: AtomicU64,
    rng: std::sync::Mutex<StdRng>,
}

/// Counts an upload out of the link however it ends (even dropped half-way).
struct Crossing<'a>(&'a AtomicU32);

impl Drop for Crossing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Link {
    /// A link with `settings`.
    pub fn new(settings: LinkSettings) -> Self {
        Self {
            settings,
            bandwidth: AtomicU64::new(settings.bandwidth.to_bits()),
            next_free: Mutex::new(Instant::now()),
            in_flight: AtomicU32::new(0),
            carried: AtomicU64::new(0),
            rng: std::sync::Mutex::new(StdRng::seed_from_u64(settings.seed)),
        }
    }

    /// Changes the link's bandwidth from now on (bytes per second).
    pub fn set_bandwidth(&self, bandwidth: f64) {
        self.bandwidth.store(bandwidth.to_bits(), Ordering::SeqCst);
    }

    /// Bytes the link has carried so far (slice by slice, as they cross).
    pub fn carried(&self) -> u64 {
        self.carried.load(Ordering::SeqCst)
    }

    /// A number in [0, 1) from the link's seeded randomness.
    fn random(&self) -> f64 {
        self.rng.lock().map_or(0.5, |mut rng| rng.random::<f64>())
    }

    /// Sends `bytes` across the link: waits for its share of the bandwidth, or fails as chaos
    /// or the throttle decide.
    pub async fn cross(&self, bytes: u64) -> StoreResult<()> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _out = Crossing(&self.in_flight);
        self.cross_inner(bytes, in_flight).await
    }

    async fn cross_inner(&self, bytes: u64, in_flight: u32) -> StoreResult<()> {
        let s = self.settings;
        let latency = s.latency.mul_f64(1.0 + s.jitter * self.random());
        // Like a real store: it throttles when pushed too hard, and now and then an upload
        // fails on its own.
        if s.throttle_above.is_some_and(|most| in_flight > most) {
            tokio::time::sleep(latency).await;
            return Err(StoreError::new(
                ErrorClass::Throttled,
                Some(503),
                "ServerBusy: the simulated link is overloaded",
            )
            .with_retry_after(Some(Duration::from_millis(500))));
        }
        if s.chaos > 0.0 && self.random() < s.chaos {
            tokio::time::sleep(latency).await;
            return Err(StoreError::new(
                ErrorClass::Transient,
                Some(500),
                "InternalError: the simulated link dropped the upload (demo chaos)",
            ));
        }
        // The link carries uploads a slice at a time, each slice queued behind those of the
        // other uploads (so they share it, and a change of bandwidth shows at once); one
        // upload alone gets at most its own cap.
        let slow = 1.0 + s.jitter * self.random();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(SLICE);
            left -= n;
            let bandwidth = f64::from_bits(self.bandwidth.load(Ordering::SeqCst)).max(1.0);
            let transfer = Duration::from_secs_f64(n as f64 / bandwidth);
            let own = s.per_upload.map_or(Duration::ZERO, |cap| {
                Duration::from_secs_f64(n as f64 * slow / cap.max(1.0))
            });
            let now = Instant::now();
            let done = {
                let mut next = self.next_free.lock().await;
                let start = (*next).max(now);
                *next = start + transfer;
                *next
            };
            tokio::time::sleep_until(done.max(now + own)).await;
            self.carried.fetch_add(n, Ordering::SeqCst);
        }
        tokio::time::sleep(latency).await;
        Ok(())
    }
}

/// A sink behind a simulated link.
pub struct SimulatedLink {
    inner: Arc<dyn ObjectSink>,
    link: Link,
}

impl SimulatedLink {
    /// Puts `inner` behind a link with `settings`.
    pub fn new(inner: Arc<dyn ObjectSink>, settings: LinkSettings) -> Self {
        Self {
            inner,
            link: Link::new(settings),
        }
    }

    /// The link itself.
    pub fn link(&self) -> &Link {
        &self.link
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
        self.link.cross(data.len() as u64).await?;
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
        tokio::time::sleep(self.link.settings.latency).await;
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
        self.link.cross(data.len() as u64).await?;
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
            chaos,
            throttle_above: (chaos > 0.0).then_some(8),
            ..LinkSettings::new(1_000_000.0, Duration::from_millis(10))
        };
        (dir, SimulatedLink::new(inner, settings))
    }

    #[tokio::test(start_paused = true)]
    async fn uploads_share_the_bandwidth() {
        let (_dir, link) = link(0.0);
        let start = Instant::now();
        let (a, b) = tokio::join!(link.link().cross(500_000), link.link().cross(500_000));
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
            if let Err(e) = link.link().cross(10).await {
                assert_eq!(e.class, ErrorClass::Transient);
                failed += 1;
            }
        }
        assert!((150..250).contains(&failed), "about half fail: {failed}");
        let crowd = 8 + 20;
        let results = futures::future::join_all((0..crowd).map(|_| link.link().cross(10))).await;
        let throttled = results
            .iter()
            .filter(|r| r.as_ref().is_err_and(|e| e.class == ErrorClass::Throttled))
            .count();
        assert!(throttled >= 20, "{throttled} of {crowd} throttled");
    }
}
