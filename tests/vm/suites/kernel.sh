#!/usr/bin/env bash
# The dm-bdr target itself, on a real kernel: data pass-through, limits, the exact dirty
# bitmap (the bitmap crate's conformance suite against the kernel), freezes under load,
# reloads, generations, several volumes, removal under I/O, unload refusal and bad tables.
# vm-timeout: 600
. "$(dirname "$0")/../lib.sh"

# Fields of `dmsetup status` for a bdr device (see kmod/dm-bdr.rst).
st() { # NAME FIELD: generation region nr active frozen writes freezes
	local i
	case $2 in
	generation) i=4 ;; region) i=5 ;; nr) i=6 ;; active) i=7 ;; frozen) i=8 ;;
	writes) i=9 ;; freezes) i=10 ;; *) echo "st: unknown field $2" >&2; return 1 ;;
	esac
	dmsetup status "$1" | awk -v i=$i '{print $i}'
}

# Write one 4 KiB block at byte offset OFF through DEV, O_DIRECT.
wr() { dd if=/dev/urandom of="$1" bs=4096 count=1 seek=$(($2 / 4096)) oflag=direct conv=notrunc status=none; }

# The kernel log since the last dmesg_mark must contain MSG.
expect_kmsg() {
	dmesg_since_mark | grep -qF -- "$1" || t_fail "kernel log lacks '$1': $(dmesg_since_mark | tail -n 3)"
}

# Kernel tests of the bitmap crate's shared conformance suite, against device DEV / id ID.
conformance() {
	if [ -z "${BDR_CONFORMANCE_BIN:-}" ] || [ ! -x "$BDR_CONFORMANCE_BIN" ]; then
		t_fail "no conformance test binary (BDR_CONFORMANCE_BIN='${BDR_CONFORMANCE_BIN:-}')"
		return 1
	fi
	BDR_TEST_DEV=$1 BDR_TEST_ID=$2 assert_ok "$BDR_CONFORMANCE_BIN" --ignored --test-threads=1
}

t_case "module loads and creates the control device"
assert_ok load_bdr
assert_ok test -c /dev/bdr-control
assert_eq "$(stat -c %a /dev/bdr-control)" 600 "mode of /dev/bdr-control"
assert_ok dmsetup targets
dmsetup targets | grep -q '^bdr ' || t_fail "bdr not in dmsetup targets"

t_case "fio write+verify through bdr; the lower device holds exactly what was written"
lower=$(mk_nullb 256 memory_backed=1) || t_fail "mk_nullb"
dev=$(mk_bdr k-fio "$lower") || t_fail "mk_bdr"
job=(--name=kfio --rw=randwrite --bsrange=512-256k --size=192M --ioengine=libaio
	--iodepth=16 --direct=1 --verify=crc32c --verify_state_save=0 --randseed=4242 --output=/dev/null)
assert_ok fio --filename="$dev" "${job[@]}" --do_verify=1 --verify_fatal=1
# Nothing between the filesystem and the disk: the same blocks read through bdr and raw.
assert_eq "$(md5sum <"$dev")" "$(md5sum <"$lower")" "bdr device vs lower device contents"
assert_ok dmsetup remove --retry k-fio
# fio's verify pass over the raw device, without bdr in between.
assert_ok fio --filename="$lower" "${job[@]}" --verify_only --verify_fatal=1

t_case "discard and write-zeroes pass through"
lower=$(mk_nullb 64 memory_backed=1 discard=1) || t_fail "mk_nullb"
dev=$(mk_bdr k-zero "$lower") || t_fail "mk_bdr"
assert_ok dd if=/dev/urandom of="$dev" bs=1M count=8 oflag=direct status=none
assert_ok blkdiscard -z -o $((1 << 20)) -l $((1 << 20)) "$dev"
assert_eq "$(cmp -n $((1 << 20)) <(dd if="$lower" bs=1M skip=1 count=1 status=none) /dev/zero && echo zero)" \
	zero "write-zeroes through bdr left non-zero data on the lower device"
assert_ok blkdiscard -o $((2 << 20)) -l $((1 << 20)) "$dev"
assert_ok dmsetup remove --retry k-zero

