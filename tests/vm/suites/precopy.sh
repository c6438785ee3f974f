#!/usr/bin/env bash
# Pre-copy under load: ext4 on a bdr device (memory-backed null_blk), fio writing files in it
# without pause, cuts shipped to a replica (`bdr replica serve` on a loop device, loopback)
# back to back with `bdr sync --once` — with pre-copy (the default) and with --no-precopy.
# Measured and printed: fio's write IOPS idle, during pre-copy cuts and during plain cuts;
# each cut's snapshot lifetime against its duration. Checked: every cut commits, a copy of
# the replica taken while the filesystem is live is fsck-clean, and at the end (fio stopped,
# unmounted, one more cut) the replica equals the primary byte for byte and is fsck-clean.
# vm-timeout: 240
. "$(dirname "$0")/../lib.sh"

B=$BDR_BIN
SIZE_MB=192
PEER=127.0.0.1:7900
PDIR=$T_SCRATCH/pstate
RDIR=$T_SCRATCH/rstate
COW=$T_SCRATCH/cow
MNT=$T_SCRATCH/mnt
OUT=$RESULTS/precopy.txt
SECS=${PRECOPY_FIO_SECONDS:-8}
mkdir -p "$COW" "$MNT"
: >"$OUT"
SRC=(--cow "$COW" --cow-size 128M --state-dir "$PDIR")

jget() { sed -n "s/^ *\"$1\": *\(.*\)\$/\1/p" | head -n 1 | sed 's/,$//; s/^"\(.*\)"$/\1/; s/^null$//'; }
report() { printf '%s %s\n' "$(uname -r)" "$*" | tee -a "$OUT"; }
kill_pidfile() {
	local p
	p=$(cat "$1" 2>/dev/null) || return 0
	[ -n "$p" ] || return 0
	kill -9 "$p" 2>/dev/null
	wait "$p" 2>/dev/null
	: >"$1"
}

# fio_iops SECONDS: random 4 KiB direct writes into a 64 MiB file of the filesystem; prints
# the write IOPS.
fio_iops() {
	fio --name=pc --filename="$MNT/fio.dat" --size=64M --rw=randwrite --bs=4k --direct=1 \
		--ioengine=libaio --iodepth=8 --time_based --runtime="$1" --randrepeat=0 \
		--output-format=terse --terse-version=3 2>/dev/null | awk -F';' '{print $49}'
}

# cuts_while_fio LABEL [sync options...]: fio for $SECS s while `sync --once` runs back to
# back; prints the IOPS and, per cut, the snapshot lifetime against the cut's duration.
cuts_while_fio() {
	local label=$1 n=0 f iops share
	shift
	rm -f "$T_SCRATCH"/cut-*.json
	fio_iops "$SECS" >"$T_SCRATCH/iops" &
	local fpid=$!
	while kill -0 "$fpid" 2>/dev/null; do
		n=$((n + 1))
		f=$T_SCRATCH/cut-$n.json
		if ! "$B" sync --once c --peer "$PEER" --json "${SRC[@]}" "$@" >"$f" 2>"$f.err"; then
			t_fail "$label: sync --once $n failed: $(tail -n 3 "$f.err")"
			wait "$fpid"
			return 1
		fi
	done
	wait "$fpid"
	iops=$(cat "$T_SCRATCH/iops")
	share=$(for f in "$T_SCRATCH"/cut-*.json; do
		printf '%s %s %s %s %s\n' "$(jget snapshot_ms <"$f")" "$(jget cut_ms <"$f")" \
			"$(jget precopy_passes <"$f")" "$(jget precopy_regions <"$f")" "$(jget residue_regions <"$f")"
	done | awk '{s += $1; c += $2; p += $3; pr += $4; r += $5; n++}
		END {printf "%d cuts, mean snapshot %.0f ms of cut %.0f ms (%.0f%%), mean %.1f pre-copy passes, %.0f regions pre-copied, residue %.0f regions", n, s/n, c/n, 100*s/c, p/n, pr/n, r/n}')
	report "$label: fio ${iops} write IOPS; $share"
	echo "$iops" >"$T_SCRATCH/iops-$label"
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

t_case "fio IOPS idle, during pre-copy cuts, during plain cuts"
idle=$(fio_iops "$SECS")
report "idle: fio ${idle} write IOPS"
cuts_while_fio precopy || exit 1
cuts_while_fio plain --no-precopy || exit 1
pre=$(cat "$T_SCRATCH/iops-precopy") plain=$(cat "$T_SCRATCH/iops-plain")
report "IOPS during cuts vs idle: pre-copy $(awk -v a="$pre" -v b="$idle" 'BEGIN {printf "%.0f%%", 100*a/b}'), plain $(awk -v a="$plain" -v b="$idle" 'BEGIN {printf "%.0f%%", 100*a/b}')"
[ "${pre:-0}" -gt 0 ] || t_fail "no IOPS measured"

t_case "a cut of the live filesystem under fio: the replica is fsck-clean"
fio_iops 4 >/dev/null &
fpid=$!
sleep 1
assert_ok "$B" sync --once c --peer "$PEER" "${SRC[@]}"
wait "$fpid"
cp --sparse=always "$RDEV" "$T_SCRATCH/copy.img"
e2fsck -fn "$T_SCRATCH/copy.img" >"$T_SCRATCH/fsck.log" 2>&1 || t_fail "fsck of the live cut: $(tail -n 5 "$T_SCRATCH/fsck.log")"
rm -f "$T_SCRATCH/copy.img"

t_case "stopped and unmounted: one more cut; the replica equals the primary, fsck-clean"
assert_ok umount "$MNT"
"$B" sync --once c --peer "$PEER" --json "${SRC[@]}" >"$T_SCRATCH/last.json" || t_fail "last sync"
cmp /dev/mapper/c "$RDEV" >"$T_SCRATCH/cmp.out" 2>&1 || t_fail "primary and replica differ: $(head -n 2 "$T_SCRATCH/cmp.out")"
e2fsck -fn "$RDEV" >"$T_SCRATCH/fsck.log" 2>&1 || t_fail "fsck of the replica: $(tail -n 5 "$T_SCRATCH/fsck.log")"
st=$("$B" status c --json --state-dir "$PDIR")
report "bdr status last_cut_shape: $(printf '%s\n' "$st" | tr -d '\n ' | grep -o '"last_cut_shape":{[^}]*}')"
