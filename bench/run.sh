#!/usr/bin/env bash
# Benchmark of the bdr target against the raw device, dm-linear and DRBD, in the VM lab.
#
#   bench/run.sh [--kernel 6.1|6.12|all] [--rounds N] [--runtime SECONDS] [--quick]
#
# For each kernel: builds dm-bdr and the release `bdr` (shared code with tests/vm:
# tests/vm/host.sh), boots the kernel under QEMU and runs bench/guest.sh:
#   1. primary overhead: fio 4k randwrite QD1 and QD32 and 128k sequential write QD4 on
#      null_blk and on brd, each on raw, dm-linear, bdr idle, bdr during a cut (live
#      dm-snapshot) and DRBD 8.4 protocol A and C (peer: a second DRBD resource on the same
#      kernel over 127.0.0.1, see bench/guest.sh for why), alternated in rounds;
#   1b. (opt-in) side by side: dm-linear and bdr idle (and, as the control, two dm-linears)
#      under two fio jobs at once, one per vCPU, each on its own lower device: per-round
#      ratios free of the emulator's drift between runs, and the control's spread shows
#      what the method resolves;
#   2. cuts under a steady random-write load: `bdr primary run` shipping to a `bdr replica
#      serve` in another network namespace while fio writes at 50 MiB/s; suspend window per
#      cut, cuts per minute, RPO (age of the replica's state) sampled every second;
#   3. a pre-copy cut under fio: 4k random writes at QD1 on a hot range of a bdr device,
#      write IOPS idle, during a `bdr sync --once` with pre-copy and during one without,
#      alternated in rounds; the snapshot's lifetime against the cut's duration.
# Then writes bench/results/<kver>.json, <kver>.md (printed) and <kver>.png (bench/chart, a
# small plotters program). Raw fio output stays in target/bench/<kver>/. Software emulation:
# absolute numbers mean little; ratios within one boot do; noise is about ±5% on a quiet host.
# About 13-15 min per kernel with the defaults on an idle 2-core host.
#
# Knobs (environment, defaults in brackets): BENCH_ROUNDS [3] and BENCH_RUNTIME [3 s per fio
# run, plus BENCH_RAMP 1 s] (or --rounds/--runtime), BENCH_SIZE_MB [4096, null_blk size],
# BENCH_SPAN_MB [256: fio writes the first SPAN of each device; also the brd size],
# BENCH_BACKENDS ["nullb brd"], BENCH_JOBS ["rand4k-qd1 rand4k-qd32 seq128k-qd4"],
# BENCH_DEVS ["raw linear bdr bdrcut drbdA drbdC"], BENCH_REPL_SECS [45, 0 skips phase 2],
# BENCH_REPL_RATE [50m], BENCH_REPL_BS [64k], BENCH_REPL_INTERVAL [200ms], BENCH_REPL_MB
# [256]; BENCH_PRECOPY_ROUNDS [3, 0 skips phase 3], BENCH_PRECOPY_MB [256],
# BENCH_PRECOPY_DIRTY_MB [16, fresh data before each window], BENCH_PRECOPY_IDLE [8 s];
# BENCH_SIDE_ROUNDS [0: phase 1b off, as it does not resolve in TCG (bench/guest.sh); 8 where
# it does], BENCH_SIDE_RUNTIME [5 s], BENCH_SIDE_JOBS ["rand4k-qd1 rand4k-qd32"];
# BDR_BIN (use this `bdr` instead of building one), VM_MEMORY [3G here]. BENCH_TAG [empty]:
# results go to <kver><tag>.*; with --rounds 0 and BENCH_REPL_SECS=0, for instance,
# `BENCH_TAG=-precopy` keeps a phase-3-only run apart from the full one (no chart then).
# --quick: 1 round of 3 s, 20 s of phase 2 (a smoke run of the bench, numbers not kept).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export VM_MEMORY=${VM_MEMORY:-3G} # brd: 5 disks of BENCH_SPAN_MB, COW store, replica device
# shellcheck source=tests/vm/host.sh
. "$root/tests/vm/host.sh" || exit 1

ksel=all rounds=${BENCH_ROUNDS:-3} runtime=${BENCH_RUNTIME:-3} ramp=${BENCH_RAMP:-1} quick=0
repl_secs=${BENCH_REPL_SECS:-45}
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) ksel=${2:?}; shift 2 ;;
	--rounds) rounds=${2:?}; shift 2 ;;
	--runtime) runtime=${2:?}; shift 2 ;;
	--quick) quick=1 rounds=1 runtime=3 repl_secs=20; export BENCH_PRECOPY_ROUNDS=${BENCH_PRECOPY_ROUNDS:-1}; shift ;;
	-h | --help) sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
	*) echo "bench/run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
