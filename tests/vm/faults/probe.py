#!/usr/bin/env python3
"""Latency probe of the faults suite: a 4 KiB O_DIRECT write every 20 ms to FILE (on the
primary's filesystem), timed. Writes to OUT, one line each, unix ms:
  <end_ms> L <latency_ms>        every write slower than 20 ms
  <end_ms> H <max_ms> <n>        a heartbeat every second: the slowest write and the count
  <end_ms> E <message>           a failed write (a primary I/O error)
While the file PAUSE exists it writes nothing (the suite pauses the workload to verify).

  probe.py FILE OUT PAUSE
"""
import mmap
import os
import sys
import time

path, out, pause = sys.argv[1:4]
SIZE = 1 << 20
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
if os.fstat(fd).st_size < SIZE:
    os.write(fd, b"\0" * SIZE)  # written, not just allocated: no extent conversion later
os.fsync(fd)
buf = mmap.mmap(-1, 4096)  # page-aligned for O_DIRECT
os.close(fd)
fd = os.open(path, os.O_RDWR | os.O_DIRECT)
log = open(out, "a", buffering=1)
ms = lambda: int(time.time() * 1000)
hb_at, hb_max, hb_n, i = ms(), 0.0, 0, 0
while True:
    if os.path.exists(pause):
        time.sleep(0.05)
        hb_at = ms()
        continue
    i += 1
    buf[:16] = b"%016d" % i
    t0 = time.monotonic()
    try:
        os.pwrite(fd, buf, (i % (SIZE // 4096)) * 4096)
    except OSError as e:
        log.write("%d E %s\n" % (ms(), e))
        time.sleep(0.02)
        continue
    lat = (time.monotonic() - t0) * 1000
    now = ms()
    if lat > 20:
        log.write("%d L %.1f\n" % (now, lat))
    hb_max, hb_n = max(hb_max, lat), hb_n + 1
    if now - hb_at >= 1000:
        log.write("%d H %.1f %d\n" % (now, hb_max, hb_n))
        hb_at, hb_max, hb_n = now, 0.0, 0
    time.sleep(0.02)
