#!/usr/bin/env bash
# The README's demo: on a fresh Debian 12 machine, as root. Installs what vmpod needs,
# builds the test guest and the release binaries, then runs one VM in a local pod in the
# foreground:
#
#     vmpodctl run manifests/examples/testguest.yaml --console
#
# What you see: vmpodctl prints the pod's IP, gateway and namespace, then the VM's phase
# changes on standard error; the VM's serial console streams on standard output. The
# guest boots (VMPOD-BOOT), gets the pod IP from the launcher's DHCP server
# (VMPOD-LEASE, same address as the pod IP line), pings its gateway (VMPOD-PING), prints
# its cloud-init user-data and powers off; vmpodctl removes the pod and exits with the
# launcher's status. Ctrl-C at any time stops the VM gracefully (twice: kill).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (it creates a bridge, network namespaces and a VM)" >&2
  exit 1
fi

bash tests/setup.sh
bash tests/guest/build.sh
cargo build --release --workspace

exec target/release/vmpodctl run manifests/examples/testguest.yaml --console
