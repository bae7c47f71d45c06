#!/usr/bin/env python3
"""Per-call instruction counts from the output of the `callgrind` bench.

    cargo bench -p pingora-tower-benches --bench callgrind 2>&1 | tee /tmp/callgrind.txt
    python3 benches/callgrind_table.py /tmp/callgrind.txt

Prints a Markdown table: instructions per call of every variant (the bench's total divided by
the number of counted calls, `CALLS` in callgrind.rs) and the overhead over `bare` of the same
inner shape (over `bare_axum` for the variants ending in `_axum`, whose inner service answers
axum's `Body`).
"""

import re
import sys

CALLS = 1000
HEADER = re.compile(r"^callgrind::\w+::calls_(\w+) (\w+):")
INSTRUCTIONS = re.compile(r"^\s+Instructions:\s+(\d+)")


def main() -> None:
    text = open(sys.argv[1]).read() if len(sys.argv) > 1 else sys.stdin.read()
    counts: dict[tuple[str, str], int] = {}
    current = None
    for line in text.splitlines():
        if m := HEADER.match(line):
            current = (m.group(2), m.group(1))
        elif (m := INSTRUCTIONS.match(line)) and current:
            counts[current] = int(m.group(1))
            current = None
    shapes = ["immediate", "yield_once"]
    variants = list(dict.fromkeys(v for v, _ in counts))
    print("| variant | " + " | ".join(f"{s}: Ir/call | {s}: over bare" for s in shapes) + " |")
    print("|---|" + "---:|---:|" * len(shapes))
    for v in variants:
        cells = []
        for s in shapes:
            axum = v.endswith("_axum") and v != "bare_axum"
            base = "bare_axum" if axum else "bare"
            total, bare = counts.get((v, s)), counts.get((base, s))
            if total is None:
                cells += ["", ""]
                continue
            per_call = total / CALLS
            over = "" if bare is None else f"{per_call - bare / CALLS:+.0f}"
            cells += [f"{per_call:.0f}", over]
        print(f"| {v} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
