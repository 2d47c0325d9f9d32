# The vmpod image: vmpod-launcher (the launcher pods' entrypoint), vmpod-virt, vmpod-handler
# (controller and node daemon) and vmpodctl, on Debian 12 with libvirt and QEMU.
#
# With a registry (BuildKit; the context is the repo root):
#   docker build -f manifests/launcher.Dockerfile -t vmpod:dev .
# Offline (what `bash manifests/build-image.sh` does): an imported mmdebstrap base that
# already holds the runtime packages, and binaries built on the host:
#   podman build --network=none --build-arg BASE=localhost/vmpod-base:... \
#     --build-arg BINARIES=prebuilt -f manifests/launcher.Dockerfile CONTEXT
#   where CONTEXT/out/ holds the four binaries.
#
# BASE: the Debian 12 runtime base. BUILDER: the Rust toolchain image for the build stage.
# BINARIES: `build` (compile here) or `prebuilt` (take CONTEXT/out/).
ARG BASE=docker.io/library/debian:12-slim
ARG BUILDER=docker.io/library/rust:1.95-bookworm
ARG BINARIES=build

FROM ${BUILDER} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --locked \
 && install -D -t /out target/release/vmpod-launcher target/release/vmpod-virt \
      target/release/libvmpod_preload.so target/release/vmpod-handler target/release/vmpodctl

FROM scratch AS prebuilt
COPY out/ /out/

FROM ${BINARIES} AS binaries

FROM ${BASE}
# Installs only what the base lacks: nothing for the offline base, everything for
# debian:12-slim.
RUN set -eu; \
    missing=; \
    for p in libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 \
             qemu-utils ovmf ca-certificates nftables; do \
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends $missing \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=binaries /out/ /usr/local/bin/
# The account Debian's libvirtd resolves at start-up (libvirt-daemon-system would create it):
# uid/gid 107, QEMU's account in KubeVirt's images too.
RUN getent group libvirt-qemu >/dev/null || groupadd --system --gid 107 libvirt-qemu; \
    getent passwd libvirt-qemu >/dev/null \
      || useradd --system --uid 107 --gid 107 --no-create-home --home-dir /var/lib/libvirt \
           --shell /usr/sbin/nologin libvirt-qemu
# Seed QEMU's capabilities cache at build time: probing qemu-system-x86_64 costs seconds of
# every launcher start otherwise. libvirtd writes the cache on the first capabilities query;
# the XML files are copied to /var/cache/vmpod/qemu-capabilities, the seed vmpod-launcher
# copies into its private libvirt cache (VMPOD_CAPS_SEED, vmpod::domain::daemons). libvirt
# re-probes when QEMU's or its own ctime differs from the cached one (e.g. when a node
# extracts the image layers anew); the launcher then writes the fresh result back to the
# seed.
RUN set -eu; \
    mkdir -p /var/log/libvirt; \
    libvirtd --daemon --pid-file /tmp/libvirtd.pid; \
    for i in $(seq 1 100); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.1; done; \
    virsh -c qemu:///system domcapabilities --virttype qemu >/dev/null; \
    kill "$(cat /tmp/libvirtd.pid)"; \
    mkdir -p /var/cache/vmpod/qemu-capabilities; \
    cp /var/cache/libvirt/qemu/capabilities/*.xml /var/cache/vmpod/qemu-capabilities/; \
    test -s "$(ls /var/cache/vmpod/qemu-capabilities/*.xml | head -n 1)"
ENTRYPOINT ["vmpod-launcher"]
