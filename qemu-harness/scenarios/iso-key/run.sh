# iso-key: the key is embedded in the boot image. The machine boots from a
# CD-ROM (ISOLINUX) whose initramfs was keyed with
# `statelessctl key initramfs`; the root is the shared image under the
# overlay. No network key source is involved.
# shellcheck shell=bash

scenario() {
    local srv=$SDIR/srv iso=$SDIR/iso cmdline
    mkdir -p "$srv" "$iso/isolinux"
    make_bundle "$srv/v1/nodes/$NODE_UUID/bundle" 9 "iso generation 9" --key "$WORK/site/site.key"
    start_nginx cfg "$srv"
    "$CTL" key initramfs --key "$WORK/site/site.key" --initrd "$WORK/initrd-shell.img" -o "$iso/isolinux/initrd.img" > /dev/null
    cp "$KERNEL" "$iso/isolinux/vmlinuz"
    cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$iso/isolinux/"
    cmdline="$(base_cmdline) root=/dev/vda ro rd.skipfsck rd.stateless.overlay=1 rd.stateless.server=http://$HOST_FROM_GUEST:$NGINX_PORT"
    printf 'DEFAULT sltest\nTIMEOUT 1\nLABEL sltest\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND %s\n' "$cmdline" \
        > "$iso/isolinux/isolinux.cfg"
    xorriso -as mkisofs -quiet -o "$SDIR/boot.iso" -V SLTEST -b isolinux/isolinux.bin -c isolinux/boot.cat \
        -no-emul-boot -boot-load-size 4 -boot-info-table "$iso" 2> "$SDIR/xorriso.log"
    rm -rf "$iso"
    set_net
    boot boot1 -cdrom "$SDIR/boot.iso" -boot d \
        -drive "file=$WORK/root.img,format=raw,if=virtio,snapshot=on" "${NET[@]}"
    expect_applied server "iso generation 9"
    expect "key source" "$(status_field .key_source)" "key directory /etc/stateless/keys"
    TIMES="loader $(loader_seconds) s, boot $BOOT_SECONDS s"
}
