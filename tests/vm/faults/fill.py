#!/usr/bin/env python3
"""Keep a file system full: the statedir_full fault of tests/vm/suites/faults.sh.

    fill.py DIR STOPFILE

Fills DIR's file system with files DIR/fill.N (posix_fallocate, then smaller and smaller
pieces down to 4 KiB) and keeps it full until STOPFILE exists, then removes its files and
exits. Filling once is not enough: the replica removes each cut's journal after its commit,
and the next cut would fit in the space that frees (cuts of a steady workload are about the
same size), so a one-shot fill can miss every refusal. Here the freed space is taken back
within a millisecond or two, long before the primary's next cut reaches the replica.
Prints the bytes it holds when it stops.
"""
import os
import sys
import time


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: fill.py DIR STOPFILE")
    d, stop = sys.argv[1], sys.argv[2]
    files = []

    def grab():
        st = os.statvfs(d)
        free = st.f_bavail * st.f_frsize
        piece = max(free, 4096)
        while piece >= 4096:
            path = os.path.join(d, "fill.%d" % len(files))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, piece)
                files.append((path, piece))
            except OSError:
                os.unlink(path)
                piece //= 2
            finally:
                os.close(fd)

    while not os.path.exists(stop):
        grab()
        time.sleep(0.001)
    held = sum(n for _, n in files)
    for path, _ in files:
        os.unlink(path)
    print(held)


if __name__ == "__main__":
    main()
