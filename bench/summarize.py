#!/usr/bin/env python3
"""Summarize one kernel's bench run (bench/guest.sh): medians over rounds of fio's IOPS, MB/s
and completion latency (p50, p99, p99.9) per backend, job and device; ratios against dm-linear
measured in the same rounds; DRBD's overhead next to bdr's; the cuts-under-load phase; and
the pre-copy phase (fio IOPS idle vs during a cut with and without pre-copy).

    summarize.py RAW_DIR KVER OUT_JSON OUT_MD

RAW_DIR holds r<round>-<backend>-<dev>-<job>.json (fio --output-format=json), the cuts'
r<...>.cut.json, s<round>-<backend>-<pair>-<job>.json (side by side), repl-fio.json,
repl-status.jsonl, precopy.txt, pc-r<round>-<kind>.json and setup.txt."""
import json
import os
import re
import statistics
import sys

raw_dir, kver, out_json, out_md = sys.argv[1:5]
DEVS = ["raw", "linear", "bdr", "bdrcut", "drbdA", "drbdC"]
LABEL = {"raw": "raw", "linear": "dm-linear", "bdr": "bdr idle", "bdrcut": "bdr during a cut",
         "drbdA": "DRBD prot. A", "drbdC": "DRBD prot. C"}
JOBLABEL = {"rand4k-qd1": "4k randwrite QD1", "rand4k-qd32": "4k randwrite QD32",
            "seq128k-qd4": "128k seq write QD4"}
med = statistics.median


def pct(w, p):
    v = w["clat_ns"].get("percentile", {})
    for k in v:
        if abs(float(k) - p) < 1e-6:
            return v[k] / 1000
    return float("nan")


runs = {}  # (backend, job, dev) -> {round: sample}
cuts = {}  # (backend, job) -> [cut json]
for f in sorted(os.listdir(raw_dir)):
    m = re.fullmatch(r"r(\d+)-(\w+)-(\w+)-([\w-]+?)(\.cut)?\.json", f)
    if not m:
        continue
    rnd, be, dev, job, is_cut = int(m.group(1)), m.group(2), m.group(3), m.group(4), m.group(5)
    try:
        if is_cut:
            txt = open(os.path.join(raw_dir, f)).read().strip()
            if txt:
                cuts.setdefault((be, job), []).append(json.loads(txt))
            continue
        w = json.load(open(os.path.join(raw_dir, f)))["jobs"][0]["write"]
        runs.setdefault((be, job, dev), {})[rnd] = {
            "iops": w["iops"], "mbps": w["bw_bytes"] / 1e6,
            "p50": pct(w, 50), "p99": pct(w, 99), "p999": pct(w, 99.9)}
    except (ValueError, KeyError, IndexError) as e:
        print("summarize: skipping %s: %r" % (f, e), file=sys.stderr)

setup = {}
if os.path.exists(os.path.join(raw_dir, "setup.txt")):
    for line in open(os.path.join(raw_dir, "setup.txt")):
        k, _, v = line.strip().partition(" ")
        setup.setdefault(k, v)

backends = [b for b in ["nullb", "brd"] if any(k[0] == b for k in runs)]
jobs = [j for j in JOBLABEL if any(k[1] == j for k in runs)]
jobs += sorted({k[1] for k in runs} - set(jobs))
result = {"kernel": kver, "setup": setup, "backends": {}}


def ratio_vs(be, job, dev, ref):
    """Median over rounds of dev/ref IOPS and of dev-ref p99 (each round's pair ran back to
    back), and the same from the medians."""
    a, b = runs.get((be, job, dev), {}), runs.get((be, job, ref), {})
    rs = sorted(set(a) & set(b))
    if not rs:
        return None
    pairs = sorted(a[r]["iops"] / b[r]["iops"] for r in rs)
    q = statistics.quantiles(pairs, n=4) if len(pairs) >= 2 else [pairs[0]] * 3
    return {
        "iops_ratio": med(a[r]["iops"] for r in rs) / med(b[r]["iops"] for r in rs),
        "iops_ratio_paired": med(pairs),
        "iops_ratio_paired_quartiles": [q[0], q[2]],
        "iops_ratio_pairs": pairs,
        "p99_diff_us": med(a[r]["p99"] for r in rs) - med(b[r]["p99"] for r in rs),
        "p99_diff_us_paired": med(a[r]["p99"] - b[r]["p99"] for r in rs),
        "p999_diff_us": med(a[r]["p999"] for r in rs) - med(b[r]["p999"] for r in rs),
        "rounds": len(rs),
    }


