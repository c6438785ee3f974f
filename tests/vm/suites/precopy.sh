#!/usr/bin/env bash
# Pre-copy under load: ext4 on a bdr device (memory-backed null_blk); before each cut a burst
# of 24 MiB of new file data, then fio writes a hot 4 MiB file without pause while
# `bdr sync --once` ships the cut to a replica (`bdr replica serve` on a loop device,
# loopback) — with pre-copy (the default) and with --no-precopy. Measured and printed:
# fio's write IOPS during each cut and idle (over as long as the pre-copy cut), and each
# cut's snapshot lifetime against its duration. Checked: every cut commits, a copy of
# the replica taken while the filesystem is live is fsck-clean, and at the end (fio stopped,
# unmounted, one more cut) the replica equals the primary byte for byte and is fsck-clean.
# vm-timeout: 240
. "$(dirname "$0")/../lib.sh"

B=$BDR_BIN
SIZE_MB=96
PEER=127.0.0.1:7900
PDIR=$T_SCRATCH/pstate
RDIR=$T_SCRATCH/rstate
COW=$T_SCRATCH/cow
MNT=$T_SCRATCH/mnt
OUT=$RESULTS/precopy.txt
mkdir -p "$COW" "$MNT"
: >"$OUT"
SRC=(--cow "$COW" --cow-size 128M --state-dir "$PDIR")

report() { printf '%s %s\n' "$(uname -r)" "$*" | tee -a "$OUT"; }

# fio on a hot 4 MiB file (64 regions): random 4 KiB direct writes, unthrottled, in the
# background until hot_stop. IOPS are counted on /dev/mapper/c itself (completed writes in
# its /sys/block stat) over a window: wcount before and after.
hot_start() {
	fio --name=hot --filename="$MNT/hot.dat" --size=4M --rw=randwrite --bs=4k --direct=1 \
		--ioengine=libaio --iodepth=8 --time_based --runtime=600 --randrepeat=0 --thread \
		--output=/dev/null >/dev/null 2>&1 &
	echo $! >"$T_SCRATCH/fio.pid"
	while [ ! -s "$MNT/hot.dat" ] || [ "$(stat -c %s "$MNT/hot.dat")" -lt 4194304 ]; do sleep 0.2; done
	sleep 1
}
hot_stop() { kill_pidfile "$T_SCRATCH/fio.pid"; }
wcount() { dev_writes /dev/mapper/c; }
iops_of() { awk -v w="$1" -v ms="$2" 'BEGIN {printf "%.0f", w * 1000 / ms}'; }

# A burst of new file data (24 MiB, ~400 regions): what the next cut must ship.
burst() {
	dd if=/dev/urandom of="$MNT/burst-$1" bs=1M count=24 oflag=direct status=none
}

# cut_under_fio LABEL [sync options...]: a burst, then one `sync --once` while fio writes
# the hot file; prints the write IOPS during the cut and the cut's shape.
cut_under_fio() {
	local label=$1 f=$T_SCRATCH/$1.json iops t0 w0 ms
	shift
	burst "$label"
	hot_start
	t0=$(now_ms) w0=$(wcount)
	"$B" sync --once c --peer "$PEER" --json "${SRC[@]}" "$@" >"$f" 2>"$f.err" ||
		t_fail "$label: sync --once failed: $(tail -n 3 "$f.err")"
	ms=$(($(now_ms) - t0))
	iops=$(iops_of $(($(wcount) - w0)) "$ms")
	hot_stop
	echo "$ms" >"$T_SCRATCH/ms-$label"
	echo "$iops" >"$T_SCRATCH/iops-$label"
	report "$label: $iops write IOPS during the cut ($ms ms); snapshot $(jget snapshot_ms <"$f") ms of the cut's $(jget cut_ms <"$f") ms; $(jget precopy_passes <"$f") pre-copy passes, $(jget precopy_regions <"$f") regions pre-copied, residue $(jget residue_regions <"$f") regions"
}

