#!/usr/bin/env bash
# Smoke test of the lab itself (no bdr): null_blk via configfs, dm-linear with an offset over
# it, fio write+verify through the dm device, the mapping checked against the lower device
# byte for byte, and a clean dmsetup remove.
# vm-timeout: 120
# shellcheck source=tests/vm/lib.sh
. "$(dirname "$0")/../lib.sh"

t_case "guest environment"
assert_ok test -w "$RESULTS"
assert_ok test -d /sys/module/dm_mod
assert_ok mountpoint -q /sys/kernel/config
assert_ok command -v fio

t_case "null_blk memory-backed device"
lower=$(mk_nullb 96 memory_backed=1) || t_fail "mk_nullb failed"
assert_eq "$(blockdev --getsize64 "$lower")" $((96 * 1024 * 1024)) "size of $lower"

t_case "dm-linear at an offset"
off=2048 # 1 MiB
dev=$(mk_linear smoke-lin "$lower" $off) || t_fail "mk_linear failed"
assert_eq "$(dev_sectors "$dev")" $((96 * 2048 - off)) "sectors of $dev"
assert_eq "$(dmsetup table smoke-lin | awk '{print $3, $5}')" "linear $off" "table"

t_case "fio write+verify through dm-linear"
assert_ok fio --name=smoke --filename="$dev" --rw=randwrite --bs=4k --size=64M \
	--ioengine=libaio --iodepth=16 --direct=1 --verify=crc32c --do_verify=1 \
	--verify_fatal=1 --verify_state_save=0 --randrepeat=0 --output=/dev/null

t_case "dm-linear maps onto the lower device at the offset"
# What fio wrote through the dm device must be on the lower device 1 MiB further.
sum_dm=$(dd if="$dev" bs=1M count=64 iflag=direct status=none | md5sum)
sum_lower=$(dd if="$lower" bs=1M skip=1 count=64 iflag=direct status=none | md5sum)
sum_zero=$(head -c $((64 * 1024 * 1024)) /dev/zero | md5sum)
assert_eq "$sum_lower" "$sum_dm" "lower device at +1 MiB vs dm device"
[ "$sum_dm" != "$sum_zero" ] || t_fail "dm device reads back zeroes: nothing was written"

t_case "dmsetup remove"
assert_ok dmsetup remove --retry smoke-lin
assert_fails test -e /dev/mapper/smoke-lin
assert_eq "$(dmsetup ls | grep -c smoke-lin)" 0 "smoke-lin still listed"
