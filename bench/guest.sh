#!/usr/bin/env bash
# Guest part of bench/run.sh (runs in the VM as root). Two phases:
#
# 1. Primary overhead. On each backend (null_blk without memory, brd) the same fio job runs on
#    the raw device, dm-linear over it, bdr over it (idle), bdr during a cut (a live
#    dm-snapshot of it, `bdr __cut --hold-ms`), and DRBD 8.4 (the kernel's drbd module,
#    drbd-utils' 8.4 tools) with protocol A and with protocol C. Jobs: 4k randwrite QD1, 4k
#    randwrite QD32, 128k sequential write QD4 - all over the first BENCH_SPAN_MB of the device.
#    The devices are alternated within each round and the order rotates from round to round.
#    Raw fio JSON: $RESULTS/r<round>-<backend>-<dev>-<job>.json.
#
#    DRBD's peer: DRBD 8.4 only talks to userspace and opens its sockets in the initial
#    network namespace (its generic netlink family is not netns-aware: drbdsetup in another
#    namespace gets "Could not connect to 'drbd' generic netlink family"), so a peer in another
#    namespace of the same kernel is impossible. The peer is a second DRBD resource on the same
#    kernel (its own minor and its own backing device of the same kind) connected over
#    127.0.0.1. Meta-data: external (flex-external) on a small memory-backed null_blk of its own,
#    so the data devices are the same kind and size as the raw one. The initial sync is skipped
#    (new-current-uuid --clear-bitmap): steady-state replication is measured.
#
# 2. Cuts under load. bdr over a memory-backed null_blk of BENCH_REPL_MB, `bdr primary run
#    --interval BENCH_REPL_INTERVAL` shipping to `bdr replica serve` (loop device on tmpfs) in
#    another network namespace over a veth pair, while fio writes at BENCH_REPL_RATE random
#    (BENCH_REPL_BS blocks) for BENCH_REPL_SECS. The daemon's status.json is sampled every
#    second ($RESULTS/repl-status.jsonl: guest time in ms, then the file); fio's JSON goes to
#    $RESULTS/repl-fio.json.
#
# 3. A pre-copy cut under fio. bdr over a memory-backed null_blk of BENCH_PRECOPY_MB, a
#    seeded replica (`bdr replica serve` on a loop device, in the other namespace, at nice 19:
#    it stands for the replica's own machine, whose CPU the primary's workload does not share
#    in real life; here both run on the guest's 2 vCPUs). fio writes 4k random blocks at QD1
#    to a hot 4 MiB range without pause for the whole phase. In each of BENCH_PRECOPY_ROUNDS
#    rounds, four windows in rotated order, each after BENCH_PRECOPY_DIRTY_MB of fresh
#    64 KiB writes elsewhere on the device: idle (BENCH_PRECOPY_IDLE s, no cut); busy, the
#    control (as long, no cut, a CPU-bound loop at the daemon's nice 10: what any work on
#    the other vCPU costs fio in this emulator, whose 2 vCPU threads share 2 host cores with
#    QEMU's own); one `bdr sync --once` (pre-copy, the default) and one `bdr sync --once
#    --no-precopy`. Completed writes are counted on the bdr device's own stat over each window:
#    $RESULTS/precopy.txt ("pc ROUND KIND MS WRITES"), each cut's --json in
#    $RESULTS/pc-r<round>-<kind>.json.
#
#   guest.sh ENVFILE   (see bench/run.sh for the variables)
set -uo pipefail
# shellcheck source=/dev/null
. "${1:?usage: guest.sh ENVFILE}"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export T_SUITE=bench T_SCRATCH=/run/bdr-bench
mkdir -p "$T_SCRATCH" && mount -t tmpfs tmpfs "$T_SCRATCH" && cd "$T_SCRATCH" || exit 1
modprobe configfs 2>/dev/null
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
modprobe dm-mod && modprobe dm-snapshot && modprobe loop && modprobe null_blk nr_devices=0 || exit 1
# shellcheck source=tests/vm/lib.sh
. "$root/tests/vm/lib.sh"

