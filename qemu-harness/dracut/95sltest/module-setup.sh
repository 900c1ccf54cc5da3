#!/bin/bash
# Test-only dracut module for the QEMU harness (not part of the product):
# root=sltest:PATH mounts a root image carried inside the initramfs (the pxe
# scenario has no disk), read-only, the way a squashfs network root would be.

# moddir comes from dracut.
# shellcheck disable=SC2154

check() {
    return 255
}

depends() {
    return 0
}

installkernel() {
    hostonly='' instmods squashfs loop
}

install() {
    inst_hook cmdline 30 "$moddir/sltest-cmdline.sh"
    inst_hook mount 10 "$moddir/sltest-mount.sh"
    inst_multiple losetup
}
