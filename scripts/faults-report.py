#!/usr/bin/env python3
"""One row of scripts/faults: reads a `wsctl load --ack --json` report and the fault window (seconds
since the load process started) and prints what the audit saw.

  faults-report.py --header
  faults-report.py NAME REPORT.json FAULT_START FAULT_END EXTRA [BASELINE.json]

Recovery is the time from the end of the fault to the first second whose deliveries reach half
the median rate of the seconds before the fault.
"""
import json
import statistics
import sys

COLS = ["scenario", "sent", "acked online", "acked offline", "refused", "unanswered", "slowest answer",
        "delivered", "refused, never arrived", "lost", "lost after ack", "recovery", "notes"]

if sys.argv[1] == "--header":
    print("| " + " | ".join(COLS) + " |")
    print("|" + "---|" * len(COLS))
    sys.exit(0)

name, path, start, end, extra = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
r = json.load(open(path))
acks = r.get("acks") or {}
series = r.get("series") or []
before = [p["delivered"] for p in series if p["t"] <= start and p["t"] > r["run"].get("traffic_start_s", 0) + 1]
base = statistics.median(before) if before else 0
recovery = "n/a"
for p in series:
    if p["t"] > end and base and p["delivered"] >= base / 2:
        recovery = f"{max(0.0, p['t'] - 1 - end):.1f} s"
        break
refused = acks.get("refused", {})
refused_s = ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "0"
notes = [extra] if extra else []
if len(sys.argv) > 6:
    b = json.load(open(sys.argv[6]))
    p99, bp99 = r["latency_ms"].get("p99_ms"), b["latency_ms"].get("p99_ms")
    if p99 and bp99:
        notes.append(f"p99 {p99:.1f} ms vs {bp99:.1f} ms without the slow reader ({p99 / bp99:.2f}x)")
closes = r["connections"].get("unexpected_closes", {})
if closes:
    notes.append("closes: " + ", ".join(f"{k} {v}" for k, v in sorted(closes.items())))
row = [name, r["messages"]["sent"], acks.get("online", "?"), acks.get("offline", "?"), refused_s,
       acks.get("unanswered", "?"), f"{acks.get('latency_ms', {}).get('max_ms', 0):.0f} ms",
       r["messages"]["delivered"], r["audit"].get("refused_missing", 0), r["audit"]["lost"], acks.get("lost_after_ack", "?"), recovery, "; ".join(notes)]
print("| " + " | ".join(str(c) for c in row) + " |")
