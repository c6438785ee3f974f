#!/usr/bin/env python3
"""Crash consistency of the replica's commit, checked the way xfstests generic/482 does.

The replica's device and its state dir's filesystem are two dm-linear slices of ONE
dm-log-writes device (the device first, the state filesystem from sector SPLIT on), so its
log holds every write of both in one order, with the flushes and FUA writes that made them
durable. This replays that log onto zeroed images and stops at every FLUSH or FUA entry after
the mark `seeded` (entries before it: mkfs of the state filesystem and the seed cut, which
writes the device without a journal on purpose). At each stop where something was written
since the previous stop, a copy of the two images is a crash state: its state filesystem is
mounted (ext4 replays its own journal), `bdr replica serve` opens the store on it (the replica's
recovery: replay or discard its redo journal) and is stopped, and then the device must hash
to the image of the cut its state file names (EXPECTED: lines `cut<TAB>b2sum` written by the
suite, one per committed cut, the primary's device hashed while quiescent just before the
cut) and pass `e2fsck -fn`.

  lw_replay.py LOG SPLIT_SECTORS DEV_BYTES EXPECTED WORKDIR BDR MAX_CHECKS OUT_TSV

MAX_CHECKS > 0: check at most that many stops, spread evenly (the quick tier); 0: all.
Prints a summary line; exits 1 if any checked stop failed, 2 on a malformed log.
"""
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

MAGIC = 0x6A736677736872
FLUSH, FUA, DISCARD, MARK = 1, 2, 4, 8

log_path, split, dev_bytes, exp_path, work, bdr, max_checks, out_tsv = sys.argv[1:9]
split, dev_bytes, max_checks = int(split), int(dev_bytes), int(max_checks)
expected = {}
for line in open(exp_path):
    c, h = line.split()
    expected[int(c)] = h

os.makedirs(work, exist_ok=True)
wrep, wst = os.path.join(work, "w-dev.img"), os.path.join(work, "w-state.img")
crep, cst = os.path.join(work, "c-dev.img"), os.path.join(work, "c-state.img")
mnt = os.path.join(work, "mnt")
os.makedirs(mnt, exist_ok=True)

lf = open(log_path, "rb")
magic, version, nr_entries, ss = struct.unpack("<QQQI", lf.read(28))
if magic != MAGIC or version != 1:
    print("not a dm-log-writes log (magic %x version %d)" % (magic, version))
    sys.exit(2)
split_b = split * 512
for p in (wrep, wst):
    with open(p, "wb") as f:
        f.truncate(split_b)
frep, fst = open(wrep, "r+b"), open(wst, "r+b")


def apply(sector, data):
    """Write data at byte offset sector*ss of the log-writes device, split on the slices."""
    off = sector * ss
    while data:
        if off < split_b:
            n = min(len(data), split_b - off)
            frep.seek(off)
            frep.write(data[:n])
        else:
            n = len(data)
            fst.seek(off - split_b)
            fst.write(data)
        off, data = off + n, data[n:]


# Pass 1: replay, and note the stops (entry index, flags) where the images are worth checking.
stops = []  # (entry index, flags, byte offset of the next entry)
seeded, dirty, marks, writes = False, False, [], 0
pos = ss
for i in range(nr_entries):
    lf.seek(pos)
    sector, nr, flags, dlen = struct.unpack("<QQQQ", lf.read(32))
    if flags & MARK:
        name = lf.read(dlen).rstrip(b"\0").decode(errors="replace")
        marks.append(name)
        seeded = seeded or name == "seeded"
        pos += ss
        continue
    if nr and flags & DISCARD:
        apply(sector, b"\0" * (nr * ss))
        dirty = True
    elif nr:
        lf.seek(pos + ss)
        apply(sector, lf.read(nr * ss))
        writes += 1
        dirty = True
    pos += ss * (1 + (nr if not flags & DISCARD else 0))
    if flags & (FLUSH | FUA) and seeded and dirty:
        stops.append((i, flags))
        dirty = False
if "seeded" not in marks:
    print("no mark 'seeded' in the log (marks: %s)" % marks)
    sys.exit(2)

