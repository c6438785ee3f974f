#!/usr/bin/env bash
# The VM lab's host entry point: build dm-bdr for each Debian kernel and the Rust side, boot
# each kernel under QEMU (software emulation, virtme-ng) and run the suites in the guest.
#
#   tests/vm/run.sh [--kernel 6.1|6.12|all|<exact version>] [SUITE ...]
#
# SUITE is a name under tests/vm/suites/ (smoke or smoke.sh) or a path; default: all of
# tests/vm/suites/*.sh. Results: tests/vm/results/<kver>/ (a verdict file, a log per suite,
# dmesg.txt, console.log, guest.log). A kernel fails on a missing verdict (guest crashed or
# timed out), on any FAIL, and on kernel warnings in dmesg; a failed build fails too. Prints
# a table and `vm: N passed, N failed`; exits 1 on any failure.
#
# Environment: VM_BOOT_TIMEOUT (hard limit of one guest run, s, default 600),
# VM_SUITE_TIMEOUT (default per suite, s, default 300), VM_START_TIMEOUT (a guest that has
# not started its command by then is stopped and booted once more, s, default 300),
# VM_MEMORY, VM_CPUS, VM_QEMU_CPU (the guest's CPU model, default Nehalem; see below),
# VM_DEADLINE (wall clock, s since the epoch, by which every kernel's run
# must be over: each kernel then gets at most an equal share of the time left, so that a slow
# or stuck first kernel cannot leave the next one no time at all; CI sets it).
# VM_ENV_<NAME>=VALUE is passed to the guest's suites as <NAME>=VALUE (e.g. VM_ENV_FAULTS_TIER).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/vm/host.sh
. "$here/host.sh" || exit 1

usage() { sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"; }

ksel=all
suites=()
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) ksel=${2:?--kernel needs a value}; shift 2 ;;
	--kernel=*) ksel=${1#--kernel=}; shift ;;
	-h | --help) usage; exit 0 ;;
	-*) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
	*)
		if [ -f "$1" ]; then suites+=("$(cd "$(dirname "$1")" && pwd)/$(basename "$1")")
		elif [ -f "$here/suites/${1%.sh}.sh" ]; then suites+=("$here/suites/${1%.sh}.sh")
		else echo "run.sh: no suite $1 (tests/vm/suites/)" >&2; exit 2; fi
		shift ;;
	esac
