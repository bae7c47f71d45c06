#!/usr/bin/env python3
"""Draws RESULTS/proxy.png from RESULTS/proxy.csv (and RESULTS/callgrind.csv and
callgrind-peers.csv when present):
CPU µs per request at the fixed rate and unloaded p50 added over `direct`, medians over
rounds, per contender; instructions per request from the callgrind pass.

usage: plot.py benches/proxy/results
"""
import csv
import os
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["direct", "pingora-plain", "pingora-server", "pingora-tower", "pingora-tower+4",
         "nginx", "haproxy", "servetower-axum", "axum-hyper"]
COLOURS = {"direct": "#999999", "nginx": "#2e7d32", "haproxy": "#558b2f",
           "servetower-axum": "#6a1b9a", "axum-hyper": "#8e24aa"}


def main():
    results = sys.argv[1]
    rows = list(csv.DictReader(open(os.path.join(results, "proxy.csv"))))
    by = defaultdict(list)
    for r in rows:
        by[r["contender"]].append(r)
    direct = {r["round"]: float(r["p50_us"]) for r in by.get("direct", [])}
    names = [n for n in ORDER if n in by] + sorted(n for n in by if n not in ORDER)
    cpu = [statistics.median(float(r["cpu_us_per_req"]) for r in by[n]) for n in names]
    added = [statistics.median([float(r["p50_us"]) - direct.get(r["round"], 0.0)
                                for r in by[n]]) for n in names]
    colours = [COLOURS.get(n, "#1565c0") for n in names]

    cg = []
    for name in ("callgrind.csv", "callgrind-peers.csv"):
        path = os.path.join(results, name)
        if os.path.exists(path):
            seen = {r["contender"] for r in cg}
            cg += [r for r in csv.DictReader(open(path)) if r["contender"] not in seen]
    cg.sort(key=lambda r: ORDER.index(r["contender"]) if r["contender"] in ORDER else 99)
    panels = 3 if cg else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.6))
    rate = rows[0]["offered_rps"] if rows else "?"

    def bars(ax, labels, values, title, unit, cols):
        y = range(len(labels))
        ax.barh(y, values, color=cols)
        ax.set_yticks(list(y), labels)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(unit)
        ax.grid(axis="x", alpha=0.3)
        top = max(values) if values else 1
        for i, v in enumerate(values):
            ax.text(v + top * 0.01, i, f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}",
                    va="center", fontsize=8)
        ax.set_xlim(min(0, min(values) * 1.1), top * 1.18)

    bars(axes[0], names, cpu, f"CPU per request at {rate} req/s (median)", "µs CPU / request",
         colours)
    bars(axes[1], names, added, "Unloaded p50 added over direct (1 conn, median)", "µs",
         colours)
    if cg:
        labels = [r["contender"] for r in cg]
        values = [float(r["instructions_per_request"]) / 1000 for r in cg]
        bars(axes[2], labels, values, "Instructions per request (callgrind)",
             "thousand instructions", [COLOURS.get(n, "#1565c0") for n in labels])
    fig.suptitle("pingora-tower proxy bench (contender pinned to one CPU, loopback, 1 KiB body)",
                 fontsize=11)
    fig.tight_layout()
    out = os.path.join(results, "proxy.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