t_case "queue limits are the lower device's, as through dm-linear"
lower=$(mk_nullb 64 blocksize=4096 discard=1) || t_fail "mk_nullb"
bdr=$(mk_bdr k-lim "$lower") || t_fail "mk_bdr"
lin=$(mk_linear k-lim-lin "$lower") || t_fail "mk_linear"
qb=/sys/block/$(basename "$(readlink -f "$bdr")")/queue
ql=/sys/block/$(basename "$(readlink -f "$lin")")/queue
for a in logical_block_size physical_block_size minimum_io_size optimal_io_size \
	discard_granularity discard_max_bytes write_zeroes_max_bytes max_sectors_kb \
	max_hw_sectors_kb rotational; do
	assert_eq "$(cat "$qb/$a")" "$(cat "$ql/$a")" "queue/$a (bdr vs dm-linear)"
done
assert_eq "$(cat "$qb/logical_block_size")" 4096 "4 KiB logical blocks passed up"
assert_ok dmsetup remove --retry k-lim k-lim-lin

t_case "exact bitmap: conformance suite on a 4 KiB-sector device"
lower=$(mk_nullb 64 memory_backed=1 blocksize=4096 discard=1) || t_fail "mk_nullb"
# One 4 KiB block short of 64 MiB, so the last 64 KiB region is partial.
short=$(mk_dm k-conf4k-lin "0 $(($(dev_sectors "$lower") - 8)) linear $lower 0") || t_fail "linear"
dev=$(mk_bdr k-conf4k "$short" 128 conf-4k) || t_fail "mk_bdr"
conformance "$dev" conf-4k
assert_ok dmsetup remove --retry k-conf4k k-conf4k-lin

t_case "exact bitmap: conformance suite on an odd-sized device with 4 KiB regions"
img=$T_SCRATCH/odd.img
# 10 MiB + 3.5 KiB: the last 4 KiB region is partial.
assert_ok truncate -s $((10 * 1024 * 1024 + 3584)) "$img"
t_defer rm -f "$img"
loopdev=$(losetup -f --show "$img") || t_fail "losetup"
t_defer losetup -d "$loopdev"
dev=$(mk_bdr k-odd "$loopdev" 8 conf-odd) || t_fail "mk_bdr"
assert_eq "$(st k-odd nr)" $(((10 * 1024 * 1024 + 3584 + 4095) / 4096)) "regions of the odd device"
conformance "$dev" conf-odd
assert_ok dmsetup remove --retry k-odd

t_case "known writes give known counters; messages freeze, merge and ack"
lower=$(mk_nullb 64 memory_backed=1) || t_fail "mk_nullb"
dev=$(mk_bdr k-msg "$lower") || t_fail "mk_bdr"
assert_eq "$(st k-msg active)" 0 "active after create"
wr "$dev" 0                                # region 0
wr "$dev" $((65536 - 4096))                # region 0 again
wr "$dev" $((65536 * 5 + 8192))            # region 5
assert_ok dd if=/dev/zero of="$dev" bs=8192 count=1 seek=$((65536 * 9 - 4096)) \
	oflag=direct,seek_bytes status=none     # one bio spanning regions 8 and 9
assert_ok sync                             # empty flushes mark nothing
assert_ok dd if="$dev" of=/dev/null bs=1M count=8 iflag=direct status=none # reads mark nothing
assert_eq "$(st k-msg active)" 4 "active regions {0,5,8,9}"
assert_eq "$(st k-msg writes)" 4 "writes seen"
assert_eq "$(dmsetup message k-msg 0 freeze)" 4 "freeze reply"
assert_eq "$(st k-msg active) $(st k-msg frozen) $(st k-msg freezes)" "0 4 1" "after freeze"
wr "$dev" $((65536 * 5))
assert_eq "$(dmsetup message k-msg 0 freeze)" 4 "second freeze merges {5} into {0,5,8,9}"
wr "$dev" $((65536 * 20))
assert_ok dmsetup message k-msg 0 merge
assert_eq "$(st k-msg active) $(st k-msg frozen)" "5 0" "merge back: {0,5,8,9,20} active"
assert_ok dmsetup message k-msg 0 freeze
assert_ok dmsetup message k-msg 0 ack
assert_eq "$(st k-msg active) $(st k-msg frozen)" "0 0" "after ack"
assert_fails dmsetup message k-msg 0 bogus
assert_ok dmsetup remove --retry k-msg

