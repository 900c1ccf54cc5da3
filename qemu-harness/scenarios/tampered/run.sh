# tampered: what a rogue server or mirror serves is refused, the cached
# bundle is applied, and nothing of the refused bundle reaches the root.
# The boot image carries the site key and a publisher public key
# (`statelessctl key initramfs --key --pubkey`), so the loader requires a
# publisher signature by default, with nothing on the command line.
#   boot 1: good generation 6, signed by the publisher: fetched, applied,
#           cached; the console line names the signer
#   boot 2: the server serves signed generation 7 with one byte of the
#           payload changed: refused (the payload does not match the digest
#           the publisher signed), cached generation 6 applied
#   boot 3: the server serves generation 8 sealed with the site key (what
#           the thief of any node's key can make) but not signed: refused
#           ("bundle is not signed; …"), cached generation 6 applied
# The root is a private writable copy mounted "ro" without the overlay: the
# loader remounts it read-write (the path a plain disk root takes).
# shellcheck shell=bash

scenario() {
    local srv=$SDIR/srv cache=$SDIR/cache.img root cmdline bundle url signer short
    bundle=$srv/v1/nodes/$NODE_UUID/bundle
    mkdir -p "$srv"
    truncate -s 32M "$cache"
    mkfs.ext4 -q -L slcache "$cache"
    root=$(root_copy)
    # The publisher's key pair, made for this run (never committed).
    signer=$("$CTL" key new-signing -o "$SDIR/publisher.sign" --pub-out "$SDIR/publisher.pub")
    short="${signer:0:8}…"
    make_bundle "$bundle" 6 "tampered-scenario generation 6" --key "$WORK/site/site.key" --sign "$SDIR/publisher.sign"
    start_nginx cfg "$srv"
    url=http://$HOST_FROM_GUEST:$NGINX_PORT
    "$CTL" key initramfs --key "$WORK/site/site.key" --pubkey "$SDIR/publisher.pub" \
        --initrd "$WORK/initrd-shell.img" -o "$SDIR/initrd-signed.img" > /dev/null
    cmdline="$(base_cmdline) root=/dev/vda ro rd.stateless.server=$url rd.stateless.cache=LABEL=slcache"
    set_net
    local args=(-kernel "$KERNEL" -initrd "$SDIR/initrd-signed.img" -append "$cmdline"
        -drive "file=$root,format=raw,if=virtio" -drive "file=$cache,format=raw,if=virtio" "${NET[@]}")
    local key_src="key [0-9a-f]{8}… from key directory /etc/stateless/keys, signed by $short"

    boot boot1 "${args[@]}"
    expect_applied server "tampered-scenario generation 6"
    expect "boot 1 signer" "$(status_field .signer)" "$signer"
    expect_console "trust: publishers $short \(embedded in /etc/stateless/publishers\)" "boot 1 trust log line"
    expect_console "^stateless: applied generation 6 from $url/v1/nodes/$NODE_UUID/bundle \($key_src\) in " "boot 1 console line"
    local t1=$BOOT_SECONDS l1
    l1=$(loader_seconds)

    # Generation 7 carries an extra file; one byte of the payload near the
    # end is changed after signing (the signature covers the header).
    local tree=$SDIR/evil-tree
    mkdir -p "$tree/etc/sltest"
    echo "tampered-scenario generation 7" > "$tree/etc/sltest/marker"
    echo "must never reach the root" > "$tree/etc/sltest/evil"
    "$CTL" bundle pack "$tree" -o "$bundle" --force --generation 7 --key "$WORK/site/site.key" \
        --sign "$SDIR/publisher.sign" > /dev/null
    flip_byte "$bundle" 20
    boot boot2 "${args[@]}"
    expect_applied cache-current "tampered-scenario generation 6"
    expect "boot 2 tampered file" "$(marker EVIL)" "absent"
    expect_console "^stateless: bundle from $url/v1/nodes/$NODE_UUID/bundle refused: layer node $NODE_UUID: payload digest mismatch: the payload is not the one publisher $short signed; applied cached generation 6 \(fetched [0-9-]+\) \($key_src\)" \
        "boot 2 console line"
    local t2=$BOOT_SECONDS l2
    l2=$(loader_seconds)

    # Generation 8, sealed with the site key and intact, but not signed.
    echo "tampered-scenario generation 8" > "$tree/etc/sltest/marker"
    "$CTL" bundle pack "$tree" -o "$bundle" --force --generation 8 --key "$WORK/site/site.key" > /dev/null
    # A sound bundle under the site key: only the signature is missing, so
    # the refusal below is the signature rule's alone.
    case $("$CTL" bundle verify --key "$WORK/site/site.key" "$bundle" 2>&1) in
        *": OK, generation 8, "*", unsigned") ;;
        *) FAILURES+=("generation 8 does not verify under the site key on the host") ;;
    esac
    boot boot3 "${args[@]}"
    expect_applied cache-current "tampered-scenario generation 6"
    expect "boot 3 unsigned file" "$(marker EVIL)" "absent"
    expect "boot 3 signer" "$(status_field .signer)" "$signer"
    expect_console "^stateless: bundle from $url/v1/nodes/$NODE_UUID/bundle refused: layer node $NODE_UUID: bundle is not signed; a publisher signature is required; applied cached generation 6 \(fetched [0-9-]+\) \($key_src\)" \
        "boot 3 console line"
    # The refused bundle did not replace the cached one.
    expect "boot 3 cache slot" "$(debugfs -R "cat /current.json" "$cache" 2> /dev/null | jq -r .generation 2> /dev/null)" "6"
    TIMES="signed fetch: loader $l1 s, boot $t1 s; tampered, cached: loader $l2 s, boot $t2 s; unsigned, cached: loader $(loader_seconds) s, boot $BOOT_SECONDS s"
}
