#!/usr/bin/env bash
# Consistent cuts of a real bdr device (src/cut/dm.rs through `bdr __cut`): the image equals
# the device at the cut, its regions are exactly the ones written, the steady state is one
# layer, ext4 images are fsck-clean under a live workload, the suspend window is measured,
# a daemon killed at any instant never leaves the device suspended, and a COW store that
# overflows aborts the cut without the primary noticing. Also `bdr attach/status/detach`.
# vm-timeout: 600
. "$(dirname "$0")/../lib.sh"

B=$BDR_BIN
COW=$T_SCRATCH/cow
mkdir -p "$COW"

cut() { "$B" __cut "$@" --cow "$COW"; }
regions_of() { python3 -c 'import json,sys; print(" ".join(map(str, json.load(sys.stdin)["regions"])))'; }
suspended() { dmsetup info "$1" | grep -q '^State: *SUSPENDED'; }
helpers_gone() { ! dmsetup info "$1-bdr-snap" >/dev/null 2>&1 && ! dmsetup info "$1-bdr-origin" >/dev/null 2>&1; }
devnum() { printf '%d:%d' "0x$(stat -L -c %t "$1")" "0x$(stat -L -c %T "$1")"; }
# Wait (up to 20 s) until a cut of $1 is live: its snapshot is active and reports its usage.
wait_live() {
	local i
	for i in $(seq 200); do
		dmsetup status "$1-bdr-snap" 2>/dev/null | grep -q ' snapshot [0-9]*/' && return 0
		sleep 0.1
	done
	t_fail "no live cut of $1 after 20 s"
}
unmount() { ! mountpoint -q "$1" || umount -l "$1"; }
wr() { dd if=/dev/urandom of="$1" bs=4096 count="${3:-1}" seek=$(($2 / 4096)) oflag=direct conv=notrunc status=none; }

t_case "bdr attach, status and detach on a real device"
load_bdr || t_fail "load_bdr"
lower=$(mk_nullb 128 memory_backed=1) || t_fail "mk_nullb"
assert_ok "$B" attach c "$lower" --region-size 64KiB --id cut-c --kmod "$BDR_KO"
t_defer _dm_rm c
assert_ok test -b /dev/mapper/c
assert_eq "$(dmsetup table c | awk '{print $3, $5, $6}')" "bdr 128 cut-c" "table of c"
assert_fails "$B" attach c2 "$lower"                  # held by c
assert_fails "$B" attach c "$lower"                   # name taken
"$B" status c --json >"$T_SCRATCH/st.json" || t_fail "bdr status --json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["region_size_bytes"] == 65536, d' "$T_SCRATCH/st.json" ||
	t_fail "status json: $(cat "$T_SCRATCH/st.json")"

t_case "a cut's image is the device and its regions are exactly those written"
wr /dev/mapper/c 0 4                   # region 0
wr /dev/mapper/c $((65536 * 7))
wr /dev/mapper/c $((65536 * 100 - 4096)) 2 # regions 99, 100
out=$(cut c --copy-to "$T_SCRATCH/img1") || t_fail "cut failed: $out"
assert_eq "$(echo "$out" | regions_of)" "0 7 99 100" "regions of the first cut"
assert_ok cmp "$T_SCRATCH/img1" /dev/mapper/c
assert_eq "$(dmsetup status c | awk '{print $7, $8}')" "0 0" "active/frozen after commit"
helpers_gone c || t_fail "snapshot devices left after the cut"
assert_eq "$(dmsetup table c | awk '{print $4}')" "$(devnum "$lower")" "steady state: c is bdr over the lower device"
rm -f "$T_SCRATCH/img1"

t_case "an aborted cut merges its regions back; the next cut ships them"
wr /dev/mapper/c $((65536 * 3))
out=$(cut c --abort) || t_fail "cut failed"
assert_eq "$(echo "$out" | regions_of)" "3" "aborted cut's regions"
wr /dev/mapper/c $((65536 * 5))
out=$(cut c) || t_fail "cut failed"
assert_eq "$(echo "$out" | regions_of)" "3 5" "next cut has the merged-back region"

t_case "writes during a live cut go to the device and into the next cut; the image keeps the old data"
# Old data everywhere the live writes will land, so a chunk that was not copied out shows.
assert_ok dd if=/dev/urandom of=/dev/mapper/c bs=1M count=8 seek=1 oflag=direct status=none
out=$(cut c) || t_fail "cut failed"
wr /dev/mapper/c $((65536 * 10))
before=$(md5sum </dev/mapper/c)
cut c --hold-ms 3000 --copy-to "$T_SCRATCH/img2" >"$T_SCRATCH/cut2.json" &
cpid=$!
wait_live c
# Large and small writes over old data while the snapshot is live.
assert_ok dd if=/dev/urandom of=/dev/mapper/c bs=1M count=4 seek=2 oflag=direct status=none
assert_ok dd if=/dev/urandom of=/dev/mapper/c bs=4096 count=16 seek=$((65536 * 20 / 4096)) oflag=direct status=none
after=$(md5sum </dev/mapper/c)
wait $cpid || t_fail "live cut failed"
assert_eq "$(regions_of <"$T_SCRATCH/cut2.json")" "10" "cut taken before the writes"
assert_eq "$(md5sum <"$T_SCRATCH/img2")" "$before" "the image is the device as it was at the cut"
[ "$after" != "$before" ] || t_fail "the writes during the cut changed nothing on the device"
out=$(cut c) || t_fail "cut failed"
assert_eq "$(echo "$out" | regions_of)" "20 $(seq -s ' ' 32 95)" "next cut ships the writes made during the cut"
rm -f "$T_SCRATCH/img2"

