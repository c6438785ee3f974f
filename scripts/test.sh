#!/usr/bin/env bash
# The project's one test command: host tests (cargo test --workspace --release, the fuzz targets' seeds
# and 30 s of fuzzing per target), then the VM lab on all kernels with all suites
# (tests/vm/run.sh). Runs both; exits non-zero if either fails.
# Arguments are passed to tests/vm/run.sh (e.g. --kernel 6.12 smoke).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

t0=$(date +%s)
# --release: the VM lab runs the release build of the same test binaries and `bdr`, so they
# are built once (a debug build as well cost the CI ~3 of its 90 minutes).
echo "== host tests: cargo test --workspace --release"
if cargo test --workspace --release; then host=ok; else host=FAILED; fi
echo "== fuzzing: seeds replayed, then scripts/fuzz.sh 30 (each target 30 s)"
(cd fuzz && cargo test --quiet) || host=FAILED
scripts/fuzz.sh 30 || host=FAILED
t1=$(date +%s)

echo "== VM lab: tests/vm/run.sh $*"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
tests/vm/run.sh "$@" 2>&1 | tee "$log"
vm_rc=${PIPESTATUS[0]}
t2=$(date +%s)

echo
echo "test.sh: host tests $host ($((t1 - t0))s), VM lab $([ "$vm_rc" = 0 ] && echo ok || echo FAILED) ($((t2 - t1))s)"
# The VM lab's count is the closing line.
grep -E '^vm: [0-9]+ passed, [0-9]+ failed$' "$log" | tail -n1 || echo "vm: 0 passed, 1 failed"
[ "$host" = ok ] && [ "$vm_rc" = 0 ]
