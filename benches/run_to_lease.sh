#!/usr/bin/env bash
# Figure: `vmpodctl run` -> the guest's lease line on the console (VMPOD-LEASE), median of
# N runs, side by side with the peer: the same guest booted by plain QEMU (same TCG
# accelerator, user-mode networking, no pod, no libvirt, no DHCP server of ours) to its
# lease, the two alternating in one run. Like with like: by default the VMI has the
# plain QEMU's devices and nothing more (machine pc, 256 MiB, one vCPU, one virtio NIC
# without option ROM, the serial console, no disk, no rng), so both guests do the same
# work before their lease. MANIFEST=FILE runs another VMI instead (e.g.
# manifests/examples/testguest.yaml, whose cidata disk and rng the guest probes first).
#
# Where vmpod's time goes, medians: making the pod (vmpodctl start -> the launcher's
# exec), the launcher's phases (its log: network ready, libvirtd ready, domain started =
# libvirt defined and started QEMU and let it run), and QEMU's start -> the lease (its
# process age at the lease line, /proc), the same measured on plain QEMU.
# Also each vmpodctl run's total time (start to exit, pod removed).
#
#     bash benches/run_to_lease.sh            # N=5 runs each
#     N=9 bash benches/run_to_lease.sh
#     PROFILE=debug bash benches/run_to_lease.sh   # the dev-profile binaries
#     BEFORE=1 N=5 bash benches/run_to_lease.sh    # and the before, in the same run
#
# BEFORE=1 adds a third run to each round: vmpodctl run with VMPOD_DAEMONS_UNTUNED=1, the
# pod's processes as before the start-time work (libvirtd started after the network,
# libvirt's slow guest CPU check), with the launcher and vmpod-virt of BEFORE_BIN (a
# directory; default this tree's), reported beside the others.
#
# Needs root (local pods, on a bridge, subnet and local root of the run's own); builds
# the binaries of PROFILE (default release). The capabilities seed is the run's own,
# filled by a warm-up run that is not counted.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
N=${N:-5}

. benches/lib.sh
bench_build --workspace
[ "$(id -u)" = 0 ] || { echo "run_to_lease.sh: needs root (local pods)" >&2; exit 1; }
TAG=$(printf '%x' $(( $$ & 0xffffff )))
WORK=$(mktemp -d /tmp/vmpod-bench-lease.XXXXXX)
export VMPOD_LOCAL_ROOT=/run/vprl$TAG VMPOD_BRIDGE=vprl$TAG \
  VMPOD_SUBNET=10.221.$(( $$ % 200 + 20 )).0/24 VMPOD_CAPS_SEED=$WORK/caps-seed
trap 'rm -rf "$WORK" "$VMPOD_LOCAL_ROOT"' EXIT
TICK=$(getconf CLK_TCK)

NAME=rl$TAG
if [ -z "${MANIFEST:-}" ]; then
  MANIFEST=$WORK/vmi.yaml
  cat > "$MANIFEST" <<YAML
apiVersion: vmpod.io/v1alpha1
kind: VirtualMachineInstance
metadata:
  name: $NAME
  annotations: {vmpod.io/acceleration: emulation}
spec:
  domain:
    machine: {type: pc}
    cpu: {cores: 1}
    memory: {guest: 256Mi}
    features: {acpi: {}}
    firmware:
      kernelBoot: {kernelArgs: console=ttyS0 quiet panic=-1, kernelPath: $PWD/target/guest/vmlinuz, initrdPath: $PWD/target/guest/initramfs.img}
    devices:
      interfaces: [{name: default, bridge: {}}]
  networks: [{name: default, pod: {}}]
YAML
else
  NAME=$(sed -n 's/^  name: *//p' "$MANIFEST" | head -1)
fi

