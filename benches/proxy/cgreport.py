#!/usr/bin/env python3
"""Report of benches/proxy/callgrind.sh: instructions per request per variant, and where they go.

usage: cgreport.py callgrind.csv callgrind.md NAME=N1FILE,N2FILE ...

Per function, the instructions of one request are (cost in the N2 run - cost in the N1 run) /
(N2 - N1), from `callgrind_annotate` of both runs, so start-up and shutdown cancel out. "Where
the code lives" is the source file of each instruction (inlined code counts where it was
written: our crates, a crates.io crate, std, libc). Python standard library only.
"""
import csv
import re
import subprocess
import sys
from collections import defaultdict

LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)(?:\s+\[(.*)\])?$")
CALLS = re.compile(r"\s+\([\d,]+x\)$")
CRATE = re.compile(r"/registry/src/[^/]+/([A-Za-z0-9_\-]+?)-\d+\.\d+[^/]*/")
OURS = re.compile(r"^<?(middlewares|pingora_tower)::")
TOP = 25
LAZY_INIT = "once_cell::imp::OnceCell<T>::initialize"
CONNECTION_TASK = "<pingora_tower::server::connection::Tracked<A> as pingora_core::apps::ServerApp>::process_new::{{closure}}"
# What each variant is compared with, function by function (default: pingora-plain).
BASELINE = {"servetower-axum": "axum-hyper"}


def annotate(path, inclusive):
    """{(file, function, object): instructions} of one callgrind.out file."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no",
         f"--inclusive={'yes' if inclusive else 'no'}", path],
        check=True, capture_output=True, text=True).stdout
    costs = defaultdict(int)
    for line in out.splitlines():
        m = LINE.match(line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        file_fn, obj = CALLS.sub("", m.group(2)), (m.group(3) or "").rsplit("/", 1)[-1]
        file, _, fn = file_fn.partition(":") if ":" in file_fn else ("???", "", file_fn)
        costs[(file, fn, obj)] += int(m.group(1).replace(",", ""))
    return costs


def where(file, obj):
    """Which crate (or library) the code of `file` belongs to."""
    if "/work/main/" in file:
        return "ours: " + file.split("/work/main/")[-1].split("/")[0]
    m = CRATE.search(file)
    if m:
        return m.group(1)
    if "/rustc/" in file or "/library/" in file:
        return "rust std"
    if "malloc" in file or "arena.c" in file:
        return "libc malloc"
    if "memmove" in file or "memcpy" in file or "memset" in file:
        return "libc memcpy/memset"
    if file.startswith("./") or obj.startswith(("libc", "ld-linux")):
        return "libc (other)"
    if obj.startswith("vgpreload"):
        return "valgrind preload"
    if file == "???":
        return "no line info"
    return f"other ({obj or file})"


SYMBOL_CRATE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def symbol_crate(fn):
    """The crate of a function's symbol: `<middlewares::x::T<S> as Trait>::f` → middlewares."""
    if fn.startswith("__rustc::") or fn.startswith("__rust_"):
        return "rust alloc shim"
    m = SYMBOL_CRATE.match(fn.lstrip("<&*"))
    if not m or "::" not in fn:
        return "C (libc, ld.so)" if fn else "?"
    name = m.group(0)
    return {"core": "rust std", "alloc": "rust std", "std": "rust std"}.get(name, name)


def per_request(files, n1, n2, inclusive):
    a, b = annotate(files[0], inclusive), annotate(files[1], inclusive)
    return {k: (b.get(k, 0) - a.get(k, 0)) / (n2 - n1) for k in set(a) | set(b)}


def inclusive_of(files, n1, n2, fn_name):
    """Per request, the inclusive cost of one function (its largest entry in each file: inlined
    code makes several, each a part). May be negative: the runs' difference."""
    def largest(path):
        return max((v for (_f, fn, _o), v in annotate(path, True).items() if fn == fn_name),
                   default=0)
    return (largest(files[1]) - largest(files[0])) / (n2 - n1)


def by_function(costs, inclusive=False):
    """Per function name. A function whose code spans several source files (inlining) has one
    entry per file: self costs add up; inclusive costs overlap, so the largest is taken."""
    out = defaultdict(float)
    for (_file, fn, _obj), v in costs.items():
        out[fn] = max(out[fn], v) if inclusive else out[fn] + v
    return out


IMPL = re.compile(r"^[\w:]+::_::<impl ([\w:]+(?:<[^<>]*>)?) for ([\w:]+(?:<[^<>]*>)?)>::")
SHORTER = [("pingora_proxy::proxy_trait::ProxyHttp", "ProxyHttp"),
           ("middlewares::proxy_host::ProxyPolicy", "ProxyPolicy"),
           ("pingora_core::apps::", ""), ("core::future::future::Future", "Future")]


def short(fn, width=150):
    """A function name made shorter: `<Timeout<S> as ProxyHttp>::hook` for the macro's impls."""
    fn = IMPL.sub(lambda m: f"<{m.group(2)} as {m.group(1)}>::", fn)
    for long, brief in SHORTER:
        fn = fn.replace(long, brief)
    return fn if len(fn) <= width else fn[: width - 1] + "…"


