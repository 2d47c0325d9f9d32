#!/usr/bin/env bash
# The README's demo command (for now): set up the machine, build the test guest, boot it
# under QEMU (TCG, user-mode networking, a NoCloud cidata CD-ROM) and show its console
# and the lease it got. Later this becomes `vmpodctl run manifests/examples/...`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup.sh
bash tests/guest/build.sh
guest=${CARGO_TARGET_DIR:-target}/guest

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/seed"
printf '#cloud-config\nhostname: vmpod-demo\n' >"$work/seed/user-data"
printf 'instance-id: vmpod-demo-1\n' >"$work/seed/meta-data"
genisoimage -quiet -output "$work/cidata.iso" -volid cidata -joliet -rock "$work/seed"

echo "demo: booting the test guest under QEMU (TCG, user networking); console follows"
echo "--------------------------------------------------------------------------------"
start=$(date +%s%N)
timeout 120 qemu-system-x86_64 -accel tcg -machine pc -m 256 -nodefaults -no-reboot \
    -display none -monitor none -serial stdio \
    -kernel "$guest/vmlinuz" -initrd "$guest/initramfs.img" \
    -append "console=ttyS0 quiet panic=-1" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
    -drive "file=$work/cidata.iso,format=raw,media=cdrom,if=ide" </dev/null \
    | sed -u 's/\r$//' | tee "$work/console.log" | while IFS= read -r line; do
        if [[ $line == *VMPOD-LEASE* ]]; then
            echo "$line"
            echo ">>> lease line after $(( ($(date +%s%N) - start) / 1000000 )) ms from QEMU start"
        else
            echo "$line"
        fi
    done
echo "--------------------------------------------------------------------------------"

lease=$(grep -o 'VMPOD-LEASE {.*}' "$work/console.log" || true)
ping=$(grep -o 'VMPOD-PING {.*}' "$work/console.log" || true)
[ -n "$lease" ] || { echo "demo: the guest reported no lease" >&2; exit 1; }
field() { echo "$lease" | sed -n "s/.*\"$1\":\(\"[^\"]*\"\|\[[^]]*\]\|[^,}]*\).*/\1/p" | tr -d '"'; }
echo "demo: the guest leased $(field ip)/$(field prefix) on $(field iface) ($(field mac))"
echo "      routers $(field routers), dns $(field dns), mtu $(field link_mtu), after $(field uptime) s of guest uptime"
echo "demo: ping to the router: $(echo "$ping" | sed -n 's/.*"ok":\([a-z]*\).*"rtt_ms":\([0-9.null]*\).*/ok=\1 rtt_ms=\2/p')"
grep -q 'VMPOD-CIDATA-BEGIN {"file":"user-data"' "$work/console.log" && echo "demo: the guest read user-data from its cidata CD-ROM (shown above)"
grep -q 'VMPOD-POWEROFF' "$work/console.log" && echo "demo: the guest powered itself off through ACPI"
