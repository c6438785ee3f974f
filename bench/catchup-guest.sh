#!/usr/bin/env bash
# Guest part of bench/catchup.sh (runs in the VM as root): the catch-up case of issue 6 with
# a real cut. A 1 GiB volume (memory-backed null_blk under bdr) and two identical copies of it
# on the other side of a veth pair, in another network namespace: the replica of `bdr replica
# serve` (a loop device over a tmpfs file) and a plain tmpfs file served by an rsync daemon.
# Each round rewrites 1% of the 64 KiB regions at random (through bdr, then fsync), then
# catches both copies up, in alternating order:
#   bdr:   `bdr sync --once` (a real cut: suspend, dm-snapshot, ship, replica commit);
#   rsync: `rsync --copy-devices --inplace --no-whole-file --ignore-times` of the bdr device
#          to the rsync daemon (delta transfer, whole device read and checksummed both sides).
# Wall time of each command, bytes on the wire (bdr: bytes_sent of its JSON summary; rsync:
# its --stats "Total bytes sent" + "received"), and whether the copy equals the volume after
# it (cmp). Lines of $RESULTS/catchup.tsv: round tool wall_ms wire_bytes identical.
#
# Then the network path: the veth is shaped to CATCHUP_LINK_MBIT (tc tbf) and a cut of
# CATCHUP_LINK_MB of random data (incompressible: zstd cannot help) is shipped; its goodput
# (plain bytes of the cut / time from the cut taken to the replica's commit, from the
# daemon's summary) is compared with a plain TCP stream of the same size through the same
# link (python, no processing). $RESULTS/link.tsv: tool bytes ms [wire bytes].
#
#   catchup-guest.sh ENVFILE   (CATCHUP_MB [1024], CATCHUP_ROUNDS [3], CATCHUP_PCT [1],
#                               CATCHUP_LINK_MBIT [40], CATCHUP_LINK_MB [48])
set -uo pipefail
# shellcheck source=/dev/null
. "${1:?usage: catchup-guest.sh ENVFILE}"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export T_SUITE=catchup T_SCRATCH=/run/bdr-catchup
mkdir -p "$T_SCRATCH" && mount -t tmpfs -o size=90% tmpfs "$T_SCRATCH" && cd "$T_SCRATCH" || exit 1
modprobe configfs 2>/dev/null
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
modprobe dm-mod && modprobe dm-snapshot && modprobe loop && modprobe null_blk nr_devices=0 || exit 1
# shellcheck source=tests/vm/lib.sh
. "$root/tests/vm/lib.sh"

mb=${CATCHUP_MB:-1024} rounds=${CATCHUP_ROUNDS:-3} pct=${CATCHUP_PCT:-1}
link_mbit=${CATCHUP_LINK_MBIT:-40} link_mb=${CATCHUP_LINK_MB:-48}
B=${BDR_BIN:?}
region=65536
nregions=$((mb * 1048576 / region))
nchanged=$(((nregions * pct + 99) / 100))
PDIR=$T_SCRATCH/pstate RDIR=$T_SCRATCH/rstate COW=$T_SCRATCH/cow PEER=10.77.0.2:7800
mkdir -p "$COW" "$T_SCRATCH/rsync"
kill_gone() { kill "$1" 2>/dev/null; return 0; }
{
	echo "kernel $(uname -r)"; echo "cpus $(nproc)"; echo "rsync $(rsync --version | head -n1)"
	echo "volume_mb $mb"; echo "regions $nregions"; echo "changed_per_round $nchanged"
	echo "rounds $rounds"; echo "link_mbit $link_mbit"; echo "link_mb $link_mb"
} >"$RESULTS/setup.txt"

t_case "set-up: 1 GiB volume, bdr replica and rsync copy identical"
for ns in cup cur; do
	ip netns add $ns || { t_fail "ip netns add"; exit 1; }
	t_defer ip netns del $ns
	ip -n $ns link set lo up
done
ip link add vcp netns cup type veth peer name vcr netns cur &&
	ip -n cup addr add 10.77.0.1/24 dev vcp && ip -n cur addr add 10.77.0.2/24 dev vcr &&
	ip -n cup link set vcp up && ip -n cur link set vcr up || { t_fail "veth"; exit 1; }
