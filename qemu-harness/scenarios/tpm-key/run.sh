# tpm-key: the key is sealed to the machine's TPM (swtpm) and its PCR 1
# (SMBIOS tables, measured by the firmware).
#   boot 1 (enrolment): the booted root runs `statelessctl key tpm-seal
#           --pcrs 1` on the machine, with the site key from a transfer disk;
#           the host embeds the sealed key in the boot image
#           (`statelessctl key initramfs --sealed`)
#   boot 2: rd.stateless.key=tpm unseals it, the encrypted bundle applies
#   boot 3: the SMBIOS serial number changed, so PCR 1 changed: the key stays
#           sealed, nothing is applied, the boot stops (fails closed) with the
#           console line naming the PCR
# shellcheck shell=bash

scenario() {
    local srv=$SDIR/srv tpm=$SDIR/tpm xfer=$SDIR/xfer cmdline
    mkdir -p "$srv" "$tpm" "$xfer"
    make_bundle "$srv/v1/nodes/$NODE_UUID/bundle" 11 "tpm generation 11" --key "$WORK/site/site.key"
    start_nginx cfg "$srv"
    install -m 0600 "$WORK/site/site.key" "$xfer/site.key"
    mkfs.ext4 -q -L xfer -d "$xfer" "$SDIR/xfer.img" 8M
    rm -rf "$xfer"
    local disk=(-drive "file=$WORK/root.img,format=raw,if=virtio,snapshot=on")

    start_swtpm
    cmdline="$(base_cmdline) root=/dev/vda ro rd.skipfsck rd.stateless.overlay=1 rd.stateless.timeout=0 rd.stateless.onfail=continue sltest.enroll=/dev/vdb"
    boot enrol -kernel "$KERNEL" -initrd "$WORK/initrd-shell.img" -append "$cmdline" "${disk[@]}" \
        -drive "file=$SDIR/xfer.img,format=raw,if=virtio" "${TPM_ARGS[@]}"
    expect "enrolment" "$(marker ENROLLED)" "yes"
    debugfs -R "dump /node.sealed $SDIR/node.sealed" "$SDIR/xfer.img" 2> /dev/null
    rm -f "$SDIR/xfer.img"
    [ -s "$SDIR/node.sealed" ] || {
        FAILURES+=("no sealed key came back from the enrolment boot")
        return
    }
    "$CTL" key initramfs --sealed "$SDIR/node.sealed" --initrd "$WORK/initrd-shell.img" -o "$SDIR/initrd-tpm.img" > /dev/null

    start_swtpm
    cmdline="$(base_cmdline) root=/dev/vda ro rd.skipfsck rd.stateless.overlay=1 rd.stateless.key=tpm rd.stateless.server=http://$HOST_FROM_GUEST:$NGINX_PORT"
    set_net
    boot boot2 -kernel "$KERNEL" -initrd "$SDIR/initrd-tpm.img" -append "$cmdline" "${disk[@]}" "${NET[@]}" "${TPM_ARGS[@]}"
    expect_applied server "tpm generation 11"
    expect "key source" "$(status_field .key_source)" "TPM"
    local t2=$BOOT_SECONDS l2
    l2=$(loader_seconds)

    start_swtpm
    set_net
    boot boot3 -kernel "$KERNEL" -initrd "$SDIR/initrd-tpm.img" -append "$cmdline" "${disk[@]}" "${NET[@]}" "${TPM_ARGS[@]}" \
        -smbios type=1,serial=SLTEST-CHANGED
    expect "boot 3 reached the root" "$(booted)" "no"
    expect_console "^stateless: no bundle applied: .*PCR 1 \(sha256\) differs" "boot 3 console line"
    TIMES="unsealed: loader $l2 s, boot $t2 s; PCR changed: refused, boot stopped after $BOOT_SECONDS s"
}