t_case "a bdr device with ext4, a replica serving"
[ -n "$B" ] && [ -x "$B" ] || { t_fail "no bdr binary (BDR_BIN='$B')"; exit 1; }
load_bdr || { t_fail "load_bdr"; exit 1; }
RDEV=$(mk_loop "$SIZE_MB") || { t_fail "mk_loop"; exit 1; }
PLOWER=$(mk_nullb "$SIZE_MB" memory_backed=1) || { t_fail "mk_nullb"; exit 1; }
touch "$T_SCRATCH/serve.pid"
t_defer kill_pidfile "$T_SCRATCH/serve.pid"
"$B" replica serve --device "$RDEV" --listen "$PEER" --state-dir "$RDIR" >>"$RESULTS/precopy-serve.log" 2>&1 &
echo $! >"$T_SCRATCH/serve.pid"
assert_ok "$B" attach c "$PLOWER" --kmod "$BDR_KO" --state-dir "$PDIR" || exit 1
t_defer _dm_rm c
t_defer _umount_if "$MNT"
assert_ok mkfs.ext4 -q -F /dev/mapper/c || exit 1
assert_ok mount /dev/mapper/c "$MNT" || exit 1
for _ in $(seq 50); do [ -e "$RDIR/replica-status.json" ] && break; sleep 0.2; done
assert_ok "$B" sync --once c --peer "$PEER" "${SRC[@]}" # the seed (a rescan)

t_case "fio IOPS idle, during a pre-copy cut, during a plain cut"
touch "$T_SCRATCH/fio.pid"
t_defer kill_pidfile "$T_SCRATCH/fio.pid"
cut_under_fio precopy
cut_under_fio plain --no-precopy
hot_start
t0=$(now_ms) w0=$(wcount)
sleep "$(awk -v m="$(cat "$T_SCRATCH/ms-precopy")" 'BEGIN {printf "%.1f", m / 1000}')"
idle=$(iops_of $(($(wcount) - w0)) $(($(now_ms) - t0)))
hot_stop
report "idle: $idle write IOPS"
pre=$(cat "$T_SCRATCH/iops-precopy") plain=$(cat "$T_SCRATCH/iops-plain")
report "IOPS during the cut vs idle: pre-copy $(awk -v a="$pre" -v b="$idle" 'BEGIN {printf "%.0f%%", 100*a/b}'), plain $(awk -v a="$plain" -v b="$idle" 'BEGIN {printf "%.0f%%", 100*a/b}')"
[ "${pre:-0}" -gt 0 ] && [ "${idle:-0}" -gt 0 ] || t_fail "no IOPS measured"
assert_ok test "$(jget precopy_passes <"$T_SCRATCH/precopy.json")" -ge 1

t_case "a cut of the live filesystem under fio: the replica is fsck-clean"
burst live
hot_start
assert_ok "$B" sync --once c --peer "$PEER" "${SRC[@]}"
hot_stop
cp --sparse=always "$RDEV" "$T_SCRATCH/copy.img"
e2fsck -fn "$T_SCRATCH/copy.img" >"$T_SCRATCH/fsck.log" 2>&1 || t_fail "fsck of the live cut: $(tail -n 5 "$T_SCRATCH/fsck.log")"
rm -f "$T_SCRATCH/copy.img"

t_case "stopped and unmounted: one more cut; the replica equals the primary, fsck-clean"
for _ in $(seq 20); do umount "$MNT" 2>/dev/null && break; sleep 0.5; done
assert_fails mountpoint -q "$MNT"
"$B" sync --once c --peer "$PEER" --json "${SRC[@]}" >"$T_SCRATCH/last.json" || t_fail "last sync"
cmp /dev/mapper/c "$RDEV" >"$T_SCRATCH/cmp.out" 2>&1 || t_fail "primary and replica differ: $(head -n 2 "$T_SCRATCH/cmp.out")"
e2fsck -fn "$RDEV" >"$T_SCRATCH/fsck.log" 2>&1 || t_fail "fsck of the replica: $(tail -n 5 "$T_SCRATCH/fsck.log")"
st=$("$B" status c --json --state-dir "$PDIR")
report "bdr status last_cut_shape: $(printf '%s\n' "$st" | tr -d '\n ' | grep -o '"last_cut_shape":{[^}]*}')"