for be in backends:
    rb = result["backends"][be] = {}
    for job in jobs:
        rj = rb[job] = {"devices": {}, "vs_linear": {}}
        for d in DEVS:
            xs = runs.get((be, job, d))
            if not xs:
                continue
            v = list(xs.values())
            rj["devices"][d] = {
                "rounds": len(v),
                "iops": med(x["iops"] for x in v), "mbps": med(x["mbps"] for x in v),
                "p50_us": med(x["p50"] for x in v), "p99_us": med(x["p99"] for x in v),
                "p999_us": med(x["p999"] for x in v),
                "iops_all": [round(xs[r]["iops"]) for r in sorted(xs)],
            }
            if d != "linear":
                rv = ratio_vs(be, job, d, "linear")
                if rv:
                    rj["vs_linear"][d] = rv
        if (be, job) in cuts:
            cs = cuts[(be, job)]
            rj["cuts"] = {"n": len(cs), "suspend_ms": [c.get("suspend_us", 0) / 1000 for c in cs],
                          "cow": [c.get("cow") for c in cs]}

# Overhead: the IOPS lost against dm-linear, in the same rounds (1 - paired ratio). bdr's
# overhead over DRBD protocol A's, per backend and job; "overall" = the worst case of them.
over = []
for be in backends:
    for job in jobs:
        vs = result["backends"][be][job]["vs_linear"]
        if "bdr" in vs and "drbdA" in vs:
            ob = 1 - vs["bdr"]["iops_ratio_paired"]
            oa = 1 - vs["drbdA"]["iops_ratio_paired"]
            oc = 1 - vs["bdrcut"]["iops_ratio_paired"] if "bdrcut" in vs else None
            over.append({"backend": be, "job": job, "bdr_idle": ob, "bdr_cut": oc, "drbd_a": oa,
                         "bdr_over_drbd_a": ob / oa if oa > 0 else None})
result["overhead"] = over
overall = None
if over:
    mb = statistics.mean(o["bdr_idle"] for o in over)
    ma = statistics.mean(o["drbd_a"] for o in over)
    cutrows = [o["bdr_cut"] for o in over if o["bdr_cut"] is not None]
    mc = statistics.mean(cutrows) if cutrows else None
    worst_p99 = max(result["backends"][o["backend"]][o["job"]]["vs_linear"]["bdr"]["p99_diff_us_paired"]
                    for o in over)
    overall = {"bdr_idle_mean": mb, "bdr_cut_mean": mc, "drbd_a_mean": ma,
               "bdr_idle_over_drbd_a": mb / ma if ma > 0 else None,
               "bdr_cut_over_drbd_a": mc / ma if (ma > 0 and mc is not None) else None,
               "bdr_idle_worst": max(o["bdr_idle"] for o in over),
               "bdr_idle_p99_diff_worst_us": worst_p99}
result["overhead_overall"] = overall

# --- phase 2 ----------------------------------------------------------------------------------
repl = None
sp = os.path.join(raw_dir, "repl-status.jsonl")
if os.path.exists(sp):
    samples = []
    for line in open(sp):
        t, _, js = line.strip().partition(" ")
        try:
            samples.append((int(t), json.loads(js)))
        except ValueError:
            pass
    if len(samples) >= 2:
        (t0, s0), (t1, s1) = samples[0], samples[-1]
        dc = s1["cuts_committed"] - s0["cuts_committed"]
        secs = (t1 - t0) / 1000
        rpo = [(t - s["in_sync_unix_ms"]) / 1000 for t, s in samples if s.get("in_sync_unix_ms")]
        lag = [(t - s["last_cut_committed_unix_ms"]) / 1000 for t, s in samples
               if s.get("last_cut_committed_unix_ms")]
        live = [s for _, s in samples if s.get("current_cut") is not None]
        recent = s1.get("suspend_ms_recent", [])
        # Every cut taken since the seed (the first, a rescan of an idle device), including one
        # still in flight at the end: its suspend window is recorded when it is taken.
        susp = recent[1:] if len(recent) > 1 else recent
        ss = sorted(susp)

        def q(xs, p):
            return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else None
        repl = {
            "seconds": secs, "cuts": dc, "cuts_per_min": 60 * dc / secs if secs else None,
            "cuts_aborted": s1.get("cuts_aborted", 0) - s0.get("cuts_aborted", 0),
            "suspend_ms_p50": q(ss, 50), "suspend_ms_p99": q(ss, 99), "suspend_ms_max": ss[-1] if ss else None,
            "suspend_n": len(ss),
            "rpo_s_p50": med(rpo) if rpo else None, "rpo_s_max": max(rpo) if rpo else None,
            "since_commit_s_p50": med(lag) if lag else None,
            "since_commit_s_max": max(lag) if lag else None,
            "samples": len(samples),
            "cut_live_fraction": len(live) / len(samples),
        }
    fp = os.path.join(raw_dir, "repl-fio.json")
    if repl is not None and os.path.exists(fp):
        try:
            w = json.load(open(fp))["jobs"][0]["write"]
            repl["fio_mbps"] = w["bw_bytes"] / 1e6
            repl["fio_p99_us"] = pct(w, 99)
        except (ValueError, KeyError, IndexError) as e:
            print("summarize: repl-fio.json: %r" % e, file=sys.stderr)
