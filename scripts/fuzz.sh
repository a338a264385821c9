#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer) and runs each
# for SECONDS (default 10) from its seed corpus, fuzz/corpus/<target>/.
# Fails on the first crash, panic, hang (10 s on one input) or
# out-of-memory, printing the input that caused it. See docs/testing.md.
#
# usage: scripts/fuzz.sh [SECONDS] [TARGET...]     (all targets by default)
#
# Runs on the stable toolchain: cargo-fuzz passes -Z flags to rustc, which
# RUSTC_BOOTSTRAP=1 allows. `-s none` builds without AddressSanitizer:
# Ferry's crates forbid `unsafe`, and the parsers fail by panicking, which
# libFuzzer catches without one. Installs cargo-fuzz 0.13.2 when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
[ "$#" -gt 0 ] && shift

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --version 0.13.2
fi

# A build directory of its own (the instrumented build shares nothing with
# the workspace's): FUZZ_TARGET_DIR, or fuzz/ in the workspace's.
target_dir="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/fuzz}"
host="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTC_BOOTSTRAP=1
cd fuzz
start=$SECONDS
cargo fuzz build -s none --target "$host" --target-dir "$target_dir"
echo "fuzz.sh: built in $((SECONDS - start)) s"
bin_dir="$target_dir/$host/release"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
    # New inputs go to a scratch corpus; the committed seeds are only read.
    mkdir -p "$work/$t" "artifacts/$t" "corpus/$t"
    if ! "$bin_dir/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$PWD/artifacts/$t/" "$work/$t" "corpus/$t" >"$work/$t.log" 2>&1; then
        tail -n 40 "$work/$t.log" >&2
        input="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$work/$t.log" | tail -n 1)"
        echo "fuzz.sh: $t failed; input: ${input:-none written}" >&2
        echo "fuzz.sh: reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run -s none $t ${input:-}" >&2
        exit 1
    fi
    echo "fuzz.sh: $t: $(grep -o 'Done [0-9]* runs' "$work/$t.log" | tail -n 1 || echo '?') in ${seconds} s, $(find "$work/$t" -type f | wc -l) new inputs"
done
