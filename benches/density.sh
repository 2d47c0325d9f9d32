#!/usr/bin/env bash
# Figure: many VMs on one node at once. `vmpod-handler local` (no cluster) is given N
# test-guest VMIs (TCG, $MEM guest memory, held up after their lease), in two shapes:
# `burst`, all N manifests created at once (one rename), and `staggered`, one every
# 100 ms (KubeVirt's density benchmark shape). Per shape it reports:
#   - creation -> Running (the VMI's status file says Running) and creation -> the
#     guest's DHCP lease (its VMPOD-LEASE console line), P50 / P95 / max;
#   - each guest's QEMU CPU time at its lease (/proc/<qemu>/stat), and the floor: N x one
#     guest's QEMU CPU to its lease (measured alone first, in the same run) / cores;
#   - per-pod overhead with all N running: launcher, vmpod-virt and libvirtd RSS and PSS
#     (/proc/<pid>/smaps_rollup), per pod and summed; QEMU's apart;
#   - the node's memory in use (MemTotal - MemAvailable) before and with the N running;
#   - manifests removed -> every VM stopped and everything cleaned up (state dirs,
#     network namespaces, the bridge's ports, processes), then the handler's exit.
# It fails (exit 1) when a VM does not reach Running or its lease, or anything is left.
#
#     N=10 bash benches/density.sh                      # release binaries of this tree
#     N=25 SHAPES=burst bash benches/density.sh
#     N=3 PROFILE=debug bash benches/density.sh         # the dev-profile binaries
#
# Settings: N (10), SHAPES ("burst staggered"; "untuned" is a burst with the pods'
# processes set up as before the density work, VMPOD_DAEMONS_UNTUNED=1, with the
# launcher and vmpod-virt of BEFORE_BIN, default this tree's; "unlimited" is a burst with
# no boot slots, every guest booting at once), GAP_MS (100, staggered), MEM (128Mi),
# PROFILE (release), POLL_MS (the handler's directory scan, 100), BOOTS (the handler's
# --max-concurrent-boots, how many guests boot at once; unset: its default, the CPU
# count; 0: no limit), TIMEOUT (s per shape,
# 120 + 10 N), SOLO (5: boots of one guest alone, the floor's median), REST (10: seconds
# of rest before each measured shape, see below), KEEP=1 keeps the work directory. The capabilities seed is the run's own:
# empty at first, a warm-up pod fills it, so every measured pod starts seeded (as every
# pod after a node's first). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
. benches/lib.sh
[ "$(id -u)" = 0 ] || { echo "density.sh: needs root (local pods)" >&2; exit 1; }
N=${N:-10}
SHAPES=${SHAPES-burst staggered}
GAP_MS=${GAP_MS:-100}
MEM=${MEM:-128Mi}
POLL_MS=${POLL_MS:-100}
BOOTS=${BOOTS-}
TIMEOUT=${TIMEOUT:-$((120 + 10 * N))}
SOLO=${SOLO:-5}
REST=${REST:-10}
bench_build --workspace
BIN=$PWD/target/$PROFILE
BEFORE_BIN=${BEFORE_BIN:-$BIN}
CORES=$(nproc)
KERNEL=$PWD/target/guest/vmlinuz INITRD=$PWD/target/guest/initramfs.img
TICK=$(getconf CLK_TCK)

# Names of this run's own: bridge, subnet, local root (tmpfs, as /run/vmpod/vms), VMIs.
TAG=$(printf '%x' $(( $$ & 0xffffff )))
BR=vpd$TAG
SUBNET=10.221.$(( $$ % 200 + 20 )).0/24
WORK=$(mktemp -d /tmp/vmpod-bench-density.XXXXXX)
# Short: libvirt puts QEMU's monitor socket under the state dir, and a socket path has
# at most 107 bytes.
RUNROOT=/run/vpd$TAG
SEED=$WORK/caps-seed
mkdir -p "$SEED" "$RUNROOT"
HANDLER_PID=