t_case "freeze under concurrent fio load loses no bit"
# fio logs every I/O it issues; the union of all frozen sets plus the active set at the end
# must be exactly the regions fio wrote.
lower=$(mk_nullb 128 memory_backed=1) || t_fail "mk_nullb"
dev=$(mk_bdr k-load "$lower" 8 k-load) || t_fail "mk_bdr"
iolog=$T_SCRATCH/k-load.iolog
got=$T_SCRATCH/k-load.got
: >"$got"
# fio runs until the loop has frozen at least 8 times and 8 s have passed (a slow emulator
# makes each freeze/dump/ack round take a second or more), then is stopped by a SIGINT,
# which may drop the write fio has just logged (see the check below).
fio --name=kload --filename="$dev" --rw=randwrite --bs=4k --size=128M --time_based --runtime=300 \
	--ioengine=psync --direct=1 --write_iolog="$iolog" \
	--output=/dev/null &
fio_pid=$!
freezes=0 t0=$(now_ms) stopped=0
while kill -0 $fio_pid 2>/dev/null; do
	"$BDR_BIN" bitmap freeze k-load >/dev/null && "$BDR_BIN" bitmap dump k-load --frozen >>"$got" &&
		"$BDR_BIN" bitmap ack k-load >/dev/null || { t_fail "bdr bitmap failed"; break; }
	freezes=$((freezes + 1))
	if [ $stopped = 0 ] && [ $freezes -ge 8 ] && [ $(($(now_ms) - t0)) -ge 8000 ]; then
		kill -INT $fio_pid 2>/dev/null
		stopped=1
	fi
done
fio_rc=0
wait $fio_pid || fio_rc=$?
[ $fio_rc = 0 ] || [ $stopped = 1 ] || t_fail "fio failed ($fio_rc)"
assert_ok "$BDR_BIN" bitmap dump k-load --active >>"$got"
t_info "freezes during the run: $freezes"
[ "$freezes" -ge 8 ] || t_fail "only $freezes freezes during the fio run"
# iolog v2 lines: FILE write OFFSET LENGTH; v3 puts a timestamp first. Regions are 4 KiB.
for f in "$iolog"*; do
	awk '$2 == "write" { o = $3; l = $4 } $3 == "write" { o = $4; l = $5 }
		o != "" { for (r = int(o / 4096); r <= int((o + l - 1) / 4096); r++) print r; o = "" }' "$f"
done |
	sort -nu >"$got.expected"
grep -E '^[0-9]+$' "$got" | sort -nu >"$got.sorted" # (assert_ok's own "+ cmd" line is not a region)
extra=$(comm -13 <(sort "$got.expected") <(sort "$got.sorted") | head -n 5)
[ -z "$extra" ] || t_fail "bits of regions fio never wrote: $extra"
# A region fio logged and no bitmap holds: a lost bit if the write reached the device, a
# write fio logged and then dropped at the SIGINT if the block is still zero (the device
# started zeroed; fio writes random data). Seen once per run at most, on both engines.
unissued=0
for r in $(comm -23 <(sort "$got.expected") <(sort "$got.sorted")); do
	if dd if="$dev" bs=4096 skip="$r" count=1 iflag=direct status=none | cmp -s -n 4096 - /dev/zero; then
		unissued=$((unissued + 1))
	else
		t_fail "region $r holds written data but no bitmap has its bit"
	fi
done
t_info "regions in fio's log: $(wc -l <"$got.expected"), in the bitmaps: $(wc -l <"$got.sorted"), logged but never written (still zero): $unissued"
[ "$unissued" -le 1 ] || t_fail "$unissued writes logged but never issued: more than the one the SIGINT can drop"
rm -f "$iolog"* "$got"*
assert_ok dmsetup remove --retry k-load