rounds=${BENCH_ROUNDS:-3} runtime=${BENCH_RUNTIME:-3} ramp=${BENCH_RAMP:-1}
size=${BENCH_SIZE_MB:-4096} span=${BENCH_SPAN_MB:-256} region=${BENCH_REGION:-128}
backends=${BENCH_BACKENDS:-nullb brd} jobs=${BENCH_JOBS:-rand4k-qd1 rand4k-qd32 seq128k-qd4}
devs=${BENCH_DEVS:-raw linear bdr bdrcut drbdA drbdC}
repl_secs=${BENCH_REPL_SECS:-45} repl_mb=${BENCH_REPL_MB:-256} repl_rate=${BENCH_REPL_RATE:-50m}
repl_bs=${BENCH_REPL_BS:-64k} repl_interval=${BENCH_REPL_INTERVAL:-200ms}
pc_rounds=${BENCH_PRECOPY_ROUNDS:-3} pc_mb=${BENCH_PRECOPY_MB:-256}
pc_dirty=${BENCH_PRECOPY_DIRTY_MB:-16} pc_idle=${BENCH_PRECOPY_IDLE:-8}
side_rounds=${BENCH_SIDE_ROUNDS:-0} side_runtime=${BENCH_SIDE_RUNTIME:-5}
side_jobs=${BENCH_SIDE_JOBS:-rand4k-qd1 rand4k-qd32}
B=${BDR_BIN:-}
D84=/usr/lib/drbd/drbdsetup-84
COW=$T_SCRATCH/cow
mkdir -p "$COW"

{
	echo "kernel $(uname -r)"; echo "cpus $(nproc)"; echo "fio $(fio --version)"
	echo "lower null_blk size_mb $size"; echo "span_mb $span"
	echo "rounds $rounds runtime $runtime ramp $ramp"
	echo "backends $backends"; echo "jobs $jobs"; echo "devs $devs"
	echo "repl secs $repl_secs mb $repl_mb rate $repl_rate bs $repl_bs interval $repl_interval"
	echo "precopy rounds $pc_rounds mb $pc_mb dirty_mb $pc_dirty idle_s $pc_idle"
	echo "side rounds $side_rounds runtime $side_runtime jobs $side_jobs"
} >"$RESULTS/setup.txt"

fio_job() { # JOB -> fio options
	case $1 in
	rand4k-qd*) echo "--rw=randwrite --bs=4k --iodepth=${1#rand4k-qd} --norandommap --randrepeat=0" ;;
	seq128k-qd*) echo "--rw=write --bs=128k --iodepth=${1#seq128k-qd}" ;;
	*) echo "bench: unknown job $1" >&2; return 1 ;;
	esac
}

# --- DRBD -------------------------------------------------------------------------------------
drbd_ok=0
if [[ " $devs " == *" drbd"* ]]; then
	if modprobe drbd && [ -x "$D84" ]; then
		drbd_ok=1
		echo "drbd $(head -n1 /proc/drbd); drbdsetup-84 from drbd-utils $(dpkg-query -W -f='${Version}' drbd-utils 2>/dev/null)" >>"$RESULTS/setup.txt"
	else
		echo "drbd unavailable (module: $(modinfo -F version drbd 2>&1 | head -n1); $D84 present: $([ -x "$D84" ] && echo yes || echo no))" |
			tee -a "$RESULTS/setup.txt"
	fi
