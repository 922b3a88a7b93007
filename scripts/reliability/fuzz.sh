#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser (the targets in fuzz/fuzz_targets/; issue #16).
#
#   scripts/reliability/fuzz.sh [SECONDS] [TARGET...]
#
# Builds every target (cargo-fuzz, nightly toolchain) and runs each for SECONDS (default 600)
# with the limits below, from the committed seeds in fuzz/corpus/<target> plus what earlier runs
# found (fuzz/target/corpus/<target>, git-ignored). Prints per target: seconds, execs, execs/s,
# corpus size, result. Exits 1 when any target crashed, timed out or ran out of memory; the
# input that did it is in fuzz/artifacts/<target>/ (replay: cargo +nightly fuzz run TARGET FILE).
# SECONDS may also be given per target: FUZZ_SECONDS_<target>=N.
# CI smoke: `scripts/reliability/fuzz.sh 20` (FUZZ_SANITIZER=none builds faster: see
# reliability/fuzz.md; the 1 GiB allocation limit is then enforced through RSS only).
set -uo pipefail

secs="${1:-600}"
shift || true
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root/fuzz" || exit 2
sanitizer="${FUZZ_SANITIZER:-address}"
# -O with debug assertions: release speed, and integer overflow still panics.
build_flags=(-O --debug-assertions --sanitizer "$sanitizer")
limits=(-rss_limit_mb=1024 -malloc_limit_mb=1024 -timeout=1)

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Build once, then run the binaries: `cargo fuzz run` would rebuild before every target
# whenever a source changed meanwhile. FUZZ_BUILD=0 runs what the last build left.
if [ "${FUZZ_BUILD:-1}" != 0 ]; then
    start=$(date +%s)
    cargo +nightly fuzz build "${build_flags[@]}" || exit 2
    echo "build: $(( $(date +%s) - start )) s (sanitizer: $sanitizer)"
fi
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"

logs="target/fuzz-logs"
mkdir -p "$logs"
failed=0
summary=()
for t in "${targets[@]}"; do
    work="target/corpus/$t"
    mkdir -p "$work" "corpus/$t" "artifacts/$t"
    log="$logs/$t.log"
    var="FUZZ_SECONDS_$t"
    t_secs="${!var:-$secs}"
    echo "== $t: ${t_secs} s"
    t0=$(date +%s)
    "$bin/$t" -max_total_time="$t_secs" "${limits[@]}" -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        "$work" "corpus/$t" >"$log" 2>&1
    rc=$?
    ran=$(( $(date +%s) - t0 ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corp=$(grep -a -o 'corp: [0-9]*/[0-9A-Za-z]*' "$log" | tail -1 | cut -d' ' -f2)
    if [ "$rc" -eq 0 ]; then
        result="ok"
    else
        failed=1
        kind=$(grep -a -m1 -oE 'ERROR: libFuzzer: [a-z-]+|panicked at [^ ]*|out-of-memory \([^)]*\)' "$log" || true)
        result="FAILED (rc $rc${kind:+: $kind}); see fuzz/$log and fuzz/artifacts/$t/"
    fi
    line="$(printf '%-14s %6s s  execs %-10s %6s/s  corpus %-10s %s' "$t" "$ran" "${execs:-?}" "${rate:-?}" "${corp:-?}" "$result")"
    echo "$line"
    summary+=("$line")
done

echo
echo "target           seconds   execs           rate   corpus (units/bytes)  result"
printf '%s\n' "${summary[@]}"
exit "$failed"