plower=$(mk_nullb "$mb" memory_backed=1) || { t_fail "null_blk"; exit 1; }
# Content: half random, a quarter text-like (repeated lines), a quarter zeros.
dd if=/dev/urandom of="$plower" bs=1M count=$((mb / 2)) oflag=direct status=none &&
	{ yes "bdr catch-up bench: a line of text that compresses, more or less like a log file" || :; } |
	dd of="$plower" bs=1M seek=$((mb / 2)) count=$((mb / 4)) iflag=fullblock oflag=direct status=none ||
	{ t_fail "fill"; exit 1; }
rdev=$(mk_loop "$mb") || { t_fail "loop"; exit 1; }
dd if="$plower" of="$rdev" bs=1M status=none && cp "$rdev" "$T_SCRATCH/rsync/copy.img" ||
	{ t_fail "copies"; exit 1; }
cat >"$T_SCRATCH/rsyncd.conf" <<RSEOF
pid file = $T_SCRATCH/rsyncd.pid
use chroot = no
[m]
path = $T_SCRATCH/rsync
read only = no
uid = root
gid = root
RSEOF
ip netns exec cur rsync --daemon --no-detach --address=10.77.0.2 --port=8873 \
	--config="$T_SCRATCH/rsyncd.conf" >"$RESULTS/rsyncd.log" 2>&1 &
rpid=$!
t_defer kill_gone "$rpid"
ip netns exec cur "$B" replica serve --device "$rdev" --listen "$PEER" --state-dir "$RDIR" \
	>"$RESULTS/serve.log" 2>&1 &
spid=$!
t_defer kill_gone "$spid"
"$B" attach c "$plower" --kmod "$BDR_KO" --state-dir "$PDIR" >/dev/null || { t_fail "attach"; exit 1; }
t_defer rm_dm c
sleep 2
# The first cut of a new replica is a rescan: both sides hash every region; nothing differs.
t0=$(now_ms)
ip netns exec cup "$B" sync --once c --peer "$PEER" --cow "$COW" --cow-size 256M --state-dir "$PDIR" \
	--json >"$RESULTS/seed.json" 2>"$RESULTS/seed.err" || { t_fail "seed: $(tail -n 3 "$RESULTS/seed.err")"; exit 1; }
echo "seed_rescan_ms $(($(now_ms) - t0))" >>"$RESULTS/setup.txt"
t_pass

change_regions() { # N: rewrite N distinct random 64 KiB regions through bdr (one process:
	# a dd per region costs a process start each, seconds in all under emulation), then fsync
	python3 -c '
import os, random, sys
n, nregions, region = map(int, sys.argv[1:4])
fd = os.open("/dev/mapper/c", os.O_WRONLY)
for r in random.sample(range(nregions), n):
    os.pwrite(fd, os.urandom(region), r * region)
os.fsync(fd)
os.close(fd)' "$1" "$nregions" "$region"
}
run_bdr() { # ROUND
	local t0 t1 sent same
	t0=$(now_ms)
	ip netns exec cup "$B" sync --once c --peer "$PEER" --cow "$COW" --cow-size 256M \
		--state-dir "$PDIR" --json >"$RESULTS/r$1-bdr.json" 2>"$RESULTS/r$1-bdr.err" ||
		{ t_fail "bdr sync --once: $(tail -n 3 "$RESULTS/r$1-bdr.err")"; return 1; }
	t1=$(now_ms)
	sent=$(sed -n 's/.*"bytes_sent": *\([0-9]*\).*/\1/p' "$RESULTS/r$1-bdr.json" | head -n1)
	cmp -s /dev/mapper/c "$rdev" && same=yes || same=no
	printf '%s\tbdr\t%s\t%s\t%s\n' "$1" "$((t1 - t0))" "$sent" "$same" >>"$RESULTS/catchup.tsv"
}
run_rsync() { # ROUND
	local t0 t1 wire same
	t0=$(now_ms)
	# The block device itself (/dev/mapper/c is a symlink, which rsync would skip).
	ip netns exec cup rsync --copy-devices --inplace --no-whole-file --ignore-times --stats \
		"$(readlink -f /dev/mapper/c)" rsync://10.77.0.2:8873/m/copy.img >"$RESULTS/r$1-rsync.out" 2>&1 ||
		{ t_fail "rsync: $(tail -n 3 "$RESULTS/r$1-rsync.out")"; return 1; }
	t1=$(now_ms)
	wire=$(awk -F': ' '/^Total bytes (sent|received)/ {gsub(/,/, "", $2); s += $2} END {print s + 0}' \
		"$RESULTS/r$1-rsync.out")
	cmp -s /dev/mapper/c "$T_SCRATCH/rsync/copy.img" && same=yes || same=no
	printf '%s\trsync\t%s\t%s\t%s\n' "$1" "$((t1 - t0))" "$wire" "$same" >>"$RESULTS/catchup.tsv"
}

