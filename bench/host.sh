#!/usr/bin/env bash
# Host benchmarks (no VM): the shipping pipeline per stage and end to end, and the catch-up of
# `bdr sync --once` against rsync.
#
#   bench/host.sh [--rounds N] [--dir DIR] [--quick]
#
# Builds the release binaries (bdr and the bdr-bench crate), then runs
#   target/release/pipeline  read/blake3/zstd/frame/verify/apply stages alone (MB/s per core
#                            from each thread's CPU time) next to memcpy and page-cache reads,
#                            and ship_cut -> replica::serve over loopback TCP;
#   target/release/catchup   bdr sync --once (file stand-in, real `bdr replica serve`) vs
#                            rsync --inplace --no-whole-file to an rsync daemon, 1 GiB image
#                            with 1% of its 64 KiB regions changed, bytes on the wire, result
#                            compared byte for byte.
# Writes bench/results/host-pipeline.{json,png}, host-catchup.{json,png},
# host-catchup-wire.png and prints markdown tables. Rounds alternate the contenders; medians.
# Files go to DIR (default /dev/shm, tmpfs: page-cache speed, no disk noise; ~5 GiB needed).
# Needs rsync (scripts/install-deps.sh). Takes ~3-5 minutes on 2 cores.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=3 dir=/dev/shm quick=0
while [ $# -gt 0 ]; do
	case $1 in
	--rounds) rounds=${2:?}; shift 2 ;;
	--dir) dir=${2:?}; shift 2 ;;
	--quick) quick=1; shift ;;
	-h | --help) sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
	*) echo "bench/host.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
command -v rsync >/dev/null || { echo "bench/host.sh: rsync missing (scripts/install-deps.sh)" >&2; exit 1; }

cd "$root"
cargo build --release -q -p bdr -p bdr-bench --bins
echo "host load before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cpus)" >&2
if [ "$quick" = 1 ]; then
	target/release/pipeline --rounds "$rounds" --dir "$dir" --mb 32 --e2e-mb 64
	echo
	target/release/catchup --rounds "$rounds" --dir "$dir" --size-mb 128
else
	target/release/pipeline --rounds "$rounds" --dir "$dir"
	echo
	target/release/catchup --rounds "$rounds" --dir "$dir"
fi
echo "host load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