result["cuts_under_load"] = repl

# --- phase 3 ----------------------------------------------------------------------------------
precopy = None
pp = os.path.join(raw_dir, "precopy.txt")
if os.path.exists(pp):
    win = {}  # round -> kind -> {"iops", "ms", cut fields}
    for line in open(pp):
        f = line.split()
        if len(f) != 5 or f[0] != "pc":
            continue
        rnd, kind, ms, writes = int(f[1]), f[2], int(f[3]), int(f[4])
        x = {"iops": writes * 1000 / ms if ms else 0, "ms": ms}
        cj = os.path.join(raw_dir, "pc-r%d-%s.json" % (rnd, kind))
        if kind != "idle" and os.path.exists(cj):
            try:
                c = json.loads(open(cj).read())
                for k in ("cut_ms", "snapshot_ms", "suspend_ms", "precopy_passes", "precopy_regions",
                          "residue_regions", "regions"):
                    if k in c:
                        x[k] = c[k]
            except ValueError as e:
                print("summarize: %s: %r" % (cj, e), file=sys.stderr)
        win.setdefault(rnd, {})[kind] = x
    full = [w for _, w in sorted(win.items()) if all(k in w for k in ("idle", "precopy", "plain"))]
    has_busy = bool(full) and all("busy" in w for w in full)
    if full:
        def mk(kind):
            xs = [w[kind] for w in full]
            r = {"iops": med([x["iops"] for x in xs]), "ms": med([x["ms"] for x in xs]),
                 "iops_all": [x["iops"] for x in xs]}
            if kind != "idle":
                r["vs_idle_paired"] = med([w[kind]["iops"] / w["idle"]["iops"] for w in full
                                           if w["idle"]["iops"]])
            if kind not in ("idle", "busy"):
                if has_busy:
                    r["vs_busy_paired"] = med([w[kind]["iops"] / w["busy"]["iops"] for w in full
                                               if w["busy"]["iops"]])
                frac = [x["snapshot_ms"] / x["cut_ms"] for x in xs if x.get("cut_ms") and "snapshot_ms" in x]
                r["snapshot_fraction"] = med(frac) if frac else None
                for k in ("cut_ms", "snapshot_ms", "precopy_passes", "precopy_regions", "residue_regions"):
                    v = [x[k] for x in xs if k in x]
                    r[k] = med(v) if v else None
            return r
        precopy = {"rounds": len(full), "idle": mk("idle"), "precopy": mk("precopy"), "plain": mk("plain")}
        if has_busy:
            precopy["busy"] = mk("busy")
result["precopy"] = precopy

