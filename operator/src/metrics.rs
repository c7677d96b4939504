//! Prometheus metrics of the operator (prometheus-client, text format), under the
//! `kdps_operator_` prefix:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kdps_operator_reconciles_total` | counter | `controller` |
//! | `kdps_operator_reconcile_failures_total` | counter | `controller`, `error` |
//! | `kdps_operator_reconcile_duration_seconds` | histogram | `controller` |
//! | `kdps_operator_ready_objects` | gauge | `controller` (objects whose last reconcile set `Ready=True`; a deleted object counts until the next restart) |
//! | `kdps_operator_leader` | gauge | 1 while this process holds the Lease (or runs without leader election) |

use std::{fmt::Write as _, sync::atomic::AtomicI64, time::Instant};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// Prefix of every metric (an underscore is added by the registry).
pub const PREFIX: &str = "kdps_operator";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    controller: &'static str,
    error: &'static str,
}

/// The operator's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<ControllerLabels, Histogram>,
    ready: Family<ControllerLabels, Gauge<i64, AtomicI64>>,
    leader: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics in a new registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration = Family::<ControllerLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.005, 2.0, 12))) as fn() -> Histogram,
        );
        let ready = Family::<ControllerLabels, Gauge<i64, AtomicI64>>::default();
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by error category",
            failures.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconcile took",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "ready_objects",
            "Objects whose last reconcile set Ready=True",
            ready.clone(),
        );
        registry.register(
            "leader",
            "1 while this process is the active operator (holds the Lease)",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            ready,
            leader,
        }
    }

    /// Count a reconcile of `controller` and time it until the guard is dropped.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    /// Count a failed reconcile.
    pub fn failure(&self, controller: &'static str, error: &'static str) {
        self.failures
            .get_or_create(&FailureLabels { controller, error })
            .inc();
    }

    /// Set the number of ready objects of `controller`.
    pub fn set_ready(&self, controller: &'static str, count: usize) {
        self.ready
            .get_or_create(&ControllerLabels { controller })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Set the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String cannot fail; keep the endpoint answering regardless.
            let _ = writeln!(out, "# encoding error");
        }
        out
    }
}

/// Records the duration of one reconcile when dropped.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_failures_and_durations() {
        let m = Metrics::new();
        {
            let _t = m.reconcile("provisioningservice");
        }
        m.failure("provisioningservice", "Kube");
        m.set_leader(true);
        m.set_ready("iothublink", 1);
        let text = m.encode();
        assert!(
            text.contains("kdps_operator_reconciles_total{controller=\"provisioningservice\"} 1")
        );
        assert!(text.contains(
            "kdps_operator_reconcile_failures_total{controller=\"provisioningservice\",error=\"Kube\"} 1"
        ));
        assert!(text.contains(
            "kdps_operator_reconcile_duration_seconds_count{controller=\"provisioningservice\"} 1"
        ));
        assert!(text.contains("kdps_operator_leader 1"));
        assert!(text.contains("kdps_operator_ready_objects{controller=\"iothublink\"} 1"));
    }
}
