#!/usr/bin/env bash
# bdr in five minutes: boots a Debian kernel in the VM lab (QEMU software emulation, nothing
# touches this machine's disks), loads dm-bdr, attaches a bdr device over a RAM-backed
# null_blk disk with the CLI, makes ext4 on it, writes files, shows `bdr status`, detaches.
#
#   scripts/demo.sh [--kernel 6.12|6.1|<version>]      (needs scripts/install-deps.sh once)
#
# Exits non-zero if any step fails. The guest part is this same script run as
# `demo.sh --guest ENVFILE` inside the VM.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ "${1:-}" = --guest ]; then
	# ---------------------------------------------------------------- inside the VM, as root
	# shellcheck source=/dev/null
	. "${2:?--guest ENVFILE}"
	export T_SUITE=demo T_SCRATCH=/run/bdr-demo
	mkdir -p "$T_SCRATCH" && mount -t tmpfs tmpfs "$T_SCRATCH" && cd "$T_SCRATCH" || exit 1
	modprobe configfs 2>/dev/null
	mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
	modprobe dm-mod && modprobe null_blk nr_devices=0 || exit 1
	# shellcheck source=tests/vm/lib.sh
	. "$root/tests/vm/lib.sh"

	step() { t_case "$1"; printf '\n\033[1m### %s\033[0m\n' "$1"; }
	run() { printf '\033[36m# %s\033[0m\n' "$*"; "$@" || { t_fail "failed: $*"; exit 1; }; }

	bdr=${BDR_BIN:-}
	if [ -z "$bdr" ] || [ ! -x "$bdr" ]; then
		echo "demo: no bdr binary (did cargo build fail?)" >&2
		exit 1
	fi

	step "a 256 MiB RAM-backed disk to protect (null_blk)"
	lower=$(mk_nullb 256 memory_backed=1 blocksize=4096) || { t_fail "mk_nullb"; exit 1; }
	run lsblk "$lower"

	step "attach: /dev/mapper/demo tracks every write to $lower"
	t_defer _dm_rm demo # in case a later step fails
	run "$bdr" attach demo "$lower" --region-size 64KiB --kmod "$BDR_KO"
	run grep -w dm_bdr /proc/modules
	run dmsetup table demo
	run "$bdr" status demo

	step "make ext4 on it and write some files"
	run mkfs.ext4 -q -F /dev/mapper/demo
	run mk_mount /dev/mapper/demo "$T_SCRATCH/mnt"
	run cp -r /usr/share/doc/fio mnt/fio-docs
	run dd if=/dev/urandom of=mnt/random.bin bs=1M count=8 status=none
	run sync
	run df -h mnt

	step "what bdr saw"
	run "$bdr" status demo
	run "$bdr" status demo --json
	dirty=$("$bdr" status demo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_regions"])' 2>/dev/null || echo '?')
	echo "dirty regions: $dirty"
	case $dirty in '' | '?' | 0) t_fail "expected dirty regions after writing, got '$dirty'"; exit 1 ;; esac

	step "unmount and detach"
	run umount mnt
	run "$bdr" detach demo
	run test ! -e /dev/mapper/demo
	run "$bdr" status
	exit 0
fi

# -------------------------------------------------------------------- on the host
# shellcheck source=tests/vm/host.sh
. "$root/tests/vm/host.sh" || exit 1
ksel=6.12
case ${1:-} in
--kernel) ksel=${2:?--kernel needs a value} ;;
--kernel=*) ksel=${1#--kernel=} ;;
-h | --help) sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
'') ;;
*) echo "demo.sh: unknown argument $1" >&2; exit 2 ;;
esac

kver=$(vm_kernels "$ksel") || exit 1
VM_TAG=demo
res=$root/target/demo/$kver
rm -rf "$res" && mkdir -p "$res" || exit 1
vm_build_kmod "$kver" "$res" || exit 1
# shellcheck disable=SC2119 # no --tests: the demo needs only the bdr binary
vm_build_rust || exit 1
vm_write_env "$res/guest.env" RESULTS="$res" BDR_KO="$VM_KO" BDR_BIN="$VM_BDR_BIN"
vm_log "booting $kver (software emulation: ~15 s to a shell)"
VM_BOOT_STARTED=$res/demo.cases vm_boot "$kver" "$res" 300 - bash "$root/scripts/demo.sh" --guest "$res/guest.env"
echo
if [ "$(head -n1 "$res/demo.verdict" 2>/dev/null | awk '{print $1}')" = PASS ]; then
	echo "demo: ok ($kver)"
else
	echo "demo: FAILED ($kver): $(head -n1 "$res/demo.verdict" 2>/dev/null || echo 'the guest wrote no verdict')"
	exit 1
fi