# --- markdown ---------------------------------------------------------------------------------
rl = setup.get("rounds", "? runtime ? ramp ?").split()
lines = ["### %s" % kver, ""] if not backends else [
    "### %s" % kver, "",
    "fio libaio direct, %s s + %s s ramp per run, %s rounds with the devices alternated (order "
    "rotated each round), writes over the first %s MiB of each device; null_blk %s MiB (no "
    "memory, irqmode=0), brd; QEMU TCG, %s vCPUs. Medians over rounds; ratios and differences "
    "are medians of per-round pairs against dm-linear." % (
        rl[2] if len(rl) > 2 else "?", rl[4] if len(rl) > 4 else "?", rl[0],
        setup.get("span_mb", "?"), setup.get("lower", "? ? ?").split()[-1], setup.get("cpus", "?")),
    "",
    "| backend | job | device | IOPS | MB/s | p50 µs | p99 µs | p99.9 µs | IOPS / dm-linear | p99 − dm-linear µs |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
]
for be in backends:
    for job in jobs:
        rj = result["backends"][be][job]
        for d in DEVS:
            x = rj["devices"].get(d)
            if not x:
                continue
            v = rj["vs_linear"].get(d)
            lines.append("| %s | %s | %s | %.0f | %.1f | %.1f | %.1f | %.1f | %s | %s |" % (
                be, JOBLABEL.get(job, job), LABEL[d], x["iops"], x["mbps"], x["p50_us"], x["p99_us"],
                x["p999_us"], "%.3f" % v["iops_ratio_paired"] if v else "1", "%+.1f" % v["p99_diff_us_paired"] if v else "0"))
if over:
    lines += ["", "Overhead = IOPS lost against dm-linear (1 − the paired ratio); target: bdr idle "
              "≥ 99% of dm-linear (overhead ≤ 1%), p99 within 2 µs, and bdr's overhead ≤ 1/10 of DRBD "
              "protocol A's.", "",
              "| backend | job | bdr idle | bdr during a cut | DRBD A | bdr idle / DRBD A |",
              "|---|---|---:|---:|---:|---:|"]
    for o in over:
        lines.append("| %s | %s | %.1f%% | %s | %.1f%% | %s |" % (
            o["backend"], JOBLABEL.get(o["job"], o["job"]), 100 * o["bdr_idle"],
            "%.1f%%" % (100 * o["bdr_cut"]) if o["bdr_cut"] is not None else "–", 100 * o["drbd_a"],
            "%.3f" % o["bdr_over_drbd_a"] if o["bdr_over_drbd_a"] is not None else "–"))
if overall:
    o = overall
    lines += ["", "Mean over these rows: bdr idle loses %.1f%% (worst row %.1f%%; p99 vs dm-linear worst "
              "row %+.1f µs), bdr during a cut %s, DRBD protocol A %.1f%%: bdr idle's overhead is %s of "
              "DRBD A's, during a cut %s." % (
                  100 * o["bdr_idle_mean"], 100 * o["bdr_idle_worst"], o["bdr_idle_p99_diff_worst_us"],
                  "%.1f%%" % (100 * o["bdr_cut_mean"]) if o["bdr_cut_mean"] is not None else "–",
                  100 * o["drbd_a_mean"],
                  "%.3f" % o["bdr_idle_over_drbd_a"] if o["bdr_idle_over_drbd_a"] is not None else "–",
                  "%.2f" % o["bdr_cut_over_drbd_a"] if o["bdr_cut_over_drbd_a"] is not None else "–")]
# The >= 99% target, decided only where the rounds allow it (at least 8 rounds and the
# middle half of the per-round ratios within 5%): met if their lower quartile is >= 0.99,
# missed if the upper one is below, else undecided.
dec = []
for be in backends:
    for job in jobs:
        v = result["backends"][be][job]["vs_linear"].get("bdr")
        if not v:
            continue
        q1, q3 = v["iops_ratio_paired_quartiles"]
        if v["rounds"] < 8 or q3 - q1 > 0.05:
            verdict = "not decided (too few rounds or too noisy)"
        else:
            verdict = "met" if q1 >= 0.99 else "missed" if q3 < 0.99 else "not decided at this precision"
        v["target_99"] = verdict
        dec.append("%s %s: median %.3f, quartiles %.3f-%.3f over %d rounds: %s" % (
            be, JOBLABEL.get(job, job), v["iops_ratio_paired"], q1, q3, v["rounds"], verdict))
if dec:
    lines += ["", "bdr idle / dm-linear, per-round pairs (target ≥ 0.99: met if the lower quartile "
              "is ≥ 0.99, missed if the upper one is below; decided only over ≥ 8 rounds with the "
              "quartiles ≤ 0.05 apart): " + "; ".join(dec) + "."]
cs = [s for be in backends for j in jobs for s in result["backends"][be][j].get("cuts", {}).get("suspend_ms", [])]
if cs:
    lines += ["", "Cuts taken for the \"during a cut\" rows: %d, suspend window median %.1f ms, max %.1f ms." % (
        len(cs), med(cs), max(cs))]
