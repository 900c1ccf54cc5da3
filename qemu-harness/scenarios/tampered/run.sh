# tampered: a bundle modified on the server is refused, the cached one is
# applied, and nothing of the tampered bundle reaches the root.
#   boot 1: good generation 6 fetched, applied, cached
#   boot 2: the server serves generation 7 with one byte changed: refused
#           ("authentication failed"), cached generation 6 applied
# The root is a private writable copy mounted "ro" without the overlay: the
# loader remounts it read-write (the path a plain disk root takes).
# shellcheck shell=bash

scenario() {
    local srv=$SDIR/srv cache=$SDIR/cache.img root cmdline bundle
    bundle=$srv/v1/nodes/$NODE_UUID/bundle
    mkdir -p "$srv"
    truncate -s 32M "$cache"
    mkfs.ext4 -q -L slcache "$cache"
    root=$(root_copy)
    make_bundle "$bundle" 6 "tampered-scenario generation 6" --key "$WORK/site/site.key"
    start_nginx cfg "$srv"
    embed_key
    cmdline="$(base_cmdline) root=/dev/vda ro rd.stateless.server=http://$HOST_FROM_GUEST:$NGINX_PORT rd.stateless.cache=LABEL=slcache"
    set_net
    local args=(-kernel "$KERNEL" -initrd "$SDIR/initrd-key.img" -append "$cmdline"
        -drive "file=$root,format=raw,if=virtio" -drive "file=$cache,format=raw,if=virtio" "${NET[@]}")

    boot boot1 "${args[@]}"
    expect_applied server "tampered-scenario generation 6"
    local t1=$BOOT_SECONDS l1
    l1=$(loader_seconds)

    # Generation 7 carries an extra file; one byte near the end is changed.
    local tree=$SDIR/evil-tree
    mkdir -p "$tree/etc/sltest"
    echo "tampered-scenario generation 7" > "$tree/etc/sltest/marker"
    echo "must never reach the root" > "$tree/etc/sltest/evil"
    "$CTL" bundle pack "$tree" -o "$bundle" --force --generation 7 --key "$WORK/site/site.key" > /dev/null
    flip_byte "$bundle" 20
    boot boot2 "${args[@]}"
    expect_applied cache-current "tampered-scenario generation 6"
    expect "tampered file" "$(marker EVIL)" "absent"
    expect_console "stateless: .*refused: .*applied cached generation 6" "boot 2 console line"
    TIMES="fetch: loader $l1 s, boot $t1 s; tampered, cached: loader $(loader_seconds) s, boot $BOOT_SECONDS s"
}
