#!/usr/bin/env bash
# Builds the vmpod test guest: a Debian cloud kernel and a busybox initramfs, from the
# Debian packages linux-image-cloud-amd64 (the concrete linux-image-*-cloud-amd64 it
# depends on) and busybox-static. Nothing is installed on the host: the .deb files are
# fetched with `apt-get download` and unpacked with `dpkg-deb -x` under target/guest/.
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
if [ -z "$(candidate linux-image-cloud-amd64)" ] || [ -z "$(candidate busybox-static)" ]; then
    apt-get update -qq
fi
kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n 1)
[ -n "$kpkg" ] || { echo "guest: cannot resolve the kernel package behind linux-image-cloud-amd64" >&2; exit 1; }
kver=$(candidate "$kpkg"); bver=$(candidate busybox-static)

inputs="$kpkg=$kver busybox-static=$bver $(cd "$here" && sha256sum build.sh init udhcpc.script modules | sha256sum | cut -d' ' -f1)"
if [ "${VMPOD_GUEST_FORCE:-0}" != 1 ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.img" ] \
    && [ "$(cat "$out/.inputs" 2>/dev/null)" = "$inputs" ]; then
    echo "guest: up to date ($kpkg $kver, busybox $bver) in $out"
    exit 0
fi
echo "guest: building from $kpkg $kver and busybox-static $bver"

debs=$out/debs; mkdir -p "$debs"
download() {
    (cd "$debs" && rm -f ./*.deb && apt-get download -q -o APT::Sandbox::User=root "$kpkg=$kver" "busybox-static=$bver" >/dev/null)
}
if ! download; then
    # Stale package lists name versions the mirror no longer has: refresh and resolve again.
    apt-get update -qq
    kver=$(candidate "$kpkg"); bver=$(candidate busybox-static)
    inputs="$kpkg=$kver busybox-static=$bver ${inputs##* }"
    download
fi
unpacked=$out/unpacked; rm -rf "$unpacked"; mkdir -p "$unpacked"
for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$unpacked"; done

release=$(basename "$(find "$unpacked/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)")
[ -n "$release" ] || { echo "guest: no modules directory in $kpkg" >&2; exit 1; }
depmod -b "$unpacked" "$release"

stage=$out/stage; rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc/vmpod,proc,sys,dev,run,tmp,mnt,lib/modules/"$release"}
cp "$unpacked/bin/busybox" "$stage/bin/busybox"
for applet in $("$stage/bin/busybox" --list-full); do
    [ -e "$stage/$applet" ] || ln -s /bin/busybox "$stage/$applet"
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
cp "$here/modules" "$stage/etc/vmpod/modules"
chmod 0755 "$stage/init" "$stage/etc/vmpod/udhcpc.script"

(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -1 >"$out/initramfs.img.tmp"
mv "$out/initramfs.img.tmp" "$out/initramfs.img"
cp "$unpacked/boot/vmlinuz-$release" "$out/vmlinuz"
echo "$release" >"$out/KERNEL"
rm -rf "$unpacked" "$stage"
echo "$inputs" >"$out/.inputs"
echo "guest: built $out/vmlinuz ($release) and $out/initramfs.img ($(du -h "$out/initramfs.img" | cut -f1))"
