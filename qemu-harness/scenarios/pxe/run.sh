# pxe: a real network boot of a diskless blade. The firmware's iPXE gets an
# iPXE script from QEMU's user-mode DHCP/TFTP, fetches kernel and initramfs
# over TFTP, and boots with no disk at all: the root is a squashfs carried
# in the initramfs, read-only, so the loader lays an overlay over it. The
# server is the project's own (`statelessctl serve`, plain HTTP: the bundle
# is encrypted and authenticated under the key in the boot image), given on
# the command line. After the boot the server must hold the node's boot
# report, signed with the node's push key, with the generation it booted and
# what the loader's probe found: the TPM (swtpm) and the USB stick the
# machine has, and no cache disk.
# shellcheck shell=bash

scenario() {
    local tftp=$SDIR/tftp data=$SDIR/data report
    mkdir -p "$tftp/sltest" "$data"
    make_bundle "$data/v1/nodes/$NODE_UUID/bundle" 3 "pxe generation 3" \
        --key "$WORK/site/site.key" --scope "node:$NODE_UUID"
    # The node may report: its push key is derived from the key it boots with.
    "$CTL" approve --data "$data" "$NODE_UUID" --push-key "$WORK/site/site.key" > /dev/null
    start_serve cfg "$data"

    # The root image rides as an uncompressed cpio in front of dracut's
    # compressed initramfs (the kernel stops at anything after a zstd archive).
    cp "$WORK/root.squashfs" "$tftp/sltest/root.squashfs"
    (cd "$tftp" && printf "sltest\nsltest/root.squashfs\n" | cpio -o -H newc --quiet) > "$SDIR/root.cpio"
    embed_key
    cat "$SDIR/root.cpio" "$SDIR/initrd-key.img" > "$tftp/initrd.img"
    rm -rf "$tftp/sltest"
    cp "/boot/vmlinuz-$(kernel_version)" "$tftp/vmlinuz"
    cat > "$tftp/boot.ipxe" << IPXE
#!ipxe
kernel tftp://$HOST_FROM_GUEST/vmlinuz $(base_cmdline) root=sltest:/sltest/root.squashfs rd.stateless.server=http://$HOST_FROM_GUEST:$SERVE_PORT
initrd tftp://$HOST_FROM_GUEST/initrd.img
boot
IPXE

    # A blank USB stick and a TPM, for the probe to find.
    truncate -s 16M "$SDIR/stick.img"
    start_swtpm
    boot boot1 -boot n -netdev "user,id=n0,tftp=$tftp,bootfile=boot.ipxe" -device virtio-net-pci,netdev=n0 \
        "${TPM_ARGS[@]}" -drive "if=none,id=stick,format=raw,file=$SDIR/stick.img" -device qemu-xhci \
        -device usb-storage,drive=stick
    expect_applied server "pxe generation 3"
    expect "root file system" "$(marker ROOTFS)" "overlay"
    # The upper layer takes huge pages for large files (Debian's kernel has
    # huge-page tmpfs).
    expect "upper tmpfs options" "$(marker UPPER | grep -o 'huge=within_size')" "huge=within_size"
    expect_console "stateless: .*applied generation 3 from http://$HOST_FROM_GUEST:$SERVE_PORT" "loader console line"

    # What the admin sees: the node, the generation it booted, and its probe.
    expect "nodes: generation and result" \
        "$("$CTL" nodes --data "$data" --json "$NODE_UUID" | jq -r '.[0] | "\(.generation) \(.result) \(.source)"')" \
        "3 applied server"
    report=$("$CTL" nodes --data "$data" --json --reports "$NODE_UUID" | jq -c '.[0].report.capabilities')
    expect "report: TPM" "$(jq -r '"\(.tpm.present) \(.tpm.version)"' <<< "$report")" "true 2.0"
    expect "report: USB storage" "$(jq -r '.usb_storage | length' <<< "$report")" "1"
    expect "report: cache disk" "$(jq -r '.cache.found' <<< "$report")" "false"
    expect "report: loader version" "$(jq -r '.loader_version' <<< "$report")" "$("$CTL" --version | awk '{print $2}')"
    TIMES="loader $(loader_seconds) s, boot $BOOT_SECONDS s, report with tpm $(jq -r '.tpm.version' <<< "$report"), usb $(jq -r '.usb_storage | join(",")' <<< "$report")"
}
