# shellcheck shell=bash
# Helpers for the VM lab's suites (tests/vm/suites/*.sh). A suite is a bash script that runs as
# root inside the guest; it starts with
#
#     # shellcheck source=tests/vm/lib.sh
#     . "$(dirname "$0")/../lib.sh"
#
# and then records test cases. Sourcing installs an EXIT trap that runs the deferred cleanups
# and writes the suite's verdict; don't replace that trap (use t_defer instead).
#
# Environment (exported by tests/vm/guest.sh): RESULTS (writable results dir), T_SUITE (suite
# name), BDR_KO (dm-bdr.ko built for the running kernel; empty if the build failed), BDR_BIN
# (release `bdr` binary; empty if the cargo build failed), BDR_CONFORMANCE_BIN (bitmap's
# conformance_kernel test binary, or empty), BDR_TEST_BINS (file: name<TAB>path of every test
# binary of the workspace), T_SCRATCH (a tmpfs, the working dir of the suite).
# A suite's timeout is 300 s unless it has a line `# vm-timeout: SECONDS`. The whole VM run
# (boot + all suites, per kernel) is capped by tests/vm/run.sh, 600 s by default, and the CI
# budget wants all suites of one kernel well under 10 minutes in software emulation.
#
# Test cases
#   t_case NAME        start a case; an open case is closed first, as passed unless it failed
#   t_pass             close the current case as passed
#   t_fail MSG         record a failure of the current case (closes it) and print MSG;
#                      returns 1. Outside a case it records a failure of its own.
#   t_skip MSG         close the current case as skipped (a case that cannot run here)
#   t_info MSG...      print a line to the suite log
#   assert_eq ACTUAL EXPECTED [MSG]   t_fail unless the two strings are equal; returns 1 then
#   assert_ok CMD...                  run CMD; t_fail if it exits non-zero; returns 1 then
#   assert_fails CMD...               run CMD; t_fail if it exits zero; returns 1 then
#   A case failing does not stop the suite; use `|| exit 1` (or set -e) to stop. A suite that
#   exits non-zero fails its open case. At exit the verdict is written to
#   $RESULTS/$T_SUITE.verdict: first line `PASS|FAIL|SKIP <n> passed, <n> failed, <n> skipped`,
#   then one line per case. No case at all = FAIL; only skipped cases = SKIP.
#
# Cleanup
#   t_defer CMD...     run CMD at exit, last registered first (works from $(...) too).
#                      A cleanup command that fails is recorded as a failed case `cleanup`
#                      (leaked devices usually mean a reference leak worth knowing about).
#
# Devices (each prints the device path on stdout and registers its own cleanup)
#   mk_nullb SIZE_MB [ATTR=VALUE...]  null_blk device via configfs (several can coexist); ATTRs
#                      are configfs attributes: memory_backed=1 keeps data (data tests),
#                      irqmode=0 completes at once, blocksize=4096, hw_queue_depth=N ...
#                      Default is plain (no memory: reads return zeroes) for performance work.
#   mk_loop SIZE_MB    loop device over a sparse file on the scratch tmpfs (RAM!)
#   mk_brd SIZE_MB     /dev/ram0 (brd is reloaded with rd_nr=1: one brd device at a time)
#   mk_dm NAME TABLE   dmsetup create NAME with a one-line TABLE; prints /dev/mapper/NAME
#   rm_dm NAME         remove a dm device: waits for udev first and retries while busy (udev's
#                      blkid opens a device briefly after each close-after-write: a plain
#                      `dmsetup remove` right after I/O can fail with EBUSY); gone already = ok
#   mk_linear NAME DEV [OFFSET_SECTORS]   dm-linear over all of DEV past OFFSET_SECTORS
#   mk_bdr NAME DEV [REGION_SECTORS [BITMAP_ID]]  bdr target over all of DEV (region 128
#                      sectors, bitmap id NAME by default); loads the module first
#   mk_mount DEV DIR [MOUNT_OPTS...]   mkdir -p DIR, mount DEV there; unmounted at exit
#                      unless already unmounted
#   dev_sectors DEV    size of DEV in 512-byte sectors
#   dev_writes DEV     writes DEV completed since it appeared (its /sys/block stat)
#   load_bdr           insmod $BDR_KO unless dm_bdr is loaded; fails if BDR_KO is missing
#   unload_bdr         rmmod dm_bdr if it is loaded
#   dmesg_mark / dmesg_since_mark   put a marker in the kernel log / print the kernel log
#                      since the last marker (to check a case's own kernel messages)
#
# Processes and JSON
#   now_ms             wall clock in milliseconds
#   jget KEY           the first `"KEY": value` of pretty-printed JSON on stdin (strings
#                      unquoted, null empty): enough for bdr's --json and status files
#   kill_pidfile FILE  kill -9 the process whose pid is in FILE and reap it; FILE is emptied
#                      (an empty or missing FILE: nothing to do). For cleanups: always 0