done
if [ ${#suites[@]} -eq 0 ]; then
	for f in "$here"/suites/*.sh; do [ -f "$f" ] && suites+=("$f"); done
fi
[ ${#suites[@]} -gt 0 ] || { echo "run.sh: no suites" >&2; exit 2; }

klist=$(vm_kernels "$ksel") || exit 1 # all: both must be there
mapfile -t kernels <<<"$klist"
boot_timeout=${VM_BOOT_TIMEOUT:-600}
# The guest's CPU model. QEMU's default under emulation offers AVX2, which TCG emulates
# slowly: blake3 ran at 27-36 MB/s in the guest and the guest kernel's own copies cost 7x the
# system time; with Nehalem's SSE4.2 blake3 runs ~2x, memcpy ~3x faster (bench/pipeline in
# the guest, 2026-11-30). The suites test behaviour, not SIMD paths (the host tests run
# those); bench/run.sh keeps QEMU's default. Empty: QEMU's default.
export VM_QEMU_CPU=${VM_QEMU_CPU-Nehalem}

# One run at a time per checkout: runs share tests/vm/results/<kver>/ (and the host's 2 cores).
mkdir -p "$here/results" || exit 1
exec {lockfd}>"$here/results/.lock"
if ! flock -n "$lockfd"; then
	vm_log "another tests/vm/run.sh is running in this checkout: waiting for it"
	flock "$lockfd"
fi

rows=() # "kernel|item|PASS/FAIL/SKIP|detail"
passed=0 failed=0
row() {
	rows+=("$1|$2|$3|$4")
	case $3 in PASS) passed=$((passed + 1)) ;; FAIL) failed=$((failed + 1)) ;; esac
}

# --- build ----------------------------------------------------------------------------------
t0=$(date +%s)
if vm_build_rust --tests; then
	row all build:rust PASS "$(($(date +%s) - t0))s"
else
	row all build:rust FAIL "cargo build failed (see above)"
fi

# report_unfinished RESULTS_DIR: the guest did not finish; CI keeps only what is printed, so
# print where it was: its own log, the tail of the suite it was in, and the console's tail
# (kernel messages: hung tasks, panics).
report_unfinished() {
	local res=$1 cur
	vm_log "the guest did not finish; its log ($res/guest.log):"
	sed 's/^/    /' "$res/guest.log" >&2 2>/dev/null
	cur=$(sed -n 's/^guest: suite \([^ ]*\) (timeout.*/\1/p' "$res/guest.log" 2>/dev/null | tail -n1)
	if [ -n "$cur" ]; then
		vm_log "the suite it was in, $cur: open case '$(cat "$res/$cur.current" 2>/dev/null)'; last lines of $cur.log:"
		tail -n 40 "$res/$cur.log" 2>/dev/null | sed 's/^/    /' >&2
	fi
	vm_log "last lines of the console ($res/console.log):"
	tail -n 60 "$res/console.log" 2>/dev/null | sed 's/^/    /' >&2
}

dmesg_bad='WARNING:|BUG:|Oops|scheduling while atomic|general protection|KASAN|kernel BUG|Call Trace'

kdone=0
for kver in "${kernels[@]}"; do
	VM_TAG=$kver
	res=$here/results/$kver
	rm -rf "$res" && mkdir -p "$res" || exit 1

	if vm_build_kmod "$kver" "$res"; then
		row "$kver" build:kmod PASS "$(basename "$VM_KO")"
	else
		row "$kver" build:kmod FAIL "see target/kmod/$kver/build.log"
	fi

	# Private copies: another build in this checkout must not swap them under the guest.
	bin='' conf=''
	mkdir -p "$res/bin"
	[ -z "${VM_BDR_BIN:-}" ] || { cp "$VM_BDR_BIN" "$res/bin/" && bin=$res/bin/$(basename "$VM_BDR_BIN"); }
	[ -z "${VM_CONFORMANCE_BIN:-}" ] || { cp "$VM_CONFORMANCE_BIN" "$res/bin/conformance_kernel" && conf=$res/bin/conformance_kernel; }
	envs=()
	for v in $(compgen -v VM_ENV_); do envs+=("${v#VM_ENV_}=${!v}"); done
	vm_write_env "$res/guest.env" RESULTS="$res" BDR_KO="${VM_KO:-}" BDR_BIN="$bin" \
		BDR_CONFORMANCE_BIN="$conf" BDR_TEST_BINS="$VM_ROOT/target/vm/test-bins.txt" \
		VM_SUITE_TIMEOUT="${VM_SUITE_TIMEOUT:-300}" LAB_KERNEL_INDEX="$kdone" LAB_KERNELS="${#kernels[@]}" \
		"${envs[@]}"
	tmo=$boot_timeout
	if [ -n "${VM_DEADLINE:-}" ]; then
		share=$(((VM_DEADLINE - $(date +%s)) / (${#kernels[@]} - kdone)))
		[ "$share" -ge "$tmo" ] || tmo=$((share > 60 ? share : 60))
	fi
	kdone=$((kdone + 1))
	vm_log "booting, ${#suites[@]} suite(s), hard timeout ${tmo}s"
	t0=$(date +%s)
	VM_BOOT_STARTED=$res/guest.log vm_boot "$kver" "$res" "$tmo" "$res/console.log" \
		bash "$here/guest.sh" "$res/guest.env" "${suites[@]}"
	brc=$?
	secs=$(($(date +%s) - t0))
	vm_log "guest run took ${secs}s (vng status $brc)"
	echo "$secs" >"$res/wall-seconds"

	for f in "${suites[@]}"; do
		name=$(basename "$f" .sh)
		v=$res/$name.verdict
		if [ ! -s "$v" ]; then
			row "$kver" "$name" FAIL "no verdict (guest crashed or timed out; see console.log)"
			continue
		fi
		word=$(head -n1 "$v" | awk '{print $1}')
		detail=$(head -n1 "$v" | cut -d' ' -f2-)
		t=$(awk '/^time / {print $2}' "$v")
		case $word in
		PASS | SKIP) row "$kver" "$name" "$word" "$detail${t:+ ($t)}" ;;
		*) row "$kver" "$name" FAIL "$detail${t:+ ($t)}"
			grep '^FAIL ' "$v" | sed "s|^|    $kver $name: |" >&2
			# CI keeps only what is printed: the end of the suite's log, and what a hung
			# suite left (tests/vm/guest.sh).
			tail -n 30 "$res/$name.log" 2>/dev/null | sed "s|^|    $name.log: |" >&2
			head -n 120 "$res/$name.hung.txt" 2>/dev/null | sed "s|^|    $name.hung.txt: |" >&2 ;;
		esac
	done

	if [ ! -f "$res/guest.done" ] || [ ! -s "$res/dmesg.txt" ]; then
		row "$kver" dmesg FAIL "no dmesg.txt: the guest did not finish"
		report_unfinished "$res"
	elif bad=$(grep -E "$dmesg_bad" "$res/dmesg.txt"); then
		row "$kver" dmesg FAIL "$(printf '%s\n' "$bad" | wc -l) suspicious line(s)"
		vm_log "kernel log of $kver has warnings (full log: $res/dmesg.txt):"
		printf '%s\n' "$bad" | head -n 40 | sed 's/^/    /' >&2
	else
		row "$kver" dmesg PASS "clean (guest run ${secs}s)"
	fi
done
VM_TAG=vm

# --- report ---------------------------------------------------------------------------------
echo
printf '%-22s %-12s %-5s %s\n' KERNEL ITEM VERDICT DETAIL
for r in "${rows[@]}"; do
	IFS='|' read -r k i w d <<<"$r"
	printf '%-22s %-12s %-5s %s\n' "$k" "$i" "$w" "$d"
done
echo
echo "vm: $passed passed, $failed failed"
[ "$failed" = 0 ]
