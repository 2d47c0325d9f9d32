#!/usr/bin/env bash
# Builds the vmpod images with no container registry:
#
#   localhost/vmpod:dev            vmpod-launcher, vmpod-virt (+ libvmpod_preload.so), vmpod-handler, vmpodctl on
#                                  Debian 12 with libvirtd, QEMU and qemu-img, the QEMU
#                                  capabilities seed filled at build time
#   localhost/vmpod-testguest:dev  FROM scratch: the test guest's kernel and initramfs under
#                                  /boot/ (kernelBoot.container) and a small raw disk under
#                                  /disk/ (containerDisk)
#
# Usage: bash manifests/build-image.sh [--profile release|dev]   (default: release)
#
# The Debian 12 base is made by mmdebstrap from Debian's packages (with the runtime
# packages included, so the image build needs no network) and imported with
# `podman import`. manifests/launcher.Dockerfile then builds on it with the binaries this
# script built (BINARIES=prebuilt); with a registry, the same Dockerfile builds everything
# itself (see its header).
#
# Caching, under target/images/: the base tarball is keyed on its package list and the
# Debian suite; each image carries a label with the hash of its inputs (binaries,
# Dockerfile, base, guest files) and is rebuilt only when that hash changes or the image is
# missing from podman's storage. Run as root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
profile=release
while [ $# -gt 0 ]; do
    case $1 in
        --profile) profile=$2; shift 2 ;;
        --profile=*) profile=${1#*=}; shift ;;
        *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $profile in dev) profile_dir=debug ;; *) profile_dir=$profile ;; esac

target=${CARGO_TARGET_DIR:-$root/target}
cache=$target/images
mkdir -p "$cache"
# Parallel callers (tests that build on demand, other checkouts: the tags are global to
# podman's storage) wait for each other.
exec 9>/run/lock/vmpod-build-image.lock
flock 9
export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/tests/cluster/containers.conf}
t0=$(date +%s)
hash() { sha256sum | cut -c1-16; }
# The input hash an image was built from (empty when the image is missing).
built_from() { podman image inspect --format '{{ index .Labels "io.vmpod.inputs" }}' "$1" 2>/dev/null || true; }
image_id() { podman image inspect --format '{{ .Id }}' "$1" 2>/dev/null || true; }
# Build image $1 from context $2 with Dockerfile $3 and input hash $4 (further podman build
# flags after), unless it was built from these inputs; the image it replaces is removed.
build() {
    local tag=$1 context=$2 dockerfile=$3 inputs=$4; shift 4
    if [ "$(built_from "$tag")" = "$inputs" ]; then
        echo "build-image: $tag up to date ($inputs)"
        return
    fi
    local old; old=$(image_id "$tag")
    echo "build-image: building $tag ($inputs)"
    podman build --quiet --network=none --pull=never --label io.vmpod.inputs="$inputs" \
        "$@" -f "$dockerfile" -t "$tag" "$context" >/dev/null
    if [ -n "$old" ] && [ "$old" != "$(image_id "$tag")" ]; then
        podman rmi "$old" >/dev/null 2>&1 || true # still used by a container: stays
    fi
}

# --- 1. Debian 12 base: runtime packages from Debian, no registry -------------------------
suite=bookworm
packages=libvirt-daemon,libvirt-daemon-driver-qemu,libvirt-clients,qemu-system-x86,qemu-utils,ovmf,ca-certificates,nftables
base_key=$(printf '%s %s %s' "$suite" "$packages" "$(sed -n '/^# --- 1\./,/^# --- 2\./p' "$0")" | hash)
base=localhost/vmpod-base:$base_key
if ! podman image exists "$base"; then
    tarball=$cache/base-$base_key.tar
    if [ ! -f "$tarball" ]; then
        echo "build-image: mmdebstrap $suite base ($packages)"
        rm -f "$cache"/base-*.tar
        # policy-rc.d keeps package scripts from starting daemons; docs and manuals are
        # dropped (as debian:12-slim does).
        mmdebstrap --variant=apt --format=tar --include="$packages" \
            --aptopt='APT::Install-Recommends "false"' \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
            "$suite" "$tarball.tmp"
        mv "$tarball.tmp" "$tarball"
    fi
    podman import --quiet "$tarball" "$base" >/dev/null
fi
echo "build-image: base $base"

# --- 2. localhost/vmpod:dev ----------------------------------------------------------------
bins=(vmpod-launcher vmpod-virt libvmpod_preload.so vmpod-handler vmpodctl)
echo "build-image: cargo build --profile $profile"
cargo build --quiet --profile "$profile" -p vmpod-launcher -p vmpod-virt -p vmpod-handler -p vmpod \
    --bin vmpod-launcher --bin vmpod-virt --bin vmpod-handler --bin vmpodctl
cargo build --quiet --profile "$profile" -p vmpod-preload
ctx=$cache/context
rm -rf "$ctx"; mkdir -p "$ctx/out"
for b in "${bins[@]}"; do
    # Debug info is most of a dev binary's size; the image does not need it.
    objcopy --strip-debug "$target/$profile_dir/$b" "$ctx/out/$b"
done
inputs=$( (cd "$ctx/out" && sha256sum "${bins[@]}"; sha256sum < "$root/manifests/launcher.Dockerfile"; echo "$base") | hash)
build localhost/vmpod:dev "$ctx" "$root/manifests/launcher.Dockerfile" "$inputs" \
    --build-arg BASE="$base" --build-arg BINARIES=prebuilt
rm -rf "$ctx"

# --- 3. localhost/vmpod-testguest:dev --------------------------------------------------------
bash "$root/tests/guest/build.sh" >/dev/null
guest=$target/guest
gctx=$cache/testguest
rm -rf "$gctx"; mkdir -p "$gctx/boot" "$gctx/disk"
cp "$guest/vmlinuz" "$gctx/boot/vmlinuz"
cp "$guest/initramfs.img" "$gctx/boot/initramfs.img"
# A small raw disk with a marker the tests can look for (KubeVirt's containerDisk layout:
# one image file under /disk/).
truncate -s 1M "$gctx/disk/disk.img"
printf 'vmpod-testguest containerDisk\n' | dd of="$gctx/disk/disk.img" conv=notrunc status=none
ginputs=$( (cd "$gctx" && sha256sum boot/vmlinuz boot/initramfs.img disk/disk.img; sha256sum < "$root/manifests/testguest.Dockerfile") | hash)
build localhost/vmpod-testguest:dev "$gctx" "$root/manifests/testguest.Dockerfile" "$ginputs"
rm -rf "$gctx"
echo "build-image: done in $(( $(date +%s) - t0 )) s"