fi
_drbd_down() { $D84 down "$1" 2>/dev/null; $D84 down "$1p" 2>/dev/null; return 0; }
# drbd_pair NAME PROTO DATA PEERDATA MINOR: resource NAME (Primary, minor MINOR) and NAMEp (its
# peer, MINOR+1), connected over 127.0.0.1 ports 7790+MINOR and 7791+MINOR, UpToDate on both
# sides without an initial sync; prints /dev/drbd<MINOR>.
drbd_pair() {
	local name=$1 proto=$2 data=$3 pdata=$4 m0=$5 m1=$(($5 + 1)) p0=$((7790 + $5)) p1=$((7791 + $5))
	local meta0 meta1 i
	meta0=$(mk_nullb 64 memory_backed=1) && meta1=$(mk_nullb 64 memory_backed=1) || return 1
	t_defer _drbd_down "$name"
	{
		drbdmeta --force "$m0" v08 "$meta0" flex-external create-md </dev/null &&
			drbdmeta --force "$m1" v08 "$meta1" flex-external create-md </dev/null &&
			$D84 new-resource "$name" && $D84 new-minor "$name" "$m0" 0 &&
			$D84 attach "$m0" "$data" "$meta0" flexible &&
			$D84 new-resource "${name}p" && $D84 new-minor "${name}p" "$m1" 0 &&
			$D84 attach "$m1" "$pdata" "$meta1" flexible &&
			$D84 connect "$name" "ipv4:127.0.0.1:$p0" "ipv4:127.0.0.1:$p1" --protocol="$proto" &&
			$D84 connect "${name}p" "ipv4:127.0.0.1:$p1" "ipv4:127.0.0.1:$p0" --protocol="$proto"
	} >&2 || return 1
	for i in $(seq 100); do
		$D84 cstate "$m0" 2>/dev/null | grep -q '^Connected' && break
		sleep 0.2
	done
	$D84 new-current-uuid "$m0" --clear-bitmap >&2 || return 1
	for i in $(seq 50); do
		$D84 dstate "$m0" 2>/dev/null | grep -q '^UpToDate/UpToDate' && break
		sleep 0.2
	done
	$D84 primary "$m0" >&2 || return 1
	_t_wait_dev "/dev/drbd$m0" || return 1
	echo "$name: protocol $proto, /dev/drbd$m0 on $data, peer /dev/drbd$m1 on $pdata over 127.0.0.1:$p0-$p1, meta $meta0 $meta1: $($D84 dstate "$m0")" >>"$RESULTS/setup.txt"
	echo "/dev/drbd$m0"
}

# --- devices ------------------------------------------------------------------------------------
declare -A dev
minor=0
t_case "devices"
for be in $backends; do
	case $be in
	nullb)
		lower=$(mk_nullb "$size" irqmode=0 memory_backed=0) || { t_fail "mk_nullb"; exit 1; }
		others=()
		if [ $drbd_ok = 1 ]; then
			for i in 1 2 3 4; do
				d=$(mk_nullb "$size" irqmode=0 memory_backed=0) || { t_fail "mk_nullb"; exit 1; }
				others+=("$d")
			done
		fi ;;
	brd)
		# One brd module, five disks of BENCH_SPAN_MB: the raw/linear/bdr one and DRBD's four.
		[ -d /sys/module/brd ] && rmmod brd
		modprobe brd rd_nr=5 rd_size=$((span * 1024)) max_part=0 || { t_fail "modprobe brd"; exit 1; }
		t_defer _brd_rm
		_t_wait_dev /dev/ram4 || exit 1
		lower=/dev/ram0 others=(/dev/ram1 /dev/ram2 /dev/ram3 /dev/ram4) ;;
	*) t_fail "unknown backend $be"; exit 1 ;;
	esac
	dev[$be-raw]=$lower
	dev[$be-linear]=$(mk_linear "bench-linear-$be" "$lower") || { t_fail "dm-linear"; exit 1; }
	dev[$be-bdr]=$(mk_bdr "bench-bdr-$be" "$lower" "$region" "bench-$be") || { t_fail "bdr"; exit 1; }
	dev[$be-bdrcut]=${dev[$be-bdr]}
	if [ $drbd_ok = 1 ]; then
		dev[$be-drbdA]=$(drbd_pair "a$be" A "${others[0]}" "${others[1]}" $minor) || { t_fail "drbd pair (A) on $be"; drbd_ok=0; }
		dev[$be-drbdC]=$(drbd_pair "c$be" C "${others[2]}" "${others[3]}" $((minor + 2))) || { t_fail "drbd pair (C) on $be"; drbd_ok=0; }
		minor=$((minor + 4))
	fi
	echo "$be lower $lower bdr_table $(dmsetup table "bench-bdr-$be")" >>"$RESULTS/setup.txt"
