#!/usr/bin/env bash
# Bounded fuzz run of every target, for tests/run.sh. FUZZ_SECONDS per target (default 30).
# New corpus entries go under target/, so the checked-in seeds stay as they are.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${FUZZ_SECONDS:-30}"
for target in dhcp_v4_handle; do
  corpus="target/fuzz-corpus/$target"
  mkdir -p "$corpus"
  cargo +nightly fuzz run --fuzz-dir tests/fuzz "$target" "$corpus" "tests/fuzz/seeds/$target" \
    -- -max_total_time="$seconds" -max_len=1500
done
