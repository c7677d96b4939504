//! Prometheus metrics of the registration service (prometheus-client, text format).
//!
//! Everything lives under the `kdps_registration_` prefix of one shared [`Registry`]:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kdps_registration_registrations_total` | counter | `protocol`, `attestation`, `outcome` |
//! | `kdps_registration_request_duration_seconds` | histogram | `protocol`, `operation` |
//! | `kdps_registration_tls_handshake_failures_total` | counter | `reason` |
//! | `kdps_registration_requests_in_flight` | gauge | `protocol` |
//!
//! The device-facing front ends (gRPC, DPS HTTPS) record every request; the engine does not
//! need to call [`Metrics`] itself for requests that pass through them.

use std::{fmt::Write as _, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

pub use crate::registry::AttestationType;

/// Prefix of every metric of this service (an underscore is added by the registry).
pub const PREFIX: &str = "kdps_registration";

/// Device-facing protocol a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `kdps.registration.v1` gRPC.
    Grpc,
    /// The DPS-compatible HTTPS API.
    Https,
}

impl Protocol {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Https => "https",
        }
    }
}

/// Result of one registration request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Assigned to a hub.
    Assigned,
    /// Terminal failure (allocation, webhook, store) or an unexpected error.
    Failed,
    /// The enrollment is disabled.
    Disabled,
    /// Attestation failed or no enrollment admits the device.
    Unauthorized,
    /// Rate limited.
    Throttled,
    /// Malformed request.
    Invalid,
    /// TPM challenge issued.
    Challenge,
    /// Not finished before the deadline; the device polls.
    Pending,
}

impl Outcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Assigned => "assigned",
            Outcome::Failed => "failed",
            Outcome::Disabled => "disabled",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Throttled => "throttled",
            Outcome::Invalid => "invalid",
            Outcome::Challenge => "challenge",
            Outcome::Pending => "pending",
        }
    }
}

/// Device-facing operation, for the request duration histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Register.
    Register,
    /// Operation status poll.
    OperationStatus,
    /// Registration status lookup.
    RegistrationState,
}

impl Operation {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Register => "register",
            Operation::OperationStatus => "operation_status",
            Operation::RegistrationState => "registration_state",
        }
    }
}

/// Why a TLS handshake did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The handshake did not finish within the handshake timeout.
    Timeout,
    /// TLS error (bad certificate signature, protocol error, client went away...).
    Error,
}

impl HandshakeFailure {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Error => "error",
        }
    }
}

/// Label value of an attestation type.
pub fn attestation_label(a: AttestationType) -> &'static str {
    match a {
        AttestationType::SymmetricKey => "symmetric_key",
        AttestationType::X509 => "x509",
        AttestationType::Tpm => "tpm",
    }
}

macro_rules! label_value {
    ($($ty:ty => $f:expr),* $(,)?) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                encoder.write_str(($f)(*self))
            }
        }
    )*};
}

