#!/usr/bin/env python3
"""Summarize one kernel's bench run: medians over rounds of fio's IOPS and completion latency
(p50, p99) per device and queue depth, and bdr's overhead relative to dm-linear.

    summarize.py RAW_DIR KVER OUT_JSON OUT_MD

RAW_DIR holds r<round>-<dev>-qd<qd>.json (fio --output-format=json) and setup.txt."""
import json
import os
import re
import statistics
import sys

raw_dir, kver, out_json, out_md = sys.argv[1:5]
DEVS = ["raw", "linear", "bdr"]
runs = {}  # (dev, qd) -> list of (iops, p50_us, p99_us)
by_round = {}  # (dev, qd, round) -> (iops, p50_us, p99_us)
for f in sorted(os.listdir(raw_dir)):
    m = re.fullmatch(r"r(\d+)-(\w+)-qd(\d+)\.json", f)
    if not m:
        continue
    try:
        w = json.load(open(os.path.join(raw_dir, f)))["jobs"][0]["write"]
        pct = w["clat_ns"]["percentile"]
        x = (w["iops"], pct["50.000000"] / 1000, pct["99.000000"] / 1000)
        runs.setdefault((m.group(2), int(m.group(3))), []).append(x)
        by_round[(m.group(2), int(m.group(3)), int(m.group(1)))] = x
    except (ValueError, KeyError, IndexError) as e:
        print("summarize: skipping %s: %r" % (f, e), file=sys.stderr)

setup = {}
if os.path.exists(os.path.join(raw_dir, "setup.txt")):
    for line in open(os.path.join(raw_dir, "setup.txt")):
        k, _, v = line.strip().partition(" ")
        setup[k] = v

qds = sorted({qd for (_, qd) in runs})
result = {"kernel": kver, "setup": setup, "qd": {}}
for qd in qds:
    r = {}
    for d in DEVS:
        xs = runs.get((d, qd))
        if not xs:
            continue
        r[d] = {
            "rounds": len(xs),
            "iops_median": statistics.median(x[0] for x in xs),
            "clat_p50_us_median": statistics.median(x[1] for x in xs),
            "clat_p99_us_median": statistics.median(x[2] for x in xs),
            "iops_all": [round(x[0]) for x in xs],
            "clat_p99_us_all": [round(x[2], 1) for x in xs],
        }
    if "bdr" in r and "linear" in r:
        # Also the median of per-round ratios: each round's pair ran back to back, so this
        # one is less sensitive to slow drift (e.g. load on the host) than the ratio of medians.
        pairs = [(by_round[("bdr", qd, n)], by_round[("linear", qd, n)])
                 for (d, q, n) in by_round if d == "bdr" and q == qd and ("linear", qd, n) in by_round]
        r["bdr_vs_linear"] = {
            "iops_ratio": r["bdr"]["iops_median"] / r["linear"]["iops_median"],
            "p99_diff_us": r["bdr"]["clat_p99_us_median"] - r["linear"]["clat_p99_us_median"],
            "iops_ratio_paired_median": statistics.median(b[0] / l[0] for b, l in pairs),
            "p99_diff_us_paired_median": statistics.median(b[2] - l[2] for b, l in pairs),
        }
    if "linear" in r and "raw" in r:
        r["linear_vs_raw"] = {
            "iops_ratio": r["linear"]["iops_median"] / r["raw"]["iops_median"],
            "p99_diff_us": r["linear"]["clat_p99_us_median"] - r["raw"]["clat_p99_us_median"],
        }
    result["qd"][str(qd)] = r

with open(out_json, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

lines = [
    "### %s" % kver,
    "",
    "fio 4k randwrite, libaio, direct, %ss + %ss ramp, %s rounds alternated; null_blk %s MiB "
    "(no memory, irqmode=0); QEMU TCG, %s vCPUs. Medians over rounds."
    % (setup.get("rounds", "?").split()[2] if "rounds" in setup else "?",
       setup.get("rounds", "? ? ? ? ?").split()[4] if "rounds" in setup else "?",
       setup.get("rounds", "?").split()[0] if "rounds" in setup else "?",
       setup.get("lower", "? size_mb ?").split()[-1], setup.get("cpus", "?")),
    "",
    "| QD | device | IOPS | p50 clat µs | p99 clat µs | IOPS per round |",
    "|---:|---|---:|---:|---:|---|",
]
for qd in qds:
    r = result["qd"][str(qd)]
    for d in DEVS:
        if d in r:
            x = r[d]
            lines.append("| %d | %s | %.0f | %.1f | %.1f | %s |" % (
                qd, "dm-" + d if d == "linear" else d, x["iops_median"], x["clat_p50_us_median"],
                x["clat_p99_us_median"], ", ".join(str(v) for v in x["iops_all"])))
lines += ["", "| QD | bdr/dm-linear IOPS | bdr − dm-linear p99 µs | same, median of per-round pairs "
          "| dm-linear/raw IOPS |", "|---:|---:|---:|---|---:|"]
for qd in qds:
    r = result["qd"][str(qd)]
    b, l = r.get("bdr_vs_linear"), r.get("linear_vs_raw")
    lines.append("| %d | %s | %s | %s | %s |" % (
        qd, "%.3f" % b["iops_ratio"] if b else "–", "%+.1f" % b["p99_diff_us"] if b else "–",
        "%.3f, %+.1f µs" % (b["iops_ratio_paired_median"], b["p99_diff_us_paired_median"]) if b else "–",
        "%.3f" % l["iops_ratio"] if l else "–"))
if "host_load" in setup:
    lines += ["", "Host load average: %s." % setup["host_load"]]
# On a quiet host rounds agree within about ±5%; say so when they don't.
spread = max(((max(x["iops_all"]) - min(x["iops_all"])) / x["iops_median"], "QD%s %s" % (qd, d))
             for qd, r in result["qd"].items() for d, x in r.items() if d in DEVS)
result["max_iops_spread"] = {"fraction": spread[0], "where": spread[1]}
if spread[0] > 0.15:
    lines += ["", "**Noisy run**: IOPS across rounds spread by up to %.0f%% (%s); a quiet host gives "
              "about ±5%%. Don't read the ratios above as bdr's overhead." % (100 * spread[0], spread[1])]
with open(out_json, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
with open(out_md, "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
