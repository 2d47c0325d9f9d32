#!/usr/bin/env bash
# Figure: `vmpodctl run` -> the guest's lease line on the console (VMPOD-LEASE), median of
# N runs, side by side with the peer: the same guest booted by plain QEMU (same TCG
# accelerator, user-mode networking, no pod, no libvirt, no DHCP server of ours) to its
# lease. Also reports each vmpodctl run's total time (start to exit, pod removed).
#
#     bash benches/run_to_lease.sh            # N=5 runs each
#     N=9 bash benches/run_to_lease.sh
#     PROFILE=debug bash benches/run_to_lease.sh   # the dev-profile binaries
#
# Needs root (local pods); builds the binaries of PROFILE (default release).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
MANIFEST=${MANIFEST:-manifests/examples/testguest.yaml}

. benches/lib.sh
bench_build --workspace

# Run "$@", print "<ms to the lease line> <ms to exit>"; "- <ms>" when no lease came.
time_to_lease() {
  local start lease=- line
  start=$(now_ms)
  while IFS= read -r line; do
    case "$line" in
      *VMPOD-LEASE\ *) [ "$lease" = - ] && lease=$(( $(now_ms) - start )) ;;
    esac
  done < <("$@" </dev/null 2>/dev/null)
  echo "$lease $(( $(now_ms) - start ))"
}

qemu_direct() {
  timeout 300 qemu-system-x86_64 -accel tcg -machine pc -m 256 -nodefaults -no-reboot \
    -display none -serial stdio -monitor none \
    -kernel target/guest/vmlinuz -initrd target/guest/initramfs.img \
    -append "console=ttyS0 quiet panic=-1" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=
}

vm_lease=() vm_total=() q_lease=()
for i in $(seq "$N"); do
  read -r l t < <(time_to_lease timeout 300 "target/$PROFILE/vmpodctl" run "$MANIFEST" --console)
  echo "run $i: vmpodctl run -> lease ${l} ms (exit ${t} ms)" >&2
  vm_lease+=("$l") vm_total+=("$t")
  read -r l _ < <(time_to_lease qemu_direct)
  echo "run $i: plain qemu   -> lease ${l} ms" >&2
  q_lease+=("$l")
done

printf '%s\n' "${vm_lease[@]}" | grep -v '^-$' > /tmp/vmpod-bench-vm.$$ || true
printf '%s\n' "${q_lease[@]}" | grep -v '^-$' > /tmp/vmpod-bench-q.$$ || true
echo "runs: $N (TCG, $PROFILE binaries)"
echo "vmpodctl run -> guest lease, median: $(median < /tmp/vmpod-bench-vm.$$) ms  (leases: $(wc -l < /tmp/vmpod-bench-vm.$$)/$N; all: ${vm_lease[*]})"
echo "vmpodctl run -> exit, median:        $(printf '%s\n' "${vm_total[@]}" | median) ms"
echo "plain qemu   -> guest lease, median: $(median < /tmp/vmpod-bench-q.$$) ms  (leases: $(wc -l < /tmp/vmpod-bench-q.$$)/$N; all: ${q_lease[*]})"
rm -f /tmp/vmpod-bench-vm.$$ /tmp/vmpod-bench-q.$$
