#!/usr/bin/env bash
# Figure: one test guest's QEMU CPU time to its lease (plain QEMU, TCG, no pod), booted
# right after another guest's exit vs after REST seconds of rest. On a machine whose
# memory is a VM's with free page reporting (virtio_balloon), freed memory is given back
# to the host after a while, and a guest that touches it again pays the host's page
# faults. benches/density.sh rests before each measured shape for that reason: the
# floor's solo boot then takes memory in the same state as a burst's guests.
#
#     ROUNDS=4 REST=10 bash benches/memory_rest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
ROUNDS=${ROUNDS:-4}
REST=${REST:-10}
bash tests/guest/build.sh >&2
WORK=$(mktemp -d /tmp/vmpod-bench-rest.XXXXXX)
trap 'pkill -F "$WORK/pid" 2>/dev/null || true; rm -rf "$WORK"' EXIT
TICK=$(getconf CLK_TCK)
REPORTED=/sys/module/page_reporting/parameters/reported_kib

# One boot to its lease: prints QEMU's CPU ms at the lease line, then stops it.
boot() {
  rm -f "$WORK/con" "$WORK/pid"
  qemu-system-x86_64 -accel tcg -machine pc -m 128 -nodefaults -no-reboot -display none \
    -serial "file:$WORK/con" -monitor none -pidfile "$WORK/pid" \
    -kernel target/guest/vmlinuz -initrd target/guest/initramfs.img \
    -append "console=ttyS0 quiet panic=-1" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= > /dev/null 2>&1 &
  local q=$! i
  for i in $(seq 1500); do grep -qs VMPOD-LEASE "$WORK/con" && break; sleep 0.02; done
  grep -qs VMPOD-LEASE "$WORK/con" || { echo "memory_rest.sh: no lease in 30 s" >&2; kill "$q"; exit 1; }
  local f; read -r -a f < <(sed 's/.*) //' "/proc/$q/stat")
  echo $(( (f[11] + f[12]) * 1000 / TICK ))
  kill "$q"; wait "$q" 2>/dev/null || true
}

b2b=() rested=()
boot > /dev/null # warm-up
for r in $(seq "$ROUNDS"); do
  sleep 0.5; b2b+=("$(boot)")
  before=$(cat "$REPORTED" 2>/dev/null || echo 0)
  sleep "$REST"
  after=$(cat "$REPORTED" 2>/dev/null || echo 0)
  rested+=("$(boot)")
  echo "round $r: right after an exit ${b2b[-1]} ms; after ${REST} s of rest ${rested[-1]} ms ($(( (after - before) / 1024 )) MiB reported to the host meanwhile)" >&2
done
echo "one guest's QEMU CPU to its lease, median of $ROUNDS: right after another guest's exit $(printf '%s\n' "${b2b[@]}" | median) ms; after ${REST} s of rest $(printf '%s\n' "${rested[@]}" | median) ms"
[ -e "$REPORTED" ] || echo "(no free page reporting on this machine: $REPORTED is absent)"
