//! Latency percentiles and the summary of one benchmark row.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::procfs::{self, ProcSample};

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Latency {
    /// Percentiles (nearest rank) of `samples`; all zero when there are none.
    pub fn of(samples: &mut [Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let rank = |p: f64| {
            let n = samples.len();
            // Nearest rank: the smallest sample with at least p of all samples at or below it.
            let r = ((p * n as f64).ceil() as usize).clamp(1, n);
            samples.get(r - 1).copied().map_or(0.0, ms)
        };
        let total: f64 = samples.iter().map(|d| ms(*d)).sum();
        Latency {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: samples.last().copied().map_or(0.0, ms),
            mean: total / samples.len() as f64,
        }
    }
}

/// Server process figures over one row.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerFigures {
    /// PID that was sampled.
    pub pid: u32,
    /// Peak RSS since the server started (`VmHWM`), MiB, read after the row.
    pub peak_rss_mib: f64,
    /// RSS after the row, MiB.
    pub rss_mib: f64,
    /// Server CPU seconds spent during the row.
    pub cpu_seconds: f64,
    /// Server CPU microseconds per successful operation.
    pub cpu_us_per_op: f64,
}

/// The outcome of one benchmark row: one attestation type, protocol and concurrency.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Row name (e.g. `embedded-symkey`, `handshake-baseline`).
    pub label: String,
    /// What each operation was: `symmetricKey`, `x509`, `tpm`, `handshake`.
    pub operation: String,
    /// `grpc`, `https` or `tls` (handshake baseline).
    pub protocol: String,
    /// Operations attempted in the measured phase.
    pub attempted: u64,
    /// Operations that succeeded.
    pub ok: u64,
    /// Failed operations by error kind.
    pub errors: BTreeMap<String, u64>,
    /// Operations in flight at once.
    pub concurrency: usize,
    /// Wall time of the measured phase, seconds.
    pub elapsed_seconds: f64,
    /// Successful operations per second.
    pub throughput: f64,
    /// Latency of successful operations.
    pub latency_ms: Latency,
    /// The server, when a PID was given.
    pub server: Option<ServerFigures>,
    /// CPU microseconds the load generator itself spent per successful operation.
    pub client_cpu_us_per_op: f64,
    /// 1-minute load average when the row started (other work on the machine).
    pub loadavg_start: f64,
    /// 1-minute load average when the row ended.
    pub loadavg_end: f64,
    /// Free-form notes (e.g. store size).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Summary {
    /// One human-readable line.
    pub fn line(&self) -> String {
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let server = self.server.map_or_else(String::new, |s| {
            format!(
                " server: peak RSS {:.1} MiB, {:.0} µs CPU/op;",
                s.peak_rss_mib, s.cpu_us_per_op
            )
        });
        format!(
            "{label}: {ok}/{attempted} ok in {secs:.2} s = {tput:.0}/s at concurrency {c}; \
             latency ms p50 {p50:.2} p90 {p90:.2} p99 {p99:.2} max {max:.2}; errors {errors};{server} \
             client {ccpu:.0} µs CPU/op; load {l0:.2}->{l1:.2}",
            label = self.label,
            ok = self.ok,
            attempted = self.attempted,
            secs = self.elapsed_seconds,
            tput = self.throughput,
            c = self.concurrency,
            p50 = self.latency_ms.p50,
            p90 = self.latency_ms.p90,
            p99 = self.latency_ms.p99,
            max = self.latency_ms.max,
            ccpu = self.client_cpu_us_per_op,
            l0 = self.loadavg_start,
            l1 = self.loadavg_end,
        )
    }
}

/// The measured phase of one row: samples the server, this process and the load average when
/// it starts, and turns the operations' outcomes into a [`Summary`] when it ends.
#[derive(Debug)]
pub struct Row {
    server_pid: Option<u32>,
    server_before: Option<ProcSample>,
    client_before: Option<ProcSample>,
    loadavg_start: f64,
    started: Instant,
}

/// What a row was, for its [`Summary`].
#[derive(Debug)]
pub struct RowKind {
    /// Row name.
    pub label: String,
    /// What each operation was.
    pub operation: String,
    /// Protocol of the operations.
    pub protocol: String,
    /// Operations in flight at once.
    pub concurrency: usize,
}

impl Row {
    /// Starts the measured phase; `server_pid` is sampled as the server.
    pub fn start(server_pid: Option<u32>) -> Row {
        Row {
            server_pid,
            server_before: server_pid.and_then(procfs::sample),
            client_before: procfs::sample_self(),
            loadavg_start: procfs::loadavg_1m(),
            started: Instant::now(),
        }
    }

    /// Ends the phase with each operation's latency or error kind. Fails when the server
    /// process is gone.
    pub fn finish(
        self,
        kind: RowKind,
        outcomes: impl IntoIterator<Item = Result<Duration, String>>,
    ) -> Result<Summary, BenchError> {
        let elapsed = self.started.elapsed().as_secs_f64();
        let client_after = procfs::sample_self();
        let server_after = self.server_pid.and_then(procfs::sample);
        let mut latencies = Vec::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut attempted = 0u64;
        for outcome in outcomes {
            attempted += 1;
            match outcome {
                Ok(d) => latencies.push(d),
                Err(kind) => *errors.entry(kind).or_default() += 1,
            }
        }
        let ok = latencies.len() as u64;
        let per_op = |cpu: f64| if ok > 0 { cpu * 1e6 / ok as f64 } else { 0.0 };
        let server = match (self.server_pid, self.server_before, server_after) {
            (Some(pid), Some(before), Some(after)) => Some(ServerFigures {
                pid,
                peak_rss_mib: after.vm_hwm_kib as f64 / 1024.0,
                rss_mib: after.vm_rss_kib as f64 / 1024.0,
                cpu_seconds: after.cpu_seconds - before.cpu_seconds,
                cpu_us_per_op: per_op(after.cpu_seconds - before.cpu_seconds),
            }),
            (Some(pid), _, _) => {
                return Err(BenchError::Config(format!(
                    "the server process {pid} is gone (crashed?)"
                )));
            }
            _ => None,
        };
        let client_cpu = match (self.client_before, client_after) {
            (Some(b), Some(a)) => per_op(a.cpu_seconds - b.cpu_seconds),
            _ => 0.0,
        };
        Ok(Summary {
            label: kind.label,
            operation: kind.operation,
            protocol: kind.protocol,
            attempted,
            ok,
            errors,
            concurrency: kind.concurrency,
            elapsed_seconds: elapsed,
            throughput: if elapsed > 0.0 {
                ok as f64 / elapsed
            } else {
                0.0
            },
            latency_ms: Latency::of(&mut latencies),
            server,
            client_cpu_us_per_op: client_cpu,
            loadavg_start: self.loadavg_start,
            loadavg_end: procfs::loadavg_1m(),
            extra: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&mut v);
        assert_eq!(l.p50, 50.0);
        assert_eq!(l.p90, 90.0);
        assert_eq!(l.p99, 99.0);
        assert_eq!(l.max, 100.0);
        assert!((l.mean - 50.5).abs() < 1e-9);
        let mut one = vec![Duration::from_millis(7)];
        assert_eq!(Latency::of(&mut one).p99, 7.0);
        assert_eq!(Latency::of(&mut []), Latency::default());
    }
}