if repl:
    rp = (setup.get("repl", "") + " ?" * 10).split()
    lines += [
        "", "Cuts under load: `bdr primary run --interval %s` shipping to `bdr replica serve` in another "
        "network namespace (veth) while fio writes %s random blocks at `--rate=%s` to the %s MiB device "
        "(memory-backed null_blk) for %.0f s." % (rp[9], rp[7], rp[5], rp[3], repl["seconds"]), "",
        "| cuts committed | cuts/min | aborted | cuts taken (suspend windows) | suspend p50 ms | suspend p99 ms | suspend max ms | RPO p50 s | RPO max s | fio MB/s achieved |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| %d | %.1f | %d | %d | %s | %s | %s | %s | %s | %s |" % tuple(
            [repl["cuts"], repl["cuts_per_min"] or 0, repl["cuts_aborted"], repl["suspend_n"]] +
            ["%.1f" % repl[k] if repl.get(k) is not None else "–" for k in
             ("suspend_ms_p50", "suspend_ms_p99", "suspend_ms_max", "rpo_s_p50", "rpo_s_max", "fio_mbps")]),
        "", "RPO = age of the newest state the replica is known to hold (`rpo_age_seconds` of `bdr "
        "status`), sampled every second. A cut (live snapshot, so COW on first writes) was in "
        "flight in %.0f%% of the samples." % (100 * repl["cut_live_fraction"]),
    ]
if precopy:
    pc = (setup.get("precopy", "") + " ?" * 8).split()
    lines += [
        "", "Pre-copy: fio 4k random writes at QD1 on a hot 4 MiB range of a bdr device (%s MiB "
        "memory-backed null_blk) without pause; before each window %s MiB of fresh 64 KiB writes "
        "elsewhere; windows alternated in %d rounds: idle; busy (the control: no cut, a CPU-bound "
        "loop at the daemon's nice 10); `bdr sync --once` (pre-copy) and `bdr sync --once "
        "--no-precopy` to a replica in another namespace (at nice 19, standing for its own "
        "machine). Write IOPS counted on the device's stat over each window; medians, ratios are "
        "medians of per-round pairs. Target: ≥ 90%% of idle IOPS during a pre-copy cut, snapshot "
        "alive ≤ 20%% of the cut." % (pc[3], pc[5], precopy["rounds"]), "",
        "| window | IOPS | IOPS / idle | IOPS / busy | window s | snapshot alive s | snapshot / cut | pre-copy passes | regions pre-copied | residue regions |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, label in (("idle", "idle"), ("busy", "busy (control: CPU loop, nice 10)"),
                     ("precopy", "cut with pre-copy"), ("plain", "cut without pre-copy")):
        x = precopy.get(k)
        if x is None:
            continue

        def fmt(v, f):
            return f % v if v is not None else "–"
        lines.append("| %s | %.0f | %s | %s | %.1f | %s | %s | %s | %s | %s |" % (
            label, x["iops"], fmt(x.get("vs_idle_paired", 1.0), "%.3f"),
            fmt(x.get("vs_busy_paired", 1.0 if k == "busy" else None), "%.3f"), x["ms"] / 1000,
            fmt(x["snapshot_ms"] / 1000 if x.get("snapshot_ms") is not None else None, "%.2f"),
            fmt(x.get("snapshot_fraction"), "%.2f"), fmt(x.get("precopy_passes"), "%g"),
            fmt(x.get("precopy_regions"), "%g"), fmt(x.get("residue_regions"), "%g")))
# Side by side (phase 1b): per round, both jobs of one fio run: a = dm-linear, b = bdr idle
# (pair "bdr") or another dm-linear (pair "ctl", the control). The ratio b/a of a round is
# free of the drift between runs; the control's spread is what the method cannot resolve.
side = {}  # (backend, job, pair) -> {round: (iops ratio, p99 diff µs)}
for f in sorted(os.listdir(raw_dir)):
    m = re.fullmatch(r"s(\d+)-(\w+)-(bdr|ctl)-([\w-]+)\.json", f)
    if not m:
        continue
    try:
        js = {j["jobname"]: j["write"] for j in json.load(open(os.path.join(raw_dir, f)))["jobs"]}
        a, b = js["a"], js["b"]
        side.setdefault((m.group(2), m.group(4), m.group(3)), {})[int(m.group(1))] = (
            b["iops"] / a["iops"], pct(b, 99) - pct(a, 99), a["iops"], b["iops"])
    except (ValueError, KeyError, IndexError, ZeroDivisionError) as e:
        print("summarize: skipping %s: %r" % (f, e), file=sys.stderr)