t_case "reload onto another lower device keeps the bits and the generation"
lower=$(mk_nullb 64 memory_backed=1) || t_fail "mk_nullb"
dev=$(mk_bdr k-rl "$lower" 128 k-rl) || t_fail "mk_bdr"
sz=$(dev_sectors "$lower")
wr "$dev" 0; wr "$dev" $((65536 * 3)); wr "$dev" $((65536 * 7))
gen=$(st k-rl generation)
assert_ok dmsetup message k-rl 0 freeze
wr "$dev" $((65536 * 9))
origin=$(mk_dm k-rl-origin "0 $sz snapshot-origin $lower") || t_fail "snapshot-origin"
assert_ok dmsetup reload k-rl --table "0 $sz bdr $origin 128 k-rl"
assert_ok dmsetup suspend k-rl
assert_ok dmsetup resume k-rl
assert_eq "$(dmsetup table k-rl | awk '{print $4}')" "$(dmsetup info -c --noheadings -o major,minor --separator : k-rl-origin)" "table now points at the origin"
assert_eq "$(st k-rl generation) $(st k-rl frozen) $(st k-rl active)" "$gen 3 1" "bits across the reload"
wr "$dev" $((65536 * 11))
assert_ok dmsetup reload k-rl --table "0 $sz bdr $lower 128 k-rl"
assert_ok dmsetup suspend k-rl
assert_ok dmsetup resume k-rl
assert_eq "$(st k-rl generation) $(st k-rl frozen) $(st k-rl active)" "$gen 3 2" "bits across the reload back"
# A reload with another geometry, or another device naming the id, is refused.
dmesg_mark
assert_fails dmsetup reload k-rl --table "0 $sz bdr $lower 256 k-rl"
expect_kmsg "Bitmap id is in use with another length or region size"
assert_ok dmsetup clear k-rl
lower2=$(mk_nullb 64 memory_backed=1) || t_fail "mk_nullb"
dmesg_mark
assert_fails dmsetup create k-rl-other --table "0 $sz bdr $lower2 128 k-rl"
expect_kmsg "Bitmap id is in use by another device"
assert_eq "$(st k-rl generation) $(st k-rl frozen) $(st k-rl active)" "$gen 3 2" "refused tables changed nothing"
assert_ok dmsetup remove --retry k-rl k-rl-origin

t_case "a new bitmap gets a new generation: recreate, module reload"
lower=$(mk_nullb 64 memory_backed=1) || t_fail "mk_nullb"
dev=$(mk_bdr k-gen "$lower" 128 k-gen) || t_fail "mk_bdr"
wr "$dev" 0
gen1=$(st k-gen generation)
assert_ok dmsetup remove --retry k-gen
dev=$(mk_bdr k-gen "$lower" 128 k-gen) || t_fail "mk_bdr"
gen2=$(st k-gen generation)
[ "$gen1" != "$gen2" ] || t_fail "recreated bitmap kept generation $gen1"
assert_eq "$(st k-gen active)" 0 "recreated bitmap is empty"
assert_ok dmsetup remove --retry k-gen
assert_eq "$(dmsetup table --target bdr | grep -vc 'No devices found')" 0 "bdr devices left before unload"
assert_ok unload_bdr
dev=$(mk_bdr k-gen "$lower" 128 k-gen) || t_fail "mk_bdr after module reload"
gen3=$(st k-gen generation)
[ "$gen3" != "$gen2" ] && [ "$gen3" != "$gen1" ] || t_fail "module reload kept a generation ($gen3)"
assert_ok dmsetup remove --retry k-gen

t_case "four volumes at once, each with its own bitmap"
pids=()
for i in 1 2 3 4; do
	l=$(mk_nullb 64 memory_backed=1) || t_fail "mk_nullb $i"
	mk_bdr "k-four$i" "$l" 128 "four-$i" >/dev/null || t_fail "mk_bdr $i"
done
for i in 1 2 3 4; do
	for r in $(seq 1 $((i * 2))); do wr "/dev/mapper/k-four$i" $((65536 * r * 3)); done
	assert_eq "$(st "k-four$i" active)" $((i * 2)) "active regions of volume $i"
done
for i in 1 2 3 4; do
	fio --name="four$i" --filename="/dev/mapper/k-four$i" --rw=randwrite --bs=4k --size=64M \
		--io_size=16M --ioengine=libaio --iodepth=8 --direct=1 --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --verify_state_save=0 --output=/dev/null &
	pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || t_fail "fio on one of four volumes failed"; done
for i in 1 2 3 4; do
	[ "$(st "k-four$i" writes)" -ge 4096 ] || t_fail "volume $i saw $(st "k-four$i" writes) writes"
done
assert_ok dmsetup remove --retry k-four1 k-four2 k-four3 k-four4