def fn_table(title, costs, limit=TOP, signed=False):
    rows = sorted(costs.items(), key=lambda kv: -kv[1])[:limit]
    res = ["", title, "", "| instructions / request | function |", "|---:|---|"]
    for fn, v in rows:
        if abs(v) >= 1:
            res.append(f"| {v:+,.0f} | `{short(fn)}` |" if signed else
                       f"| {v:,.0f} | `{short(fn)}` |")
    return res


def main():
    src, dst, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
    rows = {r["contender"]: r for r in csv.DictReader(open(src))}
    out = ["Instructions per request = (total(N2) − total(N1)) / (N2 − N1), one keep-alive "
           "connection, sequential requests.\n",
           "| contender | N1 | N2 | instructions / request | × pingora-plain |",
           "|---|---:|---:|---:|---:|"]
    base = float(rows["pingora-plain"]["instructions_per_request"]) \
        if "pingora-plain" in rows else None
    for name, r in rows.items():
        v = float(r["instructions_per_request"])
        out.append(f"| {name} | {r['n1']} | {r['n2']} | {v:,.0f} | "
                   f"{(f'{v / base:.3f}×' if base else '–')} |")

    selfs, incls, crates, symbols, lazies = {}, {}, {}, {}, {}
    for spec in specs:
        name, paths = spec.split("=", 1)
        files = paths.split(",")
        n1, n2 = int(rows[name]["n1"]), int(rows[name]["n2"])
        per = per_request(files, n1, n2, False)
        selfs[name] = by_function(per)
        incls[name] = by_function(per_request(files, n1, n2, True), inclusive=True)
        lazies[name] = inclusive_of(files, n1, n2, LAZY_INIT)
        c = defaultdict(float)
        for (file, _fn, obj), v in per.items():
            c[where(file, obj)] += v
        crates[name] = c
        sc = defaultdict(float)
        for fn, v in selfs[name].items():
            sc[symbol_crate(fn)] += v
        symbols[name] = sc

    names = list(selfs)
    out += ["", "### Per request, without what does not follow the requests\n",
            "The total above also counts the one-time initialisation of lazy statics (the "
            "calibration of the CPU counter clock runs for a wall-clock time, so its count moves "
            "between the N1 and N2 runs by up to ~1k per request) and the threads that tick with "
            "wall time (a slower variant is charged more of them). The first column leaves out "
            f"the lazy initialisation (`{LAZY_INIT}`, inclusive); the second counts only the "
            "connection's own task (`Tracked::process_new`, inclusive), where every request "
            "hook runs.\n",
            "| contender | without lazy initialisation | connection task |",
            "|---|---:|---:|"]
    for name in names:
        total = float(rows[name]["instructions_per_request"])
        lazy = lazies[name]
        task = max((v for fn, v in incls[name].items() if fn.startswith(CONNECTION_TASK)),
                   default=0.0)
        out.append(f"| {name} | {total - lazy:,.0f} | {task:,.0f} |")

    out += ["", "### Per request, by where the code lives (self instructions, inlined code "
            "counted where it was written)\n",
            "| code in | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names)]
    keys = sorted({k for n in names for k in crates[n]},
                  key=lambda k: -max(crates[n].get(k, 0) for n in names))
    for k in keys:
        vals = [crates[n].get(k, 0) for n in names]
        if max(abs(v) for v in vals) >= 100:
            out.append(f"| {k} | " + " | ".join(f"{v:,.0f}" for v in vals) + " |")
    out.append("| **total** | " + " | ".join(f"{sum(crates[n].values()):,.0f}" for n in names)
               + " |")

    out += ["", "### Per request, by the crate of the function (self instructions, inlined code "
            "counted in the function it was inlined into)\n",
            "| function of | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names)]
    keys = sorted({k for n in names for k in symbols[n]},
                  key=lambda k: -max(symbols[n].get(k, 0) for n in names))
    for k in keys:
        vals = [symbols[n].get(k, 0) for n in names]
        if max(abs(v) for v in vals) >= 100:
            out.append(f"| {k} | " + " | ".join(f"{v:,.0f}" for v in vals) + " |")

    for name in names:
        out += fn_table(f"### {name}: top {TOP} functions by self instructions per request",
                        selfs[name])
    for name in names:
        base = BASELINE.get(name, "pingora-plain")
        if name in ("pingora-plain", "axum-hyper") or base not in selfs:
            continue
        diff = {fn: selfs[name].get(fn, 0) - selfs[base].get(fn, 0)
                for fn in set(selfs[name]) | set(selfs[base])}
        out += fn_table(f"### {name} minus {base}: largest increases of self "
                        "instructions per request", diff, signed=True)
    for name in names:
        ours = {fn: v for fn, v in incls[name].items() if OURS.match(fn)}
        if ours:
            out += fn_table(f"### {name}: our functions, inclusive instructions per request",
                            ours, limit=30)
    text = "\n".join(out) + "\n"
    open(dst, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
