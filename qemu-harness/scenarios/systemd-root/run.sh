# systemd-root: a real Debian root (debootstrap, cached between runs) booted
# to systemd through the systemd flavour of the dracut initramfs, where the
# loader runs as stateless-loader.service before initrd-parse-etc.service.
# The bundle writes a file, deletes one and enables a unit
# (a symlink in multi-user.target.wants); the booted system must show all
# three live. The root is a copy-on-write layer over the cached image.
# shellcheck shell=bash

scenario() {
    local srv=$SDIR/srv tree=$SDIR/bundle-tree cmdline
    build_debian_root
    build_initramfs systemd
    mkdir -p "$srv" "$tree/etc/sltest" "$tree/etc/systemd/system/multi-user.target.wants"
    echo "systemd-root generation 12" > "$tree/etc/sltest/marker"
    cat > "$tree/etc/systemd/system/sltest-bundle.service" << 'UNIT'
[Unit]
Description=A unit the bundle installed and enabled

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/touch /run/sltest-bundle-ran

[Install]
WantedBy=multi-user.target
UNIT
    ln -s ../sltest-bundle.service "$tree/etc/systemd/system/multi-user.target.wants/sltest-bundle.service"
    mkdir -p "$srv/v1/nodes/$NODE_UUID"
    "$CTL" bundle pack "$tree" -o "$srv/v1/nodes/$NODE_UUID/bundle" --generation 12 \
        --key "$WORK/site/site.key" --delete /etc/sltest/delete-me > /dev/null
    start_nginx cfg "$srv" tls
    embed_key "$WORK/initrd-systemd.img"
    qemu-img create -q -f qcow2 -b "$WORK/debian.img" -F raw "$SDIR/root.qcow2"
    cmdline="$(base_cmdline) root=/dev/vda rw rd.stateless.server=https://$HOST_FROM_GUEST:$NGINX_PORT"
    set_net
    boot boot1 -kernel "$KERNEL" -initrd "$SDIR/initrd-key.img" -append "$cmdline" \
        -drive "file=$SDIR/root.qcow2,format=qcow2,if=virtio" "${NET[@]}"
    expect_applied server "systemd-root generation 12"
    expect "bundle unit" "$(marker UNIT)" "enabled active"
    expect "bundle unit ran" "$(marker UNITRAN)" "yes"
    expect_console "Finished .*stateless-loader.service|Started .*stateless-loader.service|stateless: applied generation 12" "loader ran in the systemd initramfs"
    TIMES="loader $(loader_seconds) s, boot $BOOT_SECONDS s (to the report unit, systemd in the root)"
    rm -f "$SDIR/root.qcow2"
}
