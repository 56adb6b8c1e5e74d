#!/usr/bin/env bash
# Fuzz the Rust core's raw-bytes entry points with libFuzzer (cargo fuzz), for
# a bounded time: scripts/fuzz.sh [SECONDS] (default 60).
#
# cargo fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the
# one stable toolchain these machines have accept them.
# A crash leaves its input in rust/fuzz/artifacts/raw_bytes/: turn it into a
# regression test in rust/src before fixing it.
set -euo pipefail
cd "$(dirname "$0")/../rust"
seconds=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --quiet --locked cargo-fuzz
log=$(mktemp)
status=0
RUSTC_BOOTSTRAP=1 cargo fuzz run raw_bytes --fuzz-dir fuzz -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    echo "fuzzing: FAILED (see the input saved in rust/fuzz/artifacts/raw_bytes/)" >&2
    exit "$status"
fi
grep -E '^(Done|stat::peak_rss_mb)' "$log" || true
rm -f "$log"
echo "fuzzing: no crash in ${seconds} s"
