#!/usr/bin/env bash
# The fault matrix's full tier, one command: tests/vm/suites/faults.sh with FAULTS_TIER=full
# on both Debian kernels (6.1 and 6.12) through tests/vm/run.sh, then both tables.
#
#   tests/vm/faults-full.sh [FAULTS_PER_KERNEL]     (default 100; env FAULTS_SEED fixes choices)
#
# Results: tests/vm/results/<kver>/faults.tsv (one line per fault), faults-table.md,
# faults-crashpoints.tsv (the dm-log-writes crash points), faults.log. Exits 1 on any failure.
# Takes roughly 20-30 minutes per kernel in software emulation.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
n=${1:-${FAULTS_COUNT:-100}}
export VM_ENV_FAULTS_TIER=full VM_ENV_FAULTS_COUNT=$n
[ -z "${FAULTS_SEED:-}" ] || export VM_ENV_FAULTS_SEED=$FAULTS_SEED
# About 12 s per fault, 60 s per crash point batch, generous margins on top.
# (the suite's own `# vm-timeout` is the quick tier's: override it in the guest)
tmo=$((n * 25 + 900))
export VM_ENV_VM_SUITE_TIMEOUT_OVERRIDE=$tmo
export VM_BOOT_TIMEOUT=${VM_BOOT_TIMEOUT:-$((tmo + 300))}
"$here/run.sh" --kernel all faults
rc=$?
total=0
for d in "$here"/results/*/; do
	[ -f "$d/faults-table.md" ] || continue
	echo
	echo "### $(basename "$d")"
	echo
	cat "$d/faults-table.md"
	total=$((total + $(awk 'NR > 1' "$d/faults.tsv" | wc -l)))
done
echo
echo "faults injected across kernels: $total"
exit "$rc"