RESULTS=${RESULTS:-/tmp/bdr-results}
T_SUITE=${T_SUITE:-$(basename "$0" .sh)}
T_SCRATCH=${T_SCRATCH:-/tmp}
mkdir -p "$RESULTS" "$T_SCRATCH"
_T_STATE=$(mktemp -d "$T_SCRATCH/.t-$T_SUITE.XXXXXX")
_T_CASES=$RESULTS/$T_SUITE.cases
_T_CUR=$RESULTS/$T_SUITE.current # the open case's name (guest.sh names it on a timeout)
: >"$_T_CASES"
rm -f "$_T_CUR"

t_info() { printf '%s\n' "$*"; }

_t_record() { # STATUS NAME [MSG]
	local secs=''
	[ ! -f "$_T_STATE/t0" ] || secs=" [$(($(date +%s) - $(cat "$_T_STATE/t0")))s]"
	printf '%s %s%s\n' "$1" "$2" "${3:+: $3}" >>"$_T_CASES"
	printf -- '--- %s %s%s%s\n' "$1" "$2" "${3:+: $3}" "$secs"
}

_t_open() { [ -f "$_T_CUR" ] && [ ! -f "$_T_STATE/failed" ]; }

t_case() {
	_t_open && _t_record PASS "$(cat "$_T_CUR")"
	rm -f "$_T_STATE/failed"
	printf '%s\n' "$1" >"$_T_CUR"
	date +%s >"$_T_STATE/t0"
	printf '=== %s\n' "$1"
}

t_pass() {
	_t_open && _t_record PASS "$(cat "$_T_CUR")"
	rm -f "$_T_CUR" "$_T_STATE/failed" "$_T_STATE/t0"
	return 0
}

t_fail() {
	if _t_open; then
		_t_record FAIL "$(cat "$_T_CUR")" "$*"
		touch "$_T_STATE/failed"
	elif [ -f "$_T_CUR" ]; then
		printf -- '--- (further failure in %s): %s\n' "$(cat "$_T_CUR")" "$*"
	else
		_t_record FAIL "(outside any case)" "$*"
	fi
	return 1
}

t_skip() {
	_t_open && _t_record SKIP "$(cat "$_T_CUR")" "$*"
	rm -f "$_T_CUR" "$_T_STATE/failed" "$_T_STATE/t0"
	return 0
}

assert_eq() {
	[ "$1" == "$2" ] && return 0
	t_fail "${3:-assert_eq}: expected '$2', got '$1'"
}

assert_ok() {
	printf '+ %s\n' "$*"
	"$@" && return 0
	t_fail "command failed (status $?): $*"
}

assert_fails() {
	printf '+ %s (must fail)\n' "$*"
	if "$@"; then
		t_fail "command succeeded but must fail: $*"
		return 1
	fi
	return 0
}

# --- cleanup --------------------------------------------------------------------------------
t_defer() {
	printf '%q ' "$@" >>"$_T_STATE/cleanup"
	printf '\n' >>"$_T_STATE/cleanup"
}

_t_run_cleanup() {
	local line bad=
	[ -f "$_T_STATE/cleanup" ] || return 0
	while IFS= read -r line; do
		[ -n "$line" ] || continue
		printf '+ cleanup: %s\n' "$line"
		eval "$line" || bad="$bad; $line"
	done < <(tac "$_T_STATE/cleanup")
	rm -f "$_T_STATE/cleanup"
	[ -z "$bad" ] || { _t_record FAIL cleanup "failed:${bad}"; return 1; }
}

