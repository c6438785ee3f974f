#!/usr/bin/env bash
# Guest side of the VM lab: run by tests/vm/run.sh inside a virtme-ng guest, as root.
#
#   guest.sh ENVFILE SUITE_FILE...
#
# ENVFILE (written by the host) exports RESULTS (the writable results dir), BDR_KO, BDR_BIN,
# BDR_CONFORMANCE_BIN, BDR_TEST_BINS and VM_SUITE_TIMEOUT (and, from run.sh's VM_ENV_*, maybe
# VM_SUITE_TIMEOUT_OVERRIDE: every suite's timeout, over its `# vm-timeout`). Each suite runs with a timeout,
# its output in $RESULTS/<suite>.log; its verdict ends up in $RESULTS/<suite>.verdict (first
# word PASS, FAIL or SKIP). At the end: $RESULTS/dmesg.txt and $RESULTS/guest.done.
#
# What vng gives (checked on Debian 6.1 and 6.12): / is the host's root over 9p, read-only;
# /tmp, /etc, /var, /usr are writable overlays backed by the guest's /run tmpfs; /dev is
# devtmpfs; /sys/kernel/debug is mounted; configfs is not (and /sys/kernel/config appears only
# once the configfs module is loaded); udevd runs; only the --rwdir dirs reach the host.
set -uo pipefail

envfile=${1:?usage: guest.sh ENVFILE SUITE_FILE...}
shift
# shellcheck source=/dev/null
. "$envfile"
: "${RESULTS:?ENVFILE must set RESULTS}"
export RESULTS BDR_KO=${BDR_KO:-} BDR_BIN=${BDR_BIN:-} BDR_CONFORMANCE_BIN=${BDR_CONFORMANCE_BIN:-}
export BDR_TEST_BINS=${BDR_TEST_BINS:-}
export T_SCRATCH=${T_SCRATCH:-/run/bdr-lab}
suite_timeout=${VM_SUITE_TIMEOUT:-300}

say() { printf 'guest: %s\n' "$*" | tee -a "$RESULTS/guest.log"; }

: >"$RESULTS/guest.log"
say "kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"

# --- mounts ---------------------------------------------------------------------------------
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug || say "no debugfs"
modprobe configfs 2>/dev/null || true
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config || say "no configfs"
[ "$(stat -f -c %T /dev)" = tmpfs ] || say "warning: /dev is not devtmpfs"
mkdir -p "$T_SCRATCH"
if ! mountpoint -q "$T_SCRATCH" && ! mount -t tmpfs -o size=1200M,mode=0755 tmpfs "$T_SCRATCH"; then
	say "warning: cannot mount a tmpfs on $T_SCRATCH"
fi

# --- modules (Debian's own; dm-bdr is insmod'ed by the suites through load_bdr) --------------
for m in dm-mod dm-snapshot loop; do
	modprobe "$m" || say "warning: modprobe $m failed"
done
modprobe null_blk nr_devices=0 || say "warning: modprobe null_blk failed"
# brd is loaded on demand by mk_brd (its size is a module parameter).

{
	echo "uname: $(uname -a)"
	echo "--- mounts"; cat /proc/mounts
	echo "--- modules"; lsmod
	echo "--- env"; env | sort
} >"$RESULTS/guest-env.txt" 2>&1

# --- suites ---------------------------------------------------------------------------------
# wait_suite PID DEADLINE: wait for PID to end, until the wall clock reaches DEADLINE (s).
wait_suite() {
	while kill -0 "$1" 2>/dev/null; do
		[ "$(date +%s)" -lt "$2" ] || return 1
		sleep 1
	done
}

# rescue_hung NAME: a suite is stuck past its timeout. Write what the guest knows to
# $RESULTS/NAME.hung.txt (processes in D state and where they sleep, device-mapper states, the
# kernel's blocked-task dump), then resume every suspended dm device, the usual reason a
# process cannot die here. Prints a one-line summary.
rescue_hung() {
	local out=$RESULTS/$1.hung.txt d stuck susp=''
	stuck=$(ps -eo stat=,pid=,wchan:32=,args= | awk '$1 ~ /^D/' | cut -c1-160)
	{
		echo "--- processes in D state"; printf '%s\n' "$stuck"
		echo "--- dmsetup info"; timeout 10 dmsetup info -c 2>&1
		echo "--- dmsetup table"; timeout 10 dmsetup table 2>&1
	} >"$out" 2>&1
	echo 1 >/proc/sys/kernel/sysrq 2>/dev/null
	echo w >/proc/sysrq-trigger 2>/dev/null
	sleep 1
	{ echo "--- kernel log (blocked tasks at the end)"; dmesg | tail -n 100; } >>"$out" 2>&1
	for d in $(timeout 10 dmsetup info -c --noheadings --separator ' ' -o name,suspended 2>/dev/null | awk '$2 == "Suspended" {print $1}'); do
		timeout 10 dmsetup resume "$d" 2>/dev/null && susp="$susp $d"
	done
	echo "$(printf '%s\n' "$stuck" | grep -c .) process(es) in D state; resumed:${susp:- none}"
}

