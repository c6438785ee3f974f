# shellcheck shell=bash
# Host-side code of the VM lab, sourced by tests/vm/run.sh, scripts/demo.sh and bench/run.sh:
# finding the Debian kernels, building dm-bdr out of tree for each, building the Rust side,
# booting a kernel under QEMU software emulation with virtme-ng.
#
#   vm_kernels SEL          print the kernel versions for SEL: 6.1, 6.12, all, or an exact
#                           version that has /boot/vmlinuz-<ver>; newest build of each series
#   vm_build_kmod KVER [DIR]  build kmod/ for KVER in target/kmod/<KVER>/ (log: build.log
#                           there; one build at a time per kernel, under flock); copies the .ko
#                           to DIR if given (so that a concurrent build cannot replace it under a
#                           running guest) and sets VM_KO to it; fails on a build error or on
#                           any 'warning:'
#   vm_build_rust [--tests] cargo build --release --bins (and with --tests the workspace's test
#                           binaries, --no-run); sets VM_BDR_BIN, VM_CONFORMANCE_BIN and writes
#                           the test executables to target/vm/test-bins.txt (name<TAB>path)
#   vm_write_env FILE VAR=VALUE...   write a guest environment file (sourced by the guest)
#   vm_boot KVER RWDIR TIMEOUT CONSOLE CMD...
#                           boot /boot/vmlinuz-KVER with RWDIR writable and run CMD as root in
#                           the guest, stdin from /dev/null, killed after TIMEOUT seconds;
#                           CONSOLE is a file for the console output, or - to show it.
#                           Returns vng's status (124/137 on timeout); never trust it alone:
#                           read result files that the guest wrote under RWDIR.
#                           With VM_BOOT_STARTED=FILE (a file the guest command creates as soon
#                           as it starts), a run that failed before FILE appeared is retried
#                           once: QEMU's software emulation now and then aborts during boot
#                           (seen: "iotlb_to_section: Assertion ... failed" at ~4 s), which no
#                           code of ours can have caused. Failures after FILE are never retried.
#
# Knobs (environment): VM_MEMORY (2G), VM_CPUS (2), BDR_KMOD_SRC (kmod/ of the checkout).

# shellcheck disable=SC2034 # VM_KO, VM_BDR_BIN, ... are read by the scripts sourcing this
VM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VM_MEMORY=${VM_MEMORY:-2G}
VM_CPUS=${VM_CPUS:-2}

case $VM_ROOT in
*[[:space:]]*)
	echo "vm: the checkout's path must not contain white space: $VM_ROOT" >&2
	return 1
	;;
esac

vm_log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "${VM_TAG:-vm}" "$*" >&2; }

# Newest /boot/vmlinuz-<ver> matching a glob, as <ver>. 6.1.0-* and 6.12.* never overlap.
_vm_newest() {
	local f best=
	for f in $1; do
		[ -f "$f" ] || continue
		best=$(printf '%s\n%s\n' "$best" "${f#/boot/vmlinuz-}" | sed '/^$/d' | sort -V | tail -n1)
	done
	[ -n "$best" ] && printf '%s\n' "$best"
}

vm_kernels() {
	local sel=${1:-all} k
	case $sel in
	6.1) k=$(_vm_newest '/boot/vmlinuz-6.1.0-*') || { vm_log "no 6.1 kernel (/boot/vmlinuz-6.1.0-*); run scripts/install-deps.sh"; return 1; }
		echo "$k" ;;
	6.12) k=$(_vm_newest '/boot/vmlinuz-6.12.*') || { vm_log "no 6.12 kernel (/boot/vmlinuz-6.12.*); run scripts/install-deps.sh"; return 1; }
		echo "$k" ;;
	all) vm_kernels 6.1 && vm_kernels 6.12 ;;
	*)
		if [ -f "/boot/vmlinuz-$sel" ]; then echo "$sel"; else
			vm_log "unknown kernel '$sel' (6.1, 6.12, all, or a version with /boot/vmlinuz-<ver>)"
			return 1
		fi ;;
	esac
}

vm_build_kmod() {
	local kver=$1 dest=${2:-} lock rc
	VM_KO=
	mkdir -p "$VM_ROOT/target/kmod" || return 1
	exec {lock}>"$VM_ROOT/target/kmod/.lock-$kver"
	flock "$lock"
	_vm_build_kmod_locked "$kver"
	rc=$?
	if [ "$rc" = 0 ] && [ -n "$dest" ]; then
		cp "$VM_KO" "$dest/" && VM_KO=$dest/$(basename "$VM_KO") || rc=1
	fi
	exec {lock}>&-
	return "$rc"
}

