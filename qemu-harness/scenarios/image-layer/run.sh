# image-layer: an image bundle (issue 18; docs/bundle-format.md, "Image
# payload") on the harness's Debian 6.1 kernel, which mounts EROFS only from
# block devices: the loader verifies the image whole in the overlay's tmpfs,
# binds it to a loop device (LOOP_CONFIGURE), mounts it read-only and
# rebuilds the overlay root as upper : image : base.
#   boot 1: gen 3, packed with `bundle pack --as image` (lz4): the marker file
#           comes from the image, its whiteout hides the base image's
#           /etc/sltest/delete-me, status.json has the "mount images" stage
# The root image is shared and read-only; its checksum must not change.
# The capability and 100 MiB checks of issue 18 are on the host only
# (loader/tests/image.rs, bench/image): the small root has no getcap.
# shellcheck shell=bash

scenario() {
    local srv=$SDIR/srv url cmdline sum_before
    mkdir -p "$srv"
    sum_before=$(sha256sum < "$WORK/root.img")
    make_bundle "$srv/v1/nodes/$NODE_UUID/bundle" 3 "image-layer generation 3" --key "$WORK/site/site.key" \
        --as image --compress lz4
    start_nginx cfg "$srv"
    url=http://$HOST_FROM_GUEST:$NGINX_PORT
    embed_key
    cmdline="$(base_cmdline) root=/dev/vda ro rd.skipfsck rd.stateless.overlay=1 rd.stateless.server=$url rd.stateless.timeout=30"
    boot boot1 -kernel "$KERNEL" -initrd "$SDIR/initrd-key.img" -append "$cmdline" \
        -drive "file=$WORK/root.img,format=raw,if=virtio" -netdev "user,id=n0" -device "virtio-net-pci,netdev=n0"
    expect_applied server "image-layer generation 3"
    expect "mount images stage" "$(status_field '[.timings_ms[] | select(.[0] == "mount images")] | length')" "1"
    expect_console "^stateless: applied generation 3 from " "boot 1 console line"
    expect "root image checksum" "$(sha256sum < "$WORK/root.img")" "$sum_before"
    TIMES="boot ${BOOT_SECONDS}s, loader $(loader_seconds)s"
}
