# localhost/vmpod-testguest:dev: the test guest (tests/guest/) as an image, FROM scratch.
#   /boot/vmlinuz, /boot/initramfs.img   for kernelBoot.container
#   /disk/disk.img                       a small raw disk, KubeVirt's containerDisk layout
# Built by `bash manifests/build-image.sh` from a context holding boot/ and disk/.
FROM scratch
COPY boot/ /boot/
COPY disk/ /disk/
