#!/usr/bin/env bash
# Replication end to end with real parts: a primary (memory-backed null_blk under dm-bdr, ext4
# then XFS, a concurrent file workload, `bdr primary run --interval 1s`) and a replica
# (`bdr replica serve` on a loop device) in two network namespaces joined by a veth pair. The
# replica is killed -9 at random instants mid-run and is always a committed cut (fsck-clean
# after its restart's recovery); at the end the replica equals the primary byte for byte.
# Then `bdr sync --once` after a long disconnection ships only the dirty regions, a rescan
# after a module reload ships only the changed chunks, detach/attach keeps the bitmap (no
# rescan), and a primary of another volume is refused without touching the replica.
# vm-timeout: 600
. "$(dirname "$0")/../lib.sh"

B=$BDR_BIN
SIZE_MB=320 # XFS wants more than 300 MB
REG=65536   # bdr attach's default region size
NREG=$((SIZE_MB * 1048576 / REG))
PEER=10.77.0.2:7800
RECOVER_ADDR=10.77.0.2:7801 # a serve the primary cannot reach: recovery only
PDIR=$T_SCRATCH/pstate
RDIR=$T_SCRATCH/rstate
COW=$T_SCRATCH/cow
# `ip netns exec` gives each daemon a copy of the mount table; in the guest mounts are private,
# so a filesystem mounted when a daemon starts would stay mounted in its copy after our umount
# (and every cut's freeze would write its superblock again). Mount under a shared mount point:
# its copies are slaves that see our mounts and umounts.
MNTS=$T_SCRATCH/mnts
MNT=$MNTS/fs
COPY=$T_SCRATCH/replica-copy.img
SUSP=$RESULTS/replication-suspend.txt
TIMES=$RESULTS/replication-timing.txt
mkdir -p "$COW" "$MNTS"
: >"$SUSP"
: >"$TIMES"

inp() { ip netns exec bdrp "$@"; }
inr() { ip netns exec bdrr "$@"; }
# The first `"KEY": value` of the pretty-printed JSON on stdin (strings unquoted, null empty).
# (Python starts in about a second under emulation: keep it out of polling loops.)
pstatus() { "$B" status c --json --state-dir "$PDIR"; }
pst() { pstatus 2>/dev/null | jget "$1"; } # FIELD of the replication view
dst() { pstatus 2>/dev/null | jget "$1"; }             # FIELD of the device
timing() { printf '%s\n' "$*" | tee -a "$TIMES"; }


# --- replica ---------------------------------------------------------------------------------
# serve_start [ADDR]: start `replica serve` in bdrr, wait until it listens (≤ 30 s).
serve_start() {
	local addr=${1:-$PEER} p end=$((SECONDS + 30))
	ip netns exec bdrr "$B" -v replica serve --device "$RDEV" --listen "$addr" --state-dir "$RDIR" \
		>>"$RESULTS/replication-serve.log" 2>&1 &
	p=$!
	echo "$p" >"$T_SCRATCH/serve.pid"
	while [ $SECONDS -lt $end ]; do
		if [ "$(jget pid <"$RDIR/replica-status.json" 2>/dev/null)" = "$p" ] &&
			[ "$(jget state <"$RDIR/replica-status.json")" = serving ]; then
			return 0
		fi
		kill -0 "$p" 2>/dev/null || break
		sleep 0.2
	done
	t_fail "replica serve on $addr did not start: $(tail -n 3 "$RESULTS/replication-serve.log")"
}
serve_kill9() { kill -9 "$(cat "$T_SCRATCH/serve.pid")"; wait "$(cat "$T_SCRATCH/serve.pid")" 2>/dev/null; : >"$T_SCRATCH/serve.pid"; }
serve_term() { # the serve must exit 0
	local p rc
	p=$(cat "$T_SCRATCH/serve.pid")
	kill -TERM "$p"
	wait "$p"
	rc=$?
	: >"$T_SCRATCH/serve.pid"
	assert_eq "$rc" 0 "exit status of replica serve after SIGTERM"
}
# After a crash, the replica device is a committed cut once the store is recovered (a redo
# journal committed but not yet applied is replayed at open): open it with a serve the
# primary cannot reach, stop it, then look at the device.
recover_replica() {
	serve_start "$RECOVER_ADDR" || return 1
	t_info "replica recovery: $(jget recovery <"$RDIR/replica-status.json")"
	serve_term
}
# fsck-like check of a sparse copy of the replica device: ext4|xfs.
check_replica_fs() {
	local t0 rc
	t0=$(now_ms)
	cp --sparse=always "$RDEV" "$COPY" || { t_fail "copy the replica device"; return 1; }
	if [ "$1" = ext4 ]; then
		e2fsck -fn "$COPY" >"$T_SCRATCH/fsck.log" 2>&1
	else
		xfs_repair -n -f "$COPY" >"$T_SCRATCH/fsck.log" 2>&1
	fi
	rc=$?
	rm -f "$COPY"
	[ "$rc" = 0 ] || { t_fail "$1 check of the replica copy (status $rc): $(tail -n 8 "$T_SCRATCH/fsck.log")"; return 1; }
	t_info "$1 check of the replica copy clean ($(($(now_ms) - t0)) ms)"
}
replica_last_cut() { "$B" replica status --state-dir "$RDIR" --json | jget last_cut; }

