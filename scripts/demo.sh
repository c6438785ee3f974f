#!/usr/bin/env bash
# bdr's main job, end to end, in the VM lab (QEMU software emulation; nothing touches this
# machine's disks): a primary and a replica in two network namespaces, each with a key pair
# and a config file, the WireGuard tunnel brought up by bdr, ext4 on the primary under a file
# workload, `bdr primary run demo` (a cut every second), status shown live until the replica
# equals the primary byte for byte, and a fsck of the replica.
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

	json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

	step "two machines: network namespaces bdrp (primary) and bdrr (replica) over a veth"
	run ip netns add bdrp
	t_defer ip netns del bdrp
	run ip netns add bdrr
	t_defer ip netns del bdrr
	run ip link add vp netns bdrp type veth peer name vr netns bdrr
	run ip -n bdrp addr add 10.77.0.1/24 dev vp
	run ip -n bdrr addr add 10.77.0.2/24 dev vr
	run ip -n bdrp link set vp up
	run ip -n bdrr link set vr up
	run ip -n bdrp link set lo up
	run ip -n bdrr link set lo up

	step "keys and config files: /etc/bdr/demo.toml on each machine (here \$BDR_CONFIG_DIR)"
	P=$T_SCRATCH/etc-primary R=$T_SCRATCH/etc-replica
	run mkdir -m 700 -p "$P" "$R"
	pubp=$(BDR_CONFIG_DIR=$P "$bdr" keygen --out "$P/demo.key") || { t_fail "keygen"; exit 1; }
	pubr=$(BDR_CONFIG_DIR=$R "$bdr" keygen --out "$R/demo.key") || { t_fail "keygen"; exit 1; }
	rdev=$(mk_nullb 256 memory_backed=1 blocksize=4096) || { t_fail "mk_nullb"; exit 1; }
	lower=$(mk_nullb 256 memory_backed=1 blocksize=4096) || { t_fail "mk_nullb"; exit 1; }
	run mkdir -p "$T_SCRATCH/cow"
	cat >"$P/demo.toml" <<EOF
role = "primary"
device = "$lower"
interval = "1s"
cow = "$T_SCRATCH/cow"
cow_size = "128MiB"
state_dir = "$T_SCRATCH/primary"

[tunnel]
private_key = "$P/demo.key"
address = "10.99.0.1/30"
peer_public_key = "$pubr"
peer_endpoint = "10.77.0.2:51820"
peer_address = "10.99.0.2"
EOF
	cat >"$R/demo.toml" <<EOF
role = "replica"
device = "$rdev"
state_dir = "$T_SCRATCH/replica"

[tunnel]
private_key = "$R/demo.key"
address = "10.99.0.2/30"
peer_public_key = "$pubp"
peer_address = "10.99.0.1"
EOF
	sed 's/^/    /' "$P/demo.toml"
	export BDR_CONFIG_DIR=$P
	run "$bdr" config check demo
	run env BDR_CONFIG_DIR="$R" "$bdr" config check demo

	step "the replica: bdr replica serve demo (tunnel up, listening on 10.99.0.2:7700 only)"
	BDR_CONFIG_DIR=$R ip netns exec bdrr "$bdr" replica serve demo >"$RESULTS/replica.log" 2>&1 &
	rpid=$!
	t_defer sh -c "kill $rpid 2>/dev/null; true"
	sleep 2
	kill -0 "$rpid" || { cat "$RESULTS/replica.log"; t_fail "replica did not start"; exit 1; }
	run env BDR_CONFIG_DIR="$R" ip netns exec bdrr "$bdr" tunnel status demo

	step "the primary: bdr attach demo, ext4 on /dev/mapper/demo"
	t_defer _dm_rm demo # in case a later step fails
	run "$bdr" attach demo --kmod "$BDR_KO"
	run dmsetup table demo
	run mkfs.ext4 -q -F /dev/mapper/demo
	run mk_mount /dev/mapper/demo "$T_SCRATCH/mnt"

	step "replicate: bdr primary run demo (tunnel up, a cut every second)"
	# nsenter --net, not `ip netns exec`: the latter also gives the daemon a private copy of
	# the mount table, which would keep the filesystem alive after the umount below.
	nsenter --net=/run/netns/bdrp "$bdr" primary run demo >"$RESULTS/primary.log" 2>&1 &
	ppid=$!
	t_defer sh -c "kill $ppid 2>/dev/null; true"

	step "a filesystem workload on the primary, status every 2 s"
	( for i in $(seq 40); do
		mkdir -p "mnt/d$((i % 5))"
		cp -r /usr/share/doc/fio "mnt/d$((i % 5))/fio-$i" 2>/dev/null
		dd if=/dev/urandom of="mnt/d$((i % 5))/r$i.bin" bs=64k count=$((RANDOM % 16 + 1)) status=none
		rm -rf "mnt/d$(((i + 2) % 5))/fio-$((i - 10))"
		sleep 0.2
	done; sync ) &
	wpid=$!
	while kill -0 $wpid 2>/dev/null; do
		sleep 2
		"$bdr" status demo | sed 's/^/    /'
		echo
	done
	run umount mnt

	step "until the replica equals the primary"
	ok=
	deadline=$(($(date +%s) + 120))
	while [ "$(date +%s)" -lt "$deadline" ]; do
		kill -0 "$ppid" 2>/dev/null || { tail -n 20 "$RESULTS/primary.log"; t_fail "the primary daemon died"; exit 1; }
		st=$("$bdr" status demo --json)
		pending=$(echo "$st" | json 'd["replication"]["pending_regions"]' 2>/dev/null)
		cut=$(echo "$st" | json 'd["replication"]["last_committed_cut"]' 2>/dev/null)
		echo "    cut $cut committed, $pending regions pending"
		if [ "$pending" = 0 ] && cmp -s /dev/mapper/demo "$rdev"; then ok=1; break; fi
		sleep 1
	done
	[ -n "$ok" ] || { tail -n 20 "$RESULTS/primary.log"; t_fail "the replica never caught up"; exit 1; }
	run "$bdr" status demo
	echo "replica == primary, byte for byte ($(blockdev --getsize64 "$rdev") bytes)"

	step "the replica mounts: fsck a copy"
	run kill -TERM "$ppid"
	wait "$ppid"
	run dd if="$rdev" of="$T_SCRATCH/replica.img" bs=1M status=none
	run e2fsck -fn "$T_SCRATCH/replica.img"
	run rm -f "$T_SCRATCH/replica.img"

	step "detach (the bitmap is saved for the next attach)"
	run "$bdr" detach demo
	run test ! -e /dev/mapper/demo
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