label_value! {
    Protocol => Protocol::as_str,
    Outcome => Outcome::as_str,
    Operation => Operation::as_str,
    HandshakeFailure => HandshakeFailure::as_str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    protocol: Protocol,
    attestation: &'static str,
    outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DurationLabels {
    protocol: Protocol,
    operation: Operation,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    reason: HandshakeFailure,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~16 s: symmetric-key registrations take milliseconds, webhooks and
    // Kubernetes writes take longer.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Handles to the service's metrics. Cheap to clone; all clones update the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    registrations: Family<OutcomeLabels, Counter>,
    durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    handshake_failures: Family<HandshakeLabels, Counter>,
    in_flight: Family<ProtocolLabels, Gauge>,
}

impl Metrics {
    /// Registers the metrics in `registry` under the [`PREFIX`] sub-registry.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            registrations: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            handshake_failures: Family::default(),
            in_flight: Family::default(),
        };
        let sub = registry.sub_registry_with_prefix(PREFIX);
        sub.register(
            "registrations",
            "Registration requests by protocol, attestation type and outcome",
            metrics.registrations.clone(),
        );
        sub.register_with_unit(
            "request_duration",
            "Duration of device requests by protocol and operation",
            Unit::Seconds,
            metrics.durations.clone(),
        );
        sub.register(
            "tls_handshake_failures",
            "TLS handshakes on the device port that did not complete",
            metrics.handshake_failures.clone(),
        );
        sub.register(
            "requests_in_flight",
            "Device requests being processed",
            metrics.in_flight.clone(),
        );
        metrics
    }

    /// A fresh registry holding only these metrics (tests, tools).
    pub fn with_new_registry() -> (Registry, Self) {
        let mut registry = Registry::default();
        let metrics = Self::register(&mut registry);
        (registry, metrics)
    }

    /// Records the outcome of one registration (Register) request and its duration.
    pub fn record_outcome(
        &self,
        protocol: Protocol,
        attestation: AttestationType,
        outcome: Outcome,
        duration: Duration,
    ) {
        self.registrations
            .get_or_create(&OutcomeLabels {
                protocol,
                attestation: attestation_label(attestation),
                outcome,
            })
            .inc();
        self.observe_duration(protocol, Operation::Register, duration);
    }

    /// Records the duration of a device request (any operation). [`Metrics::record_outcome`]
    /// already does this for registrations.
    pub fn observe_duration(&self, protocol: Protocol, operation: Operation, duration: Duration) {
        self.durations
            .get_or_create(&DurationLabels {
                protocol,
                operation,
            })
            .observe(duration.as_secs_f64());
    }

    /// Counts a TLS handshake that did not complete.
    pub fn tls_handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures
            .get_or_create(&HandshakeLabels { reason })
            .inc();
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn in_flight(&self, protocol: Protocol) -> InFlightGuard {
        let gauge = self
            .in_flight
            .get_or_create_owned(&ProtocolLabels { protocol });
        gauge.inc();
        InFlightGuard { gauge }
    }
}

/// Decrements the in-flight gauge when dropped (see [`Metrics::in_flight`]).
#[derive(Debug)]
pub struct InFlightGuard {
    gauge: Gauge,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Encodes `registry` in the OpenMetrics text format (what `/metrics` serves).
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_durations_and_failures_are_exported_with_prefix_and_labels() {
        let (registry, metrics) = Metrics::with_new_registry();
        metrics.record_outcome(
            Protocol::Grpc,
            AttestationType::SymmetricKey,
            Outcome::Assigned,
            Duration::from_millis(3),
        );
        metrics.record_outcome(
            Protocol::Https,
            AttestationType::Tpm,
            Outcome::Challenge,
            Duration::from_millis(1),
        );
        metrics.observe_duration(
            Protocol::Grpc,
            Operation::OperationStatus,
            Duration::from_millis(2),
        );
        metrics.tls_handshake_failed(HandshakeFailure::Timeout);
        let text = encode(&registry).unwrap();
        assert!(text.contains(
            r#"kdps_registration_registrations_total{protocol="grpc",attestation="symmetric_key",outcome="assigned"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"kdps_registration_registrations_total{protocol="https",attestation="tpm",outcome="challenge"} 1"#
        ));
        assert!(text.contains(
            r#"kdps_registration_request_duration_seconds_count{protocol="grpc",operation="register"} 1"#
        ));
        assert!(text.contains(
            r#"kdps_registration_request_duration_seconds_count{protocol="grpc",operation="operation_status"} 1"#
        ));
        assert!(
            text.contains(r#"kdps_registration_tls_handshake_failures_total{reason="timeout"} 1"#)
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn in_flight_guard_increments_and_decrements() {
        let (registry, metrics) = Metrics::with_new_registry();
        let a = metrics.in_flight(Protocol::Grpc);
        let b = metrics.in_flight(Protocol::Grpc);
        let text = encode(&registry).unwrap();
        assert!(text.contains(r#"kdps_registration_requests_in_flight{protocol="grpc"} 2"#));
        drop(a);
        drop(b);
        let text = encode(&registry).unwrap();
        assert!(text.contains(r#"kdps_registration_requests_in_flight{protocol="grpc"} 0"#));
    }
}
