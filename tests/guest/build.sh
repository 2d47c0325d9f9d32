#!/usr/bin/env bash
# Builds the vmpod test guest: a Debian cloud kernel and a busybox initramfs, from the
# Debian packages linux-image-cloud-amd64 (the concrete linux-image-*-cloud-amd64 it
# depends on) and busybox-static, plus dhcpcd-base (the guest's DHCPv6 client, run only
# with vmpod.ipv6=1) and the libc6 it links. Nothing is installed on the host: the .deb
# files are fetched with `apt-get download` and unpacked with `dpkg-deb -x` under
# target/guest/.
#
# Output: target/guest/vmlinuz, target/guest/initramfs.img (and target/guest/KERNEL with
# the kernel release). Idempotent: rebuilds only when the package versions or the files
# in tests/guest/ change. Set VMPOD_GUEST_FORCE=1 to rebuild anyway.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${CARGO_TARGET_DIR:-$root/target}/guest
mkdir -p "$out"
# Parallel callers (tests that build on demand) wait for each other.
exec 9>"$out/.lock"
flock 9

candidate() { apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)' || true; }
extra_pkgs="dhcpcd-base libc6"
missing=0
for p in linux-image-cloud-amd64 busybox-static $extra_pkgs; do [ -n "$(candidate "$p")" ] || missing=1; done
[ "$missing" = 0 ] || apt-get update -qq
kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n 1)
[ -n "$kpkg" ] || { echo "guest: cannot resolve the kernel package behind linux-image-cloud-amd64" >&2; exit 1; }
# "pkg=version ..." of the packages besides the kernel and busybox.
extra_versions() { for p in $extra_pkgs; do printf '%s=%s ' "$p" "$(candidate "$p")"; done; }
kver=$(candidate "$kpkg"); bver=$(candidate busybox-static); xvers=$(extra_versions)

files_hash=$(cd "$here" && sha256sum build.sh init udhcpc.script dhcpcd.script dhcpcd.conf modules | sha256sum | cut -d' ' -f1)
inputs="$kpkg=$kver busybox-static=$bver $xvers$files_hash"
if [ "${VMPOD_GUEST_FORCE:-0}" != 1 ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.img" ] \
    && [ "$(cat "$out/.inputs" 2>/dev/null)" = "$inputs" ]; then
    echo "guest: up to date ($kpkg $kver, busybox $bver, $xvers) in $out"
    exit 0
fi
echo "guest: building from $kpkg $kver, busybox-static $bver and $xvers"

debs=$out/debs; mkdir -p "$debs"
download() {
    # shellcheck disable=SC2086
    (cd "$debs" && rm -f ./*.deb && apt-get download -q -o APT::Sandbox::User=root "$kpkg=$kver" "busybox-static=$bver" $xvers >/dev/null)
}
if ! download; then
    # Stale package lists name versions the mirror no longer has: refresh and resolve again.
    apt-get update -qq
    kver=$(candidate "$kpkg"); bver=$(candidate busybox-static); xvers=$(extra_versions)
    inputs="$kpkg=$kver busybox-static=$bver $xvers$files_hash"
    download
fi
unpacked=$out/unpacked; rm -rf "$unpacked"; mkdir -p "$unpacked"
for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$unpacked"; done

release=$(basename "$(find "$unpacked/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)")
[ -n "$release" ] || { echo "guest: no modules directory in $kpkg" >&2; exit 1; }
depmod -b "$unpacked" "$release"

stage=$out/stage; rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc/vmpod,proc,sys,dev,run,tmp,mnt,var/lib/dhcpcd,lib/modules/"$release"}
cp "$unpacked/bin/busybox" "$stage/bin/busybox"
for applet in $("$stage/bin/busybox" --list-full); do
    [ -e "$stage/$applet" ] || ln -s /bin/busybox "$stage/$applet"
done

# dhcpcd and the shared objects it loads (ldd names them as this host resolves them),
# each taken from the unpacked packages at the same path (or its /usr twin), so the
# guest's libc is libc6's, not the host's. No hooks or plugins: the guest passes its own
# script (-c) and config (-f), and dhcpcd runs without its udev plugin.
cp "$unpacked/usr/sbin/dhcpcd" "$stage/usr/sbin/dhcpcd"
# in_unpacked PATH: PATH inside the unpacked packages, symlinks followed within them (an
# absolute link target names a path in the package, not on this host).
in_unpacked() {
    local f=$unpacked$1 n=0 t
    while [ -L "$f" ] && [ "$n" -lt 10 ]; do
        t=$(readlink "$f")
        case $t in /*) f=$unpacked$t ;; *) f=$(dirname "$f")/$t ;; esac
        n=$((n + 1))
    done
    [ -f "$f" ] && echo "$f"
}
for lib in $(ldd "$unpacked/usr/sbin/dhcpcd" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}'); do
    src=$(in_unpacked "$lib" || in_unpacked "/usr$lib" || in_unpacked "${lib#/usr}") ||
        { echo "guest: dhcpcd needs $lib, which none of $extra_pkgs ships" >&2; exit 1; }
    mkdir -p "$stage$(dirname "$lib")"
    cp "$src" "$stage$lib"
done

# The listed modules and everything they depend on, then a modules.dep for the guest.
mods=$(sed -e 's/#.*//' -e '/^ *$/d' "$here/modules" | awk '{print $2}')
for m in $mods; do
    if grep -qE "/$m\.ko\$" "$unpacked/lib/modules/$release/modules.builtin"; then
        echo "guest: $m is built in"; continue
    fi
    files=$(modprobe -d "$unpacked" -S "$release" --show-depends "$m" | awk '$1 == "insmod" {print $2}')
    [ -n "$files" ] || { echo "guest: module $m not found in $kpkg" >&2; exit 1; }
    for f in $files; do
        rel=${f#"$unpacked"/}
        mkdir -p "$stage/$(dirname "$rel")"
        cp "$f" "$stage/$rel"
    done
done
cp "$unpacked/lib/modules/$release"/modules.{builtin,builtin.modinfo,order} "$stage/lib/modules/$release/"
depmod -b "$stage" "$release"

cp "$here/init" "$stage/init"
cp "$here/udhcpc.script" "$stage/etc/vmpod/udhcpc.script"
cp "$here/dhcpcd.script" "$stage/etc/vmpod/dhcpcd.script"
cp "$here/dhcpcd.conf" "$stage/etc/vmpod/dhcpcd.conf"
cp "$here/modules" "$stage/etc/vmpod/modules"
chmod 0755 "$stage/init" "$stage/etc/vmpod/udhcpc.script" "$stage/etc/vmpod/dhcpcd.script"

(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -1 >"$out/initramfs.img.tmp"
mv "$out/initramfs.img.tmp" "$out/initramfs.img"
cp "$unpacked/boot/vmlinuz-$release" "$out/vmlinuz"
echo "$release" >"$out/KERNEL"
rm -rf "$unpacked" "$stage"
echo "$inputs" >"$out/.inputs"
echo "guest: built $out/vmlinuz ($release) and $out/initramfs.img ($(du -h "$out/initramfs.img" | cut -f1))"
