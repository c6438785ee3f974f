#!/usr/bin/env bash
# Runs the cargo-fuzz targets of bdr-sync (fuzz/) for SECONDS each (default 30), on the
# stable toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly-only flags).
#
#   scripts/fuzz.sh [SECONDS] [LIBFUZZER_ARGS...]
#   FUZZ_TARGETS="replica_session" scripts/fuzz.sh 3600 -jobs=4 -workers=4
#
# Installs cargo-fuzz if missing (cargo install --locked). Each target starts from its
# working corpus fuzz/corpus/<target>/ (git-ignored, grows across runs) after the committed
# seeds fuzz/seeds/<target>/ and regression inputs fuzz/regressions/<target>/ are copied in. Exits non-zero if any target crashed, and
# prints where its crash artifacts are (fuzz/artifacts/<target>/). See docs/fuzzing.md.
#
# Environment: FUZZ_TARGETS (default: all targets), FUZZ_SANITIZER (address, the default,
# or none: about twice as fast, catches panics and the targets' own checks only).
set -uo pipefail
cd "$(dirname "$0")/../fuzz" || exit 1

secs=30
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
fi
targets=${FUZZ_TARGETS:-"frame_decode replica_session"}
sanitizer=${FUZZ_SANITIZER:-address}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked || exit 1
fi
export RUSTC_BOOTSTRAP=1

echo "== building the fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build -s "$sanitizer" || exit 1

failed=()
summary=()
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    cp "seeds/$t"/* "corpus/$t/"
    # Past crashes kept as regression inputs are replayed first too.
    if [ -d "regressions/$t" ]; then cp "regressions/$t"/* "corpus/$t/" 2>/dev/null; fi
    stamp=$(mktemp)
    log="artifacts/$t.log"
    echo "== fuzzing $t for ${secs}s (log: fuzz/$log)"
    cargo fuzz run -s "$sanitizer" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 "$@" 2>&1 | tee "$log" |
        grep --line-buffered -E '^#[0-9]+[[:space:]]+(INITED|pulse|DONE)|^Done|panicked|ERROR|SUMMARY|Test unit written'
    rc=${PIPESTATUS[0]}
    new=$(find "artifacts/$t" -type f -newer "$stamp" | sort)
    rm -f "$stamp"
    execs=$(grep -oE 'stat::number_of_executed_units:[[:space:]]+[0-9]+' "$log" | awk '{s += $2} END {print s + 0}')
    rate=$(grep -oE 'stat::average_exec_per_sec:[[:space:]]+[0-9]+' "$log" | awk '{s += $2} END {print s + 0}')
    cov=$(grep -oE '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)[[:space:]]+cov: [0-9]+ ft: [0-9]+' "$log" | tail -n1 | sed -E 's/.*(cov: .*)/\1/')
    if [ "$rc" != 0 ] || [ -n "$new" ]; then
        failed+=("$t")
        summary+=("$t: FAILED (exit $rc) after $execs runs; crash artifacts:")
        for f in $new; do
            summary+=("    fuzz/$f")
            summary+=("    reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t $f)")
        done
        [ -z "$new" ] && summary+=("    (none written; see fuzz/$log)")
    else
        summary+=("$t: ok, $execs runs in ${secs}s ($rate exec/s), ${cov:-cov: ?}")
    fi
done

echo
echo "fuzz.sh summary:"
printf '  %s\n' "${summary[@]}"
[ ${#failed[@]} -eq 0 ]