t_case "ext4 under a live workload: every cut image is fsck-clean; suspend window"
assert_ok mkfs.ext4 -q -F /dev/mapper/c
mnt=$T_SCRATCH/mnt
mkdir -p "$mnt"
assert_ok mount /dev/mapper/c "$mnt"
t_defer unmount "$mnt"
fio --name=fs --directory="$mnt" --rw=randwrite --bs=4k --size=32M --nrfiles=8 --fsync=16 \
	--ioengine=psync --time_based --runtime=300 --output=/dev/null >/dev/null 2>&1 &
fio_pid=$!
( i=0; while kill -0 $fio_pid 2>/dev/null; do i=$((i + 1)); mkdir -p "$mnt/d$((i % 7))";
	echo "$i" >"$mnt/d$((i % 7))/f$i"; rm -f "$mnt/d$(((i + 3) % 7))/f$((i - 40))"; sleep 0.01; done ) &
churn_pid=$!
sleep 2
: >"$T_SCRATCH/suspend_us"
for i in $(seq 8); do
	out=$(cut c --copy-to "$T_SCRATCH/fsimg") || { t_fail "cut $i failed"; break; }
	echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["suspend_us"])' >>"$T_SCRATCH/suspend_us"
	e2fsck -fn "$T_SCRATCH/fsimg" >"$T_SCRATCH/fsck.log" 2>&1 || { t_fail "cut $i: e2fsck: $(tail -n 5 "$T_SCRATCH/fsck.log")"; break; }
	sleep 0.3
done
kill $fio_pid $churn_pid 2>/dev/null
wait $fio_pid $churn_pid 2>/dev/null
sort -n "$T_SCRATCH/suspend_us" | awk '{a[NR]=$1} END {printf "suspend window over %d cuts: p50 %.1f ms, max %.1f ms\n", NR, a[int((NR+1)/2)]/1000, a[NR]/1000}' |
	tee "$RESULTS/cut-suspend.txt"
rm -f "$T_SCRATCH/fsimg"
assert_ok umount "$mnt"

t_case "a daemon killed at any instant never leaves the device suspended"
assert_ok mount /dev/mapper/c "$mnt"
for i in $(seq 12); do
	cut c --hold-ms 500 >/dev/null 2>&1 &
	cpid=$!
	sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
	kill -9 $cpid 2>/dev/null
	wait $cpid 2>/dev/null
	sleep 1 # the guard resumes at once; leave it a second as promised
	if suspended c; then t_fail "kill $i: c still suspended a second after the daemon died"; dmsetup resume c; fi
	timeout 10 sh -c "echo $i >$mnt/after-kill && sync" || t_fail "kill $i: filesystem not writable"
done
# The next daemon undoes whatever was left: helpers, the origin table, frozen bits.
out=$(cut c) || t_fail "cut after kills failed: $out"
helpers_gone c || t_fail "helpers left after recovery"
assert_eq "$(dmsetup status c | awk '{print $8}')" 0 "frozen regions after recovery"
assert_ok umount "$mnt"

t_case "a COW store that overflows aborts the cut; the primary sees no error"
dmesg_mark
wr /dev/mapper/c 0
"$B" __cut c --cow "$COW" --cow-size 1M --hold-ms 4000 >"$T_SCRATCH/ovf.json" 2>"$T_SCRATCH/ovf.err" &
cpid=$!
wait_live c
assert_ok dd if=/dev/urandom of=/dev/mapper/c bs=1M count=16 seek=64 oflag=direct status=none
wait $cpid && t_fail "a cut whose COW overflowed reported success"
grep -q "overflow" "$T_SCRATCH/ovf.err" || t_fail "no overflow message: $(cat "$T_SCRATCH/ovf.err")"
helpers_gone c || t_fail "helpers left after the aborted cut"
dmesg_since_mark | grep -E "I/O error|Buffer I/O" | grep -v -- "-bdr-snap" && t_fail "I/O errors in the kernel log"
out=$(cut c) || t_fail "cut after overflow failed"
for r in 0 $(seq 1024 1279); do echo "$r"; done >"$T_SCRATCH/ovf.expect"
echo "$out" | regions_of | tr ' ' '\n' >"$T_SCRATCH/ovf.got"
assert_ok cmp -s "$T_SCRATCH/ovf.expect" "$T_SCRATCH/ovf.got"

t_case "bdr detach removes the device and leaves the lower device as written"
sum=$(md5sum </dev/mapper/c)
assert_ok "$B" detach c
assert_fails test -e /dev/mapper/c
assert_eq "$(md5sum <"$lower")" "$sum" "lower device after detach"
