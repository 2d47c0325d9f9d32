#!/usr/bin/env bash
# Bounded fuzz run of every target, for tests/run.sh. FUZZ_SECONDS per target (default 30).
# New corpus entries go under target/, so the checked-in seeds stay as they are.
# cargo-fuzz needs nightly flags: the nightly toolchain when installed, otherwise the
# stable one with RUSTC_BOOTSTRAP=1 and no sanitizer (no other toolchain can be fetched).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${FUZZ_SECONDS:-30}"
if cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz run)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz run --sanitizer none)
fi
for target in dhcp_v4_handle; do
  corpus="target/fuzz-corpus/$target"
  mkdir -p "$corpus"
  "${fuzz[@]}" --fuzz-dir tests/fuzz "$target" "$corpus" "tests/fuzz/seeds/$target" \
    -- -max_total_time="$seconds" -max_len=1500
done
