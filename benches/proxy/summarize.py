#!/usr/bin/env python3
"""Medians over rounds of benches/proxy/run.sh's CSV: prints the markdown table and writes it.

usage: summarize.py proxy.csv proxy.md "one line describing the settings"
Python standard library only.
"""
import csv
import statistics
import sys
from collections import defaultdict

ORDER = ["direct", "pingora-plain", "pingora-server", "pingora-tower", "pingora-tower+4",
         "nginx", "haproxy", "servetower-axum", "axum-hyper",
         "pingora-plain-tls", "pingora-tower-tls", "nginx-tls", "haproxy-tls"]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=1):
    return "–" if x is None else f"{x:,.{digits}f}"


def ratio(a, b):
    return "–" if a is None or not b else f"{a / b:.2f}×"


def main():
    src, dst = sys.argv[1], sys.argv[2]
    settings = sys.argv[3] if len(sys.argv) > 3 else ""
    rows = list(csv.DictReader(open(src)))
    by = defaultdict(list)
    for r in rows:
        by[r["contender"]].append(r)
    direct_p50 = {r["round"]: float(r["p50_us"]) for r in by.get("direct", [])}

    stats = {}
    for name, rs in by.items():
        cpu = [float(r["cpu_us_per_req"]) for r in rs]
        added = [float(r["p50_us"]) - direct_p50[r["round"]] for r in rs
                 if r["round"] in direct_p50]
        stats[name] = {
            "rounds": len(rs),
            "cpu": med(cpu),
            "spread": (max(cpu) - min(cpu)) / med(cpu) * 100 if med(cpu) else None,
            "achieved": med([float(r["achieved_rps"]) for r in rs]),
            "wrk": med([float(r["wrk_rps"]) for r in rs]),
            "p50": med([float(r["p50_us"]) for r in rs]),
            "added": med(added) if added else None,
            "loaded_p99": med([float(r["loaded_p99_us"]) for r in rs]),
            "errors": sum(int(r["errors"]) + int(r["wrk_errors"]) for r in rs),
        }
    names = [n for n in ORDER if n in stats] + sorted(n for n in stats if n not in ORDER)
    # A TLS-only run compares with the TLS baselines.
    plain = stats.get("pingora-plain") or stats.get("pingora-plain-tls", {})
    nginx = stats.get("nginx") or stats.get("nginx-tls", {})
    rate = rows[0]["offered_rps"] if rows else "?"

    out = []
    out.append(f"Medians over rounds ({settings}).\n")
    out.append(f"| contender | CPU µs/req @ {rate} req/s | spread | × plain | × nginx "
               "| req/s (wrk) | × plain | × nginx | p50 µs (1 conn) | added p50 µs "
               f"| p99 µs @ {rate} req/s | errors |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in names:
        s = stats[n]
        out.append(
            f"| {n} | {fmt(s['cpu'], 2)} | {fmt(s['spread'], 0)} % "
            f"| {ratio(s['cpu'], plain.get('cpu'))} | {ratio(s['cpu'], nginx.get('cpu'))} "
            f"| {fmt(s['wrk'], 0)} | {ratio(s['wrk'], plain.get('wrk'))} "
            f"| {ratio(s['wrk'], nginx.get('wrk'))} | {fmt(s['p50'])} | {fmt(s['added'])} "
            f"| {fmt(s['loaded_p99'])} | {s['errors']} |")
    out.append("")
    out.append("`spread` = (max − min) / median of the CPU µs/request over the rounds; "
               "`direct` is the upstream itself (its own CPU), the reference for added p50.")

    def target(label, value, limit, ok):
        return f"| {label} | {value} | {limit} | {'met' if ok else 'missed'} |"

    t4, tw = stats.get("pingora-tower+4"), stats.get("pingora-tower")
    sa, ah = stats.get("servetower-axum"), stats.get("axum-hyper")
    lines = []
    for label, s in (("pingora-tower+4", t4), ("pingora-tower (no layers)", tw)):
        if s and plain:
            c = s["cpu"] / plain["cpu"]
            lines.append(target(f"{label} CPU/req vs plain", f"{c:.3f}×", "≤ 1.05×", c <= 1.05))
            d = s["p50"] - plain["p50"]
            lines.append(target(f"{label} unloaded p50 vs plain", f"{d:+.1f} µs", "≤ +10 µs",
                                d <= 10))
            w = s["wrk"] / plain["wrk"]
            lines.append(target(f"{label} wrk req/s vs plain (context)", f"{w:.3f}×", "≥ 0.95×",
                                w >= 0.95))
    if sa and ah:
        w = sa["wrk"] / ah["wrk"]
        lines.append(target("servetower-axum req/s vs axum-hyper", f"{w:.3f}×", "≥ 0.9×",
                            w >= 0.9))
        c = sa["cpu"] / ah["cpu"]
        lines.append(target("servetower-axum CPU/req vs axum-hyper", f"{c:.3f}×", "≤ 1.1×",
                            c <= 1.1))
    if plain and nginx:
        c = plain["cpu"] / nginx["cpu"]
        lines.append(f"| pingora-plain CPU/req vs nginx (context) | {c:.2f}× | – | – |")
    if lines:
        out.append("")
        out.append("| target | measured | limit | |")
        out.append("|---|---:|---:|---|")
        out.extend(lines)
    text = "\n".join(out) + "\n"
    open(dst, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
