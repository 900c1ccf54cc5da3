# image-layer: an image bundle (issue 18; docs/bundle-format.md, "Image
# payload") on the harness's Debian 6.1 kernel, which mounts EROFS only from
# block devices: the loader verifies the image whole in the overlay's tmpfs,
# binds it to a loop device (LOOP_CONFIGURE), mounts it read-only and
# rebuilds the overlay root as upper : image : base.
#   boot 1: gen 3, packed with `bundle pack --as image` (lz4) from a tree of
#           100 MiB (100 files of 1 MiB that lz4 cannot shrink, checked in
#           the guest against their SHA-256 sums): the marker file comes
#           from the image, its whiteout hides the base image's
#           /etc/sltest/delete-me, a file carries a capability
#           (cap_net_bind_service, read back with getcap in the guest),
#           status.json has the "mount images" stage
# The root image is shared and read-only; its checksum must not change.
# shellcheck shell=bash

scenario() {
    local srv=$SDIR/srv url cmdline sum_before
    mkdir -p "$srv"
    sum_before=$(sha256sum < "$WORK/root.img")
    local tree=$SDIR/image-tree i
    mkdir -p "$tree/etc/sltest" "$tree/opt/large" "$srv/v1/nodes/$NODE_UUID"
    echo "image-layer generation 3" > "$tree/etc/sltest/marker"
    for i in $(seq -w 1 100); do
        head -c 1048576 /dev/urandom > "$tree/opt/large/f$i"
    done
    (cd "$tree/opt/large" && sha256sum f*) > "$tree/etc/sltest/large.sha256"
    cp /bin/busybox "$tree/etc/sltest/capped"
    setcap cap_net_bind_service+ep "$tree/etc/sltest/capped"
    "$CTL" bundle pack "$tree" -o "$srv/v1/nodes/$NODE_UUID/bundle" --generation 3 --key "$WORK/site/site.key" \
        --delete /etc/sltest/delete-me --as image --compress lz4 > /dev/null
    rm -rf "$tree"
    start_nginx cfg "$srv"
    url=http://$HOST_FROM_GUEST:$NGINX_PORT
    embed_key
    cmdline="$(base_cmdline) root=/dev/vda ro rd.skipfsck rd.stateless.overlay=1 rd.stateless.server=$url rd.stateless.timeout=180"
    boot boot1 -kernel "$KERNEL" -initrd "$SDIR/initrd-key.img" -append "$cmdline" \
        -drive "file=$WORK/root.img,format=raw,if=virtio" -netdev "user,id=n0" -device "virtio-net-pci,netdev=n0"
    expect_applied server "image-layer generation 3"
    expect "mount images stage" "$(status_field '[.timings_ms[] | select(.[0] == "mount images")] | length')" "1"
    expect "capability from the image" "$(marker CAP)" "/etc/sltest/capped cap_net_bind_service=ep"
    expect "100 MiB from the image" "$(marker LARGE)" "ok 100"
    expect_console "^stateless: applied generation 3 from " "boot 1 console line"
    expect "root image checksum" "$(sha256sum < "$WORK/root.img")" "$sum_before"
    TIMES="boot ${BOOT_SECONDS}s, loader $(loader_seconds)s, bundle $(($(stat -c %s "$srv/v1/nodes/$NODE_UUID/bundle") >> 20)) MiB"
}