t_case "remove under I/O is refused while open, safe when deferred or forced"
lower=$(mk_nullb 256) || t_fail "mk_nullb"
gone() { ! dmsetup info "$1" >/dev/null 2>&1; }
# Wait (up to 60 s: fio starts slowly in a busy emulator) until something holds $1 open.
wait_open() {
	local i n
	for i in $(seq 600); do
		n=$(dmsetup info -c --noheadings -o open "$1" 2>/dev/null | tr -d ' ')
		[ "${n:-0}" -gt 0 ] && return 0
		sleep 0.1
	done
	return 1
}
dev=$(mk_bdr k-rm "$lower") || t_fail "mk_bdr"
fio --name=krm --filename="$dev" --rw=randrw --bs=4k --ioengine=libaio --iodepth=32 --direct=1 \
	--time_based --runtime=60 --output=/dev/null >/dev/null 2>&1 &
fio_pid=$!
wait_open k-rm || t_fail "fio never opened k-rm"
sleep 1
assert_fails dmsetup remove k-rm
assert_ok dmsetup remove --deferred k-rm
assert_ok kill -0 $fio_pid
assert_ok dd if="$dev" of=/dev/null bs=4k count=16 iflag=direct status=none
kill $fio_pid
wait $fio_pid
_t_settle
gone k-rm || t_fail "deferred remove did not happen when the last opener closed"
# Forced away under I/O: the table is replaced by one that fails all I/O.
dev=$(mk_bdr k-rm2 "$lower") || t_fail "mk_bdr"
fio --name=krm2 --filename="$dev" --rw=randwrite --bs=4k --ioengine=libaio --iodepth=32 --direct=1 \
	--time_based --runtime=60 --output=/dev/null >/dev/null 2>&1 &
fio_pid=$!
wait_open k-rm2 || t_fail "fio never opened k-rm2"
sleep 1
dmsetup remove --force k-rm2 >/dev/null 2>&1
wait $fio_pid && t_fail "fio saw no error on a device forced away"
gone k-rm2 || assert_ok dmsetup remove --retry k-rm2
gone k-rm2 || t_fail "k-rm2 still present"

t_case "module unload is refused while a table or the control device is in use"
lower=$(mk_nullb 64) || t_fail "mk_nullb"
mk_bdr k-un "$lower" >/dev/null || t_fail "mk_bdr"
assert_fails rmmod dm_bdr
assert_ok dmsetup remove --retry k-un
exec 3</dev/bdr-control
assert_fails rmmod dm_bdr
exec 3<&-
assert_ok rmmod dm_bdr
assert_ok load_bdr

t_case "bad table lines fail with a clear error and leak nothing"
lower=$(mk_nullb 64) || t_fail "mk_nullb"
sz=$(dev_sectors "$lower")
bad() { # EXPECTED_KMSG TABLE
	dmesg_mark
	assert_fails dmsetup create k-bad --table "$2"
	expect_kmsg "bdr: $1"
	dmsetup remove k-bad >/dev/null 2>&1 || true
}
bad "Invalid argument count" "0 $sz bdr"
bad "Invalid argument count" "0 $sz bdr $lower 128"
bad "Invalid argument count" "0 $sz bdr $lower 128 id extra"
bad "Device lookup failed" "0 $sz bdr /dev/does-not-exist 128 id"
bad "Invalid region size" "0 $sz bdr $lower 0 id"
bad "Invalid region size" "0 $sz bdr $lower 4 id"
bad "Invalid region size" "0 $sz bdr $lower 128x id"
bad "Invalid region size" "0 $sz bdr $lower 4194304 id"
bad "Region size is not a power of two" "0 $sz bdr $lower 100 id"
bad "Invalid bitmap id" "0 $sz bdr $lower 128 bad/id"
bad "Invalid bitmap id" "0 $sz bdr $lower 128 $(printf 'x%.0s' $(seq 64))"
bad "Device is smaller than one region" "0 64 bdr $lower 128 id"
bad "Target is longer than the device" "0 $((sz + 128)) bdr $lower 128 id"
holders=/sys/block/$(basename "$lower")/holders
assert_eq "$(ls "$holders" | wc -l)" 0 "lower device still held after failed constructors"
assert_ok rmmod dm_bdr
assert_ok load_bdr
