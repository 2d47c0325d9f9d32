#!/usr/bin/env bash
# Installs, from Debian's packages, everything vmpod needs on a fresh Debian 12 machine.
# Idempotent: a second run installs nothing new. Run as root.
set -euo pipefail

packages=(
  # build: the virt crate links libvirt; pkg-config finds it
  build-essential pkg-config libvirt-dev
  # runtime: the launcher starts its own libvirtd and QEMU
  libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 iproute2 nftables
  # qemu-img: containerDisk overlays
  qemu-utils
  # tests: real DHCP clients and peers for the benchmarks
  busybox-static isc-dhcp-client dhcpcd-base dnsmasq-base
  # test guest builder: kernel and busybox come from .deb files unpacked under target/
  cpio gzip xz-utils zstd kmod dpkg-dev
  # tests: an ISO 9660 cidata image for the guest's CD-ROM path
  genisoimage
  # benchmarks
  hyperfine procps
  # images (manifests/build-image.sh) and the kubelet-shaped runner (tests/cluster/): podman
  # with runc (crun refuses these machines' hybrid cgroup layout), a Debian base from
  # Debian's packages with mmdebstrap
  podman buildah runc mmdebstrap
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages (${missing[*]}); run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # vmpod runs its own libvirtd per pod; keep the package scripts from starting the host's.
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e "$policy" ] && had_policy=1
  if [ "$had_policy" = 0 ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if [ "$had_policy" = 0 ]; then rm -f "$policy"; fi
fi

# QEMU (and the pod's libvirtd) run as uid/gid 107, KubeVirt's qemu user; libvirt needs
# a passwd entry for it (the vmpod image has `libvirt-qemu` 107). Any name will do.
getent group 107 >/dev/null || groupadd --system --gid 107 vmpod-qemu
getent passwd 107 >/dev/null ||
  useradd --system --uid 107 --gid 107 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin vmpod-qemu

# QEMU (uid 107) opens the tap through /dev/net/tun; the tap's owner is the access
# check. udev makes the node 0666 on a standard system; a machine without udev leaves
# it 0600.
chmod 0666 /dev/net/tun

# The virt crate and the tests need these on PATH.
for cmd in cargo qemu-system-x86_64 libvirtd busybox dhclient dhcpcd dnsmasq ip podman runc mmdebstrap; do
  command -v "$cmd" >/dev/null || { echo "setup: $cmd not found after install" >&2; exit 1; }
done
# The fuzz run (tests/fuzz/run.sh) needs cargo-fuzz (and uses nightly when present).
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
echo "setup: ok"
