# pxe: a real network boot. The firmware's iPXE gets an iPXE script from
# QEMU's user-mode DHCP/TFTP, fetches kernel and initramfs over TFTP, and
# boots with no disk at all: the root is a squashfs carried in the initramfs,
# read-only, so the loader lays an overlay over it. Server from the command
# line, unencrypted bundle over plain http (rd.stateless.insecure).
# shellcheck shell=bash

scenario() {
    local tftp=$SDIR/tftp srv=$SDIR/srv
    mkdir -p "$tftp/sltest" "$srv"
    make_bundle "$srv/v1/nodes/$NODE_UUID/bundle" 3 "pxe generation 3" --unencrypted
    start_nginx cfg "$srv"

    # The root image rides as an uncompressed cpio in front of dracut's
    # compressed initramfs (the kernel stops at anything after a zstd archive).
    cp "$WORK/root.squashfs" "$tftp/sltest/root.squashfs"
    (cd "$tftp" && printf "sltest\nsltest/root.squashfs\n" | cpio -o -H newc --quiet) > "$SDIR/root.cpio"
    cat "$SDIR/root.cpio" "$WORK/initrd-shell.img" > "$tftp/initrd.img"
    rm -rf "$tftp/sltest"
    cp "/boot/vmlinuz-$(kernel_version)" "$tftp/vmlinuz"
    cat > "$tftp/boot.ipxe" << IPXE
#!ipxe
kernel tftp://$HOST_FROM_GUEST/vmlinuz $(base_cmdline) root=sltest:/sltest/root.squashfs rd.stateless.server=http://$HOST_FROM_GUEST:$NGINX_PORT rd.stateless.insecure rd.stateless.key=none
initrd tftp://$HOST_FROM_GUEST/initrd.img
boot
IPXE

    boot boot1 -boot n -netdev "user,id=n0,tftp=$tftp,bootfile=boot.ipxe" -device virtio-net-pci,netdev=n0
    expect_applied server "pxe generation 3"
    expect "root file system" "$(marker ROOTFS)" "overlay"
    # The upper layer takes huge pages for large files (Debian's kernel has
    # huge-page tmpfs).
    expect "upper tmpfs options" "$(marker UPPER | grep -o 'huge=within_size')" "huge=within_size"
    expect_console "stateless: .*applied generation 3 from http://$HOST_FROM_GUEST:$NGINX_PORT" "loader console line"
    TIMES="loader $(loader_seconds) s, boot $BOOT_SECONDS s"
}