printf 'round\ttool\twall_ms\twire_bytes\tidentical\n' >"$RESULTS/catchup.tsv"
for r in $(seq "$rounds"); do
	t_case "round $r: $nchanged regions rewritten, then both caught up"
	change_regions "$nchanged" || { t_fail "dd"; continue; }
	sync
	if [ $((r % 2)) = 1 ]; then run_bdr "$r" && run_rsync "$r"; else run_rsync "$r" && run_bdr "$r"; fi
	awk -v r="$r" '$1 == r && $5 != "yes" {bad = 1} END {exit bad}' "$RESULTS/catchup.tsv" ||
		t_fail "a copy differs from the volume after round $r"
	# The rsync copy is also rewritten by rsync: nothing else may have changed the volume.
	[ "$(sed -n 's/.*"regions": *\([0-9]*\).*/\1/p' "$RESULTS/r$r-bdr.json" | head -n1)" = "$nchanged" ] ||
		t_fail "bdr shipped $(sed -n 's/.*"regions": *\([0-9]*\).*/\1/p' "$RESULTS/r$r-bdr.json" | head -n1) regions, not $nchanged"
done
cat "$RESULTS/catchup.tsv"

t_case "network path: a cut of ${link_mb} MiB of random data vs a plain TCP stream, ${link_mbit} Mbit/s link"
ip netns exec cup tc qdisc add dev vcp root tbf rate "${link_mbit}mbit" burst 64kb latency 200ms ||
	{ t_fail "tc tbf"; exit 1; }
printf 'tool\tbytes\tms\twire\n' >"$RESULTS/link.tsv"
# Plain TCP: a receiver that counts to EOF, a sender of the same number of bytes.
ip netns exec cur python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.0.2", 8900)); s.listen(1); c, _ = s.accept(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    n += len(b)
c.sendall(b"%d" % n); c.close()' &
rcv=$!
sleep 1
ip netns exec cup python3 -c '
import os, socket, sys, time
n = int(sys.argv[1]); buf = os.urandom(1 << 20)
s = socket.create_connection(("10.77.0.2", 8900)); t0 = time.monotonic(); left = n
while left > 0:
    k = min(left, len(buf)); s.sendall(buf[:k]); left -= k
s.shutdown(socket.SHUT_WR); got = int(s.recv(64)); ms = (time.monotonic() - t0) * 1000
assert got == n, (got, n)
print("tcp\t%d\t%.0f\t%d" % (n, ms, n))' $((link_mb * 1048576)) >>"$RESULTS/link.tsv" ||
	t_fail "plain TCP stream"
wait "$rcv" # (not a bare wait: the replica and the rsync daemon run in the background too)
# bdr: the same amount of random data in distinct regions, one cut, no pre-copy (one pass).
change_regions $((link_mb * 1048576 / region)) || t_fail "writes"
ip netns exec cup "$B" sync --once c --peer "$PEER" --cow "$COW" --cow-size 256M --no-precopy \
	--state-dir "$PDIR" --json >"$RESULTS/link-bdr.json" 2>"$RESULTS/link-bdr.err" ||
	t_fail "bdr sync --once over the shaped link: $(tail -n 3 "$RESULTS/link-bdr.err")"
python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
print("bdr\t%d\t%.0f\t%d" % (s["bytes_read"], s["cut_ms"], s["bytes_sent"]))' "$RESULTS/link-bdr.json" \
	>>"$RESULTS/link.tsv" || t_fail "no summary from bdr"
cat "$RESULTS/link.tsv"
dmesg >"$RESULTS/dmesg.txt"