chosen = stops
if max_checks and len(stops) > max_checks:
    step = len(stops) / max_checks
    chosen = [stops[int(k * step)] for k in range(max_checks)]
    chosen[-1] = stops[-1]
want = {i for i, _ in chosen}


def sh(*cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def b2(path):
    return sh("b2sum", path).stdout.split()[0]


def check(i, flags):
    """One crash state: recovery, then the device must be the named cut and fsck-clean."""
    frep.flush()
    fst.flush()
    shutil.copyfile(wrep, crep)
    shutil.copyfile(wst, cst)
    raw = b2(crep)
    raw_cut = next((c for c, h in expected.items() if h == raw), None)
    r = sh("mount", "-o", "loop", cst, mnt)
    if r.returncode:
        return ("FAIL", "-", "-", "state filesystem does not mount: " + r.stdout.strip()[-200:], raw_cut)
    try:
        sd = os.path.join(mnt, "state")
        if not os.path.exists(os.path.join(sd, "state")):
            return ("FAIL", "-", "-", "no state file after the seed", raw_cut)
        p = subprocess.Popen([bdr, "replica", "serve", "--device", crep, "--listen", "127.0.0.1:0",
                              "--state-dir", sd], stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(work, "serve.log"), "a"))
        st, recovery, end = os.path.join(sd, "replica-status.json"), "?", time.time() + 60
        import json
        ok = False
        while time.time() < end and p.poll() is None:
            try:
                j = json.load(open(st))
                if j.get("pid") == p.pid and j.get("state") == "serving":
                    recovery, ok = str(j.get("recovery")), True
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        rc = p.wait()
        if not ok or rc:
            return ("FAIL", "-", recovery, "replica serve did not open the store (status %s)" % rc, raw_cut)
        last = None
        for line in open(os.path.join(sd, "state")):
            if line.startswith("last_cut "):
                last = int(line.split()[1])
    finally:
        sh("umount", mnt)
    h = b2(crep)
    if last not in expected:
        return ("FAIL", last, recovery, "state names cut %s, not one of the committed cuts %s" % (last, sorted(expected)), raw_cut)
    if h != expected[last]:
        other = [c for c, x in expected.items() if x == h]
        return ("FAIL", last, recovery, "device is not cut %s's image (it equals cuts %s)" % (last, other), raw_cut)
    r = sh("e2fsck", "-fn", crep)
    if r.returncode:
        return ("FAIL", last, recovery, "e2fsck -fn: " + r.stdout.strip()[-300:], raw_cut)
    return ("PASS", last, recovery, "", raw_cut)


# Pass 2: replay again from zero, checking at the chosen stops.
for p in (frep, fst):
    p.seek(0)
    p.truncate(0)
    p.truncate(split_b)
out = open(out_tsv, "w")
out.write("entry\tflags\tverdict\tlast_cut\trecovery\traw_equals_cut\tdetail\n")
pos, fails, checked, replayed = ss, 0, 0, 0
for i in range(nr_entries):
    lf.seek(pos)
    sector, nr, flags, dlen = struct.unpack("<QQQQ", lf.read(32))
    if flags & MARK:
        pos += ss
        continue
    if nr and flags & DISCARD:
        apply(sector, b"\0" * (nr * ss))
    elif nr:
        lf.seek(pos + ss)
        apply(sector, lf.read(nr * ss))
    pos += ss * (1 + (nr if not flags & DISCARD else 0))
    if i in want:
        v, last, rec, detail, raw_cut = check(i, flags)
        checked += 1
        replayed += rec.startswith("Replayed") or "replayed" in rec.lower()
        fails += v != "PASS"
        fl = "|".join(n for b, n in ((FLUSH, "FLUSH"), (FUA, "FUA")) if flags & b)
        out.write("%d\t%s\t%s\t%s\t%s\t%s\t%s\n" % (i, fl, v, last, rec, raw_cut, detail))
        out.flush()
        if v != "PASS":
            print("entry %d (%s): %s" % (i, fl, detail))
print("log: %d entries, %d writes, marks %s; %d flush/FUA stops after the seed, %d checked, "
      "%d with the journal replayed by recovery, %d failed; committed cuts %s"
      % (nr_entries, writes, marks, len(stops), checked, replayed, fails, sorted(expected)))
sys.exit(1 if fails else 0)