done
[ $drbd_ok = 1 ] || devs=$(printf '%s\n' $devs | grep -v '^drbd' | xargs)
cat /proc/drbd >>"$RESULTS/setup.txt" 2>/dev/null

# Wait (up to 30 s) until a cut of $1 is live: its snapshot is active.
wait_live() {
	local i
	for i in $(seq 300); do
		dmsetup status "$1-bdr-snap" 2>/dev/null | grep -q ' snapshot ' && return 0
		sleep 0.1
	done
	return 1
}

run_fio() { # NAME DEV JOB OUT
	# shellcheck disable=SC2046
	fio --name="$1" --filename="$2" $(fio_job "$3") --size="${span}M" --ioengine=libaio --direct=1 \
		--numjobs=1 --time_based --runtime="$runtime" --ramp_time="$ramp" \
		--percentile_list=50:99:99.9 --output-format=json --output="$4"
}

# --- phase 1: primary overhead ---------------------------------------------------------------
read -ra dlist <<<"$devs"
nd=${#dlist[@]}
for r in $(seq "$rounds"); do
	t_case "round $r"
	for be in $backends; do
		for job in $jobs; do
			for i in $(seq 0 $((nd - 1))); do
				n=${dlist[$(((i + r - 1) % nd))]}
				out=$RESULTS/r$r-$be-$n-$job.json
				printf 'round %s %-5s %-13s %-6s\n' "$r" "$be" "$job" "$n"
				cpid=
				if [ "$n" = bdrcut ]; then
					"$B" __cut "bench-bdr-$be" --cow "$COW" --hold-ms $(((ramp + runtime + 2) * 1000)) \
						>"$RESULTS/r$r-$be-$n-$job.cut.json" 2>"$RESULTS/r$r-$be-$n-$job.cut.err" &
					cpid=$!
					wait_live "bench-bdr-$be" || { t_fail "no live cut of bench-bdr-$be"; wait $cpid; continue; }
				fi
				run_fio "$be-$n-$job" "${dev[$be-$n]}" "$job" "$out" || t_fail "fio on $be $n $job failed"
				if [ -n "$cpid" ]; then
					wait $cpid || t_fail "cut during $be $job failed: $(tail -n 3 "$RESULTS/r$r-$be-$n-$job.cut.err")"
				fi
			done
		done
	done
done

t_case "bdr saw the writes"
for be in $backends; do
	# 0 <len> bdr <generation> <region_sectors> <nr_regions> <active> <frozen> <writes> <freezes>
	st=$(dmsetup status "bench-bdr-$be")
	echo "bdr_status_$be $st" >>"$RESULTS/setup.txt"
	read -r _ _ _ _ _ nr active _ writes _ <<<"$st"
	{ [ "${writes:-0}" -gt 0 ] || [ "$rounds" = 0 ]; } && [ "${active:-0}" -le "${nr:-0}" ] ||
		t_fail "implausible bdr status on $be: $st"
done
cat /proc/drbd >>"$RESULTS/setup.txt" 2>/dev/null

# Free the memory of phase 1 (brd pages, COW files) before phase 2.
for be in $backends; do
	for n in $devs; do
		case $n in drbdA) _drbd_down "a$be" ;; drbdC) _drbd_down "c$be" ;; esac
	done
	rm_dm "bench-bdr-$be"; rm_dm "bench-linear-$be"