# The age in ms of process $1 now ("-" when it is gone): /proc/uptime - its start time.
age_ms() {
  local up stat
  IFS=' ' read -r up _ < /proc/uptime
  IFS= read -r stat 2>/dev/null < "/proc/$1/stat" || { echo -; return; }
  local f=(${stat##*) })
  echo $(( ${up/./}0 - f[19] * 1000 / TICK ))
}

# Run "$@", print "<ms to the lease line> <ms to exit> <ms launcher age> <ms QEMU age>",
# the ages at the lease line ("-" when unknown), "-" for the lease when none came.
# QEMU's pid comes from $QEMU_PIDFILE or the pod's status; the launcher's from the pod.
time_to_lease() {
  local start lease=- line launcher=- qemu=- pid
  start=$(now_ms)
  while IFS= read -r line; do
    case "$line" in
      *VMPOD-LEASE\ *)
        [ "$lease" = - ] || continue
        lease=$(( $(now_ms) - start ))
        local sd=$VMPOD_LOCAL_ROOT/$NAME
        if [ -n "${QEMU_PIDFILE:-}" ]; then
          qemu=$(age_ms "$(cat "$QEMU_PIDFILE")")
        else
          pid=$(sed -n 's/.*"qemuPid": *\([0-9]*\).*/\1/p' "$sd/status.json")
          qemu=$(age_ms "$pid")
          pid=$(sed -n 's/.*"launcherPid": *\([0-9]*\).*/\1/p' "$sd/pod/pod.json")
          launcher=$(age_ms "$pid")
          cp "$sd/pod/launcher.log" "$WORK/launcher.log"
        fi ;;
    esac
  done < <("$@" </dev/null 2>/dev/null)
  echo "$lease $(( $(now_ms) - start )) $launcher $qemu"
}

qemu_direct() {
  timeout 300 qemu-system-x86_64 -accel tcg -machine pc -m 256 -nodefaults -no-reboot \
    -display none -serial stdio -monitor none -pidfile "$QEMU_PIDFILE" \
    -kernel target/guest/vmlinuz -initrd target/guest/initramfs.img \
    -append "console=ttyS0 quiet panic=-1" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=
}

# The launcher's "<what> ... elapsed_ms=N" from the log of the last run.
launcher_ms() { sed -nE "s/.*$1.* elapsed_ms=([0-9]+).*/\\1/p" "$WORK/launcher.log" | head -1; }

echo "warm-up run (fills the run's capabilities seed)" >&2
time_to_lease timeout 300 "target/$PROFILE/vmpodctl" run "$MANIFEST" --console > /dev/null
: > "$WORK/q.tsv"
# One vmpodctl run with the environment "$@" (VAR=value ...), its figures appended to
# $WORK/$label.tsv: lease, exit, pod made, network / libvirtd / domain started, QEMU age.
vm_run() {
  local label=$1 l t la qa parts="- - - -"; shift
  read -r l t la qa < <(QEMU_PIDFILE= time_to_lease timeout 300 env "$@" "target/$PROFILE/vmpodctl" run "$MANIFEST" --console)
  if [ "$l" != - ]; then
    parts="$(( l - la )) $(launcher_ms "network ready") $(launcher_ms "libvirtd ready") $(launcher_ms "domain started")"
  fi
  echo "run $i: vmpodctl run${*:+ ($*)} -> lease ${l} ms (exit ${t} ms); pod made in $(cut -d' ' -f1 <<< "$parts") ms, launcher -> network / libvirtd / domain started $(cut -d' ' -f2-4 <<< "$parts" | sed 's/ / \/ /g') ms, QEMU start -> lease ${qa} ms" >&2
  echo "$l $t $parts $qa" >> "$WORK/$label.tsv"
}
LABELS=vm; : > "$WORK/vm.tsv"
[ "${BEFORE:-0}" = 1 ] && { LABELS="vm before"; : > "$WORK/before.tsv"; }
for i in $(seq "$N"); do
  vm_run vm
  # The pod's processes as before the start-time and density work (VMPOD_DAEMONS_UNTUNED=1).
  [ "${BEFORE:-0}" = 1 ] && vm_run before VMPOD_DAEMONS_UNTUNED=1 VMPOD_LAUNCHER="${BEFORE_BIN:-$PWD/target/$PROFILE}/vmpod-launcher"
  read -r l _ _ qa < <(QEMU_PIDFILE=$WORK/qemu.pid time_to_lease qemu_direct)
  echo "run $i: plain qemu   -> lease ${l} ms (QEMU start -> lease ${qa} ms)" >&2
  echo "$l $qa" >> "$WORK/q.tsv"
done

col() { awk -v c="$1" '$c != "-" {print $c}' "$2" | median; }
leased() { awk '$1 != "-"' "$1" | wc -l; }
echo "runs: $N, alternating (TCG, $PROFILE binaries, $(basename "$MANIFEST")); load average $(loadavg)"
echo "plain qemu   -> guest lease, median: $(col 1 "$WORK/q.tsv") ms  (leases: $(leased "$WORK/q.tsv")/$N; all: $(cut -d' ' -f1 "$WORK/q.tsv" | tr '\n' ' '); QEMU start -> lease $(col 2 "$WORK/q.tsv") ms)"
for label in $LABELS; do
  f=$WORK/$label.tsv
  what="vmpodctl run"; [ "$label" = before ] && what="vmpodctl run, before (VMPOD_DAEMONS_UNTUNED=1)"
  echo "$what -> guest lease, median: $(col 1 "$f") ms  (leases: $(leased "$f")/$N; all: $(cut -d' ' -f1 "$f" | tr '\n' ' '))"
  echo "  gap to plain qemu, median of the pairs: $(paste -d' ' "$f" "$WORK/q.tsv" | awk '$1 != "-" && $8 != "-" {print $1 - $8}' | median) ms"
  echo "  vmpod's path, medians: pod made (vmpodctl start -> launcher exec) $(col 3 "$f") ms; launcher start -> network ready $(col 4 "$f"), -> libvirtd ready $(col 5 "$f"), -> domain started $(col 6 "$f") ms; QEMU start -> lease $(col 7 "$f") ms"
  echo "  vmpodctl run -> exit, median: $(col 2 "$f") ms"
done
