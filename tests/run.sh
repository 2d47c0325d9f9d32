#!/usr/bin/env bash
# The README's test command: set up a fresh Debian 12 machine and run every test.
# Under CI (CI set to anything but empty, false or 0) a privileged test that cannot run
# fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup.sh
bash tests/guest/build.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Tests run the binaries of every package (vmpodctl runs vmpod-launcher, the local-mode
# tests run vmpod-handler): build them all first.
cargo build --workspace
# The images the cluster tests run (they would build them on demand too; here a failure
# shows at once). Cached under target/images/.
bash manifests/build-image.sh --profile dev
cargo test --workspace --no-fail-fast

# A bounded fuzz run of the DHCP packet handler (nightly + cargo-fuzz, from setup.sh).
bash tests/fuzz/run.sh
