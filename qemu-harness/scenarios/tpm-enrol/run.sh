# tpm-enrol: zero-touch TPM enrolment of two nodes that boot one shared
# initramfs (no key in it), each with its own swtpm, against the project's
# server (`statelessctl serve`). Each node's bundle is sealed with its own
# derived key, which no boot image holds. Node A's TPM is manufactured with
# an EK certificate (swtpm_setup and its local CA); node B's has none.
#   boot A1, B1: rd.stateless.key=tpm, no key: each posts its TPM's keys to
#           v1/nodes/NODE/enrol and says it waits for approval; nothing is
#           applied, the boot stops (fails closed). The server's pending
#           record holds the EK hash the console printed.
#   host:   `statelessctl approve NODE --tpm-key NODE.key --ek-hash HASH`
#           (A also `--ek-ca`): each node's own key wrapped for its own TPM
#   boot A2, B2: each imports its blob, unseals its own key, applies its own
#           bundle (key source TPM)
#   boot X: a machine claiming A's identity with B's TPM gets A's blob and
#           refuses it (the SRK is not the one it was wrapped for): nothing
#           applied
# shellcheck shell=bash

scenario() {
    local data=$SDIR/data keys=$SDIR/keys node_a=$NODE_UUID node_b cmdline n url
    # A second SMBIOS UUID for the second machine.
    node_b=${NODE_UUID%?}b
    mkdir -p "$data" "$keys"
    for n in "$node_a" "$node_b"; do
        "$CTL" key derive --site "$WORK/site/site.key" --node "$n" -o "$keys/$n.key" > /dev/null
        make_bundle "$SDIR/$n.bundle" 3 "enrolled $n" --key "$keys/$n.key" --scope "node:$n"
        "$CTL" publish --data "$data" --node "$n" "$SDIR/$n.bundle" > /dev/null
        rm -f "$SDIR/$n.bundle"
    done
    start_serve "$data"
    url=http://$HOST_FROM_GUEST:$SERVE_PORT

    # Node A's TPM comes with an EK certificate from a local "manufacturer" CA.
    local ca=$SDIR/ek-ca
    mkdir -p "$ca" "$SDIR/tpm-a"
    printf 'statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\ncertserial = %s/certserial\n' \
        "$ca" "$ca" "$ca" "$ca" > "$ca/localca.conf"
    printf 'create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = %s/localca.conf\ncreate_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n' \
        "$ca" > "$ca/setup.conf"
    swtpm_setup --tpm2 --create-ek-cert --overwrite --tpmstate "$SDIR/tpm-a" --config "$ca/setup.conf" > "$SDIR/swtpm_setup.log" 2>&1 || {
        FAILURES+=("swtpm_setup --create-ek-cert failed: $(tail -1 "$SDIR/swtpm_setup.log")")
        return
    }
    cat "$ca/issuercert.pem" "$ca/swtpm-localca-rootca-cert.pem" > "$ca/ek-ca.pem"

    local disk=(-drive "file=$WORK/root.img,format=raw,if=virtio,snapshot=on")
    cmdline="$(base_cmdline) root=/dev/vda ro rd.skipfsck rd.stateless.overlay=1 rd.stateless.key=tpm rd.stateless.server=$url rd.stateless.timeout=20"
    # enrol_boot NAME NODE TPM: a boot of the shared initramfs as NODE.
    enrol_boot() {
        NODE_UUID=$2
        start_swtpm "$3"
        set_net
        boot "$1" -kernel "$KERNEL" -initrd "$WORK/initrd-shell.img" -append "$cmdline" "${disk[@]}" "${NET[@]}" "${TPM_ARGS[@]}"
    }

    # First boots: enrol, wait for approval.
    local t1 hash
    for n in a b; do
        local id=$node_a
        [ $n = b ] && id=$node_b
        enrol_boot "boot-$n-1" "$id" "tpm-$n"
        t1=${t1:+$t1, }$BOOT_SECONDS
        expect "$n first boot reached the root" "$(booted)" "no"
        expect_console "stateless: TPM enrolled with $url \(EK SHA-256 [0-9a-f]{64}\); waiting for approval \(statelessctl approve $id --tpm-key KEYFILE\)" \
            "$n waits for approval"
        hash=$(jq -r .ek_hash "$data/state/enrol/$id.json" 2> /dev/null)
        if [ -z "$hash" ] || [ "$hash" = null ]; then
            FAILURES+=("the server has no pending enrolment for $n ($id)")
            return
        fi
        # What an admin compares: the hash the node printed is the server's.
        expect_console "\(EK SHA-256 $hash\)" "$n's console EK hash is the server's"
        eval "hash_$n=\$hash"
    done
    # shellcheck disable=SC2154 # set by the eval above
    [ "$hash_a" != "$hash_b" ] || FAILURES+=("both TPMs enrolled the same EK $hash_a")
    "$CTL" nodes --data "$data" --json > "$SDIR/nodes-pending.json"
    # shellcheck disable=SC2154
    for h in "$hash_a" "$hash_b"; do
        grep -q "enrolled (EK $h)" "$SDIR/nodes-pending.json" || FAILURES+=("statelessctl nodes does not list the TPM with EK $h")
    done
    [ ! -e "$data/v1/nodes/$node_a/tpm-key" ] || FAILURES+=("a TPM key was published before approval")

    # Approve each node with its own key, checked against the inventory's
    # EK hash; A's EK certificate against the manufacturer CA.
    if ! "$CTL" approve --data "$data" "$node_a" --tpm-key "$keys/$node_a.key" --ek-hash "$hash_a" \
        --ek-ca "$ca/ek-ca.pem" > "$SDIR/approve-a.log" 2>&1; then
        FAILURES+=("approve A: $(tail -1 "$SDIR/approve-a.log")")
        return
    fi
    if ! "$CTL" approve --data "$data" "$node_b" --tpm-key "$keys/$node_b.key" --ek-hash "$hash_b" \
        > "$SDIR/approve-b.log" 2>&1; then
        FAILURES+=("approve B: $(tail -1 "$SDIR/approve-b.log")")
        return
    fi
    local id_a id_b
    id_a=$("$CTL" key id "$keys/$node_a.key" 2> /dev/null || true)
    id_b=$("$CTL" key id "$keys/$node_b.key" 2> /dev/null || true)
    grep -q "EK certificate: verified against" "$SDIR/approve-a.log" || FAILURES+=("approve A did not check the EK certificate: $(cat "$SDIR/approve-a.log")")
    grep -q "published key $id_a wrapped for $node_a's TPM" "$SDIR/approve-a.log" || FAILURES+=("approve A did not publish A's key $id_a")
    grep -q "published key $id_b wrapped for $node_b's TPM" "$SDIR/approve-b.log" || FAILURES+=("approve B did not publish B's key $id_b")
    [ -s "$data/v1/nodes/$node_a/tpm-key" ] && [ -s "$data/v1/nodes/$node_b/tpm-key" ] ||
        FAILURES+=("approve did not publish both wrapped keys")

    # Second boots: each node imports its own key and applies its bundle.
    local t2 l2
    for n in a b; do
        local id=$node_a kid=$id_a
        [ $n = b ] && id=$node_b kid=$id_b
        enrol_boot "boot-$n-2" "$id" "tpm-$n"
        expect_applied server "enrolled $id"
        expect "$n key source" "$(status_field .key_source)" "TPM"
        expect_console "stateless: imported key ${kid:0:8}[^ ]* that $url/v1/nodes/$id/tpm-key wrapped for this TPM" "$n imported its own key"
        t2=${t2:+$t2, }$BOOT_SECONDS
        l2=${l2:+$l2, }$(loader_seconds)
    done

    # A's blob is useless with B's TPM: a machine that claims A's identity
    # with B's TPM fetches A's blob and refuses it; nothing is applied.
    enrol_boot boot-x "$node_a" tpm-b
    expect "A's identity with B's TPM reached the root" "$(booted)" "no"
    expect_console "stateless: TPM key from $url/v1/nodes/$node_a/tpm-key refused: .*storage root key is not the one" \
        "A's blob refused by B's TPM"
    TIMES="enrol A, B: boot $t1 s; approved: loader $l2 s, boot $t2 s; A's blob with B's TPM: refused after $BOOT_SECONDS s"
}

# start_serve DATA: the project's server (`statelessctl serve`) on
# 127.0.0.1; sets SERVE_PORT. Plain HTTP on loopback (the guest reaches it
# through QEMU's gateway).
start_serve() {
    SERVE_PORT=$(free_port)
    "$CTL" serve --data "$1" --listen "127.0.0.1:$SERVE_PORT" > "$SDIR/serve.log" 2>&1 &
    echo $! > "$SDIR/serve.pid"
    PIDFILES+=("$SDIR/serve.pid")
    local i
    for i in $(seq 100); do
        (echo > "/dev/tcp/127.0.0.1/$SERVE_PORT") 2> /dev/null && return
        sleep 0.1
    done
    die "statelessctl serve did not start: $(tail -1 "$SDIR/serve.log")"
}