# --- primary ---------------------------------------------------------------------------------
SRC=(--cow "$COW" --cow-size 256M --state-dir "$PDIR")
daemon_start() { # LOG
	ip netns exec bdrp "$B" -v primary run c --peer "$PEER" --interval 1s "${SRC[@]}" >>"$1" 2>&1 &
	echo $! >"$T_SCRATCH/daemon.pid"
}
daemon_term() { # must exit 0
	local p rc
	p=$(cat "$T_SCRATCH/daemon.pid")
	kill -TERM "$p"
	wait "$p"
	rc=$?
	: >"$T_SCRATCH/daemon.pid"
	assert_eq "$rc" 0 "exit status of bdr primary run after SIGTERM"
}
# wait_cuts N SECONDS: until cuts_committed ≥ N.
wait_cuts() {
	local end=$((SECONDS + $2)) c
	while [ $SECONDS -lt $end ]; do
		c=$(pst cuts_committed)
		[ "${c:-0}" -ge "$1" ] && return 0
		kill -0 "$(cat "$T_SCRATCH/daemon.pid")" 2>/dev/null || { t_fail "the daemon died"; return 1; }
		sleep 0.5
	done
	t_fail "$2 s and only ${c:-0} cuts committed (wanted $1); last error: $(pst message)"
}
# wait_settled T_START T_END: a cut committed at or after T_START, nothing pending, and the
# replica known equal to the primary at an instant at or after T_END (ms), within 90 s.
wait_settled() {
	local end=$((SECONDS + 90)) j committed pending age state now
	while [ $SECONDS -lt $end ]; do
		j=$(pstatus 2>/dev/null)
		committed=$(jget last_committed_unix_ms <<<"$j") pending=$(jget pending_regions <<<"$j")
		age=$(jget rpo_age_seconds <<<"$j") state=$(awk '/"daemon"/ {d=1} d && /"state"/ {print; exit}' <<<"$j")
		now=$(now_ms)
		if [ "${committed:-0}" -ge "$1" ] && [ "$pending" = 0 ] && [ -n "$age" ] &&
			awk -v n="$now" -v a="$age" -v t="$2" 'BEGIN {exit !(n - a * 1000 >= t - 5)}' &&
			[[ $state == *'"idle"'* ]]; then
			return 0
		fi
		sleep 0.5
	done
	t_fail "the daemon did not settle after the umount: $j"
}
record_suspend() { # LABEL
	local p50 p99 last
	p50=$(pst suspend_ms_p50) p99=$(pst suspend_ms_p99) last=$(pst suspend_ms_last)
	printf '%s %s: cuts committed %s, aborted %s; suspend window p50 %s ms, p99 %s ms (last %s ms)\n' \
		"$(uname -r)" "$1" "$(pst cuts_committed)" "$(pst cuts_aborted)" "$p50" "$p99" "$last" | tee -a "$SUSP"
	[ -n "$p50" ] && [ -n "$p99" ] || t_fail "no suspend percentiles in bdr status --json"
}
workload_start() {
	fio --name=repl --directory="$MNT" --rw=randwrite --bs=4k --size=8M --nrfiles=4 --fsync=16 \
		--rate=256k --thread --ioengine=psync --time_based --runtime=600 --output=/dev/null >/dev/null 2>&1 &
	echo $! >"$T_SCRATCH/fio.pid"
	(
		i=0
		while :; do
			i=$((i + 1))
			mkdir -p "$MNT/d$((i % 7))"
			head -c $(((i % 13) * 1024 + 100)) /dev/urandom >"$MNT/d$((i % 7))/f$i"
			rm -f "$MNT/d$(((i + 3) % 7))/f$((i - 40))"
			[ $((i % 50)) != 0 ] || rm -rf "$MNT/d$(((i + 5) % 7))"
			sleep 0.02
		done
	) &
	echo $! >"$T_SCRATCH/churn.pid"
}
workload_stop() {
	local p
	p=$(cat "$T_SCRATCH/fio.pid")
	kill -TERM "$p" && wait "$p"
	: >"$T_SCRATCH/fio.pid"
	kill_pidfile "$T_SCRATCH/churn.pid"
}
# write_regions N OUT: one random 4 KiB block at a random place in each of N distinct random
# regions of /dev/mapper/c; the region numbers go to OUT, sorted.
write_regions() {
	python3 - "$1" "$NREG" "$REG" "$2" <<'EOF'
import os, random, sys
n, nreg, reg, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
regions = sorted(random.sample(range(nreg), n))
fd = os.open("/dev/mapper/c", os.O_WRONLY)
for r in regions:
    os.pwrite(fd, os.urandom(4096), r * reg + random.randrange(reg // 4096) * 4096)
os.fsync(fd)
os.close(fd)
open(out, "w").write("".join(f"{r}\n" for r in regions))
EOF
}
cmp_replica() { # MSG
	cmp /dev/mapper/c "$RDEV" >"$T_SCRATCH/cmp.out" 2>&1 || t_fail "$1: primary and replica differ: $(head -n 2 "$T_SCRATCH/cmp.out")"
}
# Fields of a `sync --once --json` summary in FILE.
sj() { jget "$2" <"$1"; }
sync_once() { # OUT: bdr sync --once c --json; the summary to OUT
	local t0 rc
	t0=$(now_ms)
	inp "$B" sync --once c --peer "$PEER" --json "${SRC[@]}" >"$1" 2>"$1.err"
	rc=$?
	[ "$rc" = 0 ] || { t_fail "bdr sync --once failed ($rc): $(tail -n 5 "$1.err")"; return 1; }
	cat "$1"
	timing "$(uname -r) $(basename "$1" .json): sync --once $(($(now_ms) - t0)) ms wall, $(sj "$1" elapsed_ms) ms shipping"
}

# --- the lab ---------------------------------------------------------------------------------
t_case "two network namespaces, a replica serving, a primary attached"
[ -n "$B" ] && [ -x "$B" ] || { t_fail "no bdr binary (BDR_BIN='$B')"; exit 1; }
load_bdr || { t_fail "load_bdr"; exit 1; }
assert_ok mount --bind "$MNTS" "$MNTS" || exit 1
t_defer umount -l "$MNTS"
assert_ok mount --make-rshared "$MNTS" || exit 1
mkdir -p "$MNT"
for ns in bdrp bdrr; do
	ip netns add $ns || { t_fail "ip netns add $ns"; exit 1; }
	t_defer ip netns del $ns
	ip -n $ns link set lo up
done
assert_ok ip link add vbdrp netns bdrp type veth peer name vbdrr netns bdrr || exit 1
assert_ok ip -n bdrp addr add 10.77.0.1/24 dev vbdrp
assert_ok ip -n bdrr addr add 10.77.0.2/24 dev vbdrr
assert_ok ip -n bdrp link set vbdrp up
assert_ok ip -n bdrr link set vbdrr up
# Only the namespaces know the addresses.
ip -o addr | grep -q '10\.77\.0\.' && t_fail "10.77.0.x leaked into the initial namespace"
RDEV=$(mk_loop "$SIZE_MB") || { t_fail "mk_loop"; exit 1; }
PLOWER=$(mk_nullb "$SIZE_MB" memory_backed=1) || { t_fail "mk_nullb"; exit 1; }
touch "$T_SCRATCH/serve.pid" "$T_SCRATCH/daemon.pid" "$T_SCRATCH/fio.pid" "$T_SCRATCH/churn.pid"
t_defer kill_pidfile "$T_SCRATCH/serve.pid"
serve_start || exit 1
assert_fails timeout 5 bash -c ': </dev/tcp/10.77.0.2/7800' 2>/dev/null # not from the initial namespace
assert_ok "$B" attach c "$PLOWER" --kmod "$BDR_KO" --state-dir "$PDIR" || exit 1
t_defer _dm_rm c
t_defer kill_pidfile "$T_SCRATCH/daemon.pid"
t_defer kill_pidfile "$T_SCRATCH/fio.pid"
t_defer kill_pidfile "$T_SCRATCH/churn.pid"
t_defer _umount_if "$MNT"
assert_eq "$(dst nr_regions)" "$NREG" "regions of c"

t_case "ext4 under a file workload, cuts every second, the replica killed -9 three times"
assert_ok mkfs.ext4 -q -F /dev/mapper/c || exit 1
assert_ok mount /dev/mapper/c "$MNT" || exit 1
workload_start
t0=$SECONDS
daemon_start "$RESULTS/replication-primary-ext4.log"
wait_cuts 2 300 || exit 1 # the first cut seeds the new replica (a rescan: both sides hash all of it)
timing "$(uname -r) ext4: seed + 1 cut after $((SECONDS - t0)) s"
for k in 1 2 3; do
	sleep "0.$(printf %03d $((RANDOM % 1000)))"
	before=$(replica_last_cut)
	serve_kill9
	t_info "kill $k: replica killed -9 at committed cut $before; journal $(test -e "$RDIR/journal" && echo present || echo absent); primary state $(pst state)"
	recover_replica || break
	check_replica_fs ext4 || break
	serve_start || break
	c=$(pst cuts_committed)
	t1=$SECONDS
	wait_cuts $((c + 2)) 120 || break # caught up: cuts commit again
	timing "$(uname -r) ext4 kill $k: 2 cuts committed $((SECONDS - t1)) s after the restart"
done
wait_cuts 10 180
timing "$(uname -r) ext4: $(pst cuts_committed) cuts committed in $((SECONDS - t0)) s"
# The replica commits a cut before the primary records it: read the primary first.
pc=$(pst last_committed_cut) rc=$(replica_last_cut)
[ "${rc:-0}" -ge "${pc:-1}" ] || t_fail "replica at cut $rc, behind the primary's last committed cut $pc"
record_suspend ext4

t_case "ext4: stopped and unmounted, the replica equals the primary; fsck clean; verify"
workload_stop
sync
u0=$(now_ms)
assert_ok umount "$MNT"
u1=$(now_ms)
wait_settled "$u0" "$u1"
daemon_term
assert_eq "$(pst state)" stopped "daemon state after SIGTERM"
cmp_replica "after the ext4 run"
check_replica_fs ext4
t0=$(now_ms)
assert_ok inp "$B" verify c --peer "$PEER" "${SRC[@]}"
timing "$(uname -r) verify: $(($(now_ms) - t0)) ms"

t_case "XFS under a file workload, cuts every second; the replica equals the primary"
# -K: no discard of the whole device (that would dirty every region).
assert_ok mkfs.xfs -q -f -K /dev/mapper/c || exit 1
assert_ok mount /dev/mapper/c "$MNT" || exit 1
workload_start
c0=$(pst cuts_committed)
t0=$SECONDS
daemon_start "$RESULTS/replication-primary-xfs.log"
wait_cuts $((c0 + 6)) 180
timing "$(uname -r) xfs: $(($(pst cuts_committed) - c0)) cuts committed in $((SECONDS - t0)) s"
record_suspend "ext4+xfs"
workload_stop
sync
u0=$(now_ms)
assert_ok umount "$MNT"
u1=$(now_ms)
wait_settled "$u0" "$u1"
daemon_term
cmp_replica "after the XFS run"
check_replica_fs xfs

t_case "long disconnection: sync --once ships only the dirty regions"
N=300
assert_eq "$(dst dirty_regions)" 0 "dirty regions before the writes"
write_regions $N "$T_SCRATCH/dis.regions" || t_fail "write regions"
assert_eq "$(dst dirty_regions)" $N "dirty regions after writing $N"
if sync_once "$T_SCRATCH/disconnect.json"; then
	f=$T_SCRATCH/disconnect.json
	assert_eq "$(sj "$f" kind)" incremental "kind of the cut"
	assert_eq "$(sj "$f" regions)" $N "regions shipped"
	assert_eq "$(sj "$f" dirty_regions)" $N "dirty regions of the cut"
	br=$(sj "$f" bytes_read)
	[ "$br" -le $((N * REG)) ] || t_fail "bytes read $br > $N regions x $REG"
	[ "$br" -ge $((N * 4096)) ] || t_fail "bytes read $br < the $((N * 4096)) bytes written"
	timing "$(uname -r) disconnection: $N regions dirty ($((N * 4096)) bytes written), bytes read $br, bytes sent $(sj "$f" bytes_sent)"
fi
cmp_replica "after the catch-up"

t_case "module reload loses the bits: a rescan compares everything, ships only what changed"
M=40
assert_ok rm_dm c
assert_ok unload_bdr
assert_ok load_bdr
assert_fails test -e "$PDIR/bitmap.saved"
assert_ok "$B" attach c "$PLOWER" --kmod "$BDR_KO" --state-dir "$PDIR" || exit 1
write_regions $M "$T_SCRATCH/rescan.regions" || t_fail "write regions"
if sync_once "$T_SCRATCH/rescan.json"; then
	f=$T_SCRATCH/rescan.json
	assert_eq "$(sj "$f" kind)" rescan "kind of the cut after a module reload"
	grep -q generation "$f" || t_fail "rescan reason does not name the generation: $(sj "$f" rescan_reason)"
	assert_eq "$(sj "$f" compared_regions)" "$NREG" "regions compared"
	assert_eq "$(sj "$f" regions)" $M "regions shipped"
	assert_eq "$(sj "$f" chunks)" $M "chunks shipped"
	timing "$(uname -r) rescan: compared $(sj "$f" compared_regions), shipped $(sj "$f" chunks) chunks, bytes read $(sj "$f" bytes_read), sent $(sj "$f" bytes_sent)"
fi
cmp_replica "after the rescan"

t_case "clean detach and attach keep the bitmap: the next cut is incremental"
K=25
write_regions $K "$T_SCRATCH/detach.regions" || t_fail "write regions"
assert_ok "$B" detach c --state-dir "$PDIR"
assert_ok test -e "$PDIR/bitmap.saved"
assert_ok "$B" attach c "$PLOWER" --kmod "$BDR_KO" --state-dir "$PDIR" || exit 1
assert_eq "$(dst dirty_regions)" $K "dirty regions restored by attach"
if sync_once "$T_SCRATCH/reattach.json"; then
	f=$T_SCRATCH/reattach.json
	assert_eq "$(sj "$f" kind)" incremental "kind of the cut after detach/attach"
	assert_eq "$(sj "$f" regions)" $K "regions shipped"
	assert_eq "$(sj "$f" compared_regions)" 0 "regions compared"
fi
cmp_replica "after detach/attach"

t_case "a primary of another volume is refused; the replica is untouched"
P2DIR=$T_SCRATCH/p2state
mkdir -p "$T_SCRATCH/cow2"
l2=$(mk_nullb 64 memory_backed=1) || t_fail "mk_nullb"
assert_ok "$B" attach c2 "$l2" --kmod "$BDR_KO" --state-dir "$P2DIR"
t_defer _dm_rm c2
assert_ok dd if=/dev/urandom of=/dev/mapper/c2 bs=1M count=4 oflag=direct status=none
last=$(replica_last_cut)
inp "$B" sync --once c2 --peer "$PEER" --cow "$T_SCRATCH/cow2" --cow-size 64M --state-dir "$P2DIR" \
	>"$T_SCRATCH/wrong.out" 2>&1
rc=$?
t_info "sync of another volume: status $rc: $(tail -n 3 "$T_SCRATCH/wrong.out")"
[ "$rc" != 0 ] || t_fail "sync of another volume to the replica succeeded"
grep -qi "volume" "$T_SCRATCH/wrong.out" || t_fail "the error does not mention the volume: $(cat "$T_SCRATCH/wrong.out")"
assert_eq "$(replica_last_cut)" "$last" "replica's committed cut"
cmp_replica "after the refused primary"
assert_ok rm_dm c2

t_case "the replica stops cleanly"
serve_term