_t_exit() {
	local rc=$? p f s word
	trap - EXIT
	if [ "$rc" != 0 ]; then
		if _t_open; then
			t_fail "suite exited with status $rc"
		elif ! grep -q '^FAIL ' "$_T_CASES"; then
			_t_record FAIL "(suite)" "exited with status $rc"
		fi
	fi
	t_pass
	_t_run_cleanup
	p=$(grep -c '^PASS ' "$_T_CASES")
	f=$(grep -c '^FAIL ' "$_T_CASES")
	s=$(grep -c '^SKIP ' "$_T_CASES")
	if [ "$f" -gt 0 ]; then word=FAIL
	elif [ "$p" -gt 0 ]; then word=PASS
	elif [ "$s" -gt 0 ]; then word=SKIP
	else word=FAIL; _t_record FAIL "(suite)" "no test case ran"; f=1
	fi
	{
		echo "$word $p passed, $f failed, $s skipped"
		cat "$_T_CASES"
	} >"$RESULTS/$T_SUITE.verdict"
	printf '=== verdict: %s %s passed, %s failed, %s skipped\n' "$word" "$p" "$f" "$s"
	rm -rf "$_T_STATE"
	[ "$word" != FAIL ]
	exit $?
}
trap _t_exit EXIT
# Killed (e.g. by guest.sh's timeout): fail the open case rather than pass it.
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP

# --- devices --------------------------------------------------------------------------------
_t_settle() { udevadm settle --timeout=10 2>/dev/null || sleep 1; }

_t_wait_dev() { # DEV: wait up to 10 s for the node
	local _
	for _ in $(seq 50); do
		[ -b "$1" ] && return 0
		sleep 0.2
	done
	echo "device $1 did not appear" >&2
	return 1
}

dev_sectors() { blockdev --getsz "$1"; }
dev_writes() { awk '{print $5}' "/sys/block/$(basename "$(readlink -f "$1")")/stat"; }

_nullb_rm() {
	local d=/sys/kernel/config/nullb/$1
	[ -d "$d" ] || return 0
	echo 0 >"$d/power" && rmdir "$d"
}

mk_nullb() {
	local size=${1:?mk_nullb SIZE_MB [ATTR=VALUE...]} name d kv idx dev
	shift
	[ -d /sys/kernel/config/nullb ] || modprobe null_blk nr_devices=0 || return 1
	_T_N=$(($(cat "$_T_STATE/n" 2>/dev/null || echo 0) + 1))
	echo "$_T_N" >"$_T_STATE/n"
	name=lab-$T_SUITE-$_T_N
	d=/sys/kernel/config/nullb/$name
	mkdir "$d" || return 1
	t_defer _nullb_rm "$name"
	echo "$size" >"$d/size" || return 1
	for kv in "$@"; do
		[ -f "$d/${kv%%=*}" ] || { echo "mk_nullb: no null_blk attribute ${kv%%=*}" >&2; return 1; }
		echo "${kv#*=}" >"$d/${kv%%=*}" || { echo "mk_nullb: cannot set $kv" >&2; return 1; }
	done
	echo 1 >"$d/power" || return 1
	idx=$(cat "$d/index")
	dev=/dev/nullb$idx
	[ -b "$dev" ] || [ ! -b "/dev/$name" ] || dev=/dev/$name
	_t_wait_dev "$dev" || return 1
	echo "$dev"
}

_loop_rm() { # DEV FILE: detach unless already detached
	losetup -j "$2" 2>/dev/null | grep -q "^$1:" || return 0
	losetup -d "$1"
}

mk_loop() {
	local size=${1:?mk_loop SIZE_MB} f dev
	f=$(mktemp "$T_SCRATCH/loop.XXXXXX.img") || return 1
	t_defer rm -f "$f"
	truncate -s "${size}M" "$f" || return 1
	dev=$(losetup -f --show "$f") || return 1
	t_defer _loop_rm "$dev" "$f"
	_t_wait_dev "$dev" || return 1
	echo "$dev"
}

