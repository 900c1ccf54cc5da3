# usb-key: an encrypted bundle whose key is on a virtual USB stick (xHCI +
# usb-storage), made with `statelessctl key usb --image`. No key in the boot
# image; rd.stateless.key=auto finds the stick labelled STATELESS.
# shellcheck shell=bash

scenario() {
    local srv=$SDIR/srv cmdline
    mkdir -p "$srv"
    make_bundle "$srv/v1/nodes/$NODE_UUID/bundle" 8 "usb generation 8" --key "$WORK/site/site.key"
    start_nginx cfg "$srv"
    "$CTL" key usb --key "$WORK/site/site.key" --image "$SDIR/usb.img" > /dev/null
    cmdline="$(base_cmdline) root=/dev/vda ro rd.skipfsck rd.stateless.overlay=1 rd.stateless.server=http://$HOST_FROM_GUEST:$NGINX_PORT"
    set_net
    boot boot1 -kernel "$KERNEL" -initrd "$WORK/initrd-shell.img" -append "$cmdline" \
        -drive "file=$WORK/root.img,format=raw,if=virtio,snapshot=on" "${NET[@]}" \
        -drive "if=none,id=stick,format=raw,file=$SDIR/usb.img" -device qemu-xhci -device usb-storage,drive=stick
    expect_applied server "usb generation 8"
    expect "key source" "$(status_field .key_source)" "USB stick STATELESS"
    TIMES="loader $(loader_seconds) s, boot $BOOT_SECONDS s"
}
