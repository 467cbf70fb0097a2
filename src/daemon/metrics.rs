//! `/metrics`: the daemon in the Prometheus text format, every name prefixed `blobway_`.
//! Gauges (objects and bytes by state, work in flight, the concurrency limit, throughput,
//! memory) are read from the engine's latest snapshot when scraped; counters (bytes moved,
//! chunk latency, errors by class, throttles, controller decisions) count the events the hub
//! sees; the hub's own (clients attached, resyncs) are read from it.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::engine::{Event, Snapshot};
use crate::store::ErrorClass;

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    objects: IntGaugeVec,
    bytes: IntGaugeVec,
    in_flight: IntGauge,
    bytes_in_flight: IntGauge,
    objects_held: IntGauge,
    memory_budget: IntGauge,
    limit: IntGauge,
    adaptive: IntGauge,
    bwlimit: IntGauge,
    throughput: IntGauge,
    clients: IntGauge,
    resyncs: IntGauge,
    moved: IntCounter,
    latency: Histogram,
    errors: IntCounterVec,
    throttles: IntCounter,
    decisions: IntCounterVec,
    workers: IntGaugeVec,
    worker_chunks: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("a valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let gauges = |name: &str, help: &str, label: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("a valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let counters = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("a valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let errors = counters(
            "blobway_errors_total",
            "Failed attempts, by error class.",
            "class",
        );
        let decisions = counters(
            "blobway_controller_decisions_total",
            "Changes of the concurrency limit, by reason.",
            "decision",
        );
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "blobway_chunk_latency_seconds",
                "Time from a chunk's start to the destination's acknowledgement.",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )
        .expect("a valid metric");
        registry
            .register(Box::new(latency.clone()))
            .expect("registered once");
        // Every family shows from the first scrape, at zero.
        for class in [
            ErrorClass::Throttled,
            ErrorClass::Transient,
            ErrorClass::SourceChanged,
            ErrorClass::NotFound,
            ErrorClass::Auth,
            ErrorClass::Permission,
            ErrorClass::Invalid,
            ErrorClass::Capacity,
            ErrorClass::UploadLost,
            ErrorClass::Exists,
            ErrorClass::Damaged,
        ] {
            errors.with_label_values(&[class.name()]);
        }
        for decision in [
            "throttle_cut",
            "error_cut",
            "increase",
            "operator",
            "ease",
            "probe",
        ] {
            decisions.with_label_values(&[decision]);
        }
        Metrics {
            errors,
            decisions,
            workers: gauges(
                "blobway_workers",
                "Workers of a shared state, by state (running, quarantined, expired, left).",
                "state",
            ),
            worker_chunks: gauges(
                "blobway_worker_chunks_moved",
                "Chunks each worker of a shared state moved since it joined, by its last heartbeat.",
                "worker",
            ),
            objects: gauges(
                "blobway_objects",
                "Objects of the jobs known, by state (done, skipped, failed, pending).",
                "state",
            ),
            bytes: gauges(
                "blobway_bytes",
                "Bytes of the jobs known, by state (done, pending); skipped objects excluded.",
                "state",
            ),
            in_flight: gauge(
                "blobway_chunks_in_flight",
                "Units of work (chunks, begins, commits) in flight.",
            ),
            bytes_in_flight: gauge(
                "blobway_memory_in_flight_bytes",
                "Chunk buffer bytes in flight.",
            ),
            objects_held: gauge(
                "blobway_objects_held",
                "Objects held in memory by the running jobs' windows.",
            ),
            memory_budget: gauge("blobway_memory_budget_bytes", "The memory budget."),
            limit: gauge("blobway_concurrency_limit", "The concurrency limit."),
            adaptive: gauge(
                "blobway_concurrency_adaptive",
                "1 when the adaptive controller moves the limit, 0 when it is manual.",
            ),
            bwlimit: gauge(
                "blobway_bwlimit_bytes_per_second",
                "The bandwidth cap in force now, in bytes per second (0: no cap).",
            ),
            throughput: gauge(
                "blobway_throughput_bytes_per_second",
                "Bytes per second over the last seconds.",
            ),
            clients: gauge("blobway_clients", "Clients attached to the event stream."),
            resyncs: gauge(
                "blobway_client_resyncs",
                "Times a client that fell behind was resynced with a snapshot.",
            ),
            moved: counter(
                "blobway_transferred_bytes_total",
                "Bytes of chunks acknowledged by the destination.",
            ),
            latency,

            throttles: counter(
                "blobway_throttles_total",
                "Answers asking to slow down (429, 503 SlowDown/ServerBusy).",
            ),

            registry,
        }
    }

    /// Counts what `event` says.
    pub fn observe(&self, event: &Event) {
        match event {
            Event::ChunkCompleted {
                bytes, latency_ms, ..
            } => {
                self.moved.inc_by(*bytes);
                self.latency.observe(*latency_ms as f64 / 1000.0);
            }
            Event::ChunkRetry { error, .. } | Event::ChunkFailed { error, .. } => {
                self.errors.with_label_values(&[error.class.name()]).inc();
                if error.class == ErrorClass::Throttled {
                    self.throttles.inc();
                }
            }
            Event::ConcurrencyChanged { decision, .. } => {
                let name = serde_json::to_value(decision)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                self.decisions.with_label_values(&[name.as_str()]).inc();
            }
            _ => {}
        }
    }

    /// The text a scrape gets, with the gauges as `snapshot` and the hub show them.
    pub fn render(&self, snapshot: &Snapshot, clients: usize, resyncs: u64) -> String {
        let p: crate::state::JobProgress = snapshot.jobs.iter().map(|job| job.progress).sum();
        let pending = p.files_total - p.files_done - p.files_skipped - p.files_failed;
        for (state, n) in [
            ("done", p.files_done),
            ("skipped", p.files_skipped),
            ("failed", p.files_failed),
            ("pending", pending),
        ] {
            self.objects.with_label_values(&[state]).set(n as i64);
        }
        self.bytes
            .with_label_values(&["done"])
            .set(p.bytes_done as i64);
        self.bytes
            .with_label_values(&["pending"])
            .set(p.bytes_total.saturating_sub(p.bytes_done) as i64);
        self.in_flight.set(i64::from(snapshot.in_flight));
        self.bytes_in_flight.set(snapshot.bytes_in_flight as i64);
        self.objects_held.set(snapshot.objects_held as i64);
        self.memory_budget.set(snapshot.memory_budget as i64);
        self.limit.set(i64::from(snapshot.limit));
        self.adaptive.set(i64::from(snapshot.adaptive));
        self.bwlimit.set(
            snapshot
                .bw_rate
                .map_or(0, |r| i64::try_from(r).unwrap_or(i64::MAX)),
        );
        self.throughput.set(snapshot.rate as i64);
        self.workers.reset();
        self.worker_chunks.reset();
        for state in ["running", "quarantined", "expired", "left"] {
            let n = snapshot.workers.iter().filter(|w| w.state == state).count();
            if !snapshot.workers.is_empty() {
                self.workers.with_label_values(&[state]).set(n as i64);
            }
        }
        for worker in &snapshot.workers {
            self.worker_chunks
                .with_label_values(&[worker.name.as_str()])
                .set(worker.chunks_moved);
        }
        self.clients.set(clients as i64);
        self.resyncs.set(resyncs as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Decision;
    use crate::state::ErrorRecord;

    #[test]
    fn events_are_counted_and_gauges_follow_the_snapshot() {
        let metrics = Metrics::new();
        metrics.observe(&Event::ChunkCompleted {
            job: 1,
            key: "k".into(),
            file: 0,
            chunk: 0,
            bytes: 1000,
            latency_ms: 40,
        });
        let error = ErrorRecord {
            class: ErrorClass::Throttled,
            status: Some(503),
            message: String::new(),
            at_ms: 0,
        };
        metrics.observe(&Event::ChunkRetry {
            job: 1,
            key: "k".into(),
            file: 0,
            chunk: 1,
            attempt: 1,
            delay_ms: 5,
            error,
        });
        metrics.observe(&Event::ConcurrencyChanged {
            limit: 8,
            adaptive: true,
            decision: Decision::ThrottleCut,
            reason: String::new(),
        });
        let snapshot = Snapshot {
            limit: 8,
            in_flight: 3,
            bw_rate: Some(20 << 20),
            ..Snapshot::default()
        };
        let text = metrics.render(&snapshot, 2, 1);
        for line in [
            "blobway_transferred_bytes_total 1000",
            "blobway_errors_total{class=\"THROTTLED\"} 1",
            "blobway_throttles_total 1",
            "blobway_controller_decisions_total{decision=\"throttle_cut\"} 1",
            "blobway_concurrency_limit 8",
            "blobway_bwlimit_bytes_per_second 20971520",
            "blobway_chunks_in_flight 3",
            "blobway_clients 2",
            "blobway_chunk_latency_seconds_bucket{le=\"0.05\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
