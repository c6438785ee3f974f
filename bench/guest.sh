#!/usr/bin/env bash
# Guest part of bench/run.sh (runs in the VM as root): fio 4k randwrite at QD1 and QD32 on a
# plain null_blk (no memory, completes at once), on dm-linear over it and on bdr over it,
# alternating the three devices in rounds. Raw fio JSON: $RESULTS/r<round>-<dev>-qd<qd>.json.
#
#   guest.sh ENVFILE      (ENVFILE: RESULTS, BDR_KO, BENCH_ROUNDS, BENCH_RUNTIME, BENCH_RAMP,
#                          BENCH_SIZE_MB, BENCH_QDS, BENCH_REGION)
set -uo pipefail
# shellcheck source=/dev/null
. "${1:?usage: guest.sh ENVFILE}"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export T_SUITE=bench T_SCRATCH=/run/bdr-bench
mkdir -p "$T_SCRATCH" && mount -t tmpfs tmpfs "$T_SCRATCH" && cd "$T_SCRATCH" || exit 1
modprobe configfs 2>/dev/null
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
modprobe dm-mod && modprobe null_blk nr_devices=0 || exit 1
# shellcheck source=tests/vm/lib.sh
. "$root/tests/vm/lib.sh"

rounds=${BENCH_ROUNDS:-3} runtime=${BENCH_RUNTIME:-10} ramp=${BENCH_RAMP:-2}
size=${BENCH_SIZE_MB:-4096} qds=${BENCH_QDS:-1 32} region=${BENCH_REGION:-128}

t_case "devices"
lower=$(mk_nullb "$size" irqmode=0 memory_backed=0) || { t_fail "mk_nullb"; exit 1; }
linear=$(mk_linear bench-linear "$lower") || { t_fail "dm-linear"; exit 1; }
bdr=$(mk_bdr bench-bdr "$lower" "$region" bench) || { t_fail "bdr"; exit 1; }
declare -A dev=([raw]=$lower [linear]=$linear [bdr]=$bdr)
names=(raw linear bdr)
{
	echo "kernel $(uname -r)"; echo "cpus $(nproc)"; echo "fio $(fio --version)"
	echo "lower $lower size_mb $size"; echo "bdr table $(dmsetup table bench-bdr)"
	echo "rounds $rounds runtime $runtime ramp $ramp qds $qds"
} | tee "$RESULTS/setup.txt"

for r in $(seq "$rounds"); do
	t_case "round $r"
	for qd in $qds; do
		# Rotate the order every round so that no device always runs first or last.
		for i in 0 1 2; do
			n=${names[$(((i + r - 1) % 3))]}
			out=$RESULTS/r$r-$n-qd$qd.json
			printf 'round %s qd %-2s %-6s ' "$r" "$qd" "$n"
			if fio --name="$n-qd$qd" --filename="${dev[$n]}" --rw=randwrite --bs=4k \
				--ioengine=libaio --direct=1 --iodepth="$qd" --numjobs=1 \
				--time_based --runtime="$runtime" --ramp_time="$ramp" \
				--norandommap --randrepeat=0 --output-format=json --output="$out"; then
				python3 -c 'import json,sys; w=json.load(open(sys.argv[1]))["jobs"][0]["write"]; print("%8.0f IOPS  p99 %7.1f us" % (w["iops"], w["clat_ns"]["percentile"]["99.000000"]/1000))' "$out"
			else
				t_fail "fio on $n qd$qd failed"
			fi
		done
	done
done

t_case "bdr saw the writes"
# 0 <len> bdr <generation> <region_sectors> <nr_regions> <active> <frozen> <writes> <freezes>
st=$(dmsetup status bench-bdr)
echo "bdr status $st" | tee -a "$RESULTS/setup.txt"
read -r _ _ _ _ _ nr active _ writes _ <<<"$st"
if ! { [ "${active:-0}" -gt 0 ] && [ "${writes:-0}" -gt 0 ] && [ "$active" -le "${nr:-0}" ]; }; then
	t_fail "implausible bdr status: $st"
fi
dmesg >"$RESULTS/dmesg.txt"