cleanup() {
  local code=$?
  if [ -n "$HANDLER_PID" ] && kill -0 "$HANDLER_PID" 2>/dev/null; then
    kill -TERM "$HANDLER_PID" 2>/dev/null || true
    for _ in $(seq 600); do kill -0 "$HANDLER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$HANDLER_PID" 2>/dev/null || true
  fi
  # Whatever a failed run left: this run's namespaces and bridge only.
  for ns in $(ip netns list | awk '{print $1}' | grep "^vmpod-pod-d$TAG" || true); do
    ip netns pids "$ns" | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
  rm -rf "$RUNROOT"
  if [ "${KEEP:-}" = 1 ] || [ "$code" != 0 ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# NOW: milliseconds since the epoch, without a fork.
now() { NOW=$(( ${EPOCHREALTIME/./} / 1000 )); }
# FILE: the whole of file $1 (NUL bytes dropped; empty when unreadable), without a fork.
slurp() { FILE=; IFS= read -r -d $'\x04' FILE 2>/dev/null < "$1" || true; }
# QEMU's CPU time (user + system, all threads) of pid $1 in ms, "-" when gone.
qemu_cpu_ms() {
  local stat
  IFS= read -r stat 2>/dev/null < "/proc/$1/stat" || { echo -; return; }
  local f=(${stat##*) })
  echo $(( (f[11] + f[12]) * 1000 / TICK ))
}
secs() { awk -v m="$1" 'BEGIN {printf "%.3f", m / 1000}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
# The machine's busy CPU time so far, in ms (all cores: total - idle - iowait).
busy_ms() { awk -v t="$TICK" '/^cpu / {print int(($2 + $3 + $4 + $7 + $8 + $9) * 1000 / t)}' /proc/stat; }
mem_used_kib() { awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print t - a}' /proc/meminfo; }

# Waits for the guest's VMPOD-LEASE line in console file $1 (tail follows it by inotify,
# also before it exists) and writes "<ms since the epoch> <its QEMU's CPU ms>" to $3,
# QEMU's pid read from the launcher's status file $2. One per VMI, in the background: a
# loop re-reading every console 10 times a second cost seconds of the CPU the guests
# share, counted against the floor. tail ends with this script (--pid).
watch_lease() {
  local console q=0
  exec {console}< <(exec tail -n +1 -F -s 0.1 --pid=$$ "$1" 2>/dev/null)
  local tail_pid=$!
  grep -m1 -qF 'VMPOD-LEASE ' <&"$console" || return 0
  now
  local at=$NOW
  kill "$tail_pid" 2>/dev/null || true
  slurp "$2"
  [[ $FILE =~ \"qemuPid\":\ *([0-9]+) ]] && q=${BASH_REMATCH[1]}
  echo "$at $(qemu_cpu_ms "$q")" > "$3.tmp" && mv "$3.tmp" "$3"
  echo "$3" >&"$LEASES"
}

# The files of VMI $2 under local root $1 (the local runtime's layout, README "Per-pod
# state and scratch directories"): state dir, launcher status, console, pod record.
state_dir() { echo "$1/$2"; }

manifest() { # name file
  cat > "$2" <<YAML
apiVersion: vmpod.io/v1alpha1
kind: VirtualMachineInstance
metadata:
  name: $1
  annotations: {vmpod.io/acceleration: emulation}
spec:
  terminationGracePeriodSeconds: 30
  domain:
    memory: {guest: $MEM}
    firmware:
      kernelBoot: {kernelArgs: console=ttyS0 quiet panic=-1 vmpod.hold=1, kernelPath: $KERNEL, initrdPath: $INITRD}
    devices:
      interfaces: [{name: default, bridge: {}}]
  networks: [{name: default, pod: {}}]
YAML
}

# One shape: COUNT VMIs, created GAP ms apart (0: at once), named after the letter KEY,
# with the environment ENV... for the handler and its launchers. Appends the guest's
# QEMU CPU to its lease to SOLO_CPUS for COUNT=1. Prints its report; returns 1 when a VM did not lease or something was left.
shape() {
  local label=$1 key=$2 count=$3 gap=$4; shift 4
  local dir=$WORK/$label root=$RUNROOT/$key
  local m=$dir/manifests stage=$dir/stage
  mkdir -p "$m" "$stage" "$root"
  local names=() i
  for i in $(seq 0 $((count - 1))); do
    names+=("d$TAG$key$i")
    manifest "${names[-1]}" "$stage/${names[-1]}.yaml"
  done
  local load_before mem_before
  # Rest first: memory freed moments ago (the last shape's guests) is still backed by
  # this machine's host, memory freed long ago may have been given back to it (free page
  # reporting, virtio_balloon here), and a guest that touches the latter pays the host's
  # page faults: one guest's QEMU CPU to its lease was 1.88-2.01 s right after another's
  # exit and 2.24-2.37 s after 10 s of rest (`bash benches/memory_rest.sh`). A burst's
  # guests take gigabytes of long-freed memory; so, after the rest, does each solo boot.
  [ "$key" = w ] || sleep "$REST"
  load_before=$(loadavg); mem_before=$(mem_used_kib)
  env VMPOD_LAUNCHER="$BIN/vmpod-launcher" "$@" VMPOD_LOCAL_ROOT=$root VMPOD_BRIDGE=$BR \
    VMPOD_SUBNET=$SUBNET VMPOD_CAPS_SEED=$SEED ${BOOTS:+VMPOD_MAX_CONCURRENT_BOOTS=$BOOTS} \
    "$BIN/vmpod-handler" local --manifests "$m" --poll-ms "$POLL_MS" 2> "$dir/handler.log" &
  HANDLER_PID=$!
  for _ in $(seq 300); do grep -qs "watching manifests" "$dir/handler.log" && break; sleep 0.05; done

  declare -A created running leased cpu qpid
  local t0 name busy0 sd watchers=()
  # Each watcher says here when its lease came: the loop below wakes at once.
  mkfifo "$dir/leases"
  exec {LEASES}<>"$dir/leases"
  for name in "${names[@]}"; do
    sd=$(state_dir "$root" "$name")
    watch_lease "$sd/console.log" "$sd/status.json" "$dir/lease.$name" &
    watchers+=($!)
  done
  now; t0=$NOW; busy0=$(busy_ms)
  if [ "$gap" = 0 ]; then
    for name in "${names[@]}"; do created[$name]=$NOW; done
    mv -t "$m" "$stage"/*.yaml
  else
    for i in "${!names[@]}"; do
      name=${names[$i]}
      now; local wait=$(( t0 + i * gap - NOW ))
      [ "$wait" -gt 0 ] && sleep "$(secs "$wait")"
      now; created[$name]=$NOW
      mv "$stage/$name.yaml" "$m/"
    done
  fi

  # Follow every VMI to its lease and Running, without polling what it follows: the lease
  # times come from the watchers (inotify), the Running times from the handler's log (its
  # "status" line, written as it writes the status file), read once all have leased. A
  # loop reading 25 status files ten times a second cost seconds of the CPU the guests
  # share. The loop wakes at each lease, and once a second to look for a VMI that ended
  # and for the deadline.
  local done_count=0 deadline=$(( t0 + TIMEOUT * 1000 )) sd
  while :; do
    done_count=0
    for name in "${names[@]}"; do [ -e "$dir/lease.$name" ] && done_count=$((done_count + 1)); done
    [ "$done_count" -lt "$count" ] || break
    now
    if [ "$NOW" -gt "$deadline" ]; then
      echo "$label: timed out after ${TIMEOUT}s:" >&2
      for name in "${names[@]}"; do
        [ -e "$dir/lease.$name" ] && continue
        echo "  $name: no lease; its status: $(cat "$m/$name.status.json" 2>/dev/null)" >&2
        tail -5 "$(state_dir "$root" "$name")/pod/launcher.log" >&2 || true
        echo "  $name: its console's end:" >&2
        tail -c 1500 "$(state_dir "$root" "$name")/console.log" >&2 || true
      done
      tail -20 "$dir/handler.log" >&2
      return 1
    fi
    if grep -qE ' status vmi=[^ ]+ phase=(Failed|Succeeded)' "$dir/handler.log"; then
      echo "$label: a VM ended before every lease:" >&2
      grep -E ' status vmi=[^ ]+ phase=(Failed|Succeeded)' "$dir/handler.log" >&2
      return 1
    fi
    read -r -t 1 -u "$LEASES" _ || true
  done
  exec {LEASES}>&-
  for name in "${names[@]}"; do
    read -r "leased[$name]" "cpu[$name]" < "$dir/lease.$name"
    slurp "$(state_dir "$root" "$name")/status.json"
    [[ $FILE =~ \"qemuPid\":\ *([0-9]+) ]] && qpid[$name]=${BASH_REMATCH[1]}
  done
  local all_leased=0 busy1 ts vmi
  for name in "${names[@]}"; do [ "${leased[$name]}" -gt "$all_leased" ] && all_leased=${leased[$name]}; done
  while read -r ts vmi; do
    [ -n "${running[$vmi]:-}" ] || running[$vmi]=$(date -d "$ts" +%s%3N)
  done < <(sed -nE 's/^([^ ]+) .* status vmi=([^ ]+) phase=Running.*/\1 \2/p' "$dir/handler.log")
  for name in "${names[@]}"; do
    [ -n "${running[$name]:-}" ] || { echo "$label: $name leased, but the handler never said Running" >&2; return 1; }
  done
  wait "${watchers[@]}"
  busy1=$(busy_ms)
  local guests_cpu=0 handler_cpu
  for name in "${names[@]}"; do
    c=$(qemu_cpu_ms "${qpid[$name]:-0}"); [ "$c" != - ] && guests_cpu=$((guests_cpu + c))
  done
  handler_cpu=$(qemu_cpu_ms "$HANDLER_PID")
  # The guests answer the power button once they say so (VMPOD-HOLD, after the lease):
  # a stop asked before would wait for the grace period.
  for name in "${names[@]}"; do
    for _ in $(seq 600); do
      slurp "$(state_dir "$root" "$name")/console.log"
      [[ $FILE == *VMPOD-HOLD* ]] && break
      sleep 0.1
    done
  done

  # Everything runs: what each pod holds.
  local mem_running procs=$dir/procs.tsv
  mem_running=$(mem_used_kib)
  : > "$procs"
  for name in "${names[@]}"; do
    local netns pid comm
    slurp "$(state_dir "$root" "$name")/pod/pod.json"
    [[ $FILE =~ \"netns\":\ *\"([^\"]+)\" ]] && netns=${BASH_REMATCH[1]}
    for pid in $(ip netns pids "$netns") ${qpid[$name]:-}; do
      comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
      awk -v n="$name" -v p="$pid" -v c="$comm" -v ns="$netns" \
        '/^Rss:/ {r=$2} /^Pss:/ {s=$2} END {print n, p, c, ns, r, s}' "/proc/$pid/smaps_rollup"
    done
  done | sort -u -k2,2n > "$procs"
  local vmpod_cpu=0
  while read -r _ pid comm _; do
    case "$comm" in qemu*) ;; *) c=$(qemu_cpu_ms "$pid"); [ "$c" != - ] && vmpod_cpu=$((vmpod_cpu + c)) ;; esac
  done < "$procs"

  mkdir -p "$dir/logs"
  for name in "${names[@]}"; do cp "$(state_dir "$root" "$name")/pod/launcher.log" "$dir/logs/$name.log"; done

  # Stop: every manifest removed at once; wait until nothing of the pods is left.
  now; local t_stop=$NOW
  rm -f "$m"/*.yaml
  local cleaned= left
  while [ -z "$cleaned" ]; do
    left=
    for name in "${names[@]}"; do
      [ -e "$(state_dir "$root" "$name")" ] && left+=" state-dir:$name"
      [ -e "$m/$name.status.json" ] && left+=" status-file:$name"
    done
    while read -r name pid comm netns _; do
      [ -e "/run/netns/$netns" ] && left+=" netns:$netns"
      [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] && left+=" process:$comm[$pid]"
    done < "$procs"
    [ -n "$(ls "/sys/class/net/$BR/brif" 2>/dev/null)" ] && left+=" bridge-ports:$(ls "/sys/class/net/$BR/brif" | tr '\n' ',')"
    now
    if [ -z "$left" ]; then cleaned=$NOW
    elif [ "$NOW" -gt $(( t_stop + 120000 )) ]; then
      echo "$label: after 120 s still left:$left" >&2; tail -20 "$dir/handler.log" >&2; return 1
    else sleep 0.1; fi
  done
  kill -TERM "$HANDLER_PID"
  local code=0
  wait "$HANDLER_PID" || code=$?
  HANDLER_PID=
  now; local handler_exit=$NOW
  left=
  [ -e "/sys/class/net/$BR" ] && left+=" bridge:$BR"
  for p in /proc/[0-9]*; do
    [[ $(tr '\0' ' ' 2>/dev/null < "$p/cmdline") == *"$root"* ]] && left+=" process:${p#/proc/}"
  done
  [ -n "$(ls -A "$root" | grep -Ev '^(\.ipam|boot-slot-[0-9]+)\.lock$' || true)" ] && left+=" root:$(ls -A "$root" | tr '\n' ',')"
  [ -z "$left" ] || { echo "$label: after the handler's exit, left:$left" >&2; return 1; }
  [ "$code" = 0 ] || { echo "$label: handler exited $code" >&2; tail -20 "$dir/handler.log" >&2; return 1; }

  # Report.
  local to_running to_lease cpus
  to_running=$(for name in "${names[@]}"; do echo $(( ${running[$name]} - ${created[$name]} )); done | p50_p95_max)
  to_lease=$(for name in "${names[@]}"; do echo $(( ${leased[$name]} - ${created[$name]} )); done | p50_p95_max)
  cpus=$(for name in "${names[@]}"; do echo "${cpu[$name]}"; done | grep -v '^-$' || true)
  local cpu_med cpu_sum last_lease
  cpu_med=$(echo "$cpus" | median)
  cpu_sum=$(echo "$cpus" | awk '{s+=$1} END {print s+0}')
  last_lease=$(( all_leased - t0 ))
  [ "$count" = 1 ] && SOLO_CPUS+=("$cpu_med")
  local gaptext="at once"; [ "$gap" = 0 ] || gaptext="${gap} ms apart"
  echo
  local boots
  boots=$(sed -nE 's/.*boot slots max_concurrent_boots=([0-9]+).*/\1/p' "$dir/handler.log" | head -1)
  echo "== $label: $count VMI(s) created $gaptext${*:+ ($*)} ($MEM, TCG, $PROFILE binaries, $CORES cores, boot slots ${boots:-?}${BOOTS:+ (BOOTS)}); load average before $load_before, after $(loadavg)"
  echo "creation -> Running:  P50 / P95 / max $(echo "$to_running" | sed 's/ / \/ /g') ms"
  echo "creation -> lease:    P50 / P95 / max $(echo "$to_lease" | sed 's/ / \/ /g') ms (all $count leased; first creation -> last lease $last_lease ms)"
  echo "QEMU CPU to its lease, per guest: median $cpu_med ms (sum $cpu_sum ms)"
  if [ -n "${SOLO_CPU:-}" ] && [ "$count" -gt 1 ]; then
    awk -v n="$count" -v solo="$SOLO_CPU" -v c="$CORES" -v last="$last_lease" -v sum="$cpu_sum" 'BEGIN {
      f = n * solo / c; g = sum / c
      printf "floor: %d x %d ms (one guest alone, median of this run'"'"'s solo boots) / %d cores = %.1f s; last lease at %.1f s = %.2fx the floor (%.2fx the in-run floor, sum of CPU to leases / cores = %.1f s)\n", n, solo, c, f / 1000, last / 1000, last / f, last / g, g / 1000 }'
  fi
  # Where the time to Running goes, per pod: the handler's log (wall clock) and the
  # launcher's (ms since its start).
  local at ts what vmi
  declare -A seen started
  while read -r ts what vmi; do
    at=$(date -d "$ts" +%s%3N)
    case "$what" in added) seen[$vmi]=$at ;; started) started[$vmi]=$at ;; esac
  done < <(sed -nE 's/^([^ ]+) .*manifest added: starting its VM manifest=.*\/([^/]+)\.yaml$/\1 added \2/p;
    s/^([^ ]+) .*launcher started vmi=([^ ]+) .*/\1 started \2/p' "$dir/handler.log")
  for name in "${names[@]}"; do
    local ms=() v
    for what in "network ready" "libvirtd ready" "boot slot taken" "domain started" "domain running"; do
      v=$(sed -nE "s/.*$what.* elapsed_ms=([0-9]+).*/\1/p" "$dir/logs/$name.log" | head -1)
      # No boot slots (BOOTS=0): no wait, the step takes nothing.
      [ -n "$v" ] || [ "$what" != "boot slot taken" ] || v=${ms[-1]}
      ms+=("$v")
    done
    echo "$(( ${seen[$name]:-0} - ${created[$name]} )) $(( ${started[$name]:-0} - ${seen[$name]:-0} )) ${ms[*]}" \
      "$(( ${running[$name]} - ${started[$name]:-0} - ${ms[4]:-0} ))"
  done > "$dir/path.txt"
  local col=1 line="the path to Running, P50 / max ms:" p
  for what in "creation -> the handler sees it" "-> pod made, launcher started" "launcher start -> network ready" \
    "-> libvirtd ready" "-> boot slot taken" "-> domain started" "-> domain running" "domain running -> the status says Running"; do
    read -r p _ max < <(cut -d' ' -f$col "$dir/path.txt" | p50_p95_max)
    line+=" $what $p / $max;"; col=$((col + 1))
  done
  echo "$line"
  awk -v n="$count" '
    { cls = $3; if (cls ~ /^qemu/) cls = "qemu"; rss[$1, cls] += $5; pss[$1, cls] += $6; pods[$1] = 1; classes[cls] = 1
      if (cls != "qemu") { trss[$1] += $5; tpss[$1] += $6 } }
    END {
      np = 0; for (p in pods) np++
      line = "per pod, with " n " running (mean RSS / PSS MiB):"
      split("vmpod-launcher vmpod-virt libvirtd", order, " ")
      for (i = 1; i <= 3; i++) { c = order[i]; r = 0; s = 0
        for (p in pods) { r += rss[p, c]; s += pss[p, c] }
        line = line sprintf(" %s %.1f / %.1f;", c, r / np / 1024, s / np / 1024) }
      for (c in classes) if (c != "qemu" && c != "vmpod-launcher" && c != "vmpod-virt" && c != "libvirtd") {
        r = 0; s = 0; for (p in pods) { r += rss[p, c]; s += pss[p, c] }
        line = line sprintf(" other %s %.1f / %.1f;", c, r / np / 1024, s / np / 1024) }
      print line
      tr = 0; ts = 0; mr = 0; for (p in pods) { tr += trss[p]; ts += tpss[p]; if (trss[p] > mr) mr = trss[p] }
      printf "pod overhead without QEMU: %.1f MiB RSS per pod (max %.1f), %.1f MiB PSS per pod; summed over %d pods: %.1f MiB RSS, %.1f MiB PSS\n", tr / np / 1024, mr / 1024, ts / np / 1024, np, tr / 1024, ts / 1024
      r = 0; s = 0; for (p in pods) { r += rss[p, "qemu"]; s += pss[p, "qemu"] }
      printf "QEMU per pod: %.1f MiB RSS, %.1f MiB PSS\n", r / np / 1024, s / np / 1024
    }' "$procs"
  awk -v dt="$last_lease" -v c="$CORES" -v busy="$((busy1 - busy0))" -v g="$guests_cpu" -v v="$vmpod_cpu" -v h="$handler_cpu" \
    -v n="$count" -v solo="${SOLO_CPU:-0}" 'BEGIN {
    o = busy - g - v - h; if (o < 0) o = 0
    printf "CPU, first creation -> last lease (%.1f s x %d cores = %.1f s): machine busy %.1f s; guests (QEMU) %.1f s; vmpod %.1f s (pods: launcher + vmpod-virt + libvirtd %.1f s, handler %.1f s); other processes %.1f s\n", dt / 1000, c, dt * c / 1000, busy / 1000, g / 1000, (v + h) / 1000, v / 1000, h / 1000, o / 1000
    left = c - o / dt
    if (n > 1 && solo > 0 && left > 0) printf "floor on the CPU the other processes left (%.2f cores): %.1f s; last lease = %.2fx that\n", left, n * solo / left / 1000, dt / (n * solo / left) }'
  echo "node memory in use: $(mib "$mem_before") MiB before, $(mib "$mem_running") MiB with $count running (+$(mib $((mem_running - mem_before))) MiB, $(mib $(( (mem_running - mem_before) / count ))) MiB per VM)"
  echo "manifests removed -> all stopped and cleaned up: $(( cleaned - t_stop )) ms; handler exit (bridge removed): $(( handler_exit - t_stop )) ms; nothing left"
}

if [ -z "$(ls -A "$SEED")" ]; then
  echo "warm-up: one pod fills the run's capabilities seed" >&2
  shape warmup w 1 0 > /dev/null
fi
# One guest alone, SOLO times (its QEMU CPU to the lease varies by ~10% from boot to
# boot): the floor takes the median.
SOLO_CPUS=()
for i in $(seq "$SOLO"); do shape "solo-$i" "o$i" 1 0; done
SOLO_CPU=$(printf '%s\n' "${SOLO_CPUS[@]}" | median)
echo
echo "one guest alone: QEMU CPU to its lease ${SOLO_CPUS[*]} ms, median $SOLO_CPU ms"
for s in $SHAPES; do
  case "$s" in
    burst) shape burst b "$N" 0 ;;
    staggered) shape staggered g "$N" "$GAP_MS" ;;
    # The pods' processes with their settings from before the density work (libvirtd's
    # workers and clients, malloc arenas, the preload that skips libvirt's libcurl init,
    # libvirtd started after the network, libvirt's slow guest CPU check): the "before".
    untuned) shape untuned u "$N" 0 VMPOD_DAEMONS_UNTUNED=1 VMPOD_LAUNCHER="$BEFORE_BIN/vmpod-launcher" ;;
    # A burst with every guest booting at once (no boot slots): the "before" of the slots.
    unlimited) shape unlimited n "$N" 0 VMPOD_MAX_CONCURRENT_BOOTS=0 ;;
    *) echo "SHAPES: unknown shape $s (burst, staggered, untuned, unlimited)" >&2; exit 1 ;;
  esac
done