[ "$rounds" = 0 ] || [ "$rounds" -ge 3 ] || echo "bench: fewer than 3 rounds: medians are weak" >&2
nback=$(wc -w <<<"${BENCH_BACKENDS:-nullb brd}") njobs=$(wc -w <<<"${BENCH_JOBS:-x x x}")
ndevs=$(wc -w <<<"${BENCH_DEVS:-x x x x x x}")

if [ -n "${BDR_BIN:-}" ]; then
	[ -x "$BDR_BIN" ] || { echo "bench: BDR_BIN=$BDR_BIN is not executable" >&2; exit 1; }
else
	vm_build_rust || exit 1
	BDR_BIN=$VM_BDR_BIN
fi

klist=$(vm_kernels "$ksel") || exit 1
mapfile -t kernels <<<"$klist"
mkdir -p "$root/bench/results"
fail=0
for kver in "${kernels[@]}"; do
	VM_TAG=bench/$kver
	raw=$root/target/bench/$kver${BENCH_TAG:-}
	rm -rf "$raw" && mkdir -p "$raw" || exit 1
	vm_build_kmod "$kver" "$raw" || { fail=1; continue; }
	env=(RESULTS="$raw" BDR_KO="$VM_KO" BDR_BIN="$BDR_BIN" BENCH_ROUNDS="$rounds" BENCH_RUNTIME="$runtime"
		BENCH_RAMP="$ramp" BENCH_REPL_SECS="$repl_secs")
	for v in BENCH_SIZE_MB BENCH_SPAN_MB BENCH_REGION BENCH_BACKENDS BENCH_JOBS BENCH_DEVS \
		BENCH_REPL_RATE BENCH_REPL_BS BENCH_REPL_INTERVAL BENCH_REPL_MB BENCH_PRECOPY_ROUNDS \
		BENCH_PRECOPY_MB BENCH_PRECOPY_DIRTY_MB BENCH_PRECOPY_IDLE BENCH_SIDE_ROUNDS BENCH_SIDE_RUNTIME \
		BENCH_SIDE_JOBS; do
		[ -z "${!v:-}" ] || env+=("$v=${!v}")
	done
	vm_write_env "$raw/guest.env" "${env[@]}"
	# fio runs (plus start-up and the cuts' extra seconds), phase 2, phase 3 (a seed and 3
	# windows per round, each at most ~2 min in TCG), device set-up and the boot.
	nruns=$((rounds * nback * njobs * ndevs))
	nside=$((${BENCH_SIDE_ROUNDS:-0} * nback * $(wc -w <<<"${BENCH_SIDE_JOBS:-x x}") * 2))
	tmo=$((nruns * (runtime + ramp + 6) + nside * (${BENCH_SIDE_RUNTIME:-5} + ramp + 4) + repl_secs + 300 +
		${BENCH_PRECOPY_ROUNDS:-3} * 360 + 240))
	vm_log "booting; ${rounds} rounds, $nruns fio runs of $((runtime + ramp)) s, ${repl_secs}s of cuts under load (limit ${tmo}s)"
	# QEMU in software emulation needs the host's cores: other work on the host shows up as
	# noise. Record the load so that a busy run can be recognised.
	load0=$(cut -d' ' -f1 /proc/loadavg)
	[ "${load0%%.*}" -lt 1 ] || vm_log "host load average is $load0: numbers will be noisy"
	t0=$(date +%s)
	VM_BOOT_STARTED=$raw/bench.cases vm_boot "$kver" "$raw" "$tmo" - bash "$root/bench/guest.sh" "$raw/guest.env"
	vm_log "guest run took $(($(date +%s) - t0))s"
	load1=$(cut -d' ' -f1-3 /proc/loadavg)
	printf 'host_load %s before, %s (1/5/15 min) after; %s host cpus\n' "$load0" "$load1" "$(nproc)" >>"$raw/setup.txt"
	if [ "$(head -n1 "$raw/bench.verdict" 2>/dev/null | awk '{print $1}')" != PASS ]; then
		vm_log "bench run failed: $(head -n1 "$raw/bench.verdict" 2>/dev/null || echo 'no verdict')"
		fail=1
		continue
	fi
	if grep -E 'WARNING:|BUG:|Oops|Call Trace' "$raw/dmesg.txt"; then
		vm_log "kernel warnings during the bench (above): numbers not kept"
		fail=1
		continue
	fi
	echo
	out=$root/bench/results/$kver${BENCH_TAG:-}
	[ "$quick" = 0 ] || { out=$raw/summary; vm_log "--quick: results stay in $raw"; }
	python3 "$root/bench/summarize.py" "$raw" "$kver" "$out.json" "$out.md" || fail=1
	if [ "$rounds" -gt 0 ]; then
		(cd "$root/bench/chart" && cargo run --release -q -- "$out.json" "$out.png") ||
			{ vm_log "chart failed"; fail=1; }
	fi
	echo
done
exit $fail
