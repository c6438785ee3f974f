#!/usr/bin/env bash
# Catch-up with a real cut, in the VM lab: `bdr sync --once` against rsync on a 1 GiB volume
# with 1% of its 64 KiB regions rewritten at random (issue 6's catch-up case; the host bench
# `bench/host.sh` measures the same case with the file stand-in, whose cut copies the image).
#
#   bench/catchup.sh [--kernel 6.1|6.12|all] [--rounds N] [--mb SIZE_MB]
#
# For each kernel: builds dm-bdr and the release `bdr` (tests/vm/host.sh), boots the kernel
# under QEMU and runs bench/catchup-guest.sh (see its header: what is compared and how).
# Writes bench/results/<kver>-catchup.{json,md} (medians of the rounds; the markdown is
# printed). Raw files stay in target/bench/catchup-<kver>/. Software emulation: absolute
# times mean little; the ratio within one boot does. About 5 minutes per kernel.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export VM_MEMORY=${VM_MEMORY:-5G} # the 1 GiB volume, two 1 GiB copies on tmpfs, COW, page cache
# shellcheck source=tests/vm/host.sh
. "$root/tests/vm/host.sh" || exit 1

ksel=all rounds=3 mb=1024
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) ksel=${2:?}; shift 2 ;;
	--rounds) rounds=${2:?}; shift 2 ;;
	--mb) mb=${2:?}; shift 2 ;;
	-h | --help) sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
	*) echo "bench/catchup.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done

if [ -n "${BDR_BIN:-}" ]; then
	[ -x "$BDR_BIN" ] || { echo "bench: BDR_BIN=$BDR_BIN is not executable" >&2; exit 1; }
else
	vm_build_rust || exit 1
	BDR_BIN=$VM_BDR_BIN
fi
klist=$(vm_kernels "$ksel") || exit 1
mapfile -t kernels <<<"$klist"
mkdir -p "$root/bench/results"
fail=0
for kver in "${kernels[@]}"; do
	VM_TAG=catchup/$kver
	raw=$root/target/bench/catchup-$kver
	rm -rf "$raw" && mkdir -p "$raw" || exit 1
	vm_build_kmod "$kver" "$raw" || { fail=1; continue; }
	vm_write_env "$raw/guest.env" RESULTS="$raw" BDR_KO="$VM_KO" BDR_BIN="$BDR_BIN" \
		CATCHUP_ROUNDS="$rounds" CATCHUP_MB="$mb"
	load0=$(cut -d' ' -f1 /proc/loadavg)
	[ "${load0%%.*}" -lt 1 ] || vm_log "host load average is $load0: times will be noisy"
	vm_log "booting; $rounds rounds on a $mb MiB volume"
	t0=$(date +%s)
	VM_BOOT_STARTED=$raw/catchup.cases vm_boot "$kver" "$raw" $((600 + rounds * 300)) - \
		bash "$root/bench/catchup-guest.sh" "$raw/guest.env"
	vm_log "guest run took $(($(date +%s) - t0))s"
	echo "host_load $load0 before, $(cut -d' ' -f1-3 /proc/loadavg) after; $(nproc) host cpus" >>"$raw/setup.txt"
	if [ "$(head -n1 "$raw/catchup.verdict" 2>/dev/null | awk '{print $1}')" != PASS ]; then
		vm_log "catch-up bench failed: $(cat "$raw/catchup.verdict" 2>/dev/null || echo 'no verdict')"
		fail=1
		continue
	fi
	if grep -E 'WARNING:|BUG:|Oops|Call Trace' "$raw/dmesg.txt"; then
		vm_log "kernel warnings during the bench (above): numbers not kept"
		fail=1
		continue
	fi
	python3 - "$raw" "$kver" "$root/bench/results/$kver-catchup" <<'PYEOF' || fail=1
import json, os, statistics, sys
raw, kver, out = sys.argv[1:4]
rows = [l.rstrip("\n").split("\t") for l in open(f"{raw}/catchup.tsv")][1:]
setup = dict(l.rstrip("\n").split(" ", 1) for l in open(f"{raw}/setup.txt") if " " in l)
res = {}
for tool in ("bdr", "rsync"):
    rs = [r for r in rows if r[1] == tool]
    res[tool] = {
        "rounds": len(rs),
        "wall_ms_median": statistics.median(int(r[2]) for r in rs),
        "wire_bytes_median": statistics.median(int(r[3]) for r in rs),
        "identical": all(r[4] == "yes" for r in rs),
        "wall_ms": [int(r[2]) for r in rs],
    }
speedup = res["rsync"]["wall_ms_median"] / res["bdr"]["wall_ms_median"]
doc = {"kernel": kver, "setup": setup, "results": res, "speedup_wall": speedup,
       "wire_ratio": res["rsync"]["wire_bytes_median"] / max(1, res["bdr"]["wire_bytes_median"])}
json.dump(doc, open(out + ".json", "w"), indent=2)
md = [f"### Catch-up with a real cut, {kver} ({setup.get('volume_mb')} MiB volume, "
      f"{setup.get('changed_per_round')} of {setup.get('regions')} 64 KiB regions rewritten per round, "
      f"median of {res['bdr']['rounds']} rounds)", "",
      "| tool | wall s | on the wire MB | identical |", "|---|---:|---:|---:|"]
for tool, label in (("bdr", "bdr sync --once (suspend, dm-snapshot, ship, commit)"),
                    ("rsync", "rsync --copy-devices --inplace --no-whole-file")):
    r = res[tool]
    md.append(f"| {label} | {r['wall_ms_median'] / 1000:.2f} | {r['wire_bytes_median'] / 1e6:.2f} | "
              f"{'yes' if r['identical'] else 'NO'} |")
md += ["", f"bdr is {speedup:.1f}x faster than rsync (target: 10x); on the wire: bdr "
       f"{res['bdr']['wire_bytes_median'] / 1e6:.2f} MB, rsync {res['rsync']['wire_bytes_median'] / 1e6:.2f} MB "
       "(the rewritten data is random: nothing to compress).", ""]
link_tsv = f"{raw}/link.tsv"
link = [l.rstrip("\n").split("\t") for l in open(link_tsv)][1:] if os.path.exists(link_tsv) else []
lk = {r[0]: (int(r[1]), float(r[2]), int(r[3])) for r in link}
if "tcp" in lk and "bdr" in lk:
    tcp = lk["tcp"][0] / lk["tcp"][1] / 1000
    bdr = lk["bdr"][0] / lk["bdr"][1] / 1000
    doc["link"] = {"mbit": setup.get("link_mbit"), "tcp_MBps": tcp, "bdr_MBps": bdr,
                   "bdr_wire_bytes": lk["bdr"][2], "ratio": bdr / tcp}
    md += [f"Network path ({setup.get('link_mbit')} Mbit/s link, tc tbf; {setup.get('link_mb')} MiB of random "
           f"data): a plain TCP stream {tcp:.2f} MB/s, a bdr cut {bdr:.2f} MB/s of data from the cut to "
           f"the replica's commit = **{100 * bdr / tcp:.0f}%** of the link (target: 80%).", ""]
md += [f"Host load: {setup.get('host_load', '?')}.", ""]
json.dump(doc, open(out + ".json", "w"), indent=2)
open(out + ".md", "w").write("\n".join(md))
print("\n".join(md))
PYEOF
done
exit $fail
