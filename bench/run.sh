#!/usr/bin/env bash
# Benchmark of the bdr target against dm-linear and the raw device, in the VM lab.
#
#   bench/run.sh [--kernel 6.1|6.12|all] [--rounds N] [--runtime SECONDS]
#
# For each kernel: builds dm-bdr (shared code with tests/vm: tests/vm/host.sh), boots it under
# QEMU, runs bench/guest.sh (fio 4k randwrite QD1 and QD32 on null_blk, dm-linear over it and
# bdr over it, alternated in rounds), then writes bench/results/<kver>.json and .md (medians,
# bdr/dm-linear IOPS ratio and p99 difference) and prints the table. Raw fio output stays in
# target/bench/<kver>/. Software emulation: absolute numbers mean little, ratios within one
# boot do; noise is about ±5%. Takes ~4-5 min per kernel with the defaults (3 rounds, 10 s).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tests/vm/host.sh
. "$root/tests/vm/host.sh" || exit 1

ksel=all rounds=3 runtime=10 ramp=2 size_mb=4096
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) ksel=${2:?}; shift 2 ;;
	--rounds) rounds=${2:?}; shift 2 ;;
	--runtime) runtime=${2:?}; shift 2 ;;
	-h | --help) sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
	*) echo "bench/run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
[ "$rounds" -ge 3 ] || echo "bench: fewer than 3 rounds: medians are weak" >&2

klist=$(vm_kernels "$ksel") || exit 1
mapfile -t kernels <<<"$klist"
mkdir -p "$root/bench/results"
fail=0
for kver in "${kernels[@]}"; do
	VM_TAG=bench/$kver
	raw=$root/target/bench/$kver
	rm -rf "$raw" && mkdir -p "$raw" || exit 1
	vm_build_kmod "$kver" || { fail=1; continue; }
	vm_write_env "$raw/guest.env" RESULTS="$raw" BDR_KO="$VM_KO" BENCH_ROUNDS="$rounds" \
		BENCH_RUNTIME="$runtime" BENCH_RAMP="$ramp" BENCH_SIZE_MB="$size_mb" BENCH_QDS="1 32" BENCH_REGION=128
	# 3 devices x 2 queue depths per round, plus fio start-up and the boot.
	tmo=$((rounds * 6 * (runtime + ramp + 5) + 180))
	vm_log "booting; ${rounds} rounds x 6 runs of $((runtime + ramp)) s (limit ${tmo}s)"
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
	python3 "$root/bench/summarize.py" "$raw" "$kver" "$root/bench/results/$kver.json" \
		"$root/bench/results/$kver.md" || fail=1
	echo
done
exit $fail