done
_brd_rm
rm -f "$COW"/*

# --- phase 1b: side by side ------------------------------------------------------------------
# Phase 1 runs the devices one after another, so the emulator's drift between runs (±10-20%
# in TCG) is in every ratio. Here two fio jobs run at the same time, one per vCPU (pinned),
# each on its own lower device of the same kind: the drift hits both. Pairs: dm-linear
# next to bdr idle, and dm-linear next to dm-linear (the control: what the method itself
# cannot resolve). Each round swaps which lower device and which vCPU each side gets, over
# four rounds: neither a device nor a vCPU favours one side. Raw fio JSON:
# $RESULTS/s<round>-<backend>-<pair>-<job>.json, jobs named "a" (dm-linear) and "b".
# Off by default (BENCH_SIDE_ROUNDS=0): in TCG on a 2-core host the two jobs disturb each
# other more than runs in sequence drift (the control's quartiles spread 0.74-1.89 on
# 2026-11-30, bench/README.md); with KVM, where the vCPUs are real cores, it is the sharper
# method. The verdict is given only where the control shows it resolves 1%.
t_case "side by side: dm-linear next to bdr idle, and next to dm-linear"
if [ "$side_rounds" -gt 0 ]; then
	for be in $backends; do
		case $be in
		nullb)
			lo0=$(mk_nullb "$size" irqmode=0 memory_backed=0) &&
				lo1=$(mk_nullb "$size" irqmode=0 memory_backed=0) || { t_fail "mk_nullb"; exit 1; } ;;
		brd)
			[ -d /sys/module/brd ] && rmmod brd
			modprobe brd rd_nr=2 rd_size=$((span * 1024)) max_part=0 || { t_fail "modprobe brd"; exit 1; }
			t_defer _brd_rm
			_t_wait_dev /dev/ram1 || exit 1
			lo0=/dev/ram0 lo1=/dev/ram1 ;;
		esac
		for i in 0 1; do
			lo=lo$i
			mk_linear "side-lin-$be-$i" "${!lo}" >/dev/null && mk_linear "side-ctl-$be-$i" "${!lo}" >/dev/null &&
				mk_bdr "side-bdr-$be-$i" "${!lo}" "$region" "side-$be-$i" >/dev/null ||
				{ t_fail "side-by-side devices on $be"; exit 1; }
		done
		for r in $(seq "$side_rounds"); do
			# a = dm-linear on lower $la and vCPU $ca; b on the other lower and vCPU.
			la=$(((r - 1) % 2)) ca=$((((r - 1) / 2) % 2))
			for job in $side_jobs; do
				for pair in bdr ctl; do
					out=$RESULTS/s$r-$be-$pair-$job.json
					printf 'side %s %-5s %-13s linear|%s
' "$r" "$be" "$job" "$pair"
					# shellcheck disable=SC2046
					fio $(fio_job "$job") --size="${span}M" --ioengine=libaio --direct=1 						--time_based --runtime="$side_runtime" --ramp_time="$ramp" 						--percentile_list=50:99:99.9 --output-format=json --output="$out" 						--name=a --filename="/dev/mapper/side-lin-$be-$la" --cpus_allowed="$ca" 						--name=b --filename="/dev/mapper/side-$pair-$be-$((1 - la))" 						--cpus_allowed="$((1 - ca))" || t_fail "fio side by side on $be $job $pair"
				done
			done
		done
		for i in 0 1; do rm_dm "side-bdr-$be-$i"; rm_dm "side-ctl-$be-$i"; rm_dm "side-lin-$be-$i"; done
		[ "$be" != brd ] || _brd_rm
	done
else
	t_skip "BENCH_SIDE_ROUNDS=0"
fi

# --- phases 2 and 3: a primary and a replica namespace ------------------------------------
kill_gone() { kill "$1" 2>/dev/null; return 0; } # cleanup of a daemon that may have exited
# netns_pair: namespaces benchp (10.77.0.1) and benchr (10.77.0.2) over a veth pair, once.
netns_pair() {
	local ns
	[ -e /run/netns/benchr ] && return 0
	for ns in benchp benchr; do
		ip netns add $ns || return 1
		t_defer ip netns del $ns
		ip -n $ns link set lo up
	done
	ip link add vbp netns benchp type veth peer name vbr netns benchr &&
		ip -n benchp addr add 10.77.0.1/24 dev vbp && ip -n benchr addr add 10.77.0.2/24 dev vbr &&
		ip -n benchp link set vbp up && ip -n benchr link set vbr up
}

# --- phase 2: cuts under a steady random-write load ------------------------------------------
t_case "cuts under fio --rate=$repl_rate of $repl_bs random writes"
if [ "$repl_secs" -gt 0 ]; then
	PDIR=$T_SCRATCH/pstate RDIR=$T_SCRATCH/rstate PEER=10.77.0.2:7800
	netns_pair || { t_fail "netns/veth"; exit 1; }
	rdev=$(mk_loop "$repl_mb") && plower=$(mk_nullb "$repl_mb" memory_backed=1) || { t_fail "devices"; exit 1; }
	ip netns exec benchr "$B" replica serve --device "$rdev" --listen "$PEER" --state-dir "$RDIR" \
		>"$RESULTS/repl-serve.log" 2>&1 &
	spid=$!
	t_defer kill_gone "$spid"
	"$B" attach c "$plower" --kmod "$BDR_KO" --state-dir "$PDIR" ||
		{ t_fail "bdr attach"; exit 1; }
	t_defer rm_dm c
	sleep 2
	ip netns exec benchp "$B" primary run c --peer "$PEER" --interval "$repl_interval" --cow "$COW" \
		--cow-size "$((repl_mb + 64))M" --state-dir "$PDIR" >"$RESULTS/repl-primary.log" 2>&1 &
	dpid=$!
	t_defer kill_gone "$dpid"
	# The first cut seeds the new replica (a rescan of the whole device); an idle device gets
	# no further cuts (nothing dirty). Measure from the seed's commit on.
	cuts() { sed -n 's/.*"cuts_committed": *\([0-9]*\).*/\1/p' "$PDIR/status.json" 2>/dev/null | head -n1; }
	for i in $(seq 360); do [ "$(cuts)" -ge 1 ] 2>/dev/null && break; sleep 0.5; done
	[ "$(cuts)" -ge 1 ] 2>/dev/null || { t_fail "no seed: $(tail -n 5 "$RESULTS/repl-primary.log")"; exit 1; }
	fio --name=repl --filename=/dev/mapper/c --rw=randwrite --bs="$repl_bs" --rate="$repl_rate" \
		--ioengine=libaio --iodepth=4 --direct=1 --norandommap --randrepeat=0 --time_based \
		--runtime="$repl_secs" --percentile_list=50:99:99.9 --output-format=json \
		--output="$RESULTS/repl-fio.json" &
	fpid=$!
	: >"$RESULTS/repl-status.jsonl"
	while kill -0 $fpid 2>/dev/null; do
		printf '%s %s\n' "$(date +%s%3N)" "$(tr -d '\n' <"$PDIR/status.json")" >>"$RESULTS/repl-status.jsonl"
		sleep 1
	done
	wait $fpid || t_fail "fio under replication failed"
	printf '%s %s\n' "$(date +%s%3N)" "$(tr -d '\n' <"$PDIR/status.json")" >>"$RESULTS/repl-status.jsonl"
	kill -TERM "$dpid"; wait "$dpid"
	echo "repl bdr $("$B" --version 2>/dev/null)" >>"$RESULTS/setup.txt"
