#!/usr/bin/env bash
# Builds gomail's cargo-fuzz targets on stable rustc (`-s none`: the
# sanitizers need nightly) and runs each for a bounded time, starting from
# the committed corpus. Exits non-zero if any target crashes, panics,
# times out or runs out of memory; libFuzzer then names the input it saved
# under fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [seconds per target (default 30)] [target...]
# New inputs the fuzzer finds go to a scratch directory, not to
# fuzz/corpus/: add one there by hand when it should stay a regression
# test (cargo test replays fuzz/corpus/ through the same checks).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-30}
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
    # 0.13 builds with rustc 1.95 from its lock file.
    cargo install cargo-fuzz --locked --version '^0.13'
fi

cargo fuzz build -s none
if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
    case $t in
        command | session | data) dict=fuzz/dict/smtp.dict ;;
        *) dict=fuzz/dict/$t.dict ;;
    esac
    mkdir -p "$scratch/$t"
    echo "== fuzz $t for ${secs}s"
    # -timeout: an input that takes 10 s is a hang, reported as a crash.
    if cargo fuzz run -s none "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -dict="$dict" -print_final_stats=1 \
        >"$scratch/$t.log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE' "$scratch/$t.log" | tail -n 1 || tail -n 3 "$scratch/$t.log"
    else
        tail -n 40 "$scratch/$t.log"
        failed+=("$t")
    fi
done
if ((${#failed[@]})); then
    echo "scripts/fuzz.sh: ${failed[*]} failed; reproduce with: cargo fuzz run -s none <target> fuzz/artifacts/<target>/<input>" >&2
    exit 1
fi