if side:
    sres = result["side_by_side"] = {}
    sl = (setup.get("side", "") + " ?" * 6).split()
    lines += ["", "Side by side: two fio jobs at once, one per vCPU (pinned), each on its own lower "
              "device of the same kind, dm-linear (a) next to bdr idle or next to another dm-linear "
              "(the control); which device and vCPU each side gets rotates over 4 rounds. %s rounds "
              "of %s s. Ratios b/a and p99 differences b − a are per round, then medians and "
              "quartiles over rounds. Target: bdr idle ≥ 0.99 of dm-linear, p99 within 2 µs; decided "
              "where the control shows the method resolves it (≥ 8 rounds, the control's median "
              "within 0.01 of 1 and its quartiles ≤ 0.05 apart): met if bdr's lower quartile is ≥ "
              "0.99, missed if its upper one is below." % (sl[1], sl[3]), "",
              "| backend | job | pair | rounds | IOPS a | IOPS b | b/a median | b/a quartiles | p99 b − a µs | verdict |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for (be, job, pair) in sorted(side, key=lambda k: (k[0], list(JOBLABEL).index(k[1]) if k[1] in JOBLABEL else 9, k[2])):
        xs = side[(be, job, pair)]
        rs = sorted(xs)
        rat = sorted(xs[r][0] for r in rs)
        q = statistics.quantiles(rat, n=4) if len(rat) >= 2 else [rat[0]] * 3
        e = {"rounds": len(rs), "iops_ratio": med(rat), "iops_ratio_quartiles": [q[0], q[2]],
             "iops_ratios": [xs[r][0] for r in rs], "p99_diff_us": med(xs[r][1] for r in rs),
             "iops_a": med(xs[r][2] for r in rs), "iops_b": med(xs[r][3] for r in rs)}
        sres.setdefault(be, {}).setdefault(job, {})[pair] = e
    for be, bj in sres.items():
        for job, pj in bj.items():
            c, v = pj.get("ctl"), pj.get("bdr")
            if v:
                resolved = (c is not None and c["rounds"] >= 8 and abs(c["iops_ratio"] - 1) <= 0.01
                            and c["iops_ratio_quartiles"][1] - c["iops_ratio_quartiles"][0] <= 0.05)
                q1, q3 = v["iops_ratio_quartiles"]
                if v["rounds"] < 8 or not resolved:
                    v["target_99"] = "not decided (the control does not resolve 1%)"
                else:
                    v["target_99"] = ("met" if q1 >= 0.99 else "missed" if q3 < 0.99
                                      else "not decided at this precision")
                v["target_p99_2us"] = "met" if v["p99_diff_us"] <= 2 else "missed"
            for pair in ("bdr", "ctl"):
                e = pj.get(pair)
                if not e:
                    continue
                lines.append("| %s | %s | %s | %d | %.0f | %.0f | %.3f | %.3f-%.3f | %+.1f | %s |" % (
                    be, JOBLABEL.get(job, job), "bdr idle" if pair == "bdr" else "dm-linear (control)",
                    e["rounds"], e["iops_a"], e["iops_b"], e["iops_ratio"], e["iops_ratio_quartiles"][0],
                    e["iops_ratio_quartiles"][1], e["p99_diff_us"],
                    "IOPS %s; p99 %s" % (e["target_99"], e["target_p99_2us"]) if pair == "bdr" else "–"))
if "host_load" in setup:
    lines += ["", "Host load average: %s." % setup["host_load"]]
spread = [((max(x["iops_all"]) - min(x["iops_all"])) / x["iops"], "%s %s %s" % (be, j, d))
          for be in backends for j in jobs for d, x in result["backends"][be][j]["devices"].items()
          if x["iops"] and len(x["iops_all"]) > 1]
if spread:
    s = max(spread)
    result["max_iops_spread"] = {"fraction": s[0], "where": s[1]}
    if s[0] > 0.15:
        lines += ["", "**Noisy run**: IOPS across rounds spread by up to %.0f%% (%s); a quiet host gives "
                  "about ±5%%. Read the ratios with that in mind." % (100 * s[0], s[1])]
with open(out_json, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
with open(out_md, "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
