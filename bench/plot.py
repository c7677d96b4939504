"""Plots throughput and p99 latency against concurrency from a bench/run results file.

Usage: plot.py RESULTS.jsonl OUT.png   (run through bench/plot, which provides matplotlib)
"""

import json
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SERIES = [
    ("handshake-baseline", "TLS handshake baseline", "tab:gray"),
    ("embedded-symkey", "standalone, symmetric key (gRPC)", "tab:blue"),
    ("handshake-baseline-clientcert", "TLS handshake + client cert", "tab:olive"),
    ("embedded-x509", "standalone, X.509 (gRPC)", "tab:green"),
    ("embedded-tpm", "standalone, TPM (software TPM)", "tab:red"),
    ("embedded-symkey-https", "standalone, symmetric key (DPS HTTPS)", "tab:cyan"),
    ("embedded-1m-symkey", "standalone, 1M devices stored", "tab:purple"),
    ("kube-symkey", "Kubernetes backend, symmetric key", "tab:orange"),
    ("kube-raw-create", "raw apiserver creates", "tab:brown"),
]


def main(results, out):
    rows = defaultdict(lambda: defaultdict(list))
    with open(results) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if "throughput" not in r:
                continue
            rows[r["label"]][r["concurrency"]].append(r)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for label, title, color in SERIES:
        if label not in rows:
            continue
        cs = sorted(rows[label])
        tput = [statistics.median(r["throughput"] for r in rows[label][c]) for c in cs]
        p99 = [statistics.median(r["latency_ms"]["p99"] for r in rows[label][c]) for c in cs]
        style = "o-" if len(cs) > 1 else "o"
        ax1.plot(cs, tput, style, label=title, color=color)
        ax2.plot(cs, p99, style, label=title, color=color)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (operations in flight)")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("operations / s (median of runs)")
    ax1.set_title("Throughput")
    ax2.set_ylabel("p99 latency, ms (median of runs)")
    ax2.set_yscale("log")
    ax2.set_title("p99 latency")
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
