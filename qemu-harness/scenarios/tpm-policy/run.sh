# tpm-policy: a key sealed under a policy key (signed PCR policies) survives
# a change of what the firmware measures, with a newly signed policy and no
# re-sealing. The policy covers PCR 1 (SMBIOS tables); the SMBIOS serial
# number moves it. (PCRs are reset at every TPM startup, so a PCR is moved
# by changing what is measured, not by extending it while the guest is off.)
#   boot 1 (enrolment): the booted root runs `statelessctl key tpm-seal
#           --policy-key policy.pub` on the machine; it prints PCR 1 as
#           measured; the host signs that value (`tpm sign-policy --values`)
#           and embeds the sealed key and the policy in the boot image
#   boot 2: rd.stateless.key=tpm unseals it under the signed policy, the
#           encrypted bundle applies
#   boot 3: the SMBIOS serial changed, so PCR 1 changed: the old policy is
#           refused, the console line naming PCR 1; nothing is applied
#           (rd.stateless.onfail=continue, so the unchanged root boots and
#           prints the new PCR 1, as a reference node would)
#   boot 4: the same changed machine with a boot image carrying the old and
#           a newly signed policy for the new value: the same sealed key
#           unseals, the bundle applies
# shellcheck shell=bash

scenario() {
    local srv=$SDIR/srv xfer=$SDIR/xfer cmdline pcr_old pcr_new
    mkdir -p "$srv" "$xfer"
    make_bundle "$srv/v1/nodes/$NODE_UUID/bundle" 12 "policy generation 12" --key "$WORK/site/site.key"
    start_nginx cfg "$srv"
    # The policy signing key stays on the host (the "offline machine");
    # only its public half goes to the node.
    "$CTL" tpm new-policy-key -o "$SDIR/policy.sign" > /dev/null
    install -m 0600 "$WORK/site/site.key" "$xfer/site.key"
    install -m 0644 "$SDIR/policy.pub" "$xfer/policy.pub"
    mkfs.ext4 -q -L xfer -d "$xfer" "$SDIR/xfer.img" 8M
    rm -rf "$xfer"
    local disk=(-drive "file=$WORK/root.img,format=raw,if=virtio,snapshot=on")
    local changed=(-smbios "type=1,serial=SLTEST-CHANGED")

    start_swtpm
    cmdline="$(base_cmdline) root=/dev/vda ro rd.skipfsck rd.stateless.overlay=1 rd.stateless.timeout=0 rd.stateless.onfail=continue sltest.enroll=/dev/vdb"
    boot enrol -kernel "$KERNEL" -initrd "$WORK/initrd-shell.img" -append "$cmdline" "${disk[@]}" \
        -drive "file=$SDIR/xfer.img,format=raw,if=virtio" "${TPM_ARGS[@]}"
    expect "enrolment" "$(marker ENROLLED)" "yes"
    pcr_old=$(marker PCR1 | tr 'A-F' 'a-f')
    debugfs -R "dump /node.sealed $SDIR/node.sealed" "$SDIR/xfer.img" 2> /dev/null
    rm -f "$SDIR/xfer.img"
    if [ ! -s "$SDIR/node.sealed" ] || [ ${#pcr_old} -ne 64 ]; then
        FAILURES+=("the enrolment boot gave no sealed key or no PCR 1 value ('$pcr_old')")
        return
    fi
    # Sealed to the policy key, not to PCR values.
    grep -q '^stateless-sealed-v2' "$SDIR/node.sealed" || FAILURES+=("the sealed key is not a policy-key (v2) file")
    grep -q '^pcr ' "$SDIR/node.sealed" && FAILURES+=("the sealed key names PCR values")

    # sign NAME VALUE: a signed policy for PCR 1 = VALUE, as
    # `tpm sign-policy --values` takes tpm2_pcrread-style lines.
    sign() {
        printf '1 %s\n' "$2" > "$SDIR/$1.values"
        "$CTL" tpm sign-policy --policy-key "$SDIR/policy.sign" --pcrs 1 --values "$SDIR/$1.values" -o "$SDIR/$1.signed" > /dev/null
    }
    sign 2026-11 "$pcr_old"
    "$CTL" key initramfs --sealed "$SDIR/node.sealed" --policy "$SDIR/2026-11.signed" \
        --initrd "$WORK/initrd-shell.img" -o "$SDIR/initrd-old.img" > /dev/null

    # Boot 2: unsealed under the signed policy.
    start_swtpm
    cmdline="$(base_cmdline) root=/dev/vda ro rd.skipfsck rd.stateless.overlay=1 rd.stateless.key=tpm rd.stateless.onfail=continue rd.stateless.server=http://$HOST_FROM_GUEST:$NGINX_PORT"
    set_net
    boot boot2 -kernel "$KERNEL" -initrd "$SDIR/initrd-old.img" -append "$cmdline" "${disk[@]}" "${NET[@]}" "${TPM_ARGS[@]}"
    expect_applied server "policy generation 12"
    expect "boot 2 key source" "$(status_field .key_source)" "TPM"
    expect "boot 2 PCR 1" "$(marker PCR1 | tr 'A-F' 'a-f')" "$pcr_old"
    local t2=$BOOT_SECONDS l2
    l2=$(loader_seconds)

    # Boot 3: PCR 1 moved; the old policy is refused and names the PCR.
    start_swtpm
    set_net
    boot boot3 -kernel "$KERNEL" -initrd "$SDIR/initrd-old.img" -append "$cmdline" "${disk[@]}" "${NET[@]}" "${TPM_ARGS[@]}" "${changed[@]}"
    local t3=$BOOT_SECONDS old
    # `key initramfs` names each policy by a hash of its text.
    old=$(sha256sum "$SDIR/2026-11.signed" | cut -c1-16)
    expect_console "stateless: .*no signed policy lets the key unseal: $old\.signed: PCR 1 \(sha256\) differs" "boot 3 console line"
    expect "boot 3 result" "$(status_field .result)" "failed"
    expect "boot 3 marker file" "$(marker MARKER)" "base image"
    pcr_new=$(marker PCR1 | tr 'A-F' 'a-f')
    if [ ${#pcr_new} -ne 64 ] || [ "$pcr_new" = "$pcr_old" ]; then
        FAILURES+=("PCR 1 did not move with the SMBIOS serial ('$pcr_old' -> '$pcr_new')")
        return
    fi

    # Boot 4: the site signs the new value and ships it beside the old one;
    # the node is not re-sealed.
    sign 2026-12 "$pcr_new"
    "$CTL" key initramfs --sealed "$SDIR/node.sealed" --policy "$SDIR/2026-11.signed" --policy "$SDIR/2026-12.signed" \
        --initrd "$WORK/initrd-shell.img" -o "$SDIR/initrd-new.img" > /dev/null
    start_swtpm
    set_net
    boot boot4 -kernel "$KERNEL" -initrd "$SDIR/initrd-new.img" -append "$cmdline" "${disk[@]}" "${NET[@]}" "${TPM_ARGS[@]}" "${changed[@]}"
    expect_applied server "policy generation 12"
    expect "boot 4 key source" "$(status_field .key_source)" "TPM"
    rm -f "$SDIR/initrd-old.img" "$SDIR/initrd-new.img"
    TIMES="signed policy: loader $l2 s, boot $t2 s; PCR 1 moved, old policy refused: boot $t3 s; new policy: loader $(loader_seconds) s, boot $BOOT_SECONDS s"
}
