# The vmpod image: vmpod-launcher (the launcher pods' entrypoint), vmpod-handler (controller
# and node daemon) and vmpodctl, on Debian 12 with libvirt and QEMU.
#
#   docker build -f manifests/launcher.Dockerfile -t vmpod:dev .
#
# Stage 1 builds the workspace; stage 2 is the runtime.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --locked \
 && install -D -t /out target/release/vmpod-launcher target/release/vmpod-virt \
      target/release/vmpod-handler target/release/vmpodctl

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils \
      ovmf ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# Seed QEMU's capabilities cache at build time: probing qemu-system-x86_64 costs seconds of
# every launcher start otherwise. libvirtd writes the cache on the first capabilities query;
# the XML files are copied to /var/cache/vmpod/qemu-capabilities, the seed vmpod-launcher
# copies into its private libvirt cache (VMPOD_CAPS_SEED, vmpod::domain::daemons). libvirt
# re-probes when QEMU's or its own ctime differs from the cached one (e.g. when a node
# extracts the image layers anew); the launcher then writes the fresh result back to the
# seed.
RUN set -eu; \
    libvirtd --daemon --pid-file /tmp/libvirtd.pid; \
    for i in $(seq 1 100); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.1; done; \
    virsh -c qemu:///system domcapabilities --virttype qemu >/dev/null; \
    kill "$(cat /tmp/libvirtd.pid)"; \
    mkdir -p /var/cache/vmpod/qemu-capabilities; \
    cp /var/cache/libvirt/qemu/capabilities/*.xml /var/cache/vmpod/qemu-capabilities/
ENTRYPOINT ["vmpod-launcher"]
