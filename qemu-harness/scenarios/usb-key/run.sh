# usb-key: an encrypted bundle whose key is on a virtual USB stick (xHCI +
# usb-storage), made with `statelessctl key usb --image`. No key in the boot
# image; rd.stateless.key=auto finds the stick labelled STATELESS.
# Boot 2 is an air-gapped site: no network device at all; the same stick
# also carries the bundles (a copy of a data directory's v1/ tree), read with
# rd.stateless.server=media:STATELESS and verified as if fetched.
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

    local media=$SDIR/media
    make_bundle "$media/v1/nodes/$NODE_UUID/bundle" 9 "usb media generation 9" --key "$WORK/site/site.key"
    mcopy -s -i "$SDIR/usb.img" "$media/v1" ::/
    cmdline="$(base_cmdline) root=/dev/vda ro rd.skipfsck rd.stateless.overlay=1 rd.stateless.server=media:STATELESS"
    boot boot2-media -kernel "$KERNEL" -initrd "$WORK/initrd-shell.img" -append "$cmdline" \
        -drive "file=$WORK/root.img,format=raw,if=virtio,snapshot=on" -nic none \
        -drive "if=none,id=stick,format=raw,file=$SDIR/usb.img" -device qemu-xhci -device usb-storage,drive=stick
    expect_applied media "usb media generation 9"
    expect "media key source" "$(status_field .key_source)" "USB stick STATELESS"
    expect "media layer" "$(status_field '.layers[0].source')" "media"
    TIMES="$TIMES; no network: loader $(loader_seconds) s, boot $BOOT_SECONDS s"
}