_brd_rm() { [ ! -d /sys/module/brd ] || rmmod brd; }

mk_brd() {
	local size=${1:?mk_brd SIZE_MB}
	if [ -d /sys/module/brd ]; then
		rmmod brd || { echo "mk_brd: brd is in use (one brd device at a time)" >&2; return 1; }
	fi
	modprobe brd rd_nr=1 rd_size=$((size * 1024)) max_part=0 || return 1
	t_defer _brd_rm
	_t_wait_dev /dev/ram0 || return 1
	echo /dev/ram0
}

rm_dm() {
	dmsetup info "${1:?rm_dm NAME}" >/dev/null 2>&1 || return 0
	_t_settle
	dmsetup remove --retry "$1"
}
_dm_rm() { rm_dm "$@"; }

mk_dm() {
	local name=${1:?mk_dm NAME TABLE} table=${2:?mk_dm NAME TABLE}
	printf '+ dmsetup create %s: %s\n' "$name" "$table" >&2
	dmsetup create "$name" --table "$table" || return 1
	t_defer _dm_rm "$name"
	_t_settle
	_t_wait_dev "/dev/mapper/$name" || return 1
	echo "/dev/mapper/$name"
}

mk_linear() {
	local name=${1:?mk_linear NAME DEV [OFFSET]} dev=${2:?mk_linear NAME DEV [OFFSET]} off=${3:-0} sz
	sz=$(dev_sectors "$dev") || return 1
	mk_dm "$name" "0 $((sz - off)) linear $dev $off"
}

mk_bdr() {
	local name=${1:?mk_bdr NAME DEV [REGION [ID]]} dev=${2:?mk_bdr NAME DEV [REGION [ID]]}
	local region=${3:-128} id=${4:-$1} sz
	load_bdr || return 1
	sz=$(dev_sectors "$dev") || return 1
	mk_dm "$name" "0 $sz bdr $dev $region $id"
}

_umount_if() { ! mountpoint -q "$1" || umount "$1"; }

mk_mount() {
	local dev=${1:?mk_mount DEV DIR [OPTS...]} dir=${2:?mk_mount DEV DIR [OPTS...]}
	shift 2
	mkdir -p "$dir" || return 1
	mount "$@" "$dev" "$dir" || return 1
	t_defer _umount_if "$dir"
}

_bdr_mod() { local m; m=$(basename "${BDR_KO:-dm-bdr.ko}" .ko); echo "${m//-/_}"; }

load_bdr() {
	[ -d "/sys/module/$(_bdr_mod)" ] && return 0
	if [ -z "${BDR_KO:-}" ] || [ ! -f "$BDR_KO" ]; then
		echo "load_bdr: no module (BDR_KO='${BDR_KO:-}'; did the kmod build fail?)" >&2
		return 1
	fi
	modprobe dm-mod || return 1
	insmod "$BDR_KO"
}

unload_bdr() {
	[ -d "/sys/module/$(_bdr_mod)" ] || return 0
	rmmod "$(_bdr_mod)"
}

dmesg_mark() {
	_T_MARK="bdr-lab mark $T_SUITE $RANDOM$RANDOM"
	echo "$_T_MARK" >/dev/kmsg
	echo "$_T_MARK" >"$_T_STATE/mark"
}

dmesg_since_mark() {
	local m
	m=$(cat "$_T_STATE/mark" 2>/dev/null) || { dmesg; return; }
	dmesg | sed -n "/$m/,\$p" | tail -n +2
}

now_ms() { date +%s%3N; }

jget() {
	sed -n "s/^ *\"$1\": *\(.*\)\$/\1/p" | head -n 1 | sed 's/,$//; s/^"\(.*\)"$/\1/; s/^null$//'
}

kill_pidfile() {
	local p
	p=$(cat "$1" 2>/dev/null) || return 0
	[ -n "$p" ] || return 0
	kill -9 "$p" 2>/dev/null
	wait "$p" 2>/dev/null
	: >"$1"
	return 0
}
