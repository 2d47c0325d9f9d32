#!/usr/bin/env bash
# Figure: the launcher pod's two containers under a real container runtime (podman +
# runc), shaped like the Pod the controller renders: `net-setup` with NET_ADMIN only, then
# `compute` with --cap-drop ALL --cap-add CHOWN,DAC_OVERRIDE,SETUID,SETGID,KILL,
# NET_BIND_SERVICE, no-new-privileges, the runtime's default seccomp profile, /proc/sys
# read-only, PID 1 = the launcher (its reaper). Reports, per run, the launcher's "domain
# running" time (its own log) and `podman stop -t 25` (SIGTERM to PID 1 -> ACPI
# power-off -> exit); checks exit code 0, no zombie in the container while it runs, and
# nothing left on the host. The capabilities seed is a host directory (as a node would
# provide it): run 1 fills it, the next runs are seeded.
#
#     N=5 bash benches/launcher_podman.sh          # release binaries of this tree
#     PROFILE=debug bash benches/launcher_podman.sh
#
# Needs root, podman + runc (tests/setup.sh) and the image localhost/vmpod:dev
# (manifests/build-image.sh); the binaries of this tree are mounted over the image's.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
PROFILE=${PROFILE:-release}
IMG=${IMG:-localhost/vmpod:dev}
podman image exists "$IMG" || { echo "no image $IMG: bash manifests/build-image.sh" >&2; exit 1; }
BIN=$PWD/target/$PROFILE
[ -x "$BIN/vmpod-launcher" ] && [ -x "$BIN/vmpod-virt" ] && [ -f "$BIN/libvmpod_preload.so" ] || {
  echo "build first: cargo build --${PROFILE/debug/profile dev} -p vmpod-launcher -p vmpod-virt -p vmpod-preload" >&2; exit 1; }
GUEST=$PWD/target/guest
NS=vmpod-bench-podman; HOSTIF=vpb-host; D=$(mktemp -d /tmp/vmpod-bench-podman.XXXXXX)
chmod 755 "$D"
cleanup() {
  podman rm -f vpb-net vpb-compute >/dev/null 2>&1 || true
  ip netns del $NS 2>/dev/null || true; ip link del $HOSTIF 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D/seed" "$D/vmi" "$D/secrets/bench-cloudinit"
printf '#cloud-config\n' > "$D/secrets/bench-cloudinit/userdata"
printf 'nameserver 10.96.0.10\nsearch ns1.svc.cluster.local\n' > "$D/resolv.conf"
cat > "$D/vmi/vmi.yaml" <<YAML
apiVersion: vmpod.io/v1alpha1
kind: VirtualMachineInstance
metadata: {name: bench, namespace: ns1}
spec:
  terminationGracePeriodSeconds: 20
  domain:
    memory: {guest: 128Mi}
    machine: {type: pc}
    firmware:
      kernelBoot: {kernelArgs: console=ttyS0 panic=-1 vmpod.hold=1, kernelPath: /guest/vmlinuz, initrdPath: /guest/initramfs.img}
    devices:
      rng: {}
      interfaces: [{name: default, bridge: {}}]
      disks: [{name: cloudinit, disk: {bus: virtio}}]
  networks: [{name: default, pod: {}}]
  volumes: [{name: cloudinit, cloudInitNoCloud: {secretRef: {name: bench-cloudinit}}}]
YAML

run_once() {
  rm -rf "$D/state" "$D/scratch"; mkdir -p "$D/state" "$D/scratch"
  ip netns add $NS
  ip link add $HOSTIF type veth peer name eth0 netns $NS
  ip addr add 10.82.0.1/24 dev $HOSTIF; ip link set $HOSTIF up
  ip -n $NS addr add 10.82.0.5/24 dev eth0; ip -n $NS link set eth0 up; ip -n $NS link set lo up
  ip -n $NS route add default via 10.82.0.1
  local common=(--runtime runc --ulimit nofile=16384:16384 --ulimit nproc=32768:32768
    --network ns:/run/netns/$NS --cap-drop ALL --security-opt no-new-privileges
    -v "$D/state:/var/run/vmpod" -v "$D/vmi:/etc/vmpod/vmi:ro" -v "$D/resolv.conf:/etc/resolv.conf:ro"
    -v "$BIN/vmpod-launcher:/usr/local/bin/vmpod-launcher:ro" -v "$BIN/vmpod-virt:/usr/local/bin/vmpod-virt:ro"
    -v "$BIN/libvmpod_preload.so:/usr/local/bin/libvmpod_preload.so:ro"
    --device /dev/net/tun -e VMPOD_VMI=/etc/vmpod/vmi/vmi.yaml)
  local out
  out=$(podman run --rm --name vpb-net "${common[@]}" --cap-add NET_ADMIN "$IMG" net setup 2>&1) ||
    { echo "net-setup failed: $out" >&2; return 1; }
  podman run -d --name vpb-compute "${common[@]}" \
    --cap-add CHOWN,DAC_OVERRIDE,SETUID,SETGID,KILL,NET_BIND_SERVICE \
    -v "$D/scratch:/var/lib/vmpod/scratch" -e VMPOD_SCRATCH_DIR=/var/lib/vmpod/scratch \
    -v "$D/secrets:/etc/vmpod/secrets:ro" -v "$GUEST:/guest:ro" \
    -v "$D/seed:/var/cache/vmpod/qemu-capabilities" "$IMG" run >/dev/null
  local i zombies=0 running=-
  for i in $(seq 1 600); do
    grep -q VMPOD-HOLD "$D/scratch/console.log" 2>/dev/null && break
    zombies=$(( zombies + $(podman exec vpb-compute sh -c 'cat /proc/[0-9]*/stat 2>/dev/null' | awk '$3 == "Z"' | wc -l) ))
    sleep 0.1
  done
  running=$(podman logs vpb-compute 2>&1 | sed -n 's/.*domain running elapsed_ms=\([0-9]*\).*/\1/p' | head -1)
  local t0 t1 code
  t0=$(date +%s%N); podman stop -t 25 vpb-compute >/dev/null; t1=$(date +%s%N)
  code=$(podman inspect vpb-compute --format '{{.State.ExitCode}}')
  podman rm vpb-compute >/dev/null
  local left
  left=$(pgrep -f "$D" | wc -l || true)
  echo "domain running ${running:-?} ms; podman stop $(( (t1 - t0) / 1000000 )) ms, exit $code; zombies seen $zombies; processes left $left"
  ip netns del $NS; ip link del $HOSTIF 2>/dev/null || true
}

for n in $(seq 1 "$N"); do
  printf 'run %s (%s): ' "$n" "$([ "$n" = 1 ] && echo "seed empty" || echo seeded)"
  run_once
done
