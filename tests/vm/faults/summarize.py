#!/usr/bin/env python3
"""The faults suite's table: $RESULTS/faults.tsv (one line per injected fault) to markdown.

  summarize.py --tsv FAULTS_TSV --bw GLOB --baseline T0 T1 [--assert-tput R] [--extra LINE]...

Fills the tsv's tput_ratio column first: fio's mean bandwidth (its 1-second bw log samples, unix
ms) over each fault's window (injected_at .. window_end) over the mean of the fault-free
baseline window T0..T1 ("-" for faults that stop fio, or a window with fewer than 2 samples).
With --assert-tput R, a ratio below R fails that fault's verdict and the exit status is 1.
"""
import argparse
import csv
import glob
import statistics
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--tsv", required=True)
ap.add_argument("--bw", default="")
ap.add_argument("--baseline", nargs=2, type=int)
ap.add_argument("--assert-tput", type=float)
ap.add_argument("--extra", action="append", default=[])
a = ap.parse_args()

rows = list(csv.DictReader(open(a.tsv), delimiter="\t"))
fields = list(rows[0].keys()) if rows else []
samples = []
for f in glob.glob(a.bw):
    for line in open(f):
        p = [x.strip() for x in line.split(",")]
        if len(p) >= 3 and p[2] == "1":
            samples.append((int(p[0]), float(p[1])))


def mean_bw(t0, t1):
    v = [b for t, b in samples if t0 <= t <= t1]
    return statistics.mean(v) if len(v) >= 2 else None


base = mean_bw(*a.baseline) if a.baseline else None
failed = 0
for r in rows:
    m = None
    if base and r["kind"] not in ("detach_attach", "reload"):
        m = mean_bw(int(r["injected_at"]), int(r["window_end"]))
    r["tput_ratio"] = "%.2f" % (m / base) if m is not None else "-"
    if a.assert_tput and m is not None and m / base < a.assert_tput:
        r["verdict"] = "FAIL"
        r["note"] = (r["note"] + "; " if r["note"] else "") + "throughput %.2f < %.2f" % (m / base, a.assert_tput)
        failed += 1
        print("%s at %s: throughput ratio %.2f" % (r["kind"], r["injected_at"], m / base), file=sys.stderr)
if rows:
    with open(a.tsv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
kinds = []
for r in rows:
    if r["kind"] not in kinds:
        kinds.append(r["kind"])


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def mib(b):
    return "%.1f" % (b / 1048576)


def line(name, rs):
    errs = sum(int(r["primary_io_errors"]) for r in rs)
    stalls = [x for x in (num(r["worst_stall_ms"]) for r in rs) if x is not None]
    susp = [x for x in (num(r["suspend_ref_ms"]) for r in rs) if x is not None]
    cu = [x for x in (num(r["catchup_s"]) for r in rs) if x is not None]
    tp = [x for x in (num(r["tput_ratio"]) for r in rs) if x is not None]
    shipped = sum(int(r["bytes_shipped"] or 0) for r in rs)
    dirty = sum(int(r["bytes_dirty"] or 0) for r in rs)
    bad = sum(r["verdict"] != "PASS" for r in rs)
    return "| %s | %d | %d | %s | %s | %s | %s | %s / %s | %s | %d |" % (
        name, len(rs), errs,
        "%.0f" % max(stalls) if stalls else "-",
        "%.0f" % max(susp) if susp else "-",
        "%.1f" % statistics.median(cu) if cu else "-",
        "%.1f" % max(cu) if cu else "-",
        mib(shipped), mib(dirty),
        "%.2f" % min(tp) if tp else "-",
        bad)


print("| fault | count | primary I/O errors | worst stall ms | suspend window ms (max seen) "
      "| catch-up s median | catch-up s max | MiB shipped / dirty | min throughput ratio "
      "| failed |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for k in kinds:
    print(line(k, [r for r in rows if r["kind"] == k]))
print(line("**all**", rows))
print()
print("Baseline fio bandwidth: %s KiB/s (paced at 128 KiB/s)." % ("%.0f" % base if base else "-"))
for extra in a.extra:
    print()
    print(extra)
sys.exit(1 if failed else 0)
