//! Per-app proxy counters and a latency histogram as plain atomics, and a snapshot of them.
//! The metrics exporter turns snapshots into Prometheus series; the autoscaler reads
//! `requests_total` (rate: [`MetricsSnapshot::rps_since`]) and `in_flight` (concurrency).
//! Recording never blocks and never allocates.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds of the latency buckets, in microseconds (a last `+Inf` bucket follows).
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

const CODES: usize = 600;

/// Live counters of one app.
#[derive(Debug)]
pub struct AppMetrics {
    requests: AtomicU64,
    codes: Box<[AtomicU64]>,
    in_flight: AtomicI64,
    waiting: AtomicI64,
    no_backend: AtomicU64,
    upstream_errors: AtomicU64,
    connections: AtomicU64,
    open_connections: AtomicI64,
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Default for AppMetrics {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            codes: (0..CODES).map(|_| AtomicU64::new(0)).collect(),
            in_flight: AtomicI64::new(0),
            waiting: AtomicI64::new(0),
            no_backend: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open_connections: AtomicI64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

impl AppMetrics {
    /// A request (HTTP) or a connection (TCP mode) started.
    pub fn start(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// The response status of a request (HTTP mode).
    pub fn status(&self, code: u16) {
        if let Some(c) = self.codes.get(usize::from(code)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request or connection ended after `elapsed`.
    pub fn finish(&self, elapsed: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// A request (or connection) starts waiting for a backend; it stops when the returned
    /// guard drops.
    pub fn wait(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(&self.waiting)
    }

    /// Answered 503 because no backend was in rotation.
    pub fn no_backend(&self) {
        self.no_backend.fetch_add(1, Ordering::Relaxed);
    }

    /// A backend could not be reached or broke off (answered 502/504).
    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection was accepted.
    pub fn conn_open(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection closed.
    pub fn conn_close(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy (each counter read once; they may be a few requests apart).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let by_code = self
            .codes
            .iter()
            .enumerate()
            .filter_map(|(code, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then(|| (u16::try_from(code).unwrap_or(0), n))
            })
            .collect();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            buckets.push((LATENCY_BUCKETS_US.get(i).copied(), cumulative));
        }
        MetricsSnapshot {
            requests_total: self.requests.load(Ordering::Relaxed),
            by_code,
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0).unsigned_abs(),
            waiting: self.waiting.load(Ordering::Relaxed).max(0).unsigned_abs(),
            no_backend_total: self.no_backend.load(Ordering::Relaxed),
            upstream_errors_total: self.upstream_errors.load(Ordering::Relaxed),
            connections_total: self.connections.load(Ordering::Relaxed),
            connections_open: self
                .open_connections
                .load(Ordering::Relaxed)
                .max(0)
                .unsigned_abs(),
            latency: Histogram {
                buckets,
                sum_us: self.latency_sum_us.load(Ordering::Relaxed),
                count: cumulative,
            },
        }
    }
}

/// Counts one waiting request until dropped.
#[derive(Debug)]
pub struct Waiting<'a>(&'a AtomicI64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A latency histogram: cumulative counts per upper bound (`None` = +Inf), in microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Histogram {
    /// (upper bound in µs or +Inf, requests at or under it).
    pub buckets: Vec<(Option<u64>, u64)>,
    /// Sum of all latencies, µs.
    pub sum_us: u64,
    /// Finished requests.
    pub count: u64,
}

/// A copy of one app's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MetricsSnapshot {
    /// Requests (HTTP) or connections (TCP) started.
    pub requests_total: u64,
    /// Responses by status code (HTTP mode; the proxy's own 502/503 included). On the wire
    /// a list of `[code, count]` pairs (integer map keys do not survive tagged JSON enums).
    #[serde(with = "code_pairs")]
    pub by_code: BTreeMap<u16, u64>,
    /// Requests (or TCP connections) in progress: the concurrency signal.
    pub in_flight: u64,
    /// Requests (or connections) held now, waiting for a backend: the scale-from-zero
    /// signal (`autoscale::Sample::waiting`).
    #[serde(default)]
    pub waiting: u64,
    /// 503s for want of a backend.
    pub no_backend_total: u64,
    /// Backend failures answered by the proxy.
    pub upstream_errors_total: u64,
    /// Client connections accepted.
    pub connections_total: u64,
    /// Client connections open.
    pub connections_open: u64,
    /// Latency from the request's arrival to the end of its response body (HTTP) or of the
    /// connection (TCP).
    pub latency: Histogram,
}

impl MetricsSnapshot {
    /// Requests per second between `earlier` and this snapshot, taken `elapsed` apart.
    pub fn rps_since(&self, earlier: &MetricsSnapshot, elapsed: Duration) -> f64 {
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.requests_total.saturating_sub(earlier.requests_total) as f64 / secs
    }
}

mod code_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(
        m: &BTreeMap<u16, u64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        m.iter().collect::<Vec<_>>().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u16, u64>, D::Error> {
        Ok(Vec::<(u16, u64)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_counts_codes_latency_and_in_flight() {
        let m = AppMetrics::default();
        m.start();
        m.start();
        m.status(200);
        m.finish(Duration::from_micros(700));
        m.status(503);
        assert_eq!(m.snapshot().in_flight, 1);
        m.finish(Duration::from_secs(60));
        let s = m.snapshot();
        assert_eq!(s.requests_total, 2);
        assert_eq!(s.by_code, BTreeMap::from([(200, 1), (503, 1)]));
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.latency.count, 2);
        assert_eq!(s.latency.buckets[0], (Some(500), 0));
        assert_eq!(s.latency.buckets[1], (Some(1_000), 1));
        assert_eq!(s.latency.buckets.last(), Some(&(None, 2)));
        let later = MetricsSnapshot {
            requests_total: 12,
            ..s.clone()
        };
        assert_eq!(later.rps_since(&s, Duration::from_secs(2)), 5.0);
    }
}