cd "$T_SCRATCH" || cd /tmp || exit 1
for suite_file in "$@"; do
	name=$(basename "$suite_file" .sh)
	verdict=$RESULTS/$name.verdict
	rm -f "$verdict" "$RESULTS/$name.cases"
	tmo=$(sed -n 's/^# *vm-timeout: *\([0-9][0-9]*\).*/\1/p' "$suite_file" | head -n1)
	tmo=${tmo:-$suite_timeout}
	# Every suite starts with an empty scratch dir: state dirs left by an earlier suite
	# (pstate, rstate...) must not pass for this suite's (they once did: a replica state of
	# the precopy suite made the replication suite's fresh replica claim its cut 5).
	find "$T_SCRATCH" -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null
	tmo=${VM_SUITE_TIMEOUT_OVERRIDE:-$tmo} # e.g. a long tier of a suite (VM_ENV_... in run.sh)
	say "suite $name (timeout ${tmo}s)"
	start=$(date +%s)
	T_SUITE=$name timeout --kill-after=10 "$tmo" bash "$suite_file" >"$RESULTS/$name.log" 2>&1 </dev/null &
	spid=$!
	hung=''
	if ! wait_suite "$spid" $((start + tmo + 60)); then
		# `timeout` could not reap the suite: a process is stuck in the kernel (D state),
		# where no signal reaches it. Record who and where, then try to let it go.
		hung=$(rescue_hung "$name")
		wait_suite "$spid" $(($(date +%s) + 30)) || say "suite $name: still stuck; going on without it"
	fi
	rc=125
	kill -0 "$spid" 2>/dev/null || { wait "$spid" 2>/dev/null; rc=$?; } # a stuck one: no wait
	secs=$(($(date +%s) - start))
	first=$(head -n1 "$verdict" 2>/dev/null | awk '{print $1}')
	if [ -n "$hung" ]; then
		{
			echo "FAIL hung: the suite outlived its ${tmo}s timeout by 60 s ($hung; see $name.hung.txt)"
			tail -n +2 "$verdict" 2>/dev/null
		} >"$verdict.new"
		mv "$verdict.new" "$verdict"
	elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
		# The suite's EXIT trap may have run on SIGTERM and closed the case it was in.
		in_case=$(cat "$RESULTS/$name.current" 2>/dev/null ||
			sed -n 's/^FAIL \(.*\): suite exited with status.*/\1/p' "$RESULTS/$name.cases" 2>/dev/null | tail -n1)
		# What it left stuck (a process in D state on a suspended device) would hang a
		# later suite: record it and let it go.
		left=''
		if ps -eo stat= | grep -q '^D' ||
			timeout 10 dmsetup info -c --noheadings -o suspended 2>/dev/null | grep -q Suspended; then
			left="; left behind: $(rescue_hung "$name") (see $name.hung.txt)"
		fi
		{
			echo "FAIL timeout after ${tmo}s (in case: ${in_case:-?})$left"
			tail -n +2 "$verdict" 2>/dev/null
		} >"$verdict.new"
		mv "$verdict.new" "$verdict"
	elif [ "$rc" != 0 ] && [ "$first" != FAIL ]; then
		echo "FAIL exit status $rc${first:+ (suite said: $(head -n1 "$verdict"))}" >"$verdict"
	elif [ -z "$first" ]; then
		if [ "$rc" = 0 ]; then echo "PASS exit status 0 (no case bookkeeping)" >"$verdict"; else
			echo "FAIL exit status $rc" >"$verdict"; fi
	fi
	rm -f "$RESULTS/$name.current"
	echo "time ${secs}s" >>"$verdict"
	say "suite $name: $(head -n1 "$verdict") (${secs}s)"
done

dmesg >"$RESULTS/dmesg.txt" 2>&1
sync
date +%s >"$RESULTS/guest.done"
say "done"
