# offline-reboot: the last-known-good cache on a virtual disk.
#   boot 1: server has generation 4: fetched, applied, cached
#   boot 2: server has generation 5: fetched, applied; 4 moves to the previous slot
#   boot 3: server stopped: cached generation 5 applied
#   boot 4: current slot corrupted on the disk: previous generation 4 applied
# Every boot uses the overlay over a read-only mount of the shared root image,
# whose checksum must not change.
# shellcheck shell=bash

scenario() {
    local srv=$SDIR/srv cache=$SDIR/cache.img url cmdline sum_before
    mkdir -p "$srv"
    truncate -s 32M "$cache"
    mkfs.ext4 -q -L slcache "$cache"
    sum_before=$(sha256sum < "$WORK/root.img")

    make_bundle "$srv/v1/nodes/$NODE_UUID/bundle" 4 "offline generation 4" --key "$WORK/site/site.key"
    start_nginx cfg "$srv"
    url=http://$HOST_FROM_GUEST:$NGINX_PORT
    embed_key
    cmdline="$(base_cmdline) root=/dev/vda ro rd.skipfsck rd.stateless.overlay=1 rd.stateless.server=$url rd.stateless.cache=LABEL=slcache rd.stateless.timeout=8"
    local disks=(-drive "file=$WORK/root.img,format=raw,if=virtio"
        -drive "file=$cache,format=raw,if=virtio" -netdev "user,id=n0" -device "virtio-net-pci,netdev=n0")

    boot boot1 -kernel "$KERNEL" -initrd "$SDIR/initrd-key.img" -append "$cmdline" "${disks[@]}"
    expect_applied server "offline generation 4"
    expect "boot 1 cache slot" "$(cache_slot "$cache" current)" "4"
    local t1="$BOOT_SECONDS" l1
    l1=$(loader_seconds)

    make_bundle "$srv/v1/nodes/$NODE_UUID/bundle" 5 "offline generation 5" --key "$WORK/site/site.key"
    boot boot2 -kernel "$KERNEL" -initrd "$SDIR/initrd-key.img" -append "$cmdline" "${disks[@]}"
    expect_applied server "offline generation 5"
    expect "boot 2 previous slot" "$(cache_slot "$cache" previous)" "4"
    local t2="$BOOT_SECONDS" l2
    l2=$(loader_seconds)

    stop_servers
    boot boot3 -kernel "$KERNEL" -initrd "$SDIR/initrd-key.img" -append "$cmdline" "${disks[@]}"
    expect_applied cache-current "offline generation 5"
    expect_console "stateless: .*applied cached generation 5" "boot 3 console line"
    local t3="$BOOT_SECONDS" l3
    l3=$(loader_seconds)

    corrupt_current "$cache"
    boot boot4 -kernel "$KERNEL" -initrd "$SDIR/initrd-key.img" -append "$cmdline" "${disks[@]}"
    expect_applied cache-previous "offline generation 4"
    expect_console "stateless: .*applied previous cached generation 4" "boot 4 console line"

    expect "root image checksum" "$(sha256sum < "$WORK/root.img")" "$sum_before"
    # One entry a boot, in boot order: four boots, four times.
    TIMES="fetch: loader $l1 s, boot $t1 s; newer, previous slot kept: loader $l2 s, boot $t2 s; cached (server down, 8 s budget): loader $l3 s, boot $t3 s; previous: loader $(loader_seconds) s, boot $BOOT_SECONDS s"
}

# cache_slot IMAGE SLOT: the generation in a slot's JSON on the cache disk.
cache_slot() {
    debugfs -R "cat /$2.json" "$1" 2> /dev/null | jq -r .generation 2> /dev/null
}

# corrupt_current IMAGE: changes a byte in the middle of current.bundle.
corrupt_current() {
    local tmp=$SDIR/current.bundle
    debugfs -R "dump /current.bundle $tmp" "$1" 2> /dev/null
    local size
    size=$(stat -c %s "$tmp") || { FAILURES+=("no current.bundle on the cache disk to corrupt"); return; }
    xor_byte "$tmp" $((size / 2))
    debugfs -w -R "rm /current.bundle" "$1" > /dev/null 2>&1
    debugfs -w -R "write $tmp /current.bundle" "$1" > /dev/null 2>&1
}
