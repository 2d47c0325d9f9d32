#!/usr/bin/env bash
# Boot-time benchmark of the test guest under TCG: hyperfine runs whole boots (QEMU start
# -> lease -> ping -> ACPI power-off -> QEMU exit), and the console of each boot gives the
# guest's uptime at the lease. hyperfine's User+System is QEMU's CPU time per boot, which
# other load on the host does not stretch. Usage: tests/guest/bench.sh [runs]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-10}
bash tests/guest/build.sh >/dev/null
guest=${CARGO_TARGET_DIR:-target}/guest
log=$(mktemp); trap 'rm -f "$log"' EXIT
boot="qemu-system-x86_64 -accel tcg -machine pc -m 256 -nodefaults -no-reboot -display none \
-monitor none -serial stdio -kernel $guest/vmlinuz -initrd $guest/initramfs.img \
-append 'console=ttyS0 quiet panic=-1' -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
</dev/null >>$log"
echo "host: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine --runs "$runs" --warmup 1 --shell bash -n "boot to power-off (TCG)" "$boot"
grep -o 'VMPOD-LEASE .*"uptime":[0-9.]*' "$log" | sed 's/.*"uptime":\([0-9.]*\)$/\1/' | sort -n |
    awk '{ a[NR] = $1 } END { if (NR) printf "guest uptime at lease (guest clock, unreliable on an overloaded host): min %.2f s, median %.2f s, max %.2f s (%d boots)\n", a[1], a[int((NR + 1) / 2)], a[NR], NR }'
echo "host: load $(cut -d' ' -f1-3 /proc/loadavg) after"