_vm_build_kmod_locked() {
	local kver=$1 src=${BDR_KMOD_SRC:-$VM_ROOT/kmod} dir=$VM_ROOT/target/kmod/$1 f
	rm -rf "$dir" && mkdir -p "$dir" || return 1
	if [ ! -d "/lib/modules/$kver/build" ]; then
		vm_log "no headers for $kver (/lib/modules/$kver/build)"
		return 1
	fi
	for f in "$src"/*.c "$src"/*.h "$src"/Makefile; do
		[ -e "$f" ] && cp "$f" "$dir"/
	done
	if [ ! -f "$dir/Makefile" ] || ! ls "$dir"/*.c >/dev/null 2>&1; then
		vm_log "kmod: no Makefile or *.c in $src"
		return 1
	fi
	if ! make -C "/lib/modules/$kver/build" M="$dir" modules >"$dir/build.log" 2>&1; then
		vm_log "kmod build failed for $kver:"
		grep -E 'error|warning' "$dir/build.log" | head -n 40 >&2 || tail -n 40 "$dir/build.log" >&2
		return 1
	fi
	if grep -q 'warning:' "$dir/build.log"; then
		vm_log "kmod build for $kver has compiler warnings (treated as errors):"
		grep -A3 'warning:' "$dir/build.log" | head -n 60 >&2
		return 1
	fi
	f=$(find "$dir" -maxdepth 1 -name '*.ko' | head -n1)
	[ -n "$f" ] || { vm_log "kmod build for $kver produced no .ko"; return 1; }
	VM_KO=$f
	vm_log "kmod $kver: $(basename "$f") ok"
}

vm_build_rust() {
	local dir=$VM_ROOT/target/vm want_tests=0
	[ "${1:-}" = --tests ] && want_tests=1
	VM_BDR_BIN='' VM_CONFORMANCE_BIN=''
	mkdir -p "$dir" || return 1
	: >"$dir/test-bins.txt"
	if [ "$want_tests" = 1 ]; then
		# One build: the test build makes the `bdr` binary too (the integration tests run
		# it), with the features the tests unify; a separate `cargo build --bins` would
		# compile tokio and everything above it a second time (5 minutes in CI), and the
		# host tests of scripts/test.sh have already built exactly this.
		(cd "$VM_ROOT" && cargo test --workspace --release --no-run --message-format=json-render-diagnostics) >"$dir/build.json" || {
			vm_log "cargo test --release --no-run failed"
			return 1
		}
	else
		(cd "$VM_ROOT" && cargo build --release --bins --message-format=json-render-diagnostics) >"$dir/build.json" || {
			vm_log "cargo build --release --bins failed"
			return 1
		}
	fi
	VM_BDR_BIN=$(python3 - "$dir/build.json" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    t = m.get("target") or {}
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("name") == "bdr" \
            and "bin" in t.get("kind", []) and not m.get("profile", {}).get("test"):
        print(m["executable"])
PY
	) || return 1
	[ -n "$VM_BDR_BIN" ] || { vm_log "cargo built no 'bdr' binary"; return 1; }
	[ "$want_tests" = 1 ] || return 0
	python3 - "$dir/build.json" >"$dir/test-bins.txt" <<'PY' || return 1
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        print("%s\t%s" % (m["target"]["name"], m["executable"]))
PY
	VM_CONFORMANCE_BIN=$(awk -F'\t' '$1 == "conformance_kernel" {print $2; exit}' "$dir/test-bins.txt")
	vm_log "rust: bdr=$VM_BDR_BIN, $(wc -l <"$dir/test-bins.txt") test binaries, conformance_kernel=${VM_CONFORMANCE_BIN:-none}"
}

vm_write_env() {
	local file=$1 kv
	shift
	{
		echo "# written by tests/vm/host.sh on $(date -u +%FT%TZ)"
		for kv in "$@"; do
			printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
		done
	} >"$file"
}

vm_boot() {
	local rc started=${VM_BOOT_STARTED:-}
	[ -z "$started" ] || rm -f "$started"
	_vm_boot_once "$@"
	rc=$?
	if [ "$rc" != 0 ] && [ -n "$started" ] && [ ! -e "$started" ]; then
		vm_log "the VM failed (status $rc) before the guest command started: retrying once"
		[ "$4" = - ] || { echo "=== first attempt (failed before the guest started):"; cat "$4"; } >"$4.first" 2>&1
		_vm_boot_once "$@"
		rc=$?
	fi
	return "$rc"
}

_vm_boot_once() {
	local kver=$1 rwdir=$2 tmo=$3 console=$4 rc
	shift 4
	command -v vng >/dev/null || { vm_log "vng not found: run scripts/install-deps.sh"; return 127; }
	local cmd=(timeout --kill-after=15 "$tmo" vng -r "/boot/vmlinuz-$kver" --disable-kvm
		--memory "$VM_MEMORY" --cpus "$VM_CPUS" --rwdir "$rwdir")
	[ -z "${VM_QEMU_CPU:-}" ] || cmd+=(--qemu-opts="-cpu $VM_QEMU_CPU")
	cmd+=(-- "$@")
	# Through a pipe: QEMU reopens its stdout, which would write over a redirected file.
	if [ "$console" = - ]; then
		"${cmd[@]}" </dev/null 2>&1 | cat
		rc=${PIPESTATUS[0]}
	else
		"${cmd[@]}" </dev/null > >(cat >"$console") 2>&1 &
		local vpid=$! t0=$SECONDS started=${VM_BOOT_STARTED:-} limit=${VM_START_TIMEOUT:-300} killed=''
		# A guest that has not started its command after $limit s is stuck in its boot
		# (seen once in a while under emulation): stop it so that vm_boot tries again,
		# instead of waiting for the hard timeout.
		while kill -0 "$vpid" 2>/dev/null; do
			if [ -z "$killed" ] && [ -n "$started" ] && [ ! -e "$started" ] &&
				[ $((SECONDS - t0)) -ge "$limit" ]; then
				vm_log "$kver: the guest has not started after ${limit}s: stopping it"
				kill -TERM "$vpid" 2>/dev/null # timeout(1) passes it on to vng
				killed=1
			fi
			sleep 1
		done
		wait "$vpid"
		rc=$?
		[ -z "$killed" ] || rc=125
	fi
	case $rc in 124 | 137) vm_log "$kver: killed after the hard timeout of ${tmo}s" ;; esac
	return "$rc"
}