else
	t_skip "BENCH_REPL_SECS=0"
fi

# --- phase 3: a pre-copy cut under fio -------------------------------------------------------
t_case "fio QD1 on a hot range: idle, during a pre-copy cut, during a plain cut"
if [ "$pc_rounds" -gt 0 ]; then
	PDIR=$T_SCRATCH/pcstate RDIR=$T_SCRATCH/pcrstate PEER=10.77.0.2:7801
	netns_pair || { t_fail "netns/veth"; exit 1; }
	rm -f "$COW"/*
	rdev=$(mk_loop "$pc_mb") && plower=$(mk_nullb "$pc_mb" memory_backed=1) || { t_fail "devices"; exit 1; }
	ip netns exec benchr nice -n 19 "$B" replica serve --device "$rdev" --listen "$PEER" \
		--state-dir "$RDIR" >"$RESULTS/pc-serve.log" 2>&1 &
	spid=$!
	t_defer kill_gone "$spid"
	"$B" attach pc "$plower" --kmod "$BDR_KO" --state-dir "$PDIR" || { t_fail "bdr attach"; exit 1; }
	t_defer rm_dm pc
	pcsync() { # OUT [options]: one cut of pc to the replica
		local out=$1
		shift
		ip netns exec benchp "$B" sync --once pc --peer "$PEER" --json --cow "$COW" \
			--cow-size "$((pc_mb + 64))M" --state-dir "$PDIR" "$@" >"$out" 2>"$out.err"
	}
	for i in $(seq 50); do [ -e "$RDIR/replica-status.json" ] && break; sleep 0.2; done
	pcsync "$RESULTS/pc-seed.json" || { t_fail "seed: $(tail -n 3 "$RESULTS/pc-seed.json.err")"; exit 1; }
	wcount() { dev_writes /dev/mapper/pc; }
	fio --name=hot --filename=/dev/mapper/pc --size=4M --rw=randwrite --bs=4k --iodepth=1 \
		--direct=1 --ioengine=libaio --norandommap --randrepeat=0 --time_based --runtime=3600 \
		--output=/dev/null >/dev/null 2>&1 &
	hpid=$!
	t_defer kill_gone "$hpid"
	sleep 2
	: >"$RESULTS/precopy.txt"
	kinds=(idle busy precopy plain)
	for r in $(seq "$pc_rounds"); do
		for i in 0 1 2 3; do
			k=${kinds[$(((i + r - 1) % 4))]}
			# Fresh data for the cut: distinct 64 KiB blocks past the hot range.
			fio --name=dirty --filename=/dev/mapper/pc --offset=4M --rw=randwrite --bs=64k \
				--io_size="${pc_dirty}M" --direct=1 --ioengine=libaio --iodepth=4 --randrepeat=0 \
				--output=/dev/null >/dev/null 2>&1 || t_fail "dirty writes"
			sleep 1
			t0=$(now_ms) w0=$(wcount)
			case $k in
			idle) sleep "$pc_idle" ;;
			busy)
				nice -n 10 sh -c 'while :; do :; done' &
				bpid=$!
				sleep "$pc_idle"
				kill "$bpid"; wait "$bpid" 2>/dev/null ;;
			precopy) pcsync "$RESULTS/pc-r$r-$k.json" || t_fail "pre-copy cut: $(tail -n 3 "$RESULTS/pc-r$r-$k.json.err")" ;;
			plain) pcsync "$RESULTS/pc-r$r-$k.json" --no-precopy || t_fail "plain cut: $(tail -n 3 "$RESULTS/pc-r$r-$k.json.err")" ;;
			esac
			echo "pc $r $k $(($(now_ms) - t0)) $(($(wcount) - w0))" | tee -a "$RESULTS/precopy.txt"
		done
	done
	kill_gone "$hpid"
	while kill -0 "$hpid" 2>/dev/null; do sleep 0.2; done
	# One more cut with fio stopped: the replica must then equal the primary.
	pcsync "$RESULTS/pc-last.json" || t_fail "last cut: $(tail -n 3 "$RESULTS/pc-last.json.err")"
	cmp /dev/mapper/pc "$rdev" || t_fail "the replica differs from the primary after the phase"
else
	t_skip "BENCH_PRECOPY_ROUNDS=0"
fi
dmesg >"$RESULTS/dmesg.txt"
