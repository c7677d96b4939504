//! Turns the result lines of a run (`results.jsonl`: one [`Summary`] per row, plus other
//! records) into the `RESULT` line of `bench/run --quick`, a Markdown table and the ratios
//! against the targets of design.md §7.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::error::BenchError;
use crate::stats::Summary;

/// A ratio the design sets a target for: `numerator` throughput as a share of `denominator`.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Row measured.
    pub numerator: &'static str,
    /// Baseline row.
    pub denominator: &'static str,
    /// Required share, percent.
    pub percent: f64,
}

/// The ratio targets of design.md §7.
pub const TARGETS: [Target; 5] = [
    Target {
        numerator: "embedded-symkey",
        denominator: "handshake-baseline",
        percent: 70.0,
    },
    Target {
        numerator: "embedded-x509",
        denominator: "handshake-baseline-clientcert",
        percent: 50.0,
    },
    Target {
        numerator: "embedded-tpm",
        denominator: "handshake-baseline",
        percent: 50.0,
    },
    Target {
        numerator: "kube-symkey",
        denominator: "kube-raw-create",
        percent: 80.0,
    },
    Target {
        numerator: "embedded-1m-symkey",
        denominator: "handshake-baseline",
        percent: 70.0,
    },
];

/// Reads every load row of a results file (other records are skipped).
pub fn read_rows(path: &Path) -> Result<Vec<Summary>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(BenchError::io(path))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| BenchError::Results(format!("{}:{}: {e}", path.display(), n + 1)))?;
        if value.get("throughput").is_some() {
            rows.push(
                serde_json::from_value(value).map_err(|e| {
                    BenchError::Results(format!("{}:{}: {e}", path.display(), n + 1))
                })?,
            );
        }
    }
    Ok(rows)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v.get(mid - 1)? + v.get(mid)?) / 2.0)
    }
}

/// Median throughput of the rows named `label` (at `concurrency`, when given).
pub fn median_throughput(rows: &[Summary], label: &str, concurrency: Option<usize>) -> Option<f64> {
    median(
        rows.iter()
            .filter(|r| r.label == label && concurrency.is_none_or(|c| r.concurrency == c))
            .map(|r| r.throughput)
            .collect(),
    )
}

fn median_cpu(rows: &[Summary], label: &str, concurrency: usize) -> Option<f64> {
    median(
        rows.iter()
            .filter(|r| r.label == label && r.concurrency == concurrency)
            .filter_map(|r| r.server.map(|s| s.cpu_us_per_op))
            .collect(),
    )
}

/// `RESULT embedded-symkey <reg/s> handshake-baseline <handshakes/s> ratio <percent>%`.
pub fn result_line(rows: &[Summary]) -> Result<String, BenchError> {
    let reg = median_throughput(rows, "embedded-symkey", None)
        .ok_or_else(|| BenchError::Results("no embedded-symkey row".into()))?;
    let hs = median_throughput(rows, "handshake-baseline", None)
        .ok_or_else(|| BenchError::Results("no handshake-baseline row".into()))?;
    if hs <= 0.0 {
        return Err(BenchError::Results(
            "the handshake baseline completed no handshake".into(),
        ));
    }
    Ok(format!(
        "RESULT embedded-symkey {reg:.0} handshake-baseline {hs:.0} ratio {:.0}%",
        reg / hs * 100.0
    ))
}

/// Markdown table of every row (medians are not taken: one line per measured row).
pub fn markdown_rows(rows: &[Summary]) -> String {
    let mut out = String::from(
        "| row | operation | protocol | conc. | ok / attempted | ops/s | p50 ms | p90 ms | p99 ms | max ms | errors | server peak RSS MiB | server CPU µs/op | client CPU µs/op | load avg |\n\
         |---|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|\n",
    );
    for r in rows {
        let errors = if r.errors.is_empty() {
            "0".to_owned()
        } else {
            r.errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (rss, cpu) = r.server.map_or(("–".to_owned(), "–".to_owned()), |s| {
            (
                format!("{:.1}", s.peak_rss_mib),
                format!("{:.0}", s.cpu_us_per_op),
            )
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} / {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {:.0} | {:.1} |",
            r.label,
            r.operation,
            r.protocol,
            r.concurrency,
            r.ok,
            r.attempted,
            r.throughput,
            r.latency_ms.p50,
            r.latency_ms.p90,
            r.latency_ms.p99,
            r.latency_ms.max,
            errors,
            rss,
            cpu,
            r.client_cpu_us_per_op,
            r.loadavg_start.max(r.loadavg_end),
        );
    }
    out
}

/// Markdown table of the design's ratio targets: per concurrency where both rows exist, the
/// median throughput ratio and the server-CPU ratio.
pub fn markdown_ratios(rows: &[Summary]) -> String {
    let mut out = String::from(
        "| measured | baseline | conc. | measured ops/s | baseline ops/s | throughput ratio | target | met | server CPU µs/op (measured / baseline) |\n\
         |---|---|--:|--:|--:|--:|--:|---|---|\n",
    );
    for t in TARGETS {
        let mut concurrencies: BTreeMap<usize, ()> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.label == t.numerator) {
            concurrencies.insert(r.concurrency, ());
        }
        for c in concurrencies.keys().copied() {
            let num = median_throughput(rows, t.numerator, Some(c));
            // The baseline at the same concurrency, else its best over all concurrencies.
            let den = median_throughput(rows, t.denominator, Some(c)).or_else(|| {
                rows.iter()
                    .filter(|r| r.label == t.denominator)
                    .map(|r| r.throughput)
                    .max_by(f64::total_cmp)
            });
            let (Some(num), Some(den)) = (num, den) else {
                continue;
            };
            if den <= 0.0 {
                continue;
            }
            let ratio = num / den * 100.0;
            let cpu = match (
                median_cpu(rows, t.numerator, c),
                median_cpu(rows, t.denominator, c),
            ) {
                (Some(a), Some(b)) => format!("{a:.0} / {b:.0}"),
                (Some(a), None) => format!("{a:.0} / –"),
                _ => "–".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {c} | {num:.0} | {den:.0} | {ratio:.0} % | ≥ {:.0} % | {} | {cpu} |",
                t.numerator,
                t.denominator,
                t.percent,
                if ratio >= t.percent { "yes" } else { "no" },
            );
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(label: &str, c: usize, tput: f64) -> Summary {
        Summary {
            label: label.into(),
            concurrency: c,
            throughput: tput,
            ..Summary::default()
        }
    }

    #[test]
    fn result_line_uses_medians() {
        let rows = vec![
            row("embedded-symkey", 32, 900.0),
            row("embedded-symkey", 32, 1000.0),
            row("embedded-symkey", 32, 5000.0),
            row("handshake-baseline", 32, 2000.0),
        ];
        assert_eq!(
            result_line(&rows).unwrap(),
            "RESULT embedded-symkey 1000 handshake-baseline 2000 ratio 50%"
        );
        assert!(result_line(&rows[..3]).is_err());
    }

    #[test]
    fn ratio_table_pairs_rows_by_concurrency() {
        let rows = vec![
            row("embedded-symkey", 8, 700.0),
            row("handshake-baseline", 8, 1000.0),
            row("embedded-symkey", 64, 500.0),
            row("handshake-baseline", 64, 1000.0),
        ];
        let t = markdown_ratios(&rows);
        assert!(
            t.contains(
                "| embedded-symkey | handshake-baseline | 8 | 700 | 1000 | 70 % | ≥ 70 % | yes |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| 64 | 500 | 1000 | 50 % | ≥ 70 % | no |"),
            "{t}"
        );
    }
}
